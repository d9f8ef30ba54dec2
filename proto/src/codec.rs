//! The codec of every Ferry RPC: prost's, with small first buffers.
//!
//! tonic gives each call an 8 KiB encode buffer and an 8 KiB decode buffer
//! up front. A coordinator holds one long call per agent and sends and
//! receives on it small messages (assignments one way, status reports the
//! other): both buffers start at 1 KiB here and grow to the largest message
//! a call carries, as tonic's do. At 10,000 agents the decode buffer's
//! 1 KiB saves about 3 KiB a stream (38.6 to 35.5 KiB, `ferry-bench`);
//! status ingest stays within its run-to-run spread (85,000 to 107,000
//! reports a second, against 106,000 to 140,000 with 8 KiB). An earlier
//! store, which wrote every report, measured it at 40,000 against 50,000.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// First size of a call's encode buffer.
const FIRST_ENCODE_BUFFER: usize = 1024;

/// First size of a call's decode buffer.
const FIRST_DECODE_BUFFER: usize = 1024;

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
