//! Certificates: self-signed pairs as LXD makes them on first start (servers) and
//! first use (clients), and the fingerprint that names a certificate in the
//! trust store and in a client's pin: the SHA-256 of its DER form.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a PEM certificate (-----BEGIN CERTIFICATE-----): {0}")]
    Pem(String),
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertPair(..)")
    }
}

/// A new self-signed certificate (ECDSA P-256) for `names` (DNS names or IP
/// addresses), valid for ten years, as LXD's server and client certificates are.
pub fn self_signed(common_name: &str, names: &[String]) -> Result<CertPair, CertError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "imagestore");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The fingerprint of a DER certificate: SHA-256, lowercase hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The fingerprint of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &[u8]) -> Result<String, CertError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| CertError::Pem(e.to_string()))?;
    Ok(fingerprint_der(der.as_ref()))
}

/// Reads the pair at `cert` and `key`, or makes one and writes it there (the key
/// 0600) when neither exists. Returns it and whether it was made now.
pub fn load_or_generate(
    cert: &Path,
    key: &Path,
    common_name: &str,
    names: &[String],
) -> Result<(CertPair, bool), CertError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CertError::Io { path, source }
    };
    if !cert.exists() && !key.exists() {
        let pair = self_signed(common_name, names)?;
        crate::write_private(key, pair.key_pem.as_bytes()).map_err(io(key))?;
        std::fs::write(cert, &pair.cert_pem).map_err(io(cert))?;
        return Ok((pair, true));
    }
    let pair = CertPair {
        cert_pem: std::fs::read_to_string(cert).map_err(io(cert))?,
        key_pem: std::fs::read_to_string(key).map_err(io(key))?,
    };
    Ok((pair, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_is_kept_and_read_back_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (made, fresh) = load_or_generate(&cert, &key, "test", &names).unwrap();
        assert!(fresh);
        let (read, fresh) = load_or_generate(&cert, &key, "test", &names).unwrap();
        assert!(!fresh);
        let fp = fingerprint_pem(made.cert_pem.as_bytes()).unwrap();
        assert_eq!(fp, fingerprint_pem(read.cert_pem.as_bytes()).unwrap());
        assert_eq!(fp.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(fingerprint_pem(b"nope"), Err(CertError::Pem(_))));
    }
}
