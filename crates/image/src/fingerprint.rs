//! Image fingerprints: lowercase hex SHA-256, and the prefixes callers may use to
//! name an image (LXD's rule: 12 to 64 lowercase hex characters).

use std::fmt;

/// The shortest prefix accepted, as LXD: the length `lxc image list` shows.
pub const MIN_PREFIX_LEN: usize = 12;
/// A full fingerprint's length in hex characters.
pub const FULL_LEN: usize = 64;

/// Why a string is not a fingerprint or prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("no fingerprint given")]
    Empty,
    #[error(
        "fingerprint prefix {0:?} is too short: give at least {MIN_PREFIX_LEN} characters (lxc image list shows 12)"
    )]
    TooShort(String),
    #[error("fingerprint {0:?} is longer than {FULL_LEN} characters")]
    TooLong(String),
    #[error("fingerprint {0:?} must contain only lowercase hexadecimal characters (0-9, a-f)")]
    NotLowercaseHex(String),
    #[error("fingerprint {0:?} must be the full {FULL_LEN} lowercase hexadecimal characters")]
    NotFull(String),
}

/// A full, validated fingerprint: 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Validates a full fingerprint.
    pub fn parse(s: &str) -> Result<Self, FingerprintError> {
        match FingerprintQuery::parse(s)? {
            FingerprintQuery::Full(fp) => Ok(fp),
            FingerprintQuery::Prefix(p) => Err(FingerprintError::NotFull(p)),
        }
    }

    /// The fingerprint of a finished SHA-256 digest.
    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The short form `lxc image list` shows.
    pub fn short(&self) -> &str {
        &self.0[..MIN_PREFIX_LEN]
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A way to name an image by fingerprint: the whole of it, or a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FingerprintQuery {
    Full(Fingerprint),
    Prefix(String),
}

impl FingerprintQuery {
    /// Validates a fingerprint or prefix by LXD's rule.
    pub fn parse(s: &str) -> Result<Self, FingerprintError> {
        if s.is_empty() {
            return Err(FingerprintError::Empty);
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(FingerprintError::NotLowercaseHex(truncated(s)));
        }
        match s.len() {
            FULL_LEN => Ok(Self::Full(Fingerprint(s.to_owned()))),
            n if n > FULL_LEN => Err(FingerprintError::TooLong(truncated(s))),
            n if n < MIN_PREFIX_LEN => Err(FingerprintError::TooShort(s.to_owned())),
            _ => Ok(Self::Prefix(s.to_owned())),
        }
    }
}

/// Echoing a megabyte of garbage back in an error helps nobody.
fn truncated(s: &str) -> String {
    const KEEP: usize = 80;
    if s.len() <= KEEP {
        return s.to_owned();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "01a4a9962e8e8bc3b6e3ceb25fecc2de0898b677ab1135aefc0986507e397294";

    #[test]
    fn full_fingerprint_parses() {
        assert_eq!(
            FingerprintQuery::parse(FP).unwrap(),
            FingerprintQuery::Full(Fingerprint(FP.into()))
        );
        assert_eq!(Fingerprint::parse(FP).unwrap().short(), "01a4a9962e8e");
    }

    #[test]
    fn prefixes_follow_lxd_rule() {
        assert_eq!(
            FingerprintQuery::parse(&FP[..12]).unwrap(),
            FingerprintQuery::Prefix(FP[..12].into())
        );
        assert!(matches!(
            FingerprintQuery::parse(&FP[..11]),
            Err(FingerprintError::TooShort(_))
        ));
        assert!(matches!(
            FingerprintQuery::parse(&format!("{FP}0")),
            Err(FingerprintError::TooLong(_))
        ));
        assert!(matches!(
            FingerprintQuery::parse(&FP.to_uppercase()),
            Err(FingerprintError::NotLowercaseHex(_))
        ));
        assert!(matches!(
            FingerprintQuery::parse("%%%%%%%%%%%%"),
            Err(FingerprintError::NotLowercaseHex(_))
        ));
        assert_eq!(FingerprintQuery::parse(""), Err(FingerprintError::Empty));
        assert!(matches!(
            Fingerprint::parse(&FP[..20]),
            Err(FingerprintError::NotFull(_))
        ));
    }

    #[test]
    fn long_garbage_is_not_echoed_whole() {
        let junk = "Z".repeat(10_000);
        let msg = FingerprintQuery::parse(&junk).unwrap_err().to_string();
        assert!(msg.len() < 300, "{msg}");
    }
}
