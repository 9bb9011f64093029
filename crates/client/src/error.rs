use std::path::PathBuf;

/// What can go wrong talking to imagestore, worded for the person at the keyboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid server address {0}")]
    Address(String),
    #[error("cannot reach imagestore at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "cannot reach imagestore at {url}: the server there speaks {}; use {works} \
         (`imagestore remote add NAME {works}`, or edit the remote's address)",
        if works.starts_with("https://") { "TLS" } else { "plaintext HTTP, not TLS" }
    )]
    Scheme { url: String, works: String },
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Integrity(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The gRPC status code this error amounts to (for exit codes and retries).
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Address(_) | Error::Invalid(_) | Error::Scheme { .. } => {
                tonic::Code::InvalidArgument
            }
            Error::Connect { .. } => tonic::Code::Unavailable,
            // The connection broke (the server died mid-call): as unavailable as
            // a server that says so, and the CLI exits 5 (run again).
            Error::Status(s) if from_transport(s) => tonic::Code::Unavailable,
            Error::Status(s) => s.code(),
            Error::Io { .. } => tonic::Code::Internal,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::Integrity(_) => tonic::Code::DataLoss,
        }
    }

    /// Whether trying again may work: the network or a node went away, or a
    /// stream was cut. The caller resumes from what the server committed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Status(s) => match s.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled => true,
                // A blob node's answer to a ticket that ran out mid-retry: the
                // retry asks the control plane for a fresh one.
                tonic::Code::Unauthenticated => {
                    s.metadata()
                        .get(imagestore_auth::TICKET_ERROR_METADATA)
                        .and_then(|v| v.to_str().ok())
                        == Some("expired")
                }
                // A connection reset mid-stream surfaces as UNKNOWN or INTERNAL
                // carrying the transport's error rather than a server's status.
                tonic::Code::Unknown | tonic::Code::Internal => from_transport(s),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Whether a status was made from a failure of the connection (h2, hyper, the
/// socket) rather than sent by a server.
pub(crate) fn from_transport(s: &tonic::Status) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(err) = next {
        if err.is::<h2::Error>()
            || err.is::<hyper::Error>()
            || err.is::<std::io::Error>()
            || err.is::<tonic::transport::Error>()
        {
            return true;
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_is_told_by_kind_not_by_words() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let broken = tonic::Status::from_error(Box::new(reset));
        assert_eq!(
            Error::Status(broken.clone()).code(),
            tonic::Code::Unavailable
        );
        assert!(Error::Status(broken).is_transient(), "a broken connection");
        let worded = tonic::Status::internal("h2 transport connection stream error");
        assert!(!Error::Status(worded).is_transient(), "only words");

        let mut expired = tonic::Status::unauthenticated("the ticket expired 3 s ago");
        expired.metadata_mut().insert(
            imagestore_auth::TICKET_ERROR_METADATA,
            tonic::metadata::MetadataValue::from_static("expired"),
        );
        assert!(Error::Status(expired).is_transient());
        let forged = tonic::Status::unauthenticated("the ticket expired, says the text");
        assert!(!Error::Status(forged).is_transient());
    }
}
