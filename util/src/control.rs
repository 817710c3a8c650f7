//! How a daemon is told to reload or stop: SIGHUP, or its config file changing on disk,
//! reloads; SIGTERM and SIGINT stop. Both binaries run the same loop around this.

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A file's modification time, size, status-change time and mode, to notice that it
/// changed: its contents, or only who may read it (a token file refused for its mode is
/// taken again once `chmod` mends it).
pub type Stamp = Option<(SystemTime, u64, (i64, i64), u32)>;

/// The stamp of `path` now (`None` if it cannot be read).
pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.modified().ok()?,
        m.len(),
        (m.ctime(), m.ctime_nsec()),
        m.mode(),
    ))
}

/// How often a daemon looks at its config file.
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// A config file, and the files it names that are read with it (an admin token file),
/// watched for changes that are finished: a change is reported once the files have held
/// still for one look after it (see [`WATCH_INTERVAL`]), so that a file written in place
/// (truncated, then written, as `cat >` or some editors do) is not read half-written, where
/// a prefix of it could parse as a valid config with VIPs or routes missing. A file
/// replaced by a rename is whole at once, and waits one look all the same.
#[derive(Debug, Clone)]
pub struct FileWatch {
    /// The files read with the config file, besides it.
    also: Vec<PathBuf>,
    seen: Vec<Stamp>,
    /// A change seen, and when it was first seen as it is.
    pending: Option<(Vec<Stamp>, Instant)>,
}

impl FileWatch {
    /// Watches the config file at `path`, as it is now.
    pub fn new(path: &Path) -> Self {
        FileWatch {
            also: Vec::new(),
            seen: vec![stamp(path)],
            pending: None,
        }
    }

    /// Watches `files` too, from now on, as files read with the config (a reload that read
    /// them names them here). The same list again changes nothing, and the config file's own
    /// stamp is never taken here: both stay the ones taken before the config was read, so a
    /// change made while it was read is not lost. A new list's files are stamped now.
    pub fn also(&mut self, files: Vec<PathBuf>) {
        if files != self.also {
            self.seen.truncate(1);
            self.seen.extend(files.iter().map(|f| stamp(f)));
            self.also = files;
            self.pending = None;
        }
    }

    fn stamps(&self, path: &Path) -> Vec<Stamp> {
        std::iter::once(path)
            .chain(self.also.iter().map(PathBuf::as_path))
            .map(stamp)
            .collect()
    }

    /// One look: true once the files differ from what was last read and have stayed as
    /// they are for at least [`WATCH_INTERVAL`] (looks that come late and close together,
    /// after the daemon was busy, do not count as time the files held still).
    pub fn settled_change(&mut self, path: &Path) -> bool {
        let now = self.stamps(path);
        self.look(now, Instant::now())
    }

    fn look(&mut self, now: Vec<Stamp>, at: Instant) -> bool {
        if now == self.seen {
            self.pending = None;
            return false;
        }
        match &self.pending {
            Some((pending, since)) if *pending == now => {
                if at.duration_since(*since) < WATCH_INTERVAL {
                    return false;
                }
                self.seen = now;
                self.pending = None;
                true
            }
            _ => {
                self.pending = Some((now, at));
                false
            }
        }
    }

    /// Records that the config at `path` and its files are being read now (a reload for
    /// another reason, SIGHUP).
    pub fn reading(&mut self, path: &Path) {
        self.seen = self.stamps(path);
        self.pending = None;
    }
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// SIGHUP: read the config again.
    Reload,
    /// SIGTERM or SIGINT: stop.
    Stop,
}

/// The signals a daemon answers.
pub struct ControlSignals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl ControlSignals {
    /// Installs the handlers (at start, before the first await that could miss a signal).
    pub fn new() -> std::io::Result<Self> {
        Ok(ControlSignals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's request.
    pub async fn recv(&mut self) -> Asked {
        tokio::select! {
            _ = self.hup.recv() => Asked::Reload,
            _ = self.term.recv() => Asked::Stop,
            _ = self.int.recv() => Asked::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_changes_with_the_file() {
        let path = std::env::temp_dir().join(format!("sluice-stamp-{}", std::process::id()));
        std::fs::write(&path, "a").expect("write");
        let first = stamp(&path);
        assert!(first.is_some());
        std::fs::write(&path, "ab").expect("write");
        assert_ne!(stamp(&path), first, "a new size is a change");
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(stamp(&path), None);
    }

    #[test]
    fn a_change_is_reported_once_the_file_holds_still() {
        let path = std::env::temp_dir().join(format!("sluice-watch-{}", std::process::id()));
        std::fs::write(&path, "a = 1\n").expect("write");
        let mut w = FileWatch::new(&path);
        let t0 = Instant::now();
        let at = |looks: u32| t0 + WATCH_INTERVAL * looks;
        assert!(!w.look(vec![stamp(&path)], at(1)), "unchanged");
        // Written in place, in two parts: the first look sees the half, which is never
        // reported; the whole is, once it held still for a look's interval.
        std::fs::write(&path, "a = 1\n[[b]]\n").expect("write");
        assert!(!w.look(vec![stamp(&path)], at(2)), "just changed: not yet");
        std::fs::write(&path, "a = 1\n[[b]]\nc = 2\n").expect("write");
        assert!(
            !w.look(vec![stamp(&path)], at(3)),
            "changed again since: not yet"
        );
        // Two looks close together (the daemon was busy, and missed looks came at once)
        // are no time held still.
        let soon = at(3) + WATCH_INTERVAL / 10;
        assert!(!w.look(vec![stamp(&path)], soon), "too soon: not yet");
        assert!(w.look(vec![stamp(&path)], at(4)), "held still: reported");
        assert!(!w.look(vec![stamp(&path)], at(5)), "reported once");
        // Read for another reason (SIGHUP): not reported again.
        std::fs::write(&path, "a = 2\n").expect("write");
        w.reading(&path);
        assert!(!w.look(vec![stamp(&path)], at(6)));
        assert!(!w.look(vec![stamp(&path)], at(7)));
        std::fs::remove_file(&path).expect("remove");
    }

    /// A file read with the config (a token file) is watched as the config is: its change
    /// is reported once it held still; naming the same files again after a reload keeps
    /// their stamps from before it, so a change made while it read them is not lost.
    #[test]
    fn a_file_read_with_the_config_is_watched_too() {
        let dir = std::env::temp_dir().join(format!("sluice-watch-also-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (config, token) = (dir.join("c.toml"), dir.join("token"));
        std::fs::write(&config, "a = 1\n").expect("write");
        std::fs::write(&token, "one").expect("write");
        let mut w = FileWatch::new(&config);
        w.also(vec![token.clone()]);
        assert!(!w.settled_change(&config), "unchanged");
        std::fs::write(&token, "two!").expect("write");
        let t0 = Instant::now();
        assert!(!w.look(w.stamps(&config), t0), "just changed: not yet");
        assert!(
            w.look(w.stamps(&config), t0 + WATCH_INTERVAL),
            "held still: reported"
        );
        // Changed while the reload read it: the same list again does not hide that.
        std::fs::write(&token, "three").expect("write");
        w.also(vec![token.clone()]);
        assert!(!w.look(w.stamps(&config), t0 + WATCH_INTERVAL * 2));
        assert!(
            w.look(w.stamps(&config), t0 + WATCH_INTERVAL * 3),
            "still seen"
        );
        // Another list is stamped as it is: no change to report.
        w.also(Vec::new());
        assert!(!w.look(w.stamps(&config), t0 + WATCH_INTERVAL * 4));
        assert!(!w.look(w.stamps(&config), t0 + WATCH_INTERVAL * 5));
        // Naming files never re-stamps the config file: a change made to it after it was
        // stamped and before the files were named (while it was read) is still seen.
        let mut w = FileWatch::new(&config);
        std::fs::write(&config, "a = 2, changed while read\n").expect("write");
        w.also(vec![token.clone()]);
        assert!(!w.look(w.stamps(&config), t0));
        assert!(
            w.look(w.stamps(&config), t0 + WATCH_INTERVAL),
            "the config's change"
        );
        // Its mode alone changing is a change (a token file mended with chmod).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        assert!(!w.look(w.stamps(&config), t0 + WATCH_INTERVAL * 2));
        assert!(
            w.look(w.stamps(&config), t0 + WATCH_INTERVAL * 3),
            "the mode's change"
        );
        std::fs::remove_dir_all(&dir).expect("remove");
    }
}
