//! One logical connection to several control-plane replicas: calls go to one
//! replica until a call to it fails at the transport level (refused, reset,
//! gone), then to the next. The failed call is not replayed (its body may be
//! half sent): callers retry transient failures as they do anyway, and their
//! retry reaches a replica that answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::TlsOptions;
use crate::error::Error;

/// Channels to each replica, and which one calls go to.
#[derive(Clone, Debug)]
pub struct Failover {
    channels: Arc<[Channel]>,
    current: Arc<AtomicUsize>,
}

/// The addresses in `urls`, separated by commas, in order of preference.
pub fn addresses(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

/// Lazy channels to every address in `urls` (separated by commas), in that
/// order of preference.
pub fn connect_lazy_any(urls: &str, tls: &TlsOptions) -> Result<Failover, Error> {
    let channels = addresses(urls)
        .iter()
        .map(|u| crate::connect_lazy(u, tls))
        .collect::<Result<Vec<_>, _>>()?;
    Failover::new(channels).ok_or_else(|| Error::Address(format!("no address in {urls:?}")))
}

impl Failover {
    /// Calls go to `channels` in this order of preference; None when empty.
    pub fn new(channels: Vec<Channel>) -> Option<Self> {
        (!channels.is_empty()).then(|| Self {
            channels: channels.into(),
            current: Arc::default(),
        })
    }

    /// Calls go to the `i`th address first.
    pub fn starting_at(self, i: usize) -> Self {
        self.current.store(i, Ordering::Relaxed);
        self
    }

    /// The channel to the `i`th address.
    pub fn channel(&self, i: usize) -> Option<Channel> {
        self.channels.get(i).cloned()
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies the channel it goes to.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let at = self.current.load(Ordering::Relaxed);
        let mut channel = self.channels[at % self.channels.len()].clone();
        let current = self.current.clone();
        let many = self.channels.len() > 1;
        Box::pin(async move {
            let answered = async {
                channel.ready().await?;
                channel.call(req).await
            }
            .await;
            if answered.is_err() && many {
                // Only the first to see this replica fail moves everyone on.
                let _ = current.compare_exchange(at, at + 1, Ordering::Relaxed, Ordering::Relaxed);
            }
            answered
        })
    }
}
