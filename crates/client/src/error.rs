use std::path::PathBuf;

/// What can go wrong talking to imagestore, worded for the person at the keyboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid server address {0}")]
    Address(String),
    #[error("cannot reach imagestore at {url}: {reason}")]
    Connect { url: String, reason: String },
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
            Error::Address(_) | Error::Invalid(_) => tonic::Code::InvalidArgument,
            Error::Connect { .. } => tonic::Code::Unavailable,
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
                tonic::Code::Unauthenticated => s.message().contains("ticket expired"),
                // A connection reset mid-stream surfaces as UNKNOWN or INTERNAL
                // carrying the h2/transport error rather than a server's status.
                tonic::Code::Unknown | tonic::Code::Internal => {
                    let m = s.message();
                    m.contains("transport")
                        || m.contains("h2")
                        || m.contains("connection")
                        || m.contains("stream")
                }
                _ => false,
            },
            _ => false,
        }
    }
}
