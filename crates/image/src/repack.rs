//! A unified image's tarball with one file taken out or replaced: for the
//! import plugin that converts a virtual machine's disk (`rootfs.img`), which
//! in a unified image lies inside the tarball.

use std::io::{self, Read, Write};
use std::path::Path;

use crate::format::Format;
use crate::scan::{decompressor, entry_name, sniffed};

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// An entry's name, refused when unsafe.
fn name_of<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<String> {
    entry_name(&entry.path_bytes()).map_err(other)
}

/// The tarball entries of `source` (compressed in any format LXD's images
/// use), in order.
fn entries<'a>(source: impl Read + 'a) -> io::Result<tar::Archive<Box<dyn Read + 'a>>> {
    let (head, reader) = sniffed(source)?;
    let format = Format::sniff(&head).unwrap_or(Format::Tar);
    Ok(tar::Archive::new(
        decompressor(format, reader).map_err(other)?,
    ))
}

/// Copies the regular file `name` of the tarball into `to`; false when the
/// tarball has no such file.
pub fn extract_file(source: impl Read, name: &str, mut to: impl Write) -> io::Result<bool> {
    let mut archive = entries(source)?;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() && name_of(&entry)? == name {
            io::copy(&mut entry, &mut to)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes the tarball again, gzip-compressed, into `out`, with the regular file
/// `name` holding the bytes of `replacement` (its other header fields kept);
/// every other entry is copied as it is.
pub fn replace_file(
    source: impl Read,
    name: &str,
    replacement: &Path,
    out: impl Write,
) -> io::Result<()> {
    let mut archive = entries(source)?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        if header.entry_type().is_file() && name_of(&entry)? == name {
            let file = std::fs::File::open(replacement)?;
            header.set_size(file.metadata()?.len());
            header.set_cksum();
            builder.append(&header, file)?;
        } else {
            builder.append(&header, &mut entry)?;
        }
    }
    builder.into_inner()?.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_file_is_taken_out_and_replaced() {
        let tar = tarball(&[
            ("metadata.yaml", b"architecture: x86_64\n"),
            ("rootfs.img", b"old"),
        ]);
        let mut old = Vec::new();
        assert!(extract_file(&tar[..], "rootfs.img", &mut old).unwrap());
        assert_eq!(old, b"old");
        assert!(!extract_file(&tar[..], "nothing", &mut Vec::new()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        std::fs::write(&new, b"a new disk").unwrap();
        let mut out = Vec::new();
        replace_file(&tar[..], "rootfs.img", &new, &mut out).unwrap();
        let mut got = Vec::new();
        assert!(extract_file(&out[..], "rootfs.img", &mut got).unwrap());
        assert_eq!(got, b"a new disk");
        let mut meta = Vec::new();
        assert!(extract_file(&out[..], "metadata.yaml", &mut meta).unwrap());
        assert_eq!(meta, b"architecture: x86_64\n");
    }
}
