//! A real CPU limit on one process, for the tests, the bench and the demo: a cgroup of its
//! own with a CPU quota, on v1's cpu controller where the host keeps it there (hybrid
//! hosts), otherwise on v2 (`cpu.max`). Dropped, it moves the process back and removes
//! the cgroup.

use std::path::{Path, PathBuf};

/// One process under a CPU quota.
pub struct CpuLimit {
    dir: PathBuf,
    v1: bool,
    pid: u32,
}

impl CpuLimit {
    /// Puts `pid` in a new cgroup limited to `cpus` CPUs.
    pub fn new(pid: u32, cpus: f64) -> CpuLimit {
        let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists();
        let root = if v1 {
            "/sys/fs/cgroup/cpu"
        } else {
            "/sys/fs/cgroup"
        };
        if !v1 {
            // The cpu controller must be on for the root's children.
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
        }
        let dir = Path::new(root).join(format!("sluice-{}-{pid}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a cgroup (needs root)");
        let limit = CpuLimit { dir, v1, pid };
        limit.set(Some(cpus));
        std::fs::write(limit.dir.join("cgroup.procs"), pid.to_string()).expect("into the cgroup");
        limit
    }

    /// Changes the limit to `cpus` CPUs, or lifts it.
    pub fn set(&self, cpus: Option<f64>) {
        if self.v1 {
            let quota = cpus.map_or(-1, |c| (c * 100_000.0) as i64);
            std::fs::write(self.dir.join("cpu.cfs_period_us"), "100000").expect("period");
            std::fs::write(self.dir.join("cpu.cfs_quota_us"), quota.to_string()).expect("quota");
        } else {
            let max = cpus.map_or("max 100000".to_string(), |c| {
                format!("{} 100000", (c * 100_000.0) as u64)
            });
            std::fs::write(self.dir.join("cpu.max"), max).expect("cpu.max");
        }
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        if let Some(root) = self.dir.parent() {
            let _ = std::fs::write(root.join("cgroup.procs"), self.pid.to_string());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
