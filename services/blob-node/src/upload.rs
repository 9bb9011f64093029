//! Blobs.Upload: the receive loop. It checks every message against the stream's
//! offsets and hands the bytes to [`Ingest`].

use std::sync::Arc;

use imagestore_proto::v1 as pb;
use tonic::{Status, Streaming};

use crate::NodeContext;
use crate::error::BlobError;
use crate::ingest::{Ended, Ingest, Opened};

/// Runs one upload stream to its end.
pub async fn receive(
    node: Arc<NodeContext>,
    mut stream: Streaming<pb::UploadRequest>,
) -> Result<pb::UploadResponse, Status> {
    let first = stream.message().await?.ok_or_else(|| {
        Status::invalid_argument(
            "the upload stream is empty: the first message must name the upload",
        )
    })?;
    let mut ingest = match &first.first_message {
        Some(pb::upload_request::FirstMessage::Upload(name)) => {
            match Ingest::resume(node.clone(), name).await? {
                Opened::Ready(ingest) => *ingest,
                Opened::AlreadyComplete(image) => {
                    return Ok(pb::UploadResponse {
                        committed_size: image.size,
                        complete: true,
                        image: Some(image),
                    });
                }
            }
        }
        Some(pb::upload_request::FirstMessage::Spec(spec)) => {
            Ingest::one_shot(node.clone(), spec.clone())?
        }
        None => {
            return Err(Status::invalid_argument(
                "the first message must set upload (a session from CreateUpload) or spec (a one-shot upload)",
            ));
        }
    };
    let _active = crate::transfer(&node);
    match run(&mut stream, &mut ingest, first, node.config.max_chunk_bytes).await {
        Ok(Step::Finish) => match ingest.finish().await {
            Ok(image) => Ok(done(Ended::Complete(image))),
            Err(e) => Err(e.into()),
        },
        Ok(Step::Ended) => Ok(done(Ended::Paused(ingest.pause().await?))),
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
            ingest.fail(&e).await;
            Err(e.into())
        }
        Err(Stop::Passing(e)) => {
            // A passing fault (store, control plane): keep the session for a retry.
            let _ = ingest.pause().await;
            Err(e.into())
        }
    }
}

fn done(ended: Ended) -> pb::UploadResponse {
    match ended {
        Ended::Complete(image) => pb::UploadResponse {
            committed_size: image.size,
            complete: true,
            image: Some(image),
        },
        Ended::Paused(committed) => pb::UploadResponse {
            committed_size: committed,
            complete: false,
            image: None,
        },
    }
}

enum Step {
    Finish,
    Ended,
}

enum Stop {
    /// The transport failed or the client cancelled.
    Broken(Status),
    /// The client sent something wrong: the upload cannot go on.
    Refused(BlobError),
    /// Storage or the control plane failed: worth a retry.
    Passing(BlobError),
}

fn refuse(msg: String) -> Stop {
    Stop::Refused(BlobError::InvalidArgument(msg))
}

fn classify(e: BlobError) -> Stop {
    match e {
        BlobError::Store(_) | BlobError::ControlPlane(_) | BlobError::Internal(_) => {
            Stop::Passing(e)
        }
        other => Stop::Refused(other),
    }
}

async fn run(
    stream: &mut Streaming<pb::UploadRequest>,
    ingest: &mut Ingest,
    first: pb::UploadRequest,
    max_chunk: u32,
) -> Result<Step, Stop> {
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
        ingest.write(fresh).await.map_err(classify)?;
        // A resent message whose end-of-metadata was recorded before is not news.
        let resent = skip == msg.data.len() && !msg.data.is_empty();
        if msg.end_of_metadata && !(resent && ingest.metadata_ended()) {
            ingest.end_metadata().await.map_err(classify)?;
        }
        if msg.finish_write {
            return match stream.message().await {
                Ok(None) => Ok(Step::Finish),
                Ok(Some(_)) => Err(refuse("a message came after finish_write".into())),
                Err(status) => Err(Stop::Broken(status)),
            };
        }
        first_message = false;
        message = match stream.message().await {
            Ok(m) => m,
            Err(status) => return Err(Stop::Broken(status)),
        };
    }
}
