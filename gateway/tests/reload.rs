//! Reloads: a refused file changes nothing and starts nothing; an accepted one starts the
//! background work of what it added.

mod support;

use std::{
    net::TcpListener,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use support::{fixed, metric, runtime, upstream, Gateway, GatewayToml};

/// A TCP listener that counts the connections made to it (health probes, here).
fn probe_counter() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, seen)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_refused_reload_probes_nothing_and_an_accepted_one_does() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let (probed, probes) = probe_counter();
    let base = || {
        GatewayToml::new()
            .upstream("a", &[up.addr])
            .route_all("r", "a")
    };
    let gw = Gateway::start(&base().build());
    // The new pool has a health check every 100 ms; the new route's regex does not compile,
    // so the whole file is refused and the pool is never started.
    let checked = |regex: &str| {
        base()
            .upstream("checked", &[probed])
            .with("health = { interval_ms = 100, timeout_ms = 50 }")
            .raw(&format!(
                "[[route]]\nname = \"c\"\npath = {{ regex = \"{regex}\" }}\nupstream = \"checked\"\n"
            ))
            .build()
    };
    gw.rewrite(&checked("(["));
    wait_for("the refusal", Duration::from_secs(5), || {
        metric(&gw, "sluice_gateway_config_reloads_total{result=\"error\"}") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(probes.load(Ordering::SeqCst), 0, "a refused config probed");
    assert_eq!(metric(&gw, "sluice_gateway_config_generation"), 1.0);
    // The same file with a good regex is accepted, and its pool is probed.
    gw.rewrite(&checked("^/c"));
    wait_for("the probes", Duration::from_secs(5), || {
        probes.load(Ordering::SeqCst) >= 2
    });
    assert_eq!(metric(&gw, "sluice_gateway_config_generation"), 2.0);
}
