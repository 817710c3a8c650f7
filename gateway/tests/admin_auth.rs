//! Who may change state through the admin API (`POST /drain`): with `admin.token_file`,
//! whoever presents the token; without it, loopback peers only. Reads stay open.

mod support;

use std::{net::SocketAddr, path::Path, time::Duration};

use support::{fixed, request, runtime, source, upstream, Gateway, GatewayToml, Reply, Scratch};

const FIRST: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECOND: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const THIRD: &str = "cccccccccccccccccccccccccccccccccccccccc";

/// The usual test config, with `extra` added to its `[admin]` table.
fn with_admin(upstream: SocketAddr, extra: &str) -> String {
    let base = GatewayToml::new()
        .upstream("a", &[upstream])
        .route_all("r", "a")
        .build();
    let anchor = "host_names = [\"test.local\"]\n";
    assert!(base.contains(anchor), "the test config's [admin] changed");
    base.replacen(anchor, &format!("{anchor}{extra}"), 1)
}

fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let extra: Vec<&str> = auth.iter().map(String::as_str).collect();
    request(admin, "POST", path, &extra, "")
}

fn refused(r: &Reply, status: u16, says: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{r:?}"
    );
    assert!(r.body.contains(says), "{r:?}");
}

/// Waits until a change presenting `token` gets past the check (a POST to a path with no
/// route: 404 once allowed, 401 before), so a reload has taken the file.
fn wait_until_accepted(gw: &Gateway, token: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while post(gw.admin, "/nothing-here", Some(token)).status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token was never taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a token file only its owner may read, as one must be.
fn write(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn with_a_token_file_changes_need_the_token_and_a_reload_rotates_it() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let scratch = Scratch::new("admin-token");
    let file = Path::new(&scratch.path("admin.token")).to_path_buf();
    write(&file, &format!("{FIRST}\n"));
    let gw = Gateway::start(&with_admin(up.addr, &format!("token_file = {file:?}\n")));

    // Reads stay open; a change without the token, or with another, is refused and changes
    // nothing.
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], "").status, 200);
    for token in [None, Some(SECOND), Some("aaaa")] {
        let r = post(gw.admin, "/drain", token);
        refused(&r, 401, "admin.token_file");
        assert_eq!(
            r.headers["www-authenticate"],
            "Bearer realm=\"sluice-admin\""
        );
    }
    let twice = [
        format!("Authorization: Bearer {FIRST}"),
        format!("Authorization: Bearer {FIRST}"),
    ];
    refused(
        &request(gw.admin, "POST", "/drain", &[&twice[0], &twice[1]], ""),
        401,
        "admin.token_file",
    );
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], "").status, 200);

    // A reload reads the file again: the second token replaces the first.
    write(&file, &format!("{SECOND}\n"));
    gw.signal(libc::SIGHUP);
    wait_until_accepted(&gw, SECOND);
    refused(&post(gw.admin, "/drain", Some(FIRST)), 401, "Bearer");

    // A token file that is not fit refuses the reload, naming the field, and the token in
    // force stays.
    write(&file, "short\n");
    gw.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let logged = |text: &str| {
        gw.log
            .lock()
            .map(|l| l.iter().any(|line| line.contains(text)))
            .unwrap_or(false)
    };
    while !logged("admin.token_file") {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was not logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(gw.admin, "/nothing-here", Some(SECOND)).status, 404);

    // The file changing is a reload of its own, as the config file's is: no signal.
    write(&file, &format!("{THIRD}\n"));
    wait_until_accepted(&gw, THIRD);
    refused(&post(gw.admin, "/drain", Some(SECOND)), 401, "Bearer");

    // One every user may read is refused, naming the field and why; the token stays.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    gw.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logged("every user may read or write it (mode 0644)") {
        assert!(
            std::time::Instant::now() < deadline,
            "the open token file was not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(gw.admin, "/nothing-here", Some(THIRD)).status, 404);

    let r = post(gw.admin, "/drain", Some(THIRD));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], "").status, 503);
}

/// Without a token file, a change is taken from loopback and refused from another host;
/// reads are served to both. In a network namespace of the test's own, where an address
/// other than loopback can be made without touching the host's.
#[test]
fn without_a_token_file_changes_are_taken_from_loopback_only() {
    if !sluice_e2e::privileged() {
        return;
    }
    sluice_e2e::in_new_ns(|| {
        for cmd in [
            "ip link set lo up",
            "ip link add v0 type veth peer name v1",
            "ip addr add 10.9.0.1/24 dev v0",
            "ip link set v1 up",
            "ip link set v0 up",
        ] {
            sluice_e2e::sh(cmd);
        }
        let rt = runtime();
        let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
        let config = with_admin(up.addr, "").replacen(
            "listen = \"127.0.0.1:0\"",
            "listen = \"0.0.0.0:0\"",
            1,
        );
        let gw = Gateway::start(&config);
        let remote = SocketAddr::from(([10, 9, 0, 1], gw.admin.port()));
        let from = std::net::Ipv4Addr::new(10, 9, 0, 1);
        let get = source::request_from(from, remote, "/readyz", &[]);
        assert_eq!(get.status, 200, "{get:?}");
        let text = "POST /drain HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n";
        refused(
            &source::raw_from(from, remote, text.as_bytes()),
            403,
            "only from this host",
        );
        assert_eq!(
            source::request_from(from, remote, "/readyz", &[]).status,
            200
        );
        let local = SocketAddr::from(([127, 0, 0, 1], gw.admin.port()));
        assert_eq!(post(local, "/drain", None).status, 200);
        assert_eq!(
            source::request_from(from, remote, "/readyz", &[]).status,
            503
        );
    });
}
