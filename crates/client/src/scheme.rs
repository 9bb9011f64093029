//! When a connection fails, whether the server speaks the other scheme than
//! the URL says (http:// to a TLS server, https:// to a plaintext one): the one
//! mistake a person can fix at once, so the error names the URL to use.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long each probe may take: it only runs after a failure.
const PROBE: Duration = Duration::from_secs(2);

/// The URL that would work, when `url`'s server answers the other scheme. Only
/// for URLs with a port: without one, the other scheme means another port.
pub(crate) async fn other_scheme(url: &str) -> Option<String> {
    if url.starts_with("https://") {
        return plaintext_instead(url).await;
    }
    let tls = url.replacen("http://", "https://", 1);
    http_port(&tls)?;
    let answered = tokio::time::timeout(PROBE, crate::tls::server_fingerprint(&tls)).await;
    matches!(answered, Ok(Ok(_))).then_some(tls)
}

/// The http:// URL to use when the server at `url` (https://) speaks plaintext.
pub(crate) async fn plaintext_instead(url: &str) -> Option<String> {
    let (host, port) = http_port(url)?;
    let answered = tokio::time::timeout(PROBE, speaks_http(&host, port)).await;
    (answered.ok().flatten() == Some(true)).then(|| url.replacen("https://", "http://", 1))
}

/// The host and explicit port of `url`.
fn http_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), uri.port_u16()?))
}

/// Whether the server at `host:port` answers a plaintext HTTP request.
async fn speaks_http(host: &str, port: u16) -> Option<bool> {
    let mut tcp = TcpStream::connect((host, port)).await.ok()?;
    tcp.write_all(b"HEAD / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut start = [0u8; 5];
    tcp.read_exact(&mut start).await.ok()?;
    Some(&start == b"HTTP/")
}
