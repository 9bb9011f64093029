//! The control plane's configuration (`--config FILE`, `IMAGESTORE_*`, flags).

use std::path::PathBuf;
use std::time::Duration;

use imagestore_telemetry::LogConfig;
use serde::{Deserialize, Serialize};

/// Every setting, with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// HOST:PORT to serve gRPC on; port 0 picks a free one.
    pub listen: String,
    /// Where the catalog database lives.
    pub data_dir: PathBuf,
    /// How often blob nodes heartbeat; a node silent for three intervals is not
    /// handed to clients.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// The largest request message accepted, in bytes. Metadata requests are small;
    /// image bytes never come here.
    pub max_request_bytes: usize,
    /// Logging and tracing.
    pub log: LogConfig,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7443".into(),
            data_dir: default_data_dir(),
            heartbeat_interval: Duration::from_secs(10),
            max_request_bytes: 1024 * 1024,
            log: LogConfig::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("imagestore")
        .join("control-plane")
}
