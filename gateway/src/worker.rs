//! Which worker the current thread is. With more than one worker, each is a thread with a
//! current-thread runtime of its own (`server::workers`). A socket is polled by the reactor
//! of the runtime that registered it, so whatever keeps sockets for reuse across requests
//! (the upstream connection pools) keeps one shard per worker: a connection opened on one
//! worker is only ever reused there, with no cross-thread wake-up on its reads.

use std::{cell::Cell, ops::Range, sync::OnceLock};

use tokio::runtime::Handle;

/// The worker threads' runtimes, worker `i`'s (shard `i + 1`'s) at `i`; unset (no worker
/// threads) unless a run has more than one worker.
static RUNTIMES: OnceLock<Box<[Handle]>> = OnceLock::new();

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// How many shards a per-worker structure needs: one per worker thread (1..=N), and shard 0
/// for every other thread (the main thread, which also serves when there is one worker).
pub fn shards() -> usize {
    RUNTIMES.get().map_or(0, |r| r.len()) + 1
}

/// The current thread's shard (below [`shards`] once set up).
pub fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// The shards that serve requests: the worker threads' (1..=N), or shard 0 when the main
/// thread serves.
pub fn serving() -> Range<usize> {
    match shards() {
        1 => 0..1,
        n => 1..n,
    }
}

/// The runtime of `shard`'s worker thread (none for shard 0, the main thread's).
pub fn runtime(shard: usize) -> Option<Handle> {
    RUNTIMES.get()?.get(shard.checked_sub(1)?).cloned()
}

/// Records the worker threads' runtimes, in worker order; called once, before any pool or
/// connection is made for them.
pub(crate) fn set_runtimes(handles: Vec<Handle>) {
    let _ = RUNTIMES.set(handles.into());
}

/// Marks the current thread as worker `i` (0-based).
pub(crate) fn enter(i: usize) {
    SHARD.with(|s| s.set(i + 1));
}
