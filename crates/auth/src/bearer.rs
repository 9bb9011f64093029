//! Credentials on every call: "authorization: Bearer <token>".

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Adds a bearer token to each request (none: the caller is anonymous).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A token as given by an administrator or the admin-token file.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| InvalidToken),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The call belongs to the trace of whatever makes it (every call goes
        // through here: clients' and blob nodes' alike).
        imagestore_telemetry::propagation::Traced.call(req)
    }
}

/// A token that cannot travel in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token has characters a header cannot carry (it must be printable ASCII)")]
pub struct InvalidToken;
