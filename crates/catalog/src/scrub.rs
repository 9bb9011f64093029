//! Verification of stored bytes: which image a blob node reads again next
//! (verifications asked for first, then the one verified longest ago), and
//! what it found: an image found damaged is marked, and served no more.

use std::time::Duration;

use crate::params;
use crate::sql::Db;

use crate::Store;
use crate::error::{CatalogError, Result};
use crate::images::{ImageRef, must_load, resolve};
use crate::model::*;
use crate::operations::{load as load_op, store as store_op};

/// An image handed to a node to verify.
#[derive(Debug, Clone)]
pub struct ScrubJob {
    pub image: Image,
    /// The operation of a verification asked for; None for background work.
    pub operation: Option<String>,
}

/// What a verification found.
#[derive(Debug, Clone)]
pub enum ScrubOutcome {
    /// Every part hashes to its recorded SHA-256 and has its recorded size.
    Sound,
    Damaged(Damage),
    /// The bytes could not be read (a gRPC code and why): nothing is known.
    Failed {
        code: i32,
        message: String,
    },
}

/// Candidates a claim looks through for one the claiming node reaches.
const CLAIM_SCAN: i64 = 64;

/// gRPC's DATA_LOSS, the code a verification that found damage ends with.
const DATA_LOSS: i32 = 15;

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Store {
    /// Queues a verification of an image and returns the operation that tracks it.
    pub async fn create_verification(&self, what: ImageRef) -> Result<Operation> {
        let op = self
            .write(move |tx| {
                let fp = resolve(tx, &what, false)?;
                let mut op =
                    crate::operations::queued(format!("Verifying image {fp}"), "queued", false);
                op.image = format!("images/{fp}");
                op.metadata.insert("fingerprint".to_owned(), fp.clone());
                store_op(tx, &op)?;
                tx.prepare_cached(
                    "INSERT INTO verify_jobs (operation_id, fingerprint) VALUES (?1, ?2)",
                )?
                .execute(params![op.id, fp])?;
                Ok(op)
            })
            .await?;
        self.operations_changed();
        Ok(op)
    }

    /// Hands `node_id` an image to verify for at most `claim_for`: a
    /// verification asked for (one whose claimant went quiet is handed out
    /// again); or, with `background`, the image verified longest ago (never
    /// verified first) if that was more than `every` ago. The two are claimed
    /// apart, so that one asked for never waits behind paced background work.
    pub async fn claim_scrub(
        &self,
        node_id: String,
        reach: Vec<String>,
        background: bool,
        every: Duration,
        claim_for: Duration,
    ) -> Result<Option<ScrubJob>> {
        // An image with no named store yet is in the one store nodes had.
        let reachable =
            move |stores: &[String]| stores.is_empty() || stores.iter().any(|s| reach.contains(s));
        let job = self
            .write(move |tx| {
                let now = now();
                let until = now.saturating_add(nanos(claim_for));
                if !background {
                    let asked: Vec<(String, String)> = tx
                        .prepare_cached(&format!(
                            "SELECT operation_id, fingerprint FROM verify_jobs \
                             WHERE claimed_until IS NULL OR claimed_until < ?1 \
                             ORDER BY operation_id LIMIT ?2{}",
                            tx.skip_locked()
                        ))?
                        .query_map(params![now, CLAIM_SCAN], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_>>()?;
                    for (op_id, fp) in asked {
                        let mut op = load_op(tx, &op_id)?;
                        let Some(image) = crate::images::load(tx, &fp)? else {
                            // Deleted since it was asked for.
                            op.state = OperationState::Failed;
                            op.error =
                                Some((5, format!("image {fp} was deleted before it was verified")));
                            op.updated_at = now;
                            store_op(tx, &op)?;
                            tx.prepare_cached("DELETE FROM verify_jobs WHERE operation_id = ?1")?
                                .execute([&op_id])?;
                            continue;
                        };
                        if !reachable(&image.stores) {
                            continue;
                        }
                        tx.prepare_cached(
                            "UPDATE verify_jobs SET claimed_by = ?2, claimed_until = ?3 \
                         WHERE operation_id = ?1",
                        )?
                        .execute(params![op_id, node_id, until])?;
                        op.state = OperationState::Running;
                        op.stage = "verify".into();
                        op.bytes_total = image.size;
                        op.updated_at = now;
                        store_op(tx, &op)?;
                        return Ok(Some(ScrubJob {
                            image,
                            operation: Some(op_id),
                        }));
                    }
                }
                if !background {
                    return Ok(None);
                }
                let due = now.saturating_sub(nanos(every));
                let due_images: Vec<(String, String)> = tx
                    .prepare_cached(
                        "SELECT i.fingerprint, i.stores FROM images i \
                         LEFT JOIN image_checks c ON c.fingerprint = i.fingerprint \
                         WHERE (c.checked_at IS NULL OR c.checked_at < ?1) \
                           AND (c.claimed_until IS NULL OR c.claimed_until < ?2) \
                         ORDER BY c.checked_at IS NOT NULL, c.checked_at, i.uploaded_at \
                         LIMIT ?3",
                    )?
                    .query_map(params![due, now, CLAIM_SCAN], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_>>()?;
                let mut next = None;
                for (fp, stores) in due_images {
                    if reachable(&serde_json::from_str::<Vec<String>>(&stores)?) {
                        next = Some(fp);
                        break;
                    }
                }
                let Some(fp) = next else {
                    return Ok(None);
                };
                tx.prepare_cached(
                    "INSERT INTO image_checks (fingerprint, claimed_by, claimed_until) \
                     VALUES (?1, ?2, ?3) ON CONFLICT (fingerprint) DO UPDATE \
                     SET claimed_by = ?2, claimed_until = ?3",
                )?
                .execute(params![fp, node_id, until])?;
                Ok(Some(ScrubJob {
                    image: must_load(tx, &fp)?,
                    operation: None,
                }))
            })
            .await?;
        if job.as_ref().is_some_and(|j| j.operation.is_some()) {
            self.operations_changed();
        }
        Ok(job)
    }

    /// Records what verifying `fingerprint` found, and finishes the operation of
    /// a verification asked for.
    pub async fn report_scrub(
        &self,
        fingerprint: String,
        operation: Option<String>,
        outcome: ScrubOutcome,
    ) -> Result<()> {
        let has_operation = operation.is_some();
        self.write(move |tx| {
            let now = now();
            let exists = crate::images::load(tx, &fingerprint)?.is_some();
            if exists {
                record(tx, &fingerprint, &outcome, now)?;
            }
            if let Some(id) = &operation {
                finish(tx, id, &fingerprint, exists, &outcome, now)?;
            }
            Ok(())
        })
        .await?;
        if has_operation {
            self.operations_changed();
        }
        Ok(())
    }
}

/// Marks the image as the outcome says; a failure to read changes nothing but
/// lets another node try.
fn record(tx: &dyn Db, fp: &str, outcome: &ScrubOutcome, now: UnixNanos) -> Result<()> {
    match outcome {
        ScrubOutcome::Sound => {
            tx.prepare_cached(
                "UPDATE images SET damage = NULL WHERE fingerprint = ?1 AND damage IS NOT NULL",
            )?
            .execute([fp])?;
        }
        ScrubOutcome::Damaged(damage) => {
            tx.prepare_cached("UPDATE images SET damage = ?2 WHERE fingerprint = ?1")?
                .execute(params![fp, serde_json::to_string(damage)?])?;
        }
        ScrubOutcome::Failed { .. } => {
            tx.prepare_cached(
                "UPDATE image_checks SET claimed_by = NULL, claimed_until = NULL \
                 WHERE fingerprint = ?1",
            )?
            .execute([fp])?;
            return Ok(());
        }
    }
    tx.prepare_cached(
        "INSERT INTO image_checks (fingerprint, checked_at) VALUES (?1, ?2) \
         ON CONFLICT (fingerprint) DO UPDATE \
         SET checked_at = ?2, claimed_by = NULL, claimed_until = NULL",
    )?
    .execute(params![fp, now])?;
    Ok(())
}

fn finish(
    tx: &dyn Db,
    id: &str,
    fp: &str,
    exists: bool,
    outcome: &ScrubOutcome,
    now: UnixNanos,
) -> Result<()> {
    let mut op = load_op(tx, id)?;
    if op.state.is_done() {
        return Err(CatalogError::FailedPrecondition(format!(
            "operation {id} is already {}",
            op.state.as_str()
        )));
    }
    op.stage = "done".into();
    op.updated_at = now;
    match outcome {
        _ if !exists => {
            op.state = OperationState::Failed;
            op.error = Some((5, format!("image {fp} was deleted while it was verified")));
        }
        ScrubOutcome::Sound => {
            op.state = OperationState::Succeeded;
            op.bytes_done = op.bytes_total;
            op.metadata.insert("result".into(), "sound".into());
        }
        ScrubOutcome::Damaged(damage) => {
            op.state = OperationState::Failed;
            op.error = Some((DATA_LOSS, damage.message.clone()));
            op.metadata.insert("result".into(), "damaged".into());
        }
        ScrubOutcome::Failed { code, message } => {
            op.state = OperationState::Failed;
            op.error = Some((*code, message.clone()));
        }
    }
    store_op(tx, &op)?;
    tx.prepare_cached("DELETE FROM verify_jobs WHERE operation_id = ?1")?
        .execute([id])?;
    Ok(())
}
