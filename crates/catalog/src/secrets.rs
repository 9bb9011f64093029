//! One-time image secrets (LXD's `POST /1.0/images/<fp>/secret`): a trusted
//! client makes one so that an untrusted party can fetch one private image once.
//! Only the secret's hash is kept.

use std::time::Duration;

use crate::params;
use crate::sql::{Db, OptionalExtension};

use crate::Store;
use crate::error::Result;
use crate::images::{ImageRef, must_load, resolve};
use crate::model::{Image, UnixNanos, now};

/// The image `what` names if `secret_hash` opens it; otherwise what an untrusted
/// caller without a secret would get (the image if public, else NOT_FOUND), so
/// that a wrong, used or expired secret tells nothing a missing image would not.
fn opened(conn: &dyn Db, what: &ImageRef, secret_hash: &str) -> Result<(String, bool)> {
    if let Ok(fp) = resolve(conn, what, false) {
        let valid: Option<i64> = conn
            .prepare_cached(
                "SELECT 1 FROM image_secrets \
                 WHERE secret_hash = ?1 AND fingerprint = ?2 AND expires_at > ?3",
            )?
            .query_row(params![secret_hash, fp, now()], |r| r.get(0))
            .optional()?;
        if valid.is_some() {
            return Ok((fp, true));
        }
    }
    Ok((resolve(conn, what, true)?, false))
}

impl Store {
    /// Stores a secret (by hash) for the image `what` names; returns the image and
    /// when the secret expires.
    pub async fn create_image_secret(
        &self,
        what: ImageRef,
        secret_hash: String,
        ttl: Duration,
    ) -> Result<(Image, UnixNanos)> {
        self.write(move |tx| {
            let fp = resolve(tx, &what, false)?;
            let created = now();
            let expires = created.saturating_add(i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX));
            tx.prepare_cached("DELETE FROM image_secrets WHERE expires_at <= ?1")?
                .execute([created])?;
            tx.prepare_cached(
                "INSERT INTO image_secrets (secret_hash, fingerprint, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![secret_hash, fp, created, expires])?;
            Ok((must_load(tx, &fp)?, expires))
        })
        .await
    }

    /// The image `what` names, as an untrusted caller holding `secret_hash` may
    /// see it; the secret stays usable.
    pub async fn get_image_with_secret(
        &self,
        what: ImageRef,
        secret_hash: String,
    ) -> Result<Image> {
        self.read(move |conn| {
            let (fp, _) = opened(conn, &what, &secret_hash)?;
            must_load(conn, &fp)
        })
        .await
    }

    /// As [`Catalog::get_image_with_secret`], and uses the secret up: it opens
    /// nothing after this.
    pub async fn use_image_secret(&self, what: ImageRef, secret_hash: String) -> Result<Image> {
        self.write(move |tx| {
            let (fp, by_secret) = opened(tx, &what, &secret_hash)?;
            if by_secret {
                tx.prepare_cached("DELETE FROM image_secrets WHERE secret_hash = ?1")?
                    .execute([&secret_hash])?;
            }
            must_load(tx, &fp)
        })
        .await
    }
}
