//! What an LXD image is, independent of how it is stored or served.

pub mod arch;
pub mod fingerprint;

pub use arch::canonical_architecture;
pub use fingerprint::{Fingerprint, FingerprintError, FingerprintQuery};
