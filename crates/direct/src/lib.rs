//! Bulk file I/O without work the bytes do not need: files written with
//! O_DIRECT, chunks read into memory that is not zeroed first, and files read
//! once past the page cache where they are not in it.
//!
//! A buffered write costs a kernel copy of every byte into fresh page-cache
//! pages, and with fsync the same bytes are written back later anyway: on a blob
//! node that copy took two thirds of its CPU during an upload (perf,
//! `copy_folio_from_iter_atomic`), and an export through the page cache ran at
//! 245–620 MB/s where O_DIRECT writes stream at ~2 GB/s on the same disk (dd).
//! O_DIRECT hands whole aligned blocks to the disk instead. Chunks are copied
//! once, in user space, into one of a few aligned buffers: one fills while
//! blocking threads write the others at their offsets, so the disk and the
//! caller overlap in bounded memory. Filesystems without O_DIRECT (tmpfs) get
//! the same code with ordinary writes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinHandle;

/// Block alignment O_DIRECT needs for addresses, lengths and offsets (4096 covers
/// every logical block size in use).
pub const ALIGN: usize = 4096;
/// Bytes per write. On the VMs here O_DIRECT writes of 1 MiB stream as fast as
/// 4 MiB ones (dd: 1.1–1.3 GB/s against 0.7–0.9).
pub const BLOCK: usize = 1 << 20;
/// Buffers per file at most: one filling while the others are on their way to
/// the disk, written at their offsets in parallel so that a slow write does not
/// stall the stream.
const DEPTH: usize = 4;
/// Buffers beyond each file's own, shared by every file of the process: a
/// file's first buffer is its own, the rest come from this allowance while it
/// lasts. Memory stays bounded however many files are open at once (a node
/// with 32 uploads held 4 MiB each here, beyond everything else); a file that
/// finds the allowance spent writes with its one buffer, waiting for each
/// write.
pub const WRITE_BEHIND: usize = 16;
/// Buffers of the allowance in use now.
static BEHIND: AtomicUsize = AtomicUsize::new(0);
/// Buffers that closed files gave back, reused rather than allocated and
/// faulted in afresh (at most WRITE_BEHIND).
static SPARE: Mutex<Vec<Aligned>> = Mutex::new(Vec::new());

/// A buffer from the allowance, if it is not spent.
fn behind() -> Option<Aligned> {
    BEHIND
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < WRITE_BEHIND).then_some(n + 1)
        })
        .ok()?;
    Some(Aligned::take())
}

/// A [`BLOCK`]-sized buffer whose start is [`ALIGN`]-aligned.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    /// A spare buffer, or a new one.
    fn take() -> Self {
        if let Some(spare) = SPARE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return spare;
        }
        let raw = vec![0u8; BLOCK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start }
    }

    /// Keeps this buffer for the next file, while there are few spares.
    fn give_back(self) {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < WRITE_BEHIND {
            spare.push(self);
        }
    }

    /// No buffer: what a file holds while its only one is being written.
    fn empty() -> Self {
        Self {
            raw: Vec::new(),
            start: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    fn block(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }
}

/// A file being written from an aligned offset onwards.
pub struct DirectFile {
    file: Arc<File>,
    /// The buffer being filled, and how much of it is.
    filling: Aligned,
    filled: usize,
    /// Buffers back from the disk, ready to fill.
    free: Vec<Aligned>,
    /// Writes under way, oldest first; each gives its buffer back.
    writing: VecDeque<JoinHandle<io::Result<Aligned>>>,
    /// Buffers this file has from the allowance ([`WRITE_BEHIND`]).
    held: usize,
    /// Where the next block goes in the file, and where the writing began.
    offset: u64,
    start: u64,
    written: u64,
}

impl DirectFile {
    /// Writes `file` (opened with [`open`]) from `start`, a
    /// multiple of [`ALIGN`].
    pub fn new(file: File, start: u64) -> io::Result<Self> {
        if !start.is_multiple_of(ALIGN as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an O_DIRECT write starts at a multiple of {ALIGN}, not at {start}"),
            ));
        }
        Ok(Self {
            file: Arc::new(file),
            filling: Aligned::take(),
            filled: 0,
            free: Vec::new(),
            writing: VecDeque::new(),
            held: 0,
            offset: start,
            start,
            written: 0,
        })
    }

    /// Bytes taken so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Copies `bytes` into the buffers, handing each full one to the disk.
    pub async fn put(&mut self, mut bytes: Bytes) -> io::Result<()> {
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

    /// Starts writing the first `len` bytes (a multiple of [`ALIGN`]) of the
    /// filled buffer at the next offset, and takes a buffer to fill next: a
    /// free one, one from the allowance, or else this write's own once done.
    async fn write_filled(&mut self, len: usize) -> io::Result<()> {
        let next = match self.free.pop() {
            Some(free) => free,
            None if self.held + 1 < DEPTH => match behind() {
                Some(extra) => {
                    self.held += 1;
                    extra
                }
                None => Aligned::empty(),
            },
            None => Aligned::empty(),
        };
        let full = std::mem::replace(&mut self.filling, next);
        self.start_write(full, len);
        if self.filling.is_empty() {
            match self.oldest_done().await.expect("a write is under way") {
                Ok(done) => self.filling = done,
                Err(e) => {
                    self.filling = Aligned::take();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Writes the first `len` bytes of `full` at the next offset, on a
    /// blocking thread.
    fn start_write(&mut self, mut full: Aligned, len: usize) {
        self.filled = 0;
        let (file, offset) = (self.file.clone(), self.offset);
        self.offset += len as u64;
        self.writing.push_back(tokio::task::spawn_blocking(move || {
            file.write_all_at(&full.block()[..len], offset)?;
            Ok(full)
        }));
    }

    /// Waits for the oldest write under way, if any; returns its buffer.
    async fn oldest_done(&mut self) -> Option<io::Result<Aligned>> {
        let write = self.writing.pop_front()?;
        Some(write.await.map_err(io::Error::other).and_then(|done| done))
    }

    /// Writes the rest and makes the file durable at its length; returns the
    /// bytes taken.
    pub async fn finish(mut self) -> io::Result<u64> {
        let tail = self.filled;
        if tail > 0 {
            // O_DIRECT writes whole blocks: pad with zeros, then cut the file back.
            let padded = tail.next_multiple_of(ALIGN);
            self.filling.block()[tail..padded].fill(0);
            let last = std::mem::replace(&mut self.filling, Aligned::empty());
            self.start_write(last, padded);
        }
        self.settle().await?;
        let (file, size) = (self.file.clone(), self.start + self.written);
        tokio::task::spawn_blocking(move || {
            file.set_len(size)?;
            file.sync_all()
        })
        .await
        .map_err(io::Error::other)??;
        Ok(self.written)
    }

    /// Waits for every write under way (an abort, before removing the file).
    pub async fn settle(&mut self) -> io::Result<()> {
        while let Some(done) = self.oldest_done().await {
            done?;
        }
        Ok(())
    }
}

impl Drop for DirectFile {
    /// Gives the allowance back, and the buffers at hand to the spares (those
    /// still being written are freed when their writes end).
    fn drop(&mut self) {
        BEHIND.fetch_sub(self.held, Ordering::AcqRel);
        let filling = std::mem::replace(&mut self.filling, Aligned::empty());
        for buffer in self.free.drain(..).chain(Some(filling)) {
            if !buffer.is_empty() {
                buffer.give_back();
            }
        }
    }
}

/// Opens `path` for writing with O_DIRECT where the filesystem has it: a new
/// file (`new`: it must not exist, mode 0600) or the one there, created if
/// missing.
pub fn open(path: &Path, new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    if new {
        // A new file is staging for the caller alone until it is renamed.
        options.create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    } else {
        options.create(true);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut direct = options.clone();
        match direct.custom_flags(libc::O_DIRECT).open(path) {
            // Older tmpfs and some others refuse O_DIRECT, some after creating
            // the (new, so ours) file: write through the page cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if new {
                    let _ = std::fs::remove_file(path);
                }
            }
            other => return other,
        }
    }
    options.open(path)
}

/// The next `n` bytes of `file`, read into fresh memory that is not zero-filled
/// first (zeroing each chunk had cost a blob node 9 % of its CPU in a download;
/// read_to_end's reads grow from 8 KiB, some eight a MiB, which costs less).
pub fn read_exactly(file: &mut File, n: usize) -> io::Result<Vec<u8>> {
    use io::Read;
    let mut buf = Vec::with_capacity(n);
    file.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ended {} bytes early", n - buf.len()),
        ));
    }
    Ok(buf)
}

/// A file read once from an offset to its end, in chunks: from the page cache
/// where a chunk is all there, else straight from the disk (O_DIRECT). A read
/// through the cache of bytes that are not in it costs fresh page-cache pages
/// and a kernel copy out of them, for bytes nobody reads again: a first `dd`
/// of a file here cost 1.6-2.1 CPU s/GiB, 0.1 with O_DIRECT (a VM whose freed
/// memory goes back to its host, so new pages fault twice).
pub struct ReadOnce {
    file: File,
    /// The same file opened with O_DIRECT, where the filesystem allows it.
    direct: Option<File>,
    offset: u64,
}

impl ReadOnce {
    /// Opens `path` to read from `offset`.
    pub fn open(path: &Path, offset: u64) -> io::Result<Self> {
        let file = File::open(path)?;
        #[cfg(target_os = "linux")]
        let direct = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        };
        #[cfg(not(target_os = "linux"))]
        let direct = None;
        Ok(Self {
            file,
            direct,
            offset,
        })
    }

    /// The next `n` bytes, or fewer where an unaligned offset is brought to
    /// the next aligned one (O_DIRECT reads at multiples of [`ALIGN`]); an
    /// error if the file ends before them.
    pub fn next(&mut self, n: usize) -> io::Result<Bytes> {
        let (offset, aligned) = (self.offset, self.offset.is_multiple_of(ALIGN as u64));
        // Asked only where there is an O_DIRECT handle to read with.
        let uncached = |_: &&File| n > 0 && !cached(&self.file, offset, n);
        let chunk = match self.direct.as_ref().filter(uncached) {
            Some(direct) if aligned => match read_direct(direct, offset, n) {
                // A filesystem that opens with O_DIRECT but wants other
                // alignments: read through the cache from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    self.read_cached(n)?
                }
                read => read?,
            },
            Some(_) => {
                let to_boundary = ALIGN - (offset % ALIGN as u64) as usize;
                self.read_cached(n.min(to_boundary))?
            }
            None => self.read_cached(n)?,
        };
        if chunk.is_empty() && n > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended {n} bytes early"),
            ));
        }
        self.offset += chunk.len() as u64;
        Ok(chunk)
    }

    fn read_cached(&mut self, n: usize) -> io::Result<Bytes> {
        use io::Seek;
        self.file.seek(io::SeekFrom::Start(self.offset))?;
        read_exactly(&mut self.file, n).map(Bytes::from)
    }
}

/// Whether all of `n` bytes from `offset` are in the page cache (cachestat,
/// Linux 6.5, which reads nothing in; elsewhere: taken as cached, the reads
/// of before).
#[allow(unsafe_code)]
fn cached(file: &File, offset: u64, n: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        /// The call's number, the same on every architecture (not yet in libc).
        const SYS_CACHESTAT: libc::c_long = 451;
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        let range = Range {
            off: offset,
            len: n as u64,
        };
        let mut stat = Stat::default();
        // SAFETY: both structs are laid out as the kernel's cachestat_range
        // and cachestat, and outlive the call; the descriptor is open.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut Stat,
                0u32,
            )
        };
        if r == 0 {
            let first = offset / ALIGN as u64;
            let pages = (offset + n as u64).div_ceil(ALIGN as u64) - first;
            // Counted in 4 KiB pages: with larger ones a cached chunk looks
            // uncached, and is read with O_DIRECT, as correctly.
            return stat.nr_cache >= pages;
        }
    }
    let _ = (file, offset, n);
    true
}

/// `n` bytes from `offset` (a multiple of [`ALIGN`]) of a file opened with
/// O_DIRECT, read into aligned memory that is not zeroed first; fewer only at
/// the end of the file.
#[allow(unsafe_code)]
fn read_direct(file: &File, offset: u64, n: usize) -> io::Result<Bytes> {
    let len = n.next_multiple_of(ALIGN);
    let mut raw: Vec<u8> = Vec::with_capacity(len + ALIGN);
    let start = raw.as_ptr().align_offset(ALIGN);
    let mut got = 0;
    while got < len {
        use std::os::fd::AsRawFd;
        // SAFETY: the range written, start + got .. start + len, lies in the
        // vector's capacity (len + ALIGN), and nothing reads it before the
        // kernel has written it and set_len covers only what was written.
        let r = unsafe {
            libc::pread(
                file.as_raw_fd(),
                raw.as_mut_ptr().add(start + got).cast(),
                len - got,
                (offset + got as u64) as libc::off_t,
            )
        };
        match r {
            0 => break,
            r if r > 0 => got += r as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        // A short read that is not block-sized ends at the end of the file.
        if !got.is_multiple_of(ALIGN) {
            break;
        }
    }
    // SAFETY: the kernel wrote start..start + got (above).
    unsafe { raw.set_len(start + got) };
    Ok(Bytes::from(raw).slice(start..start + got.min(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exactly_what_is_asked_and_says_how_short_a_file_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(read_exactly(&mut file, 4).unwrap(), b"0123");
        assert_eq!(read_exactly(&mut file, 0).unwrap(), b"");
        let short = read_exactly(&mut file, 8).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        assert!(short.to_string().contains("2 bytes early"), "{short}");
    }

    /// Drops `path` from the page cache (written back first).
    #[allow(unsafe_code)]
    fn evict(path: &Path) {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: an open descriptor; the advice reads or writes no memory.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }

    /// Whether `path` is on tmpfs, whose cached pages are the file itself.
    #[allow(unsafe_code)]
    fn on_tmpfs(path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs is plain integers, for which all zeroes is a value.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a statfs the call fills in.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut stat) }, 0);
        stat.f_type == libc::TMPFS_MAGIC
    }

    #[test]
    fn a_file_read_once_gives_every_byte_whether_cached_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let content: Vec<u8> = (0..3 * BLOCK + 5_000).map(|i| (i * 13 + 7) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let read = |from: usize| {
            let mut once = ReadOnce::open(&path, from as u64).unwrap();
            let mut got = Vec::new();
            while got.len() + from < content.len() {
                let n = (content.len() - from - got.len()).min(BLOCK);
                let chunk = once.next(n).unwrap();
                assert!(!chunk.is_empty() && chunk.len() <= n);
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got.len() + from, content.len());
            assert!(got == content[from..], "from {from}");
            let past = once.next(1).unwrap_err();
            assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        };
        let file = File::open(&path).unwrap();
        assert!(cached(&file, 0, content.len()), "a file just written");
        read(0);
        read(1_000);
        evict(&path);
        // cachestat came with Linux 6.5; before, every chunk counts as cached.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut version = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        if (version.next(), version.next()) >= (Some(6), Some(5)) && !on_tmpfs(dir.path()) {
            assert!(!cached(&file, 0, content.len()), "after eviction");
        }
        read(0);
        evict(&path);
        read(4_096 + 17);
    }

    #[tokio::test]
    async fn a_file_continued_from_an_aligned_offset_holds_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let head: Vec<u8> = (0..2 * ALIGN).map(|i| i as u8).collect();
        std::fs::write(&path, &head).unwrap();
        let file = open(&path, false).unwrap();
        let mut direct = DirectFile::new(file, head.len() as u64).unwrap();
        let tail: Vec<u8> = (0..BLOCK + 12_345).map(|i| (i * 7) as u8).collect();
        direct.put(Bytes::from(tail[..100].to_vec())).await.unwrap();
        direct.put(Bytes::from(tail[100..].to_vec())).await.unwrap();
        let n = direct.finish().await.unwrap();
        assert_eq!(n, tail.len() as u64);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), head.len() + tail.len());
        assert_eq!(&got[..head.len()], &head[..]);
        assert_eq!(&got[head.len()..], &tail[..]);
        let file = open(&path, false).unwrap();
        assert!(DirectFile::new(file, 100).is_err(), "an unaligned start");
    }

    #[tokio::test]
    async fn many_files_share_the_allowance_and_each_holds_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let content =
            |f: usize| -> Vec<u8> { (0..3 * BLOCK + 777).map(|i| (i * 31 + f) as u8).collect() };
        let mut files = Vec::new();
        for f in 0..WRITE_BEHIND + 4 {
            let file = open(&dir.path().join(f.to_string()), true).unwrap();
            files.push(DirectFile::new(file, 0).unwrap());
        }
        // Every file fills three blocks before any finishes: together they
        // want far more buffers than the allowance has.
        for (f, file) in files.iter_mut().enumerate() {
            file.put(Bytes::from(content(f))).await.unwrap();
            assert!(BEHIND.load(Ordering::Acquire) <= WRITE_BEHIND);
        }
        assert!(files.iter().any(|f| f.held == 0), "the allowance ran out");
        for file in files {
            file.finish().await.unwrap();
        }
        for f in 0..WRITE_BEHIND + 4 {
            let got = std::fs::read(dir.path().join(f.to_string())).unwrap();
            assert!(got == content(f), "file {f}");
        }
    }
}
