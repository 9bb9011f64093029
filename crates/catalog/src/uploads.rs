//! Upload sessions: what a client declared, how far the bytes have come, and the
//! SHA-256 state at that offset, so that any blob node can continue.

use crate::params;
use crate::sql::{Db, OptionalExtension, Row};

use crate::Store;
use crate::error::{CatalogError, Result};
use crate::model::*;

const UPLOAD_COLUMNS: &str = "id, spec, state, committed_size, metadata_size, hash_image, hash_part, \
     lease, fingerprint, error_message, created_at, expires_at";

fn upload_from_row(r: &Row) -> Result<(Upload, String, String)> {
    Ok((
        Upload {
            id: r.get(0)?,
            spec: UploadSpec::default(),
            state: UploadState::Open,
            committed_size: r.get::<_, i64>(3)? as u64,
            metadata_size: r.get::<_, i64>(4)? as u64,
            hash_state: HashState {
                image: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                part: r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default(),
            },
            lease: r.get(7)?,
            fingerprint: r.get(8)?,
            error_message: r.get(9)?,
            created_at: r.get(10)?,
            expires_at: r.get(11)?,
            segments: Vec::new(),
        },
        r.get(1)?,
        r.get(2)?,
    ))
}

fn not_found(id: &str) -> CatalogError {
    CatalogError::NotFound(format!(
        "upload {id:?} not found: it never existed, or it expired and its staged bytes were deleted"
    ))
}

/// Loads a session that has not expired.
pub(crate) fn load(conn: &dyn Db, id: &str) -> Result<Upload> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"
        ))?
        .query_row([id], upload_from_row)
        .optional()?;
    let Some((mut upload, spec, state)) = row else {
        return Err(not_found(id));
    };
    if upload.state == UploadState::Open && upload.expires_at < now() {
        return Err(not_found(id));
    }
    upload.spec = serde_json::from_str(&spec)?;
    upload.state = UploadState::parse(&state)
        .ok_or_else(|| CatalogError::Corrupt(format!("upload state {state:?}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT start, length, storage_key FROM upload_segments WHERE upload_id = ?1 ORDER BY start",
    )?;
    upload.segments = stmt
        .query_map([id], |r| {
            Ok(Segment {
                start: r.get::<_, i64>(0)? as u64,
                length: r.get::<_, i64>(1)? as u64,
                storage_key: r.get(2)?,
            })
        })?
        .collect::<Result<_>>()?;
    Ok(upload)
}

/// Marks a storage key (or prefix ending in "/") as no longer referenced in
/// `stores` (every store when empty: recorded before stores had names), so
/// blob nodes reaching them delete its bytes.
pub(crate) fn release(tx: &dyn Db, stores: &[String], key: &str) -> Result<()> {
    let every = [String::new()];
    let stores = if stores.is_empty() {
        &every[..]
    } else {
        stores
    };
    for store in stores {
        tx.prepare_cached(
            "INSERT INTO released_content (store, storage_key, released_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (store, storage_key) DO UPDATE SET released_at = excluded.released_at",
        )?
        .execute(params![store, key, now()])?;
    }
    Ok(())
}

/// Ends an open session for good and releases its staged bytes.
fn end(tx: &dyn Db, id: &str, state: UploadState, message: &str) -> Result<()> {
    tx.prepare_cached(
        "UPDATE uploads SET state = ?2, error_message = ?3, lease = NULL WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), message])?;
    release(tx, &session_stores(tx, id)?, &upload_prefix(id))
}

/// The stores a session writes to (whatever its state).
fn session_stores(tx: &dyn Db, id: &str) -> Result<Vec<String>> {
    let spec: Option<String> = tx
        .prepare_cached("SELECT spec FROM uploads WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(match spec {
        Some(spec) => serde_json::from_str::<UploadSpec>(&spec)?.stores,
        None => Vec::new(),
    })
}

fn check_lease(upload: &Upload, lease: &str) -> Result<()> {
    if upload.state != UploadState::Open {
        return Err(CatalogError::FailedPrecondition(format!(
            "upload {} is {} and takes no more bytes",
            upload.id,
            upload.state.as_str()
        )));
    }
    if upload.lease.as_deref() != Some(lease) {
        return Err(CatalogError::Aborted(format!(
            "another stream took over upload {}; this one stops (continue with GetUpload)",
            upload.id
        )));
    }
    Ok(())
}

/// What a node records after storing a segment.
#[derive(Debug, Clone)]
pub struct SegmentCommit {
    pub segment: Segment,
    pub hash_state: HashState,
    /// Split images: set when the metadata part ended within this segment.
    pub metadata_size: u64,
}

impl Store {
    /// Opens a session that expires `ttl` after its last activity.
    pub async fn create_upload(
        &self,
        spec: UploadSpec,
        ttl: std::time::Duration,
    ) -> Result<Upload> {
        let ttl = ttl.as_nanos() as i64;
        self.write(move |tx| {
            let id = uuid::Uuid::new_v4().to_string();
            let now = now();
            tx.prepare_cached(&format!(
                "INSERT INTO uploads ({UPLOAD_COLUMNS}) \
                 VALUES (?1, ?2, ?3, 0, 0, NULL, NULL, NULL, NULL, NULL, ?4, ?5)"
            ))?
            .execute(params![
                id,
                serde_json::to_string(&spec)?,
                UploadState::Open.as_str(),
                now,
                now.saturating_add(ttl)
            ])?;
            load(tx, &id)
        })
        .await
    }

    /// Returns a session.
    pub async fn get_upload(&self, id: String) -> Result<Upload> {
        self.read(move |conn| load(conn, &id)).await
    }

    /// Abandons an open session and releases its staged bytes.
    pub async fn cancel_upload(&self, id: String) -> Result<Upload> {
        self.write(move |tx| {
            let upload = load(tx, &id)?;
            match upload.state {
                UploadState::Open => {
                    end(tx, &id, UploadState::Cancelled, "cancelled by the client")?
                }
                UploadState::Cancelled => {}
                state => {
                    return Err(CatalogError::FailedPrecondition(format!(
                        "upload {id} is {} and cannot be cancelled",
                        state.as_str()
                    )));
                }
            }
            load(tx, &id)
        })
        .await
    }

    /// Claims an open session for one stream and returns it with a fresh lease. A
    /// newer claim supersedes an older one (whose next commit is then ABORTED), so
    /// that a client can continue at once on another node after one died.
    pub async fn open_write(
        &self,
        id: String,
        ttl: std::time::Duration,
    ) -> Result<(Upload, String)> {
        let ttl = ttl.as_nanos() as i64;
        self.write(move |tx| {
            let upload = load(tx, &id)?;
            if upload.state != UploadState::Open {
                return Ok((upload, String::new()));
            }
            let lease = uuid::Uuid::new_v4().to_string();
            tx.prepare_cached("UPDATE uploads SET lease = ?2, expires_at = ?3 WHERE id = ?1")?
                .execute(params![id, lease, now().saturating_add(ttl)])?;
            Ok((load(tx, &id)?, lease))
        })
        .await
    }

    /// Records a stored segment; committed_size moves to its end.
    pub async fn commit_segment(
        &self,
        id: String,
        lease: String,
        commit: SegmentCommit,
        ttl: std::time::Duration,
    ) -> Result<u64> {
        let ttl = ttl.as_nanos() as i64;
        self.write(move |tx| {
            let upload = load(tx, &id)?;
            check_lease(&upload, &lease)?;
            let seg = &commit.segment;
            if seg.start != upload.committed_size {
                return Err(CatalogError::FailedPrecondition(format!(
                    "segment starts at {} but upload {id} has {} bytes committed",
                    seg.start, upload.committed_size
                )));
            }
            let end = seg
                .start
                .checked_add(seg.length)
                .filter(|e| *e <= i64::MAX as u64)
                .ok_or_else(|| CatalogError::InvalidArgument("segment length overflows".into()))?;
            if !seg.storage_key.starts_with(&upload_prefix(&id)) {
                return Err(CatalogError::InvalidArgument(format!(
                    "segment key {:?} is outside upload {id}'s prefix",
                    seg.storage_key
                )));
            }
            tx.prepare_cached(
                "INSERT INTO upload_segments (upload_id, start, length, storage_key) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (upload_id, start) DO UPDATE \
                 SET length = excluded.length, storage_key = excluded.storage_key",
            )?
            .execute(params![
                id,
                seg.start as i64,
                seg.length as i64,
                seg.storage_key
            ])?;
            let metadata_size = if commit.metadata_size > 0 {
                commit.metadata_size
            } else {
                upload.metadata_size
            };
            tx.prepare_cached(
                "UPDATE uploads SET committed_size = ?2, metadata_size = ?3, hash_image = ?4, \
                 hash_part = ?5, expires_at = ?6 WHERE id = ?1",
            )?
            .execute(params![
                id,
                end as i64,
                metadata_size as i64,
                commit.hash_state.image,
                commit.hash_state.part,
                now().saturating_add(ttl)
            ])?;
            Ok(end)
        })
        .await
    }

    /// Ends a session that cannot complete and records why.
    pub async fn fail_upload(&self, id: String, lease: String, message: String) -> Result<()> {
        self.write(move |tx| {
            let upload = load(tx, &id)?;
            check_lease(&upload, &lease)?;
            end(tx, &id, UploadState::Failed, &message)
        })
        .await
    }

    /// Lets go of a claim without ending the session.
    pub async fn release_write(&self, id: String, lease: String) -> Result<()> {
        self.write(move |tx| {
            tx.prepare_cached("UPDATE uploads SET lease = NULL WHERE id = ?1 AND lease = ?2")?
                .execute(params![id, lease])?;
            Ok(())
        })
        .await
    }

    /// Deletes sessions past their expiry and releases their staged bytes; returns
    /// how many went.
    pub async fn expire_uploads(&self) -> Result<usize> {
        self.write(|tx| {
            let ids: Vec<String> = tx
                .prepare_cached("SELECT id FROM uploads WHERE state = 'OPEN' AND expires_at < ?1")?
                .query_map([now()], |r| r.get(0))?
                .collect::<Result<_>>()?;
            for id in &ids {
                release(tx, &session_stores(tx, id)?, &upload_prefix(id))?;
                tx.prepare_cached("DELETE FROM uploads WHERE id = ?1")?
                    .execute([id])?;
            }
            // Finished sessions are kept a day so clients can read how they ended.
            let day = 24 * 3600 * 1_000_000_000i64;
            tx.prepare_cached("DELETE FROM uploads WHERE state != 'OPEN' AND expires_at < ?1")?
                .execute([now() - day])?;
            Ok(ids.len())
        })
        .await
    }
}

/// Checks that the objects a registration names are exactly the session's
/// committed segments: what no commit recorded (a superseded writer's object)
/// is never registered, and nothing committed is left out.
pub(crate) fn check_objects(tx: &dyn Db, id: &str, new: &NewImage) -> Result<()> {
    let upload = load(tx, id)?;
    let mut committed: Vec<(usize, StoredObject)> = Vec::new();
    for seg in upload.segments.iter().filter(|s| s.length > 0) {
        let rootfs = new.layout == Layout::Split && seg.start >= upload.metadata_size;
        let (position, start) = if rootfs {
            (1, upload.metadata_size)
        } else {
            (0, 0)
        };
        committed.push((
            position,
            StoredObject {
                offset: seg.start - start,
                size: seg.length,
                key: seg.storage_key.clone(),
            },
        ));
    }
    let sent: Vec<(usize, StoredObject)> = new
        .objects
        .iter()
        .enumerate()
        .flat_map(|(position, list)| list.iter().map(move |o| (position, o.clone())))
        .collect();
    if sent != committed {
        return Err(CatalogError::FailedPrecondition(format!(
            "the objects sent for upload {id} ({} of them) are not the {} segments it committed; \
             finish it again from a fresh OpenWrite",
            sent.len(),
            committed.len()
        )));
    }
    Ok(())
}

/// Completes (or fails, when the image existed already) the session a
/// registration names, in the registration's transaction.
pub(crate) fn finish_with_registration(
    tx: &dyn Db,
    id: &str,
    fingerprint: &str,
    created: bool,
) -> Result<()> {
    let upload = load(tx, id)?;
    if upload.state != UploadState::Open {
        return Err(CatalogError::FailedPrecondition(format!(
            "upload {id} is {} and cannot complete",
            upload.state.as_str()
        )));
    }
    if created {
        tx.prepare_cached(
            "UPDATE uploads SET state = 'COMPLETE', fingerprint = ?2, lease = NULL WHERE id = ?1",
        )?
        .execute(params![id, fingerprint])?;
        Ok(())
    } else {
        end(
            tx,
            id,
            UploadState::Failed,
            &format!("image with same fingerprint already exists: {fingerprint}"),
        )?;
        tx.prepare_cached("UPDATE uploads SET fingerprint = ?2 WHERE id = ?1")?
            .execute(params![id, fingerprint])?;
        Ok(())
    }
}
