//! What one client cannot take from the others: the admin port's connections are capped and
//! timed, and running out of file descriptors pauses the accept loops instead of spinning
//! them (real gateway, real sockets, the process's own descriptor limit lowered).

mod support;

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use support::{fixed, request, runtime, upstream, Gateway, GatewayToml};

#[test]
fn admin_connections_are_capped_and_timed() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route_all("r", "a")
            .build(),
    );
    // Seventy connections, one trickling a head: at most 64 held, each closed by the head
    // deadline; the client listener is not affected meanwhile.
    sluice_e2e::http::assert_capped_and_timed(gw.admin, b"GET /metr", || {
        assert_eq!(request(gw.http, "GET", "/", &[], "").status, 200);
    });
    // And the admin API answers again.
    assert_eq!(support::admin_get(&gw, "/healthz").status, 200);
}

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[test]
fn out_of_descriptors_the_accept_loop_pauses_and_recovers() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let gw = Gateway::start_with_workers(
        &GatewayToml::new()
            .upstream("a", &[up.addr])
            .route_all("r", "a")
            .build(),
        1,
    );
    let pid = gw.pid();
    // Room for a few more descriptors than the gateway has open now (the soft limit only:
    // raising it back needs no privilege).
    let mut was = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let set = |new: &libc::rlimit, old: *mut libc::rlimit| {
        // SAFETY: reading and setting a resource limit of our own child process.
        let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, new, old) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    // SAFETY: a null new limit only reads the old one.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut was,
        )
    };
    assert_eq!(rc, 0);
    set(
        &libc::rlimit {
            rlim_cur: open_fds(pid) + 8,
            rlim_max: was.rlim_max,
        },
        std::ptr::null_mut(),
    );
    // More connections than descriptors: the rest wait in the backlog, and every accept
    // fails with EMFILE.
    let clients: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(gw.http).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    // Ticks are 10 ms: a spinning loop would take about 200 of them in 2 s.
    assert!(spent < 40, "{spent} ticks in 2 s while out of descriptors");
    let warned = gw
        .log
        .lock()
        .map(|l| l.iter().filter(|l| l.contains("accept failed")).count())
        .unwrap_or(0);
    assert!((1..=6).contains(&warned), "{warned} accept warnings");
    // Descriptors back: it serves again.
    drop(clients);
    set(&was, std::ptr::null_mut());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = request(gw.http, "GET", "/", &[], "").status;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not serving again: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_request_its_client_abandons_is_recorded_as_499() {
    let rt = runtime();
    let slow = upstream(&rt, "slow", fixed(200, Duration::from_millis(1500)));
    let gw = Gateway::start(
        &GatewayToml::new()
            .upstream("slow", &[slow.addr])
            .route("slow", "/slow", "slow")
            .build(),
    );
    // HTTP/1.1: the client closes while the upstream is still thinking.
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.write_all(b"GET /slow/a HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    // HTTP/2: the client resets its stream.
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::get("http://a.test/slow/b")
            .body(())
            .expect("req");
        let (resp, _) = client.send_request(req, true).expect("send");
        let _ = tokio::time::timeout(Duration::from_millis(300), resp).await;
    });
    let series = "sluice_gateway_requests_total{route=\"slow\",method=\"GET\",status=\"499\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::metric(&gw, series) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "{series} = {}",
            support::metric(&gw, series)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = gw
        .log
        .lock()
        .map(|l| {
            l.iter()
                .filter(|l| l.contains("\"status\":499") && l.contains("\"route\":\"slow\""))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(logged, 2);
    // Nothing else is recorded for them once the upstream's answer would have come.
    std::thread::sleep(Duration::from_millis(1500));
    let answered = "sluice_gateway_requests_total{route=\"slow\",method=\"GET\",status=\"200\"}";
    assert_eq!(support::metric(&gw, answered), 0.0);
    assert_eq!(support::metric(&gw, series), 2.0);
}
