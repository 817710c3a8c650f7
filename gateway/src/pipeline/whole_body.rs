//! Bodies the gateway reads whole before it goes on: a request that may be retried, and a
//! request or response a JSON transform rewrites. Each is capped on its own, and all of
//! them together are held to one budget for the process ([`BUDGET`]): one HTTP/2
//! connection may carry a hundred streams, each buffering up to `max_body_bytes`, and a
//! few such connections would otherwise take the machine's memory. Past the budget a
//! request is answered 503 with `Retry-After` (as Envoy's overload manager does), and the
//! budget comes back as each body held is dropped.

use std::{
    ops::Deref,
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::Body;

/// The most bytes all bodies read whole may hold at once, across the process.
pub const BUDGET: usize = 256 << 20;

/// Bytes held now against [`BUDGET`].
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Why a body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectError {
    /// Over its cap.
    TooLarge,
    /// The peer broke off or sent garbage.
    Broken,
    /// The client sent nothing for its listener's `body_read_timeout_ms`.
    Stalled,
    /// The bodies read whole across the process already hold the budget.
    OverBudget,
}

/// A share of a budget, given back when dropped.
#[derive(Debug)]
pub struct Charge<'a> {
    pool: &'a AtomicUsize,
    bytes: usize,
}

impl<'a> Charge<'a> {
    /// Nothing yet, from `pool`.
    pub fn new(pool: &'a AtomicUsize) -> Self {
        Charge { pool, bytes: 0 }
    }

    /// Takes `n` more bytes if `pool` stays within `budget`.
    pub fn take(&mut self, n: usize, budget: usize) -> bool {
        let taken = self
            .pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&after| after <= budget)
            })
            .is_ok();
        if taken {
            self.bytes += n;
        }
        taken
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A body read whole, counted against [`BUDGET`] for as long as it is held.
#[derive(Debug)]
pub struct WholeBody {
    bytes: Bytes,
    _charge: Charge<'static>,
}

impl WholeBody {
    /// The bytes, no longer counted (for a body handed on, which streams out).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl Deref for WholeBody {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Reads a whole body of at most `max` bytes, within the process's [`BUDGET`]. (A plain
/// loop rather than `Limited` over a boxed body, which trips the compiler's higher-ranked
/// lifetime inference in async code.)
pub async fn collect_capped(mut body: Body, max: usize) -> Result<WholeBody, CollectError> {
    let mut charge = Charge::new(&HELD);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<crate::pipeline::client_body::TooLarge>() {
                CollectError::TooLarge
            } else if e.is::<crate::pipeline::client_body::Stalled>() {
                CollectError::Stalled
            } else {
                CollectError::Broken
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(CollectError::TooLarge);
            }
            if !charge.take(data.len(), BUDGET) {
                return Err(CollectError::OverBudget);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(WholeBody {
        bytes: out.freeze(),
        _charge: charge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stay_within_the_budget_and_come_back_when_dropped() {
        let pool = AtomicUsize::new(0);
        let mut a = Charge::new(&pool);
        assert!(a.take(60, 100));
        let mut b = Charge::new(&pool);
        assert!(b.take(40, 100));
        assert!(!b.take(1, 100), "over the budget");
        assert_eq!(pool.load(Ordering::Acquire), 100);
        drop(a);
        assert_eq!(pool.load(Ordering::Acquire), 40);
        assert!(b.take(60, 100));
        drop(b);
        assert_eq!(pool.load(Ordering::Acquire), 0);
        // An overflowing request is refused, not wrapped.
        let mut c = Charge::new(&pool);
        assert!(!c.take(usize::MAX, usize::MAX - 1));
        assert!(c.take(usize::MAX, usize::MAX));
    }
}
