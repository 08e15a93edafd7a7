//! Names of the maps and programs in the object, as userspace looks them up (and as they are pinned
//! under the pin directory). BPF object names are limited to 15 characters.

/// Program: the balancer, attached to the interfaces that receive traffic for the VIPs.
pub const PROG_BALANCER: &str = "xlb_balancer";

/// (VIP, port, proto) → [`crate::Service`]. Written by userspace.
pub const SERVICES: &str = "XLB_SERVICES";
/// VIP address (a [`crate::ServiceKey`] with port and proto zero) → number of services on it.
/// Written by userspace; lets the data path pass everything that is not for a VIP after one lookup.
pub const VIP_ADDRS: &str = "XLB_VIP_ADDRS";
/// Word → 64 bits of a filter of the VIP addresses (see [`crate::hash::vip_filter_slot`]): a
/// clear bit lets the data path pass a packet that is for no VIP without a hash lookup. Written by
/// userspace, always a superset of `VIP_ADDRS`.
pub const VIP_FILTER: &str = "XLB_VIP_FILTER";
/// Maglev slot pair → two real-server ids (`[u32; 2]`): a pool of tables of `MAGLEV_TABLE_SIZE`
/// slots, one every `MAGLEV_TABLE_STRIDE` slots (see [`crate::limits`] and
/// [`crate::Service::table`]). Written by userspace.
pub const MAGLEV: &str = "XLB_MAGLEV";
/// Service id → the service's epoch, a number userspace gives each service it creates (never 0,
/// never reused for the same id while connections may remember it) and sets to 0 when it removes
/// the service. A connection is only followed while its service's epoch is the one it recorded.
/// One entry more than there are service ids: the last holds the highest epoch given so far, so
/// that a restarted daemon never gives an old epoch again. Written by userspace.
pub const SERVICE_EPOCHS: &str = "XLB_SVC_EPOCHS";
/// Service id → per-CPU position in the service's sequence (`rr`, `wrr`): where this CPU's next
/// new flow is read. Written by the data path; spread over the sequence by userspace when it
/// writes a new one, so that the CPUs do not all start at the same server.
pub const SCHED_CURSORS: &str = "XLB_SCHED_POS";
/// [`crate::PersistKey`] → [`crate::Persistent`]: the persistent clients and their real servers
/// (an LRU hash). Written by the data path on a persistent service's new flows; read and flushed
/// by userspace.
pub const PERSIST: &str = "XLB_PERSIST";
/// Service id → [`crate::PersistSettings`]: a persistent service's timeout and mask. Written by
/// userspace.
pub const PERSIST_SETTINGS: &str = "XLB_PERSIST_CFG";
/// Real-server id → its active connections (`u32`), for the least-connection schedulers: one
/// more for each new TCP flow the data path gives it; userspace writes the true count from the
/// connection table every second (flows that closed or idled out). Written by both.
pub const REAL_CONNS: &str = "XLB_REAL_CONNS";
/// Real-server id → its weight (`u32`), for `wlc`. Written by userspace with the service's table.
pub const REAL_WEIGHTS: &str = "XLB_REAL_WEIGHTS";
/// Real-server id → [`crate::RealLimits`]: its connection thresholds (`-x`, `-y`), its
/// connections (active and inactive) and whether it is overloaded. Thresholds written by
/// userspace; the count goes up by one for each new flow the data path gives a server with an
/// upper threshold, and sets the overload flag when the count reaches it; userspace writes the
/// true count from the connection table every second, and the flag with it (see
/// [`crate::RealLimits::overloaded_at`]).
pub const REAL_LIMITS: &str = "XLB_REAL_LIMITS";
/// Real-server id → [`crate::RealServer`]. Written by userspace.
pub const REALS: &str = "XLB_REALS";
/// Slot ([`crate::hash::service_cache_slot`]) → per-CPU [`crate::service::ServiceCacheSlot`]:
/// each CPU's copies of the [`SERVICES`] entries its new flows found, so that the next new flow
/// of a service reads its entry without a hash lookup. Written by the data path (each CPU its
/// own); never pinned (a cache of the program that made it).
pub const SERVICE_CACHE: &str = "XLB_SVC_CACHE";
/// Index 0 → the services' generation (`u64`): userspace adds one after every write of
/// [`SERVICES`], which makes every [`SERVICE_CACHE`] copy taken before it stale. Memory-mapped
/// (`BPF_F_MMAPABLE`) and written by one aligned 8-byte store, so that the data path never reads
/// half of a new value; never pinned (its daemon's, as the cache is its program's).
pub const SERVICE_GENERATION: &str = "XLB_SVC_GEN";
/// Real-server id → per-CPU [`crate::NextHop`]: the FIB's answer, reused briefly. Written by the
/// data path; cleared by userspace when a real server changes.
pub const NEXT_HOPS: &str = "XLB_NEXT_HOPS";
/// [`crate::FlowKey`] → [`crate::Connection`]: the connection table. Written by the data path,
/// read and flushed by userspace.
pub const CONNTRACK: &str = "XLB_CONNTRACK";
/// [`crate::FlowKey`] → [`crate::Connection`] (with
/// [`crate::conntrack::CONN_F_EMBRYONIC`]): the embryonic table, TCP flows whose only packets
/// so far are SYNs, kept apart from [`CONNTRACK`] (an LRU hash of its own, a quarter of its size)
/// until the client's next packet moves them there. Written by the data path, read and flushed by
/// userspace.
pub const EMBRYONIC: &str = "XLB_EMBRYONIC";
/// `u64` words: the connection filter ([`crate::conn_filter`]), a control word and two halves of
/// bits that tell a SYN its flow cannot be in [`CONNTRACK`]. Set by the data path (and userspace)
/// before each write of the connection table, built again by userspace's sweep, which maps it
/// (`BPF_F_MMAPABLE`). Not pinned: each program starts with it off.
pub const CONN_FILTER: &str = "XLB_CONN_FILTER";
/// Service id → per-CPU [`crate::Counters`]: what the real servers that have left the service had
/// counted. Written by userspace when it removes a server: the data path counts a service's
/// packets only in its servers' [`REAL_STATS`] (a real-server id belongs to one service), so a
/// service's counters are this plus its servers'.
pub const SERVICE_STATS: &str = "XLB_SVC_STATS";
/// Real-server id → per-CPU [`crate::Counters`]. Written by the data path.
pub const REAL_STATS: &str = "XLB_REAL_STATS";
/// Index 0 → per-CPU [`crate::CpuGlobals`]: every global counter, indexed by
/// [`crate::GlobalStat`], and the data path's clock. Written by the data path.
pub const GLOBAL_STATS: &str = "XLB_GLOBAL";
/// The per-CPU clock of layout 7 (now in [`GLOBAL_STATS`]): no longer created, only unpinned
/// when pins of that layout are replaced.
pub const RETIRED_CLOCK: &str = "XLB_CLOCK";
/// Interface index → the same interface: the devmap of XDP_REDIRECT. Written by userspace with
/// the interfaces of the balancer's network namespace.
pub const EGRESS: &str = "XLB_EGRESS";
/// Index 0 → [`crate::DataplaneConfig`]. Written by userspace.
pub const CONFIG: &str = "XLB_CONFIG";

/// Program: the balancer for frames with a VLAN tag (the same code with the IP header at 18),
/// reached by a tail call from [`PROG_BALANCER`].
pub const PROG_BALANCER_VLAN: &str = "xlb_vlan";
/// Program: the balancer's debug events, reached by a tail call when they are switched on.
pub const PROG_EVENTS: &str = "xlb_events";
/// Program: the balancer's ICMP "fragmentation needed" / "packet too big" replies, reached by a
/// tail call.
pub const PROG_ICMP_REPLY: &str = "xlb_icmp_reply";
/// Program: the balancer's next-hop lookups in the kernel's FIB, reached by a tail call when a
/// real server's cached next hop is stale.
pub const PROG_NEXT_HOP: &str = "xlb_next_hop";
/// Slot → a program the balancer tail-calls: [`TAIL_CALL_EVENTS`], [`TAIL_CALL_ICMP_REPLY`],
/// [`TAIL_CALL_NEXT_HOP`], [`TAIL_CALL_BALANCER`] (the balancer itself, which the next-hop
/// program runs again once the cache is filled) and [`TAIL_CALL_BALANCER_VLAN`]. Written by
/// userspace.
pub const TAIL_CALLS: &str = "XLB_TAIL_CALLS";
/// Slot of [`TAIL_CALLS`] holding [`PROG_EVENTS`].
pub const TAIL_CALL_EVENTS: u32 = 0;
/// Slot of [`TAIL_CALLS`] holding [`PROG_ICMP_REPLY`].
pub const TAIL_CALL_ICMP_REPLY: u32 = 1;
/// Slot of [`TAIL_CALLS`] holding [`PROG_NEXT_HOP`].
pub const TAIL_CALL_NEXT_HOP: u32 = 2;
/// Slot of [`TAIL_CALLS`] holding [`PROG_BALANCER`].
pub const TAIL_CALL_BALANCER: u32 = 3;
/// Slot of [`TAIL_CALLS`] holding [`PROG_BALANCER_VLAN`].
pub const TAIL_CALL_BALANCER_VLAN: u32 = 4;
/// Slots of [`TAIL_CALLS`].
pub const TAIL_CALL_SLOTS: u32 = 5;
/// Index 0 → per-CPU [`crate::config::NextHopRequest`], the balancer's request to the next-hop
/// program. Written by the data path.
pub const NEXT_HOP_REQUEST: &str = "XLB_NH_REQUEST";
/// Index 0 → per-CPU [`crate::config::IcmpReply`], the balancer's request to the ICMP program.
/// Written by the data path.
pub const ICMP_REPLY: &str = "XLB_ICMP_REPLY";
/// Index 0 → per-CPU [`crate::config::DebugEvent`], the balancer's note to the event program.
/// Written by the data path.
pub const DEBUG_EVENT: &str = "XLB_DEBUG_EVENT";

/// Program: the real-server decapsulator, attached to a real server's interface.
pub const PROG_DECAP: &str = "xlb_decap";
/// Local address (a [`crate::ServiceKey`] with port and proto zero) → 1: the tunnel endpoints
/// whose packets the decapsulator strips. Written by userspace.
pub const DECAP_ADDRS: &str = "XLB_DECAP_ADDRS";
/// [`crate::stats::DecapStat`] → per-CPU packet count. Written by the decapsulator.
pub const DECAP_STATS: &str = "XLB_DECAP_STATS";
