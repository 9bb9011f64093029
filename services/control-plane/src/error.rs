//! The one place where errors become gRPC statuses.

use imagestore_catalog::CatalogError;
use imagestore_image::FingerprintError;
use tonic::{Code, Status};

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

impl ApiError {
    /// Its kind (gRPC's codes, the classification every layer shares).
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) | Self::Fingerprint(_) => Code::InvalidArgument,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::DataLoss(_) => Code::DataLoss,
            Self::Catalog(c) => c.code(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        let msg = e.to_string();
        match (&e, code) {
            (ApiError::Catalog(c), Code::Unavailable) if c.is_busy() => Status::unavailable(
                "the catalog database is busy or out of reach for now; retry shortly",
            ),
            (_, Code::Internal) => {
                // The detail is for the operator, not the caller.
                tracing::error!(error = %msg, "internal error");
                Status::internal("internal error in the control plane; its log has the details")
            }
            _ => Status::new(code, msg),
        }
    }
}
