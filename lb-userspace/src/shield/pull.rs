//! Fetching a gateway's block candidates (`GET /shield/candidates` on the port its readiness
//! is probed on), bounded in time and size.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{body::Bytes, header, Request};
use hyper_util::rt::TokioIo;
use sluice_util::shield::{Candidates, MAX_BODY, PATH};
use tokio::net::TcpStream;

/// The media type of a gateway's candidates answer.
pub const MEDIA_TYPE: &str = "application/vnd.sluice.shield-candidates+json";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The whole exchange took longer than its timeout.
    #[error("timed out")]
    Timeout,
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Http(String),
    /// The gateway answered with another status (an older gateway has no such path).
    #[error("status {0}")]
    Status(u16),
    /// The body was larger than [`MAX_BODY`] or not a candidates document.
    #[error("{0}")]
    Body(String),
    /// The fetch ended without an answer (its task panicked or was dropped).
    #[error("the fetch ended without an answer")]
    Ended,
}

/// Fetches the candidates of the gateway whose admin listener is `target`.
pub async fn fetch(target: SocketAddr, timeout: Duration) -> Result<Candidates, PullError> {
    match tokio::time::timeout(timeout, exchange(target)).await {
        Ok(r) => r,
        Err(_) => Err(PullError::Timeout),
    }
}

async fn exchange(target: SocketAddr) -> Result<Candidates, PullError> {
    let http = |e: &dyn std::fmt::Display| PullError::Http(e.to_string());
    let stream = TcpStream::connect(target).await.map_err(|e| http(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(PATH)
        .header(header::HOST, target.to_string())
        .header(header::USER_AGENT, "sluice-lb")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status().as_u16();
    if status != 200 {
        conn.abort();
        return Err(PullError::Status(status));
    }
    // Only a gateway's admin listener answers with this type: a port whose path is routed
    // to an application cannot inject candidates.
    let media = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !media.starts_with(MEDIA_TYPE) {
        conn.abort();
        return Err(PullError::Body(format!(
            "content-type {media:?}, not {MEDIA_TYPE}: is the health port the gateway's admin listener?"
        )));
    }
    // An announced length over the bound is refused before anything is read.
    if hyper::body::Body::size_hint(resp.body()).lower() > MAX_BODY as u64 {
        conn.abort();
        return Err(PullError::Body(format!("larger than {MAX_BODY} bytes")));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| PullError::Body(format!("reading the body: {e}")))?
        .to_bytes();
    conn.abort();
    Candidates::parse(&body).map_err(|e| PullError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every connection with `answer` once it has read a request head.
    async fn serve(answer: Vec<u8>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(&answer).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        addr
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {MEDIA_TYPE}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn good_bad_slow_and_huge_answers() {
        let t = Duration::from_millis(500);
        let good = r#"{"mode":"enforce","candidates":[{"prefix":"10.9.0.7/32","class":"auth","count":30,"ttl_ms":5000}]}"#;
        let c = fetch(serve(http("200 OK", good)).await, t)
            .await
            .expect("good answer");
        assert_eq!(c.candidates.len(), 1);
        assert_eq!(c.candidates[0].prefix.to_string(), "10.9.0.7/32");
        let e = fetch(serve(http("404 Not Found", "{}")).await, t).await;
        assert!(matches!(e, Err(PullError::Status(404))), "{e:?}");
        let e = fetch(serve(http("200 OK", "not json")).await, t).await;
        assert!(matches!(e, Err(PullError::Body(_))), "{e:?}");
        // The right body from something that is not a gateway's admin listener.
        let app = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{good}",
            good.len()
        );
        let e = fetch(serve(app.into_bytes()).await, t).await;
        assert!(matches!(e, Err(PullError::Body(_))), "{e:?}");
        // Announced larger than the bound: refused without reading it all.
        let huge = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{{",
            MAX_BODY + 1
        );
        let e = fetch(serve(huge.into_bytes()).await, t).await;
        assert!(matches!(e, Err(PullError::Body(_))), "{e:?}");
        // A head that never comes: bounded by the timeout.
        let e = fetch(serve(Vec::new()).await, Duration::from_millis(200)).await;
        assert!(matches!(e, Err(PullError::Timeout)), "{e:?}");
    }
}
