//! Several named stores (a local directory and a real S3-compatible server on
//! 127.0.0.1): uploads to chosen stores, Glance's copy-image, downloads from
//! whichever store a node reaches, failed stores, locations removed, deletes
//! from everywhere; and the import plugins (conversion with qemu-img, metadata
//! injection).

use std::path::Path;

use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use pb::upload_request::FirstMessage;
use tonic::Code;

const CHUNK: usize = 64 * 1024;

fn stores(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Opens a session with `target`, uploads the split busybox image, and answers
/// what the upload stream answered.
async fn upload_split(
    cp: &ControlPlane,
    target: Option<pb::StoreSelection>,
    meta: &[u8],
    rootfs: &[u8],
) -> Result<pb::UploadResponse, tonic::Status> {
    let session = cp
        .uploads()
        .await
        .create_upload(pb::CreateUploadRequest {
            spec: Some(pb::UploadSpec {
                layout: pb::ImageLayout::Split as i32,
                target,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    send_upload(
        cp,
        &session.blob_node,
        upload_messages(FirstMessage::Upload(session.name), &[meta, rootfs], CHUNK),
    )
    .await
}

/// Asks for a copy of image `fp` to `store`.
async fn copy_to(
    cp: &ControlPlane,
    fp: &str,
    store: &str,
) -> Result<tonic::Response<pb::Operation>, tonic::Status> {
    cp.images()
        .await
        .copy_image(pb::CopyImageRequest {
            name: format!("images/{fp}"),
            target: Some(pb::StoreSelection {
                stores: stores(&[store]),
                ..Default::default()
            }),
        })
        .await
}

/// Healthy nodes that reach `store`, as ListStores says.
async fn nodes_reaching(cp: &ControlPlane, store: &str) -> u32 {
    let listed = cp
        .images()
        .await
        .list_stores(pb::ListStoresRequest {})
        .await
        .unwrap()
        .into_inner();
    listed
        .stores
        .iter()
        .find(|s| s.name == store)
        .map_or(0, |s| s.nodes)
}

/// A node on `local` (the default store), S3 and `flaky`.
async fn start_every_store(
    cp: &ControlPlane,
    data: &Path,
    local: &Path,
    s3: &StoreSpec,
    flaky: &Path,
) -> BlobNode {
    let named = |url: String, options| imagestore_blob_node::config::NamedStore { url, options };
    BlobNode::start_with(cp, data, &StoreSpec::local(local), |c| {
        c.stores
            .insert("s3".into(), named(s3.url.clone(), s3.options.clone()));
        c.stores.insert(
            "flaky".into(),
            named(flaky.display().to_string(), Default::default()),
        );
    })
    .await
}

async fn get(cp: &ControlPlane, fp: &str) -> pb::Image {
    cp.images()
        .await
        .get_image(pb::GetImageRequest {
            name: format!("images/{fp}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Downloads every part through the node ExportImage names; the bytes.
async fn export(cp: &ControlPlane, fp: &str) -> (String, Vec<Vec<u8>>) {
    let exported = cp
        .images()
        .await
        .export_image(pb::ExportImageRequest {
            name: format!("images/{fp}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut parts = Vec::new();
    for part in &exported.image.as_ref().unwrap().parts {
        let role = pb::PartRole::try_from(part.role).unwrap();
        let (info, data) = download(cp, &exported.blob_node, fp, role, 0)
            .await
            .unwrap();
        assert_eq!(sha256_hex(&data), info.sha256);
        parts.push(data);
    }
    (exported.blob_node, parts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_live_in_named_stores_are_copied_served_and_deleted_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("images").await;
    let cp = ControlPlane::start_with(&dir.path().join("cp"), |c| {
        c.stores = stores(&["local", "s3", "flaky"]);
        c.default_store = "local".into();
        c.heartbeat_interval = std::time::Duration::from_secs(1);
    })
    .await;
    let local_dir = dir.path().join("local");
    let flaky_dir = dir.path().join("flaky");
    let node = start_every_store(
        &cp,
        &dir.path().join("n1"),
        &local_dir,
        &s3.store,
        &flaky_dir,
    )
    .await;
    let meta = fixture("busybox-split-meta.tar.xz");
    let rootfs = fixture("busybox-split-rootfs.squashfs");
    let want = sha256_hex(&[meta.clone(), rootfs.clone()].concat());

    // Uploaded to the default store.
    let up = upload_split(&cp, None, &meta, &rootfs).await.unwrap();
    let fp = up.image.unwrap().fingerprint;
    assert_eq!(fp, want);
    assert_eq!(get(&cp, &fp).await.stores, stores(&["local"]));

    // Copied to S3 as an operation; recorded once it matched.
    let op = copy_to(&cp, &fp, "s3").await.unwrap().into_inner();
    let op = wait(&cp, &op).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    assert_eq!(get(&cp, &fp).await.stores, stores(&["local", "s3"]));
    let again = copy_to(&cp, &fp, "s3").await;
    assert_status(again, Code::AlreadyExists, "is in s3 already");
    let listed = cp
        .images()
        .await
        .list_images(pb::ListImagesRequest {
            filter: "store=s3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.images.len(), 1);

    // Served from the local store by the node that reaches both...
    let (_, parts) = export(&cp, &fp).await;
    assert_eq!(parts, vec![meta.clone(), rootfs.clone()]);
    // ... and, once no node reaches the local store, from S3.
    node.stop().await;
    let s3_only = BlobNode::start_with(&cp, &dir.path().join("n2"), &s3.store, |c| {
        c.store_name = "s3".into();
    })
    .await;
    eventually("the stopped node to be passed over", || async {
        nodes_reaching(&cp, "local").await == 0
    })
    .await;
    let (served_by, parts) = export(&cp, &fp).await;
    assert_eq!(served_by, s3_only.url());
    assert_eq!(parts, vec![meta.clone(), rootfs.clone()]);
    s3_only.stop().await;

    let node = start_every_store(
        &cp,
        &dir.path().join("n1"),
        &local_dir,
        &s3.store,
        &flaky_dir,
    )
    .await;
    // The S3-only node is gone: once its heartbeats are stale, only the first
    // node is handed out.
    eventually("the stopped node to be passed over", || async {
        nodes_reaching(&cp, "s3").await == 1 && nodes_reaching(&cp, "local").await == 1
    })
    .await;

    // The CLI: stores listed, an image's stores shown and filtered on, a copy.
    let cli_dir = dir.path().join("cli");
    let token = cp.admin_token();
    let url = cp.url();
    let cli = move |args: Vec<String>| {
        let cli_dir = cli_dir.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            imagestore_cli_ok(&cli_dir, &args)
        })
    };
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    cli(argv(&["remote", "add", "lab", &url, "--token", &token]))
        .await
        .unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_str(
        &cli(argv(&["store", "list", "lab:", "-f", "json"]))
            .await
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = listed.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["local", "s3", "flaky"]);
    assert_eq!(listed[0]["default"], true);
    assert_eq!(listed[1]["nodes"], 1);
    let info = cli(argv(&["info", &format!("lab:{fp}")])).await.unwrap();
    assert!(info.contains("Stores: local, s3"), "{info}");
    let in_s3: Vec<serde_json::Value> = serde_json::from_str(
        &cli(argv(&["list", "lab:", "store=s3", "-f", "json"]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(in_s3.len(), 1);
    assert_eq!(in_s3[0]["stores"], serde_json::json!(["local", "s3"]));
    let none: Vec<serde_json::Value> = serde_json::from_str(
        &cli(argv(&["list", "lab:", "store=flaky", "-f", "json"]))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(none.is_empty());

    // A damaged copy is rewritten from the sound copy in the other store.
    let rootfs_file = files_below(&local_dir)
        .into_iter()
        .find(|f| f.to_string_lossy().contains("/rootfs/"))
        .expect("the rootfs object in the local store");
    let sound = std::fs::read(&rootfs_file).unwrap();
    let mut flipped = sound.clone();
    flipped[100] ^= 0xff;
    std::fs::write(&rootfs_file, &flipped).unwrap();
    let op = cp
        .images()
        .await
        .verify_image(pb::VerifyImageRequest {
            name: format!("images/{fp}"),
        })
        .await
        .unwrap()
        .into_inner();
    let op = wait(&cp, &op).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    assert_eq!(std::fs::read(&rootfs_file).unwrap(), sound, "repaired");
    assert!(get(&cp, &fp).await.damage.is_none());

    // The flaky store goes away under the node: writes to it fail at once.
    std::fs::remove_dir_all(&flaky_dir).unwrap();
    std::fs::write(&flaky_dir, b"not a directory").unwrap();
    let disk = qemu_disk("qcow2", "", "1M");
    let both = Some(pb::StoreSelection {
        stores: stores(&["local", "flaky"]),
        all_stores: false,
        all_stores_must_succeed: Some(true),
    });
    let refused = upload_split(&cp, both, &meta, &disk).await;
    assert_status(refused, Code::Unavailable, "flaky");
    let vm_fp = sha256_hex(&[meta.clone(), disk.clone()].concat());
    let missing = cp
        .images()
        .await
        .get_image(pb::GetImageRequest {
            name: format!("images/{vm_fp}"),
            ..Default::default()
        })
        .await;
    assert_status(missing, Code::NotFound, "not found");
    let lenient = Some(pb::StoreSelection {
        stores: stores(&["local", "flaky"]),
        all_stores: false,
        all_stores_must_succeed: Some(false),
    });
    let kept = upload_split(&cp, lenient, &meta, &disk).await.unwrap();
    let vm = get(&cp, &kept.image.unwrap().fingerprint).await;
    assert_eq!(vm.fingerprint, vm_fp);
    assert_eq!(vm.stores, stores(&["local"]));
    assert_eq!(vm.failed_stores.len(), 1);
    assert_eq!(vm.failed_stores[0].store, "flaky");
    let copied = cli(argv(&[
        "store",
        "copy",
        &format!("lab:{vm_fp}"),
        "--store",
        "s3",
    ]))
    .await
    .unwrap();
    assert!(copied.contains("is in local, s3"), "{copied}");
    let vm = get(&cp, &vm_fp).await;
    assert_eq!(vm.stores, stores(&["local", "s3"]));
    assert_eq!(vm.failed_stores.len(), 1, "flaky is still failed");
    let op = copy_to(&cp, &vm_fp, "flaky").await.unwrap().into_inner();
    let op = wait(&cp, &op).await;
    assert_eq!(op.state, pb::OperationState::Failed as i32, "{op:?}");
    assert!(op.error.unwrap().message.contains("flaky"));
    assert_eq!(get(&cp, &vm_fp).await.stores, stores(&["local", "s3"]));

    // One location goes while another stays; the last one cannot.
    let removed = cp
        .images()
        .await
        .remove_image_location(pb::RemoveImageLocationRequest {
            name: format!("images/{fp}"),
            store: "local".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.stores, stores(&["s3"]));
    let last = cp
        .images()
        .await
        .remove_image_location(pb::RemoveImageLocationRequest {
            name: format!("images/{fp}"),
            store: "s3".into(),
        })
        .await;
    assert_status(last, Code::FailedPrecondition, "only copy");
    let (_, parts) = export(&cp, &fp).await;
    assert_eq!(parts, vec![meta.clone(), rootfs.clone()]);
    let key = &removed.parts[0].storage_key;
    eventually("the local copy to be collected", || async {
        !files_below(&local_dir)
            .iter()
            .any(|f| f.to_string_lossy().contains(&key[6..42]))
    })
    .await;
    // Copied back once the collection is recorded (until then it is refused,
    // so that the collector cannot delete the new copy).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let op = loop {
        match copy_to(&cp, &fp, "local").await {
            Ok(op) => break op.into_inner(),
            Err(s) if s.code() == Code::FailedPrecondition => {
                assert!(s.message().contains("not collected yet"), "{s:?}");
                assert!(tokio::time::Instant::now() < deadline, "{s:?}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    let op = wait(&cp, &op).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    assert_eq!(get(&cp, &fp).await.stores, stores(&["s3", "local"]));
    let (_, parts) = export(&cp, &fp).await;
    assert_eq!(parts, vec![meta.clone(), rootfs.clone()]);

    // Deleting removes it from every store.
    cp.images()
        .await
        .delete_image(pb::DeleteImageRequest {
            name: format!("images/{fp}"),
        })
        .await
        .unwrap();
    let bucket = imagestore_store::BlobStore::open(&s3.store.url, &s3.store.options).unwrap();
    let id = key[6..42].to_owned();
    eventually("the S3 copy to be collected", || {
        let bucket = bucket.clone();
        let id = id.clone();
        async move {
            bucket
                .keys("blobs/")
                .await
                .unwrap()
                .iter()
                .all(|k| !k.contains(&id))
        }
    })
    .await;
    node.stop().await;
    cp.stop().await;
}

/// Public, so that another server can copy it.
async fn make_public(cp: &ControlPlane, fp: &str) {
    cp.images()
        .await
        .update_image(pb::UpdateImageRequest {
            image: Some(pb::Image {
                name: format!("images/{fp}"),
                public: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["public".into()],
            }),
        })
        .await
        .unwrap();
}

fn meta_yaml() -> Vec<u8> {
    fixture("metadata.yaml")
}

/// A unified VM image: a tarball of metadata.yaml and rootfs.img.
fn unified_vm(metadata: &[u8], disk: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metadata.yaml"), metadata).unwrap();
    std::fs::write(dir.path().join("rootfs.img"), disk).unwrap();
    let out = dir.path().join("image.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(dir.path())
        .args(["metadata.yaml", "rootfs.img"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// The file `name` of a gzip tarball, as tar itself extracts it.
fn untar(tarball: &[u8], name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("image.tar.gz");
    std::fs::write(&file, tarball).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&file)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs qemu-img convert as the test's own reference.
fn qemu_convert(disk: &[u8], from: &str, to: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&src, disk).unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", from, "-O", to])
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&dst).unwrap()
}

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A control plane whose imports may reach `source` (its control plane and
/// blob node), with one node.
async fn cluster_with(
    dir: &Path,
    source: Option<(&ControlPlane, &BlobNode)>,
    tweak: impl FnOnce(&mut imagestore_control_plane::ControlPlaneConfig),
) -> (ControlPlane, BlobNode) {
    let ports = source.map_or_else(Vec::new, |(cp, node)| {
        vec![port(&cp.url()), port(&node.url())]
    });
    importing_cluster(dir, ports, tweak).await
}

fn copy_from(server: &ControlPlane, fp: &str) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        source: Some(pb::import_image_request::Source::Remote(pb::RemoteSource {
            server: server.url(),
            image: fp.to_owned(),
            ..Default::default()
        })),
        r#type: pb::ImageType::VirtualMachine as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_plugins_convert_disks_inject_properties_and_leave_nothing_when_they_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (source, source_node) = cluster_with(&dir.path().join("a"), None, |_| {}).await;
    let meta = fixture("busybox-split-meta.tar.xz");
    let qcow2 = qemu_disk("qcow2", "", "1M");
    let up = upload_split(&source, None, &meta, &qcow2).await.unwrap();
    let original = up.image.unwrap().fingerprint;
    make_public(&source, &original).await;

    // To raw, with properties injected.
    let (raw_cp, raw_node) =
        cluster_with(&dir.path().join("b"), Some((&source, &source_node)), |c| {
            c.import.plugins = stores(&["image_conversion", "inject_image_metadata"]);
            c.import.image_conversion.output_format = "raw".into();
            c.import.inject_metadata_properties.inject = [("site".to_owned(), "eu-1".to_owned())]
                .into_iter()
                .collect();
            c.import.inject_metadata_properties.ignore_user_roles = Vec::new();
        })
        .await;
    let op = import(&raw_cp, copy_from(&source, &original)).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    let raw = qemu_convert(&qcow2, "qcow2", "raw");
    let raw_fp = sha256_hex(&[meta.clone(), raw.clone()].concat());
    assert_eq!(op.metadata["fingerprint"], raw_fp);
    assert_eq!(op.metadata["original_fingerprint"], original);
    assert!(
        op.metadata["conversion_cpu_seconds"].parse::<f64>().is_ok(),
        "{op:?}"
    );
    assert!(
        op.metadata["conversion_seconds"].parse::<f64>().is_ok(),
        "{op:?}"
    );
    let image = get(&raw_cp, &raw_fp).await;
    assert_eq!(image.r#type, pb::ImageType::VirtualMachine as i32);
    assert_eq!(image.properties["original_fingerprint"], original);
    assert_eq!(image.properties["site"], "eu-1");
    let (_, parts) = export(&raw_cp, &raw_fp).await;
    assert_eq!(parts, vec![meta.clone(), raw.clone()]);
    make_public(&raw_cp, &raw_fp).await;

    // And back to qcow2 on a third server; the importer is the admin, whom
    // the default ignore_user_roles exempts from injection.
    let (back_cp, back_node) =
        cluster_with(&dir.path().join("c"), Some((&raw_cp, &raw_node)), |c| {
            c.import.plugins = stores(&["inject_image_metadata", "image_conversion"]);
            c.import.image_conversion.output_format = "qcow2".into();
            c.import.inject_metadata_properties.inject = [("region".to_owned(), "us".to_owned())]
                .into_iter()
                .collect();
        })
        .await;
    let op = import(&back_cp, copy_from(&raw_cp, &raw_fp)).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    let qcow2_again = qemu_convert(&raw, "raw", "qcow2");
    let back_fp = sha256_hex(&[meta.clone(), qcow2_again.clone()].concat());
    assert_eq!(op.metadata["fingerprint"], back_fp);
    let image = get(&back_cp, &back_fp).await;
    assert_eq!(image.properties["original_fingerprint"], raw_fp);
    assert!(
        !image.properties.contains_key("region"),
        "the admin is exempt"
    );
    assert_eq!(
        image.properties["site"], "eu-1",
        "the source's properties travel"
    );
    assert_eq!(image.parts[1].extension, ".qcow2");

    // A unified VM image: its rootfs.img is converted inside the tarball.
    let unified = unified_vm(&meta_yaml(), &qcow2);
    let up = send_upload(
        &source,
        &source_node.url(),
        upload_messages(
            FirstMessage::Spec(pb::UploadSpec {
                layout: pb::ImageLayout::Unified as i32,
                public: true,
                ..Default::default()
            }),
            &[&unified],
            CHUNK,
        ),
    )
    .await
    .unwrap();
    let unified_fp = up.image.unwrap().fingerprint;
    let op = import(&raw_cp, copy_from(&source, &unified_fp)).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    assert_eq!(op.metadata["original_fingerprint"], unified_fp);
    let converted_fp = op.metadata["fingerprint"].clone();
    let (_, parts) = export(&raw_cp, &converted_fp).await;
    assert_eq!(sha256_hex(&parts[0]), converted_fp);
    assert_eq!(
        untar(&parts[0], "rootfs.img"),
        raw,
        "qemu-img's own raw disk"
    );
    assert_eq!(untar(&parts[0], "metadata.yaml"), meta_yaml());

    // A plugin that fails leaves no image and no bytes: a qcow2 whose header
    // passes the inspection but that qemu-img cannot open (2^8-byte clusters).
    let (fail_cp, fail_node) =
        cluster_with(&dir.path().join("d"), Some((&source, &source_node)), |c| {
            c.import.plugins = stores(&["image_conversion"]);
        })
        .await;
    let mut odd = qcow2.clone();
    odd[20..24].copy_from_slice(&8u32.to_be_bytes());
    let up = upload_split(&source, None, &meta, &odd).await.unwrap();
    let odd_fp = up.image.unwrap().fingerprint;
    make_public(&source, &odd_fp).await;
    let op = import(&fail_cp, copy_from(&source, &odd_fp)).await;
    assert_eq!(op.state, pb::OperationState::Failed as i32, "{op:?}");
    let error = op.error.unwrap();
    assert!(error.message.contains("image_conversion"), "{error:?}");
    assert!(error.message.contains("qemu-img"), "{error:?}");
    let listed = fail_cp
        .images()
        .await
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.images.is_empty());
    eventually("the failed import's bytes to go", || async {
        files_below(&dir.path().join("d/blobs")).is_empty()
    })
    .await;

    for n in [source_node, raw_node, back_node, fail_node] {
        n.stop().await;
    }
    for c in [source, raw_cp, back_cp, fail_cp] {
        c.stop().await;
    }
}

/// A blob node given only the standard AWS environment reaches S3 with it (an
/// option set through IMAGESTORE_* as `true` included); without credentials it
/// refuses to start, saying what to set, instead of asking a cloud's instance
/// metadata service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_node_takes_s3_credentials_from_the_standard_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("envbucket").await;
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let endpoint = s3.store.options["aws_endpoint"].clone();
    let data = dir.path().join("node");
    let credential = cp.cluster_credential_file();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--control-plane",
        &cp.url(),
        "--cluster-credential-file",
        credential.to_str().unwrap(),
        "--store",
        "s3://envbucket",
    ];
    let node = Process::start(
        &binary("imagestore-blob"),
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_REGION", "us-east-1"),
            ("IMAGESTORE_STORE_OPTIONS__AWS_ALLOW_HTTP", "true"),
        ],
    )
    .await;
    eventually("the node to register", || async {
        nodes_reaching(&cp, "local").await == 1
    })
    .await;
    let image = fixture("busybox-unified.tar.gz");
    let done = send_upload(
        &cp,
        &node.url(),
        upload_messages(
            FirstMessage::Spec(pb::UploadSpec {
                layout: pb::ImageLayout::Unified as i32,
                ..Default::default()
            }),
            &[&image],
            CHUNK,
        ),
    )
    .await
    .unwrap();
    assert!(done.complete);
    let bucket = imagestore_store::BlobStore::open(&s3.store.url, &s3.store.options).unwrap();
    let stored = bucket.keys("blobs/").await.unwrap();
    assert!(!stored.is_empty(), "the bytes are in the bucket");
    node.kill().await;

    // No credentials anywhere: a start-up error that names the fix, at once.
    let mut bare = std::process::Command::new(binary("imagestore-blob"));
    bare.args(args)
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1");
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") && k != "AWS_ENDPOINT_URL" && k != "AWS_REGION" {
            bare.env_remove(k);
        }
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::task::spawn_blocking(move || bare.output().unwrap()),
    )
    .await
    .expect("the node gives up at once")
    .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no S3 credentials"), "{said}");
    assert!(said.contains("instance_credentials"), "{said}");
    cp.stop().await;
}
