//! Copying a stored part from one store to another under the same keys,
//! hashed while it streams, so that a copy is known good before anyone
//! records it.

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::{BlobStore, Result, StoredSegment};

/// What a copy found when it hashed the bytes it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// The copy holds exactly the part: its SHA-256 and size.
    Verified,
    /// The source's bytes are not the part's: nothing was kept in the target.
    Mismatch {
        found_sha256: String,
        found_size: u64,
    },
}

impl BlobStore {
    /// Copies the part stored here as `objects` into `to`, object by object
    /// under the same keys, hashing every byte; `moved` hears of each chunk.
    /// When the bytes do not hash to `sha256` (or do not add up to `size`), or
    /// anything fails, what was written to `to` is deleted again (an object
    /// of `to` with a key it already had is replaced only by a whole, verified
    /// object: each appears at once when finished).
    pub async fn copy_part_to(
        &self,
        to: &BlobStore,
        objects: &[StoredSegment],
        sha256: &str,
        size: u64,
        moved: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Copied> {
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut written: Vec<&str> = Vec::new();
        let outcome = async {
            for object in objects {
                let whole = StoredSegment {
                    offset: 0,
                    size: object.size,
                    key: object.key.clone(),
                };
                let mut data = self.read_part(vec![whole], 0, 0);
                let mut writer = to.begin_segment(&object.key).await?;
                while let Some(chunk) = data.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = writer.abort().await;
                            return Err(e);
                        }
                    };
                    hash.update(&chunk);
                    total += chunk.len() as u64;
                    moved(chunk.len() as u64);
                    if let Err(e) = writer.put(chunk).await {
                        let _ = writer.abort().await;
                        return Err(e);
                    }
                }
                writer.finish().await?;
                written.push(&object.key);
            }
            Ok(())
        }
        .await;
        let found = hex::encode(hash.finalize());
        let verdict = match outcome {
            Ok(()) if found == sha256 && total == size => return Ok(Copied::Verified),
            Ok(()) => Ok(Copied::Mismatch {
                found_sha256: found,
                found_size: total,
            }),
            Err(e) => Err(e),
        };
        for key in written {
            if let Err(e) = to.delete(key).await {
                tracing::warn!(key, error = %e, "could not delete a copy that failed");
            }
        }
        verdict
    }
}
