//! A fleet pulling one image: HOSTS concurrent HTTPS GETs over HTTP/1.1, each
//! on a connection of its own as LXD's client makes them, through the control
//! plane's redirect to a blob node; and the same load against nginx serving the
//! same file with the same certificate on this machine, in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use imagestore_client::{Client, TlsOptions};

use crate::procs::{free_port, sibling_config};
use crate::{BenchResult, Report, median, round2};

/// Concurrent pulls, as many hosts refreshing one image.
pub const HOSTS: usize = 32;

/// How long one fleet pull may take before the run is called failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn measure(report: &Report, dir: &Path, size: u64, runs: usize) -> BenchResult {
    let dir = dir.join("fleet");
    std::fs::create_dir_all(&dir)?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pair = imagestore_auth::self_signed("imagestore bench", &names)?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &pair.cert_pem)?;
    std::fs::write(&key, &pair.key_pem)?;
    let tls = [
        (
            "IMAGESTORE_TLS__CERT_FILE",
            cert.to_string_lossy().into_owned(),
        ),
        (
            "IMAGESTORE_TLS__KEY_FILE",
            key.to_string_lossy().into_owned(),
        ),
    ];
    let (control, blob) = sibling_config(&dir, &tls).await?;

    // One public image, uploaded as a client does.
    let pin = imagestore_auth::fingerprint_pem(pair.cert_pem.as_bytes())?;
    let token = std::fs::read_to_string(dir.join("control-plane").join("admin-token"))?;
    let client = Client::connect_with(
        &control.url,
        Some(token.trim()),
        TlsOptions {
            pin: Some(pin),
            identity: None,
            address: None,
        },
    )
    .await?;
    let (image, _) = crate::datapath::upload_to(&client, &blob.url, size, 1_000, true).await?;
    let part = image.parts.first().ok_or("an image without parts")?;
    let url = format!(
        "{}/files/{}/{}.tar",
        control.url, image.fingerprint, image.fingerprint
    );

    // nginx serves the bytes imagestore serves: one download through the face,
    // checked against the fingerprint.
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let file = www.join("image.tar");
    let got = pull(&pair.cert_pem, &url, Some(&file)).await?;
    if got != part.size {
        return Err(format!("downloaded {got} of {} bytes", part.size).into());
    }
    let nginx = Nginx::start(&dir, &www, &cert, &key).await?;
    let nginx_url = format!("https://127.0.0.1:{}/image.tar", nginx.port);

    let (mut ours, mut theirs, mut rss) = (Vec::new(), Vec::new(), 0.0f64);
    for _ in 0..runs {
        let sampler = RssSampler::start(blob.pid());
        ours.push(fleet(&pair.cert_pem, &url, part.size).await?);
        rss = rss.max(sampler.stop().await);
        theirs.push(fleet(&pair.cert_pem, &nginx_url, part.size).await?);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    report.put("fleet_pull_mb_s", round2(ours), "MB/s");
    report.put("fleet_nginx_mb_s", round2(theirs), "MB/s");
    report.put("fleet_pull_ratio", round2(ours / theirs), "x nginx");
    report.put("fleet_rss_mib", round2(rss), "MiB");
    drop(nginx);
    blob.stop().await;
    control.stop().await;
    Ok(())
}

/// HOSTS pulls of `url` at once, each on a client (and so a connection) of its
/// own: aggregate MB/s.
async fn fleet(cert_pem: &str, url: &str, size: u64) -> BenchResult<f64> {
    let started = Instant::now();
    let pulls: Vec<_> = (0..HOSTS)
        .map(|_| {
            let (cert_pem, url) = (cert_pem.to_owned(), url.to_owned());
            tokio::spawn(async move { pull(&cert_pem, &url, None).await })
        })
        .collect();
    let mut total = 0u64;
    for p in pulls {
        let got = p.await.map_err(|e| e.to_string())??;
        if got != size {
            return Err(format!("a pull of {url} got {got} of {size} bytes").into());
        }
        total += got;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// One GET over HTTP/1.1, following redirects, trusting `cert_pem` only: the
/// bytes counted (and written to `keep`, if given).
async fn pull(cert_pem: &str, url: &str, keep: Option<&Path>) -> BenchResult<u64> {
    use tokio::io::AsyncWriteExt;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes())?])
        .http1_only()
        .build()?;
    let work = async {
        let mut resp = http.get(url).send().await?.error_for_status()?;
        let mut out = match keep {
            Some(path) => Some(tokio::fs::File::create(path).await?),
            None => None,
        };
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            got += chunk.len() as u64;
            if let Some(out) = out.as_mut() {
                out.write_all(&chunk).await?;
            }
        }
        if let Some(mut out) = out {
            out.flush().await?;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(got)
    };
    tokio::time::timeout(PULL_TIMEOUT, work)
        .await
        .map_err(|_| format!("pulling {url} took over {PULL_TIMEOUT:?}"))?
}

/// nginx (Debian's package) serving `www` over HTTPS on a free loopback port.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    async fn start(dir: &Path, www: &Path, cert: &Path, key: &Path) -> BenchResult<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .ok_or("nginx is not installed: apt-get install nginx (./tests/run does)")?;
        let port = free_port()?;
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        // As root the workers would drop to nobody, who cannot read the
        // benchmark's private directory.
        let user = if is_root() { "user root;" } else { "" };
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "{user}\nworker_processes auto;\ndaemon off;\npid {pid};\nerror_log {log} warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  default_type application/octet-stream;\n  sendfile on;\n\
                   server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    \
                 ssl_certificate_key {key};\n    root {www};\n  }}\n}}\n",
                pid = prefix.join("nginx.pid").display(),
                log = prefix.join("logs/error.log").display(),
                cert = cert.display(),
                key = key.display(),
                www = www.display(),
            ),
        )?;
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut nginx = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = nginx.child.try_wait()? {
                let log =
                    std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}): {log}").into());
            }
            if Instant::now() > deadline {
                return Err("nginx did not listen within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, which stops its workers; SIGKILL would leave
        // them running.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The highest resident memory a process reaches while the sampler runs.
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<f64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0.0f64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                peak = peak.max(crate::procs::rss_mib(pid));
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = tick.tick() => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> f64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0.0)
    }
}
