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

use support::{admin_get, fixed, metric, request, runtime, upstream, Gateway, GatewayToml};

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

#[test]
fn a_reload_that_changes_a_listener_is_refused_with_the_field_and_nothing_changes() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let config = GatewayToml::new()
        .upstream("a", &[up.addr])
        .route_all("r", "a")
        .build();
    let gw = Gateway::start(&config);
    // The listener's body limit in force is 1024 (`support::config`).
    let body = "x".repeat(500);
    assert_eq!(request(gw.http, "POST", "/", &[], &body).status, 200);
    let second = format!("{config}\n[[listener]]\nname = \"more\"\naddress = \"127.0.0.1:0\"\n");
    let cases = [
        (
            config.replace("max_body_bytes = 1024", "max_body_bytes = 100"),
            "listener[0].max_body_bytes",
        ),
        (
            config.replace("name = \"main\"", "name = \"renamed\""),
            "listener[0].name",
        ),
        (second, "listener:"),
        (
            config.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1),
            "admin.listen",
        ),
    ];
    for (k, (text, field)) in cases.iter().enumerate() {
        assert_ne!(text, &config, "case {field} changes nothing");
        gw.rewrite(text);
        wait_for(field, Duration::from_secs(5), || {
            metric(&gw, "sluice_gateway_config_reloads_total{result=\"error\"}") >= (k + 1) as f64
        });
        let state = admin_get(&gw, "/dashboard/state").json();
        let said = state["config"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(said.contains(field), "{field}: {state}");
        assert!(said.contains("restart"), "{said}");
    }
    assert_eq!(metric(&gw, "sluice_gateway_config_generation"), 1.0);
    // The limit in force is still the one the listener was set up with.
    assert_eq!(request(gw.http, "POST", "/", &[], &body).status, 200);
    // A change that leaves the listeners alone is taken.
    gw.rewrite(&format!(
        "{config}\n[[route]]\nname = \"more\"\npath = {{ prefix = \"/more\" }}\nupstream = \"a\"\n"
    ));
    wait_for("the accepted reload", Duration::from_secs(5), || {
        metric(&gw, "sluice_gateway_config_generation") == 2.0
    });
}
