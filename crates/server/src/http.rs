//! The HTTP face beside gRPC on one listener: requests whose content-type is
//! `application/grpc…` go to the gRPC services, every other request to the HTTP
//! routes a tier adds. Errors leave in LXD's JSON error shape with the HTTP status
//! that belongs to their gRPC code, so one kind of error reads the same on both.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request, StatusCode, header};
use tower::ServiceExt;

/// Whether a request is gRPC (by its content-type, as gRPC defines it).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// One router that sends gRPC requests to `grpc` and the rest to `http`.
pub(crate) fn dispatch(grpc: Router, http: Router, metrics: crate::MetricsAccess) -> Router {
    let http = http
        .fallback(|| async {
            HttpError::new(
                tonic::Code::NotFound,
                "no such path: this server answers /streams/v1/index.json, the files it lists, \
                 and gRPC",
            )
        })
        .method_not_allowed_fallback(|| async {
            HttpError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                "this path answers GET and HEAD only",
            )
        });
    // Every server's metrics, whichever tiers it serves.
    let http = http.route(
        "/metrics",
        axum::routing::get(move |headers: http::HeaderMap| async move {
            metrics.check(&headers)?;
            Ok::<_, HttpError>((
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                imagestore_telemetry::metrics::metrics().encode(),
            ))
        }),
    );
    Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
        let grpc_request = is_grpc(&req);
        let route = if grpc_request {
            grpc.clone()
        } else {
            http.clone()
        };
        let method = grpc_request.then(|| req.uri().path().to_owned());
        let started = std::time::Instant::now();
        async move {
            let response = route.oneshot(req).await.into_response();
            record(method, &response, started.elapsed());
            Ok::<_, Infallible>(response)
        }
    }))
}

/// Counts a request by method and outcome: a gRPC method by its path and the
/// grpc-status it answered with at once (a stream's later status is not
/// seen; no status yet is OK), HTTP as one method by status code. A path no
/// service has (UNIMPLEMENTED) counts as "unknown", so that strangers cannot
/// make labels without end.
fn record(method: Option<String>, response: &axum::response::Response, took: std::time::Duration) {
    let metrics = imagestore_telemetry::metrics::metrics();
    let Some(path) = method else {
        metrics.request("http", response.status().as_str(), took);
        return;
    };
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    let path = if code == tonic::Code::Unimplemented {
        "unknown".to_owned()
    } else {
        path
    };
    metrics.request(&path, &format!("{code:?}"), took);
}

/// Whether a request's `If-None-Match` names `etag` (a quoted entity tag), weak
/// or strong, or is `*`: then the client has it already (304).
pub fn has_etag(headers: &http::HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        })
}

/// The HTTP status for a gRPC code (the mapping google.rpc.Code documents).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An HTTP error answer: a status and a message a person can act on, sent as
/// LXD's error document (`{"type": "error", "error_code": 404, "error": "…"}`).
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    /// Ask for HTTP basic auth (on a 401).
    pub challenge: bool,
}

impl HttpError {
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self::with_status(http_status(code), message)
    }

    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            challenge: status == StatusCode::UNAUTHORIZED,
        }
    }
}

impl From<tonic::Status> for HttpError {
    fn from(s: tonic::Status) -> Self {
        Self::new(s.code(), s.message())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "error",
            "status": "",
            "status_code": 0,
            "operation": "",
            "error_code": self.status.as_u16(),
            "error": self.message,
            "metadata": null,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"imagestore\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_told_by_content_type() {
        let req = |ct: &str| {
            Request::builder()
                .header("content-type", ct)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(!is_grpc(&req("application/json")));
        assert!(!is_grpc(&Request::builder().body(()).unwrap()));
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_any() {
        let req = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(has_etag(&req("\"a\", \"b\""), "\"b\""));
        assert!(has_etag(&req("W/\"b\""), "\"b\""));
        assert!(has_etag(&req("*"), "\"b\""));
        assert!(!has_etag(&req("\"a\""), "\"b\""));
        assert!(!has_etag(&http::HeaderMap::new(), "\"b\""));
    }

    #[test]
    fn each_code_has_one_status() {
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(tonic::Code::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            http_status(tonic::Code::Unauthenticated),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            http_status(tonic::Code::DataLoss),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
