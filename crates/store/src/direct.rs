//! Segment files in a local directory, written with O_DIRECT.
//!
//! A buffered write costs a kernel copy of every byte into fresh page-cache
//! pages, and with fsync the same bytes are written back later anyway: on a blob
//! node that copy took two thirds of its CPU during an upload (perf,
//! `copy_folio_from_iter_atomic`), on a machine whose two cores also hash and
//! receive. O_DIRECT hands whole aligned blocks to the disk instead. Chunks are
//! copied once, in user space, into one of two aligned buffers: one fills while
//! a blocking thread writes the other, so the disk and the network overlap in
//! bounded memory. Filesystems without O_DIRECT (tmpfs) get the same code with
//! ordinary writes.
//!
//! A segment is staged as `{file}#{n}` (a name object_store's listing skips, as
//! its own multipart staging files), made durable, then renamed into place.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::task::JoinHandle;

/// Block alignment O_DIRECT needs for addresses, lengths and offsets (4096 covers
/// every logical block size in use).
const ALIGN: usize = 4096;
/// Bytes per write: large enough that the disk streams, small enough that two per
/// upload keep a node's memory low.
pub(crate) const BLOCK: usize = 4 << 20;

/// A [`BLOCK`]-sized buffer whose start is [`ALIGN`]-aligned.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start }
    }

    fn block(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }
}

/// What the blocking thread hands back after a write: the file and the buffer.
type Returned = io::Result<(File, Aligned)>;

pub(crate) struct DirectWriter {
    staging: PathBuf,
    target: PathBuf,
    /// The buffer being filled, and how much of it is.
    filling: Aligned,
    filled: usize,
    /// Owned here between writes, by the writing thread during one.
    file: Option<File>,
    spare: Option<Aligned>,
    writing: Option<JoinHandle<Returned>>,
    written: u64,
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
            filling: Aligned::new(),
            filled: 0,
            file: Some(file),
            spare: Some(Aligned::new()),
            writing: None,
            written: 0,
        })
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Copies `bytes` into the buffers, handing each full one to the disk.
    pub(crate) async fn put(&mut self, mut bytes: Bytes) -> io::Result<()> {
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = bytes.len().min(BLOCK - self.filled);
            self.filling.block()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            let _ = bytes.split_to(n);
            if self.filled == BLOCK {
                self.write_filled(BLOCK).await?;
            }
        }
        Ok(())
    }

    /// Waits for the write under way, then starts writing the first `len` bytes
    /// of the filled buffer (a multiple of [`ALIGN`]).
    async fn write_filled(&mut self, len: usize) -> io::Result<()> {
        self.wait().await?;
        let (Some(mut file), Some(spare)) = (self.file.take(), self.spare.take()) else {
            return Err(io::Error::other("segment writer used after a failed write"));
        };
        let mut full = std::mem::replace(&mut self.filling, spare);
        self.filled = 0;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            file.write_all(&full.block()[..len])?;
            Ok((file, full))
        }));
        Ok(())
    }

    /// Takes back the file and buffer from the write under way, if any.
    async fn wait(&mut self) -> io::Result<()> {
        if let Some(writing) = self.writing.take() {
            let (file, buf) = writing.await.map_err(io::Error::other)??;
            self.file = Some(file);
            self.spare = Some(buf);
        }
        Ok(())
    }

    /// Writes the rest, makes the file durable and puts it in place.
    pub(crate) async fn finish(mut self) -> io::Result<u64> {
        let tail = self.filled;
        if tail > 0 {
            // O_DIRECT writes whole blocks: pad with zeros, then cut the file back.
            let padded = tail.next_multiple_of(ALIGN);
            self.filling.block()[tail..padded].fill(0);
            self.write_filled(padded).await?;
        }
        self.wait().await?;
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("segment writer used after a failed write"))?;
        let size = self.written;
        let (staging, target) = (self.staging.clone(), self.target.clone());
        tokio::task::spawn_blocking(move || {
            file.set_len(size)?;
            file.sync_all()?;
            drop(file);
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
        let _ = self.wait().await;
        self.file = None;
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
        match open_direct(&staging) {
            Ok(file) => return Ok((file, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging name"))
}

fn open_direct(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut direct = options.clone();
        match direct.custom_flags(libc::O_DIRECT).open(path) {
            // Older tmpfs and some others refuse O_DIRECT, some after creating
            // the (new, so ours) file: write through the page cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(path);
            }
            other => return other,
        }
    }
    options.open(path)
}

/// Makes the rename durable: fsync of the directory that holds `path`.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
