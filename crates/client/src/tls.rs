//! TLS to imagestore servers. A server's certificate is trusted by its pinned
//! SHA-256 fingerprint (self-signed, as `imagestore serve` makes it and as LXD
//! remotes are added) or, without a pin, by the system's CA roots. The client
//! may present a certificate of its own, which the server trusts by fingerprint.

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use imagestore_auth::{CertPair, fingerprint_der};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

use crate::Error;

/// How to reach a server (and, for https://, whom to trust).
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The server certificate's SHA-256 (lowercase hex); None: the system roots.
    pub pin: Option<String>,
    /// The certificate (and key) to present.
    pub identity: Option<CertPair>,
    /// Connect to this address instead of resolving the URL's host (which still
    /// names the server to TLS and HTTP): the address a caller already checked.
    pub address: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("pin", &self.pin)
            .field("identity", &self.identity.is_some())
            .field("address", &self.address)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts exactly the certificate with the pinned fingerprint (its holder must
/// still prove the key); with no pin, any, and remembers which (for `remote add`
/// to show it before anything is sent).
#[derive(Debug)]
struct Pinned {
    pin: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_der(end_entity.as_ref());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(got.clone());
        match &self.pin {
            Some(pin) if !pin.eq_ignore_ascii_case(&got) => Err(rustls::Error::General(format!(
                "the server's certificate is {got}, not the pinned {pin}: a different \
                 server, or it changed its certificate"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("TLS: {e}"))
}

/// The rustls configuration for `opts`; `verifier` overrides the pin (to capture).
fn client_config(
    opts: &TlsOptions,
    verifier: Option<Arc<Pinned>>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let verifier = verifier.or_else(|| {
        opts.pin.as_ref().map(|pin| {
            Arc::new(Pinned {
                pin: Some(pin.clone()),
                seen: Mutex::new(None),
                provider: provider.clone(),
            })
        })
    });
    let builder = match verifier {
        Some(v) => builder
            .dangerous()
            .with_custom_certificate_verifier(v as Arc<dyn ServerCertVerifier>),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match &opts.identity {
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(invalid)?;
            builder.with_client_auth_cert(certs, key).map_err(invalid)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A rustls configuration that trusts as `opts` says (the pinned certificate,
/// else the system roots), for HTTP/1.1 clients of other servers (LXD's REST
/// API, simplestreams over HTTPS).
pub fn http1_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, Error> {
    let mut config = client_config(opts, None)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Host and port of an https URI.
fn host_port(uri: &Uri) -> Result<(String, u16), std::io::Error> {
    let host = uri
        .host()
        .ok_or_else(|| std::io::Error::other(format!("{uri}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

async fn handshake(
    config: Arc<rustls::ClientConfig>,
    uri: Uri,
    address: Option<std::net::SocketAddr>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let (host, port) = host_port(&uri)?;
    let tcp = match address {
        Some(a) => TcpStream::connect(a).await?,
        None => TcpStream::connect((host.as_str(), port)).await?,
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A connector for tonic that speaks TLS with `opts` to whatever URI it is given.
pub(crate) fn connector(
    opts: &TlsOptions,
) -> Result<
    impl tower::Service<
        Uri,
        Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Error,
> {
    let config = Arc::new(client_config(opts, None)?);
    let address = opts.address;
    Ok(tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move { handshake(config, uri, address).await.map(TokioIo::new) }
    }))
}

/// A connector for plaintext that goes to `address` whatever URI it is given.
pub(crate) fn fixed(
    address: std::net::SocketAddr,
) -> impl tower::Service<Uri, Response = TokioIo<TcpStream>, Error = std::io::Error, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| async move {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        Ok(TokioIo::new(tcp))
    })
}

/// The SHA-256 fingerprint of the certificate the server at `url` (https://)
/// presents; only a handshake, nothing is sent. For pinning on `remote add`.
pub async fn server_fingerprint(url: &str) -> Result<String, Error> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::Address(format!("{url}: {e}")))?;
    let capture = Arc::new(Pinned {
        pin: None,
        seen: Mutex::new(None),
        provider: provider(),
    });
    let config = client_config(&TlsOptions::default(), Some(capture.clone()))?;
    if let Err(e) = handshake(Arc::new(config), uri, None).await {
        return Err(match crate::scheme::plaintext_instead(url).await {
            Some(works) => Error::Scheme {
                url: url.to_owned(),
                works,
            },
            None => Error::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            },
        });
    }
    let seen = capture
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    seen.ok_or_else(|| invalid("the server sent no certificate"))
}
