//! deploy/container/Containerfile, built with podman (Debian's package) from
//! base images made here (tests/container-bases: no registry is reachable),
//! then its binaries run from the image's own file system as its user: an
//! `imagestore serve` in it takes an import from the host's CLI.
//!
//! Slow (a release build inside the image): ./tests/run runs it on its own,
//! after the other suites.

use std::path::Path;
use std::process::Command;

use imagestore_tests::*;

const IMAGE: &str = "localhost/imagestore-test/imagestore:latest";

/// `program` on podman's storage for this checkout's runs, not the machine's: a
/// build that was killed leaves working containers behind, and two checkouts
/// testing at once would race on the same image names.
fn command(program: &str) -> Command {
    static CONF: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let conf = CONF.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("podman");
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("storage.conf");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("graph").display(),
                dir.join("run").display()
            ),
        )
        .unwrap();
        conf
    });
    let mut command = Command::new(program);
    command.env("CONTAINERS_STORAGE_CONF", conf);
    command
}

/// Runs a command to its end (podman and the scripts that call it on this
/// checkout's storage); its stdout, or a failure that ends with the last of
/// what it said (where a build's error is; a CI log keeps a report's ends) and
/// names the file that holds all of it.
fn run(program: &str, args: &[&str]) -> String {
    let out = command(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program}: {e} (podman and mmdebstrap are installed by ./tests/run)")
    });
    if !out.status.success() {
        let said = [out.stdout, out.stderr].concat();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("container-failure.log");
        let _ = std::fs::write(&log, &said);
        let said = String::from_utf8_lossy(&said);
        let lines: Vec<&str> = said.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!(
            "{program} {args:?}: {}; all it said is in {}; its last lines:\n{tail}",
            out.status,
            log.display()
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// This machine's crate registry, lent to the image's build as an overlay (what
/// the build writes there is dropped): the crates this checkout's own build
/// fetched, so the image's build fetches none and does not depend on the
/// network for them.
fn registry_volume() -> String {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = home.join("registry");
    assert!(
        registry.is_dir(),
        "no crate registry at {} (the host's build fills it)",
        registry.display()
    );
    format!("{}:/root/.cargo/registry:O", registry.display())
}

/// A container made from the image (never started: no OCI runtime can run
/// here), its file system mounted; removed when dropped.
struct Mounted {
    id: String,
    root: String,
}

impl Mounted {
    fn new(image: &str) -> Self {
        let id = run("podman", &["create", image]);
        let root = run("podman", &["mount", &id]);
        Self { id, root }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for args in [["umount", &self.id], ["rm", &self.id]] {
            let _ = command("podman").args(args).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_image_builds_and_serves_as_its_own_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // What a killed earlier run left: its containers hold images prune needs.
    for leftover in run("podman", &["ps", "--all", "--external", "--quiet"]).lines() {
        run("podman", &["rm", "--force", leftover]);
    }
    let bases = run(root.join("tests/container-bases").to_str().unwrap(), &[]);
    let (builder, runtime) = bases.split_once('\n').expect("two base images");
    // chroot isolation: RUN steps need no OCI runtime (none can run here).
    run(
        "podman",
        &[
            "build",
            "--isolation",
            "chroot",
            "--quiet",
            "--volume",
            &registry_volume(),
            "--build-arg",
            &format!("BUILDER={builder}"),
            "--build-arg",
            &format!("RUNTIME={runtime}"),
            "--file",
            root.join("deploy/container/Containerfile")
                .to_str()
                .unwrap(),
            "--tag",
            IMAGE,
            root.to_str().unwrap(),
        ],
    );
    // The build stage stays behind as an unnamed image of some GiB: not kept.
    run("podman", &["image", "prune", "--force"]);
    let config = run(
        "podman",
        &[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Entrypoint}} {{.Size}}",
            IMAGE,
        ],
    );
    let mut fields = config.split(' ');
    assert_eq!(fields.next(), Some("10001"), "not root: {config}");
    assert_eq!(
        fields.next(),
        Some("[\"/usr/local/bin/imagestore-control\"]"),
        "{config}"
    );
    let size: u64 = fields.next().unwrap().parse().unwrap();
    eprintln!("image size: {} MiB", size >> 20);
    // Small: Debian's minimal userland, qemu-utils and three binaries; no
    // compiler, no sources.
    assert!(size < 320 << 20, "the image is {} MiB", size >> 20);

    // Its binaries, from its own file system and libraries, as its user.
    let image = Mounted::new(IMAGE);
    assert!(
        !Path::new(&image.root).join("src").exists(),
        "the sources stayed in the image"
    );
    for binary in ["imagestore", "imagestore-control", "imagestore-blob"] {
        let version = run(
            "chroot",
            &[
                "--userspec=10001:10001",
                &image.root,
                &format!("/usr/local/bin/{binary}"),
                "--version",
            ],
        );
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    }
    let serve = Process::start_until(
        Path::new("/usr/sbin/chroot"),
        &[
            "--userspec=10001:10001",
            &image.root,
            "/usr/local/bin/imagestore",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/var/lib/imagestore/data",
        ],
        &[("HOME", "/var/lib/imagestore")],
        Some("registered with the control plane"),
    )
    .await;
    let token =
        std::fs::read_to_string(Path::new(&image.root).join("var/lib/imagestore/data/admin-token"))
            .unwrap();
    let cli = tempfile::tempdir().unwrap();
    let file = cli.path().join("busybox.tar.gz");
    std::fs::write(&file, fixture("busybox-unified.tar.gz")).unwrap();
    let url = serve.url();
    let listed = tokio::task::spawn_blocking(move || {
        let config = cli.path().join("config");
        imagestore_cli_ok(
            &config,
            &["remote", "add", "box", &url, "--token", token.trim()],
        );
        imagestore_cli_ok(
            &config,
            &["import", file.to_str().unwrap(), "box:", "--alias", "boxed"],
        );
        imagestore_cli_ok(&config, &["list", "box:", "--format", "csv"])
    })
    .await
    .unwrap();
    assert!(listed.contains("boxed"), "{listed}");
    serve.terminate().await;
}
