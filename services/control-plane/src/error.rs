//! The one place where errors become gRPC statuses.

use imagestore_catalog::CatalogError;
use imagestore_image::FingerprintError;
use tonic::Status;

/// Anything an RPC handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The stored bytes are not what was registered (a verification found it).
    #[error("{0}")]
    DataLoss(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What every RPC handler returns.
pub type Reply<T> = Result<tonic::Response<T>, Status>;

pub fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

/// Refuses to serve an image a verification found damaged.
pub fn refuse_damaged(image: &imagestore_catalog::Image) -> ApiResult<()> {
    match &image.damage {
        Some(d) => Err(ApiError::DataLoss(format!(
            "image {} is damaged and is not served: {}; delete it and upload or import it again",
            image.fingerprint, d.message
        ))),
        None => Ok(()),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(_) | ApiError::Fingerprint(_) => {
                Status::invalid_argument(msg)
            }
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::Unimplemented(_) => Status::unimplemented(msg),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ApiError::Unauthenticated(_) => Status::unauthenticated(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::DataLoss(_) => Status::data_loss(msg),
            ApiError::Catalog(c) => match c {
                CatalogError::NotFound(_) => Status::not_found(msg),
                CatalogError::AlreadyExists(_) => Status::already_exists(msg),
                CatalogError::InvalidArgument(_) | CatalogError::Fingerprint(_) => {
                    Status::invalid_argument(msg)
                }
                CatalogError::FailedPrecondition(_) => Status::failed_precondition(msg),
                CatalogError::Aborted(_) => Status::aborted(msg),
                CatalogError::ResourceExhausted(_) => Status::resource_exhausted(msg),
                ref busy if busy.is_busy() => Status::unavailable(
                    "the catalog database is busy (locked by another process); retry shortly",
                ),
                CatalogError::Database(_)
                | CatalogError::File(_)
                | CatalogError::Corrupt(_)
                | CatalogError::Task(_) => {
                    // The detail is for the operator, not the caller.
                    tracing::error!(error = %msg, "internal error");
                    Status::internal("internal error in the control plane; its log has the details")
                }
            },
        }
    }
}
