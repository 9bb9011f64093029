//! Scrubbing: reading stored images again and comparing every part with its
//! recorded size and SHA-256, in the background at `scrub_bytes_per_second`
//! and at once when a verification is asked for (Images.VerifyImage). What is
//! found goes to the control plane, which marks a damaged image so that it is
//! served no more. A sound part's prefix is swept of strays on the way.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use imagestore_store::{BlobStore, Copied};

use crate::hasher::HashPipe;
use crate::{NodeContext, StoredPart};

/// How long one claim waits on the control plane for work.
const CLAIM_WAIT_SECONDS: u32 = 30;

/// Claims and verifies images until aborted: background work when
/// `background` (paced at the node's scrub rate), else verifications asked for.
pub async fn work(node: Arc<NodeContext>, background: bool) {
    let mut failures = 0u32;
    loop {
        let claimed = node
            .registry()
            .claim_scrub(ipb::ClaimScrubRequest {
                node_id: node.id.clone(),
                wait_seconds: CLAIM_WAIT_SECONDS,
                background,
                stores: node.stores.names(),
            })
            .await;
        let job = match claimed {
            Ok(r) => {
                failures = 0;
                r.into_inner()
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e.message(), "cannot ask the control plane for images to verify; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250 << failures.min(4))).await;
                continue;
            }
        };
        if job.fingerprint.is_empty() {
            continue;
        }
        let pace = background.then_some(node.config.scrub_bytes_per_second);
        let report = verify(&node, job, pace).await;
        let found = if report.damage.is_some() {
            "damaged"
        } else if report.error_code != 0 {
            "unreadable"
        } else if !report.repaired.is_empty() {
            "repaired"
        } else {
            "sound"
        };
        imagestore_telemetry::metrics::Metrics::count(
            &imagestore_telemetry::metrics::metrics().scrubs,
            found,
        );
        if let Err(e) = node.registry().report_scrub(report).await {
            // The claim lapses and the image is verified again.
            tracing::warn!(error = %e.message(), "could not report a verification");
        }
    }
}

/// Reads every part of the claimed image in every store holding it that this
/// node reaches, and says what it found. A damaged copy is rewritten from a
/// sound one in another store (and verified as it is written): the image is
/// then sound again, and the report names the stores repaired.
async fn verify(
    node: &NodeContext,
    job: ipb::ClaimScrubResponse,
    pace: Option<u64>,
) -> ipb::ReportScrubRequest {
    let mut report = ipb::ReportScrubRequest {
        node_id: node.id.clone(),
        fingerprint: job.fingerprint.clone(),
        operation: job.operation.clone(),
        ..Default::default()
    };
    let fp = job.fingerprint.clone();
    let mut pacer = Pacer::new(pace);
    let parts = StoredPart::pair(job.parts, job.objects);
    let held = if job.stores.is_empty() {
        vec![node.stores.default_name()]
    } else {
        job.stores
    };
    let mut sound: Vec<(String, BlobStore)> = Vec::new();
    let mut damaged: Vec<(String, BlobStore, pb::ImageDamage)> = Vec::new();
    for name in &held {
        let Ok(store) = node.stores.get(name) else {
            continue;
        };
        match verify_copy(store, &parts, &mut pacer).await {
            Ok(None) => sound.push((name.clone(), store.clone())),
            Ok(Some(damage)) => {
                tracing::error!(
                    fingerprint = %fp, store = %name,
                    expected = %damage.expected_sha256,
                    found = %damage.found_sha256,
                    "stored image is damaged: {}", damage.message
                );
                damaged.push((name.clone(), store.clone(), damage));
            }
            Err(e) => {
                tracing::warn!(fingerprint = %fp, store = %name, error = %e, "could not verify an image");
                report.error_code = tonic::Code::Unavailable as i32;
                report.error_message = format!(
                    "the blob node could not read image {fp} from store {name}: {e}; nothing \
                     is known of its bytes, verify it again"
                );
                return report;
            }
        }
    }
    let Some((good_name, good)) = sound.first().cloned() else {
        if let Some((_, _, damage)) = damaged.into_iter().next() {
            report.damage = Some(damage);
        }
        return report;
    };
    for (name, store, damage) in damaged {
        match repair(&good, &store, &parts).await {
            Ok(()) => {
                tracing::warn!(fingerprint = %fp, store = %name, from = %good_name, "damaged copy rewritten from a sound one");
                report.repaired.push(name.clone());
                sound.push((name, store));
            }
            Err(e) => {
                tracing::error!(fingerprint = %fp, store = %name, error = %e, "could not repair a damaged copy");
                report.damage = Some(pb::ImageDamage {
                    message: format!(
                        "{} (in store {name}; repairing it from store {good_name} failed: {e})",
                        damage.message
                    ),
                    ..damage
                });
                return report;
            }
        }
    }
    for (_, store) in &sound {
        for stored in parts.iter().filter(|s| s.recorded()) {
            collect_strays(node, store, stored).await;
        }
    }
    tracing::info!(fingerprint = %fp, "image verified: sound");
    report
}

/// What one store's copy holds: None when every part is sound.
async fn verify_copy(
    store: &BlobStore,
    parts: &[StoredPart],
    pacer: &mut Pacer,
) -> Result<Option<pb::ImageDamage>, String> {
    for stored in parts {
        if let Some(damage) = verify_part(store, stored, pacer).await? {
            return Ok(Some(damage));
        }
    }
    Ok(None)
}

/// Rewrites every part of a damaged copy from a sound one, hashing as it goes.
async fn repair(from: &BlobStore, to: &BlobStore, parts: &[StoredPart]) -> Result<(), String> {
    for stored in parts {
        let objects = stored.objects(from).await.map_err(|e| e.to_string())?;
        let part = &stored.part;
        match from
            .copy_part_to(to, &objects, &part.sha256, part.size, &|_| {})
            .await
            .map_err(|e| e.to_string())?
        {
            Copied::Verified => {}
            Copied::Mismatch { found_sha256, .. } => {
                return Err(format!("the sound copy now hashes to {found_sha256}"));
            }
        }
    }
    Ok(())
}

/// Damage found in one part, or None when it is sound; Err when it could not
/// be read (nothing is known then).
async fn verify_part(
    store: &BlobStore,
    stored: &StoredPart,
    pacer: &mut Pacer,
) -> Result<Option<pb::ImageDamage>, String> {
    let part = &stored.part;
    let role = pb::PartRole::try_from(part.role).unwrap_or(pb::PartRole::Unspecified);
    let what = crate::export_role(part.role);
    let damage = |found_sha256: String, found_size: u64, message: String| pb::ImageDamage {
        part: role as i32,
        expected_sha256: part.sha256.clone(),
        expected_size: part.size,
        found_sha256,
        found_size,
        detect_time: None,
        message,
    };
    let objects = stored.objects(store).await.map_err(|e| e.to_string())?;
    let listed: u64 = objects.iter().map(|o| o.size).sum();
    if listed != part.size {
        return Ok(Some(damage(
            String::new(),
            listed,
            format!(
                "the {what:?} part's objects hold {listed} bytes; {} were registered",
                part.size
            ),
        )));
    }
    match store.check_objects(&objects).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return Ok(Some(damage(
                String::new(),
                0,
                format!("the {what:?} part cannot be read whole: {why}"),
            )));
        }
        Err(e) => return Err(e.to_string()),
    }
    let hash = HashPipe::start(Sha256::new()).map_err(|e| e.to_string())?;
    let mut size = 0u64;
    let mut data = store.read_part(objects, 0, 0);
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let chunk_len = chunk.len() as u64;
        size += chunk_len;
        hash.update(chunk).await.map_err(|e| e.to_string())?;
        pacer.read(chunk_len).await;
    }
    let found = hex::encode(hash.state().await.map_err(|e| e.to_string())?.finalize());
    if found == part.sha256 && size == part.size {
        return Ok(None);
    }
    Ok(Some(damage(
        found.clone(),
        size,
        format!(
            "the {what:?} part hashes to {found} ({size} bytes), but {} ({} bytes) was registered",
            part.sha256, part.size
        ),
    )))
}

/// Deletes what lies under a sound part's prefix but is none of its objects,
/// once older than `stray_grace` (a late write by a node that was superseded).
async fn collect_strays(node: &NodeContext, store: &BlobStore, stored: &StoredPart) {
    let Ok(objects) = stored.objects(store).await else {
        return;
    };
    let keep: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let prefix = &stored.part.storage_key;
    match store
        .collect_strays(prefix, &keep, node.config.stray_grace)
        .await
    {
        Ok(0) => {}
        Ok(freed) => tracing::info!(prefix, freed, "strays collected"),
        Err(e) => tracing::warn!(prefix, error = %e, "could not collect strays"),
    }
}

/// Keeps a background read at its rate: after each chunk it waits until the
/// time the bytes read so far take at that rate.
struct Pacer {
    started: Instant,
    bytes_per_second: Option<u64>,
    done: u64,
}

impl Pacer {
    fn new(bytes_per_second: Option<u64>) -> Self {
        Self {
            started: Instant::now(),
            bytes_per_second: bytes_per_second.filter(|r| *r > 0),
            done: 0,
        }
    }

    async fn read(&mut self, n: u64) {
        self.done += n;
        if let Some(rate) = self.bytes_per_second {
            let due = self.started + Duration::from_secs_f64(self.done as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
}
