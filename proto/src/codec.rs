//! The codec of every Ferry RPC: prost's, with small first buffers.
//!
//! tonic gives each call an 8 KiB encode buffer and an 8 KiB decode buffer
//! up front. A coordinator holds one long call per agent, whose messages are
//! a few hundred bytes: at 10,000 agents those buffers alone were 160 MiB of
//! the coordinator's heap. Buffers start at 1 KiB here and grow with the
//! message as tonic's do (a large status report still fits).

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// First size of a call's encode and decode buffers.
const FIRST_BUFFER: usize = 1024;

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
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD))
    }
}
