//! Choosing a real server for a new flow, by the service's scheduler, from the service's live
//! table: Maglev (`mh`, the slot of the flow's hash), the source or destination address's hash
//! (`sh`, `dh`), the next slot of a round-robin sequence (`rr`, `wrr`), the less loaded of two
//! servers drawn at random (`lc`, `wlc`, `sed`, `nq`), or the first server by weight (`fo`,
//! `ovf`). A persistent service
//! (`-p`) first asks its persistence table for the client's server. Only new flows get here;
//! what a choice changes is written once the flow is forwarded ([`commit`]).
//!
//! A server with an upper connection threshold (`-x`) that reached it is overloaded
//! ([`lb_common::RealLimits`]) and passed by, as IPVS's schedulers do: `mh` and `sh` with
//! `sh-fallback` try the next slots of the table, `rr`/`wrr` the next servers of the sequence,
//! `lc`/`wlc`/`sed`/`nq` draw again, `fo`/`ovf` take the next server by weight; `sh` without it
//! and `dh` give the flow no server (IPVS returns none).
//! Each tries at most [`OVERLOAD_PROBES`] slots. A persistent client keeps its server however
//! loaded (IPVS's templates do not look at the overload flag either).

use lb_common::{
    limits::MAGLEV_TABLE_SIZE,
    real::{LIMIT_F_FULL, LIMIT_F_OVERLOADED, LIMIT_F_WEIGHT_CAP},
    service::{
        table_slot, OVERLOAD_PROBES, SCHED_LEAST_CONN, SCHED_SEQUENCE, SCHED_SOURCE_HASH,
        SCHED_WEIGHT_ORDER, SERVICE_F_EXPECTED_DELAY, SERVICE_F_FALLBACK, SERVICE_F_IDLE_FIRST,
        SERVICE_F_OVERFLOW, SERVICE_F_PERSISTENT, SERVICE_F_WEIGHTED,
    },
    FlowKey, Persistent, Service, PROTO_TCP,
};

use aya_ebpf::helpers::bpf_get_prandom_u32;

use crate::maps::{
    self, MAGLEV, PERSIST, PERSIST_SETTINGS, REAL_CONNS, REAL_LIMITS, REAL_WEIGHTS, SCHED_CURSORS,
};

/// What a new flow's choice still has to write once the flow is forwarded ([`commit`]): a packet
/// whose next hop has to be looked up runs the balancer twice (next_hop.rs), and both runs must
/// choose the same server, so [`choose`] writes nothing that would change the second run's
/// choice.
pub struct Pending {
    /// Whether the choice took a round-robin turn.
    pub turn: bool,
    /// The round-robin position that follows the choice, when it took a turn. Never compared
    /// with anything: the verifier then need not keep apart the states of every position a walk
    /// past overloaded servers may end at.
    pub advance: u32,
    /// Whether the client is to be remembered as the chosen server's (a persistent service's
    /// client that had none).
    pub remember: bool,
    /// Whether the chosen server's active connections go up by one (a new TCP flow of a
    /// least-connection service or of `ovf`).
    pub count: bool,
}

impl Pending {
    /// Nothing to write yet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            turn: false,
            advance: 0,
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
    // ovf's count without a branch (userspace gives only TCP services the flag): the verifier
    // then walks what follows the other schedulers' choice once, not once for each value.
    pending.count = (least_conn && flow.proto == PROTO_TCP) | (svc.flags & SERVICE_F_OVERFLOW != 0);
    if svc.flags & SERVICE_F_PERSISTENT != 0 {
        if let Some(real) = remembered(svc.id, flow, now) {
            return Some(real);
        }
        pending.remember = true;
    }
    if least_conn {
        return least_connections(svc);
    }
    schedule(svc, flow, pending)
}

/// The flow was forwarded to `real`: this CPU takes its round-robin turn, a least-connection
/// or `ovf` service's server counts one more active connection, a server with thresholds one more
/// connection, and a persistent service's client is remembered as `real`'s.
#[inline(always)]
pub fn commit(service: u32, flow: &FlowKey, real: u32, now: u64, pending: &Pending) {
    if pending.turn {
        if let Some(cursor) = SCHED_CURSORS.get_ptr_mut(service) {
            // SAFETY: a per-CPU slot, read and written by this CPU only.
            unsafe { *cursor = pending.advance };
        }
    }
    if pending.count {
        count_connection(real);
    }
    if let Some(limits) = REAL_LIMITS.get_ptr_mut(real) {
        // SAFETY: as for REAL_CONNS above; the count is corrected by userspace likewise.
        let limits = unsafe { &mut *limits };
        if limits.upper != 0 {
            limits.conns = limits.conns.wrapping_add(1);
            // IPVS (ip_vs_bind_dest): overloaded once its connections reach the threshold.
            if limits.conns >= limits.upper {
                limits.flags |= LIMIT_F_OVERLOADED;
            }
        }
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

/// The scheduler's choice, persistence aside: where its walk of the table starts, and how many
/// slots it may try past overloaded servers ([`first_admitted`]). `fo` and `ovf` walk their
/// table, the servers by weight, from its first slot.
#[inline(always)]
fn schedule(svc: &Service, flow: &FlowKey, pending: &mut Pending) -> Option<u32> {
    let base = svc.live_table_base();
    let sequence = svc.scheduler == SCHED_SEQUENCE;
    let (start, probes) = if sequence {
        // rr/wrr: this CPU's position; a position past the sequence (it got shorter) starts
        // over. Overloaded servers are passed by, as IPVS's rr and wrr do.
        let pos = *SCHED_CURSORS.get(svc.id)?;
        (
            if pos < MAGLEV_TABLE_SIZE { pos } else { 0 },
            OVERLOAD_PROBES,
        )
    } else if svc.scheduler == SCHED_WEIGHT_ORDER {
        (0, OVERLOAD_PROBES)
    } else {
        // An overloaded server: IPVS's dh and sh (without sh-fallback) give no server; mh and
        // sh-fallback the next available server of the table.
        let fallback = svc.scheduler == lb_common::service::SCHED_MAGLEV
            || (svc.scheduler == SCHED_SOURCE_HASH && svc.flags & SERVICE_F_FALLBACK != 0);
        (
            table_slot(svc.scheduler, svc.flags, flow),
            if fallback { OVERLOAD_PROBES } else { 1 },
        )
    };
    let (real, next) = first_admitted(base, start, probes);
    if real == 0 {
        return None;
    }
    if sequence {
        pending.turn = true;
        pending.advance = next;
    }
    Some(real)
}

/// The first server that takes new connections from slot `start` of the table at `base` on,
/// trying at most `probes` slots, and the slot after it; server 0 when none does. An empty slot
/// ends a round-robin sequence, and the unused slot after every table (see
/// `lb_common::limits::MAGLEV_TABLE_STRIDE`) ends a Maglev table, so the walk goes on at the
/// table's first slot; an empty first slot is the empty table: no server.
///
/// Written for the verifier: one way out of the loop, and no test of the position (`pos` is
/// only ever a lookup key), so that fewer of the states after the loop differ in what it must
/// keep apart; each slot more costs it about 2,700 processed instructions (the choice is a
/// global function of the program, `xlb_choose` in main.rs, which the verifier checks once).
#[inline(always)]
fn first_admitted(base: u32, start: u32, probes: u32) -> (u32, u32) {
    let mut pos = start;
    let mut found = 0;
    let mut i = 0;
    while i < probes && i < OVERLOAD_PROBES {
        let mut real = slot_value(base + pos);
        if real == 0 {
            pos = 0;
            real = slot_value(base);
            if real == 0 {
                break;
            }
        }
        pos += 1;
        if admits(real) {
            found = real;
            break;
        }
        i += 1;
    }
    (found, pos)
}

/// Whether a real server takes new connections: it is neither overloaded nor full (`ovf`). The
/// overload flag is set by [`commit`] when a new flow brings the server's count to its upper
/// threshold, the full flag by [`count_connection`] when an `ovf` server's active connections
/// pass its weight; userspace sets or clears both when it writes the counts from the connection
/// table (the data path only counts up, so only a count written by userspace can drop back).
/// One test here keeps the scheduler's walks cheap for the verifier: testing `ovf`'s rule in
/// the walk itself (two more lookups per slot) took it from 89,600 to 200,000 processed
/// instructions.
#[inline(always)]
fn admits(real: u32) -> bool {
    REAL_LIMITS
        .get(real)
        .is_none_or(|limits| limits.flags & (LIMIT_F_OVERLOADED | LIMIT_F_FULL) == 0)
}

/// `lc`/`wlc`/`sed`/`nq`: of two servers drawn at random from the table (every server with a
/// weight, in turn), the one with fewer active connections, or fewer per unit of weight, or the
/// shorter expected delay; for `nq` one without active connections first. An overloaded server
/// is passed by: the other one wins, and when both are, two more are drawn.
#[inline(always)]
fn least_connections(svc: &Service) -> Option<u32> {
    let base = svc.live_table_base();
    let mut found = 0;
    let mut round = 0;
    while round < OVERLOAD_PROBES / 2 {
        // SAFETY: helpers without arguments.
        let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        let a = slot_value(base + r1 % MAGLEV_TABLE_SIZE);
        let b = slot_value(base + r2 % MAGLEV_TABLE_SIZE);
        if a == 0 || b == 0 {
            break;
        }
        let (a_ok, b_ok) = (admits(a), admits(b));
        if a_ok && b_ok {
            found = less_loaded(svc, a, b);
            break;
        }
        if a_ok || b_ok {
            found = if a_ok { a } else { b };
            break;
        }
        round += 1;
    }
    (found != 0).then_some(found)
}

/// Of servers `a` and `b`, the one with fewer active connections (per unit of weight for
/// `wlc`; the shorter expected delay, (connections + 1) per unit of weight, for `sed`; for `nq`
/// an idle one, else as `sed`); `a` on a tie.
#[inline(always)]
fn less_loaded(svc: &Service, a: u32, b: u32) -> u32 {
    let (ca, cb) = (active_connections(a), active_connections(b));
    if svc.flags & SERVICE_F_IDLE_FIRST != 0 && (ca == 0 || cb == 0) {
        return if ca == 0 { a } else { b };
    }
    let a_wins = if svc.flags & SERVICE_F_WEIGHTED != 0 {
        // sed and nq: the connection the flow would add counts.
        let delay = u64::from(svc.flags & SERVICE_F_EXPECTED_DELAY != 0);
        let (ca, cb) = (u64::from(ca) + delay, u64::from(cb) + delay);
        // ca / wa <= cb / wb, without dividing.
        ca * u64::from(weight(b)) <= cb * u64::from(weight(a))
    } else {
        ca <= cb
    };
    if a_wins {
        a
    } else {
        b
    }
}

/// A server's active connections, as the data path counts them ([`count_connection`]) and the
/// runtime corrects them.
#[inline(always)]
fn active_connections(real: u32) -> u32 {
    REAL_CONNS.get(real).copied().unwrap_or(0)
}

/// A server's weight, as the runtime writes it for the schedulers that read it.
#[inline(always)]
fn weight(real: u32) -> u32 {
    REAL_WEIGHTS.get(real).copied().unwrap_or(1)
}

/// The server id in a slot of the pool; 0 means "no server" (the table of a service without
/// any, or past the end of a round-robin sequence).
#[inline(always)]
fn slot_value(slot: u32) -> u32 {
    MAGLEV.value(slot)
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

/// One more active connection for `real` (a least-connection or `ovf` service's server): a new
/// TCP flow that is not embryonic, or an embryonic one promoted (conntrack.rs). An `ovf` server
/// is full once its active connections exceed its weight.
#[inline(always)]
pub fn count_connection(real: u32) {
    let Some(conns) = REAL_CONNS.get_ptr_mut(real) else {
        return;
    };
    // SAFETY: a valid u32 of the map for this program run. Not atomic (the BPF target has no
    // atomics in core): two CPUs adding at once may count one, which the count userspace writes
    // every second corrects.
    let active = unsafe {
        *conns = (*conns).wrapping_add(1);
        *conns
    };
    if let Some(limits) = REAL_LIMITS.get_ptr_mut(real) {
        // SAFETY: as above; userspace rewrites the flags with the counts.
        let limits = unsafe { &mut *limits };
        if limits.flags & LIMIT_F_WEIGHT_CAP != 0 && active > weight(real) {
            limits.flags |= LIMIT_F_FULL;
        }
    }
}
