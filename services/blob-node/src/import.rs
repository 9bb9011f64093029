//! Server-side imports on this node (Glance's web-download, LXD's pull): claim a
//! queued import from the control plane, resolve its source, stream each part
//! through the same verified writer as uploads, and register. Progress goes to
//! the control plane every report interval; its answer tells the node when the
//! operation was cancelled, and the node then deletes what it stored and stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use imagestore_fetch::{FetchError, Fetcher, ImportFiltering, Limits, Plan, Role, ServerInfo};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use tokio::sync::watch;
use tracing::Instrument;

use crate::NodeContext;
use crate::error::BlobError;
use crate::ingest::{Ingest, Registration};

/// Imports one node runs at a time.
const CONCURRENT_IMPORTS: usize = 4;

/// How long one ClaimImport call waits for work.
const CLAIM_WAIT_SECONDS: u32 = 30;

/// Claims and runs imports until the future is dropped (which stops the
/// imports under way too).
pub async fn work(node: Arc<NodeContext>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_IMPORTS));
    let mut running = tokio::task::JoinSet::new();
    let mut failures = 0u32;
    loop {
        while running.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let claimed = node
            .registry()
            .claim_import(ipb::ClaimImportRequest {
                node_id: node.id.clone(),
                wait_seconds: CLAIM_WAIT_SECONDS,
                stores: node.stores.names(),
            })
            .await;
        match claimed {
            Ok(r) => {
                failures = 0;
                let r = r.into_inner();
                if r.operation.is_empty() {
                    continue;
                }
                let node = node.clone();
                // The import is part of the trace of the call that queued it.
                let span = tracing::info_span!(
                    "import",
                    otel.name = "imagestore.import",
                    operation = %r.operation,
                );
                imagestore_telemetry::propagation::set_parent(&span, |key| {
                    (key == "traceparent" && !r.trace_parent.is_empty())
                        .then_some(r.trace_parent.as_str())
                });
                running.spawn(
                    async move {
                        run(node, r).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                // The control plane is away or does not know this node yet.
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e.message(), "cannot ask the control plane for imports; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250 << failures.min(4))).await;
            }
        }
    }
}

/// What the reporter tells the control plane.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    stage: std::sync::Mutex<&'static str>,
}

impl Progress {
    fn stage(&self, s: &'static str) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// How an import ended on this node.
enum Ended {
    /// Registered; the registration completed the operation.
    Registered,
    /// The image is here already; the control plane completes the operation.
    Existing {
        fingerprint: String,
        aliases: Vec<pb::AliasSpec>,
        refreshed: bool,
    },
    /// The operation was cancelled (or ended elsewhere); what was stored is gone.
    Stopped,
}

/// Why an import failed, as the operation reports it.
struct Failed {
    code: tonic::Code,
    message: String,
}

impl From<FetchError> for Failed {
    fn from(e: FetchError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<BlobError> for Failed {
    fn from(e: BlobError) -> Self {
        let status = tonic::Status::from(e);
        Self {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

async fn run(node: Arc<NodeContext>, claim: ipb::ClaimImportResponse) {
    let operation = claim.operation.clone();
    let policy = claim.policy.clone().unwrap_or_default();
    let interval = Duration::from_millis(policy.report_interval_ms.max(50));
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop) = watch::channel(false);
    let reporter = tokio::spawn(
        report(
            node.clone(),
            operation.clone(),
            progress.clone(),
            stop_tx,
            interval,
        )
        .in_current_span(),
    );
    tracing::info!(operation, "import started");
    let metrics = imagestore_telemetry::metrics::metrics();
    metrics.imports_active.inc();
    let ended = import(&node, &claim, &progress, stop).await;
    metrics.imports_active.dec();
    reporter.abort();
    let mut report = ipb::ReportImportRequest {
        operation: operation.clone(),
        node_id: node.id.clone(),
        bytes_done: progress.done.load(Ordering::Relaxed),
        bytes_total: progress.total.load(Ordering::Relaxed),
        ..Default::default()
    };
    match ended {
        Ok(Ended::Registered) => {
            tracing::info!(operation, "import registered");
            return;
        }
        Ok(Ended::Stopped) => {
            tracing::info!(operation, "import stopped: the operation was cancelled");
            return;
        }
        Ok(Ended::Existing {
            fingerprint,
            aliases,
            refreshed,
        }) => {
            tracing::info!(
                operation,
                fingerprint,
                "import found the image here already"
            );
            report.stage = "done".into();
            report.image = fingerprint;
            report.aliases = aliases;
            report
                .metadata
                .insert("refreshed".into(), refreshed.to_string());
        }
        Err(f) => {
            tracing::warn!(operation, error = %f.message, "import failed");
            report.error_code = f.code as i32;
            report.error_message = f.message;
        }
    }
    if let Err(e) = node.registry().report_import(report).await {
        // The control plane fails the operation once this node stays quiet.
        tracing::warn!(operation, error = %e.message(), "could not report the end of an import");
    }
}

/// Reports progress every `interval` until aborted; raises `stop` when the
/// control plane says the operation is over.
async fn report(
    node: Arc<NodeContext>,
    operation: String,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (tokio::time::Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let done = progress.done.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            (done.saturating_sub(last.1) as f64 / secs) as u64
        } else {
            0
        };
        last = (now, done);
        let stage = *progress.stage.lock().unwrap_or_else(|e| e.into_inner());
        let answer = node
            .registry()
            .report_import(ipb::ReportImportRequest {
                operation: operation.clone(),
                node_id: node.id.clone(),
                stage: stage.into(),
                bytes_done: done,
                bytes_total: progress.total.load(Ordering::Relaxed),
                bytes_per_second: rate,
                ..Default::default()
            })
            .await;
        match answer {
            Ok(a) if a.get_ref().stop => {
                let _ = stop.send(true);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(operation, error = %e.message(), "progress report failed"),
        }
    }
}

fn aliases_for(request: &pb::ImportImageRequest, plan: &Plan) -> Vec<pb::AliasSpec> {
    use pb::import_image_request::Source;
    let copy = match &request.source {
        Some(Source::Remote(r)) => r.copy_aliases,
        Some(Source::Simplestreams(s)) => s.copy_aliases,
        Some(Source::Lxd(s)) => s.copy_aliases,
        _ => false,
    };
    let mut aliases = request.aliases.clone();
    if copy {
        for a in &plan.source_aliases {
            if !aliases.iter().any(|b| b.name == a.name) {
                aliases.push(a.clone());
            }
        }
    }
    aliases
}

async fn import(
    node: &Arc<NodeContext>,
    claim: &ipb::ClaimImportResponse,
    progress: &Progress,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, Failed> {
    let policy = claim.policy.clone().unwrap_or_default();
    let request = claim.request.clone().unwrap_or_default();
    if let Some(pb::import_image_request::Source::Copy(c)) = &request.source {
        return copy_to_stores(node, claim, &c.fingerprint, &request, progress, stop).await;
    }
    let fetcher = Fetcher::new(
        ImportFiltering::from_policy(&policy),
        Limits {
            max_bytes: policy.max_bytes,
            connect_timeout: Duration::from_millis(policy.connect_timeout_ms.max(100)),
            idle_timeout: Duration::from_millis(policy.idle_timeout_ms.max(100)),
        },
    )?;
    progress.stage("resolve");
    let server = ServerInfo {
        architectures: claim.architectures.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let plan = tokio::select! {
        plan = imagestore_fetch::resolve(&fetcher, &request, &server) => plan?,
        _ = stopped(&mut stop) => return Ok(Ended::Stopped),
    };
    let aliases = aliases_for(&request, &plan);
    if let Some(total) = plan.total_size() {
        if total > policy.max_bytes {
            return Err(FetchError::TooLarge(format!(
                "the image is {total} bytes; this server's import limit is {} bytes",
                policy.max_bytes
            ))
            .into());
        }
        progress.total.store(total, Ordering::Relaxed);
    }
    match node.lookup(&plan.fingerprint).await {
        Ok(_) => {
            return Ok(Ended::Existing {
                refreshed: false,
                fingerprint: plan.fingerprint,
                aliases: if claim.replaces.is_empty() {
                    aliases
                } else {
                    Vec::new()
                },
            });
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(BlobError::from(s).into()),
    }

    let mut properties = plan.properties.clone();
    properties.extend(request.properties.clone());
    let size = |i: usize| plan.parts.get(i).and_then(|p| p.size).unwrap_or(0);
    let spec = pb::UploadSpec {
        layout: if plan.split {
            pb::ImageLayout::Split
        } else {
            pb::ImageLayout::Unified
        } as i32,
        expected_fingerprint: plan.fingerprint.clone(),
        metadata_size: size(0),
        rootfs_size: if plan.split { size(1) } else { 0 },
        filename: plan.filename.clone(),
        public: request.public,
        aliases,
        properties: properties.into_iter().collect(),
        target: request.target.clone(),
    };
    let op_id = claim
        .operation
        .strip_prefix("operations/")
        .unwrap_or(&claim.operation);
    let registration = Registration {
        operation: claim.operation.clone(),
        replaces: claim.replaces.clone(),
        auto_update: request.auto_update && plan.update_source.is_some(),
        update_source: plan.update_source.clone(),
        cached: request.cached,
        image_type: plan.image_type,
        plugins_for: Some(claim.importer_roles.clone()),
    };
    let mut ingest = Ingest::for_import(node.clone(), op_id, spec, registration)?;
    let _active = crate::transfer(node);
    progress.stage("download");
    for i in 0..plan.parts.len() {
        match fetch_part(&fetcher, &plan, i, &mut ingest, progress, &mut stop).await {
            Ok(true) => {}
            Ok(false) => return Ok(Ended::Stopped),
            Err(f) => {
                ingest
                    .fail(&BlobError::FailedPrecondition(f.message.clone()))
                    .await;
                return Err(f);
            }
        }
    }
    progress.stage("register");
    match ingest.finish().await {
        Ok(_) => Ok(Ended::Registered),
        // Registered meanwhile by someone else: the registration still completed
        // the operation with the record that exists.
        Err(BlobError::AlreadyExists(_)) => Ok(Ended::Registered),
        Err(BlobError::ControlPlane(s)) if s.code() == tonic::Code::FailedPrecondition => {
            Ok(Ended::Stopped)
        }
        Err(e) => Err(e.into()),
    }
}

/// Glance's copy-image: verified copies of an image held here in more stores,
/// recorded (AddLocations) only once every part of a store's copy matched.
async fn copy_to_stores(
    node: &Arc<NodeContext>,
    claim: &ipb::ClaimImportResponse,
    fingerprint: &str,
    request: &pb::ImportImageRequest,
    progress: &Progress,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, Failed> {
    let target = request.target.clone().unwrap_or_default();
    let must_succeed = target.all_stores_must_succeed.unwrap_or(true);
    let content = node.lookup(fingerprint).await.map_err(BlobError::from)?;
    let (from, parts) = content.servable(node)?;
    let mut lists = Vec::new();
    for p in &parts {
        lists.push(p.objects(&from).await.map_err(BlobError::from)?);
    }
    let pbparts: Vec<pb::ImagePart> = parts.iter().map(|p| p.part.clone()).collect();
    let copies = crate::replicate::parts_of(&pbparts, lists);
    let size: u64 = pbparts.iter().map(|p| p.size).sum();
    progress
        .total
        .store(size * target.stores.len() as u64, Ordering::Relaxed);
    progress.stage("copy");
    let _active = crate::transfer(node);
    let moved = |n: u64| {
        progress.done.fetch_add(n, Ordering::Relaxed);
    };
    let done = tokio::select! {
        done = crate::replicate::replicate(node, &from, &copies, &target.stores, &moved) => done?,
        _ = stopped(&mut stop) => {
            crate::replicate::remove(node, &copies, &target.stores).await;
            return Ok(Ended::Stopped);
        }
    };
    if done.stored.is_empty() || (must_succeed && !done.failed.is_empty()) {
        crate::replicate::remove(node, &copies, &done.stored).await;
        return Err(Failed {
            code: tonic::Code::Unavailable,
            message: format!(
                "copying image {fingerprint} failed ({}); nothing was kept",
                done.failed
                    .iter()
                    .map(|f| format!("{}: {}", f.store, f.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    progress.stage("register");
    let added = node
        .registry()
        .add_locations(ipb::AddLocationsRequest {
            fingerprint: fingerprint.to_owned(),
            stores: done.stored.clone(),
            failed_stores: done.failed,
            operation: claim.operation.clone(),
        })
        .await;
    match added {
        Ok(_) => Ok(Ended::Registered),
        Err(s) => {
            // Cancelled, or the image went meanwhile: the copies must not stay.
            crate::replicate::remove(node, &copies, &done.stored).await;
            if s.code() == tonic::Code::FailedPrecondition {
                Ok(Ended::Stopped)
            } else {
                Err(BlobError::from(s).into())
            }
        }
    }
}

/// Streams part `i` into `ingest` and checks its own SHA-256. False when stopped.
async fn fetch_part(
    fetcher: &Fetcher,
    plan: &Plan,
    i: usize,
    ingest: &mut Ingest,
    progress: &Progress,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, Failed> {
    let part = &plan.parts[i];
    let opened = tokio::select! {
        s = plan.open(fetcher, i) => s?,
        _ = stopped(stop) => {
            ingest.discard().await;
            return Ok(false);
        }
    };
    // Without a total from the plan, the parts' sizes add up as they open.
    if plan.total_size().is_none()
        && let Some(length) = opened.length
    {
        progress.total.fetch_add(length, Ordering::Relaxed);
    }
    let mut stream = opened.stream;
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = stopped(stop) => {
                // Deleted before the source connection closes, so that whoever
                // sees it close knows nothing is left.
                ingest.discard().await;
                drop(stream);
                return Ok(false);
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk?;
        progress
            .done
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        ingest.write(chunk).await?;
    }
    let got = if part.role == Role::Metadata {
        ingest.end_metadata().await?;
        ingest.metadata_sha256().unwrap_or_default().to_owned()
    } else {
        ingest.part_sha256().await?
    };
    if let Some(want) = &part.sha256
        && *want != got
    {
        let what = match part.role {
            Role::Metadata => "metadata",
            Role::Rootfs => "rootfs",
            Role::Unified => "image",
        };
        return Err(FetchError::Mismatch(format!(
            "Hash mismatch for the {what} file: expected {want}, received {got}"
        ))
        .into());
    }
    Ok(true)
}

/// Resolves once the operation is to stop (never, if the reporter is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
