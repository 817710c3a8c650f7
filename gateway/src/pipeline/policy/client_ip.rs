//! The client address policies key on. Behind the L4 tier it is the packet's source (DSR
//! keeps it real); behind a trusted proxy it is the `X-Forwarded-For` entry at the configured
//! depth, counted from the right, because only the entries our own proxies appended can be
//! believed.

use std::net::IpAddr;

use hyper::header::HeaderMap;

use sluice_util::FieldError;

use crate::config::ClientIp;

/// A compiled `[client_ip]` section.
#[derive(Debug, Clone, Default)]
pub struct ClientIpRule {
    trusted: Vec<(IpAddr, u8)>,
    depth: usize,
    v6_prefix: u8,
}

fn contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl TryFrom<&ClientIp> for ClientIpRule {
    type Error = FieldError;

    /// Compiles a `[client_ip]` section; a proxy that is not an address or CIDR is refused
    /// as `trusted_proxies`.
    fn try_from(c: &ClientIp) -> Result<Self, FieldError> {
        let trusted = c
            .trusted_proxies
            .iter()
            .map(|p| {
                parse_cidr(p).ok_or_else(|| {
                    FieldError::new(
                        "trusted_proxies",
                        format!("{p:?} is not an address or CIDR"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ClientIpRule {
            trusted,
            depth: c.xff_depth,
            v6_prefix: c.ipv6_limit_prefix,
        })
    }
}

/// Parses `a.b.c.d/n` or `x::/n` (a bare address is a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse().ok()?, l.parse().ok()?),
        None => {
            let a: std::net::IpAddr = s.parse().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

impl ClientIpRule {
    /// The address a `client_ip` limit counts under: IPv6 cut to the configured prefix.
    pub fn limit_key(&self, client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V6(a) if self.v6_prefix < 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - self.v6_prefix as u32)
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
            other => other,
        }
    }

    /// Whether [`Self::limit_key`] of `client` is no wider than the prefix the shield
    /// counts `client` under (`sluice_util::shield::client_prefix`: IPv4 `/32`, IPv6
    /// `/64`), so that a `client_ip` limit's refusals are this client's own doing.
    pub fn limits_one_client(&self, client: IpAddr) -> bool {
        match client {
            IpAddr::V4(_) => true,
            // An IPv4-mapped address (only ever from a header: a peer is made IPv4) is cut
            // as IPv6, which lumps it in with other IPv4 clients: not its own.
            IpAddr::V6(a) => a.to_ipv4_mapped().is_none() && self.v6_prefix >= 64,
        }
    }

    /// The peers whose `X-Forwarded-For` is believed (none while `xff_depth` is 0). The
    /// shield never holds a refusal against them (blocking a proxy at L4 would cut off all
    /// its clients), nor against the clients they name (whose packets come from the proxy).
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        if self.depth == 0 {
            return Vec::new();
        }
        self.trusted
            .iter()
            .filter_map(|&(addr, len)| ipnet::IpNet::new(addr, len).ok())
            .collect()
    }

    /// The client of a request that arrived from `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        if self.depth == 0 || !self.trusted.iter().any(|n| contains(*n, peer)) {
            return peer;
        }
        // Every X-Forwarded-For line, in order, as one list.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        entries
            .len()
            .checked_sub(self.depth)
            .and_then(|i| entries.get(i))
            .and_then(|s| forwarded_address(s))
            .unwrap_or(peer)
    }
}

/// The address of one `X-Forwarded-For` entry, as a peer's is taken: an IPv4-mapped IPv6
/// address as the IPv4 one (a dual-stack proxy writes them; cut as IPv6 to a prefix, every
/// IPv4 client would share one `client_ip` key), and with the port some proxies add
/// (`198.51.100.7:4711`, `[2001:db8::1]:4711`, `[2001:db8::1]`) left off.
pub fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let address = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .or_else(|| {
            let inside = entry.strip_prefix('[')?.strip_suffix(']')?;
            inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What proxies write: addresses, IPv4-mapped ones, and either with a port.
    #[test]
    fn forwarded_entries_are_read_as_peers_are() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("literal"));
        for (entry, want) in [
            ("198.51.100.7", ip("198.51.100.7")),
            ("::ffff:198.51.100.7", ip("198.51.100.7")),
            ("198.51.100.7:4711", ip("198.51.100.7")),
            ("[::ffff:198.51.100.7]:4711", ip("198.51.100.7")),
            ("2001:db8::1", ip("2001:db8::1")),
            ("[2001:db8::1]", ip("2001:db8::1")),
            ("[2001:db8::1]:4711", ip("2001:db8::1")),
            ("198.51.100.7:99999", None),
            ("[198.51.100.7]", None),
            ("unknown", None),
            ("", None),
        ] {
            assert_eq!(forwarded_address(entry), want, "{entry:?}");
        }
        // Two IPv4 clients a dual-stack proxy names as mapped addresses keep their own keys.
        let rule = ClientIpRule::try_from(&ClientIp {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            xff_depth: 1,
            ipv6_limit_prefix: 64,
        })
        .expect("valid");
        let proxy: IpAddr = "10.1.2.3".parse().expect("literal");
        let keys: Vec<IpAddr> = ["::ffff:198.51.100.7", "::ffff:198.51.100.8"]
            .iter()
            .map(|c| {
                let mut h = HeaderMap::new();
                h.insert("x-forwarded-for", c.parse().expect("value"));
                rule.limit_key(rule.resolve(proxy, &h))
            })
            .collect();
        assert_eq!(
            keys,
            [ip("198.51.100.7").unwrap(), ip("198.51.100.8").unwrap()]
        );
    }

    #[test]
    fn depth_counts_from_the_right_and_only_for_trusted_peers() {
        let rule = ClientIpRule::try_from(&ClientIp {
            trusted_proxies: vec!["10.0.0.0/8".into(), "::1".into()],
            xff_depth: 2,
            ipv6_limit_prefix: 64,
        })
        .expect("valid");
        let refused = ClientIpRule::try_from(&ClientIp {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            xff_depth: 1,
            ipv6_limit_prefix: 64,
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("trusted_proxies: \"10.0.0.0/33\" is not an address or CIDR")
        );
        assert_eq!(
            rule.limit_key("2001:db8:1:2:aaaa::5".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(rule.limit_key(v4), v4);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            rule.resolve(proxy, &h),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(rule.resolve(stranger, &h), stranger);
        // Too few entries, or garbage: the peer.
        let mut short = HeaderMap::new();
        short.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(rule.resolve(proxy, &short), proxy);
        assert_eq!(rule.resolve(proxy, &HeaderMap::new()), proxy);
        assert_eq!(
            rule.resolve("::1".parse().unwrap(), &h),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        let trusted: Vec<String> = rule
            .trusted_proxies()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(trusted, ["10.0.0.0/8", "::1/128"]);
        let untrusting = ClientIpRule::try_from(&ClientIp {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            xff_depth: 0,
            ipv6_limit_prefix: 64,
        })
        .expect("valid");
        assert!(untrusting.trusted_proxies().is_empty());
        // A /64 limit key is one client for the shield; a /48 one is its whole neighbourhood.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(rule.limits_one_client(v6) && rule.limits_one_client(v4));
        let wide = ClientIpRule::try_from(&ClientIp {
            trusted_proxies: Vec::new(),
            xff_depth: 0,
            ipv6_limit_prefix: 48,
        })
        .expect("valid");
        assert!(!wide.limits_one_client(v6));
        assert!(wide.limits_one_client(v4));
        assert!(!rule.limits_one_client("::ffff:192.0.2.1".parse().unwrap()));
    }
}
