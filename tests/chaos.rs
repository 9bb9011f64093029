//! Chaos, bounded: the real control plane and two real blob nodes (processes on
//! 127.0.0.1, one local store) are killed with SIGKILL at random moments and
//! started again, while clients upload unified and split images (resuming as
//! the CLI does) and download what is there. Afterwards: every image a client
//! was told is registered is there and exports to bytes that hash to its
//! fingerprint; nothing is there that no client sent; the catalog passes
//! SQLite's integrity check; and once abandoned sessions expire and collection
//! has run, the store holds exactly the objects the catalog records.
//!
//! The same on PostgreSQL with two control-plane replicas (each its own data
//! directory): clients and blob nodes are given both; the victims are the
//! replicas, the nodes and the database server itself (restarted as after a
//! crash).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imagestore_client::{Client, ExportTarget, NoProgress, Source, TlsOptions, UploadOptions};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_tests::*;

const WORKERS: usize = 4;
/// Each worker uploads new images for as long as the chaos lasts, at most this
/// many.
const MAX_IMAGES_PER_WORKER: usize = 60;
/// How long processes are killed for, and at most how many kills.
const CHAOS: Duration = Duration::from_secs(12);
const MAX_KILLS: usize = 24;
/// Bounds on the whole run after the chaos.
const SETTLE: Duration = Duration::from_secs(120);

const CP_ENV: &[(&str, &str)] = &[
    ("IMAGESTORE_UPLOAD_TTL", "4s"),
    ("IMAGESTORE_SWEEP_INTERVAL", "300ms"),
    ("IMAGESTORE_HEARTBEAT_INTERVAL", "1s"),
    ("IMAGESTORE_SCRUB_EVERY", "1s"),
];
const NODE_ENV: &[(&str, &str)] = &[
    ("IMAGESTORE_SEGMENT_BYTES", "262144"),
    ("IMAGESTORE_COMMIT_INTERVAL", "100ms"),
    ("IMAGESTORE_GC_INTERVAL", "200ms"),
    ("IMAGESTORE_STRAY_GRACE", "1s"),
];

struct Procs {
    dir: PathBuf,
    /// The catalog: SQLite in the one control plane's data directory, or this
    /// PostgreSQL under every replica.
    pg: Option<imagestore_tests::postgres::Postgres>,
    /// Each control plane's port, kept across restarts (0 before the first).
    ports: Vec<u16>,
    cps: Vec<Option<Process>>,
    nodes: Vec<Option<Process>>,
}

impl Procs {
    fn new(dir: &Path, pg: Option<imagestore_tests::postgres::Postgres>) -> Self {
        let replicas = if pg.is_some() { 2 } else { 1 };
        Self {
            dir: dir.to_owned(),
            pg,
            ports: vec![0; replicas],
            cps: (0..replicas).map(|_| None).collect(),
            nodes: vec![None, None],
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn cp_dir(&self, r: usize) -> PathBuf {
        self.dir.join(format!("cp{r}"))
    }

    /// Every control plane, as clients and nodes are given them.
    fn url(&self) -> String {
        (0..self.ports.len())
            .map(|r| self.url_of(r))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn url_of(&self, r: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[r])
    }

    async fn start_cp(&mut self, r: usize) {
        let listen = format!("127.0.0.1:{}", self.ports[r]);
        let data_dir = self.cp_dir(r);
        let mut args = vec![
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        if let Some(pg) = &self.pg {
            args.extend(["--database", &pg.url]);
        }
        let cp = Process::start(&binary("imagestore-control"), &args, CP_ENV).await;
        self.ports[r] = cp.addr.port();
        self.cps[r] = Some(cp);
    }

    async fn start_node(&mut self, n: usize) {
        let data = self.dir.join(format!("node{n}"));
        let credential = self.cp_dir(0).join("cluster-credential");
        let node = Process::start_until(
            &binary("imagestore-blob"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--control-plane",
                &self.url(),
                "--store",
                self.store().to_str().unwrap(),
                "--cluster-credential-file",
                credential.to_str().unwrap(),
            ],
            NODE_ENV,
            Some("registered with the control plane"),
        )
        .await;
        self.nodes[n] = Some(node);
    }

    fn external(&self) -> External {
        External {
            url: self.url_of(0),
            data_dir: self.cp_dir(0),
        }
    }
}

/// One image a worker makes: its files and the fingerprint LXD gives it.
fn make_image(dir: &Path, worker: usize, i: usize) -> (Source, String) {
    let seed = format!("{worker}-{i}");
    let meta = format!(
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: chaos\n  seed: \"{seed}\"\n"
    );
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add(&mut b, "metadata.yaml", meta.as_bytes());
    if i.is_multiple_of(2) {
        // Unified: a rootfs file of 1 to 3 MiB (four to twelve segments),
        // distinct per image.
        let size = (1 + (worker + i) % 3) << 20;
        let mut state = (worker * 131 + i * 7 + 1) as u64;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        add(&mut b, "rootfs/data", &data);
        let tarball = b.into_inner().unwrap();
        let path = dir.join(format!("u-{seed}.tar"));
        std::fs::write(&path, &tarball).unwrap();
        (Source::Unified(path), sha256_hex(&tarball))
    } else {
        let metadata = b.into_inner().unwrap();
        let rootfs = fixture("busybox-split-rootfs.squashfs");
        let (m, r) = (
            dir.join(format!("m-{seed}.tar")),
            dir.join(format!("r-{seed}.squashfs")),
        );
        std::fs::write(&m, &metadata).unwrap();
        std::fs::write(&r, &rootfs).unwrap();
        let fp = sha256_hex(&[metadata, rootfs].concat());
        (
            Source::Split {
                metadata: m,
                rootfs: r,
            },
            fp,
        )
    }
}

/// Failures a process dying mid-call explains (a session that expired while its
/// node was down, a lease another node took over, a connection cut).
fn explained_by_a_kill(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

async fn client(url: &str, token: &str) -> Option<Client> {
    Client::connect_with(url, Some(token), TlsOptions::default())
        .await
        .ok()
}

/// What the workers saw.
#[derive(Default)]
struct Seen {
    attempted: BTreeSet<String>,
    registered: BTreeSet<String>,
    downloads: usize,
    /// Uploads that failed at least once and were continued.
    interrupted: usize,
}

/// Uploads this worker's images (again and again until each is registered,
/// continuing the session as the CLI does) and downloads one registered image
/// after each.
async fn worker(n: usize, url: String, token: String, dir: PathBuf, seen: Arc<Mutex<Seen>>) {
    let started = Instant::now();
    let deadline = started + CHAOS + SETTLE / 2;
    for i in 0..MAX_IMAGES_PER_WORKER {
        if started.elapsed() > CHAOS {
            break;
        }
        let mut failed = false;
        let (source, fp) = make_image(&dir, n, i);
        seen.lock().unwrap().attempted.insert(fp.clone());
        // No retries within a call: this loop runs the upload again after each
        // failure, continuing the session as a second run of the CLI does.
        let opts = UploadOptions {
            resume_file: Some(dir.join(format!("resume-{n}-{i}.json"))),
            retries: 0,
            ..UploadOptions::default()
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "worker {n} could not upload image {i} in time"
            );
            let Some(c) = client(&url, &token).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match c.upload(&source, &opts, Arc::new(NoProgress)).await {
                Ok(image) => {
                    assert_eq!(image.fingerprint, fp, "the fingerprint LXD gives it");
                    break;
                }
                Err(e) if e.code() == tonic::Code::AlreadyExists => break,
                Err(e) => {
                    assert!(
                        explained_by_a_kill(e.code()),
                        "worker {n} image {i}: not a failure a kill explains: {e}"
                    );
                    failed = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        {
            let mut seen = seen.lock().unwrap();
            seen.registered.insert(fp.clone());
            seen.interrupted += usize::from(failed);
        }
        for file in source.files() {
            std::fs::remove_file(file).unwrap();
        }
        // A download of some registered image, while processes die.
        let target = dir.join(format!("down-{n}-{i}"));
        std::fs::create_dir_all(&target).unwrap();
        let pick = {
            let seen = seen.lock().unwrap();
            let k = i % seen.registered.len();
            seen.registered.iter().nth(k).cloned()
        };
        if let Some(fp) = pick
            && let Some(c) = client(&url, &token).await
        {
            let exported = c
                .export(
                    &format!("images/{fp}"),
                    false,
                    &ExportTarget::Directory(target.clone()),
                    10,
                    Arc::new(NoProgress),
                )
                .await;
            match exported {
                Ok(exported) => {
                    // The client keeps no file whose SHA-256 does not match; check
                    // anyway.
                    let bytes: Vec<u8> = exported
                        .files
                        .iter()
                        .flat_map(|f| std::fs::read(f).unwrap())
                        .collect();
                    assert_eq!(sha256_hex(&bytes), fp);
                    seen.lock().unwrap().downloads += 1;
                }
                Err(e) => assert!(
                    explained_by_a_kill(e.code()),
                    "worker {n}: not a download failure a kill explains: {e}"
                ),
            }
        }
        let _ = std::fs::remove_dir_all(&target);
    }
}

/// Object keys under the store, relative to it.
fn stored_keys(store: &Path) -> BTreeSet<String> {
    files_below(store)
        .into_iter()
        .map(|f| {
            f.strip_prefix(store)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_lose_nothing_invent_nothing_and_leave_no_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    chaos(Procs::new(tmp.path(), None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgresql_lose_nothing_through_kills_and_database_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = imagestore_tests::postgres::Postgres::start();
    chaos(Procs::new(tmp.path(), Some(pg))).await;
}

async fn chaos(mut cluster: Procs) {
    let tmp = cluster.dir.clone();
    for r in 0..cluster.cps.len() {
        cluster.start_cp(r).await;
    }
    for n in 0..2 {
        cluster.start_node(n).await;
    }
    let token = cluster.external().admin_token();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..WORKERS {
        workers.spawn(worker(
            n,
            cluster.url(),
            token.clone(),
            work.clone(),
            seen.clone(),
        ));
    }

    // Kill one process at a time at random, and start it again.
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..)),
    );
    eprintln!("chaos seed {} (CHAOS_SEED repeats a run)", rng.get_seed());
    let started = Instant::now();
    let mut kills = Vec::new();
    while started.elapsed() < CHAOS && kills.len() < MAX_KILLS && !workers.is_empty() {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..900))).await;
        let replicas = cluster.cps.len();
        let database = usize::from(cluster.pg.is_some());
        let victim = rng.usize(0..2 + replicas + database);
        if victim == 2 + replicas {
            let down = Duration::from_millis(rng.u64(0..300));
            cluster
                .pg
                .as_mut()
                .unwrap()
                .restart_after(|| std::thread::sleep(down));
            kills.push("database");
        } else if victim >= 2 {
            let r = victim - 2;
            cluster.cps[r].take().unwrap().kill().await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
            cluster.start_cp(r).await;
            kills.push("control plane");
        } else {
            cluster.nodes[victim].take().unwrap().kill().await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
            cluster.start_node(victim).await;
            kills.push("blob node");
        }
    }
    eprintln!("{} kills: {kills:?}", kills.len());
    tokio::time::timeout(SETTLE, async {
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("the workers finished after the chaos");

    let (attempted, registered, downloads, interrupted) = {
        let s = seen.lock().unwrap();
        (
            s.attempted.clone(),
            s.registered.clone(),
            s.downloads,
            s.interrupted,
        )
    };
    eprintln!(
        "{} images registered ({interrupted} of them after an interruption), {downloads} downloads",
        registered.len()
    );
    assert_eq!(
        registered, attempted,
        "every image a worker began was registered"
    );
    assert!(downloads > 0, "some downloads went through the chaos");
    assert!(interrupted > 0, "the kills hit uploads in flight");

    // Nothing lost, nothing invented.
    let ext = cluster.external();
    let listed: BTreeSet<String> = ext
        .images()
        .await
        .list_images(pb::ListImagesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.fingerprint)
        .collect();
    let lost: Vec<_> = registered.difference(&listed).collect();
    assert!(lost.is_empty(), "registered but gone: {lost:?}");
    let phantom: Vec<_> = listed.difference(&attempted).collect();
    assert!(phantom.is_empty(), "there but never sent: {phantom:?}");

    // Every image exports to bytes that hash to its fingerprint, part by part.
    let admin = client(&cluster.url(), &token).await.unwrap();
    for fp in &listed {
        let target = tmp.join(format!("verify-{fp}"));
        std::fs::create_dir_all(&target).unwrap();
        let exported = admin
            .export(
                &format!("images/{fp}"),
                false,
                &ExportTarget::Directory(target.clone()),
                3,
                Arc::new(NoProgress),
            )
            .await
            .unwrap_or_else(|e| panic!("{fp} does not export: {e}"));
        let mut all = Vec::new();
        for (file, part) in exported.files.iter().zip(&exported.image.parts) {
            let bytes = std::fs::read(file).unwrap();
            assert_eq!(sha256_hex(&bytes), part.sha256, "{fp}: {}", file.display());
            all.extend(bytes);
        }
        assert_eq!(&sha256_hex(&all), fp);
        std::fs::remove_dir_all(&target).unwrap();
    }

    // Once abandoned sessions expire and collection runs, the store holds
    // exactly the objects the catalog records for the images there.
    let mut registry = ext.registry().await;
    let mut recorded = BTreeSet::new();
    for fp in &listed {
        let found = registry
            .lookup_content(ipb::LookupContentRequest {
                fingerprint: fp.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            found.objects.len(),
            found.parts.len(),
            "{fp} has its object lists"
        );
        for list in found.objects {
            assert!(!list.objects.is_empty(), "{fp}");
            recorded.extend(list.objects.into_iter().map(|o| o.key));
        }
    }
    let store = cluster.store();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = stored_keys(&store);
        let missing: Vec<_> = recorded.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "recorded objects not stored: {missing:?}"
        );
        let orphans: HashSet<_> = stored.difference(&recorded).collect();
        if orphans.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "objects no image records, 30 s after the chaos: {orphans:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for node in cluster.nodes.iter_mut() {
        node.take().unwrap().terminate().await;
    }
    for cp in cluster.cps.iter_mut() {
        cp.take().unwrap().terminate().await;
    }
    if cluster.pg.is_some() {
        // PostgreSQL enforced its keys all along.
        return;
    }
    // The catalog, once its process stopped, passes SQLite's checks.
    let db = rusqlite::Connection::open(cluster.cp_dir(0).join("catalog.sqlite")).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let broken_keys: i64 = db
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(broken_keys, 0, "foreign keys hold");
}
