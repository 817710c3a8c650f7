//! A scratch directory for a test, removed when dropped: whether the test passes, fails or
//! panics, nothing is left in the temporary directory.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new empty directory, unique to this process and call.
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!(
            "sluice-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }

    /// A path inside, as a string for configs.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
