//! The control plane under load: GetImage by fingerprint and by alias with 64
//! concurrent clients, ListImages over 10 000 images with a filter, content
//! registration, and start-up time.

use std::time::{Duration, Instant};

use imagestore_client::{Bearer, connect};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use sha2::Digest;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::procs::{Server, System};
use crate::{BenchResult, Report, median, round2};

const CLIENTS: usize = 64;
const CONNECTIONS: usize = 8;
/// Each load phase runs this long, or to this many requests, whichever is first.
const PHASE: Duration = Duration::from_secs(3);
const PHASE_MAX: usize = 500_000;
const ALIASES: usize = 64;

fn fingerprint(i: usize) -> String {
    hex::encode(sha2::Sha256::digest(format!("bench-image-{i}").as_bytes()))
}

fn content(i: usize) -> ipb::RegisterContentRequest {
    let fp = fingerprint(i);
    let size = 1000 + i as u64;
    let prefix = imagestore_store::layout::part_prefix(&fp[..32], "unified");
    let object = imagestore_store::segment_key(&prefix, 0, "bench");
    ipb::RegisterContentRequest {
        fingerprint: fp.clone(),
        r#type: pb::ImageType::Container as i32,
        architecture: "x86_64".into(),
        filename: format!("image-{i}.tar.gz"),
        layout: pb::ImageLayout::Unified as i32,
        parts: vec![pb::ImagePart {
            role: pb::PartRole::Unified as i32,
            sha256: fp.clone(),
            size,
            storage_key: prefix,
            extension: ".tar.gz".into(),
        }],
        objects: vec![ipb::PartObjects {
            objects: vec![ipb::StoredObject {
                offset: 0,
                size,
                key: object,
            }],
        }],
        properties: [
            (
                "os".to_owned(),
                if i.is_multiple_of(2) {
                    "debian"
                } else {
                    "ubuntu"
                }
                .to_owned(),
            ),
            ("release".to_owned(), format!("{}", i % 10)),
        ]
        .into(),
        ..Default::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// One connection presenting a token (the bench measures one replica).
type Authed = InterceptedService<Channel, Bearer>;

/// `channel` presenting `token`.
fn authed(channel: &Channel, token: &str) -> BenchResult<Authed> {
    Ok(InterceptedService::new(
        channel.clone(),
        Bearer::new(Some(token))?,
    ))
}

/// The control plane measured, as its clients reach it.
pub struct Target<'a> {
    pub url: &'a str,
    pub admin_token: &'a str,
    pub cluster_credential: &'a str,
}

impl<'a> From<&'a System> for Target<'a> {
    fn from(s: &'a System) -> Self {
        Self {
            url: &s.control.url,
            admin_token: &s.admin_token,
            cluster_credential: &s.cluster_credential,
        }
    }
}

pub async fn measure(report: &Report, system: &Target<'_>, images: usize) -> BenchResult {
    let channel = connect(system.url).await?;
    let node = authed(&channel, system.cluster_credential)?;
    register(report, &node, images.max(ALIASES)).await?;
    let trusted = authed(&channel, system.admin_token)?;
    let mut aliases = pb::aliases_client::AliasesClient::new(trusted.clone());
    for i in 0..ALIASES {
        aliases
            .create_alias(pb::CreateAliasRequest {
                alias_id: format!("bench/{i}"),
                alias: Some(pb::Alias {
                    target: fingerprint(i),
                    ..Default::default()
                }),
            })
            .await?;
    }
    let one = vec![trusted.clone()];
    let (rps1, _, _) = get_load(&one, images).await?;
    report.put("get_image_rps_1conn", round2(rps1), "req/s");
    let mut many = Vec::new();
    for _ in 0..CONNECTIONS {
        many.push(authed(&connect(system.url).await?, system.admin_token)?);
    }
    let (rps, p50, p99) = get_load(&many, images).await?;
    report.put("get_image_rps", round2(rps), "req/s");
    report.put("get_image_p50_ms", round2(p50), "ms");
    report.put("get_image_p99_ms", round2(p99), "ms");
    list(report, &trusted).await?;
    streams(report, system, images.max(ALIASES)).await
}

/// The simplestreams products document over every image: the first request
/// (made from the catalog) and then from the cache, as a trusted caller sees it.
async fn streams(report: &Report, system: &Target<'_>, images: usize) -> BenchResult {
    let http = reqwest::Client::builder().http1_only().build()?;
    let url = format!("{}/streams/v1/images.json", system.url);
    let get = || async {
        let started = Instant::now();
        let body = http
            .get(&url)
            .bearer_auth(system.admin_token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok::<_, reqwest::Error>((started.elapsed().as_secs_f64() * 1e3, body))
    };
    let (cold, body) = get().await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)?;
    let versions: usize = doc["products"]
        .as_object()
        .map(|p| {
            p.values()
                .filter_map(|p| p["versions"].as_object())
                .map(|v| v.len())
                .sum()
        })
        .unwrap_or(0);
    if versions != images {
        return Err(format!("the products document lists {versions} of {images} images").into());
    }
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(get().await?.0);
    }
    report.put("streams_images", images, "images");
    report.put("streams_index_cold_ms", round2(cold), "ms");
    report.put("streams_index_ms", round2(median(warm)), "ms");
    report.put("streams_index_bytes", body.len(), "bytes");
    Ok(())
}

/// Registers `count` images, eight at a time; reports the median call.
async fn register(report: &Report, channel: &Authed, count: usize) -> BenchResult {
    let mut times = Vec::with_capacity(count);
    let mut next = 0usize;
    while next < count {
        let batch: Vec<_> = (next..count.min(next + 8))
            .map(|i| {
                let mut registry = ipb::registry_client::RegistryClient::new(channel.clone());
                async move {
                    let started = Instant::now();
                    registry.register_content(content(i)).await?;
                    Ok::<_, tonic::Status>(started.elapsed().as_secs_f64() * 1e3)
                }
            })
            .collect();
        next += batch.len();
        for t in futures::future::join_all(batch).await {
            times.push(t?);
        }
    }
    report.put("register_ms", round2(median(times)), "ms");
    Ok(())
}

/// GetImage from CLIENTS tasks over the given connections, half by fingerprint
/// and half by alias: (requests/s, p50 ms, p99 ms).
async fn get_load(channels: &[Authed], images: usize) -> BenchResult<(f64, f64, f64)> {
    let started = Instant::now();
    let deadline = started + PHASE;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let mut client =
                pb::images_client::ImagesClient::new(channels[t % channels.len()].clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = t;
                while Instant::now() < deadline && lat.len() < PHASE_MAX / CLIENTS {
                    let name = if i.is_multiple_of(2) {
                        format!("images/{}", fingerprint(i % images))
                    } else {
                        format!("aliases/bench/{}", i % ALIASES)
                    };
                    let t0 = Instant::now();
                    client
                        .get_image(pb::GetImageRequest {
                            name,
                            ..Default::default()
                        })
                        .await?;
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    i += CLIENTS;
                }
                Ok::<_, tonic::Status>(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((
        all.len() as f64 / secs,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    ))
}

/// ListImages with a filter that matches half of the images, first pages.
async fn list(report: &Report, channel: &Authed) -> BenchResult {
    let mut images = pb::images_client::ImagesClient::new(channel.clone())
        .max_decoding_message_size(imagestore_client::MAX_MESSAGE);
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        let page = images
            .list_images(pb::ListImagesRequest {
                page_size: 100,
                filter: "os=debian architecture=x86_64".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        if page.images.is_empty() {
            return Err("the filtered list came back empty".into());
        }
    }
    lat.sort_by(f64::total_cmp);
    report.put("list_p99_ms", round2(percentile(&lat, 0.99)), "ms");
    Ok(())
}

/// From process start to the first SERVING health reply, median of `runs`.
pub async fn startup(report: &Report, dir: &std::path::Path, runs: usize) -> BenchResult {
    let mut times = Vec::new();
    for r in 0..runs {
        let data = dir.join(format!("startup-{r}"));
        let server = Server::spawn(
            "imagestore-control",
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data.to_string_lossy(),
            ],
            None,
        )
        .await?;
        let channel = connect(&server.url).await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Ok(r) = reply
                && r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("the control plane never reported SERVING".into());
            }
            tokio::task::yield_now().await;
        }
        times.push(server.spawned.elapsed().as_secs_f64() * 1e3);
        server.stop().await;
    }
    report.put("startup_ms", round2(median(times)), "ms");
    Ok(())
}
