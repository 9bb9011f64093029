//! SHA-256 on a thread of its own, fed through a short bounded queue. The receive
//! loop hands each chunk over and goes back to the network at once, so receiving,
//! hashing and storing run on different cores instead of one after another (on a
//! 2-core machine, hashing inline capped an upload near 1 / (1/hash + 1/receive)).

use imagestore_proto::frames::Pieces;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::error::{BlobError, BlobResult};

/// Messages' bytes (up to max_chunk_bytes each) waiting for the hasher. A few
/// are enough to ride out scheduling jitter; more would only hold memory.
const QUEUE: usize = 4;

enum Command {
    /// A message's bytes, in the pieces they arrived in: one hand-off (one
    /// wake-up of the thread) for all of them.
    Data(Pieces),
    /// Answer with the state after every byte queued before this command.
    State(oneshot::Sender<Sha256>),
    /// The same, and start again from empty.
    Take(oneshot::Sender<Sha256>),
}

/// A running hash. Dropping it ends the thread once the queue is drained.
pub struct HashPipe {
    tx: mpsc::Sender<Command>,
}

/// A hash state asked for at some point of the stream, to be collected later.
pub struct PendingState(oneshot::Receiver<Sha256>);

impl PendingState {
    pub async fn get(self) -> BlobResult<Sha256> {
        self.0.await.map_err(|_| gone())
    }
}

fn gone() -> BlobError {
    BlobError::Internal("the hashing thread stopped".into())
}

impl HashPipe {
    /// Starts a hasher that continues from `state`.
    pub fn start(state: Sha256) -> BlobResult<Self> {
        let (tx, mut rx) = mpsc::channel::<Command>(QUEUE);
        std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut hash = state;
                while let Some(command) = rx.blocking_recv() {
                    match command {
                        Command::Data(data) => {
                            for piece in data.into_slices() {
                                hash.update(&piece);
                            }
                        }
                        Command::State(reply) => {
                            let _ = reply.send(hash.clone());
                        }
                        Command::Take(reply) => {
                            let _ = reply.send(std::mem::take(&mut hash));
                        }
                    }
                }
            })
            .map_err(|e| BlobError::Internal(format!("starting a hashing thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Queues bytes; waits only while the queue is full.
    pub async fn update(&self, data: impl Into<Pieces>) -> BlobResult<()> {
        self.tx
            .send(Command::Data(data.into()))
            .await
            .map_err(|_| gone())
    }

    /// Asks for the state after everything queued so far, without waiting for it.
    pub async fn state_later(&self) -> BlobResult<PendingState> {
        self.ask(Command::State).await
    }

    /// The state after everything queued so far.
    pub async fn state(&self) -> BlobResult<Sha256> {
        self.ask(Command::State).await?.get().await
    }

    /// The state after everything queued so far; the hasher starts again empty.
    pub async fn take(&self) -> BlobResult<Sha256> {
        self.ask(Command::Take).await?.get().await
    }

    async fn ask(
        &self,
        command: fn(oneshot::Sender<Sha256>) -> Command,
    ) -> BlobResult<PendingState> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| gone())?;
        Ok(PendingState(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn states_follow_the_stream_in_order() {
        let pipe = HashPipe::start(Sha256::new()).unwrap();
        pipe.update(Bytes::from_static(b"abc")).await.unwrap();
        let early = pipe.state_later().await.unwrap();
        pipe.update(Bytes::from_static(b"def")).await.unwrap();
        assert_eq!(
            early.get().await.unwrap().finalize(),
            Sha256::digest(b"abc")
        );
        assert_eq!(
            pipe.take().await.unwrap().finalize(),
            Sha256::digest(b"abcdef")
        );
        pipe.update(Bytes::from_static(b"xyz")).await.unwrap();
        assert_eq!(
            pipe.state().await.unwrap().finalize(),
            Sha256::digest(b"xyz")
        );
    }
}
