//! The control plane's configuration (`--config FILE`, `IMAGESTORE_*`, flags).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use imagestore_fetch::ImportFiltering;
use imagestore_server::{MetricsConfig, TlsConfig};
use imagestore_telemetry::LogConfig;
use serde::{Deserialize, Serialize};

/// Every setting, with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// HOST:PORT to serve gRPC on; port 0 picks a free one.
    pub listen: String,
    /// Where this control plane keeps its files (the SQLite catalog, its
    /// credentials).
    pub data_dir: PathBuf,
    /// The catalog database: "sqlite" (a file in data_dir, one control plane)
    /// or a PostgreSQL connection string, postgres://USER:PASSWORD@HOST/DB
    /// (any number of control-plane replicas over it).
    pub database: String,
    /// How often blob nodes heartbeat; a node silent for two intervals is not
    /// handed to clients (nor, for four intervals, one a client reported
    /// unreachable).
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
    /// Reads by callers without trust run this many at a time (0: half the
    /// cores, at least one), so that they cannot crowd out trusted callers.
    pub anonymous_reads: usize,
    /// How many such reads may wait for a place; more are RESOURCE_EXHAUSTED.
    pub anonymous_queue: usize,
    /// gRPC requests served at once, whoever asks (a long poll counts while it
    /// waits); one more is refused at once with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// How often each stored image is read again and compared with its recorded
    /// SHA-256 by a blob node's background scrubber (which paces itself at its
    /// own scrub_bytes_per_second); 0 turns background scrubbing off.
    /// Images.VerifyImage runs at once whatever this says.
    #[serde(with = "humantime_serde")]
    pub scrub_every: Duration,
    /// The stores image bytes live in, by name (Glance's enabled_backends): each
    /// blob node says which of them it reaches and how (its own `stores`).
    pub stores: Vec<String>,
    /// Where uploads and imports that name no store go; empty: the first of
    /// `stores`.
    pub default_store: String,
    /// TLS: certificate and key files; without them plaintext, on loopback only.
    pub tls: TlsConfig,
    /// Where server-side imports may fetch from (Glance's import filtering).
    pub import_filtering: ImportFiltering,
    /// Server-side imports, auto-update and the image cache.
    pub import: ImportSettings,
    /// Who may read /metrics.
    pub metrics: MetricsConfig,
    /// Logging and tracing.
    pub log: LogConfig,
}

/// How images arrive, and how long fetched ones are kept up to date and cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportSettings {
    /// Which import methods clients may use (Glance's enabled_import_methods):
    /// "upload", "url", "remote" (copy from another imagestore), "simplestreams".
    pub enabled_methods: Vec<String>,
    /// The largest image a server-side import fetches, in bytes.
    pub max_bytes: u64,
    /// How long a fetch may take to connect.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a fetch may go without receiving anything.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often a blob node reports an import's progress (and learns of a cancel).
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// An import whose node has not reported for this long has failed.
    #[serde(with = "humantime_serde")]
    pub stalled_after: Duration,
    /// How often images with auto_update check their source (LXD's
    /// images.auto_update_interval, 6 h); 0 turns auto-update off.
    #[serde(with = "humantime_serde")]
    pub auto_update_interval: Duration,
    /// Cached images not exported for this long are removed (LXD's
    /// images.remote_cache_expiry, 10 days); 0 keeps them.
    #[serde(with = "humantime_serde")]
    pub remote_cache_expiry: Duration,
    /// The architectures this server serves, LXD's names, sent to image servers
    /// in LXD-Server-Architectures; empty: the host's.
    pub architectures: Vec<String>,
    /// Import plugins (Glance's image_import_plugins), run in this order on the
    /// blob node after the bytes are verified and before the image is
    /// registered: "image_conversion", "inject_image_metadata".
    pub plugins: Vec<String>,
    /// The image_conversion plugin's settings.
    pub image_conversion: ConversionSettings,
    /// The inject_image_metadata plugin's settings.
    pub inject_metadata_properties: InjectSettings,
}

/// Glance's [image_conversion].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversionSettings {
    /// What virtual-machine disks are converted to: "raw" or "qcow2".
    pub output_format: String,
}

impl Default for ConversionSettings {
    fn default() -> Self {
        Self {
            output_format: "raw".into(),
        }
    }
}

/// Glance's [inject_metadata_properties].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectSettings {
    /// Properties added to every imported image (they win over the image's own).
    pub inject: BTreeMap<String, String>,
    /// Nothing is injected into images imported by callers with one of these
    /// roles: "admin" (the admin token), "member" (any other trusted caller).
    pub ignore_user_roles: Vec<String>,
}

impl Default for InjectSettings {
    fn default() -> Self {
        Self {
            inject: BTreeMap::new(),
            ignore_user_roles: vec!["admin".into()],
        }
    }
}

/// The import methods there are ("copy": Glance's copy-image, Images.CopyImage).
pub const IMPORT_METHODS: &[&str] = &["upload", "url", "remote", "simplestreams", "copy"];

/// The import plugins there are.
pub const IMPORT_PLUGINS: &[&str] = &["image_conversion", "inject_image_metadata"];

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            enabled_methods: IMPORT_METHODS.iter().map(|m| (*m).to_owned()).collect(),
            max_bytes: 64 << 30,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            report_interval: Duration::from_secs(1),
            stalled_after: Duration::from_secs(120),
            auto_update_interval: Duration::from_secs(6 * 3600),
            remote_cache_expiry: Duration::from_secs(10 * 24 * 3600),
            architectures: Vec::new(),
            plugins: Vec::new(),
            image_conversion: ConversionSettings::default(),
            inject_metadata_properties: InjectSettings::default(),
        }
    }
}

impl ImportSettings {
    /// Refuses names that are not import methods, so that a typo does not turn a
    /// method off unnoticed.
    pub fn validate(&self) -> Result<(), String> {
        for m in &self.enabled_methods {
            if !IMPORT_METHODS.contains(&m.as_str()) {
                return Err(format!(
                    "import.enabled_methods has {m:?}; the methods are {}",
                    IMPORT_METHODS.join(", ")
                ));
            }
        }
        for p in &self.plugins {
            if !IMPORT_PLUGINS.contains(&p.as_str()) {
                return Err(format!(
                    "import.plugins has {p:?}; the plugins are {}",
                    IMPORT_PLUGINS.join(", ")
                ));
            }
        }
        let format = &self.image_conversion.output_format;
        if !["raw", "qcow2"].contains(&format.as_str()) {
            return Err(format!(
                "import.image_conversion.output_format is {format:?}; it is \"raw\" or \"qcow2\""
            ));
        }
        imagestore_image::validate_properties(&self.inject_metadata_properties.inject)
            .map_err(|e| format!("import.inject_metadata_properties.inject: {e}"))?;
        Ok(())
    }

    pub fn enabled(&self, method: &str) -> bool {
        self.enabled_methods.iter().any(|m| m == method)
    }

    /// The architectures to announce: the configured ones, else the host's (and
    /// what it runs natively besides, as LXD's personalities).
    pub fn server_architectures(&self) -> Vec<String> {
        if !self.architectures.is_empty() {
            return self.architectures.clone();
        }
        match std::env::consts::ARCH {
            "x86_64" => vec!["x86_64".into(), "i686".into()],
            "aarch64" => vec!["aarch64".into(), "armv7l".into()],
            "powerpc64" => vec!["ppc64le".into()],
            other => vec![other.to_owned()],
        }
    }
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7443".into(),
            data_dir: default_data_dir(),
            database: "sqlite".into(),
            heartbeat_interval: Duration::from_secs(3),
            max_request_bytes: 1024 * 1024,
            upload_ttl: Duration::from_secs(3600),
            max_upload_bytes: 64 << 30,
            max_chunk_bytes: 4 << 20,
            sweep_interval: Duration::from_secs(60),
            ticket_ttl: Duration::from_secs(15 * 60),
            image_secret_ttl: Duration::from_secs(24 * 3600),
            anonymous_reads: 0,
            anonymous_queue: 64,
            max_concurrent_requests: imagestore_server::DEFAULT_MAX_CONCURRENT,
            scrub_every: Duration::from_secs(7 * 24 * 3600),
            stores: vec![imagestore_store::DEFAULT_STORE.into()],
            default_store: String::new(),
            tls: TlsConfig::default(),
            import_filtering: ImportFiltering::default(),
            import: ImportSettings::default(),
            metrics: MetricsConfig::default(),
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
