//! Secrets: random tokens, their stored form, and files that keep them.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// A new random secret: 32 bytes as 64 lowercase hex characters.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What is stored of a token: its SHA-256, lowercase hex. Tokens are random and
/// long, so a plain hash cannot be reversed by guessing.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates `dir` and its missing parents for their owner only (0700); an
/// existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `data` to `path` readable by its owner only (0600), whole or not at
/// all: through a temporary file that is synced and renamed into place.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The secret kept in `path`, or None when there is no such file (or it is empty).
pub fn read_secret(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the secret in `path`, or creates the file (mode 0600) with a new one.
/// Returns the secret and whether it was created.
pub fn load_or_create(path: &Path) -> std::io::Result<(String, bool)> {
    if let Some(secret) = read_secret(path)? {
        return Ok((secret, false));
    }
    let secret = new_secret();
    write_private(path, format!("{secret}\n").as_bytes())?;
    Ok((secret, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin-token");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(first.len(), 64);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_ne!(hash_token(&first), first);
        assert_eq!(hash_token(&first), hash_token(&again));
    }
}
