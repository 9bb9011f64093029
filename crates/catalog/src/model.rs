//! The records the catalog stores. Plain data: no gRPC, no SQL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch; i64 reaches the year 2262.
pub type UnixNanos = i64;

/// The time now as [`UnixNanos`].
pub fn now() -> UnixNanos {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The name stored in the database and shown to people.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// The inverse of [`Self::as_str`].
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(
    /// Container or virtual machine, as LXD's image `type`.
    ImageType { Container = "container", VirtualMachine = "virtual-machine" }
);
text_enum!(
    /// One file or two.
    Layout { Unified = "unified", Split = "split" }
);
text_enum!(
    /// What one stored file is within an image.
    PartRole { Unified = "unified", Metadata = "metadata", Rootfs = "rootfs" }
);
text_enum!(
    /// Where an upload session is in its life.
    UploadState {
        Open = "OPEN",
        Complete = "COMPLETE",
        Cancelled = "CANCELLED",
        Failed = "FAILED",
    }
);
text_enum!(
    /// Where an operation is in its life.
    OperationState {
        Queued = "QUEUED",
        Running = "RUNNING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);

impl OperationState {
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One stored file of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub role: PartRole,
    pub sha256: String,
    pub size: u64,
    pub storage_key: String,
    pub extension: String,
}

/// Where an image came from (LXD's `update_source`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateSource {
    pub server: String,
    pub protocol: String,
    pub alias: String,
    pub certificate: String,
    pub image_type: Option<ImageType>,
}

/// An alias as seen from its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRef {
    pub name: String,
    pub description: String,
}

/// An image record with its parts and aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub fingerprint: String,
    pub image_type: ImageType,
    pub architecture: String,
    pub size: u64,
    pub filename: String,
    pub layout: Layout,
    pub parts: Vec<Part>,
    pub properties: BTreeMap<String, String>,
    pub public: bool,
    pub auto_update: bool,
    pub cached: bool,
    pub created_at: Option<UnixNanos>,
    pub uploaded_at: UnixNanos,
    pub last_used_at: Option<UnixNanos>,
    pub expires_at: Option<UnixNanos>,
    pub update_source: Option<UpdateSource>,
    pub aliases: Vec<AliasRef>,
    /// What a verification found wrong with the stored bytes; None while sound.
    pub damage: Option<Damage>,
    /// The stores holding a verified copy of every part.
    pub stores: Vec<String>,
    /// Stores a copy failed to reach (Glance's os_glance_failed_import).
    pub failed_stores: Vec<FailedStore>,
}

/// A store a copy of an image failed to reach, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedStore {
    pub store: String,
    pub message: String,
}

/// A key (or a prefix ending in "/") released in one store; an empty store
/// means every store (released before stores had names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleasedKey {
    pub store: String,
    pub key: String,
}

/// Which stores a queued import needs a node to reach: all of `all` (where it
/// writes) and one of `any` (where it reads, for a copy), when not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreNeeds {
    #[serde(default)]
    pub all: Vec<String>,
    #[serde(default)]
    pub any: Vec<String>,
    /// A copy between stores: the image it copies (one at a time per image,
    /// since a copy that fails removes what it wrote under the image's keys).
    #[serde(default)]
    pub copy_of: Option<String>,
}

impl StoreNeeds {
    /// Whether a node reaching `reach` can do the work.
    pub fn met_by(&self, reach: &[String]) -> bool {
        self.all.iter().all(|s| reach.contains(s))
            && (self.any.is_empty() || self.any.iter().any(|s| reach.contains(s)))
    }
}

/// What a verification found wrong with a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// The damaged part's role ("unified", "metadata", "rootfs").
    pub part: String,
    pub expected_sha256: String,
    pub expected_size: u64,
    /// Empty when the part could not be read whole (an object is missing).
    pub found_sha256: String,
    pub found_size: u64,
    pub detected_at: UnixNanos,
    pub message: String,
}

impl Image {
    /// A digest of the editable fields, as LXD's image ETag (public, auto_update,
    /// properties), plus expires_at which we also let callers edit.
    pub fn etag(&self) -> String {
        use sha2::{Digest, Sha256};
        let doc = serde_json::json!([
            self.public,
            self.auto_update,
            self.properties,
            self.expires_at
        ]);
        hex::encode(&Sha256::digest(doc.to_string().as_bytes())[..16])
    }
}

/// What a verified upload or import asks to register.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub fingerprint: String,
    pub image_type: ImageType,
    pub architecture: String,
    pub filename: String,
    pub layout: Layout,
    pub parts: Vec<Part>,
    /// The objects each part is stored as, one entry per part.
    pub objects: Vec<Vec<StoredObject>>,
    pub properties: BTreeMap<String, String>,
    pub public: bool,
    pub auto_update: bool,
    pub cached: bool,
    pub created_at: Option<UnixNanos>,
    pub expires_at: Option<UnixNanos>,
    pub update_source: Option<UpdateSource>,
    pub aliases: Vec<AliasRef>,
    /// The stores the verified parts were written to; the first is where the
    /// upload or import wrote.
    pub stores: Vec<String>,
    pub failed_stores: Vec<FailedStore>,
}

/// What RegisterContent did.
#[derive(Debug, Clone)]
pub struct Registered {
    pub image: Image,
    pub created: bool,
    pub skipped_aliases: Vec<String>,
}

/// A change to an image's editable fields; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct ImageEdit {
    pub public: Option<bool>,
    pub auto_update: Option<bool>,
    /// Replace the whole property map.
    pub properties: Option<BTreeMap<String, String>>,
    /// Set (Some) or remove (None) single keys, after `properties`.
    pub property_changes: Vec<(String, Option<String>)>,
    pub expires_at: Option<UnixNanos>,
    /// Refuse the edit unless the current etag is this.
    pub if_etag: Option<String>,
}

/// An alias record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub name: String,
    pub target: String,
    pub description: String,
    pub image_type: ImageType,
    pub created_at: UnixNanos,
    pub updated_at: UnixNanos,
}

/// A blob node as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub node_id: String,
    pub address: String,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub active_transfers: u32,
    pub reports_healthy: bool,
    pub version: String,
    pub registered_at: UnixNanos,
    pub last_heartbeat_at: UnixNanos,
    /// The named stores it reaches.
    pub stores: Vec<String>,
}

/// An operation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub id: String,
    pub description: String,
    pub state: OperationState,
    pub stage: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_per_second: u64,
    pub error: Option<(i32, String)>,
    pub image: String,
    pub metadata: BTreeMap<String, String>,
    pub may_cancel: bool,
    pub created_at: UnixNanos,
    pub updated_at: UnixNanos,
}

/// What a client declared it will upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSpec {
    pub layout: Option<Layout>,
    pub expected_fingerprint: String,
    pub metadata_size: u64,
    pub rootfs_size: u64,
    pub filename: String,
    pub public: bool,
    pub aliases: Vec<(String, String)>,
    pub properties: BTreeMap<String, String>,
    /// Where the image goes, explicit (the control plane resolves defaults);
    /// empty for sessions opened before stores had names.
    #[serde(default)]
    pub stores: Vec<String>,
    /// A store that fails fails the upload (else it is listed on the image).
    #[serde(default = "yes")]
    pub all_stores_must_succeed: bool,
}

fn yes() -> bool {
    true
}

/// A stored piece of a staged upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Offset of its first byte in the image's byte stream.
    pub start: u64,
    pub length: u64,
    pub storage_key: String,
}

/// SHA-256 states (sha2's serialised form) at a committed offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashState {
    pub image: Vec<u8>,
    pub part: Vec<u8>,
}

/// An upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub spec: UploadSpec,
    pub state: UploadState,
    pub committed_size: u64,
    /// Split images: the metadata part's size once its end was committed; 0 before.
    pub metadata_size: u64,
    pub hash_state: HashState,
    pub lease: Option<String>,
    pub fingerprint: Option<String>,
    pub error_message: Option<String>,
    pub created_at: UnixNanos,
    pub expires_at: UnixNanos,
    pub segments: Vec<Segment>,
}

impl Upload {
    /// The object-store prefix under which this upload's bytes live.
    pub fn storage_prefix(&self) -> String {
        upload_prefix(&self.id)
    }
}

pub use imagestore_store::StoredSegment as StoredObject;
pub use imagestore_store::layout::upload_prefix;
