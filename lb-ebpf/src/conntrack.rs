//! The connection table: a flow that has a real server keeps it, whatever happens to the
//! service's Maglev table afterwards (weights, servers added or removed).
//!
//! It is asked first, before the service: a known flow, the common case, then costs one hash
//! lookup. An entry only counts while its real server exists and its service still exists under
//! the epoch the entry recorded, so a removed (or removed and re-added) service's flows are not
//! followed.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    conntrack::{CONN_FLOW_LABEL_SHIFT, CONN_F_CLOSING},
    Connection, GlobalStat, RealServer,
};

use crate::{maps, parse::Packet, stats};

/// A known flow: its service, its real server's id and entry.
pub struct Known {
    /// The service's id.
    pub service: u32,
    /// The real server's id.
    pub real_id: u32,
    /// The real server.
    pub real: RealServer,
    /// The flow label it recorded (IPv6; 0 when none).
    pub flow_label: u32,
}

/// The service and real server of a known flow, refreshing its entry. A flow whose server or
/// service has been removed since is treated as new.
#[inline(always)]
pub fn lookup(packet: &Packet, now: u64) -> Option<Known> {
    let conn = maps::CONNTRACK.get_ptr_mut(&packet.flow)?;
    // SAFETY: the pointer comes from the map lookup and stays valid for this program run; racing
    // writers only ever store whole, valid values.
    let conn = unsafe { &mut *conn };
    if maps::service_epoch(conn.service) != conn.service_epoch {
        return None;
    }
    let real = maps::real(conn.real)?;
    // Written only when it changed (once a tick at most), so that a flow's packets on several
    // CPUs do not keep taking its cache line from each other.
    if conn.last_seen_ns != now {
        conn.last_seen_ns = now;
    }
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

/// Remember the real server chosen for a new flow; whether the table took it.
#[inline(always)]
pub fn remember(packet: &Packet, service: u32, real: u32, flow_label: u32, now: u64) -> bool {
    let conn = Connection {
        real,
        service,
        last_seen_ns: now,
        flags: (flow_label << CONN_FLOW_LABEL_SHIFT)
            | if packet.closing { CONN_F_CLOSING } else { 0 },
        service_epoch: maps::service_epoch(service),
    };
    stats::count(GlobalStat::ConntrackMiss);
    // A full table evicts its least recently used flow, so the insert only fails on a kernel
    // allocation failure; the flow is then scheduled again by Maglev on its next packet.
    maps::CONNTRACK.insert(&packet.flow, &conn, 0).is_ok()
}

/// A packet's time, read once per packet for its connection and its next hop: the kernel's coarse
/// monotonic clock (the last tick), which is exact enough for idle timeouts of seconds and a
/// next hop's 100 ms, and costs a load where `bpf_ktime_get_ns` reads the clock source (about
/// 30 ns in a VM).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}
