//! Who may see, fetch and change what, over TLS: every RPC against every kind of
//! caller, tickets on blob nodes, image secrets, and where plaintext is allowed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;

use imagestore_auth::CertPair;
use imagestore_client::{Bearer, Client, Source, TlsOptions, UploadOptions};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_server::TlsConfig;
use imagestore_tests::*;
use pb::upload_request::FirstMessage;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;

/// The private image's alias and a property value: neither may reach an untrusted
/// caller, nor may its fingerprint.
const SECRET_ALIAS: &str = "secret-image";
const SECRET_VALUE: &str = "hidden-value";
const PUBLIC_ALIAS: &str = "open-image";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    /// A client certificate in the trust store (mutual TLS).
    Certificate,
    /// A bearer token from CreateToken.
    Token,
    /// A client certificate the server does not trust.
    WrongCertificate,
    /// A blob node: the cluster credential.
    Node,
}

impl Who {
    fn trusted(self) -> bool {
        matches!(self, Who::Certificate | Who::Token)
    }
}

/// What a call must answer, by kind of caller.
#[derive(Clone, Copy)]
struct Expect {
    trusted: Code,
    untrusted: Code,
    node: Code,
}

impl Expect {
    fn code(self, who: Who) -> Code {
        match who {
            Who::Certificate | Who::Token => self.trusted,
            Who::Anonymous | Who::WrongCertificate => self.untrusted,
            Who::Node => self.node,
        }
    }
}

/// Reads of the private image: a missing image to the untrusted. The cluster
/// credential reads no image through the client services.
const PRIVATE: Expect = Expect {
    trusted: Code::Ok,
    untrusted: Code::NotFound,
    node: Code::PermissionDenied,
};
/// Reads anyone may do, but with the cluster credential.
const OPEN: Expect = Expect {
    trusted: Code::Ok,
    untrusted: Code::Ok,
    node: Code::PermissionDenied,
};

/// Calls that need trust; `trusted` is what a trusted caller gets.
const fn write(trusted: Code) -> Expect {
    Expect {
        trusted,
        untrusted: Code::Unauthenticated,
        node: Code::PermissionDenied,
    }
}

/// Calls for blob nodes only.
const fn node_only(node: Code) -> Expect {
    Expect {
        trusted: Code::PermissionDenied,
        untrusted: Code::Unauthenticated,
        node,
    }
}

fn write_pair(dir: &Path, name: &str, pair: &CertPair) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    (cert, key)
}

/// A TLS control plane and blob node sharing the cluster certificate, a private
/// and a public image uploaded through them, and the credentials of each caller.
struct World {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    node: BlobNode,
    token: String,
    trusted_cert: CertPair,
    stranger_cert: CertPair,
    private: pb::Image,
    public: pb::Image,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cluster = imagestore_auth::self_signed("imagestore test cluster", &names).unwrap();
        let (cert, key) = write_pair(dir.path(), "cluster", &cluster);
        let tls = TlsConfig {
            cert_file: Some(cert),
            key_file: Some(key),
            insecure: false,
        };
        let cp = {
            let tls = tls.clone();
            ControlPlane::start_with(&dir.path().join("cp"), move |c| c.tls = tls).await
        };
        let node = BlobNode::start_with(
            &cp,
            &dir.path().join("node"),
            &StoreSpec::local(&dir.path().join("store")),
            |c| c.tls = tls,
        )
        .await;
        assert!(node.url().starts_with("https://"));

        let admin = cp.client().await;
        let token = admin
            .trust()
            .create_token(pb::CreateTokenRequest {
                description: "matrix".into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let trusted_cert = imagestore_auth::self_signed("trusted client", &[]).unwrap();
        admin
            .trust()
            .add_certificate(pb::AddCertificateRequest {
                certificate_pem: trusted_cert.cert_pem.clone(),
                description: "matrix".into(),
            })
            .await
            .unwrap();
        let stranger_cert = imagestore_auth::self_signed("stranger", &[]).unwrap();

        // Both images go through the blob node over TLS with tickets, as a
        // client uploads them.
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        let put = |name: &str| {
            let path = files.join(name);
            std::fs::write(&path, fixture(name)).unwrap();
            path
        };
        let private = admin
            .upload(
                &Source::Unified(put("busybox-unified.tar.gz")),
                &UploadOptions {
                    aliases: vec![SECRET_ALIAS.into()],
                    properties: HashMap::from([("codename".into(), SECRET_VALUE.into())]),
                    ..UploadOptions::default()
                },
                std::sync::Arc::new(imagestore_client::NoProgress),
            )
            .await
            .unwrap();
        let public = admin
            .upload(
                &Source::Split {
                    metadata: put("busybox-split-meta.tar.xz"),
                    rootfs: put("busybox-split-rootfs.squashfs"),
                },
                &UploadOptions {
                    aliases: vec![PUBLIC_ALIAS.into()],
                    public: true,
                    ..UploadOptions::default()
                },
                std::sync::Arc::new(imagestore_client::NoProgress),
            )
            .await
            .unwrap();
        assert!(!private.public && public.public);
        Self {
            dir,
            cp,
            node,
            token,
            trusted_cert,
            stranger_cert,
            private,
            public,
        }
    }

    fn tls_as(&self, who: Who) -> TlsOptions {
        let identity = match who {
            Who::Certificate => Some(self.trusted_cert.clone()),
            Who::WrongCertificate => Some(self.stranger_cert.clone()),
            _ => None,
        };
        TlsOptions {
            pin: self.cp.pin.clone(),
            identity,
            address: None,
        }
    }

    /// A connection to the control plane as `who`.
    async fn as_caller(&self, who: Who) -> Authed {
        let token = match who {
            Who::Token => Some(self.token.clone()),
            Who::Node => Some(self.cp.cluster_credential()),
            _ => None,
        };
        let channel = imagestore_client::connect_with(&self.cp.url(), &self.tls_as(who))
            .await
            .unwrap();
        InterceptedService::new(channel, Bearer::new(token.as_deref()).unwrap())
    }

    /// A connection to the blob node (tickets, not callers, decide there).
    async fn blobs(&self, who: Who) -> imagestore_client::BlobsClient {
        imagestore_client::blobs_client(
            imagestore_client::connect_with(&self.node.url(), &self.tls_as(who))
                .await
                .unwrap(),
        )
    }

    /// A trusted client.
    async fn admin(&self) -> Client {
        self.cp.client().await
    }
}

/// Everything one caller got, and what was wrong with it.
struct Calls {
    who: Who,
    /// Every answer as text (responses and error messages), for the leak check.
    seen: Vec<String>,
    wrong: Vec<String>,
}

impl Calls {
    fn check<T: Debug>(&mut self, rpc: &str, expect: Expect, got: Result<T, tonic::Status>) {
        self.check_asked(rpc, expect, got, &[]);
    }

    /// As `check`, for a call whose request named `asked`: an error may echo the
    /// caller's own words back (the leak check looks at the rest).
    fn check_asked<T: Debug>(
        &mut self,
        rpc: &str,
        expect: Expect,
        got: Result<T, tonic::Status>,
        asked: &[&str],
    ) {
        let want = expect.code(self.who);
        let (code, text) = match &got {
            Ok(r) => (Code::Ok, format!("{r:?}")),
            Err(s) => (
                s.code(),
                asked
                    .iter()
                    .fold(s.message().to_owned(), |m, a| m.replace(a, "<asked>")),
            ),
        };
        if code != want {
            self.wrong.push(format!(
                "{:?} {rpc}: expected {want:?}, got {code:?} ({})",
                self.who,
                text.chars().take(200).collect::<String>()
            ));
        }
        self.seen.push(text);
    }
}

/// A download of one part with `ticket`.
fn download_request(fingerprint: &str, part: pb::PartRole, ticket: &str) -> pb::DownloadRequest {
    pb::DownloadRequest {
        fingerprint: fingerprint.to_owned(),
        part: part as i32,
        ticket: ticket.to_owned(),
        ..Default::default()
    }
}

/// Drains a download stream into its bytes.
async fn drain(
    r: Result<tonic::Response<tonic::Streaming<pb::DownloadResponse>>, tonic::Status>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = r?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        out.extend_from_slice(&m?.data);
    }
    Ok(out)
}

/// Every RPC once as `who`.
async fn every_rpc(w: &World, who: Who) -> Calls {
    let mut c = Calls {
        who,
        seen: Vec::new(),
        wrong: Vec::new(),
    };
    let conn = w.as_caller(who).await;
    let mut images = pb::images_client::ImagesClient::new(conn.clone());
    let mut aliases = pb::aliases_client::AliasesClient::new(conn.clone());
    let mut ops = pb::operations_client::OperationsClient::new(conn.clone());
    let mut uploads = pb::uploads_client::UploadsClient::new(conn.clone());
    let mut imports = pb::imports_client::ImportsClient::new(conn.clone());
    let mut trust = pb::trust_client::TrustClient::new(conn.clone());
    let mut registry = ipb::registry_client::RegistryClient::new(conn);
    let (p, q) = (&w.private.fingerprint, &w.public.fingerprint);
    let get = |name: String| pb::GetImageRequest {
        name,
        ..Default::default()
    };
    let label = format!("{who:?}").to_lowercase();

    // Images.
    for name in [
        format!("images/{p}"),
        format!("images/{}", &p[..12]),
        format!("aliases/{SECRET_ALIAS}"),
    ] {
        let r = images.get_image(get(name.clone())).await;
        let asked = name.split_once('/').unwrap().1;
        c.check_asked("GetImage(private)", PRIVATE, r, &[asked]);
    }
    c.check(
        "GetImage(public)",
        OPEN,
        images
            .get_image(get(format!("aliases/{PUBLIC_ALIAS}")))
            .await,
    );
    let all = images
        .list_images(pb::ListImagesRequest::default())
        .await
        .map(|r| r.into_inner());
    let listed = all.as_ref().map(|l| l.images.len()).unwrap_or(0);
    let expected = match who {
        Who::Anonymous | Who::WrongCertificate => 1,
        // Refused outright (below).
        Who::Node => 0,
        Who::Certificate | Who::Token => 2,
    };
    if listed != expected {
        c.wrong.push(format!(
            "{who:?} ListImages: {listed} images, expected {expected}"
        ));
    }
    c.check("ListImages", OPEN, all);
    // A page of one: an untrusted caller's page must not hint at more.
    let page = images
        .list_images(pb::ListImagesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner());
    if let Ok(page) = &page
        && !who.trusted()
        && who != Who::Node
        && !page.next_page_token.is_empty()
    {
        c.wrong
            .push(format!("{who:?} ListImages page_size 1: a next page token"));
    }
    c.check("ListImages(page 1)", OPEN, page);
    let filtered = images
        .list_images(pb::ListImagesRequest {
            filter: format!("codename={SECRET_VALUE}"),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().images.len());
    let right = match (&filtered, who) {
        (Err(s), Who::Node) => s.code() == Code::PermissionDenied,
        (Ok(n), _) => *n == usize::from(who.trusted()),
        (Err(_), _) => false,
    };
    if !right {
        c.wrong.push(format!(
            "{who:?} ListImages(filter on the private property): {filtered:?}"
        ));
    }
    let export = |name: String| pb::ExportImageRequest {
        name,
        ..Default::default()
    };
    let private_export = images.export_image(export(format!("images/{p}"))).await;
    let private_ticket = private_export
        .as_ref()
        .map(|r| r.get_ref().ticket.clone())
        .unwrap_or_default();
    c.check_asked("ExportImage(private)", PRIVATE, private_export, &[p]);
    let public_export = images.export_image(export(format!("images/{q}"))).await;
    let public_ticket = public_export
        .as_ref()
        .map(|r| r.get_ref().ticket.clone())
        .unwrap_or_default();
    c.check("ExportImage(public)", OPEN, public_export);
    for (rpc, name) in [("UpdateImage(private)", p), ("UpdateImage(public)", q)] {
        let r = images
            .update_image(pb::UpdateImageRequest {
                image: Some(pb::Image {
                    name: format!("images/{name}"),
                    properties: HashMap::from([("touched-by".into(), label.clone())]),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["properties.touched-by".into()],
                }),
            })
            .await;
        c.check(rpc, write(Code::Ok), r);
    }
    let r = images
        .create_image_secret(pb::CreateImageSecretRequest {
            name: format!("images/{p}"),
        })
        .await;
    c.check("CreateImageSecret", write(Code::Ok), r);
    let r = images
        .refresh_image(pb::RefreshImageRequest {
            name: format!("images/{p}"),
        })
        .await;
    c.check("RefreshImage", write(Code::FailedPrecondition), r);
    let r = images
        .verify_image(pb::VerifyImageRequest {
            name: format!("images/{}", "0".repeat(64)),
        })
        .await;
    c.check("VerifyImage", write(Code::NotFound), r);
    let r = images
        .delete_image(pb::DeleteImageRequest {
            name: format!("images/{}", "0".repeat(64)),
        })
        .await;
    c.check("DeleteImage", write(Code::NotFound), r);

    // Aliases.
    let r = aliases
        .get_alias(pb::GetAliasRequest {
            name: format!("aliases/{SECRET_ALIAS}"),
            ..Default::default()
        })
        .await;
    c.check_asked("GetAlias(private)", PRIVATE, r, &[SECRET_ALIAS]);
    let r = aliases
        .get_alias(pb::GetAliasRequest {
            name: format!("aliases/{PUBLIC_ALIAS}"),
            ..Default::default()
        })
        .await;
    c.check("GetAlias(public)", OPEN, r);
    let listed = aliases
        .list_aliases(pb::ListAliasesRequest::default())
        .await
        .map(|r| r.into_inner());
    c.check("ListAliases", OPEN, listed);
    let mine = format!("made-by-{label}");
    let r = aliases
        .create_alias(pb::CreateAliasRequest {
            alias_id: mine.clone(),
            alias: Some(pb::Alias {
                target: q.clone(),
                ..Default::default()
            }),
        })
        .await;
    c.check("CreateAlias", write(Code::Ok), r);
    let r = aliases
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: format!("aliases/{mine}"),
                description: "changed".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
        })
        .await;
    c.check("UpdateAlias", write(Code::Ok), r);
    let r = aliases
        .rename_alias(pb::RenameAliasRequest {
            name: format!("aliases/{mine}"),
            new_alias_id: format!("renamed-by-{label}"),
        })
        .await;
    c.check("RenameAlias", write(Code::Ok), r);
    let r = aliases
        .delete_alias(pb::DeleteAliasRequest {
            name: format!("aliases/renamed-by-{label}"),
        })
        .await;
    c.check("DeleteAlias", write(Code::Ok), r);

    // Operations.
    let none = "operations/00000000000000000000000000000000".to_owned();
    let r = ops
        .list_operations(pb::ListOperationsRequest::default())
        .await;
    c.check("ListOperations", write(Code::Ok), r);
    let r = ops
        .get_operation(pb::GetOperationRequest { name: none.clone() })
        .await;
    c.check("GetOperation", write(Code::NotFound), r);
    let r = match ops
        .wait_operation(pb::WaitOperationRequest {
            name: none.clone(),
            ..Default::default()
        })
        .await
    {
        Ok(s) => s
            .into_inner()
            .next()
            .await
            .unwrap_or(Ok(pb::Operation::default())),
        Err(e) => Err(e),
    };
    c.check("WaitOperation", write(Code::NotFound), r);
    let r = ops
        .cancel_operation(pb::CancelOperationRequest { name: none })
        .await;
    c.check("CancelOperation", write(Code::NotFound), r);

    // Uploads.
    let spec = pb::UploadSpec {
        layout: pb::ImageLayout::Unified as i32,
        metadata_size: 10,
        ..Default::default()
    };
    let r = uploads
        .create_upload(pb::CreateUploadRequest {
            spec: Some(spec.clone()),
        })
        .await;
    let session = r.as_ref().ok().map(|s| s.get_ref().name.clone());
    c.check("CreateUpload", write(Code::Ok), r);
    let r = uploads
        .get_upload(pb::GetUploadRequest {
            name: session.clone().unwrap_or_else(|| "uploads/nope".into()),
            ..Default::default()
        })
        .await;
    c.check("GetUpload", write(Code::Ok), r);
    let r = uploads
        .cancel_upload(pb::CancelUploadRequest {
            name: session.unwrap_or_else(|| "uploads/nope".into()),
        })
        .await;
    c.check("CancelUpload", write(Code::Ok), r);
    let r = uploads
        .create_one_shot_ticket(pb::CreateOneShotTicketRequest::default())
        .await;
    c.check("CreateOneShotTicket", write(Code::Ok), r);

    // Imports: trust is checked before the request is looked at.
    let r = imports
        .import_image(pb::ImportImageRequest::default())
        .await;
    c.check("ImportImage", write(Code::InvalidArgument), r);

    // Trust.
    let r = trust.list_trust(pb::ListTrustRequest {}).await;
    c.check("ListTrust", write(Code::Ok), r);
    let r = trust
        .create_token(pb::CreateTokenRequest {
            description: label.clone(),
            ttl_seconds: 60,
        })
        .await;
    c.check("CreateToken", write(Code::Ok), r);
    let r = trust
        .add_certificate(pb::AddCertificateRequest {
            certificate_pem: "not a certificate".into(),
            description: label.clone(),
        })
        .await;
    c.check("AddCertificate", write(Code::InvalidArgument), r);
    let r = trust
        .remove_trust(pb::RemoveTrustRequest {
            name: "trust/nope".into(),
        })
        .await;
    c.check("RemoveTrust", write(Code::NotFound), r);

    // Registry: blob nodes only.
    let r = registry.list_nodes(ipb::ListNodesRequest::default()).await;
    c.check("ListNodes", node_only(Code::Ok), r);
    let r = registry
        .lookup_content(ipb::LookupContentRequest {
            fingerprint: p.clone(),
        })
        .await;
    c.check_asked("LookupContent", node_only(Code::Ok), r, &[p]);
    let r = registry
        .list_released(ipb::ListReleasedRequest::default())
        .await;
    c.check("ListReleased", node_only(Code::Ok), r);
    let r = registry
        .register_node(ipb::RegisterNodeRequest::default())
        .await;
    c.check("RegisterNode", node_only(Code::InvalidArgument), r);
    let r = registry.heartbeat(ipb::HeartbeatRequest::default()).await;
    c.check("Heartbeat", node_only(Code::InvalidArgument), r);
    let r = registry
        .register_content(ipb::RegisterContentRequest::default())
        .await;
    c.check("RegisterContent", node_only(Code::InvalidArgument), r);
    let r = registry.open_write(ipb::OpenWriteRequest::default()).await;
    c.check("OpenWrite", node_only(Code::InvalidArgument), r);
    let r = registry
        .commit_segment(ipb::CommitSegmentRequest::default())
        .await;
    c.check("CommitSegment", node_only(Code::InvalidArgument), r);
    let r = registry.fail_write(ipb::FailWriteRequest::default()).await;
    c.check("FailWrite", node_only(Code::InvalidArgument), r);
    let r = registry
        .release_write(ipb::ReleaseWriteRequest::default())
        .await;
    c.check("ReleaseWrite", node_only(Code::InvalidArgument), r);
    let r = registry
        .forget_released(ipb::ForgetReleasedRequest::default())
        .await;
    c.check("ForgetReleased", node_only(Code::Ok), r);
    let r = registry
        .report_scrub(ipb::ReportScrubRequest::default())
        .await;
    c.check("ReportScrub", node_only(Code::InvalidArgument), r);
    let r = registry
        .claim_scrub(ipb::ClaimScrubRequest::default())
        .await;
    c.check("ClaimScrub", node_only(Code::InvalidArgument), r);

    // Blobs: a ticket decides, whoever holds it.
    let mut blobs = w.blobs(who).await;
    let none = Expect {
        trusted: Code::Unauthenticated,
        untrusted: Code::Unauthenticated,
        node: Code::Unauthenticated,
    };
    let r = drain(
        blobs
            .download(download_request(p, pb::PartRole::Unified, ""))
            .await,
    )
    .await;
    c.check_asked("Download(no ticket)", none, r.map(|b| b.len()), &[p]);
    let r = drain(
        blobs
            .download(download_request(q, pb::PartRole::Rootfs, &public_ticket))
            .await,
    )
    .await;
    // The cluster credential gets no ticket from ExportImage to bring.
    let public_ticketed = Expect {
        node: Code::Unauthenticated,
        ..OPEN
    };
    c.check(
        "Download(public, its ticket)",
        public_ticketed,
        r.map(|b| b.len()),
    );
    if !private_ticket.is_empty() {
        let r = drain(
            blobs
                .download(download_request(p, pb::PartRole::Unified, &private_ticket))
                .await,
        )
        .await;
        c.check_asked(
            "Download(private, its ticket)",
            PRIVATE,
            r.map(|b| b.len()),
            &[p],
        );
    }
    let r = blobs
        .upload(tokio_stream::iter(vec![pb::UploadRequest {
            first_message: Some(FirstMessage::Spec(spec)),
            finish_write: true,
            ..Default::default()
        }]))
        .await;
    c.check("Upload(no ticket)", none, r);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_kind_of_caller_as_it_should() {
    let w = World::start().await;
    let mut wrong = Vec::new();
    for who in [
        Who::Anonymous,
        Who::WrongCertificate,
        Who::Certificate,
        Who::Token,
        Who::Node,
    ] {
        let calls = every_rpc(&w, who).await;
        wrong.extend(calls.wrong);
        if !who.trusted() && who != Who::Node {
            let p = &w.private.fingerprint;
            for text in &calls.seen {
                for secret in [p.as_str(), &p[..12], SECRET_ALIAS, SECRET_VALUE] {
                    assert!(
                        !text.contains(secret),
                        "{who:?} was shown {secret:?} in: {text}"
                    );
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // A private image reads exactly as a missing one: same code, same words.
    let mut images = pb::images_client::ImagesClient::new(w.as_caller(Who::Anonymous).await);
    let missing = sha256_hex(b"never uploaded");
    for (name, absent) in [
        (
            format!("images/{}", w.private.fingerprint),
            format!("images/{missing}"),
        ),
        (
            format!("aliases/{SECRET_ALIAS}"),
            "aliases/never-made".to_owned(),
        ),
    ] {
        let ask = |name: String| pb::GetImageRequest {
            name,
            ..Default::default()
        };
        let private = images.get_image(ask(name.clone())).await.unwrap_err();
        let gone = images.get_image(ask(absent.clone())).await.unwrap_err();
        assert_eq!(private.code(), gone.code());
        let strip =
            |s: &tonic::Status, n: &str| s.message().replace(n.split('/').nth(1).unwrap(), "X");
        assert_eq!(strip(&private, &name), strip(&gone, &absent));
    }
    w.node.stop().await;
    w.cp.stop().await;
}

/// An upload stream's first message with `ticket`, then nothing: enough for the
/// node to decide on the ticket.
fn opening(first: FirstMessage, ticket: &str) -> Vec<pb::UploadRequest> {
    vec![pb::UploadRequest {
        first_message: Some(first),
        ticket: ticket.to_owned(),
        ..Default::default()
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_open_exactly_what_they_name_and_only_while_they_last() {
    let w = World::start().await;
    let admin = w.admin().await;
    let mut blobs = w.blobs(Who::Anonymous).await;
    let (p, q) = (&w.private.fingerprint, &w.public.fingerprint);
    let ticket_for = |export: pb::ExportImageResponse| export.ticket;
    let public_ticket = ticket_for(
        admin
            .images()
            .export_image(pb::ExportImageRequest {
                name: format!("images/{q}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
    );

    // A ticket for one image does not open another.
    let r = drain(
        blobs
            .download(download_request(p, pb::PartRole::Unified, &public_ticket))
            .await,
    )
    .await;
    assert_status(r, Code::PermissionDenied, "not for downloading image");
    // Nor does a ticket for one upload session open another, or a one-shot
    // ticket for one fingerprint an upload of another.
    let spec = pb::UploadSpec {
        layout: pb::ImageLayout::Unified as i32,
        metadata_size: 10,
        ..Default::default()
    };
    let session = |spec: pb::UploadSpec| {
        let admin = admin.clone();
        async move {
            admin
                .uploads()
                .create_upload(pb::CreateUploadRequest { spec: Some(spec) })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let (a, b) = (session(spec.clone()).await, session(spec.clone()).await);
    let r = blobs
        .upload(tokio_stream::iter(opening(
            FirstMessage::Upload(b.name.clone()),
            &a.ticket,
        )))
        .await;
    assert_status(r, Code::PermissionDenied, "not for upload");
    // A stolen upload ticket is no credential for the control plane: it cannot
    // register content, nor read the session it names.
    let stolen = imagestore_client::connect_with(&w.cp.url(), &w.cp.tls())
        .await
        .unwrap();
    let stolen = InterceptedService::new(stolen, Bearer::new(Some(&a.ticket)).unwrap());
    let r = ipb::registry_client::RegistryClient::new(stolen.clone())
        .register_content(unified("arbitrary content"))
        .await;
    assert_status(r, Code::Unauthenticated, "not trusted");
    let r = pb::uploads_client::UploadsClient::new(stolen)
        .get_upload(pb::GetUploadRequest {
            name: a.name.clone(),
            ..Default::default()
        })
        .await;
    assert_status(r, Code::Unauthenticated, "not trusted");
    let pinned = admin
        .uploads()
        .create_one_shot_ticket(pb::CreateOneShotTicketRequest {
            expected_fingerprint: sha256_hex(b"one image"),
        })
        .await
        .unwrap()
        .into_inner()
        .ticket;
    let other = pb::UploadSpec {
        expected_fingerprint: sha256_hex(b"another image"),
        ..spec.clone()
    };
    let r = blobs
        .upload(tokio_stream::iter(opening(
            FirstMessage::Spec(other),
            &pinned,
        )))
        .await;
    assert_status(r, Code::PermissionDenied, "not for a one-shot upload of");

    // Forged: a changed signature, or a scope swapped under the old signature.
    let mut flipped = public_ticket.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    let r = drain(
        blobs
            .download(download_request(q, pb::PartRole::Rootfs, &flipped))
            .await,
    )
    .await;
    assert_status(r, Code::Unauthenticated, "not issued by this cluster");
    let parts: Vec<&str> = public_ticket.split('.').collect();
    use base64::Engine;
    let swapped = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("download:{p}")),
        parts[3]
    );
    let r = drain(
        blobs
            .download(download_request(p, pb::PartRole::Unified, &swapped))
            .await,
    )
    .await;
    assert_status(r, Code::Unauthenticated, "not issued by this cluster");
    // A ticket from another cluster (its own credential) is forged here.
    let elsewhere = ControlPlane::start(&w.dir.path().join("other-cp")).await;
    let elsewhere_node = BlobNode::start(
        &elsewhere,
        &w.dir.path().join("other-node"),
        &StoreSpec::local(&w.dir.path().join("other-store")),
    )
    .await;
    let foreign = elsewhere
        .uploads()
        .await
        .create_one_shot_ticket(pb::CreateOneShotTicketRequest::default())
        .await
        .unwrap()
        .into_inner()
        .ticket;
    let r = blobs
        .upload(tokio_stream::iter(opening(
            FirstMessage::Spec(spec.clone()),
            &foreign,
        )))
        .await;
    assert_status(r, Code::Unauthenticated, "not issued by this cluster");
    elsewhere_node.stop().await;
    elsewhere.stop().await;

    // Expired: a cluster whose tickets last a second; the same ticket works,
    // then stops working.
    let dir = tempfile::tempdir().unwrap();
    let short = ControlPlane::start_with(&dir.path().join("cp"), |c| {
        c.ticket_ttl = std::time::Duration::from_secs(1);
    })
    .await;
    let node = BlobNode::start(
        &short,
        &dir.path().join("node"),
        &StoreSpec::local(&dir.path().join("store")),
    )
    .await;
    let ticket = short
        .uploads()
        .await
        .create_one_shot_ticket(pb::CreateOneShotTicketRequest::default())
        .await
        .unwrap()
        .into_inner()
        .ticket;
    let mut short_blobs = blobs_client(&node.url()).await;
    let first = short_blobs
        .upload(tokio_stream::iter(opening(
            FirstMessage::Spec(spec.clone()),
            &ticket,
        )))
        .await;
    assert!(
        !matches!(&first, Err(s) if s.code() == Code::Unauthenticated),
        "a fresh ticket is taken: {first:?}"
    );
    eventually("the ticket to expire", || {
        let mut blobs = short_blobs.clone();
        let msgs = opening(FirstMessage::Spec(spec.clone()), &ticket);
        async move {
            matches!(blobs.upload(tokio_stream::iter(msgs)).await,
                Err(s) if s.code() == Code::Unauthenticated && s.message().contains("expired"))
        }
    })
    .await;
    node.stop().await;
    short.stop().await;
    w.node.stop().await;
    w.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_secret_opens_one_private_image_once() {
    let w = World::start().await;
    let p = w.private.fingerprint.clone();
    let secret = w
        .admin()
        .await
        .images()
        .create_image_secret(pb::CreateImageSecretRequest {
            name: format!("aliases/{SECRET_ALIAS}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secret.image, format!("images/{p}"));
    assert_eq!(secret.secret.len(), 64);
    assert!(secret.expire_time.is_some());

    let mut images = pb::images_client::ImagesClient::new(w.as_caller(Who::Anonymous).await);
    let get = |secret: &str| pb::GetImageRequest {
        name: format!("images/{p}"),
        secret: secret.to_owned(),
        ..Default::default()
    };
    let export = |secret: &str| pb::ExportImageRequest {
        name: format!("images/{p}"),
        secret: secret.to_owned(),
        ..Default::default()
    };
    // A wrong secret opens nothing, and says nothing a missing image would not.
    assert_status(
        images.get_image(get(&"0".repeat(64))).await,
        Code::NotFound,
        "not found",
    );
    // The right one shows the image (as the copying server first asks)...
    let seen = images
        .get_image(get(&secret.secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.fingerprint, p);
    // ...and lets it be exported once: the ticket fetches the bytes.
    let exported = images
        .export_image(export(&secret.secret))
        .await
        .unwrap()
        .into_inner();
    let bytes = drain(
        w.blobs(Who::Anonymous)
            .await
            .download(download_request(
                &p,
                pb::PartRole::Unified,
                &exported.ticket,
            ))
            .await,
    )
    .await
    .unwrap();
    assert_eq!(sha256_hex(&bytes), p);
    // Used: the second use finds nothing.
    assert_status(
        images.export_image(export(&secret.secret)).await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        images.get_image(get(&secret.secret)).await,
        Code::NotFound,
        "not found",
    );
    w.node.stop().await;
    w.cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pin_the_server_certificate_and_plaintext_clients_get_nothing() {
    let w = World::start().await;
    // The pinned certificate works (World::start connected that way); another
    // pin fails at the handshake, before a byte of request is sent.
    let wrong = TlsOptions {
        pin: Some("ab".repeat(32)),
        ..TlsOptions::default()
    };
    let refused = imagestore_client::connect_with(&w.cp.url(), &wrong).await;
    let message = refused.map(|_| ()).unwrap_err().to_string();
    assert!(message.contains("not the pinned"), "{message}");
    // Without a pin the system roots decide, and they do not know this cluster.
    assert!(
        imagestore_client::connect_with(&w.cp.url(), &TlsOptions::default())
            .await
            .is_err()
    );
    // The fingerprint a client sees before trusting is the certificate's.
    assert_eq!(
        imagestore_client::server_fingerprint(&w.cp.url())
            .await
            .unwrap(),
        w.cp.pin.clone().unwrap()
    );
    // A plaintext client gets no answer from a TLS port.
    let plain = w.cp.url().replacen("https://", "http://", 1);
    let channel = imagestore_client::connect(&plain).await;
    let answered = match channel {
        Ok(ch) => pb::images_client::ImagesClient::new(ch)
            .list_images(pb::ListImagesRequest::default())
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "a TLS server answered plaintext");
    w.node.stop().await;
    w.cp.stop().await;
}

/// Runs `imagestore-control` in a network namespace of its own where 10.9.9.9 is
/// an address that is not loopback.
fn in_namespace(args: &str, data: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["-rn", "sh", "-c"]).arg(format!(
        "ip link set lo up && ip addr add 10.9.9.9/32 dev lo && exec {} --data-dir {} {args}",
        binary("imagestore-control").display(),
        data.display()
    ));
    cmd.env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_beyond_loopback_without_the_insecure_flag() {
    let usable = std::process::Command::new("unshare")
        .args(["-rn", "ip", "link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("skipped: this machine does not allow network namespaces (unshare -rn)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        in_namespace("--listen 10.9.9.9:0", &dir.path().join("a")).output(),
    )
    .await
    .expect("the server neither started nor stopped")
    .unwrap();
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{log}");
    assert!(
        log.contains("refusing to serve plaintext on 10.9.9.9"),
        "{log}"
    );

    // With the flag it serves, and says loudly that it is plaintext.
    let mut insecure = in_namespace("--listen 10.9.9.9:0", &dir.path().join("b"));
    insecure.env("IMAGESTORE_TLS__INSECURE", "true");
    insecure.stderr(std::process::Stdio::piped());
    let mut child = insecure.spawn().unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let warned = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving PLAINTEXT") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(warned, "no plaintext warning from an insecure server");
    child.kill().await.unwrap();

    // With a certificate it serves TLS there.
    let pair = imagestore_auth::self_signed("ns", &["10.9.9.9".to_owned()]).unwrap();
    let (cert, key) = write_pair(dir.path(), "ns", &pair);
    let mut tls = in_namespace("--listen 10.9.9.9:0", &dir.path().join("c"));
    tls.env("IMAGESTORE_TLS__CERT_FILE", &cert)
        .env("IMAGESTORE_TLS__KEY_FILE", &key)
        .stderr(std::process::Stdio::piped());
    let mut child = tls.spawn().unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let serving = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving TLS") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(serving, "a server with a certificate did not serve TLS");
    child.kill().await.unwrap();
}
