//! Which blob node a client is sent to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imagestore_catalog::{Catalog, Node, now};

use crate::error::{ApiError, ApiResult};

/// A node is healthy when it says so and its last heartbeat is at most this many
/// intervals old.
const MISSED_HEARTBEATS: u32 = 2;

/// How long a node a client reported unreachable is not handed out, in
/// heartbeat intervals (by then a dead node's heartbeats are stale anyway).
const SUSPECT_FOR: u32 = 4;

#[derive(Clone)]
pub struct NodePicker {
    catalog: Catalog,
    heartbeat_interval: Duration,
    /// Turns among equally loaded nodes, so that a client retrying after a node
    /// died before its last heartbeat went stale is sent elsewhere.
    turn: Arc<AtomicUsize>,
    /// Addresses clients reported unreachable, until when they are passed over.
    /// Passed over, not banned: with no other node they are still handed out,
    /// so a report can move load but never deny service.
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
}

impl NodePicker {
    pub fn new(catalog: Catalog, heartbeat_interval: Duration) -> Self {
        Self {
            catalog,
            heartbeat_interval,
            turn: Arc::default(),
            suspects: Arc::default(),
        }
    }

    /// A client could not reach the node at `address` (as it was handed out):
    /// pass it over for a while. An empty address is no report.
    pub fn report_unreachable(&self, address: &str) {
        if address.is_empty() || address.len() > 512 {
            return;
        }
        let now = Instant::now();
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: expired reports go before a new one is kept.
        suspects.retain(|_, until| *until > now);
        if suspects.len() < 4096 {
            suspects.insert(
                address.to_owned(),
                now + self.heartbeat_interval * SUSPECT_FOR,
            );
        }
    }

    fn suspected(&self, address: &str) -> bool {
        let suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects
            .get(address)
            .is_some_and(|until| *until > Instant::now())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Whether `node` may be handed to clients now.
    pub fn is_healthy(&self, node: &Node) -> bool {
        let max_age = (self.heartbeat_interval * MISSED_HEARTBEATS).as_nanos() as i64;
        node.reports_healthy && now().saturating_sub(node.last_heartbeat_at) <= max_age
    }

    /// A healthy node that reaches the stores `need` asks for, with the fewest
    /// transfers in progress, taking turns among those with as few.
    pub async fn pick(&self, need: Need<'_>) -> ApiResult<Node> {
        let mut healthy: Vec<Node> = self
            .catalog
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| self.is_healthy(n))
            .collect();
        if let Some(missing) = need.unmet(&healthy) {
            return Err(ApiError::Unavailable(missing));
        }
        healthy.retain(|n| need.met_by(&n.stores));
        if healthy.iter().any(|n| !self.suspected(&n.address)) {
            healthy.retain(|n| !self.suspected(&n.address));
        }
        let fewest = healthy.iter().map(|n| n.active_transfers).min();
        healthy.retain(|n| Some(n.active_transfers) == fewest);
        if healthy.is_empty() {
            return Err(ApiError::Unavailable(
                "no healthy blob node is registered with this control plane: start \
                 imagestore-blob with --control-plane pointing here"
                    .into(),
            ));
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(healthy.swap_remove(turn % healthy.len()))
    }
}

/// Which stores the node handed out must reach.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Every one of these (where an upload writes).
    All(&'a [String]),
    /// At least one of these (where an image to read is); empty: any node.
    OneOf(&'a [String]),
}

impl Need<'_> {
    pub fn met_by(&self, reach: &[String]) -> bool {
        match self {
            Self::All(stores) => stores.iter().all(|s| reach.contains(s)),
            Self::OneOf(stores) => stores.is_empty() || stores.iter().any(|s| reach.contains(s)),
        }
    }

    /// Why no node of `healthy` will do, when there are nodes but none reaches
    /// the stores; None otherwise.
    fn unmet(&self, healthy: &[Node]) -> Option<String> {
        if healthy.is_empty() || healthy.iter().any(|n| self.met_by(&n.stores)) {
            return None;
        }
        let (how, stores) = match self {
            Self::All(s) => ("every one of the stores", s),
            Self::OneOf(s) => ("one of the stores", s),
        };
        Some(format!(
            "no healthy blob node reaches {how} {}: start a node whose configuration has \
             them (the healthy nodes reach {})",
            stores.join(", "),
            healthy
                .iter()
                .map(|n| format!("{}: {}", n.node_id, n.stores.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}
