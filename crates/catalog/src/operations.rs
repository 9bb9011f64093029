//! Operations: long-running work with state and progress.

use std::collections::BTreeMap;

use crate::params;
use crate::sql::{Db, OptionalExtension, Row};

use crate::Store;
use crate::error::{CatalogError, Result};
use crate::model::*;
use crate::page::{Page, PageRequest};

const OP_COLUMNS: &str = "id, description, state, stage, bytes_done, bytes_total, bytes_per_second, \
     error_code, error_message, image, metadata, may_cancel, created_at, updated_at";

type OpRow = (Operation, String, String);

fn op_from_row(r: &Row) -> Result<OpRow> {
    let code: Option<i32> = r.get(7)?;
    let message: Option<String> = r.get(8)?;
    Ok((
        Operation {
            id: r.get(0)?,
            description: r.get(1)?,
            state: OperationState::Queued,
            stage: r.get(3)?,
            bytes_done: r.get::<_, i64>(4)? as u64,
            bytes_total: r.get::<_, i64>(5)? as u64,
            bytes_per_second: r.get::<_, i64>(6)? as u64,
            error: code.map(|c| (c, message.unwrap_or_default())),
            image: r.get(9)?,
            metadata: BTreeMap::new(),
            may_cancel: r.get(11)?,
            created_at: r.get(12)?,
            updated_at: r.get(13)?,
        },
        r.get(2)?,
        r.get(10)?,
    ))
}

fn finish_row((mut op, state, metadata): OpRow) -> Result<Operation> {
    op.state = OperationState::parse(&state)
        .ok_or_else(|| CatalogError::Corrupt(format!("operation state {state:?}")))?;
    op.metadata = serde_json::from_str(&metadata)?;
    Ok(op)
}

pub(crate) fn load(conn: &dyn Db, id: &str) -> Result<Operation> {
    conn.prepare_cached(&format!(
        "SELECT {OP_COLUMNS} FROM operations WHERE id = ?1"
    ))?
    .query_row([id], op_from_row)
    .optional()?
    .map(finish_row)
    .transpose()?
    .ok_or_else(|| CatalogError::NotFound(format!("operation {id:?} not found")))
}

/// Writes an operation. An upsert, not a REPLACE: a REPLACE deletes the row
/// first, and the delete would cascade to what refers to it (its import job).
pub(crate) fn store(conn: &dyn Db, op: &Operation) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO operations ({OP_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
         ON CONFLICT(id) DO UPDATE SET description = excluded.description, \
         state = excluded.state, stage = excluded.stage, bytes_done = excluded.bytes_done, \
         bytes_total = excluded.bytes_total, bytes_per_second = excluded.bytes_per_second, \
         error_code = excluded.error_code, error_message = excluded.error_message, \
         image = excluded.image, metadata = excluded.metadata, \
         may_cancel = excluded.may_cancel, updated_at = excluded.updated_at"
    ))?
    .execute(params![
        op.id,
        op.description,
        op.state.as_str(),
        op.stage,
        op.bytes_done as i64,
        op.bytes_total as i64,
        op.bytes_per_second as i64,
        op.error.as_ref().map(|e| e.0),
        op.error.as_ref().map(|e| e.1.clone()),
        op.image,
        serde_json::to_string(&op.metadata)?,
        op.may_cancel,
        op.created_at,
        op.updated_at,
    ])?;
    Ok(())
}

/// What a worker reports about an operation it runs.
#[derive(Debug, Clone, Default)]
pub struct OperationUpdate {
    pub state: Option<OperationState>,
    pub stage: Option<String>,
    pub bytes_done: Option<u64>,
    pub bytes_total: Option<u64>,
    pub bytes_per_second: Option<u64>,
    pub error: Option<(i32, String)>,
    pub image: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A new QUEUED operation, at `stage`, not yet stored.
pub(crate) fn queued(description: String, stage: &str, may_cancel: bool) -> Operation {
    let now = now();
    Operation {
        id: uuid::Uuid::new_v4().to_string(),
        description,
        state: OperationState::Queued,
        stage: stage.to_owned(),
        bytes_done: 0,
        bytes_total: 0,
        bytes_per_second: 0,
        error: None,
        image: String::new(),
        metadata: BTreeMap::new(),
        may_cancel,
        created_at: now,
        updated_at: now,
    }
}

impl Store {
    /// Whether this process should run the periodic `job` now: true for the
    /// first to ask once `every` has passed since the job last ran anywhere
    /// (a tenth of it is slack for timers that fire a little early), so that
    /// replicas each ticking at `every` run it once per interval between them.
    pub async fn take_turn(&self, job: String, every: std::time::Duration) -> Result<bool> {
        let every = i64::try_from(every.as_nanos()).unwrap_or(i64::MAX);
        self.write(move |tx| {
            let now = now();
            let due = now.saturating_sub(every - every / 10);
            let changed = tx
                .prepare_cached(
                    "INSERT INTO periodic_runs (job, last_run_at) VALUES (?1, ?2) \
                     ON CONFLICT (job) DO UPDATE SET last_run_at = ?2 \
                     WHERE periodic_runs.last_run_at <= ?3",
                )?
                .execute(params![job, now, due])?;
            Ok(changed == 1)
        })
        .await
    }

    /// Records a new QUEUED operation.
    pub async fn create_operation(
        &self,
        description: String,
        may_cancel: bool,
    ) -> Result<Operation> {
        let op = queued(description, "", may_cancel);
        let stored = op.clone();
        self.write(move |tx| store(tx, &stored)).await?;
        self.operations_changed();
        Ok(op)
    }

    /// Returns one operation.
    pub async fn get_operation(&self, id: String) -> Result<Operation> {
        self.read(move |conn| load(conn, &id)).await
    }

    /// Applies a worker's report. A finished operation does not change any more
    /// (FailedPrecondition), so a late report cannot revive a cancelled one.
    pub async fn update_operation(&self, id: String, update: OperationUpdate) -> Result<Operation> {
        let op = self
            .write(move |tx| {
                let mut op = load(tx, &id)?;
                if op.state.is_done() {
                    return Err(CatalogError::FailedPrecondition(format!(
                        "operation {id} is already {}",
                        op.state.as_str()
                    )));
                }
                if let Some(s) = update.state {
                    op.state = s;
                }
                if let Some(s) = update.stage {
                    op.stage = s;
                }
                op.bytes_done = update.bytes_done.unwrap_or(op.bytes_done);
                op.bytes_total = update.bytes_total.unwrap_or(op.bytes_total);
                op.bytes_per_second = update.bytes_per_second.unwrap_or(op.bytes_per_second);
                if update.error.is_some() {
                    op.error = update.error;
                }
                if let Some(i) = update.image {
                    op.image = i;
                }
                op.metadata.extend(update.metadata);
                op.updated_at = now();
                store(tx, &op)?;
                Ok(op)
            })
            .await?;
        self.operations_changed();
        Ok(op)
    }

    /// Marks an operation CANCELLED. FailedPrecondition when it is done already or
    /// cannot be cancelled.
    pub async fn cancel_operation(&self, id: String) -> Result<Operation> {
        let op = self
            .write(move |tx| {
                let mut op = load(tx, &id)?;
                if op.state.is_done() {
                    return Err(CatalogError::FailedPrecondition(format!(
                        "operation {id} is already {} and cannot be cancelled",
                        op.state.as_str()
                    )));
                }
                if !op.may_cancel {
                    return Err(CatalogError::FailedPrecondition(format!(
                        "operation {id} ({}) cannot be cancelled",
                        op.description
                    )));
                }
                op.state = OperationState::Cancelled;
                op.error = Some((1, "cancelled on request".into()));
                op.updated_at = now();
                store(tx, &op)?;
                Ok(op)
            })
            .await?;
        self.operations_changed();
        Ok(op)
    }

    /// One page of operations, newest first; `done` filters on completion.
    pub async fn list_operations(
        &self,
        state: Option<OperationState>,
        done: Option<bool>,
        page: PageRequest,
    ) -> Result<Page<Operation>> {
        self.read(move |conn| {
            // Position is (created_at, id) descending, encoded as "created_at/id".
            let (before_time, before_id) = match &page.after {
                Some(a) => {
                    let (t, id) = a.split_once('/').ok_or_else(|| {
                        CatalogError::InvalidArgument("page_token is not valid".into())
                    })?;
                    let t: i64 = t.parse().map_err(|_| {
                        CatalogError::InvalidArgument("page_token is not valid".into())
                    })?;
                    (t, id.to_owned())
                }
                None => (i64::MAX, String::new()),
            };
            let (mut before_time, mut before_id) = (before_time, before_id);
            let mut items = Vec::new();
            let mut more = false;
            // In batches, so that no query reads the whole table at once.
            'scan: loop {
                let batch = conn
                    .prepare_cached(&format!(
                        "SELECT {OP_COLUMNS} FROM operations \
                         WHERE created_at < ?1 OR (created_at = ?1 AND id < ?2) \
                         ORDER BY created_at DESC, id DESC LIMIT ?3"
                    ))?
                    .query_map(
                        params![before_time, before_id, crate::page::SCAN_BATCH],
                        op_from_row,
                    )?
                    .collect::<Result<Vec<_>>>()?;
                let exhausted = (batch.len() as i64) < crate::page::SCAN_BATCH;
                for row in batch {
                    let op = finish_row(row)?;
                    (before_time, before_id) = (op.created_at, op.id.clone());
                    if state.is_some_and(|s| s != op.state)
                        || done.is_some_and(|d| d != op.state.is_done())
                    {
                        continue;
                    }
                    if items.len() == page.size {
                        more = true;
                        break 'scan;
                    }
                    items.push(op);
                }
                if exhausted {
                    break;
                }
            }
            Ok(page.finish(items, more, |o| format!("{}/{}", o.created_at, o.id)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Catalog;

    /// Two processes' catalogs over one database (replicas): a periodic job's
    /// turn goes to one of them per interval.
    #[tokio::test]
    async fn a_periodic_job_runs_once_per_interval_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let one = Catalog::open(&path).await.unwrap();
        let two = Catalog::open(&path).await.unwrap();
        let hour = Duration::from_secs(3600);
        assert!(one.take_turn("sweep".into(), hour).await.unwrap());
        assert!(!two.take_turn("sweep".into(), hour).await.unwrap());
        assert!(!one.take_turn("sweep".into(), hour).await.unwrap());
        assert!(
            two.take_turn("other".into(), hour).await.unwrap(),
            "jobs apart"
        );
        // Once the interval passed, the next to ask runs it.
        let short = Duration::from_millis(20);
        assert!(one.take_turn("short".into(), short).await.unwrap());
        assert!(!two.take_turn("short".into(), short).await.unwrap());
        tokio::time::sleep(short).await;
        assert!(two.take_turn("short".into(), short).await.unwrap());
    }
}
