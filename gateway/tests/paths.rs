//! Request paths are normalized before routing, and what the route matched is what the
//! upstream gets (issue: `/pub/../private` routed as `/pub`). Checked against nginx, an
//! upstream that normalizes paths itself, with every encoding of a dot segment and a slash
//! an attacker might try, sent as raw bytes so that no client library cleans them first.

mod support;

use std::time::Duration;

use support::{
    fixed, raw, request, runtime, sha256_hex, upstream, Gateway, GatewayToml, Nginx, Scratch,
};

const SECRET: &str = "TOP-SECRET-CONTENT";

/// nginx serving `/pub/index.txt` and `/private/secret.txt`; a gateway with an open `/pub`
/// route and a `/private` route behind an API key, both to nginx.
fn guarded(listener_extra: &str) -> (Gateway, Nginx, Scratch) {
    let root = Scratch::new("paths-root");
    std::fs::create_dir_all(root.0.join("pub/a")).expect("dirs");
    std::fs::create_dir_all(root.0.join("private")).expect("dirs");
    std::fs::write(root.0.join("pub/index.txt"), "public\n").expect("file");
    std::fs::write(root.0.join("private/secret.txt"), SECRET).expect("file");
    let nginx = Nginx::serve(&root.0);
    let gw = Gateway::start(
        &GatewayToml::new()
            .with(listener_extra)
            .upstream("files", &[nginx.addr])
            .raw(&format!(
                "[[consumer]]\nid = \"ops\"\napi_keys = [\"sha256:{}\"]",
                sha256_hex(b"k-ops")
            ))
            .route("public", "/pub", "files")
            .route("private", "/private", "files")
            .with("auth = { methods = [\"api_key\"] }")
            .build(),
    );
    (gw, nginx, root)
}

/// Every path an attacker might use to climb from `/pub` into `/private`.
fn climbs() -> Vec<String> {
    let dots = [
        "..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2E.", ".%2E", "%2e%2E",
    ];
    let slashes = ["/", "%2f", "%2F", "\\", "%5c", "%5C", "//", "/./", "/%2e/"];
    let starts = [
        "/pub/",
        "/pub//",
        "/pub/./",
        "/pub/a/",
        "/pub/%2e/",
        "/pub/a/../",
    ];
    let mut out = Vec::new();
    for s in starts {
        for d in dots {
            for sl in slashes {
                out.push(format!("{s}{d}{sl}private/secret.txt"));
                // Two levels up from a deeper start.
                out.push(format!("{s}a{sl}{d}{sl}{d}{sl}private/secret.txt"));
            }
        }
    }
    // Tricks other servers fall for.
    out.extend(
        [
            "/pub/..;/private/secret.txt",
            "/pub/..;x=1/private/secret.txt",
            "/pub/%2e%2e;/private/secret.txt",
            "/pub/.;/../private/secret.txt",
            "/pub/%252e%252e/private/secret.txt",
            "/pub/..%00/private/secret.txt",
            "/pub/%2e%2e%2f%2e%2e%2fprivate/secret.txt",
            "/./pub/../private/secret.txt",
            "//pub/../private/secret.txt",
        ]
        .map(String::from),
    );
    out
}

/// Whether a reply leaked the guarded file.
fn leaked(status: u16, body: &str) -> bool {
    status == 200 && body.contains(SECRET) || body.contains(SECRET)
}

#[test]
fn no_encoding_of_a_dot_segment_reaches_a_route_it_should_not() {
    let (gw, _nginx, _root) = guarded("");
    // The guard works, and nginx serves the file to whoever passes it.
    let r = request(gw.http, "GET", "/private/secret.txt", &[], "");
    assert_eq!(r.status, 401, "{r:?}");
    let r = request(
        gw.http,
        "GET",
        "/private/secret.txt",
        &["X-Api-Key: k-ops"],
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (200, SECRET));
    let r = request(gw.http, "GET", "/pub/index.txt", &[], "");
    assert_eq!(r.status, 200, "{r:?}");

    let paths = climbs();
    assert!(paths.len() > 800, "{}", paths.len());
    let mut refused = 0;
    for p in &paths {
        for target in [p.clone(), format!("http://test.local{p}")] {
            let r = raw(
                gw.http,
                format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            assert!(!leaked(r.status, &r.body), "{target}: {r:?}");
            // Either refused (400), or routed to /private after normalization (401), or a
            // path nginx has no file for under /pub (404).
            assert!(matches!(r.status, 400 | 401 | 404), "{target}: {r:?}");
            // (nginx itself refuses a few, such as an encoded NUL, with its own 400.)
            if r.status == 400 && r.headers["content-type"] == "application/problem+json" {
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    // The plain `..` is resolved before routing: the /private route's key is asked for.
    let r = raw(
        gw.http,
        b"GET /pub/../private/secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{r:?}");
    // And with the key, it is served as /private/secret.txt.
    let r = raw(
        gw.http,
        b"GET /pub/%2e%2e/private/secret.txt HTTP/1.1\r\nHost: x\r\nX-Api-Key: k-ops\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_str()), (200, SECRET));
    // Above the root and encoded slashes: 400 with a reason.
    for (p, why) in [
        ("/pub/../../private/secret.txt", "above the root"),
        ("/%2e%2e/private/secret.txt", "above the root"),
        ("/pub/..%2fprivate/secret.txt", "encoded slash"),
        ("/pub/%5C../private/secret.txt", "encoded slash"),
        ("/pub/a%zz", "percent-encoding"),
        ("/private;x=1/secret.txt", "parameters"),
        ("/pub;/../private/secret.txt", "parameters"),
    ] {
        let r = request(gw.http, "GET", p, &[], "");
        assert_eq!(r.status, 400, "{p}: {r:?}");
        assert!(
            r.json()["detail"].as_str().unwrap_or("").contains(why),
            "{p}: {r:?}"
        );
    }
}

#[test]
fn no_encoding_of_a_dot_segment_gets_past_a_route_over_http2() {
    let (gw, _nginx, _root) = guarded("");
    let rt = runtime();
    let paths: Vec<String> = climbs()
        .into_iter()
        // `\` is not a valid request-target character for the h2 crate's client.
        .filter(|p| !p.contains('\\'))
        .collect();
    let results = rt.block_on(async {
        let mut client = support::h2_connect(gw.http).await;
        let mut out = Vec::new();
        for p in &paths {
            let req = http::Request::builder()
                .uri(format!("http://test.local{p}"))
                .body(())
                .expect("request");
            let (status, body) = support::h2_fetch(&mut client, req).await;
            out.push((p.clone(), status, body));
        }
        out
    });
    assert_eq!(results.len(), paths.len());
    for (p, status, body) in results {
        assert!(!leaked(status, &body), "{p}: {status} {body}");
        assert!(matches!(status, 400 | 401 | 404), "{p}: {status} {body}");
    }
}

#[test]
fn the_upstream_gets_the_path_the_route_matched() {
    let rt = runtime();
    let up = upstream(&rt, "echo", fixed(200, Duration::ZERO));
    let config = |listener_extra: &str| {
        GatewayToml::new()
            .with(listener_extra)
            .upstream("echo", &[up.addr])
            .route_all("r", "echo")
            .build()
    };
    let gw = Gateway::start(&config(""));
    for (sent, forwarded) in [
        ("/a/./b/../c", "/a/c"),
        ("/a//b///c?x=%2e%2e&y=/../", "/a/b/c?x=%2e%2e&y=/../"),
        ("/%7Euser/%61%62c/%3a%3f", "/~user/abc/%3A%3F"),
        ("/a/b/..", "/a/"),
        ("/", "/"),
    ] {
        let r = request(gw.http, "GET", sent, &[], "");
        assert_eq!(r.status, 200, "{sent}: {r:?}");
        assert_eq!(r.json()["path"], forwarded, "{sent}");
    }
    drop(gw);
    // Settings: encoded slashes kept as they are, slashes not merged.
    let gw = Gateway::start(&config("escaped_slashes = \"keep\"\nmerge_slashes = false"));
    for (sent, forwarded) in [
        ("/files/a%2fb", "/files/a%2Fb"),
        ("/files/a%5cb/..", "/files/"),
        ("/a//b", "/a//b"),
        ("/a//../b", "/a/b"),
    ] {
        let r = request(gw.http, "GET", sent, &[], "");
        assert_eq!(r.status, 200, "{sent}: {r:?}");
        assert_eq!(r.json()["path"], forwarded, "{sent}");
    }
    // Still refused: climbing above the root.
    assert_eq!(request(gw.http, "GET", "/a/../..", &[], "").status, 400);
}

#[test]
fn targets_without_a_path_and_rewritten_paths_are_forwarded_as_routed() {
    let rt = runtime();
    let up = upstream(&rt, "echo", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("echo", &[up.addr])
            .route("v1", "/v1", "echo")
            .raw(
                "[route.request_transform]\n\
                 rewrite = { regex = \"^/v1/(.*)$\", replacement = \"/v1/$1/../../x\" }",
            )
            .route_all("r", "echo")
            .build(),
    );
    let ask = |target: &str| {
        raw(
            gw.http,
            format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    // An absolute-form target with no path is routed as `/`, and forwarded as `/`.
    let r = ask("http://test.local?q=1");
    assert_eq!(
        (r.status, r.json()["path"].as_str()),
        (200, Some("/?q=1")),
        "{r:?}"
    );
    // `*` is the target of OPTIONS alone.
    let r = ask("*");
    assert_eq!(r.status, 400, "{r:?}");
    // A rewrite's result is normalized before it goes upstream.
    let r = ask("/v1/a");
    assert_eq!(
        (r.status, r.json()["path"].as_str()),
        (200, Some("/x")),
        "{r:?}"
    );
}
