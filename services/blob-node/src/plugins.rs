//! Import plugins (Glance's image_import_plugins), run in the administrator's
//! order after an import's bytes are verified and before it is registered:
//! `image_conversion` (a virtual machine's disk to the configured format, with
//! qemu-img, through the disk inspection) and `inject_image_metadata`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use imagestore_image::{DISK_HEADER_LEN, inspect_vm_disk};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_store::{BlobStore, StoredSegment, segment_key};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::NodeContext;
use crate::error::{BlobError, BlobResult};

/// The property that keeps a converted image's original fingerprint.
pub const ORIGINAL_FINGERPRINT: &str = "original_fingerprint";

/// What an import is about to register, as the plugins may change it.
pub struct Candidate {
    pub fingerprint: String,
    pub vm: bool,
    pub parts: Vec<pb::ImagePart>,
    pub objects: Vec<Vec<StoredSegment>>,
    pub properties: BTreeMap<String, String>,
}

/// Runs the configured plugins on `c`, whose bytes are in `store`; `roles`
/// are the importer's, `operation` the import's (for progress).
pub async fn run(
    node: &NodeContext,
    store: &BlobStore,
    c: &mut Candidate,
    roles: &[String],
    operation: &str,
) -> BlobResult<()> {
    let settings = node.stores.settings().plugins.unwrap_or_default();
    for plugin in &settings.plugins {
        let outcome = match plugin.as_str() {
            "image_conversion" => convert(node, store, c, &settings.output_format, operation).await,
            "inject_image_metadata" => {
                inject(c, &settings, roles);
                Ok(())
            }
            other => Err(format!("this blob node does not know the plugin {other:?}")),
        };
        outcome.map_err(|why| {
            BlobError::FailedPrecondition(format!("import plugin {plugin} failed: {why}"))
        })?;
    }
    Ok(())
}

/// Glance's inject_image_metadata: the configured properties, unless the
/// importer has a role the administrator exempted.
fn inject(c: &mut Candidate, settings: &ipb::ImportPlugins, roles: &[String]) {
    if roles.iter().any(|r| settings.ignore_user_roles.contains(r)) {
        return;
    }
    for (k, v) in &settings.inject {
        c.properties.insert(k.clone(), v.clone());
    }
}

/// qemu-img's name for a disk, from its first bytes (never probed by
/// qemu-img itself: the inspection accepted only these two).
fn disk_format(path: &Path) -> Result<&'static str, String> {
    let mut head = vec![0u8; DISK_HEADER_LEN];
    let n = std::fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(|e| format!("cannot read the disk: {e}"))?;
    inspect_vm_disk(&head[..n]).map_err(|e| e.to_string())?;
    Ok(if head.starts_with(b"QFI\xfb") {
        "qcow2"
    } else {
        "raw"
    })
}

/// The file in a unified virtual-machine image that is its disk.
const UNIFIED_DISK: &str = "rootfs.img";

/// Glance's image_conversion for a virtual-machine image: the disk (a split
/// image's rootfs part, or rootfs.img inside a unified image's tarball, which
/// is then written again as .tar.gz) is converted with qemu-img (formats given,
/// never probed) into new objects under the same part prefix, which replace
/// the original's; the image gets the fingerprint of its new bytes, and keeps
/// the old one in [`ORIGINAL_FINGERPRINT`]. A disk already in the format is
/// left alone.
async fn convert(
    node: &NodeContext,
    store: &BlobStore,
    c: &mut Candidate,
    output: &str,
    operation: &str,
) -> Result<(), String> {
    if !c.vm {
        return Ok(());
    }
    let started = Instant::now();
    let scratch = tempfile::tempdir_in(&node.config.scratch_dir)
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let source = scratch.path().join("source.img");
    let converted = scratch.path().join("converted.img");
    let disk_part = c.parts.len() - 1;
    let unified = c.parts.len() == 1;
    let tarball = scratch.path().join("image.tar");
    if unified {
        write_file(store, c.objects[0].clone(), &tarball)
            .await
            .map_err(|e| format!("cannot read the image from the store: {e}"))?;
        let (from, to) = (tarball.clone(), source.clone());
        let found = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&to)?;
            imagestore_image::repack::extract_file(
                std::io::BufReader::new(std::fs::File::open(&from)?),
                UNIFIED_DISK,
                std::io::BufWriter::new(file),
            )
        })
        .await
        .map_err(|e| format!("extracting task: {e}"))?
        .map_err(|e| format!("cannot read {UNIFIED_DISK} from the image: {e}"))?;
        if !found {
            return Err(format!("the image has no {UNIFIED_DISK}"));
        }
    } else {
        write_file(store, c.objects[disk_part].clone(), &source)
            .await
            .map_err(|e| format!("cannot read the disk from the store: {e}"))?;
    }
    let input = disk_format(&source)?;
    if input == output {
        return Ok(());
    }
    let (src, dst) = (source.clone(), converted.clone());
    let (input_owned, output_owned) = (input.to_owned(), output.to_owned());
    let cpu =
        tokio::task::spawn_blocking(move || qemu_img(&input_owned, &output_owned, &src, &dst))
            .await
            .map_err(|e| format!("qemu-img task: {e}"))??;
    let disk_size = std::fs::metadata(&converted)
        .map_err(|e| format!("qemu-img wrote nothing: {e}"))?
        .len();
    if disk_size > node.config.max_upload_bytes {
        return Err(format!(
            "the converted disk is {disk_size} bytes, more than this server takes ({} bytes)",
            node.config.max_upload_bytes
        ));
    }
    let got = disk_format(&converted).map_err(|e| format!("the converted disk is refused: {e}"))?;
    if got != output {
        return Err(format!("qemu-img wrote a {got} disk, not {output}"));
    }
    // What is stored: the new disk, or the tarball written again around it.
    let (new_file, extension) = if unified {
        let repacked = scratch.path().join("converted.tar.gz");
        let (from, disk, to) = (tarball.clone(), converted.clone(), repacked.clone());
        tokio::task::spawn_blocking(move || {
            imagestore_image::repack::replace_file(
                std::io::BufReader::new(std::fs::File::open(&from)?),
                UNIFIED_DISK,
                &disk,
                std::io::BufWriter::new(std::fs::File::create(&to)?),
            )
        })
        .await
        .map_err(|e| format!("repacking task: {e}"))?
        .map_err(|e| format!("cannot write the image again: {e}"))?;
        (repacked, ".tar.gz")
    } else {
        (converted, if output == "qcow2" { ".qcow2" } else { "" })
    };
    let size = std::fs::metadata(&new_file)
        .map_err(|e| format!("cannot read the converted image: {e}"))?
        .len();
    if size > node.config.max_upload_bytes {
        return Err(format!(
            "the converted image is {size} bytes, more than this server takes ({} bytes)",
            node.config.max_upload_bytes
        ));
    }

    // The new fingerprint: a split image's metadata bytes, then the new part's.
    let mut image = Sha256::new();
    if !unified {
        let mut meta = store.read_part(c.objects[0].clone(), 0, 0);
        while let Some(chunk) = meta.next().await {
            image.update(&chunk.map_err(|e| e.to_string())?);
        }
    }
    let prefix = c.parts[disk_part].storage_key.clone();
    let (objects, sha) = store_file(node, store, &new_file, &prefix, &mut image)
        .await
        .map_err(|e| format!("cannot store the converted image: {e}"))?;
    store
        .seal_part(&prefix, &objects, size)
        .await
        .map_err(|e| format!("cannot store the converted image: {e}"))?;
    let original = std::mem::replace(&mut c.fingerprint, hex::encode(image.finalize()));
    c.parts[disk_part].sha256 = sha;
    c.parts[disk_part].size = size;
    c.parts[disk_part].extension = extension.into();
    c.objects[disk_part] = objects;
    c.properties
        .insert(ORIGINAL_FINGERPRINT.into(), original.clone());
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        original,
        converted = c.fingerprint,
        from = input,
        to = output,
        cpu_seconds = cpu,
        seconds,
        "disk converted"
    );
    if !operation.is_empty() {
        let metadata = [
            ("conversion_cpu_seconds", format!("{cpu:.3}")),
            ("conversion_seconds", format!("{seconds:.3}")),
            ("conversion", format!("{input} to {output}")),
            (ORIGINAL_FINGERPRINT, original),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let _ = node
            .registry()
            .report_import(ipb::ReportImportRequest {
                operation: operation.to_owned(),
                node_id: node.id.clone(),
                stage: "convert".into(),
                bytes_done: size,
                bytes_total: size,
                metadata,
                ..Default::default()
            })
            .await;
    }
    Ok(())
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes a stored part into a local file.
async fn write_file(
    store: &BlobStore,
    objects: Vec<StoredSegment>,
    path: &Path,
) -> Result<(), String> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut data = store.read_part(objects, 0, 0);
    while let Some(chunk) = data.next().await {
        file.write_all(&chunk.map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())
}

/// Stores a local file as segment objects below `prefix` (a new writer's
/// keys), feeding `image` on the way; the objects and the file's SHA-256.
async fn store_file(
    node: &NodeContext,
    store: &BlobStore,
    path: &Path,
    prefix: &str,
    image: &mut Sha256,
) -> Result<(Vec<StoredSegment>, String), String> {
    use tokio::io::AsyncReadExt;
    let writer_tag = crate::ingest::writer_tag();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut part = Sha256::new();
    let mut objects = Vec::new();
    let mut offset = 0u64;
    let mut open: Option<(imagestore_store::SegmentWriter, String, u64)> = None;
    loop {
        let mut buf = vec![0u8; imagestore_store::READ_CHUNK];
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        let chunk = Bytes::from(buf);
        image.update(&chunk);
        part.update(&chunk);
        if open.is_none() {
            let key = segment_key(prefix, offset, &writer_tag);
            let w = store.begin_segment(&key).await.map_err(|e| e.to_string())?;
            open = Some((w, key, offset));
        }
        if let Some((w, _, _)) = open.as_mut() {
            w.put(chunk).await.map_err(|e| e.to_string())?;
        }
        offset += n as u64;
        if open
            .as_ref()
            .is_some_and(|(w, _, _)| w.written() >= node.config.segment_bytes)
            && let Some((w, key, start)) = open.take()
        {
            let size = w.finish().await.map_err(|e| e.to_string())?;
            objects.push(StoredSegment {
                offset: start,
                size,
                key,
            });
        }
    }
    if let Some((w, key, start)) = open.take() {
        let size = w.finish().await.map_err(|e| e.to_string())?;
        objects.push(StoredSegment {
            offset: start,
            size,
            key,
        });
    }
    Ok((objects, hex::encode(part.finalize())))
}

/// Runs `qemu-img convert` (formats given, so nothing is probed); returns the
/// CPU seconds it used.
#[allow(unsafe_code)]
fn qemu_img(input: &str, output: &str, from: &Path, to: &Path) -> Result<f64, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("qemu-img")
        .args(["convert", "-q", "-f", input, "-O", output])
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        let _ = pipe.take(64 * 1024).read_to_string(&mut stderr);
    }
    // wait4 rather than Child::wait: it also says what the child cost.
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain syscall on our own child; the rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        return Err(format!(
            "waiting for qemu-img failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "qemu-img convert -f {input} -O {output} failed: {}",
            stderr.trim()
        ));
    }
    Ok(cpu)
}
