//! The cluster's named stores: which exist, which is the default, and where an
//! upload, import or copy goes (Glance's `stores`, `all_stores`,
//! `all_stores_must_succeed`). Also what every blob node is told of the
//! cluster's configuration.

use std::sync::Arc;

use imagestore_proto::internal::v1 as ipb;
use imagestore_proto::v1 as pb;
use imagestore_store::check_store_name;

use crate::config::ControlPlaneConfig;
use crate::error::{ApiResult, invalid};

/// Where a request writes: explicit store names, the first being where the
/// bytes land first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub stores: Vec<String>,
    pub must_succeed: bool,
}

/// The configured stores and what nodes must know.
#[derive(Debug, Clone)]
pub struct Stores(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    names: Vec<String>,
    default: String,
    settings: ipb::ClusterSettings,
}

impl Stores {
    /// Checks the configuration's stores and plugins.
    pub fn from_config(config: &ControlPlaneConfig) -> Result<Self, String> {
        let mut names = Vec::new();
        for name in &config.stores {
            check_store_name(name).map_err(|e| format!("stores: {e}"))?;
            if names.contains(name) {
                return Err(format!("stores names {name:?} twice"));
            }
            names.push(name.clone());
        }
        let default = match (config.default_store.as_str(), names.first()) {
            ("", Some(first)) => first.clone(),
            ("", None) => return Err("stores is empty: name at least one store".into()),
            (name, _) if names.iter().any(|n| n == name) => name.to_owned(),
            (name, _) => {
                return Err(format!(
                    "default_store {name:?} is not one of stores ({})",
                    names.join(", ")
                ));
            }
        };
        let import = &config.import;
        let settings = ipb::ClusterSettings {
            default_store: default.clone(),
            stores: names.clone(),
            plugins: Some(ipb::ImportPlugins {
                plugins: import.plugins.clone(),
                output_format: import.image_conversion.output_format.clone(),
                inject: import
                    .inject_metadata_properties
                    .inject
                    .clone()
                    .into_iter()
                    .collect(),
                ignore_user_roles: import.inject_metadata_properties.ignore_user_roles.clone(),
            }),
        };
        Ok(Self(Arc::new(Inner {
            names,
            default,
            settings,
        })))
    }

    pub fn default_store(&self) -> &str {
        &self.0.default
    }

    pub fn names(&self) -> &[String] {
        &self.0.names
    }

    /// What blob nodes are told on registration and every heartbeat.
    pub fn settings(&self) -> ipb::ClusterSettings {
        self.0.settings.clone()
    }

    /// Refuses a name the configuration does not have.
    pub fn check(&self, what: &str, name: &str) -> ApiResult<()> {
        if self.0.names.iter().any(|n| n == name) {
            return Ok(());
        }
        Err(invalid(format!(
            "{what} names store {name:?}, which this cluster does not have; its stores are {}",
            self.0.names.join(", ")
        )))
    }

    /// The explicit target of a request's selection: its stores (the default
    /// when it names none), or every store.
    pub fn target(&self, selection: Option<&pb::StoreSelection>) -> ApiResult<Target> {
        let empty = pb::StoreSelection::default();
        let sel = selection.unwrap_or(&empty);
        let must_succeed = sel.all_stores_must_succeed.unwrap_or(true);
        if sel.all_stores {
            if !sel.stores.is_empty() {
                return Err(invalid(
                    "target: give either stores or all_stores, not both",
                ));
            }
            // The default first: that is where the bytes land first.
            let mut stores = vec![self.0.default.clone()];
            stores.extend(
                self.0
                    .names
                    .iter()
                    .filter(|n| **n != self.0.default)
                    .cloned(),
            );
            return Ok(Target {
                stores,
                must_succeed,
            });
        }
        if sel.stores.is_empty() {
            return Ok(Target {
                stores: vec![self.0.default.clone()],
                must_succeed,
            });
        }
        let mut stores: Vec<String> = Vec::new();
        for name in &sel.stores {
            self.check("target", name)?;
            if !stores.contains(name) {
                stores.push(name.clone());
            }
        }
        Ok(Target {
            stores,
            must_succeed,
        })
    }

    /// The selection that states a target explicitly, as nodes receive it.
    pub fn selection(target: &Target) -> pb::StoreSelection {
        pb::StoreSelection {
            stores: target.stores.clone(),
            all_stores: false,
            all_stores_must_succeed: Some(target.must_succeed),
        }
    }

    /// Refuses a node that declares a store the cluster does not have (a typo
    /// would otherwise make its bytes unreachable for everyone else).
    pub fn check_node(&self, stores: &[String]) -> ApiResult<()> {
        for name in stores {
            self.check("the blob node's configuration", name)?;
        }
        Ok(())
    }
}
