//! `[bgp]`: how this LB node announces its VIPs to the routers, through BIRD.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::Deserialize;
use sluice_util::{config::refuse, FieldError};

/// The `[bgp]` section. Without it the node announces nothing (static routes, as before).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// This node's AS number.
    pub local_as: u32,
    /// BGP router id (an IPv4 address, unique per node).
    pub router_id: Ipv4Addr,
    /// The routers this node peers with. An IPv4 peer carries the IPv4 VIPs, an IPv6 peer
    /// the IPv6 ones.
    pub peers: Vec<Peer>,
    /// Bidirectional forwarding detection on every session.
    #[serde(default)]
    pub bfd: Bfd,
    /// BGP communities added to every announcement, as `"ASN:value"`.
    #[serde(default)]
    pub communities: Vec<String>,
    /// MED on every announcement.
    #[serde(default)]
    pub med: Option<u32>,
    /// BIRD's control socket.
    #[serde(default = "default_socket")]
    pub bird_socket: PathBuf,
    /// Where the agent writes BIRD's config (`bird.conf`) and the routes it announces
    /// (`vips4.conf`, `vips6.conf`).
    #[serde(default = "default_dir")]
    pub bird_dir: PathBuf,
    /// Where the agent keeps what must outlive a reboot: the maintenance switch
    /// (`bgp-maintenance`). Not under `bird_dir`, which is on tmpfs by default.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The BIRD binary the agent starts when nothing answers on `bird_socket`.
    #[serde(default = "default_binary")]
    pub bird_binary: PathBuf,
    /// After withdrawing on a graceful stop, how long the agent waits before it exits, so
    /// the routers move the flows before anything changes here.
    #[serde(default = "default_withdraw_delay")]
    pub withdraw_delay_ms: u64,
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The router's address.
    pub address: IpAddr,
    /// Its AS number.
    #[serde(rename = "as")]
    pub asn: u32,
}

/// BFD timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bfd {
    /// Whether sessions use BFD.
    pub enabled: bool,
    /// Transmit and receive interval.
    pub interval_ms: u32,
    /// Missed packets before a session is declared down.
    pub multiplier: u32,
}

impl Default for Bfd {
    fn default() -> Self {
        Bfd {
            enabled: true,
            interval_ms: 100,
            multiplier: 3,
        }
    }
}

impl Bfd {
    /// How long a dead peer takes to be noticed.
    pub fn detection_ms(&self) -> u64 {
        u64::from(self.interval_ms) * u64::from(self.multiplier)
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/sluice/bird.ctl")
}
fn default_dir() -> PathBuf {
    PathBuf::from("/run/sluice/bird")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sluice")
}
fn default_binary() -> PathBuf {
    PathBuf::from("/usr/sbin/bird")
}
fn default_withdraw_delay() -> u64 {
    2000
}

impl Bgp {
    /// Whether a peer of `address`'s family is there to carry it: an IPv4 peer carries
    /// the IPv4 VIPs, an IPv6 peer the IPv6 ones.
    pub fn carries(&self, address: IpAddr) -> bool {
        self.peers
            .iter()
            .any(|p| p.address.is_ipv4() == address.is_ipv4())
    }

    /// Checks what serde cannot; fields relative to the section.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.local_as == 0 {
            return refuse("local_as", "must be between 1 and 4294967295");
        }
        if self.router_id.is_unspecified() {
            return refuse("router_id", "must not be 0.0.0.0");
        }
        if self.peers.is_empty() {
            return refuse("peers", "at least one peer is required");
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.asn == 0 {
                return refuse(format!("peers[{i}].as"), "must be between 1 and 4294967295");
            }
            super::unicast(p.address).or_else(|why| refuse(format!("peers[{i}].address"), why))?;
            if self.peers[..i].iter().any(|q| q.address == p.address) {
                return refuse(format!("peers[{i}].address"), "duplicate peer");
            }
            // Configs BIRD itself refuses: once its file held one, no later change (a
            // withdrawal included) would reach the routers.
            if matches!(p.address, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80) {
                return refuse(
                    format!("peers[{i}].address"),
                    "a link-local address, which BIRD reaches only through a named interface \
                     this section cannot give: peer over a global or unique-local address",
                );
            }
            if p.asn == self.local_as && self.bfd.enabled {
                return refuse(
                    format!("peers[{i}].as"),
                    "equal to local_as (iBGP), which BIRD treats as multihop, and multihop \
                     BFD needs a local address this section does not set: turn BFD off \
                     (bfd.enabled = false) or peer over eBGP",
                );
            }
        }
        if self.bfd.enabled {
            if !(10..=10_000).contains(&self.bfd.interval_ms) {
                return refuse("bfd.interval_ms", "between 10 and 10000");
            }
            if !(1..=255).contains(&self.bfd.multiplier) {
                return refuse("bfd.multiplier", "between 1 and 255");
            }
        }
        for (i, c) in self.communities.iter().enumerate() {
            if parse_community(c).is_none() {
                return refuse(
                    format!("communities[{i}]"),
                    "expected \"ASN:value\" with both parts from 0 to 65535",
                );
            }
        }
        for (field, path) in [
            ("bird_socket", &self.bird_socket),
            ("bird_dir", &self.bird_dir),
            ("state_dir", &self.state_dir),
        ] {
            if !path.is_absolute() {
                return refuse(field, "must be an absolute path");
            }
            // The path goes into BIRD's config inside quotes.
            if path.to_string_lossy().contains(['"', '\n']) {
                return refuse(field, "must not contain quotes or newlines");
            }
        }
        if self.withdraw_delay_ms > 600_000 {
            return refuse("withdraw_delay_ms", "at most 600000");
        }
        Ok(())
    }
}

/// A standard community `"ASN:value"`.
pub fn parse_community(text: &str) -> Option<(u16, u16)> {
    let (a, v) = text.split_once(':')?;
    Some((a.trim().parse().ok()?, v.trim().parse().ok()?))
}
