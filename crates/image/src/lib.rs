//! What an LXD image is, independent of how it is stored or served.

pub mod arch;
pub mod fingerprint;
pub mod format;
pub mod inspect;
pub mod metadata;
pub mod repack;
pub mod scan;

pub use arch::{canonical_architecture, debian_architecture};
pub use fingerprint::{Fingerprint, FingerprintError, FingerprintQuery};
pub use format::{ExportRole, Format, export_file_name, extension_of};
pub use inspect::{DISK_HEADER_LEN, DiskError, inspect_rootfs, inspect_vm_disk};
pub use metadata::{Metadata, MetadataError, PropertyError, parse_metadata, validate_properties};
pub use scan::{FoundType, ScanError, ScanLimits, Scanned, check_rootfs_tarball, scan_tarball};
