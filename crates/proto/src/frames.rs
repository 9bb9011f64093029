//! gRPC messages read straight from HTTP/2's DATA frames, for the calls that
//! carry image bytes: a message's `bytes` field comes out as slices of the
//! frames it arrived in, where tonic's decoder copies every frame into a buffer
//! of its own first (17 % of a blob node's upload CPU was that copy).
//!
//! A message on the wire is a 5-byte prefix (a compression flag, then the
//! length, big-endian) and the protobuf encoding.

use std::collections::VecDeque;
use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::encoding::{WireType, decode_varint, encode_varint};
use tonic::Status;

/// The prefix before every message: a compression flag and the length.
pub const PREFIX: usize = 5;

/// The messages of one request body (a server's) or one answer (a client's),
/// in order.
pub struct Messages {
    body: tonic::body::Body,
    /// Received and not yet taken, oldest first.
    pending: Pieces,
    /// The largest message taken.
    limit: usize,
    ended: bool,
    /// Read by a client: what goes wrong is the server's, not the caller's.
    answer: bool,
    /// The answer's trailers, once they have arrived.
    trailers: Option<tonic::codegen::http::HeaderMap>,
}

impl Messages {
    /// A request's messages, as a server reads them.
    pub fn new(body: tonic::body::Body, limit: usize) -> Self {
        Self {
            body,
            pending: Pieces::default(),
            limit,
            ended: false,
            answer: false,
            trailers: None,
        }
    }

    /// An answer's messages, as a client reads them.
    pub fn answer(body: tonic::body::Body, limit: usize) -> Self {
        Self {
            answer: true,
            ..Self::new(body, limit)
        }
    }

    /// The status the answer ended with (its trailers), once
    /// [`Messages::next_len`] has said the stream ended.
    pub fn status(&self) -> Status {
        match self.trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) => status,
            None => Status::unavailable("the server's answer ended without a status"),
        }
    }

    /// The length of the next message, once its prefix has arrived; None at the
    /// end of the stream. Takes nothing: cancelling it loses nothing.
    pub async fn next_len(&mut self) -> Result<Option<usize>, Status> {
        if !self.fill(PREFIX).await? {
            if self.pending.remaining() == 0 {
                return Ok(None);
            }
            return Err(self.cut_short());
        }
        let mut prefix = [0u8; PREFIX];
        self.pending.peek(&mut prefix);
        if prefix[0] != 0 {
            return Err(if self.answer {
                Status::internal(
                    "the server sent a compressed message, which this client did not ask for",
                )
            } else {
                Status::unimplemented(
                    "compressed messages are not accepted on this call: send them uncompressed",
                )
            });
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(Status::resource_exhausted(format!(
                "a message of {len} bytes is larger than the {} this call takes",
                self.limit
            )));
        }
        Ok(Some(len))
    }

    /// The next message (of `len` bytes, as [`Messages::next_len`] said) as
    /// slices of the frames it came in. Cancelling it loses nothing.
    pub async fn next(&mut self, len: usize) -> Result<Pieces, Status> {
        if !self.fill(PREFIX + len).await? {
            return Err(self.cut_short());
        }
        self.pending.advance(PREFIX);
        Ok(self.pending.take_front(len))
    }

    /// Reads frames until `want` bytes are pending; false if the stream ended
    /// first. Each frame is kept as it arrives, so a cancelled call loses none.
    async fn fill(&mut self, want: usize) -> Result<bool, Status> {
        while self.pending.remaining() < want {
            if self.ended {
                return Ok(false);
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.pending.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
        Ok(true)
    }

    fn cut_short(&self) -> Status {
        if self.answer {
            // Transient: the connection or the server went away mid-answer.
            return Status::unavailable("the server's answer ended inside a message");
        }
        Status::invalid_argument("the request stream ended inside a message")
    }
}

/// Bytes in pieces, read as one buffer without joining them.
#[derive(Debug, Default, Clone)]
pub struct Pieces {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.pieces.push_back(bytes);
        }
    }

    /// The first `n` bytes (at most what there is), as slices.
    pub fn take_front(&mut self, mut n: usize) -> Pieces {
        let mut taken = Pieces::default();
        while n > 0 {
            let Some(piece) = self.pop_front(n) else {
                break;
            };
            n -= piece.len();
            taken.push(piece);
        }
        taken
    }

    /// Up to `n` bytes off the front piece: all of it, or its first `n`.
    fn pop_front(&mut self, n: usize) -> Option<Bytes> {
        let front = self.pieces.front_mut()?;
        let piece = if front.len() <= n {
            self.pieces.pop_front()?
        } else {
            front.split_to(n)
        };
        self.len -= piece.len();
        Some(piece)
    }

    /// Copies the first bytes into `out` without taking them.
    fn peek(&self, out: &mut [u8]) {
        let mut at = 0;
        for piece in &self.pieces {
            let n = piece.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&piece[..n]);
            at += n;
            if at == out.len() {
                break;
            }
        }
    }

    /// The slices, in order.
    pub fn into_slices(self) -> impl Iterator<Item = Bytes> {
        self.pieces.into_iter()
    }
}

impl From<Bytes> for Pieces {
    fn from(bytes: Bytes) -> Self {
        let mut pieces = Pieces::default();
        pieces.push(bytes);
        pieces
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map(|b| &b[..]).unwrap_or_default()
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(piece) = self.pop_front(cnt) else {
                break;
            };
            cnt -= piece.len();
        }
    }
}

/// `message` apart: the value of its `bytes` field `field` as slices of the
/// message (the last occurrence, as protobuf has it), and every other field
/// encoded again, for prost to decode.
pub fn split(mut message: Pieces, field: u32) -> Result<(Bytes, Pieces), Status> {
    let varint =
        |message: &mut Pieces| decode_varint(message).map_err(|e| crate::codec::not_a_message(&e));
    let take = |message: &mut Pieces, n: u64| {
        if n > message.remaining() as u64 {
            return Err(crate::codec::not_a_message(
                &"a field runs past the end of the message",
            ));
        }
        Ok(message.take_front(n as usize))
    };
    let mut rest = BytesMut::new();
    let mut value = Pieces::default();
    while message.has_remaining() {
        let key = varint(&mut message)?;
        let wire = WireType::try_from(key & 7).map_err(|e| crate::codec::not_a_message(&e))?;
        let bytes = match wire {
            WireType::Varint => {
                let v = varint(&mut message)?;
                encode_varint(key, &mut rest);
                encode_varint(v, &mut rest);
                continue;
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                encode_varint(key, &mut rest);
                take(
                    &mut message,
                    if wire == WireType::SixtyFourBit { 8 } else { 4 },
                )?
            }
            WireType::LengthDelimited => {
                let len = varint(&mut message)?;
                let bytes = take(&mut message, len)?;
                if (key >> 3) as u32 == field {
                    value = bytes;
                    continue;
                }
                encode_varint(key, &mut rest);
                encode_varint(len, &mut rest);
                bytes
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(crate::codec::not_a_message(
                    &"groups are not part of this message",
                ));
            }
        };
        for piece in bytes.into_slices() {
            rest.put(piece);
        }
    }
    Ok((rest.freeze(), value))
}

/// UploadRequest's `data` field number.
pub static UPLOAD_DATA: LazyLock<u32> = LazyLock::new(|| {
    only_field(&crate::v1::UploadRequest {
        data: Bytes::from_static(&[0]),
        ..Default::default()
    })
});

/// DownloadResponse's `data` field number.
pub static DOWNLOAD_DATA: LazyLock<u32> = LazyLock::new(|| {
    only_field(&crate::v1::DownloadResponse {
        data: Bytes::from_static(&[0]),
        info: None,
    })
});

/// The number of the one field `message` sets, read off its encoding (so that
/// field numbers have one home, proto/).
fn only_field(message: &impl prost::Message) -> u32 {
    let mut encoded = &message.encode_to_vec()[..];
    let key = decode_varint(&mut encoded).expect("a message with one field set");
    (key >> 3) as u32
}

/// The start of a message whose only field is the `bytes` field `field`, of
/// `len` bytes: the prefix, the field's key and length. Sent as a frame of its
/// own and followed by the bytes as they are, it spares copying them into the
/// message.
pub fn bytes_field_head(field: u32, len: usize) -> Bytes {
    let mut head = BytesMut::with_capacity(PREFIX + 16);
    let key = u64::from(field) << 3 | WireType::LengthDelimited as u64;
    let message = prost::encoding::encoded_len_varint(key)
        + prost::encoding::encoded_len_varint(len as u64)
        + len;
    put_prefix(&mut head, message);
    encode_varint(key, &mut head);
    encode_varint(len as u64, &mut head);
    head.freeze()
}

/// `message` with its prefix, as one DATA frame's payload.
pub fn encode(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + len);
    put_prefix(&mut out, len);
    message
        .encode(&mut out)
        .expect("the buffer has room for the message");
    out.freeze()
}

/// The prefix of an uncompressed message of `len` bytes.
fn put_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    out.put_u32(len as u32);
}

/// Decodes `M` from `bytes`; bytes that are not one are INVALID_ARGUMENT.
pub fn decode<M: prost::Message + Default>(bytes: impl Buf) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| crate::codec::not_a_message(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;
    use prost::Message;

    fn request() -> pb::UploadRequest {
        pb::UploadRequest {
            ticket: "t".repeat(300),
            write_offset: 1 << 40,
            data: (0..5000u32)
                .map(|i| (i * 7) as u8)
                .collect::<Vec<u8>>()
                .into(),
            finish_write: true,
            end_of_metadata: true,
            first_message: Some(pb::upload_request::FirstMessage::Upload("u1".into())),
        }
    }

    /// `bytes` cut at `cuts`, as frames might bring them.
    fn cut(bytes: &[u8], cuts: &[usize]) -> Pieces {
        let mut pieces = Pieces::default();
        let mut at = 0;
        for &c in cuts.iter().chain(Some(&bytes.len())) {
            pieces.push(Bytes::copy_from_slice(&bytes[at..c]));
            at = c;
        }
        pieces
    }

    #[test]
    fn a_message_cut_anywhere_comes_apart_whole() {
        let want = request();
        let bytes = want.encode_to_vec();
        for a in (0..bytes.len()).step_by(97) {
            for b in [a, a + 1, a + 5, bytes.len()] {
                let b = b.min(bytes.len());
                let (rest, data) = split(cut(&bytes, &[a, b]), *UPLOAD_DATA).unwrap();
                let mut got: pb::UploadRequest = decode(rest).unwrap();
                assert!(got.data.is_empty());
                let mut joined = Vec::new();
                for piece in data.into_slices() {
                    joined.extend_from_slice(&piece);
                }
                got.data = joined.into();
                assert_eq!(got, want, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn truncated_fields_and_groups_are_refused() {
        let bytes = request().encode_to_vec();
        for end in [1, 10, bytes.len() - 1] {
            let got = split(cut(&bytes[..end], &[]), *UPLOAD_DATA);
            let err = got.err().unwrap_or_else(|| {
                // A cut between fields is a shorter valid message; none here.
                panic!("a message cut at {end} was taken")
            });
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{end}");
        }
        // Field 2, wire type 3 (start group).
        let err = split(cut(&[0x13, 0x14], &[]), *UPLOAD_DATA).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("groups"), "{}", err.message());
    }

    #[test]
    fn a_bytes_field_head_and_its_bytes_are_the_message() {
        let data = Bytes::from(vec![9u8; 300]);
        let message = pb::DownloadResponse {
            data: data.clone(),
            info: None,
        };
        let mut sent = bytes_field_head(*DOWNLOAD_DATA, data.len()).to_vec();
        sent.extend_from_slice(&data);
        assert_eq!(sent, encode(&message).to_vec());
    }

    /// An answer's body: `data` as frames, then `trailers` if any.
    fn answer(data: &[&[u8]], trailers: Option<Status>) -> Messages {
        use http_body::Frame;
        let mut frames: Vec<Result<Frame<Bytes>, Status>> = data
            .iter()
            .map(|d| Ok(Frame::data(Bytes::copy_from_slice(d))))
            .collect();
        if let Some(status) = trailers {
            let mut headers = status
                .into_http::<tonic::body::Body>()
                .into_parts()
                .0
                .headers;
            headers.remove("content-type");
            frames.push(Ok(Frame::trailers(headers)));
        }
        let stream = tonic::codegen::tokio_stream::iter(frames);
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(stream));
        Messages::answer(body, 1 << 20)
    }

    #[tokio::test]
    async fn an_answer_ends_with_its_trailers_status_and_a_cut_one_is_the_servers_fault() {
        let message = encode(&pb::DownloadResponse {
            data: Bytes::from_static(b"abc"),
            info: None,
        });
        let (head, tail) = message.split_at(4);
        // Whole, then ended well.
        let mut ok = answer(&[head, tail], Some(Status::ok("")));
        let len = ok.next_len().await.unwrap().unwrap();
        let (_, data) = split(ok.next(len).await.unwrap(), *DOWNLOAD_DATA).unwrap();
        assert_eq!(
            data.into_slices().next().unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(ok.next_len().await.unwrap().is_none());
        assert_eq!(ok.status().code(), tonic::Code::Ok);
        // Ended with an error after a message.
        let mut failed = answer(&[&message], Some(Status::not_found("gone")));
        let len = failed.next_len().await.unwrap().unwrap();
        failed.next(len).await.unwrap();
        assert!(failed.next_len().await.unwrap().is_none());
        let status = failed.status();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::NotFound, "gone")
        );
        // Cut inside a message, or ended without a status: the server's fault,
        // and worth trying again.
        let mut cut = answer(&[head], None);
        let err = cut.next_len().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        let mut silent = answer(&[&message], None);
        let len = silent.next_len().await.unwrap().unwrap();
        silent.next(len).await.unwrap();
        assert!(silent.next_len().await.unwrap().is_none());
        assert_eq!(silent.status().code(), tonic::Code::Unavailable);
    }

    #[test]
    fn encode_is_prefix_and_prost() {
        let message = request();
        let framed = encode(&message);
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
        assert_eq!(&framed[PREFIX..], &message.encode_to_vec()[..]);
        assert_eq!(len, framed.len() - PREFIX);
    }
}
