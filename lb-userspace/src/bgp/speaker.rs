//! The thread that talks to BIRD. Every exchange with BIRD can block (5 s per read, a
//! connect on a full backlog longer), so none happens on the agent's task, which must keep
//! serving health transitions, drains and the admin API whatever BIRD does: the
//! [`Announcer`](super::Announcer) only hands this thread what it wants announced, and
//! reads back what BIRD was last told, its sessions and its last error.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use super::bird::{self, BirdError, Control, Protocol};
use crate::config::Bgp;

/// How long the thread waits for a BIRD it started to open its control socket.
const START_WAIT: Duration = Duration::from_secs(5);

/// What the agent asks of the thread. Jobs are taken in order; a batch waiting together is
/// merged (the last wanted set and config win).
pub(super) enum Job {
    /// Announce exactly `set`; `reasons` say why each other address is not (for the log).
    Want {
        set: BTreeSet<IpAddr>,
        reasons: HashMap<IpAddr, String>,
    },
    /// A reloaded `[bgp]` section.
    Config(Bgp),
    /// Read the sessions, restart a BIRD that is gone, and push again what failed.
    Poll,
    /// Answer once every job before this one is done (tests, and the stop's withdrawal).
    Sync(mpsc::Sender<()>),
    /// Finish the jobs before this one, then end.
    Stop,
}

/// What the thread reports.
#[derive(Default)]
pub(super) struct Shared {
    /// What BIRD was last told, once it was told anything.
    pub announced: Option<BTreeSet<IpAddr>>,
    /// BIRD's protocols, from the last poll that got an answer.
    pub sessions: Vec<Protocol>,
    /// The last error, until an exchange succeeds.
    pub error: Option<String>,
    /// When the exchange in progress began.
    pub busy_since: Option<Instant>,
}

/// Locks `shared`, whatever a panic elsewhere left in it (plain data, always whole).
pub(super) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held by a BIRD thread for its whole life: a thread started while an earlier one still
/// finishes its last exchange (`[bgp]` removed and added again at once) waits for it, so
/// their writes to BIRD's files never interleave.
pub(super) static TURN: Mutex<()> = Mutex::new(());

/// Starts the thread for `bgp`. Its first act is [`Speaker::start`]'s.
pub(super) fn spawn(bgp: Bgp, shared: Arc<Mutex<Shared>>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("sluice-bird".into())
        .spawn(move || {
            let _turn = TURN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut s = Speaker {
                bgp,
                shared,
                wanted: None,
                stale_config: false,
            };
            s.start();
            s.run(&rx);
        });
    if let Err(e) = spawned {
        error!(error = %e, "starting the BIRD control thread failed: nothing is announced");
    }
    tx
}

struct Speaker {
    bgp: Bgp,
    shared: Arc<Mutex<Shared>>,
    /// The agent's last wanted set (none yet: a running BIRD keeps its announcements).
    wanted: Option<(BTreeSet<IpAddr>, HashMap<IpAddr, String>)>,
    /// A reloaded `[bgp]` that BIRD has not been given yet.
    stale_config: bool,
}

impl Speaker {
    /// Starts BIRD on a config with nothing to announce, unless one is running already: a
    /// BIRD left by a previous agent keeps its announcements until the agent's first
    /// decision (telling it to announce nothing here would withdraw every VIP and announce
    /// it again moments later: a flap at every router at each agent restart).
    fn start(&mut self) {
        self.busy(true);
        if Control::connect(&self.bgp.bird_socket).is_ok() {
            info!("BIRD is running: it keeps its announcements until this agent decides");
        } else if let Err(e) = self.push(&BTreeSet::new()) {
            error!(error = %e, "starting BIRD failed; retrying each second");
            self.failed(&e);
        }
        self.busy(false);
    }

    fn run(&mut self, rx: &mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            // Merge what waits: only the last wanted set and config matter.
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let mut config = None;
            let mut poll = false;
            let mut syncs = Vec::new();
            let mut stop = false;
            for job in jobs {
                match job {
                    Job::Want { set, reasons } => self.wanted = Some((set, reasons)),
                    Job::Config(b) => config = Some(b),
                    Job::Poll => poll = true,
                    Job::Sync(done) => syncs.push(done),
                    Job::Stop => stop = true,
                }
            }
            self.busy(true);
            if let Some(b) = config {
                self.reconfigure(b);
            }
            if poll {
                self.poll();
            }
            self.converge();
            self.busy(false);
            for done in syncs {
                let _ = done.send(());
            }
            if stop {
                return;
            }
        }
    }

    /// Tells BIRD the wanted set if it was not told that yet, the last attempt failed, or
    /// its config changed since.
    fn converge(&mut self) {
        let Some((set, reasons)) = self.wanted.clone() else {
            return;
        };
        let before = lock(&self.shared).announced.clone();
        if before.as_ref() == Some(&set) && !self.stale_config {
            return;
        }
        match self.push(&set) {
            Ok(()) => {
                let before = before.unwrap_or_default();
                for a in set.difference(&before) {
                    info!(vip = %a, "announcing over BGP");
                }
                for a in before.difference(&set) {
                    let why = reasons
                        .get(a)
                        .map_or("no longer configured", String::as_str);
                    warn!(vip = %a, reason = why, "withdrawn from BGP");
                }
            }
            Err(e) => {
                error!(error = %e, "telling BIRD what to announce failed; retrying each second");
                self.failed(&e);
            }
        }
    }

    /// Takes a reloaded `[bgp]` section (peers, timers); [`Speaker::converge`] gives it to
    /// BIRD with the wanted set. Before the agent's first decision there is none, and
    /// BIRD, left by a previous agent, keeps its files until then (pushing what this thread
    /// knows, nothing, would withdraw every VIP).
    fn reconfigure(&mut self, bgp: Bgp) {
        if bgp != self.bgp {
            self.bgp = bgp;
            self.stale_config = true;
        }
    }

    /// Reads the sessions' state. A BIRD that is gone (no socket, or nobody listening on
    /// it) is started again, announcing what it announced; one that is there but slow is
    /// only reported: starting a second one beside it would fight it for the sessions.
    fn poll(&mut self) {
        match Control::connect(&self.bgp.bird_socket).and_then(|mut c| c.protocols()) {
            Ok(p) => {
                let mut s = lock(&self.shared);
                s.sessions = p;
                if s.announced.is_some() {
                    s.error = None;
                }
            }
            Err(e) if e.is_absent() => {
                warn!(error = %e, "BIRD is not running; starting it again");
                let current = {
                    let mut s = lock(&self.shared);
                    s.error = Some(e.to_string());
                    s.sessions.clear();
                    s.announced.take().unwrap_or_default()
                };
                if let Err(e) = self.push(&current) {
                    error!(error = %e, "restarting BIRD failed");
                    self.failed(&e);
                }
            }
            Err(e) => {
                warn!(error = %e, "BIRD does not answer");
                lock(&self.shared).error = Some(e.to_string());
            }
        }
    }

    /// Writes the files for `set` and makes BIRD apply them, starting BIRD if none runs.
    fn push(&mut self, set: &BTreeSet<IpAddr>) -> Result<(), BirdError> {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = set.iter().partition(|a| a.is_ipv4());
        bird::write_all(&self.bgp, &v4, &v6)?;
        match Control::connect(&self.bgp.bird_socket) {
            Ok(mut c) => c.configure()?,
            Err(e) if e.is_absent() => {
                bird::start(&self.bgp)?;
                self.wait_for_socket()?;
            }
            Err(e) => return Err(e),
        }
        self.stale_config = false;
        let mut s = lock(&self.shared);
        s.announced = Some(set.clone());
        s.error = None;
        Ok(())
    }

    fn wait_for_socket(&self) -> Result<(), BirdError> {
        let start = Instant::now();
        loop {
            match Control::connect(&self.bgp.bird_socket) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > START_WAIT => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Records a failed exchange: the error, and an unknown state, so that the next job
    /// pushes again.
    fn failed(&self, e: &BirdError) {
        let mut s = lock(&self.shared);
        s.error = Some(e.to_string());
        s.announced = None;
    }

    fn busy(&self, on: bool) {
        lock(&self.shared).busy_since = on.then(Instant::now);
    }
}
