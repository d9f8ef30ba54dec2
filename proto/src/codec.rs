//! The codec of every Ferry RPC: prost's, with a small first encode buffer.
//!
//! tonic gives each call an 8 KiB encode buffer and an 8 KiB decode buffer
//! up front. A coordinator holds one long call per agent and sends on it
//! rarely (assignments): its encode buffer starts at 1 KiB here and grows
//! with the message as tonic's does. The decode buffer keeps tonic's size:
//! at 1 KiB, status ingest fell from about 50,000 to about 40,000 reports a
//! second (`ferry-bench`, 10,000 agents), for 5 KiB a stream.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// First size of a call's encode buffer.
const FIRST_ENCODE_BUFFER: usize = 1024;

/// First size of a call's decode buffer (tonic's).
const FIRST_DECODE_BUFFER: usize = 8 * 1024;

/// How much is encoded before the encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(FIRST_ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(FIRST_DECODE_BUFFER, YIELD_THRESHOLD))
    }
}
