//! Announcing the VIPs over BGP, through BIRD ([`bird`]).
//!
//! The agent decides which VIP addresses this node announces: an address is announced
//! while the XDP program is attached, the maps hold the current plan, a VIP on that address
//! has a backend alive, and the node is not in maintenance. [`Announcer`] tells BIRD when
//! that set changes, and withdraws everything before a graceful stop.

pub mod bird;
mod speaker;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Bgp;
use bird::BirdError;
use speaker::{Job, Shared};

/// The BGP part of `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BgpStatus {
    /// Whether `[bgp]` is configured.
    pub enabled: bool,
    /// The operator's maintenance switch: everything withdrawn.
    pub maintenance: bool,
    /// Each VIP address, and whether it is announced (and why not).
    pub vips: Vec<Announcement>,
    /// BIRD's sessions, as `show protocols` reports them.
    pub sessions: Vec<Session>,
    /// The last error talking to BIRD, if the last attempt failed.
    pub error: Option<String>,
}

/// A VIP address's announcement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Announcement {
    /// The address.
    pub address: IpAddr,
    /// Announced to the peers now.
    pub announced: bool,
    /// Why it is not (empty when it is).
    pub reason: String,
}

/// One BGP session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// The peer's address.
    pub peer: String,
    /// BIRD's protocol state (`up`, `start`, `down`).
    pub state: String,
    /// BIRD's detail (`Established`, `Active`, …).
    pub info: String,
}

/// What BIRD is told to announce: the agent's side. BIRD itself is driven from a thread of
/// its own ([`speaker`]), so that a BIRD slow to answer never holds up the agent.
pub struct Announcer {
    bgp: Bgp,
    /// The addresses and why each is or is not wanted, from the agent's last decision.
    wanted: Vec<Announcement>,
    /// The set last handed to the thread.
    sent: Option<BTreeSet<IpAddr>>,
    maintenance: bool,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Mutex<Shared>>,
}

/// The file in `state_dir` whose presence means maintenance.
const MAINTENANCE_FILE: &str = "bgp-maintenance";

/// Where an earlier version kept it, in `bird_dir` (on tmpfs by default, so lost at a
/// reboot): still read, copied to `state_dir`, and removed by `maintenance off`.
const LEGACY_MAINTENANCE_FILE: &str = "maintenance";

/// How long an exchange with BIRD may go on before `status` reports BIRD as stalled.
const STALLED_AFTER: Duration = Duration::from_secs(15);

impl Announcer {
    /// Starts the BIRD thread, which starts BIRD on a config with nothing to announce,
    /// unless one is running already: a BIRD left by a previous agent keeps its
    /// announcements until the first [`Announcer::announce`], which the agent calls once
    /// its maps are written.
    ///
    /// A failure is reported in [`Announcer::status`] and retried at each
    /// [`Announcer::poll`]: the data plane forwards whether or not BIRD can be driven.
    pub fn start(bgp: &Bgp) -> Self {
        let marker = bgp.state_dir.join(MAINTENANCE_FILE);
        let legacy = bgp.bird_dir.join(LEGACY_MAINTENANCE_FILE);
        if legacy.exists() && !marker.exists() {
            // Copied, not moved: a rollback to the earlier version still finds it.
            let copied = std::fs::create_dir_all(&bgp.state_dir)
                .and_then(|()| std::fs::write(&marker, "set by sluice-lb maintenance on\n"));
            if let Err(e) = copied {
                warn!(error = %e, to = %marker.display(), "moving the maintenance switch failed");
            }
        }
        let maintenance = marker.exists() || legacy.exists();
        if maintenance {
            warn!("in BGP maintenance (set before this start): nothing is announced");
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        Announcer {
            bgp: bgp.clone(),
            wanted: Vec::new(),
            sent: None,
            maintenance,
            jobs: speaker::spawn(bgp.clone(), shared.clone()),
            shared,
        }
    }

    /// Applies a reloaded `[bgp]` section (peers, timers).
    pub fn reconfigure(&mut self, bgp: &Bgp) {
        if *bgp == self.bgp {
            return;
        }
        self.bgp = bgp.clone();
        let _ = self.jobs.send(Job::Config(bgp.clone()));
    }

    /// Sets the maintenance switch, kept in `state_dir` so that it survives a restart and a
    /// reboot; the next [`Announcer::announce`] applies it.
    pub fn set_maintenance(&mut self, on: bool) -> Result<(), BirdError> {
        let marker = self.bgp.state_dir.join(MAINTENANCE_FILE);
        let remove = |path: &std::path::Path| {
            std::fs::remove_file(path).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        let done = if on {
            std::fs::create_dir_all(&self.bgp.state_dir)
                .and_then(|()| std::fs::write(&marker, "set by sluice-lb maintenance on\n"))
        } else {
            remove(&marker).and_then(|()| remove(&self.bgp.bird_dir.join(LEGACY_MAINTENANCE_FILE)))
        };
        done.map_err(|source| BirdError::Io {
            what: format!("recording maintenance in {}", marker.display()),
            source,
        })?;
        if on != self.maintenance {
            info!(maintenance = on, "BGP maintenance");
        }
        self.maintenance = on;
        Ok(())
    }

    /// True while in maintenance.
    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// Announces exactly the wanted addresses of `decision` (or none in maintenance),
    /// handing BIRD's thread the set only when it changes (the thread retries a set that
    /// failed by itself).
    pub fn announce(&mut self, decision: Vec<Announcement>) {
        let mut decision = decision;
        if self.maintenance {
            for d in &mut decision {
                d.announced = false;
                d.reason = "maintenance".into();
            }
        }
        let set: BTreeSet<IpAddr> = decision
            .iter()
            .filter(|d| d.announced)
            .map(|d| d.address)
            .collect();
        let reasons = decision
            .iter()
            .filter(|d| !d.announced)
            .map(|d| (d.address, d.reason.clone()))
            .collect();
        self.wanted = decision;
        if self.sent.as_ref() == Some(&set) {
            return;
        }
        self.sent = Some(set.clone());
        let _ = self.jobs.send(Job::Want { set, reasons });
    }

    /// Records `decision` for `status` without telling BIRD anything: for an agent whose
    /// view of its backends is still forming (just started, not every backend probed yet).
    /// BIRD keeps what it announces meanwhile: nothing if this agent started it, or what a
    /// previous agent announced, which the pinned maps still forward. Announcing from a
    /// partial view would build a table unlike the other nodes', and the established flows
    /// the routers then move here would change gateway; withdrawing would be a flap.
    pub fn hold(&mut self, decision: Vec<Announcement>) {
        self.wanted = decision;
    }

    /// Withdraws everything (a graceful stop): waits, [`STALLED_AFTER`] at most, for BIRD
    /// to take it, retrying each second, then `withdraw_delay_ms` so the routers move the
    /// flows before the agent goes. `Err` when BIRD did not take it: it outlives the agent
    /// and still announces, which the caller must not report as a clean stop.
    pub async fn withdraw_and_wait(&mut self) -> Result<(), BirdError> {
        self.withdraw_within(STALLED_AFTER).await
    }

    async fn withdraw_within(&mut self, limit: Duration) -> Result<(), BirdError> {
        let decision: Vec<Announcement> = std::mem::take(&mut self.wanted)
            .into_iter()
            .map(|d| Announcement {
                announced: false,
                reason: "the agent stopped".into(),
                ..d
            })
            .collect();
        self.announce(decision);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let told = self.settled();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::task::spawn_blocking(move || told.recv_timeout(left)).await;
            let withdrawn = speaker::lock(&self.shared)
                .announced
                .as_ref()
                .is_some_and(BTreeSet::is_empty);
            if withdrawn {
                break;
            }
            // No BIRD on the socket (none runs, and none could be started): nothing of this
            // node is announced, so nothing is left to withdraw.
            let socket = self.bgp.bird_socket.clone();
            let probe = tokio::task::spawn_blocking(move || bird::Control::connect(&socket)).await;
            if let Ok(Err(e)) = probe {
                if e.is_absent() {
                    warn!(error = %e, "BIRD is not running: nothing is announced to withdraw");
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let why = speaker::lock(&self.shared).error.clone();
                return Err(BirdError::Refused {
                    command: "withdraw every VIP".into(),
                    reply: why.unwrap_or_else(|| "no answer in time".into()),
                });
            }
            // The speaker retries a set that failed when it is next handed a job.
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.poll();
        }
        let wait = Duration::from_millis(self.bgp.withdraw_delay_ms);
        info!(
            wait_ms = wait.as_millis() as u64,
            "withdrawn from BGP; waiting before exit"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Reads the sessions' state; restarts a BIRD that is gone (announcing again what was
    /// announced), and retries what failed. Done by BIRD's thread: this returns at once.
    pub fn poll(&mut self) {
        let _ = self.jobs.send(Job::Poll);
    }

    /// A receiver that answers once BIRD's thread has done every job handed to it so far.
    fn settled(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send(Job::Sync(tx));
        rx
    }

    /// The BGP part of `status`.
    pub fn status(&self) -> BgpStatus {
        let shared = speaker::lock(&self.shared);
        let announced = shared.announced.clone().unwrap_or_default();
        let stalled = shared
            .busy_since
            .map(|t| t.elapsed())
            .filter(|d| *d > STALLED_AFTER);
        let error = match stalled {
            Some(d) => Some(format!(
                "BIRD has not answered for {} s (stalled?)",
                d.as_secs()
            )),
            None => shared.error.clone(),
        };
        BgpStatus {
            enabled: true,
            maintenance: self.maintenance,
            vips: self
                .wanted
                .iter()
                .map(|w| Announcement {
                    address: w.address,
                    announced: announced.contains(&w.address),
                    reason: if announced.contains(&w.address) {
                        String::new()
                    } else if w.reason.is_empty() {
                        "not yet told to BIRD".into()
                    } else {
                        w.reason.clone()
                    },
                })
                .collect(),
            sessions: self
                .bgp
                .peers
                .iter()
                .map(|p| {
                    let name = bird::peer_name(p.address);
                    let found = shared.sessions.iter().find(|s| s.name == name);
                    Session {
                        peer: p.address.to_string(),
                        state: found.map_or("unknown".into(), |s| s.state.clone()),
                        info: found.map_or(String::new(), |s| s.info.clone()),
                    }
                })
                .collect(),
            error,
        }
    }
}

impl Drop for Announcer {
    /// Ends BIRD's thread once it has done what it was handed (a last withdrawal, when the
    /// `[bgp]` section is removed); BIRD itself runs on.
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{BufRead, BufReader, Write},
        os::unix::net::UnixListener,
        sync::{Arc, Mutex},
    };

    /// A stand-in for BIRD's control socket: greets, answers every command, and records
    /// the commands it was sent.
    fn fake_bird(socket: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
        refusing_bird(socket, usize::MAX, 0)
    }

    /// A fake BIRD that refuses `configure` from the `from`-th on, `count` times.
    fn refusing_bird(
        socket: &std::path::Path,
        from: usize,
        count: usize,
    ) -> Arc<Mutex<Vec<String>>> {
        let listener = UnixListener::bind(socket).expect("bind");
        let configures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                let configures = configures.clone();
                std::thread::spawn(move || {
                    let _ = conn.write_all(b"0001 BIRD 2.0.12 ready.\n");
                    let reader = BufReader::new(conn.try_clone().expect("clone"));
                    for line in reader.lines() {
                        let Ok(line) = line else { return };
                        let n = if line.starts_with("configure") {
                            configures.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        } else {
                            usize::MAX
                        };
                        log.lock().expect("lock").push(line);
                        let reply: &[u8] = if n >= from && n - from < count {
                            b"8002 /run/x/bird.conf:12:3 parse error\n"
                        } else {
                            b"0003 Reconfigured\n"
                        };
                        let _ = conn.write_all(reply);
                    }
                });
            }
        });
        seen
    }

    fn config(dir: &std::path::Path, socket: &std::path::Path) -> Bgp {
        toml::from_str(&format!(
            "local_as = 65001\nrouter_id = \"10.0.0.11\"\n\
             peers = [{{ address = \"10.0.0.1\", as = 65000 }}]\n\
             bird_socket = \"{}\"\nbird_dir = \"{}\"\nbird_binary = \"/nonexistent\"\n\
             state_dir = \"{}\"\n",
            socket.display(),
            dir.display(),
            dir.join("state").display()
        ))
        .expect("parse")
    }

    /// Ends `a`'s thread, which ends with its last exchange (and may write BIRD's files
    /// there), then removes `dir`.
    fn finish(a: Announcer, dir: &std::path::Path) {
        // Its thread has started (and taken the turn), so the turn below waits for its end;
        // a thread that had not started yet would make BIRD's files after the removal.
        let _ = a.settled().recv_timeout(Duration::from_secs(30));
        drop(a);
        drop(speaker::TURN.lock());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The maintenance switch is kept in `state_dir` (which outlives a reboot), not in
    /// `bird_dir` (tmpfs); one an earlier version left in `bird_dir` still holds, and is
    /// copied (a rollback still finds it).
    #[test]
    fn maintenance_is_kept_in_the_state_directory_and_an_old_switch_is_copied_there() {
        let dir = std::env::temp_dir().join(format!("sluice-bgp-maint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bgp = config(&dir, &dir.join("none.ctl"));
        let marker = bgp.state_dir.join(MAINTENANCE_FILE);
        let legacy = bgp.bird_dir.join(LEGACY_MAINTENANCE_FILE);
        let mut a = Announcer::start(&bgp);
        assert!(!a.maintenance());
        a.set_maintenance(true).expect("on");
        assert!(marker.exists() && !legacy.exists());
        // One BIRD thread at a time: each has started before the next (see `finish`).
        let _ = a.settled().recv_timeout(Duration::from_secs(30));
        drop(a);
        // What a reboot keeps: state_dir, not bird_dir.
        let a = Announcer::start(&bgp);
        assert!(a.maintenance(), "kept across a restart");
        let _ = a.settled().recv_timeout(Duration::from_secs(30));
        drop(a);
        std::fs::remove_file(&marker).expect("rm");
        std::fs::write(&legacy, "").expect("an earlier version's switch");
        let mut a = Announcer::start(&bgp);
        assert!(a.maintenance(), "the earlier switch holds");
        assert!(marker.exists() && legacy.exists(), "and is copied");
        a.set_maintenance(false).expect("off");
        assert!(!marker.exists() && !legacy.exists());
        finish(a, &dir);
    }

    /// A graceful stop's withdrawal that BIRD refuses is retried, and reported as an
    /// error if it never takes, not as a clean stop: BIRD outlives the agent and would go
    /// on announcing.
    #[test]
    fn a_withdrawal_bird_refuses_is_retried_and_never_reported_as_done() {
        let vip: IpAddr = "198.51.100.1".parse().expect("literal");
        let wanted = vec![Announcement {
            address: vip,
            announced: true,
            reason: String::new(),
        }];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // No BIRD at all, and none can be started: nothing is announced, nothing to withdraw.
        let dir = std::env::temp_dir().join(format!("sluice-bgp-absent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut a = Announcer::start(&config(&dir, &dir.join("none.ctl")));
        a.announce(wanted.clone());
        let began = std::time::Instant::now();
        let stopped = rt.block_on(a.withdraw_within(Duration::from_secs(4)));
        finish(a, &dir);
        assert!(stopped.is_ok(), "{stopped:?}");
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "{:?}",
            began.elapsed()
        );
        // (refused from the n-th configure, how many times, what the stop comes to)
        for (refusals, done) in [(usize::MAX, false), (2, true)] {
            let dir = std::env::temp_dir().join(format!(
                "sluice-bgp-refuse-{}-{refusals}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let socket = dir.join("bird.ctl");
            // The announcement is taken; the withdrawals after it are refused.
            let seen = refusing_bird(&socket, 1, refusals);
            let mut a = Announcer::start(&config(&dir, &socket));
            a.announce(wanted.clone());
            a.settled()
                .recv_timeout(Duration::from_secs(10))
                .expect("announced");
            let stopped = rt.block_on(a.withdraw_within(Duration::from_secs(4)));
            let status = a.status();
            finish(a, &dir);
            let configures = seen
                .lock()
                .expect("lock")
                .iter()
                .filter(|l| l.starts_with("configure"))
                .count();
            assert_eq!(stopped.is_ok(), done, "{stopped:?}");
            if done {
                assert_eq!(configures, 4, "announced, refused twice, then withdrawn");
            } else {
                assert!(configures >= 3, "retried: {configures} configures");
                let e = stopped.expect_err("refused").to_string();
                assert!(e.contains("parse error"), "{e}");
                assert!(!status.vips.is_empty() && status.error.is_some());
            }
        }
    }

    /// A BIRD that takes connections and never answers (stopped, or wedged) holds up
    /// nothing the agent does, and is reported, not started a second time beside itself.
    #[test]
    fn a_bird_that_does_not_answer_holds_nothing_up_and_is_not_started_twice() {
        let dir = std::env::temp_dir().join(format!("sluice-bgp-mute-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("bird.ctl");
        // Listening, so connections queue, but never accepted nor answered.
        let _mute = UnixListener::bind(&socket).expect("bind");
        let bgp = config(&dir, &socket);
        let vip: IpAddr = "198.51.100.1".parse().expect("literal");
        let began = std::time::Instant::now();
        let mut a = Announcer::start(&bgp);
        for _ in 0..3 {
            a.announce(vec![Announcement {
                address: vip,
                announced: true,
                reason: String::new(),
            }]);
            a.poll();
            let _ = a.status();
        }
        let took = began.elapsed();
        // BIRD's thread waits each exchange out meanwhile.
        a.settled()
            .recv_timeout(Duration::from_secs(30))
            .expect("BIRD's thread goes on");
        let status = a.status();
        finish(a, &dir);
        assert!(
            took < Duration::from_millis(200),
            "the agent waited {took:?}"
        );
        let error = status.error.expect("the silence is reported");
        assert!(
            !error.contains("nonexistent"),
            "a second BIRD was started: {error}"
        );
        assert!(!status.vips[0].announced, "{:?}", status.vips);
    }

    /// An agent that starts while a BIRD from a previous agent runs leaves its
    /// announcements alone, through decisions held back, until its own first decision,
    /// which it then pushes: a withdrawal in between would make every router move the
    /// flows away and back.
    #[test]
    fn a_running_bird_keeps_its_announcements_until_the_first_decision() {
        let dir = std::env::temp_dir().join(format!("sluice-bgp-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("bird.ctl");
        let bgp = config(&dir, &socket);
        let seen = fake_bird(&socket);
        let mut a = Announcer::start(&bgp);
        a.settled().recv().expect("BIRD's thread");
        let vip: IpAddr = "198.51.100.1".parse().expect("literal");
        // A decision held back while the agent's view forms is shown, not told.
        a.hold(vec![Announcement {
            address: vip,
            announced: false,
            reason: "waiting".into(),
        }]);
        let held = a.status().vips;
        let untouched = !dir.join("vips4.conf").exists() && seen.lock().expect("lock").is_empty();
        a.announce(vec![Announcement {
            address: vip,
            announced: true,
            reason: String::new(),
        }]);
        a.settled().recv().expect("BIRD's thread");
        let routes = std::fs::read_to_string(dir.join("vips4.conf")).unwrap_or_default();
        let commands = seen.lock().expect("lock").clone();
        let status = a.status();
        finish(a, &dir);
        assert!(
            untouched,
            "start told the running BIRD something: {commands:?}"
        );
        assert_eq!(
            held,
            [Announcement {
                address: vip,
                announced: false,
                reason: "waiting".into()
            }]
        );
        assert!(
            routes.contains("route 198.51.100.1/32 blackhole;"),
            "{routes}"
        );
        assert_eq!(commands, ["configure"]);
        assert!(status.error.is_none(), "{status:?}");
        assert!(status.vips.iter().all(|v| v.announced), "{status:?}");
    }
}
