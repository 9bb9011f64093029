//! The real binaries, started beside this one, on loopback with free ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::BenchResult;

/// A binary built next to this one.
pub fn sibling(name: &str) -> BenchResult<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .ok_or("no directory for this binary")?
        .join(name);
    if !path.exists() {
        return Err(format!(
            "{} is missing: build every binary first (cargo build --release --bins)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// A running server process.
pub struct Server {
    child: Child,
    pub url: String,
    /// When it was spawned and when it printed its address.
    pub spawned: Instant,
}

impl Server {
    /// Spawns `binary` and waits (bounded) for its "listening" line and, if
    /// given, a line containing `ready`.
    pub async fn spawn(binary: &str, args: &[&str], ready: Option<&str>) -> BenchResult<Self> {
        Self::spawn_env(binary, args, &[], ready).await
    }

    /// As [`Server::spawn`], with more environment (with TLS set there, the URL
    /// is https).
    pub async fn spawn_env(
        binary: &str,
        args: &[&str],
        env: &[(&str, String)],
        ready: Option<&str>,
    ) -> BenchResult<Self> {
        let spawned = Instant::now();
        let scheme = if env.iter().any(|(k, _)| *k == "IMAGESTORE_TLS__CERT_FILE") {
            "https"
        } else {
            "http"
        };
        let mut child = Command::new(sibling(binary)?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            let mut url = None;
            let mut is_ready = ready.is_none();
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.split("listening address=").nth(1) {
                    url = Some(format!("{scheme}://{}", addr.trim()));
                }
                if ready.is_some_and(|r| line.contains(r)) {
                    is_ready = true;
                }
                if let (Some(u), true) = (&url, is_ready) {
                    return Ok::<_, std::io::Error>(u.clone());
                }
            }
            Err(std::io::Error::other(format!(
                "{binary} exited before it was ready"
            )))
        })
        .await
        .map_err(|_| format!("{binary} did not start within 60 s"))??;
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url,
            spawned,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// CPU seconds the process has used so far (user + system, all threads).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pid().to_string())
    }

    /// Peak resident memory so far (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_mib(self.pid(), "VmHWM:")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A control plane and one blob node on a local directory.
pub struct System {
    pub control: Server,
    pub blob: Server,
    pub dir: PathBuf,
    /// The control plane's admin token: the benchmark is a trusted client.
    pub admin_token: String,
    /// What blob nodes present; the benchmark registers content as one.
    pub cluster_credential: String,
}

impl System {
    pub async fn start(dir: &Path) -> BenchResult<Self> {
        let (control, blob) = sibling_config(dir, &[]).await?;
        let secret = |file: &str| {
            let path = Self::control_dir(dir).join(file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        Ok(Self {
            control,
            blob,
            dir: dir.to_path_buf(),
            admin_token: secret("admin-token")?,
            cluster_credential: secret(imagestore_auth::CLUSTER_CREDENTIAL_FILE)?,
        })
    }

    fn control_dir(dir: &Path) -> PathBuf {
        dir.join("control-plane")
    }

    /// A client of the control plane trusted by the admin token.
    pub async fn client(&self) -> BenchResult<imagestore_client::Client> {
        Ok(imagestore_client::Client::connect(&self.control.url, Some(&self.admin_token)).await?)
    }

    /// The local directory the blob nodes store into.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    async fn blob_node(
        dir: &Path,
        control: &str,
        name: &str,
        env: &[(&str, String)],
    ) -> BenchResult<Server> {
        Server::spawn_env(
            "imagestore-blob",
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &dir.join(name).to_string_lossy(),
                "--control-plane",
                control,
                "--store",
                &dir.join("store").to_string_lossy(),
                "--cluster-credential-file",
                &Self::control_dir(dir)
                    .join(imagestore_auth::CLUSTER_CREDENTIAL_FILE)
                    .to_string_lossy(),
            ],
            env,
            Some("registered with the control plane"),
        )
        .await
    }

    /// A fresh blob-node process (its peak memory starts from zero).
    pub async fn restart_blob(&mut self, name: &str) -> BenchResult {
        let fresh = Self::blob_node(&self.dir, &self.control.url, name, &[]).await?;
        let old = std::mem::replace(&mut self.blob, fresh);
        old.stop().await;
        Ok(())
    }

    pub async fn stop(self) {
        self.blob.stop().await;
        self.control.stop().await;
    }
}

/// A control plane and one blob node ("node-1") in `dir`, with `env` for both
/// (TLS, for instance).
pub async fn sibling_config(dir: &Path, env: &[(&str, String)]) -> BenchResult<(Server, Server)> {
    let control = Server::spawn_env(
        "imagestore-control",
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &System::control_dir(dir).to_string_lossy(),
        ],
        env,
        None,
    )
    .await?;
    let blob = System::blob_node(dir, &control.url, "node-1", env).await?;
    Ok((control, blob))
}

/// A port free on 127.0.0.1 just now, for a server that cannot pick its own.
pub fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of process `pid` now (VmRSS), MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A kB field of /proc/PID/status in MiB; 0 where it cannot be read.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system, every thread) of process `pid` ("self" for this
/// one), from /proc; 0 where /proc is not there.
pub fn cpu_seconds(pid: &str) -> f64 {
    // utime and stime: the 12th and 13th fields after the command name.
    stat_seconds(pid, [11, 12])
}

/// CPU seconds of this process's children that have ended (cutime + cstime):
/// the `imagestore` and `lxc` commands it ran.
pub fn ended_children_cpu_seconds() -> f64 {
    stat_seconds("self", [13, 14])
}

/// The sum of two clock-tick fields of /proc/PID/stat, counted after the
/// command name (which is in parentheses and may hold spaces), in seconds.
fn stat_seconds(pid: &str, fields: [usize; 2]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let values: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .iter()
        .filter_map(|&i| values.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks_per_second()
}

/// The kernel's clock tick rate for /proc times (USER_HZ; `getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The PostgreSQL the `_pg` figures use.
pub enum Database {
    /// One the caller runs.
    Given(String),
    /// A throwaway cluster, stopped and deleted when this goes.
    Started { dir: tempfile::TempDir, url: String },
}

/// Where Debian's PostgreSQL 15 keeps its programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL program, as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root).
fn pg_command(program: &str) -> BenchResult<std::process::Command> {
    let path = Path::new(PG_BIN).join(program);
    if !path.exists() {
        return Err(format!(
            "PostgreSQL 15 is not installed ({} is missing): install postgresql-15, or give \
             --postgres URL",
            path.display()
        )
        .into());
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false);
    Ok(if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        std::process::Command::new(path)
    })
}

impl Database {
    /// Makes and starts a cluster in a directory of its own (which the
    /// `postgres` user can reach) on a free port of 127.0.0.1.
    pub fn start() -> BenchResult<Self> {
        let made = tempfile::Builder::new()
            .prefix("imagestore-bench-pg-")
            .tempdir()?;
        let dir = made.path();
        let data = dir.join("data");
        if pg_command("initdb")?.get_program() == "runuser" {
            let owned = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?;
            if !owned.success() {
                return Err("chown of the PostgreSQL directory failed".into());
            }
        }
        let init = pg_command("initdb")?
            .arg("-D")
            .arg(&data)
            .args(["-U", "imagestore", "--auth=trust", "-E", "UTF8"])
            .output()?;
        if !init.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&init.stderr)).into());
        }
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        );
        let started = pg_command("pg_ctl")?
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(Stdio::null())
            .status()?;
        if !started.success() {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("PostgreSQL did not start: {log}").into());
        }
        Ok(Self::Started {
            dir: made,
            url: format!("postgres://imagestore@127.0.0.1:{port}/postgres"),
        })
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Given(url) | Self::Started { url, .. } => url,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Self::Started { dir, .. } = self
            && let Ok(mut stop) = pg_command("pg_ctl")
        {
            let _ = stop
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A control plane alone, on `database`, its files in `dir`.
pub struct Control {
    server: Server,
    admin_token: String,
    cluster_credential: String,
}

impl Control {
    pub async fn start(dir: &Path, database: &str) -> BenchResult<Self> {
        let server = Server::spawn_env(
            "imagestore-control",
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &dir.to_string_lossy(),
                "--database",
                database,
            ],
            &[],
            None,
        )
        .await?;
        let secret = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        Ok(Self {
            server,
            admin_token: secret("admin-token")?,
            cluster_credential: secret(imagestore_auth::CLUSTER_CREDENTIAL_FILE)?,
        })
    }

    pub fn target(&self) -> crate::control::Target<'_> {
        crate::control::Target {
            url: &self.server.url,
            admin_token: &self.admin_token,
            cluster_credential: &self.cluster_credential,
        }
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}
