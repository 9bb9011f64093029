//! What can go wrong in the catalog, classified so the service edge can pick the
//! right gRPC status without looking inside.

use imagestore_image::FingerprintError;

/// A catalog failure. Every variant's message is meant for a person.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The caller named something that is not there.
    #[error("{0}")]
    NotFound(String),
    /// The caller tried to create something that is there already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller's input is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The input is well-formed but the state forbids it (ambiguous prefix, stale
    /// etag, wrong offset).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Someone else holds what the caller wants (an upload being written).
    #[error("{0}")]
    Aborted(String),
    /// Over a configured limit (staging size).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A name or prefix that is not a fingerprint.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// SQLite failed; the message is not for the caller.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL failed, or could not be reached ([`Self::is_busy`] tells).
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database cannot be reached now (no connection to be had in time).
    #[error("{0}")]
    Unavailable(String),
    /// The database file could not be created.
    #[error("catalog file: {0}")]
    File(#[from] std::io::Error),
    /// Stored data could not be decoded: the database was changed behind our back.
    #[error("corrupt catalog record: {0}")]
    Corrupt(String),
    /// The blocking task that ran the query died (panic or shutdown).
    #[error("catalog task failed: {0}")]
    Task(String),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

impl From<serde_json::Error> for CatalogError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl CatalogError {
    /// Its kind, as the one classification every layer shares (gRPC's codes):
    /// the edge answers with it, the CLI exits by it.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::InvalidArgument(_) | Self::Fingerprint(_) => Code::InvalidArgument,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            busy if busy.is_busy() => Code::Unavailable,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Database(_)
            | Self::Postgres(_)
            | Self::File(_)
            | Self::Corrupt(_)
            | Self::Task(_) => Code::Internal,
        }
    }

    /// The database is out of reach for now (SQLite could not get its lock in
    /// time; PostgreSQL is down, restarting or out of connections): worth
    /// retrying, not a fault.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Database(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Postgres(e) => crate::engine::postgres::is_unavailable(e),
            Self::Unavailable(_) => true,
            _ => false,
        }
    }
}
