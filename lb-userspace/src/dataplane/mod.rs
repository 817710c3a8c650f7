//! Loading the data-plane programs and reading and writing their maps.
//!
//! Every map is reached by the name and layout `sluice-common` defines, through aya's typed
//! wrappers. This module knows nothing of config files or health: it is the one place where
//! userspace touches BPF state, shared by the agent and the packet tests.

use std::net::IpAddr;

use aya::{
    maps::{
        xdp::XdpMapError, Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues,
    },
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use sluice_common::{
    maglev_index, names, programs,
    stats::{Decap, Lb, LbFlow, LB_FLOW_BASE},
    vip_filter_bit, Backend, FlowKey, FlowKey4, FlowState, NextHop, NodeConfig, Traffic, VipKey,
    VipMeta, MAX_BACKENDS, MAX_TABLE_SIZE, MAX_VIPS, VIP_FILTER_WORDS, VIP_GEN_COUNTER,
};
use thiserror::Error;

use crate::{addr, object};

mod reuse;
mod shield;
pub use shield::{block_key, monotonic_ns, prefix_of};

/// Errors from loading programs or touching maps.
#[derive(Debug, Error)]
pub enum DataPlaneError {
    /// More tunnel-source prefixes than the map holds.
    #[error("{0} tunnel source prefixes: at most {max}", max = sluice_common::MAX_DECAP_SOURCES)]
    TooManyDecapSources(usize),
    /// The object could not be loaded (maps created, relocations applied).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// A program could not be loaded or attached (the verifier's log is in the source).
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// The devmap refused an interface.
    #[error("map SLUICE_TX_PORTS: {0}")]
    TxPorts(#[source] XdpMapError),
    /// Pinned state could not be used.
    #[error("{}: {reason}", path.display())]
    Pin {
        /// The pin path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The Maglev array could not be memory-mapped.
    #[error("mapping SLUICE_MAGLEV: {0}")]
    Mmap(#[source] std::io::Error),
    /// The possible CPUs could not be read.
    #[error("reading the possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    /// A map the programs declare is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A program is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// An index or size outside what the maps hold.
    #[error("{what} {value} is out of range (limit {limit})")]
    OutOfRange {
        /// What was out of range.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The limit.
        limit: u64,
    },
}

pub(crate) type Result<T> = std::result::Result<T, DataPlaneError>;

/// How to load the data plane.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Enable aya-log debug output in the programs (off: logging is removed at load time).
    pub debug: bool,
    /// Flow-table capacity; `None` keeps the object's default.
    pub flow_table_size: Option<u32>,
    /// bpffs directory: maps are pinned under `<dir>/maps`, and maps already pinned there are
    /// adopted (after their layout is checked) instead of created.
    pub pin_dir: Option<std::path::PathBuf>,
    /// For `cargo xtask bench xdp` only: size the benchmark reference's flow table like the
    /// flow table. The object declares it with 16 entries, so that the 20 MB a full-size
    /// preallocated table costs are not paid by every node that loads the data plane.
    pub bench_reference: bool,
}

/// The benchmark reference's flow table (`xdp-ebpf/src/bench.rs`).
const BENCH_REFERENCE_MAP: &str = "SLUICE_BENCH_REF";

/// `bpf_map_update_elem`'s flag for "only if the key is not there yet".
const BPF_NOEXIST: u64 = 1;

/// Every map with its key and value sizes, as this build defines them. Pinned maps are
/// checked against it (and against the object's type and size) before they are adopted.
pub const MAP_LAYOUTS: &[(&str, usize, usize)] = {
    use sluice_common::{
        AddrKey, BlockEntry, BlockKey, FloodState, FlowKey, FlowKey4, FlowState, NextHop, Traffic,
    };
    use std::mem::size_of;
    &[
        (names::VIPS, size_of::<VipKey>(), size_of::<VipMeta>()),
        (names::BACKENDS, 4, size_of::<Backend>()),
        (names::MAGLEV, 4, 8),
        (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowState>()),
        (names::FLOWS4, size_of::<FlowKey4>(), size_of::<FlowState>()),
        (names::NODE, 4, size_of::<NodeConfig>()),
        (names::LB_STATS, 4, 8),
        (names::VIP_STATS, 4, size_of::<Traffic>()),
        (names::BACKEND_STATS, 4, size_of::<Traffic>()),
        (names::TX_PORTS, 4, 8),
        (names::DECAP_ADDRS, size_of::<AddrKey>(), 4),
        (names::DECAP_STATS, 4, 8),
        (names::DECAP_SOURCES, 4 + size_of::<BlockKey>(), 4),
        (names::VIP_FILTER, 4, 8),
        (names::NEXT_HOPS, 4, size_of::<NextHop>()),
        (names::VIP_GENS, 4, 4),
        (
            names::BLOCKS,
            4 + size_of::<BlockKey>(),
            size_of::<BlockEntry>(),
        ),
        (names::BLOCK_DROPS, 4, 8),
        (names::BLOCK_REASONS, 4, 8),
        (names::BLOCK_NOTES, 4, sluice_common::BLOCK_NOTE_LEN),
        (names::FLOOD, 4, size_of::<FloodState>()),
    ]
};

/// The loaded object: maps created, programs loaded on demand.
pub struct DataPlane {
    ebpf: Ebpf,
    tables: Tables,
}

/// The Maglev array, memory-mapped (`BPF_F_MMAPABLE`). The kernel stores its `u64` elements
/// back to back, each holding two consecutive slots, so the mapping reads as a flat `u32`
/// array indexed by [`maglev_index`].
struct Tables {
    ptr: std::ptr::NonNull<u32>,
    len: usize,
    bytes: usize,
}

impl Tables {
    fn map(ebpf: &Ebpf) -> Result<Self> {
        use std::os::fd::{AsFd, AsRawFd};
        let name = names::MAGLEV;
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            return Err(DataPlaneError::MissingMap(name));
        };
        const _: () = assert!(
            cfg!(target_endian = "little"),
            "slot packing assumes little-endian"
        );
        let len = (MAX_VIPS * 2 * MAX_TABLE_SIZE) as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * 4).div_ceil(page) * page;
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, shared, for its full size;
        // the result is checked before use and unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataPlaneError::Mmap(std::io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u32>())
            .ok_or_else(|| DataPlaneError::Mmap(std::io::Error::other("null mapping")))?;
        Ok(Self { ptr, len, bytes })
    }

    fn slots(&mut self) -> &mut [u32] {
        // SAFETY: `len` u32s are mapped for as long as `self` lives; other writers are the
        // BPF programs' readers only (the agent is the one writer).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// Pinned maps that hold only counters or a cache, which a new build may size or lay out
/// differently (a counter added to [`sluice_common::stats::Lb`] grows `SLUICE_LB_STATS`): a
/// pinned one that is not this build's is replaced, its counts restarting, where any other
/// map (flows, VIPs, blocks: state) is refused.
pub const REMADE_ON_CHANGE: &[&str] = &[
    names::LB_STATS,
    names::DECAP_STATS,
    names::BLOCK_REASONS,
    names::VIP_STATS,
    names::BACKEND_STATS,
    names::NEXT_HOPS,
];

/// Refuses a pinned map whose layout is not this build's: key and value sizes, type and
/// number of entries.
fn check_pinned(
    path: &std::path::Path,
    name: &str,
    key: usize,
    value: usize,
    map_type: Option<u32>,
    entries: Option<u32>,
) -> Result<()> {
    let info = aya::maps::MapInfo::from_pin(path).map_err(|e| DataPlaneError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let (k, v) = (info.key_size() as usize, info.value_size() as usize);
    if (k, v) != (key, value) {
        return Err(DataPlaneError::Pin {
            path: path.to_owned(),
            reason: format!(
                "pinned map {name} has key/value sizes {k}/{v} but this build needs {key}/{value}; \
                 it was made by an incompatible version (`sluice-lb detach` removes it, and with \
                 it the established flows)"
            ),
        });
    }
    if let Some(t) = map_type {
        let pinned = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        if pinned != t {
            return Err(DataPlaneError::Pin {
                path: path.to_owned(),
                reason: format!(
                    "pinned map {name} has map type {pinned} but this build needs {t} (`sluice-lb detach` removes it)"
                ),
            });
        }
    }
    if let Some(n) = entries {
        if info.max_entries() != n {
            return Err(DataPlaneError::Pin {
                path: path.to_owned(),
                reason: format!(
                    "pinned map {name} holds {} entries but {n} are configured; resizing it would \
                     drop its contents (`sluice-lb detach` removes it, or keep the old size)",
                    info.max_entries()
                ),
            });
        }
    }
    Ok(())
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { name, source }
}

/// Whether a map operation failed only because its key is no longer there (aya reports a
/// delete of a missing key as ENOENT, not `KeyNotFound`).
pub(crate) fn key_gone(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Where the flow tables are pinned under a node's `pin_dir`.
pub fn pinned_maps_dir(pin_dir: &std::path::Path) -> std::path::PathBuf {
    pin_dir.join("maps")
}

/// Entries in the fuller of the two pinned flow tables (IPv4 and IPv6, each of
/// `flow_table_size` entries) under `maps_dir`: how near a table is to evicting. Each is
/// walked through a descriptor of its own (so a thread other than the agent's can count),
/// stopping after `limit` keys: a table never holds more, and a walk that restarts while
/// entries come and go cannot run on.
pub fn count_pinned_flows(maps_dir: &std::path::Path, limit: usize) -> Result<usize> {
    let v6 = count_pinned::<FlowKey>(&maps_dir.join(names::FLOWS), names::FLOWS, limit)?;
    let v4 = count_pinned::<FlowKey4>(&maps_dir.join(names::FLOWS4), names::FLOWS4, limit)?;
    Ok(v4.max(v6))
}

/// `sluice_decap`'s counters pinned under `maps_dir`, each summed over CPUs, read without
/// loading the object (which would make a counter map of another size anew, taking it from
/// the program still counting into it). An older build's map has fewer counters: those it
/// lacks are `None`.
pub fn pinned_decap_counts(maps_dir: &std::path::Path) -> Result<Vec<(Decap, Option<u64>)>> {
    let name = names::DECAP_STATS;
    let data = MapData::from_pin(maps_dir.join(name)).map_err(map_err(name))?;
    let map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(map_err(name))?;
    let held = map.len();
    Decap::ALL
        .iter()
        .map(|d| {
            let i = *d as u32;
            if i >= held {
                return Ok((*d, None));
            }
            let values = map.get(&i, 0).map_err(map_err(name))?;
            Ok((*d, Some(values.iter().sum())))
        })
        .collect()
}

fn count_pinned<K: aya::Pod>(
    path: &std::path::Path,
    name: &'static str,
    limit: usize,
) -> Result<usize> {
    let data = MapData::from_pin(path).map_err(map_err(name))?;
    let map: HashMap<MapData, K, FlowState> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err(name))?;
    count_keys(&map, name, limit)
}

/// Keys of a flow table, walking at most `limit` of them. The walk stops at its first
/// error: a partial count is an error, not a figure.
fn count_keys<T: std::borrow::Borrow<MapData>, K: aya::Pod>(
    map: &HashMap<T, K, FlowState>,
    name: &'static str,
    limit: usize,
) -> Result<usize> {
    let mut n = 0;
    for key in map.keys().take(limit) {
        key.map_err(map_err(name))?;
        n += 1;
    }
    Ok(n)
}

impl DataPlane {
    /// Creates the maps of the embedded object.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let debug = u8::from(opts.debug);
        let mut loader = EbpfLoader::new();
        loader.override_global(programs::DEBUG_GLOBAL, &debug, true);
        if let Some(size) = opts.flow_table_size {
            loader.map_max_entries(names::FLOWS, size);
            loader.map_max_entries(names::FLOWS4, size);
        }
        if opts.bench_reference {
            loader.map_max_entries(
                BENCH_REFERENCE_MAP,
                opts.flow_table_size
                    .unwrap_or(sluice_common::DEFAULT_FLOW_TABLE_SIZE),
            );
        }
        let map_dir = opts.pin_dir.as_ref().map(|d| d.join("maps"));
        if let Some(dir) = &map_dir {
            std::fs::create_dir_all(dir).map_err(|e| DataPlaneError::Pin {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
            let object =
                aya_obj::Object::parse(object::bytes()).map_err(|e| DataPlaneError::Pin {
                    path: dir.clone(),
                    reason: format!("parsing the embedded object: {e}"),
                })?;
            for (name, key, value) in MAP_LAYOUTS {
                let path = dir.join(name);
                if path.exists() {
                    let declared = object
                        .maps
                        .get(*name)
                        .map(|m| (m.map_type(), m.max_entries()));
                    let wanted_entries = match (*name, opts.flow_table_size) {
                        (n, Some(size)) if n == names::FLOWS || n == names::FLOWS4 => Some(size),
                        _ => declared.map(|d| d.1),
                    };
                    let checked = check_pinned(
                        &path,
                        name,
                        *key,
                        *value,
                        declared.map(|d| d.0),
                        wanted_entries,
                    );
                    match checked {
                        Err(e) if REMADE_ON_CHANGE.contains(name) => {
                            // An earlier build counted fewer (or other) things: its counts
                            // restart, as a counter's do when its process restarts.
                            tracing::warn!(map = *name, "replacing a pinned map: {e}");
                            std::fs::remove_file(&path).map_err(|e| DataPlaneError::Pin {
                                path: path.clone(),
                                reason: format!("removing it to make it anew: {e}"),
                            })?;
                        }
                        checked => checked?,
                    }
                }
                loader.map_pin_path(name, path);
            }
        }
        let ebpf = loader.load(object::bytes())?;
        let tables = Tables::map(&ebpf)?;
        Ok(Self { ebpf, tables })
    }

    /// The aya handle, for callers that need what this module does not wrap.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Loads (verifies) and returns one of the programs, `sluice_lb` or `sluice_decap`.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataPlaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataPlaneError::Program { name, source })?;
        if prog.fd().is_err() {
            // The verifier gives up with EAGAIN when a signal arrives while it works; like
            // libbpf, try again a few times before calling it a failure.
            let mut attempt = 1;
            loop {
                match prog.load() {
                    Ok(()) => break,
                    Err(ProgramError::LoadError { io_error, .. })
                        if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 5 =>
                    {
                        attempt += 1;
                    }
                    Err(source) => return Err(DataPlaneError::Program { name, source }),
                }
            }
        }
        Ok(prog)
    }

    pub(crate) fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataPlaneError::MissingMap(name))
    }

    pub(crate) fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(DataPlaneError::MissingMap(name))
    }

    /// Writes the node configuration.
    pub fn set_node(&mut self, node: &NodeConfig) -> Result<()> {
        let name = names::NODE;
        let mut map: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.set(0, node, 0).map_err(map_err(name))
    }

    /// Writes backend `id`. Id 0 is reserved for "no backend". If the address changes, the
    /// cached next hop of that id is dropped so the next packet looks it up afresh.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        if id == 0 || id >= MAX_BACKENDS {
            return Err(DataPlaneError::OutOfRange {
                what: "backend id",
                value: id.into(),
                limit: MAX_BACKENDS.into(),
            });
        }
        let old = self.backend(id)?;
        let name = names::BACKENDS;
        let mut map: Array<&mut MapData, Backend> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.set(id, backend, 0).map_err(map_err(name))?;
        if (old.addr, old.family) != (backend.addr, backend.family) {
            self.forget_next_hop(id)?;
        }
        Ok(())
    }

    /// Every written backend record (family set), by id.
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        let name = names::BACKENDS;
        let map: Array<&MapData, Backend> =
            Array::try_from(self.map(name)?).map_err(map_err(name))?;
        let mut out = Vec::new();
        for (id, b) in map.iter().enumerate() {
            let b = b.map_err(map_err(name))?;
            if id > 0 && b.family != 0 {
                out.push((id as u32, b));
            }
        }
        Ok(out)
    }

    /// Every VIP (address markers left out).
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        let name = names::VIPS;
        let map: HashMap<&MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry.map_err(map_err(name))?;
            if v.flags & sluice_common::VIP_ADDRESS_MARKER == 0 {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Drops the cached next hop of backend `id` on every CPU.
    pub fn forget_next_hop(&mut self, id: u32) -> Result<()> {
        let name = names::NEXT_HOPS;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataPlaneError::Cpus(e))?;
        let mut map: PerCpuArray<&mut MapData, NextHop> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let empty =
            PerCpuValues::try_from(vec![NextHop::default(); cpus]).map_err(DataPlaneError::Cpus)?;
        map.set(id, empty, 0).map_err(map_err(name))
    }

    /// Drops every cached next hop on every CPU. Run once the agent's program is attached:
    /// the cache is kept in a pinned map, and a program of an earlier version may have
    /// written it with another clock (it used nanoseconds before kernel ticks), which this
    /// program would take for entries that never expire.
    pub fn forget_next_hops(&mut self) -> Result<()> {
        for id in 0..sluice_common::MAX_BACKENDS {
            self.forget_next_hop(id)?;
        }
        Ok(())
    }

    /// Reads backend `id`.
    pub fn backend(&self, id: u32) -> Result<Backend> {
        let name = names::BACKENDS;
        let map: Array<&MapData, Backend> =
            Array::try_from(self.map(name)?).map_err(map_err(name))?;
        map.get(&id, 0).map_err(map_err(name))
    }

    /// Writes buffer `buffer` (0 or 1) of VIP `vip_id`'s Maglev table. The buffer must not be
    /// the live one; make it live with [`DataPlane::set_vip`].
    pub fn write_table(&mut self, vip_id: u32, buffer: u32, table: &[u32]) -> Result<()> {
        let start = self.table_start(vip_id, buffer, table.len())?;
        self.tables.slots()[start..start + table.len()].copy_from_slice(table);
        Ok(())
    }

    /// Reads `size` slots of buffer `buffer` of VIP `vip_id`'s table.
    pub fn read_table(&mut self, vip_id: u32, buffer: u32, size: usize) -> Result<Vec<u32>> {
        let start = self.table_start(vip_id, buffer, size)?;
        Ok(self.tables.slots()[start..start + size].to_vec())
    }

    fn table_start(&self, vip_id: u32, buffer: u32, size: usize) -> Result<usize> {
        if vip_id >= MAX_VIPS {
            return Err(DataPlaneError::OutOfRange {
                what: "VIP id",
                value: vip_id.into(),
                limit: MAX_VIPS.into(),
            });
        }
        if size > MAX_TABLE_SIZE as usize {
            return Err(DataPlaneError::OutOfRange {
                what: "table size",
                value: size as u64,
                limit: MAX_TABLE_SIZE.into(),
            });
        }
        Ok(maglev_index(vip_id, buffer, 0) as usize)
    }

    /// Adds or replaces a VIP. Replacing is atomic for packets in flight, so flipping `active`
    /// and `table_size` together switches tables without a half-visible state.
    ///
    /// `meta.gen` is assigned here: a VIP that keeps its id keeps its generation (its flows
    /// stay valid across table changes); a new VIP, or a new id, gets a fresh one.
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        let mut meta = *meta;
        if meta.flags & sluice_common::VIP_ADDRESS_MARKER == 0 {
            if meta.id >= MAX_VIPS {
                return Err(DataPlaneError::OutOfRange {
                    what: "VIP id",
                    value: meta.id.into(),
                    limit: MAX_VIPS.into(),
                });
            }
            let existing = self.vip(key)?;
            meta.gen = match existing {
                Some(old) if old.id == meta.id && old.gen != 0 => old.gen,
                _ => self.next_vip_gen()?,
            };
            let name = names::VIP_GENS;
            let mut gens: Array<&mut MapData, u32> =
                Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            gens.set(meta.id, meta.gen, 0).map_err(map_err(name))?;
        }
        let name = names::VIPS;
        let mut map: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.insert(key, meta, 0).map_err(map_err(name))
    }

    /// The VIP (or address marker) at `key`, if any.
    pub fn vip(&self, key: &VipKey) -> Result<Option<VipMeta>> {
        let name = names::VIPS;
        let map: HashMap<&MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Issues a generation never issued before (0 is skipped: it means "no VIP").
    fn next_vip_gen(&mut self) -> Result<u32> {
        let name = names::VIP_GENS;
        let mut gens: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let last = gens.get(&VIP_GEN_COUNTER, 0).map_err(map_err(name))?;
        let next = last.wrapping_add(1).max(1);
        gens.set(VIP_GEN_COUNTER, next, 0).map_err(map_err(name))?;
        Ok(next)
    }

    /// Removes a VIP (or an address marker). Its flow entries stop matching at once.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        if let Some(old) = self.vip(key)? {
            if old.flags & sluice_common::VIP_ADDRESS_MARKER == 0 {
                let name = names::VIP_GENS;
                let mut gens: Array<&mut MapData, u32> =
                    Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
                gens.set(old.id, 0, 0).map_err(map_err(name))?;
            }
        }
        let name = names::VIPS;
        let mut map: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.remove(key).map_err(map_err(name))
    }

    /// Marks `ip` as an address that carries VIPs: sets its bit in the VIP filter (without
    /// which its VIPs are never looked up) and its marker (so fragments sent to it are
    /// recognised). Call before adding the address's VIPs.
    pub fn set_vip_address(&mut self, ip: IpAddr) -> Result<()> {
        let meta = VipMeta {
            flags: sluice_common::VIP_ADDRESS_MARKER,
            ..VipMeta::default()
        };
        let (word, bit) = vip_filter_bit(&addr::words(ip).0);
        let name = names::VIP_FILTER;
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let old = map.get(&word, 0).map_err(map_err(name))?;
        map.set(word, old | bit, 0).map_err(map_err(name))?;
        self.set_vip(&addr::vip_address_key(ip), &meta)
    }

    /// Rewrites the VIP filter to hold exactly `addrs`. Call after removing an address's VIPs.
    pub fn set_vip_filter(&mut self, addrs: &[IpAddr]) -> Result<()> {
        let mut words = [0u64; VIP_FILTER_WORDS as usize];
        for ip in addrs {
            let (word, bit) = vip_filter_bit(&addr::words(*ip).0);
            words[word as usize] |= bit;
        }
        let name = names::VIP_FILTER;
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for (i, w) in words.iter().enumerate() {
            map.set(i as u32, w, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Allows redirects to interface `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let name = names::TX_PORTS;
        let mut map: DevMapHash<&mut MapData> =
            DevMapHash::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.insert(ifindex, ifindex, None, 0)
            .map_err(DataPlaneError::TxPorts)
    }

    /// Accepts `ip` as a local tunnel endpoint in `sluice_decap`.
    pub fn add_decap_addr(&mut self, ip: IpAddr) -> Result<()> {
        let name = names::DECAP_ADDRS;
        let mut map: HashMap<&mut MapData, sluice_common::AddrKey, u32> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        map.insert(addr::addr_key(ip), 1, 0).map_err(map_err(name))
    }

    /// Makes `prefixes` the outer sources `sluice_decap` accepts tunnels from, in place of
    /// those before: others' tunnels are dropped (`refused_source`). Those no longer wanted
    /// go first, so that a revoked source is never accepted after an error, and one wanted
    /// in both lists is never missing. At most [`MAX_DECAP_SOURCES`] prefixes.
    ///
    /// [`MAX_DECAP_SOURCES`]: sluice_common::MAX_DECAP_SOURCES
    pub fn set_decap_sources(&mut self, prefixes: &[ipnet::IpNet]) -> Result<()> {
        use aya::maps::lpm_trie::LpmTrie;
        let name = names::DECAP_SOURCES;
        if prefixes.len() > sluice_common::MAX_DECAP_SOURCES as usize {
            return Err(DataPlaneError::TooManyDecapSources(prefixes.len()));
        }
        let mut map: LpmTrie<&mut MapData, sluice_common::BlockKey, u32> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let wanted: Vec<_> = prefixes.iter().map(|p| shield::block_key(*p)).collect();
        let stale: Vec<_> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for key in &stale {
            map.remove(key).map_err(map_err(name))?;
        }
        for key in &wanted {
            map.insert(key, 1, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// The outer source prefixes `sluice_decap` accepts tunnels from.
    pub fn decap_sources(&self) -> Result<Vec<ipnet::IpNet>> {
        use aya::maps::lpm_trie::LpmTrie;
        let name = names::DECAP_SOURCES;
        let map: LpmTrie<&MapData, sluice_common::BlockKey, u32> =
            LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
        let mut out = Vec::new();
        for key in map.keys() {
            if let Some(p) = shield::prefix_of(&key.map_err(map_err(name))?) {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The flow table's entry for `key`, if any, from the table of its family.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>> {
        if key.family == sluice_common::FAMILY_V4 {
            self.flow_in(names::FLOWS4, &key.v4())
        } else {
            self.flow_in(names::FLOWS, key)
        }
    }

    fn flow_in<K: aya::Pod>(&self, name: &'static str, key: &K) -> Result<Option<FlowState>> {
        let map: HashMap<&MapData, K, FlowState> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// Moves IPv4 flows from the dual-stack table to the IPv4 one, where this build looks
    /// for them, and returns how many moved. An earlier version kept every flow in
    /// `SLUICE_FLOWS`; its pinned entries would otherwise all miss on the first start of this
    /// one, and a flow whose slot moved since (or whose backend is draining) would break.
    /// An entry already in the IPv4 table (made by this build since) wins. Run after the
    /// maps are adopted and again once the new program is attached, since the old one keeps
    /// writing the dual-stack table until then.
    pub fn migrate_v4_flows(&mut self) -> Result<usize> {
        let old: Vec<(FlowKey, FlowState)> = {
            let name = names::FLOWS;
            let map: HashMap<&MapData, FlowKey, FlowState> =
                HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
            map.iter()
                .filter_map(|e| e.ok())
                .filter(|(k, _)| k.family == sluice_common::FAMILY_V4)
                .collect()
        };
        if old.is_empty() {
            return Ok(0);
        }
        {
            let name = names::FLOWS4;
            let mut map: HashMap<&mut MapData, FlowKey4, FlowState> =
                HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (key, state) in &old {
                // BPF_NOEXIST: an entry made by this build since is newer than the old one.
                match map.insert(key.v4(), *state, BPF_NOEXIST) {
                    Ok(()) => {}
                    Err(MapError::SyscallError(e))
                        if e.io_error.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        let name = names::FLOWS;
        let mut map: HashMap<&mut MapData, FlowKey, FlowState> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for (key, _) in &old {
            match map.remove(key) {
                Ok(()) => {}
                Err(e) if key_gone(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(old.len())
    }

    /// Number of entries in both flow tables (walks them whole: for tests and tools).
    pub fn flow_count_entries(&self) -> Result<usize> {
        Ok(self.count_in::<FlowKey>(names::FLOWS)? + self.count_in::<FlowKey4>(names::FLOWS4)?)
    }

    fn count_in<K: aya::Pod>(&self, name: &'static str) -> Result<usize> {
        let map: HashMap<&MapData, K, FlowState> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        count_keys(&map, name, usize::MAX)
    }

    pub(crate) fn counter_sum(&self, name: &'static str, index: u32) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        let values = map.get(&index, 0).map_err(map_err(name))?;
        Ok(values.iter().sum())
    }

    fn traffic_sum(&self, name: &'static str, index: u32) -> Result<Traffic> {
        let map: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        let values = map.get(&index, 0).map_err(map_err(name))?;
        Ok(values.iter().fold(Traffic::default(), |a, t| Traffic {
            packets: a.packets + t.packets,
            bytes: a.bytes + t.bytes,
        }))
    }

    /// A `sluice_lb` outcome counter, summed over CPUs.
    pub fn lb_count(&self, outcome: Lb) -> Result<u64> {
        self.counter_sum(names::LB_STATS, outcome as u32)
    }

    /// A `sluice_lb` flow-event counter, summed over CPUs.
    pub fn flow_count(&self, event: LbFlow) -> Result<u64> {
        self.counter_sum(names::LB_STATS, LB_FLOW_BASE + event as u32)
    }

    /// A `sluice_decap` counter, summed over CPUs.
    pub fn decap_count(&self, outcome: Decap) -> Result<u64> {
        self.counter_sum(names::DECAP_STATS, outcome as u32)
    }

    /// Traffic of VIP `id`, summed over CPUs.
    pub fn vip_traffic(&self, id: u32) -> Result<Traffic> {
        self.traffic_sum(names::VIP_STATS, id)
    }

    /// Traffic to backend `id`, summed over CPUs.
    pub fn backend_traffic(&self, id: u32) -> Result<Traffic> {
        self.traffic_sum(names::BACKEND_STATS, id)
    }
}
