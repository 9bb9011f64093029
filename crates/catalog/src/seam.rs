//! The catalog's seam: what the control plane asks of its metadata, use case by
//! use case (register an image, resolve a name, list with a filter and a page
//! token, open, commit and finish an upload, claim an import, ...). One adapter
//! implementation, [`Store`], runs the same logic on either engine (SQLite or
//! PostgreSQL, `crate::engine`). Services hold a [`Catalog`] and never know
//! which database answers.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::Store;
use crate::aliases::AliasEdit;
use crate::engine::postgres::Postgres;
use crate::engine::sqlite::Sqlite;
use crate::error::Result;
use crate::filter::ImageFilter;
use crate::images::{Completes, ImageRef};
use crate::imports::{ImportJob, Importer};
use crate::model::*;
use crate::nodes::NodeAnnouncement;
use crate::operations::OperationUpdate;
use crate::page::{Page, PageRequest};
use crate::scrub::{ScrubJob, ScrubOutcome};
use crate::trust::{TrustEntry, TrustKind};
use crate::uploads::SegmentCommit;

/// What every catalog adapter answers.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Creates an alias to an existing image.
    async fn create_alias(
        &self,
        name: String,
        target: String,
        description: String,
    ) -> Result<Alias>;
    /// Returns an alias; with `image_type`, only if its target has that type.
    async fn get_alias(
        &self,
        name: String,
        image_type: Option<ImageType>,
        public_only: bool,
    ) -> Result<Alias>;
    /// One page of aliases in name order whose names contain every word of
    /// `filter`.
    async fn list_aliases(
        &self,
        filter: String,
        page: PageRequest,
        public_only: bool,
    ) -> Result<Page<Alias>>;
    /// Retargets and/or re-describes an alias.
    async fn update_alias(&self, name: String, edit: AliasEdit) -> Result<Alias>;
    /// Renames an alias; the new name must be free.
    async fn rename_alias(&self, name: String, new_name: String) -> Result<Alias>;
    /// Deletes an alias (not its image).
    async fn delete_alias(&self, name: String) -> Result<()>;
    /// Resolves `what` and loads the whole record; `public_only` hides private
    /// images (they read as not found).
    async fn get_image(&self, what: ImageRef, public_only: bool) -> Result<Image>;
    /// The objects each part of an image is stored as, one list per part in
    /// part order; empty lists for an image registered before they were kept.
    async fn part_objects(&self, fingerprint: String) -> Result<Vec<Vec<StoredObject>>>;
    /// Registers verified content; idempotent by fingerprint. Aliases whose names
    /// are taken are skipped, not moved. In the same transaction: the upload
    /// session it completes becomes COMPLETE (or FAILED, when the fingerprint was
    /// registered already); the import operation it completes SUCCEEDED (with the
    /// record found, when it existed), unless it was cancelled, when nothing is
    /// registered; the image a refresh replaces hands over its aliases and goes.
    async fn register_image(&self, new: NewImage, completes: Completes) -> Result<Registered>;
    /// Changes editable fields and returns the new record.
    async fn update_image(&self, what: ImageRef, edit: ImageEdit) -> Result<Image>;
    /// Deletes an image and its aliases. Returns the record as it was and the
    /// storage keys no other image refers to any more (their bytes may go).
    async fn delete_image(&self, what: ImageRef) -> Result<(Image, Vec<String>)>;
    /// One page of images in fingerprint order that match `filter`.
    async fn list_images(
        &self,
        filter: ImageFilter,
        page: PageRequest,
        public_only: bool,
    ) -> Result<Page<Image>>;
    /// A number that changes whenever what clients see of any image changes
    /// (records, parts, aliases), in this process or another.
    async fn images_version(&self) -> Result<u64>;
    /// Every image (public ones only, with `public_only`) with its parts and
    /// aliases, in fingerprint order, and the [`Self::images_version`] they are
    /// as of: for documents that describe the whole catalog.
    async fn all_images(&self, public_only: bool) -> Result<(u64, Vec<Image>)>;
    /// Storage keys (and prefixes ending in "/") released in one of `stores` (or
    /// in every store) and not yet collected, oldest first.
    async fn released_content(&self, stores: Vec<String>, limit: usize)
    -> Result<Vec<ReleasedKey>>;
    /// Forgets released keys whose bytes were deleted.
    async fn forget_released(&self, keys: Vec<ReleasedKey>) -> Result<()>;
    /// Gives images registered before stores had names the default store.
    async fn adopt_into_store(&self, store: String) -> Result<usize>;
    /// Which of `stores` still have bytes of `keys` waiting to be collected.
    async fn releases_pending(&self, stores: Vec<String>, keys: Vec<String>)
    -> Result<Vec<String>>;
    /// Records new copies (and failed ones) of an image, completing the copy
    /// operation; nothing is recorded when it was cancelled.
    async fn add_locations(
        &self,
        fingerprint: String,
        stores: Vec<String>,
        failed: Vec<FailedStore>,
        operation: Option<String>,
    ) -> Result<Image>;
    /// Removes an image from one store while another keeps it.
    async fn remove_location(&self, what: ImageRef, store: String) -> Result<Image>;
    /// Queues an import. A refresh of an image that has one queued or running
    /// already returns that operation instead of a second one.
    async fn create_import(
        &self,
        description: String,
        request: Vec<u8>,
        replaces: Option<String>,
        needs: StoreNeeds,
        importer: Importer,
    ) -> Result<Operation>;
    /// Hands the oldest queued import a node reaching `reach` can do to
    /// `node_id` and marks it RUNNING.
    async fn claim_import(&self, node_id: String, reach: Vec<String>) -> Result<Option<ImportJob>>;
    /// A claimant's report. Returns the operation as it is now: a done one tells
    /// the node to stop (it was cancelled, or timed out).
    async fn report_import(
        &self,
        id: String,
        node_id: String,
        update: crate::OperationUpdate,
        existing_image: Option<(String, Vec<AliasRef>)>,
    ) -> Result<Operation>;
    /// Ends imports whose node went quiet for `silent_for` (FAILED), and releases
    /// the bytes of failed or cancelled imports once their node has had that long
    /// to delete them itself. Returns how many imports were ended.
    async fn collect_imports(&self, silent_for: Duration) -> Result<usize>;
    /// Images that follow an alias on their source and have no refresh under way.
    async fn images_to_refresh(&self) -> Result<Vec<Image>>;
    /// Deletes cached images not used (exported) for `unused_for`, LXD's
    /// `images.remote_cache_expiry`. Returns their fingerprints.
    async fn expire_cached_images(&self, unused_for: Duration) -> Result<Vec<String>>;
    /// Records that an image was used (exported) now.
    async fn touch_image(&self, fingerprint: String) -> Result<()>;
    /// Records a node, or refreshes it when the same id registers again.
    async fn register_node(&self, n: NodeAnnouncement) -> Result<Node>;
    /// Records a heartbeat. NotFound when the node never registered.
    async fn heartbeat(
        &self,
        node_id: String,
        available_bytes: u64,
        active_transfers: u32,
        healthy: bool,
    ) -> Result<Node>;
    /// Every known node, by id.
    async fn list_nodes(&self) -> Result<Vec<Node>>;
    /// Records a new QUEUED operation.
    async fn create_operation(&self, description: String, may_cancel: bool) -> Result<Operation>;
    /// Returns one operation.
    async fn get_operation(&self, id: String) -> Result<Operation>;
    /// Applies a worker's report. A finished operation does not change any more
    /// (FailedPrecondition), so a late report cannot revive a cancelled one.
    async fn update_operation(&self, id: String, update: OperationUpdate) -> Result<Operation>;
    /// Marks an operation CANCELLED. FailedPrecondition when it is done already or
    /// cannot be cancelled.
    async fn cancel_operation(&self, id: String) -> Result<Operation>;
    /// One page of operations, newest first; `done` filters on completion.
    async fn list_operations(
        &self,
        state: Option<OperationState>,
        done: Option<bool>,
        page: PageRequest,
    ) -> Result<Page<Operation>>;
    /// Queues a verification of an image and returns the operation that tracks it.
    async fn create_verification(&self, what: ImageRef) -> Result<Operation>;
    /// Hands `node_id` an image to verify for at most `claim_for`: a
    /// verification asked for (one whose claimant went quiet is handed out
    /// again); or, with `background`, the image verified longest ago (never
    /// verified first) if that was more than `every` ago. The two are claimed
    /// apart, so that one asked for never waits behind paced background work.
    async fn claim_scrub(
        &self,
        node_id: String,
        reach: Vec<String>,
        background: bool,
        every: Duration,
        claim_for: Duration,
    ) -> Result<Option<ScrubJob>>;
    /// Records what verifying `fingerprint` found, and finishes the operation of
    /// a verification asked for.
    async fn report_scrub(
        &self,
        fingerprint: String,
        operation: Option<String>,
        outcome: ScrubOutcome,
    ) -> Result<()>;
    /// Stores a secret (by hash) for the image `what` names; returns the image and
    /// when the secret expires.
    async fn create_image_secret(
        &self,
        what: ImageRef,
        secret_hash: String,
        ttl: Duration,
    ) -> Result<(Image, UnixNanos)>;
    /// The image `what` names, as an untrusted caller holding `secret_hash` may
    /// see it; the secret stays usable.
    async fn get_image_with_secret(&self, what: ImageRef, secret_hash: String) -> Result<Image>;
    /// As [`Catalog::get_image_with_secret`], and uses the secret up: it opens
    /// nothing after this.
    async fn use_image_secret(&self, what: ImageRef, secret_hash: String) -> Result<Image>;
    /// Adds a credential; ALREADY_EXISTS when its fingerprint is trusted already.
    async fn add_trust(
        &self,
        kind: TrustKind,
        description: String,
        fingerprint: String,
        expires_at: Option<UnixNanos>,
    ) -> Result<TrustEntry>;
    /// Every entry, oldest first.
    async fn list_trust(&self) -> Result<Vec<TrustEntry>>;
    /// Removes an entry by id and returns its fingerprint; NOT_FOUND when there
    /// is none.
    async fn remove_trust(&self, id: String) -> Result<String>;
    /// Opens a session that expires `ttl` after its last activity.
    async fn create_upload(&self, spec: UploadSpec, ttl: std::time::Duration) -> Result<Upload>;
    /// Returns a session.
    async fn get_upload(&self, id: String) -> Result<Upload>;
    /// Abandons an open session and releases its staged bytes.
    async fn cancel_upload(&self, id: String) -> Result<Upload>;
    /// Claims an open session for one stream and returns it with a fresh lease. A
    /// newer claim supersedes an older one (whose next commit is then ABORTED), so
    /// that a client can continue at once on another node after one died.
    async fn open_write(&self, id: String, ttl: std::time::Duration) -> Result<(Upload, String)>;
    /// Records a stored segment; committed_size moves to its end.
    async fn commit_segment(
        &self,
        id: String,
        lease: String,
        commit: SegmentCommit,
        ttl: std::time::Duration,
    ) -> Result<u64>;
    /// Ends a session that cannot complete and records why.
    async fn fail_upload(&self, id: String, lease: String, message: String) -> Result<()>;
    /// Lets go of a claim without ending the session.
    async fn release_write(&self, id: String, lease: String) -> Result<()>;
    /// Deletes sessions past their expiry and releases their staged bytes; returns
    /// how many went.
    async fn expire_uploads(&self) -> Result<usize>;

    /// Moves with every change to the trust store, whoever made it.
    async fn trust_version(&self) -> Result<u64>;

    /// The cluster-wide secret `name`: the one stored already, or `value`,
    /// stored now (the first replica to start decides for all).
    async fn adopt_secret(&self, name: String, value: String) -> Result<String>;

    /// Whether this process should run the periodic `job` now (once per
    /// `every` across every process serving the catalog).
    async fn take_turn(&self, job: String, every: Duration) -> Result<bool>;

    /// Moves whenever an operation changes, so that long polls wake without
    /// polling the database.
    fn watch_operations(&self) -> watch::Receiver<u64>;
}

/// The catalog a service holds: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Catalog(Arc<dyn Backend>);

impl Deref for Catalog {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Catalog {
    /// Opens (creating if needed) the SQLite catalog at `path` and migrates it.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self(Arc::new(Store::new(Sqlite::open(path).await?))))
    }

    /// Connects to the PostgreSQL catalog `url` names and migrates it.
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        Ok(Self(Arc::new(Store::new(Postgres::connect(url).await?))))
    }
}

#[async_trait::async_trait]
impl Backend for Store {
    async fn create_alias(
        &self,
        name: String,
        target: String,
        description: String,
    ) -> Result<Alias> {
        Store::create_alias(self, name, target, description).await
    }

    async fn get_alias(
        &self,
        name: String,
        image_type: Option<ImageType>,
        public_only: bool,
    ) -> Result<Alias> {
        Store::get_alias(self, name, image_type, public_only).await
    }

    async fn list_aliases(
        &self,
        filter: String,
        page: PageRequest,
        public_only: bool,
    ) -> Result<Page<Alias>> {
        Store::list_aliases(self, filter, page, public_only).await
    }

    async fn update_alias(&self, name: String, edit: AliasEdit) -> Result<Alias> {
        Store::update_alias(self, name, edit).await
    }

    async fn rename_alias(&self, name: String, new_name: String) -> Result<Alias> {
        Store::rename_alias(self, name, new_name).await
    }

    async fn delete_alias(&self, name: String) -> Result<()> {
        Store::delete_alias(self, name).await
    }

    async fn get_image(&self, what: ImageRef, public_only: bool) -> Result<Image> {
        Store::get_image(self, what, public_only).await
    }

    async fn part_objects(&self, fingerprint: String) -> Result<Vec<Vec<StoredObject>>> {
        Store::part_objects(self, fingerprint).await
    }

    async fn register_image(&self, new: NewImage, completes: Completes) -> Result<Registered> {
        Store::register_image(self, new, completes).await
    }

    async fn update_image(&self, what: ImageRef, edit: ImageEdit) -> Result<Image> {
        Store::update_image(self, what, edit).await
    }

    async fn delete_image(&self, what: ImageRef) -> Result<(Image, Vec<String>)> {
        Store::delete_image(self, what).await
    }

    async fn list_images(
        &self,
        filter: ImageFilter,
        page: PageRequest,
        public_only: bool,
    ) -> Result<Page<Image>> {
        Store::list_images(self, filter, page, public_only).await
    }

    async fn images_version(&self) -> Result<u64> {
        Store::images_version(self).await
    }

    async fn all_images(&self, public_only: bool) -> Result<(u64, Vec<Image>)> {
        Store::all_images(self, public_only).await
    }

    async fn released_content(
        &self,
        stores: Vec<String>,
        limit: usize,
    ) -> Result<Vec<ReleasedKey>> {
        Store::released_content(self, stores, limit).await
    }

    async fn forget_released(&self, keys: Vec<ReleasedKey>) -> Result<()> {
        Store::forget_released(self, keys).await
    }

    async fn adopt_into_store(&self, store: String) -> Result<usize> {
        Store::adopt_into_store(self, store).await
    }

    async fn releases_pending(
        &self,
        stores: Vec<String>,
        keys: Vec<String>,
    ) -> Result<Vec<String>> {
        Store::releases_pending(self, stores, keys).await
    }

    async fn add_locations(
        &self,
        fingerprint: String,
        stores: Vec<String>,
        failed: Vec<FailedStore>,
        operation: Option<String>,
    ) -> Result<Image> {
        Store::add_locations(self, fingerprint, stores, failed, operation).await
    }

    async fn remove_location(&self, what: ImageRef, store: String) -> Result<Image> {
        Store::remove_location(self, what, store).await
    }

    async fn create_import(
        &self,
        description: String,
        request: Vec<u8>,
        replaces: Option<String>,
        needs: StoreNeeds,
        importer: Importer,
    ) -> Result<Operation> {
        Store::create_import(self, description, request, replaces, needs, importer).await
    }

    async fn claim_import(&self, node_id: String, reach: Vec<String>) -> Result<Option<ImportJob>> {
        Store::claim_import(self, node_id, reach).await
    }

    async fn report_import(
        &self,
        id: String,
        node_id: String,
        update: crate::OperationUpdate,
        existing_image: Option<(String, Vec<AliasRef>)>,
    ) -> Result<Operation> {
        Store::report_import(self, id, node_id, update, existing_image).await
    }

    async fn collect_imports(&self, silent_for: Duration) -> Result<usize> {
        Store::collect_imports(self, silent_for).await
    }

    async fn images_to_refresh(&self) -> Result<Vec<Image>> {
        Store::images_to_refresh(self).await
    }

    async fn expire_cached_images(&self, unused_for: Duration) -> Result<Vec<String>> {
        Store::expire_cached_images(self, unused_for).await
    }

    async fn touch_image(&self, fingerprint: String) -> Result<()> {
        Store::touch_image(self, fingerprint).await
    }

    async fn register_node(&self, n: NodeAnnouncement) -> Result<Node> {
        Store::register_node(self, n).await
    }

    async fn heartbeat(
        &self,
        node_id: String,
        available_bytes: u64,
        active_transfers: u32,
        healthy: bool,
    ) -> Result<Node> {
        Store::heartbeat(self, node_id, available_bytes, active_transfers, healthy).await
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        Store::list_nodes(self).await
    }

    async fn create_operation(&self, description: String, may_cancel: bool) -> Result<Operation> {
        Store::create_operation(self, description, may_cancel).await
    }

    async fn get_operation(&self, id: String) -> Result<Operation> {
        Store::get_operation(self, id).await
    }

    async fn update_operation(&self, id: String, update: OperationUpdate) -> Result<Operation> {
        Store::update_operation(self, id, update).await
    }

    async fn cancel_operation(&self, id: String) -> Result<Operation> {
        Store::cancel_operation(self, id).await
    }

    async fn list_operations(
        &self,
        state: Option<OperationState>,
        done: Option<bool>,
        page: PageRequest,
    ) -> Result<Page<Operation>> {
        Store::list_operations(self, state, done, page).await
    }

    async fn create_verification(&self, what: ImageRef) -> Result<Operation> {
        Store::create_verification(self, what).await
    }

    async fn claim_scrub(
        &self,
        node_id: String,
        reach: Vec<String>,
        background: bool,
        every: Duration,
        claim_for: Duration,
    ) -> Result<Option<ScrubJob>> {
        Store::claim_scrub(self, node_id, reach, background, every, claim_for).await
    }

    async fn report_scrub(
        &self,
        fingerprint: String,
        operation: Option<String>,
        outcome: ScrubOutcome,
    ) -> Result<()> {
        Store::report_scrub(self, fingerprint, operation, outcome).await
    }

    async fn create_image_secret(
        &self,
        what: ImageRef,
        secret_hash: String,
        ttl: Duration,
    ) -> Result<(Image, UnixNanos)> {
        Store::create_image_secret(self, what, secret_hash, ttl).await
    }

    async fn get_image_with_secret(&self, what: ImageRef, secret_hash: String) -> Result<Image> {
        Store::get_image_with_secret(self, what, secret_hash).await
    }

    async fn use_image_secret(&self, what: ImageRef, secret_hash: String) -> Result<Image> {
        Store::use_image_secret(self, what, secret_hash).await
    }

    async fn add_trust(
        &self,
        kind: TrustKind,
        description: String,
        fingerprint: String,
        expires_at: Option<UnixNanos>,
    ) -> Result<TrustEntry> {
        Store::add_trust(self, kind, description, fingerprint, expires_at).await
    }

    async fn list_trust(&self) -> Result<Vec<TrustEntry>> {
        Store::list_trust(self).await
    }

    async fn remove_trust(&self, id: String) -> Result<String> {
        Store::remove_trust(self, id).await
    }

    async fn create_upload(&self, spec: UploadSpec, ttl: std::time::Duration) -> Result<Upload> {
        Store::create_upload(self, spec, ttl).await
    }

    async fn get_upload(&self, id: String) -> Result<Upload> {
        Store::get_upload(self, id).await
    }

    async fn cancel_upload(&self, id: String) -> Result<Upload> {
        Store::cancel_upload(self, id).await
    }

    async fn open_write(&self, id: String, ttl: std::time::Duration) -> Result<(Upload, String)> {
        Store::open_write(self, id, ttl).await
    }

    async fn commit_segment(
        &self,
        id: String,
        lease: String,
        commit: SegmentCommit,
        ttl: std::time::Duration,
    ) -> Result<u64> {
        Store::commit_segment(self, id, lease, commit, ttl).await
    }

    async fn fail_upload(&self, id: String, lease: String, message: String) -> Result<()> {
        Store::fail_upload(self, id, lease, message).await
    }

    async fn release_write(&self, id: String, lease: String) -> Result<()> {
        Store::release_write(self, id, lease).await
    }

    async fn expire_uploads(&self) -> Result<usize> {
        Store::expire_uploads(self).await
    }

    async fn trust_version(&self) -> Result<u64> {
        Store::trust_version(self).await
    }

    async fn adopt_secret(&self, name: String, value: String) -> Result<String> {
        Store::adopt_secret(self, name, value).await
    }

    async fn take_turn(&self, job: String, every: Duration) -> Result<bool> {
        Store::take_turn(self, job, every).await
    }

    fn watch_operations(&self) -> watch::Receiver<u64> {
        Store::watch_operations(self)
    }
}
