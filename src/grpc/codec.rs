//! The protobuf codec of our services: prost's, except that a request body that does not decode
//! (truncated, wrong wire types, invalid UTF-8 in a string field) is the caller's mistake,
//! answered as `INVALID_ARGUMENT` with the usual rich details, not `INTERNAL`, under the call's
//! own request id (the layer's, found through the call's task-local facts).

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::ApiError;
use super::layer::call_request_id;
use crate::domain::ParseError;

/// The first allocation of a response's encoding buffer (tonic's default is 8 KiB). A stream
/// keeps its buffer while it is open, twice with gzip: an idle WatchSnapshots stream held 9 KB,
/// most of it this. A bigger answer (a page of 100 snapshots) grows it as it is written.
const RESPONSE_BUFFER: usize = 512;

/// How much a stream encodes before it hands the bytes on (tonic's default).
const RESPONSE_YIELD_THRESHOLD: usize = 32 * 1024;

/// Named in `build.rs` (`codec_path`) for every generated service and client.
pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(
            RESPONSE_BUFFER,
            RESPONSE_YIELD_THRESHOLD,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            inner: self.inner.decoder(),
            _message: PhantomData,
        }
    }
}

pub struct StrictDecoder<U> {
    inner: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| {
            ApiError::Invalid(ParseError::InvalidParameter {
                field: "request",
                why: format!("the message does not decode: {}", status.message()),
            })
            .into_status(&call_request_id())
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
