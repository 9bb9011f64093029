//! A Rust client for imagestore, for the CLI, the benchmark and anyone embedding
//! imagestore: connections tuned like the servers, image names resolved as `lxc`
//! resolves them, and uploads and exports that resume where they stopped.

mod connect;
mod download;
mod error;
mod export;
mod failover;
mod progress;
mod resolve;
mod scheme;
mod tls;
mod upload;

use imagestore_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use connect::{MAX_MESSAGE, connect, connect_lazy, connect_with, endpoint};
pub use error::Error;
pub use export::{ExportTarget, Exported};
pub use failover::{Failover, connect_lazy_any};
pub use imagestore_auth::Bearer;
pub use progress::{NoProgress, Progress};
pub use tls::{TlsOptions, http1_config, server_fingerprint};
pub use upload::{Source, UploadOptions};

/// A connection that presents the caller's credentials on every call.
pub type Authed = InterceptedService<Failover, Bearer>;

/// One connection to an imagestore control plane (or to `imagestore serve`), or
/// to several replicas of one, calls moving to the next when one stops
/// answering.
#[derive(Clone)]
pub struct Client {
    url: String,
    addresses: Vec<String>,
    channel: Failover,
    bearer: Bearer,
    tls: TlsOptions,
}

impl Client {
    /// Connects to `url`, e.g. "http://127.0.0.1:7443", as the holder of `token`
    /// (none: an untrusted caller, who sees public images only).
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Self, Error> {
        Self::connect_with(url, token, TlsOptions::default()).await
    }

    /// As [`Client::connect`], with `tls` for an https:// server (and its blob
    /// nodes, which share the cluster's certificate). `url` may name several
    /// replicas separated by commas: the first that answers now is used, and
    /// calls move to the next when it stops answering; none answering is the
    /// first one's error.
    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        tls: TlsOptions,
    ) -> Result<Self, Error> {
        let bearer = Bearer::new(token).map_err(|e| Error::Invalid(e.to_string()))?;
        let addresses = failover::addresses(url);
        let mut channels = Vec::new();
        let mut first_error = None;
        let mut answered = None;
        for (i, address) in addresses.iter().enumerate() {
            match connect_with(address, &tls).await {
                Ok(channel) => {
                    answered.get_or_insert(i);
                    channels.push(channel);
                }
                Err(e) => {
                    // Perhaps reachable later: kept, lazily.
                    first_error.get_or_insert(e);
                    channels.push(connect_lazy(address, &tls)?);
                }
            }
        }
        let start = match (answered, first_error) {
            (Some(i), _) => i,
            (None, Some(e)) => return Err(e),
            (None, None) => 0,
        };
        let channel = Failover::new(channels)
            .ok_or_else(|| Error::Address(format!("no address in {url:?}")))?
            .starting_at(start);
        Ok(Self {
            url: addresses.join(","),
            addresses,
            channel,
            bearer,
            tls,
        })
    }

    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel.clone(), self.bearer.clone())
    }

    /// The address this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn images(&self) -> pb::images_client::ImagesClient<Authed> {
        pb::images_client::ImagesClient::new(self.authed()).max_decoding_message_size(MAX_MESSAGE)
    }

    pub fn aliases(&self) -> pb::aliases_client::AliasesClient<Authed> {
        pb::aliases_client::AliasesClient::new(self.authed())
    }

    pub fn uploads(&self) -> pb::uploads_client::UploadsClient<Authed> {
        pb::uploads_client::UploadsClient::new(self.authed())
    }

    pub fn operations(&self) -> pb::operations_client::OperationsClient<Authed> {
        pb::operations_client::OperationsClient::new(self.authed())
    }

    pub fn imports(&self) -> pb::imports_client::ImportsClient<Authed> {
        pb::imports_client::ImportsClient::new(self.authed())
    }

    pub fn trust(&self) -> pb::trust_client::TrustClient<Authed> {
        pb::trust_client::TrustClient::new(self.authed())
    }

    /// A Blobs client for the blob node at `node` (the control plane's own address
    /// when it is `imagestore serve`, which shares this connection).
    pub async fn blobs(&self, node: &str) -> Result<BlobsClient, Error> {
        self.blobs_via(node, None).await
    }

    /// As [`Client::blobs`]; a node that is not one of this client's addresses
    /// is reached at `address` when given (one the caller checked), else by
    /// resolving its name.
    pub async fn blobs_via(
        &self,
        node: &str,
        address: Option<std::net::SocketAddr>,
    ) -> Result<BlobsClient, Error> {
        Ok(blobs_client(self.blob_channel(node, address).await?))
    }

    /// The connection to the blob node at `node`, as [`Client::blobs_via`].
    async fn blob_channel(
        &self,
        node: &str,
        address: Option<std::net::SocketAddr>,
    ) -> Result<Channel, Error> {
        let node = node.trim_end_matches('/');
        let ours = match node {
            "" => self.channel.channel(0),
            node => self
                .addresses
                .iter()
                .position(|a| a == node)
                .and_then(|i| self.channel.channel(i)),
        };
        let channel = match ours {
            Some(channel) => channel,
            None => {
                let tls = TlsOptions {
                    address,
                    ..self.tls.clone()
                };
                connect_with(node, &tls).await?
            }
        };
        Ok(channel)
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

/// A Blobs client: chunks of up to [`MAX_MESSAGE`], in the caller's trace.
pub type BlobsClient = pb::blobs_client::BlobsClient<
    InterceptedService<Channel, imagestore_telemetry::propagation::Traced>,
>;

/// A Blobs client over `channel` that takes and sends chunks of up to
/// [`MAX_MESSAGE`].
pub fn blobs_client(channel: Channel) -> BlobsClient {
    pb::blobs_client::BlobsClient::with_interceptor(
        channel,
        imagestore_telemetry::propagation::Traced,
    )
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE)
}
