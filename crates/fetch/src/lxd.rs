//! LXD's (and Incus's) import-from-URL protocol: HEAD the URL with the server's
//! architectures and version, read the image's hash and location from the answer
//! (its status is not checked, as LXD), then GET that location. Unified images
//! only: the protocol names one file.

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::filter::redact;
use crate::{FetchError, Fetcher, PartSource, Plan, PlannedPart, Role, ServerInfo, is_sha256};

/// The headers sent with the discovery request, LXD's and Incus's.
pub fn request_headers(server: &ServerInfo) -> HeaderMap {
    let mut h = HeaderMap::new();
    let arches = server.architectures.join(", ");
    for prefix in ["LXD", "Incus"] {
        for (name, value) in [
            ("Server-Architectures", &arches),
            ("Server-Version", &server.version),
        ] {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(format!("{prefix}-{name}")),
                HeaderValue::from_str(value),
            ) {
                h.insert(n, v);
            }
        }
    }
    h
}

/// The first of LXD's or Incus's name for a response header.
fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    ["LXD", "Incus"]
        .iter()
        .find_map(|p| h.get(format!("{p}-{name}").as_str()))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// What a discovery answer from `answered` (the URL that answered, after any
/// redirects) names: the image's SHA-256 and the URL of its file. LXD's and
/// Incus's header names are both read; the status is not (LXD ignores it).
pub fn discovery(
    answered: &Url,
    status: reqwest::StatusCode,
    headers: &HeaderMap,
) -> Result<(String, Url), FetchError> {
    let shown = redact(answered);
    let hash = header(headers, "Image-Hash").ok_or_else(|| {
        FetchError::Invalid(format!(
            "Missing LXD-Image-Hash header: {shown} answered {status} without LXD-Image-Hash or \
             Incus-Image-Hash; it does not speak LXD's image URL protocol"
        ))
    })?;
    if !is_sha256(hash) {
        return Err(FetchError::Invalid(format!(
            "{shown} gave LXD-Image-Hash {hash:?}, which is not a SHA-256 (64 lowercase hex characters)"
        )));
    }
    let location = header(headers, "Image-URL").ok_or_else(|| {
        FetchError::Invalid(format!(
            "Missing LXD-Image-URL header: {shown} answered without LXD-Image-URL or Incus-Image-URL"
        ))
    })?;
    let download = answered.join(location).map_err(|e| {
        FetchError::Invalid(format!("{shown} gave LXD-Image-URL {location:?}: {e}"))
    })?;
    Ok((hash.to_owned(), download))
}

/// Asks `url` which image to download.
pub async fn plan(fetcher: &Fetcher, url: &Url, server: &ServerInfo) -> Result<Plan, FetchError> {
    let (answered, response) = fetcher
        .request(Method::HEAD, url, request_headers(server))
        .await?;
    let (hash, download) = discovery(&answered, response.status(), response.headers())?;
    // Checked now so that a refused location fails the import before anything moves.
    fetcher.filter().check_url(&download)?;
    let filename = download
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .unwrap_or_default();
    Ok(Plan {
        fingerprint: hash.clone(),
        split: false,
        parts: vec![PlannedPart {
            role: Role::Unified,
            source: PartSource::Http(download),
            sha256: Some(hash),
            size: None,
        }],
        filename,
        properties: Default::default(),
        source_aliases: Vec::new(),
        // URL imports never auto-update (LXD records no source for them).
        update_source: None,
        image_type: None,
    })
}
