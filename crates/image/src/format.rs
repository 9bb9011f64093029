//! What a file is, from its first bytes, as LXD's `DetectCompressionFile` decides.

/// How many leading bytes the sniffer looks at (the tar magic sits at 257).
pub const SNIFF_LEN: usize = 263;

/// A file format LXD recognises in images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Bzip2,
    Gzip,
    Xz,
    Lzma,
    Zstd,
    Tar,
    Squashfs,
    Qcow2,
}

impl Format {
    /// Whether the file is a tarball, compressed or not.
    pub fn is_tarball(self) -> bool {
        !matches!(self, Self::Squashfs | Self::Qcow2)
    }

    /// Recognises `head` (the first [`SNIFF_LEN`] bytes, or all of a shorter file).
    pub fn sniff(head: &[u8]) -> Option<Self> {
        let starts = |magic: &[u8]| head.starts_with(magic);
        if starts(b"BZ") {
            Some(Self::Bzip2)
        } else if starts(&[0x1f, 0x8b]) {
            Some(Self::Gzip)
        } else if head.len() >= 5 && &head[1..5] == b"7zXZ" {
            Some(if head[0] == 0xfd {
                Self::Xz
            } else {
                Self::Lzma
            })
        } else if starts(&[0x5d, 0x00, 0x00]) {
            Some(Self::Lzma)
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Self::Zstd)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Self::Tar)
        } else if starts(b"hsqs") {
            Some(Self::Squashfs)
        } else if starts(b"QFI") {
            Some(Self::Qcow2)
        } else {
            None
        }
    }

    /// The extension LXD gives a file of this format on export.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Bzip2 => ".tar.bz2",
            Self::Gzip => ".tar.gz",
            Self::Xz => ".tar.xz",
            Self::Lzma => ".tar.lzma",
            Self::Zstd => ".tar.zst",
            Self::Tar => ".tar",
            Self::Squashfs => ".squashfs",
            Self::Qcow2 => ".qcow2",
        }
    }
}

/// The extension LXD would give a file starting with `head`; empty if unknown.
pub fn extension_of(head: &[u8]) -> &'static str {
    Format::sniff(head).map(Format::extension).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_are_recognised_as_lxd_does() {
        assert_eq!(Format::sniff(b"BZh91AY"), Some(Format::Bzip2));
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8]), Some(Format::Gzip));
        assert_eq!(Format::sniff(b"\xfd7zXZ\0"), Some(Format::Xz));
        assert_eq!(Format::sniff(b"\x017zXZ\0"), Some(Format::Lzma));
        assert_eq!(Format::sniff(&[0x5d, 0, 0, 0x80]), Some(Format::Lzma));
        assert_eq!(Format::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Some(Format::Zstd));
        assert_eq!(Format::sniff(b"hsqs...."), Some(Format::Squashfs));
        assert_eq!(Format::sniff(b"QFI\xfb"), Some(Format::Qcow2));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(Format::sniff(&tar), Some(Format::Tar));
        assert_eq!(Format::sniff(b"PK\x03\x04"), None);
        assert_eq!(Format::sniff(b""), None);
        assert_eq!(extension_of(b"PK\x03\x04"), "");
    }
}

/// Which file of an image a name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportRole {
    /// The one file of a unified image.
    Unified,
    /// A split image's metadata tarball.
    Metadata,
    /// A split image's rootfs.
    Rootfs,
}

/// The name LXD gives a file on export: `{fp}{ext}` for a unified file or a split
/// rootfs, `meta-{fp}{ext}` for a split metadata file.
pub fn export_file_name(fingerprint: &str, role: ExportRole, extension: &str) -> String {
    match role {
        ExportRole::Metadata => format!("meta-{fingerprint}{extension}"),
        ExportRole::Unified | ExportRole::Rootfs => format!("{fingerprint}{extension}"),
    }
}
