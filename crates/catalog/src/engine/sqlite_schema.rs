//! Versioned migrations, tracked in SQLite's `user_version`. A migration, once
//! released, never changes: add a new one instead.

use rusqlite::Connection;

use crate::error::Result;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE images (
        fingerprint   TEXT PRIMARY KEY,
        image_type    TEXT NOT NULL,
        architecture  TEXT NOT NULL,
        size          INTEGER NOT NULL,
        filename      TEXT NOT NULL,
        layout        TEXT NOT NULL,
        properties    TEXT NOT NULL,   -- JSON object of strings
        public        INTEGER NOT NULL,
        auto_update   INTEGER NOT NULL,
        cached        INTEGER NOT NULL,
        created_at    INTEGER,         -- unix nanoseconds
        uploaded_at   INTEGER NOT NULL,
        last_used_at  INTEGER,
        expires_at    INTEGER,
        update_source TEXT             -- JSON, NULL for none
    ) WITHOUT ROWID;
    CREATE INDEX images_public ON images(public, fingerprint);

    CREATE TABLE image_parts (
        fingerprint TEXT NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
        position    INTEGER NOT NULL,
        role        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        size        INTEGER NOT NULL,
        storage_key TEXT NOT NULL,
        extension   TEXT NOT NULL,
        PRIMARY KEY (fingerprint, position)
    ) WITHOUT ROWID;
    CREATE INDEX image_parts_storage_key ON image_parts(storage_key);

    CREATE TABLE aliases (
        name        TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
        description TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX aliases_fingerprint ON aliases(fingerprint);

    -- Storage keys no image refers to any more; blob nodes delete the bytes.
    CREATE TABLE released_content (
        storage_key TEXT PRIMARY KEY,
        released_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE nodes (
        node_id           TEXT PRIMARY KEY,
        address           TEXT NOT NULL,
        capacity_bytes    INTEGER NOT NULL,
        available_bytes   INTEGER NOT NULL,
        active_transfers  INTEGER NOT NULL,
        healthy           INTEGER NOT NULL,
        version           TEXT NOT NULL,
        registered_at     INTEGER NOT NULL,
        last_heartbeat_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE operations (
        id               TEXT PRIMARY KEY,
        description      TEXT NOT NULL,
        state            TEXT NOT NULL,
        stage            TEXT NOT NULL,
        bytes_done       INTEGER NOT NULL,
        bytes_total      INTEGER NOT NULL,
        bytes_per_second INTEGER NOT NULL,
        error_code       INTEGER,
        error_message    TEXT,
        image            TEXT NOT NULL,
        metadata         TEXT NOT NULL, -- JSON object of strings
        may_cancel       INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX operations_created ON operations(created_at DESC, id);

    CREATE TABLE uploads (
        id              TEXT PRIMARY KEY,
        spec            TEXT NOT NULL,  -- JSON
        state           TEXT NOT NULL,
        committed_size  INTEGER NOT NULL,
        metadata_size   INTEGER NOT NULL,
        hash_image      BLOB,
        hash_part       BLOB,
        lease           TEXT,
        lease_node      TEXT,
        fingerprint     TEXT,
        error_message   TEXT,
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE upload_segments (
        upload_id   TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
        start       INTEGER NOT NULL,
        length      INTEGER NOT NULL,
        storage_key TEXT NOT NULL,
        PRIMARY KEY (upload_id, start)
    ) WITHOUT ROWID;
    "#,
    // 2: trusted client certificates and bearer tokens (by hash).
    r#"
    CREATE TABLE trust (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,     -- certificate | token
        description TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE, -- certificate SHA-256, or token SHA-256
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER
    ) WITHOUT ROWID;
    "#,
    // 3: one-time image secrets (by hash), LXD's `POST /1.0/images/<fp>/secret`.
    r#"
    CREATE TABLE image_secrets (
        secret_hash TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX image_secrets_fingerprint ON image_secrets(fingerprint);
    "#,
    // 4: server-side imports waiting for, or run by, a blob node. The row goes when
    // the import succeeds, or once a failed one's bytes are released.
    r#"
    CREATE TABLE import_jobs (
        operation_id TEXT PRIMARY KEY REFERENCES operations(id) ON DELETE CASCADE,
        request      BLOB NOT NULL,   -- imagestore.v1.ImportImageRequest, protobuf
        replaces     TEXT,            -- a refresh: the image the new one replaces
        node_id      TEXT,            -- who claimed it
        reported_at  INTEGER          -- the claimant's last word
    ) WITHOUT ROWID;
    CREATE INDEX import_jobs_replaces ON import_jobs(replaces);
    "#,
    // 5: a counter that every change to what clients see of images moves (records,
    // parts, aliases; not last_used_at), so that documents made from the catalog
    // (simplestreams) know when to be made again, whichever process changed it.
    r#"
    CREATE TABLE images_version (
        id      INTEGER PRIMARY KEY CHECK (id = 0),
        version INTEGER NOT NULL
    );
    INSERT INTO images_version (id, version) VALUES (0, 0);
    CREATE TRIGGER images_version_insert AFTER INSERT ON images
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TRIGGER images_version_delete AFTER DELETE ON images
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TRIGGER images_version_update AFTER UPDATE OF
        image_type, architecture, size, filename, layout, properties, public, auto_update,
        cached, created_at, uploaded_at, expires_at, update_source ON images
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TRIGGER images_version_parts AFTER INSERT ON image_parts
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TRIGGER images_version_alias_insert AFTER INSERT ON aliases
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TRIGGER images_version_alias_delete AFTER DELETE ON aliases
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TRIGGER images_version_alias_update AFTER UPDATE ON aliases
        BEGIN UPDATE images_version SET version = version + 1; END;
    "#,
    // 6: the objects each part is stored as, recorded at registration: downloads
    // read this list, never a listing of the store, and whatever else lies under a
    // part's prefix is a stray to collect. Images registered before have no rows.
    r#"
    CREATE TABLE part_objects (
        fingerprint TEXT NOT NULL,
        position    INTEGER NOT NULL,
        offset      INTEGER NOT NULL,
        size        INTEGER NOT NULL,
        storage_key TEXT NOT NULL,
        PRIMARY KEY (fingerprint, position, offset),
        FOREIGN KEY (fingerprint, position)
            REFERENCES image_parts(fingerprint, position) ON DELETE CASCADE
    ) WITHOUT ROWID;
    "#,
    // 7: scrubbing. An image's damage (JSON, NULL while sound) is part of what
    // clients see of it (and a damaged image leaves the simplestreams index); when
    // each image was last verified and who is verifying it now; verifications
    // asked for, each tracked by an operation.
    r#"
    ALTER TABLE images ADD COLUMN damage TEXT;
    CREATE TRIGGER images_version_damage AFTER UPDATE OF damage ON images
        BEGIN UPDATE images_version SET version = version + 1; END;
    CREATE TABLE image_checks (
        fingerprint   TEXT PRIMARY KEY REFERENCES images(fingerprint) ON DELETE CASCADE,
        checked_at    INTEGER,
        claimed_by    TEXT,
        claimed_until INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX image_checks_checked ON image_checks(checked_at);
    CREATE TABLE verify_jobs (
        operation_id  TEXT PRIMARY KEY REFERENCES operations(id) ON DELETE CASCADE,
        fingerprint   TEXT NOT NULL,
        claimed_by    TEXT,
        claimed_until INTEGER
    ) WITHOUT ROWID;
    "#,
    // 8: a counter every change to the trust store moves, so that every process
    // serving this catalog (replicas, `imagestore trust` elsewhere) sees a token
    // removed within a second without reading the store on every request.
    r#"
    CREATE TABLE trust_version (
        id      INTEGER PRIMARY KEY CHECK (id = 0),
        version INTEGER NOT NULL
    );
    INSERT INTO trust_version (id, version) VALUES (0, 0);
    CREATE TRIGGER trust_version_insert AFTER INSERT ON trust
        BEGIN UPDATE trust_version SET version = version + 1; END;
    CREATE TRIGGER trust_version_delete AFTER DELETE ON trust
        BEGIN UPDATE trust_version SET version = version + 1; END;
    CREATE TRIGGER trust_version_update AFTER UPDATE ON trust
        BEGIN UPDATE trust_version SET version = version + 1; END;
    "#,
    // 9: the same for operations (and the imports and verifications they
    // track), so that long polls on one process wake for changes another made.
    r#"
    CREATE TABLE operations_version (
        id      INTEGER PRIMARY KEY CHECK (id = 0),
        version INTEGER NOT NULL
    );
    INSERT INTO operations_version (id, version) VALUES (0, 0);
    CREATE TRIGGER operations_version_insert AFTER INSERT ON operations
        BEGIN UPDATE operations_version SET version = version + 1; END;
    CREATE TRIGGER operations_version_delete AFTER DELETE ON operations
        BEGIN UPDATE operations_version SET version = version + 1; END;
    CREATE TRIGGER operations_version_update AFTER UPDATE ON operations
        BEGIN UPDATE operations_version SET version = version + 1; END;
    CREATE TRIGGER operations_version_verify AFTER INSERT ON verify_jobs
        BEGIN UPDATE operations_version SET version = version + 1; END;
    "#,
    // 10: when each periodic job (expiry, collection, auto-update) last ran, so
    // that it runs once per interval across every process serving the catalog.
    r#"
    CREATE TABLE periodic_runs (
        job         TEXT PRIMARY KEY,
        last_run_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 11: secrets every control plane serving the catalog must share (the
    // cluster credential, from which tickets are signed), so that a replica
    // started on another machine signs what every blob node accepts.
    r#"
    CREATE TABLE cluster_secrets (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 12: named stores. Where each image has a verified copy (JSON array of store
    // names; empty until the control plane adopts images registered before into
    // its default store) and where a copy failed (JSON array of {store,
    // message}); which stores each node reaches; which stores an import needs;
    // released keys by store (empty: released before stores had names, every
    // store).
    r#"
    ALTER TABLE images ADD COLUMN stores TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE images ADD COLUMN failed_stores TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE nodes ADD COLUMN stores TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE import_jobs ADD COLUMN needs TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE import_jobs ADD COLUMN importer_roles TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE released_by_store (
        store       TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        released_at INTEGER NOT NULL,
        PRIMARY KEY (store, storage_key)
    ) WITHOUT ROWID;
    INSERT INTO released_by_store (store, storage_key, released_at)
        SELECT '', storage_key, released_at FROM released_content;
    DROP TABLE released_content;
    ALTER TABLE released_by_store RENAME TO released_content;
    CREATE INDEX released_content_key ON released_content(storage_key);
    "#,
    // 13: the trace an import was queued in (W3C traceparent; '' for none).
    r#"
    ALTER TABLE import_jobs ADD COLUMN trace_parent TEXT NOT NULL DEFAULT '';
    "#,
];

/// Brings the database up to the newest schema, one transaction per migration.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    super::check_schema_version(current, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "catalog schema migrated");
    }
    Ok(())
}

/// The newest schema version this build knows.
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}
