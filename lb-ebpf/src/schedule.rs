//! Choosing a real server for a new flow, by the service's scheduler, from the service's live
//! table: Maglev (`mh`, the slot of the flow's hash), the source or destination address's hash
//! (`sh`, `dh`), the next slot of a round-robin sequence (`rr`, `wrr`), or the less loaded of
//! two servers drawn at random (`lc`, `wlc`). A persistent service
//! (`-p`) first asks its persistence table for the client's server. Only new flows get here;
//! what a choice changes is written once the flow is forwarded ([`commit`]).

use lb_common::{
    hash::{address_hash, flow_hash},
    limits::MAGLEV_TABLE_SIZE,
    service::{
        SCHED_DEST_HASH, SCHED_LEAST_CONN, SCHED_SEQUENCE, SCHED_SOURCE_HASH, SERVICE_F_HASH_PORT,
        SERVICE_F_PERSISTENT, SERVICE_F_WEIGHTED,
    },
    FlowKey, Persistent, Service, PROTO_TCP,
};

use aya_ebpf::helpers::bpf_get_prandom_u32;

use crate::maps::{
    self, MAGLEV, PERSIST, PERSIST_SETTINGS, REAL_CONNS, REAL_WEIGHTS, SCHED_CURSORS,
};

/// What a new flow's choice still has to write once the flow is forwarded ([`commit`]): a packet
/// whose next hop has to be looked up runs the balancer twice (next_hop.rs), and both runs must
/// choose the same server, so [`choose`] writes nothing that would change the second run's
/// choice.
pub struct Pending {
    /// The round-robin position that follows the choice; [`NO_ADVANCE`] when it took no turn.
    pub advance: u32,
    /// Whether the client is to be remembered as the chosen server's (a persistent service's
    /// client that had none).
    pub remember: bool,
    /// Whether the chosen server's active connections go up by one (a least-connection
    /// service's new TCP flow).
    pub count: bool,
}

/// [`Pending::advance`] when the choice took no round-robin turn.
pub const NO_ADVANCE: u32 = u32::MAX;

impl Pending {
    /// Nothing to write yet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            advance: NO_ADVANCE,
            remember: false,
            count: false,
        }
    }
}

/// The real-server id for this new flow, or `None` when the service has no server available;
/// `pending` gets what [`commit`] writes once the flow is forwarded.
#[inline(always)]
pub fn choose(svc: &Service, flow: &FlowKey, now: u64, pending: &mut Pending) -> Option<u32> {
    let least_conn = svc.scheduler == SCHED_LEAST_CONN;
    pending.count = least_conn && flow.proto == PROTO_TCP;
    if svc.flags & SERVICE_F_PERSISTENT != 0 {
        if let Some(real) = remembered(svc.id, flow, now) {
            return Some(real);
        }
        pending.remember = true;
    }
    if least_conn {
        return least_connections(svc);
    }
    schedule(svc, flow, &mut pending.advance)
}

/// The flow was forwarded to `real`: this CPU takes its round-robin turn, a least-connection
/// service's server counts one more connection, and a persistent service's client is remembered
/// as `real`'s.
#[inline(always)]
pub fn commit(service: u32, flow: &FlowKey, real: u32, now: u64, pending: &Pending) {
    if pending.advance != NO_ADVANCE {
        if let Some(cursor) = SCHED_CURSORS.get_ptr_mut(service) {
            // SAFETY: a per-CPU slot, read and written by this CPU only.
            unsafe { *cursor = pending.advance };
        }
    }
    if pending.count {
        count_connection(real);
    }
    if pending.remember {
        if let Some(settings) = PERSIST_SETTINGS.get(service) {
            let entry = Persistent {
                real,
                service_epoch: maps::service_epoch(service),
                last_seen_ns: now,
            };
            // A failed insert (the kernel out of memory) only costs the client its persistence.
            let _ = PERSIST.insert(&settings.key(service, &flow.src, flow.family), &entry, 0);
        }
    }
}

/// The scheduler's choice, persistence aside.
#[inline(always)]
fn schedule(svc: &Service, flow: &FlowKey, advance: &mut u32) -> Option<u32> {
    let base = svc.live_table_base();
    if svc.scheduler == SCHED_SEQUENCE {
        return next_in_sequence(svc.id, base, advance);
    }
    let hash = if svc.scheduler == SCHED_SOURCE_HASH {
        let port = if svc.flags & SERVICE_F_HASH_PORT != 0 {
            flow.sport
        } else {
            0
        };
        address_hash(&flow.src, flow.family, port)
    } else if svc.scheduler == SCHED_DEST_HASH {
        address_hash(&flow.dst, flow.family, 0)
    } else {
        flow_hash(flow)
    };
    server_at(base + hash % MAGLEV_TABLE_SIZE)
}

/// `lc`/`wlc`: of two servers drawn at random from the table (every server with a weight, in
/// turn), the one with fewer active connections, or fewer per unit of weight.
#[inline(always)]
fn least_connections(svc: &Service) -> Option<u32> {
    let base = svc.live_table_base();
    // SAFETY: helpers without arguments.
    let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    let a = server_at(base + r1 % MAGLEV_TABLE_SIZE)?;
    let b = server_at(base + r2 % MAGLEV_TABLE_SIZE)?;
    let conns = |id: u32| u64::from(REAL_CONNS.get(id).copied().unwrap_or(0));
    let (ca, cb) = (conns(a), conns(b));
    let a_wins = if svc.flags & SERVICE_F_WEIGHTED != 0 {
        let weight = |id: u32| u64::from(REAL_WEIGHTS.get(id).copied().unwrap_or(1));
        // ca / wa <= cb / wb, without dividing.
        ca * weight(b) <= cb * weight(a)
    } else {
        ca <= cb
    };
    Some(if a_wins { a } else { b })
}

/// The server in a slot of the pool; slot value 0 means "no server" (the table of a service
/// without any).
#[inline(always)]
fn server_at(slot: u32) -> Option<u32> {
    let real = *MAGLEV.get(slot)?;
    (real != 0).then_some(real)
}

/// The next server of the service's sequence for this CPU, and in `advance` the position after
/// it. The sequence runs from the table's first slot to its first empty one; a position past it
/// (the sequence got shorter) starts over.
#[inline(always)]
fn next_in_sequence(service: u32, base: u32, advance: &mut u32) -> Option<u32> {
    let pos = *SCHED_CURSORS.get(service)?;
    let pos = if pos < MAGLEV_TABLE_SIZE { pos } else { 0 };
    let (real, next) = match server_at(base + pos) {
        Some(real) => (real, pos + 1),
        None => (server_at(base)?, 1),
    };
    *advance = next;
    Some(real)
}

/// A persistent service's client's server, while the client has one that is still there (a
/// quiesced server at weight 0 keeps its clients; userspace forgets the clients of a failed or
/// removed one) and its last new connection is within the service's timeout.
#[inline(always)]
fn remembered(service: u32, flow: &FlowKey, now: u64) -> Option<u32> {
    let settings = PERSIST_SETTINGS.get(service)?;
    let key = settings.key(service, &flow.src, flow.family);
    let entry = PERSIST.get_ptr_mut(&key)?;
    // SAFETY: the pointer comes from the map lookup and stays valid for this program run; racing
    // writers only ever store whole, valid values.
    let entry = unsafe { &mut *entry };
    if entry.service_epoch != maps::service_epoch(service)
        || now.saturating_sub(entry.last_seen_ns) >= settings.timeout_ns
    {
        return None;
    }
    maps::real(entry.real)?;
    entry.last_seen_ns = now;
    Some(entry.real)
}

/// One more active connection for `real` (a least-connection service's server): a new TCP flow
/// that is not embryonic, or an embryonic one promoted (conntrack.rs).
#[inline(always)]
pub fn count_connection(real: u32) {
    if let Some(conns) = REAL_CONNS.get_ptr_mut(real) {
        // SAFETY: a valid u32 of the map for this program run. Not atomic (the BPF target has no
        // atomics in core): two CPUs adding at once may count one, which the count userspace
        // writes every second corrects.
        unsafe { *conns = (*conns).wrapping_add(1) };
    }
}
