//! Image records: resolve, read, list, register, edit, delete.

use std::collections::{BTreeMap, HashMap};

use crate::params;
use crate::sql::{Db, OptionalExtension, Row};
use imagestore_image::{FingerprintQuery, canonical_architecture};

use crate::Store;
use crate::aliases::{insert_aliases, validate_alias};
use crate::error::{CatalogError, Result};
use crate::filter::ImageFilter;
use crate::model::*;
use crate::page::{Page, PageRequest};

/// How a caller names an image.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// A full fingerprint or a unique prefix.
    Fingerprint(FingerprintQuery),
    /// An alias, optionally asking for a given image type (LXD's --vm).
    Alias {
        name: String,
        image_type: Option<ImageType>,
    },
}

impl ImageRef {
    /// The form people recognise in messages.
    fn describe(&self) -> String {
        match self {
            Self::Fingerprint(FingerprintQuery::Full(fp)) => fp.to_string(),
            Self::Fingerprint(FingerprintQuery::Prefix(p)) => p.clone(),
            Self::Alias { name, .. } => format!("alias {name}"),
        }
    }
}

fn not_found(what: &ImageRef) -> CatalogError {
    // The same words whether the image is missing or private to this caller, so
    // that the answer leaks nothing.
    CatalogError::NotFound(format!("image {:?} not found", what.describe()))
}

const IMAGE_COLUMNS: &str = "fingerprint, image_type, architecture, size, filename, layout, \
     properties, public, auto_update, cached, created_at, uploaded_at, last_used_at, expires_at, \
     update_source, damage, stores, failed_stores";

/// Resolves a reference to a full fingerprint; `public_only` hides private images.
pub(crate) fn resolve(conn: &dyn Db, what: &ImageRef, public_only: bool) -> Result<String> {
    let visible = if public_only {
        " AND public = TRUE"
    } else {
        ""
    };
    match what {
        ImageRef::Fingerprint(FingerprintQuery::Full(fp)) => conn
            .prepare_cached(&format!(
                "SELECT fingerprint FROM images WHERE fingerprint = ?1{visible}"
            ))?
            .query_row([fp.as_str()], |r| r.get(0))
            .optional()?
            .ok_or_else(|| not_found(what)),
        ImageRef::Fingerprint(FingerprintQuery::Prefix(prefix)) => {
            // Hex digits sort below 'g', so [prefix, prefix+'g') is exactly the
            // fingerprints that start with prefix, and the primary key serves it.
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT fingerprint FROM images WHERE fingerprint >= ?1 AND fingerprint < ?2{visible} \
                 ORDER BY fingerprint LIMIT 2"
            ))?;
            let found: Vec<String> = stmt
                .query_map(params![prefix, format!("{prefix}g")], |r| r.get(0))?
                .collect::<Result<_>>()?;
            match found.as_slice() {
                [] => Err(not_found(what)),
                [one] => Ok(one.clone()),
                _ => Err(CatalogError::FailedPrecondition(format!(
                    "more than one image matches fingerprint prefix {prefix:?} (e.g. {} and {}): \
                     give more characters",
                    found[0], found[1]
                ))),
            }
        }
        ImageRef::Alias { name, image_type } => {
            let row: Option<(String, String)> = conn
                .prepare_cached(&format!(
                    "SELECT a.fingerprint, i.image_type FROM aliases a \
                     JOIN images i ON i.fingerprint = a.fingerprint WHERE a.name = ?1{visible}"
                ))?
                .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (fp, found_type) = row.ok_or_else(|| not_found(what))?;
            match image_type {
                Some(want) if want.as_str() != found_type => Err(CatalogError::NotFound(format!(
                    "alias {name:?} exists for type {found_type:?} but not for type {:?}",
                    want.as_str()
                ))),
                _ => Ok(fp),
            }
        }
    }
}

fn image_from_row(r: &Row) -> Result<Image> {
    let text_enum_err = |i: usize, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {v:?}").into(),
        )
    };
    let json_err = |i: usize, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    let image_type: String = r.get(1)?;
    let layout: String = r.get(5)?;
    let properties: String = r.get(6)?;
    let update_source: Option<String> = r.get(14)?;
    let damage: Option<String> = r.get(15)?;
    let stores: String = r.get(16)?;
    let failed_stores: String = r.get(17)?;
    Ok(Image {
        fingerprint: r.get(0)?,
        image_type: ImageType::parse(&image_type).ok_or_else(|| text_enum_err(1, &image_type))?,
        architecture: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        filename: r.get(4)?,
        layout: Layout::parse(&layout).ok_or_else(|| text_enum_err(5, &layout))?,
        parts: Vec::new(),
        properties: serde_json::from_str(&properties).map_err(|e| json_err(6, e))?,
        public: r.get(7)?,
        auto_update: r.get(8)?,
        cached: r.get(9)?,
        created_at: r.get(10)?,
        uploaded_at: r.get(11)?,
        last_used_at: r.get(12)?,
        expires_at: r.get(13)?,
        update_source: update_source
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| json_err(14, e))?,
        aliases: Vec::new(),
        damage: damage
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| json_err(15, e))?,
        stores: serde_json::from_str(&stores).map_err(|e| json_err(16, e))?,
        failed_stores: serde_json::from_str(&failed_stores).map_err(|e| json_err(17, e))?,
    })
}

/// The columns of one part, from `at` on: role, sha256, size, storage_key, extension.
type PartRow = (String, String, i64, String, String);

fn part_row(r: &Row, at: usize) -> Result<PartRow> {
    Ok((
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        r.get(at + 4)?,
    ))
}

fn to_part((role, sha256, size, storage_key, extension): PartRow) -> Result<Part> {
    Ok(Part {
        role: PartRole::parse(&role)
            .ok_or_else(|| CatalogError::Corrupt(format!("part role {role:?}")))?,
        sha256,
        size: size as u64,
        storage_key,
        extension,
    })
}

fn load_parts(conn: &dyn Db, fp: &str) -> Result<Vec<Part>> {
    let mut stmt = conn.prepare_cached(
        "SELECT role, sha256, size, storage_key, extension FROM image_parts \
         WHERE fingerprint = ?1 ORDER BY position",
    )?;
    let rows = stmt.query_map([fp], |r| part_row(r, 0))?;
    rows.map(|row| to_part(row?)).collect()
}

fn load_aliases(conn: &dyn Db, fp: &str) -> Result<Vec<AliasRef>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, description FROM aliases WHERE fingerprint = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([fp], |r| {
        Ok(AliasRef {
            name: r.get(0)?,
            description: r.get(1)?,
        })
    })?;
    rows.collect()
}

/// Loads a full record by exact fingerprint.
pub(crate) fn load(conn: &dyn Db, fp: &str) -> Result<Option<Image>> {
    let image = conn
        .prepare_cached(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE fingerprint = ?1"
        ))?
        .query_row([fp], image_from_row)
        .optional()?;
    let Some(mut image) = image else {
        return Ok(None);
    };
    image.parts = load_parts(conn, fp)?;
    image.aliases = load_aliases(conn, fp)?;
    Ok(Some(image))
}

pub(crate) fn must_load(conn: &dyn Db, fp: &str) -> Result<Image> {
    load(conn, fp)?.ok_or_else(|| CatalogError::NotFound(format!("image {fp:?} not found")))
}

/// Checks a registration and puts it in canonical form.
fn validate_new(mut new: NewImage) -> Result<NewImage> {
    let bad = |m: String| Err(CatalogError::InvalidArgument(m));
    imagestore_image::Fingerprint::parse(&new.fingerprint)?;
    new.architecture = match canonical_architecture(&new.architecture) {
        Some(a) => a.to_owned(),
        None => {
            return bad(format!(
                "architecture isn't supported: {:?}",
                new.architecture
            ));
        }
    };
    let roles: Vec<PartRole> = new.parts.iter().map(|p| p.role).collect();
    let expected: &[PartRole] = match new.layout {
        Layout::Unified => &[PartRole::Unified],
        Layout::Split => &[PartRole::Metadata, PartRole::Rootfs],
    };
    if roles != expected {
        return bad(format!(
            "a {} image has parts {:?}, not {:?}",
            new.layout.as_str(),
            expected.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()
        ));
    }
    for part in &new.parts {
        if imagestore_image::Fingerprint::parse(&part.sha256).is_err() {
            return bad(format!(
                "part {} has sha256 {:?}; expected 64 lowercase hex characters",
                part.role.as_str(),
                part.sha256
            ));
        }
        if imagestore_store::layout::check_key(&part.storage_key)
            != Ok(imagestore_store::layout::KeyKind::Part)
        {
            return bad(format!(
                "part {} has storage key {:?}, which is not a part prefix of the storage layout",
                part.role.as_str(),
                part.storage_key
            ));
        }
        if part.size > i64::MAX as u64 {
            return bad(format!(
                "part {} size {} is too large",
                part.role.as_str(),
                part.size
            ));
        }
    }
    if new.objects.len() != new.parts.len() {
        return bad(format!(
            "{} object lists were sent for {} parts; every part needs the list of the objects \
             it is stored as",
            new.objects.len(),
            new.parts.len()
        ));
    }
    for (part, objects) in new.parts.iter().zip(&new.objects) {
        imagestore_store::check_contiguous(&part.storage_key, objects, part.size).map_err(|e| {
            CatalogError::InvalidArgument(format!("part {}: {e}", part.role.as_str()))
        })?;
    }
    if new.layout == Layout::Unified && new.parts[0].sha256 != new.fingerprint {
        return bad(format!(
            "a unified image's fingerprint is the SHA-256 of its file, but the file hashes to {} \
             and the fingerprint given is {}",
            new.parts[0].sha256, new.fingerprint
        ));
    }
    for alias in &new.aliases {
        validate_alias(&alias.name, &alias.description)?;
    }
    validate_properties(&new.properties)?;
    new.properties.retain(|_, v| !v.is_empty());
    Ok(new)
}

fn validate_properties(props: &BTreeMap<String, String>) -> Result<()> {
    imagestore_image::validate_properties(props)
        .map_err(|e| CatalogError::InvalidArgument(e.to_string()))
}

fn register(tx: &dyn Db, new: NewImage) -> Result<Registered> {
    if let Some(existing) = load(tx, &new.fingerprint)? {
        return Ok(Registered {
            image: existing,
            created: false,
            skipped_aliases: Vec::new(),
        });
    }
    let size: u64 = new.parts.iter().map(|p| p.size).sum();
    let now = now();
    tx.prepare_cached(&format!(
        "INSERT INTO images ({IMAGE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, ?13, ?14, NULL, ?15, ?16)"
    ))?
    .execute(params![
        new.fingerprint,
        new.image_type.as_str(),
        new.architecture,
        size as i64,
        new.filename,
        new.layout.as_str(),
        serde_json::to_string(&new.properties)?,
        new.public,
        new.auto_update,
        new.cached,
        new.created_at,
        now,
        new.expires_at,
        new.update_source
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?,
        serde_json::to_string(&new.stores)?,
        serde_json::to_string(&new.failed_stores)?,
    ])?;
    for (position, part) in new.parts.iter().enumerate() {
        tx.prepare_cached(
            "INSERT INTO image_parts (fingerprint, position, role, sha256, size, storage_key, extension) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            new.fingerprint,
            position as i64,
            part.role.as_str(),
            part.sha256,
            part.size as i64,
            part.storage_key,
            part.extension,
        ])?;
        // Referenced again before the bytes were collected: keep them.
        tx.prepare_cached("DELETE FROM released_content WHERE storage_key = ?1")?
            .execute([&part.storage_key])?;
        for object in &new.objects[position] {
            tx.prepare_cached(
                "INSERT INTO part_objects (fingerprint, position, \"offset\", size, storage_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                new.fingerprint,
                position as i64,
                object.offset as i64,
                object.size as i64,
                object.key,
            ])?;
        }
    }
    // Its bytes were hashed on the way in: the first scrub is due one period on.
    tx.prepare_cached("INSERT INTO image_checks (fingerprint, checked_at) VALUES (?1, ?2)")?
        .execute(params![new.fingerprint, now])?;
    let skipped_aliases = insert_aliases(tx, &new.aliases, &new.fingerprint, now)?;
    Ok(Registered {
        image: must_load(tx, &new.fingerprint)?,
        created: true,
        skipped_aliases,
    })
}

fn apply_edit(image: &mut Image, edit: ImageEdit) -> Result<()> {
    if let Some(want) = &edit.if_etag {
        let have = image.etag();
        if *want != have {
            return Err(CatalogError::FailedPrecondition(format!(
                "image {} changed since it was read (etag {want} is stale, now {have}): \
                 read it again and repeat the change",
                image.fingerprint
            )));
        }
    }
    if let Some(p) = edit.public {
        image.public = p;
    }
    if let Some(a) = edit.auto_update {
        image.auto_update = a;
    }
    if let Some(props) = edit.properties {
        image.properties = props;
    }
    for (k, v) in edit.property_changes {
        match v {
            Some(v) => image.properties.insert(k, v),
            None => image.properties.remove(&k),
        };
    }
    validate_properties(&image.properties)?;
    image.properties.retain(|_, v| !v.is_empty());
    // LXD never clears expires_at through an edit; only a new value replaces it.
    if let Some(e) = edit.expires_at {
        image.expires_at = Some(e);
    }
    Ok(())
}

/// Deletes one image in `tx`, releasing (in every store holding it) the storage
/// keys no other image uses.
pub(crate) fn delete_in(tx: &dyn Db, fp: &str) -> Result<(Image, Vec<String>)> {
    let image = must_load(tx, fp)?;
    tx.prepare_cached("DELETE FROM images WHERE fingerprint = ?1")?
        .execute([fp])?;
    let mut released = Vec::new();
    for part in &image.parts {
        let still_used: bool = tx
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM image_parts WHERE storage_key = ?1)")?
            .query_row([&part.storage_key], |r| r.get(0))?;
        if !still_used && !released.contains(&part.storage_key) {
            crate::uploads::release(tx, &image.stores, &part.storage_key)?;
            released.push(part.storage_key.clone());
        }
    }
    Ok((image, released))
}

fn save_stores(tx: &dyn Db, image: &Image) -> Result<()> {
    tx.prepare_cached("UPDATE images SET stores = ?2, failed_stores = ?3 WHERE fingerprint = ?1")?
        .execute(params![
            image.fingerprint,
            serde_json::to_string(&image.stores)?,
            serde_json::to_string(&image.failed_stores)?,
        ])?;
    Ok(())
}

/// Records new copies (and failed ones) of an image; a store that now holds
/// it leaves the failed list.
pub(crate) fn add_locations_in(
    tx: &dyn Db,
    fp: &str,
    stores: &[String],
    failed: &[FailedStore],
) -> Result<Image> {
    let mut image = load(tx, fp)?.ok_or_else(|| {
        CatalogError::NotFound(format!("image {fp} was deleted while it was being copied"))
    })?;
    for store in stores {
        if !image.stores.contains(store) {
            image.stores.push(store.clone());
        }
        image.failed_stores.retain(|f| &f.store != store);
        // Removed from this store earlier and copied back before the bytes
        // were collected: they are the image's again.
        for part in &image.parts {
            tx.prepare_cached(
                "DELETE FROM released_content WHERE store = ?1 AND storage_key = ?2",
            )?
            .execute([store, &part.storage_key])?;
        }
    }
    for f in failed {
        if !image.stores.contains(&f.store) {
            image.failed_stores.retain(|old| old.store != f.store);
            image.failed_stores.push(f.clone());
        }
    }
    save_stores(tx, &image)?;
    Ok(image)
}

/// What a registration completes besides creating the record.
#[derive(Debug, Clone, Default)]
pub struct Completes {
    /// The upload session, by id.
    pub upload: Option<String>,
    /// The import operation, by id.
    pub operation: Option<String>,
    /// A refresh: the image the new one replaces.
    pub replaces: Option<String>,
}

impl Store {
    /// Resolves `what` and loads the whole record; `public_only` hides private
    /// images (they read as not found).
    pub async fn get_image(&self, what: ImageRef, public_only: bool) -> Result<Image> {
        self.read(move |conn| {
            let fp = resolve(conn, &what, public_only)?;
            must_load(conn, &fp)
        })
        .await
    }

    /// The objects each part of an image is stored as, one list per part in
    /// part order; empty lists for an image registered before they were kept.
    pub async fn part_objects(&self, fingerprint: String) -> Result<Vec<Vec<StoredObject>>> {
        self.read(move |conn| {
            let parts = load_parts(conn, &fingerprint)?.len();
            let mut lists = vec![Vec::new(); parts];
            let mut stmt = conn.prepare_cached(
                "SELECT position, \"offset\", size, storage_key FROM part_objects \
                 WHERE fingerprint = ?1 ORDER BY position, \"offset\"",
            )?;
            let rows = stmt.query_map([&fingerprint], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (position, offset, size, key) = row?;
                let list = lists.get_mut(position as usize).ok_or_else(|| {
                    CatalogError::Corrupt(format!("object {key} of a part that does not exist"))
                })?;
                list.push(StoredObject {
                    offset: offset as u64,
                    size: size as u64,
                    key,
                });
            }
            Ok(lists)
        })
        .await
    }

    /// Registers verified content; idempotent by fingerprint. Aliases whose names
    /// are taken are skipped, not moved. In the same transaction: the upload
    /// session it completes becomes COMPLETE (or FAILED, when the fingerprint was
    /// registered already); the import operation it completes SUCCEEDED (with the
    /// record found, when it existed), unless it was cancelled, when nothing is
    /// registered; the image a refresh replaces hands over its aliases and goes.
    pub async fn register_image(&self, new: NewImage, completes: Completes) -> Result<Registered> {
        let new = validate_new(new)?;
        let completes_operation = completes.operation.is_some();
        let registered = self
            .write(move |tx| {
                let aliases = new.aliases.clone();
                if let Some(id) = &completes.upload {
                    crate::uploads::check_objects(tx, id, &new)?;
                }
                let mut registered = register(tx, new)?;
                let fp = registered.image.fingerprint.clone();
                if !registered.created && completes.operation.is_some() {
                    // An import of an image that is here already still gives it the
                    // aliases asked for, as LXD's copy does.
                    registered.skipped_aliases = insert_aliases(tx, &aliases, &fp, now())?;
                }
                if let Some(id) = &completes.upload {
                    crate::uploads::finish_with_registration(tx, id, &fp, registered.created)?;
                }
                if let Some(old) = &completes.replaces {
                    crate::imports::replace(tx, old, &fp)?;
                }
                if let Some(id) = &completes.operation {
                    crate::imports::finish_import(tx, id, &fp, &registered.skipped_aliases)?;
                }
                if completes.replaces.is_some() || !registered.created {
                    registered.image = must_load(tx, &fp)?;
                }
                Ok(registered)
            })
            .await?;
        if completes_operation {
            self.operations_changed();
        }
        Ok(registered)
    }

    /// Changes editable fields and returns the new record.
    pub async fn update_image(&self, what: ImageRef, edit: ImageEdit) -> Result<Image> {
        self.write(move |tx| {
            let fp = resolve(tx, &what, false)?;
            let mut image = must_load(tx, &fp)?;
            apply_edit(&mut image, edit)?;
            tx.prepare_cached(
                "UPDATE images SET public = ?2, auto_update = ?3, properties = ?4, expires_at = ?5 \
                 WHERE fingerprint = ?1",
            )?
            .execute(params![
                fp,
                image.public,
                image.auto_update,
                serde_json::to_string(&image.properties)?,
                image.expires_at,
            ])?;
            Ok(image)
        })
        .await
    }

    /// Deletes an image and its aliases. Returns the record as it was and the
    /// storage keys no other image refers to any more (their bytes may go).
    pub async fn delete_image(&self, what: ImageRef) -> Result<(Image, Vec<String>)> {
        self.write(move |tx| {
            let fp = resolve(tx, &what, false)?;
            delete_in(tx, &fp)
        })
        .await
    }

    /// One page of images in fingerprint order that match `filter`.
    pub async fn list_images(
        &self,
        filter: ImageFilter,
        page: PageRequest,
        public_only: bool,
    ) -> Result<Page<Image>> {
        self.read(move |conn| list(conn, &filter, &page, public_only))
            .await
    }

    /// A number that changes whenever what clients see of any image changes
    /// (records, parts, aliases), in this process or another.
    pub async fn images_version(&self) -> Result<u64> {
        self.read(|conn| crate::counter(conn, "images_version"))
            .await
    }

    /// Every image (public ones only, with `public_only`) with its parts and
    /// aliases, in fingerprint order, and the [`Self::images_version`] they are
    /// as of: for documents that describe the whole catalog.
    pub async fn all_images(&self, public_only: bool) -> Result<(u64, Vec<Image>)> {
        self.read(move |conn| {
            // One read transaction: the version and the rows agree.
            all_images(conn, public_only)
        })
        .await
    }

    /// Storage keys (and prefixes ending in "/") released in one of `stores`
    /// (or in every store) and not yet collected, oldest first.
    pub async fn released_content(
        &self,
        stores: Vec<String>,
        limit: usize,
    ) -> Result<Vec<ReleasedKey>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT store, storage_key FROM released_content ORDER BY released_at LIMIT ?1",
            )?;
            let mut keys = Vec::new();
            // Keys of stores this caller does not reach are passed over; bounded
            // by scanning at most 16 times the limit.
            let rows = stmt.query_map([(limit * 16) as i64], |r| {
                Ok(ReleasedKey {
                    store: r.get(0)?,
                    key: r.get(1)?,
                })
            })?;
            for row in rows {
                let row = row?;
                if row.store.is_empty() || stores.contains(&row.store) {
                    keys.push(row);
                    if keys.len() == limit {
                        break;
                    }
                }
            }
            Ok(keys)
        })
        .await
    }

    /// Forgets released keys whose bytes were deleted.
    pub async fn forget_released(&self, keys: Vec<ReleasedKey>) -> Result<()> {
        self.write(move |tx| {
            for k in &keys {
                tx.prepare_cached(
                    "DELETE FROM released_content WHERE store = ?1 AND storage_key = ?2",
                )?
                .execute([&k.store, &k.key])?;
            }
            Ok(())
        })
        .await
    }

    /// Which of `stores` still have bytes of `keys` waiting to be collected
    /// (released and not yet deleted).
    pub async fn releases_pending(
        &self,
        stores: Vec<String>,
        keys: Vec<String>,
    ) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut pending = Vec::new();
            for store in &stores {
                for key in &keys {
                    let found: bool = conn
                        .prepare_cached(
                            "SELECT EXISTS(SELECT 1 FROM released_content \
                             WHERE store = ?1 AND storage_key = ?2)",
                        )?
                        .query_row([store, key], |r| r.get(0))?;
                    if found {
                        pending.push(store.clone());
                        break;
                    }
                }
            }
            Ok(pending)
        })
        .await
    }

    /// Gives images registered before stores had names (they have none) the
    /// store their bytes are in: the default one. Returns how many.
    pub async fn adopt_into_store(&self, store: String) -> Result<usize> {
        self.write(move |tx| {
            let json = serde_json::to_string(&[&store])?;
            tx.prepare_cached("UPDATE images SET stores = ?1 WHERE stores = '[]'")?
                .execute([&json])
        })
        .await
    }

    /// Records new copies of an image (AddLocations) and completes the copy
    /// operation, unless it was cancelled (FAILED_PRECONDITION, nothing recorded).
    pub async fn add_locations(
        &self,
        fingerprint: String,
        stores: Vec<String>,
        failed: Vec<FailedStore>,
        operation: Option<String>,
    ) -> Result<Image> {
        let image = self
            .write(move |tx| {
                // A cancelled copy fails finish_import, and nothing is recorded.
                let image = add_locations_in(tx, &fingerprint, &stores, &failed)?;
                if let Some(id) = &operation {
                    crate::imports::finish_import(tx, id, &fingerprint, &[])?;
                }
                Ok(image)
            })
            .await?;
        self.operations_changed();
        Ok(image)
    }

    /// Removes an image from one store while another keeps it; its bytes there
    /// are released.
    pub async fn remove_location(&self, what: ImageRef, store: String) -> Result<Image> {
        self.write(move |tx| {
            let fp = resolve(tx, &what, false)?;
            let mut image = must_load(tx, &fp)?;
            if !image.stores.contains(&store) {
                return Err(CatalogError::NotFound(format!(
                    "image {fp} is not in store {store:?}; it is in {}",
                    image.stores.join(", ")
                )));
            }
            if image.stores.len() == 1 {
                return Err(CatalogError::FailedPrecondition(format!(
                    "store {store:?} holds the only copy of image {fp}: delete the image instead"
                )));
            }
            image.stores.retain(|s| *s != store);
            save_stores(tx, &image)?;
            for part in &image.parts {
                crate::uploads::release(tx, std::slice::from_ref(&store), &part.storage_key)?;
            }
            Ok(image)
        })
        .await
    }
}

fn list(
    conn: &dyn Db,
    filter: &ImageFilter,
    page: &PageRequest,
    public_only: bool,
) -> Result<Page<Image>> {
    // Scan in fingerprint order in batches, filter in Rust (the filter language is
    // regular expressions over properties), stop once the page is full.
    let visible = if public_only {
        " AND public = TRUE"
    } else {
        ""
    };
    let mut after = page.after.clone().unwrap_or_default();
    let mut items = Vec::new();
    let mut more = false;
    let mut budget = crate::filter::FILTER_BUDGET_BYTES;
    // Where the next page starts when the budget ends this one early.
    let mut stopped_at = None;
    'scan: loop {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE fingerprint > ?1{visible} \
             ORDER BY fingerprint LIMIT ?2"
        ))?;
        let batch: Vec<Image> = stmt
            .query_map(params![after, crate::page::SCAN_BATCH], image_from_row)?
            .collect::<Result<_>>()?;
        let Some(last) = batch.last() else { break };
        after = last.fingerprint.clone();
        let exhausted = (batch.len() as i64) < crate::page::SCAN_BATCH;
        let mut aliases = aliases_between(conn, &batch[0].fingerprint, &after)?;
        for mut image in batch {
            if budget == 0 {
                more = true;
                break 'scan;
            }
            image.aliases = aliases.remove(&image.fingerprint).unwrap_or_default();
            if !filter.matches_within(&image, &mut budget) {
                stopped_at = Some(image.fingerprint);
                continue;
            }
            if items.len() == page.size {
                more = true;
                break 'scan;
            }
            stopped_at = Some(image.fingerprint.clone());
            items.push(image);
        }
        if exhausted {
            break;
        }
    }
    for image in &mut items {
        image.parts = load_parts(conn, &image.fingerprint)?;
    }
    // A full page continues after its last image; one the budget cut short, after
    // the last image examined (it may hold fewer images, or none).
    let next = if more { stopped_at } else { None };
    Ok(page.finish_after(items, next))
}

fn all_images(conn: &dyn Db, public_only: bool) -> Result<(u64, Vec<Image>)> {
    let version: i64 = conn
        .prepare_cached("SELECT version FROM images_version WHERE id = 0")?
        .query_row(params![], |r| r.get(0))?;
    let visible = if public_only {
        " WHERE public = TRUE"
    } else {
        ""
    };
    let mut images: Vec<Image> = conn
        .prepare_cached(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images{visible} ORDER BY fingerprint"
        ))?
        .query_map(params![], image_from_row)?
        .collect::<Result<_>>()?;
    let Some(last) = images.last() else {
        return Ok((version as u64, images));
    };
    let mut aliases = aliases_between(conn, &images[0].fingerprint, &last.fingerprint)?;
    let mut parts: HashMap<String, Vec<Part>> = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, role, sha256, size, storage_key, extension FROM image_parts \
         ORDER BY fingerprint, position",
    )?;
    let rows = stmt.query_map(params![], |r| Ok((r.get::<_, String>(0)?, part_row(r, 1)?)))?;
    for row in rows {
        let (fp, part) = row?;
        parts.entry(fp).or_default().push(to_part(part)?);
    }
    for image in &mut images {
        image.aliases = aliases.remove(&image.fingerprint).unwrap_or_default();
        image.parts = parts.remove(&image.fingerprint).unwrap_or_default();
    }
    Ok((version as u64, images))
}

fn aliases_between(
    conn: &dyn Db,
    first: &str,
    last: &str,
) -> Result<HashMap<String, Vec<AliasRef>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, name, description FROM aliases \
         WHERE fingerprint >= ?1 AND fingerprint <= ?2 ORDER BY name",
    )?;
    let mut out: HashMap<String, Vec<AliasRef>> = HashMap::new();
    let rows = stmt.query_map([first, last], |r| {
        Ok((
            r.get::<_, String>(0)?,
            AliasRef {
                name: r.get(1)?,
                description: r.get(2)?,
            },
        ))
    })?;
    for row in rows {
        let (fp, alias) = row?;
        out.entry(fp).or_default().push(alias);
    }
    Ok(out)
}
