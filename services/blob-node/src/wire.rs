//! The Blobs service as the server sees it: Blobs.Upload is read from the
//! request's frames here ([`crate::upload`]), so that its bytes stay in the
//! frames they arrived in; every other call goes to tonic's generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

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
        let upload = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(Self::NAME))
            == Some("/Upload");
        if !upload {
            let mut inner = self.inner.clone();
            return Box::pin(async move { tower::Service::call(&mut inner, req).await });
        }
        let (node, limit) = (self.node.clone(), self.max_message);
        Box::pin(async move {
            let messages = Messages::new(req.into_body(), limit);
            Ok(match crate::upload::receive(node, messages).await {
                Ok(answer) => unary(&answer),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// A unary answer: the message, then trailers with status OK.
fn unary(answer: &impl prost::Message) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: [Result<Frame<bytes::Bytes>, Status>; 2] = [
        Ok(Frame::data(frames::encode(answer))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(body))
        .expect("a valid response")
}
