//! Generated unified images of any size, streamed from one shared buffer so that
//! the client costs next to nothing and never holds the image.

use bytes::Bytes;
use imagestore_proto::v1 as pb;

use crate::limits::CHUNK;

/// The upload messages of a valid unified image (see [`pieces`]). The first
/// message names `session`.
pub fn upload_messages(
    session: String,
    ticket: String,
    size: u64,
    seed: u64,
) -> impl futures::Stream<Item = pb::UploadRequest> + Send + 'static {
    let total = total_size(size, seed);
    let mut offset = 0u64;
    let mut first = Some(pb::upload_request::FirstMessage::Upload(session));
    let mut ticket = Some(ticket);
    tokio_stream::iter(pieces(size, seed).into_iter().map(move |data| {
        let m = pb::UploadRequest {
            first_message: first.take(),
            ticket: ticket.take().unwrap_or_default(),
            write_offset: offset,
            finish_write: offset + data.len() as u64 == total,
            data,
            ..Default::default()
        };
        offset += m.data.len() as u64;
        m
    }))
}

/// The same image as a file, for the `imagestore` binary and LXD to import.
pub fn write_file(path: &std::path::Path, size: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for piece in pieces(size, seed) {
        file.write_all(&piece)?;
    }
    file.into_inner()?.sync_all()
}

/// A valid unified image in pieces of at most [`CHUNK`], all slices of one
/// buffer: an uncompressed tarball holding metadata.yaml (with `seed`, so each
/// image is distinct) and a `size`-byte rootfs file.
fn pieces(size: u64, seed: u64) -> Vec<Bytes> {
    let body = Bytes::from(
        (0..CHUNK)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9) as u8 ^ seed as u8)
            .collect::<Vec<u8>>(),
    );
    let pad = ((512 - size % 512) % 512 + 1024) as usize;
    let mut pieces: Vec<Bytes> = vec![head(size, seed)];
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pieces.push(body.slice(..n));
        left -= n as u64;
    }
    pieces.push(Bytes::from(vec![0u8; pad]));
    pieces
}

/// The image's total size in bytes.
pub fn total_size(size: u64, seed: u64) -> u64 {
    head(size, seed).len() as u64 + size + (512 - size % 512) % 512 + 1024
}

fn head(size: u64, seed: u64) -> Bytes {
    let meta = format!(
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: bench\n  seed: \"{seed}\"\n"
    );
    let mut out = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_mode(0o644);
    h.set_path("metadata.yaml").expect("a short path");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.resize(out.len().div_ceil(512) * 512, 0);
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_path("rootfs/blob").expect("a short path");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Bytes::from(out)
}
