//! Remote sources: where an imported image's bytes come from. Resolving a source
//! gives a [`Plan`]: the parts to fetch, the hashes they must have, and what to
//! record about the image; [`Plan::open`] streams one part. Storing and verifying
//! the stream is the blob node's (the same writer as uploads); this crate knows
//! no store.

pub mod filter;
pub mod http;
pub mod lxd;
pub mod lxd_server;
pub mod remote;
pub mod simplestreams;

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use imagestore_proto::v1 as pb;
use url::Url;

pub use filter::ImportFiltering;
pub use http::{Fetcher, Limits};

/// Why a fetch failed. Every message is for a person.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Import filtering refused the address, before any connection.
    #[error("{0}")]
    Refused(String),
    /// The request or the source's answer is malformed or incomplete.
    #[error("{0}")]
    Invalid(String),
    /// The source has no such image.
    #[error("{0}")]
    NotFound(String),
    /// An HTTP exchange failed (status, body).
    #[error("{0}")]
    Http(String),
    /// The source could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The source stopped sending.
    #[error("{0}")]
    Timeout(String),
    /// Over the import size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The bytes do not hash to what the source promised.
    #[error("{0}")]
    Mismatch(String),
}

impl FetchError {
    /// The google.rpc.Code an operation that failed this way reports.
    pub fn code(&self) -> tonic::Code {
        match self {
            // The same refusal the control plane gives before anything
            // connects (the address is not allowed), found later: one code, so
            // that callers (the CLI's exit code) see one kind.
            Self::Refused(_) => tonic::Code::InvalidArgument,
            Self::Invalid(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Http(_) => tonic::Code::FailedPrecondition,
            Self::Unreachable(_) => tonic::Code::Unavailable,
            Self::Timeout(_) => tonic::Code::DeadlineExceeded,
            Self::TooLarge(_) => tonic::Code::ResourceExhausted,
            Self::Mismatch(_) => tonic::Code::DataLoss,
        }
    }
}

impl From<imagestore_client::Error> for FetchError {
    fn from(e: imagestore_client::Error) -> Self {
        match e.code() {
            tonic::Code::NotFound => Self::NotFound(e.to_string()),
            tonic::Code::InvalidArgument => Self::Invalid(e.to_string()),
            tonic::Code::Unavailable => Self::Unreachable(e.to_string()),
            _ => Self::Http(e.to_string()),
        }
    }
}

impl From<tonic::Status> for FetchError {
    fn from(s: tonic::Status) -> Self {
        imagestore_client::Error::from(s).into()
    }
}

/// Which file of an image a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unified,
    Metadata,
    Rootfs,
}

/// Where one part's bytes are.
#[derive(Clone)]
pub enum PartSource {
    /// A plain HTTP(S) GET.
    Http(Url),
    /// A GET through a fetcher that trusts one pinned certificate.
    Pinned(Url, Fetcher),
    /// A blob node of another imagestore.
    Imagestore(Box<remote::RemoteFile>),
    /// An LXD server's export (the whole body, or one part of a multipart).
    Lxd(lxd_server::ExportPart),
}

/// One file to fetch.
#[derive(Clone)]
pub struct PlannedPart {
    pub role: Role,
    pub source: PartSource,
    /// The file's own SHA-256, when the source says.
    pub sha256: Option<String>,
    /// Its size, when the source says.
    pub size: Option<u64>,
}

/// An import, resolved.
#[derive(Clone)]
pub struct Plan {
    /// The fingerprint the image must have (LXD's rule over all parts).
    pub fingerprint: String,
    pub split: bool,
    pub parts: Vec<PlannedPart>,
    /// The file name to record.
    pub filename: String,
    /// Properties the source gives (simplestreams); the request's override them.
    pub properties: BTreeMap<String, String>,
    /// The source's aliases for the image, for `copy_aliases`.
    pub source_aliases: Vec<pb::AliasSpec>,
    /// What to record for refreshes; None when the image was named by fingerprint
    /// or secret (LXD: only images obtained by alias follow their source).
    pub update_source: Option<pb::UpdateSource>,
    /// What the source says the image is (simplestreams' item type, the source
    /// server's record); None: the bytes decide, as for an upload.
    pub image_type: Option<pb::ImageType>,
}

impl Plan {
    /// The whole image's size, when every part's is known.
    pub fn total_size(&self) -> Option<u64> {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// Streams part `i`, with its size when the plan did not know it but the
    /// source says (an HTTP Content-Length), for progress.
    pub async fn open(&self, fetcher: &Fetcher, i: usize) -> Result<Opened, FetchError> {
        let http = |body: http::Body| (body.length, Box::pin(body.stream()) as PartStream);
        let (length, stream) = match &self.parts[i].source {
            PartSource::Http(url) => http(fetcher.get(url).await?),
            PartSource::Pinned(url, pinned) => http(pinned.get(url).await?),
            PartSource::Imagestore(file) => (None, Box::pin(file.open(fetcher).await?) as _),
            PartSource::Lxd(part) => (None, Box::pin(part.open().await?) as _),
        };
        Ok(Opened {
            length: self.parts[i].size.or(length),
            stream,
        })
    }
}

/// A part's bytes as they arrive.
pub type PartStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// A part being fetched.
pub struct Opened {
    /// Its size, when the plan or the source knows it.
    pub length: Option<u64>,
    pub stream: PartStream,
}

/// What the server tells sources about itself (LXD-Server-* headers).
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// LXD's canonical architecture names, e.g. ["x86_64", "i686"].
    pub architectures: Vec<String>,
    pub version: String,
}

/// Resolves an import request's source to a plan.
pub async fn resolve(
    fetcher: &Fetcher,
    request: &pb::ImportImageRequest,
    server: &ServerInfo,
) -> Result<Plan, FetchError> {
    use pb::import_image_request::Source;
    let want_vm = request.r#type == pb::ImageType::VirtualMachine as i32;
    match &request.source {
        Some(Source::Url(u)) => lxd::plan(fetcher, &parse_url(&u.url)?, server).await,
        Some(Source::Remote(r)) => remote::plan(fetcher, r, want_vm).await,
        Some(Source::Simplestreams(s)) => simplestreams::plan(fetcher, s, want_vm, server).await,
        Some(Source::Lxd(s)) => lxd_server::plan(fetcher, s, want_vm).await,
        // Copies between this cluster's stores fetch nothing from outside.
        Some(Source::Copy(_)) => Err(FetchError::Invalid(
            "a copy between stores is not fetched".into(),
        )),
        None => Err(FetchError::Invalid("the import names no source".into())),
    }
}

/// Parses a URL a client gave.
pub fn parse_url(s: &str) -> Result<Url, FetchError> {
    Url::parse(s).map_err(|e| FetchError::Invalid(format!("{s:?} is not a URL: {e}")))
}

/// True for 64 lowercase hex characters.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
