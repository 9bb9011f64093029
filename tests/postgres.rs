//! The control plane on PostgreSQL (issue 17), against a real PostgreSQL 15
//! the test set-up starts as an unprivileged user on 127.0.0.1: replicas that
//! share claims and waits, a database restart under traffic, and moving a
//! SQLite installation over. (The catalog's behaviour suites run on it too,
//! from tests/run; the chaos suite kills replicas and the database.)

use std::collections::BTreeSet;
use std::time::Duration;

use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_tests::postgres::Postgres;
use imagestore_tests::{Cluster, ControlPlane, eventually, register, unified};
use tokio_stream::StreamExt;

#[test]
fn a_real_postgresql_starts_for_the_tests_and_answers() {
    let pg = Postgres::start();
    assert!(
        pg.psql("SHOW server_version").starts_with("15."),
        "PostgreSQL 15"
    );
    pg.psql("CREATE TABLE t (k text PRIMARY KEY, v text NOT NULL)");
    pg.psql("INSERT INTO t VALUES ('a', 'b')");
    assert_eq!(pg.psql("SELECT v FROM t WHERE k = 'a'"), "b");
    let port = pg.port;
    drop(pg);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server stops with its value"
    );
}

/// Two replicas, each with its own data directory, over one PostgreSQL.
async fn replicas(pg: &Postgres, dir: &std::path::Path) -> (ControlPlane, ControlPlane) {
    let url = pg.url.clone();
    let one = ControlPlane::start_with(&dir.join("one"), |c| c.database = url.clone()).await;
    let two = ControlPlane::start_with(&dir.join("two"), |c| c.database = url).await;
    (one, two)
}

/// Blob nodes long-polling ClaimImport on two replicas at once take every
/// queued import exactly once between them; progress reported to one replica
/// reaches a WaitOperation on the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_are_claimed_once_across_replicas_and_progress_is_seen_on_each() {
    const IMPORTS: usize = 12;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = replicas(&pg, dir.path()).await;

    // Two claimants per replica, waiting before anything is queued.
    let mut claimants = tokio::task::JoinSet::new();
    for (r, cp) in [&one, &two].into_iter().enumerate() {
        for n in 0..2 {
            let mut registry = cp.registry().await;
            claimants.spawn(async move {
                let mut got = Vec::new();
                loop {
                    let claimed = registry
                        .claim_import(ipb::ClaimImportRequest {
                            stores: Vec::new(),
                            node_id: format!("node-{r}-{n}"),
                            wait_seconds: 2,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    if claimed.operation.is_empty() {
                        return got;
                    }
                    got.push(claimed.operation);
                }
            });
        }
    }
    let mut queued = BTreeSet::new();
    for i in 0..IMPORTS {
        let op = one
            .catalog
            .create_import(
                format!("import {i}"),
                Vec::new(),
                None,
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        queued.insert(format!("operations/{}", op.id));
    }
    let mut claimed = Vec::new();
    while let Some(got) = claimants.join_next().await {
        claimed.extend(got.unwrap());
    }
    let distinct: BTreeSet<_> = claimed.iter().cloned().collect();
    assert_eq!(claimed.len(), distinct.len(), "claimed twice: {claimed:?}");
    assert_eq!(distinct, queued, "every import claimed");

    // Progress reported to replica one, seen by a wait on replica two.
    let op = queued.first().unwrap().clone();
    let holder = one
        .catalog
        .get_operation(op.trim_start_matches("operations/").into())
        .await
        .unwrap();
    assert_eq!(holder.state, imagestore_catalog::OperationState::Running);
    let mut stream = two
        .operations()
        .await
        .wait_operation(pb::WaitOperationRequest {
            name: op.clone(),
            timeout_seconds: 20,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(done_of(&first), 0, "{first:?}");
    let node_id = claimed_by(&pg, &op);
    let reported = std::time::Instant::now();
    one.registry()
        .await
        .report_import(ipb::ReportImportRequest {
            operation: op.clone(),
            node_id,
            stage: "download".into(),
            bytes_done: 4096,
            bytes_total: 8192,
            ..Default::default()
        })
        .await
        .unwrap();
    let seen = loop {
        let next = stream.next().await.unwrap().unwrap();
        if done_of(&next) == 4096 {
            break next;
        }
    };
    assert!(
        reported.elapsed() < Duration::from_secs(1),
        "seen on the other replica {:?} after the report",
        reported.elapsed()
    );
    assert_eq!(seen.progress.unwrap().bytes_total, 8192);
    two.stop().await;
    one.stop().await;
}

fn done_of(op: &pb::Operation) -> u64 {
    op.progress.as_ref().map_or(0, |p| p.bytes_done)
}

/// Which node holds an import, from the database itself.
fn claimed_by(pg: &Postgres, op: &str) -> String {
    let id = op.trim_start_matches("operations/");
    pg.psql(&format!(
        "SELECT node_id FROM import_jobs WHERE operation_id = '{id}'"
    ))
}

/// While PostgreSQL is down, calls answer UNAVAILABLE (worth a retry), never
/// a wrong answer; once it is back they succeed again, on the same replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_unavailable_then_success_never_a_wrong_answer() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url.clone();
    let cp = ControlPlane::start_with(dir.path(), |c| c.database = url).await;
    let image = register(&cp, unified("restart")).await;
    let images = cp.images().await;
    let get = || {
        let mut images = images.clone();
        let name = format!("images/{}", image.fingerprint);
        async move {
            images
                .get_image(pb::GetImageRequest {
                    name,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(get().await.unwrap(), image);
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        pg.restart_after(|| {
            handle.block_on(async {
                for _ in 0..3 {
                    let status = get().await.expect_err("the database is down");
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(status.message().contains("retry"), "{status:?}");
                }
            })
        })
    });
    eventually("calls to succeed again", || async {
        match get().await {
            Ok(found) => {
                assert_eq!(found, image, "the same answer as before");
                true
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                false
            }
        }
    })
    .await;
    // Writes too.
    register(&cp, unified("after the restart")).await;
    cp.stop().await;
}

/// An installation on SQLite moves to PostgreSQL with one command: every
/// image exports afterwards with its fingerprint, aliases and trust came
/// along, and a database that holds anything is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_catalog_moved_to_postgresql_keeps_every_image_exportable() {
    use imagestore_client::{ExportTarget, NoProgress, Source, UploadOptions};
    use imagestore_tests::{BlobNode, StoreSpec, binary, fixture, lxd_fingerprint, sha256_hex};

    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cp_dir = dir.path().join("cp");
    let store = StoreSpec::local(&dir.path().join("store"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let files = |names: &[&str]| -> Vec<std::path::PathBuf> {
        names
            .iter()
            .map(|n| {
                let p = work.join(n);
                std::fs::write(&p, fixture(n)).unwrap();
                p
            })
            .collect()
    };
    let unified = files(&["busybox-unified.tar.gz"]);
    let split = files(&["busybox-split-meta.tar.xz", "busybox-split-rootfs.squashfs"]);
    let sources = [
        (
            Source::Unified(unified[0].clone()),
            lxd_fingerprint("fx-unified-targz"),
            "moved/unified",
        ),
        (
            Source::Split {
                metadata: split[0].clone(),
                rootfs: split[1].clone(),
            },
            lxd_fingerprint("fx-split-squashfs"),
            "moved/split",
        ),
    ];

    // On SQLite: two images with an alias each.
    let cp = ControlPlane::start_with(&cp_dir, |c| c.database = "sqlite".into()).await;
    let node = BlobNode::start(&cp, &dir.path().join("node"), &store).await;
    let client = cp.client().await;
    for (source, fp, alias) in &sources {
        let opts = UploadOptions {
            aliases: vec![alias.to_string()],
            ..UploadOptions::default()
        };
        let image = client
            .upload(source, &opts, std::sync::Arc::new(NoProgress))
            .await
            .unwrap();
        assert_eq!(&image.fingerprint, fp);
    }
    node.stop().await;
    cp.stop().await;

    // One command; a second one into the same database is refused.
    let copy = || {
        std::process::Command::new(binary("imagestore-control"))
            .arg("--data-dir")
            .arg(&cp_dir)
            .args(["copy-catalog", "--to", &pg.url])
            .output()
            .unwrap()
    };
    let copied = copy();
    let said = String::from_utf8_lossy(&copied.stdout);
    assert!(
        copied.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(said.contains("images: 2 rows"), "{said}");
    assert!(said.contains("aliases: 2 rows"), "{said}");
    let again = copy();
    assert!(!again.status.success());
    let refusal = String::from_utf8_lossy(&again.stderr);
    assert!(refusal.contains("not empty"), "{refusal}");

    // On PostgreSQL: the same data directory (credentials), the same store.
    let url = pg.url.clone();
    let cp = ControlPlane::start_with(&cp_dir, |c| c.database = url).await;
    let node = BlobNode::start(&cp, &dir.path().join("node"), &store).await;
    let client = cp.client().await;
    for (_, fp, alias) in &sources {
        let found = cp
            .aliases()
            .await
            .get_alias(pb::GetAliasRequest {
                name: format!("aliases/{alias}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&found.target, fp, "{alias}");
        let target = work.join(format!("export-{fp}"));
        std::fs::create_dir_all(&target).unwrap();
        let exported = client
            .export(
                &format!("images/{fp}"),
                false,
                &ExportTarget::Directory(target),
                3,
                std::sync::Arc::new(NoProgress),
            )
            .await
            .unwrap_or_else(|e| panic!("{alias} does not export after the move: {e}"));
        assert_eq!(&exported.image.fingerprint, fp);
        let bytes: Vec<u8> = exported
            .files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect();
        assert_eq!(&sha256_hex(&bytes), fp, "{alias}");
    }
    node.stop().await;
    cp.stop().await;
}
