//! Connections with the transport settings the servers use, so that bulk streams
//! are not throttled by HTTP/2 defaults on the client side.

use std::time::Duration;

use imagestore_proto::transport::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::tls::{TlsOptions, connector};

/// The largest message a client accepts: a 4 MiB chunk plus framing.
pub const MAX_MESSAGE: usize = 8 << 20;

/// An endpoint for `url` ("http://host:port" or "https://...") with our window
/// and frame sizes. TLS is done by our own connector ([`connect_with`]), so the
/// endpoint itself always speaks to a plain stream.
pub fn endpoint(url: &str) -> Result<Endpoint, Error> {
    let plain = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    };
    let endpoint =
        Endpoint::from_shared(plain).map_err(|e| Error::Address(format!("{url}: {e}")))?;
    Ok(endpoint
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20)))
}

/// Connects to `url` now, so that a wrong address fails here and says so.
pub async fn connect(url: &str) -> Result<Channel, Error> {
    connect_with(url, &TlsOptions::default()).await
}

/// As [`connect`], with `tls` for an https:// URL.
pub async fn connect_with(url: &str, tls: &TlsOptions) -> Result<Channel, Error> {
    let endpoint = endpoint(url)?;
    let connected = if url.starts_with("https://") {
        endpoint.connect_with_connector(connector(tls)?).await
    } else if let Some(address) = tls.address {
        endpoint
            .connect_with_connector(crate::tls::fixed(address))
            .await
    } else {
        endpoint.connect().await
    };
    let channel = match connected {
        Ok(channel) => channel,
        Err(e) => return Err(unreachable(url, source_chain(&e)).await),
    };
    if !url.starts_with("https://") {
        // A plaintext connection is made before the server has said anything:
        // ask it once, so that one that does not speak plaintext gRPC (a TLS
        // server) fails here, where it can be told apart.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let check = health.check(tonic_health::pb::HealthCheckRequest::default());
        match tokio::time::timeout(Duration::from_secs(10), check).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if !crate::error::from_transport(&s) => {}
            Ok(Err(s)) => return Err(unreachable(url, source_chain(&s)).await),
            Err(_) => return Err(unreachable(url, "no answer within 10 s".into()).await),
        }
    }
    Ok(channel)
}

/// Why `url` cannot be reached: the other scheme when its server speaks that.
async fn unreachable(url: &str, reason: String) -> Error {
    match crate::scheme::other_scheme(url).await {
        Some(works) => Error::Scheme {
            url: url.to_owned(),
            works,
        },
        None => Error::Connect {
            url: url.to_owned(),
            reason,
        },
    }
}

/// A channel to `url` that connects on first use (and reconnects), for servers
/// that must start before their peer answers.
pub fn connect_lazy(url: &str, tls: &TlsOptions) -> Result<Channel, Error> {
    let endpoint = endpoint(url)?;
    Ok(if url.starts_with("https://") {
        endpoint.connect_with_connector_lazy(connector(tls)?)
    } else if let Some(address) = tls.address {
        endpoint.connect_with_connector_lazy(crate::tls::fixed(address))
    } else {
        endpoint.connect_lazy()
    })
}

/// "transport error: tcp connect error: Connection refused" rather than the
/// outermost message alone.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = s.source();
    }
    out
}
