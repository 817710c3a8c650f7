//! Network namespaces and the commands that build them, for every privileged test: the
//! end-to-end harness, `sluice-lb`'s agent test and its packet tests.

use std::{fs::File, os::fd::AsRawFd, process::Command};

/// Whether privileged tests (root: network namespaces, XDP, BPF) can run. Outside CI they
/// are skipped with a message when not root; in CI (`CI` set) a skip is a failure.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "privileged test cannot run: not root (CI must run as root)"
    );
    eprintln!("skipping privileged test: not root");
    false
}

/// Runs a command (split on whitespace); panics with its stderr if it fails.
pub fn sh(cmd: &str) {
    let parts: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(parts[0])
        .args(&parts[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The handle of named namespace `ns` (`ip netns add`).
fn open_ns(ns: &str) -> File {
    File::open(format!("/run/netns/{ns}")).expect("netns handle")
}

/// Moves the calling thread into the namespace `file` refers to.
fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A command that runs in namespace `ns` while keeping this mount namespace (unlike
/// `ip netns exec`, which remounts /sys and would hide bpffs).
pub fn in_ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let file = open_ns(ns);
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; `file` lives in the closure until exec.
    unsafe {
        cmd.pre_exec(move || enter(&file));
    }
    cmd
}

/// Runs `f` on a thread inside named namespace `ns`.
pub fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    on_thread_in(|| enter(&open_ns(ns)).expect("setns"), f)
}

/// Runs `f` on a thread in a fresh network namespace of its own (`unshare(CLONE_NEWNET)`),
/// which has no name and disappears with the thread, whether `f` passes, fails or panics.
pub fn in_new_ns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    on_thread_in(
        || {
            // SAFETY: unshare affects only this thread, which exists for this call alone.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
        },
        f,
    )
}

/// Runs `f` on a thread of its own after `enter` has moved that thread into a namespace, so
/// the caller's thread stays where it is; a panic in `f` goes on in the caller.
fn on_thread_in<R: Send>(enter: impl FnOnce() + Send, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter();
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Kills (SIGKILL) every process in named namespace `ns` (as `ip netns pids` lists them):
/// what a run that died left running there. Deleting the namespace alone would leave them
/// running, and the namespace alive with them.
pub fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| *p > 1 && *p != me)
    {
        // SAFETY: kill has no memory-safety preconditions; the pid is in a namespace of a
        // dead run.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
