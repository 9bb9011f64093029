//! The blob node's HTTP face: the files the control plane redirects LXD and
//! Incus hosts to, `GET|HEAD /blobs/{fingerprint}/{name}?ticket=…`, with
//! Content-Length, the SHA-256 as ETag, single byte ranges, and caching for
//! content that never changes under its name.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_range_header::parse_range_header_with_max_ranges;
use imagestore_auth::Scope;
use imagestore_image::{Fingerprint, export_file_name};
use imagestore_server::http::{HttpError, has_etag};
use imagestore_store::ReadShape;
use serde::Deserialize;
use tonic::Status;

use crate::NodeContext;
use crate::error::BlobError;

pub fn router(node: Arc<NodeContext>) -> Router {
    // get() answers HEAD as well.
    Router::new()
        .route("/blobs/{fingerprint}/{name}", get(file))
        .with_state(node)
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    #[serde(default)]
    ticket: String,
}

/// The HTTP answer for an error: a ticket that does not allow the download is
/// 403 (there is nothing to authenticate with but a new ticket); the rest as
/// their gRPC code maps.
fn http_error(e: BlobError) -> HttpError {
    match e {
        BlobError::Ticket(t) => HttpError::with_status(StatusCode::FORBIDDEN, t.to_string()),
        other => Status::from(other).into(),
    }
}

async fn file(
    State(node): State<Arc<NodeContext>>,
    Path((fingerprint, name)): Path<(String, String)>,
    Query(query): Query<FileQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match serve(node, &fingerprint, &name, &query.ticket, &method, &headers).await {
        Ok(response) => response,
        Err(e) => http_error(e).into_response(),
    }
}

/// Which bytes to send: all, one range, or none that can be.
enum Span {
    All,
    Range(u64, u64),
    Unsatisfiable,
}

/// The range asked for, by RFC 9110: a Range that cannot be parsed, asks for more
/// than one range, or whose If-Range names other content is ignored.
fn span(headers: &HeaderMap, size: u64, etag: &str) -> Span {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Span::All;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return Span::All;
    }
    let Ok(parsed) = parse_range_header_with_max_ranges(range, std::num::NonZeroUsize::MIN) else {
        return Span::All;
    };
    match parsed.validate(size).as_deref() {
        Ok([one]) => Span::Range(*one.start(), *one.end()),
        Ok(_) => Span::All,
        Err(_) => Span::Unsatisfiable,
    }
}

async fn serve(
    node: Arc<NodeContext>,
    fingerprint: &str,
    name: &str,
    ticket: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, BlobError> {
    let fp = Fingerprint::parse(fingerprint)
        .map_err(|e| BlobError::InvalidArgument(format!("fingerprint: {e}")))?;
    node.tickets
        .check(ticket, &Scope::Download(fp.as_str().to_owned()))?;
    let guard = crate::admit(&node)?;
    let (store, parts) = node.lookup(fp.as_str()).await?.servable(&node)?;
    let stored = parts
        .iter()
        .find(|p| {
            let p = &p.part;
            export_file_name(fp.as_str(), crate::export_role(p.role), &p.extension) == name
        })
        .ok_or_else(|| BlobError::NotFound(format!("image {fp} has no file {name:?}")))?;
    let part = &stored.part;
    let etag = format!("\"{}\"", part.sha256);
    let mut reply = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| BlobError::Internal(e.to_string()));
    reply.insert(header::ETAG, value(&etag)?);
    reply.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The name is content-addressed; the ticket keeps it from shared caches.
    reply.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if has_etag(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, reply).into_response());
    }
    let (status, offset, length) = match span(headers, part.size, &etag) {
        Span::All => (StatusCode::OK, 0, part.size),
        Span::Range(first, last) => {
            reply.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {first}-{last}/{}", part.size))?,
            );
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        Span::Unsatisfiable => {
            reply.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes */{}", part.size))?,
            );
            let message = format!(
                "the range asked for is outside the file, which has {} bytes",
                part.size
            );
            let mut response =
                HttpError::with_status(StatusCode::RANGE_NOT_SATISFIABLE, message).into_response();
            response.headers_mut().extend(reply);
            return Ok(response);
        }
    };
    reply.insert(header::CONTENT_LENGTH, value(&length.to_string())?);
    reply.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if method == Method::HEAD || length == 0 {
        return Ok((status, reply).into_response());
    }
    let objects = stored.objects(&store).await?;
    let data = store.read_part_shaped(objects, offset, length, ReadShape::FLEET);
    let body = data.map(move |chunk| {
        let _active = &guard;
        chunk
            .inspect(|data| crate::download::sent(data.len()))
            .inspect_err(|e| tracing::error!(error = %e, "reading a file for HTTP failed"))
    });
    Ok((status, reply, Body::from_stream(body)).into_response())
}
