//! The deployment files: the systemd units of `deploy/systemd/` as `systemd-analyze`
//! judges them, and the Debian packages `cargo xtask package` builds, taken apart and
//! installed into a throwaway root.
//!
//! The package test packages the dev build (`--profile dev`), which `cargo xtask test` has
//! just built: a release build of both binaries takes minutes on two cores, and what is
//! checked here (the files, their modes, the conffiles, the maintainer scripts, the units
//! against the installed binaries, the man pages, the completions, the version) does not
//! depend on the optimization level. Everything is written under a scratch directory that
//! is removed at the end.
//!
//! Under `cargo xtask test` the build `cargo xtask package` starts finds nothing to do, and the
//! test takes about 13 s. Run alone after a plain `cargo build`, it rebuilds ring and what
//! depends on it once (about 45 s): cargo gives a test the `CARGO_PKG_*` variables of its
//! crate, as `cargo run` gives them to xtask, and ring's build script is rerun when they
//! change.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sluice_e2e::{bin, privileged, scratch::Scratch};

/// The workspace root (xtask sits in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Whether `tool` can be run; outside CI a missing tool skips the test with a message, in CI
/// it fails it.
fn have(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (cargo xtask setup installs it)"
        );
        eprintln!("skipping: {tool} is missing (cargo xtask setup installs it)");
    }
    ok
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

/// Runs `cmd`; its stdout, or a panic with its output.
fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `systemd-analyze verify` on `units`, which must pass without a word: it exits 0 on unknown
/// keys and unparsable values, and only says so. `MANPATH` is where the `man:` pages of
/// `Documentation=` must be found; `root` is passed as `--root`.
fn verify_units(units: &[&str], manpath: &str, root: Option<&Path>) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").env("MANPATH", manpath);
    if let Some(r) = root {
        cmd.arg(format!("--root={}", r.display()));
    }
    let out = run(cmd.args(units));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {units:?} ({}):\n{said}",
        out.status
    );
}

/// `systemd-analyze security` scores a unit's exposure from 0 (locked down) to 10; each unit
/// must stay at or below `max` (in tenths), so that no hardening line goes missing unnoticed.
/// sluice-lb scores 2.6 (root, with CAP_BPF, CAP_NET_ADMIN and CAP_SETPCAP), sluice-gateway 1.5, with
/// systemd 252; the bounds leave room for other versions' weighting.
fn exposure_at_most(unit: &str, max: u32, root: Option<&Path>) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={max}"));
    if let Some(r) = root {
        cmd.arg(format!("--root={}", r.display()));
    }
    let out = run(cmd.arg(unit));
    assert!(
        out.status.success(),
        "{unit} is more exposed than {}.{}:\n{}{}",
        max / 10,
        max % 10,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The units as they are in `deploy/systemd/`, with only the binary's path in `ExecStart`
/// changed to the one just built, verified against this machine's systemd, their man pages
/// written by the binaries themselves.
#[test]
fn units_verify() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let scratch = Scratch::new("units");
    let mut manpath = Vec::new();
    let mut units = Vec::new();
    for (unit, binary, config) in [
        ("sluice-lb.service", "sluice-lb", "lb.toml"),
        ("sluice-gateway.service", "sluice-gateway", "gateway.toml"),
    ] {
        let built = bin(binary);
        let docs = scratch.0.join(binary);
        stdout_of(Command::new(&built).arg("__docs").arg(&docs));
        manpath.push(docs.join("man").display().to_string());

        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit))
            .expect("reading the unit");
        let installed = format!("ExecStart=/usr/bin/{binary} run --config /etc/sluice/{config}\n");
        assert!(
            text.contains(&installed),
            "{unit}: expected `{}`",
            installed.trim()
        );
        let copy = scratch.0.join(unit);
        std::fs::write(
            &copy,
            text.replace(
                &installed,
                &format!(
                    "ExecStart={} run --config /etc/sluice/{config}\n",
                    built.display()
                ),
            ),
        )
        .expect("writing the unit");
        units.push(copy.display().to_string());
    }
    let units: Vec<&str> = units.iter().map(String::as_str).collect();
    verify_units(&units, &manpath.join(":"), None);
    exposure_at_most(units[0], 30, None);
    exposure_at_most(units[1], 20, None);
}

/// `dpkg-deb -c`: the paths in a package with their modes (`-rw-r--r--`).
fn listing(deb: &Path) -> Vec<(String, String)> {
    stdout_of(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| {
            let mode = l.split_whitespace().next()?;
            let path = l.split_whitespace().last()?.strip_prefix('.')?;
            Some((path.to_string(), mode.to_string()))
        })
        .collect()
}

/// A control field of a package (`dpkg-deb -f`).
fn field(deb: &Path, name: &str) -> String {
    stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// What the package test expects of one package.
struct Expected {
    name: &'static str,
    binary: &'static str,
    /// The config file and its mode in the package.
    config: (&'static str, &'static str),
    /// Subcommands that must have a man page of their own.
    commands: &'static [&'static str],
    /// Extra files.
    also: &'static [&'static str],
    /// Words its Depends and Recommends must have.
    depends: &'static [&'static str],
    recommends: &'static str,
}

const PACKAGES: [Expected; 2] = [
    Expected {
        name: "sluice-lb",
        binary: "sluice-lb",
        config: ("/etc/sluice/lb.toml", "-rw-r--r--"),
        commands: &[
            "run",
            "check",
            "status",
            "drain",
            "block",
            "maintenance",
            "detach",
        ],
        also: &[],
        depends: &["libc6"],
        recommends: "bird2",
    },
    Expected {
        name: "sluice-gateway",
        binary: "sluice-gateway",
        config: ("/etc/sluice/gateway.toml", "-rw-r-----"),
        commands: &["run", "check"],
        also: &["/usr/lib/sysusers.d/sluice-gateway.conf"],
        depends: &["libc6", "systemd"],
        recommends: "",
    },
];

/// `cargo xtask package --profile dev`, then each package's contents and control data, then
/// both installed by dpkg into a throwaway root (`--root`, maintainer scripts run with
/// `DPKG_ROOT`, as for a new system being built): the config's owner and mode from the
/// postinst, the installed units verified there against the installed binaries and man pages,
/// the binaries' `--version` and `check` of the example configs, and a purge.
#[test]
fn packages() {
    if !privileged()
        || !have("cargo", &["deb", "--version"])
        || !have("dpkg-deb", &["--version"])
        || !have("systemd-analyze", &["--version"])
    {
        return;
    }
    let scratch = Scratch::new("packages");
    let out = scratch.0.join("debs");
    let printed = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["package", "--profile", "dev", "--out"])
            .arg(&out)
            .current_dir(root()),
    );
    let debs: Vec<PathBuf> = printed.lines().map(PathBuf::from).collect();
    assert_eq!(debs.len(), 2, "two packages: {printed}");

    for (deb, want) in debs.iter().zip(&PACKAGES) {
        assert!(deb.starts_with(&out) && deb.exists(), "{}", deb.display());
        assert_eq!(field(deb, "Package"), want.name);
        assert_eq!(field(deb, "Section"), "net");
        assert_eq!(field(deb, "Priority"), "optional");
        assert!(!field(deb, "Maintainer").is_empty());
        let depends = field(deb, "Depends");
        for d in want.depends {
            assert!(depends.contains(d), "{}: Depends: {depends}", want.name);
        }
        assert_eq!(field(deb, "Recommends"), want.recommends);

        let files = listing(deb);
        let mode = |path: &str| -> &str {
            files
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, m)| m.as_str())
                .unwrap_or_else(|| panic!("{}: no {path} in {files:?}", want.name))
        };
        let b = want.binary;
        assert_eq!(mode(&format!("/usr/bin/{b}")), "-rwxr-xr-x");
        assert_eq!(mode(want.config.0), want.config.1);
        for path in [
            format!("/usr/lib/systemd/system/{b}.service"),
            format!("/usr/share/man/man1/{b}.1.gz"),
            format!("/usr/share/bash-completion/completions/{b}"),
            format!("/usr/share/zsh/vendor-completions/_{b}"),
            format!("/usr/share/fish/vendor_completions.d/{b}.fish"),
        ]
        .into_iter()
        .chain(
            want.commands
                .iter()
                .map(|c| format!("/usr/share/man/man1/{b}-{c}.1.gz")),
        )
        .chain(want.also.iter().map(|p| p.to_string()))
        {
            assert_eq!(mode(&path), "-rw-r--r--", "{path}");
        }
        // The man pages and completions leave the packaging helper out.
        assert!(
            !files.iter().any(|(p, _)| p.contains("__docs")),
            "{files:?}"
        );

        let control = scratch.0.join(format!("control-{b}"));
        stdout_of(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
        let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
        assert_eq!(conffiles.trim(), want.config.0, "{b}: conffiles");
        for script in ["postinst", "prerm", "postrm"] {
            let path = control.join(script);
            let text =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{b}: {script}: {e}"));
            assert!(
                !text.contains("#DEBHELPER#"),
                "{b}: {script} kept the marker"
            );
            stdout_of(Command::new("sh").arg("-n").arg(&path));
        }
        let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
        assert!(postinst.contains("daemon-reload"), "{b}: {postinst}");
        // Installed, not enabled or started: an LB node or a gateway needs its config first.
        // (The enabling part only keeps an administrator's choice across upgrades.)
        assert!(
            postinst.contains("if deb-systemd-helper debian-installed")
                && !postinst.contains("deb-systemd-invoke start"),
            "{b}: {postinst}"
        );
    }

    let installed = scratch.0.join("root");
    install(&installed, &debs);
    for (deb, want) in debs.iter().zip(&PACKAGES) {
        let b = want.binary;
        let exe = installed.join("usr/bin").join(b);
        let version = stdout_of(Command::new(&exe).arg("--version"));
        let upstream = field(deb, "Version");
        let upstream = upstream
            .rsplit_once('-')
            .map_or(upstream.as_str(), |(v, _)| v);
        check_version(version.trim(), b, upstream);
        stdout_of(
            Command::new(&exe)
                .args(["check", "--config"])
                .arg(installed.join(want.config.0.trim_start_matches('/'))),
        );
        check_man_page(&installed, b, &version);
        check_completions(&installed, b);
    }
    // The gateway's config: root:sluice 0640 from the postinst's statoverride, with the
    // group the sysusers.d file made in that root.
    let group = std::fs::read_to_string(installed.join("etc/group")).expect("etc/group");
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("sluice:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sluice group in the root: {group}"));
    let meta = std::fs::metadata(installed.join("etc/sluice/gateway.toml")).expect("config");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!((meta.uid(), meta.gid()), (0, gid));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    }
    // The units as installed, against the installed binaries and man pages. Verifying loads
    // the targets units are ordered against and runs `ExecReload`'s /bin/kill: both from
    // this machine, copied into the root (a real system has them).
    let units = installed.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd's units") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "target") {
            std::fs::copy(&path, units.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::create_dir_all(installed.join("usr/bin")).expect("usr/bin");
    std::fs::copy("/usr/bin/kill", installed.join("usr/bin/kill")).expect("copying kill");
    std::os::unix::fs::symlink("usr/bin", installed.join("bin")).expect("merged /bin");
    let manpath = installed.join("usr/share/man").display().to_string();
    verify_units(
        &[
            "/usr/lib/systemd/system/sluice-lb.service",
            "/usr/lib/systemd/system/sluice-gateway.service",
        ],
        &manpath,
        Some(&installed),
    );
    exposure_at_most(
        "/usr/lib/systemd/system/sluice-lb.service",
        30,
        Some(&installed),
    );
    exposure_at_most(
        "/usr/lib/systemd/system/sluice-gateway.service",
        20,
        Some(&installed),
    );

    // Purged: the config, the unit and the statoverride go.
    dpkg(&installed, &["--purge", "sluice-gateway", "sluice-lb"]);
    for gone in [
        "etc/sluice/gateway.toml",
        "etc/sluice/lb.toml",
        "usr/lib/systemd/system/sluice-gateway.service",
        "usr/bin/sluice-lb",
    ] {
        assert!(!installed.join(gone).exists(), "{gone} outlived the purge");
    }
    let overrides =
        std::fs::read_to_string(installed.join("var/lib/dpkg/statoverride")).unwrap_or_default();
    assert!(overrides.trim().is_empty(), "statoverride: {overrides}");
}

/// `--version` says `<binary> <version> (<commit>)`: the package's version, and the commit
/// the build was made from, which is HEAD, or was when the test built it (others may commit
/// meanwhile), or "unknown" outside a git checkout.
fn check_version(said: &str, b: &str, version: &str) {
    let commit = said
        .strip_prefix(&format!("{b} {version} ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--version said {said:?}, not \"{b} {version} (<commit>)\""));
    let git = |args: &[&str]| run(Command::new("git").args(args).current_dir(root()));
    if !git(&["rev-parse", "--git-dir"]).status.success() {
        assert_eq!(commit, "unknown");
        return;
    }
    assert!(
        commit.len() >= 7 && commit.bytes().all(|c| c.is_ascii_hexdigit()),
        "{said}"
    );
    assert!(
        git(&["merge-base", "--is-ancestor", commit, "HEAD"])
            .status
            .success(),
        "{said}: {commit} is not HEAD or before it"
    );
}

/// Runs dpkg on the throwaway root `at`: maintainer scripts outside a chroot with
/// `DPKG_ROOT` set (the root has no shell), dependencies not checked (it has no libc6
/// package either).
fn dpkg(at: &Path, args: &[&str]) {
    stdout_of(
        Command::new("dpkg")
            .arg(format!("--root={}", at.display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args),
    );
}

/// An empty dpkg database in `at`, then both packages installed into it.
fn install(at: &Path, debs: &[PathBuf]) {
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(at.join(dir)).expect("root dirs");
    }
    std::fs::write(at.join("var/lib/dpkg/status"), "").expect("dpkg status");
    let mut args = vec!["--install"];
    args.extend(debs.iter().map(|d| d.to_str().expect("utf-8 path")));
    dpkg(at, &args);
}

/// The main man page, gunzipped: a troff man page whose title is the command and whose
/// footer carries `--version`'s text, with the sections a man page has; each subcommand's
/// page is named in it.
fn check_man_page(root: &Path, b: &str, version: &str) {
    let page = root.join(format!("usr/share/man/man1/{b}.1.gz"));
    let text = stdout_of(Command::new("gzip").arg("-dc").arg(&page));
    let version = version.trim();
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!(".TH {b} 1 ")) && l.contains(version)),
        "{b}.1: no .TH line with {version}:\n{text}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(text.contains(section), "{b}.1: no {section}");
    }
    assert!(text.contains(&format!("{}\\-run(1)", b.replace('-', "\\-"))));
    // Every line is text or a request a man page may hold: no stray control lines.
    for line in text.lines().filter(|l| l.starts_with('.')) {
        let request = line.split_whitespace().next().unwrap_or("");
        assert!(
            [".TH", ".SH", ".TP", ".PP", ".IP", ".RS", ".RE", ".ie", ".el", ".B", ".br"]
                .contains(&request),
            "{b}.1: unexpected request {line}"
        );
    }
}

/// bash's completion parses and registers for the command; zsh's and fish's are theirs.
fn check_completions(root: &Path, b: &str) {
    let bash = root.join(format!("usr/share/bash-completion/completions/{b}"));
    stdout_of(Command::new("bash").arg("-n").arg(&bash));
    let text = std::fs::read_to_string(&bash).expect("bash completion");
    assert!(
        text.lines()
            .map(str::trim)
            .any(|l| l.starts_with("complete -F ") && l.ends_with(&format!(" {b}"))),
        "{text}"
    );
    let zsh = std::fs::read_to_string(root.join(format!("usr/share/zsh/vendor-completions/_{b}")))
        .expect("zsh completion");
    assert!(zsh.starts_with(&format!("#compdef {b}")), "{zsh}");
    let fish =
        std::fs::read_to_string(root.join(format!("usr/share/fish/vendor_completions.d/{b}.fish")))
            .expect("fish completion");
    assert!(fish.contains(&format!("complete -c {b} ")), "{fish}");
    for completion in [&text, &zsh, &fish] {
        assert!(!completion.contains("__docs"));
        assert!(completion.contains("run"));
    }
}
