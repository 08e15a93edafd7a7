//! The connection table: a flow that has a real server keeps it, whatever happens to the
//! service's Maglev table afterwards (weights, servers added or removed).
//!
//! It is asked first, before the service: a known flow, the common case, then costs one hash
//! lookup. An entry only counts while its real server exists and its service still exists under
//! the epoch the entry recorded (which the server's entry carries), so a removed (or removed and
//! re-added) service's flows are not followed.
//!
//! A TCP flow whose first packet is a SYN (without ACK) is embryonic: it is remembered in a table
//! of its own ([`maps::EMBRYONIC`], an LRU a quarter of the connection table's size) until the
//! client's next packet, its handshake's ACK, moves it into the connection table ([`settle`]). A
//! flood of SYNs from random sources then only evicts other embryonic flows, never a flow that
//! got past its SYN. The embryonic table is asked only when the connection table does not know
//! the flow, so a known flow costs one lookup as before.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use lb_common::{
    conn_filter,
    conntrack::{
        CONN_FLOW_LABEL_SHIFT, CONN_F_CLOSING, CONN_F_COUNT_ON_PROMOTION, CONN_F_EMBRYONIC,
    },
    Connection, CpuGlobals, FlowKey, GlobalStat, RealServer, PROTO_TCP,
};

use crate::{maps, parse::Packet, schedule, stats, store::atomic_or};

/// Whether the connection table may hold `flow`: `false` proves it does not (the connection
/// filter's bit is clear, [`lb_common::conn_filter`]), so that a new flow's SYN skips the
/// table's lookup. `true` while userspace has not built the filter yet.
#[inline(always)]
pub fn may_be_known(flow: &FlowKey) -> bool {
    let Some(control) = maps::CONN_FILTER.get(conn_filter::CONTROL) else {
        return true;
    };
    let control = *control;
    let Some(half) = conn_filter::live_half(control) else {
        return true;
    };
    let hash = conn_filter::hash(flow);
    let word = conn_filter::word(hash, half, conn_filter::control_log2(control));
    maps::CONN_FILTER
        .get(word)
        .is_none_or(|bits| bits & conn_filter::bit(hash) != 0)
}

/// Sets `flow`'s bit in both halves of the connection filter: before every write of the
/// connection table, so that the filter never says no for a flow the table holds (userspace
/// builds one half again while the other is live; see [`lb_common::conn_filter`]).
#[inline(always)]
fn note_in_filter(flow: &FlowKey) {
    let Some(control) = maps::CONN_FILTER.get(conn_filter::CONTROL) else {
        return;
    };
    let log2 = conn_filter::control_log2(*control);
    let hash = conn_filter::hash(flow);
    let bit = conn_filter::bit(hash);
    for half in 0..2 {
        if let Some(word) = maps::CONN_FILTER.get_ptr_mut(conn_filter::word(hash, half, log2)) {
            // SAFETY: an element of the array, 8-byte aligned, valid for this program run.
            unsafe { atomic_or(word, bit) };
        }
    }
}

/// A known flow: its service, its real server's id and entry.
pub struct Known {
    /// The service's id.
    pub service: u32,
    /// The real server's id.
    pub real_id: u32,
    /// The real server.
    pub real: &'static RealServer,
    /// The flow label it recorded (IPv6; 0 when none).
    pub flow_label: u32,
}

/// The service and real server of a known flow, refreshing its entry. A flow whose server or
/// service has been removed since is treated as new, and so is a SYN that meets the entry of a
/// connection that closed (a FIN or RST was seen): a new connection from a reused client port,
/// which IPVS schedules anew too (`conn_reuse_mode`). Its old entry is forgotten, so that the
/// handshake's ACK finds the new connection's server rather than the old one, which may have
/// failed its check or left the service's table since.
#[inline(always)]
pub fn lookup(packet: &Packet, now: u64) -> Option<Known> {
    let conn = maps::CONNTRACK.get_ptr_mut(&packet.flow)?;
    // SAFETY: the pointer comes from the map lookup and stays valid for this program run; racing
    // writers only ever store whole, valid values.
    let conn = unsafe { &mut *conn };
    if packet.syn() && conn.flags & CONN_F_CLOSING != 0 {
        // Already gone (another CPU's SYN of the same flow): the flow is new all the same.
        let _ = maps::CONNTRACK.remove(&packet.flow);
        return None;
    }
    found(conn, packet, now)
}

/// The service and real server of an embryonic TCP flow (one the connection table does not
/// know), refreshing its entry, which the packet then settles ([`settle`]); `None` for other
/// flows, or when its server or service has been removed since.
#[inline(always)]
pub fn lookup_embryonic(packet: &Packet, now: u64) -> Option<Known> {
    if packet.flow.proto != PROTO_TCP {
        return None;
    }
    let conn = maps::EMBRYONIC.get_ptr_mut(&packet.flow)?;
    // SAFETY: as in `lookup`.
    let conn = unsafe { &mut *conn };
    let flags = conn.flags;
    let known = found(conn, packet, now)?;
    stats::count(GlobalStat::ConntrackEmbryonicHit);
    settle(packet, &known, flags, now);
    Some(known)
}

/// The flow of entry `conn`, while its service and real server are still those it was given.
#[inline(always)]
fn found(conn: &mut Connection, packet: &Packet, now: u64) -> Option<Known> {
    // The server's entry carries its service's epoch: 0 once the service is removed, another
    // once the id belongs to another service.
    let real = maps::real(conn.real)?;
    if real.service_epoch != conn.service_epoch {
        return None;
    }
    touch(conn, now);
    if packet.closing && conn.flags & CONN_F_CLOSING == 0 {
        conn.flags |= CONN_F_CLOSING;
    }
    Some(Known {
        service: conn.service,
        real_id: conn.real,
        real,
        flow_label: conn.flags >> CONN_FLOW_LABEL_SHIFT,
    })
}

/// Marks entry `conn` seen at `now`: written only when it changed (once a tick at most), so that a
/// flow's packets on several CPUs do not keep taking its cache line from each other.
#[inline(always)]
fn touch(conn: &mut Connection, now: u64) {
    if conn.last_seen_ns != now {
        conn.last_seen_ns = now;
    }
}

/// What [`remember`] did with a new flow.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Remembered {
    /// The flow is in its table now.
    Inserted = 0,
    /// A SYN whose flow the embryonic table holds already: a retransmission, or the same SYN
    /// seen twice (on two CPUs at once). Not a new connection; its entry is refreshed.
    Again = 1,
    /// The table refused it (a kernel allocation failure); its next packet is scheduled again.
    Failed = 2,
}

/// Remember the real server chosen for a new flow (`flow`; `syn`: its packet is a SYN without
/// ACK, `closing`: it has FIN or RST), and say whether the table took it. A SYN's flow goes to
/// the embryonic table if it is not there yet, with `count_on_promotion` (its server's active
/// connections go up when it is promoted); every other flow to the connection table.
///
/// A SYN is claimed with `BPF_NOEXIST`: a SYN of a settled service (main.rs) reaches here without
/// an embryonic lookup, so a retransmission is told from a new connection here, by the entry its
/// first SYN left ([`Remembered::Again`]: counted as an embryonic hit, as a lookup would have).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn remember(
    flow: &FlowKey,
    syn: bool,
    closing: bool,
    service: u32,
    real: u32,
    service_epoch: u32,
    flow_label: u32,
    count_on_promotion: bool,
    now: u64,
) -> Remembered {
    // The flags without branches.
    let conn = Connection {
        real,
        service,
        last_seen_ns: now,
        flags: (flow_label << CONN_FLOW_LABEL_SHIFT)
            | (u32::from(closing) * CONN_F_CLOSING)
            | (u32::from(syn) * CONN_F_EMBRYONIC)
            | (u32::from(count_on_promotion) * CONN_F_COUNT_ON_PROMOTION),
        service_epoch,
    };
    // A full table evicts its least recently used flow, so the insert only fails on a kernel
    // allocation failure (or, for a SYN, when its flow is there already).
    let inserted = if syn {
        maps::EMBRYONIC.insert(flow, &conn, BPF_NOEXIST)
    } else {
        note_in_filter(flow);
        maps::CONNTRACK.insert(flow, &conn, 0)
    };
    match inserted {
        Ok(()) => {
            stats::count(GlobalStat::ConntrackMiss);
            Remembered::Inserted
        }
        Err(EEXIST) if syn => {
            if let Some(entry) = maps::EMBRYONIC.get_ptr_mut(flow) {
                // SAFETY: as in `lookup`.
                touch(unsafe { &mut *entry }, now);
            }
            stats::count(GlobalStat::ConntrackEmbryonicHit);
            Remembered::Again
        }
        Err(_) => {
            stats::count(GlobalStat::ConntrackMiss);
            Remembered::Failed
        }
    }
}

/// `BPF_NOEXIST`: an insert that fails when the key is there.
const BPF_NOEXIST: u64 = 1;

/// The map helpers' answer to a `BPF_NOEXIST` insert of a key that is there: `-EEXIST`.
const EEXIST: i32 = -17;

/// A packet of the embryonic flow `known` (`flags`: its entry's), before it is forwarded to the
/// flow's server: a SYN again (a retransmission) leaves the flow as it is; a RST forgets it, as
/// the handshake never completed; anything else (the handshake's ACK) moves it into the
/// connection table, where its server counts it as active if it is a least-connection or `ovf`
/// service's.
///
/// Done before forwarding, not once the packet is forwarded as a new flow's writes are: a
/// difference between known and embryonic flows carried past `forward` makes the verifier walk
/// `forward` once for each (98,000 processed instructions instead of 46,000). A packet whose next hop has to be looked up runs the balancer
/// twice (next_hop.rs): the second run finds a promoted flow in the connection table (the same
/// server, counted once), a retransmitted SYN once more in the embryonic table (counted twice in
/// `conntrack_embryonic_hit`), and a reset flow nowhere (the RST is then scheduled as a new
/// flow's first packet, which `mh` sends to the same server).
#[inline(always)]
fn settle(packet: &Packet, known: &Known, flags: u32, now: u64) {
    let (service, real) = (known.service, known.real_id);
    if packet.syn() {
        return;
    }
    if !packet.reset() {
        let conn = Connection {
            real,
            service,
            last_seen_ns: now,
            flags: (flags & !(CONN_F_EMBRYONIC | CONN_F_COUNT_ON_PROMOTION))
                | if packet.closing { CONN_F_CLOSING } else { 0 },
            service_epoch: known.real.service_epoch,
        };
        // On a failed insert (a kernel allocation failure) the flow stays embryonic and its next
        // packet tries again.
        note_in_filter(&packet.flow);
        if maps::CONNTRACK.insert(&packet.flow, &conn, 0).is_err() {
            return;
        }
        if flags & CONN_F_COUNT_ON_PROMOTION != 0 {
            schedule::count_connection(real);
        }
        stats::count(GlobalStat::ConntrackPromoted);
    }
    // Gone already when another CPU promoted it meanwhile.
    let _ = maps::EMBRYONIC.remove(&packet.flow);
}

/// A packet's time, read once per packet for its connection and its next hop: the kernel's coarse
/// monotonic clock (the last tick), which is exact enough for idle timeouts of seconds and a
/// next hop's 100 ms, where `bpf_ktime_get_ns` reads the clock source (about 30 ns in a VM).
/// Read once a tick and CPU; the other packets of the tick take it from this CPU's `globals`
/// (see [`lb_common::config::TickClock`]), which spares them the helper's call (2-3 ns of a known
/// flow's packet), in the value the packet's counters are in (no lookup of its own).
#[inline(always)]
pub fn now(globals: *mut CpuGlobals) -> u64 {
    // SAFETY: a helper without arguments (inlined by the verifier: one load of `jiffies`).
    let tick = unsafe { bpf_jiffies64() };
    // SAFETY: a pointer to this CPU's value (the caller's), read and written by this CPU only.
    let clock = unsafe { &mut (*globals).clock };
    if clock.jiffies == tick {
        return clock.ns;
    }
    // SAFETY: as above.
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    clock.jiffies = tick;
    clock.ns = ns;
    ns
}

/// [`now`] where this CPU's globals may be missing (they never are: index 0 of a per-CPU array).
#[inline(always)]
pub fn now_or_helper(globals: Option<*mut CpuGlobals>) -> u64 {
    match globals {
        Some(globals) => now(globals),
        // SAFETY: a helper without arguments.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}
