//! Segment files in a local directory, written with O_DIRECT (imagestore-direct
//! says why). A segment is staged as `{file}#{n}` (a name object_store's listing
//! skips, as its own multipart staging files), made durable, then renamed into
//! place.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
#[cfg(test)]
pub(crate) use imagestore_direct::BLOCK;
use imagestore_direct::DirectFile;

pub(crate) struct DirectWriter {
    staging: PathBuf,
    target: PathBuf,
    file: Option<DirectFile>,
}

impl DirectWriter {
    /// Creates the staging file for `target` (and its directories).
    pub(crate) async fn create(target: PathBuf) -> io::Result<Self> {
        let (file, staging) = tokio::task::spawn_blocking({
            let target = target.clone();
            move || stage(&target)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Self {
            staging,
            target,
            file: Some(DirectFile::new(file, 0)?),
        })
    }

    fn file(&mut self) -> io::Result<&mut DirectFile> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the segment writer was finished"))
    }

    pub(crate) fn written(&self) -> u64 {
        self.file.as_ref().map_or(0, DirectFile::written)
    }

    /// Copies `bytes` into the buffers, handing each full one to the disk.
    pub(crate) async fn put(&mut self, bytes: Bytes) -> io::Result<()> {
        self.file()?.put(bytes).await
    }

    /// Writes the rest, makes the file durable and puts it in place.
    pub(crate) async fn finish(mut self) -> io::Result<u64> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the segment writer was finished"))?;
        let size = file.finish().await?;
        let (staging, target) = (self.staging.clone(), self.target.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&staging, &target)?;
            sync_dir(&target)
        })
        .await
        .map_err(io::Error::other)??;
        self.staging = PathBuf::new();
        Ok(size)
    }

    /// Stops and removes the staging file.
    pub(crate) async fn abort(mut self) -> io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            let _ = file.settle().await;
        }
        let staging = std::mem::take(&mut self.staging);
        match tokio::fs::remove_file(&staging).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for DirectWriter {
    /// A writer dropped without finish or abort (a task cancelled) leaves no
    /// staging file behind.
    fn drop(&mut self) {
        if !self.staging.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

/// Opens a new staging file beside `target`, with O_DIRECT where the filesystem
/// has it.
fn stage(target: &Path) -> io::Result<(File, PathBuf)> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    for n in 1u32.. {
        let mut staging = target.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = PathBuf::from(staging);
        match imagestore_direct::open(&staging, true) {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging name"))
}

/// Makes the rename durable: fsync of the directory that holds `path`.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
