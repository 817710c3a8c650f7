//! The client's request body on its way to the upstream: held to the listener's size limit
//! as it streams, and remembering why it failed. A broken or oversized upload is the client's
//! fault: it is answered 400 or 413, not 502, and the upstream exchange it was feeding is
//! abandoned (that connection closes).

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

/// Why a client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// More bytes than the listener's `max_body_bytes`.
    TooLarge,
    /// Malformed framing (a bad chunk size, chunk extensions over hyper's limit), or the
    /// client broke off mid-body.
    Malformed,
}

/// Shared between a [`ClientBody`] and the code that forwards it.
#[derive(Debug, Clone, Default)]
pub struct FaultCell(Arc<AtomicU8>);

impl FaultCell {
    /// The fault, once the body has failed.
    pub fn get(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Malformed),
            _ => None,
        }
    }

    fn set(&self, fault: BodyFault) {
        let v = match fault {
            BodyFault::TooLarge => 1,
            BodyFault::Malformed => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// The error a [`ClientBody`] yields past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub struct TooLarge;

/// A request body from hyper, limited to `left` more bytes.
pub struct ClientBody {
    inner: Incoming,
    left: u64,
    fault: FaultCell,
}

impl ClientBody {
    /// `inner`, failing once it exceeds `max` bytes; failures are noted in `fault`.
    pub fn new(inner: Incoming, max: u64, fault: FaultCell) -> Self {
        ClientBody {
            inner,
            left: max,
            fault,
        }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        this.fault.set(BodyFault::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.set(BodyFault::Malformed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            other => other.map_err(|e| Box::new(e) as _),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
