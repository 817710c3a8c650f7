//! How a daemon is told to reload or stop: SIGHUP, or its config file changing on disk,
//! reloads; SIGTERM and SIGINT stop. Both binaries run the same loop around this.

use std::{path::Path, time::SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A file's modification time and size, to notice that it changed.
pub type Stamp = Option<(SystemTime, u64)>;

/// The stamp of `path` now (`None` if it cannot be read).
pub fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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
}
