//! Blobs.Download read from the answer's frames ([`frames::Messages`]): a
//! chunk's bytes stay in the frames they arrived in, where tonic's decoder
//! copies every frame into a buffer of its own first (10 % of `imagestore
//! export`'s CPU, perf). The node writes the answer the same way round.

use imagestore_proto::frames::{self, Messages, Pieces};
use imagestore_proto::v1 as pb;
use tonic::Status;
use tonic::transport::Channel;

use crate::{Client, Error, MAX_MESSAGE};

/// A download under way.
pub(crate) struct Download(Messages);

impl Client {
    /// Asks the blob node at `node` for `request`'s bytes.
    pub(crate) async fn download(
        &self,
        node: &str,
        request: &pb::DownloadRequest,
    ) -> Result<Download, Error> {
        let channel = self.blob_channel(node, None).await?;
        Ok(Download::start(channel, request).await?)
    }
}

impl Download {
    async fn start(channel: Channel, request: &pb::DownloadRequest) -> Result<Self, Status> {
        let mut call = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("/{}/Download", pb::blobs_server::SERVICE_NAME))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers");
        for (key, value) in imagestore_telemetry::propagation::trace_headers() {
            call = call.header(key, value);
        }
        let body = http_body_util::Full::new(frames::encode(request));
        let call = call
            .body(tonic::body::Body::new(body))
            .map_err(|e| Status::internal(format!("making the download request: {e}")))?;
        let answer = tower::ServiceExt::oneshot(channel, call)
            .await
            .map_err(|e| Status::from_error(e.into()))?;
        // An error before any message comes as headers alone (trailers-only).
        if let Some(status) = Status::from_header_map(answer.headers())
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        if answer.status() != http::StatusCode::OK {
            return Err(Status::unavailable(format!(
                "the blob node answered HTTP {} to a download",
                answer.status()
            )));
        }
        Ok(Self(Messages::answer(answer.into_body(), MAX_MESSAGE)))
    }

    /// The next chunk's bytes as slices of the frames they came in (empty for
    /// a message without any); None once the answer ended well, else its error.
    pub(crate) async fn next(&mut self) -> Option<Result<Pieces, Status>> {
        let message = match self.0.next_len().await {
            Ok(Some(len)) => self.0.next(len).await,
            Ok(None) => {
                let status = self.0.status();
                return (status.code() != tonic::Code::Ok).then_some(Err(status));
            }
            Err(status) => Err(status),
        };
        Some(message.and_then(|message| {
            let not_an_answer = |e: Status| {
                Status::internal(format!(
                    "the blob node's answer is not a download's: {}",
                    e.message()
                ))
            };
            let (rest, data) =
                frames::split(message, *frames::DOWNLOAD_DATA).map_err(not_an_answer)?;
            // The other fields (the part's info) must make a message too.
            frames::decode::<pb::DownloadResponse>(rest).map_err(not_an_answer)?;
            Ok(data)
        }))
    }
}
