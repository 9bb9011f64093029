//! Who may read `/metrics`. Open by default, as Prometheus exporters are (the
//! figures name no image); an operator who wants it closed gives a bearer
//! token file, which Prometheus sends with `authorization.credentials_file`.

use std::path::PathBuf;

use http::{HeaderMap, header};
use serde::{Deserialize, Serialize};

use crate::http::HttpError;

/// `[metrics]` in every server's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A file holding the bearer token /metrics asks for; unset: anyone on the
    /// network may read the metrics.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsConfigError {
    #[error("[metrics] token_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("[metrics] token_file {0} is empty: put the token Prometheus sends in it")]
    Empty(String),
}

/// What a request to /metrics must carry: nothing, or this token's SHA-256.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccess {
    token_hash: Option<String>,
}

impl MetricsAccess {
    pub fn load(config: &MetricsConfig) -> Result<Self, MetricsConfigError> {
        let Some(path) = &config.token_file else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let token = imagestore_auth::read_secret(path)
            .map_err(|source| MetricsConfigError::Read {
                path: shown.clone(),
                source,
            })?
            .ok_or(MetricsConfigError::Empty(shown))?;
        Ok(Self {
            token_hash: Some(imagestore_auth::hash_token(&token)),
        })
    }

    /// Whether a request with these headers may read the metrics. Digests are
    /// compared, so the time taken says nothing about the token.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        let Some(wanted) = &self.token_hash else {
            return Ok(());
        };
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| imagestore_auth::hash_token(t.trim()));
        match sent {
            Some(hash) if &hash == wanted => Ok(()),
            Some(_) => Err(HttpError::with_status(
                http::StatusCode::UNAUTHORIZED,
                "the bearer token is not the one [metrics] token_file holds",
            )),
            None => Err(HttpError::with_status(
                http::StatusCode::UNAUTHORIZED,
                "this server's metrics need \"Authorization: Bearer <token>\" (the token in \
                 its [metrics] token_file)",
            )),
        }
    }
}
