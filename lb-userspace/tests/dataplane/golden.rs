//! Golden packets as fixture rows, in the spirit of Katran's `KatranBaseTestFixtures.h`: one
//! lab configured with a fixed set of VIPs ([`FIXTURE`]), and tables of (name, input frame,
//! expected action, expected output frame, counters it adds to). The expected frames are built
//! with etherparse ([`crate::pkt`]) and the backend a packet must reach comes from the
//! reference model of the pick ([`model_pick`]), so nothing is taken from the data plane's own
//! answer.
//!
//! Every row of a table runs; the test fails once at the end, naming every row that did not
//! come out as written.

use std::collections::HashMap;

use sluice_common::{
    flow_hash, maglev_slot, source_hash,
    stats::{Decap, Lb, LbFlow},
    DEFAULT_TABLE_SIZE,
};

use crate::{
    lab::{
        self, backend_addr, backend_mac, Lab, Out, EXT_MAC, INT_MAC, NODE_V4, NODE_V6, ROUTER_MAC,
    },
    pkt::{encapsulated, Flow, Outer},
};

pub const VIP4: &str = "198.51.100.1";
pub const VIP6: &str = "2001:db8::1";

/// A VIP of the fixture.
pub struct FixtureVip {
    /// VIP id (its table pair and counters).
    pub id: u32,
    /// Address.
    pub address: &'static str,
    /// Port.
    pub port: u16,
    /// TCP (true) or UDP.
    pub tcp: bool,
    /// Backend ids in its table, weight 1 each.
    pub backends: &'static [u32],
}

impl FixtureVip {
    /// A flow from `client:port` to this VIP.
    pub fn flow(&self, client: &str, port: u16) -> Flow {
        if self.tcp {
            Flow::tcp(client, port, self.address, self.port)
        } else {
            Flow::udp(client, port, self.address, self.port)
        }
    }
}

const fn vip(
    id: u32,
    address: &'static str,
    port: u16,
    tcp: bool,
    backends: &'static [u32],
) -> FixtureVip {
    FixtureVip {
        id,
        address,
        port,
        tcp,
        backends,
    }
}

/// IPv4 web service over three IPv4 gateways (4in4).
pub const WEB4: FixtureVip = vip(0, VIP4, 80, true, &[1, 2, 3]);
/// IPv4 UDP service over four IPv4 gateways.
pub const DNS4: FixtureVip = vip(1, VIP4, 53, false, &[1, 2, 3, 4]);
/// IPv6 service over three IPv6 gateways (6in6).
pub const WEB6: FixtureVip = vip(2, VIP6, 443, true, &[5, 6, 7]);
/// An IPv4 VIP on an IPv6 gateway (4in6).
pub const V4_ON_V6: FixtureVip = vip(3, "198.51.100.3", 80, true, &[8]);
/// An IPv6 VIP on an IPv4 gateway (6in4).
pub const V6_ON_V4: FixtureVip = vip(4, "2001:db8::4", 80, true, &[4]);
/// Its gateway's next hop is out of the ingress interface (XDP_TX).
pub const SAME_LINK: FixtureVip = vip(5, VIP4, 1009, true, &[9]);
/// Its gateway has no neighbour entry (to the kernel).
pub const NO_NEIGHBOUR: FixtureVip = vip(6, VIP4, 1010, true, &[10]);
/// Its gateway is reached through a port outside the devmap (to the kernel).
pub const OUTSIDE_DEVMAP: FixtureVip = vip(7, VIP4, 1011, true, &[11]);
/// Its gateway has no route.
pub const NO_ROUTE: FixtureVip = vip(8, VIP4, 1012, true, &[12]);
/// No backend at all.
pub const EMPTY: FixtureVip = vip(9, VIP4, 1000, true, &[]);
/// IPv6 UDP service (fragments to its address are dropped).
pub const DNS6: FixtureVip = vip(10, VIP6, 53, false, &[5, 6]);

/// Every VIP the golden tables run against.
pub const FIXTURE: [FixtureVip; 11] = [
    WEB4,
    DNS4,
    WEB6,
    V4_ON_V6,
    V6_ON_V4,
    SAME_LINK,
    NO_NEIGHBOUR,
    OUTSIDE_DEVMAP,
    NO_ROUTE,
    EMPTY,
    DNS6,
];

/// Configures the fixture's VIPs in `lab`.
pub fn configure(lab: &mut Lab) {
    for v in &FIXTURE {
        let proto = if v.tcp { 6 } else { 17 };
        lab.vip(v.id, v.address, v.port, proto, 0, v.backends);
    }
}

/// The table pick for `flow` in a VIP over `ids` (the reference model: hash, slot, table).
pub fn model_pick(flow: &Flow, ids: &[u32], source_only: bool) -> u32 {
    let key = flow.key();
    let h = if source_only {
        source_hash(&key)
    } else {
        flow_hash(&key)
    };
    lab::table(ids, DEFAULT_TABLE_SIZE)[maglev_slot(h, DEFAULT_TABLE_SIZE) as usize]
}

/// The outer header `sluice_lb` must write for `flow` to `backend`, copying `tos`.
pub fn outer_for(flow: &Flow, backend: u32, tos: u8) -> Outer {
    let dst = backend_addr(backend);
    let src = if dst.is_ipv4() { NODE_V4 } else { NODE_V6 };
    Outer {
        src: src.parse().expect("literal"),
        dst,
        tos,
        flow_label: flow_hash(&flow.key()) & 0xf_ffff,
        ttl: 64,
    }
}

/// Where a tunnelled frame goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Redirected out of int0 to the gateway's neighbour entry.
    Redirect,
    /// Sent back out of the ingress link (XDP_TX) to the gateway's neighbour entry.
    Tx,
    /// Handed to the kernel addressed to ourselves, as received, so the kernel routes it.
    Kernel,
    /// Handed to the kernel after a redirect the devmap refused: addressed to ourselves,
    /// but written for the other link, so without the ingress VLAN tag.
    KernelOtherLink,
}

/// The frame `input` (carrying `flow`, with `tos`) becomes once tunnelled to `backend`: a
/// VLAN tag stays only on a frame that does not leave by another interface.
pub fn tunnelled(input: &[u8], flow: &Flow, tos: u8, backend: u32, hop: Hop) -> Vec<u8> {
    let l2 = if input[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let vlan = (l2 == 18 && !matches!(hop, Hop::Redirect | Hop::KernelOtherLink))
        .then(|| u16::from_be_bytes([input[14], input[15]]) & 0x0fff);
    let (dst_mac, src_mac) = match hop {
        Hop::Redirect => (backend_mac(backend), INT_MAC),
        Hop::Tx => (backend_mac(backend), EXT_MAC),
        Hop::Kernel | Hop::KernelOtherLink => (EXT_MAC, ROUTER_MAC),
    };
    let mut outer = outer_for(flow, backend, tos);
    // The kernel's forwarding takes one off the TTL: the data plane writes one more, so the
    // configured TTL is what leaves the node either way.
    if matches!(hop, Hop::Kernel | Hop::KernelOtherLink) {
        outer.ttl += 1;
    }
    encapsulated(input, l2, vlan, dst_mac, src_mac, &outer)
}

/// A counter a packet can add to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// `sluice_lb`'s outcome.
    Lb(Lb),
    /// A flow-table event of `sluice_lb`.
    Flow(LbFlow),
    /// `sluice_decap`'s outcome.
    Decap(Decap),
}

impl From<Lb> for Counter {
    fn from(c: Lb) -> Self {
        Counter::Lb(c)
    }
}

impl From<LbFlow> for Counter {
    fn from(c: LbFlow) -> Self {
        Counter::Flow(c)
    }
}

impl From<Decap> for Counter {
    fn from(c: Decap) -> Self {
        Counter::Decap(c)
    }
}

/// Every counter and its value.
fn counters(lab: &Lab) -> HashMap<Counter, u64> {
    let lb = Lb::ALL
        .iter()
        .map(|c| (Counter::Lb(*c), lab.dp.lb_count(*c).expect("counter")));
    let flow = LbFlow::ALL
        .iter()
        .map(|c| (Counter::Flow(*c), lab.dp.flow_count(*c).expect("counter")));
    let decap = Decap::ALL
        .iter()
        .map(|c| (Counter::Decap(*c), lab.dp.decap_count(*c).expect("counter")));
    lb.chain(flow).chain(decap).collect()
}

/// One golden packet.
pub struct Golden {
    /// What the row shows.
    pub name: &'static str,
    /// The frame received on ext0.
    pub input: Vec<u8>,
    /// The XDP action.
    pub action: u32,
    /// The frame after the program; `None` for a dropped frame, whose bytes do not matter.
    pub output: Option<Vec<u8>>,
    /// The counters the packet adds one to; every other counter stays as it was.
    pub counts: Vec<Counter>,
}

/// Which program a table runs through.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    /// `sluice_lb`.
    Lb,
    /// `sluice_decap`.
    Decap,
}

/// Runs every row through `program` in order and fails naming each row that differs.
pub fn check(lab: &mut Lab, program: Program, rows: &[Golden]) {
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| check_row(lab, program, row).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden packets differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn check_row(lab: &mut Lab, program: Program, row: &Golden) -> Result<(), String> {
    let before = counters(lab);
    let out: Out = match program {
        Program::Lb => lab.run(&row.input),
        Program::Decap => lab.decap(&row.input),
    };
    let after = counters(lab);
    let mut problems = Vec::new();
    if out.action != row.action {
        problems.push(format!(
            "{} instead of {}",
            action_name(out.action),
            action_name(row.action)
        ));
    }
    if let Some(want) = &row.output {
        if &out.data != want {
            problems.push(format!(
                "output\n    got  {}\n    want {}",
                hex(&out.data),
                hex(want)
            ));
        }
    }
    let mut counted: Vec<Counter> = after
        .iter()
        .filter(|(c, n)| **n != before[*c])
        .map(|(c, _)| *c)
        .collect();
    let moved_by_one = after.iter().all(|(c, n)| n - before[c] <= 1);
    let mut want = row.counts.clone();
    counted.sort_by_key(|c| format!("{c:?}"));
    want.sort_by_key(|c| format!("{c:?}"));
    if counted != want || !moved_by_one {
        problems.push(format!("counted {counted:?} instead of {want:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("- {}: {}", row.name, problems.join("; ")))
    }
}

fn action_name(action: u32) -> String {
    match action {
        crate::action::DROP => "XDP_DROP".into(),
        crate::action::PASS => "XDP_PASS".into(),
        crate::action::TX => "XDP_TX".into(),
        crate::action::REDIRECT => "XDP_REDIRECT".into(),
        other => format!("action {other}"),
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A row for a frame `sluice_lb` tunnels: the backend is the model's pick among `vip`'s
/// backends, the outer TOS is `tos`, and the outcome follows from `hop` unless given.
pub fn tunnelled_row(
    name: &'static str,
    vip: &FixtureVip,
    flow: &Flow,
    input: Vec<u8>,
    tos: u8,
    hop: Hop,
    counts: &[Counter],
) -> Golden {
    let backend = model_pick(flow, vip.backends, false);
    let action = match hop {
        Hop::Redirect => crate::action::REDIRECT,
        Hop::Tx => crate::action::TX,
        Hop::Kernel | Hop::KernelOtherLink => crate::action::PASS,
    };
    Golden {
        name,
        output: Some(tunnelled(&input, flow, tos, backend, hop)),
        input,
        action,
        counts: counts.to_vec(),
    }
}

/// A row for a frame passed on untouched.
pub fn untouched(name: &'static str, input: Vec<u8>, counts: &[Counter]) -> Golden {
    Golden {
        name,
        output: Some(input.clone()),
        input,
        action: crate::action::PASS,
        counts: counts.to_vec(),
    }
}

/// A row for a dropped frame.
pub fn dropped(name: &'static str, input: Vec<u8>, counts: &[Counter]) -> Golden {
    Golden {
        name,
        input,
        action: crate::action::DROP,
        output: None,
        counts: counts.to_vec(),
    }
}

/// Runs `rows` through `sluice_lb` in a fresh lab holding the fixture's VIPs.
pub fn check_lb(rows: Vec<Golden>) {
    crate::with_lab(|lab| {
        configure(lab);
        check(lab, Program::Lb, &rows);
    });
}
