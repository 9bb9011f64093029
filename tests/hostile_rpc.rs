//! The catalogue of hostile requests, as one table: each input, the status it
//! must get (with words a person can act on), and no change to what the server
//! holds afterwards.

use std::future::Future;
use std::pin::Pin;

use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use pb::upload_request::FirstMessage;
use tonic::Code;

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'a>>;

/// Everything a request could have changed: images with their etags and
/// aliases, the alias table, and the stored objects.
async fn state(cp: &ControlPlane, store: &std::path::Path) -> (Vec<String>, Vec<String>, usize) {
    let images = cp
        .images()
        .await
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| format!("{} {} {:?} {}", i.fingerprint, i.etag, i.aliases, i.public))
        .collect();
    let aliases = cp
        .aliases()
        .await
        .list_aliases(pb::ListAliasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .aliases
        .into_iter()
        .map(|a| format!("{} {} {}", a.name, a.target, a.description))
        .collect();
    let stored = files_below(store).len();
    (images, aliases, stored)
}

fn spec() -> pb::UploadSpec {
    pb::UploadSpec {
        layout: pb::ImageLayout::Unified as i32,
        ..Default::default()
    }
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), tonic::Status> {
    r.map(|_| ())
}

/// Sends `bytes` as the request message of `path`, as they are: what a broken
/// or hostile client in another language could send.
async fn raw_call(
    cp: &ControlPlane,
    path: &'static str,
    bytes: &'static [u8],
) -> Result<(), tonic::Status> {
    raw(cp.trusted().await, path, bytes).await
}

/// The same, to a blob node.
async fn raw_node(
    node: &BlobNode,
    path: &'static str,
    bytes: &'static [u8],
) -> Result<(), tonic::Status> {
    let channel = imagestore_client::connect(&node.url()).await.unwrap();
    raw(channel, path, bytes).await
}

async fn raw<T>(channel: T, path: &'static str, bytes: &'static [u8]) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| {
        tonic::Status::unavailable(Into::<tonic::codegen::StdError>::into(e).to_string())
    })?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    ok(grpc.unary(tonic::Request::new(bytes), path, RawCodec).await)
}

/// Encodes a message's bytes as given; decodes nothing.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = &'static [u8];
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self {
        *self
    }
    fn decoder(&mut self) -> Self {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = &'static [u8];
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: &'static [u8],
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        bytes::Buf::advance(src, bytes::Buf::remaining(src));
        Ok(Some(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let store = dir.path().join("store");
    let node = BlobNode::start(&cp, &dir.path().join("node"), &StoreSpec::local(&store)).await;
    let data = fixture("busybox-unified.tar.gz");
    let mut first = spec();
    first.aliases = vec![pb::AliasSpec {
        name: "bb".into(),
        description: "busybox".into(),
    }];
    let image = send_upload(
        &cp,
        &node.url(),
        upload_messages(FirstMessage::Spec(first), &[&data], 1 << 20),
    )
    .await
    .unwrap()
    .image
    .unwrap();
    let fp = image.fingerprint.clone();

    let images = cp.images().await;
    let aliases = cp.aliases().await;
    let uploads = cp.uploads().await;
    let anonymous = || async { pb::images_client::ImagesClient::new(cp.authed(None).await) };
    let as_node = || async {
        pb::images_client::ImagesClient::new(cp.authed(Some(&cp.cluster_credential())).await)
    };
    let get = |name: String| pb::GetImageRequest {
        name,
        ..Default::default()
    };
    let list = |filter: String, page_size: i32, page_token: &str| pb::ListImagesRequest {
        filter,
        page_size,
        page_token: page_token.into(),
    };
    let alias = |name: &str, description: String| pb::CreateAliasRequest {
        alias_id: name.into(),
        alias: Some(pb::Alias {
            target: format!("images/{fp}"),
            description,
            ..Default::default()
        }),
    };
    let upload = |s: pb::UploadSpec| pb::CreateUploadRequest { spec: Some(s) };
    let with_props = |pairs: &[(&str, &str)]| {
        let mut s = spec();
        s.properties = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s
    };
    let update = |key: &str, mask: &str| pb::UpdateImageRequest {
        image: Some(pb::Image {
            name: format!("images/{fp}"),
            properties: [(key.to_owned(), "v".to_owned())].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![mask.into()],
        }),
    };
    let long_alias_spec = {
        let mut s = spec();
        s.aliases = vec![pb::AliasSpec {
            name: "long".into(),
            description: "d".repeat(500_000),
        }];
        s
    };
    let wrong_fp_spec = {
        let mut s = spec();
        s.expected_fingerprint = "XYZ".into();
        s
    };
    let huge_spec = {
        let mut s = spec();
        s.metadata_size = u64::MAX / 2;
        s
    };
    let forged_download = pb::DownloadRequest {
        fingerprint: fp.clone(),
        part: pb::PartRole::Unified as i32,
        ticket: "v1.99999999999.ZG93bmxvYWQ6.00".into(),
        ..Default::default()
    };

    let table: Vec<(&str, Call<'_>, Code, &str)> = vec![
        (
            "bytes that are no protobuf",
            Box::pin(raw_call(
                &cp,
                "/imagestore.v1.Images/GetImage",
                &[0x10, 0xff],
            )),
            Code::InvalidArgument,
            "not a valid protobuf",
        ),
        (
            "a name that is not UTF-8",
            Box::pin(raw_call(
                &cp,
                "/imagestore.v1.Images/GetImage",
                &[0x0a, 0x02, 0xff, 0xfe],
            )),
            Code::InvalidArgument,
            "not a valid protobuf",
        ),
        (
            "a 2 MiB request (the control plane takes 1 MiB)",
            Box::pin(async {
                ok(images
                    .clone()
                    .get_image(get("images/".to_owned() + &"a".repeat(2 << 20)))
                    .await)
            }),
            Code::ResourceExhausted,
            "larger than this server takes",
        ),
        (
            "a 10 KB name",
            Box::pin(async {
                ok(images
                    .clone()
                    .get_image(get("images/".to_owned() + &"a".repeat(10_000)))
                    .await)
            }),
            Code::InvalidArgument,
            "bytes long",
        ),
        (
            "a name that is no fingerprint",
            Box::pin(async { ok(images.clone().get_image(get("images/XYZ".into())).await) }),
            Code::InvalidArgument,
            "hex",
        ),
        (
            "an alias name with a bidirectional control",
            Box::pin(async {
                ok(aliases
                    .clone()
                    .create_alias(alias("ab\u{202e}cd", String::new()))
                    .await)
            }),
            Code::InvalidArgument,
            "bidirectional",
        ),
        (
            "an alias name with a '..' segment",
            Box::pin(async {
                ok(aliases
                    .clone()
                    .create_alias(alias("a/../b", String::new()))
                    .await)
            }),
            Code::InvalidArgument,
            "\"..\"",
        ),
        (
            "a 5000-byte alias description",
            Box::pin(async {
                ok(aliases
                    .clone()
                    .create_alias(alias("ok", "d".repeat(5000)))
                    .await)
            }),
            Code::InvalidArgument,
            "description",
        ),
        (
            "a 500 KB alias description in an upload",
            Box::pin(async { ok(uploads.clone().create_upload(upload(long_alias_spec)).await) }),
            Code::InvalidArgument,
            "description",
        ),
        (
            "an upload property key with white space",
            Box::pin(async {
                ok(uploads
                    .clone()
                    .create_upload(upload(with_props(&[("a b", "c")])))
                    .await)
            }),
            Code::InvalidArgument,
            "spec.properties",
        ),
        (
            "an upload declared larger than the server stages",
            Box::pin(async { ok(uploads.clone().create_upload(upload(huge_spec)).await) }),
            Code::ResourceExhausted,
            "stages at most",
        ),
        (
            "an expected fingerprint that is no fingerprint",
            Box::pin(async { ok(uploads.clone().create_upload(upload(wrong_fp_spec)).await) }),
            Code::InvalidArgument,
            "expected_fingerprint",
        ),
        (
            "a 5000-byte filter",
            Box::pin(async {
                ok(images
                    .clone()
                    .list_images(list("a".repeat(5000), 0, ""))
                    .await)
            }),
            Code::InvalidArgument,
            "filter is 5000 bytes",
        ),
        (
            "a filter of 40 terms",
            Box::pin(async {
                ok(images
                    .clone()
                    .list_images(list(vec!["a"; 40].join(" "), 0, ""))
                    .await)
            }),
            Code::InvalidArgument,
            "terms",
        ),
        (
            "a forged page token",
            Box::pin(async {
                ok(images
                    .clone()
                    .list_images(list(String::new(), 0, "eyJhIjoiIiwicyI6IiJ9"))
                    .await)
            }),
            Code::InvalidArgument,
            "page_token",
        ),
        (
            "a negative page size",
            Box::pin(async {
                ok(images
                    .clone()
                    .list_images(list(String::new(), -1, ""))
                    .await)
            }),
            Code::InvalidArgument,
            "page_size",
        ),
        (
            "a property key with '=' in an edit",
            Box::pin(async {
                ok(images
                    .clone()
                    .update_image(update("a=b", "properties.a=b"))
                    .await)
            }),
            Code::InvalidArgument,
            "property",
        ),
        (
            "an edit of a field that cannot change",
            Box::pin(async {
                ok(images
                    .clone()
                    .update_image(update("x", "fingerprint"))
                    .await)
            }),
            Code::InvalidArgument,
            "cannot be changed",
        ),
        (
            "the cluster credential on a client read",
            Box::pin(async { ok(as_node().await.get_image(get(format!("images/{fp}"))).await) }),
            Code::PermissionDenied,
            "cluster credential",
        ),
        (
            "a delete without trust",
            Box::pin(async {
                ok(anonymous()
                    .await
                    .delete_image(pb::DeleteImageRequest {
                        name: format!("images/{fp}"),
                    })
                    .await)
            }),
            Code::Unauthenticated,
            "trusted client",
        ),
        (
            "content registered by a client",
            Box::pin(async {
                ok(
                    ipb::registry_client::RegistryClient::new(cp.trusted().await)
                        .register_content(unified("forged"))
                        .await,
                )
            }),
            Code::PermissionDenied,
            "blob nodes",
        ),
        (
            "a download with a forged ticket",
            Box::pin(async {
                let mut stream = node
                    .blobs()
                    .await
                    .download(forged_download)
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
                Ok(())
            }),
            Code::Unauthenticated,
            "ticket",
        ),
        (
            "an upload stream without its first message",
            Box::pin(async {
                ok(node
                    .blobs()
                    .await
                    .upload(tokio_stream::iter(vec![pb::UploadRequest {
                        data: bytes::Bytes::from_static(b"x"),
                        ..Default::default()
                    }]))
                    .await)
            }),
            Code::InvalidArgument,
            "first message",
        ),
        // Uploads are read from their frames by the node's own code.
        (
            "an Upload message that is no UploadRequest (a ticket that is not UTF-8)",
            Box::pin(raw_node(
                &node,
                "/imagestore.v1.Blobs/Upload",
                &[0x1a, 0x02, 0xff, 0xfe],
            )),
            Code::InvalidArgument,
            "not a valid protobuf encoding",
        ),
        (
            "an Upload message holding a group",
            Box::pin(raw_node(&node, "/imagestore.v1.Blobs/Upload", &[0x13])),
            Code::InvalidArgument,
            "groups",
        ),
        (
            "an Upload message whose data runs past its end",
            Box::pin(raw_node(
                &node,
                "/imagestore.v1.Blobs/Upload",
                &[0x2a, 0x10, 1, 2, 3],
            )),
            Code::InvalidArgument,
            "past the end",
        ),
        (
            "a Download request that is no DownloadRequest (a fingerprint that is not UTF-8)",
            Box::pin(raw_node(
                &node,
                "/imagestore.v1.Blobs/Download",
                &[0x0a, 0x02, 0xff, 0xfe],
            )),
            Code::InvalidArgument,
            "not a valid protobuf encoding",
        ),
    ];

    let before = state(&cp, &store).await;
    let mut wrong = Vec::new();
    for (what, call, code, says) in table {
        match call.await {
            Err(s) if s.code() == code && s.message().contains(says) => {}
            other => wrong.push(format!(
                "{what}: expected {code:?} saying {says:?}, got {other:?}"
            )),
        }
        let now = state(&cp, &store).await;
        if now != before {
            wrong.push(format!("{what}: changed the state: {before:?} → {now:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    node.stop().await;
    cp.stop().await;
}
