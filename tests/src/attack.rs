//! What the shield tests and the demo need of the topology: the shield's configs, a flooder
//! namespace on the router, the LB nodes' status, and their configs changed while they run.

use std::time::{Duration, Instant};

use crate::{bin, in_ns_command, sh, World};

/// Gateway config for the shield: a `/secure` route behind an API key (the one consumer's
/// key is never sent), and abuse detection in `enforce` mode that offers a client after
/// `auth_threshold` 401s within 30 s, held for `ttl_secs`.
pub fn gateway_shield(auth_threshold: u32, ttl_secs: u64) -> String {
    format!(
        r#"
[[consumer]]
id = "someone"
api_keys = ["{}"]

[[route]]
name = "secure"
path = {{ prefix = "/secure" }}
upstream = "app"
auth = {{ methods = ["api_key"] }}
request_transform = {{ strip_prefix = "/secure" }}

[shield]
mode = "enforce"
window_secs = 30
ttl_secs = {ttl_secs}
thresholds = {{ auth = {auth_threshold} }}
"#,
        "ab".repeat(32)
    )
}

/// LB config for the shield: block the gateways' candidates, pulled four times a second;
/// 10.10.1.4 (a client address) is on the allow list.
pub const LB_SHIELD: &str = r#"
[shield]
pull = "enforce"
pull_interval_ms = 250
allow = ["10.10.1.4/32"]
"#;

impl World {
    /// Adds namespace `f` on its own router port (10.10.2.2, router 10.10.2.1), from which
    /// spoofed sources may reach the VIPs: the router does no reverse-path filtering there.
    /// Returns (the flooder's interface, its MAC, the router port's MAC).
    pub fn add_flooder(&mut self) -> (String, [u8; 6], [u8; 6]) {
        let f = format!("{}f", self.tag);
        let r = self.ns["r"].clone();
        sh(&format!("ip netns add {f}"));
        self.ns.insert("f", f.clone());
        sh(&format!("ip -n {f} link set lo up"));
        sh(&format!(
            "ip -n {r} link add f type veth peer name eth0 netns {f}"
        ));
        sh(&format!("ip -n {r} addr add 10.10.2.1/24 dev f"));
        sh(&format!("ip -n {r} link set f up"));
        sh(&format!("ip -n {f} addr add 10.10.2.2/24 dev eth0"));
        sh(&format!("ip -n {f} link set eth0 up"));
        sh(&format!(
            "ip netns exec {r} sysctl -qw net.ipv4.conf.f.rp_filter=0 net.ipv4.conf.all.rp_filter=0"
        ));
        let mac = |ns: &str, dev: &str| {
            crate::in_ns(ns, || crate::flood::interface_mac(dev)).expect("interface MAC")
        };
        ("eth0".into(), mac(&f, "eth0"), mac(&r, "f"))
    }

    /// `sluice-lb status --json` of LB node `i`.
    pub fn lb_status(&self, i: usize) -> serde_json::Value {
        let out = in_ns_command(&self.ns[&*format!("l{i}")], bin("sluice-lb"))
            .args(["status", "--json", "--admin", "127.0.0.1:9180"])
            .output()
            .expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// A named counter from LB node `i`'s status: an outcome or a flow event.
    pub fn lb_counter(&self, i: usize, name: &str) -> u64 {
        let s = self.lb_status(i);
        ["outcomes", "flow_events"]
            .iter()
            .filter_map(|k| s[*k].as_array())
            .flatten()
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].as_u64())
            .unwrap_or(0)
    }

    /// Replaces what is appended to both LB nodes' configs; waits until both reloaded.
    pub fn set_lb_extra(&mut self, extra: &str) {
        let before: Vec<u64> = (1..=2).map(|i| self.lb_generation(i)).collect();
        self.lb_extra = extra.to_string();
        for i in 1..=2 {
            self.write_lb_config(i);
        }
        let start = Instant::now();
        while (1..=2).any(|i| self.lb_generation(i) <= before[i - 1]) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "LB nodes did not reload: {}",
                self.log("lb1.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn lb_generation(&self, i: usize) -> u64 {
        self.lb_status(i)["config"]["generation"]
            .as_u64()
            .unwrap_or(0)
    }
}
