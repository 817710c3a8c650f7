//! Attaching `sluice_lb` to interfaces through pinned bpf_links, and removing everything.
//!
//! Links are pinned under `<pin_dir>/links/<interface>`, maps under `<pin_dir>/maps`. Pinned
//! state outlives the agent, so forwarding goes on if it dies (fail static). A later agent
//! finds the pinned link and swaps its newly loaded program in with `bpf_link_update`: one
//! atomic replacement, with the pinned maps (and so the flow table) kept.

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    Xdp, XdpMode as AyaMode,
};
use sluice_common::programs;
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    config::XdpMode,
    dataplane::{DataPlane, DataPlaneError},
};

/// Attach or detach failures.
#[derive(Debug, Error)]
pub enum AttachError {
    /// The data plane refused.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    /// An interface does not exist.
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// The kernel refused the attachment or the link operation.
    #[error("interface {iface}: {reason}")]
    Attach {
        /// Interface.
        iface: String,
        /// Why.
        reason: String,
    },
    /// Removing pins failed.
    #[error("{}: {reason}", path.display())]
    Fs {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn link_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join("links").join(iface)
}

/// The ifindex of `iface`.
pub fn ifindex(iface: &str) -> Result<u32, AttachError> {
    let name = std::ffi::CString::new(iface).map_err(|_| AttachError::NoInterface(iface.into()))?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(AttachError::NoInterface(iface.into()));
    }
    Ok(i)
}

/// Attaches `sluice_lb` to `iface`, or swaps it into the link a previous agent pinned.
/// Returns true if an existing link was adopted.
pub fn attach(
    dp: &mut DataPlane,
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
) -> Result<bool, AttachError> {
    let index = ifindex(iface)?;
    dp.add_tx_port(index)?;
    // Frames handed to the kernel (neighbour not yet resolved) carry our own tunnel address
    // as their source; without accept_local the kernel drops them as martians.
    let knob = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    if let Err(e) = std::fs::write(&knob, "1") {
        warn!(iface, error = %e, "cannot set accept_local; unresolved next hops will drop until resolved");
    }
    let prog = dp.program(programs::LB)?;
    pin_link(prog, &link_path(pin_dir, iface), iface, mode)
}

/// Puts `prog` on `iface` through the link pinned at `path`: swapped into an existing pinned
/// link with `bpf_link_update` (returns true), or attached — native first when `mode` is
/// auto, generic as the fallback — and pinned (returns false).
fn pin_link(prog: &mut Xdp, path: &Path, iface: &str, mode: XdpMode) -> Result<bool, AttachError> {
    let fail = |reason: String| AttachError::Attach {
        iface: iface.into(),
        reason,
    };
    if path.exists() {
        let pinned = PinnedLink::from_pin(path).map_err(|e| fail(e.to_string()))?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = fd_link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| fail(e.to_string()))?;
        prog.attach_to_link(xdp_link)
            .map_err(|e| fail(format!("replacing the program in the pinned link: {e}")))?;
        info!(
            iface,
            "adopted the pinned XDP link, program replaced atomically"
        );
        return Ok(true);
    }
    let modes: &[AyaMode] = match mode {
        XdpMode::Auto => &[AyaMode::Driver, AyaMode::Skb],
        XdpMode::Native => &[AyaMode::Driver],
        XdpMode::Generic => &[AyaMode::Skb],
    };
    let mut last = String::new();
    for m in modes {
        match prog.attach(iface, *m) {
            Ok(id) => {
                if *m == AyaMode::Skb && mode == XdpMode::Auto {
                    warn!(iface, error = %last, "native XDP refused; attached in generic mode");
                }
                let link = prog.take_link(id).map_err(|e| fail(e.to_string()))?;
                let fd_link: FdLink = link
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| fail(e.to_string()))?;
                let dir = path.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(dir).map_err(|e| AttachError::Fs {
                    path: dir.to_owned(),
                    reason: e.to_string(),
                })?;
                fd_link
                    .pin(path)
                    .map_err(|e| fail(format!("pinning the link: {e}")))?;
                info!(iface, mode = ?m, "attached");
                return Ok(false);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(fail(last))
}

/// Attaches `sluice_decap` to `iface` (gateway nodes), accepting tunnels addressed to
/// `addrs`; with no address it passes every frame (what a veth peer needs so that frames
/// sent to it with XDP_TX or XDP_REDIRECT are delivered). Pinned like the forwarder.
pub fn attach_decap(
    dp: &mut DataPlane,
    pin_dir: &Path,
    iface: &str,
    addrs: &[std::net::IpAddr],
    mode: XdpMode,
) -> Result<(), AttachError> {
    ifindex(iface)?;
    for a in addrs {
        dp.add_decap_addr(*a)?;
    }
    let prog = dp.program(programs::DECAP)?;
    pin_link(
        prog,
        &pin_dir.join("links").join(format!("decap-{iface}")),
        iface,
        mode,
    )?;
    info!(iface, addresses = addrs.len(), "sluice_decap in place");
    Ok(())
}

/// Removes every link and map pinned under `pin_dir`. Detaching a link (its last reference
/// gone) takes the program off the interface.
pub fn detach(pin_dir: &Path) -> Result<usize, AttachError> {
    let mut removed = 0;
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| AttachError::Fs {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            removed += 1;
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// bpffs magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `pin_dir` lives on a bpffs, mounting one on `/sys/fs/bpf` when that is where
/// it should be and nothing is mounted there yet.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), AttachError> {
    let on_bpffs = |p: &Path| -> bool {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: statfs writes into the zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and out pointer.
        unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
    };
    // The nearest existing ancestor tells which filesystem the directory would be on.
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if on_bpffs(&probe) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !on_bpffs(root) {
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: static C strings; mounting a fresh bpffs instance.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(AttachError::Fs {
                path: root.to_owned(),
                reason: format!("mounting bpffs: {}", std::io::Error::last_os_error()),
            });
        }
        info!("mounted bpffs on /sys/fs/bpf");
        return Ok(());
    }
    Err(AttachError::Fs {
        path: pin_dir.to_owned(),
        reason: "not on a bpf filesystem (mount one with `mount -t bpf bpf <dir>`)".into(),
    })
}
