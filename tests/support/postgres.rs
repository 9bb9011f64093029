//! A real PostgreSQL 15 for the tests: a fresh cluster in a temporary
//! directory, on 127.0.0.1 and a free port, trusting local connections, gone
//! with the value. PostgreSQL refuses to run as root, so as root the cluster
//! belongs to, and runs as, the `postgres` user.

use std::path::{Path, PathBuf};

use sha2::Digest;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to `postgres://USER@HOST:PORT/DB`) for the conformance run (tests/run):
/// every in-process control plane then keeps its catalog on that server.
pub const CONFORMANCE_ENV: &str = "IMAGESTORE_TEST_POSTGRES";

/// The catalog database an in-process control plane on `data_dir` uses:
/// "sqlite" (a file in `data_dir`); or, in the conformance run, a database of
/// its own on the shared PostgreSQL, one per data directory, so that control
/// planes started on one data directory share a catalog as they do on SQLite.
pub async fn database_for(data_dir: &Path) -> String {
    let Ok(server) = std::env::var(CONFORMANCE_ENV) else {
        return "sqlite".into();
    };
    let name = format!(
        "t_{}",
        &hex::encode(sha2::Sha256::digest(
            data_dir.as_os_str().as_encoded_bytes()
        ))[..24]
    );
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{CONFORMANCE_ENV}={server}: cannot connect: {e}"));
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists
        && let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
    {
        // Another control plane on the same directory made it first.
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE),
            "CREATE DATABASE {name}: {e}"
        );
    }
    drop(client);
    let _ = driver.await;
    let (base, _) = server
        .rsplit_once('/')
        .expect("a URL that names a database");
    format!("{base}/{name}")
}

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

/// Runs the server on `data` (log and socket in `dir`), 127.0.0.1:`port`.
fn spawn_server(dir: &Path, data: &Path, port: u16) -> Child {
    command("postgres")
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ])
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("postgres.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
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
        let child = spawn_server(dir.path(), &data, port);
        let pg = Self {
            url: format!("postgres://imagestore@127.0.0.1:{port}/postgres"),
            data,
            _dir: dir,
            child,
            port,
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&self) {
        let log = self._dir.path().join("postgres.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
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
    }

    /// Stops the server at once (as a crash would: `-m immediate`), waits until
    /// it is gone, then starts it again on the same port and data.
    pub fn restart_after(&mut self, down_for: impl FnOnce()) {
        self.stop();
        down_for();
        self.child = spawn_server(self._dir.path(), &self.data, self.port);
        self.wait_ready();
    }

    fn stop(&mut self) {
        let stopped = command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(stopped.success(), "pg_ctl stop failed");
        let _ = self.child.wait();
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
