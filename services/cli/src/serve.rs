//! `imagestore serve`: a control plane and a blob node in one process, on one
//! address, with embedded defaults (SQLite and a local directory) — for a laptop
//! or a single server. The separate binaries remain for real deployments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use imagestore_blob_node::{BlobNode, BlobNodeConfig};
use imagestore_control_plane::ControlPlaneConfig;
use imagestore_control_plane::config::{ImportFiltering, ImportSettings};
use imagestore_server::{
    CommonArgs, GrpcServer, HasLogConfig, MetricsAccess, MetricsConfig, TlsConfig,
};
use imagestore_telemetry::LogConfig;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Serialize)]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    common: CommonArgs,
}

/// `imagestore serve`'s configuration: where to listen, where the data lives,
/// and the two tiers' own settings in `[control_plane]` and `[blob_node]` (their
/// `listen`, `data_dir`, `control_plane` and `advertise` are set by serve).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// HOST:PORT for every service.
    pub listen: String,
    /// Everything lives below: control-plane/, blob-node/, blobs/.
    pub data_dir: PathBuf,
    /// TLS for every service. Without certificate files, serve makes a
    /// self-signed pair in the data directory on first start (as LXD does) and
    /// uses it whenever it listens beyond loopback.
    pub tls: TlsConfig,
    /// Who may read /metrics (both tiers: one listener).
    pub metrics: MetricsConfig,
    /// Logging and tracing.
    pub log: LogConfig,
    /// Where server-side imports may fetch from (Glance's import filtering).
    pub import_filtering: ImportFiltering,
    /// Server-side imports: enabled methods, limits, auto-update, cache expiry.
    pub import: ImportSettings,
    /// Control-plane settings.
    pub control_plane: ControlPlaneConfig,
    /// Blob-node settings (`store` empty means `{data_dir}/blobs`).
    pub blob_node: BlobNodeConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7443".into(),
            data_dir: dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("imagestore"),
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            import_filtering: ImportFiltering::default(),
            import: ImportSettings::default(),
            control_plane: ControlPlaneConfig::default(),
            blob_node: BlobNodeConfig::default(),
        }
    }
}

impl HasLogConfig for ServeConfig {
    fn log_config(&self) -> &LogConfig {
        &self.log
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    ControlPlane(#[from] imagestore_control_plane::StartError),
    #[error(transparent)]
    BlobNode(#[from] imagestore_blob_node::StartError),
    #[error(transparent)]
    Serve(#[from] imagestore_server::ServeError),
    #[error("cannot read the bound address: {0}")]
    Bound(std::io::Error),
    #[error("the server certificate: {0}")]
    Certificate(#[from] imagestore_auth::CertError),
}

/// The TLS settings to serve with: the configured files, else the pair serve
/// keeps in the data directory (made on first start), used beyond loopback.
fn tls_for(config: &ServeConfig, bound: SocketAddr) -> Result<TlsConfig, ServeError> {
    if config.tls.cert_file.is_some() || config.tls.key_file.is_some() {
        return Ok(config.tls.clone());
    }
    let (cert, key) = (
        config.data_dir.join("server.crt"),
        config.data_dir.join("server.key"),
    );
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !bound.ip().is_unspecified() && !bound.ip().is_loopback() {
        names.push(bound.ip().to_string());
    }
    let (pair, made) = imagestore_auth::load_or_generate(&cert, &key, "imagestore", &names)?;
    if made {
        let fingerprint = imagestore_auth::fingerprint_pem(pair.cert_pem.as_bytes())?;
        tracing::info!(file = %cert.display(), %fingerprint, "self-signed server certificate made");
    }
    if bound.ip().is_loopback() || config.tls.insecure {
        return Ok(config.tls.clone());
    }
    Ok(TlsConfig {
        cert_file: Some(cert),
        key_file: Some(key),
        insecure: false,
    })
}

pub async fn run(args: ServeArgs) -> ExitCode {
    imagestore_server::run_binary("imagestore", args.common.config.as_deref(), &args, serve).await
}

async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let shutdown = imagestore_server::shutdown::signal();
    let control = ControlPlaneConfig {
        listen: config.listen.clone(),
        data_dir: config.data_dir.join("control-plane"),
        import_filtering: config.import_filtering.clone(),
        import: config.import.clone(),
        ..config.control_plane.clone()
    };
    let catalog = imagestore_control_plane::open_catalog(&control).await?;
    // The admin token sits at the top of the data directory, where its owner
    // looks first.
    let auth = imagestore_control_plane::Auth::open(catalog.clone(), &config.data_dir).await?;
    let listener = imagestore_server::bind(&config.listen).await?;
    let bound = listener.local_addr().map_err(ServeError::Bound)?;
    // The node reaches the control plane in this same process over loopback.
    let mut reach = bound;
    if reach.ip().is_unspecified() {
        reach.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        if config.blob_node.advertise.is_empty() {
            tracing::warn!(
                "listening on every address, but clients are told to send bytes to \
                 {reach}: set [blob_node] advertise to the address they reach this server at"
            );
        }
    }
    let tls = tls_for(&config, bound)?;
    let scheme = tls.scheme();
    let node_config = BlobNodeConfig {
        listen: config.listen.clone(),
        data_dir: config.data_dir.join("blob-node"),
        control_plane: format!("{scheme}://{reach}"),
        tls,
        cluster_credential_file: config
            .data_dir
            .join(imagestore_auth::CLUSTER_CREDENTIAL_FILE),
        store: if config.blob_node.store.is_empty() {
            config.data_dir.join("blobs").display().to_string()
        } else {
            config.blob_node.store.clone()
        },
        ..config.blob_node.clone()
    };
    let node = BlobNode::prepare(&node_config, reach)?;
    let server = node.add_services(
        imagestore_control_plane::add_services(
            GrpcServer::new()
                .with_tls(node.tls())
                .with_metrics_access(
                    MetricsAccess::load(&config.metrics)
                        .map_err(imagestore_server::ServeError::from)?,
                )
                .with_max_concurrent(control.max_concurrent_requests),
            &control,
            catalog.clone(),
            auth,
        )
        .await?,
    );
    let sweeper = imagestore_control_plane::spawn_background(&control, catalog);
    let lifecycle = node.spawn_lifecycle(None);
    if let Some(fingerprint) = node.tls().certificate_sha256() {
        eprintln!("imagestore: server certificate fingerprint {fingerprint}");
    }
    eprintln!(
        "imagestore: serving on {scheme}://{bound} (control plane and blob node); data in {}",
        config.data_dir.display()
    );
    let served = server.serve(listener, shutdown).await;
    lifecycle.abort();
    sweeper.abort();
    served?;
    Ok(())
}
