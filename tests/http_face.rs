//! The HTTPS face LXD and Incus hosts use, over TLS on the same port as gRPC:
//! simplestreams made from the catalog, files redirected to blob nodes and served
//! there with ranges, ETags and HEAD, tickets and trust, HTTP/1.1 and h2 beside
//! gRPC, and a retry after a dead blob node.

use std::time::Duration;

use ::http::StatusCode;
use imagestore_auth::{Scope, TicketKey};
use imagestore_client::Source;
use imagestore_proto::v1 as pb;
use imagestore_simplestreams::{Client as StreamsClient, Index, Products, candidates};
use imagestore_tests::https::{HttpVersion, TlsCluster, unified_image};
use imagestore_tests::*;

/// The file paths of an image (relative to the server's URL): one for a unified
/// image, metadata then rootfs for a split one, as the simplestreams tree lists them.
fn file_paths(products: &Products, fingerprint: &str) -> Vec<String> {
    for (id, product) in &products.products {
        for c in candidates(id, product, &StreamsClient::ALL) {
            if c.fingerprint == fingerprint {
                return std::iter::once(c.meta.path)
                    .chain(c.root.map(|r| r.path))
                    .collect();
            }
        }
    }
    panic!("{fingerprint} is not in the tree");
}

/// The products document as `client` (anonymous or with a token) sees it.
async fn products(w: &TlsCluster, token: Option<&str>) -> Products {
    let mut req = w
        .https(HttpVersion::Http1)
        .get(format!("{}/streams/v1/images.json", w.cp.url()));
    if let Some(token) = token {
        req = req.basic_auth("anyone", Some(token));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// An error answer: its status and LXD's error document.
async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error_code"], status.as_u16(), "{body}");
    (status, body["error"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_come_from_blob_nodes_with_ranges_etags_and_head() {
    let w = TlsCluster::start(1).await;
    let (unified, _) = w.upload_fixtures().await;
    let bytes = fixture("busybox-unified.tar.gz");
    let size = bytes.len() as u64;
    let fp = &unified.fingerprint;
    let path = format!("files/{fp}/{fp}.tar.gz");
    let http = w.https(HttpVersion::Http1);
    let at_cp = format!("{}/{path}", w.cp.url());

    // The control plane answers with a redirect to the node, never the bytes.
    let resp = http.get(&at_cp).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(resp.headers()["content-length"], "0");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let node = w.nodes[0].url();
    assert!(
        location.starts_with(&format!("{node}/blobs/{fp}/{fp}.tar.gz?ticket=")),
        "{location}"
    );

    let resp = http.get(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let etag = format!("\"{fp}\"");
    assert_eq!(resp.headers()["etag"], etag.as_str());
    assert_eq!(resp.headers()["content-length"], size.to_string().as_str());
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(resp.bytes().await.unwrap(), bytes);

    let resp = http.head(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], size.to_string().as_str());
    assert!(resp.bytes().await.unwrap().is_empty());

    let ranged = |range: String| http.get(&location).header("range", range).send();
    let resp = ranged("bytes=100-199".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 100-199/{size}").as_str()
    );
    assert_eq!(resp.bytes().await.unwrap(), bytes[100..200]);
    let resp = ranged("bytes=-50".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), bytes[bytes.len() - 50..]);
    let resp = ranged(format!("bytes={size}-")).await.unwrap();
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
    let (status, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert!(message.contains(&size.to_string()), "{message}");
    // A range that does not parse is ignored, as RFC 9110 says.
    let resp = ranged("bytes=oops".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len() as u64, size);

    let resp = http
        .get(&location)
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(resp.bytes().await.unwrap().is_empty());

    let (status, message) = error_of(http.delete(&at_cp).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{message}");

    // Followed as LXD's client follows it, GET and HEAD alike.
    let follow = w.following(HttpVersion::Http1);
    let resp = follow.get(&at_cp).send().await.unwrap();
    assert_eq!(sha256_hex(&resp.bytes().await.unwrap()), *fp);
    let resp = follow.head(&at_cp).send().await.unwrap();
    assert_eq!(resp.headers()["content-length"], size.to_string().as_str());

    // What is not there says so, in LXD's error shape.
    for (url, want, says) in [
        (
            format!("{}/files/{fp}/nope.tar.gz", w.cp.url()),
            StatusCode::NOT_FOUND,
            "its files are",
        ),
        (
            format!("{}/files/{}/x.tar.gz", w.cp.url(), "0".repeat(64)),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            format!("{}/files/NOTHEX/x", w.cp.url()),
            StatusCode::BAD_REQUEST,
            "hex",
        ),
        (
            format!("{}/no/such/path", w.cp.url()),
            StatusCode::NOT_FOUND,
            "no such path",
        ),
    ] {
        let (status, message) = error_of(http.get(&url).send().await.unwrap()).await;
        assert_eq!(status, want, "{url}: {message}");
        assert!(message.contains(says), "{url}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_in_urls_are_checked_by_the_nodes() {
    let w = TlsCluster::start(1).await;
    let (unified, split) = w.upload_fixtures().await;
    let fp = &unified.fingerprint;
    let http = w.https(HttpVersion::Http1);
    let resp = http
        .get(format!("{}/files/{fp}/{fp}.tar.gz", w.cp.url()))
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let (base, ticket) = location.split_once("?ticket=").unwrap();

    // One hex digit of the signature changed.
    let mut forged = ticket.to_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let bad = [
        (format!("{base}?ticket={forged}"), "not valid"),
        (base.to_owned(), "no ticket"),
        // A ticket for another image's files.
        (
            format!(
                "{}/blobs/{fp}/{fp}.tar.gz?ticket={}",
                w.nodes[0].url(),
                w.cp.download_ticket(&split.fingerprint).await.unwrap()
            ),
            "not for",
        ),
    ];
    for (url, says) in bad {
        let (status, message) = error_of(http.get(&url).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}");
        assert!(message.contains(says), "{url}: {message}");
    }
    let (status, message) = error_of(
        http.get(format!(
            "{}/files/{fp}/{fp}.tar.gz?ticket={forged}",
            w.cp.url()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");

    // A ticket that lasts a second works, then stops working.
    let key = TicketKey::derive(&w.cp.cluster_credential());
    let (short, _) = key.issue(&Scope::Download(fp.clone()), Duration::from_secs(1));
    let url = format!("{base}?ticket={short}");
    let first = http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    eventually("the ticket to expire", || {
        let request = http.get(&url).send();
        async move {
            let resp = request.await.unwrap();
            resp.status() == StatusCode::FORBIDDEN && resp.text().await.unwrap().contains("expired")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_images_are_seen_with_a_trusted_token_only() {
    let w = TlsCluster::start(1).await;
    let (unified, split) = w.upload_fixtures().await;
    let secret = unified_image("private", &[("os", "Secret"), ("release", "1")]);
    let private = w
        .upload(Source::Unified(w.file("p.tar", &secret)), "hidden", false)
        .await;
    assert!(!private.public);
    let fp = &private.fingerprint;
    let token = w.cp.admin_token();
    let http = w.https(HttpVersion::Http1);

    for doc in ["index.json", "images.json"] {
        let body = http
            .get(format!("{}/streams/v1/{doc}", w.cp.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !body.contains(fp.as_str()) && !body.contains("hidden"),
            "{doc}: {body}"
        );
        assert!(!body.contains("Secret"), "{doc}: {body}");
    }
    let anonymous = products(&w, None).await;
    file_paths(&anonymous, &unified.fingerprint);
    file_paths(&anonymous, &split.fingerprint);
    let trusted = products(&w, Some(&token)).await;
    let paths = file_paths(&trusted, fp);

    // Its file: missing to strangers, a redirect for the token's holder (as basic
    // auth, as LXD sends it, or as a bearer token).
    let url = format!("{}/{}", w.cp.url(), paths[0]);
    let (status, _) = error_of(http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = http
        .get(&url)
        .basic_auth("x", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);

    // A wrong token is refused, not taken for anonymous; the cluster credential
    // is not a client's.
    let resp = http
        .get(format!("{}/streams/v1/index.json", w.cp.url()))
        .basic_auth("x", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"imagestore\""
    );
    let (status, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("not trusted"), "{message}");
    let resp = http
        .get(format!("{}/streams/v1/index.json", w.cp.url()))
        .bearer_auth(w.cp.cluster_credential())
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::FORBIDDEN);

    // LXD's URL import: the private image is missing to strangers; with the
    // token the answer's URL carries a ticket, since LXD fetches it bare.
    let discover = format!("{}/images/hidden", w.cp.url());
    let (status, _) = error_of(http.get(&discover).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = http.head(&discover).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(!resp.headers().contains_key("lxd-image-hash"));
    let resp = http
        .head(&discover)
        .basic_auth("x", Some(&token))
        .send()
        .await
        .unwrap();
    for client in ["lxd", "incus"] {
        assert_eq!(resp.headers()[format!("{client}-image-hash")], fp.as_str());
    }
    let image_url = resp.headers()["lxd-image-url"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["incus-image-url"], image_url.as_str());
    assert!(image_url.contains("?ticket="), "{image_url}");
    let got = w
        .following(HttpVersion::Http1)
        .get(&image_url)
        .send()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&got.bytes().await.unwrap()), *fp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_simplestreams_tree_serves_lxd_and_incus_and_changes_with_the_catalog() {
    let w = TlsCluster::start(1).await;
    let (unified, split) = w.upload_fixtures().await;
    let http = w.https(HttpVersion::Http1);
    let follow = w.following(HttpVersion::Http1);
    let index_url = format!("{}/streams/v1/index.json", w.cp.url());
    let index: Index = http
        .get(&index_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &index.index["images"];
    assert_eq!(entry.datatype, "image-downloads");
    let products: Products = http
        .get(format!("{}/{}", w.cp.url(), entry.path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut listed = entry.products.clone();
    listed.sort();
    assert_eq!(
        listed,
        products.products.keys().cloned().collect::<Vec<_>>()
    );

    // Each client, reading only its own metadata items, finds every image with
    // imagestore's fingerprint, and the files it downloads add up to it.
    for client in StreamsClient::ALL {
        let mut found = Vec::new();
        for (id, product) in &products.products {
            assert_eq!(product.arch, "amd64");
            assert!(product.aliases == "unified" || product.aliases == "split");
            for c in candidates(id, product, &[client]) {
                let mut whole = Vec::new();
                for item in std::iter::once(&c.meta).chain(c.root.as_ref()) {
                    let resp = follow
                        .get(format!("{}/{}", w.cp.url(), item.path))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::OK, "{}", item.path);
                    let bytes = resp.bytes().await.unwrap();
                    assert_eq!(bytes.len() as u64, item.size);
                    assert_eq!(sha256_hex(&bytes), item.sha256);
                    whole.extend_from_slice(&bytes);
                }
                assert_eq!(sha256_hex(&whole), c.fingerprint, "{client:?}");
                found.push(c.fingerprint);
            }
        }
        found.sort();
        let mut want = vec![unified.fingerprint.clone(), split.fingerprint.clone()];
        want.sort();
        assert_eq!(found, want, "{client:?}");
    }

    // Unchanged catalog: the same bytes and ETag, and 304 for a client that has it.
    let get = |url: String| http.get(url).send();
    let first = get(index_url.clone()).await.unwrap();
    let etag = first.headers()["etag"].clone();
    let first = first.bytes().await.unwrap();
    let again = get(index_url.clone()).await.unwrap();
    assert_eq!(again.headers()["etag"], etag);
    assert_eq!(again.bytes().await.unwrap(), first);
    let resp = http
        .get(&index_url)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    // A change to the catalog (a new alias) is seen at once.
    w.cp.aliases()
        .await
        .create_alias(pb::CreateAliasRequest {
            alias_id: String::new(),
            alias: Some(pb::Alias {
                name: "aliases/another".into(),
                target: format!("images/{}", split.fingerprint),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let changed = get(index_url.clone()).await.unwrap();
    assert_ne!(changed.headers()["etag"], etag);
    let products: Products = get(format!("{}/streams/v1/images.json", w.cp.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        products
            .products
            .values()
            .any(|p| p.aliases == "another,split"),
        "{:?}",
        products.products.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_h2_and_grpc_share_one_port() {
    let w = TlsCluster::start(1).await;
    let (unified, _) = w.upload_fixtures().await;
    let url = format!("{}/streams/v1/index.json", w.cp.url());
    let h1 = w.https(HttpVersion::Http1).get(&url).send().await.unwrap();
    assert_eq!(h1.version(), ::http::Version::HTTP_11);
    let h2 = w.https(HttpVersion::Any).get(&url).send().await.unwrap();
    assert_eq!(h2.version(), ::http::Version::HTTP_2, "ALPN offers h2");
    assert_eq!(h1.bytes().await.unwrap(), h2.bytes().await.unwrap());

    // The content-type decides: a gRPC path without it is the HTTP face's, and a
    // gRPC request to any path is gRPC's.
    let http = w.https(HttpVersion::Any);
    let resp = http
        .get(format!("{}/imagestore.v1.Images/GetImage", w.cp.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::NOT_FOUND);
    let resp = http
        .post(format!("{}/streams/v1/index.json", w.cp.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "12", "UNIMPLEMENTED");

    // gRPC itself, on the same port, after HTTP.
    let image =
        w.cp.images()
            .await
            .get_image(pb::GetImageRequest {
                name: "aliases/unified".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(image.fingerprint, unified.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_dead_blob_node_lands_on_another() {
    let mut w = TlsCluster::start(2).await;
    let (unified, _) = w.upload_fixtures().await;
    let fp = &unified.fingerprint;
    let url = format!("{}/files/{fp}/{fp}.tar.gz", w.cp.url());
    let http = w.https(HttpVersion::Http1);
    let location =
        |resp: &reqwest::Response| resp.headers()["location"].to_str().unwrap().to_owned();
    let first = location(&http.get(&url).send().await.unwrap());
    let dead = w
        .nodes
        .iter()
        .position(|n| first.starts_with(&n.url()))
        .expect("redirected to one of the nodes");
    w.nodes.remove(dead).stop().await;
    assert!(http.get(&first).send().await.is_err(), "the node is gone");

    let retry = location(&http.get(&url).send().await.unwrap());
    assert!(retry.starts_with(&w.nodes[0].url()), "{retry}");
    let resp = http.get(&retry).send().await.unwrap();
    assert_eq!(sha256_hex(&resp.bytes().await.unwrap()), *fp);
}
