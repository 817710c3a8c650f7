//! The monitoring files of `deploy/` against the real thing.
//!
//! - Without root: `promtool` checks the scrape configuration (and its target files) and
//!   the rules, runs the rules' unit tests, and parses every query of the Grafana
//!   dashboard (written out as recording rules of a throwaway file).
//! - As root: Debian's `prometheus` scrapes the harness's LB agents and gateways under
//!   traffic, with a configuration derived from `deploy/prometheus/prometheus.yml` and the
//!   real rule files. Every query of the dashboard (its variables resolved as Grafana
//!   would, from their own queries) and every recording rule must answer with at least one
//!   series, every rule must evaluate without error, the alerts active must be exactly the
//!   ones the traffic calls for, and `promtool check metrics` must find nothing to say
//!   about either tier's real `/metrics`.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use sluice_e2e::{
    bin, forward::Forward, gateway_addr, http_get, http_get_as, in_ns, in_ns_command, privileged,
    scratch::Scratch, World, PER_CLIENT_LIMIT, VIP, VIP6,
};

/// Debian's binaries (`cargo xtask setup` installs the `prometheus` package).
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// What Grafana's `$__rate_interval` is taken to be: at least four scrapes of the test's
/// 1 s interval, as Grafana computes it, with room for a late one.
const RATE_INTERVAL: &str = "10s";

/// How long the scraped topology has, after its targets are up, for every query, rule and
/// alert to answer as expected.
const SETTLE: Duration = Duration::from_secs(60);

/// The repository's `deploy/`.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs promtool with `args` (and `stdin`, if given); its output, or an error with it.
fn promtool(args: &[&str], stdin: Option<&str>, cwd: &Path) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("{PROMTOOL} (cargo xtask setup installs the prometheus package)")
        })?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("promtool's stdin")?
            .write_all(text.as_bytes())?;
    }
    // Dropping stdin closes it, so a promtool reading it sees the end.
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    Ok(text)
}

/// A variable of the dashboard's templating, as far as resolving it needs.
struct Variable {
    name: String,
    /// `label_values(...)` and such; `None` for the datasource variable.
    query: Option<String>,
    multi: bool,
    include_all: bool,
    all_value: Option<String>,
}

/// The Grafana dashboard's JSON model.
struct Dashboard(Value);

impl Dashboard {
    fn load() -> Result<Dashboard> {
        let path = deploy_dir().join("grafana/sluice.json");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok(Dashboard(
            serde_json::from_str(&text).with_context(|| path.display().to_string())?,
        ))
    }

    /// Every panel, those inside collapsed rows included.
    fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.0["panels"], &mut out);
        out
    }

    /// Every query of every panel: (where, expression).
    fn exprs(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let title = p["title"].as_str().unwrap_or("?");
                let expr = t["expr"]
                    .as_str()
                    .ok_or_else(|| anyhow!("panel {title:?}: a target without expr"))?;
                let at = format!("panel {title:?} {}", t["refId"].as_str().unwrap_or("?"));
                out.push((at, expr.to_string()));
            }
        }
        Ok(out)
    }

    fn variables(&self) -> Vec<Variable> {
        self.0["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let query = match (&v["type"], &v["query"]) {
                    (t, _) if t == "datasource" => None,
                    (_, Value::String(q)) => Some(q.clone()),
                    (_, q) => q["query"].as_str().map(str::to_string),
                };
                Variable {
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    query,
                    multi: v["multi"].as_bool().unwrap_or(false),
                    include_all: v["includeAll"].as_bool().unwrap_or(false),
                    all_value: v["allValue"].as_str().map(str::to_string),
                }
            })
            .collect()
    }
}

/// `label_values(selector, label)` as (selector, label); `label_values(label)` has the
/// selector `{label!=""}`.
fn label_values(query: &str) -> Result<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .ok_or_else(|| anyhow!("variable query {query:?}: only label_values(...) is resolved"))?;
    Ok(match inner.rsplit_once(',') {
        Some((selector, label)) => (selector.trim().to_string(), label.trim().to_string()),
        None => (
            format!("{{{}!=\"\"}}", inner.trim()),
            inner.trim().to_string(),
        ),
    })
}

/// Grafana's escape of a value of a multi-value variable in a regex: PromQL string escapes
/// around a regex escape, so `.` is written `\\.`.
fn regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str("\\\\");
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// `expr` with the dashboard's variables (`$name`, `${name}`) and Grafana's own interval
/// variables replaced; an error names a variable left over.
fn substitute(expr: &str, values: &[(String, String)]) -> Result<String> {
    let mut out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__interval", "5s")
        .replace("$__range", "1m");
    // Longest names first, so `$lb` does not eat the start of `$lb_job`.
    let mut sorted: Vec<&(String, String)> = values.iter().collect();
    sorted.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in sorted {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    // A `$` before a letter, `_` or `{` is a variable nobody defined (`$1` in a
    // label_replace replacement is PromQL's own).
    let chars: Vec<char> = out.chars().collect();
    if let Some(i) = chars
        .windows(2)
        .position(|w| w[0] == '$' && (w[1].is_ascii_alphabetic() || w[1] == '_' || w[1] == '{'))
    {
        bail!(
            "{expr:?}: undefined variable at {:?}",
            chars[i..].iter().take(20).collect::<String>()
        );
    }
    Ok(out)
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every dashboard query (and variable query) written as a recording rule, so promtool
/// can parse them without a server; variables get placeholder values.
fn dashboard_as_rules(d: &Dashboard) -> Result<String> {
    let values: Vec<(String, String)> = d
        .variables()
        .iter()
        .map(|v| {
            let value = if v.include_all { ".*" } else { "placeholder" };
            (v.name.clone(), value.to_string())
        })
        .collect();
    let mut queries = Vec::new();
    for v in d.variables() {
        if let Some(q) = &v.query {
            queries.push(label_values(&substitute(q, &values)?)?.0);
        }
    }
    for (_, expr) in d.exprs()? {
        queries.push(substitute(&expr, &values)?);
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(q)?
        ));
    }
    Ok(rules)
}

/// promtool accepts the scrape configuration, its target files and the rules, the rules'
/// unit tests pass, and every query of the dashboard parses.
#[test]
fn promtool_accepts_the_config_the_rules_and_the_dashboard_queries() {
    let run = || -> Result<()> {
        let dir = deploy_dir().join("prometheus");
        let out = promtool(&["check", "config", "prometheus.yml"], None, &dir)?;
        // A target file that is missing is only a warning to promtool.
        ensure!(!out.contains("WARNING"), "promtool check config:\n{out}");
        eprint!("{out}");
        eprint!(
            "{}",
            promtool(&["check", "rules", "sluice.rules.yml"], None, &dir)?
        );
        eprint!(
            "{}",
            promtool(&["test", "rules", "sluice.rules.test.yml"], None, &dir)?
        );

        let d = Dashboard::load()?;
        ensure!(d.0["schemaVersion"].as_u64() >= Some(36), "schemaVersion");
        let mut ids = std::collections::HashSet::new();
        for p in d.panels() {
            let title = p["title"].as_str().unwrap_or("?");
            ensure!(
                ids.insert(p["id"].as_u64()),
                "panel {title:?}: id used twice"
            );
            if p["type"] != "row" {
                ensure!(
                    p["datasource"]["uid"] == "${datasource}",
                    "panel {title:?}: its datasource is not the dashboard's variable"
                );
            }
        }
        let rules = dashboard_as_rules(&d)?;
        let scratch = Scratch::new("deploy-promtool");
        std::fs::write(scratch.0.join("dashboard.rules.yml"), &rules)?;
        let out = promtool(&["check", "rules", "dashboard.rules.yml"], None, &scratch.0)
            .context("a dashboard query does not parse")?;
        eprint!("dashboard queries: {out}");
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

/// Requests through the VIPs from the client namespace until dropped: plain ones, over the
/// per-client limit (429 after 10), to an upstream that refuses connections (502), with
/// an API key (a consumer), and some over IPv6.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// Gateway config for the traffic: the per-client limit of the harness, an upstream
/// nothing listens on, and a route behind an API key.
fn gateway_extra() -> String {
    format!(
        r#"{PER_CLIENT_LIMIT}
# Nothing listens on port 9 of the backend: connections are refused, the gateway answers 502.
[[upstream]]
name = "dead"
targets = [{{ address = "10.20.0.31:9" }}]

[[route]]
name = "dead"
path = {{ prefix = "/dead" }}
upstream = "dead"

[[consumer]]
id = "reporting"
# The SHA-256 of "password".
api_keys = ["sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"]

[[route]]
name = "keyed"
path = {{ prefix = "/keyed" }}
upstream = "app"
auth = {{ methods = ["api_key"] }}
request_transform = {{ strip_prefix = "/keyed" }}
"#
    )
}

impl Traffic {
    fn start(client_ns: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (flag, count, ns) = (stop.clone(), sent.clone(), client_ns.to_string());
        let thread = std::thread::spawn(move || {
            in_ns(&ns, || {
                let vip: SocketAddr = format!("{VIP}:80").parse().expect("literal");
                let vip6: SocketAddr = format!("[{VIP6}]:80").parse().expect("literal");
                let keyed_from = "10.10.1.3".parse().expect("literal");
                let mut round = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    // Failures are not counted: the queries say what arrived.
                    let _ = http_get(vip, "/index.html");
                    let _ = http_get(vip, "/limited/index.html");
                    let _ = http_get(vip, "/dead/");
                    let _ = http_get_as(
                        vip,
                        keyed_from,
                        "/keyed/index.html",
                        &["x-api-key: password"],
                        Duration::from_secs(2),
                    );
                    let mut sent = 4;
                    if round.is_multiple_of(10) {
                        let _ = http_get(vip6, "/index.html");
                        sent += 1;
                    }
                    round += 1;
                    count.fetch_add(sent, Ordering::Relaxed);
                }
            })
        });
        Traffic {
            stop,
            sent,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Debian's prometheus in one of the harness's namespaces, in a directory of its own;
/// killed and its directory removed when dropped, whether the test passes, fails or
/// panics.
struct Prometheus {
    child: Child,
    /// Dropped after `drop` has killed the process.
    dir: Scratch,
    ns: String,
    api: SocketAddr,
}

impl Prometheus {
    /// Writes the config derived from `deploy/prometheus` into a new directory, with 1 s
    /// scrape and evaluation intervals and the given targets, and starts prometheus in
    /// namespace `ns`, its API on a free port of that namespace's loopback.
    fn start(ns: &str, lb: &[SocketAddr], gateways: &[SocketAddr]) -> Result<Prometheus> {
        // Named as the harness names its directories (`sluice-e2e-sx<pid>…`), so that the
        // next run sweeps it if this one is killed outright.
        let scratch = Scratch::new(&format!("e2e-sx{}xprometheus", std::process::id()));
        let dir = scratch.0.clone();
        std::fs::create_dir_all(dir.join("targets"))?;
        let src = deploy_dir().join("prometheus");
        // The rule files (and their tests) as they are.
        for entry in std::fs::read_dir(&src)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(&path, dir.join(path.file_name().context("file name")?))?;
            }
        }
        let config = std::fs::read_to_string(src.join("prometheus.yml"))?;
        for needle in [
            "scrape_interval: 15s",
            "evaluation_interval: 15s",
            "targets/sluice-lb.yml",
            "targets/sluice-gateway.yml",
        ] {
            ensure!(
                config.contains(needle),
                "deploy/prometheus/prometheus.yml no longer has {needle:?}: update this test"
            );
        }
        // Seconds rather than minutes before rates and rules have samples.
        let config = config
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let targets = |addrs: &[SocketAddr]| {
            let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
            format!("- targets: [{}]\n", list.join(", "))
        };
        std::fs::write(dir.join("targets/sluice-lb.yml"), targets(lb))?;
        std::fs::write(dir.join("targets/sluice-gateway.yml"), targets(gateways))?;
        let out = promtool(&["check", "config", "prometheus.yml"], None, &dir)?;
        ensure!(!out.contains("WARNING"), "derived config:\n{out}");

        // Free now in that namespace, which only the harness uses.
        let port = in_ns(ns, || {
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
        })?
        .port();
        let api: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = in_ns_command(ns, PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{PROMETHEUS} (cargo xtask setup installs it)"))?;
        Ok(Prometheus {
            child,
            dir: scratch,
            ns: ns.to_string(),
            api,
        })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET `path` of the HTTP API; its `data`, or an error with the API's own.
    fn get(&self, path: &str) -> Result<Value> {
        let api = self.api;
        let (status, body) = in_ns(&self.ns, || http_get(api, path))
            .with_context(|| format!("prometheus API {path}"))?;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("prometheus API {path}: {status} {body}"))?;
        if json["status"] != "success" {
            bail!("{}: {}", json["errorType"], json["error"]);
        }
        Ok(json["data"].clone())
    }

    /// The series an instant query answers with (a scalar counts as one).
    fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.get(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        Ok(match data["resultType"].as_str() {
            Some("scalar") | Some("string") => vec![data["result"].clone()],
            _ => data["result"].as_array().cloned().unwrap_or_default(),
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus.log (last lines) ---\n{}", self.log_tail());
        }
    }
}

/// Polls `check` once a second until it says nothing is missing (an empty list) or
/// `deadline` passes; then the last list is the error.
fn settle(
    what: &str,
    deadline: Instant,
    mut check: impl FnMut() -> Result<Vec<String>>,
) -> Result<()> {
    loop {
        let missing = check()?;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}:\n  {}", missing.join("\n  "));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The dashboard's variables resolved as Grafana resolves them by default, in order (a
/// variable's query may use the ones before it): every value of an "All" variable (its
/// allValue, or the values joined as a regex), the first value of a single one. An error
/// names a variable whose query finds no value.
fn resolve_variables(prom: &Prometheus, d: &Dashboard) -> Result<Vec<(String, String)>> {
    let mut values = Vec::new();
    for v in d.variables() {
        let Some(query) = &v.query else { continue };
        let (selector, label) = label_values(&substitute(query, &values)?)?;
        let mut found: Vec<String> = prom
            .query(&selector)?
            .iter()
            .filter_map(|s| s["metric"][&label].as_str().map(str::to_string))
            .collect();
        found.sort();
        found.dedup();
        ensure!(
            !found.is_empty(),
            "variable ${}: {query} finds no value",
            v.name
        );
        let value = match (&v.all_value, v.include_all, v.multi) {
            (Some(all), true, _) => all.clone(),
            (None, true, _) | (_, false, true) => {
                let escaped: Vec<String> = found.iter().map(|f| regex_escape(f)).collect();
                format!("({})", escaped.join("|"))
            }
            (_, false, false) => found[0].clone(),
        };
        values.push((v.name.clone(), value));
    }
    Ok(values)
}

/// The alerts the traffic calls for, as (alertname, a label that must be on it): the
/// route to a dead upstream answers only 502s, and the per-client limit refuses nearly
/// everything.
const EXPECTED_ALERTS: [(&str, (&str, &str)); 2] = [
    ("SluiceGatewayHigh5xxRatio", ("route", "dead")),
    ("SluiceGatewayRateLimitStorm", ("limit", "per-client")),
];

/// Prometheus scrapes the harness's agents and gateways with the deploy configuration and
/// rules; every dashboard query and recording rule answers, every rule evaluates, and
/// only the alerts the traffic calls for are active.
#[test]
fn prometheus_scrapes_both_tiers_and_every_dashboard_query_answers() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let w = World::start_with_policies(&gateway_extra());
    // A block entry on both LB nodes, so the per-entry family has a series.
    for lb in ["l1", "l2"] {
        let out = in_ns_command(&w.ns[lb], bin("sluice-lb"))
            .args([
                "block",
                "203.0.113.0/24",
                "--ttl",
                "10m",
                "--reason",
                "deploy test",
            ])
            .args(["--admin", "127.0.0.1:9180"])
            .output()
            .expect("sluice-lb block");
        assert!(
            out.status.success(),
            "sluice-lb block: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let traffic = Traffic::start(&w.ns["c"]);
    // The agents' admin listeners are on their namespaces' loopback: forwarded to ports on
    // the router's loopback (a Forward listens in the namespace it is started from), where
    // prometheus runs and reaches the gateways' admin listeners on the node network itself.
    let router = w.ns["r"].clone();
    let agent: SocketAddr = "127.0.0.1:9180".parse().expect("literal");
    let forwards: Vec<Forward> = ["l1", "l2"]
        .iter()
        .map(|lb| in_ns(&router, || Forward::start(&w.ns[*lb], agent, 0)).expect("forwarded port"))
        .collect();
    let lb_targets: Vec<SocketAddr> = forwards.iter().map(|f| f.local).collect();
    let gateway_targets: Vec<SocketAddr> = (1..=3)
        .map(|i| {
            format!("{}:9000", gateway_addr(i))
                .parse()
                .expect("address")
        })
        .collect();
    let prom = Prometheus::start(&router, &lb_targets, &gateway_targets)
        .unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = check(&prom, &lb_targets, &gateway_targets) {
        panic!(
            "{e:#}\n(after {:.1} s, {} requests sent)",
            started.elapsed().as_secs_f64(),
            traffic.sent.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "passed in {:.1} s, {} requests sent",
        started.elapsed().as_secs_f64(),
        traffic.sent.load(Ordering::Relaxed)
    );
    // Dropped in reverse: prometheus, the forwarded ports, the traffic, the topology.
}

/// What the scraping test checks, once prometheus runs.
fn check(prom: &Prometheus, lb: &[SocketAddr], gateways: &[SocketAddr]) -> Result<()> {
    let t0 = Instant::now();
    let targets = lb.len() + gateways.len();
    settle(
        "scrape targets not up",
        t0 + Duration::from_secs(30),
        || {
            let data = prom.get("/api/v1/targets?state=active");
            let Ok(data) = data else {
                // Prometheus may not be listening yet.
                return Ok(vec![format!("API: {data:?}")]);
            };
            let active = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut missing: Vec<String> = active
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                .collect();
            if active.len() != targets {
                missing.push(format!("{} active targets of {targets}", active.len()));
            }
            Ok(missing)
        },
    )
    .with_context(|| prom.log_tail())?;
    eprintln!(
        "{targets} targets up after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Both tiers' real /metrics pass promtool's lint (names, units, HELP, TYPE).
    let gateway_metrics = in_ns(&prom.ns, || http_get(gateways[0], "/metrics"))?.1;
    let lb_metrics = in_ns(&prom.ns, || http_get(lb[0], "/metrics"))?.1;
    for (tier, text) in [
        ("sluice-lb", &lb_metrics),
        ("sluice-gateway", &gateway_metrics),
    ] {
        let out = promtool(&["check", "metrics"], Some(text), &std::env::temp_dir())
            .with_context(|| format!("{tier}'s /metrics"))?;
        ensure!(out.trim().is_empty(), "{tier}'s /metrics: {out}");
    }

    let deadline = Instant::now() + SETTLE;
    let dashboard = Dashboard::load()?;
    let exprs = dashboard.exprs()?;
    let mut variables = Vec::new();
    settle("dashboard queries without a series", deadline, || {
        variables = match resolve_variables(prom, &dashboard) {
            Ok(v) => v,
            Err(e) => return Ok(vec![format!("{e:#}")]),
        };
        let mut missing = Vec::new();
        for (at, expr) in &exprs {
            let q = substitute(expr, &variables)?;
            match prom.query(&q) {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => missing.push(format!("{at}: no series: {q}")),
                // A query Prometheus refuses does not get better with time.
                Err(e) => bail!("{at}: {e:#}\n  {q}"),
            }
        }
        Ok(missing)
    })?;
    eprintln!(
        "{} dashboard queries and {} variables answer ({})",
        exprs.len(),
        variables.len(),
        variables
            .iter()
            .map(|(n, v)| format!("${n} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut recorded = 0;
    settle("rules", deadline, || {
        let groups = prom.get("/api/v1/rules")?["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(!groups.is_empty(), "no rule group loaded");
        let mut missing = Vec::new();
        recorded = 0;
        for g in &groups {
            for r in g["rules"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or("?");
                if r["health"] != "ok" {
                    missing.push(format!("{name}: health {} {}", r["health"], r["lastError"]));
                }
                if r["type"] == "recording" {
                    recorded += 1;
                    if prom.query(name)?.is_empty() {
                        missing.push(format!("recording rule {name}: no series"));
                    }
                }
            }
        }
        Ok(missing)
    })?;
    eprintln!("{recorded} recording rules answer; every rule evaluates");

    let mut last = Vec::new();
    settle("active alerts", deadline, || {
        let alerts = prom.get("/api/v1/alerts")?["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        last = alerts
            .iter()
            .map(|a| {
                format!(
                    "{} {} {}",
                    a["labels"]["alertname"], a["state"], a["labels"]
                )
            })
            .collect();
        let mut wrong = Vec::new();
        for (name, (label, value)) in EXPECTED_ALERTS {
            if !alerts
                .iter()
                .any(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
            {
                wrong.push(format!("{name} with {label}={value} is not active"));
            }
        }
        for a in &alerts {
            let expected = EXPECTED_ALERTS.iter().any(|(name, (label, value))| {
                a["labels"]["alertname"] == *name && a["labels"][*label] == *value
            });
            if !expected {
                wrong.push(format!(
                    "unexpected: {} {}",
                    a["labels"]["alertname"], a["labels"]
                ));
            }
        }
        Ok(wrong)
    })?;
    eprintln!("active alerts, as the traffic calls for: {last:?}");
    Ok(())
}
