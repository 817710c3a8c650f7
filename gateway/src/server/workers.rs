//! More than one worker: a thread per worker, each with a current-thread runtime and a
//! socket of its own on every listener's address (`SO_REUSEPORT`). The kernel spreads new
//! connections over the sockets, and a connection is served from accept to close by the
//! thread that accepted it: no work stealing and no cross-thread wake-ups on the request
//! path, as in nginx's and Envoy's workers. Reloads, the admin API, health checks and the
//! load report stay on the main thread's runtime; the config in force, the metrics and each
//! listener's admission (its `max_connections`) are shared by all workers.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};
use tracing::error;

use crate::{
    config::Listener,
    downstream::{
        listener::{self, TlsState},
        watchdog::Admission,
    },
    metrics::Metrics,
    pipeline::Runtime,
};

/// One worker's socket of one listener, and what it serves with.
pub(super) struct Socket {
    /// Bound and listening; registered with no runtime yet.
    pub listener: std::net::TcpListener,
    pub config: Listener,
    pub tls: Option<TlsState>,
    pub admission: Arc<Admission>,
}

/// The workers' runtimes, built (and known to [`crate::worker::runtime`]) before anything
/// starts, so that what belongs to a worker, such as its Redis connection, can be made on its
/// runtime from the start; their threads start with [`Workers::start`].
pub(super) struct Runtimes(Vec<tokio::runtime::Runtime>);

impl Runtimes {
    /// One current-thread runtime per worker (none for a single worker, which serves on the
    /// main thread).
    pub fn build(workers: usize) -> Result<Self> {
        let mut built = Vec::new();
        if workers > 1 {
            for _ in 0..workers {
                built.push(
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting a worker's runtime")?,
                );
            }
            crate::worker::set_runtimes(built.iter().map(|r| r.handle().clone()).collect());
        }
        Ok(Runtimes(built))
    }
}

impl Drop for Runtimes {
    /// Runtimes not handed to a thread (start-up failed) end without blocking: this runs in
    /// the main thread's async code, where a blocking runtime drop would panic.
    fn drop(&mut self) {
        for rt in self.0.drain(..) {
            rt.shutdown_background();
        }
    }
}

/// The running worker threads.
pub(super) struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// One per worker: its accept loops have ended.
    accepting: Vec<oneshot::Receiver<()>>,
    /// Set when the workers' runtimes may end (their connections are done, or out of time).
    exit: watch::Sender<bool>,
}

impl Workers {
    /// Starts a thread per runtime, serving the matching entry of `sockets` until `stop`
    /// changes, then their open connections until [`Workers::exit`].
    pub fn start(
        mut runtimes: Runtimes,
        sockets: Vec<Vec<Socket>>,
        runtime: &Arc<ArcSwap<Runtime>>,
        metrics: &Arc<Metrics>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self> {
        let (exit, exit_rx) = watch::channel(false);
        let mut workers = Workers {
            threads: Vec::new(),
            accepting: Vec::new(),
            exit,
        };
        for (i, sockets) in sockets.into_iter().enumerate() {
            // Taken from `runtimes` only once its thread runs, so that a failed start drops
            // the rest there, without blocking.
            if runtimes.0.is_empty() {
                break;
            }
            let (accepted, accepting) = oneshot::channel();
            let serving = Serving {
                sockets,
                runtime: runtime.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                exit: exit_rx.clone(),
            };
            let (hand, handed) = std::sync::mpsc::channel::<tokio::runtime::Runtime>();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || {
                    crate::worker::enter(i);
                    // Nothing to run if the main thread gave up before handing it over.
                    if let Ok(rt) = handed.recv() {
                        rt.block_on(serving.run(accepted));
                    }
                })
                .context("starting a worker thread")?;
            let rt = runtimes.0.remove(0);
            if let Err(std::sync::mpsc::SendError(rt)) = hand.send(rt) {
                rt.shutdown_background();
            }
            workers.threads.push(thread);
            workers.accepting.push(accepting);
        }
        Ok(workers)
    }

    /// Waits until every worker has stopped accepting.
    pub async fn stopped_accepting(&mut self) {
        for a in self.accepting.drain(..) {
            let _ = a.await;
        }
    }

    /// Ends the workers' runtimes, with whatever connections they still serve, and waits for
    /// their threads.
    pub fn exit(self) {
        let _ = self.exit.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// What one worker thread runs.
struct Serving {
    sockets: Vec<Socket>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
}

impl Serving {
    async fn run(mut self, accepted: oneshot::Sender<()>) {
        let mut loops = Vec::new();
        for s in self.sockets {
            let name = s.config.name.clone();
            match tokio::net::TcpListener::from_std(s.listener) {
                Ok(l) => loops.push(tokio::spawn(listener::serve(
                    l,
                    s.config,
                    s.tls,
                    self.runtime.clone(),
                    self.metrics.clone(),
                    s.admission,
                    self.stop.clone(),
                ))),
                Err(e) => {
                    error!(listener = %name, error = %e, "a worker could not take its socket")
                }
            }
        }
        for l in loops {
            let _ = l.await;
        }
        let _ = accepted.send(());
        // Connections go on in this runtime's tasks until the main thread is done waiting
        // for them (or is gone).
        while !*self.exit.borrow_and_update() {
            if self.exit.changed().await.is_err() {
                break;
            }
        }
    }
}
