//! Entry points for the fuzz targets in `fuzz/` into parsers that are otherwise private.
//! Not part of the gateway's API: nothing here is used by the gateway itself.
//!
//! Every other parser the targets exercise is already public ([`crate::config::parse`],
//! [`crate::generation::build`], [`crate::upstream::exchange::head::parse_response`],
//! [`crate::pipeline::path::normalize`], [`crate::pipeline::target`],
//! [`crate::pipeline::policy::client_ip`], [`crate::upstream::forwarding`],
//! [`crate::pipeline::policy::jwt::verify`], [`crate::pipeline::policy::transform`],
//! [`crate::pipeline::router`]).

use bytes::BytesMut;
use hyper::HeaderMap;

pub use crate::pipeline::policy::jwks::KeySetError;
use crate::upstream::exchange::{
    body::{Decode, Progress},
    head::ResponseFraming,
    ExchangeError,
};

/// What the response body decoder made of the bytes it was given.
#[derive(Debug)]
pub struct DecodedBody {
    /// The body's data, every data frame joined.
    pub data: Vec<u8>,
    /// The trailer fields, when a chunked body had any.
    pub trailers: Option<HeaderMap>,
    /// How many of the bytes were the body's (the rest stays for the next response).
    pub consumed: usize,
    /// The body ended within the bytes.
    pub done: bool,
}

/// Decodes a response body framed as `framing` from `wire` as the upstream connection's
/// reader does, the bytes arriving in pieces that end at the offsets in `cuts` (ascending;
/// out-of-range ones are ignored) and at the end of `wire`.
pub fn decode_body(
    framing: ResponseFraming,
    wire: &[u8],
    cuts: &[usize],
) -> Result<DecodedBody, ExchangeError> {
    let mut decode = Decode::new(framing);
    let mut buf = BytesMut::new();
    let mut out = DecodedBody {
        data: Vec::new(),
        trailers: None,
        consumed: 0,
        done: false,
    };
    let mut fed = 0;
    let ends = cuts
        .iter()
        .copied()
        .filter(|c| *c <= wire.len())
        .chain([wire.len()]);
    for end in ends {
        if end < fed {
            continue;
        }
        buf.extend_from_slice(&wire[fed..end]);
        fed = end;
        while let Progress::Frame(frame) = decode.step(&mut buf)? {
            match frame.into_data() {
                Ok(data) => out.data.extend_from_slice(&data),
                Err(frame) => out.trailers = frame.into_trailers().ok(),
            }
        }
    }
    out.done = decode == Decode::Done;
    out.consumed = fed - buf.len();
    Ok(out)
}

/// The keys a JWKS document yields, as `(kid, family)` with the family `"RSA"`, `"EC"` or
/// `"Ed25519"`, in document order.
pub fn jwks_keys(document: &[u8]) -> Result<Vec<(Option<String>, &'static str)>, KeySetError> {
    crate::pipeline::policy::jwks::key_summary(document)
}
