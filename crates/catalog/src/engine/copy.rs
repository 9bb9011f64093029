//! Moving an installation: a SQLite catalog copied into an empty PostgreSQL
//! database, every table, in one transaction (all of it or nothing), row by
//! row so that no table is held in memory.

use std::path::{Path, PathBuf};

use tokio::runtime::Handle;
use tokio_postgres::NoTls;

use super::postgres::{WRITE_LOCK, params, parse};
use super::postgres_schema::{TABLES, migrate};
use super::sqlite::{Sqlite, connect, from_sqlite};
use crate::error::{CatalogError, Result};
use crate::sql::Value;

/// Copies the SQLite catalog at `source` into the PostgreSQL database `url`
/// names (migrating both to the newest schema first). Refuses a target that
/// holds any catalog data. Returns each table with how many rows it copied.
pub async fn copy_sqlite_to_postgres(source: &Path, url: &str) -> Result<Vec<(String, u64)>> {
    if !source.exists() {
        return Err(CatalogError::NotFound(format!(
            "there is no SQLite catalog at {}",
            source.display()
        )));
    }
    drop(Sqlite::open(source).await?);
    let (mut client, connection) = parse(url)?.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    migrate(&mut client).await?;
    let handle = Handle::current();
    let source: PathBuf = source.to_owned();
    let copied = tokio::task::spawn_blocking(move || copy(&handle, &mut client, &source))
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?;
    driver.abort();
    copied
}

fn copy(
    handle: &Handle,
    client: &mut tokio_postgres::Client,
    source: &Path,
) -> Result<Vec<(String, u64)>> {
    let tx = handle.block_on(client.transaction())?;
    handle.block_on(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK]))?;
    let db = connect(source, false)?;
    let mut counts = Vec::new();
    for table in TABLES {
        let held: i64 = handle
            .block_on(tx.query_one(&format!("SELECT count(*) FROM {table}"), &[]))?
            .get(0);
        if held > 0 {
            return Err(CatalogError::FailedPrecondition(format!(
                "the PostgreSQL database is not empty ({table} has {held} rows): a catalog is \
                 copied only into an empty database; give a new one"
            )));
        }
    }
    for table in TABLES {
        let columns: Vec<String> = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let list = columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let places = (1..=columns.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert = handle
            .block_on(tx.prepare(&format!("INSERT INTO {table} ({list}) VALUES ({places})")))?;
        let mut select = db.prepare(&format!("SELECT {list} FROM {table}"))?;
        let mut rows = select.query([])?;
        let mut count = 0u64;
        while let Some(row) = rows.next()? {
            let values = (0..columns.len())
                .map(|i| from_sqlite(row.get_ref(i)?))
                .collect::<Result<Vec<Value>>>()?;
            handle.block_on(tx.execute(&insert, &params(&values)))?;
            count += 1;
        }
        counts.push((table.to_string(), count));
    }
    handle.block_on(tx.commit())?;
    Ok(counts)
}
