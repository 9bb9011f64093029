//! What a user runs: the `imagestore` binary importing and exporting the same
//! generated image against the same servers as the rest of the run, and with
//! `--lxd`, `lxc image import` and `export` of the same file, alternating.

use std::path::Path;
use std::time::Instant;

use crate::datapath::Sizes;
use crate::procs::System;
use crate::{BenchResult, Report, image, median, round2};

/// What the CLI's figures are compared with.
pub struct Limits {
    /// The bench's own upload of the same size, this run.
    pub upload_mb_s: f64,
    /// The lower of download_mb_s, hash_mb_s and disk_write_mb_s: an export
    /// downloads, checks and writes.
    pub export_mb_s: f64,
}

/// A command run to its end: seconds taken and what it printed.
fn timed(program: &Path, args: &[&str], env: &[(&str, &str)]) -> BenchResult<(f64, String)> {
    let started = Instant::now();
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{} {args:?}: {}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The fingerprint in "Image imported with fingerprint: …" (ours and lxc's).
fn imported(stdout: &str) -> BenchResult<String> {
    stdout
        .lines()
        .find_map(|l| l.split("fingerprint: ").nth(1))
        .map(|f| f.trim().to_owned())
        .ok_or_else(|| format!("no fingerprint in {stdout:?}").into())
}

/// `program ARGS OUT_DIR/` (an export into a fresh directory): MB/s of what it
/// wrote there, the directory removed after.
fn export_mb_s(
    program: &Path,
    args: &[&str],
    out_dir: &Path,
    env: &[(&str, &str)],
) -> BenchResult<f64> {
    std::fs::create_dir_all(out_dir)?;
    let target = format!("{}/", out_dir.display());
    let args: Vec<&str> = args.iter().copied().chain([target.as_str()]).collect();
    let (secs, _) = timed(program, &args, env)?;
    Ok(take_dir(out_dir)? as f64 / secs / 1e6)
}

/// Bytes of every file below `dir`, then removes it.
fn take_dir(dir: &Path) -> BenchResult<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        bytes += entry?.metadata()?.len();
    }
    std::fs::remove_dir_all(dir)?;
    Ok(bytes)
}

/// One import and one export with a client binary: MB/s each.
#[derive(Default)]
struct Pair {
    import: Vec<f64>,
    export: Vec<f64>,
}

pub async fn measure(
    report: &Report,
    system: &System,
    sizes: &Sizes,
    limits: &Limits,
    seed: u64,
) -> BenchResult {
    let ours = crate::procs::sibling("imagestore")?;
    let lxc = std::path::PathBuf::from("lxc");
    let config = system.dir.join("cli-config");
    let config = config.to_string_lossy();
    let env = [
        ("IMAGESTORE_REMOTE", system.control.url.as_str()),
        ("IMAGESTORE_TOKEN", system.admin_token.as_str()),
        ("IMAGESTORE_CONFIG_DIR", config.as_ref()),
    ];
    let (mut cli, mut lxd) = (Pair::default(), Pair::default());
    let (mut cli_cpu, mut cli_bytes) = (0.0, 0u64);
    for run in 0..sizes.runs as u64 {
        // A new image each run (nothing deduplicated), in the page cache as a
        // file just written is: what is measured is the path, not the disk.
        let file = system.dir.join(format!("cli-{run}.tar"));
        image::write_file(&file, sizes.size, seed + run)?;
        let total = std::fs::metadata(&file)?.len() as f64;
        let path = file.to_string_lossy();

        let cpu = crate::procs::ended_children_cpu_seconds();
        let (secs, out) = timed(&ours, &["import", &path], &env)?;
        cli.import.push(total / secs / 1e6);
        let fingerprint = imported(&out)?;
        // The import wrote with O_DIRECT, past the page cache.
        crate::datapath::cache_stored(system, &fingerprint).await?;
        let out_dir = system.dir.join(format!("cli-export-{run}"));
        cli.export.push(export_mb_s(
            &ours,
            &["export", &fingerprint],
            &out_dir,
            &env,
        )?);
        cli_cpu += crate::procs::ended_children_cpu_seconds() - cpu;
        cli_bytes += 2 * total as u64;
        timed(&ours, &["delete", &fingerprint], &env)?;

        if sizes.lxd {
            let (secs, out) = timed(&lxc, &["image", "import", &path], &[])?;
            lxd.import.push(total / secs / 1e6);
            let fingerprint = imported(&out)?;
            let out_dir = system.dir.join(format!("lxd-export-{run}"));
            lxd.export.push(export_mb_s(
                &lxc,
                &["image", "export", &fingerprint],
                &out_dir,
                &[],
            )?);
            timed(&lxc, &["image", "delete", &fingerprint], &[])?;
        }
        std::fs::remove_file(&file)?;
    }
    let (import, export) = (median(cli.import), median(cli.export));
    report.put("cli_import_mb_s", round2(import), "MB/s");
    report.put(
        "cli_import_ratio",
        round2(import / limits.upload_mb_s),
        "x upload_mb_s",
    );
    report.put("cli_export_mb_s", round2(export), "MB/s");
    report.put(
        "cli_export_ratio",
        round2(export / limits.export_mb_s),
        "x min(download, hash, disk write)",
    );
    report.put(
        "cli_cpu_s_per_gb",
        round2(cli_cpu / (cli_bytes as f64 / 1e9)),
        "CPU s/GB",
    );
    if sizes.lxd {
        let (lxd_import, lxd_export) = (median(lxd.import), median(lxd.export));
        report.put("lxd_import_mb_s", round2(lxd_import), "MB/s");
        report.put("lxd_export_mb_s", round2(lxd_export), "MB/s");
        report.put("lxd_import_ratio", round2(import / lxd_import), "x LXD");
        report.put("lxd_export_ratio", round2(export / lxd_export), "x LXD");
    }
    Ok(())
}
