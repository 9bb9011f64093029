//! One server per process: our gRPC services plus health and reflection (v1 and
//! v1alpha, since grpcurl 1.8 speaks only v1alpha), the HTTP face the tiers add
//! (HTTP/1.1 and h2 on the same listener), one tracing span per request, and a
//! graceful stop.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::shutdown::{StopSignal, Stopping};
use crate::tls::Tls;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Metrics(#[from] crate::MetricsConfigError),
}

use imagestore_proto::transport::{CONNECTION_WINDOW, MAX_FRAME, SERVER_STREAM_WINDOW};

/// Binds `addr` (port 0 picks a free port) and logs the bound address.
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(address = %local, "listening");
    }
    Ok(listener)
}

/// Collects a process's services, then serves them.
pub struct GrpcServer {
    routes: Routes,
    http: axum::Router,
    names: Vec<&'static str>,
    tls: Tls,
    stop: StopSignal,
    messages: crate::limits::MessageLimits,
    max_concurrent: usize,
    metrics: crate::MetricsAccess,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    pub fn new() -> Self {
        Self {
            routes: Routes::default(),
            http: axum::Router::new(),
            names: Vec::new(),
            tls: Tls::default(),
            stop: StopSignal::new(),
            messages: crate::limits::MessageLimits::default(),
            max_concurrent: crate::limits::DEFAULT_MAX_CONCURRENT,
            metrics: crate::MetricsAccess::default(),
        }
    }

    /// What a service added to this server watches to end its long-lived RPCs
    /// when the server begins to stop.
    pub fn stopping(&self) -> Stopping {
        self.stop.subscribe()
    }

    /// Adds a service; health reports it SERVING while the server runs.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Adds HTTP routes, served to every request that is not gRPC.
    pub fn add_http(mut self, router: axum::Router) -> Self {
        self.http = self.http.merge(router);
        self
    }

    /// Serves at most `n` gRPC requests at once (a streaming response counts
    /// until its handler has answered); one more is RESOURCE_EXHAUSTED at once.
    pub fn with_max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// Adds a service whose request messages may be at most `max_message`
    /// bytes: a larger one is RESOURCE_EXHAUSTED from its frame header, before
    /// it is read. (Give the service the same decoding limit.)
    pub fn add_limited_service<S>(mut self, service: S, max_message: usize) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.messages.set(S::NAME, max_message);
        self.add_service(service)
    }

    /// Who may read /metrics (anyone, unless configured).
    pub fn with_metrics_access(mut self, access: crate::MetricsAccess) -> Self {
        self.metrics = access;
        self
    }

    /// Serves with `tls` (the default is plaintext, allowed on loopback only).
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Serves until `shutdown` resolves, then lets in-flight RPCs finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &self.names {
            reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        // List only what this process serves: the descriptor set also holds the
        // services of the other tier (a control plane serves no Blobs).
        let listed: Vec<&str> = self
            .names
            .iter()
            .copied()
            .chain([
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ])
            .collect();
        let reflection = || {
            listed.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(imagestore_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |b, name| b.with_service_name(*name),
            )
        };
        let routes = self
            .routes
            .add_service(health)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
        let routes = tonic::service::Routes::from(crate::http::dispatch(
            crate::limits::apply(
                routes.into_axum_router(),
                self.messages,
                self.max_concurrent,
            ),
            self.http,
            self.metrics,
        ));

        let trace = TraceLayer::new_for_grpc()
            .make_span_with(|req: &http::Request<_>| {
                // Named by its RPC in exported traces, a child of the caller's.
                let span = tracing::info_span!(
                    "rpc",
                    otel.name = %req.uri().path(),
                    method = %req.uri().path(),
                    image = tracing::field::Empty,
                    bytes = tracing::field::Empty,
                    node = tracing::field::Empty,
                );
                imagestore_telemetry::propagation::set_parent(&span, |key| {
                    req.headers().get(key).and_then(|v| v.to_str().ok())
                });
                span
            })
            .on_response(DefaultOnResponse::new().level(Level::DEBUG))
            .on_failure(DefaultOnFailure::new().level(Level::WARN));

        let bound = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: "the listener".into(),
            source,
        })?;
        self.tls.check(bound)?;
        let stop = self.stop;
        let shutdown = async move {
            shutdown.await;
            stop.raise();
        };
        // The stream window bounds what each upload has in flight in our memory
        // (SERVER_STREAM_WINDOW); the connection window fits two streams at full
        // speed.
        // HTTP/1.1 too: LXD's and Incus's clients pull files over it.
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .initial_stream_window_size(Some(SERVER_STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .max_frame_size(Some(MAX_FRAME))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(1024))
            .layer(trace)
            .add_routes(routes);
        match self.tls.server_config() {
            Some(config) => {
                let (incoming, acceptor) = crate::tls::incoming(listener, config);
                let served = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await;
                acceptor.abort();
                served?;
            }
            None => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await?;
            }
        }
        tracing::info!("server stopped");
        Ok(())
    }
}
