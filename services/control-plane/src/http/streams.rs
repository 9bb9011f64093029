//! simplestreams made from the catalog: one tree that LXD and Incus both read
//! (each finds its own metadata items, both pointing at the same file). The
//! documents are made once per catalog version and visibility, and served from
//! memory with an ETag until the catalog changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use imagestore_catalog::{Image, ImageType, Layout, PartRole};
use imagestore_image::debian_architecture;
use imagestore_simplestreams::{
    COMBINED_TYPE, Client, IMAGE_DOWNLOADS, Index, IndexEntry, Item, Product, Products, Version,
    root_for,
};
use sha2::{Digest, Sha256};

use super::files::file_path;
use super::{Face, Reply};
use crate::error::ApiError;

/// Where the products file is, relative to the server's URL.
const PRODUCTS_PATH: &str = "streams/v1/images.json";

/// One document as served.
struct Doc {
    body: Bytes,
    etag: HeaderValue,
}

impl Doc {
    fn new(body: Vec<u8>) -> Self {
        let digest = hex::encode(&Sha256::digest(&body)[..16]);
        Self {
            etag: HeaderValue::from_str(&format!("\"{digest}\""))
                .unwrap_or(HeaderValue::from_static("\"\"")),
            body: body.into(),
        }
    }
}

/// The index and products documents of one catalog version.
struct Docs {
    version: u64,
    index: Doc,
    products: Doc,
}

/// The documents for anonymous callers and for trusted ones.
#[derive(Default)]
pub struct Cache {
    public: tokio::sync::Mutex<Option<Arc<Docs>>>,
    all: tokio::sync::Mutex<Option<Arc<Docs>>>,
}

impl Cache {
    /// The documents as of the catalog's current version; made again (by one
    /// request at a time, the others wait for it) when the catalog changed.
    async fn get(&self, face: &Face, public_only: bool) -> Result<Arc<Docs>, ApiError> {
        let slot = if public_only { &self.public } else { &self.all };
        let version = face.catalog.images_version().await?;
        let mut cached = slot.lock().await;
        if let Some(docs) = cached.as_ref().filter(|d| d.version == version) {
            return Ok(docs.clone());
        }
        let (version, mut images) = face.catalog.all_images(public_only).await?;
        // A damaged image is served to nobody, so it is offered to nobody.
        images.retain(|i| i.damage.is_none());
        let docs = tokio::task::spawn_blocking(move || make(version, &images))
            .await
            .map_err(|e| ApiError::Unavailable(format!("making the simplestreams index: {e}")))?
            .map_err(|e| ApiError::Unavailable(format!("making the simplestreams index: {e}")))?;
        let docs = Arc::new(docs);
        *cached = Some(docs.clone());
        Ok(docs)
    }
}

pub async fn index(State(face): State<Arc<Face>>, req: Request) -> Reply {
    let docs = face.streams.get(&face, face.public_only(&req)?).await?;
    Ok(serve(&docs.index, &req))
}

pub async fn images(State(face): State<Arc<Face>>, req: Request) -> Reply {
    let docs = face.streams.get(&face, face.public_only(&req)?).await?;
    Ok(serve(&docs.products, &req))
}

/// The document, or 304 when the client has it already.
fn serve(doc: &Doc, req: &Request) -> Response {
    let private = req.headers().contains_key(header::AUTHORIZATION);
    let cache = HeaderValue::from_static(if private {
        "private, no-cache"
    } else {
        "no-cache"
    });
    let fresh = doc
        .etag
        .to_str()
        .is_ok_and(|etag| imagestore_server::http::has_etag(req.headers(), etag));
    let headers = [
        (header::ETAG, doc.etag.clone()),
        (header::CACHE_CONTROL, cache),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.body.clone(),
    )
        .into_response()
}

fn make(version: u64, images: &[Image]) -> serde_json::Result<Docs> {
    let products = products(images);
    let index = Index {
        format: "index:1.0".into(),
        index: BTreeMap::from([(
            "images".to_owned(),
            IndexEntry {
                datatype: IMAGE_DOWNLOADS.into(),
                path: PRODUCTS_PATH.into(),
                format: "products:1.0".into(),
                products: products.products.keys().cloned().collect(),
            },
        )]),
    };
    Ok(Docs {
        version,
        index: Doc::new(serde_json::to_vec(&index)?),
        products: Doc::new(serde_json::to_vec(&products)?),
    })
}

/// A property, when set.
fn prop<'a>(image: &'a Image, key: &str) -> Option<&'a str> {
    image
        .properties
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The products of these images. A product is `os:release:variant:arch` from
/// the image's properties (with fallbacks, so that every image appears). Since
/// clients give a product's aliases to its newest image of each type, and an
/// imagestore alias names exactly one image, an image with aliases is a product
/// of its own (`os:release:variant:arch:first-alias`); images without aliases
/// share theirs as versions.
fn products(images: &[Image]) -> Products {
    let mut products: BTreeMap<String, Product> = BTreeMap::new();
    for image in images {
        let Some(items) = items(image) else { continue };
        let arch = debian_architecture(&image.architecture).to_owned();
        let os = prop(image, "os").unwrap_or("image").to_owned();
        let release = prop(image, "release")
            .unwrap_or(&image.fingerprint[..12])
            .to_owned();
        let variant = prop(image, "variant").unwrap_or("default").to_owned();
        let requirements: BTreeMap<String, String> = image
            .properties
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("requirements.")?.to_owned(), v.clone())))
            .collect();
        let mut id = format!("{os}:{release}:{variant}:{arch}");
        if let Some(first) = image.aliases.first() {
            id = format!("{id}:{}", first.name);
        }
        let product = products.entry(id).or_insert_with(|| Product {
            aliases: image
                .aliases
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            release_title: prop(image, "release_title").unwrap_or(&release).to_owned(),
            arch,
            os,
            release,
            variant,
            version: prop(image, "version").unwrap_or_default().to_owned(),
            requirements: requirements.clone(),
            lxd_requirements: requirements,
            versions: BTreeMap::new(),
        });
        let mut name = version_name(image.created_at.unwrap_or(image.uploaded_at));
        if product.versions.contains_key(&name) {
            // Same minute, same product: still one version each.
            name = format!("{name}_{}", &image.fingerprint[..12]);
        }
        product.versions.insert(
            name,
            Version {
                items,
                label: prop(image, "label").unwrap_or_default().to_owned(),
            },
        );
    }
    Products {
        content_id: "images".into(),
        datatype: IMAGE_DOWNLOADS.into(),
        format: "products:1.0".into(),
        products,
    }
}

/// `YYYYMMDD_HHMM` (UTC): both clients read the creation date from the first
/// eight characters.
fn version_name(at: imagestore_catalog::UnixNanos) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(at.max(0) as u64);
    let text = humantime::format_rfc3339_seconds(at).to_string(); // 2024-01-31T12:34:56Z
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    format!("{}_{}", &digits[..8], &digits[8..12])
}

/// The items of one image's version: for a unified image a combined item per
/// client; for a split image a metadata item per client, each carrying the
/// fingerprint in the field the rootfs's ftype calls for, and the rootfs item.
fn items(image: &Image) -> Option<BTreeMap<String, Item>> {
    let file = |role: PartRole, ftype: &str| {
        let part = image.parts.iter().find(|p| p.role == role)?;
        Some(Item {
            ftype: ftype.to_owned(),
            path: file_path(image, part),
            sha256: part.sha256.clone(),
            size: part.size,
            extra: BTreeMap::new(),
        })
    };
    let vm = image.image_type == ImageType::VirtualMachine;
    let mut items = BTreeMap::new();
    match image.layout {
        Layout::Unified => {
            for client in Client::ALL {
                let mut item = file(PartRole::Unified, client.combined_ftype())?;
                if vm {
                    item.extra
                        .insert(COMBINED_TYPE.into(), "virtual-machine".into());
                }
                items.insert(client.combined_ftype().to_owned(), item);
            }
        }
        Layout::Split => {
            let rootfs = image.parts.iter().find(|p| p.role == PartRole::Rootfs)?;
            let root = root_for(vm, rootfs.extension == ".squashfs");
            for client in Client::ALL {
                let mut item = file(PartRole::Metadata, client.meta_ftype())?;
                for field in root.fields {
                    item.extra
                        .insert((*field).to_owned(), image.fingerprint.clone().into());
                }
                items.insert(client.meta_ftype().to_owned(), item);
            }
            items.insert(root.ftype.to_owned(), file(PartRole::Rootfs, root.ftype)?);
        }
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore_catalog::{AliasRef, Part};
    use imagestore_simplestreams::candidates;

    fn image(fp: char, layout: Layout, vm: bool, aliases: &[&str]) -> Image {
        let fingerprint = fp.to_string().repeat(64);
        let part = |role, sha: char, ext: &str| Part {
            role,
            sha256: sha.to_string().repeat(64),
            size: 10,
            storage_key: format!("blobs/{fp}/"),
            extension: ext.into(),
        };
        let parts = match layout {
            Layout::Unified => vec![Part {
                sha256: fingerprint.clone(),
                ..part(PartRole::Unified, fp, ".tar.gz")
            }],
            Layout::Split => vec![
                part(PartRole::Metadata, 'e', ".tar.xz"),
                part(
                    PartRole::Rootfs,
                    'f',
                    if vm { ".qcow2" } else { ".squashfs" },
                ),
            ],
        };
        Image {
            fingerprint,
            image_type: if vm {
                ImageType::VirtualMachine
            } else {
                ImageType::Container
            },
            architecture: "x86_64".into(),
            size: 20,
            filename: String::new(),
            layout,
            parts,
            properties: [("os", "Debian"), ("release", "12")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            public: true,
            auto_update: false,
            cached: false,
            created_at: Some(1_700_000_000_000_000_000),
            uploaded_at: 1_700_000_000_000_000_000,
            last_used_at: None,
            expires_at: None,
            update_source: None,
            aliases: aliases
                .iter()
                .map(|a| AliasRef {
                    name: (*a).into(),
                    description: String::new(),
                })
                .collect(),
            damage: None,
            stores: Vec::new(),
            failed_stores: Vec::new(),
        }
    }

    #[test]
    fn every_client_finds_every_image_with_its_fingerprint() {
        let images = [
            image('a', Layout::Unified, false, &["u"]),
            image('b', Layout::Split, false, &["s"]),
            image('c', Layout::Split, true, &[]),
            image('d', Layout::Split, false, &[]),
        ];
        let products = products(&images);
        for client in Client::ALL {
            let mut found: Vec<(String, bool)> = products
                .products
                .iter()
                .flat_map(|(id, p)| candidates(id, p, &[client]))
                .map(|c| (c.fingerprint, c.vm))
                .collect();
            found.sort();
            let want: Vec<(String, bool)> = images
                .iter()
                .map(|i| {
                    (
                        i.fingerprint.clone(),
                        i.image_type == ImageType::VirtualMachine,
                    )
                })
                .collect();
            assert_eq!(found, want, "{client:?}");
        }
        let ids: Vec<&String> = products.products.keys().collect();
        assert_eq!(
            ids,
            [
                "Debian:12:default:amd64",
                "Debian:12:default:amd64:s",
                "Debian:12:default:amd64:u"
            ]
        );
        let shared = &products.products["Debian:12:default:amd64"];
        assert_eq!(shared.versions.len(), 2, "same minute, two versions");
        assert!(
            shared
                .versions
                .keys()
                .all(|v| v.starts_with("20231114_2213"))
        );
    }

    #[test]
    fn the_same_catalog_makes_the_same_bytes() {
        let images = [
            image('a', Layout::Unified, false, &["u"]),
            image('b', Layout::Split, false, &[]),
        ];
        let one = make(1, &images).unwrap();
        let two = make(1, &images).unwrap();
        assert_eq!(one.products.body, two.products.body);
        assert_eq!(one.index.etag, two.index.etag);
    }
}
