//! Server-side imports end to end, all on loopback: a web server speaking LXD's
//! URL protocol, a simplestreams tree built from the LXD fixtures, a second
//! imagestore as a copy source; import filtering, cancel, auto-update, cache expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

/// An answer: headers, body, status.
type Answer = (Vec<(String, String)>, Vec<u8>, StatusCode);

/// What the test web server serves at each path, and what it saw.
#[derive(Default)]
struct Site {
    /// path → (headers to answer with, body)
    routes: HashMap<String, Answer>,
    /// The request headers each path was asked with.
    seen: HashMap<String, HeaderMap>,
    /// Paths served slowly: the first 64 KiB, then nothing until the client goes.
    slow: Vec<String>,
    /// Told when a slow body is dropped (the client closed the connection).
    closed: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

type Shared = Arc<Mutex<Site>>;

async fn serve_site(State(site): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let mut s = site.lock().unwrap();
    s.seen.insert(path.clone(), req.headers().clone());
    let Some((headers, body, status)) = s.routes.get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut r = if s.slow.contains(&path) {
        let closed = s.closed.clone();
        let first = bytes::Bytes::from(body[..64 * 1024].to_vec());
        let stream = futures::stream::unfold(0u8, move |step| {
            let first = first.clone();
            let closed = closed.clone();
            async move {
                if step == 0 {
                    Some((Ok::<_, std::io::Error>(first), 1))
                } else {
                    // Never more: the body stays open until the client drops it.
                    let _guard = CloseGuard(closed);
                    std::future::pending::<()>().await;
                    None
                }
            }
        });
        Response::new(Body::from_stream(stream))
    } else {
        Response::new(Body::from(body))
    };
    *r.status_mut() = status;
    for (k, v) in headers {
        r.headers_mut().insert(
            axum::http::HeaderName::try_from(k).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

struct CloseGuard(Option<tokio::sync::mpsc::UnboundedSender<()>>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(());
        }
    }
}

async fn start_site(site: Shared) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(serve_site).with_state(site);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn route(site: &Shared, path: &str, headers: &[(&str, String)], body: Vec<u8>) {
    site.lock().unwrap().routes.insert(
        path.into(),
        (
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            body,
            StatusCode::OK,
        ),
    );
}

/// At `path`, LXD's answer naming the image: its hash and where to get it.
fn lxd_route(site: &Shared, path: &str, hash: &str, file: &str) {
    let headers = [
        ("LXD-Image-Hash", hash.to_owned()),
        ("LXD-Image-URL", file.to_owned()),
    ];
    route(site, path, &headers, Vec::new());
}

fn url_request(url: String) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        source: Some(pb::import_image_request::Source::Url(pb::UrlSource { url })),
        ..Default::default()
    }
}

fn state(op: &pb::Operation) -> pb::OperationState {
    pb::OperationState::try_from(op.state).unwrap()
}

fn error_code(op: &pb::Operation) -> tonic::Code {
    tonic::Code::from(op.error.as_ref().map(|e| e.code).unwrap_or(0))
}

/// Every file below `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The files under `blobs` that belong to operation `op` ("operations/{id}").
fn files_of(blobs: &Path, op: &str) -> Vec<std::path::PathBuf> {
    let id = op.trim_start_matches("operations/");
    files_under(blobs)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(id))
        .collect()
}

async fn get_image(cp: &ControlPlane, name: &str) -> Result<pb::Image, tonic::Status> {
    cp.images()
        .await
        .get_image(pb::GetImageRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_imports_speak_lxds_protocol_verify_the_hash_and_refuse_forbidden_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let site: Shared = Default::default();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    site.lock().unwrap().closed = Some(closed_tx);
    let addr = start_site(site.clone()).await;
    // A listener on a port the filtering does not allow: it must never be reached.
    let forbidden = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forbidden_port = forbidden.local_addr().unwrap().port();
    let (cp, node) = importing_cluster(dir.path(), vec![addr.port()], |_| {}).await;
    let base = format!("http://{addr}");

    let data = fixture("busybox-unified.tar.gz");
    let fp = lxd_fingerprint("fx-unified-targz");
    route(&site, "/files/busybox.tar.gz", &[], data.clone());
    lxd_route(&site, "/lxd", &fp, "/files/busybox.tar.gz");

    // The LXD protocol: HEAD with the server's headers, then the file.
    let mut req = url_request(format!("{base}/lxd"));
    req.aliases = vec![pb::AliasSpec {
        name: "from-url".into(),
        description: String::new(),
    }];
    let op = import(&cp, req).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert_eq!(op.image, format!("images/{fp}"));
    assert_eq!(op.metadata["fingerprint"], fp);
    let progress = op.progress.clone().unwrap();
    assert_eq!(progress.bytes_done, data.len() as u64, "{progress:?}");
    {
        let s = site.lock().unwrap();
        let asked = &s.seen["/lxd"];
        let arches = asked["lxd-server-architectures"].to_str().unwrap();
        assert!(!arches.is_empty());
        assert_eq!(
            asked["incus-server-architectures"].to_str().unwrap(),
            arches
        );
        assert!(asked.contains_key("lxd-server-version"));
        assert!(asked.contains_key("incus-server-version"));
    }
    let image = get_image(&cp, "aliases/from-url").await.unwrap();
    assert_eq!(image.fingerprint, fp);
    assert!(
        image.update_source.is_none(),
        "URL imports never auto-update"
    );
    let (_, bytes) = download(&cp, &node.url(), &fp, pb::PartRole::Unified, 0)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&bytes), fp);

    // Incus's header names, and an absolute image URL.
    cp.images()
        .await
        .delete_image(pb::DeleteImageRequest {
            name: format!("images/{fp}"),
        })
        .await
        .unwrap();
    route(
        &site,
        "/incus",
        &[
            ("Incus-Image-Hash", fp.clone()),
            ("Incus-Image-URL", format!("{base}/files/busybox.tar.gz")),
        ],
        Vec::new(),
    );
    let op = import(&cp, url_request(format!("{base}/incus"))).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert_eq!(
        get_image(&cp, &format!("images/{fp}"))
            .await
            .unwrap()
            .fingerprint,
        fp
    );

    // A wrong hash: refused with both hashes, and nothing kept.
    let wrong = sha256_hex(b"something else");
    lxd_route(&site, "/wrong", &wrong, "/files/busybox.tar.gz");
    cp.images()
        .await
        .delete_image(pb::DeleteImageRequest {
            name: format!("images/{fp}"),
        })
        .await
        .unwrap();
    let op = import(&cp, url_request(format!("{base}/wrong"))).await;
    assert_eq!(state(&op), pb::OperationState::Failed);
    assert_eq!(error_code(&op), tonic::Code::DataLoss, "{op:?}");
    let message = &op.error.as_ref().unwrap().message;
    assert!(
        message.contains(&wrong) && message.contains(&fp),
        "{message}"
    );
    for name in [format!("images/{fp}"), format!("images/{wrong}")] {
        assert_eq!(
            get_image(&cp, &name).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    eventually("the failed import's bytes to go", || {
        let left = files_of(&dir.path().join("blobs"), &op.name);
        async move { left.is_empty() }
    })
    .await;

    // Missing headers.
    route(&site, "/plain", &[], b"hello".to_vec());
    let op = import(&cp, url_request(format!("{base}/plain"))).await;
    assert_eq!(state(&op), pb::OperationState::Failed);
    assert!(
        op.error
            .as_ref()
            .unwrap()
            .message
            .contains("Missing LXD-Image-Hash"),
        "{op:?}"
    );

    // SSRF: refused before anything connects.
    for url in [
        format!("http://127.0.0.1:{forbidden_port}/x"),
        format!("http://127.0.0.2:{}/x", addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/x".to_owned(),
        // IPv6 forms that carry the metadata address (NAT64, 6to4).
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/".to_owned(),
        "http://[2002:a9fe:a9fe::]/latest/meta-data/".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let e = imports(&cp)
            .await
            .import_image(url_request(url.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{url}: {e:?}");
        assert!(
            e.message().contains("import filtering") || e.message().contains("URL"),
            "{url}: {}",
            e.message()
        );
    }
    // ... and a redirect to a forbidden port or to the metadata address.
    for (path, target) in [
        ("/to-port", format!("http://127.0.0.1:{forbidden_port}/x")),
        (
            "/to-metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
    ] {
        site.lock().unwrap().routes.insert(
            format!("{path}-file"),
            (
                vec![("location".into(), target)],
                Vec::new(),
                StatusCode::FOUND,
            ),
        );
        lxd_route(&site, path, &fp, &format!("{path}-file"));
        let op = import(&cp, url_request(format!("{base}{path}"))).await;
        assert_eq!(state(&op), pb::OperationState::Failed, "{path}");
        assert_eq!(
            error_code(&op),
            tonic::Code::InvalidArgument,
            "{path}: {op:?}"
        );
        assert!(
            op.error
                .as_ref()
                .unwrap()
                .message
                .contains("import filtering"),
            "{op:?}"
        );
    }
    let reached = tokio::time::timeout(Duration::from_millis(1), forbidden.accept()).await;
    assert!(reached.is_err(), "the forbidden port was connected to");

    // Cancel mid-transfer (its total shown meanwhile): the transfer stops and
    // nothing stays.
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    // Its size is known from Content-Length alone (LXD's headers do not say).
    route(
        &site,
        "/files/slow.tar",
        &[("content-length", big.len().to_string())],
        big.clone(),
    );
    site.lock().unwrap().slow.push("/files/slow.tar".into());
    lxd_route(&site, "/slow", &sha256_hex(&big), "/files/slow.tar");
    let op = imports(&cp)
        .await
        .import_image(url_request(format!("{base}/slow")))
        .await
        .unwrap()
        .into_inner();
    let mut follow = cp
        .operations()
        .await
        .wait_operation(pb::WaitOperationRequest {
            name: op.name.clone(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(o) = follow.next().await {
        let o = o.unwrap();
        if let Some(p) = o.progress.as_ref().filter(|p| p.bytes_done > 0) {
            assert_eq!(p.bytes_total, big.len() as u64, "the total: {p:?}");
            break;
        }
    }
    let cancelled = cp
        .operations()
        .await
        .cancel_operation(pb::CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&cancelled), pb::OperationState::Cancelled);
    tokio::time::timeout(Duration::from_secs(20), closed.recv())
        .await
        .expect("the node kept the transfer open after the cancel");
    let left = files_of(&dir.path().join("blobs"), &op.name);
    assert!(left.is_empty(), "a cancelled import left {left:?}");
    assert_eq!(
        get_image(&cp, &format!("images/{}", sha256_hex(&big)))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    let after = cp
        .operations()
        .await
        .get_operation(pb::GetOperationRequest { name: op.name })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&after), pb::OperationState::Cancelled);

    node.stop().await;
    cp.stop().await;
}

/// The administrator's limits hold during a transfer: more bytes than
/// `import.max_bytes` and a server that goes quiet for longer than
/// `import.idle_timeout` each fail the import, and neither leaves an image or a
/// stored byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_imports_stop_at_the_size_limit_and_when_the_server_goes_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let site: Shared = Default::default();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    site.lock().unwrap().closed = Some(closed_tx);
    let addr = start_site(site.clone()).await;
    let (cp, node) = importing_cluster(dir.path(), vec![addr.port()], |c| {
        c.import.max_bytes = 256 * 1024;
        c.import.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let base = format!("http://{addr}");

    let data = fixture("busybox-unified.tar.gz");
    assert!(data.len() > 256 * 1024);
    route(&site, "/files/big.tar.gz", &[], data.clone());
    lxd_route(&site, "/big", &sha256_hex(&data), "/files/big.tar.gz");
    let quiet: Vec<u8> = (0..128 * 1024u32).map(|i| (i % 249) as u8).collect();
    route(&site, "/files/quiet.tar", &[], quiet.clone());
    site.lock().unwrap().slow.push("/files/quiet.tar".into());
    lxd_route(&site, "/quiet", &sha256_hex(&quiet), "/files/quiet.tar");

    let big = import(&cp, url_request(format!("{base}/big"))).await;
    assert_eq!(state(&big), pb::OperationState::Failed, "{big:?}");
    assert_eq!(error_code(&big), tonic::Code::ResourceExhausted, "{big:?}");
    assert!(
        big.error.as_ref().unwrap().message.contains("262144"),
        "the message names the limit: {big:?}"
    );
    let quiet_op = import(&cp, url_request(format!("{base}/quiet"))).await;
    assert_eq!(state(&quiet_op), pb::OperationState::Failed, "{quiet_op:?}");
    assert_eq!(
        error_code(&quiet_op),
        tonic::Code::DeadlineExceeded,
        "{quiet_op:?}"
    );
    tokio::time::timeout(Duration::from_secs(20), closed.recv())
        .await
        .expect("the node kept the quiet connection open");
    for (op, bytes) in [(&big, &data), (&quiet_op, &quiet)] {
        let left = files_of(&dir.path().join("blobs"), &op.name);
        assert!(left.is_empty(), "a failed import left {left:?}");
        let image = get_image(&cp, &format!("images/{}", sha256_hex(bytes))).await;
        assert_eq!(image.unwrap_err().code(), tonic::Code::NotFound);
    }
    node.stop().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_choose_the_import_methods() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, node) = importing_cluster(dir.path(), vec![80], |c| {
        c.import.enabled_methods = vec!["simplestreams".into()];
    })
    .await;
    let e = imports(&cp)
        .await
        .import_image(url_request("http://127.0.0.1/x".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"url\""), "{}", e.message());
    let e = cp
        .uploads()
        .await
        .create_upload(pb::CreateUploadRequest {
            spec: Some(pb::UploadSpec {
                layout: pb::ImageLayout::Unified as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    node.stop().await;
    cp.stop().await;
}

/// Uploads `parts` to `cp` as a one-shot upload.
async fn upload(
    cp: &ControlPlane,
    node: &BlobNode,
    parts: &[&[u8]],
    public: bool,
    aliases: &[&str],
) -> pb::Image {
    let spec = pb::UploadSpec {
        layout: if parts.len() == 2 {
            pb::ImageLayout::Split
        } else {
            pb::ImageLayout::Unified
        } as i32,
        public,
        filename: "image.tar".into(),
        aliases: aliases
            .iter()
            .map(|a| pb::AliasSpec {
                name: (*a).into(),
                description: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    let msgs = upload_messages(
        pb::upload_request::FirstMessage::Spec(spec),
        parts,
        256 * 1024,
    );
    send_upload(cp, &node.url(), msgs)
        .await
        .unwrap()
        .image
        .unwrap()
}

/// A small unified image whose rootfs holds `version`.
fn versioned_image(version: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let meta = fixture("metadata.yaml");
    for (name, body) in [
        ("metadata.yaml", meta.as_slice()),
        ("rootfs/etc/version", version.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    b.into_inner().unwrap()
}

fn remote(cp: &ControlPlane, image: &str) -> pb::RemoteSource {
    pb::RemoteSource {
        server: cp.url(),
        image: image.into(),
        ..Default::default()
    }
}

fn alias_names(image: &pb::Image) -> Vec<String> {
    let mut v: Vec<String> = image.aliases.iter().map(|a| a.name.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_from_another_server_keep_aliases_secrets_and_follow_updates() {
    let dir = tempfile::tempdir().unwrap();
    let src = ControlPlane::start(&dir.path().join("src-cp")).await;
    let src_node = BlobNode::start(
        &src,
        &dir.path().join("src-node"),
        &StoreSpec::local(&dir.path().join("src-blobs")),
    )
    .await;
    let ports = vec![src.addr.port(), src_node.addr.port()];
    let (dst, dst_node) = importing_cluster(&dir.path().join("dst"), ports.clone(), |c| {
        c.import.auto_update_interval = Duration::from_millis(200);
    })
    .await;

    let v1 = upload(
        &src,
        &src_node,
        &[&versioned_image("1")],
        true,
        &["app", "app/stable"],
    )
    .await;
    // A local alias that the copy must not move.
    let other = upload(
        &dst,
        &dst_node,
        &[&versioned_image("local")],
        false,
        &["app/stable"],
    )
    .await;

    let mut req = pb::ImportImageRequest {
        source: Some(pb::import_image_request::Source::Remote(pb::RemoteSource {
            copy_aliases: true,
            ..remote(&src, "app")
        })),
        aliases: vec![pb::AliasSpec {
            name: "mine".into(),
            description: String::new(),
        }],
        auto_update: true,
        ..Default::default()
    };
    let op = import(&dst, req.clone()).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert_eq!(op.metadata["skipped_aliases"], "app/stable");
    let copied = get_image(&dst, &format!("images/{}", v1.fingerprint))
        .await
        .unwrap();
    assert_eq!(alias_names(&copied), ["app", "mine"]);
    assert!(copied.auto_update);
    let source = copied.update_source.clone().unwrap();
    assert_eq!(
        (
            source.server.as_str(),
            source.protocol.as_str(),
            source.alias.as_str()
        ),
        (src.url().as_str(), "imagestore", "app")
    );
    assert_eq!(
        get_image(&dst, "aliases/app/stable")
            .await
            .unwrap()
            .fingerprint,
        other.fingerprint
    );

    // A private image: not without a secret; with one, once.
    let split = upload(
        &src,
        &src_node,
        &[
            &fixture("busybox-split-meta.tar.xz"),
            &fixture("busybox-split-rootfs.squashfs"),
        ],
        false,
        &["private"],
    )
    .await;
    assert_eq!(split.fingerprint, lxd_fingerprint("fx-split-squashfs"));
    req.source = Some(pb::import_image_request::Source::Remote(remote(
        &src,
        &split.fingerprint,
    )));
    req.aliases.clear();
    req.auto_update = false;
    let op = import(&dst, req.clone()).await;
    assert_eq!(error_code(&op), tonic::Code::NotFound, "{op:?}");
    let secret = src
        .images()
        .await
        .create_image_secret(pb::CreateImageSecretRequest {
            name: format!("images/{}", split.fingerprint),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    req.source = Some(pb::import_image_request::Source::Remote(pb::RemoteSource {
        secret,
        ..remote(&src, &split.fingerprint)
    }));
    let op = import(&dst, req).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    let private = get_image(&dst, &format!("images/{}", split.fingerprint))
        .await
        .unwrap();
    assert!(private.update_source.is_none() && !private.public);
    let (_, rootfs) = download(
        &dst,
        &dst_node.url(),
        &split.fingerprint,
        pb::PartRole::Rootfs,
        0,
    )
    .await
    .unwrap();
    assert_eq!(rootfs, fixture("busybox-split-rootfs.squashfs"));

    // Auto-update: a new version behind the alias replaces the copy, aliases move.
    let v2 = upload(&src, &src_node, &[&versioned_image("2")], true, &[]).await;
    src.aliases()
        .await
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: "aliases/app".into(),
                target: format!("images/{}", v2.fingerprint),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".into()],
            }),
        })
        .await
        .unwrap();
    eventually("the copy to follow the source alias", || async {
        get_image(&dst, "aliases/mine")
            .await
            .is_ok_and(|i| i.fingerprint == v2.fingerprint)
    })
    .await;
    let fresh = get_image(&dst, &format!("images/{}", v2.fingerprint))
        .await
        .unwrap();
    assert_eq!(alias_names(&fresh), ["app", "mine"]);
    assert!(fresh.auto_update);
    assert_eq!(
        get_image(&dst, &format!("images/{}", v1.fingerprint))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound,
        "the old version is removed"
    );
    // A refresh that finds nothing new says so.
    let op = dst
        .images()
        .await
        .refresh_image(pb::RefreshImageRequest {
            name: format!("images/{}", v2.fingerprint),
        })
        .await
        .unwrap()
        .into_inner();
    let op = wait(&dst, &op).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert_eq!(
        op.metadata.get("refreshed").map(String::as_str),
        Some("false")
    );

    dst_node.stop().await;
    dst.stop().await;
    src_node.stop().await;
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_images_expire_when_unused_and_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let src = ControlPlane::start(&dir.path().join("src-cp")).await;
    let src_node = BlobNode::start(
        &src,
        &dir.path().join("src-node"),
        &StoreSpec::local(&dir.path().join("src-blobs")),
    )
    .await;
    let ports = vec![src.addr.port(), src_node.addr.port()];
    let (dst, dst_node) = importing_cluster(&dir.path().join("dst"), ports, |c| {
        c.import.remote_cache_expiry = Duration::from_millis(500);
    })
    .await;
    let kept = upload(&src, &src_node, &[&versioned_image("kept")], true, &[]).await;
    let cached = upload(&src, &src_node, &[&versioned_image("cached")], true, &[]).await;
    for (image, cache) in [(&kept, false), (&cached, true)] {
        let op = import(
            &dst,
            pb::ImportImageRequest {
                source: Some(pb::import_image_request::Source::Remote(remote(
                    &src,
                    &image.fingerprint,
                ))),
                cached: cache,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    }
    eventually("the cached image to expire", || async {
        get_image(&dst, &format!("images/{}", cached.fingerprint))
            .await
            .is_err()
    })
    .await;
    let still = get_image(&dst, &format!("images/{}", kept.fingerprint))
        .await
        .unwrap();
    assert!(!still.cached);
    dst_node.stop().await;
    dst.stop().await;
    src_node.stop().await;
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplestreams_picks_the_newest_matching_item_and_checks_every_hash() {
    let dir = tempfile::tempdir().unwrap();
    let site: Shared = Default::default();
    let addr = start_site(site.clone()).await;
    let (cp, node) = importing_cluster(dir.path(), vec![addr.port()], |_| {}).await;
    let meta = fixture("busybox-split-meta.tar.xz");
    let root = fixture("busybox-split-rootfs.squashfs");
    let unified = fixture("busybox-unified.tar.gz");
    let split_fp = lxd_fingerprint("fx-split-squashfs");
    let unified_fp = lxd_fingerprint("fx-unified-targz");
    let item = |ftype: &str, path: &str, data: &[u8]| serde_json::json!({"ftype": ftype, "path": path, "sha256": sha256_hex(data), "size": data.len()});
    let mut meta_item = item("lxd.tar.xz", "images/new/meta.tar.xz", &meta);
    meta_item["combined_squashfs_sha256"] = split_fp.clone().into();
    // The same version as a VM: the metadata beside a disk image, as LXD pairs them.
    let disk = qemu_disk("qcow2", "", "1M");
    let vm_fp = sha256_hex(&[meta.as_slice(), disk.as_slice()].concat());
    meta_item["combined_disk-kvm-img_sha256"] = vm_fp.clone().into();
    let mut bad_meta = item("lxd.tar.xz", "images/bad/meta.tar.xz", &meta);
    bad_meta["combined_squashfs_sha256"] = split_fp.clone().into();
    let mut bad_root = item("squashfs", "images/bad/root.squashfs", &root);
    bad_root["sha256"] = sha256_hex(b"not the rootfs").into();
    let products = serde_json::json!({
        "content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
        "products": {
            "busybox:1.35:amd64:default": {
                "aliases": "busybox/1.35,busybox", "arch": "amd64", "os": "BusyBox",
                "release": "1.35", "release_title": "1.35", "variant": "default",
                "versions": {
                    "20231201_0000": {"items": {"unified": item("lxd_combined.tar.gz", "images/old/busybox.tar.gz", &unified)}},
                    "20240101_0000": {"items": {
                        "meta": meta_item,
                        "root": item("squashfs", "images/new/root.squashfs", &root),
                        "disk": item("disk-kvm.img", "images/new/disk.img", &disk)
                    }}
                }
            },
            "broken:1:amd64:default": {
                "aliases": "broken", "arch": "amd64",
                "versions": {"20240101_0000": {"items": {"meta": bad_meta, "root": bad_root}}}
            }
        }
    });
    let index = serde_json::json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
        "products": ["busybox:1.35:amd64:default", "broken:1:amd64:default"]
    }}});
    route(
        &site,
        "/ss/streams/v1/index.json",
        &[],
        index.to_string().into_bytes(),
    );
    route(
        &site,
        "/ss/streams/v1/images.json",
        &[],
        products.to_string().into_bytes(),
    );
    route(&site, "/ss/images/new/meta.tar.xz", &[], meta.clone());
    route(&site, "/ss/images/new/root.squashfs", &[], root.clone());
    route(&site, "/ss/images/new/disk.img", &[], disk.clone());
    route(&site, "/ss/images/old/busybox.tar.gz", &[], unified.clone());
    route(&site, "/ss/images/bad/meta.tar.xz", &[], meta.clone());
    route(&site, "/ss/images/bad/root.squashfs", &[], root.clone());
    let server = format!("http://{addr}/ss");
    let ss = |image: &str, copy_aliases: bool| pb::ImportImageRequest {
        source: Some(pb::import_image_request::Source::Simplestreams(
            pb::SimplestreamsSource {
                server: server.clone(),
                image: image.into(),
                architecture: "amd64".into(),
                copy_aliases,
                ..Default::default()
            },
        )),
        auto_update: true,
        ..Default::default()
    };

    // An item whose bytes do not match its sha256.
    let op = import(&cp, ss("broken", false)).await;
    assert_eq!(state(&op), pb::OperationState::Failed);
    assert_eq!(error_code(&op), tonic::Code::DataLoss, "{op:?}");
    assert!(op.error.unwrap().message.contains("rootfs"));

    // By alias: the newest version, a split image, with LXD's fingerprint.
    let op = import(&cp, ss("busybox/1.35", true)).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    let image = get_image(&cp, &format!("images/{split_fp}")).await.unwrap();
    // LXD's short and architecture aliases for each of the product's aliases.
    assert_eq!(
        alias_names(&image),
        [
            "busybox",
            "busybox/1.35",
            "busybox/1.35/amd64",
            "busybox/amd64"
        ]
    );
    assert_eq!(image.properties["os"], "BusyBox");
    assert_eq!(image.properties["serial"], "20240101_0000");
    let source = image.update_source.unwrap();
    assert_eq!(
        (source.protocol.as_str(), source.alias.as_str()),
        ("simplestreams", "busybox/1.35")
    );
    let (_, got) = download(&cp, &node.url(), &split_fp, pb::PartRole::Metadata, 0)
        .await
        .unwrap();
    assert_eq!(got, meta);

    // The alias names a container and a VM: asked for a VM, the VM it is.
    let mut vm = ss("busybox", false);
    vm.r#type = pb::ImageType::VirtualMachine as i32;
    let op = import(&cp, vm).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert_eq!(op.image, format!("images/{vm_fp}"));
    let image = get_image(&cp, &op.image).await.unwrap();
    assert_eq!(image.r#type, pb::ImageType::VirtualMachine as i32);
    let (_, got) = download(&cp, &node.url(), &vm_fp, pb::PartRole::Rootfs, 0)
        .await
        .unwrap();
    assert!(got == disk, "the VM's disk image, byte for byte");

    // By fingerprint prefix: the older unified item; no source to follow.
    let op = import(&cp, ss(&unified_fp[..12], false)).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert!(
        get_image(&cp, &format!("images/{unified_fp}"))
            .await
            .unwrap()
            .update_source
            .is_none()
    );

    // Nothing there.
    let op = import(&cp, ss("ubuntu/24.04", false)).await;
    assert_eq!(error_code(&op), tonic::Code::NotFound, "{op:?}");

    node.stop().await;
    cp.stop().await;
}

/// A simplestreams server over HTTPS with a self-signed certificate (another
/// imagestore's HTTPS face): imported with its certificate pinned, the pin
/// travelling with the request to the blob node that fetches; refused without
/// the pin and with a wrong one, whose message names both fingerprints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_simplestreams_source_is_reached_through_its_pin() {
    let source = imagestore_tests::https::TlsCluster::start(1).await;
    let (unified, split) = source.upload_fixtures().await;
    let pin = pin_of(&source.cert_file);
    let dir = tempfile::tempdir().unwrap();
    let ports = vec![source.cp.addr.port(), source.nodes[0].addr.port()];
    let (cp, node) = importing_cluster(dir.path(), ports, |_| {}).await;
    let server = format!("https://127.0.0.1:{}", source.cp.addr.port());
    let ss = |pin: &str| pb::ImportImageRequest {
        source: Some(pb::import_image_request::Source::Simplestreams(
            pb::SimplestreamsSource {
                server: server.clone(),
                image: "unified".into(),
                certificate_sha256: pin.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let wrong = "ab".repeat(32);
    let op = import(&cp, ss(&wrong)).await;
    assert_eq!(state(&op), pb::OperationState::Failed);
    let message = &op.error.as_ref().unwrap().message;
    assert!(
        message.contains(&wrong) && message.contains(&pin),
        "{message}"
    );
    let op = import(&cp, ss("")).await;
    assert_eq!(state(&op), pb::OperationState::Failed, "not a known issuer");
    let op = import(&cp, ss(&pin)).await;
    assert_eq!(state(&op), pb::OperationState::Succeeded, "{op:?}");
    assert_eq!(op.image, format!("images/{}", unified.fingerprint));

    // The CLI: the certificate accepted on `remote add`, the server browsed as
    // `lxc image list images:` does, and copied from.
    let cli_dir = dir.path().join("cli");
    let cli = |args: &[&str]| imagestore_cli_ok(&cli_dir, args);
    let added = cli(&[
        "remote",
        "add",
        "ss",
        &server,
        "--protocol",
        "simplestreams",
        "--accept-certificate",
    ]);
    assert!(added.contains(&pin), "{added}");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&["list", "ss:", "-f", "json"])).unwrap();
    let mut shown: Vec<&str> = listed
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap())
        .collect();
    shown.sort();
    let mut both = vec![unified.fingerprint.as_str(), split.fingerprint.as_str()];
    both.sort();
    assert_eq!(shown, both);
    let info: serde_json::Value =
        serde_json::from_str(&cli(&["info", "ss:split", "-f", "json"])).unwrap();
    assert_eq!(info["fingerprint"], split.fingerprint.as_str());
    let aliases = cli(&["alias", "list", "ss:", "-f", "json"]);
    assert!(aliases.contains("\"unified\""), "{aliases}");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, cp.admin_token()).unwrap();
    cli(&[
        "remote",
        "add",
        "mine",
        &cp.url(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    cli(&["copy", "ss:split", "mine:", "--alias", "from-ss"]);
    node.stop().await;
    cp.stop().await;
}
