//! Configuration: defaults, then a TOML file, then `IMAGESTORE_`-prefixed
//! environment variables (`__` separates nested keys: `IMAGESTORE_LOG__FORMAT=json`),
//! then flags.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The environment prefix for configuration overrides.
pub const ENV_PREFIX: &str = "IMAGESTORE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads a configuration of type `T`. Unknown keys in the file are refused (a typo
/// should not silently fall back to a default); environment variables are read
/// only for keys `T` has, since the same prefix also serves the CLI
/// (`IMAGESTORE_REMOTE`, `IMAGESTORE_TOKEN`).
pub fn load_config<T>(file: Option<&Path>, flags: &impl Serialize) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let known: BTreeSet<String> = defaults
        .data()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?
        .into_values()
        .flat_map(|dict| dict.into_keys())
        .collect();
    let mut figment = defaults;
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::Missing(file.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    let env = Env::prefixed(ENV_PREFIX).split("__").filter(move |key| {
        // The key arrives as written in the environment, with "__" already
        // turned into "." (DATA_DIR, LOG.FORMAT).
        let key = key.as_str().to_ascii_lowercase();
        let top = key.split('.').next().unwrap_or_default();
        known.contains(top)
    });
    figment
        .merge(env)
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}
