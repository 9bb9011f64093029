//! HTTP for server-side fetches: every hop (the first request and each redirect)
//! passes import filtering before a connection is made, names resolve only to
//! addresses the filtering allows (so a name cannot be pointed at a forbidden
//! address), and bodies are bounded in size and in time without progress.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::FetchError;
use crate::filter::{ImportFiltering, redact};

/// How far a fetch may go.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most bytes one fetch may bring.
    pub max_bytes: u64,
    pub connect_timeout: Duration,
    /// How long a transfer may make no progress (also: wait for response headers).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 10;

/// An HTTP client that only goes where import filtering lets it.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    filter: Arc<ImportFiltering>,
    limits: Limits,
}

/// Resolves names to the addresses the filtering allows for them, and fails when
/// none is left.
struct FilteringResolver {
    filter: Arc<ImportFiltering>,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let filter = self.filter.clone();
        Box::pin(async move {
            let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match filter.check_ip(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        why = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = why.unwrap_or_else(|| format!("{host} has no address"));
                return Err(Box::new(FetchError::Refused(format!(
                    "refused by this server's import filtering: {why}"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A response body under way.
pub struct Body {
    /// Where the body came from, after redirects.
    pub url: Url,
    /// Content-Length, when the server sent one.
    pub length: Option<u64>,
    /// Content-Type, when the server sent one.
    pub content_type: Option<String>,
    response: reqwest::Response,
    limits: Limits,
}

impl Body {
    /// The bytes, each chunk within the idle timeout, all within max_bytes. The
    /// first error ends the stream.
    pub fn stream(self) -> impl Stream<Item = Result<Bytes, FetchError>> + Send + 'static {
        let Body {
            url,
            response,
            limits,
            ..
        } = self;
        let shown = redact(&url);
        let inner = Box::pin(response.bytes_stream());
        futures::stream::unfold(Some((inner, 0u64)), move |state| {
            let shown = shown.clone();
            let limits = limits.clone();
            async move {
                let (mut inner, received) = state?;
                let next = tokio::time::timeout(limits.idle_timeout, inner.next()).await;
                let quiet = || {
                    FetchError::Timeout(format!(
                        "{shown} sent nothing for {:?} after {received} bytes",
                        limits.idle_timeout
                    ))
                };
                let item = match next {
                    Err(_) => Err(quiet()),
                    Ok(None) => return None,
                    // The client's own read timeout (the same idle limit) may fire first.
                    Ok(Some(Err(e))) if e.is_timeout() => Err(quiet()),
                    Ok(Some(Err(e))) => Err(FetchError::Http(format!(
                        "reading {shown} failed after {received} bytes: {e}"
                    ))),
                    Ok(Some(Ok(b))) if received + b.len() as u64 > limits.max_bytes => {
                        Err(FetchError::TooLarge(format!(
                            "{shown} is larger than this server's import limit of {} bytes",
                            limits.max_bytes
                        )))
                    }
                    Ok(Some(Ok(b))) => {
                        let received = received + b.len() as u64;
                        return Some((Ok(b), Some((inner, received))));
                    }
                };
                Some((item, None))
            }
        })
    }
}

impl Fetcher {
    pub fn new(filter: ImportFiltering, limits: Limits) -> Result<Self, FetchError> {
        let filter = Arc::new(filter);
        let client = Self::client(&filter, &limits, None)?;
        Ok(Self {
            client,
            filter,
            limits,
        })
    }

    /// The same fetcher, trusting exactly the certificate whose SHA-256 is `pin`
    /// on https:// (a self-signed LXD server's), or the system roots without one.
    pub fn pinned(&self, pin: Option<&str>) -> Result<Self, FetchError> {
        let Some(pin) = pin else {
            return Ok(self.clone());
        };
        let tls = imagestore_client::http1_config(&imagestore_client::TlsOptions {
            pin: Some(pin.to_ascii_lowercase()),
            ..Default::default()
        })
        .map_err(|e| FetchError::Invalid(format!("certificate pin: {e}")))?;
        Ok(Self {
            client: Self::client(&self.filter, &self.limits, Some(tls))?,
            filter: self.filter.clone(),
            limits: self.limits.clone(),
        })
    }

    fn client(
        filter: &Arc<ImportFiltering>,
        limits: &Limits,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<reqwest::Client, FetchError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.idle_timeout)
            .user_agent(concat!("imagestore/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(FilteringResolver {
                filter: filter.clone(),
            }));
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        builder
            .build()
            .map_err(|e| FetchError::Http(format!("cannot build the HTTP client: {e}")))
    }

    pub fn filter(&self) -> &ImportFiltering {
        &self.filter
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sends `method` to `url` with `headers`, following redirects, each checked.
    pub async fn request(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
    ) -> Result<(Url, reqwest::Response), FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.filter.check_url(&url)?;
            let shown = redact(&url);
            let sent = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .send();
            let response = tokio::time::timeout(self.limits.idle_timeout, sent)
                .await
                .map_err(|_| {
                    FetchError::Timeout(format!(
                        "{shown} did not answer within {:?}",
                        self.limits.idle_timeout
                    ))
                })?
                .map_err(|e| connect_error(&shown, e))?;
            if !response.status().is_redirection() {
                return Ok((url, response));
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    FetchError::Http(format!(
                        "{shown} answered {} without a Location",
                        response.status()
                    ))
                })?;
            url = url.join(location).map_err(|e| {
                FetchError::Http(format!("{shown} redirected to {location:?}: {e}"))
            })?;
            tracing::debug!(from = %shown, to = %redact(&url), "following a redirect");
        }
        Err(FetchError::Http(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            redact(&url)
        )))
    }

    /// GETs `url` and returns its body; anything but 200 is an error (404:
    /// NotFound).
    pub async fn get(&self, url: &Url) -> Result<Body, FetchError> {
        let (url, response) = self.request(Method::GET, url, HeaderMap::new()).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound(format!(
                "{} was not found",
                redact(&url)
            )));
        }
        if response.status() != StatusCode::OK {
            return Err(FetchError::Http(format!(
                "Unable to fetch {:?}: {}",
                redact(&url),
                response.status()
            )));
        }
        let length = response.content_length();
        if let Some(n) = length
            && n > self.limits.max_bytes
        {
            return Err(FetchError::TooLarge(format!(
                "{} is {n} bytes; this server's import limit is {} bytes",
                redact(&url),
                self.limits.max_bytes
            )));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Body {
            url,
            length,
            content_type,
            response,
            limits: self.limits.clone(),
        })
    }

    /// GETs a small JSON document (simplestreams indexes), at most 64 MiB.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
    ) -> Result<T, FetchError> {
        const MAX_JSON: u64 = 64 << 20;
        let body = self.get(url).await?;
        let shown = redact(&body.url);
        let mut bytes = Vec::new();
        let mut stream = std::pin::pin!(body.stream());
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() as u64 > MAX_JSON {
                return Err(FetchError::TooLarge(format!(
                    "{shown} is larger than {MAX_JSON} bytes; not an index"
                )));
            }
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::Invalid(format!("{shown} is not what was expected: {e}")))
    }
}

/// A failed request, with the filtering's refusal brought to the top when that
/// is what stopped it.
fn connect_error(shown: &str, e: reqwest::Error) -> FetchError {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(FetchError::Refused(why)) = s.downcast_ref::<FetchError>() {
            return FetchError::Refused(format!("{shown} is {why}"));
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Timeout(format!("{shown}: {e}"));
    }
    // The innermost cause says what went wrong (refused, a certificate that is
    // not the pinned one); reqwest's own words only name the request.
    let mut why = e.to_string();
    let mut next = std::error::Error::source(&e);
    while let Some(s) = next {
        why = s.to_string();
        next = s.source();
    }
    FetchError::Unreachable(format!("cannot reach {shown}: {why}"))
}

impl Fetcher {
    /// For connections this client does not make itself (gRPC to another
    /// imagestore): checks the URL, resolves its host once and checks every
    /// address; the connection then goes to the address returned, so that a
    /// second lookup cannot give another answer.
    pub async fn checked_address(&self, url: &Url) -> Result<std::net::SocketAddr, FetchError> {
        self.filter.check_url(url)?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| FetchError::Invalid(format!("{} names no port", redact(url))))?;
        let name = match url.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(v4)) => return Ok((v4, port).into()),
            Some(url::Host::Ipv6(v6)) => return Ok((v6, port).into()),
            None => {
                return Err(FetchError::Invalid(format!(
                    "{} names no host",
                    redact(url)
                )));
            }
        };
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| FetchError::Unreachable(format!("cannot resolve {name}: {e}")))?
            .collect();
        for a in &addrs {
            self.filter.check_ip(&name, a.ip()).map_err(|why| {
                FetchError::Refused(format!(
                    "{} is refused by this server's import filtering: {why}",
                    redact(url)
                ))
            })?;
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| FetchError::Unreachable(format!("{name} resolves to no address")))
    }
}
