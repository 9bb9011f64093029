//! Uploads through a resumable session: the control plane opens it, a blob node
//! takes the bytes, and after a broken stream (or a new run of the same command)
//! the upload continues from the offset the session has committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagestore_proto::v1 as pb;

use crate::{Client, Error, Progress};

/// What to upload.
#[derive(Debug, Clone)]
pub enum Source {
    /// One tarball with metadata.yaml and rootfs/.
    Unified(PathBuf),
    /// A metadata tarball and a rootfs file (squashfs, tarball or qcow2).
    Split { metadata: PathBuf, rootfs: PathBuf },
}

impl Source {
    /// The files, in the order their bytes make the fingerprint.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            Source::Unified(p) => vec![p],
            Source::Split { metadata, rootfs } => vec![metadata, rootfs],
        }
    }
}

/// How to upload, and what to record with the image.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub aliases: Vec<String>,
    pub public: bool,
    pub properties: HashMap<String, String>,
    /// The file name to record; by default the (rootfs) file's own name.
    pub filename: Option<String>,
    /// Where the open session's name is kept between runs, so that running the
    /// same upload again continues it. None: resume only within this call.
    pub resume_file: Option<PathBuf>,
    /// How many times a transient failure is retried before giving up.
    pub retries: u32,
    /// Bytes per message (at most the session's max_chunk_bytes).
    pub chunk_bytes: usize,
    /// The stores to write the image to; None: the server's default store.
    pub target: Option<pb::StoreSelection>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            aliases: Vec::new(),
            public: false,
            properties: HashMap::new(),
            filename: None,
            resume_file: None,
            retries: 5,
            chunk_bytes: 1 << 20,
            target: None,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    upload: String,
    url: String,
}

impl Client {
    /// Uploads `source` and returns the registered image.
    pub async fn upload(
        &self,
        source: &Source,
        opts: &UploadOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<pb::Image, Error> {
        let sizes = source
            .files()
            .iter()
            .map(|p| file_size(p))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = spec(source, &sizes, opts);
        let total: u64 = sizes.iter().sum();
        let mut session = match self.saved_session(opts, &spec).await {
            Some(s) => s,
            None => {
                let s = self.create_session(spec, opts.retries).await?;
                self.save_session(opts, &s.name);
                s
            }
        };
        let mut attempt = 0;
        // The node the last try failed on, reported when asking for the next.
        let mut unreachable = String::new();
        let outcome = loop {
            match pb::UploadState::try_from(session.state).unwrap_or_default() {
                pb::UploadState::Complete => {
                    break session.image.clone().ok_or_else(|| {
                        Error::Invalid("the upload is complete but names no image".into())
                    });
                }
                pb::UploadState::Open => {}
                other => {
                    break Err(Error::Invalid(format!(
                        "upload {} is {}: {}",
                        session.name,
                        other.as_str_name(),
                        session.error_message
                    )));
                }
            }
            progress.start("Uploading", total);
            progress.position(session.committed_size);
            let sent = self
                .send(source, &sizes, &session, opts, progress.clone())
                .await;
            match sent {
                Ok(resp) if resp.complete => {
                    break resp
                        .image
                        .ok_or_else(|| Error::Invalid("upload complete without an image".into()));
                }
                Ok(_) if attempt < opts.retries => {}
                Ok(resp) => {
                    break Err(Error::Invalid(format!(
                        "upload {} stopped at {} bytes without completing",
                        session.name, resp.committed_size
                    )));
                }
                Err(e) if e.is_transient() && attempt < opts.retries => {
                    tracing::info!(error = %e, attempt, "upload interrupted; resuming");
                    unreachable = session.blob_node.clone();
                }
                Err(e) => break Err(e),
            }
            attempt += 1;
            tokio::time::sleep(crate::backoff(attempt)).await;
            session = match self
                .get_upload_avoiding(&session.name, std::mem::take(&mut unreachable))
                .await
            {
                Ok(s) => s,
                Err(e) if e.is_transient() && attempt < opts.retries => {
                    // The control plane itself is away: try again on the next turn.
                    continue;
                }
                Err(e) => break Err(e),
            };
        };
        progress.finish();
        // A transient failure leaves the session to a later run; anything else ends it.
        if let Some(f) = &opts.resume_file
            && !matches!(&outcome, Err(e) if e.is_transient())
        {
            let _ = std::fs::remove_file(f);
        }
        outcome
    }

    /// Opens a session, asking again (of the next control-plane replica, when
    /// there are several) while the answer is that it is out of reach. A session
    /// opened by a call whose answer was lost expires unused.
    async fn create_session(
        &self,
        spec: pb::UploadSpec,
        retries: u32,
    ) -> Result<pb::UploadSession, Error> {
        let mut attempt = 0;
        loop {
            let created = self
                .uploads()
                .create_upload(pb::CreateUploadRequest {
                    spec: Some(spec.clone()),
                })
                .await;
            match created.map_err(Error::from) {
                Ok(s) => return Ok(s.into_inner()),
                Err(e) if e.is_transient() && attempt < retries => {
                    attempt += 1;
                    tokio::time::sleep(crate::backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_upload(&self, name: &str) -> Result<pb::UploadSession, Error> {
        self.get_upload_avoiding(name, String::new()).await
    }

    /// The session, with `unreachable` (a node the last try failed on) reported
    /// so that the answer names another node when there is one.
    async fn get_upload_avoiding(
        &self,
        name: &str,
        unreachable: String,
    ) -> Result<pb::UploadSession, Error> {
        Ok(self
            .uploads()
            .get_upload(pb::GetUploadRequest {
                name: name.to_owned(),
                unreachable_blob_node: unreachable,
            })
            .await?
            .into_inner())
    }

    /// The session a previous run left open for the same upload, if it is still
    /// usable.
    async fn saved_session(
        &self,
        opts: &UploadOptions,
        spec: &pb::UploadSpec,
    ) -> Option<pb::UploadSession> {
        let path = opts.resume_file.as_ref()?;
        let saved: Saved = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        if saved.url != self.url {
            return None;
        }
        let session = self.get_upload(&saved.upload).await.ok()?;
        let same = session.spec.as_ref().is_some_and(|s| {
            s.layout == spec.layout
                && s.metadata_size == spec.metadata_size
                && s.rootfs_size == spec.rootfs_size
        });
        let usable = matches!(
            pb::UploadState::try_from(session.state),
            Ok(pb::UploadState::Open | pb::UploadState::Complete)
        );
        (same && usable).then_some(session)
    }

    fn save_session(&self, opts: &UploadOptions, name: &str) {
        let Some(path) = &opts.resume_file else {
            return;
        };
        let saved = Saved {
            upload: name.to_owned(),
            url: self.url.clone(),
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, serde_json::to_vec(&saved).unwrap_or_default()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the upload session; a rerun starts over");
        }
    }

    /// One stream to the session's blob node, from its committed offset.
    async fn send(
        &self,
        source: &Source,
        sizes: &[u64],
        session: &pb::UploadSession,
        opts: &UploadOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<pb::UploadResponse, Error> {
        let chunk = match session.max_chunk_bytes as usize {
            0 => opts.chunk_bytes,
            max => opts.chunk_bytes.min(max),
        }
        .max(1);
        let files: Vec<(PathBuf, u64)> = source
            .files()
            .iter()
            .map(|p| p.to_path_buf())
            .zip(sizes.iter().copied())
            .collect();
        let first = pb::UploadRequest {
            first_message: Some(pb::upload_request::FirstMessage::Upload(
                session.name.clone(),
            )),
            ticket: session.ticket.clone(),
            ..Default::default()
        };
        let plan = Plan {
            files,
            from: session.committed_size,
            metadata_ended: session.metadata_size > 0,
            chunk,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reader = tokio::task::spawn_blocking(move || plan.read(first, tx, &*progress));
        let mut blobs = self.blobs(&session.blob_node).await?;
        let sent = blobs
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        // A read error on our side explains a refused stream better than the status.
        match reader.await {
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Invalid(format!("reading the image: {e}"))),
            Ok(Ok(())) => {}
        }
        Ok(sent?.into_inner())
    }
}

/// Which bytes one stream sends: the files with the sizes declared for them.
struct Plan {
    files: Vec<(PathBuf, u64)>,
    from: u64,
    metadata_ended: bool,
    chunk: usize,
}

type Sender = tokio::sync::mpsc::Sender<pb::UploadRequest>;

impl Plan {
    /// Reads the files from `from` on and sends them as messages; stops quietly
    /// when the stream goes away (its status tells why).
    fn read(
        self,
        first: pb::UploadRequest,
        tx: Sender,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let split = self.files.len() == 2;
        let mut pending = Some(first);
        let mut base = 0u64;
        let mut offset = self.from;
        let send = |msg: pb::UploadRequest| tx.blocking_send(msg).is_ok();
        for (i, (path, size)) in self.files.iter().enumerate() {
            let end = base + size;
            let is_metadata = split && i == 0;
            if offset >= end {
                // A resume at exactly the end of the metadata that was not yet
                // marked: mark it now.
                if is_metadata && offset == end && !self.metadata_ended {
                    let mut m = pending.take().unwrap_or_default();
                    m.write_offset = offset;
                    m.end_of_metadata = true;
                    if !send(m) {
                        return Ok(());
                    }
                }
                base = end;
                continue;
            }
            let mut file = imagestore_direct::ReadOnce::open(path, offset - base)
                .map_err(|e| Error::io(path, e))?;
            while offset < end {
                let n = (end - offset).min(self.chunk as u64) as usize;
                let data = file.next(n).map_err(|e| Error::io(path, e))?;
                let mut m = pending.take().unwrap_or_default();
                m.write_offset = offset;
                offset += data.len() as u64;
                m.data = data;
                m.end_of_metadata = is_metadata && offset == end;
                m.finish_write = i + 1 == self.files.len() && offset == end;
                if !send(m) {
                    return Ok(());
                }
                progress.position(offset);
            }
            base = end;
        }
        // Everything was committed before: the stream only asks to finish.
        if let Some(mut m) = pending.take() {
            m.write_offset = offset;
            m.finish_write = true;
            send(m);
        }
        Ok(())
    }
}

fn file_size(path: &Path) -> Result<u64, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(meta.len())
}

fn spec(source: &Source, sizes: &[u64], opts: &UploadOptions) -> pb::UploadSpec {
    let (layout, metadata_size, rootfs_size, named) = match source {
        Source::Unified(p) => (pb::ImageLayout::Unified, sizes[0], 0, p),
        Source::Split { rootfs, .. } => (pb::ImageLayout::Split, sizes[0], sizes[1], rootfs),
    };
    pb::UploadSpec {
        layout: layout as i32,
        metadata_size,
        rootfs_size,
        filename: opts.filename.clone().unwrap_or_else(|| {
            named
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        public: opts.public,
        aliases: crate::alias_specs(&opts.aliases),
        properties: opts.properties.clone(),
        target: opts.target.clone(),
        ..Default::default()
    }
}
