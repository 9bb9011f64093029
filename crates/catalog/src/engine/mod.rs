//! The databases the catalog runs on, one adapter each: [`sqlite`] (rusqlite,
//! the embedded default) and [`postgres`] (tokio-postgres with a pool, for
//! several control-plane replicas). An engine runs the logic's transactions and
//! tells waiters when operations change, whoever changed them; everything else
//! is the same code for both (`crate::sql`).

mod copy;
pub mod postgres;
mod postgres_schema;
pub mod sqlite;
mod sqlite_schema;

use std::any::Any;

use tokio::sync::watch;

use crate::error::Result;
pub use copy::copy_sqlite_to_postgres;

use crate::sql::Db;

/// The answer of a transaction, typed again by `Store`.
pub type Answer = Box<dyn Any + Send>;

/// A transaction's work: runs on a blocking thread, against the engine's
/// database inside one transaction.
pub type Job = Box<dyn FnOnce(&dyn Db) -> Result<Answer> + Send>;

/// Refuses a database a newer build migrated: this one would misread it.
pub(crate) fn check_schema_version(current: usize, known: usize) -> Result<()> {
    if current > known {
        return Err(crate::error::CatalogError::FailedPrecondition(format!(
            "the catalog database has schema version {current}, newer than this build knows \
             ({known}); run a newer imagestore or restore a backup"
        )));
    }
    Ok(())
}

/// What an adapter does for the catalog's logic.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Runs `job` in a read-only transaction that sees one consistent state.
    async fn read(&self, job: Job) -> Result<Answer>;
    /// Runs `job` in a transaction that writes: committed if it succeeds, rolled
    /// back otherwise. Writes take turns, across every process that serves the
    /// catalog, so the logic reads and then writes without races.
    async fn write(&self, job: Job) -> Result<Answer>;
    /// Moves whenever an operation changes, in this process or another.
    fn watch_operations(&self) -> watch::Receiver<u64>;
    /// Wakes this process's waiters at once after it changed an operation.
    fn operations_changed(&self);
}
