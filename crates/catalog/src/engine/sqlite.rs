//! SQLite through rusqlite, the embedded default. Connections are not `Sync` and
//! every query blocks, so no query runs on the async runtime's workers: each runs
//! in `spawn_blocking`, writes on the one writer connection (SQLite allows one
//! writer at a time anyway) and reads on a small pool of reader connections,
//! which WAL lets run beside it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{Semaphore, watch};

use super::{Answer, Engine, Job};
use crate::error::{CatalogError, Result};
use crate::sql::{Db, Dialect, Row, Value};

pub use super::sqlite_schema::latest_version;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: usize = 4;
/// Writes that may wait for the writer at once.
const MAX_WAITING_WRITES: usize = 1024;
/// How often a catalog looks for changes other processes made to operations.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// A SQLite catalog file, open.
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
    waiting_writes: AtomicUsize,
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
                let engine = Sqlite { inner };
                let Ok(version) = engine
                    .read(Box::new(|db| {
                        Ok(Box::new(crate::counter(db, "operations_version")?))
                    }))
                    .await
                    .map(|v| v.downcast::<u64>().map_or(0, |v| *v))
                else {
                    continue;
                };
                if seen.is_some_and(|s| s != version) {
                    engine.operations_changed();
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
        super::sqlite_schema::migrate(&mut writer)?;
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
                waiting_writes: AtomicUsize::new(0),
                operations_changed: watch::channel(0).0,
            }),
        })
    }
}

#[async_trait::async_trait]
impl Engine for Sqlite {
    async fn read(&self, job: Job) -> Result<Answer> {
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
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path, false)?,
            };
            // One read transaction: every statement of the job sees one state.
            let out = match conn.transaction() {
                Ok(tx) => job(&*tx),
                Err(e) => Err(e.into()),
            };
            lock(&inner.readers).push(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }

    async fn write(&self, job: Job) -> Result<Answer> {
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
            let out = job(&*tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }

    fn watch_operations(&self) -> watch::Receiver<u64> {
        self.inner.operations_changed.subscribe()
    }

    fn operations_changed(&self) {
        self.inner.operations_changed.send_modify(|n| *n += 1);
    }
}

impl Db for Connection {
    fn rows(&self, sql: &str, args: Vec<Value>) -> Result<Vec<Row>> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let values = (0..columns)
                .map(|i| from_sqlite(row.get_ref(i)?))
                .collect::<Result<Vec<_>>>()?;
            out.push(Row(values));
        }
        Ok(out)
    }

    fn run(&self, sql: &str, args: Vec<Value>) -> Result<usize> {
        Ok(self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

pub(crate) fn from_sqlite(v: ValueRef<'_>) -> Result<Value> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|_| CatalogError::Corrupt("text that is not UTF-8".into()))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        ValueRef::Real(_) => {
            return Err(CatalogError::Corrupt(
                "a real number where the catalog keeps none".into(),
            ));
        }
    })
}

/// Counts one waiter until dropped, however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Joins the count; with how many were waiting before.
    fn join(count: &'a AtomicUsize) -> (Self, usize) {
        let ahead = count.fetch_add(1, Ordering::Relaxed);
        (Self(count), ahead)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A poisoned lock only means another query panicked; the connection itself is
/// still consistent (its transaction rolled back on drop).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn connect(path: &Path, writer: bool) -> Result<Connection> {
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
