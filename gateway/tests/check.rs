//! `sluice-gateway check`: the config built as `run` builds it, refusals named by file,
//! field and reason, without binding anything.

use std::process::Command;

/// Runs `check` on `text`; the exit status's success and what was printed.
fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run sluice-gateway");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        said.replace(&*path.to_string_lossy(), "gw.toml"),
    )
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

const BASE: &str = r#"
[[listener]]
name = "http"
address = "192.0.2.1:80"

[[upstream]]
name = "api"
targets = [{ address = "127.0.0.1:9" }]

[[route]]
name = "api"
upstream = "api"
"#;

#[test]
fn a_good_file_is_ok_without_binding_its_listener() {
    // 192.0.2.1 is on no interface here: `run` could not bind it, `check` does not try.
    let (ok, said) = check(BASE);
    assert!(ok, "{said}");
    assert_eq!(
        said.trim(),
        "gw.toml: ok (1 listeners, 1 routes, 1 upstreams)"
    );
}

#[test]
fn refusals_name_the_file_the_field_and_the_reason() {
    for (extra, want) in [
        (
            "path = { regex = \"(\" }\n",
            "gw.toml: route[0].path.regex: invalid regex",
        ),
        (
            "response_transform = { set_headers = { \"x\" = \"a\\u0000b\" } }\n",
            "gw.toml: route[0].response_transform.headers: \"a\\0b\" is not a header value",
        ),
        (
            "timeouts = { connect_ms = 0 }\n",
            "gw.toml: route[0].timeouts: timeouts must be greater than 0",
        ),
        (
            "bogus = 1\n",
            "gw.toml: route[0].bogus (line 13): unknown field `bogus`",
        ),
    ] {
        let (ok, said) = check(&format!("{BASE}{extra}"));
        assert!(!ok, "{extra}: {said}");
        assert!(
            said.contains(want),
            "{extra}\n  said {said}\n  wanted {want}"
        );
    }
}

#[test]
fn a_worker_count_out_of_range_is_refused_before_anything_starts() {
    for (workers, why) in [
        ("0", "0 is not in 1..=1024"),
        ("1025", "1025 is not in 1..=1024"),
        ("99999999999", "not in 1..=1024"),
        ("two", "invalid digit"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
            .args(["run", "--workers", workers, "--config", "/nonexistent.toml"])
            .output()
            .expect("run sluice-gateway");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{workers}");
        assert!(said.contains(why), "{workers}: {said}");
    }
}

#[test]
fn listener_numbers_past_what_a_process_can_hold_are_refused() {
    for (setting, want) in [
        (
            "max_connections = 2305843009213693952",
            "gw.toml: listener[0].max_connections: must be at least 1 and at most 10000000",
        ),
        (
            "max_connections_per_client = 9223372036854775807",
            "gw.toml: listener[0].max_connections_per_client: must be at least 1 and at most 10000000",
        ),
        (
            "max_header_bytes = 4294967396",
            "gw.toml: listener[0].max_header_bytes: must be at least 1024 and at most 1048576",
        ),
        (
            "max_headers = 100000",
            "gw.toml: listener[0].max_headers: must be at least 1 and at most 10000",
        ),
        (
            "body_read_timeout_ms = 0",
            "gw.toml: listener[0].body_read_timeout_ms: must be greater than 0",
        ),
    ] {
        let text = BASE.replacen(
            "address = \"192.0.2.1:80\"",
            &format!("address = \"192.0.2.1:80\"\n{setting}"),
            1,
        );
        let (ok, said) = check(&text);
        assert!(!ok, "{setting}: {said}");
        assert!(said.contains(want), "{setting}\n  said {said}\n  wanted {want}");
    }
}

#[test]
fn a_field_name_with_an_underscore_a_listener_drops_is_refused_where_it_is_read() {
    let route = BASE.replacen(
        "[[route]]",
        "[[route]]\nheaders = { \"x_tenant\" = \"a\" }",
        1,
    );
    let (ok, said) = check(&route);
    assert!(!ok, "{said}");
    assert!(
        said.contains("gw.toml: route[0].headers: \"x_tenant\" has an underscore"),
        "{said}"
    );
    // A listener that keeps such fields may match on them.
    let kept = route.replacen(
        "address = \"192.0.2.1:80\"",
        "address = \"192.0.2.1:80\"\nunderscores_in_headers = \"keep\"",
        1,
    );
    let (ok, said) = check(&kept);
    assert!(ok, "{said}");
}
