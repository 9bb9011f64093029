//! `imagestore serve`: the whole system in one process, on one address.

use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use pb::upload_request::FirstMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_both_tiers_on_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start_until(
        &binary("imagestore"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
        Some("registered with the control plane"),
    )
    .await;
    let url = server.url();

    let list = tokio::process::Command::new(grpcurl())
        .args(["-plaintext", &server.addr.to_string(), "list"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    for service in [
        "imagestore.v1.Images",
        "imagestore.v1.Uploads",
        "imagestore.v1.Blobs",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} in {listed}"
        );
    }

    let data = fixture("busybox-unified.tar.gz");
    let served = External {
        url: url.clone(),
        data_dir: dir.path().to_owned(),
    };
    let session = served
        .uploads()
        .await
        .create_upload(pb::CreateUploadRequest {
            spec: Some(pb::UploadSpec {
                layout: pb::ImageLayout::Unified as i32,
                aliases: vec![pb::AliasSpec {
                    name: "busybox".into(),
                    description: String::new(),
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        session.blob_node, url,
        "the one address serves the bytes too"
    );
    let reply = send_upload(
        &served,
        &session.blob_node,
        upload_messages(FirstMessage::Upload(session.name), &[&data], 1 << 20),
    )
    .await
    .unwrap();
    assert_eq!(reply.image.unwrap().fingerprint, sha256_hex(&data));
    let image = served
        .images()
        .await
        .get_image(pb::GetImageRequest {
            name: "aliases/busybox".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, back) = download(&served, &url, &image.fingerprint, pb::PartRole::Unified, 0)
        .await
        .unwrap();
    assert!(back == data);
    assert!(dir.path().join("control-plane/catalog.sqlite").exists());
    assert!(dir.path().join("blobs").is_dir());
    // Metadata, secrets and bytes are the owner's alone.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    for private_dir in ["control-plane", "blob-node", "blobs"] {
        assert_eq!(mode(&dir.path().join(private_dir)), 0o700, "{private_dir}");
    }
    for secret in [
        "control-plane/catalog.sqlite",
        "admin-token",
        "cluster-credential",
    ] {
        assert_eq!(mode(&dir.path().join(secret)), 0o600, "{secret}");
    }
    let stored = files_below(&dir.path().join("blobs"));
    assert!(!stored.is_empty());
    for file in stored {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let stopped = server.terminate().await;
    assert!(stopped.status.success());
}
