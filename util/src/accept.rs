//! What both daemons' accept loops and admin listeners share: a pause when `accept` keeps
//! failing, and the admin listeners' bounds.
//!
//! Out of file descriptors (or kernel memory), a connection stays in the backlog and the
//! next `accept` fails at once: without a pause the loop would spin a core and write a
//! warning per turn. An admin listener holds a bounded number of connections, each closed
//! when it takes [`ADMIN_HEAD_TIMEOUT`] to send a head or to ask again, so that its port
//! cannot take the descriptors the daemon's real work needs.

use std::{io, time::Duration};

/// The most connections an admin listener holds at once: enough for Prometheus, the
/// probes and a few dashboards; a newcomer past it is closed at once.
pub const ADMIN_CONNECTIONS: usize = 64;

/// How long an admin connection may take to send a request head, or wait for the next.
pub const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an accept loop pauses after a failure that will repeat.
const PAUSE: Duration = Duration::from_millis(100);

/// The state of one accept loop's failures.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    last_warned: Option<std::time::Instant>,
    failed_since: u64,
}

impl AcceptBackoff {
    /// Notes a failed `accept` and pauses if the failure will repeat (out of descriptors
    /// or memory); one connection's own failure (reset before it was taken) does not hold
    /// up the next. Returns the failures to warn about, at most once a second.
    pub async fn failed(&mut self, error: &io::Error) -> Option<u64> {
        let exhausted = matches!(
            error.raw_os_error(),
            Some(
                libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM
            )
        );
        if !exhausted {
            return None;
        }
        self.failed_since += 1;
        let due = self
            .last_warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        let warn = due.then(|| {
            self.last_warned = Some(std::time::Instant::now());
            std::mem::take(&mut self.failed_since)
        });
        tokio::time::sleep(PAUSE).await;
        warn
    }
}

/// The error numbers (Linux) of an exhausted process or kernel.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_and_warns_only_when_exhausted() {
        let mut b = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let reset = io::Error::from_raw_os_error(103); // ECONNABORTED
        let started = tokio::time::Instant::now();
        assert_eq!(b.failed(&reset).await, None);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no pause for one connection"
        );
        assert_eq!(b.failed(&emfile).await, Some(1));
        assert_eq!(started.elapsed(), PAUSE);
        // Within the second: counted, not warned.
        assert_eq!(b.failed(&emfile).await, None);
        assert_eq!(b.failed(&emfile).await, None);
        assert_eq!(started.elapsed(), PAUSE * 3);
    }
}
