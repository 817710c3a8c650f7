//! Test harness: real upstream servers, the real `sluice-gateway` binary, and the plain
//! HTTP/1.1 client over std sockets (`sluice_e2e::http`, shared with the end-to-end tests).

#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
// Each test binary uses part of this module.
#[allow(unused_imports)]
pub use sluice_e2e::http::{closed_within, parse, raw, read_head, read_one, request, Reply};
#[allow(unused_imports)]
pub use toml::GatewayToml;

pub mod redis_server;
pub mod source;
mod toml;

/// How a test upstream answers: (status, delay) for a request path.
pub type Behaviour = Arc<dyn Fn(&str) -> (u16, Duration) + Send + Sync>;

/// A running test upstream; stops with the test's runtime.
pub struct Upstream {
    /// Address.
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
}

/// Starts an upstream named `name` on `rt`. It answers JSON with its name, the path and the
/// request headers it received.
pub fn upstream(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    behaviour: Behaviour,
) -> Upstream {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let behaviour = behaviour.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let behaviour = behaviour.clone();
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (status, delay) = behaviour(req.uri().path());
                        tokio::time::sleep(delay).await;
                        let headers: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let path = req.uri().to_string();
                        let version = format!("{:?}", req.version());
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let json = serde_json::json!({
                            "upstream": name, "path": path, "headers": headers,
                            "version": version, "body_len": body.len(),
                            "body": String::from_utf8_lossy(&body),
                        });
                        let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        r.headers_mut().insert(
                            "x-upstream-internal",
                            hyper::header::HeaderValue::from_static("1"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(stream), service)
                .await;
            });
        }
    });
    Upstream { addr, hits }
}

/// Always `status` after `delay`.
pub fn fixed(status: u16, delay: Duration) -> Behaviour {
    Arc::new(move |_| (status, delay))
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// The first client listener.
    pub http: SocketAddr,
    /// Every client listener by name.
    pub listeners: HashMap<String, SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Config path.
    pub config: PathBuf,
    dir: PathBuf,
    /// The process's log lines seen so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A gateway process not yet handed to a [`Gateway`]: killed, with its files, if dropped.
struct Pending(Option<Child>, PathBuf);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}

impl Gateway {
    /// Starts the binary with `config` (listener and admin on port 0 are fine), with two
    /// workers.
    pub fn start(config: &str) -> Gateway {
        Gateway::start_with_workers(config, 2)
    }

    /// Starts the binary with `config` and `workers` workers.
    pub fn start_with_workers(config: &str, workers: usize) -> Gateway {
        let dir = std::env::temp_dir().join(format!(
            "sluice-gw-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("gateway.toml");
        std::fs::write(&path, config).expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
            .args(["run", "--workers", &workers.to_string(), "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway");
        let stdout = child.stdout.take().expect("stdout");
        // Until the gateway is handed over, a failed start kills it and removes its files.
        let mut pending = Pending(Some(child), dir.clone());
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let wanted = config.matches("[[listener]]").count();
        let (mut http, mut admin, mut listeners) = (None, None, HashMap::new());
        while listeners.len() < wanted || admin.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("gateway start-up log");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let f = &v["fields"];
            let addr: Option<SocketAddr> = f["address"].as_str().and_then(|a| a.parse().ok());
            match f["message"].as_str() {
                Some("listening") => {
                    http = http.or(addr);
                    if let (Some(name), Some(a)) = (f["listener"].as_str(), addr) {
                        listeners.insert(name.to_string(), a);
                    }
                }
                Some("admin API") => admin = addr,
                _ => {}
            }
        }
        Gateway {
            child: pending.0.take().expect("child"),
            http: http.expect("listener"),
            listeners,
            admin: admin.expect("admin"),
            config: path,
            dir,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }

    /// Rewrites the config file atomically.
    pub fn rewrite(&self, config: &str) {
        let tmp = self.dir.join("gateway.toml.tmp");
        std::fs::write(&tmp, config).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A keep-alive client connection to the gateway's first listener (10 s read timeout).
pub fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// A multi-threaded runtime for upstreams.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A gateway config with one listener on port 0, admin on port 0, and `rest` appended
/// (lines at the start of `rest` are the listener's). [`GatewayToml`] builds on it.
pub fn config(rest: &str) -> String {
    // The test client names its host `test.local`, which the admin listener must be told
    // (it refuses any other name: DNS rebinding).
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nshutdown_deadline_ms = 3000\nhost_names = [\"test.local\"]\n\n[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\nheader_read_timeout_ms = 500\nkeepalive_timeout_ms = 500\nmax_headers = 50\nmax_body_bytes = 1024\n\n{rest}"
    )
}

/// A scratch directory removed on drop (the harness crate's).
pub use sluice_e2e::scratch::Scratch;

/// GET of an admin path, body as text.
pub fn admin_get(gw: &Gateway, path: &str) -> Reply {
    request(gw.admin, "GET", path, &[], "")
}

/// The value of one metric line (`name{labels}` exactly as printed), or 0.
pub fn metric(gw: &Gateway, series: &str) -> f64 {
    admin_get(gw, "/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A WebSocket server that echoes text and binary messages; returns its address.
pub fn websocket_echo(rt: &tokio::runtime::Runtime) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

/// A running nginx serving `root` as static files on a loopback port: an independent
/// upstream that normalizes paths itself (decodes `%XX`, `%2F` included, resolves `..`,
/// merges slashes). Stopped, with its files, when dropped.
pub struct Nginx {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    _dir: Scratch,
}

impl Nginx {
    /// Starts nginx (`cargo xtask setup` installs it) serving `root`.
    pub fn serve(root: &std::path::Path) -> Nginx {
        let dir = Scratch::new("nginx");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf = dir.0.join("nginx.conf");
        let tmp = dir.path("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
                 fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
                 server {{ listen {addr}; root {root}; }}\n}}\n",
                d = dir.0.display(),
                root = root.display(),
            ),
        )
        .expect("nginx config");
        let child = Command::new("nginx")
            .args(["-e", "stderr", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (cargo xtask setup installs it)");
        let up = Nginx {
            child,
            addr,
            _dir: dir,
        };
        for _ in 0..100 {
            if TcpStream::connect(addr).is_ok() {
                return up;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx did not start on {addr}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master take its worker down too.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/2 (prior knowledge) client connection to `addr`; its connection task is spawned.
pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    h2_over(tcp).await.0
}

/// An HTTP/2 client over `io`, and its spawned connection task (it ends when the server
/// closes the connection).
pub async fn h2_over<T>(
    io: T,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    (client, tokio::spawn(conn))
}

/// Sends `req` (no body) on `client` and reads the whole answer: status and body text.
pub async fn h2_fetch(
    client: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> (u16, String) {
    let mut ready = client.clone().ready().await.expect("ready");
    let (resp, _) = ready.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
