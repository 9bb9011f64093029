//! The Blobs service as the server sees it. Blobs.Upload is read from the
//! request's frames here ([`crate::upload`]), so that its bytes stay in the
//! frames they arrived in; Blobs.Download's answers are written around the
//! stored chunks (each message's head, then the chunk as it was read), so
//! that they are not copied into an encode buffer. Any other call goes to
//! tonic's generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::Frame;
use imagestore_proto::frames::{self, Messages};
use imagestore_proto::v1 as pb;
use pb::blobs_server::BlobsServer;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::NodeContext;

type Inner = BlobsServer<crate::BlobService>;

#[derive(Clone)]
pub(crate) struct Blobs {
    node: Arc<NodeContext>,
    inner: Inner,
    /// The largest message an upload may send.
    max_message: usize,
}

impl Blobs {
    pub(crate) fn new(node: Arc<NodeContext>, inner: Inner, max_message: usize) -> Self {
        Self {
            node,
            inner,
            max_message,
        }
    }
}

impl NamedService for Blobs {
    const NAME: &'static str = <Inner as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for Blobs {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(Self::NAME))
            .and_then(|p| p.strip_prefix('/'));
        let (node, limit) = (self.node.clone(), self.max_message);
        match method {
            Some("Upload") => Box::pin(async move {
                let messages = Messages::new(req.into_body(), limit);
                Ok(match crate::upload::receive(node, messages).await {
                    Ok(answer) => unary(&answer),
                    Err(status) => status.into_http(),
                })
            }),
            Some("Download") => Box::pin(async move {
                let mut messages = Messages::new(req.into_body(), limit);
                let answer = match request(&mut messages).await {
                    Ok(req) => crate::download::open(node, req).await,
                    Err(status) => Err(status),
                };
                Ok(match answer {
                    Ok((info, chunks)) => download(info, chunks),
                    Err(status) => status.into_http(),
                })
            }),
            _ => {
                let mut inner = self.inner.clone();
                Box::pin(async move { tower::Service::call(&mut inner, req).await })
            }
        }
    }
}

/// A unary call's request message.
async fn request<M: prost::Message + Default>(messages: &mut Messages) -> Result<M, Status> {
    let len = messages
        .next_len()
        .await?
        .ok_or_else(|| Status::invalid_argument("the request has no message"))?;
    frames::decode(messages.next(len).await?)
}

/// A download's answer: a message with the part's info, then one per chunk
/// (its head and the chunk as frames of their own), then trailers with the
/// status: OK at the end, or the error that stopped the chunks.
fn download(info: pb::PartInfo, chunks: crate::download::Chunks) -> http::Response<Body> {
    let first = frames::encode(&pb::DownloadResponse {
        data: Bytes::new(),
        info: Some(info),
    });
    let ended = futures::stream::once(async { None });
    let frames = chunks
        .map(Some)
        .chain(ended)
        .scan(false, |stopped, chunk| {
            let frames = match chunk {
                _ if *stopped => return futures::future::ready(None),
                Some(Ok(data)) if data.is_empty() => vec![],
                Some(Ok(data)) => vec![
                    Frame::data(frames::bytes_field_head(*frames::DOWNLOAD_DATA, data.len())),
                    Frame::data(data),
                ],
                Some(Err(status)) => {
                    *stopped = true;
                    vec![Frame::trailers(trailers(status))]
                }
                None => vec![Frame::trailers(trailers(Status::ok("")))],
            };
            futures::future::ready(Some(frames))
        })
        .flat_map(|frames| futures::stream::iter(frames.into_iter().map(Ok::<_, Status>)));
    let body = futures::stream::once(async move { Ok(Frame::data(first)) }).chain(frames);
    grpc_response(Body::new(http_body_util::StreamBody::new(body)))
}

/// `status` as trailers (the headers of tonic's trailers-only answer).
fn trailers(status: Status) -> http::HeaderMap {
    let mut headers = status.into_http::<Body>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

fn grpc_response(body: Body) -> http::Response<Body> {
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .expect("a valid response")
}

/// A unary answer: the message, then trailers with status OK.
fn unary(answer: &impl prost::Message) -> http::Response<Body> {
    let frames: [Result<Frame<Bytes>, Status>; 2] = [
        Ok(Frame::data(frames::encode(answer))),
        Ok(Frame::trailers(trailers(Status::ok("")))),
    ];
    grpc_response(Body::new(http_body_util::StreamBody::new(
        futures::stream::iter(frames),
    )))
}
