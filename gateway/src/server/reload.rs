//! Reloads: the config file on SIGHUP or when it changes, and each listener's certificates
//! when their files change. A refused file or certificate keeps what is in force.
//!
//! The sockets are bound, and each listener's connection settings taken, once at start: a
//! file that changes them (a listener added, removed, moved, or with another address, limit
//! or deadline, or another admin address) is refused with the field, rather than taken as
//! if it were in force. A listener's certificates do change on reload.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use sluice_util::control::{stamp, Stamp};
use tracing::{error, info, warn};

use sluice_util::FieldError;

use super::Gateway;
use crate::{
    config::{Config, Listener},
    downstream::listener::TlsState,
    downstream::tls,
    generation,
};

fn stamps(files: &[PathBuf]) -> Option<Vec<Stamp>> {
    Some(files.iter().map(|f| stamp(f)).collect())
}

/// A TLS listener's config in force, and the stamps of the files it was built from.
pub(super) struct TlsListener {
    /// Listener index in the config.
    pub index: usize,
    /// What new connections get.
    pub state: TlsState,
    seen: Option<Vec<Stamp>>,
    /// Why its files on disk are refused, until they are mended.
    refused: Option<String>,
}

impl TlsListener {
    /// Tracks listener `index`, whose config in force is `state`.
    pub fn new(index: usize, state: TlsState, config: &crate::config::Tls) -> Self {
        TlsListener {
            index,
            state,
            seen: stamps(&tls::files(config)),
            refused: None,
        }
    }
}

/// Publishes whether what is in force is what is on disk: the config file's status and
/// each listener's certificate files', each kept until that source is itself mended (a
/// good certificate must not hide a refused config file, nor the other way round).
fn publish(gw: &Gateway, listeners: &[TlsListener]) {
    let config = gw
        .metrics
        .config_refused
        .lock()
        .ok()
        .and_then(|e| e.clone());
    let error = config.or_else(|| listeners.iter().find_map(|l| l.refused.clone()));
    gw.metrics
        .last_reload_ok
        .store(error.is_none(), Ordering::Relaxed);
    if let Ok(mut last) = gw.metrics.last_reload_error.lock() {
        *last = error;
    }
}

/// Rebuilds the TLS config of every listener whose certificate, key or CA files changed
/// (from the config in force). A broken file keeps the previous config.
pub(super) fn reload_tls(gw: &Gateway, listeners: &mut [TlsListener]) {
    let rt = gw.runtime.load();
    for l in listeners.iter_mut() {
        let Some(config) = rt
            .config
            .listeners
            .get(l.index)
            .and_then(|c| c.tls.as_ref())
        else {
            continue;
        };
        let now = stamps(&tls::files(config));
        if now == l.seen {
            continue;
        }
        l.seen = now;
        match tls::server_config(config) {
            Ok(sc) => {
                l.state.store(sc);
                l.refused = None;
                info!(listener = l.index, "TLS certificates reloaded");
                gw.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                error!(listener = l.index, field = %e.field, error = %e.reason, "TLS files refused; the previous certificates stay in use");
                // Reported as a refused reload (metrics, dashboard), as a refused config
                // file is: the files are part of the config.
                let e = e.under(&format!("listener[{}].tls", l.index));
                l.refused = Some(format!("{}: {}", e.field, e.reason));
                gw.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    publish(gw, listeners);
}

/// Refuses a config whose listeners (or admin address) differ from those in force in
/// anything but their TLS settings: they were bound and set up at start.
fn restart_needed(old: &Config, new: &Config) -> Result<(), FieldError> {
    const WHY: &str = "listeners are bound and set up at start: a change other than their \
                       certificates needs a restart";
    if old.admin.listen != new.admin.listen {
        return Err(FieldError::new("admin.listen", WHY));
    }
    if old.listeners.len() != new.listeners.len() {
        return Err(FieldError::new(
            "listener",
            format!(
                "{} listeners in force, {} in the file: {WHY}",
                old.listeners.len(),
                new.listeners.len()
            ),
        ));
    }
    for (i, (was, now)) in old.listeners.iter().zip(&new.listeners).enumerate() {
        let mut same = was.clone();
        same.tls.clone_from(&now.tls);
        if same == *now && was.tls.is_some() == now.tls.is_some() {
            continue;
        }
        let field = match changed_field(was, now) {
            Some(f) => format!("listener[{i}].{f}"),
            None => format!("listener[{i}]"),
        };
        return Err(FieldError::new(
            field,
            format!("listener {:?}: {WHY}", was.name),
        ));
    }
    Ok(())
}

/// The first field, TLS aside (but for being on or off), in which two listeners differ.
fn changed_field(was: &Listener, now: &Listener) -> Option<&'static str> {
    macro_rules! first_of {
        ($($field:ident),*) => {
            $(if was.$field != now.$field {
                return Some(stringify!($field));
            })*
        };
    }
    first_of!(
        name,
        address,
        freebind,
        max_connections,
        header_read_timeout_ms,
        body_read_timeout_ms,
        tls_handshake_timeout_ms,
        first_request_timeout_ms,
        keepalive_timeout_ms,
        http2_idle_timeout_ms,
        stream_idle_timeout_ms,
        max_connections_per_client,
        merge_slashes,
        escaped_slashes,
        path_parameters,
        underscores_in_headers,
        max_header_bytes,
        max_headers,
        max_body_bytes
    );
    (was.tls.is_some() != now.tls.is_some()).then_some("tls")
}

/// Loads and builds `path` and, if it is valid, makes it the generation new requests (and
/// new TLS connections) start on.
pub(super) fn reload(path: &Path, gw: &Gateway, listeners: &mut [TlsListener], why: &str) {
    let old = gw.runtime.load_full();
    let number = old.generation + 1;
    let loaded = generation::load(path, number, Some(&old)).and_then(|built| {
        restart_needed(&old.config, &built.runtime.config)
            .map(|()| built)
            .map_err(|e| e.in_file(path))
    });
    match loaded {
        Ok(built) => {
            gw.metrics
                .analytics
                .configure(&built.runtime.config.analytics);
            gw.metrics.shield.configure(
                &built.runtime.config.shield,
                built.runtime.policies.client_ip.trusted_proxies(),
            );
            for l in listeners.iter_mut() {
                let was = old
                    .config
                    .listeners
                    .get(l.index)
                    .and_then(|c| c.tls.as_ref());
                let now = built
                    .runtime
                    .config
                    .listeners
                    .get(l.index)
                    .and_then(|c| c.tls.as_ref());
                // Only a listener whose TLS settings changed gets the config built for it:
                // a new one would start with an empty session cache, and every client of an
                // unchanged listener would lose resumption.
                if let (Some(Some(sc)), Some(files)) = (built.tls.get(l.index), now) {
                    if was != Some(files) {
                        l.state.store(sc.clone());
                        l.seen = stamps(&tls::files(files));
                        l.refused = None;
                    }
                }
            }
            if old.admin_token.is_some() && built.runtime.admin_token.is_none() {
                warn!("admin.token_file removed: changes through the admin API are now taken from loopback only, without a token");
            }
            built.runtime.start();
            gw.runtime.store(Arc::new(built.runtime));
            gw.metrics
                .config_generation
                .store(number, Ordering::Relaxed);
            gw.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut refused) = gw.metrics.config_refused.lock() {
                *refused = None;
            }
            info!(trigger = why, generation = number, "config reloaded");
        }
        Err(e) => {
            gw.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut refused) = gw.metrics.config_refused.lock() {
                *refused = Some(e.to_string());
            }
            error!(trigger = why, error = %e, "config refused; the last valid config stays in force");
        }
    }
    publish(gw, listeners);
}
