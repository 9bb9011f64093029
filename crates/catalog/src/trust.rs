//! The trust store: client certificates and bearer tokens, known by fingerprint
//! (a certificate's SHA-256, a token's SHA-256; tokens themselves are never kept).

use crate::params;
use crate::sql::{OptionalExtension, Row};

use crate::Store;
use crate::error::{CatalogError, Result};
use crate::model::{UnixNanos, now};

/// What kind of credential an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustKind {
    Certificate,
    Token,
}

impl TrustKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Token => "token",
        }
    }
}

/// One trusted credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    pub id: String,
    pub kind: TrustKind,
    pub description: String,
    pub fingerprint: String,
    pub created_at: UnixNanos,
    pub expires_at: Option<UnixNanos>,
}

const COLUMNS: &str = "id, kind, description, fingerprint, created_at, expires_at";

fn entry_from_row(r: &Row) -> Result<TrustEntry> {
    let kind: String = r.get(1)?;
    Ok(TrustEntry {
        id: r.get(0)?,
        kind: if kind == "certificate" {
            TrustKind::Certificate
        } else {
            TrustKind::Token
        },
        description: r.get(2)?,
        fingerprint: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
    })
}

impl Store {
    /// The cluster-wide secret `name`: the one stored already, or `value`,
    /// stored now.
    pub async fn adopt_secret(&self, name: String, value: String) -> Result<String> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO cluster_secrets (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )?;
            Ok(tx
                .prepare_cached("SELECT value FROM cluster_secrets WHERE name = ?1")?
                .query_row([name], |r| r.get(0))?)
        })
        .await
    }

    /// Moves with every change to the trust store, whoever made it.
    pub async fn trust_version(&self) -> Result<u64> {
        self.read(|conn| crate::counter(conn, "trust_version"))
            .await
    }

    /// Adds a credential; ALREADY_EXISTS when its fingerprint is trusted already.
    pub async fn add_trust(
        &self,
        kind: TrustKind,
        description: String,
        fingerprint: String,
        expires_at: Option<UnixNanos>,
    ) -> Result<TrustEntry> {
        self.write(move |tx| {
            let taken: Option<String> = tx
                .prepare_cached("SELECT id FROM trust WHERE fingerprint = ?1")?
                .query_row([&fingerprint], |r| r.get(0))
                .optional()?;
            if let Some(id) = taken {
                return Err(CatalogError::AlreadyExists(format!(
                    "this {} is trusted already as trust/{id}",
                    kind.as_str()
                )));
            }
            let entry = TrustEntry {
                id: uuid::Uuid::new_v4().simple().to_string(),
                kind,
                description,
                fingerprint,
                created_at: now(),
                expires_at,
            };
            tx.prepare_cached(&format!(
                "INSERT INTO trust ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?
            .execute(params![
                entry.id,
                entry.kind.as_str(),
                entry.description,
                entry.fingerprint,
                entry.created_at,
                entry.expires_at
            ])?;
            Ok(entry)
        })
        .await
    }

    /// Every entry, oldest first.
    pub async fn list_trust(&self) -> Result<Vec<TrustEntry>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM trust ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map(params![], entry_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Removes an entry by id and returns its fingerprint; NOT_FOUND when there
    /// is none.
    pub async fn remove_trust(&self, id: String) -> Result<String> {
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM trust WHERE id = ?1 RETURNING fingerprint")?
                .query_row([&id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| CatalogError::NotFound(format!("trust/{id} does not exist")))
        })
        .await
    }
}
