//! Per-CPU counters: global by verdict and reason, and per real server (a service's are its
//! servers', summed by userspace).

use lb_common::{CpuGlobals, GlobalStat};

use crate::{maps, verdict::Verdict};

/// This CPU's global counters (and clock: see [`crate::conntrack::now`]).
#[inline(always)]
pub fn globals() -> Option<*mut CpuGlobals> {
    maps::GLOBAL_STATS.get_ptr_mut(0)
}

/// Add one to the counter at `index` (a [`GlobalStat`]'s) of `globals`.
#[inline(always)]
fn bump(globals: *mut CpuGlobals, index: u32) {
    // SAFETY: a per-CPU value, written by this CPU only.
    if let Some(counter) = unsafe { (*globals).counters.0.get_mut(index as usize) } {
        *counter += 1;
    }
}

/// Add one to a global counter.
#[inline(always)]
pub fn count(stat: GlobalStat) {
    if let Some(globals) = globals() {
        bump(globals, stat as u32);
    }
}

/// Count the verdict and, for a packet not forwarded, its reason, and a connection-table hit, in
/// this CPU's `globals` (looked up once per packet, for the clock too).
#[inline(always)]
pub fn count_verdict(globals: Option<*mut CpuGlobals>, verdict: &Verdict, conntrack_hit: bool) {
    let Some(counters) = globals else {
        return;
    };
    match verdict {
        Verdict::Pass(reason) => {
            bump(counters, GlobalStat::VerdictPass as u32);
            bump(counters, *reason);
        }
        Verdict::Drop(reason) => {
            bump(counters, GlobalStat::VerdictDrop as u32);
            bump(counters, *reason);
        }
        Verdict::Tx | Verdict::Reply => bump(counters, GlobalStat::VerdictTx as u32),
        Verdict::Redirect(_) => bump(counters, GlobalStat::VerdictRedirect as u32),
    }
    if conntrack_hit {
        bump(counters, GlobalStat::ConntrackHit as u32);
    }
}

/// Count a forwarded packet for its real server; a new flow's also as a connection (only then: a
/// known flow's packet, the common one, does not write the connection counters). A service's
/// counters are its servers' (a real-server id belongs to one service), summed by userspace with
/// what servers that left it had counted: one per-CPU lookup per packet instead of two.
#[inline(always)]
pub fn count_forwarded(real: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = maps::REAL_STATS.get_ptr_mut(real) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            if new_flow {
                (*c).conns += 1;
            }
        }
    }
}
