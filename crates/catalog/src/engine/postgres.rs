//! PostgreSQL through tokio-postgres with a deadpool pool: several control-plane
//! replicas over one database. The logic's transactions run on blocking threads
//! as on SQLite; each statement is sent on a pooled connection the runtime
//! drives. Writes take turns across every replica (a transaction-scoped advisory
//! lock), which is what SQLite's single writer gives the logic on one machine;
//! reads run beside them in REPEATABLE READ snapshots. Operation changes are
//! announced with NOTIFY and heard with LISTEN, so long polls on every replica
//! wake at once.

use std::error::Error as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};

use super::postgres_schema::{OPERATIONS_CHANNEL, migrate};
use super::{Answer, Engine, Job};
use crate::error::{CatalogError, Result};
use crate::sql::{Db, Dialect, Row, Value, dollar_placeholders};

/// Connections per replica: enough for the reads that run beside a write.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection (or to open one) before it fails as
/// UNAVAILABLE, so that callers retry instead of hanging while the database is
/// down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Every write holds this lock until it commits: writes take turns.
pub(super) const WRITE_LOCK: i64 = 0x696d_6773_7772_6974;
/// How long the listener waits before connecting again after it lost the
/// database.
const LISTEN_RETRY: Duration = Duration::from_millis(500);

/// A PostgreSQL catalog database, connected.
pub struct Postgres {
    pool: Pool,
    operations_changed: Arc<watch::Sender<u64>>,
    /// Dropped with the catalog: the listener hangs up then.
    _listening: tokio::sync::oneshot::Sender<()>,
}

impl Postgres {
    /// Connects to the database `url` names (`postgres://user@host/db`) and
    /// migrates it to the newest schema.
    pub async fn connect(url: &str) -> Result<Self> {
        let config = parse(url)?;
        let pool = pool(&config)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        migrate(&mut client).await?;
        drop(client);
        let operations_changed = Arc::new(watch::channel(0).0);
        let (listening, hang_up) = tokio::sync::oneshot::channel();
        let changed = Arc::downgrade(&operations_changed);
        tokio::spawn(async move {
            tokio::select! {
                () = listen(config, changed) => {}
                _ = hang_up => {}
            }
        });
        Ok(Self {
            pool,
            operations_changed,
            _listening: listening,
        })
    }

    async fn transaction(&self, job: Job, writes: bool) -> Result<Answer> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            let tx = handle.block_on(async {
                let tx = if writes {
                    let tx = client.transaction().await?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                        .await?;
                    tx
                } else {
                    client
                        .build_transaction()
                        .isolation_level(IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await?
                };
                Ok::<_, CatalogError>(tx)
            })?;
            let out = job(&Statements {
                tx: &tx,
                handle: &handle,
            })?;
            handle.block_on(tx.commit())?;
            Ok(out)
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl Engine for Postgres {
    async fn read(&self, job: Job) -> Result<Answer> {
        self.transaction(job, false).await
    }

    async fn write(&self, job: Job) -> Result<Answer> {
        self.transaction(job, true).await
    }

    fn watch_operations(&self) -> watch::Receiver<u64> {
        self.operations_changed.subscribe()
    }

    fn operations_changed(&self) {
        self.operations_changed.send_modify(|n| *n += 1);
    }
}

pub(super) fn parse(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        CatalogError::InvalidArgument(format!(
            "control_plane.database {:?} is not a PostgreSQL connection string \
             (postgres://USER:PASSWORD@HOST:PORT/DATABASE): {e}",
            redact(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("imagestore");
    }
    Ok(config)
}

fn pool(config: &tokio_postgres::Config) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            // A connection that died with the server is found out at its next
            // use and replaced; checking each one before use would cost a
            // round trip per transaction.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| CatalogError::Task(format!("catalog connection pool: {e}")))
}

/// The connection string without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Hears operation changes from every replica and wakes this one's waiters;
/// connects again after losing the database (waking everyone then, since
/// changes may have gone unheard). Ends when the catalog goes.
async fn listen(config: tokio_postgres::Config, changed: Weak<watch::Sender<u64>>) {
    let wake = |changed: &Weak<watch::Sender<u64>>| match changed.upgrade() {
        Some(tx) => {
            tx.send_modify(|n| *n += 1);
            true
        }
        None => false,
    };
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let statement = format!("LISTEN {OPERATIONS_CHANNEL}");
            let listening = client.batch_execute(&statement);
            let mut listening = std::pin::pin!(listening);
            let mut subscribed = false;
            loop {
                let message = tokio::select! {
                    done = &mut listening, if !subscribed => {
                        if done.is_err() {
                            break;
                        }
                        subscribed = true;
                        if !wake(&changed) {
                            return;
                        }
                        continue;
                    }
                    m = std::future::poll_fn(|cx| connection.poll_message(cx)) => m,
                };
                match message {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        if !wake(&changed) {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            tracing::warn!("lost the catalog database's notifications; connecting again");
        }
        if !wake(&changed) {
            return;
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

/// The logic's statements, sent in one transaction from a blocking thread.
struct Statements<'a, 'b> {
    tx: &'a deadpool_postgres::Transaction<'b>,
    handle: &'a Handle,
}

impl Db for Statements<'_, '_> {
    fn rows(&self, sql: &str, args: Vec<Value>) -> Result<Vec<Row>> {
        let sql = dollar_placeholders(sql);
        self.handle.block_on(async {
            let stmt = self.tx.prepare_cached(&sql).await?;
            let rows = self.tx.query(&stmt, &params(&args)).await?;
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<_, Value>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map(Row)
                        .map_err(CatalogError::from)
                })
                .collect()
        })
    }

    fn run(&self, sql: &str, args: Vec<Value>) -> Result<usize> {
        let sql = dollar_placeholders(sql);
        self.handle.block_on(async {
            let stmt = self.tx.prepare_cached(&sql).await?;
            Ok(self.tx.execute(&stmt, &params(&args)).await? as usize)
        })
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// Values as tokio-postgres takes a statement's arguments.
pub(super) fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(match *ty {
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn pool_error(e: PoolError) -> CatalogError {
    match e {
        PoolError::Backend(e) => e.into(),
        e => CatalogError::Unavailable(format!(
            "no connection to the catalog database: {e}; try again shortly"
        )),
    }
}

/// Whether a PostgreSQL failure means the database is (for now) out of reach,
/// not that the request was wrong: worth retrying.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    match e.code() {
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources; 57P: the
            // server is shutting down or starting; 40: a serialization failure.
            class == "08"
                || class == "53"
                || class == "40"
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        None => false,
    }
}
