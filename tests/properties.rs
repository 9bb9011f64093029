//! A bounded property run of the parsers strangers reach (the same entry points
//! as the fuzz targets in tests/fuzz): random and mutated inputs, each must end
//! in a value or an error of its own kind and never panic.

use imagestore_tests::hostile;
use proptest::prelude::*;

/// Cases per property: enough to find the shallow faults on every run, bounded
/// so the suite stays quick; deep runs are the fuzz targets' job.
const CASES: u32 = 512;

/// A small valid image tarball (metadata.yaml and a rootfs/ entry), the seed the
/// mutations start from.
fn seed_tarball() -> Vec<u8> {
    imagestore_tests::https::unified_image("seed", &[("os", "seed"), ("release", "1")])
}

/// Text drawn from the characters these grammars care about.
fn grammar_text(chars: &'static str, max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = chars.chars().collect();
    prop::collection::vec(prop::sample::select(chars), 0..max)
        .prop_map(|cs| cs.into_iter().collect())
}

/// A simplestreams item: any ftype the clients know (and one they do not), a
/// hash-like value, maybe a combined field.
fn item() -> impl Strategy<Value = serde_json::Value> {
    let ftypes = vec![
        "lxd.tar.xz",
        "incus.tar.xz",
        "squashfs",
        "root.tar.xz",
        "disk-kvm.img",
        "lxd_combined.tar.gz",
        "incus_combined.tar.gz",
        "squashfs.vcdiff",
    ];
    let fields = vec![
        "combined_squashfs_sha256",
        "combined_rootxz_sha256",
        "combined_sha256",
        "combined_disk-kvm-img_sha256",
        "combined_type",
    ];
    (
        prop::sample::select(ftypes),
        "[a-f0-9]{0,64}",
        prop::option::of(prop::sample::select(fields)),
        any::<u64>(),
    )
        .prop_map(|(ftype, sha, field, size)| {
            let mut v =
                serde_json::json!({"ftype": ftype, "path": "p", "sha256": sha, "size": size});
            if let Some(f) = field {
                v[f] = serde_json::json!(sha);
            }
            v
        })
}

/// A products document of random products, versions (dated or not) and items.
fn products_json() -> impl Strategy<Value = Vec<u8>> {
    let items = prop::collection::btree_map("[a-z]{1,4}", item(), 0..5);
    let versions = prop::collection::btree_map("[0-9_a-z]{0,14}", items, 0..3);
    prop::collection::btree_map("[a-z0-9:]{1,8}", versions, 0..3).prop_map(|products| {
        let products: serde_json::Map<String, serde_json::Value> = products
            .into_iter()
            .map(|(id, versions)| {
                let versions: serde_json::Map<String, serde_json::Value> = versions
                    .into_iter()
                    .map(|(v, items)| (v, serde_json::json!({ "items": items })))
                    .collect();
                (
                    id,
                    serde_json::json!({"arch": "amd64", "aliases": "a,b", "versions": versions}),
                )
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "products": products })).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn tarballs_of_random_bytes(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        hostile::tarball(&data);
    }

    #[test]
    fn tarballs_with_flipped_bytes(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = seed_tarball();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        let end = cut.index(data.len() + 1);
        hostile::tarball(&data[..end]);
    }

    #[test]
    fn metadata_yaml(text in grammar_text("ab:- \n'\"[]{}&*!|>#0123456789.", 400)) {
        hostile::metadata(text.as_bytes());
    }

    #[test]
    fn metadata_yaml_of_random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        hostile::metadata(&data);
    }

    #[test]
    fn disks(data in prop::collection::vec(any::<u8>(), 0..600)) {
        hostile::disk(&data);
    }

    #[test]
    fn filters(text in grammar_text("ab=,.*+?()[]{}|^$\\\\ os properties.x", 200)) {
        hostile::filter(&text);
    }

    #[test]
    fn page_tokens(text in "[A-Za-z0-9_=+/-]{0,120}") {
        hostile::page_token(&text);
    }

    #[test]
    fn tickets(text in grammar_text("v1.0123456789abcdef-_ABCZ", 160)) {
        hostile::ticket(&text);
    }

    #[test]
    fn products_documents(data in products_json()) {
        hostile::products(&data);
    }

    #[test]
    fn products_of_random_text(text in grammar_text("{}[]\":,0123456789abproductsversionsitems ", 300)) {
        hostile::products(text.as_bytes());
    }

    #[test]
    fn lxd_discovery_answers(
        hash in grammar_text("0123456789abcdefABCDEF \t", 70),
        location in grammar_text("htps:/.example%?#..\\@[]0123456789", 80),
    ) {
        hostile::lxd_discovery(hash.as_bytes(), location.as_bytes());
    }
}
