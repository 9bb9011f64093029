//! One upload's bytes on their way in: hashed as they arrive, written as segment
//! objects, committed to the control plane with the SHA-256 state at each commit
//! so that any node can continue, and verified, scanned and registered at the end.
//!
//! Three things overlap: the receive loop queues each chunk for the hashing thread
//! and the segment writer and moves on; a full segment is made durable and
//! committed by a task of its own while the next segment is being written (one
//! commit in flight at a time, so the control plane sees them in order).

use std::io::Read;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use imagestore_image::{
    Format, FoundType, ScanError, ScanLimits, Scanned, inspect_rootfs, scan_tarball,
};
use imagestore_proto::frames::Pieces;
use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_store::{BlobStore, SegmentWriter, StoredSegment, layout, segment_key};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use crate::NodeContext;
use crate::error::{BlobError, BlobResult};
use crate::hasher::{HashPipe, PendingState};
use crate::walker::{ArchiveWalk, Walked};

fn save(h: &Sha256) -> Bytes {
    Bytes::copy_from_slice(h.serialize().as_slice())
}

fn restore(bytes: &[u8]) -> BlobResult<Sha256> {
    if bytes.is_empty() {
        return Ok(Sha256::new());
    }
    let state = SerializedState::<Sha256>::try_from(bytes)
        .map_err(|_| BlobError::Internal(format!("saved hash state has {} bytes", bytes.len())))?;
    Sha256::deserialize(&state).map_err(|e| BlobError::Internal(format!("saved hash state: {e}")))
}

/// The hash of the current part, from its saved state (empty: a new part); a
/// unified image has one part, hashed as the image.
fn part_hash(split: bool, saved: &[u8]) -> BlobResult<Option<HashPipe>> {
    split.then(|| HashPipe::start(restore(saved)?)).transpose()
}

/// Which file of the image the bytes at the current position belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Unified,
    Metadata,
    Rootfs,
}

impl Role {
    fn dir(self) -> &'static str {
        match self {
            Self::Unified => "unified",
            Self::Metadata => "metadata",
            Self::Rootfs => "rootfs",
        }
    }

    fn pb(self) -> pb::PartRole {
        match self {
            Self::Unified => pb::PartRole::Unified,
            Self::Metadata => pb::PartRole::Metadata,
            Self::Rootfs => pb::PartRole::Rootfs,
        }
    }
}

struct OpenSegment {
    writer: SegmentWriter,
    key: String,
}

/// An upload in progress on this node.
pub struct Ingest {
    node: Arc<NodeContext>,
    /// Where the bytes are written: the first of `targets`.
    store: BlobStore,
    /// Every store the image goes to (the control plane made the list
    /// explicit); the others get verified copies before registration.
    targets: Vec<String>,
    /// One target that fails fails the upload; else it is listed on the image.
    must_succeed: bool,
    id: String,
    /// "uploads/{id}" for a resumable session; None for a one-shot upload.
    session: Option<String>,
    lease: String,
    spec: pb::UploadSpec,
    split: bool,
    max_size: u64,
    committed: u64,
    pos: u64,
    metadata_size: Option<u64>,
    metadata_sha: Option<String>,
    image_hash: HashPipe,
    /// The current part's hash (split images only; a unified image is one part).
    part_hash: Option<HashPipe>,
    open: Option<OpenSegment>,
    /// Names this writer's objects, so that no other writer (a node this one
    /// superseded, or its successor) ever writes the same key.
    writer: String,
    /// Every segment object stored so far, committed or handed to `pending`,
    /// in stream order (`start` is the offset in the image stream).
    objects: Vec<ipb::Segment>,
    /// Where the last commit handed to `pending` ends.
    recorded: u64,
    /// When the last commit was handed over (or the upload opened).
    last_commit: std::time::Instant,
    /// The commit in flight: resolves to the committed size.
    pending: Option<tokio::task::JoinHandle<BlobResult<u64>>>,
    /// A commit failed: what followed it can never be committed.
    broken: bool,
    /// What a server-side import adds to the registration.
    registration: Registration,
    /// The walk of the current part's archive, fed as bytes arrive.
    walk: Option<ArchiveWalk>,
    /// A split image's metadata part, as its walk found it at end_metadata
    /// (None when that was on another node: the finish reads it again).
    metadata_scan: Option<BlobResult<Scanned>>,
}

/// What an import records with the image besides what an upload does.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The import operation registration completes, "operations/{id}".
    pub operation: String,
    /// A refresh: the image the new one replaces.
    pub replaces: String,
    pub update_source: Option<pb::UpdateSource>,
    pub auto_update: bool,
    pub cached: bool,
    /// What the source says the image is; None: the bytes decide.
    pub image_type: Option<pb::ImageType>,
    /// The roles of whoever asked for the import: the import plugins run (an
    /// upload is Glance's image-upload, which runs none).
    pub plugins_for: Option<Vec<String>>,
}

/// Where a spec's image goes: its explicit target, or the default store.
fn targets(
    node: &NodeContext,
    spec: &pb::UploadSpec,
) -> BlobResult<(BlobStore, Vec<String>, bool)> {
    let (mut stores, must_succeed) = match &spec.target {
        Some(t) => (t.stores.clone(), t.all_stores_must_succeed.unwrap_or(true)),
        None => (Vec::new(), true),
    };
    if stores.is_empty() {
        stores.push(node.stores.default_name());
    }
    let store = node.stores.get(&stores[0])?.clone();
    Ok((store, stores, must_succeed))
}

/// What opening an upload found.
pub enum Opened {
    Ready(Box<Ingest>),
    /// The session completed earlier: here is its image.
    AlreadyComplete(Box<pb::Image>),
}

impl Ingest {
    /// Claims a session on the control plane and restores its state.
    pub async fn resume(node: Arc<NodeContext>, name: &str) -> BlobResult<Opened> {
        let id = match name.strip_prefix("uploads/") {
            Some(id) if !id.is_empty() && !id.contains('/') => id.to_owned(),
            _ => {
                return Err(BlobError::InvalidArgument(format!(
                    "upload {name:?} is not a valid name: expected \"uploads/{{id}}\""
                )));
            }
        };
        let opened = node
            .registry()
            .open_write(ipb::OpenWriteRequest {
                upload: name.to_owned(),
                node_id: node.id.clone(),
            })
            .await?
            .into_inner();
        match pb::UploadState::try_from(opened.state) {
            Ok(pb::UploadState::Open) => {}
            Ok(pb::UploadState::Complete) => {
                let image = opened.image.ok_or_else(|| {
                    BlobError::Internal(format!(
                        "the control plane says upload {name} is complete but sent no image"
                    ))
                })?;
                return Ok(Opened::AlreadyComplete(Box::new(image)));
            }
            _ => {
                return Err(BlobError::FailedPrecondition(format!(
                    "upload {name} is over: {}",
                    opened.error_message
                )));
            }
        }
        let spec = opened.spec.unwrap_or_default();
        let (store, targets, must_succeed) = targets(&node, &spec)?;
        let hash = opened.hash_state.unwrap_or_default();
        let metadata_size = (opened.metadata_size > 0).then_some(opened.metadata_size);
        let split = spec.layout == pb::ImageLayout::Split as i32;
        let mut ingest = Self {
            split,
            image_hash: HashPipe::start(restore(&hash.image)?)?,
            part_hash: part_hash(split, &hash.part)?,
            recorded: opened.committed_size,
            last_commit: std::time::Instant::now(),
            pending: None,
            broken: false,
            node,
            store,
            targets,
            must_succeed,
            id,
            session: Some(name.to_owned()),
            lease: opened.lease,
            spec,
            max_size: opened.max_size,
            committed: opened.committed_size,
            pos: opened.committed_size,
            metadata_size,
            metadata_sha: None,
            open: None,
            writer: writer_tag(),
            objects: opened
                .segments
                .into_iter()
                .filter(|s| s.length > 0)
                .collect(),
            registration: Registration::default(),
            walk: None,
            metadata_scan: None,
        };
        ingest.start_walk().await?;
        Ok(Opened::Ready(Box::new(ingest)))
    }

    /// A one-shot upload: nothing is recorded until it is registered.
    /// It goes to the default store only: its ticket says nothing of stores.
    pub fn one_shot(node: Arc<NodeContext>, spec: pb::UploadSpec) -> BlobResult<Self> {
        if spec
            .target
            .as_ref()
            .is_some_and(|t| !t.stores.is_empty() || t.all_stores)
        {
            return Err(BlobError::InvalidArgument(
                "a one-shot upload goes to the default store; open an upload session \
                 (CreateUpload) to choose stores"
                    .into(),
            ));
        }
        Self::checked(node, spec)
    }

    fn checked(node: Arc<NodeContext>, spec: pb::UploadSpec) -> BlobResult<Self> {
        let layout = pb::ImageLayout::try_from(spec.layout)
            .ok()
            .filter(|l| *l != pb::ImageLayout::Unspecified)
            .ok_or_else(|| {
                BlobError::InvalidArgument("spec.layout is required: unified or split".into())
            })?;
        if !spec.expected_fingerprint.is_empty()
            && imagestore_image::Fingerprint::parse(&spec.expected_fingerprint).is_err()
        {
            return Err(BlobError::InvalidArgument(format!(
                "spec.expected_fingerprint {:?} is not 64 lowercase hex characters",
                spec.expected_fingerprint
            )));
        }
        let split = layout == pb::ImageLayout::Split;
        let node_limits = node.config.clone();
        let (store, targets, must_succeed) = targets(&node, &spec)?;
        Ok(Self {
            store,
            targets,
            must_succeed,
            split,
            max_size: node.config.max_upload_bytes,
            node,
            id: uuid::Uuid::new_v4().to_string(),
            session: None,
            lease: String::new(),
            spec,
            committed: 0,
            pos: 0,
            metadata_size: None,
            metadata_sha: None,
            image_hash: HashPipe::start(Sha256::new())?,
            part_hash: part_hash(split, &[])?,
            open: None,
            writer: writer_tag(),
            objects: Vec::new(),
            recorded: 0,
            last_commit: std::time::Instant::now(),
            pending: None,
            broken: false,
            registration: Registration::default(),
            walk: Some(ArchiveWalk::image(!split, walk_limits(&node_limits))?),
            metadata_scan: None,
        })
    }

    /// A server-side import: a one-shot upload whose bytes live below the
    /// operation's id (where the control plane releases them if the node goes
    /// away) and whose registration completes the operation.
    pub fn for_import(
        node: Arc<NodeContext>,
        operation_id: &str,
        spec: pb::UploadSpec,
        registration: Registration,
    ) -> BlobResult<Self> {
        let mut ingest = Self::checked(node, spec)?;
        ingest.id = operation_id.to_owned();
        ingest.registration = registration;
        Ok(ingest)
    }

    /// The SHA-256 of the current part so far (of the whole image, unified).
    pub async fn part_sha256(&mut self) -> BlobResult<String> {
        let hash = match &self.part_hash {
            Some(p) => p.state().await?,
            None => self.image_hash.state().await?,
        };
        Ok(hex::encode(hash.finalize()))
    }

    /// A split image's metadata SHA-256, once its end was marked.
    pub fn metadata_sha256(&self) -> Option<&str> {
        self.metadata_sha.as_deref()
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The stream offset the next new byte has.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn metadata_ended(&self) -> bool {
        self.metadata_size.is_some()
    }

    fn role(&self) -> Role {
        match (self.split, self.metadata_size) {
            (false, _) => Role::Unified,
            (true, None) => Role::Metadata,
            (true, Some(_)) => Role::Rootfs,
        }
    }

    /// Everything this upload stored lives below here (the catalog's
    /// `upload_prefix` names the same place).
    fn upload_prefix(&self) -> String {
        layout::upload_prefix(&self.id)
    }

    fn prefix(&self, role: Role) -> String {
        layout::part_prefix(&self.id, role.dir())
    }

    /// The objects of the part that spans `start..end` of the stream, with
    /// offsets within the part.
    fn part_objects(&self, start: u64, end: u64) -> Vec<StoredSegment> {
        self.objects
            .iter()
            .filter(|s| s.start >= start && s.start < end)
            .map(|s| StoredSegment {
                offset: s.start - start,
                size: s.length,
                key: s.storage_key.clone(),
            })
            .collect()
    }

    fn part_start(&self) -> u64 {
        self.metadata_size.unwrap_or(0)
    }

    /// Checks that `n` more bytes fit what was declared and the staging limit.
    fn check_room(&self, n: u64) -> BlobResult<()> {
        let end = self.pos + n;
        if end > self.max_size {
            return Err(BlobError::ResourceExhausted(format!(
                "the upload would exceed this server's staging limit of {} bytes",
                self.max_size
            )));
        }
        let (declared, part_end, what) = match self.role() {
            Role::Unified => (self.spec.metadata_size, end, "image"),
            Role::Metadata => (self.spec.metadata_size, end, "metadata part"),
            Role::Rootfs => (
                self.spec.rootfs_size,
                end - self.part_start(),
                "rootfs part",
            ),
        };
        if declared > 0 && part_end > declared {
            return Err(BlobError::InvalidArgument(format!(
                "received more bytes than the {declared} declared for the {what}"
            )));
        }
        Ok(())
    }

    /// Hashes and stores the next bytes of the stream, once the node has room
    /// for them.
    pub async fn write(&mut self, data: Bytes) -> BlobResult<()> {
        let data = self.node.budget.hold(data).await;
        self.write_held(data.into()).await
    }

    /// The same, for a message's bytes already held against the node's budget,
    /// in the pieces they arrived in: the hashers and the walk take them in
    /// one hand-off each.
    pub async fn write_held(&mut self, data: Pieces) -> BlobResult<()> {
        if !data.has_remaining() {
            return Ok(());
        }
        self.check_room(data.remaining() as u64)?;
        if self.open.is_none() {
            let key = segment_key(
                &self.prefix(self.role()),
                self.pos - self.part_start(),
                &self.writer,
            );
            let writer = self.store.begin_segment(&key).await?;
            self.open = Some(OpenSegment { writer, key });
        }
        let len = data.remaining() as u64;
        imagestore_telemetry::metrics::metrics()
            .bytes_received
            .inc_by(len);
        // The hashers and the store share the chunk (no copy).
        self.image_hash.update(data.clone()).await?;
        if let Some(part) = &self.part_hash {
            part.update(data.clone()).await?;
        }
        if let Some(walk) = &self.walk {
            walk.feed(data.clone()).await;
        }
        if let Some(open) = self.open.as_mut() {
            for piece in data.into_slices() {
                open.writer.put(piece).await?;
            }
        }
        self.pos += len;
        let full = self
            .open
            .as_ref()
            .is_some_and(|o| o.writer.written() >= self.node.config.segment_bytes);
        if full || self.checkpoint_due() {
            self.commit_behind(0).await?;
        }
        Ok(())
    }

    /// Whether a session has gone `commit_interval` since its last commit with
    /// bytes received that are not committed yet.
    fn checkpoint_due(&self) -> bool {
        self.session.is_some()
            && self.pos > self.recorded
            && self.last_commit.elapsed() >= self.node.config.commit_interval
    }

    /// Commits what arrived since the last commit, when the interval has passed:
    /// for a stream that goes quiet between messages.
    pub async fn checkpoint(&mut self) -> BlobResult<()> {
        if self.checkpoint_due() {
            self.commit_behind(0).await?;
        }
        Ok(())
    }

    /// Split images: the metadata part ends at the current position.
    pub async fn end_metadata(&mut self) -> BlobResult<()> {
        if !self.split {
            return Err(BlobError::InvalidArgument(
                "end_of_metadata is for split images; this upload is unified".into(),
            ));
        }
        if self.metadata_size.is_some() {
            return Err(BlobError::InvalidArgument(
                "end_of_metadata was already given for this upload".into(),
            ));
        }
        if self.pos == 0 {
            return Err(BlobError::InvalidArgument(
                "end_of_metadata before any metadata byte: the metadata part is empty".into(),
            ));
        }
        let declared = self.spec.metadata_size;
        if declared > 0 && self.pos != declared {
            return Err(BlobError::InvalidArgument(format!(
                "the metadata part ended after {} bytes, but {declared} were declared",
                self.pos
            )));
        }
        // The commit below records the boundary with an empty part hash: the
        // rootfs starts from nothing.
        let finished = self.part()?.take().await?;
        self.metadata_sha = Some(hex::encode(finished.finalize()));
        let end = self.pos;
        self.commit_behind(end).await?;
        self.metadata_size = Some(end);
        self.metadata_scan = Some(match self.walk.take() {
            Some(walk) => walk.finish().await.and_then(Walked::into_image),
            None => Err(BlobError::Internal(
                "a split upload without its walk".into(),
            )),
        });
        self.walk = Some(ArchiveWalk::rootfs(walk_limits(&self.node.config))?);
        self.settle().await
    }

    /// Starts the walk of the current part, first feeding it what was
    /// committed of that part (an upload resumed here after another node).
    async fn start_walk(&mut self) -> BlobResult<()> {
        let limits = walk_limits(&self.node.config);
        let (walk, from) = match self.metadata_size {
            Some(meta) => (ArchiveWalk::rootfs(limits)?, meta),
            None => (ArchiveWalk::image(!self.split, limits)?, 0),
        };
        let stored = self.part_objects(from, u64::MAX);
        let mut data = self.store.read_part(stored, 0, 0);
        while let Some(chunk) = data.next().await {
            walk.feed(chunk?).await;
        }
        self.walk = Some(walk);
        Ok(())
    }

    fn part(&self) -> BlobResult<&HashPipe> {
        self.part_hash
            .as_ref()
            .ok_or_else(|| BlobError::Internal("a split upload without a part hash".into()))
    }

    /// Commits everything up to the position and waits until it is recorded.
    async fn commit(&mut self) -> BlobResult<()> {
        self.commit_behind(0).await?;
        self.settle().await
    }

    /// Waits for the commit in flight, if any.
    async fn settle(&mut self) -> BlobResult<()> {
        let Some(task) = self.pending.take() else {
            return Ok(());
        };
        let outcome = task
            .await
            .map_err(|e| BlobError::Internal(format!("commit task: {e}")))
            .and_then(|r| r);
        match outcome {
            Ok(committed) => {
                self.committed = committed;
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Closes the open segment and hands its commit to a task, after the one in
    /// flight is done; the next segment can be written meanwhile. `metadata_size`
    /// marks the end of a split image's metadata part.
    async fn commit_behind(&mut self, metadata_size: u64) -> BlobResult<()> {
        self.settle().await?;
        if self.broken {
            return Err(BlobError::Internal(
                "an earlier commit of this upload failed".into(),
            ));
        }
        let open = self.open.take();
        if self.pos == self.recorded && metadata_size == 0 {
            if let Some(open) = open {
                let _ = open.writer.abort().await;
            }
            return Ok(());
        }
        // A commit that only records a boundary names the part's prefix.
        let storage_key = match &open {
            Some(o) => o.key.clone(),
            None => self.prefix(self.role()),
        };
        let image = self.image_hash.state_later().await?;
        let part = match &self.part_hash {
            Some(p) => Some(p.state_later().await?),
            None => None,
        };
        let segment = ipb::Segment {
            start: self.recorded,
            length: self.pos - self.recorded,
            storage_key,
        };
        let stored = open.as_ref().map(|o| o.key.clone());
        if stored.is_some() {
            self.objects.push(segment.clone());
        }
        self.recorded = self.pos;
        self.last_commit = std::time::Instant::now();
        let end = self.pos;
        let record = self.session.clone().map(|upload| Record {
            upload,
            lease: self.lease.clone(),
            segment,
            metadata_size,
        });
        let node = self.node.clone();
        let store = self.store.clone();
        // The commit's calls to the control plane belong to the upload's trace.
        let span = tracing::Span::current();
        self.pending = Some(tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Some(open) = open {
                    open.writer.finish().await?;
                }
                let Some(record) = record else {
                    return Ok(end);
                };
                let sent = record.send(&node, image, part).await;
                if let (Err(BlobError::ControlPlane(status)), Some(key)) = (&sent, stored)
                    && matches!(
                        status.code(),
                        tonic::Code::Aborted | tonic::Code::FailedPrecondition
                    )
                {
                    // Refused, so never committed: the object is this writer's alone
                    // and no download will ever name it.
                    if let Err(e) = store.delete(&key).await {
                        tracing::warn!(key, error = %e, "could not delete a refused segment; collection will");
                    }
                }
                sent
            },
            span,
        )));
        Ok(())
    }

    /// The stream ended without finish_write: keep what arrived (sessions) or drop
    /// everything (one-shot uploads).
    pub async fn pause(mut self) -> BlobResult<u64> {
        if self.session.is_none() {
            self.discard().await;
            return Err(BlobError::InvalidArgument(
                "the stream ended before finish_write; a one-shot upload cannot continue (open an \
                 upload session to resume)"
                    .into(),
            ));
        }
        let outcome = self.commit().await;
        if let Some(open) = self.open.take() {
            let _ = open.writer.abort().await;
        }
        if let Some(session) = &self.session {
            let _ = self
                .node
                .registry()
                .release_write(ipb::ReleaseWriteRequest {
                    upload: session.clone(),
                    lease: self.lease.clone(),
                })
                .await;
        }
        outcome.map(|()| self.committed)
    }

    /// Gives up: records why (sessions) and deletes what this upload stored.
    pub async fn fail(mut self, error: &BlobError) {
        let _ = self.settle().await;
        if let Some(open) = self.open.take() {
            let _ = open.writer.abort().await;
        }
        if let Some(session) = &self.session {
            let _ = self
                .node
                .registry()
                .fail_write(ipb::FailWriteRequest {
                    upload: session.clone(),
                    lease: self.lease.clone(),
                    message: error.to_string(),
                })
                .await;
        }
        self.discard().await;
    }

    /// Deletes everything this upload stored (a commit in flight included).
    pub async fn discard(&mut self) {
        // A commit in flight may still be writing below the prefix.
        let _ = self.settle().await;
        if let Some(open) = self.open.take() {
            let _ = open.writer.abort().await;
        }
        let prefix = self.upload_prefix();
        // Copies to other target stores lie under the same prefix there.
        for name in &self.targets {
            let Ok(store) = self.node.stores.get(name) else {
                continue;
            };
            if let Err(e) = store.delete(&prefix).await {
                tracing::warn!(prefix, store = name, error = %e, "could not delete an abandoned upload's bytes; the collector retries");
            }
        }
    }

    /// finish_write: verify sizes and fingerprint, read the metadata, register.
    pub async fn finish(mut self) -> BlobResult<pb::Image> {
        match self.finish_inner().await {
            Ok(image) => Ok(image),
            Err(e) => {
                // Only verdicts on the bytes end the session; a passing fault of the
                // store or the control plane leaves it to be finished again. A
                // one-shot upload cannot be finished again: its bytes go.
                if self.session.is_none() || e.is_verdict() {
                    self.fail(&e).await;
                } else if matches!(e, BlobError::AlreadyExists(_)) {
                    self.discard().await;
                }
                Err(e)
            }
        }
    }

    async fn finish_inner(&mut self) -> BlobResult<pb::Image> {
        self.commit().await?;
        let total = self.pos;
        let fingerprint = hex::encode(self.image_hash.state().await?.finalize());
        let mut parts: Vec<(Role, u64, Option<String>)> = Vec::new();
        if self.split {
            let meta_size = self.metadata_size.ok_or_else(|| {
                BlobError::InvalidArgument(
                    "a split upload ended without end_of_metadata: send the metadata part, mark its \
                     end, then the rootfs"
                        .into(),
                )
            })?;
            let rootfs_size = total - meta_size;
            if rootfs_size == 0 {
                return Err(BlobError::InvalidArgument(
                    "the rootfs part is empty".into(),
                ));
            }
            self.check_declared(self.spec.rootfs_size, rootfs_size, "rootfs part")?;
            parts.push((Role::Metadata, meta_size, None));
            let rootfs_sha = hex::encode(self.part()?.state().await?.finalize());
            parts.push((Role::Rootfs, rootfs_size, Some(rootfs_sha)));
        } else {
            if total == 0 {
                return Err(BlobError::InvalidArgument("the upload is empty".into()));
            }
            self.check_declared(self.spec.metadata_size, total, "image")?;
            parts.push((Role::Unified, total, Some(fingerprint.clone())));
        }
        let expected = &self.spec.expected_fingerprint;
        if !expected.is_empty() && *expected != fingerprint {
            return Err(BlobError::DataLoss(format!(
                "fingerprints don't match: expected {expected}, received {fingerprint} after {total} bytes"
            )));
        }
        let mut objects = Vec::new();
        let mut start = 0;
        for (role, size, _) in &parts {
            let list = self.part_objects(start, start + size);
            self.store
                .seal_part(&self.prefix(*role), &list, *size)
                .await?;
            objects.push(list);
            start += size;
        }

        // The whole archive was walked as it arrived (every path, the compressed
        // stream to its checked end); here is what the walk found.
        let walked = self
            .walk
            .take()
            .ok_or_else(|| BlobError::Internal("an upload without its walk".into()))?
            .finish()
            .await?;
        let (scanned, image_type, rootfs_ext) = if self.split {
            let (scanned, meta_sha) = match (self.metadata_scan.take(), self.metadata_sha.clone()) {
                (Some(scanned), Some(sha)) => (scanned?, sha),
                // The metadata part ended on another node: read it again.
                _ => {
                    scan_metadata_part(
                        &self.store,
                        objects[0].clone(),
                        self.metadata_sha.clone(),
                        walk_limits(&self.node.config),
                    )
                    .await?
                }
            };
            parts[0].2 = Some(meta_sha);
            let Walked::Rootfs { head } = walked else {
                return Err(BlobError::Internal("the rootfs walk found an image".into()));
            };
            let format = Format::sniff(&head);
            // As LXD's client decides: a qcow2 rootfs makes a virtual-machine
            // image. A type the source declares must fit the file.
            let found = if format == Some(Format::Qcow2) {
                pb::ImageType::VirtualMachine
            } else {
                pb::ImageType::Container
            };
            let image_type = self.registration.image_type.unwrap_or(found);
            inspect_rootfs(image_type == pb::ImageType::VirtualMachine, &head)
                .map_err(ScanError::from)?;
            (
                scanned,
                image_type,
                format.map(Format::extension).unwrap_or(""),
            )
        } else {
            let scanned = walked.into_image()?;
            let image_type = match scanned.found_type {
                Some(FoundType::VirtualMachine) => pb::ImageType::VirtualMachine,
                _ => pb::ImageType::Container,
            };
            (scanned, image_type, "")
        };
        // An import's source knows what it serves (LXD takes simplestreams' item
        // type as it is); an upload has only its bytes to go by.
        let image_type = match self.registration.image_type {
            Some(declared) if declared != image_type => {
                return Err(BlobError::InvalidArgument(format!(
                    "the source says this is a {} image, but the tarball holds a {}",
                    declared.as_str_name(),
                    image_type.as_str_name()
                )));
            }
            _ => image_type,
        };

        let image_parts = parts
            .into_iter()
            .map(|(role, size, sha)| pb::ImagePart {
                role: role.pb() as i32,
                sha256: sha.unwrap_or_default(),
                size,
                storage_key: self.prefix(role),
                extension: match role {
                    Role::Rootfs => rootfs_ext.to_owned(),
                    Role::Unified | Role::Metadata => scanned.format.extension().to_owned(),
                },
            })
            .collect();
        let mut properties = scanned.metadata.properties.clone();
        for (k, v) in &self.spec.properties {
            if v.is_empty() {
                properties.remove(k);
            } else {
                properties.insert(k.clone(), v.clone());
            }
        }
        let mut candidate = crate::plugins::Candidate {
            fingerprint,
            vm: image_type == pb::ImageType::VirtualMachine,
            parts: image_parts,
            objects,
            properties,
        };
        if let Some(roles) = &self.registration.plugins_for {
            crate::plugins::run(
                &self.node,
                &self.store,
                &mut candidate,
                roles,
                &self.registration.operation,
            )
            .await?;
        }
        let crate::plugins::Candidate {
            fingerprint,
            parts: image_parts,
            objects,
            properties,
            ..
        } = candidate;
        // Verified copies in the other target stores, before anything is
        // registered.
        let copies = crate::replicate::replicate(
            &self.node,
            &self.store,
            &crate::replicate::parts_of(&image_parts, objects.clone()),
            &self.targets[1..],
            &|_| {},
        )
        .await?;
        if self.must_succeed && !copies.failed.is_empty() {
            return Err(BlobError::Unavailable(format!(
                "the image could not be stored in every store asked for ({}); nothing was kept \
                 (with all_stores_must_succeed false it is kept where it could be stored)",
                copies
                    .failed
                    .iter()
                    .map(|f| format!("{}: {}", f.store, f.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let mut stores = vec![self.targets[0].clone()];
        stores.extend(copies.stored);
        let reply = self
            .node
            .registry()
            .register_content(ipb::RegisterContentRequest {
                fingerprint: fingerprint.clone(),
                r#type: image_type as i32,
                architecture: scanned.metadata.architecture.clone(),
                filename: self.spec.filename.clone(),
                layout: if self.split {
                    pb::ImageLayout::Split
                } else {
                    pb::ImageLayout::Unified
                } as i32,
                parts: image_parts,
                properties: properties.into_iter().collect(),
                public: self.spec.public,
                create_time: Some(prost_types::Timestamp {
                    seconds: scanned.metadata.creation_date,
                    nanos: 0,
                }),
                expire_time: scanned
                    .metadata
                    .expiry_date
                    .map(|s| prost_types::Timestamp {
                        seconds: s,
                        nanos: 0,
                    }),
                aliases: self.spec.aliases.clone(),
                upload: self.session.clone().unwrap_or_default(),
                operation: self.registration.operation.clone(),
                replaces: self.registration.replaces.clone(),
                update_source: self.registration.update_source.clone(),
                auto_update: self.registration.auto_update,
                cached: self.registration.cached,
                stores,
                failed_stores: copies.failed,
                objects: objects
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
                    .collect(),
            })
            .await
            .map_err(|s| match s.code() {
                // A verdict on what the image says of itself: the session ends
                // now and its bytes go, rather than waiting for upload_ttl.
                tonic::Code::InvalidArgument => BlobError::InvalidArgument(format!(
                    "the control plane refused the image's metadata (metadata.yaml, with the \
                     upload's properties): {}",
                    s.message()
                )),
                _ => BlobError::from(s),
            })?
            .into_inner();
        if !reply.created {
            return Err(BlobError::AlreadyExists(format!(
                "Image with same fingerprint already exists: {fingerprint}"
            )));
        }
        if !reply.skipped_aliases.is_empty() {
            tracing::warn!(fingerprint, skipped = ?reply.skipped_aliases, "aliases taken; not moved");
        }
        tracing::info!(fingerprint, size = total, "image registered");
        reply
            .image
            .ok_or_else(|| BlobError::Internal("the control plane registered no image".into()))
    }

    fn check_declared(&self, declared: u64, received: u64, what: &str) -> BlobResult<()> {
        if declared > 0 && declared != received {
            return Err(BlobError::InvalidArgument(format!(
                "the {what} was declared as {declared} bytes but {received} were received"
            )));
        }
        Ok(())
    }
}

/// A commit to tell the control plane about, once its segment is durable.
struct Record {
    upload: String,
    lease: String,
    segment: ipb::Segment,
    metadata_size: u64,
}

impl Record {
    /// Records the segment with the hash states at its end; the committed size.
    async fn send(
        self,
        node: &NodeContext,
        image: PendingState,
        part: Option<PendingState>,
    ) -> BlobResult<u64> {
        let part = match part {
            Some(p) => save(&p.get().await?),
            None => Bytes::new(),
        };
        let reply = node
            .registry()
            .commit_segment(ipb::CommitSegmentRequest {
                upload: self.upload,
                lease: self.lease,
                segment: Some(self.segment),
                hash_state: Some(ipb::HashState {
                    image: save(&image.get().await?),
                    part,
                }),
                metadata_size: self.metadata_size,
            })
            .await?
            .into_inner();
        Ok(reply.committed_size)
    }
}

/// How far a walk may decompress: the node's scan budget, or 64 times what
/// it read when that is more.
fn walk_limits(config: &crate::NodeLimits) -> ScanLimits {
    ScanLimits::whole_archive(config.scan_budget_bytes)
}

/// A fresh name for one writer's objects.
pub(crate) fn writer_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Scans the stored metadata part, and hashes it unless this node saw it whole.
async fn scan_metadata_part(
    store: &imagestore_store::BlobStore,
    objects: Vec<StoredSegment>,
    known: Option<String>,
    limits: ScanLimits,
) -> BlobResult<(Scanned, String)> {
    let reader = store.blocking_reader(objects);
    tokio::task::spawn_blocking(move || -> BlobResult<(Scanned, String)> {
        let mut tee = HashingReader {
            inner: reader,
            hash: Sha256::new(),
        };
        let scanned = scan_tarball(&mut tee, false, limits)?;
        let sha = match known {
            Some(sha) => sha,
            None => {
                std::io::copy(&mut tee, &mut std::io::sink())
                    .map_err(|e| BlobError::Internal(format!("reading metadata: {e}")))?;
                hex::encode(tee.hash.finalize())
            }
        };
        Ok((scanned, sha))
    })
    .await
    .map_err(|e| BlobError::Internal(format!("scan task: {e}")))?
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}
