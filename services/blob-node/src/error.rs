//! The one place where blob-node errors become gRPC statuses.

use imagestore_auth::TicketError;
use imagestore_image::ScanError;
use imagestore_store::StoreError;
use tonic::{Code, Status};

/// Anything an upload or download can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A store could not be written or read; the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    #[error("the image is not valid: {0}")]
    Image(#[from] ScanError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    /// The control plane answered with an error; passed on as it is.
    #[error("{}", .0.message())]
    ControlPlane(Status),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Ticket(#[from] TicketError),
}

pub type BlobResult<T> = Result<T, BlobError>;

impl BlobError {
    /// Its kind (gRPC's codes, the classification every layer shares), as the
    /// library that raised it said.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::DataLoss(_) => Code::DataLoss,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::NotFound(_) => Code::NotFound,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Image(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::Ticket(TicketError::WrongScope { .. }) => Code::PermissionDenied,
            Self::Ticket(_) => Code::Unauthenticated,
            Self::ControlPlane(s) => match s.code() {
                // Not the caller's doing: this node is not trusted, or the
                // control plane is away; either is worth another node or a retry.
                Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded => Code::Unavailable,
                code => code,
            },
            Self::Internal(_) => Code::Internal,
        }
    }

    /// Whether this is a verdict on the bytes (they are not what was declared, or
    /// not an image this server takes), as opposed to a fault of the store, the
    /// control plane or the network, after which the same bytes may do. Only
    /// this node's own findings are verdicts, never a word passed on.
    pub fn is_verdict(&self) -> bool {
        !matches!(self, Self::ControlPlane(_))
            && matches!(self.code(), Code::InvalidArgument | Code::DataLoss)
    }
}

impl From<Status> for BlobError {
    fn from(s: Status) -> Self {
        Self::ControlPlane(s)
    }
}

impl From<BlobError> for Status {
    fn from(e: BlobError) -> Self {
        let code = e.code();
        match e {
            BlobError::Ticket(t) => {
                let mut status = Status::new(code, t.to_string());
                status.metadata_mut().insert(
                    imagestore_auth::TICKET_ERROR_METADATA,
                    tonic::metadata::MetadataValue::from_static(t.kind()),
                );
                status
            }
            BlobError::ControlPlane(s) => match s.code() {
                Code::Unauthenticated | Code::PermissionDenied => {
                    tracing::error!(error = %s.message(), "the control plane refused this node");
                    Status::new(
                        code,
                        "this blob node is not trusted by the control plane (its cluster \
                         credential is wrong); try another node, and tell the operator",
                    )
                }
                c if c != code => Status::new(
                    code,
                    format!("the control plane did not answer: {}", s.message()),
                ),
                _ => s,
            },
            other => {
                let msg = other.to_string();
                match code {
                    Code::Unavailable => tracing::error!(error = %msg, "storage error"),
                    Code::Internal => tracing::error!(error = %msg, "internal error"),
                    _ => {}
                }
                Status::new(code, msg)
            }
        }
    }
}
