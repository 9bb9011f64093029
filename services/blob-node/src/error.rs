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
    /// Whether this is a verdict on the bytes (they are not what was declared, or
    /// not an image this server takes), as opposed to a fault of the store, the
    /// control plane or the network, after which the same bytes may do.
    pub fn is_verdict(&self) -> bool {
        match self {
            Self::DataLoss(_) | Self::InvalidArgument(_) => true,
            Self::Image(e) => !matches!(e, ScanError::Io(_)),
            _ => false,
        }
    }
}

impl From<Status> for BlobError {
    fn from(s: Status) -> Self {
        Self::ControlPlane(s)
    }
}

impl From<BlobError> for Status {
    fn from(e: BlobError) -> Self {
        let msg = e.to_string();
        match e {
            BlobError::InvalidArgument(_) => Status::invalid_argument(msg),
            BlobError::OutOfRange(_) => Status::out_of_range(msg),
            BlobError::DataLoss(_) => Status::data_loss(msg),
            BlobError::AlreadyExists(_) => Status::already_exists(msg),
            BlobError::FailedPrecondition(_) => Status::failed_precondition(msg),
            BlobError::NotFound(_) => Status::not_found(msg),
            BlobError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            BlobError::Image(ScanError::Io(_)) | BlobError::Store(_) => {
                tracing::error!(error = %msg, "storage error");
                Status::unavailable(msg)
            }
            BlobError::Image(_) => Status::invalid_argument(msg),
            BlobError::Ticket(t) => {
                let mut status = match t {
                    TicketError::WrongScope { .. } => Status::permission_denied(msg),
                    _ => Status::unauthenticated(msg),
                };
                status.metadata_mut().insert(
                    imagestore_auth::TICKET_ERROR_METADATA,
                    tonic::metadata::MetadataValue::from_static(t.kind()),
                );
                status
            }
            BlobError::ControlPlane(s) => match s.code() {
                // Not the caller's fault: this node's credential is wrong.
                Code::Unauthenticated | Code::PermissionDenied => {
                    tracing::error!(error = %s.message(), "the control plane refused this node");
                    Status::unavailable(
                        "this blob node is not trusted by the control plane (its cluster \
                         credential is wrong); try another node, and tell the operator",
                    )
                }
                // The control plane being away is worth a retry, not a failure.
                Code::Unavailable | Code::Unknown | Code::DeadlineExceeded => Status::unavailable(
                    format!("the control plane did not answer: {}", s.message()),
                ),
                _ => s,
            },
            BlobError::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}
