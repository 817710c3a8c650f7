// The git commit a binary was built from, for its `--version`. Included with `include!` by the
// build scripts of `sluice-lb` and `sluice-gateway`, so both binaries follow one rule.
//
// `git_commit()` prints the cargo instructions itself: `SLUICE_GIT_COMMIT` for the compiler,
// and what must make the build script run again. It never fails the build: outside a git
// checkout (a source tarball, a vendored copy) or without git, the commit is `SLUICE_GIT_COMMIT`
// from the environment if set, else "unknown".

/// Sets `SLUICE_GIT_COMMIT` for the crate being built: the environment's `SLUICE_GIT_COMMIT` if
/// set and not empty, else `git rev-parse --short HEAD` in `dir`, else "unknown".
fn git_commit(dir: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=SLUICE_GIT_COMMIT");
    let commit = match std::env::var("SLUICE_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            watch_git_head(dir);
            git(dir, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=SLUICE_GIT_COMMIT={commit}");
}

/// One line of git's output in `dir`, or None if git is missing or fails.
fn git(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

/// Makes cargo run the build script again when HEAD moves: HEAD itself (a checkout, or a
/// commit on a detached HEAD), the branch it names (a commit), and packed-refs (`git gc`,
/// `git pack-refs`). A branch that is only packed has no file of its own yet; its directory
/// is watched instead, so the file a later commit creates there is noticed. Only paths that
/// exist are given: cargo runs a build script on every build while a watched path is missing.
/// `--git-path` resolves each path in linked worktrees too.
fn watch_git_head(dir: &std::path::Path) {
    let watch = |path: std::path::PathBuf| {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    };
    let git_path = |name: &str| git(dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    if let Some(head) = git_path("HEAD") {
        watch(head);
    }
    if let Some(packed) = git_path("packed-refs") {
        watch(packed);
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]).and_then(|r| git_path(&r)) {
        if branch.exists() {
            watch(branch);
        } else if let Some(parent) = branch.parent() {
            watch(parent.to_path_buf());
        }
    }
}
