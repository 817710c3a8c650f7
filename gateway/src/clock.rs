//! A coarse clock for bookkeeping that needs milliseconds, not nanoseconds: idle upstream
//! connections, retry-budget windows, outlier ejections, analytics minutes. The kernel's
//! coarse clocks are read from the vDSO without touching the clock source, several times
//! cheaper than `Instant::now()`, at the resolution of a kernel tick (1–4 ms). Latencies that
//! are reported or balanced on still use `Instant`.

fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; both coarse clocks exist on every
    // Linux this runs on (since 2.6.32), and on failure `ts` stays zero.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    ts
}

/// Milliseconds on the monotonic clock (since boot).
pub fn monotonic_ms() -> u64 {
    let ts = read(libc::CLOCK_MONOTONIC_COARSE);
    (ts.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    read(libc::CLOCK_REALTIME_COARSE).tv_sec.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clocks_agree_with_the_fine_ones_within_a_tick() {
        let fine = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        assert!(unix_secs().abs_diff(fine) <= 1);
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = monotonic_ms();
        assert!((40..200).contains(&(b - a)), "{a} {b}");
    }
}
