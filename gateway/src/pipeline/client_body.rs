//! The client's request body on its way to the upstream: held to the listener's size limit
//! and to its `body_read_timeout_ms` between frames as it streams, and remembering why it
//! failed. A broken, oversized or stalled upload is the client's fault: it is answered 400,
//! 413 or 408, not 502 or 504, and the upstream exchange it was feeding is abandoned (that
//! connection closes). The deadline matters most where the gateway reads a body whole
//! before sending it (a retried request, a JSON transform): nothing else bounds that wait.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// More bytes than the listener's `max_body_bytes`.
    TooLarge,
    /// Malformed framing (a bad chunk size, chunk extensions over hyper's limit), or the
    /// client broke off mid-body.
    Malformed,
    /// Nothing of it came for the listener's `body_read_timeout_ms`.
    Stalled,
}

/// Shared between a [`ClientBody`] and the code that forwards it: the body's fault, and
/// whether the upstream's answer has begun.
#[derive(Debug, Clone, Default)]
pub struct FaultCell(Arc<AtomicU8>);

/// The bit of a [`FaultCell`] that says the answer has begun.
const ANSWERED: u8 = 0x80;

impl FaultCell {
    /// The fault, once the body has failed.
    pub fn get(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Relaxed) & !ANSWERED {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Malformed),
            3 => Some(BodyFault::Stalled),
            _ => None,
        }
    }

    fn set(&self, fault: BodyFault) {
        let v = match fault {
            BodyFault::TooLarge => 1,
            BodyFault::Malformed => 2,
            BodyFault::Stalled => 3,
        };
        // The fault replaces any before it; the answered bit stays.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |was| {
                Some((was & ANSWERED) | v)
            });
    }

    /// Notes that the upstream's answer has begun: from then on the body may go quiet (a
    /// full-duplex stream) without the listener's `body_read_timeout_ms` cutting it.
    pub fn answered(&self) {
        self.0.fetch_or(ANSWERED, Ordering::Relaxed);
    }

    fn is_answered(&self) -> bool {
        self.0.load(Ordering::Relaxed) & ANSWERED != 0
    }
}

/// The error a [`ClientBody`] yields past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub struct TooLarge;

/// The error a [`ClientBody`] yields when its client sent nothing for too long.
#[derive(Debug, thiserror::Error)]
#[error("no request body arrived within the listener's body_read_timeout_ms")]
pub struct Stalled;

/// How long a body has given nothing, since its last frame: the timer both bounded bodies
/// share (the client's here, an upstream's in `upstream_body`).
pub struct IdleTimer {
    idle: Duration,
    /// Made the first time the body has nothing to give, then reset for each wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer counts the current wait (a frame since ended the previous one).
    waiting: bool,
}

impl IdleTimer {
    /// A timer of `idle` between frames.
    pub fn new(idle: Duration) -> Self {
        IdleTimer {
            idle,
            timer: None,
            waiting: false,
        }
    }

    /// The body had nothing to give: true once it has waited `idle` since its last frame
    /// (else `cx` is woken when it has).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            timer.as_mut().reset(deadline);
            self.waiting = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// The body gave something: the next wait starts afresh.
    pub fn frame(&mut self) {
        self.waiting = false;
    }

    /// The time allowed between frames.
    pub fn idle(&self) -> Duration {
        self.idle
    }
}

/// A request body from hyper, limited to `left` more bytes and to `idle` between frames.
pub struct ClientBody {
    inner: Incoming,
    left: u64,
    fault: FaultCell,
    idle: IdleTimer,
}

impl ClientBody {
    /// `inner`, failing once it exceeds `max` bytes or sends nothing for `idle`; failures
    /// are noted in `fault`.
    pub fn new(inner: Incoming, max: u64, idle: Duration, fault: FaultCell) -> Self {
        ClientBody {
            inner,
            left: max,
            fault,
            idle: IdleTimer::new(idle),
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() && !this.fault.is_answered() {
            if this.idle.expired(cx) {
                this.fault.set(BodyFault::Stalled);
                return Poll::Ready(Some(Err(Box::new(Stalled))));
            }
            return Poll::Pending;
        }
        this.idle.frame();
        match polled {
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
