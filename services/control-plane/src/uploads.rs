//! imagestore.v1.Uploads: upload sessions on the control plane's side.

use std::time::Duration;

use imagestore_auth::Scope;
use imagestore_catalog::{self as cat, Catalog, ImageRef, validate_alias};
use imagestore_image::{Fingerprint, FingerprintQuery};
use imagestore_proto::v1 as pb;
use pb::uploads_server::Uploads;
use tonic::{Request, Response};

use crate::auth::Auth;
use crate::convert;
use crate::error::{ApiError, ApiResult, Reply, invalid};
use crate::names;
use crate::nodes::{Need, NodePicker};
use crate::stores::{Stores, Target};

/// What an upload session needs from the configuration.
#[derive(Clone, Copy)]
pub struct UploadLimits {
    pub ttl: Duration,
    pub max_bytes: u64,
    pub max_chunk_bytes: u32,
    /// The administrator left the "upload" import method on.
    pub enabled: bool,
}

impl UploadLimits {
    fn require_enabled(&self) -> ApiResult<()> {
        if self.enabled {
            return Ok(());
        }
        Err(ApiError::FailedPrecondition(
            "the import method \"upload\" is disabled on this server (import.enabled_methods); \
             ask the server to import from a URL or another server instead"
                .into(),
        ))
    }
}

pub struct UploadsService {
    catalog: Catalog,
    nodes: NodePicker,
    limits: UploadLimits,
    auth: Auth,
    stores: Stores,
}

impl UploadsService {
    pub fn new(
        catalog: Catalog,
        nodes: NodePicker,
        limits: UploadLimits,
        auth: Auth,
        stores: Stores,
    ) -> Self {
        Self {
            catalog,
            nodes,
            limits,
            auth,
            stores,
        }
    }

    /// The public form of a session; one still taking bytes carries a fresh
    /// ticket for them.
    fn reply(
        &self,
        upload: cat::Upload,
        image: Option<pb::Image>,
        blob_node: String,
    ) -> pb::UploadSession {
        let open = upload.state == cat::UploadState::Open;
        let mut session = upload_session(upload, image, blob_node, self.limits.max_chunk_bytes);
        if open {
            let (ticket, expires) = self.auth.ticket(&Scope::Upload(session.name.clone()));
            session.ticket = ticket;
            session.ticket_expire_time = Some(expires);
        }
        session
    }

    async fn session(&self, upload: cat::Upload) -> ApiResult<pb::UploadSession> {
        let image = match (&upload.state, &upload.fingerprint) {
            (cat::UploadState::Complete, Some(fp)) => {
                let what = ImageRef::Fingerprint(FingerprintQuery::parse(fp)?);
                self.catalog
                    .get_image(what, false)
                    .await
                    .ok()
                    .map(convert::image)
            }
            _ => None,
        };
        // A session that takes bytes names a node; one that is over needs none.
        let blob_node = match upload.state {
            cat::UploadState::Open => self
                .nodes
                .pick(Need::All(&upload.spec.stores))
                .await
                .map(|n| n.address)
                .unwrap_or_default(),
            _ => String::new(),
        };
        Ok(self.reply(upload, image, blob_node))
    }
}

/// The public form of a session, without a ticket.
pub fn upload_session(
    u: cat::Upload,
    image: Option<pb::Image>,
    blob_node: String,
    max_chunk_bytes: u32,
) -> pb::UploadSession {
    let state = convert::upload_state(u.state);
    pb::UploadSession {
        name: format!("uploads/{}", u.id),
        spec: Some(spec_to_pb(&u.spec)),
        state: state as i32,
        committed_size: u.committed_size,
        metadata_size: u.metadata_size,
        blob_node,
        ticket: String::new(),
        ticket_expire_time: None,
        expire_time: Some(convert::timestamp(u.expires_at)),
        max_chunk_bytes,
        image,
        error_message: u.error_message.unwrap_or_default(),
        create_time: Some(convert::timestamp(u.created_at)),
    }
}

pub fn spec_to_pb(s: &cat::UploadSpec) -> pb::UploadSpec {
    pb::UploadSpec {
        layout: match s.layout {
            Some(cat::Layout::Unified) => pb::ImageLayout::Unified,
            Some(cat::Layout::Split) => pb::ImageLayout::Split,
            None => pb::ImageLayout::Unspecified,
        } as i32,
        expected_fingerprint: s.expected_fingerprint.clone(),
        metadata_size: s.metadata_size,
        rootfs_size: s.rootfs_size,
        filename: s.filename.clone(),
        public: s.public,
        aliases: s
            .aliases
            .iter()
            .map(|(name, description)| pb::AliasSpec {
                name: name.clone(),
                description: description.clone(),
            })
            .collect(),
        properties: s.properties.clone().into_iter().collect(),
        target: (!s.stores.is_empty()).then(|| {
            Stores::selection(&Target {
                stores: s.stores.clone(),
                must_succeed: s.all_stores_must_succeed,
            })
        }),
    }
}

/// Validates a client's spec: everything that can be refused before a byte moves.
/// `target` is where it goes, resolved from `s.target`.
pub fn spec_from_pb(
    s: pb::UploadSpec,
    max_bytes: u64,
    target: Target,
) -> ApiResult<cat::UploadSpec> {
    let layout = match pb::ImageLayout::try_from(s.layout) {
        Ok(pb::ImageLayout::Unified) => cat::Layout::Unified,
        Ok(pb::ImageLayout::Split) => cat::Layout::Split,
        _ => return Err(invalid("spec.layout is required: unified or split")),
    };
    if !s.expected_fingerprint.is_empty() {
        Fingerprint::parse(&s.expected_fingerprint)
            .map_err(|e| invalid(format!("spec.expected_fingerprint: {e}")))?;
    }
    if layout == cat::Layout::Unified && s.rootfs_size != 0 {
        return Err(invalid(
            "spec.rootfs_size is for split images; a unified image declares its size in metadata_size",
        ));
    }
    let declared = s
        .metadata_size
        .checked_add(s.rootfs_size)
        .ok_or_else(|| invalid("declared sizes overflow"))?;
    if declared > max_bytes {
        return Err(ApiError::ResourceExhausted(format!(
            "the image is declared as {declared} bytes; this server stages at most {max_bytes}"
        )));
    }
    if s.filename.len() > 1024 || s.filename.contains('/') {
        return Err(invalid(
            "spec.filename must be a file name (no '/'), at most 1024 bytes",
        ));
    }
    if s.aliases.len() > 64 {
        return Err(invalid("at most 64 aliases per upload"));
    }
    for a in &s.aliases {
        validate_alias(&a.name, &a.description)?;
    }
    let properties = s.properties.into_iter().collect();
    imagestore_image::validate_properties(&properties)
        .map_err(|e| invalid(format!("spec.properties: {e}")))?;
    Ok(cat::UploadSpec {
        layout: Some(layout),
        expected_fingerprint: s.expected_fingerprint,
        metadata_size: s.metadata_size,
        rootfs_size: s.rootfs_size,
        filename: s.filename,
        public: s.public,
        aliases: s
            .aliases
            .into_iter()
            .map(|a| (a.name, a.description))
            .collect(),
        properties,
        stores: target.stores,
        all_stores_must_succeed: target.must_succeed,
    })
}

#[tonic::async_trait]
impl Uploads for UploadsService {
    async fn create_upload(
        &self,
        req: Request<pb::CreateUploadRequest>,
    ) -> Reply<pb::UploadSession> {
        self.limits.require_enabled()?;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| invalid("spec is required"))?;
        let target = self.stores.target(spec.target.as_ref())?;
        let spec = spec_from_pb(spec, self.limits.max_bytes, target)?;
        if !spec.expected_fingerprint.is_empty() {
            let what = ImageRef::Fingerprint(
                FingerprintQuery::parse(&spec.expected_fingerprint).map_err(ApiError::from)?,
            );
            if self.catalog.get_image(what, false).await.is_ok() {
                return Err(ApiError::Catalog(cat::CatalogError::AlreadyExists(format!(
                    "Image with same fingerprint already exists: {}",
                    spec.expected_fingerprint
                )))
                .into());
            }
        }
        let node = self.nodes.pick(Need::All(&spec.stores)).await?;
        let upload = self
            .catalog
            .create_upload(spec, self.limits.ttl)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(upload = %upload.id, node = %node.node_id, "upload session opened");
        Ok(Response::new(self.reply(upload, None, node.address)))
    }

    async fn get_upload(&self, req: Request<pb::GetUploadRequest>) -> Reply<pb::UploadSession> {
        let id = names::upload("name", &req.get_ref().name)?;
        self.nodes
            .report_unreachable(&req.get_ref().unreachable_blob_node);
        let upload = self.catalog.get_upload(id).await.map_err(ApiError::from)?;
        Ok(Response::new(self.session(upload).await?))
    }

    async fn cancel_upload(
        &self,
        req: Request<pb::CancelUploadRequest>,
    ) -> Reply<pb::UploadSession> {
        let id = names::upload("name", &req.get_ref().name)?;
        let upload = self
            .catalog
            .cancel_upload(id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(self.session(upload).await?))
    }

    async fn create_one_shot_ticket(
        &self,
        req: Request<pb::CreateOneShotTicketRequest>,
    ) -> Reply<pb::OneShotTicket> {
        self.limits.require_enabled()?;
        let fp = req.into_inner().expected_fingerprint;
        if !fp.is_empty() {
            Fingerprint::parse(&fp).map_err(|e| invalid(format!("expected_fingerprint: {e}")))?;
        }
        // A one-shot upload goes to the default store.
        let node = self
            .nodes
            .pick(Need::All(std::slice::from_ref(
                &self.stores.default_store().to_owned(),
            )))
            .await?;
        let (ticket, expires) = self
            .auth
            .ticket(&Scope::OneShot((!fp.is_empty()).then_some(fp)));
        Ok(Response::new(pb::OneShotTicket {
            ticket,
            ticket_expire_time: Some(expires),
            blob_node: node.address,
            max_chunk_bytes: self.limits.max_chunk_bytes,
        }))
    }
}
