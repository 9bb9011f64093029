//! A blob node: stateless. It streams image bytes in (hashing them as they arrive
//! and writing them through object_store) and out (from any offset), and registers
//! verified content with the control plane. Any number of nodes can serve one
//! control plane over shared storage.

mod budget;
pub mod config;
mod download;
mod error;
mod hasher;
mod http;
mod import;
mod ingest;
mod lifecycle;
mod plugins;
mod replicate;
mod scrub;
mod stores;
mod upload;
mod walker;
mod wire;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use imagestore_auth::{Bearer, TicketKey, read_secret};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_server::{GrpcServer, MetricsAccess, ServeError, Tls};
use imagestore_store::{BlobStore, StoreError, StoredSegment};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

pub use config::BlobNodeConfig;

/// Why the blob node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open store {name:?}: {source}")]
    Store { name: String, source: StoreError },
    #[error("stores: {0}")]
    Stores(String),
    #[error(
        "cannot read the cluster credential from {path}: {reason}; copy the control plane's \
         {file} file here, or point cluster_credential_file at it",
        file = imagestore_auth::CLUSTER_CREDENTIAL_FILE
    )]
    Credential { path: String, reason: String },
    #[error("control plane address {0:?} is not a valid URL")]
    ControlPlane(String),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// What every request handler on this node shares.
pub struct NodeContext {
    pub id: String,
    /// The named stores this node reaches.
    pub stores: stores::NodeStores,
    pub config: NodeLimits,
    /// Checks the tickets clients bring.
    pub tickets: TicketKey,
    /// Room for received bytes in flight, node-wide.
    pub budget: budget::Budget,
    channel: imagestore_client::Failover,
    /// The cluster credential, on every call to the control plane.
    credential: Bearer,
    active: AtomicU32,
}

/// A connection to the control plane that presents the cluster credential.
pub type ControlPlane = InterceptedService<imagestore_client::Failover, Bearer>;

/// The settings handlers need.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    pub segment_bytes: u64,
    pub commit_interval: std::time::Duration,
    pub max_transfers: u32,
    pub max_chunk_bytes: u32,
    pub scan_budget_bytes: u64,
    pub max_upload_bytes: u64,
    /// Background scrubbing's pace; 0: no background scrubbing on this node.
    pub scrub_bytes_per_second: u64,
    /// How old a stray under a registered part must be before it is collected.
    pub stray_grace: std::time::Duration,
    /// Where the import plugins keep files while they work (a disk being
    /// converted and its result).
    pub scratch_dir: std::path::PathBuf,
}

/// Counts a transfer in progress while alive (it may outlive the handler, as a
/// download stream does).
pub struct OwnedTransfer(Arc<NodeContext>);

impl Drop for OwnedTransfer {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        imagestore_telemetry::metrics::metrics()
            .transfers_active
            .dec();
    }
}

impl NodeContext {
    pub fn registry(&self) -> ipb::registry_client::RegistryClient<ControlPlane> {
        ipb::registry_client::RegistryClient::with_interceptor(
            self.channel.clone(),
            self.credential.clone(),
        )
    }

    /// The stored parts of an image, with the objects each is stored as.
    pub async fn lookup(&self, fingerprint: &str) -> Result<Content, Status> {
        let found = self
            .registry()
            .lookup_content(ipb::LookupContentRequest {
                fingerprint: fingerprint.to_owned(),
            })
            .await?
            .into_inner();
        Ok(Content {
            fingerprint: fingerprint.to_owned(),
            parts: StoredPart::pair(found.parts, found.objects),
            damage: found.damage,
            stores: found.stores,
        })
    }

    pub fn active_transfers(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// An image's stored content as the catalog records it.
pub struct Content {
    fingerprint: String,
    parts: Vec<StoredPart>,
    damage: Option<pb::ImageDamage>,
    /// The stores holding a verified copy.
    pub stores: Vec<String>,
}

impl Content {
    /// The parts to serve and the store to read them from; DATA_LOSS when a
    /// verification found them damaged.
    pub fn servable(
        self,
        node: &NodeContext,
    ) -> Result<(BlobStore, Vec<StoredPart>), error::BlobError> {
        if let Some(d) = self.damage {
            return Err(error::BlobError::DataLoss(format!(
                "image {} is damaged and is not served: {}",
                self.fingerprint, d.message
            )));
        }
        let (_, store) = node.stores.reading(&self.stores)?;
        Ok((store.clone(), self.parts))
    }

    pub fn into_parts(self) -> Vec<StoredPart> {
        self.parts
    }
}

/// A part as the catalog records it.
pub struct StoredPart {
    pub part: pb::ImagePart,
    /// The objects it is stored as; empty for an image registered before the
    /// catalog kept the list.
    objects: Vec<StoredSegment>,
}

impl StoredPart {
    /// Pairs parts with their object lists, as the wire sends them.
    pub fn pair(parts: Vec<pb::ImagePart>, objects: Vec<ipb::PartObjects>) -> Vec<Self> {
        let mut objects = objects.into_iter();
        parts
            .into_iter()
            .map(|part| StoredPart {
                part,
                objects: objects
                    .next()
                    .map(|list| {
                        list.objects
                            .into_iter()
                            .map(|o| StoredSegment {
                                offset: o.offset,
                                size: o.size,
                                key: o.key,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Whether the catalog recorded this part's objects (it did not for images
    /// registered before schema 6).
    pub fn recorded(&self) -> bool {
        !self.objects.is_empty()
    }

    /// The objects to read: the catalog's list, or a listing of the part's
    /// prefix for an image registered before the catalog kept lists.
    pub async fn objects(&self, store: &BlobStore) -> Result<Vec<StoredSegment>, StoreError> {
        if !self.objects.is_empty() || self.part.size == 0 {
            return Ok(self.objects.clone());
        }
        store.list_segments(&self.part.storage_key).await
    }
}

/// How a stored part is named on export, from its role on the wire.
pub(crate) fn export_role(role: i32) -> imagestore_image::ExportRole {
    use imagestore_image::ExportRole;
    match pb::PartRole::try_from(role) {
        Ok(pb::PartRole::Metadata) => ExportRole::Metadata,
        Ok(pb::PartRole::Rootfs) => ExportRole::Rootfs,
        _ => ExportRole::Unified,
    }
}

/// Counts one more transfer until the guard drops.
pub fn transfer(node: &Arc<NodeContext>) -> OwnedTransfer {
    node.active.fetch_add(1, Ordering::Relaxed);
    imagestore_telemetry::metrics::metrics()
        .transfers_active
        .inc();
    OwnedTransfer(node.clone())
}

/// Counts one more client transfer, unless the node carries `max_transfers`
/// already: then RESOURCE_EXHAUSTED, so that the client tries another node or
/// later instead of every transfer slowing down.
pub fn admit(node: &Arc<NodeContext>) -> Result<OwnedTransfer, error::BlobError> {
    let max = node.config.max_transfers;
    let before = node.active.fetch_add(1, Ordering::Relaxed);
    imagestore_telemetry::metrics::metrics()
        .transfers_active
        .inc();
    let guard = OwnedTransfer(node.clone());
    if before >= max {
        return Err(error::BlobError::ResourceExhausted(format!(
            "this blob node is carrying {before} transfers, its limit (max_transfers {max}): \
             try again shortly, or another node"
        )));
    }
    Ok(guard)
}

/// tonic's generated server needs an implementation; [`wire::Blobs`] answers
/// both calls before it.
pub(crate) struct BlobService;

#[tonic::async_trait]
impl pb::blobs_server::Blobs for BlobService {
    /// Never called: [`wire::Blobs`] reads uploads from their frames.
    async fn upload(
        &self,
        _: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        Err(Status::internal(
            "Blobs.Upload reached tonic's decoder, which this node never uses for it",
        ))
    }

    type DownloadStream = download::DownloadStream;

    /// Never called: [`wire::Blobs`] writes downloads around their chunks.
    async fn download(
        &self,
        _: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        Err(Status::internal(
            "Blobs.Download reached tonic's encoder, which this node never uses for it",
        ))
    }
}

/// The node's id: made once, kept in the data directory across restarts.
fn node_id(data_dir: &Path) -> Result<String, std::io::Error> {
    let file = data_dir.join("node-id");
    match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) | Err(_) => {
            let id = format!("node-{}", uuid::Uuid::new_v4().simple());
            std::fs::write(&file, &id)?;
            Ok(id)
        }
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    config: BlobNodeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    serve_notifying(config, listener, shutdown, None).await
}

/// As [`serve`], and says on `registered` (with the node id) once the control
/// plane knows this node, so that callers can hand it work without guessing.
pub async fn serve_notifying(
    config: BlobNodeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
    registered: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<(), StartError> {
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    let node = BlobNode::prepare(&config, bound)?;
    let lifecycle = node.spawn_lifecycle(registered);
    let served = node
        .add_services(
            GrpcServer::new().with_tls(node.tls()).with_metrics_access(
                MetricsAccess::load(&config.metrics).map_err(ServeError::from)?,
            ),
        )
        .serve(listener, shutdown)
        .await;
    lifecycle.abort();
    served?;
    Ok(())
}

/// A blob node ready to serve: its id, store and control-plane connection.
pub struct BlobNode {
    node: Arc<NodeContext>,
    advertise: String,
    tls: Tls,
    gc_interval: std::time::Duration,
    max_message: usize,
}

impl BlobNode {
    /// Opens the data directory and the store; `bound` is the address the node's
    /// services will be reached at unless `config.advertise` says otherwise.
    pub fn prepare(
        config: &BlobNodeConfig,
        bound: std::net::SocketAddr,
    ) -> Result<Self, StartError> {
        let data_err = |source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        imagestore_auth::create_private_dir(&config.data_dir).map_err(data_err)?;
        let id = node_id(&config.data_dir).map_err(data_err)?;
        let mut opened = std::collections::BTreeMap::new();
        for (name, s) in config.named_stores().map_err(StartError::Stores)? {
            let store = BlobStore::open(&s.url, &s.options).map_err(|e| StartError::Store {
                name: name.clone(),
                source: e,
            })?;
            opened.insert(name, store);
        }
        let stores = stores::NodeStores::new(opened);
        let credential_path = &config.cluster_credential_file;
        let credential_error = |reason: String| StartError::Credential {
            path: credential_path.display().to_string(),
            reason,
        };
        let credential = read_secret(credential_path)
            .map_err(|e| credential_error(e.to_string()))?
            .ok_or_else(|| credential_error("no such file".into()))?;
        let bearer = Bearer::new(Some(&credential)).map_err(|e| credential_error(e.to_string()))?;
        let tls = Tls::load(&config.tls).map_err(ServeError::from)?;
        let channel = imagestore_client::connect_lazy_any(
            &config.control_plane,
            &control_plane_tls(config, &tls),
        )
        .map_err(|_| StartError::ControlPlane(config.control_plane.clone()))?;
        let advertise = if config.advertise.is_empty() {
            format!("{}://{bound}", config.tls.scheme())
        } else {
            config.advertise.clone()
        };
        tracing::info!(node = %id, stores = ?stores.iter().collect::<Vec<_>>(), advertise = %advertise, "blob node starting");
        Ok(Self {
            node: Arc::new(NodeContext {
                id,
                stores,
                config: NodeLimits {
                    segment_bytes: config.segment_bytes.max(1),
                    commit_interval: config
                        .commit_interval
                        .max(std::time::Duration::from_millis(10)),
                    max_transfers: config.max_transfers.max(1),
                    max_chunk_bytes: config.max_chunk_bytes,
                    scan_budget_bytes: config.scan_budget_bytes,
                    max_upload_bytes: 64 << 30,
                    scrub_bytes_per_second: config.scrub_bytes_per_second,
                    stray_grace: config.stray_grace,
                    scratch_dir: config.data_dir.clone(),
                },
                tickets: TicketKey::derive(&credential),
                budget: budget::Budget::new(
                    config.buffer_bytes.max(config.max_chunk_bytes.into()) as usize
                ),
                channel,
                credential: bearer,
                active: AtomicU32::new(0),
            }),
            advertise,
            tls,
            gc_interval: config.gc_interval,
            max_message: config.max_chunk_bytes as usize + 64 * 1024,
        })
    }

    /// The TLS the node serves with.
    pub fn tls(&self) -> Tls {
        self.tls.clone()
    }

    /// Adds the Blobs service and the HTTP face for files to `server`.
    pub fn add_services(&self, server: GrpcServer) -> GrpcServer {
        server
            .add_http(http::router(self.node.clone()))
            .add_limited_service(
                wire::Blobs::new(
                    self.node.clone(),
                    pb::blobs_server::BlobsServer::new(BlobService),
                    self.max_message,
                ),
                self.max_message,
            )
    }

    /// Registers with the control plane, then heartbeats and collects released
    /// bytes until the handle is aborted; says on `registered` once registered.
    pub fn spawn_lifecycle(
        &self,
        registered: Option<tokio::sync::oneshot::Sender<String>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(lifecycle::run(
            self.node.clone(),
            self.advertise.clone(),
            self.gc_interval,
            registered,
        ))
    }
}

/// How the node checks the control plane's certificate: the configured pin, else
/// its own certificate's (the cluster's), else the system roots.
fn control_plane_tls(config: &BlobNodeConfig, own: &Tls) -> imagestore_client::TlsOptions {
    let pin = if config.control_plane_certificate_sha256.is_empty() {
        own.certificate_sha256().map(str::to_owned)
    } else {
        Some(config.control_plane_certificate_sha256.to_ascii_lowercase())
    };
    imagestore_client::TlsOptions {
        pin,
        identity: None,
        address: None,
    }
}

/// Binds `config.listen` and serves until SIGTERM or SIGINT.
pub async fn run(config: BlobNodeConfig) -> Result<(), StartError> {
    // Signals are watched before the bind, so that SIGTERM right after
    // "listening" still stops the node gracefully.
    let shutdown = imagestore_server::shutdown::signal();
    let listener = imagestore_server::bind(&config.listen).await?;
    serve(config, listener, shutdown).await
}
