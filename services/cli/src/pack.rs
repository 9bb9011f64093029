//! A directory import is packed as LXD packs it: `rootfs/`, `templates/` and
//! `metadata.yaml` in an xz tarball, owners kept numeric, symlinks kept as links.

use std::path::Path;

use crate::failure::{CliResult, Failure, exit};

/// Packs `dir` into a temporary `.tar.xz` file, deleted when dropped.
pub fn pack_directory(dir: &Path) -> CliResult<tempfile::NamedTempFile> {
    let fail = |what: &str, e: std::io::Error| {
        Failure::new(
            exit::FAILED,
            format!("packing {}: {what}: {e}", dir.display()),
        )
    };
    if !dir.join("metadata.yaml").is_file() {
        return Err(Failure::usage(format!(
            "{} has no metadata.yaml: an image directory holds metadata.yaml, rootfs/ and optionally templates/",
            dir.display()
        )));
    }
    if !dir.join("rootfs").is_dir() {
        return Err(Failure::usage(format!(
            "{} has no rootfs/ directory",
            dir.display()
        )));
    }
    let out = tempfile::Builder::new()
        .prefix("imagestore-import-")
        .suffix(".tar.xz")
        .tempfile()
        .map_err(|e| fail("temporary file", e))?;
    let xz = liblzma::write::XzEncoder::new_parallel(
        std::io::BufWriter::new(out.reopen().map_err(|e| fail("temporary file", e))?),
        6,
    );
    let mut tar = tar::Builder::new(xz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all("rootfs", dir.join("rootfs"))
        .map_err(|e| fail("rootfs", e))?;
    if dir.join("templates").is_dir() {
        tar.append_dir_all("templates", dir.join("templates"))
            .map_err(|e| fail("templates", e))?;
    }
    tar.append_path_with_name(dir.join("metadata.yaml"), "metadata.yaml")
        .map_err(|e| fail("metadata.yaml", e))?;
    let xz = tar.into_inner().map_err(|e| fail("tar", e))?;
    let mut buffered = xz.finish().map_err(|e| fail("xz", e))?;
    std::io::Write::flush(&mut buffered).map_err(|e| fail("write", e))?;
    buffered
        .get_ref()
        .sync_all()
        .map_err(|e| fail("write", e))?;
    Ok(out)
}
