//! The maps, each with what it maps and who writes it. Names come from `lb_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    config::{DebugEvent, IcmpReply, NextHopRequest},
    conn_filter,
    hash::VIP_FILTER_WORDS,
    limits::{
        maglev_elements, real_ids, MAGLEV_TABLES, MAX_CONNECTIONS, MAX_EMBRYONIC, MAX_PERSISTENT,
        MAX_REALS, MAX_SERVICES, SERVICE_CACHE_SLOTS,
    },
    service::ServiceCacheSlot,
    Connection, Counters, CpuGlobals, DataplaneConfig, FlowKey, NextHop, PersistKey,
    PersistSettings, Persistent, RealLimits, RealServer, Service, ServiceKey,
};

/// Keep an LRU free list per CPU instead of one shared list, so that CPUs inserting new flows do
/// not contend on one lock (Katran's lesson about a shared LRU). The key space stays shared, so a
/// flow whose packets arrive on several CPUs (generic XDP, no RSS) still finds its entry.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Let userspace map the array into its memory and write a whole Maglev table with one copy (and
/// the services' generation with one 8-byte store).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// (VIP, port, proto) → service. Written by userspace.
#[map(name = "XLB_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Slot → this CPU's copy of a [`SERVICES`] entry (see `lb_common::maps::SERVICE_CACHE`).
/// Written by the data path.
#[map(name = "XLB_SVC_CACHE")]
pub static SERVICE_CACHE: PerCpuArray<ServiceCacheSlot> =
    PerCpuArray::with_max_entries(SERVICE_CACHE_SLOTS, 0);

/// Index 0 → the services' generation (see `lb_common::maps::SERVICE_GENERATION`). Written by
/// userspace, through its mapping.
#[map(name = "XLB_SVC_GEN")]
pub static SERVICE_GENERATION: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// VIP address → number of services on it. Written by userspace.
#[map(name = "XLB_VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<ServiceKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Word → 64 bits of the VIP filter: a clear bit proves an address is no VIP. Written by
/// userspace (a superset of `VIP_ADDRS`).
#[map(name = "XLB_VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Maglev slot pairs → real-server ids: a pool of tables, one live per service, the spares and
/// the empty table 0 (see `lb_common::limits`). Two slots per element, since the kernel gives
/// every element 8 bytes. Written by userspace. Read through [`MAGLEV`].
#[map(name = "XLB_MAGLEV")]
static MAGLEV_PAIRS: Array<[u32; 2]> =
    Array::with_max_entries(maglev_elements(MAGLEV_TABLES), BPF_F_MMAPABLE);

/// The Maglev pool slot by slot.
pub struct MaglevPool;

/// The Maglev pool, indexed by slot ([`lb_common::Service::live_table_base`] + position).
pub static MAGLEV: MaglevPool = MaglevPool;

impl MaglevPool {
    /// The real-server id in `slot`, 0 when the slot is empty or past the pool. Picks the half of
    /// the pair by a shift, not by pointer arithmetic: the verifier then never needs to know the
    /// slot exactly, so that walks of several slots do not multiply its states.
    #[inline(always)]
    pub fn value(&self, slot: u32) -> u32 {
        match MAGLEV_PAIRS.get(slot / 2) {
            // The pair as one little-endian u64: the even slot in the low half.
            Some(pair) => {
                ((u64::from(pair[1]) << 32 | u64::from(pair[0])) >> ((slot & 1) * 32)) as u32
            }
            None => 0,
        }
    }
}

/// Service id → the service's epoch (0: no such service). Written by userspace.
#[map(name = "XLB_SVC_EPOCHS")]
pub static SERVICE_EPOCHS: Array<u32> = Array::with_max_entries(MAX_SERVICES + 1, 0);

/// Service id → per-CPU position in the service's sequence (`rr`, `wrr`). Written by the data
/// path; spread over a new sequence by userspace.
#[map(name = "XLB_SCHED_POS")]
pub static SCHED_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// (service, masked client address) → the client's real server and last new connection. Written
/// by the data path on a persistent service's new flows; read and flushed by userspace. One LRU
/// list for all CPUs: a client's connections may arrive on any CPU, and entries are written only
/// for new flows.
#[map(name = "XLB_PERSIST")]
pub static PERSIST: LruHashMap<PersistKey, Persistent> =
    LruHashMap::with_max_entries(MAX_PERSISTENT, 0);

/// Service id → a persistent service's timeout and mask. Written by userspace.
#[map(name = "XLB_PERSIST_CFG")]
pub static PERSIST_SETTINGS: Array<PersistSettings> = Array::with_max_entries(MAX_SERVICES, 0);

/// Real-server id → active connections, for the least-connection schedulers. Incremented by the
/// data path for each new TCP flow of such a service; rewritten by userspace from the connection
/// table every second.
#[map(name = "XLB_REAL_CONNS")]
pub static REAL_CONNS: Array<u32> = Array::with_max_entries(real_ids(MAX_REALS), 0);

/// Real-server id → weight, for `wlc`. Written by userspace.
#[map(name = "XLB_REAL_WEIGHTS")]
pub static REAL_WEIGHTS: Array<u32> = Array::with_max_entries(real_ids(MAX_REALS), 0);

/// Real-server id → connection thresholds, connections and overload flag. Thresholds written by
/// userspace; the count and flag by the data path on new flows (up only), corrected by userspace
/// every second (down too).
#[map(name = "XLB_REAL_LIMITS")]
pub static REAL_LIMITS: Array<RealLimits> = Array::with_max_entries(real_ids(MAX_REALS), 0);

/// Real-server id → real server. Written by userspace.
#[map(name = "XLB_REALS")]
pub static REALS: Array<RealServer> = Array::with_max_entries(real_ids(MAX_REALS), 0);

/// Real-server id → per-CPU next hop, the FIB's last answer. Written by the data path; cleared
/// by userspace when a real server changes.
#[map(name = "XLB_NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(real_ids(MAX_REALS), 0);

/// Flow → connection. Written by the data path; read and flushed by userspace.
#[map(name = "XLB_CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, Connection> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// The connection filter ([`lb_common::conn_filter`]): a clear bit proves a flow is not in
/// [`CONNTRACK`]. Set by the data path before each write of the table; built again, and switched
/// on, by userspace, through its mapping. Not pinned.
#[map(name = "XLB_CONN_FILTER")]
pub static CONN_FILTER: Array<u64> = Array::with_max_entries(
    conn_filter::elements(conn_filter::words_log2(MAX_CONNECTIONS)),
    BPF_F_MMAPABLE,
);

/// Flow → an embryonic TCP flow's connection (a SYN seen, nothing else yet), until the client's
/// next packet moves it into [`CONNTRACK`]: a flood of SYNs from random sources evicts only
/// entries of this table. Written by the data path; read and flushed by userspace.
#[map(name = "XLB_EMBRYONIC")]
pub static EMBRYONIC: LruHashMap<FlowKey, Connection> =
    LruHashMap::with_max_entries(MAX_EMBRYONIC, BPF_F_NO_COMMON_LRU);

/// Service id → per-CPU counters of the servers that have left the service. Written by
/// userspace only (the data path counts in [`REAL_STATS`]); in the object so that it is created
/// and pinned with the other maps.
#[map(name = "XLB_SVC_STATS")]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Real-server id → per-CPU counters. Written by the data path.
#[map(name = "XLB_REAL_STATS")]
pub static REAL_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(real_ids(MAX_REALS), 0);

/// Every global counter and the clock, per CPU, in one value (index 0). Written by the data
/// path.
#[map(name = "XLB_GLOBAL")]
pub static GLOBAL_STATS: PerCpuArray<CpuGlobals> = PerCpuArray::with_max_entries(1, 0);

/// Egress interface index → the same interface, for XDP_REDIRECT through a devmap (the kernel
/// bulks such frames). Written by userspace with the interfaces where it attaches; an interface
/// not in it is reached with a plain `bpf_redirect`.
#[map(name = "XLB_EGRESS")]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(256, 0);

/// Slot → a program reached by a tail call: debug events, ICMP replies. Written by userspace.
#[map(name = "XLB_TAIL_CALLS")]
pub static TAIL_CALLS: ProgramArray =
    ProgramArray::with_max_entries(lb_common::maps::TAIL_CALL_SLOTS, 0);

/// Index 0 → per-CPU request from the balancer to the next-hop program. Written by the data path.
#[map(name = "XLB_NH_REQUEST")]
pub static NEXT_HOP_REQUEST: PerCpuArray<NextHopRequest> = PerCpuArray::with_max_entries(1, 0);

/// Index 0 → per-CPU request from the balancer to the ICMP reply program. Written by the data path.
#[map(name = "XLB_ICMP_REPLY")]
pub static ICMP_REPLY: PerCpuArray<IcmpReply> = PerCpuArray::with_max_entries(1, 0);

/// Index 0 → per-CPU note from the balancer to the debug-event program. Written by the data path.
#[map(name = "XLB_DEBUG_EVENT")]
pub static DEBUG_EVENT: PerCpuArray<DebugEvent> = PerCpuArray::with_max_entries(1, 0);

/// Index 0 → run-time settings. Written by userspace.
#[map(name = "XLB_CONFIG")]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

/// The real server with this id, if the entry is in use: read in place, not copied onto the
/// stack (a copy is six loads and six stores more per packet, read back when forwarding).
#[inline(always)]
pub fn real(id: u32) -> Option<&'static RealServer> {
    REALS.get(id).filter(|real| real.is_used())
}

/// The epoch of the service with this id; 0 when there is none.
#[inline(always)]
pub fn service_epoch(id: u32) -> u32 {
    SERVICE_EPOCHS.get(id).copied().unwrap_or(0)
}

/// Whether data-path debug events are switched on.
#[inline(always)]
pub fn debug_events() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|c| c.flags & lb_common::config::CONFIG_F_DEBUG_EVENTS != 0)
}
