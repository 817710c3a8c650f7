//! `cargo xtask bench lb`: Maglev table build time for N = 100 backends at M = 65537, beside
//! the paper's textbook algorithm (Pseudocode 1: the full N x M permutation matrix computed
//! first, then filled) measured in the same run. Both must produce the same table.

use std::{net::IpAddr, time::Instant};

use sluice_lb::maglev::{build, permutation, Member};

const M: u32 = 65537;
const N: u32 = 100;
const RUNS: usize = 51;

/// The paper's Pseudocode 1, with this crate's offset/skip and turn order.
fn textbook(members: &[Member], m: u32) -> Vec<u32> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|x| x.addr);
    let perm: Vec<Vec<u32>> = sorted
        .iter()
        .map(|x| {
            let (offset, skip) = permutation(x.addr, m);
            (0..m as u64)
                .map(|j| ((offset + j * skip) % m as u64) as u32)
                .collect()
        })
        .collect();
    let mut next = vec![0usize; sorted.len()];
    let mut entry = vec![u32::MAX; m as usize];
    let mut n = 0;
    loop {
        for (i, x) in sorted.iter().enumerate() {
            let mut c = perm[i][next[i]];
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = perm[i][next[i]];
            }
            entry[c as usize] = x.id;
            next[i] += 1;
            n += 1;
            if n == m {
                return entry;
            }
        }
    }
}

fn median(mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[RUNS / 2]
}

fn main() {
    let members: Vec<Member> = (0..N)
        .map(|i| Member {
            id: i + 1,
            addr: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
            weight: 1,
        })
        .collect();
    let ours = build(&members, M).expect("valid");
    assert_eq!(
        ours,
        textbook(&members, M),
        "both algorithms must build the same table"
    );
    let t_ours = median(|| {
        std::hint::black_box(build(std::hint::black_box(&members), M).expect("valid"));
    });
    let t_ref = median(|| {
        std::hint::black_box(textbook(std::hint::black_box(&members), M));
    });
    println!("Maglev table build, N = {N}, M = {M}, median of {RUNS} runs");
    println!();
    println!("| build | ms | ratio to textbook | target |");
    println!("|---|---:|---:|---:|");
    println!(
        "| sluice-lb (permutations walked lazily) | {t_ours:.3} | {:.2}x | <= 1.8 ms (paper) |",
        t_ours / t_ref
    );
    println!("| textbook (full permutation matrix first) | {t_ref:.3} | 1.00x | - |");
    println!();
    println!(
        "{}",
        if t_ours <= 1.8 {
            "target met"
        } else {
            "target missed"
        }
    );
}
