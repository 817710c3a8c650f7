//! Announcing the VIPs over BGP, through BIRD ([`bird`]).
//!
//! The agent decides which VIP addresses this node announces: an address is announced
//! while the XDP program is attached, the maps hold the current plan, a VIP on that address
//! has a backend alive, and the node is not in maintenance. [`Announcer`] tells BIRD when
//! that set changes, and withdraws everything before a graceful stop.

pub mod bird;

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::Bgp;
use bird::{BirdError, Control, Protocol};

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

/// What BIRD is told to announce.
pub struct Announcer {
    bgp: Bgp,
    /// What BIRD was last told, once it was told anything.
    announced: Option<BTreeSet<IpAddr>>,
    /// The addresses and why each is or is not wanted, from the agent's last decision.
    wanted: Vec<Announcement>,
    maintenance: bool,
    sessions: Vec<Protocol>,
    error: Option<String>,
}

/// The file in `bird_dir` whose presence means maintenance.
const MAINTENANCE_FILE: &str = "maintenance";

/// How long the agent waits for a BIRD it started to open its control socket.
const START_WAIT: Duration = Duration::from_secs(5);

impl Announcer {
    /// Starts BIRD on a config with nothing to announce, unless one is running already: a
    /// BIRD left by a previous agent keeps its announcements until the first
    /// [`Announcer::announce`], which the agent calls once its maps are written.
    ///
    /// A failure is reported in [`Announcer::status`] and retried by [`Announcer::poll`]:
    /// the data plane forwards whether or not BIRD can be driven.
    pub fn start(bgp: &Bgp) -> Self {
        let mut a = Announcer {
            bgp: bgp.clone(),
            announced: None,
            wanted: Vec::new(),
            maintenance: bgp.bird_dir.join(MAINTENANCE_FILE).exists(),
            sessions: Vec::new(),
            error: None,
        };
        if a.maintenance {
            warn!("in BGP maintenance (set before this start): nothing is announced");
        }
        // A BIRD that answers was left by a previous agent: it announces what that agent
        // decided, which the pinned maps still forward. It keeps announcing that until
        // this agent's first decision (`announce`, which the agent calls once its maps are
        // written, and which always tells BIRD since nothing was told yet). Telling it to
        // announce nothing here would withdraw every VIP and announce it again moments
        // later: a flap at every router at each agent restart.
        if Control::connect(&bgp.bird_socket).is_ok() {
            info!("BIRD is running: it keeps its announcements until this agent decides");
            return a;
        }
        // Otherwise BIRD starts announcing nothing; the VIPs follow with the first decision.
        if let Err(e) = a.push(&BTreeSet::new()) {
            error!(error = %e, "starting BIRD failed; retrying each second");
            a.error = Some(e.to_string());
        }
        a
    }

    /// Applies a reloaded `[bgp]` section (peers, timers, paths).
    pub fn reconfigure(&mut self, bgp: &Bgp) {
        if *bgp == self.bgp {
            return;
        }
        self.bgp = bgp.clone();
        let current = self.announced.clone().unwrap_or_default();
        if let Err(e) = self.push(&current) {
            error!(error = %e, "applying the new [bgp] section to BIRD failed");
            self.error = Some(e.to_string());
        }
    }

    /// Sets the maintenance switch, kept in `bird_dir` so that it survives a restart; the
    /// next [`Announcer::announce`] applies it.
    pub fn set_maintenance(&mut self, on: bool) -> Result<(), BirdError> {
        let marker = self.bgp.bird_dir.join(MAINTENANCE_FILE);
        let done = if on {
            std::fs::create_dir_all(&self.bgp.bird_dir)
                .and_then(|()| std::fs::write(&marker, "set by sluice-lb maintenance on\n"))
        } else {
            std::fs::remove_file(&marker).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
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
    /// telling BIRD only when that changes.
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
        self.wanted = decision;
        if self.announced.as_ref() == Some(&set) {
            return;
        }
        let before = self.announced.clone().unwrap_or_default();
        match self.push(&set) {
            Ok(()) => {
                for a in set.difference(&before) {
                    info!(vip = %a, "announcing over BGP");
                }
                for a in before.difference(&set) {
                    let why = self
                        .wanted
                        .iter()
                        .find(|d| d.address == *a)
                        .map_or("no longer configured", |d| d.reason.as_str());
                    warn!(vip = %a, reason = why, "withdrawn from BGP");
                }
            }
            Err(e) => {
                error!(error = %e, "telling BIRD what to announce failed; retrying each second");
                self.error = Some(e.to_string());
                // Unknown state: the next call pushes again.
                self.announced = None;
            }
        }
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

    /// Withdraws everything (a graceful stop), then waits `withdraw_delay_ms` so the
    /// routers move the flows before the agent goes.
    pub async fn withdraw_and_wait(&mut self) {
        let decision: Vec<Announcement> = std::mem::take(&mut self.wanted)
            .into_iter()
            .map(|d| Announcement {
                announced: false,
                reason: "the agent stopped".into(),
                ..d
            })
            .collect();
        self.announce(decision);
        let wait = Duration::from_millis(self.bgp.withdraw_delay_ms);
        info!(
            wait_ms = wait.as_millis() as u64,
            "withdrawn from BGP; waiting before exit"
        );
        tokio::time::sleep(wait).await;
    }

    /// Reads the sessions' state; restarts BIRD if it is gone (announcing again what was
    /// announced).
    pub fn poll(&mut self) {
        match Control::connect(&self.bgp.bird_socket).and_then(|mut c| c.protocols()) {
            Ok(p) => {
                self.sessions = p;
                if self.announced.is_some() {
                    self.error = None;
                }
            }
            Err(e) => {
                warn!(error = %e, "BIRD does not answer; starting it again");
                self.error = Some(e.to_string());
                self.sessions.clear();
                let current = self.announced.take().unwrap_or_default();
                if let Err(e) = self.push(&current) {
                    error!(error = %e, "restarting BIRD failed");
                    self.error = Some(e.to_string());
                }
            }
        }
    }

    /// Writes the files for `set` and makes BIRD apply them.
    fn push(&mut self, set: &BTreeSet<IpAddr>) -> Result<(), BirdError> {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = set.iter().partition(|a| a.is_ipv4());
        bird::write_all(&self.bgp, &v4, &v6)?;
        match Control::connect(&self.bgp.bird_socket) {
            Ok(mut c) => c.configure()?,
            Err(_) => {
                bird::start(&self.bgp)?;
                self.wait_for_socket()?;
            }
        }
        self.announced = Some(set.clone());
        self.error = None;
        Ok(())
    }

    fn wait_for_socket(&self) -> Result<(), BirdError> {
        let start = std::time::Instant::now();
        loop {
            match Control::connect(&self.bgp.bird_socket) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > START_WAIT => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The BGP part of `status`.
    pub fn status(&self) -> BgpStatus {
        let announced = self.announced.clone().unwrap_or_default();
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
                .enumerate()
                .map(|(i, p)| {
                    let name = bird::peer_name(i);
                    let found = self.sessions.iter().find(|s| s.name == name);
                    Session {
                        peer: p.address.to_string(),
                        state: found.map_or("unknown".into(), |s| s.state.clone()),
                        info: found.map_or(String::new(), |s| s.info.clone()),
                    }
                })
                .collect(),
            error: self.error.clone(),
        }
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
        let listener = UnixListener::bind(socket).expect("bind");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = conn.write_all(b"0001 BIRD 2.0.12 ready.\n");
                    let reader = BufReader::new(conn.try_clone().expect("clone"));
                    for line in reader.lines() {
                        let Ok(line) = line else { return };
                        log.lock().expect("lock").push(line);
                        let _ = conn.write_all(b"0003 Reconfigured\n");
                    }
                });
            }
        });
        seen
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
        let bgp: Bgp = toml::from_str(&format!(
            "local_as = 65001\nrouter_id = \"10.0.0.11\"\n\
             peers = [{{ address = \"10.0.0.1\", as = 65000 }}]\n\
             bird_socket = \"{}\"\nbird_dir = \"{}\"\nbird_binary = \"/nonexistent\"\n",
            socket.display(),
            dir.display()
        ))
        .expect("parse");
        let seen = fake_bird(&socket);
        let mut a = Announcer::start(&bgp);
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
        let routes = std::fs::read_to_string(dir.join("vips4.conf")).unwrap_or_default();
        let commands = seen.lock().expect("lock").clone();
        let status = a.status();
        let _ = std::fs::remove_dir_all(&dir);
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
