//! Upload, two concurrent uploads, download and the blob node's memory: the real
//! control plane and blob node as separate processes, images streamed from memory.

use std::path::Path;
use std::time::Instant;

use imagestore_proto::v1 as pb;

use crate::limits::Transport;
use crate::procs::System;
use crate::{BenchResult, Report, image, median, round2};

/// What the data path is measured against, from the same run.
pub struct Baselines {
    pub hash_mb_s: f64,
    pub transport: Transport,
    pub disk: DiskWrite,
}

/// The local store's own writes, alone: what making an upload durable costs.
pub struct DiskWrite {
    pub mb_s: f64,
    pub cpu_s_per_gb: f64,
}

impl Baselines {
    /// The lower of SHA-256 and the bare sink: what one upload is bounded by.
    pub fn upload_limit(&self) -> f64 {
        self.hash_mb_s.min(self.transport.sink_mb_s)
    }

    /// The CPU a verified upload must cost per GB: hashing it and carrying it.
    pub fn upload_cpu_s_per_gb(&self) -> f64 {
        1000.0 / self.hash_mb_s + self.transport.sink_cpu_s_per_gb
    }

    /// The same, and writing it to the disk: what a verified upload that is
    /// also durable must cost.
    pub fn durable_upload_cpu_s_per_gb(&self) -> f64 {
        self.upload_cpu_s_per_gb() + self.disk.cpu_s_per_gb
    }
}

/// What CPU seconds should have been spent ÷ what was: null when too little
/// was spent to tell (/proc counts in 10 ms ticks; small `--size-mib`).
fn efficiency(expected: f64, spent: f64) -> serde_json::Value {
    if spent < 0.1 {
        return serde_json::Value::Null;
    }
    round2(expected / spent).into()
}

/// One verified upload from the first byte to the registered image: (image, s).
async fn upload(system: &System, size: u64, seed: u64) -> BenchResult<(pb::Image, f64)> {
    // Any node continues any session; the current node is the one measured.
    upload_to(&system.client().await?, &system.blob.url, size, seed, false).await
}

/// A generated unified image of `size` bytes uploaded through `node`: the
/// registered image and the seconds from the first byte to it.
pub async fn upload_to(
    client: &imagestore_client::Client,
    node: &str,
    size: u64,
    seed: u64,
    public: bool,
) -> BenchResult<(pb::Image, f64)> {
    let total = image::total_size(size, seed);
    let session = client
        .uploads()
        .create_upload(pb::CreateUploadRequest {
            spec: Some(pb::UploadSpec {
                layout: pb::ImageLayout::Unified as i32,
                metadata_size: total,
                filename: format!("bench-{seed}.tar"),
                public,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut blobs = client.blobs(node).await?;
    let started = Instant::now();
    let done = blobs
        .upload(image::upload_messages(
            session.name,
            session.ticket,
            size,
            seed,
        ))
        .await?
        .into_inner();
    let secs = started.elapsed().as_secs_f64();
    let image = done.image.ok_or("the upload finished without an image")?;
    if image.size != total {
        return Err(format!("registered {} bytes, sent {total}", image.size).into());
    }
    Ok((image, secs))
}

async fn delete(system: &System, image: &pb::Image) -> BenchResult {
    system
        .client()
        .await?
        .images()
        .delete_image(pb::DeleteImageRequest {
            name: image.name.clone(),
        })
        .await?;
    Ok(())
}

/// One stream, `runs` times: upload_mb_s, upload_ratio and the CPU it costs
/// against what it must cost. Returns the median and the first image, kept for
/// the download.
pub async fn upload_figures(
    report: &Report,
    system: &System,
    size: u64,
    runs: usize,
    baselines: &Baselines,
) -> BenchResult<(f64, pb::Image)> {
    let limit = baselines.upload_limit();
    let mut one = Vec::new();
    let mut kept = None;
    let (mut cpu_node, mut cpu_all, mut bytes) = (0.0, 0.0, 0u64);
    for seed in 1..=runs as u64 {
        let before = cpu_split(system);
        let (image, secs) = upload(system, size, seed).await?;
        let after = cpu_split(system);
        cpu_node += after.0 - before.0;
        cpu_all += after.1 - before.1;
        bytes += image.size;
        one.push(image.size as f64 / secs / 1e6);
        match kept {
            None => kept = Some(image),
            Some(_) => delete(system, &image).await?,
        }
    }
    let upload_mb_s = median(one);
    report.put("upload_mb_s", round2(upload_mb_s), "MB/s");
    report.put(
        "upload_ratio",
        round2(upload_mb_s / limit),
        "x min(hash, sink)",
    );
    // The CPU an upload costs, client included (they share this machine's cores):
    // nproc divided by it is the fastest these cores could carry one.
    let gb = bytes as f64 / 1e9;
    report.put(
        "upload_node_cpu_s_per_gb",
        round2(cpu_node / gb),
        "CPU s/GB",
    );
    report.put("upload_cpu_s_per_gb", round2(cpu_all / gb), "CPU s/GB");
    report.put(
        "upload_cpu_efficiency",
        efficiency(baselines.upload_cpu_s_per_gb() * gb, cpu_all),
        "x (1000/hash + sink CPU) / upload CPU",
    );
    report.put(
        "upload_cpu_efficiency_durable",
        efficiency(baselines.durable_upload_cpu_s_per_gb() * gb, cpu_all),
        "x (1000/hash + sink + disk write CPU) / upload CPU",
    );
    let bound = crate::limits::nproc() as f64 * 1e3 / (cpu_all / gb);
    report.put("upload_cpu_bound_mb_s", round2(bound), "MB/s");
    Ok((upload_mb_s, kept.ok_or("no image was kept")?))
}

/// CPU seconds so far: (the blob node's, the blob node's + the control plane's +
/// this client's).
fn cpu_split(system: &System) -> (f64, f64) {
    let node = system.blob.cpu_seconds();
    let all = node + system.control.cpu_seconds() + crate::procs::cpu_seconds("self");
    (node, all)
}

/// What to measure with.
pub struct Sizes {
    pub size: u64,
    pub large: u64,
    pub runs: usize,
    /// Measure LXD's `lxc image import` and `export` beside the CLI.
    pub lxd: bool,
}

pub async fn measure(
    report: &Report,
    system: &mut System,
    sizes: &Sizes,
    baselines: &Baselines,
) -> BenchResult {
    let (size, large, runs) = (sizes.size, sizes.large, sizes.runs);
    let limit = baselines.upload_limit();
    let (upload_mb_s, kept) = upload_figures(report, system, size, runs, baselines).await?;
    let mut seed = runs as u64 + 1;
    // A verified upload is also durable: it can be no faster than the store
    // writes the same bytes.
    let disk = baselines.disk.mb_s;
    report.put(
        "upload_ratio_disk",
        round2(upload_mb_s / limit.min(disk)),
        "x min(hash, sink, disk)",
    );
    report.put("blob_rss_mib_1g", round2(system.blob.peak_rss_mib()), "MiB");

    let mut two = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let (a, b) = tokio::join!(upload(system, size, seed), upload(system, size, seed + 1));
        let secs = started.elapsed().as_secs_f64();
        seed += 2;
        let (a, b) = (a?.0, b?.0);
        two.push((a.size + b.size) as f64 / secs / 1e6);
        delete(system, &a).await?;
        delete(system, &b).await?;
    }
    let upload2 = median(two);
    report.put("upload2_mb_s", round2(upload2), "MB/s");
    report.put(
        "upload2_ratio",
        round2(upload2 / upload_mb_s),
        "x one stream",
    );

    let download_mb_s = download(report, system, &kept, runs, baselines).await?;
    delete(system, &kept).await?;

    // What a user runs: the CLI against the same servers, the same bytes.
    let export_limit = download_mb_s.min(baselines.hash_mb_s).min(disk);
    let limits = crate::cli::Limits {
        upload_mb_s,
        export_mb_s: export_limit,
    };
    crate::cli::measure(report, system, sizes, &limits, seed).await?;
    seed += 2 * runs as u64;

    concurrent_memory(report, system, size, seed).await?;
    seed += 32;

    // A fresh node process, so that its peak memory is this upload's alone.
    system.restart_blob("node-2").await?;
    let (image, secs) = upload(system, large, seed).await?;
    report.put(
        "upload_large_mb_s",
        round2(image.size as f64 / secs / 1e6),
        "MB/s",
    );
    report.put("blob_rss_mib_4g", round2(system.blob.peak_rss_mib()), "MiB");
    delete(system, &image).await?;
    Ok(())
}

/// Many transfers at once on a fresh node: its memory grows by a bounded amount
/// per transfer (blob_rss_mib_32), from what it holds idle (blob_rss_mib_idle).
pub async fn concurrent_memory(
    report: &Report,
    system: &mut System,
    size: u64,
    seed: u64,
) -> BenchResult {
    system.restart_blob("node-3").await?;
    report.put(
        "blob_rss_mib_idle",
        round2(system.blob.peak_rss_mib()),
        "MiB",
    );
    let each = (size / 32).max(1 << 20);
    let started = std::time::Instant::now();
    let uploads = (0..32).map(|i| upload(system, each, seed + i));
    let done = futures::future::join_all(uploads).await;
    let secs = started.elapsed().as_secs_f64();
    report.put("blob_rss_mib_32", round2(system.blob.peak_rss_mib()), "MiB");
    report.put(
        "upload32_mb_s",
        round2((32 * each) as f64 / secs / 1e6),
        "MB/s",
    );
    for one in done {
        delete(system, &one?.0).await?;
    }
    Ok(())
}

/// download_mb_s against a plain read of the stored files, and the CPU a
/// download costs against the bare source's plus the read's. Returns
/// download_mb_s.
async fn download(
    report: &Report,
    system: &System,
    image: &pb::Image,
    runs: usize,
    baselines: &Baselines,
) -> BenchResult<f64> {
    let client = system.client().await?;
    let part = image.parts.first().ok_or("an image without parts")?;
    let ticket = client
        .images()
        .export_image(pb::ExportImageRequest {
            name: image.name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .ticket;
    let files = stored_files(&system.store().join(&part.storage_key))?;
    // The upload wrote the files past the page cache (O_DIRECT). They are read
    // once first, so that every run measures the path from the page cache, as
    // its baseline (a plain read) reads them: what a first read costs is the
    // disk's and the machine's (on a VM that gives freed memory back to its
    // host, up to several CPU s/GB of page faults), reported on its own.
    let cpu = crate::procs::cpu_seconds("self");
    let first = read_all(&files)?;
    report.put(
        "first_read_cpu_s_per_gb",
        round2((crate::procs::cpu_seconds("self") - cpu) / (first as f64 / 1e9)),
        "CPU s/GB",
    );
    let mut down = Vec::new();
    let mut plain = Vec::new();
    let (mut node_cpu, mut down_cpu, mut read_cpu, mut bytes) = (0.0, 0.0, 0.0, 0u64);
    for _ in 0..runs {
        let mut blobs = client.blobs(&system.blob.url).await?;
        let before = cpu_split(system);
        let started = Instant::now();
        let got = crate::limits::download(
            &mut blobs,
            pb::DownloadRequest {
                fingerprint: image.fingerprint.clone(),
                part: pb::PartRole::Unified as i32,
                ticket: ticket.clone(),
                ..Default::default()
            },
        )
        .await?;
        down.push(got as f64 / started.elapsed().as_secs_f64() / 1e6);
        let after = cpu_split(system);
        node_cpu += after.0 - before.0;
        down_cpu += after.1 - before.1;
        bytes += got;
        if got != part.size {
            return Err(format!("downloaded {got} of {} bytes", part.size).into());
        }
        let cpu = crate::procs::cpu_seconds("self");
        let started = Instant::now();
        let read = read_all(&files)?;
        plain.push(read as f64 / started.elapsed().as_secs_f64() / 1e6);
        read_cpu += crate::procs::cpu_seconds("self") - cpu;
    }
    let gb = bytes as f64 / 1e9;
    report.put(
        "download_node_cpu_s_per_gb",
        round2(node_cpu / gb),
        "CPU s/GB",
    );
    report.put("download_cpu_s_per_gb", round2(down_cpu / gb), "CPU s/GB");
    report.put("plain_read_cpu_s_per_gb", round2(read_cpu / gb), "CPU s/GB");
    report.put(
        "download_cpu_efficiency",
        efficiency(
            baselines.transport.source_cpu_s_per_gb * gb + read_cpu,
            down_cpu,
        ),
        "x (source + read CPU) / download CPU",
    );
    let (down, plain) = (median(down), median(plain));
    report.put("download_mb_s", round2(down), "MB/s");
    report.put("plain_read_mb_s", round2(plain), "MB/s");
    report.put("download_ratio", round2(down / plain), "x plain read");
    if let Some(direct) = direct_read_mb_s(&files) {
        report.put("disk_direct_read_mb_s", round2(direct), "MB/s");
    }
    Ok(down)
}

/// Writes `size` bytes in 1 MiB chunks through the local store's own segment
/// writer (as the blob node stores an upload: O_DIRECT where the filesystem has
/// it, fsync, rename), without network or hashing, in `dir`: disk_write_mb_s
/// and disk_write_cpu_s_per_gb. Each run writes a new object and all are
/// removed at the end: rewriting one would reuse what the last run freed, which
/// an upload never gets.
pub async fn disk_write(
    report: &Report,
    dir: &Path,
    size: u64,
    runs: usize,
) -> BenchResult<DiskWrite> {
    let store = imagestore_store::BlobStore::open(
        &dir.join("disk-write-probe").display().to_string(),
        &Default::default(),
    )?;
    // Chunks from 8 MiB of memory in turn: more than a core's cache holds, as
    // an upload's frames are each new, where one chunk over and over would be
    // copied from the cache.
    const CHUNK: usize = 1 << 20;
    let memory = bytes::Bytes::from(vec![0x5au8; 8 * CHUNK]);
    let mut figures = Vec::new();
    let (mut cpu, mut bytes) = (0.0, 0u64);
    for run in 0..runs {
        let before = crate::procs::cpu_seconds("self");
        let started = Instant::now();
        let part = imagestore_store::layout::part_prefix("probe", "unified");
        let key = imagestore_store::segment_key(&part, run as u64, "probe");
        let mut writer = store.begin_segment(&key).await?;
        for i in 0..size.div_ceil(CHUNK as u64) as usize {
            let at = i % 8 * CHUNK;
            writer.put(memory.slice(at..at + CHUNK)).await?;
        }
        bytes += writer.finish().await?;
        figures.push(size as f64 / started.elapsed().as_secs_f64() / 1e6);
        cpu += crate::procs::cpu_seconds("self") - before;
    }
    store
        .delete(&imagestore_store::layout::upload_prefix("probe"))
        .await?;
    let disk = DiskWrite {
        mb_s: median(figures),
        cpu_s_per_gb: cpu / (bytes as f64 / 1e9),
    };
    report.put("disk_write_mb_s", round2(disk.mb_s), "MB/s");
    report.put(
        "disk_write_cpu_s_per_gb",
        round2(disk.cpu_s_per_gb),
        "CPU s/GB",
    );
    Ok(disk)
}

/// Reads every stored file of `fingerprint`'s parts once, so that what a later
/// read of them measures is the path, not the disk: as `download_mb_s`'s runs
/// after the first, and as a file just written is for an import.
pub async fn cache_stored(system: &System, fingerprint: &str) -> BenchResult {
    let image = system
        .client()
        .await?
        .images()
        .get_image(pb::GetImageRequest {
            name: format!("images/{fingerprint}"),
            ..Default::default()
        })
        .await?
        .into_inner();
    for part in &image.parts {
        read_all(&stored_files(&system.store().join(&part.storage_key))?)?;
    }
    Ok(())
}

/// The objects of one stored part, in offset order.
fn stored_files(dir: &Path) -> BenchResult<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn read_all(files: &[std::path::PathBuf]) -> BenchResult<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for f in files {
        let mut file = std::fs::File::open(f)?;
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
    }
    Ok(total)
}

/// The disk itself, bypassing the page cache (dd with O_DIRECT), when possible.
fn direct_read_mb_s(files: &[std::path::PathBuf]) -> Option<f64> {
    let mut bytes = 0u64;
    let started = Instant::now();
    for f in files {
        let ok = std::process::Command::new("dd")
            .arg(format!("if={}", f.display()))
            .args(["of=/dev/null", "bs=4M", "iflag=direct"])
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        bytes += std::fs::metadata(f).ok()?.len();
    }
    Some(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}
