//! The real `imagestore-control` binary: listening, configuration, health,
//! reflection through grpcurl (not our code), graceful shutdown and restart.

use std::process::Output;

use imagestore_proto::v1 as pb;
use imagestore_tests::*;

const SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "imagestore.internal.v1.Registry",
    "imagestore.v1.Aliases",
    "imagestore.v1.Images",
    "imagestore.v1.Imports",
    "imagestore.v1.Operations",
    "imagestore.v1.Trust",
    "imagestore.v1.Uploads",
];

async fn grpcurl(args: &[&str]) -> Output {
    tokio::process::Command::new(imagestore_tests::grpcurl())
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn start(dir: &std::path::Path) -> Process {
    Process::start(
        &binary("imagestore-control"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_every_service_without_proto_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr.to_string();
    let served = External {
        url: server.url(),
        data_dir: dir.path().to_owned(),
    };
    let as_node = format!("authorization: Bearer {}", served.cluster_credential());
    let as_admin = format!("authorization: Bearer {}", served.admin_token());

    // grpcurl 1.8.6 speaks reflection v1alpha only, so this proves v1alpha works.
    let list = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(list.status.success(), "{}", text(&list));
    let listed: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, SERVICES, "exactly the services this process serves");

    for service in SERVICES.iter().filter(|s| s.starts_with("imagestore")) {
        let d = grpcurl(&["-plaintext", &addr, "describe", service]).await;
        assert!(d.status.success(), "{service}: {}", text(&d));
        assert!(text(&d).contains("rpc "), "{service}: {}", text(&d));
    }
    // Comments from the .proto files travel with the descriptors: the API reference.
    let doc = grpcurl(&["-plaintext", &addr, "describe", "imagestore.v1.Image"]).await;
    assert!(
        text(&doc).contains("Lowercase hex SHA-256 fingerprint"),
        "{}",
        text(&doc)
    );

    // Calls: register content, read it back, and see an error code.
    let fp = sha256_hex(b"from grpcurl");
    let body = format!(
        r#"{{"fingerprint":"{fp}","type":"IMAGE_TYPE_CONTAINER","architecture":"x86_64",
            "layout":"IMAGE_LAYOUT_UNIFIED","filename":"x.tar.gz",
            "parts":[{{"role":"PART_ROLE_UNIFIED","sha256":"{fp}","size":"12","storage_key":"blobs/grpcurl/unified/"}}],
            "objects":[{{"objects":[{{"offset":"0","size":"12","key":"blobs/grpcurl/unified/00000000000000000000.t"}}]}}],
            "aliases":[{{"name":"from-grpcurl"}}]}}"#
    );
    let reg = grpcurl(&[
        "-plaintext",
        "-H",
        &as_node,
        "-d",
        &body,
        &addr,
        "imagestore.internal.v1.Registry/RegisterContent",
    ])
    .await;
    assert!(reg.status.success(), "{}", text(&reg));
    assert!(text(&reg).contains("\"created\": true"), "{}", text(&reg));
    let got = grpcurl(&[
        "-plaintext",
        "-H",
        &as_admin,
        "-d",
        r#"{"name":"aliases/from-grpcurl"}"#,
        &addr,
        "imagestore.v1.Images/GetImage",
    ])
    .await;
    assert!(got.status.success(), "{}", text(&got));
    let json: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(json["fingerprint"], fp.as_str());
    assert_eq!(json["aliases"][0]["name"], "from-grpcurl");
    let bad = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"images/ABC"}"#,
        &addr,
        "imagestore.v1.Images/GetImage",
    ])
    .await;
    assert!(!bad.status.success());
    assert!(text(&bad).contains("InvalidArgument"), "{}", text(&bad));
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(text(&health).contains("SERVING"), "{}", text(&health));
    let per_service = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"imagestore.v1.Images"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(
        text(&per_service).contains("SERVING"),
        "{}",
        text(&per_service)
    );

    assert!(server.terminate().await.status.success());
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let served = External {
        url: server.url(),
        data_dir: dir.path().to_owned(),
    };
    let mut registry = served.registry().await;
    let mut req = unified("survives restarts");
    req.aliases.push(pb::AliasSpec {
        name: "keeper".into(),
        description: String::new(),
    });
    let image = registry
        .register_content(req)
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    drop(registry);
    let stopped = server.terminate().await;
    assert!(
        stopped.status.success(),
        "exit status after SIGTERM: {:?}",
        stopped.status
    );
    assert!(stopped.log.iter().any(|l| l.contains("SIGTERM received")));
    assert!(stopped.log.iter().any(|l| l.contains("server stopped")));

    let server = start(dir.path()).await;
    let served = External {
        url: server.url(),
        data_dir: dir.path().to_owned(),
    };
    let mut images = served.images().await;
    let again = images
        .get_image(pb::GetImageRequest {
            name: "aliases/keeper".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, image);
    assert!(server.terminate().await.status.success());
}

#[tokio::test]
async fn configuration_comes_from_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().join("from-file");
    let env_dir = dir.path().join("from-env");
    let flag_dir = dir.path().join("from-flag");
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nheartbeat_interval = \"5s\"\n\n[log]\nformat = \"json\"\n",
            file_dir.display()
        ),
    )
    .unwrap();
    let bin = binary("imagestore-control");
    let cfg = config.to_str().unwrap();

    // The file alone. JSON logs: the bound address is in a JSON field.
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["--config", cfg])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let l = lines.next_line().await.unwrap().expect("exited early");
            if l.contains("listening") {
                return l;
            }
        }
    })
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert!(
        json["fields"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    child.kill().await.unwrap();
    assert!(file_dir.join("catalog.sqlite").exists());

    // The environment wins over the file; an unrelated IMAGESTORE_ variable is ignored.
    let server = Process::start(
        &bin,
        &["--config", cfg],
        &[
            ("IMAGESTORE_DATA_DIR", env_dir.to_str().unwrap()),
            ("IMAGESTORE_LOG__FORMAT", "text"),
            ("IMAGESTORE_REMOTE", "not-a-config-key"),
        ],
    )
    .await;
    assert!(env_dir.join("catalog.sqlite").exists());
    server.terminate().await;

    // Flags win over both.
    let server = Process::start(
        &bin,
        &["--config", cfg, "--data-dir", flag_dir.to_str().unwrap()],
        &[
            ("IMAGESTORE_DATA_DIR", env_dir.to_str().unwrap()),
            ("IMAGESTORE_LOG__FORMAT", "text"),
        ],
    )
    .await;
    assert!(flag_dir.join("catalog.sqlite").exists());
    server.terminate().await;
}

#[tokio::test]
async fn bad_configuration_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binary("imagestore-control");
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "listne = \"127.0.0.1:0\"\n").unwrap();
    let bad_duration = dir.path().join("duration.toml");
    std::fs::write(&bad_duration, "heartbeat_interval = \"soon\"\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--config".into(), typo.display().to_string()],
            "listne",
        ),
        (
            vec!["--config".into(), bad_duration.display().to_string()],
            "heartbeat_interval",
        ),
        (
            vec![
                "--config".into(),
                dir.path().join("missing.toml").display().to_string(),
            ],
            "does not exist",
        ),
        (
            vec!["--listen".into(), "not-an-address".into()],
            "cannot listen on not-an-address",
        ),
        (vec!["--no-such-flag".into()], "--no-such-flag"),
    ];
    for (args, needle) in cases {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::process::Command::new(&bin)
                .args(&args)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .output(),
        )
        .await
        .expect("a bad configuration must fail fast")
        .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
}

#[tokio::test]
async fn every_rpc_gets_its_own_span_in_structured_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(
        &binary("imagestore-control"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[
            ("IMAGESTORE_LOG__FORMAT", "json"),
            ("RUST_LOG", "imagestore_server=debug,tower_http=debug,info"),
        ],
    )
    .await;
    let mut images = pb::images_client::ImagesClient::connect(server.url())
        .await
        .unwrap();
    let missing = format!("images/{}", "a".repeat(64));
    for _ in 0..2 {
        let r = images
            .get_image(pb::GetImageRequest {
                name: missing.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    }
    drop(images);
    let stopped = server.terminate().await;
    let rpc_events: Vec<serde_json::Value> = stopped
        .log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["span"]["name"] == "rpc")
        .collect();
    let get_image: Vec<&serde_json::Value> = rpc_events
        .iter()
        .filter(|j| j["span"]["method"] == "/imagestore.v1.Images/GetImage")
        .collect();
    assert!(
        get_image.len() >= 2,
        "each GetImage call logs inside its own span: {:#?}",
        stopped.log
    );
}

#[tokio::test]
async fn the_example_configurations_in_deploy_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
    // The blob node reads the credential the control plane wrote (first).
    let credential = dir
        .path()
        .join("imagestore-control")
        .join(imagestore_auth::CLUSTER_CREDENTIAL_FILE);
    for (bin, file) in [
        ("imagestore-control", "control-plane.toml"),
        ("imagestore-blob", "blob-node.toml"),
    ] {
        let config = deploy.join(file);
        let data = dir.path().join(bin);
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        if bin == "imagestore-blob" {
            args.extend(["--cluster-credential-file", credential.to_str().unwrap()]);
        }
        let server = Process::start(&binary(bin), &args, &[]).await;
        assert!(server.terminate().await.status.success(), "{file}");
    }
}

/// The artefacts in deploy/ are what their tools accept: the Kubernetes
/// manifests by kubernetes-validate (strict, against the current API), the
/// systemd units by systemd-analyze verify (with ExecStart at the binaries
/// just built, since nothing is installed in /usr/local/bin here), and the
/// compose file and Containerfile name the binaries this workspace builds.
#[test]
fn the_deploy_artefacts_pass_their_validators() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let manifests: Vec<std::path::PathBuf> = std::fs::read_dir(deploy.join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(manifests.len() >= 3, "{manifests:?}");
    let out = std::process::Command::new(test_tool("kubernetes-validate"))
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate (installed by ./tests/run)");
    assert!(
        out.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["imagestore-control", "imagestore-blob"] {
        let text = std::fs::read_to_string(deploy.join(format!("systemd/{name}.service"))).unwrap();
        let installed = format!("/usr/local/bin/{name} ");
        assert!(text.contains(&installed), "{name}.service runs {installed}");
        let built = format!("{} ", binary(name).display());
        let unit = dir.path().join(format!("{name}.service"));
        std::fs::write(&unit, text.replace(&installed, &built)).unwrap();
        units.push(unit);
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy.join("compose.yaml")).unwrap())
            .unwrap();
    let services = compose["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 2);
    let containerfile = std::fs::read_to_string(deploy.join("container/Containerfile")).unwrap();
    for (_, service) in services {
        let program = service["command"][0].as_str().unwrap();
        let name = program.trim_start_matches("/usr/local/bin/");
        assert!(
            binary(name).exists(),
            "compose runs {program}, which is not built"
        );
        assert!(
            containerfile.contains(&format!("target/release/{name}")),
            "the image carries {name}"
        );
    }
    assert!(containerfile.contains("USER 10001"), "not root");
}

/// A real Prometheus scrapes `imagestore serve`'s /metrics, closed with a
/// bearer token file here, and answers, from its own HTTP API, the counters an
/// upload moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_what_an_upload_moved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let metrics_token = dir.path().join("metrics-token");
    std::fs::write(&metrics_token, "scrape-me\n").unwrap();
    let serve = Process::start_until(
        &binary("imagestore"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[(
            "IMAGESTORE_METRICS__TOKEN_FILE",
            metrics_token.to_str().unwrap(),
        )],
        Some("registered with the control plane"),
    )
    .await;
    let http = reqwest::Client::new();
    let metrics = format!("{}/metrics", serve.url());
    let anonymous = http.get(&metrics).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "metrics without the token");
    let refusal: serde_json::Value = anonymous.json().await.unwrap();
    assert!(
        refusal["error"].as_str().unwrap().contains("token_file"),
        "{refusal}"
    );
    let wrong = http
        .get(&metrics)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "metrics with another token");
    let scraped = http
        .get(&metrics)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("imagestore_requests_total")
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: imagestore\n    \
             authorization:\n      credentials_file: {}\n    \
             static_configs:\n      - targets: ['{}']\n",
            metrics_token.display(),
            serve.url().trim_start_matches("http://")
        ),
    )
    .unwrap();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (the Debian package, installed by ./tests/run)");
    let api = format!("http://127.0.0.1:{port}");
    eventually("Prometheus to be ready", || async {
        http.get(format!("{api}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // An upload, with the CLI.
    let cli = dir.path().join("cli");
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let url = serve.url();
    let file = dir.path().join("busybox.tar.gz");
    let image = fixture("busybox-unified.tar.gz");
    std::fs::write(&file, &image).unwrap();
    let (cli2, file2) = (cli.clone(), file.clone());
    tokio::task::spawn_blocking(move || {
        imagestore_cli_ok(
            &cli2,
            &["remote", "add", "s", &url, "--token", token.trim()],
        );
        imagestore_cli_ok(&cli2, &["import", file2.to_str().unwrap(), "s:", "--quiet"]);
    })
    .await
    .unwrap();

    let query = |q: &'static str| {
        let http = http.clone();
        let api = api.clone();
        async move {
            let url =
                reqwest::Url::parse_with_params(&format!("{api}/api/v1/query"), [("query", q)])
                    .ok()?;
            let answer: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    let size = image.len() as f64;
    eventually("Prometheus to hold the bytes the upload moved", || async {
        query("imagestore_blob_received_bytes_total")
            .await
            .is_some_and(|v| v >= size)
    })
    .await;
    eventually("Prometheus to count the upload RPC", || async {
        query("sum(imagestore_requests_total{method=\"/imagestore.v1.Blobs/Upload\",code=\"Ok\"})")
            .await
            .is_some_and(|v| v >= 1.0)
    })
    .await;
    eventually("the catalog's latency histogram", || async {
        query("sum(imagestore_catalog_operation_duration_seconds_count{kind=\"write\"})")
            .await
            .is_some_and(|v| v >= 1.0)
    })
    .await;
    eventually("the control plane's view of its blob node", || async {
        query("imagestore_blob_nodes{kind=\"healthy\"}")
            .await
            .is_some_and(|v| v == 1.0)
    })
    .await;
    serve.terminate().await;
}

/// One trace per user action: a client's `traceparent` becomes the parent of
/// the control plane's and the blob node's spans (named by their RPC), and the
/// node's calls back to the control plane during the upload are children of
/// its Upload span, all exported to a real OTLP receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_one_trace_across_both_tiers() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = tokio::process::Command::new(test_tool("python3"))
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp-receiver"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the OTLP receiver (opentelemetry-proto and grpcio, installed by ./tests/run)");
    let mut lines = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the receiver starts")
        .unwrap()
        .expect("the receiver prints its port");
    let port = serde_json::from_str::<serde_json::Value>(&first).unwrap()["listening"]
        .as_u64()
        .unwrap();
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let seen = spans.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(span) = serde_json::from_str(&line) {
                seen.lock().unwrap().push(span);
            }
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    // A site to import an image from by URL, which this control plane may reach.
    let imported = imagestore_tests::https::unified_image("traced import", &[]);
    let body = imported.clone();
    let site_port = lxd_url_site(
        sha256_hex(&imported),
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    )
    .await;
    let cp_config = dir.path().join("control-plane.toml");
    std::fs::write(
        &cp_config,
        format!(
            "[import_filtering]\nallowed_hosts = [\"127.0.0.1\"]\nallowed_ports = [{site_port}]\n\
             [import]\nreport_interval = \"50ms\"\n"
        ),
    )
    .unwrap();
    let cp_dir = dir.path().join("cp");
    let cp = Process::start(
        &binary("imagestore-control"),
        &[
            "--config",
            cp_config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            cp_dir.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    let credential = cp_dir.join("cluster-credential");
    let node_dir = dir.path().join("node");
    let blobs = dir.path().join("blobs");
    let node = Process::start_until(
        &binary("imagestore-blob"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            node_dir.to_str().unwrap(),
            "--control-plane",
            &cp.url(),
            "--store",
            blobs.to_str().unwrap(),
            "--cluster-credential-file",
            credential.to_str().unwrap(),
        ],
        &env,
        Some("registered with the control plane"),
    )
    .await;

    // The client's own span: a traceparent as any OpenTelemetry client sends.
    // Random ids: the SHA-256 of this test's directory (unique per run).
    let ids = sha256_hex(dir.path().to_string_lossy().as_bytes());
    let trace_id = ids[..32].to_owned();
    let client_span = ids[32..48].to_owned();
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let token = std::fs::read_to_string(cp_dir.join("admin-token")).unwrap();
    let headers = move |mut req: tonic::Request<()>| {
        let md = req.metadata_mut();
        md.insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        md.insert("traceparent", traceparent.parse().unwrap());
        Ok(req)
    };
    let channel = imagestore_client::connect(&cp.url()).await.unwrap();
    let session =
        pb::uploads_client::UploadsClient::with_interceptor(channel.clone(), headers.clone())
            .create_upload(pb::CreateUploadRequest {
                spec: Some(pb::UploadSpec {
                    layout: pb::ImageLayout::Unified as i32,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
    let image = fixture("busybox-unified.tar.gz");
    let node_channel = imagestore_client::connect(&session.blob_node)
        .await
        .unwrap();
    let mut msgs = upload_messages(
        pb::upload_request::FirstMessage::Upload(session.name.clone()),
        &[&image],
        64 * 1024,
    );
    msgs[0].ticket = session.ticket.clone();
    let done = pb::blobs_client::BlobsClient::with_interceptor(node_channel, headers.clone())
        .upload(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let fp = done.image.unwrap().fingerprint;

    // A URL import in the same trace: queued by ImportImage, run by the node.
    let queued =
        pb::imports_client::ImportsClient::with_interceptor(channel.clone(), headers.clone())
            .import_image(pb::ImportImageRequest {
                source: Some(pb::import_image_request::Source::Url(pb::UrlSource {
                    url: format!("http://127.0.0.1:{site_port}/image"),
                })),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let mut waiting = pb::operations_client::OperationsClient::with_interceptor(channel, headers)
        .wait_operation(pb::WaitOperationRequest {
            name: queued.name.clone(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = queued;
    while let Some(op) = tokio_stream::StreamExt::next(&mut waiting).await {
        last = op.unwrap();
    }
    assert_eq!(
        last.state,
        pb::OperationState::Succeeded as i32,
        "the import: {last:?}"
    );

    let all = |service: &str, name: &str| -> Vec<serde_json::Value> {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s["service"] == service && s["name"] == name && s["trace_id"] == trace_id.as_str()
            })
            .cloned()
            .collect()
    };
    let find = |service: &str, name: &str| all(service, name).into_iter().next();
    eventually("the spans of both tiers to reach the receiver", || async {
        find("imagestore-control", "/imagestore.v1.Uploads/CreateUpload").is_some()
            && find("imagestore-blob", "/imagestore.v1.Blobs/Upload").is_some()
            && find(
                "imagestore-control",
                "/imagestore.internal.v1.Registry/RegisterContent",
            )
            .is_some()
            && find(
                "imagestore-control",
                "/imagestore.internal.v1.Registry/OpenWrite",
            )
            .is_some()
    })
    .await;
    let create = find("imagestore-control", "/imagestore.v1.Uploads/CreateUpload").unwrap();
    assert_eq!(create["parent"], client_span.as_str(), "{create}");
    let upload = find("imagestore-blob", "/imagestore.v1.Blobs/Upload").unwrap();
    assert_eq!(upload["parent"], client_span.as_str(), "{upload}");
    assert_eq!(upload["attributes"]["image"], fp.as_str(), "{upload}");
    assert_eq!(
        upload["attributes"]["bytes"],
        image.len().to_string(),
        "{upload}"
    );
    assert!(
        upload["attributes"]["node"]
            .as_str()
            .is_some_and(|n| n.starts_with("node-")),
        "{upload}"
    );
    let child_of = |call: &str, parent: &serde_json::Value| {
        all(
            "imagestore-control",
            &format!("/imagestore.internal.v1.Registry/{call}"),
        )
        .into_iter()
        .find(|s| &s["parent"] == parent)
    };
    for call in ["OpenWrite", "RegisterContent"] {
        assert!(
            child_of(call, &upload["span_id"]).is_some(),
            "{call} is a child of the node's Upload: {:?}",
            spans.lock().unwrap()
        );
    }

    // The import: ImportImage under the client's span, the node's work under
    // ImportImage, and the node's registration under its work.
    eventually("the import's spans to reach the receiver", || async {
        find("imagestore-blob", "imagestore.import")
            .is_some_and(|work| child_of("RegisterContent", &work["span_id"]).is_some())
    })
    .await;
    let queue = find("imagestore-control", "/imagestore.v1.Imports/ImportImage").unwrap();
    assert_eq!(queue["parent"], client_span.as_str(), "{queue}");
    let work = find("imagestore-blob", "imagestore.import").unwrap();
    assert_eq!(
        work["parent"], queue["span_id"],
        "the node's import is a child of ImportImage: {work}"
    );

    // The CLI, exporting its own spans and started inside a trace (TRACEPARENT,
    // as CI systems pass it): the command is one span under it, and the
    // servers' spans are its children.
    let cli_span = ids[48..64].to_owned();
    let file = dir.path().join("cli-image.tar");
    std::fs::write(
        &file,
        imagestore_tests::https::unified_image("traced cli", &[]),
    )
    .unwrap();
    let token = std::fs::read_to_string(cp_dir.join("admin-token")).unwrap();
    let out = tokio::process::Command::new(binary("imagestore"))
        .args(["import", file.to_str().unwrap(), "--quiet"])
        .env("IMAGESTORE_REMOTE", cp.url())
        .env("IMAGESTORE_TOKEN", token.trim())
        .env("IMAGESTORE_CONFIG_DIR", dir.path().join("cli"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("TRACEPARENT", format!("00-{trace_id}-{cli_span}-01"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    eventually("the CLI's span, flushed as it exits", || async {
        find("imagestore", "imagestore import").is_some()
    })
    .await;
    let command = find("imagestore", "imagestore import").unwrap();
    assert_eq!(command["parent"], cli_span.as_str(), "{command}");
    eventually("the servers' spans under the CLI's", || async {
        all("imagestore-control", "/imagestore.v1.Uploads/CreateUpload")
            .iter()
            .chain(&all("imagestore-blob", "/imagestore.v1.Blobs/Upload"))
            .filter(|s| s["parent"] == command["span_id"])
            .count()
            == 2
    })
    .await;
    node.terminate().await;
    cp.terminate().await;
}
