//! What the HTTP-face suites share: a TLS cluster with two blob nodes and images
//! of each kind, HTTPS clients that trust its certificate as LXD's do (as a root,
//! no pinning), and unified images made on the spot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_client::{Client, NoProgress, Source, UploadOptions};
use imagestore_proto::v1 as pb;
use imagestore_server::TlsConfig;

use crate::{BlobNode, Cluster, ControlPlane, StoreSpec, fixture};

/// A unified LXD image as an uncompressed tarball: metadata.yaml with these
/// properties and one rootfs file, different for each `seed`.
pub fn unified_image(seed: &str, properties: &[(&str, &str)]) -> Vec<u8> {
    let mut yaml = String::from("architecture: x86_64\ncreation_date: 1700000000\nproperties:\n");
    for (k, v) in properties {
        yaml.push_str(&format!("  {k}: \"{v}\"\n"));
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, body: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body).unwrap();
    };
    add("metadata.yaml", yaml.as_bytes());
    add("rootfs/seed", seed.as_bytes());
    tar.into_inner().unwrap()
}

/// A control plane and two blob nodes over TLS with one self-signed certificate
/// (for 127.0.0.1 and localhost), as `imagestore serve` makes one.
pub struct TlsCluster {
    pub dir: tempfile::TempDir,
    pub cp: ControlPlane,
    pub nodes: Vec<BlobNode>,
    pub cert_file: PathBuf,
    pub cert_pem: String,
}

impl TlsCluster {
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(nodes, |_| {}, |_| {}).await
    }

    /// As [`Self::start`], with the control plane's and each node's
    /// configuration tweaked.
    pub async fn start_with(
        nodes: usize,
        cp_tweak: impl FnOnce(&mut imagestore_control_plane::ControlPlaneConfig),
        node_tweak: impl Fn(&mut imagestore_blob_node::BlobNodeConfig) + Clone,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let pair = imagestore_auth::self_signed("imagestore http test", &names).unwrap();
        let (cert_file, key_file) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        std::fs::write(&cert_file, &pair.cert_pem).unwrap();
        std::fs::write(&key_file, &pair.key_pem).unwrap();
        let tls = TlsConfig {
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file),
            insecure: false,
        };
        let cp = {
            let tls = tls.clone();
            ControlPlane::start_with(&dir.path().join("cp"), move |c| {
                c.tls = tls;
                cp_tweak(c);
            })
            .await
        };
        let store = StoreSpec::local(&dir.path().join("store"));
        let mut started = Vec::new();
        for n in 0..nodes {
            let tls = tls.clone();
            let node_dir = dir.path().join(format!("node{n}"));
            let tweak = node_tweak.clone();
            started.push(
                BlobNode::start_with(&cp, &node_dir, &store, move |c| {
                    c.tls = tls;
                    tweak(c);
                })
                .await,
            );
        }
        Self {
            cert_pem: pair.cert_pem,
            dir,
            cp,
            nodes: started,
            cert_file,
        }
    }

    /// The admin's client.
    pub async fn admin(&self) -> Client {
        Client::connect_with(&self.cp.url(), Some(&self.cp.admin_token()), self.cp.tls())
            .await
            .unwrap()
    }

    /// Uploads a file (or a split pair) as the admin.
    pub async fn upload(&self, source: Source, alias: &str, public: bool) -> pb::Image {
        self.admin()
            .await
            .upload(
                &source,
                &UploadOptions {
                    aliases: vec![alias.to_owned()],
                    public,
                    ..UploadOptions::default()
                },
                Arc::new(NoProgress),
            )
            .await
            .unwrap()
    }

    /// Writes `bytes` to a file in the cluster's directory.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join("files").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// The LXD fixtures: a public unified image ("unified") and a public split
    /// one ("split").
    pub async fn upload_fixtures(&self) -> (pb::Image, pb::Image) {
        let unified = self
            .upload(
                Source::Unified(self.file("u.tar.gz", &fixture("busybox-unified.tar.gz"))),
                "unified",
                true,
            )
            .await;
        let split = self
            .upload(
                Source::Split {
                    metadata: self.file("m.tar.xz", &fixture("busybox-split-meta.tar.xz")),
                    rootfs: self.file("r.squashfs", &fixture("busybox-split-rootfs.squashfs")),
                },
                "split",
                true,
            )
            .await;
        (unified, split)
    }

    /// An HTTPS client that trusts the cluster's certificate as a root (as LXD
    /// does through SSL_CERT_FILE) and does not follow redirects.
    pub fn https(&self, version: HttpVersion) -> reqwest::Client {
        https_client(&self.cert_pem, version, false)
    }

    /// The same, following redirects as LXD's Go client does.
    pub fn following(&self, version: HttpVersion) -> reqwest::Client {
        https_client(&self.cert_pem, version, true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 only (LXD's client on most connections).
    Http1,
    /// Whatever ALPN agrees (h2 with us).
    Any,
}

/// An HTTPS client trusting `cert_pem` only.
pub fn https_client(cert_pem: &str, version: HttpVersion, follow: bool) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([cert])
        .redirect(if follow {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        });
    if version == HttpVersion::Http1 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// The bytes of `path`'s file, and its SHA-256.
pub fn read(path: &Path) -> (Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap();
    let sha = crate::sha256_hex(&bytes);
    (bytes, sha)
}

/// Properties as the client takes them.
pub fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
