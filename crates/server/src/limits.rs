//! Admission for gRPC requests, before any handler or decoder runs: a request
//! message larger than the server takes is RESOURCE_EXHAUSTED from its frame
//! header (tonic itself would buffer up to the limit and answer OUT_OF_RANGE),
//! and past `max_concurrent` requests at once another is shed at once with
//! RESOURCE_EXHAUSTED (tower's global concurrency limit and load shedding)
//! rather than queued behind the others.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use tower::ServiceBuilder;

/// gRPC requests one server serves at once unless told otherwise.
pub const DEFAULT_MAX_CONCURRENT: usize = 4096;

/// tonic's own decoding limit, for services added without one.
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;

/// The largest request message each service takes, by service name.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageLimits(HashMap<&'static str, usize>);

impl MessageLimits {
    pub(crate) fn set(&mut self, service: &'static str, max: usize) {
        self.0.insert(service, max);
    }

    /// The limit for a request to `path` ("/package.Service/Method").
    fn for_path(&self, path: &str) -> usize {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        self.0.get(service).copied().unwrap_or(DEFAULT_MAX_MESSAGE)
    }
}

/// `grpc` with both limits applied.
pub(crate) fn apply(grpc: Router, messages: MessageLimits, max_concurrent: usize) -> Router {
    let messages = Arc::new(messages);
    let max_concurrent = max_concurrent.max(1);
    grpc.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |_: tower::BoxError| async move {
                    // Only the load shedder fails here: everything below answers.
                    tonic::Status::resource_exhausted(format!(
                        "the server is serving its limit of {max_concurrent} requests at once; \
                     retry shortly"
                    ))
                    .into_http::<axum::body::Body>()
                    .into_response()
                },
            ))
            .load_shed()
            // One count for every service and route of the server (a
            // ConcurrencyLimitLayer would count each route on its own).
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                max_concurrent,
            ))
            .map_request(move |req: http::Request<axum::body::Body>| {
                let max = messages.for_path(req.uri().path());
                req.map(|body| axum::body::Body::new(FrameLimit::new(body, max)))
            }),
    )
}

/// Passes a gRPC request body through while reading each message's length
/// from its 5-byte frame header; a length over the limit ends the body with
/// RESOURCE_EXHAUSTED, which tonic hands to the caller as it is.
struct FrameLimit<B> {
    inner: B,
    limit: usize,
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to pass.
    remaining: u64,
}

impl<B> FrameLimit<B> {
    fn new(inner: B, limit: usize) -> Self {
        Self {
            inner,
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
        }
    }

    /// Follows the frames through one chunk.
    fn check(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data.advance(n);
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data.advance(n);
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if len as usize > self.limit {
                    return Err(tonic::Status::resource_exhausted(format!(
                        "a request message of {len} bytes is larger than this server takes \
                         ({} bytes)",
                        self.limit
                    )));
                }
                self.remaining = u64::from(len);
            }
        }
        Ok(())
    }
}

impl<B> Body for FrameLimit<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = self.check(data)
                {
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn frames_are_followed_across_any_cut_and_a_long_one_is_refused() {
        let mut stream = frame(10);
        stream.extend(frame(0));
        stream.extend(frame(100));
        for cut in [1, 2, 3, 5, 7, 64] {
            let mut limit = FrameLimit::new((), 100);
            for chunk in stream.chunks(cut) {
                limit.check(chunk).unwrap();
            }
            let mut over = FrameLimit::new((), 99);
            let refused = stream
                .chunks(cut)
                .map(|c| over.check(c))
                .find_map(Result::err);
            let status = refused.expect("the 100-byte message is over 99");
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert!(
                status.message().contains("100 bytes"),
                "{}",
                status.message()
            );
        }
    }
}
