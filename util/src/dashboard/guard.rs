//! Keeps web pages the operator has open elsewhere out of the admin API.
//!
//! The admin listeners listen on loopback, which a browser on the same machine reaches: any
//! site could post a form to `http://127.0.0.1:9180/backends/…/drain`, and a site whose name
//! it rebinds to 127.0.0.1 could read `/status` as its own origin. So every request is
//! refused when its `Host` names anything but an address, `localhost` or a configured name
//! (a rebound name is none of those), and a request that changes something is refused when
//! a browser says it comes from another origin (`Origin`, `Sec-Fetch-Site`), or looks like
//! a browser's and says nothing about where it comes from.
//!
//! The Host check cannot be limited to requests that look like a browser's: a rebound page
//! is same-origin, so it sends no `Origin`; browsers send `Sec-Fetch-*` only to secure
//! origins; and Firefox lets a script set `User-Agent`. So a scraper that names the
//! listener by DNS name (Prometheus with `lb1.example:9180`) needs that name in
//! `[admin] host_names`; by address it needs nothing.

use std::net::IpAddr;

/// The parts of a request the guard looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a str,
    /// The `Host` header (or HTTP/2 `:authority`), if any.
    pub host: Option<&'a str>,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The `Sec-Fetch-Site` header, if any.
    pub fetch_site: Option<&'a str>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<&'a str>,
}

/// The host part of a `Host` value: without its port, and without brackets around IPv6.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        // `[address]` or `[address]:port`, nothing else.
        return match rest.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                addr
            }
            _ => "",
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn allowed_host(host: &str, names: &[String]) -> bool {
    let name = host_name(host).trim_end_matches('.');
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Why `req` must be refused (with 403), or `None` to serve it. `names`: host names the
/// operator reaches the listener by, besides addresses and `localhost`.
pub fn refusal(req: RequestView<'_>, names: &[String]) -> Option<String> {
    if let Some(host) = req.host {
        if !allowed_host(host, names) {
            return Some(format!(
                "Host {host:?} is not an address, localhost or a configured admin host name"
            ));
        }
    }
    let safe = matches!(req.method, "GET" | "HEAD" | "OPTIONS");
    if safe {
        return None;
    }
    if let Some(site) = req.fetch_site {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("a {site} request may not change anything here"));
        }
    }
    // An old browser that sends neither header on a cross-site form post.
    if req.origin.is_none()
        && req.fetch_site.is_none()
        && req.user_agent.is_some_and(|ua| ua.starts_with("Mozilla/"))
    {
        return Some("a browser's change must say where it comes from (Origin)".into());
    }
    if let Some(origin) = req.origin {
        let same = req.host.is_some_and(|host| {
            ["http://", "https://"].iter().any(|s| {
                origin
                    .strip_prefix(s)
                    .is_some_and(|o| o.eq_ignore_ascii_case(host))
            })
        });
        if !same {
            return Some(format!(
                "a request from origin {origin:?} may not change anything here"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request from a browser (it calls itself Mozilla).
    fn req<'a>(method: &'a str, host: Option<&'a str>, origin: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method,
            host,
            origin,
            fetch_site: None,
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)"),
        }
    }

    #[test]
    fn every_client_is_held_to_the_host_rule() {
        // A rebound page's fetch with its own User-Agent (Firefox allows it) and no
        // Sec-Fetch-* (not sent to plain http origins) is still refused by its Host.
        for ua in [Some("Prometheus/2.42.0"), Some("x"), None] {
            let r = RequestView {
                method: "GET",
                host: Some("rebound.example:9180"),
                user_agent: ua,
                ..Default::default()
            };
            assert!(refusal(r, &[]).is_some(), "{ua:?}");
        }
        // Scrapers by address, or by a configured name, and the CLI's POST, pass.
        let names = vec!["lb1.internal".to_string()];
        for host in ["10.0.0.5:9180", "lb1.internal:9180"] {
            let r = RequestView {
                method: "GET",
                host: Some(host),
                user_agent: Some("Prometheus/2.42.0"),
                ..Default::default()
            };
            assert_eq!(refusal(r, &names), None, "{host}");
        }
        let cli = RequestView {
            method: "POST",
            host: Some("127.0.0.1:9180"),
            ..Default::default()
        };
        assert_eq!(refusal(cli, &[]), None);
        // Brackets hold an address and nothing may follow but a port.
        for host in ["[::1]garbage", "[::1]:", "[::1]:80x"] {
            let r = RequestView {
                method: "GET",
                host: Some(host),
                ..Default::default()
            };
            assert!(refusal(r, &[]).is_some(), "{host}");
        }
    }

    #[test]
    fn addresses_and_localhost_are_hosts_and_rebound_names_are_not() {
        let none: &[String] = &[];
        for host in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "[::1]:9100",
            "[fe80::1]",
            "localhost:9100",
            "LOCALHOST",
            "10.1.2.3:80",
        ] {
            assert_eq!(refusal(req("GET", Some(host), None), none), None, "{host}");
        }
        for host in [
            "evil.example:9100",
            "127.0.0.1.evil.example",
            "",
            "localhost.evil",
        ] {
            assert!(
                refusal(req("GET", Some(host), None), none).is_some(),
                "{host}"
            );
        }
        let names = vec!["lb1.internal".to_string()];
        assert_eq!(
            refusal(req("GET", Some("LB1.internal:9100"), None), &names),
            None
        );
        // No Host at all: HTTP/1.0 from a script, reading.
        assert_eq!(refusal(req("GET", None, None), none), None);
    }

    #[test]
    fn changes_from_other_origins_are_refused() {
        let none: &[String] = &[];
        let host = Some("127.0.0.1:9100");
        assert!(
            refusal(req("POST", host, None), none).is_some(),
            "a browser's post that says nothing of its origin"
        );
        assert_eq!(
            refusal(req("POST", host, Some("http://127.0.0.1:9100")), none),
            None,
            "the dashboard itself"
        );
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9101"] {
            assert!(
                refusal(req("POST", host, Some(origin)), none).is_some(),
                "{origin}"
            );
        }
        // Reading is allowed from anywhere the Host allows: the policy of the page decides.
        assert_eq!(
            refusal(req("GET", host, Some("http://evil.example")), none),
            None
        );
        let cross = RequestView {
            fetch_site: Some("cross-site"),
            ..req("POST", host, None)
        };
        assert!(refusal(cross, none).is_some());
        let same = RequestView {
            fetch_site: Some("same-origin"),
            ..req("POST", host, None)
        };
        assert_eq!(refusal(same, none), None);
    }
}
