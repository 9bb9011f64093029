//! A real PostgreSQL 15 for the tests: a fresh cluster in a temporary
//! directory, on 127.0.0.1 and a free port, trusting local connections, gone
//! with the value. PostgreSQL refuses to run as root, so as root the cluster
//! belongs to, and runs as, the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's PostgreSQL 15 keeps its programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    child: Child,
    pub port: u16,
    /// `postgres://imagestore@127.0.0.1:{port}/postgres`
    pub url: String,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The server, not only its runuser parent: pg_ctl stops it at once.
        let _ = command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` from PostgreSQL's directory, as the `postgres` user when this
/// process is root.
fn command(program: &str) -> Command {
    let path = Path::new(BIN).join(program);
    assert!(
        path.exists(),
        "PostgreSQL 15 is not installed at {BIN} (apt-get install postgresql-15): {program} is missing"
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

impl Postgres {
    /// Creates and starts a cluster; fails the test, with PostgreSQL's own
    /// words, when it cannot.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data: PathBuf = dir.path().join("data");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success(), "chown of the cluster directory failed");
        }
        let init = command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "imagestore",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("postgres.log");
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pg = Self {
            url: format!("postgres://imagestore@127.0.0.1:{port}/postgres"),
            data,
            _dir: dir,
            child,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .unwrap();
            if ready.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections within 30 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    /// Runs one SQL command with psql and returns what it printed.
    pub fn psql(&self, sql: &str) -> String {
        let out = command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "imagestore",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
