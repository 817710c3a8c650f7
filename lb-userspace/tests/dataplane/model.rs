//! Thousands of random flows through `sluice_lb`, each checked against a plain-Rust model of
//! the pick: flow hash (or source hash) → slot in M → table entry.

use std::net::IpAddr;

use rand::{rngs::StdRng, Rng, SeedableRng};
use sluice_common::{flow_hash, maglev_slot, source_hash, VipMeta, VIP_HASH_SOURCE_ONLY};
use sluice_lb::{
    addr,
    maglev::{self, Member},
};

use crate::{
    action,
    lab::backend_addr,
    pkt::{build, Extra, Flow, Tcp},
    with_lab,
};

struct Vip {
    ip: IpAddr,
    port: u16,
    tcp: bool,
    flags: u32,
    table: Vec<u32>,
}

fn model(vip: &Vip, flow: &Flow) -> u32 {
    let key = flow.key();
    let h = if vip.flags & VIP_HASH_SOURCE_ONLY != 0 {
        source_hash(&key)
    } else {
        flow_hash(&key)
    };
    vip.table[maglev_slot(h, vip.table.len() as u32) as usize]
}

fn random_client(rng: &mut StdRng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(rng.gen::<[u8; 16]>())
    } else {
        IpAddr::from(rng.gen::<[u8; 4]>())
    }
}

fn outer_dst(out: &[u8]) -> IpAddr {
    if out[14] >> 4 == 4 {
        IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).expect("4 bytes"))
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&out[38..54]).expect("16 bytes"))
    }
}

#[test]
fn random_flows_match_the_reference_model() {
    let seed: u64 = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("random_flows_match_the_reference_model: SLUICE_TEST_SEED={seed}");
    with_lab(|lab| {
        let mut rng = StdRng::seed_from_u64(seed);
        // VIPs of both families and protocols, several table sizes, one with persistence.
        let specs = [
            ("198.51.100.1", 80, true, 0, 65537),
            ("198.51.100.1", 53, false, 0, 4099),
            ("2001:db8::1", 443, true, 0, 65537),
            ("2001:db8::1", 53, false, 0, 251),
            ("198.51.100.2", 8080, true, VIP_HASH_SOURCE_ONLY, 65537),
            ("2001:db8::2", 8443, true, VIP_HASH_SOURCE_ONLY, 13),
        ];
        let mut vips = Vec::new();
        for (id, (ip, port, tcp, flags, size)) in specs.into_iter().enumerate() {
            let ip: IpAddr = ip.parse().expect("literal");
            // A random non-empty subset of the reachable backends, random weights.
            let mut members = Vec::new();
            for id in 1..=8 {
                if rng.gen_bool(0.6) {
                    let weight = rng.gen_range(1..=4);
                    members.push(Member {
                        id,
                        addr: backend_addr(id),
                        weight,
                    });
                }
            }
            let members = if members.is_empty() {
                vec![Member {
                    id: 1,
                    addr: backend_addr(1),
                    weight: 1,
                }]
            } else {
                members
            };
            let table = maglev::build(&members, size).expect("table");
            let id = id as u32;
            lab.dp.write_table(id, 0, &table).expect("table");
            lab.dp.set_vip_address(ip).expect("address");
            lab.dp
                .set_vip(
                    &addr::vip_key(ip, port, if tcp { 6 } else { 17 }),
                    &VipMeta {
                        id,
                        flags,
                        table_size: size,
                        active: 0,
                        gen: 0,
                    },
                )
                .expect("vip");
            vips.push(Vip {
                ip,
                port,
                tcp,
                flags,
                table,
            });
        }
        let mut checked = 0;
        for _ in 0..3000 {
            let vip = &vips[rng.gen_range(0..vips.len())];
            let flow = Flow {
                src: random_client(&mut rng, vip.ip.is_ipv6()),
                sport: rng.gen(),
                dst: vip.ip,
                dport: vip.port,
                tcp: vip.tcp,
            };
            let payload_len = rng.gen_range(0..64);
            let input = build(&flow, Tcp::Syn, &vec![7u8; payload_len], &Extra::default());
            let out = lab.run(&input);
            assert_eq!(out.action, action::REDIRECT, "flow {flow:?}");
            let want = backend_addr(model(vip, &flow));
            assert_eq!(outer_dst(&out.data), want, "flow {flow:?} (seed {seed})");
            checked += 1;
        }
        eprintln!("{checked} random flows matched the model");
    });
}
