//! Reading what an image tarball says about itself without unpacking it: find
//! metadata.yaml and the first entry that proves the type (rootfs/ for a
//! container, rootfs.img for a virtual machine), as LXD does; then, with
//! `ScanLimits::whole`, walk on to the end, so that an unsafe path anywhere in
//! the archive, or a compressed stream that is cut short or damaged (its
//! checksum, its end), refuses the image before it is registered.
//!
//! Everything is streamed: memory stays bounded whatever the tarball holds, and a
//! budget on decompressed bytes stops decompression bombs.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::format::{Format, SNIFF_LEN};
use crate::inspect::{DISK_HEADER_LEN, DiskError, inspect_vm_disk};
use crate::metadata::{MAX_METADATA_BYTES, Metadata, MetadataError, parse_metadata};

/// What a scan found out about the type of image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundType {
    /// A rootfs/ tree.
    Container,
    /// A rootfs.img disk.
    VirtualMachine,
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub format: Format,
    pub metadata: Metadata,
    /// None when the tarball holds no rootfs (a split image's metadata tarball).
    pub found_type: Option<FoundType>,
}

/// Bounds on what a scan may read.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Decompressed bytes the scan may read before giving up (with `max_ratio`,
    /// the floor of its budget).
    pub max_decompressed: u64,
    /// When not 0: decompressed bytes may also reach this many times the
    /// compressed bytes read so far, so that a large real image passes and a
    /// bomb (thousands to one) stops early whatever its size.
    pub max_ratio: u64,
    /// Tar entries the scan may look at.
    pub max_entries: u64,
    /// Read the whole archive (every path, the compressed stream to its end),
    /// not only up to metadata.yaml and the rootfs.
    pub whole: bool,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_decompressed: 4 << 30,
            max_ratio: 0,
            max_entries: 4_000_000,
            whole: true,
        }
    }
}

impl ScanLimits {
    /// Decompressed bytes a whole walk may read per compressed byte: far above
    /// what real images reach (a rootfs tar.xz expands 3–6 times), far below a
    /// bomb's thousands.
    pub const MAX_RATIO: u64 = 64;

    /// Limits for reading a whole archive: at least `floor` decompressed bytes,
    /// and up to `MAX_RATIO` times the compressed bytes read.
    pub fn whole_archive(floor: u64) -> Self {
        Self {
            max_decompressed: floor,
            max_ratio: Self::MAX_RATIO,
            whole: true,
            ..Self::default()
        }
    }
}

/// Why a tarball was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("Unsupported compression: the file is none of gzip, xz, lzma, bzip2, zstd or tar")]
    UnsupportedCompression,
    #[error("a {0:?} file is not a tarball; a metadata part must be a (compressed) tarball")]
    NotATarball(Format),
    #[error("Metadata tarball is missing metadata.yaml")]
    MissingMetadata,
    #[error("Cannot read non-regular file \"metadata.yaml\" (it is a link or a directory)")]
    IrregularMetadata,
    #[error("metadata.yaml is {0} bytes; the most accepted is {MAX_METADATA_BYTES}")]
    MetadataTooLarge(u64),
    #[error("the tarball holds an unsafe path {0:?} (absolute, or with '..')")]
    UnsafePath(String),
    #[error(
        "the tarball decompresses to more than its budget (at least {0} bytes, and at most \
         {ratio} times what was read of it); refused as a possible decompression bomb",
        ratio = ScanLimits::MAX_RATIO
    )]
    DecompressionBudget(u64),
    #[error("the tarball has more than {0} entries")]
    TooManyEntries(u64),
    #[error("the tarball holds a hard link {0:?} to an unsafe path {1:?} (absolute, or with '..')")]
    UnsafeLink(String, String),
    #[error(
        "a unified image needs rootfs/ (container) or rootfs.img (virtual machine); this tarball has neither"
    )]
    MissingRootfs,
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the tarball is damaged: {0}")]
    Corrupt(String),
    #[error("reading the image failed: {0}")]
    Io(io::Error),
}

impl ScanError {
    /// Its kind (gRPC's codes, the classification every layer shares): what is
    /// wrong with the bytes is the sender's (INVALID_ARGUMENT); a failure to
    /// read them says nothing against them (UNAVAILABLE: try again).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Io(_) => tonic::Code::Unavailable,
            _ => tonic::Code::InvalidArgument,
        }
    }
}

/// Counts decompressed bytes and fails past the budget: `floor`, or `ratio`
/// times the compressed bytes read so far when that is more.
struct Budget<R> {
    inner: R,
    used: u64,
    floor: u64,
    ratio: u64,
    compressed: Rc<Cell<u64>>,
}

impl<R> Budget<R> {
    fn new(inner: R, limits: &ScanLimits, compressed: Rc<Cell<u64>>) -> Self {
        Self {
            inner,
            used: 0,
            floor: limits.max_decompressed,
            ratio: limits.max_ratio,
            compressed,
        }
    }

    fn limit(&self) -> u64 {
        self.floor
            .max(self.compressed.get().saturating_mul(self.ratio))
    }
}

/// The error [`Budget`] raises, found again below the decoders by its type.
#[derive(Debug, thiserror::Error)]
#[error("decompression budget exceeded")]
struct BudgetExceeded;

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The compressed side may run ahead of what it allows: read a little
        // at a time near the limit so the check is exact.
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.limit().saturating_sub(self.used);
        if left == 0 {
            // One byte at a time at the limit: reading it may pull in more
            // compressed bytes and so raise the limit, or end the stream.
            let n = self.inner.read(&mut buf[..1])?;
            self.used += n as u64;
            if self.used > self.limit() {
                return Err(io::Error::other(BudgetExceeded));
            }
            return Ok(n);
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.used += n as u64;
        Ok(n)
    }
}

/// A failure to read the bytes at all (a store or network fault), as opposed to
/// bytes that are bad: it says nothing against the image.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SourceFailed(#[source] io::Error);

/// Marks every error of the reader it wraps as [`SourceFailed`], so that what the
/// decoders and the tar reader pass on can still be told apart from what they
/// find wrong; and counts the (compressed) bytes it passes.
struct Source<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceFailed(e)))?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Whether an error of type `T` is in `e`'s chain (through io::Error payloads,
/// which the decoders and the tar reader wrap).
fn caused_by<T: std::error::Error + 'static>(e: &io::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if err.is::<T>() {
            return true;
        }
        next = match err.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

fn io_error(e: io::Error, limit: u64) -> ScanError {
    if caused_by::<BudgetExceeded>(&e) {
        ScanError::DecompressionBudget(limit)
    } else if caused_by::<SourceFailed>(&e) {
        ScanError::Io(e)
    } else if matches!(
        e.kind(),
        io::ErrorKind::InvalidData
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::Other
    ) {
        ScanError::Corrupt(e.to_string())
    } else {
        ScanError::Io(e)
    }
}

/// Reads the first bytes of `reader` for sniffing and gives back a reader that
/// still yields them.
pub(crate) fn sniffed(mut reader: impl Read) -> io::Result<(Vec<u8>, impl Read)> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut reader)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    let again = io::Cursor::new(head.clone()).chain(reader);
    Ok((head, again))
}

pub(crate) fn decompressor<'a>(
    format: Format,
    reader: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, ScanError> {
    Ok(match format {
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
        Format::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(256 << 20)
                .map_err(|e| ScanError::Corrupt(e.to_string()))?;
            Box::new(liblzma::read::XzDecoder::new_stream(reader, stream))
        }
        Format::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(reader).map_err(|e| io_error(e, 0))?;
            // zstd's own default ceiling (128 MiB windows); bounds memory per scan.
            d.window_log_max(27).map_err(ScanError::Io)?;
            Box::new(d)
        }
        Format::Tar => Box::new(reader),
        other @ (Format::Squashfs | Format::Qcow2) => return Err(ScanError::NotATarball(other)),
    })
}

/// `./a/b` and `a/b` are the same entry; `..` and absolute paths are refused.
pub(crate) fn entry_name(raw: &[u8]) -> Result<String, ScanError> {
    let name = String::from_utf8_lossy(raw).into_owned();
    if name.starts_with('/') || name.split('/').any(|c| c == "..") {
        return Err(ScanError::UnsafePath(name));
    }
    Ok(name.trim_start_matches("./").to_owned())
}

/// An entry's path, refused when unsafe, and a hard link's target likewise
/// (a symbolic link may point anywhere: it is resolved inside the instance).
fn checked_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ScanError> {
    let name = entry_name(&entry.path_bytes())?;
    if entry.header().entry_type().is_hard_link()
        && let Some(target) = entry.link_name_bytes()
        && entry_name(&target).is_err()
    {
        return Err(ScanError::UnsafeLink(
            name,
            String::from_utf8_lossy(&target).into_owned(),
        ));
    }
    Ok(name)
}

/// Reads what follows the archive's end to the end of the compressed stream,
/// so that the decoder checks its trailer (gzip's CRC and length, xz's index):
/// a stream cut short or damaged there is found too.
fn drain(mut rest: impl Read, limit: u64) -> Result<(), ScanError> {
    io::copy(&mut rest, &mut io::sink())
        .map(|_| ())
        .map_err(|e| io_error(e, limit))
}

/// The decompressed archive `reader` holds, its format sniffed, its
/// decompression counted against the budget `limits` sets.
type Archive<'a> = tar::Archive<Budget<Box<dyn Read + 'a>>>;

fn open<'a>(
    reader: impl Read + 'a,
    limits: &ScanLimits,
) -> Result<(Format, Archive<'a>), ScanError> {
    let compressed = Rc::new(Cell::new(0));
    let source = Source {
        inner: reader,
        read: compressed.clone(),
    };
    let (head, reader) = sniffed(source).map_err(ScanError::Io)?;
    let format = Format::sniff(&head).ok_or(ScanError::UnsupportedCompression)?;
    let budget = Budget::new(decompressor(format, reader)?, limits, compressed);
    Ok((format, tar::Archive::new(budget)))
}

/// Hands each entry, with its checked name, to `visit` until it says to stop
/// (false), at most `limits.max_entries` of them.
fn each_entry<'a>(
    archive: &mut Archive<'a>,
    limits: &ScanLimits,
    mut visit: impl FnMut(
        &mut tar::Entry<'_, Budget<Box<dyn Read + 'a>>>,
        String,
    ) -> Result<bool, ScanError>,
) -> Result<(), ScanError> {
    let limit = limits.max_decompressed;
    let mut seen = 0u64;
    for entry in archive.entries().map_err(|e| io_error(e, limit))? {
        let mut entry = entry.map_err(|e| io_error(e, limit))?;
        seen += 1;
        if seen > limits.max_entries {
            return Err(ScanError::TooManyEntries(limits.max_entries));
        }
        let name = checked_entry(&entry)?;
        if !visit(&mut entry, name)? {
            break;
        }
    }
    Ok(())
}

/// Walks a whole rootfs tarball (a split container image's rootfs): every path
/// safe, every entry and the compressed stream whole.
pub fn check_rootfs_tarball(reader: impl Read, limits: ScanLimits) -> Result<Format, ScanError> {
    let (format, mut archive) = open(reader, &limits)?;
    each_entry(&mut archive, &limits, |_, _| Ok(true))?;
    drain(archive.into_inner(), limits.max_decompressed)?;
    Ok(format)
}

/// Scans an image tarball (unified, or a split image's metadata tarball).
/// With `need_rootfs`, the scan also looks for the rootfs and refuses a tarball
/// without one (unified images). Unless `limits.whole`, it stops once it has
/// found what it looks for.
pub fn scan_tarball(
    reader: impl Read,
    need_rootfs: bool,
    limits: ScanLimits,
) -> Result<Scanned, ScanError> {
    let (format, mut archive) = open(reader, &limits)?;
    let limit = limits.max_decompressed;
    let mut metadata = None;
    let mut found_type = None;
    each_entry(&mut archive, &limits, |entry, name| {
        if name == "metadata.yaml" {
            if !entry.header().entry_type().is_file() {
                return Err(ScanError::IrregularMetadata);
            }
            let size = entry.size();
            if size > MAX_METADATA_BYTES {
                return Err(ScanError::MetadataTooLarge(size));
            }
            let mut yaml = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut yaml)
                .map_err(|e| io_error(e, limit))?;
            metadata = Some(parse_metadata(&yaml)?);
        } else if found_type.is_none() {
            if name == "rootfs.img" {
                // The disk's header says whether it names files outside it.
                let mut head = Vec::with_capacity(DISK_HEADER_LEN);
                entry
                    .take(DISK_HEADER_LEN as u64)
                    .read_to_end(&mut head)
                    .map_err(|e| io_error(e, limit))?;
                inspect_vm_disk(&head)?;
                found_type = Some(FoundType::VirtualMachine);
            } else if name == "rootfs" || name.starts_with("rootfs/") {
                found_type = Some(FoundType::Container);
            }
        }
        let found = metadata.is_some() && (!need_rootfs || found_type.is_some());
        Ok(limits.whole || !found)
    })?;
    if limits.whole {
        drain(archive.into_inner(), limit)?;
    }
    let metadata = metadata.ok_or(ScanError::MissingMetadata)?;
    if need_rootfs && found_type.is_none() {
        return Err(ScanError::MissingRootfs);
    }
    Ok(Scanned {
        format,
        metadata,
        found_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &[u8] =
        b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: test\n";

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(if name.ends_with('/') {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            // set_path refuses '..', which is exactly what these tests need to write.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn unified_container_and_vm_are_told_apart() {
        let c = tarball(&[
            ("metadata.yaml", META),
            ("rootfs/", b""),
            ("rootfs/bin/sh", b"x"),
        ]);
        let s = scan_tarball(&gzip(&c)[..], true, ScanLimits::default()).unwrap();
        assert_eq!(s.format, Format::Gzip);
        assert_eq!(s.found_type, Some(FoundType::Container));
        assert_eq!(s.metadata.properties["os"], "test");
        let disk = crate::inspect::qcow2_header(None, 0);
        let vm = tarball(&[("./rootfs.img", &disk), ("./metadata.yaml", META)]);
        let s = scan_tarball(&vm[..], true, ScanLimits::default()).unwrap();
        assert_eq!(s.format, Format::Tar);
        assert_eq!(s.found_type, Some(FoundType::VirtualMachine));
    }

    #[test]
    fn every_lxd_compression_is_read() {
        use std::io::Write;
        let t = tarball(&[("metadata.yaml", META)]);
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&t).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&t).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&t[..], 3).unwrap();
        for (data, format) in [
            (t.clone(), Format::Tar),
            (gzip(&t), Format::Gzip),
            (xz, Format::Xz),
            (bz, Format::Bzip2),
            (zst, Format::Zstd),
        ] {
            let s = scan_tarball(&data[..], false, ScanLimits::default()).unwrap();
            assert_eq!(s.format, format);
            assert_eq!(s.found_type, None);
        }
    }

    #[test]
    fn bad_tarballs_are_refused_with_reasons() {
        let no_meta = tarball(&[("rootfs/", b"")]);
        assert!(matches!(
            scan_tarball(&no_meta[..], true, ScanLimits::default()),
            Err(ScanError::MissingMetadata)
        ));
        let no_root = tarball(&[("metadata.yaml", META)]);
        assert!(matches!(
            scan_tarball(&no_root[..], true, ScanLimits::default()),
            Err(ScanError::MissingRootfs)
        ));
        for evil in ["../etc/passwd", "/etc/passwd", "rootfs/../../x"] {
            let t = tarball(&[(evil, b"x"), ("metadata.yaml", META)]);
            assert!(
                matches!(
                    scan_tarball(&t[..], false, ScanLimits::default()),
                    Err(ScanError::UnsafePath(_))
                ),
                "{evil}"
            );
        }
        let huge = vec![b'#'; (MAX_METADATA_BYTES + 1) as usize];
        let t = tarball(&[("metadata.yaml", &huge)]);
        assert!(matches!(
            scan_tarball(&t[..], false, ScanLimits::default()),
            Err(ScanError::MetadataTooLarge(_))
        ));
        assert!(matches!(
            scan_tarball(
                &b"PK\x03\x04 not an image"[..],
                false,
                ScanLimits::default()
            ),
            Err(ScanError::UnsupportedCompression)
        ));
        assert!(matches!(
            scan_tarball(&b"hsqs squashfs"[..], false, ScanLimits::default()),
            Err(ScanError::NotATarball(Format::Squashfs))
        ));
        let bad_meta = tarball(&[("metadata.yaml", b"architecture: sparc\ncreation_date: 1\n")]);
        assert!(matches!(
            scan_tarball(&bad_meta[..], false, ScanLimits::default()),
            Err(ScanError::Metadata(MetadataError::UnknownArchitecture(_)))
        ));
        let truncated = gzip(&tarball(&[
            ("rootfs/a", &[0u8; 4096]),
            ("metadata.yaml", META),
        ]));
        assert!(matches!(
            scan_tarball(
                &truncated[..truncated.len() / 2],
                true,
                ScanLimits::default()
            ),
            Err(ScanError::Corrupt(_) | ScanError::MissingMetadata)
        ));
    }

    /// Found only by reading to the end: what lies after metadata.yaml and the
    /// first rootfs entry, and the compressed stream's own end.
    #[test]
    fn the_whole_archive_is_checked_not_only_its_head() {
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("metadata.yaml", META),
            ("rootfs/", b""),
            ("rootfs/a", &[1u8; 8192]),
        ];
        let good = gzip(&tarball(&entries));
        scan_tarball(&good[..], true, ScanLimits::default()).unwrap();
        let early = ScanLimits {
            whole: false,
            ..ScanLimits::default()
        };

        entries.push(("rootfs/../../etc/cron.d/x", b"* * * * * root sh"));
        let late_escape = gzip(&tarball(&entries));
        assert!(
            scan_tarball(&late_escape[..], true, early).is_ok(),
            "the head alone passes"
        );
        let r = scan_tarball(&late_escape[..], true, ScanLimits::default());
        assert!(matches!(r, Err(ScanError::UnsafePath(_))), "{r:?}");

        // Cut inside the rootfs, after what the head needs: damaged.
        let big = gzip(&tarball(&[
            ("metadata.yaml", META),
            ("rootfs/", b""),
            (
                "rootfs/noise",
                &(0..200_000u32)
                    .map(|i| (i * 7919 % 251) as u8)
                    .collect::<Vec<_>>(),
            ),
        ]));
        let cut = &big[..big.len() * 2 / 3];
        assert!(
            scan_tarball(cut, true, early).is_ok(),
            "the head alone passes"
        );
        let r = scan_tarball(cut, true, ScanLimits::default());
        assert!(matches!(r, Err(ScanError::Corrupt(_))), "{r:?}");
        // Only the gzip trailer (CRC) damaged: every tar block reads.
        let mut bad_crc = good.clone();
        let at = bad_crc.len() - 6;
        bad_crc[at] ^= 0xff;
        let r = scan_tarball(&bad_crc[..], true, ScanLimits::default());
        assert!(matches!(r, Err(ScanError::Corrupt(_))), "{r:?}");

        // A hard link out of the tree; a symbolic one may point anywhere.
        let link = |kind: tar::EntryType, target: &str| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(META.len() as u64);
            h.set_mode(0o644);
            h.set_path("metadata.yaml").unwrap();
            h.set_cksum();
            b.append(&h, META).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_path("rootfs/etc/l").unwrap();
            let raw = &mut h.as_old_mut().linkname;
            raw[..target.len()].copy_from_slice(target.as_bytes());
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
            b.into_inner().unwrap()
        };
        let r = scan_tarball(
            &link(tar::EntryType::Link, "../../etc/shadow")[..],
            true,
            ScanLimits::default(),
        );
        assert!(matches!(r, Err(ScanError::UnsafeLink(..))), "{r:?}");
        scan_tarball(
            &link(tar::EntryType::Symlink, "/usr/bin/env")[..],
            true,
            ScanLimits::default(),
        )
        .unwrap();

        // A split image's rootfs tarball, walked alone.
        let rootfs = gzip(&tarball(&[("bin/", b""), ("bin/sh", b"x")]));
        assert_eq!(
            check_rootfs_tarball(&rootfs[..], ScanLimits::default()).unwrap(),
            Format::Gzip
        );
        let escape = gzip(&tarball(&[("bin/", b""), ("../x", b"x")]));
        assert!(matches!(
            check_rootfs_tarball(&escape[..], ScanLimits::default()),
            Err(ScanError::UnsafePath(_))
        ));
        assert!(matches!(
            check_rootfs_tarball(&rootfs[..rootfs.len() - 4], ScanLimits::default()),
            Err(ScanError::Corrupt(_))
        ));
    }

    /// Yields `data`, then fails as a store does when its backend goes away.
    struct Flaky(std::io::Cursor<Vec<u8>>);

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other("the object store did not answer")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn a_failed_read_is_a_fault_and_damaged_bytes_a_verdict() {
        let whole = tarball(&[("./rootfs/x", &[7u8; 4096]), ("./metadata.yaml", META)]);
        let cut = whole[..2048].to_vec();
        // The source fails: nothing is said against the image, even though the
        // error is io's Other, which the decoders also use for damage.
        let r = scan_tarball(
            Flaky(io::Cursor::new(cut.clone())),
            true,
            ScanLimits::default(),
        );
        assert!(matches!(r, Err(ScanError::Io(_))), "{r:?}");
        // The bytes simply end: damaged.
        let r = scan_tarball(io::Cursor::new(cut), true, ScanLimits::default());
        assert!(matches!(r, Err(ScanError::Corrupt(_))), "{r:?}");
    }

    #[test]
    fn decompression_bombs_stop_at_the_budget() {
        // 64 MiB of zeros before metadata.yaml compresses to a few tens of KiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = gzip(&tarball(&[
            ("rootfs/zeros", &zeros),
            ("metadata.yaml", META),
        ]));
        assert!(bomb.len() < 1 << 20);
        let limits = ScanLimits {
            max_decompressed: 16 << 20,
            ..ScanLimits::default()
        };
        assert!(matches!(
            scan_tarball(&bomb[..], false, limits),
            Err(ScanError::DecompressionBudget(_))
        ));
        // In proportion: past a small floor, a real image (here 4 MiB that
        // hardly compress) passes, a bomb does not.
        let by_ratio = ScanLimits::whole_archive(1 << 20);
        assert!(matches!(
            scan_tarball(&bomb[..], false, by_ratio),
            Err(ScanError::DecompressionBudget(_))
        ));
        let mut state = 7u32;
        let noise: Vec<u8> = (0..4 << 20)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect();
        let real = gzip(&tarball(&[
            ("metadata.yaml", META),
            ("rootfs/", b""),
            ("rootfs/noise", &noise),
        ]));
        scan_tarball(&real[..], true, by_ratio).unwrap();
    }
}
