//! One client's refusals by class over a sliding window (and one plain count the same way).
//!
//! Two fixed windows, the current one and the one before it; the earlier one's count is
//! weighted by the share of it the sliding window still covers (Cloudflare's sliding-window
//! approximation). Exact when refusals are spread evenly, never further off than the
//! previous window's count, and 48 bytes per client whatever the rate: a ring of
//! sub-buckets would be more exact at many times the memory, and the tracker holds tens of
//! thousands of clients.

use sluice_util::shield::Class;

/// Classes, as array slots.
const N: usize = Class::ALL.len();

/// A client's counts in the current and the previous fixed window.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// The current fixed window's index (`now_ms / window_ms`).
    epoch: u64,
    current: [u32; N],
    previous: [u32; N],
}

impl Counts {
    /// Counts one refusal of `class` at `now_ms` and returns the class's refusals within
    /// the sliding `window_ms` ending now.
    pub fn add(&mut self, class: Class, now_ms: u64, window_ms: u64) -> u32 {
        let window_ms = window_ms.max(1);
        let epoch = now_ms / window_ms;
        (self.current, self.previous) = self.at(epoch);
        self.epoch = self.epoch.max(epoch);
        let c = &mut self.current[class as usize];
        *c = c.saturating_add(1);
        self.estimate(class as usize, now_ms, window_ms)
    }

    /// Refusals of every class within the sliding window ending at `now_ms`: what eviction
    /// weighs (0 once the last refusal is two windows old).
    pub fn total(&self, now_ms: u64, window_ms: u64) -> u64 {
        let window_ms = window_ms.max(1);
        let (current, previous) = self.at(now_ms / window_ms);
        let view = Counts {
            epoch: now_ms / window_ms,
            current,
            previous,
        };
        (0..N)
            .map(|c| u64::from(view.estimate(c, now_ms, window_ms)))
            .sum()
    }

    /// The (current, previous) windows as of window `epoch`. The clock is monotonic; an
    /// earlier epoch (never expected) leaves the counts as they are.
    fn at(&self, epoch: u64) -> ([u32; N], [u32; N]) {
        match epoch.checked_sub(self.epoch) {
            None | Some(0) => (self.current, self.previous),
            Some(1) => ([0; N], self.current),
            Some(_) => ([0; N], [0; N]),
        }
    }

    /// Slot `c`'s count over the sliding window, for counts rolled to `now_ms`'s window.
    fn estimate(&self, c: usize, now_ms: u64, window_ms: u64) -> u32 {
        // The part of the previous fixed window the sliding one still covers.
        let left = window_ms - now_ms % window_ms;
        // Rounded to the nearest: truncating would drop a whole refusal whenever the
        // fixed windows turn over, so a client could cross a threshold and not be seen to.
        let previous = (u64::from(self.previous[c]) * left + window_ms / 2) / window_ms;
        let previous = u32::try_from(previous).unwrap_or(u32::MAX);
        self.current[c].saturating_add(previous)
    }
}

/// One count over a sliding window, estimated as [`Counts`] does: new candidates, for the
/// brake.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The current fixed window's index.
    epoch: u64,
    current: u32,
    previous: u32,
}

impl Tally {
    /// Counts one at `now_ms`.
    pub fn add(&mut self, now_ms: u64, window_ms: u64) {
        let window_ms = window_ms.max(1);
        (self.current, self.previous) = self.at(now_ms / window_ms);
        self.epoch = self.epoch.max(now_ms / window_ms);
        self.current = self.current.saturating_add(1);
    }

    /// The count within the sliding `window_ms` ending at `now_ms`.
    pub fn get(&self, now_ms: u64, window_ms: u64) -> u32 {
        let window_ms = window_ms.max(1);
        let (current, previous) = self.at(now_ms / window_ms);
        let left = window_ms - now_ms % window_ms;
        let previous = u64::from(previous) * left / window_ms;
        current.saturating_add(u32::try_from(previous).unwrap_or(u32::MAX))
    }

    /// The (current, previous) windows as of window `epoch` (an earlier one, never
    /// expected of a monotonic clock, leaves them as they are).
    fn at(&self, epoch: u64) -> (u32, u32) {
        match epoch.checked_sub(self.epoch) {
            None | Some(0) => (self.current, self.previous),
            Some(1) => (0, self.current),
            Some(_) => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 10_000;

    #[test]
    fn the_previous_window_fades_as_the_sliding_one_moves_on() {
        let mut c = Counts::default();
        // Ten refusals late in window 5.
        let mut last = 0;
        for i in 0..10 {
            last = c.add(Class::Auth, 5 * W + 9_000 + i, W);
        }
        assert_eq!(last, 10);
        // Other classes are apart.
        assert_eq!(c.add(Class::Malformed, 5 * W + 9_500, W), 1);
        // A quarter into window 6: three quarters of window 5 still count (7.5 of 10,
        // rounded to 8), plus the new one.
        assert_eq!(c.add(Class::Auth, 6 * W + W / 4, W), 9);
        // Half-way through window 6: half of window 5 (5) and the two of window 6.
        assert_eq!(c.add(Class::Auth, 6 * W + W / 2, W), 7);
        // With the malformed one's half, rounded up to one.
        assert_eq!(c.total(6 * W + W / 2, W), 8);
        // Window 7 at its start: window 6 (2) counts whole; window 5 is gone.
        assert_eq!(c.add(Class::Auth, 7 * W, W), 3);
        // Two windows later nothing is left.
        assert_eq!(c.total(9 * W, W), 0);
        assert_eq!(c.add(Class::Auth, 9 * W, W), 1);
    }

    #[test]
    fn a_tally_slides_like_the_counts() {
        let mut t = Tally::default();
        for i in 0..10 {
            t.add(5 * W + 9_000 + i, W);
        }
        assert_eq!(t.get(5 * W + 9_999, W), 10);
        // A quarter into the next window: three quarters of the ten still count.
        assert_eq!(t.get(6 * W + W / 4, W), 7);
        t.add(6 * W + W / 2, W);
        assert_eq!(t.get(6 * W + W / 2, W), 6);
        assert_eq!(t.get(7 * W, W), 1);
        assert_eq!(t.get(8 * W, W), 0);
        assert_eq!(Tally::default().get(5, 0), 0);
    }

    #[test]
    fn a_burst_counts_at_once_and_never_overflows() {
        let mut c = Counts::default();
        for _ in 0..1000 {
            c.add(Class::Deadline, 42, 1000);
        }
        assert_eq!(c.add(Class::Deadline, 43, 1000), 1001);
        c.current[Class::Auth as usize] = u32::MAX;
        c.previous[Class::Auth as usize] = u32::MAX;
        assert_eq!(c.add(Class::Auth, 44, 1000), u32::MAX);
        // A window of 0 (never configured) is taken as 1 ms rather than divided by.
        assert_eq!(Counts::default().add(Class::Auth, 5, 0), 1);
    }
}
