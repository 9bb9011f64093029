//! Which blob node a client is sent to.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imagestore_catalog::{Catalog, Node, now};

use crate::error::{ApiError, ApiResult};

/// A node is healthy when it says so and its last heartbeat is at most this many
/// intervals old.
const MISSED_HEARTBEATS: u32 = 3;

#[derive(Clone)]
pub struct NodePicker {
    catalog: Catalog,
    heartbeat_interval: Duration,
    /// Turns among equally loaded nodes, so that a client retrying after a node
    /// died before its last heartbeat went stale is sent elsewhere.
    turn: Arc<AtomicUsize>,
}

impl NodePicker {
    pub fn new(catalog: Catalog, heartbeat_interval: Duration) -> Self {
        Self {
            catalog,
            heartbeat_interval,
            turn: Arc::default(),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Whether `node` may be handed to clients now.
    pub fn is_healthy(&self, node: &Node) -> bool {
        let max_age = (self.heartbeat_interval * MISSED_HEARTBEATS).as_nanos() as i64;
        node.reports_healthy && now().saturating_sub(node.last_heartbeat_at) <= max_age
    }

    /// A healthy node with the fewest transfers in progress, taking turns among
    /// those with as few.
    pub async fn pick(&self) -> ApiResult<Node> {
        let mut healthy: Vec<Node> = self
            .catalog
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| self.is_healthy(n))
            .collect();
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
