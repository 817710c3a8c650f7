//! The same shape of check from an independent packet library: scapy crafts the packets and
//! dissects what the program made of them (`tests/scapy/check_dataplane.py`).

use std::{path::PathBuf, process::Command};

use crate::{lab::Lab, with_lab};

/// Debian's interpreter, which sees Debian's python3-scapy (`cargo xtask setup` installs it).
fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scapy/check_dataplane.py")
}

fn py(args: &[&str]) -> std::process::Output {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}; run `cargo xtask setup`", python()));
    assert!(
        out.status.success(),
        "scapy script {args:?} failed (is python3-scapy installed? `cargo xtask setup`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn scapy_crafted_packets_come_out_right() {
    with_lab(|lab: &mut Lab| {
        lab.vip(0, "198.51.100.1", 80, 6, 0, &[1, 2, 3]);
        lab.vip(1, "2001:db8::1", 53, 17, 0, &[5, 6, 7]);
        // Removed however the test ends.
        let scratch = sluice_e2e::scratch::Scratch::new("scapy");
        let dir = scratch.0.clone();
        let cases = dir.join("cases.json");
        let results = dir.join("results.json");
        py(&["gen", cases.to_str().expect("utf-8 path")]);
        let parsed: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&cases).expect("cases")).expect("json");
        let mut out = Vec::new();
        for case in &parsed {
            let frame = hex(case["frame"].as_str().expect("frame"));
            let r = lab.run(&frame);
            out.push(serde_json::json!({
                "name": case["name"],
                "action": r.action,
                "out": r.data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            }));
        }
        std::fs::write(&results, serde_json::to_vec(&out).expect("json")).expect("results");
        let checked = py(&[
            "check",
            cases.to_str().expect("utf-8 path"),
            results.to_str().expect("utf-8 path"),
        ]);
        eprint!("{}", String::from_utf8_lossy(&checked.stdout));
    });
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
