//! A real LXD pulls from `imagestore serve` over HTTPS, as a fleet host would:
//! Debian's lxd, its daemon started by hand in a temporary LXD_DIR (a dir pool,
//! no network bridge, no instances), trusting the server's self-signed
//! certificate through SSL_CERT_FILE. If LXD cannot start, this fails and says
//! why.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use imagestore_client::{Client, NoProgress, Source, TlsOptions, UploadOptions};
use imagestore_proto::v1 as pb;
use imagestore_tests::https::unified_image;
use imagestore_tests::*;
use tokio::process::{Child, Command};

/// How long one lxc or lxd command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn find(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/snap/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: ./tests/run installs Debian's lxd package \
                 (apt-get install lxd), which this test needs"
            )
        })
}

/// An LXD daemon of its own: state, client configuration and log in a temporary
/// directory.
struct Lxd {
    dir: tempfile::TempDir,
    daemon: Child,
    cert_file: PathBuf,
}

impl Lxd {
    async fn start(cert_file: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        let mut lxd = Self {
            daemon: Command::new(find("lxd"))
                .args(["--group", "root", "--logfile"])
                .arg(dir.path().join("lxd.log"))
                .envs(env(dir.path(), cert_file))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("cannot run lxd"),
            cert_file: cert_file.to_owned(),
            dir,
        };
        let ready = lxd.run("lxd", &["waitready", "--timeout", "60"]).await;
        if !ready.status.success() {
            let log = std::fs::read_to_string(lxd.dir.path().join("lxd.log")).unwrap_or_default();
            let exited = lxd.daemon.try_wait().ok().flatten();
            panic!(
                "LXD did not start (daemon exit status {exited:?}): {}\nits log:\n{log}",
                String::from_utf8_lossy(&ready.stderr)
            );
        }
        lxd.ok(&["storage", "create", "default", "dir"]).await;
        lxd.ok(&[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=default",
        ])
        .await;
        lxd
    }

    async fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let run = Command::new(find(program))
            .args(args)
            .envs(env(self.dir.path(), &self.cert_file))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(COMMAND_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{program} {args:?} took over {COMMAND_TIMEOUT:?}"))
            .unwrap()
    }

    /// `lxc ARGS`, which must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run("lxc", args).await;
        assert!(
            out.status.success(),
            "lxc {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The full fingerprints `lxc image list REMOTE:` shows.
    async fn fingerprints(&self, remote: &str) -> Vec<String> {
        let listed = self
            .ok(&["image", "list", remote, "--format", "json"])
            .await;
        let images: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        let mut fps: Vec<String> = images
            .iter()
            .map(|i| i["fingerprint"].as_str().unwrap().to_owned())
            .collect();
        fps.sort();
        fps
    }
}

impl Drop for Lxd {
    fn drop(&mut self) {
        // A clean stop unmounts what the daemon mounted under LXD_DIR.
        let _ = std::process::Command::new("timeout")
            .args(["60", "lxd", "shutdown"])
            .envs(env(self.dir.path(), &self.cert_file))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.daemon.start_kill();
    }
}

fn env(dir: &Path, cert_file: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("LXD_DIR", dir.to_owned()),
        ("LXD_CONF", dir.join("conf")),
        ("HOME", dir.to_owned()),
        // Go reads the roots it trusts from here: the server's own certificate.
        ("SSL_CERT_FILE", cert_file.to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_lxd_lists_copies_and_imports_from_imagestore() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pair = imagestore_auth::self_signed("imagestore lxd test", &names).unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"
        ),
    )
    .unwrap();
    let server = Process::start_until(
        &binary("imagestore"),
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        Some("registered with the control plane"),
    )
    .await;
    let url = format!("https://{}", server.addr);
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let tls = TlsOptions {
        pin: Some(pin_of(&cert)),
        identity: None,
        address: None,
    };
    let client = Client::connect_with(&url, Some(&token), tls).await.unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let path = files.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let upload = |source: Source, alias: &str, public: bool| {
        let client = client.clone();
        let alias = alias.to_owned();
        async move {
            client
                .upload(
                    &source,
                    &UploadOptions {
                        aliases: vec![alias],
                        public,
                        ..UploadOptions::default()
                    },
                    std::sync::Arc::new(NoProgress),
                )
                .await
                .unwrap()
        }
    };
    let unified: pb::Image = upload(
        Source::Unified(put("u.tar.gz", &fixture("busybox-unified.tar.gz"))),
        "bb",
        true,
    )
    .await;
    let split = upload(
        Source::Split {
            metadata: put("m.tar.xz", &fixture("busybox-split-meta.tar.xz")),
            rootfs: put("r.squashfs", &fixture("busybox-split-rootfs.squashfs")),
        },
        "bb-split",
        true,
    )
    .await;
    let private = upload(
        Source::Unified(put(
            "p.tar",
            &unified_image("private", &[("os", "Secret"), ("release", "7")]),
        )),
        "secret",
        false,
    )
    .await;
    assert_eq!(unified.fingerprint, lxd_fingerprint("fx-unified-targz"));
    assert_eq!(split.fingerprint, lxd_fingerprint("fx-split-squashfs"));

    let lxd = Lxd::start(&cert).await;

    // A simplestreams remote: the public images, with imagestore's fingerprints.
    lxd.ok(&["remote", "add", "is", &url, "--protocol", "simplestreams"])
        .await;
    let mut public = vec![unified.fingerprint.clone(), split.fingerprint.clone()];
    public.sort();
    assert_eq!(lxd.fingerprints("is:").await, public);
    let info = lxd.ok(&["image", "info", "is:bb"]).await;
    for shown in [
        "os: busybox",
        "release: 1.35.0",
        "architecture: amd64",
        "Architecture: x86_64",
        "- bb",
    ] {
        assert!(info.contains(shown), "{shown} in\n{info}");
    }

    // The daemon copies both kinds and gets the same fingerprints.
    lxd.ok(&["image", "copy", "is:bb", "local:"]).await;
    lxd.ok(&["image", "copy", "is:bb-split", "local:"]).await;
    assert_eq!(lxd.fingerprints("local:").await, public);

    // With the token as the password in the URL, the private image too.
    let with_token = url.replacen("https://", &format!("https://lxd:{token}@"), 1);
    lxd.ok(&[
        "remote",
        "add",
        "is-trusted",
        &with_token,
        "--protocol",
        "simplestreams",
    ])
    .await;
    assert!(
        lxd.fingerprints("is-trusted:")
            .await
            .contains(&private.fingerprint)
    );
    lxd.ok(&["image", "copy", "is-trusted:secret", "local:"])
        .await;
    assert!(
        lxd.fingerprints("local:")
            .await
            .contains(&private.fingerprint)
    );

    // LXD's URL import, by alias.
    lxd.ok(&["image", "delete", &unified.fingerprint]).await;
    let out = lxd
        .ok(&[
            "image",
            "import",
            &format!("{url}/images/bb"),
            "--alias",
            "via-url",
        ])
        .await;
    assert!(out.contains(&unified.fingerprint), "{out}");
    let aliased = lxd.ok(&["image", "info", "via-url"]).await;
    assert!(
        aliased.contains(&format!("Fingerprint: {}", unified.fingerprint)),
        "{aliased}"
    );

    drop(lxd);
    server.terminate().await;
}

/// An LXD server's own HTTPS API as a source (`--protocol lxd`): public images
/// by alias and by fingerprint, unified and split, with and without the
/// source's aliases; a private one through a secret and not without; a wrong
/// certificate pin refused with both fingerprints; `--auto-update` following
/// the alias to a newer image published in LXD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagestore_copies_from_a_real_lxd_server() {
    let dir = tempfile::tempdir().unwrap();
    let pair = imagestore_auth::self_signed("unused by this test", &["localhost".into()]).unwrap();
    let roots = dir.path().join("roots.crt");
    std::fs::write(&roots, &pair.cert_pem).unwrap();
    let lxd = Lxd::start(&roots).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    lxd.ok(&[
        "config",
        "set",
        "core.https_address",
        &format!("127.0.0.1:{port}"),
    ])
    .await;
    eventually("LXD to listen on its HTTPS address", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let server = format!("https://127.0.0.1:{port}");
    let pin = pin_of(&lxd.dir.path().join("server.crt"));

    // LXD's images: public unified and split, a private one.
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let path = files.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let unified = put("unified.tar.gz", &fixture("busybox-unified.tar.gz"));
    let meta = put("meta.tar.xz", &fixture("busybox-split-meta.tar.xz"));
    let rootfs = put("rootfs.squashfs", &fixture("busybox-split-rootfs.squashfs"));
    let private = put(
        "private.tar",
        &unified_image("private", &[("os", "secret")]),
    );
    let newer = put("newer.tar", &unified_image("newer", &[("os", "newer")]));
    let private_meta = put(
        "private-meta.tar",
        &unified_image("private split", &[("os", "secret")]),
    );
    lxd.ok(&[
        "image",
        "import",
        &unified,
        "--alias",
        "pub-unified",
        "--public",
    ])
    .await;
    lxd.ok(&[
        "image",
        "import",
        &meta,
        &rootfs,
        "--alias",
        "pub-split",
        "--public",
    ])
    .await;
    lxd.ok(&["image", "import", &private, "--alias", "priv"])
        .await;
    lxd.ok(&[
        "image",
        "import",
        &private_meta,
        &rootfs,
        "--alias",
        "priv-split",
    ])
    .await;
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&lxd.ok(&["image", "list", "--format", "json"]).await).unwrap();
    let lxd_fp = |alias: &str| -> String {
        listed
            .iter()
            .find(|i| {
                i["aliases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["name"] == alias)
            })
            .unwrap()["fingerprint"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(lxd_fp("pub-unified"), lxd_fingerprint("fx-unified-targz"));
    assert_eq!(lxd_fp("pub-split"), lxd_fingerprint("fx-split-squashfs"));

    let cp = ControlPlane::start_with(&dir.path().join("cp"), |c| {
        c.import_filtering.allowed_hosts = vec!["127.0.0.1".into()];
        c.import_filtering.allowed_ports = vec![port];
    })
    .await;
    let node = BlobNode::start(
        &cp,
        &dir.path().join("node"),
        &StoreSpec::local(&dir.path().join("store")),
    )
    .await;
    let from_lxd =
        |image: &str, secret: &str, pin: &str, copy_aliases: bool| pb::ImportImageRequest {
            source: Some(pb::import_image_request::Source::Lxd(pb::LxdSource {
                server: server.clone(),
                image: image.to_owned(),
                secret: secret.to_owned(),
                certificate_sha256: pin.to_owned(),
                copy_aliases,
            })),
            ..Default::default()
        };
    // The fingerprint of the image an operation produced.
    let succeeded = |op: &pb::Operation| {
        assert_eq!(op.state, pb::OperationState::Succeeded as i32, "{op:?}");
        op.image.trim_start_matches("images/").to_owned()
    };
    let get = |fp: String| {
        let cp = &cp;
        async move {
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
    };

    // By alias, with the source's aliases: LXD's fingerprint, type, properties.
    let fp = succeeded(&import(&cp, from_lxd("pub-unified", "", &pin, true)).await);
    assert_eq!(fp, lxd_fp("pub-unified"));
    let image = get(fp).await;
    assert_eq!(image.r#type, pb::ImageType::Container as i32);
    assert!(
        image.aliases.iter().any(|a| a.name == "pub-unified"),
        "{image:?}"
    );
    assert_eq!(
        image.properties.get("description").map(String::as_str),
        Some("BusyBox 1.35.0 static test image (lab fixture)")
    );
    let source = image.update_source.clone().unwrap();
    assert_eq!(
        (source.protocol.as_str(), source.alias.as_str()),
        ("lxd", "pub-unified")
    );

    // Split, by fingerprint, without the source's aliases.
    let split = lxd_fp("pub-split");
    assert_eq!(
        succeeded(&import(&cp, from_lxd(&split, "", &pin, false)).await),
        split
    );
    let image = get(split.clone()).await;
    assert!(image.aliases.is_empty(), "{image:?}");
    assert!(
        image.update_source.is_none(),
        "a fingerprint is not followed"
    );
    assert_eq!(image.parts.len(), 2);
    // The other way round: the unified one by fingerprint, the split one by
    // alias (with its aliases).
    assert_eq!(
        succeeded(&import(&cp, from_lxd(&lxd_fp("pub-unified"), "", &pin, false)).await),
        lxd_fp("pub-unified")
    );
    assert_eq!(
        succeeded(&import(&cp, from_lxd("pub-split", "", &pin, true)).await),
        split
    );
    let image = get(split.clone()).await;
    assert!(
        image.aliases.iter().any(|a| a.name == "pub-split"),
        "{image:?}"
    );

    // A private image: not without its secret; with one, yes.
    let hidden = lxd_fp("priv");
    let op = import(&cp, from_lxd(&hidden, "", &pin, false)).await;
    assert_eq!(op.state, pb::OperationState::Failed as i32, "{op:?}");
    assert_eq!(op.error.unwrap().code, tonic::Code::NotFound as i32);
    let answer: serde_json::Value = serde_json::from_str(
        &lxd.ok(&[
            "query",
            "-X",
            "POST",
            &format!("/1.0/images/{hidden}/secret"),
        ])
        .await,
    )
    .unwrap();
    let secret = answer["metadata"]["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        succeeded(&import(&cp, from_lxd(&hidden, &secret, &pin, false)).await),
        hidden
    );

    // A private split one, the same way.
    let hidden_split = lxd_fp("priv-split");
    let answer: serde_json::Value = serde_json::from_str(
        &lxd.ok(&[
            "query",
            "-X",
            "POST",
            &format!("/1.0/images/{hidden_split}/secret"),
        ])
        .await,
    )
    .unwrap();
    let secret = answer["metadata"]["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        succeeded(&import(&cp, from_lxd(&hidden_split, &secret, &pin, false)).await),
        hidden_split
    );
    assert_eq!(get(hidden_split).await.parts.len(), 2);

    // A wrong pin: refused, both fingerprints named.
    let wrong = "ab".repeat(32);
    let op = import(&cp, from_lxd("pub-unified", "", &wrong, false)).await;
    assert_eq!(op.state, pb::OperationState::Failed as i32, "{op:?}");
    let message = op.error.unwrap().message;
    assert!(
        message.contains(&wrong) && message.contains(&pin),
        "{message}"
    );

    // From the CLI: an LXD remote (its certificate accepted and pinned), copied
    // from by alias with its aliases.
    let cli_dir = dir.path().join("cli");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, cp.admin_token()).unwrap();
    let cli = |args: &[&str]| imagestore_cli_ok(&cli_dir, args);
    cli(&[
        "remote",
        "add",
        "mine",
        &cp.url(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let added = cli(&[
        "remote",
        "add",
        "lxd2",
        &server,
        "--protocol",
        "lxd",
        "--accept-certificate",
    ]);
    assert!(added.contains(&pin), "{added}");
    cli(&["copy", "lxd2:pub-split", "mine:", "--copy-aliases"]);
    let aliased = cp
        .aliases()
        .await
        .get_alias(pb::GetAliasRequest {
            name: "aliases/pub-split".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aliased.target, split);
    // Browsing it as `lxc image list` does: filters and formats.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&["list", "lxd2:", "-f", "json"])).unwrap();
    let mut shown: Vec<&str> = listed
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap())
        .collect();
    shown.sort();
    let mut public = vec![lxd_fp("pub-unified"), lxd_fp("pub-split")];
    public.sort();
    assert_eq!(shown, public, "the public images, not the private one");
    let filtered: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&["list", "lxd2:", "pub-split", "-f", "json"])).unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    let info: serde_json::Value =
        serde_json::from_str(&cli(&["info", "lxd2:pub-split", "-f", "json"])).unwrap();
    assert_eq!(info["fingerprint"], split.as_str());
    let aliases: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&["alias", "list", "lxd2:", "-f", "json"])).unwrap();
    assert!(
        aliases
            .iter()
            .any(|a| a["name"] == "pub-split" && a["target"] == split.as_str()),
        "{aliases:?}"
    );
    // Copied by a fingerprint prefix, as lxc allows.
    let prefix = &lxd_fp("pub-unified")[..12];
    cli(&[
        "copy",
        &format!("lxd2:{prefix}"),
        "mine:",
        "--alias",
        "by-prefix",
    ]);
    let aliased = cp
        .aliases()
        .await
        .get_alias(pb::GetAliasRequest {
            name: "aliases/by-prefix".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aliased.target, lxd_fp("pub-unified"));

    // --auto-update: a newer image under the same alias in LXD is picked up.
    let mut req = from_lxd("pub-unified", "", &pin, false);
    req.auto_update = true;
    req.aliases = vec![pb::AliasSpec {
        name: "follows-lxd".into(),
        description: String::new(),
    }];
    let followed = succeeded(&import(&cp, req).await);
    lxd.ok(&["image", "alias", "delete", "pub-unified"]).await;
    lxd.ok(&[
        "image",
        "import",
        &newer,
        "--alias",
        "pub-unified",
        "--public",
    ])
    .await;
    let refreshed = cp
        .images()
        .await
        .refresh_image(pb::RefreshImageRequest {
            name: format!("images/{followed}"),
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait(&cp, &refreshed).await;
    let fresh = succeeded(&done);
    assert_eq!(fresh, sha256_hex(&std::fs::read(&newer).unwrap()));
    let fresh = get(fresh).await;
    assert!(
        fresh.aliases.iter().any(|a| a.name == "follows-lxd"),
        "{fresh:?}"
    );
    node.stop().await;
    cp.stop().await;
}
