//! Importing from a simplestreams server (the format is imagestore-simplestreams):
//! read its products, pick the image a name means for an architecture as LXD
//! does, and plan the download of its files.

use std::collections::BTreeMap;

use imagestore_image::canonical_architecture;
use imagestore_proto::v1 as pb;
use imagestore_simplestreams::{
    Candidate, Client, IMAGE_DOWNLOADS, Index, Product, Products, candidates,
};
use url::Url;

use crate::{FetchError, Fetcher, PartSource, Plan, PlannedPart, Role, ServerInfo, parse_url};

/// The base URL with a trailing slash, so that relative paths join below it.
fn base(server: &str) -> Result<Url, FetchError> {
    let mut s = server.trim().to_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    parse_url(&s)
}

fn join(base: &Url, path: &str) -> Result<Url, FetchError> {
    if path.is_empty() || path.starts_with('/') || path.contains("://") || path.contains("..") {
        return Err(FetchError::Invalid(format!(
            "the simplestreams item path {path:?} is not a relative path below the server"
        )));
    }
    base.join(path)
        .map_err(|e| FetchError::Invalid(format!("item path {path:?}: {e}")))
}

/// Reads the server's products (every image-downloads products file).
pub async fn products(fetcher: &Fetcher, base: &Url) -> Result<Products, FetchError> {
    let index: Index = fetcher
        .get_json(&join(base, "streams/v1/index.json")?)
        .await?;
    let mut all = Products::default();
    for entry in index.index.values() {
        if entry.datatype != IMAGE_DOWNLOADS || entry.products.is_empty() {
            continue;
        }
        let p: Products = fetcher.get_json(&join(base, &entry.path)?).await?;
        all.products.extend(p.products);
    }
    Ok(all)
}

/// Picks the image `name` names (an alias, `alias/arch`, or a fingerprint prefix)
/// for `arch`, preferring a container unless `want_vm`.
fn pick(
    products: &Products,
    name: &str,
    arch: &str,
    want_vm: bool,
) -> Result<(Candidate, bool), FetchError> {
    let mut by_alias = Vec::new();
    let mut by_fingerprint = Vec::new();
    for (id, product) in &products.products {
        let product_arch = canonical_architecture(&product.arch).unwrap_or(&product.arch);
        let named = product.aliases.split(',').map(str::trim).any(|a| {
            !a.is_empty()
                && ((a == name && product_arch == arch) || format!("{a}/{}", product.arch) == name)
        });
        // An imagestore import reads both clients' items.
        for c in candidates(id, product, &Client::ALL) {
            if named {
                by_alias.push(c);
            } else if !name.is_empty() && c.fingerprint.starts_with(name) {
                by_fingerprint.push(c);
            }
        }
    }
    let (mut found, alias) = if by_alias.is_empty() {
        let mut fps: Vec<&str> = by_fingerprint
            .iter()
            .map(|c| c.fingerprint.as_str())
            .collect();
        fps.sort_unstable();
        fps.dedup();
        if fps.len() > 1 {
            return Err(FetchError::Invalid(format!(
                "More than one match for the provided partial fingerprint {name:?}"
            )));
        }
        (by_fingerprint, false)
    } else {
        (by_alias, true)
    };
    // A container unless a VM is asked for; LXD tries the container first.
    let wanted: Vec<Candidate> = found.iter().filter(|c| c.vm == want_vm).cloned().collect();
    if !wanted.is_empty() || want_vm {
        found = wanted;
    }
    found.sort_by(|a, b| {
        b.version
            .cmp(&a.version)
            .then(a.root_rank.cmp(&b.root_rank))
    });
    found.into_iter().next().map(|c| (c, alias)).ok_or_else(|| {
        FetchError::NotFound(format!(
            "The requested image couldn't be found: no {} image for {name:?} ({arch})",
            if want_vm {
                "virtual-machine"
            } else {
                "container"
            }
        ))
    })
}

/// Resolves a simplestreams source.
pub async fn plan(
    fetcher: &Fetcher,
    source: &pb::SimplestreamsSource,
    want_vm: bool,
    server: &ServerInfo,
) -> Result<Plan, FetchError> {
    let base = base(&source.server)?;
    fetcher.filter().check_url(&base)?;
    let pin = Some(source.certificate_sha256.as_str()).filter(|p| !p.is_empty());
    let pinned = fetcher.pinned(pin)?;
    let fetcher = &pinned;
    let name = source.image.trim();
    if name.is_empty() {
        return Err(FetchError::Invalid(
            "the simplestreams source names no image: give an alias or fingerprint".into(),
        ));
    }
    let arch = if source.architecture.is_empty() {
        server.architectures.first().cloned().unwrap_or_default()
    } else {
        canonical_architecture(&source.architecture)
            .map(str::to_owned)
            .ok_or_else(|| {
                FetchError::Invalid(format!(
                    "architecture {:?} is not one LXD knows",
                    source.architecture
                ))
            })?
    };
    let products = products(fetcher, &base).await?;
    let (chosen, by_alias) = pick(&products, name, &arch, want_vm)?;
    let product = &products.products[&chosen.product];

    let mut parts = Vec::new();
    let meta_role = if chosen.root.is_some() {
        Role::Metadata
    } else {
        Role::Unified
    };
    for (role, item) in std::iter::once((meta_role, &chosen.meta))
        .chain(chosen.root.as_ref().map(|r| (Role::Rootfs, r)))
    {
        parts.push(PlannedPart {
            role,
            source: match pin {
                None => PartSource::Http(join(&base, &item.path)?),
                Some(_) => PartSource::Pinned(join(&base, &item.path)?, pinned.clone()),
            },
            sha256: Some(item.sha256.clone()).filter(|s| !s.is_empty()),
            size: Some(item.size).filter(|&s| s > 0),
        });
    }
    let (properties, source_aliases) = describe(product, &chosen, &arch);
    let image_type = if chosen.vm {
        pb::ImageType::VirtualMachine
    } else {
        pb::ImageType::Container
    };
    Ok(Plan {
        fingerprint: chosen.fingerprint.clone(),
        split: chosen.root.is_some(),
        parts,
        filename: chosen
            .meta
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned(),
        properties,
        source_aliases: source_aliases
            .into_iter()
            .map(|name| pb::AliasSpec {
                name,
                description: String::new(),
            })
            .collect(),
        update_source: by_alias.then(|| pb::UpdateSource {
            server: source.server.clone(),
            protocol: "simplestreams".into(),
            alias: name.to_owned(),
            certificate: source.certificate_sha256.to_ascii_lowercase(),
            image_type: image_type as i32,
        }),
        image_type: Some(image_type),
    })
}

/// What LXD records of a simplestreams image: its properties (os, release,
/// description, ...) and the aliases its product gives (`alias`, for the
/// server's own architecture `arch`, and `alias/arch`).
fn describe(
    product: &Product,
    chosen: &Candidate,
    arch: &str,
) -> (BTreeMap<String, String>, Vec<String>) {
    let version = &product.versions[&chosen.version];
    let root_type = chosen
        .root
        .as_ref()
        .map(|r| r.ftype.clone())
        .unwrap_or_else(|| "tar.gz".into());
    let mut description = format!("{} {}", product.os, product.release_title);
    if !version.label.is_empty() {
        description.push_str(&format!(" ({})", version.label));
    }
    if !product.variant.is_empty() {
        description.push_str(&format!(" ({})", product.variant));
    }
    let mut properties: BTreeMap<String, String> = [
        ("os", product.os.clone()),
        ("release", product.release.clone()),
        ("architecture", product.arch.clone()),
        ("label", version.label.clone()),
        ("serial", chosen.version.clone()),
        ("description", description.trim().to_owned()),
        ("variant", product.variant.clone()),
        ("type", root_type),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    properties.retain(|_, v| !v.is_empty());
    let product_arch = canonical_architecture(&product.arch).unwrap_or(&product.arch);
    let mut source_aliases = Vec::new();
    for a in product
        .aliases
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        if product_arch == arch {
            source_aliases.push(a.to_owned());
        }
        source_aliases.push(format!("{a}/{}", product.arch));
    }
    (properties, source_aliases)
}

/// Every image the server offers (the newest version of a product carries its
/// aliases), as imagestore describes images, for browsing (`imagestore list
/// simplestreams-remote:`).
pub async fn catalogue(
    fetcher: &Fetcher,
    server: &str,
    pin: Option<&str>,
    arch: &str,
) -> Result<Vec<pb::Image>, FetchError> {
    let base = base(server)?;
    let fetcher = fetcher.pinned(pin)?;
    let products = products(&fetcher, &base).await?;
    let mut out = Vec::new();
    for (id, product) in &products.products {
        let found = candidates(id, product, &Client::ALL);
        let newest = found.iter().map(|c| c.version.clone()).max();
        let mut seen = std::collections::BTreeSet::new();
        for c in found {
            if !seen.insert(c.fingerprint.clone()) {
                continue;
            }
            let (properties, aliases) = describe(product, &c, arch);
            let aliases = if Some(&c.version) == newest.as_ref() {
                aliases
            } else {
                Vec::new()
            };
            out.push(pb::Image {
                name: format!("images/{}", c.fingerprint),
                r#type: if c.vm {
                    pb::ImageType::VirtualMachine
                } else {
                    pb::ImageType::Container
                } as i32,
                architecture: canonical_architecture(&product.arch)
                    .unwrap_or(&product.arch)
                    .to_owned(),
                size: c.meta.size + c.root.as_ref().map_or(0, |r| r.size),
                properties: properties.into_iter().collect(),
                public: true,
                aliases: aliases
                    .into_iter()
                    .map(|name| pb::AliasRef {
                        name,
                        description: String::new(),
                    })
                    .collect(),
                fingerprint: c.fingerprint,
                ..Default::default()
            });
        }
    }
    out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products() -> Products {
        serde_json::from_value(serde_json::json!({
            "products": {
                "debian:12:amd64:default": {
                    "aliases": "debian/12,debian/bookworm",
                    "arch": "amd64", "os": "Debian", "release": "bookworm",
                    "release_title": "12", "variant": "default",
                    "versions": {
                        "20240101_0000": {"items": {
                            "meta": {"ftype": "lxd.tar.xz", "path": "a/meta.tar.xz", "sha256": "m1", "size": 1,
                                     "combined_squashfs_sha256": "aaaa01", "combined_disk-kvm-img_sha256": "bbbb01"},
                            "root": {"ftype": "squashfs", "path": "a/root.squashfs", "sha256": "r1", "size": 2},
                            "vm": {"ftype": "disk-kvm.img", "path": "a/disk.qcow2", "sha256": "v1", "size": 3}
                        }},
                        "20240202_0000": {"items": {
                            "meta": {"ftype": "lxd.tar.xz", "path": "b/meta.tar.xz", "sha256": "m2", "size": 1,
                                     "combined_squashfs_sha256": "aaaa02"},
                            "root": {"ftype": "squashfs", "path": "b/root.squashfs", "sha256": "r2", "size": 2}
                        }},
                        "junk": {"items": {}}
                    }
                },
                "debian:12:arm64:default": {
                    "aliases": "debian/12", "arch": "arm64",
                    "versions": {"20240303_0000": {"items": {
                        "u": {"ftype": "lxd_combined.tar.gz", "path": "c/u.tar.gz", "sha256": "cccc03", "size": 5}
                    }}}
                }
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_newest_version_of_the_wanted_type_and_architecture_wins() {
        let p = products();
        let (c, alias) = pick(&p, "debian/12", "x86_64", false).unwrap();
        assert!(alias);
        assert_eq!(c.fingerprint, "aaaa02");
        let (c, _) = pick(&p, "debian/12", "x86_64", true).unwrap();
        assert_eq!(c.fingerprint, "bbbb01", "only the older version has a VM");
        let (c, _) = pick(&p, "debian/12", "aarch64", false).unwrap();
        assert_eq!(c.fingerprint, "cccc03");
        let (c, _) = pick(&p, "debian/bookworm/amd64", "aarch64", false).unwrap();
        assert_eq!(c.fingerprint, "aaaa02");
        let (c, alias) = pick(&p, "bbbb", "x86_64", true).unwrap();
        assert!(!alias);
        assert_eq!(c.fingerprint, "bbbb01");
        assert!(matches!(
            pick(&p, "aaaa", "x86_64", false),
            Err(FetchError::Invalid(_))
        ));
        assert!(matches!(
            pick(&p, "ubuntu/24.04", "x86_64", false),
            Err(FetchError::NotFound(_))
        ));
    }

    #[test]
    fn item_paths_stay_below_the_server() {
        let b = base("http://example.net/images").unwrap();
        assert_eq!(
            join(&b, "streams/v1/index.json").unwrap().as_str(),
            "http://example.net/images/streams/v1/index.json"
        );
        for bad in ["/etc/passwd", "../x", "http://evil/x", ""] {
            assert!(join(&b, bad).is_err(), "{bad}");
        }
    }
}
