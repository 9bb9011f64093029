//! The control plane's configuration (`--config FILE`, `IMAGESTORE_*`, flags).

use std::path::PathBuf;
use std::time::Duration;

use imagestore_server::TlsConfig;
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
    /// How long an upload session lives after its last activity; then it expires
    /// and its staged bytes are deleted.
    #[serde(with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// The largest image an upload may declare or stage, in bytes.
    pub max_upload_bytes: u64,
    /// The largest `data` in one upload message that blob nodes accept.
    pub max_chunk_bytes: u32,
    /// How often expired upload sessions are collected.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How long a ticket (for one upload session, one-shot upload or image
    /// download on a blob node) works after it is issued. It is checked when a
    /// stream starts; a client asks again for a fresh one.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// How long an unused image secret works.
    #[serde(with = "humantime_serde")]
    pub image_secret_ttl: Duration,
    /// TLS: certificate and key files; without them plaintext, on loopback only.
    pub tls: TlsConfig,
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
            upload_ttl: Duration::from_secs(3600),
            max_upload_bytes: 64 << 30,
            max_chunk_bytes: 4 << 20,
            sweep_interval: Duration::from_secs(60),
            ticket_ttl: Duration::from_secs(15 * 60),
            image_secret_ttl: Duration::from_secs(24 * 3600),
            tls: TlsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    imagestore_server::default_data_dir("control-plane")
}

impl imagestore_server::HasLogConfig for ControlPlaneConfig {
    fn log_config(&self) -> &LogConfig {
        &self.log
    }
}
