//! Connections with the transport settings the servers use, so that bulk streams
//! are not throttled by HTTP/2 defaults on the client side.

use std::time::Duration;

use imagestore_proto::transport::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// The largest message a client accepts: a 4 MiB chunk plus framing.
pub const MAX_MESSAGE: usize = 8 << 20;

/// An endpoint for `url` ("http://host:port") with our window and frame sizes.
pub fn endpoint(url: &str) -> Result<Endpoint, Error> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|e| Error::Address(format!("{url}: {e}")))?;
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
    endpoint(url)?.connect().await.map_err(|e| Error::Connect {
        url: url.to_owned(),
        reason: source_chain(&e),
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
