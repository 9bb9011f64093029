//! Metrics in Prometheus's text format: one registry per process, which
//! every part adds to and `GET /metrics` encodes. Names are `imagestore_*`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One gRPC method, or "http" for the HTTP face.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// A request's method and how it ended (a gRPC code's name, or an HTTP status).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: String,
}

/// What kind of work, or what it found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Every metric this process exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<MethodLabel, Histogram>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub transfers_active: Gauge,
    pub imports_active: Gauge,
    pub catalog_seconds: Family<KindLabel, Histogram>,
    pub store_seconds: Family<KindLabel, Histogram>,
    pub nodes: Family<KindLabel, Gauge>,
    pub scrubs: Family<KindLabel, Counter>,
    pub collected: Counter,
}

fn latency() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("imagestore");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "gRPC requests (and HTTP requests, method \"http\") by method and how they ended",
            requests.clone(),
        );
        let request_seconds =
            Family::<MethodLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time to a request's response (its headers: a stream's length is not counted)",
            request_seconds.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "blob_received_bytes",
            "Image bytes a blob node received (uploads, imports)",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "blob_sent_bytes",
            "Image bytes a blob node sent (gRPC and HTTP downloads)",
            bytes_sent.clone(),
        );
        let transfers_active = Gauge::default();
        registry.register(
            "blob_transfers_active",
            "Uploads, downloads and imports a blob node carries now",
            transfers_active.clone(),
        );
        let imports_active = Gauge::default();
        registry.register(
            "imports_active",
            "Server-side imports and copies a blob node runs now",
            imports_active.clone(),
        );
        let catalog_seconds =
            Family::<KindLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "catalog_operation_duration_seconds",
            "Catalog transactions by kind (read, write)",
            catalog_seconds.clone(),
        );
        let store_seconds =
            Family::<KindLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "store_operation_duration_seconds",
            "Object store operations by kind (segment: a written object made durable)",
            store_seconds.clone(),
        );
        let nodes = Family::<KindLabel, Gauge>::default();
        registry.register(
            "blob_nodes",
            "Blob nodes as the control plane sees them (kind healthy or unhealthy)",
            nodes.clone(),
        );
        let scrubs = Family::<KindLabel, Counter>::default();
        registry.register(
            "scrubs",
            "Image verifications by what they found (sound, damaged, repaired, unreadable)",
            scrubs.clone(),
        );
        let collected = Counter::default();
        registry.register(
            "collected_keys",
            "Released keys (or prefixes) whose bytes a blob node deleted",
            collected.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            bytes_received,
            bytes_sent,
            transfers_active,
            imports_active,
            catalog_seconds,
            store_seconds,
            nodes,
            scrubs,
            collected,
        }
    }

    /// The text `GET /metrics` answers with.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts one request and how long it took to answer.
    pub fn request(&self, method: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records how long a catalog transaction or store operation took.
    pub fn timed(family: &Family<KindLabel, Histogram>, kind: &str, took: Duration) {
        family
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn count(family: &Family<KindLabel, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}
