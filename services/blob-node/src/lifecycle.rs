//! Registration, heartbeats and collecting released bytes.

use std::sync::Arc;
use std::time::Duration;

use imagestore_proto::internal::v1 as ipb;
use tonic::Code;

use crate::NodeContext;

const RETRY: Duration = Duration::from_secs(1);

/// Registers (again whenever the control plane forgot us), heartbeats, and
/// deletes released bytes, until aborted.
pub async fn run(
    node: Arc<NodeContext>,
    advertise: String,
    gc_every: Duration,
    registered: Option<tokio::sync::oneshot::Sender<String>>,
) {
    let mut interval = register(&node, &advertise).await;
    if let Some(tx) = registered {
        let _ = tx.send(node.id.clone());
    }
    let imports = crate::import::work(node.clone());
    tokio::pin!(imports);
    let asked = crate::scrub::work(node.clone(), false);
    tokio::pin!(asked);
    let background = async {
        if node.config.scrub_bytes_per_second > 0 {
            crate::scrub::work(node.clone(), true).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(background);
    let mut beat = tokio::time::interval(interval);
    let mut gc = tokio::time::interval(gc_every.max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let reply = node.registry().heartbeat(ipb::HeartbeatRequest {
                    node_id: node.id.clone(),
                    available_bytes: 0,
                    active_transfers: node.active_transfers(),
                    healthy: true,
                }).await;
                match reply {
                    Ok(r) => {
                        let r = r.into_inner();
                        if let Some(settings) = r.settings {
                            node.stores.set_settings(settings);
                        }
                        let wanted = Duration::from_secs(u64::from(r.heartbeat_interval_seconds.max(1)));
                        if wanted != interval {
                            interval = wanted;
                            beat = tokio::time::interval(interval);
                        }
                    }
                    Err(s) if s.code() == Code::NotFound => {
                        interval = register(&node, &advertise).await;
                    }
                    Err(s) => tracing::warn!(error = %s.message(), "heartbeat failed"),
                }
            }
            _ = gc.tick() => collect(&node).await,
            () = &mut imports => {}
            () = &mut asked => {}
            () = &mut background => {}
        }
    }
}

async fn register(node: &NodeContext, advertise: &str) -> Duration {
    loop {
        let reply = node
            .registry()
            .register_node(ipb::RegisterNodeRequest {
                node_id: node.id.clone(),
                address: advertise.to_owned(),
                capacity_bytes: 0,
                available_bytes: 0,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                stores: node.stores.names(),
            })
            .await;
        match reply {
            Ok(r) => {
                let r = r.into_inner();
                if let Some(settings) = r.settings {
                    node.stores.set_settings(settings);
                }
                tracing::info!(node = %node.id, "registered with the control plane");
                return Duration::from_secs(u64::from(r.heartbeat_interval_seconds.max(1)));
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "cannot register with the control plane; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Deletes bytes the control plane released, then tells it they are gone.
async fn collect(node: &NodeContext) {
    let released = match node
        .registry()
        .list_released(ipb::ListReleasedRequest {
            limit: 100,
            stores: node.stores.names(),
        })
        .await
    {
        Ok(r) => r.into_inner().released,
        Err(s) => {
            tracing::debug!(error = %s.message(), "listing released content failed");
            return;
        }
    };
    if released.is_empty() {
        return;
    }
    let mut gone = Vec::with_capacity(released.len());
    for released in released {
        // An entry without a store was released before stores had names: it
        // goes from every store this node reaches.
        let mut deleted = true;
        for (name, store) in node.stores.iter() {
            if !released.store.is_empty() && *name != released.store {
                continue;
            }
            if let Err(e) = store.delete(&released.key).await {
                tracing::warn!(key = released.key, store = name, error = %e, "deleting released bytes failed; will retry");
                deleted = false;
            }
        }
        if deleted {
            gone.push(released);
        }
    }
    let n = gone.len();
    imagestore_telemetry::metrics::metrics()
        .collected
        .inc_by(n as u64);
    if let Err(s) = node
        .registry()
        .forget_released(ipb::ForgetReleasedRequest { released: gone })
        .await
    {
        tracing::warn!(error = %s.message(), "forgetting released keys failed");
    } else {
        tracing::info!(deleted = n, "released bytes collected");
    }
}
