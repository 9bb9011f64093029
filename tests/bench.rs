//! imagestore-bench keeps running and keeps its figure names (small sizes here;
//! the figures themselves are for people, never checked against a number).

use imagestore_tests::binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_reports_every_figure_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(binary("imagestore-bench"))
        .args([
            "--json",
            "--runs",
            "1",
            "--size-mib",
            "8",
            "--large-mib",
            "16",
            "--images",
            "200",
            "--fleet-mib",
            "4",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("the benchmark did not finish in 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let figure = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from\n{stdout}"))
    };
    for name in [
        "hash_mb_s",
        "grpc_sink_mb_s",
        "upload_mb_s",
        "upload_ratio",
        "disk_write_mb_s",
        "upload2_mb_s",
        "upload2_ratio",
        "download_mb_s",
        "download_ratio",
        "scan_tar_mb_s",
        "scan_tar_ratio",
        "scan_gz_mb_s",
        "scan_gz_ratio",
        "blob_rss_mib_1g",
        "blob_rss_mib_4g",
        "blob_rss_mib_32",
        "grpc_source_mb_s",
        "cli_import_mb_s",
        "cli_import_ratio",
        "cli_export_mb_s",
        "cli_export_ratio",
        "get_image_rps",
        "get_image_p50_ms",
        "get_image_p99_ms",
        "list_p99_ms",
        "register_ms",
        "startup_ms",
        "streams_index_ms",
        "fleet_pull_mb_s",
        "fleet_pull_ratio",
        "fleet_rss_mib",
    ] {
        let f = figure(name);
        assert!(
            f["value"].as_f64().is_some_and(|v| v > 0.0),
            "{name} has no positive value: {f}"
        );
        assert!(f["unit"].is_string(), "{f}");
    }
    // CPU figures need more bytes than this test moves: there, and a number
    // when they can be told.
    for name in [
        "upload_cpu_efficiency",
        "upload_cpu_efficiency_durable",
        "download_cpu_efficiency",
    ] {
        let f = figure(name);
        assert!(
            f["value"].is_null() || f["value"].as_f64().is_some_and(|v| v > 0.0),
            "{f}"
        );
    }
    // CPU seconds come in 10 ms ticks: at this size, zero is a fair count.
    for name in [
        "upload_cpu_s_per_gb",
        "disk_write_cpu_s_per_gb",
        "first_read_cpu_s_per_gb",
        "download_node_cpu_s_per_gb",
        "download_cpu_s_per_gb",
    ] {
        let f = figure(name);
        assert!(f["value"].as_f64().is_some_and(|v| v >= 0.0), "{f}");
    }
    // Nothing is left behind in the directory it was given.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
