//! What a test run leaves behind. Every harness must remove what it creates, whether its
//! test passes, fails or panics; this check holds the whole suite to that instead of
//! trusting each harness.
//!
//! - **Files:** the run gets a temporary directory of its own, which `TMPDIR` names for
//!   every process under it (Rust's `temp_dir`, Python's `tempfile`, `mktemp` and Chromium
//!   all follow it). Whatever is still in it at the end was left behind.
//! - **Processes:** this process becomes the subreaper of everything it starts, so a daemon
//!   that outlives the test that started it is reparented here, not to init, and is found
//!   as a child at the end.
//! - **Namespaces, root-namespace interfaces and bpffs pins:** compared with a snapshot
//!   taken before the run.
//!
//! What is found is reported and removed (processes killed, the directory deleted); the
//! namespaces, interfaces and pins are only reported, since the harness's own sweep
//! removes those of dead runs and they may hold a failed run's evidence. Namespaces and
//! interfaces made during the run are taken for the run's, which holds on a machine that
//! runs nothing else meanwhile (CI's); elsewhere `SLUICE_LEFTOVERS=warn` only reports.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

/// Prefix of each run's temporary directory under the system's.
const RUN_DIR_PREFIX: &str = "sluice-run-";

/// The state before a run, and the run's temporary directory.
pub struct Audit {
    dir: PathBuf,
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    pins: BTreeSet<String>,
}

impl Audit {
    /// Takes the snapshot, makes this process the subreaper of what it starts and gives the
    /// run its temporary directory (`TMPDIR` for every process started from here on).
    /// Directories of earlier runs whose process is gone are removed first.
    pub fn start() -> Result<Audit> {
        let system = std::env::temp_dir();
        sweep_dead_run_dirs(&system);
        let dir = system.join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::env::set_var("TMPDIR", &dir);
        // SAFETY: prctl with integer arguments; it only sets a flag on this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Ok(Audit {
            dir,
            netns: netns(),
            links: links(),
            pins: pins(),
        })
    }

    /// What the run left behind, one line each; processes are killed and the temporary
    /// directory removed. Call once every process this one started itself has been waited
    /// for.
    pub fn finish(self) -> Vec<String> {
        let mut found = Vec::new();
        found.extend(kill_orphans());
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                found.push(format!("file {}", e.path().display()));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        for ns in netns().difference(&self.netns) {
            found.push(format!("network namespace {ns}"));
        }
        for link in links().difference(&self.links) {
            found.push(format!("interface {link} in the root namespace"));
        }
        for pin in pins().difference(&self.pins) {
            found.push(format!("bpffs pin /sys/fs/bpf/{pin}"));
        }
        found
    }
}

/// Reaps the orphans that exit under this subreaper while a run goes on, so that a test
/// waiting for a daemon it killed to disappear does not wait on a zombie. The process
/// `keep` (the one whose `Child` waits for it) is never reaped here.
pub struct Reaper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Reaper {
    /// Starts reaping every exited child but `keep`.
    pub fn start(keep: u32) -> Reaper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: a zeroed siginfo_t is a valid out-parameter.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // WNOWAIT: look without reaping, so that `keep`'s status stays for its
                // owner; WNOHANG: polled, so that stopping never waits on a child.
                // SAFETY: waitid with a valid out-pointer.
                let r = unsafe {
                    libc::waitid(
                        libc::P_ALL,
                        0,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
                    )
                };
                // SAFETY: waitid filled the siginfo (zero pid: nobody has exited).
                let exited = unsafe { info.si_pid() };
                if r != 0 || exited == 0 || exited as u32 == keep {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                // SAFETY: reaps one given pid, an orphan no `Child` owns.
                unsafe { libc::waitpid(exited, std::ptr::null_mut(), 0) };
            }
        });
        Reaper { stop, thread }
    }

    /// Stops reaping; call once `keep` has been waited for.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// `PF_EXITING` in `/proc/PID/stat`'s flags: the process has begun to exit (its memory may
/// already be gone, so its command line reads empty) and is only closing what it held.
const PF_EXITING: u64 = 0x4;

/// A child of this process, as `/proc/PID/stat` shows it.
#[derive(Debug)]
struct Orphan {
    pid: i32,
    /// The kernel's name for it (up to 15 bytes), readable until it is reaped, unlike the
    /// command line, which empties once it starts to exit.
    comm: String,
    state: char,
    flags: u64,
}

impl Orphan {
    /// Running: neither a zombie nor on its way to being one. Only a running child was
    /// left behind; one that is exiting has ended and only needs reaping.
    fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x') && self.flags & PF_EXITING == 0
    }
}

/// Reads `/proc/PID/stat`: "pid (comm) state ppid pgrp session tty tpgid flags ...". The
/// name may hold spaces and parentheses, so the fields are those after its last ')'.
fn stat(pid: i32) -> Option<(Orphan, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, after) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let flags = fields.get(6)?.parse().ok()?;
    Some((
        Orphan {
            pid,
            comm,
            state,
            flags,
        },
        ppid,
    ))
}

/// Children of this process.
fn children() -> Vec<Orphan> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|(_, ppid)| *ppid == me)
        .map(|(child, _)| child)
        .collect()
}

/// How a running child is reported: its name, state and command line (read before it is
/// killed; empty for a process that has wiped it).
fn describe(child: &Orphan) -> String {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.pid))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    format!("[{}, state {}] {cmdline}", child.comm, child.state)
}

/// How long an exiting child may take to finish before it is reported as stuck, so that
/// the check never waits forever on a process the kernel holds.
const EXIT_GRACE: Duration = Duration::from_secs(30);

/// Waits for `pid` (a child) to end and reaps it: false if it has not ended in `within`.
fn reap(pid: i32, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        // SAFETY: reaps one child of this process, without blocking.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if r != 0 {
            // Reaped, or no longer ours to wait for.
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills and reaps every child still running (what was started under this process and
/// outlived its parent), and reaps those that had ended or were ending; returns the ones
/// that were running, and any that would not end, one line each. A killed process's own
/// children are reparented here in turn, so this repeats until none is left.
fn kill_orphans() -> Vec<String> {
    let mut found = Vec::new();
    // Given up on: not ended EXIT_GRACE after SIGKILL (held in the kernel); waited for once.
    let mut stuck = std::collections::HashSet::new();
    for _ in 0..20 {
        let kids: Vec<Orphan> = children()
            .into_iter()
            .filter(|c| !stuck.contains(&c.pid))
            .collect();
        if kids.is_empty() {
            break;
        }
        for child in kids {
            // Read again after the command line: one that ended between the two reads (its
            // command line then reads empty) was not left running.
            let what = child.running().then(|| describe(&child));
            let running = what.is_some() && stat(child.pid).is_some_and(|(now, _)| now.running());
            if let (true, Some(what)) = (running, what) {
                found.push(format!("process {} still running: {what}", child.pid));
            }
            // Killed whatever it reads as: a process exiting (its main thread gone while
            // others run) must not outlive the run either; a zombie ignores it.
            // SAFETY: a child of this process.
            unsafe { libc::kill(child.pid, libc::SIGKILL) };
            if !reap(child.pid, EXIT_GRACE) {
                stuck.insert(child.pid);
                found.push(format!(
                    "process {} [{}] had not ended {EXIT_GRACE:?} after SIGKILL",
                    child.pid, child.comm,
                ));
            }
        }
    }
    found
}

/// Removes the temporary directories of runs whose process is gone.
fn sweep_dead_run_dirs(system: &Path) {
    let Ok(entries) = std::fs::read_dir(system) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(RUN_DIR_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn netns() -> BTreeSet<String> {
    lines(&["netns", "list"])
        .into_iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn links() -> BTreeSet<String> {
    // "3: name@peer: <...": the name, without the peer.
    lines(&["-o", "link", "show"])
        .into_iter()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

fn pins() -> BTreeSet<String> {
    std::fs::read_dir("/sys/fs/bpf")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn lines(ip_args: &[&str]) -> Vec<String> {
    Command::new("ip")
        .args(ip_args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test's `kill_orphans` would take the other's children for its own.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A daemon that outlives its parent is found, reported with its command line, and
    /// killed; a child that exited is reaped and not reported.
    #[test]
    fn an_orphan_left_running_is_found_and_killed() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `Audit::start`.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        // The shell exits at once, so its background sleep is reparented to this process.
        let out = Command::new("sh")
            .args(["-c", "sleep 321 </dev/null >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("sh runs");
        assert!(out.status.success());
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the sleep's pid");
        // Until it has exec'd, the child still reads as the shell.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .as_deref()
            != Some(b"sleep\x00321\x00".as_slice())
        {
            assert!(std::time::Instant::now() < deadline, "sleep never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let found = kill_orphans();
        assert!(
            // The state is S once it sleeps, R for the moment before.
            found.iter().any(|f| f
                .starts_with(&format!("process {pid} still running: [sleep, state "))
                && f.ends_with("] sleep 321")),
            "the orphaned sleep is found: {found:?}"
        );
        assert!(children().is_empty(), "nothing is left: {:?}", children());
    }

    /// A child that has ended (a zombie, whose command line reads empty) or is ending is
    /// not running: it is reaped and not reported.
    #[test]
    fn a_child_that_has_ended_is_reaped_not_reported() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `Audit::start`.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        // The shell exits at once, so its short background sleep ends as an orphan of this
        // process (one that ended first would be the shell's to reap).
        let out = Command::new("sh")
            .args(["-c", "sleep 0.5 </dev/null >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("sh runs");
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the pid of sleep");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !children().iter().any(|c| c.pid == pid && c.state == 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "the sleep never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let exiting = Orphan {
            pid,
            comm: "sleep".into(),
            state: 'R',
            flags: PF_EXITING,
        };
        assert!(!exiting.running(), "a process with PF_EXITING is ending");
        let found = kill_orphans();
        assert!(
            found.is_empty(),
            "an ended child is not reported: {found:?}"
        );
        assert!(!children().iter().any(|c| c.pid == pid), "and it is reaped");
    }
}
