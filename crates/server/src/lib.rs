//! What every imagestore server process does alike.

pub mod args;
pub mod config;
mod grpc;
pub mod http;
mod limits;
mod main_helper;
mod memory;
mod metrics_access;
pub mod shutdown;
mod tls;

pub use args::CommonArgs;
pub use config::{ConfigError, load_config};
pub use grpc::{GrpcServer, ServeError, bind};
pub use limits::{DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_MESSAGE};
pub use main_helper::{HasLogConfig, run_binary};
pub use memory::tune_malloc;
pub use metrics_access::{MetricsAccess, MetricsConfig, MetricsConfigError};
pub use tls::{Tls, TlsConfig, TlsError, TlsPeer};

/// Where a tier keeps its data unless configured: the user's data directory
/// (e.g. ~/.local/share) + "imagestore/{tier}".
pub fn default_data_dir(tier: &str) -> std::path::PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join("imagestore")
        .join(tier)
}
