//! Scrubbing end to end: a real control plane and blob node over TLS, real LXD
//! images in a local directory store, bytes damaged behind the server's back.
//! A damaged image is found (on demand and by the background scrubber), marked,
//! logged, and refused everywhere it could be served, naming both hashes; once
//! its bytes are sound again it is served again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::http::StatusCode;
use imagestore_proto::v1 as pb;
use imagestore_tests::https::{HttpVersion, TlsCluster};
use imagestore_tests::*;
use tonic::Code;

/// The files a part is stored as, in offset order (their names sort so).
fn part_files(w: &TlsCluster, part: &pb::ImagePart) -> Vec<PathBuf> {
    let mut files = files_below(&w.dir.path().join("store").join(&part.storage_key));
    files.sort();
    assert!(!files.is_empty(), "no files for {}", part.storage_key);
    files
}

fn hash_files(files: &[PathBuf]) -> String {
    let all: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    sha256_hex(&all)
}

/// Flips one byte in the middle of `file`.
fn flip(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

/// Runs Images.VerifyImage and follows its operation to the end.
async fn verify(w: &TlsCluster, fingerprint: &str) -> pb::Operation {
    use tokio_stream::StreamExt;
    let op =
        w.cp.images()
            .await
            .verify_image(pb::VerifyImageRequest {
                name: format!("images/{fingerprint}"),
            })
            .await
            .unwrap()
            .into_inner();
    let mut last = op;
    while !last.done {
        let mut stream =
            w.cp.operations()
                .await
                .wait_operation(pb::WaitOperationRequest {
                    name: last.name.clone(),
                    timeout_seconds: 20,
                })
                .await
                .unwrap()
                .into_inner();
        while let Some(next) = stream.next().await {
            last = next.unwrap();
        }
    }
    last
}

async fn get(w: &TlsCluster, fingerprint: &str) -> pb::Image {
    w.cp.images()
        .await
        .get_image(pb::GetImageRequest {
            name: format!("images/{fingerprint}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A download ticket made with the cluster's key: the control plane issues
/// none for a damaged image, but one issued before it was found still works.
fn ticket(w: &TlsCluster, fingerprint: &str) -> String {
    let key = imagestore_auth::TicketKey::derive(&w.cp.cluster_credential());
    key.issue(
        &imagestore_auth::Scope::Download(fingerprint.to_owned()),
        Duration::from_secs(60),
    )
    .0
}

/// Downloads the unified part from the node over TLS, with a ticket.
async fn download_unified(w: &TlsCluster, fingerprint: &str) -> Result<Vec<u8>, tonic::Status> {
    use tokio_stream::StreamExt;
    let ticket = ticket(w, fingerprint);
    let mut blobs = w.admin().await.blobs(&w.nodes[0].url()).await.unwrap();
    let mut stream = blobs
        .download(pb::DownloadRequest {
            fingerprint: fingerprint.to_owned(),
            part: pb::PartRole::Unified as i32,
            ticket,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(msg) = stream.next().await {
        data.extend_from_slice(&msg?.data);
    }
    Ok(data)
}

/// What the HTTPS face answers for `url`: status and LXD's error text, if any.
async fn http_answer(w: &TlsCluster, url: &str) -> (StatusCode, String) {
    let resp = w.https(HttpVersion::Http1).get(url).send().await.unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_image_is_found_marked_and_served_nowhere_until_sound_again() {
    let w = TlsCluster::start(1).await;
    let (unified, split) = w.upload_fixtures().await;
    let fp = unified.fingerprint.clone();
    let files = part_files(&w, &unified.parts[0]);

    // Sound bytes verify.
    let op = verify(&w, &fp).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    assert!(get(&w, &fp).await.damage.is_none());

    // One flipped byte: found, named by both hashes, and marked.
    flip(&files[0]);
    let found = hash_files(&files);
    let op = verify(&w, &fp).await;
    assert_eq!(op.state, pb::OperationState::Failed as i32, "{op:?}");
    let error = op.error.unwrap();
    assert_eq!(error.code, Code::DataLoss as i32);
    assert!(
        error.message.contains(&fp) && error.message.contains(&found),
        "{}",
        error.message
    );
    let image = get(&w, &fp).await;
    let damage = image.damage.expect("marked damaged");
    assert_eq!(damage.part, pb::PartRole::Unified as i32);
    assert_eq!(damage.expected_sha256, fp);
    assert_eq!(damage.found_sha256, found);
    assert_eq!(damage.found_size, unified.size);
    let listed =
        w.cp.images()
            .await
            .list_images(pb::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images;
    let in_list = listed.iter().find(|i| i.fingerprint == fp).unwrap();
    assert!(in_list.damage.is_some(), "visible in list");
    assert!(
        listed
            .iter()
            .any(|i| i.fingerprint == split.fingerprint && i.damage.is_none())
    );

    // Served nowhere: export, the blob node's download and both HTTP faces.
    let export =
        w.cp.images()
            .await
            .export_image(pb::ExportImageRequest {
                name: format!("images/{fp}"),
                ..Default::default()
            })
            .await;
    assert_status(export, Code::DataLoss, &found);
    let node = w.nodes[0].url();
    let refused = download_unified(&w, &fp).await;
    assert_status(refused, Code::DataLoss, &found);
    let name = format!("{fp}.tar.gz");
    let (status, body) = http_answer(&w, &format!("{}/files/{fp}/{name}", w.cp.url())).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains(&found) && body.contains("damaged"), "{body}");
    let ticket = ticket(&w, &fp);
    let (status, body) =
        http_answer(&w, &format!("{node}/blobs/{fp}/{name}?ticket={ticket}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains(&found), "{body}");
    let (status, index) = http_answer(&w, &format!("{}/streams/v1/images.json", w.cp.url())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!index.contains(&fp), "a damaged image is not offered");
    assert!(index.contains(&split.fingerprint), "the sound one still is");

    // Bytes made sound again (restored from a backup): verified, served again.
    flip(&files[0]);
    let op = verify(&w, &fp).await;
    assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
    assert!(get(&w, &fp).await.damage.is_none());
    let back = download_unified(&w, &fp).await.unwrap();
    assert!(back == fixture("busybox-unified.tar.gz"));

    // A missing object is damage too, and says which.
    let rootfs = part_files(&w, &split.parts[1]);
    std::fs::remove_file(&rootfs[0]).unwrap();
    let op = verify(&w, &split.fingerprint).await;
    let error = op.error.unwrap();
    assert_eq!(error.code, Code::DataLoss as i32, "{}", error.message);
    assert!(error.message.contains("is missing"), "{}", error.message);
    let damage = get(&w, &split.fingerprint).await.damage.unwrap();
    assert_eq!(damage.part, pb::PartRole::Rootfs as i32);

    // Only trusted callers may ask; an unknown image is NOT_FOUND.
    let anonymous = pb::images_client::ImagesClient::new(w.cp.authed(None).await)
        .verify_image(pb::VerifyImageRequest {
            name: format!("images/{fp}"),
        })
        .await;
    assert!(anonymous.is_err());
    let unknown =
        w.cp.images()
            .await
            .verify_image(pb::VerifyImageRequest {
                name: format!("images/{}", "0".repeat(64)),
            })
            .await;
    assert_status(unknown, Code::NotFound, "not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrubber_finds_damage_and_collects_strays_on_its_own() {
    let w = TlsCluster::start_with(
        1,
        |c| c.scrub_every = Duration::from_millis(200),
        |c| {
            c.scrub_bytes_per_second = 64 << 20;
            c.stray_grace = Duration::from_secs(60);
        },
    )
    .await;
    let (unified, split) = w.upload_fixtures().await;

    // A late write of a superseded node, an hour old, and a fresh one.
    let unified_files = part_files(&w, &unified.parts[0]);
    let dir = unified_files[0].parent().unwrap();
    let old = dir.join(format!("{:020}.superseded", 0));
    std::fs::write(&old, b"late").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let fresh = dir.join(format!("{:020}.finishing", 0));
    std::fs::write(&fresh, b"still being written").unwrap();

    let rootfs = part_files(&w, &split.parts[1]);
    flip(&rootfs[0]);
    let found = hash_files(&rootfs);

    let fp = split.fingerprint.clone();
    eventually("the scrubber to find the flipped byte", || {
        let w = &w;
        let fp = fp.clone();
        async move { get(w, &fp).await.damage.is_some() }
    })
    .await;
    let damage = get(&w, &fp).await.damage.unwrap();
    assert_eq!(damage.part, pb::PartRole::Rootfs as i32);
    assert_eq!(damage.expected_sha256, split.parts[1].sha256);
    assert_eq!(damage.found_sha256, found);

    eventually("the old stray to be collected", || {
        let old = old.clone();
        async move { !old.exists() }
    })
    .await;
    assert!(fresh.exists(), "a stray younger than stray_grace stays");
    assert!(unified_files.iter().all(|f| f.exists()), "objects stay");
    assert!(get(&w, &unified.fingerprint).await.damage.is_none());
}
