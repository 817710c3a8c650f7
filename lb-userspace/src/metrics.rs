//! Prometheus text exposition. The values are read from BPF maps at scrape time, so there is
//! no registry to keep in step: the agent gathers a [`Status`] snapshot and [`render`] writes
//! it out with a small writer.

use std::{collections::HashSet, fmt::Write};

use crate::agent::{BackendView, LoadSeen, Status};

/// Config reloads since the agent started, by result.
#[derive(Debug, Clone, Copy)]
pub struct Reloads {
    /// Applied.
    pub ok: u64,
    /// Refused.
    pub failed: u64,
}

/// The `/metrics` text for the agent's state `s` and its reload counts.
pub fn render(s: &Status, reloads: Reloads) -> String {
    let mut m = Writer::default();
    packet_outcomes(&mut m, s);
    vip_traffic(&mut m, s);
    backends(&mut m, s);
    tables(&mut m, s);
    shield(&mut m, s);
    bgp(&mut m, s);
    node(&mut m, s);
    config_reloads(&mut m, s, reloads);
    m.finish()
}

fn packet_outcomes(m: &mut Writer, s: &Status) {
    let help = "Packets handled by sluice_lb, by outcome.";
    m.family_over(
        "sluice_lb_packets_total",
        "counter",
        help,
        &s.outcomes,
        |(o, n)| (("outcome", o.clone()), *n as f64),
    );
    let help = "Flow-table events of sluice_lb.";
    m.family_over(
        "sluice_lb_flow_events_total",
        "counter",
        help,
        &s.flow_events,
        |(e, n)| (("event", e.clone()), *n as f64),
    );
}

fn vip_traffic(m: &mut Writer, s: &Status) {
    let vips = &s.vips;
    let help = "Packets received for a VIP.";
    m.family_over("sluice_lb_vip_packets_total", "counter", help, vips, |v| {
        (("vip", v.vip.clone()), v.packets as f64)
    });
    let help = "Bytes received for a VIP.";
    m.family_over("sluice_lb_vip_bytes_total", "counter", help, vips, |v| {
        (("vip", v.vip.clone()), v.bytes as f64)
    });
}

/// Per backend address, once however many VIPs list it (the first listing's view).
fn backends(m: &mut Writer, s: &Status) {
    let mut seen = HashSet::new();
    let backends: Vec<&BackendView> = s
        .vips
        .iter()
        .flat_map(|v| v.backends.iter())
        .filter(|b| seen.insert(b.address))
        .collect();
    let mut per_backend =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&BackendView) -> f64| {
            m.family_over(name, kind, help, &backends, |b| {
                (("backend", b.address.to_string()), value(b))
            });
        };
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    per_backend(
        "sluice_lb_backend_packets_total",
        "counter",
        "Packets tunnelled to a backend.",
        &|b| b.packets as f64,
    );
    per_backend(
        "sluice_lb_backend_bytes_total",
        "counter",
        "Bytes tunnelled to a backend.",
        &|b| b.bytes as f64,
    );
    per_backend(
        "sluice_lb_backend_up",
        "gauge",
        "1 if the backend passes its health check.",
        &|b| flag(b.healthy),
    );
    per_backend(
        "sluice_lb_backend_configured_weight",
        "gauge",
        "A backend's configured weight (or the operator's override).",
        &|b| b.configured_weight as f64,
    );
    per_backend(
        "sluice_lb_backend_load_factor",
        "gauge",
        "The load factor on a backend's configured weight (1 outside weights = \"load\").",
        &|b| b.load_factor.unwrap_or(1.0),
    );
    per_backend(
        "sluice_lb_backend_draining",
        "gauge",
        "1 if the backend is drained.",
        &|b| flag(b.state == "draining"),
    );
    backend_loads(m, &backends);
}

/// The last load report of each backend that sends one (gateways do, on readiness).
fn backend_loads(m: &mut Writer, backends: &[&BackendView]) {
    let reporting: Vec<(&BackendView, LoadSeen)> = backends
        .iter()
        .filter_map(|b| Some((*b, b.load?)))
        .collect();
    if reporting.is_empty() {
        return;
    }
    for (name, help, value) in [
        (
            "sluice_lb_backend_load_cpu_utilization",
            "A backend's reported CPU time per usable CPU.",
            (|l: &LoadSeen| l.report.cpu_utilization) as fn(&LoadSeen) -> f64,
        ),
        (
            "sluice_lb_backend_load_requests_per_second",
            "A backend's reported requests per second.",
            |l| l.report.rps,
        ),
        (
            "sluice_lb_backend_load_errors_per_second",
            "A backend's reported 5xx answers per second.",
            |l| l.report.eps,
        ),
        (
            "sluice_lb_backend_load_p99_seconds",
            "A backend's reported 99th-percentile time to response head.",
            |l| l.report.p99_ms / 1e3,
        ),
        (
            "sluice_lb_backend_load_capacity_requests_per_second",
            "A backend's held capacity estimate, the weights' input (0 before there is one).",
            |l| l.report.capacity.unwrap_or(0.0),
        ),
        (
            "sluice_lb_backend_load_report_age_seconds",
            "Seconds since a backend's last load report.",
            |l| l.age_ms as f64 / 1e3,
        ),
    ] {
        m.family_over(name, "gauge", help, &reporting, |(b, l)| {
            (("backend", b.address.to_string()), value(l))
        });
    }
}

fn tables(m: &mut Writer, s: &Status) {
    m.family(
        "sluice_lb_table_generation",
        "gauge",
        "Maglev table flips since the agent started.",
    );
    m.sample("sluice_lb_table_generation", &[], s.table_generation as f64);
    m.family(
        "sluice_lb_table_disruption_ratio",
        "gauge",
        "Share of slots the last table change moved away from surviving backends.",
    );
    m.sample("sluice_lb_table_disruption_ratio", &[], s.last_disruption);
    // Counted every ten seconds by walking the table; absent until the first count.
    if let Some(f) = s.flow_table {
        m.family(
            "sluice_lb_flow_table_entries",
            "gauge",
            "Entries in the fuller flow table (IPv4 or IPv6) at its last count (every 10 s).",
        );
        m.sample("sluice_lb_flow_table_entries", &[], f.entries as f64);
        m.family(
            "sluice_lb_flow_table_capacity",
            "gauge",
            "Entries each flow table (IPv4, IPv6) holds (flow_table_size).",
        );
        m.sample("sluice_lb_flow_table_capacity", &[], f.capacity as f64);
    }
}

/// Block entries and their drops, the gateways' candidates, and the flood guard.
fn shield(m: &mut Writer, s: &Status) {
    let sh = &s.shield;
    m.family(
        "sluice_lb_shield_entries",
        "gauge",
        "Source prefixes blocked in XDP.",
    );
    m.sample("sluice_lb_shield_entries", &[], sh.entries.len() as f64);
    m.family(
        "sluice_lb_shield_max_entries",
        "gauge",
        "The configured bound on block entries.",
    );
    m.sample(
        "sluice_lb_shield_max_entries",
        &[],
        f64::from(sh.max_entries),
    );
    let help = "Packets to a VIP dropped by the shield, by reason.";
    m.family_over(
        "sluice_lb_shield_dropped_packets_total",
        "counter",
        help,
        &sh.drops_by_reason,
        |(r, n)| (("reason", r.clone()), *n as f64),
    );
    let name = "sluice_lb_shield_entry_dropped_packets_total";
    m.family(
        name,
        "counter",
        "Packets dropped by one block entry (bounded by max_entries).",
    );
    for e in &sh.entries {
        let prefix = e.prefix.to_string();
        m.sample(
            name,
            &[("prefix", &prefix), ("reason", &e.reason)],
            e.drops as f64,
        );
    }
    let help = "Block candidates pulled from the gateways, by what the agent did with them.";
    m.family_over(
        "sluice_lb_shield_candidates_total",
        "counter",
        help,
        &sh.candidates,
        |(a, n)| (("action", a.clone()), *n as f64),
    );
    m.family(
        "sluice_lb_flood_guard_cpus_flooding",
        "gauge",
        "CPUs whose new-flow rate has the flood guard on: new flows get no flow-table entry.",
    );
    m.sample(
        "sluice_lb_flood_guard_cpus_flooding",
        &[],
        f64::from(sh.flood.cpus_flooding),
    );
    m.family(
        "sluice_lb_flood_guard_seconds_total",
        "counter",
        "Time spent with the flood guard on, summed over CPUs.",
    );
    m.sample(
        "sluice_lb_flood_guard_seconds_total",
        &[],
        sh.flood.flood_seconds,
    );
}

/// The node checks and the rates of the drops that mean the node cannot forward.
fn node(m: &mut Writer, s: &Status) {
    let help = "1 while what forwarding needs holds (bpffs, the program attached, IP forwarding, accept_local).";
    m.family_over(
        "sluice_lb_node_check_ok",
        "gauge",
        help,
        &s.node_checks,
        |c| (("check", c.name.clone()), if c.ok { 1.0 } else { 0.0 }),
    );
    let help = "VIP packets dropped per second over the last second, by reason.";
    m.family_over(
        "sluice_lb_dropped_packets_per_second",
        "gauge",
        help,
        &s.drop_rates,
        |(r, v)| (("reason", r.clone()), *v),
    );
}

/// Announcements and sessions, when `[bgp]` is configured.
fn bgp(m: &mut Writer, s: &Status) {
    let b = &s.bgp;
    if !b.enabled {
        return;
    }
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    m.family_over(
        "sluice_lb_bgp_announced",
        "gauge",
        "1 while this node announces the VIP address over BGP.",
        &b.vips,
        |v| (("vip", v.address.to_string()), flag(v.announced)),
    );
    m.family_over(
        "sluice_lb_bgp_session_up",
        "gauge",
        "1 while the BGP session with the peer is established.",
        &b.sessions,
        |p| {
            (
                ("peer", p.peer.clone()),
                flag(p.info.starts_with("Established")),
            )
        },
    );
    m.family(
        "sluice_lb_bgp_maintenance",
        "gauge",
        "1 while the node is in maintenance (every VIP withdrawn).",
    );
    m.sample("sluice_lb_bgp_maintenance", &[], flag(b.maintenance));
}

fn config_reloads(m: &mut Writer, s: &Status, reloads: Reloads) {
    m.family(
        "sluice_lb_config_reloads_total",
        "counter",
        "Config reloads, by result.",
    );
    m.sample(
        "sluice_lb_config_reloads_total",
        &[("result", "ok")],
        reloads.ok as f64,
    );
    m.sample(
        "sluice_lb_config_reloads_total",
        &[("result", "error")],
        reloads.failed as f64,
    );
    m.family(
        "sluice_lb_config_last_reload_success",
        "gauge",
        "1 if the last reload was applied.",
    );
    m.sample(
        "sluice_lb_config_last_reload_success",
        &[],
        if s.config.last_reload_ok { 1.0 } else { 0.0 },
    );
}

/// Builds a text-format exposition.
#[derive(Default)]
pub struct Writer {
    out: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Writer {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A family with one sample per item, each with one label: `sample` gives the label
    /// (name and value) and the value.
    pub fn family_over<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        sample: impl Fn(&T) -> ((&str, String), f64),
    ) {
        self.family(name, kind, help);
        for item in items {
            let ((key, label), value) = sample(item);
            self.sample(name, &[(key, &label)], value);
        }
    }

    /// Adds a sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The exposition.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{ConfigStatus, VipStatus};

    fn backend(address: &str, state: &str, packets: u64) -> BackendView {
        BackendView {
            address: address.parse().expect("literal"),
            state: state.into(),
            healthy: state != "down",
            weight: u32::from(state == "active"),
            packets,
            bytes: packets * 100,
            packets_per_second: 1.5,
            bytes_per_second: 150.0,
            load: None,
            configured_weight: 1,
            load_factor: None,
        }
    }

    /// Every family, a backend listed by two VIPs counted once, a refused reload.
    #[test]
    fn render_golden() {
        let status = Status {
            vips: vec![
                VipStatus {
                    vip: "198.51.100.1:80/tcp".into(),
                    packets: 10,
                    bytes: 1000,
                    backends: vec![
                        backend("10.1.0.11", "active", 3),
                        backend("10.1.0.12", "draining", 4),
                        backend("10.1.0.13", "down", 0),
                    ],
                },
                VipStatus {
                    vip: "[2001:db8::1]:443/udp".into(),
                    packets: 7,
                    bytes: 700,
                    backends: vec![
                        backend("10.1.0.11", "active", 3),
                        backend("fd00::5", "not-ready", 9),
                    ],
                },
            ],
            outcomes: vec![("tx".into(), 5), ("pass".into(), 2)],
            flow_events: vec![("new".into(), 3)],
            table_generation: 4,
            last_disruption: 0.25,
            config: ConfigStatus {
                path: "lb.toml".into(),
                generation: 2,
                last_reload_ok: false,
                last_error: Some("refused".into()),
            },
            shield: crate::shield::ShieldStatus {
                entries: vec![crate::shield::BlockView {
                    prefix: "203.0.113.0/24".parse().expect("literal"),
                    reason: "manual".into(),
                    note: "scanner".into(),
                    remaining_ms: Some(5000),
                    drops: 12,
                }],
                max_entries: 4096,
                drops_by_reason: vec![("manual".into(), 12), ("auth".into(), 3)],
                candidates: vec![("blocked".into(), 1), ("allowed".into(), 2)],
                flood: crate::shield::FloodView {
                    cpus_flooding: 1,
                    flood_seconds: 2.5,
                    ..Default::default()
                },
                ..Default::default()
            },
            bgp: Default::default(),
            node_checks: vec![crate::node_check::Check {
                name: "ipv4_forwarding eth0".into(),
                ok: false,
                detail: "off".into(),
            }],
            drop_rates: vec![("fib_failure".into(), 12.0)],
            flow_table: None,
        };
        let text = render(&status, Reloads { ok: 3, failed: 1 });
        assert_eq!(text, GOLDEN);
    }

    const GOLDEN: &str = "\
# HELP sluice_lb_packets_total Packets handled by sluice_lb, by outcome.\n\
# TYPE sluice_lb_packets_total counter\n\
sluice_lb_packets_total{outcome=\"tx\"} 5\n\
sluice_lb_packets_total{outcome=\"pass\"} 2\n\
# HELP sluice_lb_flow_events_total Flow-table events of sluice_lb.\n\
# TYPE sluice_lb_flow_events_total counter\n\
sluice_lb_flow_events_total{event=\"new\"} 3\n\
# HELP sluice_lb_vip_packets_total Packets received for a VIP.\n\
# TYPE sluice_lb_vip_packets_total counter\n\
sluice_lb_vip_packets_total{vip=\"198.51.100.1:80/tcp\"} 10\n\
sluice_lb_vip_packets_total{vip=\"[2001:db8::1]:443/udp\"} 7\n\
# HELP sluice_lb_vip_bytes_total Bytes received for a VIP.\n\
# TYPE sluice_lb_vip_bytes_total counter\n\
sluice_lb_vip_bytes_total{vip=\"198.51.100.1:80/tcp\"} 1000\n\
sluice_lb_vip_bytes_total{vip=\"[2001:db8::1]:443/udp\"} 700\n\
# HELP sluice_lb_backend_packets_total Packets tunnelled to a backend.\n\
# TYPE sluice_lb_backend_packets_total counter\n\
sluice_lb_backend_packets_total{backend=\"10.1.0.11\"} 3\n\
sluice_lb_backend_packets_total{backend=\"10.1.0.12\"} 4\n\
sluice_lb_backend_packets_total{backend=\"10.1.0.13\"} 0\n\
sluice_lb_backend_packets_total{backend=\"fd00::5\"} 9\n\
# HELP sluice_lb_backend_bytes_total Bytes tunnelled to a backend.\n\
# TYPE sluice_lb_backend_bytes_total counter\n\
sluice_lb_backend_bytes_total{backend=\"10.1.0.11\"} 300\n\
sluice_lb_backend_bytes_total{backend=\"10.1.0.12\"} 400\n\
sluice_lb_backend_bytes_total{backend=\"10.1.0.13\"} 0\n\
sluice_lb_backend_bytes_total{backend=\"fd00::5\"} 900\n\
# HELP sluice_lb_backend_up 1 if the backend passes its health check.\n\
# TYPE sluice_lb_backend_up gauge\n\
sluice_lb_backend_up{backend=\"10.1.0.11\"} 1\n\
sluice_lb_backend_up{backend=\"10.1.0.12\"} 1\n\
sluice_lb_backend_up{backend=\"10.1.0.13\"} 0\n\
sluice_lb_backend_up{backend=\"fd00::5\"} 1\n\
# HELP sluice_lb_backend_configured_weight A backend's configured weight (or the operator's override).\n\
# TYPE sluice_lb_backend_configured_weight gauge\n\
sluice_lb_backend_configured_weight{backend=\"10.1.0.11\"} 1\n\
sluice_lb_backend_configured_weight{backend=\"10.1.0.12\"} 1\n\
sluice_lb_backend_configured_weight{backend=\"10.1.0.13\"} 1\n\
sluice_lb_backend_configured_weight{backend=\"fd00::5\"} 1\n\
# HELP sluice_lb_backend_load_factor The load factor on a backend's configured weight (1 outside weights = \"load\").\n\
# TYPE sluice_lb_backend_load_factor gauge\n\
sluice_lb_backend_load_factor{backend=\"10.1.0.11\"} 1\n\
sluice_lb_backend_load_factor{backend=\"10.1.0.12\"} 1\n\
sluice_lb_backend_load_factor{backend=\"10.1.0.13\"} 1\n\
sluice_lb_backend_load_factor{backend=\"fd00::5\"} 1\n\
# HELP sluice_lb_backend_draining 1 if the backend is drained.\n\
# TYPE sluice_lb_backend_draining gauge\n\
sluice_lb_backend_draining{backend=\"10.1.0.11\"} 0\n\
sluice_lb_backend_draining{backend=\"10.1.0.12\"} 1\n\
sluice_lb_backend_draining{backend=\"10.1.0.13\"} 0\n\
sluice_lb_backend_draining{backend=\"fd00::5\"} 0\n\
# HELP sluice_lb_table_generation Maglev table flips since the agent started.\n\
# TYPE sluice_lb_table_generation gauge\n\
sluice_lb_table_generation 4\n\
# HELP sluice_lb_table_disruption_ratio Share of slots the last table change moved away from surviving backends.\n\
# TYPE sluice_lb_table_disruption_ratio gauge\n\
sluice_lb_table_disruption_ratio 0.25\n\
# HELP sluice_lb_shield_entries Source prefixes blocked in XDP.\n\
# TYPE sluice_lb_shield_entries gauge\n\
sluice_lb_shield_entries 1\n\
# HELP sluice_lb_shield_max_entries The configured bound on block entries.\n\
# TYPE sluice_lb_shield_max_entries gauge\n\
sluice_lb_shield_max_entries 4096\n\
# HELP sluice_lb_shield_dropped_packets_total Packets to a VIP dropped by the shield, by reason.\n\
# TYPE sluice_lb_shield_dropped_packets_total counter\n\
sluice_lb_shield_dropped_packets_total{reason=\"manual\"} 12\n\
sluice_lb_shield_dropped_packets_total{reason=\"auth\"} 3\n\
# HELP sluice_lb_shield_entry_dropped_packets_total Packets dropped by one block entry (bounded by max_entries).\n\
# TYPE sluice_lb_shield_entry_dropped_packets_total counter\n\
sluice_lb_shield_entry_dropped_packets_total{prefix=\"203.0.113.0/24\",reason=\"manual\"} 12\n\
# HELP sluice_lb_shield_candidates_total Block candidates pulled from the gateways, by what the agent did with them.\n\
# TYPE sluice_lb_shield_candidates_total counter\n\
sluice_lb_shield_candidates_total{action=\"blocked\"} 1\n\
sluice_lb_shield_candidates_total{action=\"allowed\"} 2\n\
# HELP sluice_lb_flood_guard_cpus_flooding CPUs whose new-flow rate has the flood guard on: new flows get no flow-table entry.\n\
# TYPE sluice_lb_flood_guard_cpus_flooding gauge\n\
sluice_lb_flood_guard_cpus_flooding 1\n\
# HELP sluice_lb_flood_guard_seconds_total Time spent with the flood guard on, summed over CPUs.\n\
# TYPE sluice_lb_flood_guard_seconds_total counter\n\
sluice_lb_flood_guard_seconds_total 2.5\n\
# HELP sluice_lb_node_check_ok 1 while what forwarding needs holds (bpffs, the program attached, IP forwarding, accept_local).\n\
# TYPE sluice_lb_node_check_ok gauge\n\
sluice_lb_node_check_ok{check=\"ipv4_forwarding eth0\"} 0\n\
# HELP sluice_lb_dropped_packets_per_second VIP packets dropped per second over the last second, by reason.\n\
# TYPE sluice_lb_dropped_packets_per_second gauge\n\
sluice_lb_dropped_packets_per_second{reason=\"fib_failure\"} 12\n\
# HELP sluice_lb_config_reloads_total Config reloads, by result.\n\
# TYPE sluice_lb_config_reloads_total counter\n\
sluice_lb_config_reloads_total{result=\"ok\"} 3\n\
sluice_lb_config_reloads_total{result=\"error\"} 1\n\
# HELP sluice_lb_config_last_reload_success 1 if the last reload was applied.\n\
# TYPE sluice_lb_config_last_reload_success gauge\n\
sluice_lb_config_last_reload_success 0\n\
";

    #[test]
    fn format() {
        let mut w = super::Writer::default();
        w.family("a_total", "counter", "An a.");
        w.sample("a_total", &[("k", "v\"x")], 3.0);
        w.sample("a_total", &[], 0.5);
        assert_eq!(
            w.finish(),
            "# HELP a_total An a.\n# TYPE a_total counter\na_total{k=\"v\\\"x\"} 3\na_total 0.5\n"
        );
    }
}
