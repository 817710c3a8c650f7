//! What forwarding needs from the node, checked at start and every second: bpffs under the
//! pin directory, the program attached to every interface, IP forwarding on the interfaces
//! (`bpf_fib_lookup` refuses to route for an interface without it, and every VIP packet
//! would be dropped as `fib_failure`) and `accept_local` (the slow path hands the kernel
//! frames whose source is our own tunnel address).
//!
//! A wrong sysctl is set right when `[node] manage_sysctls` is on (the default); otherwise,
//! and for what cannot be fixed here, it is reported: in `status`, as a metric, and as a
//! failing `/healthz`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::config::Config;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked, with the interface: `ipv4_forwarding eth0`.
    pub name: String,
    /// Whether it holds now.
    pub ok: bool,
    /// What is wrong, or what was fixed.
    pub detail: String,
}

/// The name of the check that the program is on an interface (followed by the interface).
pub const ATTACHED: &str = "xdp_attached";

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Runs every check, fixing the sysctls when `config.node.manage_sysctls` says so.
pub fn run(config: &Config) -> Vec<Check> {
    let node = &config.node;
    let mut out = vec![bpffs(&node.pin_dir)];
    let ipv6 = config
        .vips
        .iter()
        .any(|v| v.address.is_ipv6() || v.backends.iter().any(|b| b.address.is_ipv6()));
    for iface in &node.interfaces {
        let attached = crate::attach::attached(&node.pin_dir, iface);
        out.push(Check {
            name: format!("{ATTACHED} {iface}"),
            ok: attached.is_ok(),
            detail: attached.err().unwrap_or_default(),
        });
        let mut knobs = vec![
            (
                "ipv4_forwarding",
                format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
            ),
            (
                "accept_local",
                format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"),
            ),
        ];
        if ipv6 {
            knobs.push((
                "ipv6_forwarding",
                format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"),
            ));
        }
        for (what, path) in knobs {
            out.push(sysctl_on(
                &format!("{what} {iface}"),
                Path::new(&path),
                node.manage_sysctls,
            ));
        }
    }
    out
}

/// The pin directory is on bpffs.
fn bpffs(pin_dir: &Path) -> Check {
    let name = "bpffs".to_string();
    let Ok(c) = std::ffi::CString::new(pin_dir.as_os_str().as_encoded_bytes()) else {
        return Check {
            name,
            ok: false,
            detail: "the pin directory's path has a NUL byte".into(),
        };
    };
    // SAFETY: zeroed statfs is a valid out-buffer; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    let ok = rc == 0 && st.f_type as i64 == BPF_FS_MAGIC;
    Check {
        name,
        ok,
        detail: if ok {
            String::new()
        } else if rc != 0 {
            format!("{}: {}", pin_dir.display(), std::io::Error::last_os_error())
        } else {
            format!(
                "{} is not on bpffs: pinned state would not outlive the agent",
                pin_dir.display()
            )
        },
    }
}

/// A sysctl that must be 1: set when `fix`, reported otherwise.
fn sysctl_on(name: &str, path: &Path, fix: bool) -> Check {
    let read = || std::fs::read_to_string(path).map(|v| v.trim() == "1");
    match read() {
        Ok(true) => Check {
            name: name.into(),
            ok: true,
            detail: String::new(),
        },
        Ok(false) if fix => match std::fs::write(path, "1") {
            Ok(()) => {
                info!(sysctl = %path.display(), "set to 1 (manage_sysctls)");
                Check {
                    name: name.into(),
                    ok: true,
                    detail: format!("{} was 0; set to 1", path.display()),
                }
            }
            Err(e) => fail(
                name,
                format!("{} is 0 and cannot be set: {e}", path.display()),
            ),
        },
        Ok(false) => fail(
            name,
            format!(
                "{} is 0: VIP packets are dropped (set it, or manage_sysctls = true)",
                path.display()
            ),
        ),
        Err(e) => fail(name, format!("{}: {e}", path.display())),
    }
}

fn fail(name: &str, detail: String) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail,
    }
}

/// Logs checks whose result changed since `before` (all failures at first).
pub fn log_changes(before: &[Check], now: &[Check]) {
    for c in now {
        let was = before.iter().find(|b| b.name == c.name);
        match (was.map(|b| b.ok), c.ok) {
            (Some(true) | None, false) => {
                error!(check = %c.name, detail = %c.detail, "node check failing: forwarding is impaired")
            }
            (Some(false), true) => info!(check = %c.name, "node check passes again"),
            _ => {}
        }
    }
}
