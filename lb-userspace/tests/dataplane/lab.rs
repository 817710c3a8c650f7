//! A throwaway network namespace with veth ports, routes and static neighbours, and the data
//! plane loaded in it, so `bpf_fib_lookup` under BPF_PROG_TEST_RUN gives deterministic answers.
//!
//! The namespace belongs to one thread (`sluice_e2e::in_new_ns`), has no name and no mount,
//! and disappears with the thread, whether the test passes, fails or is interrupted.

use std::{collections::HashMap, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use sluice_common::{
    programs,
    stats::{Lb, LbFlow},
    NodeConfig, VipMeta, BACKEND_ALIVE,
};
use sluice_e2e::sh;
use sluice_lb::{
    addr,
    dataplane::{DataPlane, LoadOptions},
    maglev::{self, Member},
};

/// Our ingress port's MAC (ext0).
pub const EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The router's MAC (peer of ext0): where client packets come from.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Our port towards the gateway nodes (int0).
pub const INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
/// A port whose interface is deliberately not in the devmap (oth0).
pub const OTH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x04, 0x01];

/// The node's tunnel source addresses.
pub const NODE_V4: &str = "10.1.0.1";
pub const NODE_V6: &str = "fd01::1";

/// Backends by id: (address, MAC of the next hop if a static neighbour exists).
pub fn backend_addr(id: u32) -> IpAddr {
    match id {
        1..=4 => format!("10.1.0.{}", 10 + id).parse().expect("literal"),
        5..=8 => format!("fd01::{}", 10 + id - 4).parse().expect("literal"),
        9 => "10.0.0.21".parse().expect("literal"),
        10 => "10.1.0.99".parse().expect("literal"),
        11 => "10.2.0.5".parse().expect("literal"),
        12 => "192.0.2.1".parse().expect("literal"),
        _ => panic!("no test backend {id}"),
    }
}

/// MAC of backend `id`'s static neighbour entry.
pub fn backend_mac(id: u32) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, id as u8]
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a program did with a packet.
#[derive(Debug)]
pub struct Out {
    /// XDP action.
    pub action: u32,
    /// Packet bytes after the program.
    pub data: Vec<u8>,
}

/// The lab: namespace ports and the loaded data plane.
pub struct Lab {
    /// The data plane.
    pub dp: DataPlane,
    /// ifindex of ext0 (ingress).
    pub ext: u32,
    /// ifindex of int0.
    pub int: u32,
    vips: HashMap<u32, (sluice_common::VipKey, VipMeta)>,
    node: NodeConfig,
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

impl Lab {
    /// Builds the topology in the current (fresh) namespace and loads the data plane.
    pub fn new(opts: &LoadOptions) -> Self {
        sh("ip link set lo up");
        for (a, b, ma) in [
            ("ext0", "ext1", EXT_MAC),
            ("int0", "int1", INT_MAC),
            ("oth0", "oth1", OTH_MAC),
        ] {
            sh(&format!(
                "ip link add {a} address {} type veth peer name {b}",
                mac(&ma)
            ));
            sh(&format!("ip link set {a} up"));
            sh(&format!("ip link set {b} up"));
        }
        sh("ip addr add 10.0.0.1/24 dev ext0");
        sh("ip addr add 10.1.0.1/24 dev int0");
        sh("ip addr add 10.2.0.1/24 dev oth0");
        sh("ip -6 addr add fd00::1/64 dev ext0 nodad");
        sh("ip -6 addr add fd01::1/64 dev int0 nodad");
        for id in (1..=9).chain([11]) {
            let dev = match id {
                9 => "ext0",
                11 => "oth0",
                _ => "int0",
            };
            sh(&format!(
                "ip neigh replace {} lladdr {} nud permanent dev {dev}",
                backend_addr(id),
                mac(&backend_mac(id))
            ));
        }
        for f in [
            "/proc/sys/net/ipv4/conf/all/forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "/proc/sys/net/ipv4/conf/ext0/forwarding",
            "/proc/sys/net/ipv6/conf/ext0/forwarding",
        ] {
            std::fs::write(f, "1").unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        let mut dp = DataPlane::load(opts).expect("load object");
        dp.program(programs::LB).expect("load sluice_lb");
        dp.program(programs::DECAP).expect("load sluice_decap");
        let (src_v4, _) = addr::words(NODE_V4.parse().expect("literal"));
        let (src_v6, _) = addr::words(NODE_V6.parse().expect("literal"));
        let node = NodeConfig {
            src_v4: src_v4[0],
            src_v6,
            ..NodeConfig::default()
        };
        dp.set_node(&node).expect("node");
        for id in 1..=12 {
            dp.set_backend(id, &addr::backend(backend_addr(id), BACKEND_ALIVE))
                .expect("backend");
        }
        let (ext, int) = (ifindex("ext0"), ifindex("int0"));
        dp.add_tx_port(ext).expect("tx port");
        dp.add_tx_port(int).expect("tx port");
        Lab {
            dp,
            ext,
            int,
            vips: HashMap::new(),
            node,
        }
    }

    /// Changes the node config (the shield switch, the flood limit).
    pub fn set_node(&mut self, change: impl FnOnce(&mut NodeConfig)) {
        change(&mut self.node);
        self.dp.set_node(&self.node).expect("node");
    }

    /// Configures VIP `id` at `ip:port/proto` with `flags`, balanced over backends `ids`
    /// (weight 1 each), in table buffer 0 with the default table size.
    pub fn vip(&mut self, id: u32, ip: &str, port: u16, proto: u8, flags: u32, ids: &[u32]) {
        let ip: IpAddr = ip.parse().expect("literal");
        let key = addr::vip_key(ip, port, proto);
        let meta = VipMeta {
            id,
            flags,
            table_size: sluice_common::DEFAULT_TABLE_SIZE,
            active: 1,
            gen: 0,
        };
        self.vips.insert(id, (key, meta));
        self.dp.set_vip_address(ip).expect("address marker");
        self.retable(id, ids);
    }

    /// Rebuilds VIP `id`'s table over `ids` in the idle buffer and flips to it.
    pub fn retable(&mut self, id: u32, ids: &[u32]) -> Vec<u32> {
        let (key, mut meta) = self.vips[&id];
        let table = table(ids, meta.table_size);
        meta.active ^= 1;
        self.dp
            .write_table(id, meta.active, &table)
            .expect("write table");
        self.dp.set_vip(&key, &meta).expect("set vip");
        self.vips.insert(id, (key, meta));
        table
    }

    /// Sets backend `id`'s flags.
    pub fn set_flags(&mut self, id: u32, flags: u8) {
        self.dp
            .set_backend(id, &addr::backend(backend_addr(id), flags))
            .expect("backend");
    }

    /// Runs `sluice_lb` on `pkt` as if received on ext0.
    pub fn run(&mut self, pkt: &[u8]) -> Out {
        let ext = self.ext;
        self.run_prog(programs::LB, ext, pkt)
    }

    /// The backend the flow table holds for `flow` (which must have an entry).
    pub fn backend_of(&self, flow: &crate::pkt::Flow) -> u32 {
        self.dp
            .flow(&flow.key())
            .expect("read")
            .expect("flow entry")
            .backend
    }

    /// Runs the IPv4 fast path alone (`test_fast_path`) on `pkt` as if received on
    /// ext0: its action, or [`DECLINED`] when it leaves the packet to the general path.
    pub fn run_fast_path(&mut self, pkt: &[u8]) -> Out {
        let ext = self.ext;
        self.run_prog("test_fast_path", ext, pkt)
    }

    /// Every `sluice_lb` outcome counter, in `Lb::ALL` order.
    pub fn outcome_counts(&self) -> Vec<u64> {
        let count = |o: &Lb| self.dp.lb_count(*o).expect("outcome counter");
        Lb::ALL.iter().map(count).collect()
    }

    /// Every flow-event counter, in `LbFlow::ALL` order.
    pub fn event_counts(&self) -> Vec<u64> {
        let count = |e: &LbFlow| self.dp.flow_count(*e).expect("flow-event counter");
        LbFlow::ALL.iter().map(count).collect()
    }

    /// Runs `sluice_decap` on `pkt` as if received on ext0.
    pub fn decap(&mut self, pkt: &[u8]) -> Out {
        let ext = self.ext;
        self.run_prog(programs::DECAP, ext, pkt)
    }

    fn run_prog(&mut self, name: &'static str, ifindex: u32, pkt: &[u8]) -> Out {
        let prog = self.dp.program(name).expect("program");
        run_xdp(prog, ifindex, pkt)
    }
}

/// What `test_fast_path` returns for a packet the fast path declined
/// (`xdp-ebpf/src/bench.rs`).
pub const DECLINED: u32 = 0x5ced;

/// The table the lab builds for backends `ids` (weight 1 each) in size `size`.
pub fn table(ids: &[u32], size: u32) -> Vec<u32> {
    let members: Vec<Member> = ids
        .iter()
        .map(|id| Member {
            id: *id,
            addr: backend_addr(*id),
            weight: 1,
        })
        .collect();
    maglev::build(&members, size).expect("table")
}

/// One BPF_PROG_TEST_RUN of an XDP program on `pkt`, received on `ifindex`.
pub fn run_xdp(prog: &mut aya::programs::Xdp, ifindex: u32, pkt: &[u8]) -> Out {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, pkt.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut out = vec![0u8; pkt.len() + 512];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(pkt);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let res = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    Out {
        action: res.return_value,
        data: out,
    }
}

/// Pins this thread to `cpu`: per-CPU state (the next-hop cache, the flood window) is
/// then the one every packet the thread runs sees.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it; the call changes only
    // this thread's own affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins this thread to the CPU it runs on now (see [`pin_to_cpu`]).
pub fn pin_to_current_cpu() {
    // SAFETY: plain libc call.
    let cpu = unsafe { libc::sched_getcpu() };
    if let Ok(cpu) = usize::try_from(cpu) {
        pin_to_cpu(cpu);
    }
}
