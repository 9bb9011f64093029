//! What a virtual machine's disk is, from its header, before the image is
//! registered (Glance's format inspector; the CVE-2024-32498 class): LXD's VM
//! disks are qcow2, and a qcow2 that names another file (a backing file, an
//! external data file) would make whoever runs it read that file. Such disks,
//! and disks of other formats (a VMDK may name flat extents), are refused.

use crate::format::Format;

/// Bytes of a disk's start that [`inspect_vm_disk`] needs.
pub const DISK_HEADER_LEN: usize = 512;

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
/// qcow2 v3 incompatible feature bit: the guest data lives in another file.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Why a VM disk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error(
        "the virtual machine disk is a qcow2 with a backing file ({0:?}): it would read another \
         file on the host; flatten it first (qemu-img convert -O qcow2)"
    )]
    BackingFile(String),
    #[error(
        "the virtual machine disk is a qcow2 with an external data file: it would read another \
         file on the host; flatten it first (qemu-img convert -O qcow2)"
    )]
    ExternalDataFile,
    #[error("the virtual machine disk's qcow2 header is damaged: {0}")]
    BadHeader(String),
    #[error(
        "the virtual machine disk is {0}, not qcow2 or raw: LXD's virtual-machine images carry a \
         qcow2 disk (qemu-img convert -O qcow2)"
    )]
    NotQcow2(&'static str),
    #[error("a container's rootfs is a squashfs or a (compressed) tarball; this one is {0}")]
    NotARootfs(&'static str),
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// What [`describe`] calls a disk without any format's magic.
const RAW: &str = "raw or of an unknown format";

/// What a disk that is not qcow2 is, for the message.
fn describe(head: &[u8]) -> &'static str {
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        "a VMDK (which may name flat extents in other files)"
    } else if head.starts_with(b"conectix") {
        "a VHD"
    } else if head.starts_with(b"vhdxfile") {
        "a VHDX"
    } else if head.len() >= 68 && &head[64..68] == b"\x7f\x10\xda\xbe" {
        "a VDI"
    } else {
        match Format::sniff(head) {
            Some(Format::Squashfs) => "a squashfs",
            Some(Format::Qcow2) => "qcow2",
            Some(_) => "a (compressed) tarball",
            None => RAW,
        }
    }
}

/// Checks the start of a split image's rootfs file against the image's type: a
/// VM's is a qcow2 that names no other file ([`inspect_vm_disk`]), a
/// container's a squashfs or a (compressed) tarball.
pub fn inspect_rootfs(vm: bool, head: &[u8]) -> Result<(), DiskError> {
    if vm {
        return inspect_vm_disk(head);
    }
    match Format::sniff(head) {
        Some(Format::Qcow2) | None => Err(DiskError::NotARootfs(describe(head))),
        Some(_) => Ok(()),
    }
}

/// Checks the first [`DISK_HEADER_LEN`] bytes (or all of a shorter disk) of a
/// VM disk: a qcow2 (version 2 or 3) that names no other file, or a raw disk
/// (no format's magic: it names nothing, and it is always opened as raw).
pub fn inspect_vm_disk(head: &[u8]) -> Result<(), DiskError> {
    if !head.starts_with(QCOW2_MAGIC) {
        return match describe(head) {
            RAW => Ok(()),
            other => Err(DiskError::NotQcow2(other)),
        };
    }
    // Version 2 headers are 72 bytes; version 3 adds the feature bits.
    if head.len() < 72 {
        return Err(DiskError::BadHeader(format!(
            "{} bytes, shorter than a qcow2 header",
            head.len()
        )));
    }
    let version = be_u32(head, 4);
    if !(2..=3).contains(&version) {
        return Err(DiskError::BadHeader(format!("version {version}")));
    }
    let backing_offset = be_u64(head, 8);
    let backing_size = be_u32(head, 16) as usize;
    if backing_offset != 0 || backing_size != 0 {
        let name = usize::try_from(backing_offset)
            .ok()
            .and_then(|at| head.get(at..at.checked_add(backing_size.min(1023))?))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("{backing_size} bytes at offset {backing_offset}"));
        return Err(DiskError::BackingFile(name));
    }
    if version == 3 {
        if head.len() < 104 {
            return Err(DiskError::BadHeader(format!(
                "{} bytes, shorter than a version 3 header",
                head.len()
            )));
        }
        if be_u64(head, 72) & EXTERNAL_DATA_FILE != 0 {
            return Err(DiskError::ExternalDataFile);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn qcow2_header(backing: Option<&str>, incompatible: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(QCOW2_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if let Some(name) = backing {
        h[8..16].copy_from_slice(&112u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[112..112 + name.len()].copy_from_slice(name.as_bytes());
    }
    h[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster_bits
    h[72..80].copy_from_slice(&incompatible.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes()); // header_length
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_qcow2_passes() {
        assert_eq!(inspect_vm_disk(&qcow2_header(None, 0)), Ok(()));
    }

    #[test]
    fn disks_that_name_other_files_are_refused() {
        assert_eq!(
            inspect_vm_disk(&qcow2_header(Some("/etc/shadow"), 0)),
            Err(DiskError::BackingFile("/etc/shadow".into()))
        );
        assert_eq!(
            inspect_vm_disk(&qcow2_header(None, EXTERNAL_DATA_FILE)),
            Err(DiskError::ExternalDataFile)
        );
        let vmdk = b"# Disk DescriptorFile\nRW 100 FLAT \"/etc/shadow\" 0\n";
        assert!(matches!(inspect_vm_disk(vmdk), Err(DiskError::NotQcow2(d)) if d.contains("VMDK")));
        assert!(matches!(
            inspect_vm_disk(b"KDMV\x01"),
            Err(DiskError::NotQcow2(_))
        ));
    }

    #[test]
    fn a_rootfs_is_what_its_image_type_says() {
        assert_eq!(inspect_rootfs(false, b"hsqs\0\0\0\0"), Ok(()));
        assert_eq!(inspect_rootfs(false, &[0x1f, 0x8b, 8, 0]), Ok(()));
        assert!(matches!(
            inspect_rootfs(false, &qcow2_header(None, 0)),
            Err(DiskError::NotARootfs("qcow2"))
        ));
        assert!(matches!(
            inspect_rootfs(false, b"KDMV"),
            Err(DiskError::NotARootfs(_))
        ));
        assert!(matches!(
            inspect_rootfs(true, b"hsqs\0\0\0\0"),
            Err(DiskError::NotQcow2(_))
        ));
    }

    #[test]
    fn other_formats_and_damaged_headers_are_refused() {
        assert!(
            matches!(inspect_vm_disk(b"hsqs...."), Err(DiskError::NotQcow2(d)) if d.contains("squashfs"))
        );
        assert_eq!(inspect_vm_disk(&[0u8; 512]), Ok(()), "raw");
        assert!(matches!(
            inspect_vm_disk(b"QFI\xfb"),
            Err(DiskError::BadHeader(_))
        ));
        let mut v9 = qcow2_header(None, 0);
        v9[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert!(matches!(inspect_vm_disk(&v9), Err(DiskError::BadHeader(_))));
    }
}
