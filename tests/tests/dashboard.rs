//! Both dashboards in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (the `headless_chrome` crate: synchronous like the rest of this harness, and it
//! uses the installed browser instead of downloading one). Against the running two-tier
//! topology with traffic, each page must load without a console error or an uncaught
//! exception, show numbers that move while traffic runs, show a drained gateway as draining
//! within a couple of seconds, and say it is stale while its agent is away. Screenshots are
//! saved under `target/dashboard/`.

use std::{
    collections::HashMap,
    ffi::OsStr,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use headless_chrome::{
    protocol::cdp::{types::Event, Page::CaptureScreenshotFormatOption},
    Browser, LaunchOptions, Tab,
};
use sluice_e2e::{forward::Forward, gateway_addr, http::http_get, in_ns, privileged, World, VIP};

/// Where the screenshots go: `target/dashboard/` of the workspace.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/dashboard")
        .components()
        .collect::<PathBuf>();
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

/// Chromium as the machine's probe found it works here: headless, no sandbox (root), no
/// GPU, and none of the background connections a closed network would refuse.
fn browser(profile: &std::path::Path) -> Browser {
    let temp = profile.join("tmp");
    std::fs::create_dir_all(&temp).expect("the browser's temporary directory");
    let args: Vec<&OsStr> = [
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let options = LaunchOptions::default_builder()
        .path(Some(PathBuf::from("/usr/bin/chromium")))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1280, 1800)))
        .user_data_dir(Some(profile.to_path_buf()))
        // Chromium makes its own temporary directories (one per browser for its singleton
        // socket) and removes them only on a clean exit, which a killed browser never has:
        // under the profile, they go with it.
        .process_envs(Some(HashMap::from([(
            "TMPDIR".to_string(),
            temp.to_string_lossy().into_owned(),
        )])))
        .idle_browser_timeout(Duration::from_secs(300))
        .args(args)
        .build()
        .expect("launch options");
    Browser::new(options).expect("chromium starts (cargo xtask setup installs it)")
}

/// Console errors, uncaught exceptions and failed loads the page reported.
#[derive(Default, Clone)]
struct Complaints(Arc<Mutex<Vec<String>>>);

impl Complaints {
    fn watch(&self, tab: &Tab) {
        // Console calls and uncaught exceptions come from the Runtime domain, failed loads
        // from the Log domain; neither reports until enabled.
        tab.enable_runtime().expect("Runtime domain");
        tab.enable_log().expect("Log domain");
        let seen = self.0.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let complaint = match event {
                Event::RuntimeConsoleAPICalled(e) => {
                    let kind = format!("{:?}", e.params.Type);
                    (kind == "Error" || kind == "Warning" || kind == "Assert").then(|| {
                        let args: Vec<String> = e
                            .params
                            .args
                            .iter()
                            .map(|a| format!("{:?}", a.value))
                            .collect();
                        format!("console.{kind}: {}", args.join(" "))
                    })
                }
                Event::RuntimeExceptionThrown(e) => Some(format!(
                    "uncaught: {} {:?}",
                    e.params.exception_details.text,
                    e.params
                        .exception_details
                        .exception
                        .as_ref()
                        .and_then(|x| x.description.clone())
                )),
                Event::LogEntryAdded(e) => {
                    let level = format!("{:?}", e.params.entry.level);
                    (level == "Error").then(|| {
                        format!(
                            "log {}: {} {:?}",
                            level, e.params.entry.text, e.params.entry.url
                        )
                    })
                }
                _ => None,
            };
            if let Some(c) = complaint {
                if let Ok(mut v) = seen.lock() {
                    v.push(c);
                }
            }
        }))
        .expect("event listener");
    }

    fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The value of a JavaScript expression on the page.
fn eval(tab: &Tab, expr: &str) -> serde_json::Value {
    tab.evaluate(expr, false)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .value
        .unwrap_or(serde_json::Value::Null)
}

/// Waits up to `within` for `expr` to be true on the page.
fn wait_for(tab: &Tab, expr: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if eval(tab, expr) == serde_json::Value::Bool(true) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn screenshot(tab: &Tab, name: &str) -> PathBuf {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    let path = artifacts().join(name);
    std::fs::write(&path, png).expect("saving the screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

/// Requests to the VIP from the client namespace `client` until `stop`.
fn traffic(client: &str, stop: &AtomicBool) {
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("VIP");
    in_ns(client, || {
        while !stop.load(Ordering::Relaxed) {
            let _ = http_get(vip, "/index.html");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// A number shown in the page's outcome table for `outcome`, as the page formats it.
const TX_CELL: &str = "(() => { for (const r of document.querySelectorAll('#outcomes tr')) { \
     const c = r.querySelectorAll('td'); if (c.length && c[0].textContent === 'tx') \
     return c[1].textContent; } return null; })()";

#[test]
fn both_dashboards_work_in_a_real_browser() {
    if !privileged() {
        return;
    }
    let mut w = World::start();
    let profile = std::env::temp_dir().join(format!("sluice-chromium-{}", std::process::id()));
    let stop = AtomicBool::new(false);
    let client = w.ns["c"].clone();
    std::thread::scope(|s| {
        s.spawn(|| traffic(&client, &stop));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_lb_page(&mut w, &profile);
            check_gateway_page(&w, &profile);
        }));
        stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&profile);
        let _ = std::fs::remove_dir_all(profile.with_extension("gateway"));
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
}

fn check_lb_page(w: &mut World, profile: &std::path::Path) {
    let admin: SocketAddr = "127.0.0.1:9180".parse().expect("admin");
    let forward = Forward::start(&w.ns["l1"], admin, 0).expect("forwarded admin port");
    let url = format!("http://{}/", forward.local);
    // Text an operator or a gateway put in the shield is shown as text, never run.
    w.lb_cli(
        1,
        &[
            "block",
            "192.0.2.99",
            "--ttl",
            "5m",
            "--reason",
            "<img src=x onerror=\"document.title='owned'\">",
        ],
    );
    let page = sluice_e2e::http::raw(
        forward.local,
        sluice_e2e::http::request_text("GET", "/", "127.0.0.1", &[], "").as_bytes(),
    );
    assert!(
        page.headers
            .get("content-security-policy")
            .is_some_and(|p| p.contains("script-src 'self'")),
        "{:?}",
        page.headers
    );
    let browser = browser(profile);
    let tab = browser.new_tab().expect("tab");
    let complaints = Complaints::default();
    complaints.watch(&tab);
    tab.navigate_to(&url)
        .and_then(|t| t.wait_until_navigated())
        .expect("the page loads");
    assert!(
        wait_for(
            &tab,
            "document.getElementById('live').textContent === 'live' && \
             document.querySelectorAll('tr[data-backend]').length >= 3",
            Duration::from_secs(10)
        ),
        "the page never showed live backends: {}",
        eval(&tab, "document.body.innerText")
    );

    // The agent's admin API refuses what a web page could lead a browser to send: a
    // rebound host name, and a drain posted from another origin.
    let firefox = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0";
    let refused = |method: &str, path: &str, host: &str, extra: &[&str]| {
        let text = sluice_e2e::http::request_text(method, path, host, extra, "");
        sluice_e2e::http::raw(forward.local, text.as_bytes()).status
    };
    assert_eq!(
        refused("GET", "/status", "rebound.example:9180", &[firefox]),
        403
    );
    let drain = format!("/backends/{}/drain", gateway_addr(1));
    let evil = [
        "Origin: https://evil.example",
        "Sec-Fetch-Site: cross-site",
        firefox,
    ];
    assert_eq!(
        refused("POST", &drain, &forward.local.to_string(), &evil),
        403
    );
    assert!(
        wait_for(
            &tab,
            "document.getElementById('shield').innerText.includes('<img src=x') && \
             document.querySelectorAll('#shield img').length === 0 && \
             document.title !== 'owned'",
            Duration::from_secs(3)
        ),
        "the note was not shown as text: {}",
        eval(&tab, "document.getElementById('shield').innerHTML")
    );
    // The refused drain changed nothing.
    assert!(
        wait_for(
            &tab,
            &format!(
                "(r => r !== null && r.dataset.state === 'active') \
                 (document.querySelector('tr[data-backend=\"{}\"]'))",
                gateway_addr(1)
            ),
            Duration::from_secs(3)
        ),
        "the refused drain drained"
    );

    // Live numbers move while traffic runs: the forwarded-packet count, and the rates.
    let first = eval(&tab, TX_CELL);
    assert!(
        wait_for(
            &tab,
            &format!("{TX_CELL} !== {first}"),
            Duration::from_secs(5)
        ),
        "the tx count stayed at {first}"
    );
    assert!(
        wait_for(
            &tab,
            "[...document.querySelectorAll('tr[data-backend] td:nth-child(4)')] \
             .some(td => td.textContent !== '0' && td.textContent !== '–')",
            Duration::from_secs(5)
        ),
        "no backend showed packets per second"
    );
    assert!(
        wait_for(
            &tab,
            "document.querySelectorAll('svg.spark path').length > 0",
            Duration::from_secs(5)
        ),
        "no sparkline was drawn"
    );

    // A drain shows within a couple of seconds.
    let drained = gateway_addr(2);
    w.lb_cli(1, &["drain", &drained]);
    let drained_at = Instant::now();
    assert!(
        wait_for(
            &tab,
            &format!(
                "(rows => rows.length > 0 && rows.every(r => r.dataset.state === 'draining' \
                 && r.innerText.includes('draining'))) \
                 ([...document.querySelectorAll('tr[data-backend=\"{drained}\"]')])"
            ),
            Duration::from_secs(3)
        ),
        "{drained} not shown draining: {}",
        eval(&tab, "document.getElementById('vips').innerText")
    );
    eprintln!("drain shown after {} ms", drained_at.elapsed().as_millis());
    // The flow table is counted every ten seconds: flows of this traffic show up.
    assert!(
        wait_for(
            &tab,
            "/^[1-9]/.test(document.getElementById('flows').innerText.trim())",
            Duration::from_secs(12)
        ),
        "no flows counted: {}",
        eval(&tab, "document.getElementById('flows').innerText")
    );
    screenshot(&tab, "lb.png");
    w.lb_cli(1, &["undrain", &drained]);

    // The agent goes away: the page keeps what it showed and says it is stale; it comes
    // back by itself when the agent does.
    w.kill("l1");
    assert!(
        wait_for(
            &tab,
            "document.body.classList.contains('stale') && \
             document.getElementById('live').textContent.startsWith('stale') && \
             document.querySelectorAll('tr[data-backend]').length >= 3",
            Duration::from_secs(6)
        ),
        "not shown stale: {}",
        eval(&tab, "document.getElementById('live').textContent")
    );
    w.start_lb(1);
    w.wait_lb_ready(1);
    assert!(
        wait_for(
            &tab,
            "document.getElementById('live').textContent === 'live'",
            Duration::from_secs(10)
        ),
        "not live again after the agent came back"
    );

    // Failed polls while the agent was away are network errors the page handled, not page
    // errors; anything else is a defect.
    let complaints: Vec<String> = complaints
        .take()
        .into_iter()
        .filter(|c| !c.contains("ERR_CONNECTION_REFUSED") && !c.contains("ERR_EMPTY_RESPONSE"))
        .collect();
    assert!(complaints.is_empty(), "console: {complaints:#?}");
}

fn check_gateway_page(w: &World, profile: &std::path::Path) {
    let admin: SocketAddr = "127.0.0.1:9000".parse().expect("admin");
    let forward = Forward::start(&w.ns["g1"], admin, 0).expect("forwarded admin port");
    let browser = browser(&profile.with_extension("gateway"));
    let tab = browser.new_tab().expect("tab");
    let complaints = Complaints::default();
    complaints.watch(&tab);
    tab.navigate_to(&format!("http://{}/", forward.local))
        .and_then(|t| t.wait_until_navigated())
        .expect("the page loads");
    assert!(
        wait_for(
            &tab,
            "document.getElementById('live').textContent === 'live' && \
             document.querySelectorAll('tr[data-route]').length > 0",
            Duration::from_secs(10)
        ),
        "no live routes: {}",
        eval(&tab, "document.body.innerText")
    );
    let total = "document.querySelector('tr[data-route=\"all\"] td:nth-child(6)').textContent";
    let first = eval(&tab, total);
    assert!(
        wait_for(
            &tab,
            &format!("{total} !== {first}"),
            Duration::from_secs(5)
        ),
        "the request count stayed at {first}"
    );
    assert!(
        wait_for(
            &tab,
            "document.querySelectorAll('#upstreams tbody tr').length === 2 && \
             [...document.querySelectorAll('#upstreams tbody tr')] \
               .every(r => r.querySelector('.badge.up'))",
            Duration::from_secs(3)
        ),
        "upstream health not shown"
    );
    screenshot(&tab, "gateway.png");
    let complaints = complaints.take();
    assert!(complaints.is_empty(), "console: {complaints:#?}");
}
