//! The shield as the rest of the gateway drives it, on a clock the tests set.

use super::*;

fn settings(mode: Mode) -> config::Shield {
    config::Shield {
        mode,
        window_secs: 10,
        ttl_secs: 5,
        max_clients: 1000,
        max_candidates: 16,
        max_new_candidate_share: 0.5,
        min_new_candidates: 10,
        thresholds: config::Thresholds {
            auth: 3,
            forbidden: 3,
            rate_limited: 3,
            malformed: 3,
            deadline: 0,
        },
    }
}

fn shield(mode: Mode) -> Shield {
    let s = Shield::default();
    s.configure(
        &settings(mode),
        vec!["10.9.0.0/16".parse().expect("literal")],
    );
    s
}

/// `ms` after a start on a whole minute of the coarse clock just ahead of it: fixed windows
/// begin there (so counts are whole), and rendering the metrics, which reads the real clock,
/// expires none of the tests' candidates early.
fn at(ms: u64) -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| (crate::clock::monotonic_ms() / 60_000 + 1) * 60_000) + ms
}

impl Shield {
    /// A refusal of a client that is its connection's peer.
    fn by_peer(&self, client: IpAddr, class: Class, now_ms: u64) {
        self.refused_at(client, client, class, now_ms);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

fn listed(s: &Shield, now: u64) -> Vec<(String, Class, u32, u64)> {
    s.candidates_at(now)
        .candidates
        .into_iter()
        .map(|c| (c.prefix.to_string(), c.class, c.count, c.ttl_ms))
        .collect()
}

fn metric(s: &Shield, series: &str) -> u64 {
    let mut out = String::new();
    s.render(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{out}"))
}

#[test]
fn a_client_over_a_threshold_becomes_a_candidate_for_the_ttl() {
    let s = shield(Mode::Enforce);
    for i in 0..2 {
        s.by_peer(ip("192.0.2.7"), Class::Auth, at(1000 + i));
    }
    assert!(listed(&s, at(1010)).is_empty(), "two of three");
    s.by_peer(ip("192.0.2.7"), Class::Auth, at(1100));
    assert_eq!(
        listed(&s, at(1200)),
        [("192.0.2.7/32".to_string(), Class::Auth, 3, 4900)]
    );
    // IPv6: the /64, however the host varies its address; an IPv4-mapped address is IPv4.
    for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ff::3"] {
        s.by_peer(ip(host), Class::Malformed, at(2000));
    }
    s.by_peer(ip("::ffff:192.0.2.8"), Class::Forbidden, at(2000));
    let c = s.candidates_at(at(2000));
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.candidates.len(), 2);
    assert_eq!(c.candidates[1].prefix.to_string(), "2001:db8:1:2::/64");
    assert_eq!(metric(&s, "sluice_gateway_shield_tracked_clients"), 3);
    assert_eq!(
        metric(
            &s,
            "sluice_gateway_shield_refusals_total{class=\"malformed\"}"
        ),
        3
    );
    // Renewed while it keeps crossing (at most once a second), gone once its time is up.
    s.by_peer(ip("192.0.2.7"), Class::Auth, at(3000));
    assert_eq!(listed(&s, at(3000))[0].3, 5000);
    assert!(listed(&s, at(7999)).iter().any(|c| c.0 == "192.0.2.7/32"));
    assert!(listed(&s, at(8000)).is_empty());
    assert_eq!(metric(&s, "sluice_gateway_shield_candidates"), 0);
}

#[test]
fn off_counts_nothing_and_trusted_proxies_and_zero_thresholds_make_no_candidate() {
    let s = shield(Mode::Off);
    for _ in 0..10 {
        s.by_peer(ip("192.0.2.7"), Class::Auth, at(1000));
    }
    assert_eq!(s.candidates_at(at(1000)), off_answer());
    assert_eq!(
        metric(&s, "sluice_gateway_shield_refusals_total{class=\"auth\"}"),
        0
    );
    let s = shield(Mode::Observe);
    for _ in 0..10 {
        s.by_peer(ip("10.9.3.4"), Class::Auth, at(1000));
        s.by_peer(ip("192.0.2.9"), Class::Deadline, at(1000));
    }
    assert!(listed(&s, at(1000)).is_empty());
    assert_eq!(metric(&s, "sluice_gateway_shield_tracked_clients"), 0);
    // Still counted as refusals.
    assert_eq!(
        metric(
            &s,
            "sluice_gateway_shield_refusals_total{class=\"deadline\"}"
        ),
        10
    );
    assert_eq!(s.candidates_at(at(1000)).mode, Mode::Observe);
}

#[test]
fn only_a_peer_address_is_held_against_a_client_never_one_a_proxy_named() {
    let s = shield(Mode::Enforce);
    // A peer outside trusted_proxies can name no one: the pipeline resolves it to itself.
    // A trusted proxy (10.9.0.0/16) names clients in X-Forwarded-For; they reach the L4 tier
    // from the proxy, so none of them is counted, and neither is the proxy.
    for _ in 0..10 {
        s.refused_at(ip("10.9.0.1"), ip("203.0.113.7"), Class::Auth, at(1000));
        s.refused_at(ip("10.9.0.1"), ip("2001:db8::7"), Class::Auth, at(1000));
        s.refused_at(ip("10.9.0.1"), ip("10.9.0.1"), Class::Auth, at(1000));
        // Nor a peer that somehow resolved to another address.
        s.refused_at(ip("192.0.2.50"), ip("192.0.2.51"), Class::Auth, at(1000));
    }
    assert!(listed(&s, at(1000)).is_empty());
    assert_eq!(metric(&s, "sluice_gateway_shield_tracked_clients"), 0);
    // Still seen as refusals.
    assert_eq!(
        metric(&s, "sluice_gateway_shield_refusals_total{class=\"auth\"}"),
        40
    );
    // The same address in either form is the peer.
    for _ in 0..3 {
        s.refused_at(
            ip("::ffff:192.0.2.9"),
            ip("192.0.2.9"),
            Class::Auth,
            at(1000),
        );
    }
    assert_eq!(
        listed(&s, at(1000)),
        [("192.0.2.9/32".to_string(), Class::Auth, 3, 5000)]
    );
}

#[test]
fn a_refusal_counts_only_when_it_is_the_client_s_doing() {
    // A 429 must say so; any other class counts unless it says it is not.
    for class in Class::ALL {
        assert!(Fault::counts(Some(Fault::Client), class));
        assert!(!Fault::counts(Some(Fault::NotClient), class));
        assert_eq!(Fault::counts(None, class), class != Class::RateLimited);
    }
    let s = shield(Mode::Enforce);
    let c = ip("192.0.2.7");
    for _ in 0..5 {
        s.request_refused(c, c, Class::RateLimited, None);
        s.request_refused(c, c, Class::RateLimited, Some(Fault::NotClient));
        s.request_refused(c, c, Class::Auth, Some(Fault::NotClient));
    }
    assert!(s.candidates().candidates.is_empty());
    assert_eq!(metric(&s, "sluice_gateway_shield_excused_total"), 15);
    assert_eq!(metric(&s, "sluice_gateway_shield_tracked_clients"), 0);
    for _ in 0..3 {
        s.request_refused(c, c, Class::RateLimited, Some(Fault::Client));
    }
    let got = s.candidates().candidates;
    assert_eq!((got.len(), got[0].class), (1, Class::RateLimited));
    // Off: nothing, not even excused.
    let off = shield(Mode::Off);
    off.request_refused(c, c, Class::Auth, Some(Fault::NotClient));
    assert_eq!(metric(&off, "sluice_gateway_shield_excused_total"), 0);
}

#[test]
fn a_flood_of_addresses_is_bounded_and_washes_out_no_candidate() {
    let s = shield(Mode::Enforce);
    for _ in 0..3 {
        s.by_peer(ip("192.0.2.7"), Class::Auth, at(1000));
    }
    // Ten times max_clients distinct addresses, each refused once.
    for n in 0..10_000u32 {
        let flood = IpAddr::from(std::net::Ipv4Addr::from(0xc633_0000 + n));
        s.by_peer(flood, Class::Malformed, at(1001 + u64::from(n / 100)));
        assert!(s.state.load().as_deref().expect("on").clients.len() <= 1000);
    }
    assert_eq!(metric(&s, "sluice_gateway_shield_tracked_clients"), 1000);
    assert!(metric(&s, "sluice_gateway_shield_evictions_total") >= 9000);
    assert_eq!(listed(&s, at(1200))[0].0, "192.0.2.7/32");
    // A full candidate set takes no newcomer, and says so.
    for n in 0..20u8 {
        for _ in 0..3 {
            s.by_peer(ip(&format!("203.0.113.{n}")), Class::Auth, at(1300));
        }
    }
    assert_eq!(listed(&s, at(1300)).len(), 16);
    assert!(listed(&s, at(1300)).iter().any(|c| c.0 == "192.0.2.7/32"));
    assert_eq!(metric(&s, "sluice_gateway_shield_candidates_full_total"), 5);
    assert_eq!(metric(&s, "sluice_gateway_shield_brake"), 0);
}

#[test]
fn throwaway_addresses_filling_the_set_do_not_keep_a_heavier_abuser_out() {
    let s = shield(Mode::Enforce);
    // Every client counted crosses here: with the brake, the set would never fill.
    let mut c = settings(Mode::Enforce);
    c.max_new_candidate_share = 1.0;
    s.configure(&c, Vec::new());
    // Sixteen throwaway /64s fill the set at the threshold.
    for n in 0..16u16 {
        for _ in 0..3 {
            s.by_peer(ip(&format!("2001:db8:{n:x}::1")), Class::Auth, at(1000));
        }
    }
    assert_eq!(listed(&s, at(1000)).len(), 16);
    // An abuser as heavy is turned away; heavier, it takes the place of one of them.
    for _ in 0..3 {
        s.by_peer(ip("192.0.2.7"), Class::Auth, at(2000));
    }
    assert!(!listed(&s, at(2000)).iter().any(|c| c.0 == "192.0.2.7/32"));
    assert_eq!(metric(&s, "sluice_gateway_shield_candidates_full_total"), 1);
    // Offered again at most once a second: the next crossing is a second on, at 4 or more.
    for i in 0..5 {
        s.by_peer(ip("192.0.2.7"), Class::Auth, at(3000 + i));
    }
    let now = listed(&s, at(3010));
    assert_eq!(now.len(), 16);
    assert_eq!(
        now.iter().find(|c| c.0 == "192.0.2.7/32").map(|c| c.2),
        Some(4)
    );
    assert_eq!(
        metric(&s, "sluice_gateway_shield_candidates_replaced_total"),
        1
    );
    assert_eq!(metric(&s, "sluice_gateway_shield_candidates_full_total"), 1);
}

#[test]
fn when_most_clients_counted_cross_at_once_the_brake_takes_no_new_candidate() {
    let s = shield(Mode::Enforce);
    // Thirty clients refused once (everyday mistakes) are counted.
    for n in 0..30u8 {
        s.by_peer(ip(&format!("198.51.100.{n}")), Class::Auth, at(1000));
    }
    let mut c = settings(Mode::Enforce);
    c.max_candidates = 1000;
    s.configure(&c, Vec::new());
    // Then every client is refused for the gateway's own reasons (a 401 for a clock gone
    // wrong, say): half the 42 clients counted (21) become candidates, no more.
    for n in 0..12u8 {
        for _ in 0..3 {
            s.by_peer(ip(&format!("203.0.113.{n}")), Class::Auth, at(2000));
        }
    }
    for n in 0..30u8 {
        for _ in 0..2 {
            s.by_peer(ip(&format!("198.51.100.{n}")), Class::Auth, at(2000));
        }
    }
    assert_eq!(listed(&s, at(2000)).len(), 21);
    assert_eq!(metric(&s, "sluice_gateway_shield_brake"), 1);
    assert_eq!(metric(&s, "sluice_gateway_shield_braked_total"), 21);
    // For the window: those held stay and are renewed; no newcomer, however heavy.
    for _ in 0..20 {
        s.by_peer(ip("192.0.2.99"), Class::Auth, at(5000));
    }
    s.by_peer(ip("203.0.113.0"), Class::Auth, at(5000));
    let held = listed(&s, at(5000));
    assert_eq!(held.len(), 21);
    assert!(held.iter().any(|c| c.0 == "203.0.113.0/32" && c.2 == 4));
    // A window on it comes off: one client crossing among many counted is offered.
    for _ in 0..3 {
        s.by_peer(ip("192.0.2.100"), Class::Auth, at(32_000));
    }
    assert!(listed(&s, at(32_000))
        .iter()
        .any(|c| c.0 == "192.0.2.100/32"));
    // (The gauge reads the real clock, still short of the tests' one.)
    let state = s.state.load();
    assert!(!state.as_deref().expect("on").held.braked(at(32_000)));
}

#[test]
fn a_reload_keeps_counts_and_candidates_unless_the_window_changes_or_it_is_off() {
    let s = shield(Mode::Observe);
    let now = crate::clock::monotonic_ms();
    s.by_peer(ip("192.0.2.1"), Class::Auth, now);
    s.by_peer(ip("192.0.2.1"), Class::Auth, now);
    for _ in 0..3 {
        s.by_peer(ip("192.0.2.2"), Class::Auth, now);
    }
    // Enforce, and a lower threshold: the counts carry over.
    let mut c = settings(Mode::Enforce);
    c.thresholds.auth = 2;
    s.configure(&c, Vec::new());
    s.by_peer(ip("192.0.2.1"), Class::Auth, now);
    let got = s.candidates();
    assert_eq!(got.mode, Mode::Enforce);
    let prefixes: Vec<String> = got
        .candidates
        .iter()
        .map(|c| c.prefix.to_string())
        .collect();
    assert_eq!(prefixes, ["192.0.2.1/32", "192.0.2.2/32"]);
    assert_eq!(got.candidates[0].count, 3);
    // Another window: counts start again, candidates stay (trimmed to the new bound).
    c.window_secs = 20;
    c.max_candidates = 1;
    s.configure(&c, Vec::new());
    assert_eq!(s.candidates().candidates.len(), 1);
    assert_eq!(metric(&s, "sluice_gateway_shield_tracked_clients"), 0);
    // Off drops everything; on again starts empty.
    s.configure(&settings(Mode::Off), Vec::new());
    assert_eq!(s.candidates(), off_answer());
    s.configure(&c, Vec::new());
    assert!(s.candidates().candidates.is_empty());
}

/// The answer of a shield that is off.
fn off_answer() -> Candidates {
    Candidates {
        mode: Mode::Off,
        candidates: Vec::new(),
    }
}
