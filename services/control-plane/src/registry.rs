//! imagestore.internal.v1.Registry: blob nodes register, heartbeat and register
//! verified content here.

use imagestore_catalog::{self as cat, Catalog, ImageRef, NewImage, NodeAnnouncement};
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_server::shutdown::Stopping;
use ipb::registry_server::Registry;
use tonic::codegen::http::Uri;
use tonic::{Request, Response};

use std::sync::Arc;

use prost::Message;

use crate::convert;
use crate::error::{ApiError, ApiResult, Reply, invalid};
use crate::imports::ImportRules;
use crate::names;
use crate::nodes::NodePicker;
use crate::stores::Stores;
use crate::uploads::{UploadLimits, spec_to_pb};

pub struct RegistryService {
    catalog: Catalog,
    nodes: NodePicker,
    limits: UploadLimits,
    imports: Arc<ImportRules>,
    stopping: Stopping,
    /// How often background scrubbing reads each image again; zero: never.
    scrub_every: std::time::Duration,
}

/// How long a node has to verify one image before another may take it over.
const SCRUB_CLAIM: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The objects of each part, as the wire has them.
fn objects_pb(lists: Vec<Vec<cat::StoredObject>>) -> Vec<ipb::PartObjects> {
    lists
        .into_iter()
        .map(|list| ipb::PartObjects {
            objects: list
                .into_iter()
                .map(|o| ipb::StoredObject {
                    offset: o.offset,
                    size: o.size,
                    key: o.key,
                })
                .collect(),
        })
        .collect()
}

impl RegistryService {
    pub fn new(
        catalog: Catalog,
        nodes: NodePicker,
        limits: UploadLimits,
        imports: Arc<ImportRules>,
        stopping: Stopping,
        scrub_every: std::time::Duration,
    ) -> Self {
        Self {
            catalog,
            nodes,
            limits,
            imports,
            stopping,
            scrub_every,
        }
    }

    fn policy(&self) -> ipb::ImportPolicy {
        let s = &self.imports.settings;
        let ms = |d: std::time::Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        ipb::ImportPolicy {
            max_bytes: s.max_bytes,
            connect_timeout_ms: ms(s.connect_timeout),
            idle_timeout_ms: ms(s.idle_timeout),
            report_interval_ms: ms(s.report_interval),
            ..self.imports.filtering.to_policy()
        }
    }

    fn node(&self, n: cat::Node) -> ipb::Node {
        ipb::Node {
            name: format!("nodes/{}", n.node_id),
            healthy: self.nodes.is_healthy(&n),
            node_id: n.node_id,
            address: n.address,
            capacity_bytes: n.capacity_bytes,
            available_bytes: n.available_bytes,
            active_transfers: n.active_transfers,
            version: n.version,
            register_time: Some(convert::timestamp(n.registered_at)),
            last_heartbeat_time: Some(convert::timestamp(n.last_heartbeat_at)),
            stores: n.stores,
        }
    }

    /// The stores a node says it reaches; a node that names none (older
    /// than named stores) reaches the default one.
    fn reach(&self, declared: Vec<String>) -> ApiResult<Vec<String>> {
        if declared.is_empty() {
            return Ok(vec![self.imports.stores.default_store().to_owned()]);
        }
        if declared.len() > 64 {
            return Err(invalid("at most 64 stores per node"));
        }
        self.imports.stores.check_node(&declared)?;
        Ok(declared)
    }

    /// Sets the blob_nodes metric: how many nodes are healthy now, and not.
    async fn count_nodes(&self) {
        let Ok(nodes) = self.catalog.list_nodes().await else {
            return;
        };
        let healthy = nodes.iter().filter(|n| self.nodes.is_healthy(n)).count() as i64;
        let gauge = |kind: &str| {
            imagestore_telemetry::metrics::metrics()
                .nodes
                .get_or_create(&imagestore_telemetry::metrics::KindLabel { kind: kind.into() })
                .clone()
        };
        gauge("healthy").set(healthy);
        gauge("unhealthy").set(nodes.len() as i64 - healthy);
    }

    fn interval_seconds(&self) -> u32 {
        self.nodes.heartbeat_interval().as_secs().max(1) as u32
    }
}

fn validate_node_id(id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "node_id {:?} is not valid: 1 to 128 letters, digits, '.', '_' or '-'",
            id.chars().take(140).collect::<String>()
        )))
    }
}

fn validate_address(address: &str) -> ApiResult<()> {
    let bad = || {
        invalid(format!(
            "address {:?} is not a URL clients can reach: expected http(s)://HOST:PORT",
            address.chars().take(200).collect::<String>()
        ))
    };
    let uri: Uri = address.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad());
    }
    Ok(())
}

/// An optional full fingerprint field: None when empty.
fn optional_fingerprint(field: &str, s: &str) -> ApiResult<Option<String>> {
    if s.is_empty() {
        return Ok(None);
    }
    imagestore_image::Fingerprint::parse(s)
        .map(|fp| Some(fp.to_string()))
        .map_err(|e| invalid(format!("{field}: {e}")))
}

fn part(p: pb::ImagePart) -> ApiResult<cat::Part> {
    let role = pb::PartRole::try_from(p.role)
        .ok()
        .and_then(convert::catalog_part_role)
        .ok_or_else(|| invalid(format!("part role {} is not valid", p.role)))?;
    if p.extension.len() > 32 {
        return Err(invalid("part extension is longer than 32 bytes"));
    }
    Ok(cat::Part {
        role,
        sha256: p.sha256,
        size: p.size,
        storage_key: p.storage_key,
        extension: p.extension,
    })
}

fn new_image(r: ipb::RegisterContentRequest, stores: &Stores) -> ApiResult<NewImage> {
    let mut written = Vec::new();
    for name in &r.stores {
        stores.check("stores", name)?;
        if !written.contains(name) {
            written.push(name.clone());
        }
    }
    if written.is_empty() {
        // A node older than named stores wrote to the one store there was.
        written.push(stores.default_store().to_owned());
    }
    let mut failed_stores = Vec::new();
    for f in &r.failed_stores {
        stores.check("failed_stores", &f.store)?;
        if f.message.len() > 4096 {
            return Err(invalid(
                "failed_stores: a message is longer than 4096 bytes",
            ));
        }
        failed_stores.push(cat::FailedStore {
            store: f.store.clone(),
            message: f.message.clone(),
        });
    }
    let image_type = convert::want_type(r.r#type)?
        .ok_or_else(|| invalid("type is required: container or virtual-machine"))?;
    let layout = match pb::ImageLayout::try_from(r.layout) {
        Ok(pb::ImageLayout::Unified) => cat::Layout::Unified,
        Ok(pb::ImageLayout::Split) => cat::Layout::Split,
        _ => return Err(invalid("layout is required: unified or split")),
    };
    if r.filename.len() > 1024 {
        return Err(invalid("filename is longer than 1024 bytes"));
    }
    let update_source = r
        .update_source
        .map(|s| -> ApiResult<cat::UpdateSource> {
            Ok(cat::UpdateSource {
                server: s.server,
                protocol: s.protocol,
                alias: s.alias,
                certificate: s.certificate,
                image_type: convert::want_type(s.image_type)?,
            })
        })
        .transpose()?;
    Ok(NewImage {
        stores: written,
        failed_stores,
        fingerprint: r.fingerprint,
        image_type,
        architecture: r.architecture,
        filename: r.filename,
        layout,
        parts: r.parts.into_iter().map(part).collect::<ApiResult<_>>()?,
        objects: r
            .objects
            .into_iter()
            .map(|list| {
                list.objects
                    .into_iter()
                    .map(|o| cat::StoredObject {
                        offset: o.offset,
                        size: o.size,
                        key: o.key,
                    })
                    .collect()
            })
            .collect(),
        properties: r.properties.into_iter().collect(),
        public: r.public,
        auto_update: r.auto_update,
        cached: r.cached,
        created_at: r
            .create_time
            .as_ref()
            .map(|t| convert::unix_nanos("create_time", t))
            .transpose()?,
        expires_at: r
            .expire_time
            .as_ref()
            .map(|t| convert::unix_nanos("expire_time", t))
            .transpose()?,
        update_source,
        aliases: r
            .aliases
            .into_iter()
            .map(|a| cat::AliasRef {
                name: a.name,
                description: a.description,
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_node(
        &self,
        req: Request<ipb::RegisterNodeRequest>,
    ) -> Reply<ipb::RegisterNodeResponse> {
        let r = req.into_inner();
        validate_node_id(&r.node_id)?;
        validate_address(&r.address)?;
        if r.version.len() > 128 {
            return Err(invalid("version is longer than 128 bytes").into());
        }
        let stores = self.reach(r.stores)?;
        let node = self
            .catalog
            .register_node(NodeAnnouncement {
                node_id: r.node_id,
                address: r.address,
                capacity_bytes: r.capacity_bytes,
                available_bytes: r.available_bytes,
                version: r.version,
                stores,
            })
            .await
            .map_err(ApiError::from)?;
        tracing::info!(node = %node.node_id, address = %node.address, stores = ?node.stores, "blob node registered");
        Ok(Response::new(ipb::RegisterNodeResponse {
            node: Some(self.node(node)),
            heartbeat_interval_seconds: self.interval_seconds(),
            settings: Some(self.imports.stores.settings()),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<ipb::HeartbeatRequest>,
    ) -> Reply<ipb::HeartbeatResponse> {
        let r = req.into_inner();
        validate_node_id(&r.node_id)?;
        self.catalog
            .heartbeat(r.node_id, r.available_bytes, r.active_transfers, r.healthy)
            .await
            .map_err(ApiError::from)?;
        self.count_nodes().await;
        Ok(Response::new(ipb::HeartbeatResponse {
            heartbeat_interval_seconds: self.interval_seconds(),
            settings: Some(self.imports.stores.settings()),
        }))
    }

    async fn list_nodes(
        &self,
        _req: Request<ipb::ListNodesRequest>,
    ) -> Reply<ipb::ListNodesResponse> {
        let nodes = self.catalog.list_nodes().await.map_err(ApiError::from)?;
        Ok(Response::new(ipb::ListNodesResponse {
            nodes: nodes.into_iter().map(|n| self.node(n)).collect(),
        }))
    }

    async fn register_content(
        &self,
        req: Request<ipb::RegisterContentRequest>,
    ) -> Reply<ipb::RegisterContentResponse> {
        let r = req.into_inner();
        let completes = cat::Completes {
            upload: match r.upload.as_str() {
                "" => None,
                name => Some(names::upload("upload", name)?),
            },
            operation: match r.operation.as_str() {
                "" => None,
                name => Some(names::operation("operation", name)?.to_owned()),
            },
            replaces: optional_fingerprint("replaces", &r.replaces)?,
        };
        let registered = self
            .catalog
            .register_image(new_image(r, &self.imports.stores)?, completes)
            .await
            .map_err(ApiError::from)?;
        if registered.created {
            tracing::info!(fingerprint = %registered.image.fingerprint, "image registered");
        }
        Ok(Response::new(ipb::RegisterContentResponse {
            image: Some(convert::image(registered.image)),
            created: registered.created,
            skipped_aliases: registered.skipped_aliases,
        }))
    }

    async fn open_write(
        &self,
        req: Request<ipb::OpenWriteRequest>,
    ) -> Reply<ipb::OpenWriteResponse> {
        let r = req.into_inner();
        let id = names::upload("upload", &r.upload)?;
        validate_node_id(&r.node_id)?;
        let (u, lease) = self
            .catalog
            .open_write(id, self.limits.ttl)
            .await
            .map_err(ApiError::from)?;
        let state = convert::upload_state(u.state);
        let image = match (&u.fingerprint, u.state) {
            (Some(fp), cat::UploadState::Complete) => {
                let fp = imagestore_image::FingerprintQuery::parse(fp).map_err(ApiError::from)?;
                let image = self
                    .catalog
                    .get_image(ImageRef::Fingerprint(fp), false)
                    .await
                    .map_err(ApiError::from)?;
                Some(convert::image(image))
            }
            _ => None,
        };
        Ok(Response::new(ipb::OpenWriteResponse {
            spec: Some(spec_to_pb(&u.spec)),
            committed_size: u.committed_size,
            metadata_size: u.metadata_size,
            hash_state: Some(ipb::HashState {
                image: u.hash_state.image.into(),
                part: u.hash_state.part.into(),
            }),
            segments: u
                .segments
                .into_iter()
                .map(|s| ipb::Segment {
                    start: s.start,
                    length: s.length,
                    storage_key: s.storage_key,
                })
                .collect(),
            lease,
            max_size: self.limits.max_bytes,
            state: state as i32,
            fingerprint: u.fingerprint.unwrap_or_default(),
            error_message: u.error_message.unwrap_or_default(),
            image,
        }))
    }

    async fn commit_segment(
        &self,
        req: Request<ipb::CommitSegmentRequest>,
    ) -> Reply<ipb::CommitSegmentResponse> {
        let r = req.into_inner();
        let id = names::upload("upload", &r.upload)?;
        let seg = r.segment.ok_or_else(|| invalid("segment is required"))?;
        let hash = r.hash_state.unwrap_or_default();
        let commit = cat::SegmentCommit {
            segment: cat::Segment {
                start: seg.start,
                length: seg.length,
                storage_key: seg.storage_key,
            },
            hash_state: cat::HashState {
                image: hash.image.to_vec(),
                part: hash.part.to_vec(),
            },
            metadata_size: r.metadata_size,
        };
        let committed_size = self
            .catalog
            .commit_segment(id, r.lease, commit, self.limits.ttl)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ipb::CommitSegmentResponse { committed_size }))
    }

    async fn fail_write(
        &self,
        req: Request<ipb::FailWriteRequest>,
    ) -> Reply<ipb::FailWriteResponse> {
        let r = req.into_inner();
        let id = names::upload("upload", &r.upload)?;
        let message: String = r.message.chars().take(4096).collect();
        self.catalog
            .fail_upload(id, r.lease, message)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ipb::FailWriteResponse {}))
    }

    async fn release_write(
        &self,
        req: Request<ipb::ReleaseWriteRequest>,
    ) -> Reply<ipb::ReleaseWriteResponse> {
        let r = req.into_inner();
        let id = names::upload("upload", &r.upload)?;
        self.catalog
            .release_write(id, r.lease)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ipb::ReleaseWriteResponse {}))
    }

    async fn lookup_content(
        &self,
        req: Request<ipb::LookupContentRequest>,
    ) -> Reply<ipb::LookupContentResponse> {
        let fp = imagestore_image::Fingerprint::parse(&req.get_ref().fingerprint)
            .map_err(|e| invalid(format!("fingerprint: {e}")))?;
        let what = cat::ImageRef::Fingerprint(imagestore_image::FingerprintQuery::Full(fp));
        let image = self
            .catalog
            .get_image(what, false)
            .await
            .map_err(ApiError::from)?;
        let objects = self
            .catalog
            .part_objects(image.fingerprint.clone())
            .await
            .map_err(ApiError::from)?;
        let image = convert::image(image);
        Ok(Response::new(ipb::LookupContentResponse {
            parts: image.parts,
            objects: objects_pb(objects),
            damage: image.damage,
            stores: image.stores,
        }))
    }

    async fn list_released(
        &self,
        req: Request<ipb::ListReleasedRequest>,
    ) -> Reply<ipb::ListReleasedResponse> {
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let reach = self.reach(r.stores)?;
        let released = self
            .catalog
            .released_content(reach, limit)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|k| ipb::ReleasedKey {
                store: k.store,
                key: k.key,
            })
            .collect();
        Ok(Response::new(ipb::ListReleasedResponse { released }))
    }

    async fn forget_released(
        &self,
        req: Request<ipb::ForgetReleasedRequest>,
    ) -> Reply<ipb::ForgetReleasedResponse> {
        let keys: Vec<cat::ReleasedKey> = req
            .into_inner()
            .released
            .into_iter()
            .map(|k| cat::ReleasedKey {
                store: k.store,
                key: k.key,
            })
            .collect();
        if keys.len() > 1000 {
            return Err(invalid("at most 1000 keys per call").into());
        }
        self.catalog
            .forget_released(keys)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ipb::ForgetReleasedResponse {}))
    }

    async fn claim_import(
        &self,
        req: Request<ipb::ClaimImportRequest>,
    ) -> Reply<ipb::ClaimImportResponse> {
        let r = req.into_inner();
        validate_node_id(&r.node_id)?;
        let reach = self.reach(r.stores)?;
        let wait = std::time::Duration::from_secs(u64::from(r.wait_seconds.min(60)));
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.catalog.watch_operations();
        loop {
            // Marked before the look, so that an import queued in between wakes us.
            changes.borrow_and_update();
            let claimed = self
                .catalog
                .claim_import(r.node_id.clone(), reach.clone())
                .await
                .map_err(ApiError::from)?;
            if let Some(job) = claimed {
                let request = pb::ImportImageRequest::decode(job.request.as_slice())
                    .map_err(|e| ApiError::Catalog(cat::CatalogError::Corrupt(e.to_string())))?;
                tracing::info!(operation = %job.operation, node = %r.node_id, "import claimed");
                return Ok(Response::new(ipb::ClaimImportResponse {
                    operation: format!("operations/{}", job.operation),
                    request: Some(request),
                    policy: Some(self.policy()),
                    replaces: job.replaces.unwrap_or_default(),
                    architectures: self.imports.settings.server_architectures(),
                    importer_roles: job.importer.roles,
                    trace_parent: job.importer.trace_parent,
                }));
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                // Nothing claimed: the node asks again once the server is back.
                () = self.stopping.stopped() => break,
            }
        }
        Ok(Response::new(ipb::ClaimImportResponse::default()))
    }

    async fn claim_scrub(
        &self,
        req: Request<ipb::ClaimScrubRequest>,
    ) -> Reply<ipb::ClaimScrubResponse> {
        let r = req.into_inner();
        validate_node_id(&r.node_id)?;
        let reach = self.reach(r.stores)?;
        let background = r.background;
        let wait = std::time::Duration::from_secs(u64::from(r.wait_seconds.min(60)));
        let deadline = tokio::time::Instant::now() + wait;
        if background && self.scrub_every.is_zero() {
            // Background scrubbing is off here: the node asks again later.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                () = self.stopping.stopped() => {}
            }
            return Ok(Response::new(ipb::ClaimScrubResponse::default()));
        }
        let mut changes = self.catalog.watch_operations();
        loop {
            changes.borrow_and_update();
            let claimed = self
                .catalog
                .claim_scrub(
                    r.node_id.clone(),
                    reach.clone(),
                    background,
                    self.scrub_every,
                    SCRUB_CLAIM,
                )
                .await
                .map_err(ApiError::from)?;
            if let Some(job) = claimed {
                let fingerprint = job.image.fingerprint.clone();
                let objects = self
                    .catalog
                    .part_objects(fingerprint.clone())
                    .await
                    .map_err(ApiError::from)?;
                return Ok(Response::new(ipb::ClaimScrubResponse {
                    stores: job.image.stores.clone(),
                    fingerprint,
                    operation: job
                        .operation
                        .map(|id| format!("operations/{id}"))
                        .unwrap_or_default(),
                    parts: convert::image(job.image).parts,
                    objects: objects_pb(objects),
                }));
            }
            // Background work falls due as time passes, not on a change: look
            // again every so often.
            let recheck = if background {
                self.scrub_every.min(std::time::Duration::from_secs(5))
            } else {
                wait
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(recheck) => {}
                _ = tokio::time::sleep_until(deadline) => break,
                () = self.stopping.stopped() => break,
            }
        }
        Ok(Response::new(ipb::ClaimScrubResponse::default()))
    }

    async fn report_scrub(
        &self,
        req: Request<ipb::ReportScrubRequest>,
    ) -> Reply<ipb::ReportScrubResponse> {
        let r = req.into_inner();
        validate_node_id(&r.node_id)?;
        let fp = imagestore_image::Fingerprint::parse(&r.fingerprint)
            .map_err(|e| invalid(format!("fingerprint: {e}")))?;
        let operation = match r.operation.as_str() {
            "" => None,
            name => Some(names::operation("operation", name)?.to_owned()),
        };
        for store in &r.repaired {
            tracing::warn!(
                fingerprint = %fp, node = %r.node_id, store = %store,
                "a damaged copy was rewritten from a sound copy in another store"
            );
        }
        let outcome = match (r.damage, r.error_code) {
            (Some(d), _) => {
                let part = pb::PartRole::try_from(d.part)
                    .ok()
                    .and_then(convert::catalog_part_role)
                    .ok_or_else(|| invalid("damage.part is required"))?;
                tracing::error!(
                    fingerprint = %fp, node = %r.node_id, part = part.as_str(),
                    expected = %d.expected_sha256, found = %d.found_sha256,
                    "stored image is damaged: {}", d.message
                );
                cat::ScrubOutcome::Damaged(cat::Damage {
                    part: part.as_str().to_owned(),
                    expected_sha256: d.expected_sha256,
                    expected_size: d.expected_size,
                    found_sha256: d.found_sha256,
                    found_size: d.found_size,
                    detected_at: cat::now(),
                    message: d.message,
                })
            }
            (None, 0) => cat::ScrubOutcome::Sound,
            (None, code) => cat::ScrubOutcome::Failed {
                code,
                message: r.error_message,
            },
        };
        self.catalog
            .report_scrub(fp.as_str().to_owned(), operation, outcome)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ipb::ReportScrubResponse {}))
    }

    async fn report_import(
        &self,
        req: Request<ipb::ReportImportRequest>,
    ) -> Reply<ipb::ReportImportResponse> {
        let r = req.into_inner();
        validate_node_id(&r.node_id)?;
        let id = names::operation("operation", &r.operation)?.to_owned();
        let existing = optional_fingerprint("image", &r.image)?.map(|fp| {
            let aliases = r
                .aliases
                .iter()
                .map(|a| cat::AliasRef {
                    name: a.name.clone(),
                    description: a.description.clone(),
                })
                .collect();
            (fp, aliases)
        });
        let update = cat::OperationUpdate {
            stage: Some(r.stage).filter(|s| !s.is_empty()),
            bytes_done: Some(r.bytes_done),
            bytes_total: Some(r.bytes_total),
            bytes_per_second: Some(r.bytes_per_second),
            error: (r.error_code != 0).then_some((r.error_code, r.error_message)),
            metadata: r.metadata.into_iter().collect(),
            ..Default::default()
        };
        let op = self
            .catalog
            .report_import(id, r.node_id, update, existing)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ipb::ReportImportResponse {
            stop: op.state.is_done(),
        }))
    }

    async fn add_locations(
        &self,
        req: Request<ipb::AddLocationsRequest>,
    ) -> Reply<ipb::AddLocationsResponse> {
        let r = req.into_inner();
        let fp = imagestore_image::Fingerprint::parse(&r.fingerprint)
            .map_err(|e| invalid(format!("fingerprint: {e}")))?;
        let operation = match r.operation.as_str() {
            "" => None,
            name => Some(names::operation("operation", name)?.to_owned()),
        };
        for name in &r.stores {
            self.imports.stores.check("stores", name)?;
        }
        let mut failed = Vec::new();
        for f in r.failed_stores {
            self.imports.stores.check("failed_stores", &f.store)?;
            failed.push(cat::FailedStore {
                store: f.store,
                message: f.message.chars().take(4096).collect(),
            });
        }
        let image = self
            .catalog
            .add_locations(fp.as_str().to_owned(), r.stores.clone(), failed, operation)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(fingerprint = %image.fingerprint, added = ?r.stores, stores = ?image.stores, "image copied to stores");
        Ok(Response::new(ipb::AddLocationsResponse {
            image: Some(convert::image(image)),
        }))
    }
}
