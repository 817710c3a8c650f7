//! Which worker the current thread is. With more than one worker, each is a thread with a
//! current-thread runtime of its own (`server::workers`). A socket is polled by the reactor
//! of the runtime that registered it, so whatever keeps sockets for reuse across requests
//! (the upstream connection pools) keeps one shard per worker: a connection opened on one
//! worker is only ever reused there, with no cross-thread wake-up on its reads.

use std::{
    cell::Cell,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// How many shards a per-worker structure needs: one per worker thread (1..=N), and shard 0
/// for every other thread (the main thread, which also serves when there is one worker).
pub fn shards() -> usize {
    WORKERS.load(Relaxed) + 1
}

/// The current thread's shard (below [`shards`] once set up).
pub fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// Sets the number of worker threads; called once, before any pool is built.
pub(crate) fn set_workers(n: usize) {
    WORKERS.store(n, Relaxed);
}

/// Marks the current thread as worker `i` (0-based).
pub(crate) fn enter(i: usize) {
    SHARD.with(|s| s.set(i + 1));
}
