//! Where bytes lie in the object store: the one home of the key layout, for the
//! blob nodes that write and delete and the catalog that records and releases.
//!
//! - `blobs/{id}/`: everything one upload session, one-shot upload or import
//!   stored (`id` is the session's or operation's id);
//! - `blobs/{id}/{role}/`: one part (`unified`, `metadata` or `rootfs`);
//! - `blobs/{id}/{role}/{offset:020}.{writer}`: one segment object of that part,
//!   named by its offset within the part and by the writer that stored it, so
//!   that two writers of the same offset (a superseded node and its successor)
//!   never write the same object. Images registered before writers were named
//!   have objects named by their offset alone.

/// The directory names of a part's role.
pub const ROLE_DIRS: [&str; 3] = ["unified", "metadata", "rootfs"];

/// Everything one upload stored lies below this prefix.
pub fn upload_prefix(id: &str) -> String {
    format!("blobs/{id}/")
}

/// The prefix of one part of an upload.
pub fn part_prefix(id: &str, role_dir: &str) -> String {
    format!("blobs/{id}/{role_dir}/")
}

/// The key of the segment object at `offset` within the part under `prefix`,
/// written by `writer`.
pub fn segment_key(prefix: &str, offset: u64, writer: &str) -> String {
    format!("{prefix}{offset:020}.{writer}")
}

/// The offset a segment object's key names, if it is one.
pub fn segment_offset(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let digits = match name.split_once('.') {
        Some((digits, writer)) if is_writer(writer) => digits,
        Some(_) => return None,
        None => name,
    };
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn is_writer(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// An upload's or operation's id as it may appear in a key: a plain name.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What a storage key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `blobs/{id}/`
    Upload,
    /// `blobs/{id}/{role}/`
    Part,
    /// `blobs/{id}/{role}/{segment}`
    Object,
}

/// Checks that `key` has the layout's form, before anything is recorded or
/// deleted through it: a key from a damaged catalog row or a hostile caller
/// never reaches beyond one upload's bytes.
pub fn check_key(key: &str) -> Result<KeyKind, String> {
    let bad = |why: &str| Err(format!("storage key {key:?} {why}"));
    let Some(rest) = key.strip_prefix("blobs/") else {
        return bad("does not start with \"blobs/\"");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [id, ""] if is_id(id) => Ok(KeyKind::Upload),
        [id, role, ""] if is_id(id) && ROLE_DIRS.contains(role) => Ok(KeyKind::Part),
        [id, role, object] if is_id(id) && ROLE_DIRS.contains(role) => {
            if segment_offset(object).is_some() {
                Ok(KeyKind::Object)
            } else {
                bad("does not name a segment object")
            }
        }
        _ => bad("is not an upload, a part or a segment object of the storage layout"),
    }
}

/// Whether `key` is a well-formed key at or below `prefix`.
pub fn is_within(key: &str, prefix: &str) -> bool {
    key.starts_with(prefix) && check_key(key).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout_and_nothing_else_passes() {
        let part = part_prefix("0b7c1f0e-aa", "rootfs");
        let key = segment_key(&part, 42, "w1a2b3");
        assert_eq!(key, "blobs/0b7c1f0e-aa/rootfs/00000000000000000042.w1a2b3");
        assert_eq!(segment_offset(&key), Some(42));
        assert_eq!(
            segment_offset("blobs/x/unified/00000000000000000007"),
            Some(7)
        );
        assert_eq!(check_key(&key), Ok(KeyKind::Object));
        assert_eq!(check_key(&part), Ok(KeyKind::Part));
        assert_eq!(check_key(&upload_prefix("abc")), Ok(KeyKind::Upload));
        assert!(is_within(&key, &part));
        assert!(!is_within(&key, &part_prefix("0b7c1f0e-aa", "metadata")));
        for bad in [
            "",
            "blobs/",
            "blobs/../",
            "blobs/a/../",
            "blobs/a/rootfs/../../x",
            "blobs/a/etc/",
            "blobs/a/rootfs/passwd",
            "blobs/a/rootfs/00000000000000000042.w/x",
            "blobs/a/rootfs/00000000000000000042.w#1",
            "/etc/passwd",
            "blobs//rootfs/",
            "blobs/.hidden/",
            "other/a/",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} passed");
        }
    }
}
