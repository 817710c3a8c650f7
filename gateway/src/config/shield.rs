//! `[shield]`: abuse detection. The gateway counts its own refusals per client and offers
//! the clients over a threshold to the L4 tier as block candidates (the wire contract is
//! `sluice_util::shield`; the counting is [`crate::shield`]). A client is only ever a
//! connection's peer address, never one named in `X-Forwarded-For`: the L4 tier blocks by
//! the packets' source.

use serde::Deserialize;
use sluice_util::{
    config::refuse,
    shield::{Class, Mode, MAX_CANDIDATES},
    FieldError,
};

/// The highest threshold accepted: far above any abuse worth a block, and a count that
/// cannot overflow a window.
const MAX_THRESHOLD: u32 = 1_000_000;

/// Abuse detection settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shield {
    /// `off` (nothing counted), `observe` (counted, logged and offered, marked not to be
    /// blocked) or `enforce` (offered for blocking).
    #[serde(default)]
    pub mode: Mode,
    /// The sliding window refusals are counted over, in seconds.
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// How long a client stays a candidate after it last crossed a threshold, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Most client prefixes counted at once: the memory bound.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Most candidates held at once. When they are held, a newcomer with more refusals
    /// takes the place of the candidate with the fewest.
    #[serde(default = "default_max_candidates")]
    pub max_candidates: usize,
    /// The brake: the share of the clients counted (those refused at all lately) that the
    /// new candidates of one window may reach. Past it, the refusals look like the
    /// gateway's own doing rather than abuse, and no new candidate is taken for a window
    /// (those held stay). 1 all but turns the brake off.
    #[serde(default = "default_max_new_candidate_share")]
    pub max_new_candidate_share: f64,
    /// New candidates one window may always bring, whatever the share: a small deployment,
    /// with few clients counted, still has its few abusers offered.
    #[serde(default = "default_min_new_candidates")]
    pub min_new_candidates: u32,
    /// Refusals of each class within the window that make a client a candidate.
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// Per-class thresholds: refusals within the window; 0 = the class never makes a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// 401s, but for those the gateway had no key for (see `crate::shield::Fault`).
    #[serde(default = "default_auth")]
    pub auth: u32,
    /// 403s.
    #[serde(default = "default_forbidden")]
    pub forbidden: u32,
    /// 429s of a rate limit keyed on the client's address alone; never a concurrency
    /// limit's, nor one of a quota shared with others (see `crate::shield::Fault`).
    #[serde(default = "default_rate_limited")]
    pub rate_limited: u32,
    /// 400s, 413s and 431s.
    #[serde(default = "default_malformed")]
    pub malformed: u32,
    /// Connections closed by a head or TLS-handshake deadline.
    #[serde(default = "default_deadline")]
    pub deadline: u32,
}

fn default_window() -> u64 {
    60
}
fn default_ttl() -> u64 {
    300
}
fn default_max_clients() -> usize {
    65_536
}
fn default_max_candidates() -> usize {
    1024
}
/// Half: most clients the gateway refuses now and then (a mistyped password, an expired
/// token, a burst into its own limit) never cross a threshold, so in normal operation the
/// new candidates are a small share of the clients counted, and a few abusers among many
/// clients stay far below it. A fault of the gateway's refuses nearly everyone it counts,
/// and the share climbs towards all of them: half is well clear of both.
fn default_max_new_candidate_share() -> f64 {
    0.5
}
/// Ten: a handful of abusers of a small deployment, where they may be most of the clients
/// counted, are all offered; and it bounds what a fault can offer in a window while few
/// clients are counted.
fn default_min_new_candidates() -> u32 {
    10
}
fn default_auth() -> u32 {
    20
}
fn default_forbidden() -> u32 {
    20
}
fn default_rate_limited() -> u32 {
    100
}
fn default_malformed() -> u32 {
    10
}
fn default_deadline() -> u32 {
    10
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            auth: default_auth(),
            forbidden: default_forbidden(),
            rate_limited: default_rate_limited(),
            malformed: default_malformed(),
            deadline: default_deadline(),
        }
    }
}

impl Default for Shield {
    fn default() -> Self {
        Shield {
            mode: Mode::default(),
            window_secs: default_window(),
            ttl_secs: default_ttl(),
            max_clients: default_max_clients(),
            max_candidates: default_max_candidates(),
            max_new_candidate_share: default_max_new_candidate_share(),
            min_new_candidates: default_min_new_candidates(),
            thresholds: Thresholds::default(),
        }
    }
}

impl Thresholds {
    /// The threshold of `class`.
    pub fn of(&self, class: Class) -> u32 {
        match class {
            Class::Auth => self.auth,
            Class::Forbidden => self.forbidden,
            Class::RateLimited => self.rate_limited,
            Class::Malformed => self.malformed,
            Class::Deadline => self.deadline,
        }
    }
}

impl Shield {
    /// Checks the section; fields are named relative to it.
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if !(1..=3600).contains(&self.window_secs) {
            return refuse("window_secs", "between 1 and 3600");
        }
        if !(1..=86_400).contains(&self.ttl_secs) {
            return refuse("ttl_secs", "between 1 and 86400 (a day)");
        }
        if !(1..=10_000_000).contains(&self.max_clients) {
            return refuse("max_clients", "between 1 and 10000000");
        }
        if !(1..=MAX_CANDIDATES).contains(&self.max_candidates) {
            return refuse(
                "max_candidates",
                format!("between 1 and {MAX_CANDIDATES} (what an L4 agent accepts in one answer)"),
            );
        }
        if !(0.0..=1.0).contains(&self.max_new_candidate_share) {
            return refuse("max_new_candidate_share", "between 0 and 1");
        }
        if !(1..=MAX_CANDIDATES as u32).contains(&self.min_new_candidates) {
            return refuse(
                "min_new_candidates",
                format!("between 1 and {MAX_CANDIDATES}"),
            );
        }
        for class in Class::ALL {
            if self.thresholds.of(class) > MAX_THRESHOLD {
                return refuse(
                    format!("thresholds.{}", class.name()),
                    format!("at most {MAX_THRESHOLD} (0: the class never makes a candidate)"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(toml: &str) -> String {
        let s: Shield = toml::from_str(toml).expect("parses");
        s.validate()
            .map(|()| "ok".to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn defaults_and_refusals_by_field() {
        let d: Shield = toml::from_str("").expect("empty section");
        assert_eq!(d, Shield::default());
        assert_eq!(d.mode, Mode::Observe);
        assert_eq!((d.window_secs, d.ttl_secs), (60, 300));
        assert_eq!((d.max_clients, d.max_candidates), (65_536, 1024));
        assert_eq!((d.max_new_candidate_share, d.min_new_candidates), (0.5, 10));
        assert_eq!(
            refusal("max_new_candidate_share = 1.0\nmin_new_candidates = 1"),
            "ok"
        );
        assert_eq!(refusal("max_new_candidate_share = 0.0"), "ok");
        let t = d.thresholds;
        assert_eq!(
            Class::ALL.map(|c| t.of(c)),
            [20, 20, 100, 10, 10],
            "auth, forbidden, rate_limited, malformed, deadline"
        );
        assert_eq!(
            refusal("mode = \"enforce\"\nthresholds = { auth = 0 }"),
            "ok"
        );
        for (toml, want) in [
            ("window_secs = 0", "window_secs: between 1 and 3600"),
            ("window_secs = 3601", "window_secs: between 1 and 3600"),
            ("ttl_secs = 0", "ttl_secs: between 1 and 86400 (a day)"),
            ("max_clients = 0", "max_clients: between 1 and 10000000"),
            (
                "max_candidates = 4097",
                "max_candidates: between 1 and 4096",
            ),
            (
                "max_new_candidate_share = 1.5",
                "max_new_candidate_share: between 0 and 1",
            ),
            (
                "max_new_candidate_share = nan",
                "max_new_candidate_share: between 0 and 1",
            ),
            (
                "min_new_candidates = 0",
                "min_new_candidates: between 1 and 4096",
            ),
            (
                "thresholds = { auth = 1000001 }",
                "thresholds.auth: at most 1000000",
            ),
            (
                "thresholds = { deadline = 2000000 }",
                "thresholds.deadline: at most 1000000",
            ),
        ] {
            let said = refusal(toml);
            assert!(said.starts_with(want), "{toml}: {said}");
        }
        assert!(toml::from_str::<Shield>("mode = \"sometimes\"").is_err());
        assert!(toml::from_str::<Shield>("thresholds = { teapot = 1 }").is_err());
    }
}
