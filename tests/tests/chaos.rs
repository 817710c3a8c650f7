//! Chaos on the links: the router drops 1% of the frames on the client's link and on both
//! LB nodes' links, each way (nftables `numgen random`, as the kernel has no netem). TCP
//! retransmits, so every request must still succeed; the Maglev spread must hold; and no
//! gateway that is up may be reported down.

use std::{net::SocketAddr, time::Duration};

use sluice_e2e::{http_get_as, in_ns, in_ns_command, privileged, World, VIP};

/// The router's ports that lose packets: the client's and the LB nodes'.
const LOSSY: [&str; 3] = ["c", "l1", "l2"];

/// Adds the loss to the router: an ingress and an egress chain per lossy port.
fn lose_one_percent(w: &World) {
    let mut rules = String::from("table netdev sluice_chaos {\n");
    for dev in LOSSY {
        for hook in ["ingress", "egress"] {
            rules.push_str(&format!(
                "  chain {hook}_{dev} {{ type filter hook {hook} device \"{dev}\" priority 0; \
                 numgen random mod 100 < 1 counter drop; }}\n"
            ));
        }
    }
    rules.push_str("}\n");
    let path = std::env::temp_dir().join(format!("sluice-chaos-{}.nft", std::process::id()));
    std::fs::write(&path, rules).expect("rules file");
    let out = in_ns_command(&w.ns["r"], "nft")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("nft (cargo xtask setup installs nftables)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Frames the loss rules dropped so far.
fn dropped(w: &World) -> u64 {
    let out = in_ns_command(&w.ns["r"], "nft")
        .args(["list", "table", "netdev", "sluice_chaos"])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn one_percent_loss_on_the_links_fails_no_request_and_flaps_no_gateway() {
    if !privileged() {
        return;
    }
    // The LB nodes probe every 200 ms with a 100 ms timeout, too short for a lost SYN to be
    // sent again: one lost frame fails a probe. Five failures in a row (1 s) before a
    // gateway is called down makes a flap on a live one about one in ten million windows.
    let w = World::start_with_probe_fall(5);
    lose_one_percent(&w);
    let before: Vec<u64> = (1..=3).map(|i| w.gateway_requests(i)).collect();
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("literal");
    let total = 600;
    let failures: Vec<String> = std::thread::scope(|s| {
        let c = &w.ns["c"];
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(move || {
                    in_ns(c, || {
                        (0..total / 3)
                            .filter_map(|_| {
                                // Patient, as a client on a lossy path must be: a lost SYN
                                // is sent again after 1 s, then 3 s.
                                let from = "10.10.1.2".parse().expect("literal");
                                match http_get_as(
                                    vip,
                                    from,
                                    "/index.html",
                                    &[],
                                    Duration::from_secs(10),
                                ) {
                                    Ok((200, _)) => None,
                                    other => Some(format!("{other:?}")),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let lost = dropped(&w);
    let shares: Vec<u64> = (1..=3)
        .map(|i| w.gateway_requests(i) - before[i - 1])
        .collect();
    eprintln!("{total} requests over links losing 1%: {} failed, {lost} frames dropped, shares {shares:?}", failures.len());
    assert!(lost > 0, "the loss rules dropped nothing");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(shares.iter().sum::<u64>(), total as u64);
    let equal = total as f64 / 3.0;
    for s in &shares {
        assert!(
            (*s as f64 - equal).abs() <= 0.2 * equal,
            "spread out of bounds: {shares:?}"
        );
    }
    for i in 1..=2 {
        let log = w.log(&format!("lb{i}.log"));
        assert!(
            !log.contains("backend down"),
            "LB {i} called a live gateway down:\n{log}"
        );
        let status = w.lb_status(i);
        let states: Vec<&str> = status["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| v["backends"].as_array().into_iter().flatten())
            .filter_map(|b| b["state"].as_str())
            .collect();
        assert!(states.iter().all(|s| *s == "active"), "LB {i}: {states:?}");
    }
}
