//! The protobuf codec of every generated client and server: prost's encoder,
//! and a decoder for which bytes that are not a valid message of the call's
//! type (malformed protobuf, invalid UTF-8 in a string field) are the sender's
//! mistake, INVALID_ARGUMENT, where tonic's own says INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::ProstEncoder;

/// Generated code names this codec (`codec_path` in build.rs).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
    }
}

/// Decodes `U`; bytes that are not one are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| not_a_message(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// What a call answers to bytes that are not a valid message of its type.
pub fn not_a_message(why: &dyn std::fmt::Display) -> Status {
    Status::invalid_argument(format!(
        "the message is not a valid protobuf encoding of what this call takes: {why}"
    ))
}
