//! The SYN-flood guard: past a rate of new flows on a CPU, new flows are forwarded by Maglev
//! alone, without a flow-table insert, until the rate falls (as Katran's flood guard does).
//!
//! A spoofed SYN flood then costs no insert and evicts no established flow. Flows that start
//! during a flood stay on their gateway while the Maglev tables do not change, because every
//! one of their packets is picked again from the same table.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use sluice_common::FLOOD_WINDOW_NS;

use crate::maps::FLOOD;

/// Whether a new flow may be inserted. `limit` is the node's new flows per CPU per window;
/// 0 turns the guard off.
///
/// A flood starts when a window counts more than `limit` new flows, and ends only when a
/// whole window stays at or under it, so a steady flood does not get `limit` inserts back at
/// every window's start.
#[inline(always)]
pub fn admit(limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(s) = FLOOD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's element; nothing else writes it while XDP runs here.
    let s = unsafe { &mut *s };
    let elapsed = now.wrapping_sub(s.window_start_ns);
    if elapsed >= FLOOD_WINDOW_NS {
        // The window that just ended stayed under the limit, or windows with no new flow at
        // all came after it: the flood is over, at the end of that window.
        let quiet = s.new_flows <= limit as u64 || elapsed >= 2 * FLOOD_WINDOW_NS;
        if s.flood_since_ns != 0 && quiet {
            let end = s.window_start_ns.wrapping_add(FLOOD_WINDOW_NS);
            s.flood_ns += end.saturating_sub(s.flood_since_ns);
            s.flood_since_ns = 0;
        }
        s.window_start_ns = now;
        s.new_flows = 0;
    }
    s.new_flows += 1;
    if s.flood_since_ns == 0 && s.new_flows > limit as u64 {
        // Never 0, which means "no flood".
        s.flood_since_ns = now | 1;
    }
    s.flood_since_ns == 0
}
