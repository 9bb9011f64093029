//! The control plane: owns all metadata (images, aliases, upload sessions,
//! operations, blob nodes) and serves it over gRPC. Image bytes never come here.

mod admission;
mod aliases;
pub mod auth;
pub mod config;
mod convert;
mod error;
mod http;
mod images;
mod imports;
mod names;
mod nodes;
mod operations;
mod registry;
mod stores;
mod trust;
mod uploads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use imagestore_catalog::{Catalog, CatalogError};
use imagestore_proto::internal::v1::registry_server::RegistryServer;
use imagestore_proto::v1::aliases_server::AliasesServer;
use imagestore_proto::v1::images_server::ImagesServer;
use imagestore_proto::v1::imports_server::ImportsServer;
use imagestore_proto::v1::operations_server::OperationsServer;
use imagestore_proto::v1::trust_server::TrustServer;
use imagestore_proto::v1::uploads_server::UploadsServer;
use imagestore_server::{GrpcServer, MetricsAccess, ServeError, Tls};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

pub use auth::Auth;
pub use config::ControlPlaneConfig;

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("configuration: {0}")]
    Config(String),
}

/// The database file inside the data directory.
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// Creates the data directory and opens (migrating if needed) the catalog in it.
pub async fn open_catalog(config: &ControlPlaneConfig) -> Result<Catalog, StartError> {
    imagestore_auth::create_private_dir(&config.data_dir).map_err(|source| {
        StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        }
    })?;
    let catalog = match Database::parse(&config.database)? {
        Database::Sqlite => Catalog::open(config.data_dir.join(CATALOG_FILE)).await?,
        Database::Postgres(url) => Catalog::connect_postgres(url).await?,
    };
    tracing::info!(
        data_dir = %config.data_dir.display(),
        database = %imagestore_catalog::engine::postgres::redact(&config.database),
        "catalog open"
    );
    Ok(catalog)
}

/// Which database `control_plane.database` names.
pub enum Database<'a> {
    Sqlite,
    Postgres(&'a str),
}

impl<'a> Database<'a> {
    pub fn parse(setting: &'a str) -> Result<Self, StartError> {
        match setting {
            "" | "sqlite" => Ok(Self::Sqlite),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url))
            }
            other => Err(StartError::Config(format!(
                "database {:?} is neither \"sqlite\" nor a PostgreSQL connection string \
                 (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
                imagestore_catalog::engine::postgres::redact(other)
            ))),
        }
    }
}

/// Opens the catalog in `config.data_dir` and serves on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    config: ControlPlaneConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let catalog = open_catalog(&config).await?;
    let auth = Auth::open(catalog.clone(), &config.data_dir).await?;
    serve_catalog(config, catalog, auth, listener, shutdown).await
}

/// Serves an already open catalog. For callers that share the catalog with the
/// server in one process (`imagestore serve`, in-process tests).
pub async fn serve_catalog(
    config: ControlPlaneConfig,
    catalog: Catalog,
    auth: Auth,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let tls = Tls::load(&config.tls).map_err(ServeError::from)?;
    let metrics = MetricsAccess::load(&config.metrics).map_err(ServeError::from)?;
    let server = GrpcServer::new()
        .with_tls(tls)
        .with_metrics_access(metrics)
        .with_max_concurrent(config.max_concurrent_requests);
    let server = add_services(server, &config, catalog.clone(), auth).await?;
    let sweeper = spawn_background(&config, catalog);
    let served = server.serve(listener, shutdown).await;
    sweeper.abort();
    served?;
    Ok(())
}

/// Checks the configuration, brings the catalog in line with it, and adds
/// every control-plane service over `catalog` to `server`, so that one process
/// can serve them beside others (`imagestore serve`).
pub async fn add_services(
    server: GrpcServer,
    config: &ControlPlaneConfig,
    catalog: Catalog,
    auth: Auth,
) -> Result<GrpcServer, StartError> {
    config.import.validate().map_err(StartError::Config)?;
    let stores = stores::Stores::from_config(config).map_err(StartError::Config)?;
    // Images registered before stores had names are in the one store there was.
    let adopted = catalog
        .adopt_into_store(stores.default_store().to_owned())
        .await?;
    if adopted > 0 {
        tracing::info!(
            images = adopted,
            store = stores.default_store(),
            "images recorded in the default store"
        );
    }
    let auth = auth
        .with_lifetimes(config.ticket_ttl, config.image_secret_ttl)
        .with_anonymous_lane(config.anonymous_reads, config.anonymous_queue);
    let nodes = nodes::NodePicker::new(catalog.clone(), config.heartbeat_interval);
    let limit = config.max_request_bytes;
    let upload_limits = uploads::UploadLimits {
        ttl: config.upload_ttl,
        max_bytes: config.max_upload_bytes,
        max_chunk_bytes: config.max_chunk_bytes,
        enabled: config.import.enabled("upload"),
    };
    let stopping = server.stopping();
    let face = http::router(catalog.clone(), auth.clone(), nodes.clone());
    let import_rules = Arc::new(imports::ImportRules {
        filtering: config.import_filtering.clone(),
        settings: config.import.clone(),
        stores: stores.clone(),
    });
    Ok(server
        .add_http(face)
        .add_limited_service(
            ImagesServer::new(images::ImagesService::new(
                catalog.clone(),
                nodes.clone(),
                auth.clone(),
                import_rules.clone(),
            ))
            .max_decoding_message_size(limit),
            limit,
        )
        .add_limited_service(
            AliasesServer::new(aliases::AliasesService::new(catalog.clone(), auth.clone()))
                .max_decoding_message_size(limit),
            limit,
        )
        .add_limited_service(
            trusted(
                &auth,
                OperationsServer::new(operations::OperationsService::new(
                    catalog.clone(),
                    stopping.clone(),
                ))
                .max_decoding_message_size(limit),
            ),
            limit,
        )
        .add_limited_service(
            trusted(
                &auth,
                UploadsServer::new(uploads::UploadsService::new(
                    catalog.clone(),
                    nodes.clone(),
                    upload_limits,
                    auth.clone(),
                    stores,
                ))
                .max_decoding_message_size(limit),
            ),
            limit,
        )
        .add_limited_service(
            trusted(
                &auth,
                ImportsServer::new(imports::ImportsService::new(
                    catalog.clone(),
                    import_rules.clone(),
                    auth.clone(),
                ))
                .max_decoding_message_size(limit),
            ),
            limit,
        )
        .add_limited_service(
            trusted(
                &auth,
                TrustServer::new(trust::TrustService::new(auth.clone()))
                    .max_decoding_message_size(limit),
            ),
            limit,
        )
        .add_limited_service(
            InterceptedService::new(
                RegistryServer::new(registry::RegistryService::new(
                    catalog,
                    nodes,
                    upload_limits,
                    import_rules,
                    stopping,
                    config.scrub_every,
                ))
                .max_decoding_message_size(limit),
                auth.nodes_only(),
            ),
            limit,
        ))
}

/// `svc` behind the trust check: for services where every call needs trust.
fn trusted<S>(
    auth: &Auth,
    svc: S,
) -> InterceptedService<S, impl tonic::service::Interceptor + Clone + use<S>> {
    InterceptedService::new(svc, auth.trusted_only())
}

/// Starts the control plane's background work (collecting expired uploads and
/// stalled imports, auto-update, cache expiry); abort the handle to stop it.
pub fn spawn_background(
    config: &ControlPlaneConfig,
    catalog: Catalog,
) -> tokio::task::JoinHandle<()> {
    let sweep_every = config.sweep_interval.max(Duration::from_millis(10));
    let stalled_after = config.import.stalled_after;
    let refresh_every = config.import.auto_update_interval;
    let cache_expiry = config.import.remote_cache_expiry;
    tokio::spawn(async move {
        let sweeper = sweep(catalog.clone(), sweep_every, stalled_after, cache_expiry);
        if refresh_every.is_zero() {
            sweeper.await;
        } else {
            tokio::join!(sweeper, auto_update(catalog, refresh_every));
        }
    })
}

/// Collects expired upload sessions (their staged bytes become released content
/// that blob nodes delete), imports whose node went quiet, and cached images
/// unused for `cache_expiry`.
async fn sweep(catalog: Catalog, every: Duration, stalled_after: Duration, cache_expiry: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if !my_turn(&catalog, "sweep", every).await {
            continue;
        }
        match catalog.expire_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "upload sessions expired"),
            Err(e) => tracing::warn!(error = %e, "expiring upload sessions failed"),
        }
        match catalog.collect_imports(stalled_after).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                failed = n,
                "imports failed: their blob node stopped reporting"
            ),
            Err(e) => tracing::warn!(error = %e, "collecting imports failed"),
        }
        if !cache_expiry.is_zero() {
            match catalog.expire_cached_images(cache_expiry).await {
                Ok(fps) if fps.is_empty() => {}
                Ok(fps) => tracing::info!(images = ?fps, "unused cached images expired"),
                Err(e) => tracing::warn!(error = %e, "expiring cached images failed"),
            }
        }
    }
}

/// Whether this replica runs periodic `job` this time: once per interval across
/// every control plane on the catalog. When the catalog cannot say, not.
async fn my_turn(catalog: &Catalog, job: &str, every: Duration) -> bool {
    match catalog.take_turn(job.to_owned(), every).await {
        Ok(mine) => mine,
        Err(e) => {
            tracing::warn!(job, error = %e, "could not take a turn at periodic work");
            false
        }
    }
}

/// Every `every` (first right at start, as LXD), queues a refresh of each image
/// that follows its source.
async fn auto_update(catalog: Catalog, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if !my_turn(&catalog, "auto-update", every).await {
            continue;
        }
        let images = match catalog.images_to_refresh().await {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(error = %e, "listing images to refresh failed");
                continue;
            }
        };
        for image in images {
            match imports::queue_refresh(&catalog, &image).await {
                Ok(op) => {
                    tracing::info!(fingerprint = %image.fingerprint, operation = %op.id, "auto-update queued")
                }
                Err(e) => {
                    tracing::warn!(fingerprint = %image.fingerprint, error = %e, "auto-update not queued")
                }
            }
        }
    }
}

/// Opens the catalog, binds `config.listen` and serves until SIGTERM or SIGINT.
pub async fn run(config: ControlPlaneConfig) -> Result<(), StartError> {
    // Signals are watched and the catalog is open before the bind, so that
    // "listening" in the log means ready, SIGTERM included.
    let shutdown = imagestore_server::shutdown::signal();
    let catalog = open_catalog(&config).await?;
    let auth = Auth::open(catalog.clone(), &config.data_dir).await?;
    let listener = imagestore_server::bind(&config.listen).await?;
    serve_catalog(config, catalog, auth, listener, shutdown).await
}
