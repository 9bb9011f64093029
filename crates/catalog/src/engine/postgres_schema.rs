//! PostgreSQL's versioned migrations, tracked in `schema_migrations`. The same
//! tables and columns as SQLite's schema at the same point, so that the logic's
//! SQL runs on both; keys sort bytewise (`COLLATE "C"`, as SQLite does), and
//! booleans are BOOLEAN. A migration, once released, never changes: add one.

use tokio_postgres::Client;

use crate::error::Result;

/// Taken for the whole migration, so that replicas starting together migrate
/// one after the other.
const MIGRATION_LOCK: i64 = 0x696d_6773_6d69_6772;

const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's migrations 1 to 11 made.
    r#"
    CREATE TABLE images (
        fingerprint   TEXT COLLATE "C" PRIMARY KEY,
        image_type    TEXT NOT NULL,
        architecture  TEXT NOT NULL,
        size          BIGINT NOT NULL,
        filename      TEXT NOT NULL,
        layout        TEXT NOT NULL,
        properties    TEXT NOT NULL,   -- JSON object of strings
        public        BOOLEAN NOT NULL,
        auto_update   BOOLEAN NOT NULL,
        cached        BOOLEAN NOT NULL,
        created_at    BIGINT,          -- unix nanoseconds
        uploaded_at   BIGINT NOT NULL,
        last_used_at  BIGINT,
        expires_at    BIGINT,
        update_source TEXT,            -- JSON, NULL for none
        damage        TEXT             -- JSON, NULL while sound
    );
    CREATE INDEX images_public ON images(public, fingerprint);

    CREATE TABLE image_parts (
        fingerprint TEXT COLLATE "C" NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
        position    BIGINT NOT NULL,
        role        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        size        BIGINT NOT NULL,
        storage_key TEXT COLLATE "C" NOT NULL,
        extension   TEXT NOT NULL,
        PRIMARY KEY (fingerprint, position)
    );
    CREATE INDEX image_parts_storage_key ON image_parts(storage_key);

    CREATE TABLE part_objects (
        fingerprint TEXT COLLATE "C" NOT NULL,
        position    BIGINT NOT NULL,
        "offset"    BIGINT NOT NULL,
        size        BIGINT NOT NULL,
        storage_key TEXT NOT NULL,
        PRIMARY KEY (fingerprint, position, "offset"),
        FOREIGN KEY (fingerprint, position)
            REFERENCES image_parts(fingerprint, position) ON DELETE CASCADE
    );

    CREATE TABLE aliases (
        name        TEXT COLLATE "C" PRIMARY KEY,
        fingerprint TEXT COLLATE "C" NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
        description TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE INDEX aliases_fingerprint ON aliases(fingerprint);

    CREATE TABLE released_content (
        storage_key TEXT COLLATE "C" PRIMARY KEY,
        released_at BIGINT NOT NULL
    );
    CREATE INDEX released_content_at ON released_content(released_at);

    CREATE TABLE nodes (
        node_id           TEXT COLLATE "C" PRIMARY KEY,
        address           TEXT NOT NULL,
        capacity_bytes    BIGINT NOT NULL,
        available_bytes   BIGINT NOT NULL,
        active_transfers  BIGINT NOT NULL,
        healthy           BOOLEAN NOT NULL,
        version           TEXT NOT NULL,
        registered_at     BIGINT NOT NULL,
        last_heartbeat_at BIGINT NOT NULL
    );

    CREATE TABLE operations (
        id               TEXT COLLATE "C" PRIMARY KEY,
        description      TEXT NOT NULL,
        state            TEXT NOT NULL,
        stage            TEXT NOT NULL,
        bytes_done       BIGINT NOT NULL,
        bytes_total      BIGINT NOT NULL,
        bytes_per_second BIGINT NOT NULL,
        error_code       INTEGER,
        error_message    TEXT,
        image            TEXT NOT NULL,
        metadata         TEXT NOT NULL, -- JSON object of strings
        may_cancel       BOOLEAN NOT NULL,
        created_at       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL
    );
    CREATE INDEX operations_created ON operations(created_at DESC, id);

    CREATE TABLE uploads (
        id              TEXT COLLATE "C" PRIMARY KEY,
        spec            TEXT NOT NULL,  -- JSON
        state           TEXT NOT NULL,
        committed_size  BIGINT NOT NULL,
        metadata_size   BIGINT NOT NULL,
        hash_image      BYTEA,
        hash_part       BYTEA,
        lease           TEXT,
        lease_node      TEXT,
        fingerprint     TEXT,
        error_message   TEXT,
        created_at      BIGINT NOT NULL,
        expires_at      BIGINT NOT NULL
    );

    CREATE TABLE upload_segments (
        upload_id   TEXT COLLATE "C" NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
        start       BIGINT NOT NULL,
        length      BIGINT NOT NULL,
        storage_key TEXT NOT NULL,
        PRIMARY KEY (upload_id, start)
    );

    CREATE TABLE trust (
        id          TEXT COLLATE "C" PRIMARY KEY,
        kind        TEXT NOT NULL,     -- certificate | token
        description TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT
    );

    CREATE TABLE image_secrets (
        secret_hash TEXT COLLATE "C" PRIMARY KEY,
        fingerprint TEXT COLLATE "C" NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE INDEX image_secrets_fingerprint ON image_secrets(fingerprint);

    CREATE TABLE import_jobs (
        operation_id TEXT COLLATE "C" PRIMARY KEY REFERENCES operations(id) ON DELETE CASCADE,
        request      BYTEA NOT NULL,  -- imagestore.v1.ImportImageRequest, protobuf
        replaces     TEXT,
        node_id      TEXT,
        reported_at  BIGINT
    );
    CREATE INDEX import_jobs_replaces ON import_jobs(replaces);

    CREATE TABLE image_checks (
        fingerprint   TEXT COLLATE "C" PRIMARY KEY REFERENCES images(fingerprint) ON DELETE CASCADE,
        checked_at    BIGINT,
        claimed_by    TEXT,
        claimed_until BIGINT
    );
    CREATE INDEX image_checks_checked ON image_checks(checked_at);
    CREATE TABLE verify_jobs (
        operation_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES operations(id) ON DELETE CASCADE,
        fingerprint   TEXT NOT NULL,
        claimed_by    TEXT,
        claimed_until BIGINT
    );

    CREATE TABLE periodic_runs (
        job         TEXT COLLATE "C" PRIMARY KEY,
        last_run_at BIGINT NOT NULL
    );

    CREATE TABLE cluster_secrets (
        name  TEXT COLLATE "C" PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- The counters every process reads to learn of others' changes.
    CREATE TABLE images_version (id INTEGER PRIMARY KEY CHECK (id = 0), version BIGINT NOT NULL);
    INSERT INTO images_version VALUES (0, 0);
    CREATE TABLE trust_version (id INTEGER PRIMARY KEY CHECK (id = 0), version BIGINT NOT NULL);
    INSERT INTO trust_version VALUES (0, 0);
    CREATE TABLE operations_version (id INTEGER PRIMARY KEY CHECK (id = 0), version BIGINT NOT NULL);
    INSERT INTO operations_version VALUES (0, 0);

    CREATE FUNCTION images_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE images_version SET version = version + 1; RETURN NULL; END $$;
    CREATE TRIGGER images_version_insert AFTER INSERT OR DELETE ON images
        FOR EACH ROW EXECUTE FUNCTION images_changed();
    CREATE TRIGGER images_version_update AFTER UPDATE OF
        image_type, architecture, size, filename, layout, properties, public, auto_update,
        cached, created_at, uploaded_at, expires_at, update_source, damage ON images
        FOR EACH ROW EXECUTE FUNCTION images_changed();
    CREATE TRIGGER images_version_parts AFTER INSERT ON image_parts
        FOR EACH ROW EXECUTE FUNCTION images_changed();
    CREATE TRIGGER images_version_aliases AFTER INSERT OR DELETE OR UPDATE ON aliases
        FOR EACH ROW EXECUTE FUNCTION images_changed();

    CREATE FUNCTION trust_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE trust_version SET version = version + 1; RETURN NULL; END $$;
    CREATE TRIGGER trust_version_change AFTER INSERT OR DELETE OR UPDATE ON trust
        FOR EACH ROW EXECUTE FUNCTION trust_changed();

    -- Operations also wake the long polls of every replica at once (LISTEN).
    CREATE FUNCTION operations_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE operations_version SET version = version + 1;
        PERFORM pg_notify('imagestore_operations', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER operations_version_change AFTER INSERT OR DELETE OR UPDATE ON operations
        FOR EACH ROW EXECUTE FUNCTION operations_changed();
    CREATE TRIGGER operations_version_verify AFTER INSERT ON verify_jobs
        FOR EACH ROW EXECUTE FUNCTION operations_changed();
    "#,
    // 2: named stores (as SQLite's migration 12).
    r#"
    ALTER TABLE images ADD COLUMN stores TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE images ADD COLUMN failed_stores TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE nodes ADD COLUMN stores TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE import_jobs ADD COLUMN needs TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE import_jobs ADD COLUMN importer_roles TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE released_content ADD COLUMN store TEXT COLLATE "C" NOT NULL DEFAULT '';
    ALTER TABLE released_content DROP CONSTRAINT released_content_pkey;
    ALTER TABLE released_content ADD PRIMARY KEY (store, storage_key);
    CREATE INDEX released_content_key ON released_content(storage_key);
    "#,
    // 3: the trace an import was queued in (as SQLite's migration 13).
    r#"
    ALTER TABLE import_jobs ADD COLUMN trace_parent TEXT NOT NULL DEFAULT '';
    "#,
];

/// Every table of catalog data, parents before children (the order a copy
/// fills them in).
pub const TABLES: &[&str] = &[
    "images",
    "image_parts",
    "part_objects",
    "aliases",
    "released_content",
    "nodes",
    "operations",
    "uploads",
    "upload_segments",
    "trust",
    "image_secrets",
    "import_jobs",
    "image_checks",
    "verify_jobs",
    "periodic_runs",
    "cluster_secrets",
];

/// The channel operation changes are announced on.
pub const OPERATIONS_CHANNEL: &str = "imagestore_operations";

/// Brings the database up to the newest schema, in one transaction under a lock.
pub async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    super::check_schema_version(current, MIGRATIONS.len())?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&((i + 1) as i64)],
        )
        .await?;
        tracing::info!(version = i + 1, "catalog schema migrated (PostgreSQL)");
    }
    tx.commit().await?;
    Ok(())
}
