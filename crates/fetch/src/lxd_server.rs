//! An LXD (or Incus) server as a source, through its public REST API as an
//! untrusted client, as `lxc image copy` reads it: the alias
//! (`/1.0/images/aliases/NAME`), then the image record (`/1.0/images/FP`), then
//! the export (`/1.0/images/FP/export`): one file for a unified image, or
//! `multipart/form-data` with a `metadata` part and a `rootfs` (or
//! `rootfs.img`) part for a split one. A private image is read with its secret
//! (`?secret=`). The server's certificate is pinned (LXD's are self-signed).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use imagestore_proto::v1 as pb;
use serde::Deserialize;
use url::Url;

use crate::{FetchError, Fetcher, PartSource, Plan, PlannedPart, Role, is_sha256, parse_url};

/// LXD's answer envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    metadata: T,
}

#[derive(Deserialize)]
struct AliasRecord {
    target: String,
    #[serde(default, rename = "type")]
    image_type: String,
}

#[derive(Deserialize)]
struct ImageRecord {
    fingerprint: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    public: bool,
    #[serde(default, rename = "type")]
    image_type: String,
    #[serde(default)]
    filename: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default)]
    aliases: Vec<AliasEntry>,
}

#[derive(Deserialize)]
struct AliasEntry {
    name: String,
    #[serde(default)]
    description: String,
}

/// One part of an LXD export: the whole body, or one field of the multipart.
#[derive(Clone)]
pub struct ExportPart {
    url: Url,
    /// None: the body is the file; Some: the multipart field with that role.
    field: Option<Role>,
    fetcher: Fetcher,
}

fn api(base: &Url, path: &[&str], secret: &str) -> Result<Url, FetchError> {
    let mut url = base.clone();
    url.set_query(None);
    url.path_segments_mut()
        .map_err(|()| FetchError::Invalid(format!("{base} cannot be a base URL")))?
        .pop_if_empty()
        .extend(path);
    if !secret.is_empty() {
        url.query_pairs_mut().append_pair("secret", secret);
    }
    Ok(url)
}

fn image_type(s: &str) -> pb::ImageType {
    match s {
        "virtual-machine" => pb::ImageType::VirtualMachine,
        _ => pb::ImageType::Container,
    }
}

/// Resolves the image on the LXD server and plans its download.
pub async fn plan(
    fetcher: &Fetcher,
    source: &pb::LxdSource,
    want_vm: bool,
) -> Result<Plan, FetchError> {
    let base = parse_url(&source.server)?;
    let pin = Some(source.certificate_sha256.as_str()).filter(|p| !p.is_empty());
    if pin.is_some_and(|p| !is_sha256(&p.to_ascii_lowercase())) {
        return Err(FetchError::Invalid(
            "lxd.certificate_sha256 must be 64 hex characters".into(),
        ));
    }
    let fetcher = fetcher.pinned(pin)?;
    let name = source.image.trim();
    if name.is_empty() {
        return Err(FetchError::Invalid(
            "the LXD source names no image: give an alias or a fingerprint".into(),
        ));
    }
    let secret = source.secret.trim();
    // An alias first, as lxc resolves names; then a fingerprint (or prefix).
    let alias = if secret.is_empty() {
        match fetcher
            .get_json::<Envelope<AliasRecord>>(&api(
                &base,
                &["1.0", "images", "aliases", name],
                "",
            )?)
            .await
        {
            Ok(a) => Some(a.metadata),
            Err(FetchError::NotFound(_)) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(a) = &alias
        && want_vm
        && image_type(&a.image_type) != pb::ImageType::VirtualMachine
    {
        return Err(FetchError::NotFound(format!(
            "alias {name:?} on {} names a {} image, not a virtual-machine one",
            source.server, a.image_type
        )));
    }
    let fingerprint = alias.as_ref().map_or(name, |a| a.target.as_str());
    let image = fetcher
        .get_json::<Envelope<ImageRecord>>(&api(&base, &["1.0", "images", fingerprint], secret)?)
        .await
        .map_err(|e| match e {
            FetchError::NotFound(_) => FetchError::NotFound(format!(
                "{} has no image {name:?} that an untrusted client may see (a private image \
                 needs a secret)",
                source.server
            )),
            e => e,
        })?
        .metadata;
    if !is_sha256(&image.fingerprint) {
        return Err(FetchError::Invalid(format!(
            "{} gave fingerprint {:?}, which is not a SHA-256",
            source.server, image.fingerprint
        )));
    }
    let export = api(
        &base,
        &["1.0", "images", &image.fingerprint, "export"],
        secret,
    )?;
    // The export says what the image is: one file, or a multipart of two.
    let probe = fetcher.get(&export).await?;
    let split = probe
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("multipart/"));
    drop(probe);
    let part = |role: Role, field: Option<Role>| PlannedPart {
        role,
        source: PartSource::Lxd(ExportPart {
            url: export.clone(),
            field,
            fetcher: fetcher.clone(),
        }),
        sha256: (role == Role::Unified).then(|| image.fingerprint.clone()),
        size: (role == Role::Unified && image.size > 0).then_some(image.size),
    };
    let parts = if split {
        vec![
            part(Role::Metadata, Some(Role::Metadata)),
            part(Role::Rootfs, Some(Role::Rootfs)),
        ]
    } else {
        vec![part(Role::Unified, None)]
    };
    let by_alias = alias.is_some();
    Ok(Plan {
        fingerprint: image.fingerprint.clone(),
        split,
        parts,
        filename: image.filename.clone(),
        properties: image.properties.clone(),
        source_aliases: image
            .aliases
            .iter()
            .map(|a| pb::AliasSpec {
                name: a.name.clone(),
                description: a.description.clone(),
            })
            .collect(),
        // Only an image named by alias follows its source, as in LXD.
        update_source: by_alias.then(|| pb::UpdateSource {
            server: source.server.clone(),
            protocol: "lxd".into(),
            alias: name.to_owned(),
            certificate: source.certificate_sha256.to_ascii_lowercase(),
            image_type: image_type(&image.image_type) as i32,
        }),
        image_type: Some(image_type(&image.image_type)),
    })
}

/// Every image the server shows an untrusted client (its public ones), as
/// imagestore describes images, for browsing (`imagestore list lxd:`).
pub async fn catalogue(
    fetcher: &Fetcher,
    server: &str,
    pin: Option<&str>,
) -> Result<Vec<pb::Image>, FetchError> {
    let base = parse_url(server)?;
    let fetcher = fetcher.pinned(pin)?;
    let mut url = api(&base, &["1.0", "images"], "")?;
    url.query_pairs_mut().append_pair("recursion", "1");
    let records = fetcher
        .get_json::<Envelope<Vec<ImageRecord>>>(&url)
        .await?
        .metadata;
    Ok(records
        .into_iter()
        .map(|r| pb::Image {
            name: format!("images/{}", r.fingerprint),
            r#type: image_type(&r.image_type) as i32,
            architecture: imagestore_image::canonical_architecture(&r.architecture)
                .unwrap_or(&r.architecture)
                .to_owned(),
            size: r.size,
            filename: r.filename,
            properties: r.properties.into_iter().collect(),
            public: r.public,
            aliases: r
                .aliases
                .into_iter()
                .map(|a| pb::AliasRef {
                    name: a.name,
                    description: a.description,
                })
                .collect(),
            fingerprint: r.fingerprint,
            ..Default::default()
        })
        .collect())
}

impl ExportPart {
    /// Streams the part: the whole body, or the one multipart field it is.
    pub async fn open(
        &self,
    ) -> Result<impl Stream<Item = Result<Bytes, FetchError>> + Send + use<>, FetchError> {
        let body = self.fetcher.get(&self.url).await?;
        let shown = crate::filter::redact(&body.url);
        let Some(want) = self.field else {
            return Ok(body.stream().boxed());
        };
        let boundary = body
            .content_type
            .as_deref()
            .and_then(|t| multer::parse_boundary(t).ok())
            .ok_or_else(|| {
                FetchError::Invalid(format!(
                    "{shown} sent a split image without a multipart boundary"
                ))
            })?;
        let mut multipart = multer::Multipart::new(body.stream(), boundary);
        let bad = |e: multer::Error| FetchError::Invalid(format!("{shown}: {e}"));
        loop {
            let mut field = multipart
                .next_field()
                .await
                .map_err(bad)?
                .ok_or_else(|| FetchError::Invalid(format!("{shown} sent no {want:?} part")))?;
            let role = match field.name() {
                Some("metadata") => Role::Metadata,
                Some("rootfs" | "rootfs.img") => Role::Rootfs,
                other => {
                    return Err(FetchError::Invalid(format!(
                        "{shown} sent a part named {other:?}; LXD sends metadata and rootfs"
                    )));
                }
            };
            if role == want {
                let shown = shown.clone();
                // The multipart reader goes with the field it feeds.
                return Ok(field
                    .map(move |chunk| {
                        let _reader = &multipart;
                        chunk.map_err(|e| FetchError::Invalid(format!("{shown}: {e}")))
                    })
                    .boxed());
            }
            while field.chunk().await.map_err(bad)?.is_some() {}
        }
    }
}
