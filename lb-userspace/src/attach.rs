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

/// The interface the XDP link pinned at `path` is attached to: 0 once that interface is
/// gone (the kernel detaches the link when its device is unregistered, and the pin alone
/// then holds nothing on any interface).
pub fn link_ifindex(path: &Path) -> std::io::Result<u32> {
    use std::os::{
        fd::{AsRawFd, FromRawFd},
        unix::ffi::OsStrExt,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit, so zero: the kernel refuses a non-zero byte past the fields it reads.
        pad: u32,
    }
    /// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// The head of `struct bpf_link_info`: its union is aligned to 8, and the XDP member
    /// starts with the ifindex.
    #[repr(C, align(8))]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        /// Up to the union's alignment: it starts at byte 16.
        pad: u32,
        xdp_ifindex: u32,
        rest: [u32; 11],
    }
    const _: () = assert!(std::mem::offset_of!(LinkInfo, xdp_ifindex) == 16);
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let get = ObjGet {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    /// The `bpf` syscall `cmd` with `attr`, its result or the error.
    ///
    /// # Safety
    /// `attr` is the whole `bpf_attr` of `cmd`, every byte initialised, and what its
    /// pointers name lives across the call.
    unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i64> {
        // SAFETY: as the caller promises.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *const T,
                std::mem::size_of::<T>(),
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
    // SAFETY: a whole bpf_attr for the command; `name` outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &get) }?;
    // SAFETY: a descriptor the syscall just returned, owned (and closed) here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        pad: 0,
        xdp_ifindex: 0,
        rest: [0; 11],
    };
    let by_fd = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: a whole bpf_attr naming a buffer of the length given, which lives across the
    // call.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &by_fd) }?;
    Ok(info.xdp_ifindex)
}

/// Whether `sluice_lb` is on `iface` through the link pinned for it under `pin_dir`: `Err`
/// says why not (no pin, no such interface, or a pin whose link lost its interface when
/// the interface was removed, maybe to be made again under the same name).
pub fn attached(pin_dir: &Path, iface: &str) -> Result<(), String> {
    let path = link_path(pin_dir, iface);
    if !path.exists() {
        return Err(format!(
            "{} is gone: the program is not attached",
            path.display()
        ));
    }
    let index = ifindex(iface).map_err(|e| e.to_string())?;
    match link_ifindex(&path) {
        Ok(i) if i == index => Ok(()),
        Ok(0) => Err(format!(
            "the link pinned at {} lost its interface (removed, and {iface} is another one now)",
            path.display()
        )),
        Ok(i) => Err(format!(
            "the link pinned at {} is on ifindex {i}, not {iface} ({index})",
            path.display()
        )),
        Err(e) => Err(format!(
            "reading the link pinned at {}: {e}",
            path.display()
        )),
    }
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
    // accept_local (frames handed to the kernel carry our own tunnel address as their
    // source) is the node checks' to set, and only with `manage_sysctls`: an agent told not
    // to manage sysctls must not change one.
    let prog = dp.program(programs::LB)?;
    let path = link_path(pin_dir, iface);
    // A link whose interface was removed (and maybe made again under the same name) holds
    // nothing: it cannot be updated, so it goes, and the program is attached anew.
    if path.exists() && link_ifindex(&path).is_ok_and(|i| i != index) {
        warn!(iface, "the pinned link lost its interface; attaching anew");
        std::fs::remove_file(&path).map_err(|e| AttachError::Fs {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    pin_link(prog, &path, iface, mode)
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
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(|e| fail(format!("replacing the program in the pinned link: {e}")))?;
        // The program keeps the link it was given: taken back and closed here, so the pin
        // is the link's only holder and removing it detaches (as for a new link below).
        let link = prog.take_link(id).map_err(|e| fail(e.to_string()))?;
        let _: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| fail(e.to_string()))?;
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
/// sent to it with XDP_TX or XDP_REDIRECT are delivered). Tunnels are taken only from outer
/// sources in `from` (none: from any, with a warning), which replaces the node's list.
/// Pinned like the forwarder.
pub fn attach_decap(
    dp: &mut DataPlane,
    pin_dir: &Path,
    iface: &str,
    addrs: &[std::net::IpAddr],
    from: &[ipnet::IpNet],
    mode: XdpMode,
) -> Result<(), AttachError> {
    ifindex(iface)?;
    for a in addrs {
        dp.add_decap_addr(*a)?;
    }
    if from.is_empty() && !addrs.is_empty() {
        tracing::warn!(
            iface,
            "tunnels are taken from any outer source: anyone who can reach a tunnel address \
             can send packets with any client address; name the LB nodes' tunnel sources \
             with --from"
        );
    }
    // As the data plane sees them: an IPv4-mapped prefix is the IPv4 one.
    let from: Vec<ipnet::IpNet> = from
        .iter()
        .map(|p| crate::shield::bounds::unmapped(*p))
        .collect();
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let tunnels = addrs.iter().any(|a| a.is_ipv4() == v4);
        let sources = from.iter().any(|p| matches!(p, ipnet::IpNet::V4(_)) == v4);
        if tunnels && !sources && !from.is_empty() {
            tracing::warn!(
                iface,
                family,
                "a tunnel address of this family, and no --from prefix of it: its tunnels are \
                 all dropped (refused_source)"
            );
        }
    }
    let any = vec![
        ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    dp.set_decap_sources(if from.is_empty() { &any } else { &from })?;
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
