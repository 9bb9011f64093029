//! A Rust client for imagestore, for the CLI, the benchmark and anyone embedding
//! imagestore: connections tuned like the servers, image names resolved as `lxc`
//! resolves them, and uploads and exports that resume where they stopped.

mod bearer;
mod connect;
mod error;
mod export;
mod progress;
mod resolve;
mod upload;

use imagestore_proto::v1 as pb;
use tonic::transport::Channel;

pub use bearer::Bearer;
pub use connect::{MAX_MESSAGE, connect, endpoint};
pub use error::Error;
pub use export::{ExportTarget, Exported};
pub use progress::{NoProgress, Progress};
pub use upload::{Source, UploadOptions};

/// One connection to an imagestore control plane (or to `imagestore serve`).
#[derive(Clone)]
pub struct Client {
    url: String,
    channel: Channel,
}

impl Client {
    /// Connects to `url`, e.g. "http://127.0.0.1:7443".
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            channel: connect(url).await?,
        })
    }

    /// The address this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn images(&self) -> pb::images_client::ImagesClient<Channel> {
        pb::images_client::ImagesClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    pub fn aliases(&self) -> pb::aliases_client::AliasesClient<Channel> {
        pb::aliases_client::AliasesClient::new(self.channel.clone())
    }

    pub fn uploads(&self) -> pb::uploads_client::UploadsClient<Channel> {
        pb::uploads_client::UploadsClient::new(self.channel.clone())
    }

    pub fn operations(&self) -> pb::operations_client::OperationsClient<Channel> {
        pb::operations_client::OperationsClient::new(self.channel.clone())
    }

    pub fn imports(&self) -> pb::imports_client::ImportsClient<Channel> {
        pb::imports_client::ImportsClient::new(self.channel.clone())
    }

    /// A Blobs client for the blob node at `node` (the control plane's own address
    /// when it is `imagestore serve`, which shares this connection).
    pub async fn blobs(&self, node: &str) -> Result<pb::blobs_client::BlobsClient<Channel>, Error> {
        let node = node.trim_end_matches('/');
        let channel = if node.is_empty() || node == self.url {
            self.channel.clone()
        } else {
            connect(node).await?
        };
        Ok(blobs_client(channel))
    }
}

/// Aliases to create with a new image, by name (no descriptions, as `--alias`).
pub fn alias_specs(names: &[String]) -> Vec<pb::AliasSpec> {
    names
        .iter()
        .map(|name| pb::AliasSpec {
            name: name.clone(),
            description: String::new(),
        })
        .collect()
}

/// How long to wait before retry `attempt` (1, 2, ...): 0.4 s doubling to 6.4 s.
pub(crate) fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(200 << attempt.min(5))
}

/// A Blobs client that takes and sends chunks of up to [`MAX_MESSAGE`].
pub fn blobs_client(channel: Channel) -> pb::blobs_client::BlobsClient<Channel> {
    pb::blobs_client::BlobsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}
