//! Exports: the image's files as LXD names them, downloaded into `.partial` files
//! that a later run (or an automatic retry) continues from their length. Every
//! file is checked against its SHA-256 before it gets its final name.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Buf;
use imagestore_direct::DirectFile;
use imagestore_proto::frames::Pieces;
use imagestore_proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::{Client, Error, Progress};

/// Where `export` puts the files (LXD's rules for `lxc image export <image> [target]`).
#[derive(Debug, Clone)]
pub enum ExportTarget {
    /// Into a directory, under the names LXD gives them: `{fp}{ext}` for a unified
    /// image; `meta-{fp}{ext}` and `{fp}{ext}` for a split one.
    Directory(PathBuf),
    /// As a file path `foo`: unified → `foo` with the image's extension appended
    /// (unless it already ends with it); split → `foo` (metadata) and `foo.root`.
    File(PathBuf),
}

impl ExportTarget {
    /// A path as the user gave it: an existing directory (or one written with a
    /// trailing slash) is a directory, anything else a file path.
    pub fn from_path(path: &Path) -> Self {
        let slash = path.as_os_str().to_string_lossy().ends_with('/');
        if path.is_dir() || slash {
            ExportTarget::Directory(path.to_path_buf())
        } else {
            ExportTarget::File(path.to_path_buf())
        }
    }

    fn path_for(&self, file: &pb::ExportFile, split: bool) -> PathBuf {
        match self {
            ExportTarget::Directory(dir) => dir.join(&file.file_name),
            ExportTarget::File(path) if split => {
                if file.role == pb::PartRole::Rootfs as i32 {
                    let mut p = path.clone().into_os_string();
                    p.push(".root");
                    p.into()
                } else {
                    path.clone()
                }
            }
            ExportTarget::File(path) => {
                // The extension is everything after the first dot of LXD's name.
                let ext = file
                    .file_name
                    .split_once('.')
                    .map(|(_, e)| format!(".{e}"))
                    .unwrap_or_default();
                let s = path.to_string_lossy();
                if ext.is_empty() || s.ends_with(&ext) {
                    path.clone()
                } else {
                    PathBuf::from(format!("{s}{ext}"))
                }
            }
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub image: pb::Image,
    pub files: Vec<PathBuf>,
}

impl Client {
    /// Exports the image named `name` (fingerprint, prefix or alias; resolve it
    /// first for lxc's alias-before-prefix rule) to `target`.
    pub async fn export(
        &self,
        name: &str,
        vm: bool,
        target: &ExportTarget,
        retries: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<Exported, Error> {
        let request = pb::ExportImageRequest {
            name: name.to_owned(),
            r#type: if vm {
                pb::ImageType::VirtualMachine as i32
            } else {
                0
            },
            ..Default::default()
        };
        let mut export = self
            .images()
            .export_image(request.clone())
            .await?
            .into_inner();
        let split = export.files.len() == 2;
        if let ExportTarget::Directory(dir) = target {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut written = Vec::new();
        for i in 0..export.files.len() {
            let file = export.files[i].clone();
            let path = target.path_for(&file, split);
            let mut attempt = 0;
            loop {
                match self.download_file(&export, &file, &path, &*progress).await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() && attempt < retries => {
                        attempt += 1;
                        tracing::info!(error = %e, attempt, "download interrupted; resuming");
                        tokio::time::sleep(crate::backoff(attempt)).await;
                        // A fresh ticket and another node for the next try: the
                        // one that failed is reported, so it is passed over.
                        let retry = pb::ExportImageRequest {
                            unreachable_blob_node: export.blob_node.clone(),
                            ..request.clone()
                        };
                        if let Ok(fresh) = self.images().export_image(retry).await {
                            export = fresh.into_inner();
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            written.push(path);
        }
        Ok(Exported {
            image: export.image.unwrap_or_default(),
            files: written,
        })
    }

    /// Downloads one file to `path` through `path.partial`, continuing a partial
    /// file that an earlier attempt left.
    async fn download_file(
        &self,
        export: &pb::ExportImageResponse,
        file: &pb::ExportFile,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let partial = partial_path(path);
        let label = format!(
            "Exporting {}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        progress.start(&label, file.size);
        // Hash what is there already; anything longer than the file is not ours.
        let (mut out, mut hasher, have) = {
            let (partial, size) = (partial.clone(), file.size);
            tokio::task::spawn_blocking(move || open_partial(&partial, size))
                .await
                .map_err(|e| Error::Invalid(format!("reading the partial file: {e}")))??
        };
        progress.position(have);
        if have < file.size {
            let request = pb::DownloadRequest {
                fingerprint: export
                    .image
                    .as_ref()
                    .map(|i| i.fingerprint.clone())
                    .unwrap_or_default(),
                part: file.role,
                read_offset: have,
                read_limit: 0,
                ticket: export.ticket.clone(),
            };
            let mut download = self.download(&export.blob_node, &request).await?;
            // Hashing runs on a blocking thread of its own, fed the same chunks
            // (shared, not copied) through a short queue, while the file is
            // written with O_DIRECT from a few aligned buffers (imagestore-direct):
            // the network, the hash and the disk overlap.
            let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Pieces>(4);
            let hashing = tokio::task::spawn_blocking(move || {
                while let Some(data) = hash_rx.blocking_recv() {
                    for piece in data.into_slices() {
                        hasher.update(&piece);
                    }
                }
                hasher
            });
            let io = |e| Error::io(&partial, e);
            let mut done = have;
            let mut failure = None;
            'chunks: while let Some(chunk) = download.next().await {
                let data = match chunk {
                    Ok(data) if !data.has_remaining() => continue,
                    Ok(data) => data,
                    Err(s) => {
                        failure = Some(Error::from(s));
                        break;
                    }
                };
                done += data.remaining() as u64;
                if hash_tx.send(data.clone()).await.is_err() {
                    break;
                }
                for piece in data.into_slices() {
                    if let Err(e) = out.put(piece).await {
                        failure = Some(io(e));
                        break 'chunks;
                    }
                }
                progress.position(done);
            }
            drop(hash_tx);
            if failure.is_none() {
                out.finish().await.map_err(io)?;
            } else {
                // What reached the disk stays for the next run to continue from.
                let _ = out.settle().await;
            }
            hasher = hashing
                .await
                .map_err(|e| Error::Invalid(format!("hashing the export: {e}")))?;
            if let Some(e) = failure {
                return Err(e);
            }
            if done != file.size {
                return Err(Error::Status(tonic::Status::unavailable(format!(
                    "the download stopped after {done} of {} bytes",
                    file.size
                ))));
            }
        }
        finish(&partial, path, hasher, file)
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    p.into()
}

/// Opens (or creates) the partial file and hashes what it holds, up to its last
/// whole O_DIRECT block (the rest is fetched again).
fn open_partial(partial: &Path, size: u64) -> Result<(DirectFile, Sha256, u64), Error> {
    let io = |e| Error::io(partial, e);
    let mut hasher = Sha256::new();
    let mut have = 0u64;
    if let Ok(f) = std::fs::File::open(partial) {
        let len = f.metadata().map_err(io)?.len();
        if len <= size {
            let keep = len - len % imagestore_direct::ALIGN as u64;
            let mut kept = f.take(keep);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = kept.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
    }
    let out = imagestore_direct::open(partial, false).map_err(io)?;
    // Anything past what was hashed is fetched again (or is not ours).
    out.set_len(have).map_err(io)?;
    Ok((DirectFile::new(out, have).map_err(io)?, hasher, have))
}

fn finish(partial: &Path, path: &Path, hasher: Sha256, file: &pb::ExportFile) -> Result<(), Error> {
    let actual = hex::encode(hasher.finalize());
    if actual != file.sha256 {
        // Never keep bytes that do not hash right: the next run starts afresh.
        let _ = std::fs::remove_file(partial);
        return Err(Error::Integrity(format!(
            "{}: downloaded bytes hash to {actual}, expected {}; the partial file was removed, run the export again",
            path.display(),
            file.sha256
        )));
    }
    std::fs::rename(partial, path).map_err(|e| Error::io(path, e))
}
