//! Progress reports from long transfers, to be drawn by whoever cares (the CLI
//! draws bars; scripts and libraries pass [`NoProgress`]).

/// Receives the position of a transfer. Calls come from one task at a time.
pub trait Progress: Send + Sync {
    /// A new phase starts, e.g. "Uploading", of `total` bytes (0 when unknown).
    fn start(&self, label: &str, total: u64);
    /// Bytes done so far in this phase (including what a resume skipped).
    fn position(&self, done: u64);
    /// A phase without byte counts, e.g. "Verifying".
    fn status(&self, message: &str);
    /// The phase is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn position(&self, _: u64) {}
    fn status(&self, _: &str) {}
    fn finish(&self) {}
}
