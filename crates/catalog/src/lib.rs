//! Metadata at rest: images, aliases, upload sessions, operations and blob nodes.
//!
//! SQLite through rusqlite. Connections are not `Sync` and every query blocks, so
//! no query runs on the async runtime's workers: each runs in `spawn_blocking`,
//! writes on the one writer connection (SQLite allows one writer at a time anyway)
//! and reads on a small pool of reader connections, which WAL lets run beside it.

mod aliases;
mod error;
mod filter;
mod images;
mod imports;
pub mod model;
mod nodes;
mod operations;
mod page;
mod schema;
mod scrub;
mod seam;
mod secrets;
mod trust;
mod uploads;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::{Semaphore, watch};

pub use aliases::{AliasEdit, validate_alias, validate_alias_name};
pub use error::{CatalogError, Result};
pub use filter::ImageFilter;
pub use images::{Completes, ImageRef};
pub use imports::ImportJob;
pub use model::*;
pub use nodes::NodeAnnouncement;
pub use operations::OperationUpdate;
pub use page::{Page, PageRequest};
pub use schema::latest_version as schema_version;
pub use scrub::{ScrubJob, ScrubOutcome};
pub use seam::{Backend, Catalog};
pub use trust::{TrustEntry, TrustKind};
pub use uploads::SegmentCommit;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: usize = 4;
/// Writes that may wait for the writer at once.
const MAX_WAITING_WRITES: usize = 1024;

/// The catalog: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Arc<Semaphore>,
    /// Writes wait their turn here, as async tasks rather than as blocking
    /// threads parked on the writer's lock; past MAX_WAITING_WRITES waiting,
    /// another write is refused (RESOURCE_EXHAUSTED) instead of queueing.
    writer_slot: Arc<Semaphore>,
    waiting_writes: std::sync::atomic::AtomicUsize,
    /// Bumped after every committed change to an operation, so that waiters wake
    /// without polling.
    operations_changed: watch::Sender<u64>,
}

impl Sqlite {
    /// Opens (creating if needed) the catalog database at `path` and migrates it to
    /// the newest schema.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let opened = tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| CatalogError::Task(e.to_string()))??;
        opened.follow_other_processes();
        Ok(opened)
    }

    /// Wakes this process's long polls for operations that another process
    /// serving the same database changed (a replica, `imagestore serve` beside
    /// `imagestore-control`): every `FOLLOW_EVERY` it reads the counter that
    /// triggers move. Stops when the catalog goes.
    fn follow_other_processes(&self) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut seen = None;
            let mut tick = tokio::time::interval(FOLLOW_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let catalog = Sqlite { inner };
                let Ok(version) = catalog
                    .read(|conn| counter(conn, "operations_version"))
                    .await
                else {
                    continue;
                };
                if seen.is_some_and(|s| s != version) {
                    catalog.operations_changed();
                }
                seen = Some(version);
            }
        });
    }

    fn open_blocking(path: &Path) -> Result<Self> {
        // The owner's alone: SQLite gives its -wal and -shm files the database
        // file's mode.
        let mut new = std::fs::OpenOptions::new();
        new.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut new, 0o600);
        match new.open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let mut writer = connect(path, true)?;
        schema::migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| connect(path, false))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers: Mutex::new(readers),
                reader_slots: Arc::new(Semaphore::new(READERS)),
                writer_slot: Arc::new(Semaphore::new(1)),
                waiting_writes: std::sync::atomic::AtomicUsize::new(0),
                operations_changed: watch::channel(0).0,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection, off the async workers.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .reader_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| CatalogError::Task(e.to_string()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            // A reader lost to a panic is replaced rather than starving the pool.
            let conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path, false)?,
            };
            let out = f(&conn);
            lock(&inner.readers).push(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer connection, off the async
    /// workers; commits if `f` succeeds, rolls back otherwise.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let permit = {
            let (_waiting, ahead) = Waiting::join(&self.inner.waiting_writes);
            if ahead >= MAX_WAITING_WRITES {
                return Err(CatalogError::ResourceExhausted(format!(
                    "{ahead} catalog writes are waiting already; try again shortly"
                )));
            }
            self.inner
                .writer_slot
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| CatalogError::Task(e.to_string()))?
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = permit;
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }

    /// A receiver that changes whenever any operation changes.
    pub fn watch_operations(&self) -> watch::Receiver<u64> {
        self.inner.operations_changed.subscribe()
    }

    fn operations_changed(&self) {
        self.inner.operations_changed.send_modify(|n| *n += 1);
    }
}

/// The value of one of the counters triggers move (`images_version`,
/// `trust_version`, `operations_version`).
pub(crate) fn counter(conn: &Connection, table: &str) -> Result<u64> {
    let v: i64 = conn
        .prepare_cached(&format!("SELECT version FROM {table} WHERE id = 0"))?
        .query_row([], |r| r.get(0))?;
    Ok(v as u64)
}

/// How often a catalog looks for changes other processes made to operations.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Counts one waiter until dropped, however the wait ends.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    /// Joins the count; with how many were waiting before.
    fn join(count: &'a std::sync::atomic::AtomicUsize) -> (Self, usize) {
        let ahead = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (Self(count), ahead)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A poisoned lock only means another query panicked; the connection itself is
/// still consistent (its transaction rolled back on drop).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn connect(path: &Path, writer: bool) -> Result<Connection> {
    let flags = if writer {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if writer {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a registered image survives power loss, not just a process crash.
        // Metadata writes are few and small, so the fsync costs little.
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}
