//! TLS listeners: SNI certificates, protocol versions, ALPN, live certificate reload and
//! client-certificate verification, through a rustls client and through curl.

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use support::{fixed, runtime, upstream, Gateway, GatewayToml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("ca");
    Ca { cert, key }
}

/// Writes a certificate for `names` signed by `ca` to `dir/<file>.pem` and `.key`.
fn leaf(ca: &Ca, dir: &Path, file: &str, names: &[&str], client: bool) -> Vec<u8> {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    if client {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
    std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    cert.der().to_vec()
}

fn client(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    identity: Option<&Path>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut c = match identity {
        Some(base) => {
            let chain =
                vec![CertificateDer::from_pem_file(base.with_extension("pem")).expect("cert")];
            let key = PrivateKeyDer::from_pem_file(base.with_extension("key")).expect("key");
            b.with_client_auth_cert(chain, key).expect("client cert")
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A TLS connection to `addr`, with `sni`.
async fn connect_tls(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from(sni.to_string()).expect("name");
    connector.connect(name, tcp).await
}

/// `raw` bytes over a new TLS connection; everything read until it closes.
async fn send_raw(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
    sni: &str,
    raw: &[u8],
) -> std::io::Result<String> {
    let mut tls = connect_tls(addr, cfg, sni).await?;
    tls.write_all(raw).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).to_string())
}

/// Handshake with `sni`, one HTTP/1.1 request; returns (peer leaf DER, protocol, ALPN, status line).
async fn fetch(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
    sni: &str,
) -> std::io::Result<(Vec<u8>, String, Option<Vec<u8>>, String)> {
    let mut tls = connect_tls(addr, cfg, sni).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let version = format!("{:?}", conn.protocol_version());
    let alpn = conn.alpn_protocol().map(|a| a.to_vec());
    if alpn.as_deref() == Some(b"h2") {
        return Ok((leaf, version, alpn, String::new()));
    }
    tls.write_all(
        format!("GET /t HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    Ok((leaf, version, alpn, text))
}

#[test]
fn sni_versions_alpn_reload_and_mtls() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    // Removed when the test ends, whether it passes or not.
    let scratch = support::Scratch::new("tls");
    let dir = scratch.0.clone();
    let server_ca = ca("server ca");
    let client_ca = ca("client ca");
    let a = leaf(&server_ca, &dir, "a", &["a.example"], false);
    let b = leaf(&server_ca, &dir, "b", &["b.example"], false);
    leaf(&client_ca, &dir, "client", &["client.example"], true);
    std::fs::write(dir.join("client-ca.pem"), client_ca.cert.pem()).expect("write");
    let cfg = GatewayToml::empty()
        .raw(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nhost_names = [\"test.local\"]\n\n\
             [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\", server_names = [\"a.example\"] }}, {{ cert = \"{d}/b.pem\", key = \"{d}/b.key\", server_names = [\"b.example\"] }}] }}\n\n\
             [[listener]]\nname = \"mtls\"\naddress = \"127.0.0.1:0\"\n\
             tls = {{ certificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\", server_names = [\"a.example\"] }}], client_ca = \"{d}/client-ca.pem\" }}",
            d = dir.display(),
        ))
        .upstream("a", &[up.addr])
        .route_all("r", "a")
        .build();
    let gw = Gateway::start(&cfg);
    let tls_addr = gw.listeners["tls"];
    let mtls_addr = gw.listeners["mtls"];
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];

    // SNI picks the certificate; the request reaches the upstream marked as https.
    let (leaf_a, v, _, resp) = rt
        .block_on(fetch(
            tls_addr,
            client(&server_ca, &both, &[], None),
            "a.example",
        ))
        .expect("tls a");
    assert_eq!(leaf_a, a);
    assert_eq!(v, "Some(TLSv1_3)");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"x-forwarded-proto\":\"https\""), "{resp}");
    // A head hyper refuses over TLS is answered problem+json too.
    let refused = rt
        .block_on(send_raw(
            tls_addr,
            client(&server_ca, &both, &[], None),
            "a.example",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ))
        .expect("tls refused");
    assert!(
        refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{refused}"
    );
    assert!(
        refused.contains("content-type: application/problem+json\r\n"),
        "{refused}"
    );
    let (leaf_b, ..) = rt
        .block_on(fetch(
            tls_addr,
            client(&server_ca, &both, &[], None),
            "b.example",
        ))
        .expect("tls b");
    assert_eq!(leaf_b, b);
    // TLS 1.2 is accepted; ALPN offers h2.
    let (_, v, _, resp) = rt
        .block_on(fetch(
            tls_addr,
            client(&server_ca, &[&rustls::version::TLS12], &[], None),
            "a.example",
        ))
        .expect("tls 1.2");
    assert_eq!(v, "Some(TLSv1_2)");
    assert!(resp.starts_with("HTTP/1.1 200"));
    let (_, _, alpn, _) = rt
        .block_on(fetch(
            tls_addr,
            client(&server_ca, &both, &[b"h2", b"http/1.1"], None),
            "a.example",
        ))
        .expect("alpn");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // curl, an independent client, over HTTP/2 with SNI.
    let port = tls_addr.port();
    std::fs::write(dir.join("ca.pem"), server_ca.cert.pem()).expect("write");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2",
            "-w",
            "\n%{http_version} %{http_code}",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"))
        .args([
            "--resolve",
            &format!("b.example:{port}:127.0.0.1"),
            &format!("https://b.example:{port}/curl"),
        ])
        .output()
        .expect("curl (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n2 200"),
        "curl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // New certificate files are picked up without a restart.
    let a2 = leaf(&server_ca, &dir, "a", &["a.example"], false);
    let start = std::time::Instant::now();
    loop {
        let (leaf_now, ..) = rt
            .block_on(fetch(
                tls_addr,
                client(&server_ca, &both, &[], None),
                "a.example",
            ))
            .expect("tls a");
        if leaf_now == a2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new certificate was not loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broken certificate file is refused: the one in force stays, and the refusal is
    // reported as a refused reload, with its field.
    let good = std::fs::read(dir.join("a.pem")).expect("read");
    std::fs::write(dir.join("a.pem"), b"not a certificate").expect("write");
    let start = std::time::Instant::now();
    while support::metric(&gw, "sluice_gateway_config_last_reload_success") != 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the refusal was not reported"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = support::admin_get(&gw, "/dashboard/state").json();
    let said = state["config"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // (Both listeners serve a.pem: either may be the last to report it.)
    assert!(
        said.starts_with("listener[") && said.contains("].tls.certificates[0].cert: "),
        "{said}"
    );
    let (leaf_now, ..) = rt
        .block_on(fetch(
            tls_addr,
            client(&server_ca, &both, &[], None),
            "a.example",
        ))
        .expect("still served");
    assert_eq!(leaf_now, a2);
    // Mended, it is taken again and reported so.
    std::fs::write(dir.join("a.pem"), good).expect("write");
    let start = std::time::Instant::now();
    while support::metric(&gw, "sluice_gateway_config_last_reload_success") != 1.0 {
        assert!(start.elapsed() < Duration::from_secs(5), "not taken again");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each source is reported until it is itself mended: a refused config file stays
    // reported while a new certificate is taken.
    let refusals = || support::metric(&gw, "sluice_gateway_config_reloads_total{result=\"error\"}");
    let before = refusals();
    gw.rewrite(&format!(
        "{cfg}\n[[route]]\nname = \"bad\"\npath = {{ regex = \"(\" }}\nupstream = \"a\"\n"
    ));
    let start = std::time::Instant::now();
    while refusals() <= before {
        assert!(start.elapsed() < Duration::from_secs(5), "not refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    let taken = || support::metric(&gw, "sluice_gateway_config_reloads_total{result=\"ok\"}");
    let before = taken();
    let a3 = leaf(&server_ca, &dir, "a", &["a.example"], false);
    let start = std::time::Instant::now();
    while taken() <= before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the certificate was not taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(a3, a2);
    assert_eq!(
        support::metric(&gw, "sluice_gateway_config_last_reload_success"),
        0.0,
        "the refused config file is still on disk"
    );
    gw.rewrite(&cfg);
    let start = std::time::Instant::now();
    while support::metric(&gw, "sluice_gateway_config_last_reload_success") != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the mended file was not taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // mTLS: no client certificate, no service; a certificate from the client CA, served.
    let refused = rt.block_on(fetch(
        mtls_addr,
        client(&server_ca, &both, &[], None),
        "a.example",
    ));
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.3.is_empty()),
        "served without a client certificate: {refused:?}"
    );
    let (_, _, _, resp) = rt
        .block_on(fetch(
            mtls_addr,
            client(&server_ca, &both, &[], Some(&dir.join("client"))),
            "a.example",
        ))
        .expect("mtls");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(gw);
}

/// Handshakes with `sni` and reads one HTTP/1.1 answer (which also takes in TLS 1.3 session
/// tickets); how the handshake went.
async fn handshake_kind(
    addr: std::net::SocketAddr,
    cfg: Arc<ClientConfig>,
    sni: &str,
) -> Option<rustls::HandshakeKind> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from(sni.to_string()).ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .ok()?;
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(
        format!("GET /t HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.ok()?;
    kind
}

#[test]
fn a_reload_that_leaves_tls_alone_keeps_sessions_resumable() {
    let rt = runtime();
    let up = upstream(&rt, "a", fixed(200, Duration::ZERO));
    let scratch = support::Scratch::new("tls-resume");
    let dir = scratch.0.clone();
    let server_ca = ca("server ca");
    leaf(&server_ca, &dir, "a", &["a.example"], false);
    let config = |extra_route: bool| {
        let mut b = GatewayToml::empty()
            .raw(&format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\nhost_names = [\"test.local\"]\n\n\
                 [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
                 tls = {{ certificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}] }}\n",
                d = dir.display(),
            ))
            .upstream("a", &[up.addr])
            .route_all("r", "a");
        if extra_route {
            b = b.route("extra", "/extra", "a");
        }
        b.build()
    };
    let gw = Gateway::start(&config(false));
    let addr = gw.listeners["tls"];
    // One client config: its session store carries tickets from one connection to the next.
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    let client = client(&server_ca, &both, &[], None);
    let first = rt.block_on(handshake_kind(addr, client.clone(), "a.example"));
    assert_eq!(first, Some(rustls::HandshakeKind::Full));
    let second = rt.block_on(handshake_kind(addr, client.clone(), "a.example"));
    assert_eq!(
        second,
        Some(rustls::HandshakeKind::Resumed),
        "resumption works"
    );

    // A reload that changes only the routes: the listener keeps its TLS config, and with it
    // the keys its tickets were made with.
    gw.rewrite(&config(true));
    let start = std::time::Instant::now();
    while support::metric(&gw, "sluice_gateway_config_generation") < 2.0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = rt.block_on(handshake_kind(addr, client.clone(), "a.example"));
    assert_eq!(
        after,
        Some(rustls::HandshakeKind::Resumed),
        "a route-only reload lost the TLS session"
    );
    drop(gw);
}
