//! Graceful shutdown on SIGTERM or SIGINT.

use std::future::Future;

/// Registers for SIGTERM and SIGINT at once, and returns a future that resolves on
/// the first of them. Call it before announcing readiness: a signal that arrives
/// before registration would otherwise kill the process the hard way.
pub fn signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    }
                }
                (term, int) => {
                    let e = term.err().or(int.err()).map(|e| e.to_string());
                    tracing::warn!(error = ?e, "cannot watch signals; falling back to Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Tells long-lived RPCs (long polls, progress streams) that the server is
/// stopping, so they answer at once instead of holding a graceful stop for as
/// long as they would have waited. Clones share one signal.
#[derive(Clone, Debug)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

/// Raises the signal for every [`Stopping`] made from it.
#[derive(Debug)]
pub(crate) struct StopSignal(tokio::sync::watch::Sender<bool>);

impl StopSignal {
    pub(crate) fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    pub(crate) fn subscribe(&self) -> Stopping {
        Stopping(self.0.subscribe())
    }

    pub(crate) fn raise(&self) {
        self.0.send_replace(true);
    }
}

impl Stopping {
    /// Resolves once the server has begun to stop.
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        // An error means the server is gone: that is stopping too.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}
