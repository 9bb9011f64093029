//! The bytes this node holds for transfers on their way in, bounded for the
//! whole node rather than per transfer: a chunk enters the pipeline (the
//! hashers, the archive walk, the segment writer) only once there is room for
//! it, and gives the room back when the last of them has dropped it. A node
//! carrying many transfers slows each rather than growing (32 uploads held
//! 322–383 MiB here before).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Room for bytes in flight, shared by every transfer of the node.
#[derive(Debug, Clone)]
pub struct Budget {
    room: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// Room for `total` bytes (at least one chunk's worth: a chunk larger than
    /// the whole budget waits for all of it).
    pub fn new(total: usize) -> Self {
        // Permits are taken a u32 at a time.
        let total = total.clamp(1, u32::MAX as usize);
        Self {
            room: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits for room for `len` bytes (at most the whole budget) and takes it.
    pub async fn reserve(&self, len: usize) -> Reservation {
        let want = len.min(self.total) as u32;
        // The semaphore is never closed.
        let permit = self.room.clone().acquire_many_owned(want).await.ok();
        Reservation(Arc::new(permit))
    }

    /// `bytes`, once there is room for them; the room stays taken until every
    /// slice of what is returned has been dropped.
    pub async fn hold(&self, bytes: Bytes) -> Bytes {
        self.reserve(bytes.len()).await.hold(bytes)
    }

    /// Bytes of room free now.
    pub fn free(&self) -> usize {
        self.room.available_permits()
    }
}

/// Room taken for bytes about to arrive.
pub struct Reservation(Arc<Option<OwnedSemaphorePermit>>);

impl Reservation {
    /// `bytes` (a slice of what arrived), keeping the room taken until it and
    /// every other slice held with this reservation are dropped.
    pub fn hold(&self, bytes: Bytes) -> Bytes {
        Bytes::from_owner(Held {
            bytes,
            _room: self.0.clone(),
        })
    }
}

struct Held {
    bytes: Bytes,
    _room: Arc<Option<OwnedSemaphorePermit>>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_comes_back_when_the_last_slice_is_dropped() {
        let budget = Budget::new(10);
        let first = budget.hold(Bytes::from_static(b"12345678")).await;
        assert_eq!(budget.free(), 2);
        let slice = first.slice(2..4);
        drop(first);
        assert_eq!(budget.free(), 2, "a slice still holds the room");
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.hold(Bytes::from_static(b"abcdef")).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room for six bytes yet");
        assert_eq!(&slice[..], b"34");
        drop(slice);
        let second = waiting.await.unwrap();
        assert_eq!(&second[..], b"abcdef");
        assert_eq!(budget.free(), 4);
        // A chunk larger than the budget takes all of it.
        drop(second);
        let big = budget.hold(Bytes::from(vec![7u8; 25])).await;
        assert_eq!((big.len(), budget.free()), (25, 0));
        drop(big);
        // Room reserved before the bytes arrive, kept by each slice held.
        let reserved = budget.reserve(6).await;
        assert_eq!(budget.free(), 4);
        let (a, b) = (
            reserved.hold(Bytes::from_static(b"abc")),
            reserved.hold(Bytes::from_static(b"def")),
        );
        drop(reserved);
        drop(a);
        assert_eq!(budget.free(), 4);
        drop(b);
        assert_eq!(budget.free(), 10);
    }
}
