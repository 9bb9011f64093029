//! The control plane's HTTP face, for LXD and Incus hosts: simplestreams made
//! from the catalog, the answer to LXD's URL-import discovery, and for every file
//! a redirect to a blob node with a short-lived ticket. Image bytes are never
//! served here.

mod files;
mod streams;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use imagestore_catalog::Catalog;
use imagestore_server::TlsPeer;
use imagestore_server::http::HttpError;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::nodes::NodePicker;

/// What every HTTP handler shares.
struct Face {
    catalog: Catalog,
    auth: Auth,
    nodes: NodePicker,
    streams: streams::Cache,
}

/// The routes of the control plane's HTTP face.
pub fn router(catalog: Catalog, auth: Auth, nodes: NodePicker) -> Router {
    let face = Arc::new(Face {
        streams: streams::Cache::default(),
        catalog,
        auth,
        nodes,
    });
    // get() answers HEAD as well, without the body.
    Router::new()
        .route("/streams/v1/index.json", get(streams::index))
        .route("/streams/v1/images.json", get(streams::images))
        .route("/files/{fingerprint}/{name}", get(files::file))
        .route("/images/{*name}", get(files::discover))
        .with_state(face)
}

impl From<ApiError> for ErrorReply {
    fn from(e: ApiError) -> Self {
        Self(tonic::Status::from(e).into())
    }
}

/// An error answer of this face (LXD's error document, the status its kind maps to).
pub struct ErrorReply(HttpError);

impl axum::response::IntoResponse for ErrorReply {
    fn into_response(self) -> axum::response::Response {
        self.0.into_response()
    }
}

type Reply = Result<axum::response::Response, ErrorReply>;

impl Face {
    /// Whether the caller of `req` sees public images only. The token may come
    /// as a bearer token or as the basic-auth password. (No anonymous lane here:
    /// every answer of this face is cheap and bounded, and a fleet pulls
    /// without tokens in bursts.)
    fn public_only(&self, req: &Request) -> Result<bool, ErrorReply> {
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().ok());
        Ok(self
            .auth
            .public_only_from(authorization, req.extensions().get::<TlsPeer>())?)
    }
}

/// The scheme and authority a client used to reach this server, for absolute
/// URLs in answers: TLS connections carry a [`TlsPeer`].
fn base_url(req: &Request) -> String {
    let scheme = if req.extensions().get::<TlsPeer>().is_some() {
        "https"
    } else {
        "http"
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    format!("{scheme}://{authority}")
}
