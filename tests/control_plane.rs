//! The control plane's image catalog and registry, over gRPC on 127.0.0.1.

use std::collections::{BTreeSet, HashMap};

use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use prost_types::FieldMask;
use tonic::Code;

fn get(name: &str) -> pb::GetImageRequest {
    pb::GetImageRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

#[tokio::test]
async fn registered_image_is_found_by_fingerprint_prefix_and_alias() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut req = unified("busybox unified");
    req.aliases.push(pb::AliasSpec {
        name: "busybox/1.35".into(),
        description: "test".into(),
    });
    req.architecture = "amd64".into();
    let fp = req.fingerprint.clone();
    let image = register(&cp, req).await;
    assert_eq!(image.name, format!("images/{fp}"));
    assert_eq!(
        image.architecture, "x86_64",
        "architecture aliases are normalised"
    );
    assert_eq!(image.r#type, pb::ImageType::Container as i32);
    assert_eq!(image.size, "busybox unified".len() as u64);
    assert_eq!(image.aliases[0].name, "busybox/1.35");
    assert!(image.upload_time.is_some());
    assert_eq!(image.create_time.unwrap().seconds, 1_700_000_000);

    let mut images = cp.images().await;
    for name in [
        format!("images/{fp}"),
        format!("images/{}", &fp[..12]),
        format!("images/{}", &fp[..40]),
        "aliases/busybox/1.35".to_string(),
    ] {
        let got = images.get_image(get(&name)).await.unwrap().into_inner();
        assert_eq!(got, image, "looked up as {name}");
    }
    // Type-aware alias resolution (LXD's --vm).
    let vm = images
        .get_image(pb::GetImageRequest {
            name: "aliases/busybox/1.35".into(),
            r#type: pb::ImageType::VirtualMachine as i32,
            ..Default::default()
        })
        .await;
    assert_status(vm, Code::NotFound, "not for type \"virtual-machine\"");
    cp.stop().await;
}

#[tokio::test]
async fn split_image_keeps_both_parts_in_fingerprint_order() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let req = split(b"abc", b"def", pb::ImageType::VirtualMachine);
    // LXD's vector: sha256("abc" || "def").
    assert_eq!(
        req.fingerprint,
        "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
    );
    let image = register(&cp, req).await;
    assert_eq!(image.layout, pb::ImageLayout::Split as i32);
    assert_eq!(image.r#type, pb::ImageType::VirtualMachine as i32);
    assert_eq!(image.size, 6);
    let roles: Vec<i32> = image.parts.iter().map(|p| p.role).collect();
    assert_eq!(
        roles,
        [pb::PartRole::Metadata as i32, pb::PartRole::Rootfs as i32]
    );
    assert_eq!(image.parts[0].sha256, sha256_hex(b"abc"));
    cp.stop().await;
}

#[tokio::test]
async fn malformed_and_unknown_names_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let fp = register(&cp, unified("one")).await.fingerprint;
    let mut images = cp.images().await;
    let cases: Vec<(String, Code, &str)> = vec![
        (
            "".into(),
            Code::InvalidArgument,
            "expected \"images/{fingerprint}\"",
        ),
        ("images/".into(), Code::InvalidArgument, "expected"),
        (fp.clone(), Code::InvalidArgument, "expected"),
        (format!("image/{fp}"), Code::InvalidArgument, "expected"),
        (
            format!("images/{}", &fp[..11]),
            Code::InvalidArgument,
            "at least 12",
        ),
        (
            format!("images/{}", fp.to_uppercase()),
            Code::InvalidArgument,
            "lowercase hexadecimal",
        ),
        (
            format!("images/{fp}0"),
            Code::InvalidArgument,
            "longer than 64",
        ),
        (
            "images/%%%%%%%%%%%%".into(),
            Code::InvalidArgument,
            "lowercase hexadecimal",
        ),
        (
            format!("images/{}", "z".repeat(600)),
            Code::InvalidArgument,
            "the most is 512",
        ),
        ("aliases/".into(), Code::InvalidArgument, "expected"),
        ("aliases/a b".into(), Code::InvalidArgument, "not valid"),
        (
            "images/0123456789abcdef".into(),
            Code::NotFound,
            "not found",
        ),
        (
            format!("images/{}", "0".repeat(64)),
            Code::NotFound,
            "not found",
        ),
        ("aliases/nope".into(), Code::NotFound, "not found"),
    ];
    for (name, code, needle) in cases {
        let status = images.get_image(get(&name)).await.expect_err(&name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(needle), "{name}: {status:?}");
    }
    let bad_type = images
        .get_image(pb::GetImageRequest {
            name: format!("images/{fp}"),
            r#type: 99,
            ..Default::default()
        })
        .await;
    assert_status(bad_type, Code::InvalidArgument, "unknown image type");
    cp.stop().await;
}

#[tokio::test]
async fn ambiguous_prefix_is_refused_and_a_longer_one_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    // Two fingerprints sharing their first 12 characters: build them directly.
    let base = fingerprint_with_prefix("", "ambiguous");
    let a = format!("{}{}", &base[..12], "0".repeat(52));
    let b = format!("{}{}", &base[..12], "1".repeat(52));
    register(&cp, unified_with_fingerprint(&a, 1)).await;
    register(&cp, unified_with_fingerprint(&b, 2)).await;
    let mut images = cp.images().await;
    let status = assert_status(
        images
            .get_image(get(&format!("images/{}", &base[..12])))
            .await,
        Code::FailedPrecondition,
        "more than one image matches",
    );
    assert!(status.message().contains(&a) && status.message().contains(&b));
    let got = images
        .get_image(get(&format!("images/{}", &b[..13])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.fingerprint, b);
    cp.stop().await;
}

#[tokio::test]
async fn register_content_is_idempotent_under_concurrent_calls() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let req = unified("same bytes, many nodes");
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(cp.registry().await);
    }
    let calls = clients.into_iter().map(|mut c| {
        let req = req.clone();
        tokio::spawn(async move { c.register_content(req).await.unwrap().into_inner() })
    });
    let replies: Vec<ipb::RegisterContentResponse> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(replies.iter().filter(|r| r.created).count(), 1);
    let first = replies[0].image.clone().unwrap();
    assert!(replies.iter().all(|r| r.image.as_ref() == Some(&first)));
    let all = cp
        .images()
        .await
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.images.len(), 1);
    cp.stop().await;
}

#[tokio::test]
async fn register_content_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut registry = cp.registry().await;
    let good = unified("good");
    let mut cases: Vec<(ipb::RegisterContentRequest, &str)> = Vec::new();
    let mut r = good.clone();
    r.fingerprint = "abc".into();
    cases.push((r, "too short"));
    let mut r = good.clone();
    r.architecture = "sparc".into();
    cases.push((r, "architecture isn't supported: \"sparc\""));
    let mut r = good.clone();
    r.r#type = pb::ImageType::Unspecified as i32;
    cases.push((r, "type is required"));
    let mut r = good.clone();
    r.layout = pb::ImageLayout::Split as i32;
    cases.push((r, "a split image has parts"));
    let mut r = good.clone();
    r.parts[0].sha256 = sha256_hex(b"other");
    cases.push((r, "the file hashes to"));
    let mut r = good.clone();
    r.parts[0].storage_key.clear();
    cases.push((r, "not a part prefix of the storage layout"));
    let mut r = good.clone();
    r.parts[0].storage_key = "blobs/../etc/".into();
    cases.push((r, "not a part prefix of the storage layout"));
    let mut r = good.clone();
    r.objects.clear();
    cases.push((r, "object lists were sent"));
    let mut r = good.clone();
    r.objects[0].objects[0].key = "blobs/elsewhere/unified/00000000000000000000.t".into();
    cases.push((r, "is not a segment object below"));
    let mut r = good.clone();
    r.objects[0].objects[0].size -= 1;
    cases.push((r, "objects hold"));
    let mut r = good.clone();
    r.parts.clear();
    cases.push((r, "has parts"));
    let mut r = good.clone();
    r.aliases.push(pb::AliasSpec {
        name: "-bad".into(),
        description: String::new(),
    });
    cases.push((r, "alias name \"-bad\" is not valid"));
    let mut r = good.clone();
    r.properties.insert("bad key".into(), "v".into());
    cases.push((r, "property \"bad key\""));
    let mut r = good.clone();
    r.create_time = Some(prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    cases.push((r, "out of range"));
    for (req, needle) in cases {
        assert_status(
            registry.register_content(req).await,
            Code::InvalidArgument,
            needle,
        );
    }
    // Nothing was half-registered by any of them.
    let list = cp
        .images()
        .await
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.images.is_empty());
    cp.stop().await;
}

#[tokio::test]
async fn list_filters_like_lxc_image_list() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut ubuntu = unified("ubuntu");
    ubuntu.properties = HashMap::from([
        ("os".into(), "Ubuntu".into()),
        ("description".into(), "Ubuntu Noble server".into()),
    ]);
    ubuntu.public = true;
    ubuntu.aliases.push(pb::AliasSpec {
        name: "ubuntu/24.04".into(),
        description: String::new(),
    });
    let ubuntu = register(&cp, ubuntu).await.fingerprint;
    let mut vm = split(b"meta", b"qcow2", pb::ImageType::VirtualMachine);
    vm.architecture = "arm64".into();
    let vm = register(&cp, vm).await.fingerprint;
    let busybox = register(&cp, unified("busybox")).await.fingerprint;

    let mut images = cp.images().await;
    let mut list = async |filter: &str| -> BTreeSet<String> {
        images
            .list_images(pb::ListImagesRequest {
                filter: filter.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .map(|i| i.fingerprint)
            .collect()
    };
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(list("").await, set(&[&ubuntu, &vm, &busybox]));
    assert_eq!(
        list(&ubuntu[..8]).await,
        set(&[&ubuntu]),
        "fingerprint prefix"
    );
    assert_eq!(list("24.04").await, set(&[&ubuntu]), "alias name");
    assert_eq!(list("noble").await, set(&[&ubuntu]), "description");
    assert_eq!(list("os=ubuntu").await, set(&[&ubuntu]), "case-insensitive");
    assert_eq!(list("os=ubu").await, set(&[]), "anchored");
    assert_eq!(list("os=ubuntu,debian").await, set(&[&ubuntu, &vm]));
    assert_eq!(list("type=virtual-machine").await, set(&[&vm]));
    assert_eq!(list("architecture=aarch64").await, set(&[&vm]));
    assert_eq!(list("architecture=x86_64").await, set(&[&ubuntu, &busybox]));
    assert_eq!(list("architecture=amd64").await, set(&[&ubuntu, &busybox]));
    assert_eq!(list("public=true").await, set(&[&ubuntu]));
    assert_eq!(list("public=false os=busybox").await, set(&[&busybox]));
    assert_eq!(list("layout=split").await, set(&[&vm]));
    assert_eq!(list("properties.os=debian").await, set(&[&vm]));
    assert_eq!(list("nothing-matches").await, set(&[]));

    for (filter, needle) in [("=x", "has no key"), ("properties.=x", "names no property")] {
        let r = images
            .list_images(pb::ListImagesRequest {
                filter: filter.into(),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, needle);
    }
    let huge = images
        .list_images(pb::ListImagesRequest {
            filter: "x".repeat(5000),
            ..Default::default()
        })
        .await;
    assert_status(huge, Code::InvalidArgument, "the most is 4096");
    cp.stop().await;
}

#[tokio::test]
async fn pagination_is_stable_and_tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut expected: Vec<String> = Vec::new();
    for i in 0..7 {
        expected.push(
            register(&cp, unified(&format!("image {i}")))
                .await
                .fingerprint,
        );
    }
    expected.sort();
    let mut images = cp.images().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = images
            .list_images(pb::ListImagesRequest {
                page_size: 3,
                page_token: token.clone(),
                filter: "os=busybox".into(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.images.len() <= 3);
        seen.extend(page.images.into_iter().map(|i| i.fingerprint));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // An image registered mid-listing does not disturb the pages already given.
        if pages == 1 {
            let extra = register(&cp, unified("late arrival")).await.fingerprint;
            expected.push(extra);
            expected.sort();
            expected.retain(|fp| *fp > seen[2] || seen.contains(fp));
            expected.sort();
        }
    }
    assert_eq!(pages, 3);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in fingerprint order, no repeats"
    );
    assert_eq!(seen, expected);

    let first = images
        .list_images(pb::ListImagesRequest {
            page_size: 1,
            filter: "os=busybox".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let replay = images
        .list_images(pb::ListImagesRequest {
            page_size: 1,
            page_token: first.next_page_token,
            filter: "os=other".into(),
        })
        .await;
    assert_status(replay, Code::InvalidArgument, "page_token is not valid");
    let garbage = images
        .list_images(pb::ListImagesRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await;
    assert_status(garbage, Code::InvalidArgument, "page_token is not valid");
    let negative = images
        .list_images(pb::ListImagesRequest {
            page_size: -1,
            ..Default::default()
        })
        .await;
    assert_status(
        negative,
        Code::InvalidArgument,
        "page_size must not be negative",
    );
    cp.stop().await;
}

#[tokio::test]
async fn update_changes_only_what_lxd_lets_change() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let original = register(&cp, unified("editable")).await;
    let name = original.name.clone();
    let mut images = cp.images().await;
    let update = |image: pb::Image, paths: &[&str]| pb::UpdateImageRequest {
        image: Some(image),
        update_mask: mask(paths),
    };

    let mut change = pb::Image {
        name: name.clone(),
        public: true,
        auto_update: true,
        architecture: "aarch64".into(),
        ..Default::default()
    };
    change.properties.insert("release".into(), "1.36".into());
    let updated = images
        .update_image(update(change.clone(), &["public", "properties.release"]))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.public);
    assert!(!updated.auto_update, "auto_update was not in the mask");
    assert_eq!(
        updated.architecture, "x86_64",
        "read-only fields keep their value"
    );
    assert_eq!(updated.properties["release"], "1.36");
    assert_eq!(
        updated.properties["os"], "busybox",
        "other properties are kept"
    );
    assert_ne!(updated.etag, original.etag);

    // Removing one property: an empty value in the mask's key.
    let removed = images
        .update_image(update(
            pb::Image {
                name: name.clone(),
                ..Default::default()
            },
            &["properties.os"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!removed.properties.contains_key("os"));

    // Replacing the map drops empty values, as LXD.
    let mut replace = pb::Image {
        name: name.clone(),
        ..Default::default()
    };
    replace.properties.insert("a".into(), "1".into());
    replace.properties.insert("b".into(), "".into());
    let replaced = images
        .update_image(update(replace, &["properties"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replaced.properties,
        HashMap::from([("a".into(), "1".into())])
    );

    // expire_time: a new value replaces it; none keeps it (LXD never clears it).
    let when = prost_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 5,
    };
    let expiring = images
        .update_image(update(
            pb::Image {
                name: name.clone(),
                expire_time: Some(when),
                ..Default::default()
            },
            &["expire_time"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expiring.expire_time, Some(when));
    let kept = images
        .update_image(update(
            pb::Image {
                name: name.clone(),
                ..Default::default()
            },
            &["expire_time"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.expire_time, Some(when));

    // A stale etag is refused; the current one works.
    let stale = images
        .update_image(update(
            pb::Image {
                name: name.clone(),
                etag: original.etag.clone(),
                ..Default::default()
            },
            &["public"],
        ))
        .await;
    assert_status(stale, Code::FailedPrecondition, "changed since it was read");
    let fresh = images
        .update_image(update(
            pb::Image {
                name: name.clone(),
                etag: kept.etag.clone(),
                public: false,
                ..Default::default()
            },
            &["public"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.public);

    for (paths, needle) in [
        (vec![], "update_mask is empty"),
        (vec!["fingerprint"], "cannot be changed"),
        (vec!["architecture"], "cannot be changed"),
        (vec!["aliases"], "Aliases service"),
        (vec!["no_such_field"], "unknown field"),
        (vec!["properties."], "names no key"),
    ] {
        let r = images
            .update_image(update(
                pb::Image {
                    name: name.clone(),
                    ..Default::default()
                },
                &paths,
            ))
            .await;
        assert_status(r, Code::InvalidArgument, needle);
    }
    let no_image = images.update_image(pb::UpdateImageRequest::default()).await;
    assert_status(no_image, Code::InvalidArgument, "image is required");
    let missing = images
        .update_image(update(
            pb::Image {
                name: format!("images/{}", "f".repeat(64)),
                ..Default::default()
            },
            &["public"],
        ))
        .await;
    assert_status(missing, Code::NotFound, "not found");
    cp.stop().await;
}

#[tokio::test]
async fn delete_removes_aliases_and_releases_only_unshared_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    // Two split images sharing one metadata tarball (a container and a VM, as one
    // simplestreams version yields).
    let mut container = split(b"shared-meta", b"squashfs", pb::ImageType::Container);
    container.aliases.push(pb::AliasSpec {
        name: "c".into(),
        description: String::new(),
    });
    let vm = split(b"shared-meta", b"qcow2", pb::ImageType::VirtualMachine);
    let shared_key = container.parts[0].storage_key.clone();
    let container_root = container.parts[1].storage_key.clone();
    let container = register(&cp, container).await;
    let vm = register(&cp, vm).await;

    let mut images = cp.images().await;
    let deleted = images
        .delete_image(pb::DeleteImageRequest {
            name: "aliases/c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.fingerprint, container.fingerprint);
    assert_eq!(deleted.released_storage_keys, vec![container_root]);
    assert_status(
        images.get_image(get(&container.name)).await,
        Code::NotFound,
        "not found",
    );
    let alias = cp
        .aliases()
        .await
        .get_alias(pb::GetAliasRequest {
            name: "aliases/c".into(),
            ..Default::default()
        })
        .await;
    assert_status(alias, Code::NotFound, "not found");

    let last = images
        .delete_image(pb::DeleteImageRequest {
            name: vm.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut released = last.released_storage_keys.clone();
    released.sort();
    let mut want = vec![shared_key, vm.parts[1].storage_key.clone()];
    want.sort();
    assert_eq!(released, want);
    assert_status(
        images
            .delete_image(pb::DeleteImageRequest { name: vm.name })
            .await,
        Code::NotFound,
        "not found",
    );
    cp.stop().await;
}

#[tokio::test]
async fn blob_nodes_register_heartbeat_and_are_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut registry = cp.registry().await;
    let image = register(&cp, split(b"m", b"r", pb::ImageType::Container)).await;
    let mut images = cp.images().await;
    let export = pb::ExportImageRequest {
        name: image.name.clone(),
        ..Default::default()
    };
    assert_status(
        images.export_image(export.clone()).await,
        Code::Unavailable,
        "no healthy blob node",
    );

    let reply = registry
        .register_node(ipb::RegisterNodeRequest {
            stores: Vec::new(),
            node_id: "node-a".into(),
            address: "http://127.0.0.1:7444".into(),
            capacity_bytes: 100,
            available_bytes: 50,
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.heartbeat_interval_seconds > 0);
    assert!(reply.node.unwrap().healthy);
    registry
        .heartbeat(ipb::HeartbeatRequest {
            node_id: "node-a".into(),
            available_bytes: 40,
            active_transfers: 2,
            healthy: true,
        })
        .await
        .unwrap();
    let nodes = registry
        .list_nodes(ipb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].available_bytes, 40);
    assert_eq!(nodes[0].active_transfers, 2);

    let plan = images
        .export_image(export.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.blob_node, "http://127.0.0.1:7444");
    let names: Vec<&str> = plan.files.iter().map(|f| f.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("meta-{}.tar.xz", image.fingerprint),
            format!("{}.squashfs", image.fingerprint)
        ]
    );

    // A node that says it is unhealthy is not handed out.
    registry
        .heartbeat(ipb::HeartbeatRequest {
            node_id: "node-a".into(),
            healthy: false,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_status(
        images.export_image(export).await,
        Code::Unavailable,
        "no healthy blob node",
    );

    assert_status(
        registry
            .heartbeat(ipb::HeartbeatRequest {
                node_id: "never-registered".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "call RegisterNode first",
    );
    for (id, address, needle) in [
        ("", "http://127.0.0.1:1", "node_id"),
        ("bad id", "http://127.0.0.1:1", "node_id"),
        ("ok", "", "not a URL"),
        ("ok", "127.0.0.1:7444", "not a URL"),
        ("ok", "ftp://127.0.0.1:7444", "not a URL"),
        ("ok", "http://127.0.0.1", "not a URL"),
    ] {
        let r = registry
            .register_node(ipb::RegisterNodeRequest {
                stores: Vec::new(),
                node_id: id.into(),
                address: address.into(),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, needle);
    }
    cp.stop().await;
}

#[tokio::test]
async fn nothing_is_lost_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut req = unified("durable");
    req.public = true;
    req.aliases.push(pb::AliasSpec {
        name: "durable".into(),
        description: "kept".into(),
    });
    let image = register(&cp, req).await;
    cp.registry()
        .await
        .register_node(ipb::RegisterNodeRequest {
            stores: Vec::new(),
            node_id: "n1".into(),
            address: "http://127.0.0.1:7444".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let op = cp
        .catalog
        .create_operation("Downloading image".into(), true)
        .await
        .unwrap();
    cp.stop().await;

    let cp = ControlPlane::start(dir.path()).await;
    let again = cp
        .images()
        .await
        .get_image(get("aliases/durable"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, image);
    let nodes = cp
        .registry()
        .await
        .list_nodes(ipb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes[0].node_id, "n1");
    let op_again = cp
        .operations()
        .await
        .get_operation(pb::GetOperationRequest {
            name: format!("operations/{}", op.id),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op_again.description, "Downloading image");
    cp.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |c| c.max_request_bytes = 64 * 1024).await;
    let mut req = unified("big");
    req.properties.insert("blob".into(), "x".repeat(100 * 1024));
    let status = cp
        .registry()
        .await
        .register_content(req)
        .await
        .expect_err("a request over the limit must fail");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("larger than this server takes (65536 bytes)"),
        "{status:?}"
    );
    // A property value under the message limit but over the property limit.
    let mut req = unified("big value");
    req.properties.insert("blob".into(), "x".repeat(20 * 1024));
    assert_status(
        cp.registry().await.register_content(req).await,
        Code::InvalidArgument,
        "the most is 16384",
    );
    cp.stop().await;
}

/// Past max_concurrent_requests, one more request is shed at once with
/// RESOURCE_EXHAUSTED (not queued), and served again once a place is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_limit_are_shed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(dir.path(), |c| c.max_concurrent_requests = 2).await;
    let fp = register(&cp, unified("shed")).await.fingerprint;
    // Two long polls hold both places for up to 30 s. A hold that arrives
    // while a probe below has the other place is shed itself: it asks again.
    let mut holds = Vec::new();
    for n in 0..2 {
        let mut registry = cp.registry().await;
        holds.push(tokio::spawn(async move {
            loop {
                let held = registry
                    .claim_import(ipb::ClaimImportRequest {
                        stores: Vec::new(),
                        node_id: format!("holder-{n}"),
                        wait_seconds: 30,
                    })
                    .await;
                match held {
                    Err(s) if s.code() == Code::ResourceExhausted => tokio::task::yield_now().await,
                    other => return other,
                }
            }
        }));
    }
    let images = cp.images().await;
    let get = || {
        let mut images = images.clone();
        let fp = fp.clone();
        async move {
            images
                .get_image(pb::GetImageRequest {
                    name: format!("images/{fp}"),
                    ..Default::default()
                })
                .await
        }
    };
    eventually("both places to be taken", || async {
        matches!(get().await, Err(s) if s.code() == Code::ResourceExhausted)
    })
    .await;
    let started = std::time::Instant::now();
    let shed = get().await.expect_err("over the limit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "shed at once, not queued"
    );
    assert!(
        shed.message().contains("limit of 2 requests at once"),
        "{shed:?}"
    );
    for hold in &holds {
        hold.abort();
    }
    eventually("a place to be free again", || async { get().await.is_ok() }).await;
    cp.stop().await;
}

/// `count` public images with 16 KiB descriptions of "a", "needle" added where
/// `needle(i)`: (fingerprint, whether it has the needle).
async fn costly_images(
    cp: &ControlPlane,
    count: usize,
    needle: impl Fn(usize) -> bool,
) -> Vec<(String, bool)> {
    let description = "a".repeat(16 * 1024 - 16);
    let mut out = Vec::new();
    for i in 0..count {
        let mut req = unified(&format!("costly image {i}"));
        req.public = true;
        let text = if needle(i) {
            format!("{description} needle")
        } else {
            description.clone()
        };
        req.properties.insert("description".into(), text);
        out.push((register(cp, req).await.fingerprint, needle(i)));
    }
    out
}

/// 31 words every costly image's description holds, then one that only the
/// needles hold: a filter that must read 31 × 16 KiB of each image.
fn costly_filter() -> String {
    format!("{} needle", vec!["aaaa"; 31].join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costly_filter_is_cut_into_bounded_pages_and_still_finds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    // The filter reads 31 × 16 KiB of each image before it can say no; two
    // images have the needle.
    let mut wanted = costly_images(&cp, 100, |i| i % 50 == 7).await;
    wanted.retain(|(_, needle)| *needle);
    let mut wanted: Vec<String> = wanted.into_iter().map(|(fp, _)| fp).collect();
    wanted.sort();
    let filter = costly_filter();
    let mut images = pb::images_client::ImagesClient::new(cp.authed(None).await);
    let (mut found, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = images
            .list_images(pb::ListImagesRequest {
                filter: filter.clone(),
                page_size: 10,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        found.extend(page.images.into_iter().map(|i| i.fingerprint));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 100, "the listing does not end");
    }
    assert_eq!(found, wanted);
    assert!(
        pages > 1,
        "100 × 31 × 16 KiB is over one request's budget, so it takes more than one page"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_load_does_not_hold_up_trusted_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    // Each listing with the costly filter costs as much as its budget allows.
    let (fingerprint, _) = costly_images(&cp, 150, |_| false).await.remove(0);
    let filter = costly_filter();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut strangers = Vec::new();
    for _ in 0..4 {
        let filter = filter.clone();
        let channel = cp.authed(None).await;
        strangers.push(tokio::spawn(async move {
            let mut images = pb::images_client::ImagesClient::new(channel);
            let (mut served, mut refused) = (0u32, 0u32);
            while std::time::Instant::now() < until && served + refused < 10_000 {
                let r = images
                    .list_images(pb::ListImagesRequest {
                        filter: filter.clone(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => served += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
                    Err(s) => panic!("an anonymous listing failed: {s:?}"),
                }
            }
            (served, refused)
        }));
    }
    let mut images = cp.images().await;
    let mut latencies = Vec::new();
    while std::time::Instant::now() < until && latencies.len() < 100_000 {
        let started = std::time::Instant::now();
        images
            .get_image(pb::GetImageRequest {
                name: format!("images/{fingerprint}"),
                ..Default::default()
            })
            .await
            .unwrap();
        latencies.push(started.elapsed());
    }
    let mut served = 0;
    for s in strangers {
        served += s.await.unwrap().0;
    }
    assert!(served > 0, "the anonymous load ran");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < std::time::Duration::from_millis(50),
        "trusted GetImage p99 {p99:?} over {} calls beside {served} costly anonymous listings",
        latencies.len()
    );
    eprintln!(
        "trusted GetImage p99 {p99:?} over {} calls beside {served} anonymous listings",
        latencies.len()
    );
    cp.stop().await;
}

/// Two control planes over one catalog (replicas): a long poll on one wakes
/// for a change the other made, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_one_control_plane_sees_a_change_made_on_another() {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let one = ControlPlane::start(dir.path()).await;
    let two = ControlPlane::start(dir.path()).await;
    let op = one
        .catalog
        .create_operation("a change made elsewhere".into(), true)
        .await
        .unwrap();
    let mut stream = two
        .operations()
        .await
        .wait_operation(pb::WaitOperationRequest {
            name: format!("operations/{}", op.id),
            timeout_seconds: 20,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.done, "{first:?}");
    let changed = std::time::Instant::now();
    one.catalog.cancel_operation(op.id.clone()).await.unwrap();
    let mut last = first;
    while let Some(next) = stream.next().await {
        last = next.unwrap();
        if last.done {
            break;
        }
    }
    assert!(last.done, "{last:?}");
    assert_eq!(last.state, pb::OperationState::Cancelled as i32);
    assert!(
        changed.elapsed() < std::time::Duration::from_secs(1),
        "seen by the other replica {:?} after the change",
        changed.elapsed()
    );
    two.stop().await;
    one.stop().await;
}

/// A blob node given two control planes over one catalog (replicas) keeps
/// working when the one it talks to dies: an upload session opened on that one
/// completes through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_node_moves_to_another_control_plane_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let one = ControlPlane::start(&dir.path().join("cp")).await;
    let two = ControlPlane::start(&dir.path().join("cp")).await;
    let both = format!("{},{}", one.url(), two.url());
    let store = StoreSpec::local(&dir.path().join("store"));
    let node = BlobNode::start_with(&one, &dir.path().join("node"), &store, move |c| {
        c.control_plane = both;
    })
    .await;
    let data = fixture("busybox-unified.tar.gz");
    let session = one
        .uploads()
        .await
        .create_upload(pb::CreateUploadRequest {
            spec: Some(pb::UploadSpec {
                layout: pb::ImageLayout::Unified as i32,
                metadata_size: data.len() as u64,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    one.stop().await;

    // The node claims, commits and registers through the other replica; the
    // client, told of the death, asks the other one for its ticket.
    let done = send_upload(
        &two,
        &node.url(),
        upload_messages(
            pb::upload_request::FirstMessage::Upload(session.name.clone()),
            &[&data],
            64 * 1024,
        ),
    )
    .await
    .unwrap();
    let fp = lxd_fingerprint("fx-unified-targz");
    assert_eq!(done.image.unwrap().fingerprint, fp);
    let image = two
        .images()
        .await
        .get_image(pb::GetImageRequest {
            name: format!("images/{fp}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(image.size, data.len() as u64);
    node.stop().await;
    two.stop().await;
}

/// A client given two control planes over one catalog (replicas) goes on when
/// the one it talks to dies: its calls move to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_another_control_plane_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let one = ControlPlane::start(&dir.path().join("cp")).await;
    let two = ControlPlane::start(&dir.path().join("cp")).await;
    let both = format!("{},{}", one.url(), two.url());
    let store = StoreSpec::local(&dir.path().join("store"));
    let node_sees = both.clone();
    let node = BlobNode::start_with(&one, &dir.path().join("node"), &store, move |c| {
        c.control_plane = node_sees;
    })
    .await;
    let client = imagestore_client::Client::connect_with(
        &both,
        Some(&one.admin_token()),
        imagestore_client::TlsOptions::default(),
    )
    .await
    .unwrap();
    let listed = |client: imagestore_client::Client| async move {
        client
            .images()
            .list_images(pb::ListImagesRequest::default())
            .await
            .map(|r| r.into_inner().images.len())
    };
    assert_eq!(listed(client.clone()).await.unwrap(), 0);
    one.stop().await;

    // The first call after the death may fail (it is not replayed); the next
    // goes to the other replica, and so does a whole upload.
    let _ = listed(client.clone()).await;
    assert_eq!(listed(client.clone()).await.unwrap(), 0);
    let file = dir.path().join("busybox.tar.gz");
    std::fs::write(&file, fixture("busybox-unified.tar.gz")).unwrap();
    let image = client
        .upload(
            &imagestore_client::Source::Unified(file),
            &imagestore_client::UploadOptions::default(),
            std::sync::Arc::new(imagestore_client::NoProgress),
        )
        .await
        .unwrap();
    assert_eq!(image.fingerprint, lxd_fingerprint("fx-unified-targz"));
    assert_eq!(listed(client).await.unwrap(), 1);
    node.stop().await;
    two.stop().await;
}
