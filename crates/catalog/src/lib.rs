//! Metadata at rest: images, aliases, upload sessions, operations and blob nodes.
//!
//! The logic (one module per concern) is written once against `sql::Db`; an
//! engine per database runs it (`engine::sqlite`, the embedded default, and
//! `engine::postgres`, for several replicas). Services hold a [`Catalog`].

mod aliases;
pub mod engine;
mod error;
mod filter;
mod images;
mod imports;
pub mod model;
mod nodes;
mod operations;
mod page;
mod scrub;
mod seam;
mod secrets;
pub mod sql;
mod trust;
mod uploads;

use std::sync::Arc;

use tokio::sync::watch;

use engine::Engine;
use sql::Db;

pub use aliases::{AliasEdit, validate_alias, validate_alias_name};
pub use error::{CatalogError, Result};
pub use filter::ImageFilter;
pub use images::{Completes, ImageRef};
pub use imports::{ImportJob, Importer};
pub use model::*;
pub use nodes::NodeAnnouncement;
pub use operations::OperationUpdate;
pub use page::{Page, PageRequest};
pub use scrub::{ScrubJob, ScrubOutcome};
pub use seam::{Backend, Catalog};
pub use trust::{TrustEntry, TrustKind};
pub use uploads::SegmentCommit;

/// The catalog's logic over one engine: what [`Catalog`] answers with.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
}

impl Store {
    pub fn new(engine: impl Engine) -> Self {
        Self {
            engine: Arc::new(engine),
        }
    }

    /// Runs `f` in a read-only transaction, off the async workers.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let out = self
            .engine
            .read(Box::new(move |db| Ok(Box::new(f(db)?))))
            .await;
        timed("read", started);
        Ok(*out?.downcast().expect("a job answers with its own type"))
    }

    /// Runs `f` in one transaction that writes, off the async workers; commits if
    /// `f` succeeds, rolls back otherwise.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let out = self
            .engine
            .write(Box::new(move |db| Ok(Box::new(f(db)?))))
            .await;
        timed("write", started);
        Ok(*out?.downcast().expect("a job answers with its own type"))
    }

    /// A receiver that changes whenever any operation changes.
    pub fn watch_operations(&self) -> watch::Receiver<u64> {
        self.engine.watch_operations()
    }

    fn operations_changed(&self) {
        self.engine.operations_changed();
    }
}

/// The value of one of the counters triggers move (`images_version`,
/// `trust_version`, `operations_version`).
pub(crate) fn counter(conn: &dyn Db, table: &str) -> Result<u64> {
    let v: i64 = conn
        .prepare_cached(&format!("SELECT version FROM {table} WHERE id = 0"))?
        .query_row(params![], |r| r.get(0))?;
    Ok(v as u64)
}

/// Records a transaction's time (queueing for the writer included).
fn timed(kind: &str, started: std::time::Instant) {
    use imagestore_telemetry::metrics::{Metrics, metrics};
    Metrics::timed(&metrics().catalog_seconds, kind, started.elapsed());
}
