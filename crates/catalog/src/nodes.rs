//! Blob nodes: registration, heartbeats, and which of them are healthy.

use crate::params;
use crate::sql::{OptionalExtension, Row};

use crate::Store;
use crate::error::{CatalogError, Result};
use crate::model::*;

/// What a node says about itself when it registers.
#[derive(Debug, Clone)]
pub struct NodeAnnouncement {
    pub node_id: String,
    pub address: String,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub version: String,
    /// The named stores it reaches.
    pub stores: Vec<String>,
}

const NODE_COLUMNS: &str = "node_id, address, capacity_bytes, available_bytes, active_transfers, \
     healthy, version, registered_at, last_heartbeat_at, stores";

fn node_from_row(r: &Row) -> Result<Node> {
    let stores: String = r.get(9)?;
    Ok(Node {
        stores: serde_json::from_str(&stores).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, Box::new(e))
        })?,
        node_id: r.get(0)?,
        address: r.get(1)?,
        capacity_bytes: r.get::<_, i64>(2)? as u64,
        available_bytes: r.get::<_, i64>(3)? as u64,
        active_transfers: r.get::<_, i64>(4)? as u32,
        reports_healthy: r.get(5)?,
        version: r.get(6)?,
        registered_at: r.get(7)?,
        last_heartbeat_at: r.get(8)?,
    })
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a node, or refreshes it when the same id registers again.
    pub async fn register_node(&self, n: NodeAnnouncement) -> Result<Node> {
        self.write(move |tx| {
            let now = now();
            tx.prepare_cached(&format!(
                "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 0, TRUE, ?5, ?6, ?6, ?7) \
                 ON CONFLICT(node_id) DO UPDATE SET address = excluded.address, stores = excluded.stores, \
                 capacity_bytes = excluded.capacity_bytes, available_bytes = excluded.available_bytes, \
                 healthy = TRUE, version = excluded.version, last_heartbeat_at = excluded.last_heartbeat_at"
            ))?
            .execute(params![
                n.node_id,
                n.address,
                clamp(n.capacity_bytes),
                clamp(n.available_bytes),
                n.version,
                now,
                serde_json::to_string(&n.stores)?
            ])?;
            Ok(tx
                .prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE node_id = ?1"))?
                .query_row([&n.node_id], node_from_row)?)
        })
        .await
    }

    /// Records a heartbeat. NotFound when the node never registered.
    pub async fn heartbeat(
        &self,
        node_id: String,
        available_bytes: u64,
        active_transfers: u32,
        healthy: bool,
    ) -> Result<Node> {
        self.write(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE nodes SET available_bytes = ?2, active_transfers = ?3, healthy = ?4, \
                     last_heartbeat_at = ?5 WHERE node_id = ?1",
                )?
                .execute(params![
                    node_id,
                    clamp(available_bytes),
                    active_transfers,
                    healthy,
                    now()
                ])?;
            if n == 0 {
                return Err(CatalogError::NotFound(format!(
                    "blob node {node_id:?} is not registered: call RegisterNode first"
                )));
            }
            tx.prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes WHERE node_id = ?1"
            ))?
            .query_row([&node_id], node_from_row)
            .optional()?
            .ok_or_else(|| CatalogError::NotFound(format!("blob node {node_id:?}")))
        })
        .await
    }

    /// Every known node, by id.
    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes ORDER BY node_id"
            ))?;
            let nodes = stmt
                .query_map(params![], node_from_row)?
                .collect::<Result<_>>()?;
            Ok(nodes)
        })
        .await
    }
}
