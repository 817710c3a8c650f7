//! The shield's wire contract: the block candidates a gateway offers on its admin listener
//! ([`PATH`]) and the L4 agent pulls from the gateways in its own config.
//!
//! The gateway sees the real client address (the return path is direct), so it is the one
//! that knows which clients are abusive; the agent turns the candidates of its healthy
//! gateways into XDP block entries, under its own bounds and allow list. The pull direction
//! is deliberate: the agent trusts only the gateways it was configured with, and a gateway
//! needs no credentials for the LB nodes.

use std::net::IpAddr;

use ipnet::IpNet;

/// Where a gateway serves its candidates (a `GET` on the admin listener).
pub const PATH: &str = "/shield/candidates";

/// The most candidates one answer may carry; a reader refuses a longer list.
pub const MAX_CANDIDATES: usize = 4096;

/// The largest answer a reader accepts, in bytes (about 100 bytes per candidate).
pub const MAX_BODY: usize = MAX_CANDIDATES * 160;

/// Why a client is a block candidate: the class of refusal it collected.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Authentication failures (401).
    Auth,
    /// Forbidden (403).
    Forbidden,
    /// Rate-limit refusals (429).
    RateLimited,
    /// Malformed requests (400, 413, 431).
    Malformed,
    /// Connections closed by a header or handshake deadline.
    Deadline,
}

impl Class {
    /// Every class, in a fixed order.
    pub const ALL: [Class; 5] = [
        Class::Auth,
        Class::Forbidden,
        Class::RateLimited,
        Class::Malformed,
        Class::Deadline,
    ];

    /// The name used in config, metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Auth => "auth",
            Class::Forbidden => "forbidden",
            Class::RateLimited => "rate_limited",
            Class::Malformed => "malformed",
            Class::Deadline => "deadline",
        }
    }

    /// The class a response status counts in, if any.
    pub const fn of_status(status: u16) -> Option<Class> {
        match status {
            401 => Some(Class::Auth),
            403 => Some(Class::Forbidden),
            429 => Some(Class::RateLimited),
            400 | 413 | 414 | 431 => Some(Class::Malformed),
            // A request body that stalls holds its connection as a slow head does.
            408 => Some(Class::Deadline),
            _ => None,
        }
    }
}

/// What a shield does with what it detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nothing is counted or offered.
    Off,
    /// Counted, logged and offered, but marked as not to be blocked.
    #[default]
    Observe,
    /// Offered for blocking.
    Enforce,
}

/// One client over a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// The client: an IPv4 `/32`, or the `/64` an IPv6 client's address is in (one host
    /// holds a whole `/64`, so counting per address would let it rotate).
    pub prefix: IpNet,
    /// The class whose threshold it crossed.
    pub class: Class,
    /// Refusals of that class in the window when it crossed.
    pub count: u32,
    /// How much longer the gateway holds it as a candidate, in milliseconds.
    pub ttl_ms: u64,
}

/// A gateway's answer on [`PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Candidates {
    /// The gateway's shield mode: an agent blocks only an `enforce` gateway's candidates.
    pub mode: Mode,
    /// Current candidates, at most [`MAX_CANDIDATES`].
    pub candidates: Vec<Candidate>,
}

/// Why an answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum CandidatesError {
    /// Not the JSON of [`Candidates`].
    #[error("not a candidates document: {0}")]
    Json(#[from] serde_json::Error),
    /// More than [`MAX_CANDIDATES`].
    #[error("{0} candidates, more than the {MAX_CANDIDATES} allowed")]
    TooMany(usize),
}

impl Candidates {
    /// Parses and bounds an answer; every prefix comes back with its host bits cleared.
    pub fn parse(body: &[u8]) -> Result<Self, CandidatesError> {
        let mut c: Candidates = serde_json::from_slice(body)?;
        if c.candidates.len() > MAX_CANDIDATES {
            return Err(CandidatesError::TooMany(c.candidates.len()));
        }
        for cand in &mut c.candidates {
            cand.prefix = cand.prefix.trunc();
        }
        Ok(c)
    }
}

/// The prefix a client is counted under: `/32` for IPv4 (an IPv4-mapped IPv6 address
/// counts as its IPv4 address), `/64` for IPv6.
pub fn client_prefix(addr: IpAddr) -> IpNet {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    let len = if addr.is_ipv4() { 32 } else { 64 };
    // Both lengths are within range for their family.
    IpNet::new(addr, len).map_or_else(|_| IpNet::from(addr), |n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_statuses() {
        assert_eq!(Class::of_status(401), Some(Class::Auth));
        assert_eq!(Class::of_status(403), Some(Class::Forbidden));
        assert_eq!(Class::of_status(429), Some(Class::RateLimited));
        for s in [400, 413, 431] {
            assert_eq!(Class::of_status(s), Some(Class::Malformed));
        }
        for s in [200, 404, 500, 502, 503] {
            assert_eq!(Class::of_status(s), None);
        }
    }

    #[test]
    fn client_prefixes() {
        let p = |s: &str| client_prefix(s.parse().expect("literal")).to_string();
        assert_eq!(p("10.1.2.3"), "10.1.2.3/32");
        assert_eq!(p("::ffff:10.1.2.3"), "10.1.2.3/32");
        assert_eq!(p("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    }

    #[test]
    fn answers_round_trip_and_are_bounded() {
        let c = Candidates {
            mode: Mode::Enforce,
            candidates: vec![Candidate {
                prefix: "10.0.0.9/32".parse().expect("literal"),
                class: Class::Auth,
                count: 12,
                ttl_ms: 60_000,
            }],
        };
        let text = serde_json::to_string(&c).expect("serialize");
        assert!(text.contains("\"prefix\":\"10.0.0.9/32\""), "{text}");
        assert!(text.contains("\"class\":\"auth\""), "{text}");
        assert_eq!(Candidates::parse(text.as_bytes()).expect("parse"), c);
        let wide = r#"{"mode":"enforce","candidates":[{"prefix":"10.0.0.9/8","class":"auth","count":1,"ttl_ms":1}]}"#;
        let parsed = Candidates::parse(wide.as_bytes()).expect("parse");
        assert_eq!(parsed.candidates[0].prefix.to_string(), "10.0.0.0/8");
        assert!(Candidates::parse(b"{\"mode\":\"sometimes\",\"candidates\":[]}").is_err());
        assert!(Candidates::parse(b"[]").is_err());
        let many = format!(
            r#"{{"mode":"enforce","candidates":[{}]}}"#,
            vec![
                r#"{"prefix":"10.0.0.1/32","class":"auth","count":1,"ttl_ms":1}"#;
                MAX_CANDIDATES + 1
            ]
            .join(",")
        );
        assert!(matches!(
            Candidates::parse(many.as_bytes()),
            Err(CandidatesError::TooMany(_))
        ));
    }
}
