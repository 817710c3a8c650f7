//! What the shield ([`crate::shield`]) learns at the connection level, where no request
//! reaches the pipeline: heads hyper refused itself, and connections closed by a head or
//! TLS-handshake deadline. The client is the connection's peer (no header has been read
//! that could name another).
//!
//! A deadline counts only where a client keeps a connection without completing a request
//! head: the TLS handshake, the first request (nothing sent, or a head begun), or a later
//! head begun and not finished (slowloris). Waiting idle for a next request (keep-alive,
//! HTTP/2 idle) and not taking a response are not refusals.

use std::{error::Error, net::SocketAddr};

use sluice_util::shield::Class;

use crate::metrics::Metrics;

/// Counts a connection closed because a head or TLS-handshake deadline passed.
pub fn deadline(metrics: &Metrics, peer: SocketAddr) {
    metrics.shield.refused(peer.ip(), Class::Deadline);
}

/// Counts what hyper ended `peer`'s connection with, when it was the client's doing: a head
/// hyper could not parse or found too large, which it answered itself (400, or 431; 414
/// for a target over 64 KiB; made problem+json by [`super::parse_refusal`]), is malformed; hyper's head timer running out is a deadline
/// when `head_pending` (no request completed on this hyper instance, so a head was due):
/// hyper's timer also runs while an idle keep-alive connection waits, which is no abuse.
pub fn ended_with(
    metrics: &Metrics,
    peer: SocketAddr,
    error: &(dyn Error + 'static),
    head_pending: bool,
) {
    // hyper's error itself (HTTP/1.1), or inside hyper-util's (TLS and h2c).
    let hyper_error = std::iter::successors(Some(error), |&e| e.source())
        .find_map(|e| e.downcast_ref::<hyper::Error>());
    let Some(e) = hyper_error else {
        return;
    };
    let class = if e.is_parse() && !e.is_parse_version_h2() && !e.is_parse_status() {
        Class::Malformed
    } else if e.is_timeout() && head_pending {
        Class::Deadline
    } else {
        return;
    };
    metrics.shield.refused(peer.ip(), class);
}
