//! What walking a whole image archive costs (every path, the compressed stream
//! to its checked end), against GNU tar listing the same file: the blob node
//! walks each upload so, on a thread of its own as the bytes arrive.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use imagestore_image::{ScanLimits, scan_tarball};

use crate::{BenchResult, Report, median, round2};

/// Writes a unified container image of about `size` bytes of rootfs files
/// (half text-like, half noise, so gzip sees a real ratio); returns the
/// tarball's path and its gzip-compressed twin.
fn make(dir: &Path, size: u64) -> BenchResult<(std::path::PathBuf, std::path::PathBuf)> {
    let tar_path = dir.join("scan.tar");
    let gz_path = dir.join("scan.tar.gz");
    let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&tar_path)?));
    let meta = b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: bench\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_mode(0o644);
    h.set_path("metadata.yaml")?;
    h.set_cksum();
    b.append(&h, &meta[..])?;
    const FILE: usize = 64 * 1024;
    let text: Vec<u8> = b"usr lib share bin etc var config library module "
        .iter()
        .copied()
        .cycle()
        .take(FILE / 2)
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = vec![0u8; FILE / 2];
    for n in 0..size.div_ceil(FILE as u64) {
        for byte in noise.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let data = [&text[..], &noise[..]].concat();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_path(format!("rootfs/usr/lib/f{n}"))?;
        h.set_cksum();
        b.append(&h, &data[..])?;
    }
    b.into_inner()?.flush()?;
    let mut gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(std::fs::File::create(&gz_path)?),
        flate2::Compression::default(),
    );
    std::io::copy(&mut std::fs::File::open(&tar_path)?, &mut gz)?;
    gz.finish()?.flush()?;
    Ok((tar_path, gz_path))
}

/// Seconds of the best of `runs` of `f` (the median is reported).
fn timed(runs: usize, mut f: impl FnMut() -> BenchResult) -> BenchResult<f64> {
    let mut secs = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        secs.push(started.elapsed().as_secs_f64());
    }
    Ok(median(secs))
}

/// GNU tar listing a file (`extra` picks the decompressor), output discarded.
fn tar_list(path: &Path, extra: &str) -> BenchResult {
    let status = std::process::Command::new("tar")
        .arg(format!("-t{extra}f"))
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("tar -t{extra}f failed: {status}").into());
    }
    Ok(())
}

pub fn measure(report: &Report, dir: &Path, size: u64, runs: usize) -> BenchResult {
    let (tar_path, gz_path) = make(dir, size)?;
    let tar_size = std::fs::metadata(&tar_path)?.len() as f64;
    for (name, path, flag) in [("tar", &tar_path, ""), ("gz", &gz_path, "z")] {
        let ours = timed(runs, || {
            let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
            let limits = ScanLimits::whole_archive(4 << 30);
            scan_tarball(file, true, limits)?;
            Ok(())
        })?;
        let gnu = timed(runs, || tar_list(path, flag))?;
        let mb_s = tar_size / ours / 1e6;
        let (figure, ratio, cpu) = match name {
            "tar" => ("scan_tar_mb_s", "scan_tar_ratio", "scan_tar_cpu_s_per_gb"),
            _ => ("scan_gz_mb_s", "scan_gz_ratio", "scan_gz_cpu_s_per_gb"),
        };
        report.put(figure, round2(mb_s), "MB/s of tar");
        report.put(ratio, round2(gnu / ours), "x GNU tar -t");
        // One thread reads, decompresses and walks: wall time is its CPU time.
        report.put(cpu, round2(ours / (tar_size / 1e9)), "CPU s/GB");
    }
    std::fs::remove_file(tar_path)?;
    std::fs::remove_file(gz_path)?;
    Ok(())
}
