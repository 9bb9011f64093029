//! The `imagestore` command, driven as a user drives it: the built binary against
//! `imagestore serve` on loopback, with its own config directory.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use serde_json::Value;

/// `imagestore serve` on a free port, and a place for the CLI's config and files.
struct Fixture {
    server: Process,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With `extra` arguments for serve (e.g. a config file).
    async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let server = Process::start_until(
            &binary("imagestore"),
            &args,
            &[],
            Some("registered with the control plane"),
        )
        .await;
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        Self { server, dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The token `imagestore serve` wrote on its first start.
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(binary("imagestore"));
        cmd.args(args)
            .current_dir(self.work())
            .env("IMAGESTORE_REMOTE", self.server.url())
            .env("IMAGESTORE_TOKEN", self.admin_token())
            .env("IMAGESTORE_CONFIG_DIR", self.dir.path().join("config"))
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the CLI to its end (bounded) and returns what it printed.
    async fn run(&self, args: &[&str]) -> Ran {
        self.run_with_stdin(args, None).await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.command(args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(std::process::Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("imagestore {args:?} did not finish in 120 s"))
            .unwrap();
        Ran::from(args, out)
    }

    /// Runs and insists on success.
    async fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args).await;
        assert_eq!(ran.code, 0, "imagestore {args:?} failed: {}", ran.stderr);
        ran.stdout
    }

    async fn import(&self, args: &[&str]) -> String {
        let mut all = vec!["import"];
        all.extend_from_slice(args);
        let out = self.ok(&all).await;
        out.trim()
            .strip_prefix("Image imported with fingerprint: ")
            .unwrap_or_else(|| panic!("import printed {out:?}"))
            .to_owned()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
    }
}

#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn from(args: &[&str], out: Output) -> Self {
        Self {
            code: out
                .status
                .code()
                .unwrap_or_else(|| panic!("imagestore {args:?} was killed: {}", out.status)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts a clean exit, and gives back what was printed.
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        self
    }

    fn fails(&self, code: i32, says: &str) {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        assert!(
            self.stderr.contains(says),
            "expected {says:?} in stderr: {}",
            self.stderr
        );
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/lxd-fixtures")
}

fn fixture_path(name: &str) -> String {
    fixtures_dir().join(name).to_str().unwrap().to_owned()
}

/// An image directory as LXD's `image import <dir>` takes it.
fn image_directory(root: &Path) -> PathBuf {
    let dir = root.join("image-dir");
    std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("metadata.yaml"), fixture("metadata.yaml")).unwrap();
    std::fs::write(dir.join("rootfs/bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    std::os::unix::fs::symlink("hello", dir.join("rootfs/bin/hi")).unwrap();
    std::fs::write(
        dir.join("templates/hostname.tpl"),
        b"{{ container.name }}\n",
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_list_info_export_and_delete_every_kind_of_image() {
    let fx = Fixture::start().await;
    let unified = fx
        .import(&[
            &fixture_path("busybox-unified.tar.gz"),
            "--alias",
            "fx-unified-targz",
            "--prop",
            "stage=test",
        ])
        .await;
    assert_eq!(unified, lxd_fingerprint("fx-unified-targz"));
    let split = fx
        .import(&[
            &fixture_path("busybox-split-meta.tar.xz"),
            &fixture_path("busybox-split-rootfs.squashfs"),
            "--alias",
            "fx-split-squashfs",
        ])
        .await;
    assert_eq!(split, lxd_fingerprint("fx-split-squashfs"));
    let dir = image_directory(fx.dir.path());
    let packed = fx
        .import(&[dir.to_str().unwrap(), "--alias", "from-dir", "--public"])
        .await;

    // Every format lists the three; JSON and info agree on the object, which is
    // LXD's own shape (compared with what a real LXD answered for the fixtures).
    let listed = fx.json(&["list", "--format", "json"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for (alias, fp) in [
        ("fx-unified-targz", &unified),
        ("fx-split-squashfs", &split),
    ] {
        let info = fx.json(&["info", alias, "--format", "json"]).await;
        assert_eq!(
            Some(&info),
            listed.iter().find(|i| i["fingerprint"] == fp.as_str())
        );
        let lxd: Value =
            serde_json::from_slice(&fixture(&format!("api/image-{alias}.json"))).unwrap();
        for (key, want) in lxd.as_object().unwrap() {
            if matches!(key.as_str(), "uploaded_at" | "profiles") {
                continue;
            }
            let mut want = want.clone();
            if alias == "fx-unified-targz" && key == "properties" {
                want["stage"] = "test".into();
            }
            assert_eq!(info[key], want, "{alias}: {key}");
        }
    }
    let from_dir = fx.json(&["info", "from-dir", "--format", "json"]).await;
    assert_eq!(from_dir["fingerprint"], packed.as_str());
    assert_eq!(from_dir["public"], true);
    assert_eq!(from_dir["properties"]["os"], "busybox");

    let table = fx.ok(&["list"]).await;
    for needle in [
        "ALIAS",
        "FINGERPRINT",
        "UPLOAD DATE",
        "fx-unified-targz",
        &unified[..12],
        "CONTAINER",
    ] {
        assert!(table.contains(needle), "{needle} in\n{table}");
    }
    let compact = fx.ok(&["list", "--format", "compact"]).await;
    assert!(
        !compact.contains('|') && compact.contains("fx-split-squashfs"),
        "{compact}"
    );
    let csv = fx.ok(&["list", "-f", "csv", "-c", "lF"]).await;
    let mut rows: Vec<&str> = csv.lines().collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            format!("from-dir,{packed}"),
            format!("fx-split-squashfs,{split}"),
            format!("fx-unified-targz,{unified}"),
        ]
    );
    let yaml: Value = serde_yaml_ng::from_str(&fx.ok(&["list", "--format", "yaml"]).await).unwrap();
    assert_eq!(yaml.as_array().unwrap().len(), 3);

    // Filters, as lxc: key=value on fields and properties, words on aliases.
    let names = |v: Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["aliases"][0]["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(fx.json(&["list", "stage=test", "-f", "json"]).await),
        vec!["fx-unified-targz"]
    );
    assert_eq!(
        names(fx.json(&["list", "public=true", "-f", "json"]).await),
        vec!["from-dir"]
    );
    assert_eq!(
        names(
            fx.json(&["list", "fx-", "architecture=amd64", "-f", "json"])
                .await
        ),
        vec!["fx-split-squashfs", "fx-unified-targz"]
    );

    // Exports are byte-identical and named as LXD names them.
    fx.ok(&["export", "fx-unified-targz", "out/"]).await;
    let got = std::fs::read(fx.work().join(format!("out/{unified}.tar.gz"))).unwrap();
    assert_eq!(got, fixture("busybox-unified.tar.gz"));
    fx.ok(&["export", &split[..12], "split"]).await;
    assert_eq!(
        std::fs::read(fx.work().join("split")).unwrap(),
        fixture("busybox-split-meta.tar.xz")
    );
    assert_eq!(
        std::fs::read(fx.work().join("split.root")).unwrap(),
        fixture("busybox-split-rootfs.squashfs")
    );
    fx.ok(&["export", "from-dir", "packed"]).await;
    let packed_bytes = std::fs::read(fx.work().join("packed.tar.xz")).unwrap();
    assert_eq!(sha256_hex(&packed_bytes), packed);
    // What was packed is what LXD packs: rootfs/, templates/, metadata.yaml.
    let mut names_in_tar = Vec::new();
    let mut archive = tar::Archive::new(liblzma::read::XzDecoder::new(&packed_bytes[..]));
    for entry in archive.entries().unwrap() {
        names_in_tar.push(
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    for want in [
        "metadata.yaml",
        "rootfs/bin/hello",
        "rootfs/bin/hi",
        "templates/hostname.tpl",
    ] {
        assert!(
            names_in_tar.iter().any(|n| n == want),
            "{want} in {names_in_tar:?}"
        );
    }

    fx.ok(&["delete", "fx-unified-targz", &split]).await;
    fx.run(&["info", "fx-unified-targz"])
        .await
        .fails(3, "not found");
    assert_eq!(
        fx.json(&["list", "-f", "json"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    fx.server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_damaged_image_and_info_list_and_export_say_so() {
    let fx = Fixture::start().await;
    let fp = fx
        .import(&[&fixture_path("busybox-unified.tar.gz"), "--alias", "app"])
        .await;
    let out = fx.ok(&["verify", "app"]).await;
    assert!(out.contains("is sound"), "{out}");

    // A byte flipped behind the server's back, in the one stored object.
    let stored: Vec<PathBuf> = files_below(&fx.dir.path().join("data"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("/unified/"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&stored[0], &bytes).unwrap();

    let ran = fx.run(&["verify", "app"]).await;
    ran.fails(7, "DAMAGED");
    assert!(
        ran.stderr.contains(&fp),
        "names the expected hash: {}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains(&sha256_hex(&bytes)),
        "names the found hash: {}",
        ran.stderr
    );
    let info = fx.ok(&["info", "app"]).await;
    assert!(info.contains("Damaged: "), "{info}");
    let list = fx.ok(&["list"]).await;
    assert!(list.contains("[DAMAGED]"), "{list}");
    let json = fx.json(&["info", "app", "--format", "json"]).await;
    assert_eq!(json["damage"]["found_sha256"], sha256_hex(&bytes));
    fx.run(&["export", "app", "out/"])
        .await
        .fails(7, "is damaged and is not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_properties_through_their_lifecycle() {
    let fx = Fixture::start().await;
    let fp = fx
        .import(&[&fixture_path("busybox-unified.tar.gz"), "--alias", "bb"])
        .await;
    fx.ok(&[
        "alias",
        "create",
        "debian/12",
        &fp[..12],
        "--description",
        "first",
    ])
    .await;
    let aliases = fx.json(&["alias", "list", "-f", "json"]).await;
    let entry = aliases
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "debian/12")
        .unwrap()
        .clone();
    assert_eq!(entry["target"], fp.as_str());
    assert_eq!(entry["description"], "first");
    // Name resolution follows the alias.
    assert_eq!(
        fx.json(&["info", "debian/12", "-f", "json"]).await["fingerprint"],
        fp.as_str()
    );
    fx.run(&["alias", "create", "debian/12", "bb"])
        .await
        .fails(4, "");
    fx.ok(&["alias", "rename", "debian/12", "debian/bookworm"])
        .await;
    fx.run(&["info", "debian/12"]).await.fails(3, "not found");
    fx.run_with_stdin(
        &["alias", "edit", "debian/bookworm"],
        Some(&format!("description: edited\ntarget: {fp}\n")),
    )
    .await;
    let listed = fx.ok(&["alias", "list", "bookworm", "-f", "csv"]).await;
    assert_eq!(
        listed.trim(),
        format!("debian/bookworm,{},CONTAINER,edited", &fp[..12])
    );
    fx.ok(&["alias", "delete", "debian/bookworm"]).await;
    fx.run(&["alias", "delete", "debian/bookworm"])
        .await
        .fails(3, "");

    // Properties: set, get, unset; get of a missing one fails.
    fx.ok(&["set-property", "bb", "release", "edge"]).await;
    assert_eq!(
        fx.ok(&["get-property", "bb", "release"]).await.trim(),
        "edge"
    );
    fx.ok(&["unset-property", "bb", "release"]).await;
    fx.run(&["get-property", "bb", "release"])
        .await
        .fails(3, "Property not found");
    // edit takes YAML on stdin when it is not a terminal.
    let ran = fx
        .run_with_stdin(
            &["edit", "bb"],
            Some("public: true\nauto_update: false\nproperties:\n  os: busybox\n  flavour: tiny\n"),
        )
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let info = fx.json(&["info", "bb", "-f", "json"]).await;
    assert_eq!(info["public"], true);
    assert_eq!(
        info["properties"],
        serde_json::json!({"os": "busybox", "flavour": "tiny"})
    );
    fx.run_with_stdin(&["edit", "bb"], Some("public: [not a bool\n"))
        .await
        .fails(2, "not valid");
    // Empty input (`</dev/null`, only comments) changes nothing.
    for empty in ["", "# nothing\n\n"] {
        fx.run_with_stdin(&["edit", "bb"], Some(empty))
            .await
            .fails(2, "empty: nothing was changed");
    }
    let info = fx.json(&["info", "bb", "-f", "json"]).await;
    assert_eq!(
        info["properties"],
        serde_json::json!({"os": "busybox", "flavour": "tiny"})
    );
    // Server-side work as operations: listed, shown, followed, not cancelled
    // once over.
    fx.ok(&["verify", "bb"]).await;
    let ops = fx.json(&["operation", "list", "-f", "json"]).await;
    let verify = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["stage"] == "done" || o["state"] == "SUCCEEDED")
        .unwrap_or_else(|| panic!("{ops}"))
        .clone();
    let id = verify["id"].as_str().unwrap().to_owned();
    let shown = fx.json(&["operation", "show", &id, "-f", "json"]).await;
    assert_eq!(shown["state"], "SUCCEEDED", "{shown}");
    let waited = fx.ok(&["operation", "wait", &id]).await;
    assert!(waited.contains("Operation succeeded"), "{waited}");
    fx.run(&["operation", "cancel", &id]).await.fails(1, "");
    fx.run(&["operation", "show", "00000000-0000-0000-0000-000000000000"])
        .await
        .fails(3, "");
    // An unknown remote is an error naming the remotes, not an empty list.
    fx.run(&["list", "nosuch:"])
        .await
        .fails(3, "The remote \"nosuch\" does not exist; the remotes are");
    fx.run(&["alias", "list", "nosuch:"])
        .await
        .fails(3, "does not exist");
    fx.server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_a_clear_message_and_a_nonzero_exit() {
    let fx = Fixture::start().await;
    fx.run(&["import", "no-such-file.tar.gz"])
        .await
        .fails(3, "no-such-file.tar.gz: no such file");
    fx.run(&["info", "nothing-here"])
        .await
        .fails(3, "not found");
    fx.run(&["export", "0123456789abcdef"])
        .await
        .fails(3, "not found");
    fx.run(&["list", "--bogus"]).await.fails(2, "--bogus");
    fx.run(&["list", "-c", "lz"])
        .await
        .fails(2, "Unknown column");
    fx.run(&["info", "abc"]).await.fails(2, "too short");

    // Two images whose fingerprints share 12 characters: the prefix is ambiguous.
    let served = External {
        url: fx.server.url(),
        data_dir: fx.dir.path().join("data"),
    };
    let mut registry = served.registry().await;
    for tail in ['1', '2'] {
        let fp = format!("abcdefabcdef{}", tail.to_string().repeat(52));
        registry
            .register_content(unified_with_fingerprint(&fp, 10))
            .await
            .unwrap();
    }
    let ran = fx.run(&["info", "abcdefabcdef"]).await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("abcdefabcdef1111"), "{}", ran.stderr);
    assert!(ran.stderr.contains("abcdefabcdef2222"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"));

    // Importing what exists is refused, as LXD refuses it.
    let file = fixture_path("busybox-unified.tar.gz");
    fx.import(&[&file]).await;
    fx.run(&["import", &file])
        .await
        .fails(4, "Image with same fingerprint already exists");

    // A server that is not there: exit 5 and a hint.
    let url = fx.server.url();
    fx.server.terminate().await;
    let mut cmd = tokio::process::Command::new(binary("imagestore"));
    let out = cmd
        .args(["list"])
        .env("IMAGESTORE_REMOTE", &url)
        .env("IMAGESTORE_CONFIG_DIR", fx.dir.path().join("config"))
        .output()
        .await
        .unwrap();
    let ran = Ran::from(&["list"], out);
    ran.fails(5, "imagestore serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remotes_are_kept_in_the_config_directory() {
    let fx = Fixture::start().await;
    let url = fx.server.url();
    let port = url.rsplit(':').next().unwrap().to_owned();
    // Without IMAGESTORE_REMOTE the default remote decides.
    let run = |args: &'static [&'static str]| {
        let mut cmd = fx.command(args);
        cmd.env_remove("IMAGESTORE_REMOTE");
        cmd.output()
    };
    let ran = Ran::from(&[], run(&["remote", "get-default"]).await.unwrap());
    assert_eq!(ran.stdout.trim(), "local");
    // Its own token: the environment's goes to the default remote only.
    let token = fx.dir.path().join("data/admin-token");
    let lab = format!("127.0.0.1:{port}");
    fx.ok(&[
        "remote",
        "add",
        "lab",
        &lab,
        "--token-file",
        token.to_str().unwrap(),
    ])
    .await;
    fx.run(&["remote", "add", "lab", &url])
        .await
        .fails(4, "exists");
    fx.run(&["remote", "add", "bad", "ftp://x"])
        .await
        .fails(2, "Invalid remote URL");
    // https:// to this plaintext server: the error names the URL to use.
    let plain = format!("http://127.0.0.1:{port}");
    fx.run(&[
        "remote",
        "add",
        "tls",
        &format!("https://127.0.0.1:{port}"),
        "--accept-certificate",
    ])
    .await
    .fails(2, &format!("speaks plaintext HTTP, not TLS; use {plain}"));
    let remotes = fx.json(&["remote", "list", "-f", "json"]).await;
    let lab = remotes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lab")
        .unwrap()
        .clone();
    assert_eq!(lab["addr"], url.as_str());
    let file = fixture_path("busybox-unified.tar.gz");
    let out = fx.ok(&["import", &file, "lab:", "--alias", "on-lab"]).await;
    assert!(out.contains("Image imported"));
    // remote:image and `list remote:` name the lab server.
    assert_eq!(
        fx.json(&["info", "lab:on-lab", "-f", "json"]).await["fingerprint"],
        sha256_hex(&fixture("busybox-unified.tar.gz")).as_str()
    );
    assert_eq!(
        fx.json(&["list", "lab:", "-f", "json"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    fx.ok(&["remote", "switch", "lab"]).await;
    let ran = Ran::from(&[], run(&["remote", "get-default"]).await.unwrap());
    assert_eq!(ran.stdout.trim(), "lab");
    let ran = Ran::from(&[], run(&["info", "on-lab", "-f", "json"]).await.unwrap());
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    fx.run(&["remote", "remove", "lab"])
        .await
        .fails(2, "default");
    fx.ok(&["remote", "rename", "lab", "lab2"]).await;
    let ran = Ran::from(&[], run(&["remote", "get-default"]).await.unwrap());
    assert_eq!(ran.stdout.trim(), "lab2");
    fx.ok(&["remote", "switch", "local"]).await;
    fx.ok(&["remote", "remove", "lab2"]).await;
    // Several replicas of one installation: the first address is down, the
    // calls go to the next.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pair = format!("http://{down}, {url}");
    fx.ok(&[
        "remote",
        "add",
        "pair",
        &pair,
        "--token-file",
        token.to_str().unwrap(),
    ])
    .await;
    let listed = fx.json(&["remote", "list", "-f", "json"]).await;
    let kept = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pair")
        .unwrap()["addr"]
        .clone();
    assert_eq!(kept, format!("http://{down},{url}").as_str());
    assert_eq!(
        fx.json(&["info", "pair:on-lab", "-f", "json"]).await["fingerprint"],
        sha256_hex(&fixture("busybox-unified.tar.gz")).as_str()
    );
    fx.run(&["remote", "add", "mixed", &format!("https://{down},{url}")])
        .await
        .fails(2, "all http:// or all https://");
    fx.run(&["remote", "switch", "lab2"])
        .await
        .fails(3, "does not exist");
    fx.server.terminate().await;
}

/// `imagestore copy` between two `imagestore serve`s, as `lxc image copy`: by
/// alias with --copy-aliases (a name taken on the target stays, and the user is
/// told), --alias and --auto-update recorded as the source; a private image
/// through a one-time secret; then refresh finds nothing new. The CLI knows both
/// servers as remotes with their own tokens, and neither token reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_between_servers_keeps_aliases_and_reaches_private_images_by_secret() {
    let src = Fixture::start().await;
    // The target may fetch from the source's loopback port: an admin's choice.
    let settings = tempfile::tempdir().unwrap();
    let config = settings.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[import_filtering]\nallowed_hosts = [\"127.0.0.1\"]\nallowed_ports = [{}]\n",
            src.server.addr.port()
        ),
    )
    .unwrap();
    let dst = Fixture::start_with(&["--config", config.to_str().unwrap()]).await;

    let unified = src
        .import(&[
            &fixture_path("busybox-unified.tar.gz"),
            "--alias",
            "app",
            "--public",
        ])
        .await;
    src.ok(&["alias", "create", "app/stable", &unified]).await;
    let split = src
        .import(&[
            &fixture_path("busybox-split-meta.tar.xz"),
            &fixture_path("busybox-split-rootfs.squashfs"),
            "--alias",
            "hidden",
        ])
        .await;
    let taken = dst.work().join("taken.tar");
    big_image(&taken, 4096, 7);
    let local = dst
        .import(&[taken.to_str().unwrap(), "--alias", "app/stable"])
        .await;
    // An upload asking for a taken name gets the others, and the user is told.
    let other = dst.work().join("other.tar");
    big_image(&other, 4096, 8);
    let other = other.to_str().unwrap();
    let ran = dst
        .run(&["import", other, "--alias", "app/stable", "--alias", "fresh"])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("Alias app/stable already exists here and was left as it is"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("Alias fresh"), "{}", ran.stderr);
    assert_eq!(
        dst.json(&["info", "fresh", "--format", "json"]).await["fingerprint"],
        file_sha256(Path::new(other)).as_str()
    );

    // An operator's config: both servers, each with its own admin token.
    let cfg = settings.path().join("operator");
    for (name, fx) in [("src", &src), ("dst", &dst)] {
        let token = fx.dir.path().join("data/admin-token");
        let url = fx.server.url();
        let args = [
            "remote",
            "add",
            name,
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ];
        run_in(&dst, &cfg, &args).await.ok();
    }
    run_in(&dst, &cfg, &["remote", "switch", "dst"]).await.ok();
    let info = async |name: &str| {
        let ran = run_in(&dst, &cfg, &["info", name, "--format", "json"])
            .await
            .ok();
        serde_json::from_str::<Value>(&ran.stdout).unwrap()
    };

    let args = [
        "copy",
        "src:app",
        "dst:",
        "--copy-aliases",
        "--alias",
        "mine",
        "--auto-update",
    ];
    let ran = run_in(&dst, &cfg, &args).await.ok();
    assert!(
        ran.stdout.contains("Image copied successfully!"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stderr
            .contains("Alias app/stable already exists here and was left as it is"),
        "{}",
        ran.stderr
    );
    let copied = info("mine").await;
    assert_eq!(copied["fingerprint"], unified.as_str());
    let mut names: Vec<&str> = copied["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["app", "mine"]);
    assert_eq!(copied["auto_update"], true);
    assert_eq!(copied["public"], false, "private unless --public");
    assert_eq!(copied["update_source"]["server"], src.server.url().as_str());
    assert_eq!(copied["update_source"]["protocol"], "imagestore");
    assert_eq!(copied["update_source"]["alias"], "app");
    assert_eq!(info("app/stable").await["fingerprint"], local.as_str());

    // A private image: the CLI asks the source for a secret; --auto-update needs
    // a public alias, as lxc says.
    run_in(&dst, &cfg, &["copy", "src:hidden", "dst:", "--auto-update"])
        .await
        .fails(2, "--auto-update requires the source to be an alias");
    let args = [
        "copy",
        "src:hidden",
        "dst:",
        "--alias",
        "hidden-copy",
        "--public",
    ];
    run_in(&dst, &cfg, &args).await.ok();
    let copied = info("hidden-copy").await;
    assert_eq!(copied["fingerprint"], split.as_str());
    assert_eq!(split, lxd_fingerprint("fx-split-squashfs"));
    assert_eq!(copied["public"], true);
    assert!(copied["update_source"].is_null(), "{copied}");
    run_in(&dst, &cfg, &["export", "hidden-copy", "split"])
        .await
        .ok();
    assert_eq!(
        std::fs::read(dst.work().join("split")).unwrap(),
        fixture("busybox-split-meta.tar.xz")
    );
    assert_eq!(
        std::fs::read(dst.work().join("split.root")).unwrap(),
        fixture("busybox-split-rootfs.squashfs")
    );

    run_in(&dst, &cfg, &["copy", "src:app", "src:"])
        .await
        .fails(2, "must be different");
    run_in(&dst, &cfg, &["copy", "src:nope", "dst:"])
        .await
        .fails(3, "not found");
    let ran = run_in(&dst, &cfg, &["refresh", "mine"]).await;
    assert!(ran.stdout.contains("Image mine is up to date"), "{ran:?}");
    // The environment's token is the default remote's only: with dst's token in
    // IMAGESTORE_TOKEN, the source still gets its own, and a source without one
    // hides its private image instead of receiving dst's token.
    let mut cmd = dst.command(&["info", "src:hidden"]);
    cmd.env_remove("IMAGESTORE_REMOTE")
        .env("IMAGESTORE_CONFIG_DIR", &cfg);
    Ran::from(&[], cmd.output().await.unwrap()).ok();
    run_in(&dst, &cfg, &["remote", "set-token", "src"])
        .await
        .ok();
    let mut cmd = dst.command(&["info", "src:hidden"]);
    cmd.env_remove("IMAGESTORE_REMOTE")
        .env("IMAGESTORE_CONFIG_DIR", &cfg);
    Ran::from(&[], cmd.output().await.unwrap()).fails(3, "not found");
    dst.server.terminate().await;
    src.server.terminate().await;
}

/// A valid unified image of about `size` bytes: metadata.yaml, then a rootfs
/// file of `size` bytes (the same bytes for the same size and seed).
fn big_image(path: &Path, size: u64, seed: u8) {
    use std::io::Read;
    let file = std::fs::File::create(path).unwrap();
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let meta = fixture("metadata.yaml");
    let mut header = tar::Header::new_gnu();
    header.set_size(meta.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "metadata.yaml", &meta[..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "rootfs/blob", std::io::repeat(seed).take(size))
        .unwrap();
    tar.into_inner()
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();
}

fn file_sha256(path: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf).unwrap() {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    hex::encode(h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_show_in_a_terminal_and_nowhere_else() {
    let fx = Fixture::start().await;
    let image = fx.work().join("big.tar");
    big_image(&image, 48 << 20, 1);

    let mut term = fx.in_terminal(&["import", image.to_str().unwrap()]);
    let status = term.wait().await;
    let screen = term.read_to_end().await;
    assert!(status.success(), "{screen}");
    for needle in [
        "Uploading",
        "MiB",
        "/s",
        "ETA",
        "Image imported with fingerprint",
    ] {
        assert!(
            screen.contains(needle),
            "{needle:?} on the terminal:\n{screen}"
        );
    }

    // Not a terminal: no bars. --quiet: not even the result line.
    let other = fx.work().join("other.tar");
    big_image(&other, 8 << 20, 2);
    let ran = fx.run(&["import", other.to_str().unwrap()]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(!ran.stderr.contains("ETA"), "{}", ran.stderr);
    let ran = fx
        .run(&["export", "--quiet", &file_sha256(&other), "out/"])
        .await;
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (0, "", "")
    );
    fx.server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_continues_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so that the session commits bytes early in the upload.
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "[blob_node]\nsegment_bytes = 262144\n").unwrap();
    let fx = Fixture::start_with(&["--config", config.to_str().unwrap()]).await;
    let image = fx.work().join("big.tar");
    big_image(&image, 192 << 20, 3);
    let args = ["import", image.to_str().unwrap(), "--alias", "big"];

    let mut first = fx.command(&args);
    first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut first = first.spawn().unwrap();
    let uploads = imagestore_client::Client::connect(&fx.server.url(), Some(&fx.admin_token()))
        .await
        .unwrap()
        .uploads();
    let sessions = fx.dir.path().join("config/uploads");
    let saved_session = || -> Option<String> {
        let entry = std::fs::read_dir(&sessions).ok()?.next()?.ok()?;
        let saved: Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
        Some(saved["upload"].as_str()?.to_owned())
    };
    eventually("the import to open its session", || async {
        saved_session().is_some()
    })
    .await;
    let session = saved_session().unwrap();
    eventually("the import to commit some bytes", || {
        let mut uploads = uploads.clone();
        let name = session.clone();
        async move {
            uploads
                .get_upload(pb::GetUploadRequest {
                    name,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .committed_size
                > 0
        }
    })
    .await;
    first.kill().await.unwrap();
    let interrupted = uploads
        .clone()
        .get_upload(pb::GetUploadRequest {
            name: session.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let total = std::fs::metadata(&image).unwrap().len();
    assert_eq!(interrupted.state, pb::UploadState::Open as i32);
    assert!(interrupted.committed_size < total);

    let ran = fx.run(&args).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("Resuming"), "{}", ran.stderr);
    let fingerprint = file_sha256(&image);
    assert!(ran.stdout.contains(&fingerprint), "{}", ran.stdout);
    // The same session finished: the bytes it had were not sent again.
    let done = uploads
        .clone()
        .get_upload(pb::GetUploadRequest {
            name: session,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::UploadState::Complete as i32);
    assert_eq!(done.image.unwrap().fingerprint, fingerprint);
    assert_eq!(
        fx.json(&["info", "big", "-f", "json"]).await["fingerprint"],
        fingerprint.as_str()
    );
    // Nothing is left to resume.
    assert_eq!(std::fs::read_dir(&sessions).unwrap().count(), 0);
    fx.server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_continues_from_its_partial_file_and_never_keeps_bad_bytes() {
    let fx = Fixture::start().await;
    let data = fixture("busybox-unified.tar.gz");
    let fp = fx.import(&[&fixture_path("busybox-unified.tar.gz")]).await;
    let name = format!("{fp}.tar.gz");
    let half = data.len() / 2;

    // What an interrupted export leaves: the first half, under .partial.
    let out = fx.work().join("resumed");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(format!("{name}.partial")), &data[..half]).unwrap();
    fx.ok(&["export", &fp, "resumed/"]).await;
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), data);
    assert!(!out.join(format!("{name}.partial")).exists());

    // A partial file with wrong bytes: the result would not hash right, so the
    // export fails, says so, and removes it; the next run starts clean.
    let out = fx.work().join("corrupt");
    std::fs::create_dir_all(&out).unwrap();
    let mut bad = data[..half].to_vec();
    bad[10] ^= 0xff;
    std::fs::write(out.join(format!("{name}.partial")), &bad).unwrap();
    fx.run(&["export", &fp, "corrupt/"]).await.fails(7, "hash");
    assert!(!out.join(format!("{name}.partial")).exists());
    assert!(!out.join(&name).exists());
    fx.ok(&["export", &fp, "corrupt/"]).await;
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), data);
    fx.server.terminate().await;
}

/// Runs the CLI with only the given config directory: no IMAGESTORE_REMOTE and no
/// IMAGESTORE_TOKEN, so the remotes in that directory decide.
async fn run_in(fx: &Fixture, config: &Path, args: &[&str]) -> Ran {
    let out = fx
        .command(args)
        .env_remove("IMAGESTORE_REMOTE")
        .env_remove("IMAGESTORE_TOKEN")
        .env("IMAGESTORE_CONFIG_DIR", config)
        .output()
        .await
        .unwrap();
    Ran::from(args, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_over_tls_by_client_certificate_and_by_token() {
    let dir = tempfile::tempdir().unwrap();
    let pair = imagestore_auth::self_signed("cli test", &["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let fx = Fixture::start_with(&["--config", config.to_str().unwrap()]).await;
    let url = format!("https://{}", fx.server.addr);
    let token_file = fx.dir.path().join("data/admin-token");
    let fingerprint = imagestore_auth::fingerprint_pem(pair.cert_pem.as_bytes()).unwrap();

    // http:// to this TLS server: the error names the URL to use.
    let plain = format!("http://{}", fx.server.addr);
    let mut mistaken = fx.command(&["list"]);
    mistaken.env("IMAGESTORE_REMOTE", &plain);
    Ran::from(&["list"], mistaken.output().await.unwrap())
        .fails(2, &format!("the server there speaks TLS; use {url}"));

    // An operator adds the server: accepts its certificate, and uses the admin
    // token once to have this client's certificate trusted (no token is kept).
    let operator = dir.path().join("operator");
    let ran = run_in(
        &fx,
        &operator,
        &[
            "remote",
            "add",
            "lab",
            &url,
            "--accept-certificate",
            "--token-file",
            token_file.to_str().unwrap(),
            "--trust-client-certificate",
        ],
    )
    .await
    .ok();
    assert!(ran.stdout.contains(&fingerprint), "{}", ran.stdout);
    let saved = std::fs::read_to_string(operator.join("config.yml")).unwrap();
    assert!(
        saved.contains(&fingerprint) && !saved.contains("token:"),
        "{saved}"
    );
    run_in(&fx, &operator, &["remote", "switch", "lab"]).await;

    // Trusted by certificate alone: import (bytes over TLS to the blob node), list.
    run_in(
        &fx,
        &operator,
        &[
            "import",
            &fixture_path("busybox-unified.tar.gz"),
            "--alias",
            "private-one",
        ],
    )
    .await
    .ok();
    let ran = run_in(&fx, &operator, &["list", "--format", "csv"]).await;
    assert!(ran.stdout.contains("private-one"), "{}", ran.stdout);
    let ran = run_in(&fx, &operator, &["trust", "list", "--format", "csv"]).await;
    assert!(ran.stdout.contains("certificate"), "{}", ran.stdout);

    // A token for automation: shown once, works, and stops working when removed.
    let ran = run_in(&fx, &operator, &["trust", "add", "--description", "ci"])
        .await
        .ok();
    let token = ran.stdout.lines().last().unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);
    let robot = dir.path().join("robot");
    run_in(
        &fx,
        &robot,
        &[
            "remote",
            "add",
            "lab",
            &url,
            "--accept-certificate",
            "--token",
            &token,
        ],
    )
    .await
    .ok();
    let ran = run_in(&fx, &robot, &["list", "lab:", "--format", "csv"]).await;
    assert!(ran.stdout.contains("private-one"), "{}", ran.stdout);
    let listed = run_in(&fx, &operator, &["trust", "list", "--format", "json"]).await;
    let entries: Value = serde_json::from_str(&listed.stdout).unwrap();
    let id = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["description"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    run_in(&fx, &operator, &["trust", "remove", &id]).await;
    run_in(&fx, &robot, &["list", "lab:"])
        .await
        .fails(6, "not trusted");

    // A stranger sees no private image, and may not change anything.
    let stranger = dir.path().join("stranger");
    run_in(
        &fx,
        &stranger,
        &["remote", "add", "lab", &url, "--accept-certificate"],
    )
    .await
    .ok();
    let ran = run_in(&fx, &stranger, &["list", "lab:", "--format", "csv"])
        .await
        .ok();
    assert!(!ran.stdout.contains("private-one"), "{}", ran.stdout);
    run_in(&fx, &stranger, &["info", "lab:private-one"])
        .await
        .fails(3, "not found");
    run_in(&fx, &stranger, &["delete", "lab:private-one"])
        .await
        .fails(3, "not found");
    let file = fixture_path("busybox-unified.tar.gz");
    run_in(&fx, &stranger, &["import", &file, "lab:"])
        .await
        .fails(6, "trusted");
    // Without --accept-certificate (and no terminal to ask on) nothing is added.
    let ran = run_in(
        &fx,
        &dir.path().join("careful"),
        &["remote", "add", "lab", &url],
    )
    .await;
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("--accept-certificate"),
        "{}",
        ran.stderr
    );
}

/// Completions and man pages come from the command definitions themselves.
#[test]
fn completions_and_man_pages_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let bash = imagestore_cli_ok(dir.path(), &["completion", "bash"]);
    assert!(bash.contains("_imagestore()"), "{bash}");
    assert!(
        bash.contains("copy") && bash.contains("operation"),
        "{bash}"
    );
    let zsh = imagestore_cli_ok(dir.path(), &["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef imagestore"), "{zsh}");
    let man = dir.path().join("man");
    imagestore_cli_ok(dir.path(), &["manpages", man.to_str().unwrap()]);
    for page in [
        "imagestore.1",
        "imagestore-import.1",
        "imagestore-store-copy.1",
    ] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    let import = std::fs::read_to_string(man.join("imagestore-import.1")).unwrap();
    assert!(import.contains("all\\-stores"), "{import}");
}

/// Ctrl-C during `imagestore import URL`, typed at a real terminal: the CLI
/// asks whether to cancel the server-side operation, and on "y" cancels it, so
/// the server stops fetching; it exits 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_url_import_offers_to_cancel_it_on_the_server() {
    // A site that sends 64 KiB of a 4 MiB file, then nothing until the client
    // goes (and says when it went).
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel::<()>();
    struct Gone(tokio::sync::mpsc::UnboundedSender<()>);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let site_port = lxd_url_site(
        sha256_hex(&vec![7u8; 4 << 20]),
        axum::routing::get(move || {
            let gone = gone_tx.clone();
            async move {
                let first = bytes::Bytes::from(vec![7u8; 64 * 1024]);
                let body = futures::stream::unfold(0u8, move |step| {
                    let first = first.clone();
                    let gone = gone.clone();
                    async move {
                        if step == 0 {
                            return Some((Ok::<_, std::io::Error>(first), 1));
                        }
                        let _gone = Gone(gone);
                        std::future::pending::<()>().await;
                        None
                    }
                });
                (
                    [("content-length", (4u64 << 20).to_string())],
                    axum::body::Body::from_stream(body),
                )
            }
        }),
    )
    .await;
    let settings = tempfile::tempdir().unwrap();
    let config = settings.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[import_filtering]\nallowed_hosts = [\"127.0.0.1\"]\nallowed_ports = [{site_port}]\n\
             [import]\nreport_interval = \"50ms\"\n"
        ),
    )
    .unwrap();
    let fx = Fixture::start_with(&["--config", config.to_str().unwrap()]).await;

    let mut term = fx.in_terminal(&["import", &format!("http://127.0.0.1:{site_port}/image")]);
    // The bar shows the total the server learnt from Content-Length.
    term.read_until("4.00 MiB").await;
    term.type_keys(b"\x03");
    let asked = term.read_until("on the server too? [y/N]").await;
    let id = asked
        .split("Cancel operation ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    term.type_keys(b"y\r");
    let said = term.read_until("was cancelled on the server").await;
    let status = term.wait().await;
    assert_eq!(status.exit_code(), 130, "{said}");
    tokio::time::timeout(Duration::from_secs(20), gone.recv())
        .await
        .expect("the server kept fetching after the cancel");
    let shown = fx
        .json(&["operation", "show", &id, "--format", "json"])
        .await;
    assert_eq!(shown["state"], "CANCELLED", "{shown}");
    fx.server.terminate().await;
}

/// The CLI in a real terminal (a pty), as a person runs it: what it shows, and
/// keys typed at it.
struct Terminal {
    child: Option<Box<dyn portable_pty::Child + Send + Sync>>,
    keys: Box<dyn std::io::Write + Send>,
    screen: tokio::sync::mpsc::UnboundedReceiver<String>,
    shown: String,
}

impl Fixture {
    /// Runs `imagestore ARGS` in a new terminal, against this server.
    fn in_terminal(&self, args: &[&str]) -> Terminal {
        use portable_pty::{CommandBuilder, PtySize, native_pty_system};
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 120,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(binary("imagestore"));
        cmd.args(args);
        cmd.cwd(self.work());
        cmd.env("IMAGESTORE_REMOTE", self.server.url());
        cmd.env("IMAGESTORE_TOKEN", self.admin_token());
        cmd.env("IMAGESTORE_CONFIG_DIR", self.dir.path().join("config"));
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let keys = pair.master.take_writer().unwrap();
        let (tx, screen) = tokio::sync::mpsc::unbounded_channel::<String>();
        let master = pair.master;
        std::thread::spawn(move || {
            let _keep = master;
            let mut buf = [0u8; 4096];
            // Until the child's side closes (EOF, or EIO on Linux).
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if n == 0 || tx.send(text).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child: Some(child),
            keys,
            screen,
            shown: String::new(),
        }
    }
}

impl Terminal {
    /// Everything shown so far, once `needle` is (bounded).
    async fn read_until(&mut self, needle: &str) -> String {
        while !self.shown.contains(needle) {
            let more = tokio::time::timeout(Duration::from_secs(60), self.screen.recv())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} on the terminal:\n{}", self.shown));
            match more {
                Some(more) => self.shown.push_str(&more),
                None => panic!("the terminal closed before {needle:?}:\n{}", self.shown),
            }
        }
        self.shown.clone()
    }

    /// Everything shown, once the terminal has closed (bounded).
    async fn read_to_end(&mut self) -> String {
        while let Some(more) = tokio::time::timeout(Duration::from_secs(30), self.screen.recv())
            .await
            .expect("the terminal did not close")
        {
            self.shown.push_str(&more);
        }
        self.shown.clone()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// The command's exit, within two minutes.
    async fn wait(&mut self) -> portable_pty::ExitStatus {
        let mut child = self.child.take().expect("waited for once");
        tokio::time::timeout(
            Duration::from_secs(120),
            tokio::task::spawn_blocking(move || child.wait().unwrap()),
        )
        .await
        .unwrap_or_else(|_| panic!("the command did not end:\n{}", self.shown))
        .unwrap()
    }
}
