//! simplestreams, the protocol behind LXD's `images:` and `ubuntu:` remotes: an
//! index names products files; a product's versions hold items (metadata
//! tarballs, rootfs files, unified tarballs) with their SHA-256 and, on metadata
//! items, the combined fingerprint of each metadata + rootfs pair. Images are
//! made from items as LXD's and Incus's `Products.ToLXD` make them.
//!
//! Both directions use these types: imagestore reads other servers' trees and
//! serves its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `datatype` of an index entry that lists images.
pub const IMAGE_DOWNLOADS: &str = "image-downloads";

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

/// `streams/v1/index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    #[serde(default, skip_serializing_if = "is_empty")]
    pub format: String,
    #[serde(default)]
    pub index: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexEntry {
    #[serde(default)]
    pub datatype: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub format: String,
    #[serde(default)]
    pub products: Vec<String>,
}

/// A products file (`streams/v1/images.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Products {
    #[serde(default, skip_serializing_if = "is_empty")]
    pub content_id: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub datatype: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub format: String,
    #[serde(default)]
    pub products: BTreeMap<String, Product>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Product {
    /// Comma-separated; clients add `alias/arch` themselves.
    #[serde(default)]
    pub aliases: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub release_title: String,
    #[serde(default)]
    pub variant: String,
    /// Becomes the image's `version` property.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub version: String,
    /// Become `requirements.<key>` properties of the image: Incus reads these,
    /// LXD `lxd_requirements`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requirements: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lxd_requirements: BTreeMap<String, String>,
    #[serde(default)]
    pub versions: BTreeMap<String, Version>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Version {
    #[serde(default)]
    pub items: BTreeMap<String, Item>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub label: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    #[serde(default)]
    pub ftype: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub size: u64,
    /// The combined fingerprints and anything else a server adds.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Item {
    /// A string field beyond the four every item has; None when absent or empty.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.extra
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    }
}

/// Which client reads a tree: each recognises only its own metadata ftypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Lxd,
    Incus,
}

impl Client {
    pub const ALL: [Client; 2] = [Client::Lxd, Client::Incus];

    /// The ftype of a metadata tarball paired with a rootfs item.
    pub fn meta_ftype(self) -> &'static str {
        match self {
            Self::Lxd => "lxd.tar.xz",
            Self::Incus => "incus.tar.xz",
        }
    }

    /// The ftype of a unified tarball.
    pub fn combined_ftype(self) -> &'static str {
        match self {
            Self::Lxd => "lxd_combined.tar.gz",
            Self::Incus => "incus_combined.tar.gz",
        }
    }
}

/// A rootfs ftype a client pairs with a metadata item: the metadata item's field
/// that holds the pair's fingerprint (the first present wins) and the image type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Root {
    pub ftype: &'static str,
    pub fields: &'static [&'static str],
    pub vm: bool,
}

/// In the clients' order of preference.
pub const ROOTS: &[Root] = &[
    Root {
        ftype: "squashfs",
        fields: &["combined_squashfs_sha256"],
        vm: false,
    },
    Root {
        ftype: "root.tar.xz",
        fields: &["combined_rootxz_sha256", "combined_sha256"],
        vm: false,
    },
    Root {
        ftype: "disk-kvm.img",
        fields: &["combined_disk-kvm-img_sha256"],
        vm: true,
    },
    Root {
        ftype: "uefi1.img",
        fields: &["combined_uefi1-img_sha256"],
        vm: true,
    },
    Root {
        ftype: "disk1.img",
        fields: &["combined_disk1-img_sha256"],
        vm: true,
    },
];

/// The ftype a server gives a rootfs: a VM disk, a squashfs, or any tarball (the
/// ftype is a name, not a check: clients sniff what they download).
pub fn root_for(vm: bool, squashfs: bool) -> &'static Root {
    let ftype = match (vm, squashfs) {
        (true, _) => "disk-kvm.img",
        (false, true) => "squashfs",
        (false, false) => "root.tar.xz",
    };
    ROOTS.iter().find(|r| r.ftype == ftype).unwrap_or(&ROOTS[0])
}

/// `combined_type` on a unified item: Incus reads a VM from it.
pub const COMBINED_TYPE: &str = "combined_type";

/// Whether clients read a version with this name: its first 8 characters must
/// be a date (`YYYYMMDD`); others are skipped.
pub fn is_version_name(name: &str) -> bool {
    name.len() >= 8 && name.as_bytes()[..8].iter().all(u8::is_ascii_digit)
}

/// One image a version offers.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub fingerprint: String,
    pub vm: bool,
    /// The metadata item, or the unified item.
    pub meta: Item,
    pub root: Option<Item>,
    /// The rootfs's place in [`ROOTS`] (its length for a unified image).
    pub root_rank: usize,
    pub product: String,
    pub version: String,
}

/// The images `clients` make of a product, as their `ToLXD` makes them: each
/// unified item is one image (its fingerprint the item's sha256); each metadata
/// item pairs with every rootfs item whose combined field it carries.
pub fn candidates(id: &str, product: &Product, clients: &[Client]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (vname, version) in &product.versions {
        if !is_version_name(vname) {
            continue;
        }
        for item in version.items.values() {
            if clients.iter().any(|c| c.combined_ftype() == item.ftype) {
                out.push(Candidate {
                    fingerprint: item.sha256.clone(),
                    vm: item.field(COMBINED_TYPE) == Some("virtual-machine"),
                    meta: item.clone(),
                    root: None,
                    root_rank: ROOTS.len(),
                    product: id.to_owned(),
                    version: vname.clone(),
                });
            } else if clients.iter().any(|c| c.meta_ftype() == item.ftype) {
                for root in version.items.values() {
                    let Some(rank) = ROOTS.iter().position(|r| r.ftype == root.ftype) else {
                        continue;
                    };
                    let Some(fp) = ROOTS[rank].fields.iter().find_map(|f| item.field(f)) else {
                        continue;
                    };
                    out.push(Candidate {
                        fingerprint: fp.to_owned(),
                        vm: ROOTS[rank].vm,
                        meta: item.clone(),
                        root: Some(root.clone()),
                        root_rank: rank,
                        product: id.to_owned(),
                        version: vname.clone(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        serde_json::from_value(serde_json::json!({
            "aliases": "a", "arch": "amd64",
            "versions": {
                "20240101_0000": {"items": {
                    "lxd": {"ftype": "lxd.tar.xz", "path": "m", "sha256": "m", "size": 1,
                            "combined_squashfs_sha256": "c1", "combined_disk-kvm-img_sha256": "v1"},
                    "incus": {"ftype": "incus.tar.xz", "path": "m", "sha256": "m", "size": 1,
                              "combined_squashfs_sha256": "c1"},
                    "root": {"ftype": "squashfs", "path": "r", "sha256": "r", "size": 2},
                    "vm": {"ftype": "disk-kvm.img", "path": "d", "sha256": "d", "size": 3},
                    "u": {"ftype": "incus_combined.tar.gz", "path": "u", "sha256": "u1", "size": 4,
                          "combined_type": "virtual-machine"}
                }},
                "latest": {"items": {
                    "u": {"ftype": "lxd_combined.tar.gz", "path": "u", "sha256": "skipped", "size": 4}
                }}
            }
        }))
        .unwrap()
    }

    fn fingerprints(clients: &[Client]) -> Vec<(String, bool)> {
        let mut out: Vec<_> = candidates("p", &product(), clients)
            .into_iter()
            .map(|c| (c.fingerprint, c.vm))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn each_client_reads_only_its_own_metadata_items() {
        let c = |s: &str, vm| (s.to_owned(), vm);
        assert_eq!(
            fingerprints(&[Client::Lxd]),
            [c("c1", false), c("v1", true)]
        );
        assert_eq!(
            fingerprints(&[Client::Incus]),
            [c("c1", false), c("u1", true)]
        );
    }

    #[test]
    fn serialising_skips_empty_optional_fields_and_keeps_combined_ones() {
        let p = product();
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("requirements").is_none());
        let item = &json["versions"]["20240101_0000"]["items"]["lxd"];
        assert_eq!(item["combined_squashfs_sha256"], "c1");
        let back: Product = serde_json::from_value(json).unwrap();
        assert_eq!(
            back.versions["20240101_0000"].items["lxd"],
            p.versions["20240101_0000"].items["lxd"]
        );
    }

    #[test]
    fn rootfs_ftypes_follow_the_image() {
        assert_eq!(root_for(true, false).ftype, "disk-kvm.img");
        assert_eq!(root_for(false, true).fields, ["combined_squashfs_sha256"]);
        assert_eq!(root_for(false, false).ftype, "root.tar.xz");
    }
}
