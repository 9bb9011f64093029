//! The blob node's configuration (`--config FILE`, `IMAGESTORE_*`, flags).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use imagestore_server::{MetricsConfig, TlsConfig};
use imagestore_telemetry::LogConfig;
use serde::{Deserialize, Serialize};

/// Every setting, with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobNodeConfig {
    /// HOST:PORT to serve gRPC on; port 0 picks a free one.
    pub listen: String,
    /// Where the node keeps its id (and, by default, the blobs).
    pub data_dir: PathBuf,
    /// The control plane's address, or several replicas' separated by commas:
    /// calls go to the first that answers and move to the next when it stops
    /// answering.
    pub control_plane: String,
    /// The file holding the cluster credential, which the control plane writes in
    /// its data directory: the node presents it to the control plane and checks
    /// clients' tickets with a key derived from it.
    pub cluster_credential_file: PathBuf,
    /// The control plane's certificate fingerprint (SHA-256 hex) when it serves
    /// https; empty: the node's own certificate (a cluster shares one, as LXD's
    /// members do), else the system's CA roots.
    pub control_plane_certificate_sha256: String,
    /// TLS: certificate and key files; without them plaintext, on loopback only.
    pub tls: TlsConfig,
    /// The address clients are told to reach this node at; empty means
    /// "http://" (or "https://" with TLS) + the bound listen address.
    pub advertise: String,
    /// Where image bytes live: a directory (or file:// URL), or s3://bucket/prefix
    /// and the other schemes object_store knows. Empty means `{data_dir}/blobs`.
    pub store: String,
    /// Options for the object store (endpoint, region, access_key_id,
    /// secret_access_key, allow_http, ...). For S3 the standard AWS_*
    /// environment is read first and these win; credentials come from the
    /// instance metadata service only with instance_credentials = "true".
    #[serde(deserialize_with = "text_map")]
    pub store_options: BTreeMap<String, String>,
    /// The name of the store `store` points at, among the control plane's
    /// `stores`.
    pub store_name: String,
    /// More named stores this node reaches, each with its `url` and `options`
    /// as `store` and `store_options` (`[stores.s3-eu] url = "s3://bucket"`).
    pub stores: BTreeMap<String, NamedStore>,
    /// An upload commits (and can resume from) at least every this many bytes.
    pub segment_bytes: u64,
    /// ... and at least this often while bytes arrive, so that an interrupted
    /// upload resumes from close to where it stopped.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// The largest `data` in one upload message accepted.
    pub max_chunk_bytes: u32,
    /// Received image bytes this node holds at once, across all its transfers,
    /// on their way to the hashers and the store (at least max_chunk_bytes):
    /// transfers wait for room rather than grow the node's memory.
    pub buffer_bytes: u64,
    /// Uploads, downloads and HTTP file transfers this node carries at once; one
    /// more is refused (RESOURCE_EXHAUSTED, HTTP 429) rather than slowing all.
    pub max_transfers: u32,
    /// How often released bytes are collected.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Decompressed bytes a metadata scan may read before refusing the image as a
    /// possible decompression bomb.
    pub scan_budget_bytes: u64,
    /// How fast the background scrubber reads stored images again to compare
    /// them with their recorded SHA-256, in bytes per second (how often each
    /// image's turn comes is the control plane's scrub_every); 0 turns this
    /// node's background scrubbing off. Images.VerifyImage is not paced.
    pub scrub_bytes_per_second: u64,
    /// What lies under a registered part's prefix but is not one of its objects
    /// (a late write of a superseded node) is deleted by the scrubber once it is
    /// this old.
    #[serde(with = "humantime_serde")]
    pub stray_grace: Duration,
    /// Who may read /metrics.
    pub metrics: MetricsConfig,
    /// Logging and tracing.
    pub log: LogConfig,
}

/// One more store a node reaches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamedStore {
    /// A directory (or file:// URL), or s3://bucket/prefix and the other schemes
    /// object_store knows.
    pub url: String,
    /// Options for the object store, as `store_options`.
    #[serde(deserialize_with = "text_map")]
    pub options: BTreeMap<String, String>,
}

/// A map of options as text. Values set through the environment arrive typed
/// (`IMAGESTORE_STORE_OPTIONS__AWS_ALLOW_HTTP=true` is a boolean): each is
/// taken as the text it was written as.
fn text_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Bool(bool),
        Int(i64),
        Uint(u64),
        Float(f64),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Bool(b) => b.to_string(),
                Scalar::Int(i) => i.to_string(),
                Scalar::Uint(u) => u.to_string(),
                Scalar::Float(f) => f.to_string(),
            };
            (k, text)
        })
        .collect())
}

impl BlobNodeConfig {
    /// Every store this node reaches, by name: `store` (as `store_name`) and
    /// `stores`. `store` is left out when it is unset and `stores` names others.
    pub fn named_stores(&self) -> Result<BTreeMap<String, NamedStore>, String> {
        let mut all = self.stores.clone();
        if !self.store.is_empty() || all.is_empty() {
            let url = if self.store.is_empty() {
                self.data_dir.join("blobs").display().to_string()
            } else {
                self.store.clone()
            };
            let own = NamedStore {
                url,
                options: self.store_options.clone(),
            };
            if all.insert(self.store_name.clone(), own).is_some() {
                return Err(format!(
                    "store {:?} is named twice: as store_name and in stores",
                    self.store_name
                ));
            }
        }
        for name in all.keys() {
            imagestore_store::check_store_name(name)?;
        }
        Ok(all)
    }
}

impl Default for BlobNodeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7444".into(),
            data_dir: imagestore_server::default_data_dir("blob-node"),
            control_plane: "http://127.0.0.1:7443".into(),
            cluster_credential_file: imagestore_server::default_data_dir("control-plane")
                .join(imagestore_auth::CLUSTER_CREDENTIAL_FILE),
            control_plane_certificate_sha256: String::new(),
            tls: TlsConfig::default(),
            advertise: String::new(),
            store: String::new(),
            store_options: BTreeMap::new(),
            store_name: imagestore_store::DEFAULT_STORE.into(),
            stores: BTreeMap::new(),
            segment_bytes: 256 << 20,
            commit_interval: Duration::from_secs(5),
            max_chunk_bytes: 4 << 20,
            buffer_bytes: 16 << 20,
            max_transfers: 512,
            gc_interval: Duration::from_secs(30),
            scan_budget_bytes: 4 << 30,
            scrub_bytes_per_second: 32 << 20,
            stray_grace: Duration::from_secs(3600),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl imagestore_server::HasLogConfig for BlobNodeConfig {
    fn log_config(&self) -> &LogConfig {
        &self.log
    }
}
