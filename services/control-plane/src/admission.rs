//! Admission for reads: callers without trust share a few places, so that however
//! many of them call at once, and whatever their requests cost, trusted callers
//! and blob nodes keep the rest of the machine. Past a short queue an anonymous
//! read is refused (RESOURCE_EXHAUSTED) at once rather than waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ApiResult};

/// The anonymous lane.
#[derive(Clone)]
pub struct Lane {
    places: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue: usize,
}

/// A reader's admission: what it may see, and its place while it holds it.
pub struct Reader {
    pub public_only: bool,
    _place: Option<OwnedSemaphorePermit>,
}

/// Gives the waiting count back however the wait ends (answered or dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lane {
    /// `places` anonymous reads at once (0: half the cores, at least one), and
    /// at most `queue` waiting for one.
    pub fn new(places: usize, queue: usize) -> Self {
        let places = match places {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        Self {
            places: Arc::new(Semaphore::new(places)),
            waiting: Arc::default(),
            queue,
        }
    }

    /// Admits a read: at once for trusted callers, in the lane for the others.
    pub async fn admit(&self, public_only: bool) -> ApiResult<Reader> {
        if !public_only {
            return Ok(Reader {
                public_only,
                _place: None,
            });
        }
        let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.queue {
            return Err(ApiError::ResourceExhausted(format!(
                "{ahead} requests without a token are waiting already; try again shortly \
                 (trusted clients are not held up)"
            )));
        }
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the server is stopping".into()))?;
        Ok(Reader {
            public_only,
            _place: Some(place),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn strangers_queue_in_a_bounded_lane_and_the_trusted_pass() {
        let lane = Lane::new(1, 1);
        let first = lane.admit(true).await.unwrap();
        assert!(first.public_only);
        // The one place is taken: one may wait, the next is refused at once.
        let waiting = tokio::spawn({
            let lane = lane.clone();
            async move { lane.admit(true).await.map(|r| r.public_only) }
        });
        while lane.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            lane.admit(true).await,
            Err(ApiError::ResourceExhausted(_))
        ));
        assert!(
            !lane.admit(false).await.unwrap().public_only,
            "trusted: no wait"
        );
        drop(first);
        assert!(
            waiting.await.unwrap().unwrap(),
            "the waiting stranger gets the place"
        );
    }
}
