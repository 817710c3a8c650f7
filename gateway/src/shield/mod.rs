//! Abuse detection: the gateway's own refusals counted per client, and the clients that
//! pile them up offered to the L4 tier as block candidates (`GET /shield/candidates`, the
//! contract in `sluice_util::shield`).
//!
//! Only refusals reach the shield: the pipeline's answers of its own with a status that has
//! a [`Class`], hyper's answers to heads it could not parse, and connections closed by a
//! head or TLS-handshake deadline (`downstream`). A request that is not refused costs one
//! `match` on its status; with the shield `off`, a refusal costs one atomic load. A client
//! is its `/32` or IPv6 `/64` ([`client_prefix`]).
//!
//! Only a connection's peer address is ever held against a client. The L4 agents block
//! candidates in XDP by the packets' source address, so a candidate must be an address the
//! packets come from: a client named by a trusted proxy's `X-Forwarded-For` reaches the L4
//! tier from the proxy, so blocking it there would stop nothing, and offering it would let
//! any peer in `trusted_proxies` have any address of its choice blocked at L4. Such
//! refusals are counted in the metrics but held against no one; trusted proxies themselves
//! are never counted either (blocking one would cut off all of its clients).
//!
//! Nor is a refusal that is not the client's doing ([`Fault`]): a 429 counts only when a
//! rate limit keyed on the client's own address says so, and a 401 for keys the gateway
//! lacked not at all, since those strike every client at once. What slips through that
//! (a fault of the gateway's own that refuses everyone) the brake in `held` catches: when
//! most clients counted become candidates at once, it takes no new one for a window.
//!
//! Counting is `clients` (sliding windows in a bounded table), holding is `held` (bounded;
//! when full, a newcomer with more refusals displaces the lightest candidate).

mod clients;
mod held;
mod window;

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use sluice_util::shield::{client_prefix, Candidates, Class, Mode};
use tracing::warn;

use self::{
    clients::Clients,
    held::{Bounds, Held, Offer},
};
use crate::config;

/// The media type of the answer on `/shield/candidates`. An L4 agent takes candidates only
/// from an answer of this type: a port it probes that is not an admin listener (one whose
/// paths are routed to an upstream app) could otherwise answer that path with a document
/// of the app's, or an attacker's, choosing, and have any address blocked. No app answers
/// with a vendor type of Sluice's by accident. (The body is `sluice_util::shield`'s.)
pub const MEDIA_TYPE: &str = "application/vnd.sluice.shield-candidates+json";

/// How often a candidate still crossing its threshold has its time renewed, at most: a
/// client refused thousands of times a second takes the candidates' lock once a second.
const REOFFER_MS: u64 = 1000;

/// Whose doing a refusal of the gateway's is, as the step that refused knows it: set on its
/// answer as a response extension, and read where the shield counts the answer
/// ([`Shield::request_refused`]). A status alone does not say: a 429 of a quota the client
/// shares with others, or a 401 because the gateway could not get an issuer's keys, would
/// make every client of a route a candidate at once, and have them all blocked at L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client's own: say, a rate limit keyed on its address alone ran out.
    Client,
    /// Not the client's: a quota or concurrency slot shared with others (a slow upstream
    /// fills those), or keys the gateway did not have. Never counted.
    NotClient,
}

impl Fault {
    /// Whether a refusal of `class` with `fault` (as its answer carries it) is held against
    /// the client. A 429 must say it is the client's own (only a limit keyed on the client
    /// knows that, and a new kind of 429 should not count until it says so); any other
    /// class counts unless it says it is not.
    pub fn counts(fault: Option<Fault>, class: Class) -> bool {
        match fault {
            Some(Fault::Client) => true,
            Some(Fault::NotClient) => false,
            None => class != Class::RateLimited,
        }
    }
}

/// The shield of a running gateway.
#[derive(Default)]
pub struct Shield {
    /// The settings and state in force; `None` while `off`.
    state: ArcSwapOption<Tracker>,
    /// Refusals by class, counted while the shield is on.
    refusals: [AtomicU64; Class::ALL.len()],
    /// Counted clients dropped to make room for others.
    evictions: AtomicU64,
    /// Crossings not taken because `max_candidates` as heavy were held.
    full: AtomicU64,
    /// Candidates dropped for a heavier newcomer.
    replaced: AtomicU64,
    /// Crossings not taken because the brake was on.
    braked: AtomicU64,
    /// Refusals not held against the client ([`Fault`]).
    excused: AtomicU64,
}

/// One configuration's settings over the tables, which a reload may carry over.
struct Tracker {
    config: config::Shield,
    /// Peers that are trusted proxies: never counted themselves.
    trusted: Vec<IpNet>,
    clients: Arc<Clients>,
    held: Arc<Held>,
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Off => "off",
        Mode::Observe => "observe",
        Mode::Enforce => "enforce",
    }
}

impl Shield {
    /// Takes the settings of a config, and its trusted proxies. The counts survive a reload
    /// that keeps `window_secs` and `max_clients` (a different window would misread them;
    /// a different bound makes a new table); candidates survive any reload that leaves the
    /// shield on, trimmed to a lower `max_candidates`. New thresholds, TTL and mode apply
    /// from the next refusal. `off` drops everything.
    pub fn configure(&self, c: &config::Shield, trusted: Vec<IpNet>) {
        if c.mode == Mode::Off {
            self.state.store(None);
            return;
        }
        let old = self.state.load_full();
        let clients = match &old {
            Some(t)
                if t.config.window_secs == c.window_secs
                    && t.config.max_clients == c.max_clients =>
            {
                t.clients.clone()
            }
            _ => Arc::new(Clients::new(c.max_clients)),
        };
        let held = match &old {
            Some(t) => {
                t.held.trim(c.max_candidates);
                t.held.clone()
            }
            None => Arc::new(Held::default()),
        };
        self.state.store(Some(Arc::new(Tracker {
            config: c.clone(),
            trusted,
            clients,
            held,
        })));
    }

    /// Counts a refusal of `class` at the connection level, where the client is the
    /// connection's `peer` (no header has been read that could name another).
    pub fn refused(&self, peer: IpAddr, class: Class) {
        self.refused_at(peer, peer, class, crate::clock::monotonic_ms());
    }

    /// Counts a refusal of `class` of a request that came from `peer`, whose client as the
    /// policies see it is `client` (a trusted proxy's `X-Forwarded-For` entry, or `peer`),
    /// with the [`Fault`] its answer carries. It is held against the client only when
    /// `client` is `peer` (see the module's note) and [`Fault::counts`] it.
    pub fn request_refused(
        &self,
        peer: IpAddr,
        client: IpAddr,
        class: Class,
        fault: Option<Fault>,
    ) {
        if !Fault::counts(fault, class) {
            // One atomic load while off, as for any other refusal.
            if self.state.load().is_some() {
                self.excused.fetch_add(1, Relaxed);
            }
            return;
        }
        self.refused_at(peer, client, class, crate::clock::monotonic_ms());
    }

    fn refused_at(&self, peer: IpAddr, client: IpAddr, class: Class, now_ms: u64) {
        let state = self.state.load();
        let Some(t) = state.as_deref() else {
            return;
        };
        self.refusals[class as usize].fetch_add(1, Relaxed);
        // Compared canonical: an IPv4 client may be seen as IPv4-mapped IPv6 on one side.
        let client = client.to_canonical();
        if client != peer.to_canonical() {
            return;
        }
        let threshold = t.config.thresholds.of(class);
        if threshold == 0 || t.trusted.iter().any(|n| n.contains(&client)) {
            return;
        }
        let prefix = client_prefix(client);
        let counted = t.clients.count(
            prefix,
            class,
            threshold,
            now_ms,
            t.config.window_secs * 1000,
            REOFFER_MS,
        );
        if counted.evicted {
            self.evictions.fetch_add(1, Relaxed);
        }
        if !counted.offer {
            return;
        }
        let ttl_ms = t.config.ttl_secs * 1000;
        let tracked = || t.clients.len();
        let bounds = Bounds {
            max: t.config.max_candidates,
            window_ms: t.config.window_secs * 1000,
            share: t.config.max_new_candidate_share,
            floor: t.config.min_new_candidates,
            tracked: &tracked,
        };
        let offer = t
            .held
            .offer(prefix, class, counted.count, now_ms, ttl_ms, &bounds);
        let replaced = match offer {
            Offer::New => None,
            Offer::Replaced(victim) => {
                self.replaced.fetch_add(1, Relaxed);
                Some(victim.to_string())
            }
            Offer::Renewed => return,
            Offer::Full => {
                self.full.fetch_add(1, Relaxed);
                return;
            }
            Offer::Braked(b) => {
                self.braked.fetch_add(1, Relaxed);
                if b.engaged {
                    warn!(
                        new_candidates = b.recent,
                        limit = b.limit,
                        window_secs = t.config.window_secs,
                        "shield: refusals look server-side, not abuse: no new block candidates for a window"
                    );
                }
                return;
            }
        };
        warn!(
            prefix = %prefix,
            class = class.name(),
            count = counted.count,
            mode = mode_name(t.config.mode),
            window_secs = t.config.window_secs,
            replaced = replaced.as_deref(),
            "shield: client is now a block candidate"
        );
    }

    /// The answer on `/shield/candidates`: the mode and the candidates now.
    pub fn candidates(&self) -> Candidates {
        self.candidates_at(crate::clock::monotonic_ms())
    }

    fn candidates_at(&self, now_ms: u64) -> Candidates {
        match self.state.load().as_deref() {
            None => Candidates {
                mode: Mode::Off,
                candidates: Vec::new(),
            },
            Some(t) => Candidates {
                mode: t.config.mode,
                candidates: t.held.list(now_ms),
            },
        }
    }

    /// The shield's families, in Prometheus text.
    pub fn render(&self, out: &mut String) {
        let now = crate::clock::monotonic_ms();
        let state = self.state.load();
        let (candidates, tracked, braked) = state.as_deref().map_or((0, 0, false), |t| {
            (t.held.len(now), t.clients.len(), t.held.braked(now))
        });
        out.push_str("# HELP sluice_gateway_shield_refusals_total The gateway's own refusals held to be the client's doing, by class (counted while the shield is on; also those of clients named by a proxy, which are never held against them).\n# TYPE sluice_gateway_shield_refusals_total counter\n");
        for class in Class::ALL {
            let _ = writeln!(
                out,
                "sluice_gateway_shield_refusals_total{{class=\"{}\"}} {}",
                class.name(),
                self.refusals[class as usize].load(Relaxed)
            );
        }
        let families = [
            (
                "sluice_gateway_shield_candidates",
                "gauge",
                "Clients offered as block candidates.",
                candidates as u64,
            ),
            (
                "sluice_gateway_shield_tracked_clients",
                "gauge",
                "Client prefixes whose refusals are counted.",
                tracked as u64,
            ),
            (
                "sluice_gateway_shield_evictions_total",
                "counter",
                "Counted clients dropped to make room for another (max_clients).",
                self.evictions.load(Relaxed),
            ),
            (
                "sluice_gateway_shield_excused_total",
                "counter",
                "Gateway refusals not held against the client: a 429 of a limit not keyed on the client's address alone or of a concurrency limit, a 401 for keys the gateway did not have.",
                self.excused.load(Relaxed),
            ),
            (
                "sluice_gateway_shield_candidates_full_total",
                "counter",
                "Threshold crossings not offered because max_candidates with as many refusals or more were held.",
                self.full.load(Relaxed),
            ),
            (
                "sluice_gateway_shield_candidates_replaced_total",
                "counter",
                "Candidates dropped for a newcomer with more refusals (max_candidates were held).",
                self.replaced.load(Relaxed),
            ),
            (
                "sluice_gateway_shield_brake",
                "gauge",
                "1 while no new candidate is taken: a window brought more than max_new_candidate_share of the clients counted.",
                u64::from(braked),
            ),
            (
                "sluice_gateway_shield_braked_total",
                "counter",
                "Threshold crossings not offered because the brake was on.",
                self.braked.load(Relaxed),
            ),
        ];
        for (name, kind, help, v) in families {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        }
    }
}

#[cfg(test)]
mod tests;
