//! Blobs.Download: one part of an image from an offset.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use futures::{Stream, StreamExt};
use imagestore_auth::Scope;
use imagestore_image::export_file_name;
use imagestore_proto::v1 as pb;
use tonic::Status;

use crate::NodeContext;
use crate::error::BlobError;

pub type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadResponse, Status>> + Send>>;

/// The part's bytes from the request's offset, chunk by chunk.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// What a download answers: the part, then its bytes (counted as a transfer
/// until the stream is dropped).
pub async fn open(
    node: Arc<NodeContext>,
    req: pb::DownloadRequest,
) -> Result<(pb::PartInfo, Chunks), Status> {
    let fp = imagestore_image::Fingerprint::parse(&req.fingerprint)
        .map_err(|e| Status::invalid_argument(format!("fingerprint: {e}")))?;
    node.tickets
        .check(&req.ticket, &Scope::Download(fp.as_str().to_owned()))
        .map_err(BlobError::from)?;
    let want = pb::PartRole::try_from(req.part)
        .ok()
        .filter(|r| *r != pb::PartRole::Unspecified)
        .ok_or_else(|| Status::invalid_argument("part is required: UNIFIED, METADATA or ROOTFS"))?;
    let guard = crate::admit(&node)?;
    let (store, parts) = node.lookup(fp.as_str()).await?.servable(&node)?;
    let stored = parts
        .iter()
        .find(|p| p.part.role == want as i32)
        .ok_or_else(|| {
            let has: Vec<&str> = parts
                .iter()
                .map(|p| {
                    pb::PartRole::try_from(p.part.role)
                        .map(|r| r.as_str_name())
                        .unwrap_or("?")
                })
                .collect();
            Status::not_found(format!(
                "image {fp} has no {} part; it has {}",
                want.as_str_name(),
                has.join(" and ")
            ))
        })?;
    let part = &stored.part;
    if req.read_offset > part.size {
        return Err(Status::out_of_range(format!(
            "read_offset {} is past the end of the {}-byte part",
            req.read_offset, part.size
        )));
    }
    let info = pb::PartInfo {
        size: part.size,
        sha256: part.sha256.clone(),
        file_name: export_file_name(fp.as_str(), crate::export_role(part.role), &part.extension),
    };
    let objects = stored.objects(&store).await.map_err(BlobError::from)?;
    let data = store.read_part(objects, req.read_offset, req.read_limit);
    let chunks = data.map(move |chunk| {
        let _active = &guard;
        chunk
            .inspect(|data| sent(data.len()))
            .map_err(|e| Status::from(BlobError::from(e)))
    });
    Ok((info, Box::pin(chunks)))
}

/// Counts image bytes sent, for the metrics.
pub(crate) fn sent(n: usize) {
    imagestore_telemetry::metrics::metrics()
        .bytes_sent
        .inc_by(n as u64);
}
