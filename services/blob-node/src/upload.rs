//! Blobs.Upload: the receive loop. It checks every message against the stream's
//! offsets and hands the bytes to [`Ingest`].

use std::sync::Arc;

use imagestore_auth::Scope;
use imagestore_proto::v1 as pb;
use tonic::{Status, Streaming};

use crate::NodeContext;
use crate::error::BlobError;
use crate::ingest::{Ingest, Opened};

/// Runs one upload stream to its end.
pub async fn receive(
    node: Arc<NodeContext>,
    mut stream: Streaming<pb::UploadRequest>,
) -> Result<pb::UploadResponse, Status> {
    let _active = crate::admit(&node)?;
    tracing::Span::current().record("node", node.id.as_str());
    let first = stream.message().await?.ok_or_else(|| {
        Status::invalid_argument(
            "the upload stream is empty: the first message must name the upload",
        )
    })?;
    let mut ingest = match &first.first_message {
        Some(pb::upload_request::FirstMessage::Upload(name)) => {
            node.tickets
                .check(&first.ticket, &Scope::Upload(name.clone()))
                .map_err(BlobError::from)?;
            match Ingest::resume(node.clone(), name).await? {
                Opened::Ready(ingest) => *ingest,
                Opened::AlreadyComplete(image) => return Ok(complete(*image)),
            }
        }
        Some(pb::upload_request::FirstMessage::Spec(spec)) => {
            let fp = &spec.expected_fingerprint;
            node.tickets
                .check(
                    &first.ticket,
                    &Scope::OneShot((!fp.is_empty()).then(|| fp.clone())),
                )
                .map_err(BlobError::from)?;
            Ingest::one_shot(node.clone(), spec.clone())?
        }
        None => {
            return Err(Status::invalid_argument(
                "the first message must set upload (a session from CreateUpload) or spec (a one-shot upload)",
            ));
        }
    };
    match run(&mut stream, &mut ingest, first, &node.config).await {
        Ok(Step::Finish) => match ingest.finish().await {
            Ok(image) => {
                let span = tracing::Span::current();
                span.record("image", image.fingerprint.as_str());
                span.record("bytes", image.size);
                Ok(complete(image))
            }
            Err(e) => Err(e.into()),
        },
        Ok(Step::Ended) => Ok(pb::UploadResponse {
            committed_size: ingest.pause().await?,
            complete: false,
            image: None,
        }),
        Err(Stop::Broken(status)) => {
            // The client went away (or cancelled): keep what is committed-worthy.
            tracing::info!(error = %status, "upload stream broken");
            match ingest.pause().await {
                Ok(committed) => tracing::info!(committed, "upload paused; it can resume"),
                Err(e) => tracing::info!(error = %e, "upload dropped"),
            }
            Err(status)
        }
        Err(Stop::Refused(e)) => {
            // A malformed message or a passing fault (store, control plane) says
            // nothing against the bytes already taken: keep a session resumable (a
            // one-shot upload has nothing to resume and is dropped).
            let _ = ingest.pause().await;
            Err(e.into())
        }
    }
}

fn complete(image: pb::Image) -> pb::UploadResponse {
    pb::UploadResponse {
        committed_size: image.size,
        complete: true,
        image: Some(image),
    }
}

enum Step {
    Finish,
    Ended,
}

enum Stop {
    /// The transport failed or the client cancelled.
    Broken(Status),
    /// A message was wrong, or storage or the control plane failed.
    Refused(BlobError),
}

fn refuse(msg: String) -> Stop {
    Stop::Refused(BlobError::InvalidArgument(msg))
}

/// The next message; while none comes, what arrived is committed every
/// `commit_interval`, so that a stream gone quiet loses nothing it sent.
async fn next(
    stream: &mut Streaming<pb::UploadRequest>,
    ingest: &mut Ingest,
    every: std::time::Duration,
) -> Result<Option<pb::UploadRequest>, Stop> {
    loop {
        tokio::select! {
            // Streaming::message keeps partial frames in the stream: dropping the
            // future when the timer wins loses nothing.
            message = stream.message() => return message.map_err(Stop::Broken),
            _ = tokio::time::sleep(every) => {
                ingest.checkpoint().await.map_err(Stop::Refused)?;
            }
        }
    }
}

async fn run(
    stream: &mut Streaming<pb::UploadRequest>,
    ingest: &mut Ingest,
    first: pb::UploadRequest,
    limits: &crate::NodeLimits,
) -> Result<Step, Stop> {
    let max_chunk = limits.max_chunk_bytes;
    let mut message = Some(first);
    let mut first_message = true;
    loop {
        let Some(msg) = message.take() else {
            return Ok(Step::Ended);
        };
        if !first_message && msg.first_message.is_some() {
            return Err(refuse(
                "upload or spec may only be set on the first message".into(),
            ));
        }
        if msg.data.len() > max_chunk as usize {
            return Err(refuse(format!(
                "a message carries {} bytes; the most is {max_chunk} (max_chunk_bytes)",
                msg.data.len()
            )));
        }
        let expected = ingest.position();
        let offset = msg.write_offset;
        if offset > expected {
            let committed = ingest.committed();
            return Err(if first_message {
                Stop::Refused(BlobError::OutOfRange(format!(
                    "write_offset {offset} is beyond the {committed} bytes committed: continue from {committed}"
                )))
            } else {
                refuse(format!(
                    "write_offset {offset} leaves a gap: the next byte expected is {expected}"
                ))
            });
        }
        // Bytes below the position were received already: skip them (a resend
        // after a resume may overlap what was committed).
        let skip = (expected - offset).min(msg.data.len() as u64) as usize;
        let fresh = msg.data.slice(skip..);
        ingest.write(fresh).await.map_err(Stop::Refused)?;
        // A resent message whose end-of-metadata was recorded before is not news.
        let resent = skip == msg.data.len() && !msg.data.is_empty();
        if msg.end_of_metadata && !(resent && ingest.metadata_ended()) {
            ingest.end_metadata().await.map_err(Stop::Refused)?;
        }
        if msg.finish_write {
            return match stream.message().await {
                Ok(None) => Ok(Step::Finish),
                Ok(Some(_)) => Err(refuse("a message came after finish_write".into())),
                Err(status) => Err(Stop::Broken(status)),
            };
        }
        first_message = false;
        message = next(stream, ingest, limits.commit_interval).await?;
    }
}
