//! The named stores this node reaches, and which one a read or a write uses.

use std::collections::BTreeMap;
use std::sync::RwLock;

use imagestore_proto::internal::v1 as ipb;
use imagestore_store::BlobStore;

use crate::error::BlobError;

/// The stores this node opened, by name, and what the control plane said of
/// the cluster (its default store, its import plugins).
pub struct NodeStores {
    by_name: BTreeMap<String, BlobStore>,
    settings: RwLock<ipb::ClusterSettings>,
}

impl NodeStores {
    pub fn new(by_name: BTreeMap<String, BlobStore>) -> Self {
        Self {
            by_name,
            settings: RwLock::default(),
        }
    }

    /// The names, as announced to the control plane.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &BlobStore)> {
        self.by_name.iter()
    }

    /// Keeps what the control plane said on registration or a heartbeat.
    pub fn set_settings(&self, settings: ipb::ClusterSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    pub fn settings(&self) -> ipb::ClusterSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cluster's default store; before the control plane said, this
    /// node's only store.
    pub fn default_name(&self) -> String {
        let said = self.settings().default_store;
        if !said.is_empty() {
            return said;
        }
        self.by_name.keys().next().cloned().unwrap_or_default()
    }

    /// The store named `name`, for writing.
    pub fn get(&self, name: &str) -> Result<&BlobStore, BlobError> {
        self.by_name.get(name).ok_or_else(|| {
            BlobError::FailedPrecondition(format!(
                "this blob node does not reach store {name:?} (it reaches {}): send the \
                 request through the control plane, which picks a node that does",
                self.names().join(", ")
            ))
        })
    }

    /// Where to read an image held in `held`: the first of them this node
    /// reaches (an image recorded in no store is in the default one).
    pub fn reading(&self, held: &[String]) -> Result<(String, &BlobStore), BlobError> {
        if held.is_empty() {
            let name = self.default_name();
            return Ok((name.clone(), self.get(&name)?));
        }
        held.iter()
            .find_map(|name| self.by_name.get(name).map(|s| (name.clone(), s)))
            .ok_or_else(|| {
                BlobError::FailedPrecondition(format!(
                    "the image is in {}, none of which this blob node reaches (it reaches {}): \
                     ask the control plane again for a node that does",
                    held.join(", "),
                    self.names().join(", ")
                ))
            })
    }
}
