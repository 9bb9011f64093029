//! The parsers that take what a stranger sends, called the same way by the fuzz
//! targets (tests/fuzz) and by the bounded property run (tests/properties.rs):
//! each must end in a value or an error of its own kind, within its limits, and
//! never panic. A broken invariant panics, which is how both report it.

use std::collections::BTreeMap;

use imagestore_auth::{Scope, TicketKey};
use imagestore_catalog::{
    AliasRef, CatalogError, Image, ImageFilter, ImageType, Layout, PageRequest,
};
use imagestore_image::{ScanError, ScanLimits, scan_tarball};
use imagestore_simplestreams::{Client, Products, candidates};

/// Small limits, so that a run spends its time on many inputs.
const LIMITS: ScanLimits = ScanLimits {
    max_decompressed: 1 << 20,
    max_ratio: 0,
    max_entries: 1000,
    whole: true,
};

/// An image tarball (unified, or a split image's metadata tarball), and the
/// same bytes as a split image's rootfs tarball.
pub fn tarball(data: &[u8]) {
    let _ = imagestore_image::check_rootfs_tarball(data, LIMITS);
    for need_rootfs in [true, false] {
        match scan_tarball(data, need_rootfs, LIMITS) {
            Ok(scanned) => {
                imagestore_image::validate_properties(&scanned.metadata.properties)
                    .expect("a scanned image's properties follow the rules");
                assert!(
                    imagestore_image::canonical_architecture(&scanned.metadata.architecture)
                        .is_some()
                );
            }
            // Reading from memory cannot fail: every error is about the bytes.
            Err(ScanError::Io(e)) => panic!("an in-memory read failed: {e}"),
            Err(_) => {}
        }
    }
}

/// metadata.yaml.
pub fn metadata(data: &[u8]) {
    if let Ok(m) = imagestore_image::parse_metadata(data) {
        imagestore_image::validate_properties(&m.properties)
            .expect("parsed properties follow the rules");
        assert!(m.creation_date > 0);
    }
}

/// A VM disk or a container rootfs, by its first bytes.
pub fn disk(data: &[u8]) {
    for vm in [true, false] {
        let _ = imagestore_image::inspect_rootfs(vm, data);
    }
}

fn sample_image() -> Image {
    Image {
        fingerprint: "01a4a9962e8e8bc3b6e3ceb25fecc2de0898b677ab1135aefc0986507e397294".into(),
        image_type: ImageType::Container,
        architecture: "x86_64".into(),
        size: 1,
        filename: "busybox.tar.gz".into(),
        layout: Layout::Unified,
        parts: Vec::new(),
        properties: BTreeMap::from([
            ("os".into(), "busybox".into()),
            (
                "description".into(),
                "BusyBox 1.35.0 static test image".into(),
            ),
        ]),
        public: true,
        auto_update: false,
        cached: false,
        created_at: None,
        uploaded_at: 0,
        last_used_at: None,
        expires_at: None,
        update_source: None,
        aliases: vec![AliasRef {
            name: "busybox/1.35".into(),
            description: String::new(),
        }],
        damage: None,
        stores: vec!["local".into()],
        failed_stores: Vec::new(),
    }
}

/// A ListImages filter, parsed and run against an image within a budget.
pub fn filter(text: &str) {
    match ImageFilter::parse(text) {
        Ok(filter) => {
            let mut budget = 1 << 20;
            let _ = filter.matches_within(&sample_image(), &mut budget);
            assert!(budget <= 1 << 20);
        }
        Err(CatalogError::InvalidArgument(_)) => {}
        Err(e) => panic!("a filter is refused as invalid, not with {e:?}"),
    }
}

/// A page token from a stranger.
pub fn page_token(text: &str) {
    match PageRequest::new(10, text, "images|true|") {
        Ok(page) => assert!(text.is_empty() || page.after.is_some()),
        Err(CatalogError::InvalidArgument(_)) => {}
        Err(e) => panic!("a token is refused as invalid, not with {e:?}"),
    }
}

/// A ticket nobody issued opens nothing.
pub fn ticket(text: &str) {
    let key = TicketKey::derive("hostile inputs");
    let scope = Scope::Download("0".repeat(64));
    assert!(
        key.check(text, &scope).is_err(),
        "a ticket this key never issued was taken: {text:?}"
    );
}

/// A simplestreams products document, read as LXD and Incus read it.
pub fn products(data: &[u8]) {
    let Ok(products) = serde_json::from_slice::<Products>(data) else {
        return;
    };
    for (id, product) in &products.products {
        for client in Client::ALL {
            for c in candidates(id, product, &[client]) {
                assert_eq!(c.product, *id);
                assert!(product.versions.contains_key(&c.version));
            }
        }
    }
}

/// LXD's URL-import discovery answer, as headers a server sent.
pub fn lxd_discovery(hash: &[u8], location: &[u8]) {
    use reqwest::header::{HeaderMap, HeaderValue};
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(hash) {
        headers.insert("lxd-image-hash", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(location) {
        headers.insert("incus-image-url", v);
    }
    let answered = url::Url::parse("https://images.example.net/images/x").unwrap();
    if let Ok((hash, url)) =
        imagestore_fetch::lxd::discovery(&answered, reqwest::StatusCode::OK, &headers)
    {
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(url.has_host() || url.scheme() != "https");
    }
}
