//! Image bytes at rest, through `object_store`.
//!
//! A part of an image is stored under a key prefix as one or more objects (the
//! key layout is [`layout`]'s). An upload writes one object per segment (a
//! stretch of the stream between two commits), so an upload resumed on another
//! node continues with new objects and nothing is ever copied. Reads stream the
//! objects the catalog recorded, in order; nothing is read because a listing
//! shows it. The same code runs on a local directory and on S3.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

mod copy;
mod direct;
pub mod layout;
mod names;
mod s3;

pub use copy::Copied;
pub use layout::segment_key;
pub use names::{DEFAULT_STORE, check_store_name};
pub use s3::INSTANCE_CREDENTIALS;

/// Objects are read and re-chunked to at most this many bytes per chunk.
pub const READ_CHUNK: usize = 1024 * 1024;

/// How a read is cut and how far a local read runs ahead of its consumer: the
/// memory one reader holds is about `chunk × (ahead + 2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadShape {
    pub chunk: usize,
    pub ahead: usize,
}

impl ReadShape {
    /// One fast stream (a gRPC download, an import): 1 MiB chunks, four ahead
    /// (0.8 → 1.1 GB/s for one download against reading one chunk at a time).
    pub const BULK: Self = Self {
        chunk: READ_CHUNK,
        ahead: 4,
    };
    /// Many streams at once (a fleet pulling over HTTP): 256 KiB, two ahead, so
    /// that 32 pulls hold ~32 MiB rather than ~200.
    pub const FLEET: Self = Self {
        chunk: 256 * 1024,
        ahead: 2,
    };
}
/// Multipart parts (5 MiB each) in flight per segment writer on a remote store.
/// Two keep it busy; four measured no faster and raised a blob node's peak memory from ~55 to
/// ~90 MiB with a fast client (imagestore-bench, blob_rss_mib_1g).
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("stored part {prefix} is damaged: {reason}")]
    Inconsistent { prefix: String, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Its kind (gRPC's codes, the classification every layer shares): a store
    /// that fails says nothing against the bytes given to it, so a caller may
    /// try again; a store that cannot be opened is the operator's to fix.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::BadUrl { .. } => tonic::Code::FailedPrecondition,
            Self::ObjectStore(_) | Self::Inconsistent { .. } | Self::Io(_) => {
                tonic::Code::Unavailable
            }
        }
    }
}

/// An object store, plus what only the local backend needs.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// For a local directory: where an object's file lies, for direct writes
    /// and so that crash leftovers (staging files, which `list` does not show)
    /// can be removed with their prefix.
    local: Option<Arc<LocalFileSystem>>,
    description: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// One object of a stored part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSegment {
    /// Offset within the part.
    pub offset: u64,
    pub size: u64,
    pub key: String,
}

impl BlobStore {
    /// Opens a store from a URL: `file:///var/lib/imagestore/blobs` (or a plain
    /// path) for a local directory, `s3://bucket/prefix` (with `options` such as
    /// `endpoint`, `region`, `access_key_id`, `secret_access_key`, `allow_http`,
    /// or the AWS_* environment), and the other schemes object_store knows.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let local = match url.strip_prefix("file://") {
            Some(path) => Some(PathBuf::from(path)),
            None if !url.contains("://") => Some(PathBuf::from(url)),
            None => None,
        };
        if let Some(root) = local {
            // Image bytes are the owner's alone (0700; files inside 0600).
            let mut dir = std::fs::DirBuilder::new();
            dir.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
            dir.create(&root).map_err(|e| bad(e.to_string()))?;
            let root = root.canonicalize().map_err(|e| bad(e.to_string()))?;
            // fsync files and directories: a registered image must survive a crash.
            let fs = Arc::new(
                LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| bad(e.to_string()))?
                    .with_fsync(true),
            );
            return Ok(Self {
                inner: fs.clone(),
                description: format!("local directory {}", root.display()),
                local: Some(fs),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (store, prefix) = match parsed.scheme() {
            "s3" | "s3a" => (
                s3::open(url, options).map_err(bad)?,
                Path::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?,
            ),
            _ => object_store::parse_url_opts(&parsed, options.iter())
                .map_err(|e| bad(e.to_string()))?,
        };
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self {
            inner: store,
            local: None,
            description: format!("object store {url}"),
        })
    }

    /// Starts writing one segment object: a file written directly on a local
    /// directory, a multipart upload elsewhere.
    pub async fn begin_segment(&self, key: &str) -> Result<SegmentWriter> {
        let location = Path::from(key);
        if let Some(local) = &self.local {
            let file = local.path_to_filesystem(&location)?;
            return Ok(SegmentWriter(Writer::Local(
                direct::DirectWriter::create(file).await?,
            )));
        }
        let upload = self.inner.put_multipart(&location).await?;
        Ok(SegmentWriter(Writer::Remote {
            writer: WriteMultipart::new(upload),
            written: 0,
        }))
    }

    /// The segment objects a listing shows under `prefix`, in offset order: for
    /// images registered before the catalog recorded their objects.
    pub async fn list_segments(&self, prefix: &str) -> Result<Vec<StoredSegment>> {
        let mut found: Vec<StoredSegment> = self
            .inner
            .list(Some(&Path::from(prefix.trim_end_matches('/'))))
            .map_ok(|meta| {
                let key = meta.location.to_string();
                (layout::segment_offset(&key), key, meta.size)
            })
            .try_filter_map(|(offset, key, size)| async move {
                Ok(offset.map(|offset| StoredSegment { offset, size, key }))
            })
            .try_collect()
            .await?;
        found.sort_by_key(|s| s.offset);
        Ok(found)
    }

    /// Every object key under `prefix`, sorted (for operators and tests).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .inner
            .list(Some(&Path::from(prefix.trim_end_matches('/'))))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Checks that `objects` are well-formed keys below `prefix`, contiguous from
    /// 0 to `size`, and stored with the sizes recorded; then deletes whatever
    /// else lies under the prefix (segments a crashed or superseded writer
    /// stored but never committed, a killed node's staging files).
    pub async fn seal_part(
        &self,
        prefix: &str,
        objects: &[StoredSegment],
        size: u64,
    ) -> Result<()> {
        let damaged = |reason: String| StoreError::Inconsistent {
            prefix: prefix.to_owned(),
            reason,
        };
        check_contiguous(prefix, objects, size).map_err(damaged)?;
        self.check_objects(objects).await?.map_err(damaged)?;
        let keep: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        self.collect_strays(prefix, &keep, std::time::Duration::ZERO)
            .await?;
        Ok(())
    }

    /// Whether every object is stored with its recorded size: `Ok(Err(why))`
    /// names one that is missing or of another size; `Err` is a failure to ask.
    pub async fn check_objects(
        &self,
        objects: &[StoredSegment],
    ) -> Result<std::result::Result<(), String>> {
        for object in objects {
            let stored = match self.inner.head(&Path::from(object.key.as_str())).await {
                Ok(meta) => meta.size,
                Err(object_store::Error::NotFound { .. }) => {
                    return Ok(Err(format!("object {} is missing", object.key)));
                }
                Err(e) => return Err(e.into()),
            };
            if stored != object.size {
                return Ok(Err(format!(
                    "object {} holds {stored} bytes; {} were recorded",
                    object.key, object.size
                )));
            }
        }
        Ok(Ok(()))
    }

    /// Deletes what lies under the part `prefix` but is not in `keep`, once it is
    /// older than `grace` (a writer may still be finishing it): uncommitted
    /// segments and, on a local directory, staging files a killed writer left.
    /// Returns the bytes freed.
    pub async fn collect_strays(
        &self,
        prefix: &str,
        keep: &[&str],
        grace: std::time::Duration,
    ) -> Result<u64> {
        if layout::check_key(prefix) != Ok(layout::KeyKind::Part) {
            return Err(StoreError::Inconsistent {
                prefix: prefix.to_owned(),
                reason: "not a part prefix of the storage layout; nothing was deleted".into(),
            });
        }
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut freed = 0;
        if let Some(local) = &self.local {
            // The filesystem, not object_store's listing: staging files are
            // hidden from the listing.
            let dir = local.path_to_filesystem(&Path::from(prefix.trim_end_matches('/')))?;
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = entry.metadata().await?;
                if !meta.is_file()
                    || keep.contains(&format!("{prefix}{name}").as_str())
                    || meta.modified()? > cutoff
                {
                    continue;
                }
                match tokio::fs::remove_file(entry.path()).await {
                    Ok(()) => freed += meta.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(freed);
        }
        let stray: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&Path::from(prefix.trim_end_matches('/'))))
            .try_filter(|m| {
                let go = !keep.contains(&m.location.as_ref())
                    && std::time::SystemTime::from(m.last_modified) <= cutoff;
                async move { go }
            })
            .try_collect()
            .await?;
        for meta in stray {
            match self.inner.delete(&meta.location).await {
                Ok(()) => freed += meta.size,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(freed)
    }

    /// Streams the part stored as `objects` from `offset`, at most `limit` bytes
    /// (0 = to the end), in chunks of at most [`READ_CHUNK`].
    pub fn read_part(
        &self,
        objects: Vec<StoredSegment>,
        offset: u64,
        limit: u64,
    ) -> BoxStream<'static, Result<Bytes>> {
        self.read_part_shaped(objects, offset, limit, ReadShape::BULK)
    }

    /// As [`Self::read_part`], cut and read ahead as `shape` says.
    pub fn read_part_shaped(
        &self,
        segments: Vec<StoredSegment>,
        offset: u64,
        limit: u64,
        shape: ReadShape,
    ) -> BoxStream<'static, Result<Bytes>> {
        let end = match limit {
            0 => u64::MAX,
            n => offset.saturating_add(n),
        };
        let store = self.inner.clone();
        let pieces: Vec<(String, u64, u64)> = segments
            .into_iter()
            .filter(|s| s.offset + s.size > offset && s.offset < end && s.size > 0)
            .map(|s| {
                let from = offset.saturating_sub(s.offset);
                let to = (end - s.offset).min(s.size);
                (s.key, from, to)
            })
            .collect();
        let stream = futures::stream::iter(pieces)
            .then(move |(key, from, to)| {
                let store = store.clone();
                async move {
                    let opts = GetOptions {
                        range: Some(GetRange::Bounded(from..to)),
                        ..GetOptions::default()
                    };
                    let got = store.get_opts(&Path::from(key.as_str()), opts).await?;
                    let range = got.range.clone();
                    Ok::<_, StoreError>(match got.payload {
                        // object_store reads local files 8 KiB at a time, each on
                        // the blocking pool: far below disk speed. Read 1 MiB.
                        object_store::GetResultPayload::File(file, _) => {
                            file_chunks(file, range, shape)
                        }
                        object_store::GetResultPayload::Stream(s) => {
                            coalesce(s.map_err(StoreError::from).boxed(), shape.chunk)
                        }
                    })
                }
            })
            .try_flatten()
            .flat_map(move |chunk| futures::stream::iter(rechunk(chunk, shape.chunk)));
        stream.boxed()
    }

    /// A blocking reader over a part, for parsers that want `std::io::Read`. Use it
    /// from a blocking thread (`spawn_blocking`), never on the async workers.
    pub fn blocking_reader(&self, objects: Vec<StoredSegment>) -> BlockingReader {
        BlockingReader {
            stream: self.read_part(objects, 0, 0),
            current: Bytes::new(),
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Deletes one object, or every object under a prefix ending in "/" (and, on a
    /// local directory, whatever crash leftovers lie there).
    /// The key must have the layout's form ([`layout::check_key`]).
    pub async fn delete(&self, key: &str) -> Result<()> {
        if let Err(reason) = layout::check_key(key) {
            return Err(StoreError::Inconsistent {
                prefix: key.to_owned(),
                reason: format!("{reason}; nothing was deleted"),
            });
        }
        if !key.ends_with('/') {
            return match self.inner.delete(&Path::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let listed = self
            .inner
            .list(Some(&Path::from(key.trim_end_matches('/'))))
            .map_ok(|m| m.location)
            .boxed();
        self.inner
            .delete_stream(listed)
            .try_collect::<Vec<_>>()
            .await?;
        if let Some(local) = &self.local {
            let dir = local.path_to_filesystem(&Path::from(key.trim_end_matches('/')))?;
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Checks that `objects` lie below `prefix` and cover 0..size without gap or
/// overlap.
pub fn check_contiguous(
    prefix: &str,
    objects: &[StoredSegment],
    size: u64,
) -> std::result::Result<(), String> {
    let mut expected = 0u64;
    for o in objects {
        if !layout::is_within(&o.key, prefix)
            || layout::check_key(&o.key) != Ok(layout::KeyKind::Object)
        {
            return Err(format!(
                "object {:?} is not a segment object below {prefix}",
                o.key
            ));
        }
        if o.offset != expected {
            return Err(format!(
                "expected an object at offset {expected}, found {}",
                o.offset
            ));
        }
        expected = expected
            .checked_add(o.size)
            .ok_or_else(|| "object sizes overflow".to_owned())?;
    }
    if expected != size {
        return Err(format!("objects hold {expected} bytes, expected {size}"));
    }
    Ok(())
}

/// Reads `range` of a local file in `shape.chunk` pieces on one blocking thread
/// that runs up to `shape.ahead` chunks ahead (the disk read of the next chunks
/// overlaps the network send of this one, in bounded memory), and stops when the
/// consumer goes.
fn file_chunks(
    mut file: std::fs::File,
    range: std::ops::Range<u64>,
    shape: ReadShape,
) -> BoxStream<'static, Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(shape.ahead.max(1));
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(StoreError::from(e)));
            return;
        }
        let mut pos = range.start;
        while pos < range.end {
            let n = (range.end - pos).min(shape.chunk as u64) as usize;
            let chunk = imagestore_direct::read_exactly(&mut file, n).map(Bytes::from);
            let failed = chunk.is_err();
            if tx.blocking_send(chunk.map_err(StoreError::from)).is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Joins small chunks (an HTTP body arrives in pieces of a few KiB) into pieces of
/// about `chunk` bytes, so that each message downstream carries real weight.
fn coalesce(
    stream: BoxStream<'static, Result<Bytes>>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        let mut buf = bytes::BytesMut::new();
        loop {
            match stream.next().await {
                Some(Ok(b)) if buf.is_empty() && b.len() >= chunk => {
                    return Some((Ok(b), Some(stream)));
                }
                Some(Ok(b)) => {
                    buf.extend_from_slice(&b);
                    if buf.len() >= chunk {
                        return Some((Ok(buf.freeze()), Some(stream)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None if buf.is_empty() => return None,
                None => return Some((Ok(buf.freeze()), None)),
            }
        }
    })
    .boxed()
}

fn rechunk(chunk: Result<Bytes>, size: usize) -> Vec<Result<Bytes>> {
    match chunk {
        Ok(mut b) if b.len() > size => {
            let mut out = Vec::with_capacity(b.len() / size + 1);
            while !b.is_empty() {
                out.push(Ok(b.split_to(b.len().min(size))));
            }
            out
        }
        other => vec![other],
    }
}

/// Writes one segment object; nothing is visible until [`SegmentWriter::finish`].
pub struct SegmentWriter(Writer);

enum Writer {
    Local(direct::DirectWriter),
    Remote {
        writer: WriteMultipart,
        written: u64,
    },
}

impl SegmentWriter {
    /// Queues bytes, waiting while earlier ones are still on their way so that
    /// memory stays bounded.
    pub async fn put(&mut self, bytes: Bytes) -> Result<()> {
        match &mut self.0 {
            Writer::Local(w) => w.put(bytes).await?,
            Writer::Remote { writer, written } => {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                *written += bytes.len() as u64;
                // A copy: the multipart upload keeps what it is given until a
                // whole part is sent, and the chunk may hold room in the
                // node's budget that the next chunks need to arrive.
                writer.put(Bytes::copy_from_slice(&bytes));
            }
        }
        Ok(())
    }

    /// Bytes queued so far.
    pub fn written(&self) -> u64 {
        match &self.0 {
            Writer::Local(w) => w.written(),
            Writer::Remote { written, .. } => *written,
        }
    }

    /// Makes the object durable and visible; returns its size.
    pub async fn finish(self) -> Result<u64> {
        use imagestore_telemetry::metrics::{Metrics, metrics};
        let started = std::time::Instant::now();
        let size = match self.0 {
            Writer::Local(w) => w.finish().await?,
            Writer::Remote { writer, written } => {
                writer.finish().await?;
                written
            }
        };
        Metrics::timed(&metrics().store_seconds, "segment", started.elapsed());
        Ok(size)
    }

    /// Throws the object away.
    pub async fn abort(self) -> Result<()> {
        match self.0 {
            Writer::Local(w) => w.abort().await?,
            Writer::Remote { writer, .. } => writer.abort().await?,
        }
        Ok(())
    }
}

/// `std::io::Read` over a stored part.
pub struct BlockingReader {
    stream: BoxStream<'static, Result<Bytes>>,
    current: Bytes,
    handle: tokio::runtime::Handle,
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                // The store's error itself, kind and all, for whoever reads on.
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put(store: &BlobStore, key: &str, data: &[u8]) -> StoredSegment {
        let mut w = store.begin_segment(key).await.unwrap();
        w.put(Bytes::copy_from_slice(data)).await.unwrap();
        let size = w.finish().await.unwrap();
        assert_eq!(size, data.len() as u64);
        StoredSegment {
            offset: layout::segment_offset(key).unwrap(),
            size,
            key: key.to_owned(),
        }
    }

    #[tokio::test]
    async fn segments_read_back_as_one_part_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let prefix = "blobs/u1/unified/";
        let mut objects = Vec::new();
        for (start, end) in [
            (0, 1_000_000),
            (1_000_000, 2_500_000),
            (2_500_000, 3_000_000),
        ] {
            let key = segment_key(prefix, start as u64, "a");
            objects.push(put(&store, &key, &data[start..end]).await);
        }
        // What was never committed goes at seal: an object past the end, and a
        // superseded writer's object at a committed offset.
        put(&store, &segment_key(prefix, 3_000_000, "a"), b"junk").await;
        put(
            &store,
            &segment_key(prefix, 1_000_000, "b"),
            b"other writer",
        )
        .await;
        store.seal_part(prefix, &objects, 3_000_000).await.unwrap();
        assert_eq!(store.list_segments(prefix).await.unwrap(), objects);

        for (offset, limit) in [(0u64, 0u64), (999_999, 2), (1_234_567, 0), (2_999_999, 10)] {
            let got: Vec<Bytes> = store
                .read_part(objects.clone(), offset, limit)
                .try_collect()
                .await
                .unwrap();
            assert!(got.iter().all(|c| c.len() <= READ_CHUNK));
            let got: Vec<u8> = got.concat();
            let end = if limit == 0 {
                data.len()
            } else {
                (offset + limit) as usize
            };
            assert_eq!(got, &data[offset as usize..end.min(data.len())]);
        }
        let reader = store.blocking_reader(objects);
        let all = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            let mut r = reader;
            r.read_to_end(&mut v).unwrap();
            v
        })
        .await
        .unwrap();
        assert_eq!(all, data);

        store.delete("blobs/u1/").await.unwrap();
        assert!(store.list_segments(prefix).await.unwrap().is_empty());
        assert!(!dir.path().join("blobs/u1").exists());
    }

    #[tokio::test]
    async fn a_gap_a_missing_object_or_a_wrong_size_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap();
        let prefix = "blobs/u2/rootfs/";
        let mut objects = Vec::new();
        for start in [0u64, 10] {
            objects.push(put(&store, &segment_key(prefix, start, "a"), b"12345").await);
        }
        let gap = store.seal_part(prefix, &objects, 15).await;
        assert!(
            matches!(gap, Err(StoreError::Inconsistent { .. })),
            "{gap:?}"
        );
        objects[1].offset = 5;
        objects[1].key = segment_key(prefix, 5, "a");
        let missing = store.seal_part(prefix, &objects, 10).await;
        assert!(format!("{missing:?}").contains("missing"), "{missing:?}");
        put(&store, &objects[1].key, b"12345").await;
        objects[1].size = 4;
        let short = store.seal_part(prefix, &objects, 9).await;
        assert!(
            format!("{short:?}").contains("holds 5 bytes; 4 were recorded"),
            "{short:?}"
        );
        let outside = vec![StoredSegment {
            offset: 0,
            size: 5,
            key: segment_key("blobs/other/rootfs/", 0, "a"),
        }];
        assert!(store.seal_part(prefix, &outside, 5).await.is_err());
        // Nothing outside the layout is ever deleted.
        for key in ["blobs/../", "../x/", "blobs/u2/rootfs/../../"] {
            assert!(store.delete(key).await.is_err(), "{key}");
        }
    }

    /// Local segments are written in aligned blocks with a padded, cut-back tail;
    /// nothing but finished objects is ever visible, an aborted or dropped
    /// writer leaves no file, and a killed writer's staging file is collected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_segments_span_blocks_and_leave_nothing_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap();
        let size = 2 * direct::BLOCK + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let key = segment_key("blobs/u3/unified/", 0, "a");
        let mut w = store.begin_segment(&key).await.unwrap();
        for chunk in data.chunks(1_000_003) {
            w.put(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert!(
            store.keys("blobs/u3/").await.unwrap().is_empty(),
            "not visible before finish"
        );
        assert_eq!(w.finish().await.unwrap(), size as u64);
        assert_eq!(std::fs::read(dir.path().join(&key)).unwrap(), data);
        let files = std::fs::read_dir(dir.path().join("blobs/u3/unified"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "no staging file stays");

        let rootfs = "blobs/u3/rootfs/";
        let mut aborted = store
            .begin_segment(&segment_key(rootfs, 0, "a"))
            .await
            .unwrap();
        aborted
            .put(Bytes::from(vec![1u8; direct::BLOCK + 1]))
            .await
            .unwrap();
        aborted.abort().await.unwrap();
        let mut dropped = store
            .begin_segment(&segment_key(rootfs, 0, "b"))
            .await
            .unwrap();
        dropped.put(Bytes::from_static(b"partial")).await.unwrap();
        drop(dropped);
        let count = || {
            std::fs::read_dir(dir.path().join("blobs/u3/rootfs"))
                .unwrap()
                .count()
        };
        assert_eq!(count(), 0);

        // A writer killed mid-segment leaves its staging file; collection takes it
        // once it is older than the grace, and keeps what was committed.
        let kept = put(&store, &segment_key(rootfs, 0, "c"), b"committed").await;
        // What a process killed mid-segment leaves: a staging file (as
        // DirectWriter names them), which no listing shows.
        let staging = dir
            .path()
            .join(format!("{}#3", segment_key(rootfs, 9, "d")));
        std::fs::write(&staging, vec![7u8; direct::BLOCK * 2]).unwrap();
        assert_eq!(count(), 2);
        assert_eq!(store.keys(rootfs).await.unwrap(), vec![kept.key.clone()]);
        let keep = [kept.key.as_str()];
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.collect_strays(rootfs, &keep, hour).await.unwrap(), 0);
        store
            .collect_strays(rootfs, &keep, std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(count(), 1);
        assert!(
            store
                .collect_strays("blobs/u3/", &keep, hour)
                .await
                .is_err()
        );
    }
}
