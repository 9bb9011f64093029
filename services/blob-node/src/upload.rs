//! Blobs.Upload: the receive loop. It reads each message from the request's
//! frames ([`frames::Messages`]), its `data` as slices of them held against the
//! node's budget, checks it against the stream's offsets and hands the bytes to
//! [`Ingest`].

use std::sync::Arc;

use bytes::Buf;
use imagestore_auth::Scope;
use imagestore_proto::frames::{self, Messages, Pieces};
use imagestore_proto::v1 as pb;
use tonic::Status;

use crate::NodeContext;
use crate::budget::Budget;
use crate::error::BlobError;
use crate::ingest::{Ingest, Opened};

/// One message of the stream: every field but `data`, and `data` as slices,
/// each held against the node's budget.
struct UploadMessage {
    fields: pb::UploadRequest,
    data: Pieces,
}

/// The next message. Room for it is taken from the node's budget once its
/// prefix gives its length, before it is read: a transfer waiting for room
/// holds no message, and one that is sent slowly holds one message's room.
/// Cancelling it loses nothing.
async fn next_message(
    messages: &mut Messages,
    budget: &Budget,
) -> Result<Option<UploadMessage>, Status> {
    let Some(len) = messages.next_len().await? else {
        return Ok(None);
    };
    let room = budget.reserve(len).await;
    let message = messages.next(len).await?;
    let (rest, data) = frames::split(message, *frames::UPLOAD_DATA)?;
    let mut held = Pieces::default();
    for slice in data.into_slices() {
        held.push(room.hold(slice));
    }
    Ok(Some(UploadMessage {
        fields: frames::decode(rest)?,
        data: held,
    }))
}

/// Runs one upload stream to its end.
pub async fn receive(
    node: Arc<NodeContext>,
    mut stream: Messages,
) -> Result<pb::UploadResponse, Status> {
    let _active = crate::admit(&node)?;
    tracing::Span::current().record("node", node.id.as_str());
    let first = next_message(&mut stream, &node.budget)
        .await?
        .ok_or_else(|| {
            Status::invalid_argument(
                "the upload stream is empty: the first message must name the upload",
            )
        })?;
    let mut ingest = match &first.fields.first_message {
        Some(pb::upload_request::FirstMessage::Upload(name)) => {
            node.tickets
                .check(&first.fields.ticket, &Scope::Upload(name.clone()))
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
                    &first.fields.ticket,
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
    match run(&mut stream, &mut ingest, first, &node).await {
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
    stream: &mut Messages,
    ingest: &mut Ingest,
    node: &NodeContext,
) -> Result<Option<UploadMessage>, Stop> {
    loop {
        tokio::select! {
            // next_message keeps partial frames in the stream: dropping the
            // future when the timer wins loses nothing.
            message = next_message(stream, &node.budget) => return message.map_err(Stop::Broken),
            _ = tokio::time::sleep(node.config.commit_interval) => {
                ingest.checkpoint().await.map_err(Stop::Refused)?;
            }
        }
    }
}

async fn run(
    stream: &mut Messages,
    ingest: &mut Ingest,
    first: UploadMessage,
    node: &NodeContext,
) -> Result<Step, Stop> {
    let max_chunk = node.config.max_chunk_bytes;
    let mut message = Some(first);
    let mut first_message = true;
    loop {
        let Some(msg) = message.take() else {
            return Ok(Step::Ended);
        };
        if !first_message && msg.fields.first_message.is_some() {
            return Err(refuse(
                "upload or spec may only be set on the first message".into(),
            ));
        }
        let mut data = msg.data;
        let len = data.remaining();
        if len > max_chunk as usize {
            return Err(refuse(format!(
                "a message carries {len} bytes; the most is {max_chunk} (max_chunk_bytes)"
            )));
        }
        let expected = ingest.position();
        let offset = msg.fields.write_offset;
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
        let skipped = (expected - offset).min(len as u64) as usize;
        data.advance(skipped);
        ingest.write_held(data).await.map_err(Stop::Refused)?;
        // A resent message whose end-of-metadata was recorded before is not news.
        let resent = skipped == len && len > 0;
        if msg.fields.end_of_metadata && !(resent && ingest.metadata_ended()) {
            ingest.end_metadata().await.map_err(Stop::Refused)?;
        }
        if msg.fields.finish_write {
            return match next_message(stream, &node.budget).await {
                Ok(None) => Ok(Step::Finish),
                Ok(Some(_)) => Err(refuse("a message came after finish_write".into())),
                Err(status) => Err(Stop::Broken(status)),
            };
        }
        first_message = false;
        message = next(stream, ingest, node).await?;
    }
}
