//! Aliases: unique names pointing at one image each.

use crate::params;
use crate::sql::{Db, OptionalExtension, Row};
use imagestore_image::FingerprintQuery;

use crate::Store;
use crate::error::{CatalogError, Result};
use crate::images::{ImageRef, resolve};
use crate::model::*;
use crate::page::{Page, PageRequest};

const MAX_ALIAS_LEN: usize = 64;

/// Incus's rule for API names (`IsAPIName` with slashes allowed): 1 to 64
/// characters, starting and ending with a letter or digit, no white space and none
/// of `$ ? & + " ' ` *`. Slashes are allowed ("debian/12/amd64").
pub fn validate_alias_name(name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(CatalogError::InvalidArgument(format!(
            "alias name {:?} is not valid: {why}",
            name.chars().take(80).collect::<String>()
        )))
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.chars().count() > MAX_ALIAS_LEN {
        return refuse("it is longer than 64 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "$?&+\"'`*".contains(*c))
    {
        return refuse(&format!("it contains {c:?}"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return refuse("it must start and end with a letter or digit");
    }
    if name.contains("//") {
        return refuse("it contains an empty path segment (\"//\")");
    }
    if name
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return refuse("it contains a \".\" or \"..\" path segment");
    }
    // Bidirectional controls make a name read as another one.
    if let Some(c) = name.chars().find(|c| {
        matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }) {
        return refuse(&format!(
            "it contains the bidirectional control U+{:04X}",
            u32::from(c)
        ));
    }
    Ok(())
}

/// An alias as a new image or an import asks for it: its name, and its
/// description within the same cap as CreateAlias's.
pub fn validate_alias(name: &str, description: &str) -> Result<()> {
    validate_alias_name(name)?;
    validate_description(description)
}

fn alias_from_row(r: &Row) -> Result<(String, String, String, String, i64, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_alias(row: (String, String, String, String, i64, i64)) -> Result<Alias> {
    let (name, target, description, image_type, created_at, updated_at) = row;
    Ok(Alias {
        name,
        target,
        description,
        image_type: ImageType::parse(&image_type)
            .ok_or_else(|| CatalogError::Corrupt(format!("image type {image_type:?}")))?,
        created_at,
        updated_at,
    })
}

const ALIAS_SELECT: &str = "SELECT a.name, a.fingerprint, a.description, i.image_type, \
     a.created_at, a.updated_at FROM aliases a JOIN images i ON i.fingerprint = a.fingerprint";

fn load_alias(conn: &dyn Db, name: &str, public_only: bool) -> Result<Option<Alias>> {
    let visible = if public_only {
        " AND i.public = TRUE"
    } else {
        ""
    };
    conn.prepare_cached(&format!("{ALIAS_SELECT} WHERE a.name = ?1{visible}"))?
        .query_row([name], alias_from_row)
        .optional()?
        .map(to_alias)
        .transpose()
}

fn alias_not_found(name: &str) -> CatalogError {
    CatalogError::NotFound(format!("alias {name:?} not found"))
}

/// Inserts an alias unless the name is taken; returns whether it was inserted.
pub(crate) fn insert_alias(
    conn: &dyn Db,
    name: &str,
    fingerprint: &str,
    description: &str,
    now: UnixNanos,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO aliases (name, fingerprint, description, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(name) DO NOTHING",
        )?
        .execute(params![name, fingerprint, description, now])?;
    Ok(n == 1)
}

/// Inserts each alias whose name is free; returns the names that were taken.
pub(crate) fn insert_aliases(
    conn: &dyn Db,
    aliases: &[AliasRef],
    fingerprint: &str,
    now: UnixNanos,
) -> Result<Vec<String>> {
    let mut taken = Vec::new();
    for a in aliases {
        if !insert_alias(conn, &a.name, fingerprint, &a.description, now)? {
            taken.push(a.name.clone());
        }
    }
    Ok(taken)
}

/// Accepts a full fingerprint, a unique prefix, or "images/{either}".
fn target_ref(target: &str) -> Result<ImageRef> {
    let bare = target.strip_prefix("images/").unwrap_or(target);
    if bare.is_empty() {
        return Err(CatalogError::InvalidArgument(
            "an alias needs a target: the fingerprint (or a unique prefix) of an image".into(),
        ));
    }
    Ok(ImageRef::Fingerprint(FingerprintQuery::parse(bare)?))
}

const MAX_DESCRIPTION: usize = 4096;

fn validate_description(d: &str) -> Result<()> {
    if d.len() > MAX_DESCRIPTION {
        return Err(CatalogError::InvalidArgument(format!(
            "alias description is {} bytes long; the most is {MAX_DESCRIPTION}",
            d.len()
        )));
    }
    Ok(())
}

/// A change to an alias; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct AliasEdit {
    pub target: Option<String>,
    pub description: Option<String>,
}

impl Store {
    /// Creates an alias to an existing image.
    pub async fn create_alias(
        &self,
        name: String,
        target: String,
        description: String,
    ) -> Result<Alias> {
        validate_alias_name(&name)?;
        validate_description(&description)?;
        let target = target_ref(&target)?;
        self.write(move |tx| {
            let fp = resolve(tx, &target, false)?;
            if !insert_alias(tx, &name, &fp, &description, now())? {
                return Err(CatalogError::AlreadyExists(format!(
                    "alias {name:?} already exists: delete or rename it first, or retarget it \
                     with UpdateAlias"
                )));
            }
            load_alias(tx, &name, false)?.ok_or_else(|| alias_not_found(&name))
        })
        .await
    }

    /// Returns an alias; with `image_type`, only if its target has that type.
    pub async fn get_alias(
        &self,
        name: String,
        image_type: Option<ImageType>,
        public_only: bool,
    ) -> Result<Alias> {
        validate_alias_name(&name)?;
        self.read(move |conn| {
            let alias =
                load_alias(conn, &name, public_only)?.ok_or_else(|| alias_not_found(&name))?;
            match image_type {
                Some(t) if t != alias.image_type => Err(CatalogError::NotFound(format!(
                    "alias {name:?} exists for type {:?} but not for type {:?}",
                    alias.image_type.as_str(),
                    t.as_str()
                ))),
                _ => Ok(alias),
            }
        })
        .await
    }

    /// One page of aliases in name order whose names contain every word of
    /// `filter`.
    pub async fn list_aliases(
        &self,
        filter: String,
        page: PageRequest,
        public_only: bool,
    ) -> Result<Page<Alias>> {
        self.read(move |conn| {
            let words: Vec<String> = filter.split_whitespace().map(str::to_lowercase).collect();
            let visible = if public_only {
                " AND i.public = TRUE"
            } else {
                ""
            };
            let mut after = page.after.clone().unwrap_or_default();
            let mut items = Vec::new();
            let mut more = false;
            // In batches, so that no query reads the whole table at once.
            'scan: loop {
                let batch = conn
                    .prepare_cached(&format!(
                        "{ALIAS_SELECT} WHERE a.name > ?1{visible} ORDER BY a.name LIMIT ?2"
                    ))?
                    .query_map(params![after, crate::page::SCAN_BATCH], alias_from_row)?
                    .collect::<Result<Vec<_>>>()?;
                let exhausted = (batch.len() as i64) < crate::page::SCAN_BATCH;
                for row in batch {
                    let alias = to_alias(row)?;
                    after = alias.name.clone();
                    let lower = alias.name.to_lowercase();
                    if !words.iter().all(|w| lower.contains(w.as_str())) {
                        continue;
                    }
                    if items.len() == page.size {
                        more = true;
                        break 'scan;
                    }
                    items.push(alias);
                }
                if exhausted {
                    break;
                }
            }
            Ok(page.finish(items, more, |a| a.name.clone()))
        })
        .await
    }

    /// Retargets and/or re-describes an alias.
    pub async fn update_alias(&self, name: String, edit: AliasEdit) -> Result<Alias> {
        validate_alias_name(&name)?;
        if let Some(d) = &edit.description {
            validate_description(d)?;
        }
        let target = edit.target.as_deref().map(target_ref).transpose()?;
        self.write(move |tx| {
            let current = load_alias(tx, &name, false)?.ok_or_else(|| alias_not_found(&name))?;
            let fp = match &target {
                Some(t) => resolve(tx, t, false)?,
                None => current.target,
            };
            let description = edit.description.unwrap_or(current.description);
            tx.prepare_cached(
                "UPDATE aliases SET fingerprint = ?2, description = ?3, updated_at = ?4 WHERE name = ?1",
            )?
            .execute(params![name, fp, description, now()])?;
            load_alias(tx, &name, false)?.ok_or_else(|| alias_not_found(&name))
        })
        .await
    }

    /// Renames an alias; the new name must be free.
    pub async fn rename_alias(&self, name: String, new_name: String) -> Result<Alias> {
        validate_alias_name(&name)?;
        validate_alias_name(&new_name)?;
        self.write(move |tx| {
            if load_alias(tx, &name, false)?.is_none() {
                return Err(alias_not_found(&name));
            }
            if name == new_name {
                return load_alias(tx, &name, false)?.ok_or_else(|| alias_not_found(&name));
            }
            if load_alias(tx, &new_name, false)?.is_some() {
                return Err(CatalogError::AlreadyExists(format!(
                    "alias {new_name:?} already exists; {name:?} was not renamed"
                )));
            }
            tx.prepare_cached("UPDATE aliases SET name = ?2, updated_at = ?3 WHERE name = ?1")?
                .execute(params![name, new_name, now()])?;
            load_alias(tx, &new_name, false)?.ok_or_else(|| alias_not_found(&new_name))
        })
        .await
    }

    /// Deletes an alias (not its image).
    pub async fn delete_alias(&self, name: String) -> Result<()> {
        validate_alias_name(&name)?;
        self.write(move |tx| {
            let n = tx
                .prepare_cached("DELETE FROM aliases WHERE name = ?1")?
                .execute([&name])?;
            if n == 0 {
                return Err(alias_not_found(&name));
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_names_follow_incus_rule() {
        for ok in ["a", "debian/12", "debian/12/amd64", "ubuntu-24.04", "A1"] {
            assert!(validate_alias_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-bad",
            "bad-",
            "a b",
            "a?b",
            "a*b",
            "a'b",
            "a$b",
            "a//b",
            "/a",
            "a\tb",
            "a/../b",
            "a/./b",
            "a/..",
            "ab\u{202e}cd",
            "a\u{2066}b",
        ] {
            assert!(validate_alias_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_alias_name(&"a".repeat(64)).is_ok());
        assert!(validate_alias_name(&"a".repeat(65)).is_err());
        assert!(
            validate_alias_name("a..b/c.d").is_ok(),
            "dots inside a segment"
        );
    }

    #[test]
    fn descriptions_are_capped_on_every_path() {
        assert!(validate_alias("a", &"d".repeat(MAX_DESCRIPTION)).is_ok());
        assert!(validate_alias("a", &"d".repeat(MAX_DESCRIPTION + 1)).is_err());
    }
}
