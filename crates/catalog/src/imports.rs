//! Server-side imports: queued as operations, claimed and run by blob nodes,
//! finished by registration. Also the catalog's side of auto-update and of cache
//! expiry, which create and remove images without a client asking.

use std::time::Duration;

use crate::params;
use crate::sql::{Db, OptionalExtension};

use crate::Store;
use crate::aliases::{insert_aliases, validate_alias_name};
use crate::error::{CatalogError, Result};
use crate::images::{delete_in, must_load};
use crate::model::*;
use crate::operations::{load as load_op, store as store_op};
use crate::uploads::release;

/// The time `d` before now.
fn ago(d: Duration) -> UnixNanos {
    now().saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// An import handed to a blob node.
#[derive(Debug, Clone)]
pub struct ImportJob {
    pub operation: String,
    /// The client's ImportImageRequest, as protobuf bytes (the catalog does not
    /// read it).
    pub request: Vec<u8>,
    /// A refresh: the image the new one replaces.
    pub replaces: Option<String>,
    /// Who asked for it.
    pub importer: Importer,
}

/// Who queued an import: their roles (for the import plugins) and the trace
/// their request belongs to (a W3C traceparent; empty: none), which the
/// node's work on it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Importer {
    pub roles: Vec<String>,
    pub trace_parent: String,
}

/// Queued imports a claim looks through for one the claiming node can do.
const CLAIM_SCAN: i64 = 64;

/// A finished import's outcome, recorded on its operation.
fn succeed(tx: &dyn Db, id: &str, image: &Image, skipped: &[String]) -> Result<()> {
    let mut op = load_op(tx, id)?;
    if op.state.is_done() {
        return Err(CatalogError::FailedPrecondition(format!(
            "operation {id} is already {}: nothing was registered",
            op.state.as_str()
        )));
    }
    op.state = OperationState::Succeeded;
    op.stage = "done".into();
    op.bytes_done = image.size;
    op.bytes_total = image.size;
    op.image = format!("images/{}", image.fingerprint);
    op.metadata
        .insert("fingerprint".into(), image.fingerprint.clone());
    op.metadata.insert("size".into(), image.size.to_string());
    if !skipped.is_empty() {
        op.metadata
            .insert("skipped_aliases".into(), skipped.join(","));
    }
    op.updated_at = now();
    store_op(tx, &op)?;
    tx.prepare_cached("DELETE FROM import_jobs WHERE operation_id = ?1")?
        .execute([id])?;
    Ok(())
}

/// A refresh found a newer image: aliases, auto_update and the cache state move
/// from `old` to `new`, and `old` goes (LXD's autoUpdateImage).
pub(crate) fn replace(tx: &dyn Db, old: &str, new: &str) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let Some(previous) = crate::images::load(tx, old)? else {
        return Ok(());
    };
    tx.prepare_cached(
        "UPDATE aliases SET fingerprint = ?2, updated_at = ?3 WHERE fingerprint = ?1",
    )?
    .execute(params![old, new, now()])?;
    tx.prepare_cached(
        "UPDATE images SET auto_update = TRUE, cached = ?2, \
         last_used_at = COALESCE(?3, last_used_at) WHERE fingerprint = ?1",
    )?
    .execute(params![
        new,
        previous.cached,
        previous.cached.then_some(previous.last_used_at).flatten()
    ])?;
    delete_in(tx, old)?;
    Ok(())
}

/// Completes the import `operation` with the image just registered (or found).
pub(crate) fn finish_import(
    tx: &dyn Db,
    operation: &str,
    fingerprint: &str,
    skipped: &[String],
) -> Result<()> {
    let image = must_load(tx, fingerprint)?;
    succeed(tx, operation, &image, skipped)
}

impl Store {
    /// Queues an import. A refresh of an image that has one queued or running
    /// already returns that operation instead of a second one.
    pub async fn create_import(
        &self,
        description: String,
        request: Vec<u8>,
        replaces: Option<String>,
        needs: StoreNeeds,
        importer: Importer,
    ) -> Result<Operation> {
        let op = self
            .write(move |tx| {
                if let Some(fp) = &replaces {
                    let running: Option<String> = tx
                        .prepare_cached(
                            "SELECT j.operation_id FROM import_jobs j JOIN operations o \
                             ON o.id = j.operation_id WHERE j.replaces = ?1 \
                             AND o.state IN ('QUEUED', 'RUNNING')",
                        )?
                        .query_row([fp], |r| r.get(0))
                        .optional()?;
                    if let Some(id) = running {
                        return load_op(tx, &id);
                    }
                }
                if let Some(fp) = &needs.copy_of {
                    let active: Vec<(String, String)> = tx
                        .prepare_cached(
                            "SELECT j.operation_id, j.needs FROM import_jobs j JOIN operations o \
                             ON o.id = j.operation_id WHERE o.state IN ('QUEUED', 'RUNNING')",
                        )?
                        .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_>>()?;
                    for (id, other) in active {
                        let other: StoreNeeds = serde_json::from_str(&other)?;
                        if other.copy_of.as_ref() == Some(fp) {
                            return Err(CatalogError::FailedPrecondition(format!(
                                "image {fp} is being copied already (operations/{id}): wait for \
                                 that copy, then ask again for the stores it did not cover"
                            )));
                        }
                    }
                }
                let op = crate::operations::queued(description, "queued", true);
                store_op(tx, &op)?;
                tx.prepare_cached(
                    "INSERT INTO import_jobs (operation_id, request, replaces, needs, \
                     importer_roles, trace_parent) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    op.id,
                    request,
                    replaces,
                    serde_json::to_string(&needs)?,
                    serde_json::to_string(&importer.roles)?,
                    importer.trace_parent
                ])?;
                Ok(op)
            })
            .await?;
        self.operations_changed();
        Ok(op)
    }

    /// Hands the oldest queued import that a node reaching `reach` can do to
    /// `node_id` and marks it RUNNING.
    pub async fn claim_import(
        &self,
        node_id: String,
        reach: Vec<String>,
    ) -> Result<Option<ImportJob>> {
        let job = self
            .write(move |tx| {
                // The rows are locked until the claim commits (where rows can be
                // locked; SQLite's writers take turns anyway).
                type Row = (String, Vec<u8>, Option<String>, String, String, String);
                let queued: Vec<Row> = tx
                    .prepare_cached(&format!(
                        "SELECT j.operation_id, j.request, j.replaces, j.needs, j.importer_roles, \
                         j.trace_parent \
                         FROM import_jobs j JOIN operations o ON o.id = j.operation_id \
                         WHERE o.state = 'QUEUED' AND j.node_id IS NULL \
                         ORDER BY o.created_at, o.id LIMIT ?1{}",
                        tx.skip_locked()
                    ))?
                    .query_map([CLAIM_SCAN], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    })?
                    .collect::<Result<_>>()?;
                let mut found = None;
                for (id, request, replaces, needs, roles, trace_parent) in queued {
                    let needs: StoreNeeds = serde_json::from_str(&needs)?;
                    if needs.met_by(&reach) {
                        let importer = Importer {
                            roles: serde_json::from_str(&roles)?,
                            trace_parent,
                        };
                        found = Some((id, request, replaces, importer));
                        break;
                    }
                }
                let Some((id, request, replaces, importer)) = found else {
                    return Ok(None);
                };
                let now = now();
                tx.prepare_cached(
                    "UPDATE import_jobs SET node_id = ?2, reported_at = ?3 WHERE operation_id = ?1",
                )?
                .execute(params![id, node_id, now])?;
                let mut op = load_op(tx, &id)?;
                op.state = OperationState::Running;
                op.stage = "resolve".into();
                op.updated_at = now;
                store_op(tx, &op)?;
                Ok(Some(ImportJob {
                    operation: id,
                    request,
                    replaces,
                    importer,
                }))
            })
            .await?;
        if job.is_some() {
            self.operations_changed();
        }
        Ok(job)
    }

    /// A claimant's report. Returns the operation as it is now: a done one tells
    /// the node to stop (it was cancelled, or timed out).
    pub async fn report_import(
        &self,
        id: String,
        node_id: String,
        update: crate::OperationUpdate,
        existing_image: Option<(String, Vec<AliasRef>)>,
    ) -> Result<Operation> {
        let op = self
            .write(move |tx| {
                let claimant: Option<Option<String>> = tx
                    .prepare_cached("SELECT node_id FROM import_jobs WHERE operation_id = ?1")?
                    .query_row([&id], |r| r.get(0))
                    .optional()?;
                let mut op = load_op(tx, &id)?;
                if op.state.is_done() {
                    return Ok(op);
                }
                if claimant.flatten().as_deref() != Some(node_id.as_str()) {
                    return Err(CatalogError::FailedPrecondition(format!(
                        "import {id} is not claimed by node {node_id}"
                    )));
                }
                let now = now();
                tx.prepare_cached(
                    "UPDATE import_jobs SET reported_at = ?2 WHERE operation_id = ?1",
                )?
                .execute(params![id, now])?;
                if let Some((fp, aliases)) = existing_image {
                    op.metadata.extend(update.metadata);
                    store_op(tx, &op)?;
                    for a in &aliases {
                        validate_alias_name(&a.name)?;
                    }
                    let skipped = insert_aliases(tx, &aliases, &fp, now)?;
                    finish_import(tx, &id, &fp, &skipped)?;
                    return load_op(tx, &id);
                }
                if let Some(s) = update.stage {
                    op.stage = s;
                }
                op.bytes_done = update.bytes_done.unwrap_or(op.bytes_done);
                op.bytes_total = update.bytes_total.unwrap_or(op.bytes_total);
                op.bytes_per_second = update.bytes_per_second.unwrap_or(op.bytes_per_second);
                op.metadata.extend(update.metadata);
                if let Some(e) = update.error {
                    op.state = OperationState::Failed;
                    op.error = Some(e);
                }
                op.updated_at = now;
                store_op(tx, &op)?;
                Ok(op)
            })
            .await?;
        self.operations_changed();
        Ok(op)
    }

    /// Ends imports whose node went quiet for `silent_for` (FAILED), and releases
    /// the bytes of failed or cancelled imports once their node has had that long
    /// to delete them itself. Returns how many imports were ended.
    pub async fn collect_imports(&self, silent_for: Duration) -> Result<usize> {
        let cutoff = ago(silent_for);
        let ended = self
            .write(move |tx| {
                let stale: Vec<(String, String, String)> = tx
                    .prepare_cached(
                        "SELECT j.operation_id, o.state, j.needs FROM import_jobs j \
                         JOIN operations o ON o.id = j.operation_id \
                         WHERE j.node_id IS NOT NULL AND j.reported_at < ?1",
                    )?
                    .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_>>()?;
                let mut ended = 0;
                for (id, state, needs) in stale {
                    let needs: StoreNeeds = serde_json::from_str(&needs)?;
                    if state == "RUNNING" {
                        let mut op = load_op(tx, &id)?;
                        op.state = OperationState::Failed;
                        op.error = Some((
                            14,
                            "the blob node running this import stopped reporting; start it again"
                                .into(),
                        ));
                        op.updated_at = now();
                        store_op(tx, &op)?;
                        ended += 1;
                    }
                    // Whatever it wrote lies below its own id, in the stores it
                    // writes to.
                    release(tx, &needs.all, &upload_prefix(&id))?;
                    tx.prepare_cached("DELETE FROM import_jobs WHERE operation_id = ?1")?
                        .execute([&id])?;
                }
                // Never claimed and already over (cancelled while queued): nothing stored.
                tx.prepare_cached(
                    "DELETE FROM import_jobs WHERE node_id IS NULL AND operation_id IN \
                     (SELECT id FROM operations WHERE state IN ('FAILED', 'CANCELLED'))",
                )?
                .execute(params![])?;
                Ok(ended)
            })
            .await?;
        if ended > 0 {
            self.operations_changed();
        }
        Ok(ended)
    }

    /// Images that follow an alias on their source and have no refresh under way.
    pub async fn images_to_refresh(&self) -> Result<Vec<Image>> {
        self.read(|conn| {
            let fps: Vec<String> = conn
                .prepare_cached(
                    "SELECT fingerprint FROM images WHERE auto_update = TRUE \
                     AND update_source IS NOT NULL ORDER BY fingerprint",
                )?
                .query_map(params![], |r| r.get(0))?
                .collect::<Result<_>>()?;
            let mut out = Vec::new();
            for fp in fps {
                let image = must_load(conn, &fp)?;
                if image
                    .update_source
                    .as_ref()
                    .is_some_and(|s| !s.alias.is_empty())
                {
                    out.push(image);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes cached images not used (exported) for `unused_for`, LXD's
    /// `images.remote_cache_expiry`. Returns their fingerprints.
    pub async fn expire_cached_images(&self, unused_for: Duration) -> Result<Vec<String>> {
        let cutoff = ago(unused_for);
        self.write(move |tx| {
            let fps: Vec<String> = tx
                .prepare_cached(
                    "SELECT fingerprint FROM images WHERE cached = TRUE \
                     AND COALESCE(last_used_at, uploaded_at) < ?1",
                )?
                .query_map([cutoff], |r| r.get(0))?
                .collect::<Result<_>>()?;
            for fp in &fps {
                delete_in(tx, fp)?;
            }
            Ok(fps)
        })
        .await
    }

    /// Records that an image was used (exported) now.
    pub async fn touch_image(&self, fingerprint: String) -> Result<()> {
        self.write(move |tx| {
            tx.prepare_cached("UPDATE images SET last_used_at = ?2 WHERE fingerprint = ?1")?
                .execute(params![fingerprint, now()])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::{Catalog, CatalogError, OperationState, StoreNeeds};

    fn copy_of(fp: &str, to: &str) -> StoreNeeds {
        StoreNeeds {
            all: vec![to.into()],
            any: vec!["local".into()],
            copy_of: Some(fp.into()),
        }
    }

    /// A copy that fails removes what it wrote under the image's keys, so two
    /// copies of one image never run at once; claims go to nodes reaching the
    /// stores a job needs.
    #[tokio::test]
    async fn copies_of_one_image_run_one_at_a_time_on_nodes_that_reach_their_stores() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join("catalog.sqlite"))
            .await
            .unwrap();
        let first = catalog
            .create_import(
                "copy".into(),
                Vec::new(),
                None,
                copy_of("aa", "s3"),
                crate::Importer::default(),
            )
            .await
            .unwrap();
        let second = catalog
            .create_import(
                "copy".into(),
                Vec::new(),
                None,
                copy_of("aa", "gcs"),
                crate::Importer::default(),
            )
            .await;
        assert!(
            matches!(&second, Err(CatalogError::FailedPrecondition(m)) if m.contains(&first.id)),
            "{second:?}"
        );
        catalog
            .create_import(
                "copy".into(),
                Vec::new(),
                None,
                copy_of("bb", "s3"),
                crate::Importer::default(),
            )
            .await
            .expect("another image's copy");
        let local_only = catalog
            .claim_import("n1".into(), vec!["local".into()])
            .await
            .unwrap();
        assert!(local_only.is_none(), "a node without s3 gets nothing");
        let claimed = catalog
            .claim_import("n2".into(), vec!["local".into(), "s3".into()])
            .await
            .unwrap()
            .expect("a node reaching both");
        assert_eq!(claimed.operation, first.id);
        catalog.cancel_operation(first.id.clone()).await.unwrap();
        assert_eq!(
            catalog.get_operation(first.id).await.unwrap().state,
            OperationState::Cancelled
        );
        catalog
            .create_import(
                "copy".into(),
                Vec::new(),
                None,
                copy_of("aa", "gcs"),
                crate::Importer::default(),
            )
            .await
            .expect("once the first copy is over");
    }
}
