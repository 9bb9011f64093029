//! Trust management on the control plane: the admin token, bearer tokens kept as
//! hashes, client certificates by fingerprint, and refusals that say why.

use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use tonic::Code;

fn openssl_certificate(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("client.key");
    let crt = dir.join("client.crt");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=imagestore-test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl could not make a test certificate");
    let pem = std::fs::read_to_string(&crt).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&crt)
        .output()
        .unwrap()
        .stdout;
    (pem, sha256_hex(&der))
}

#[tokio::test]
async fn tokens_and_certificates_through_their_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let admin = cp.admin_token();
    assert_eq!(admin.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the admin token is readable by others");
    }

    // Nobody else may touch the trust store.
    let mut anonymous = trust_client(&cp, None).await;
    assert_status(
        anonymous.list_trust(pb::ListTrustRequest {}).await,
        Code::Unauthenticated,
        "needs a trusted client",
    );
    assert_status(
        anonymous
            .create_token(pb::CreateTokenRequest::default())
            .await,
        Code::Unauthenticated,
        "Bearer",
    );
    let mut wrong = trust_client(&cp, Some(&"0".repeat(64))).await;
    assert_status(
        wrong.list_trust(pb::ListTrustRequest {}).await,
        Code::Unauthenticated,
        "not trusted",
    );

    // The admin creates a token; it works at once and is stored only as a hash.
    let mut root = trust_client(&cp, Some(&admin)).await;
    let created = root
        .create_token(pb::CreateTokenRequest {
            description: "ci".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let token = created.token.clone();
    let entry = created.entry.unwrap();
    assert_eq!(entry.kind, pb::TrustKind::Token as i32);
    assert!(!token.contains(&entry.fingerprint));
    let mut ci = trust_client(&cp, Some(&token)).await;
    let listed = ci
        .list_trust(pb::ListTrustRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(listed.entries.len(), 2, "{names:?}");
    assert!(names.contains(&entry.name.as_str()));
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let path = file.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("catalog")
        {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&token), "{} holds the token", path.display());
            assert!(
                !text.contains(&admin),
                "{} holds the admin token",
                path.display()
            );
        }
    }

    // A client certificate, by the SHA-256 of its DER form, once.
    let (pem, fingerprint) = openssl_certificate(dir.path());
    let cert = ci
        .add_certificate(pb::AddCertificateRequest {
            certificate_pem: pem.clone(),
            description: "laptop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cert.fingerprint, fingerprint);
    assert_eq!(cert.kind, pb::TrustKind::Certificate as i32);
    assert_status(
        ci.add_certificate(pb::AddCertificateRequest {
            certificate_pem: pem,
            description: "again".into(),
        })
        .await,
        Code::AlreadyExists,
        "trusted already",
    );
    assert_status(
        ci.add_certificate(pb::AddCertificateRequest {
            certificate_pem: "not a certificate".into(),
            description: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "BEGIN CERTIFICATE",
    );

    // Removing a token stops it at once; unknown names say so.
    root.remove_trust(pb::RemoveTrustRequest {
        name: entry.name.clone(),
    })
    .await
    .unwrap();
    assert_status(
        ci.list_trust(pb::ListTrustRequest {}).await,
        Code::Unauthenticated,
        "not trusted",
    );
    assert_status(
        root.remove_trust(pb::RemoveTrustRequest { name: entry.name })
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        root.remove_trust(pb::RemoveTrustRequest {
            name: "tokens/x".into(),
        })
        .await,
        Code::InvalidArgument,
        "trust/{id}",
    );

    // The admin token survives a restart and is not trusted twice.
    cp.stop().await;
    let cp = ControlPlane::start(dir.path()).await;
    assert_eq!(cp.admin_token(), admin);
    let mut root = trust_client(&cp, Some(&admin)).await;
    let listed = root
        .list_trust(pb::ListTrustRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 2, "admin token and certificate");
}

/// Two control planes over one catalog (replicas): a token created on one
/// works on the other, and once removed on one it is refused by the other
/// within a second, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_on_one_control_plane_is_refused_by_another_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let one = ControlPlane::start(dir.path()).await;
    let two = ControlPlane::start(dir.path()).await;
    let admin = one.admin_token();
    let created = trust_client(&one, Some(&admin))
        .await
        .create_token(pb::CreateTokenRequest {
            description: "replica test".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let token = created.token.clone();
    let lists = |token: String| {
        let two = &two;
        async move {
            trust_client(two, Some(&token))
                .await
                .list_trust(pb::ListTrustRequest {})
                .await
        }
    };
    eventually("the other control plane to trust the new token", || async {
        lists(token.clone()).await.is_ok()
    })
    .await;

    trust_client(&one, Some(&admin))
        .await
        .remove_trust(pb::RemoveTrustRequest {
            name: created.entry.unwrap().name,
        })
        .await
        .unwrap();
    let removed = std::time::Instant::now();
    eventually(
        "the other control plane to refuse the removed token",
        || async {
            matches!(lists(token.clone()).await, Err(s) if s.code() == tonic::Code::Unauthenticated)
        },
    )
    .await;
    assert!(
        removed.elapsed() < std::time::Duration::from_secs(1),
        "refused by the other replica {:?} after the removal",
        removed.elapsed()
    );
    two.stop().await;
    one.stop().await;
}
