//! What `cargo xtask soak` needs of the topology: TLS and policies together, the gateways'
//! config and certificate files changed while they run, and the processes to watch.

use std::path::PathBuf;

use crate::World;

impl World {
    /// Like [`World::start_with_policies`], with TLS as in [`World::start_with`].
    pub fn start_with_tls_and_policies(tls: PathBuf, extra: &str) -> World {
        World::start_full(Some(tls), extra.to_string(), String::new())
    }

    /// Gateway `i`'s config file.
    pub fn gateway_config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("gw{i}.toml"))
    }

    /// Rewrites gateway `i`'s config with `change` applied to its text (the gateway reloads
    /// on the file change); returns the text it had.
    pub fn edit_gateway_config(&self, i: usize, change: impl FnOnce(&str) -> String) -> String {
        let path = self.gateway_config(i);
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, change(&before)).expect("gateway config");
        std::fs::rename(&tmp, &path).expect("gateway config");
        before
    }

    /// Rewrites both LB nodes' configs as they are (they reload on the file change).
    pub fn touch_lb_configs(&self) {
        for i in 1..=2 {
            self.write_lb_config(i);
        }
    }

    /// Process ids by harness name (`g1`, `l2`, `redis`, …), with LB nodes' BIRDs as
    /// `bird-l1`, `bird-l2`.
    pub fn process_ids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .procs
            .iter()
            .map(|(name, child)| (name.clone(), child.id()))
            .collect();
        for i in 1..=2 {
            if let Some(pid) = self.lb_bird_pid(i) {
                out.push((format!("bird-l{i}"), pid as u32));
            }
        }
        out.sort();
        out
    }

    /// Stops gateway `i` gracefully (SIGTERM: readiness fails, it drains and exits) and
    /// waits for it.
    pub fn stop_gateway(&mut self, i: usize) {
        let name = format!("g{i}");
        if let Some(mut child) = self.procs.remove(&name) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
