//! TLS for every server: rustls with the certificate and key from files, client
//! certificates asked for but not required (a client with none is anonymous or
//! brings a token), and the rule that plaintext is served only on loopback unless
//! an operator says otherwise.
//!
//! Client certificates are self-signed, as LXD's are: trust comes from the trust
//! store's fingerprints, not from a CA, so any certificate is accepted at the
//! handshake (which still proves the client holds its key) and its fingerprint
//! travels with each request as [`TlsPeer`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// `[tls]` in every server's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate (PEM, chain first). With `key_file`, TLS is on.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Serve plaintext on an address other than loopback anyway. Anyone on the
    /// path can then read and change everything, tokens included.
    pub insecure: bool,
}

impl TlsConfig {
    /// The scheme clients use to reach a server with this configuration.
    pub fn scheme(&self) -> &'static str {
        if self.cert_file.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Why TLS could not be set up, or plaintext was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: give both cert_file and key_file, or neither")]
    Half,
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(
        "refusing to serve plaintext on {0}, which is not a loopback address: set \
         tls.cert_file and tls.key_file (IMAGESTORE_TLS__CERT_FILE, ...), or \
         tls.insecure = true to serve plaintext anyway"
    )]
    Plaintext(SocketAddr),
}

/// The TLS a server runs with: none (plaintext) or a rustls configuration.
#[derive(Clone, Default)]
pub struct Tls {
    config: Option<Arc<rustls::ServerConfig>>,
    /// SHA-256 of the server certificate, which clients pin.
    certificate_sha256: Option<String>,
    insecure: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("enabled", &self.config.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

fn file_error(path: &std::path::Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Tls {
    /// From the configuration: reads and checks the certificate and key now, so
    /// that a bad file stops the start, not the first connection.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let mut certificate_sha256 = None;
        let server = match (&config.cert_file, &config.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_error(cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_error(cert, e))?;
                if certs.is_empty() {
                    return Err(file_error(cert, "holds no PEM certificate"));
                }
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
                certificate_sha256 = Some(imagestore_auth::fingerprint_der(certs[0].as_ref()));
                Some(Arc::new(server_config(certs, key)?))
            }
            _ => return Err(TlsError::Half),
        };
        Ok(Self {
            config: server,
            certificate_sha256,
            insecure: config.insecure,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.config.is_some()
    }

    /// The fingerprint of the certificate served; None for plaintext.
    pub fn certificate_sha256(&self) -> Option<&str> {
        self.certificate_sha256.as_deref()
    }

    /// Plaintext only on loopback, unless insecure was asked for; says which.
    pub(crate) fn check(&self, bound: SocketAddr) -> Result<(), TlsError> {
        if self.is_enabled() {
            tracing::info!(address = %bound, "serving TLS");
        } else if bound.ip().is_loopback() {
            tracing::info!(address = %bound, "serving plaintext: loopback only");
        } else if self.insecure {
            tracing::warn!(
                address = %bound,
                "serving PLAINTEXT on a network address (tls.insecure): tokens and images \
                 travel unencrypted"
            );
        } else {
            return Err(TlsError::Plaintext(bound));
        }
        Ok(())
    }

    pub(crate) fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.config.clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(certs, key)?;
    // gRPC needs h2; LXD's and Incus's HTTP clients may pick either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any client certificate whose holder proves the key; which ones are
/// trusted is the trust store's business.
#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Who is at the other end of a TLS connection; in every request's extensions.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub remote_addr: Option<SocketAddr>,
    /// SHA-256 of the client certificate's DER, when the client sent one.
    pub certificate_sha256: Option<String>,
}

/// A server-side TLS connection that tells tonic who the peer is.
pub(crate) struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted, handshaken connections. Handshakes run on their own tasks, so one
/// slow or hostile client does not hold up the others; failed ones are dropped
/// and logged. The accept loop ends when the stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> (
    ReceiverStream<std::io::Result<TlsConnection>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certificate_sha256 = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| imagestore_auth::fingerprint_der(c.as_ref()));
                        let peer = TlsPeer {
                            remote_addr: Some(remote),
                            certificate_sha256,
                        };
                        let _ = sender.send(Ok(TlsConnection { stream, peer })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    (ReceiverStream::new(rx), task)
}
