//! Another imagestore server as a source (LXD's `image copy`, pull mode): the
//! server connects as an untrusted client, resolves the image (alias first, as
//! lxc), and downloads its parts from the source's blob node with the ticket the
//! source's ExportImage gives. A private image needs an image secret.

use futures::{Stream, StreamExt};
use imagestore_client::{Client, TlsOptions};
use imagestore_proto::v1 as pb;

use crate::{FetchError, Fetcher, PartSource, Plan, PlannedPart, Role, parse_url};

/// One file on the source's blob node.
#[derive(Clone)]
pub struct RemoteFile {
    client: Client,
    node: String,
    ticket: String,
    fingerprint: String,
    role: pb::PartRole,
}

impl RemoteFile {
    pub(crate) async fn open(
        &self,
        fetcher: &Fetcher,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, FetchError>> + Send + use<>, FetchError>
    {
        let address = if self.node.is_empty() {
            None
        } else {
            Some(fetcher.checked_address(&parse_url(&self.node)?).await?)
        };
        let stream = self
            .client
            .blobs_via(&self.node, address)
            .await?
            .download(pb::DownloadRequest {
                fingerprint: self.fingerprint.clone(),
                part: self.role as i32,
                read_offset: 0,
                read_limit: 0,
                ticket: self.ticket.clone(),
            })
            .await?
            .into_inner();
        let idle = fetcher.limits().idle_timeout;
        let node = self.node.clone();
        Ok(
            tokio_stream::StreamExt::timeout(stream, idle).map(move |m| match m {
                Ok(Ok(m)) => Ok(m.data),
                Ok(Err(s)) => Err(FetchError::Http(format!(
                    "downloading from {node} failed: {}",
                    s.message()
                ))),
                Err(_) => Err(FetchError::Timeout(format!(
                    "{node} sent nothing for {idle:?}"
                ))),
            }),
        )
    }
}

fn pin(source: &pb::RemoteSource) -> Result<Option<String>, FetchError> {
    if !source.certificate_sha256.is_empty() {
        return Ok(Some(source.certificate_sha256.to_ascii_lowercase()));
    }
    if source.certificate.is_empty() {
        return Ok(None);
    }
    imagestore_auth::fingerprint_pem(source.certificate.as_bytes())
        .map(Some)
        .map_err(|e| FetchError::Invalid(format!("the source certificate is not PEM: {e}")))
}

/// Resolves the image on the source and asks it for the download.
pub async fn plan(
    fetcher: &Fetcher,
    source: &pb::RemoteSource,
    want_vm: bool,
) -> Result<Plan, FetchError> {
    let server = parse_url(&source.server)?;
    let address = fetcher.checked_address(&server).await?;
    let name = source.image.trim();
    if name.is_empty() {
        return Err(FetchError::Invalid(
            "the remote source names no image: give an alias, fingerprint or prefix".into(),
        ));
    }
    let tls = TlsOptions {
        pin: pin(source)?,
        identity: None,
        address: Some(address),
    };
    let client = Client::connect_with(source.server.trim_end_matches('/'), None, tls).await?;
    let secret = source.secret.clone();
    let image_type = if want_vm {
        pb::ImageType::VirtualMachine
    } else {
        pb::ImageType::Unspecified
    };
    let image = if secret.is_empty() {
        client.resolve(name, want_vm).await?
    } else {
        client
            .images()
            .get_image(pb::GetImageRequest {
                name: format!("images/{name}"),
                r#type: image_type as i32,
                secret: secret.clone(),
            })
            .await?
            .into_inner()
    };
    // Only an image named by alias follows its source (LXD: a fingerprint is an
    // exact version; a secret is used once).
    let by_alias = secret.is_empty() && image.aliases.iter().any(|a| a.name == name);
    let export = client
        .images()
        .export_image(pb::ExportImageRequest {
            name: format!("images/{}", image.fingerprint),
            r#type: 0,
            secret,
            ..Default::default()
        })
        .await?
        .into_inner();
    let parts = export
        .files
        .iter()
        .map(|f| {
            let role = pb::PartRole::try_from(f.role).unwrap_or(pb::PartRole::Unspecified);
            PlannedPart {
                role: match role {
                    pb::PartRole::Metadata => Role::Metadata,
                    pb::PartRole::Rootfs => Role::Rootfs,
                    _ => Role::Unified,
                },
                source: PartSource::Imagestore(Box::new(RemoteFile {
                    client: client.clone(),
                    node: export.blob_node.clone(),
                    ticket: export.ticket.clone(),
                    fingerprint: image.fingerprint.clone(),
                    role,
                })),
                sha256: Some(f.sha256.clone()).filter(|s| !s.is_empty()),
                size: Some(f.size),
            }
        })
        .collect::<Vec<_>>();
    if parts.is_empty() || parts.len() > 2 {
        return Err(FetchError::Invalid(format!(
            "the source offers {} files for image {}; expected 1 or 2",
            parts.len(),
            image.fingerprint
        )));
    }
    Ok(Plan {
        split: parts.len() == 2,
        parts,
        filename: image.filename.clone(),
        properties: image.properties.clone().into_iter().collect(),
        source_aliases: image
            .aliases
            .iter()
            .map(|a| pb::AliasSpec {
                name: a.name.clone(),
                description: a.description.clone(),
            })
            .collect(),
        update_source: by_alias.then(|| pb::UpdateSource {
            server: source.server.clone(),
            protocol: "imagestore".into(),
            alias: name.to_owned(),
            certificate: source.certificate.clone(),
            image_type: image.r#type,
        }),
        image_type: pb::ImageType::try_from(image.r#type)
            .ok()
            .filter(|t| *t != pb::ImageType::Unspecified),
        fingerprint: image.fingerprint,
    })
}
