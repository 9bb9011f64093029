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
        if let Err(e) = node.registry().report_scrub(report).await {
            // The claim lapses and the image is verified again.
            tracing::warn!(error = %e.message(), "could not report a verification");
        }
    }
}

/// Reads every part of the claimed image and says what it found.
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
    let mut pacer = Pacer::new(pace);
    let parts = StoredPart::pair(job.parts, job.objects);
    let mut sound = Vec::new();
    for stored in &parts {
        match verify_part(node, stored, &mut pacer).await {
            Ok(None) => sound.push(stored),
            Ok(Some(damage)) => {
                tracing::error!(
                    fingerprint = %job.fingerprint,
                    expected = %damage.expected_sha256,
                    found = %damage.found_sha256,
                    "stored image is damaged: {}", damage.message
                );
                report.damage = Some(damage);
                return report;
            }
            Err(e) => {
                tracing::warn!(fingerprint = %job.fingerprint, error = %e, "could not verify an image");
                report.error_code = tonic::Code::Unavailable as i32;
                report.error_message = format!(
                    "the blob node could not read image {} from its store: {e}; nothing is known \
                     of its bytes, verify it again",
                    job.fingerprint
                );
                return report;
            }
        }
    }
    for stored in sound.into_iter().filter(|s| s.recorded()) {
        collect_strays(node, stored).await;
    }
    tracing::info!(fingerprint = %job.fingerprint, "image verified: sound");
    report
}

/// Damage found in one part, or None when it is sound; Err when it could not
/// be read (nothing is known then).
async fn verify_part(
    node: &NodeContext,
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
    let objects = stored
        .objects(&node.store)
        .await
        .map_err(|e| e.to_string())?;
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
    match node.store.check_objects(&objects).await {
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
    let mut data = node.store.read_part(objects, 0, 0);
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
async fn collect_strays(node: &NodeContext, stored: &StoredPart) {
    let Ok(objects) = stored.objects(&node.store).await else {
        return;
    };
    let keep: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let prefix = &stored.part.storage_key;
    match node
        .store
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
