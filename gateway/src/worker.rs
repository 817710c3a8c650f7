//! Which worker the current thread is. With more than one worker, each is a thread with a
//! current-thread runtime of its own (`server::workers`). A socket is polled by the reactor
//! of the runtime that registered it, so whatever keeps sockets for reuse across requests
//! (the upstream connection pools) keeps one shard per worker: a connection opened on one
//! worker is only ever reused there, with no cross-thread wake-up on its reads.

use std::{
    cell::Cell,
    ops::Range,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        OnceLock,
    },
};

use tokio::runtime::Handle;

/// Worker threads: none until a run with more than one worker says so.
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// The worker threads' runtimes, worker `i`'s (shard `i + 1`'s) at `i`.
static RUNTIMES: OnceLock<Box<[Handle]>> = OnceLock::new();

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

/// Records the worker threads' runtimes, in worker order; called once, before any
/// connection is made for them.
pub(crate) fn set_runtimes(handles: Vec<Handle>) {
    let _ = RUNTIMES.set(handles.into());
}

/// Sets the number of worker threads (0: the main thread serves); called once, before any
/// pool is built.
pub(crate) fn set_workers(n: usize) {
    WORKERS.store(n, Relaxed);
}

/// Marks the current thread as worker `i` (0-based).
pub(crate) fn enter(i: usize) {
    SHARD.with(|s| s.set(i + 1));
}
