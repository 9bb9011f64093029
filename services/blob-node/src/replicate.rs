//! Verified copies of an image's parts in more stores: for uploads and imports
//! that name several stores, for Images.CopyImage, and for the scrubber's
//! repairs. Every copy is hashed as it streams and kept only when it matches.

use imagestore_proto::v1 as pb;
use imagestore_store::{BlobStore, Copied, StoredSegment};

use crate::NodeContext;
use crate::error::{BlobError, BlobResult};

/// One part to copy: where it lies, what it must hash to, its objects.
#[derive(Debug, Clone)]
pub struct PartCopy {
    pub prefix: String,
    pub sha256: String,
    pub size: u64,
    pub objects: Vec<StoredSegment>,
}

/// Where copies were made, and where they failed.
#[derive(Debug, Default)]
pub struct Replicated {
    pub stored: Vec<String>,
    pub failed: Vec<pb::FailedStore>,
}

/// Copies every part from `from` into each of `targets`, each target all or
/// nothing: a target that fails keeps none of the image, and is reported in
/// `failed`. A source whose bytes do not hash to the record fails the whole
/// copy (DATA_LOSS), with nothing kept anywhere.
pub async fn replicate(
    node: &NodeContext,
    from: &BlobStore,
    parts: &[PartCopy],
    targets: &[String],
    moved: &(dyn Fn(u64) + Send + Sync),
) -> BlobResult<Replicated> {
    let mut done = Replicated::default();
    for name in targets {
        let to = match node.stores.get(name) {
            Ok(s) => s,
            Err(e) => {
                done.failed.push(failed(name, &e.to_string()));
                continue;
            }
        };
        match copy_parts(from, to, parts, moved).await {
            Ok(()) => done.stored.push(name.clone()),
            Err(CopyFailed::Target(message)) => {
                remove(node, parts, std::slice::from_ref(name)).await;
                tracing::warn!(store = %name, error = %message, "copying an image to a store failed");
                done.failed.push(failed(name, &message));
            }
            Err(CopyFailed::Source(e)) => {
                let mut made = done.stored.clone();
                made.push(name.clone());
                remove(node, parts, &made).await;
                return Err(e);
            }
        }
    }
    Ok(done)
}

fn failed(store: &str, message: &str) -> pb::FailedStore {
    pb::FailedStore {
        store: store.to_owned(),
        message: message.to_owned(),
    }
}

enum CopyFailed {
    /// The target could not take the bytes.
    Target(String),
    /// The source's bytes are not the image's.
    Source(BlobError),
}

async fn copy_parts(
    from: &BlobStore,
    to: &BlobStore,
    parts: &[PartCopy],
    moved: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), CopyFailed> {
    for part in parts {
        match from
            .copy_part_to(to, &part.objects, &part.sha256, part.size, moved)
            .await
        {
            Ok(Copied::Verified) => {}
            Ok(Copied::Mismatch {
                found_sha256,
                found_size,
            }) => {
                return Err(CopyFailed::Source(BlobError::DataLoss(format!(
                    "the stored part {} hashes to {found_sha256} ({found_size} bytes), not \
                     {} ({} bytes): nothing was copied; verify the image",
                    part.prefix, part.sha256, part.size
                ))));
            }
            Err(e) => return Err(CopyFailed::Target(e.to_string())),
        }
    }
    Ok(())
}

/// Deletes the image's parts from `stores` (copies that must not stay).
pub async fn remove(node: &NodeContext, parts: &[PartCopy], stores: &[String]) {
    for name in stores {
        let Ok(store) = node.stores.get(name) else {
            continue;
        };
        for part in parts {
            if let Err(e) = store.delete(&part.prefix).await {
                tracing::warn!(store = %name, prefix = part.prefix, error = %e, "could not delete a copy; the collector will not know of it");
            }
        }
    }
}

/// The parts of an image as a lookup or a registration names them.
pub fn parts_of(parts: &[pb::ImagePart], objects: Vec<Vec<StoredSegment>>) -> Vec<PartCopy> {
    parts
        .iter()
        .zip(objects)
        .map(|(p, objects)| PartCopy {
            prefix: p.storage_key.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
            objects,
        })
        .collect()
}
