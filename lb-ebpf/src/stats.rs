//! Per-CPU counters: global by verdict and reason, per service and per real server.

use lb_common::GlobalStat;

use crate::{maps, verdict::Verdict};

/// Add one to a global counter.
#[inline(always)]
pub fn count(stat: GlobalStat) {
    count_index(stat as u32);
}

/// Add one to the global counter at `index` (a [`GlobalStat`]'s).
#[inline(always)]
fn count_index(index: u32) {
    if let Some(counter) = maps::GLOBAL_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe { *counter += 1 };
    }
}

/// Count the verdict and, for a packet not forwarded, its reason.
#[inline(always)]
pub fn count_verdict(verdict: &Verdict) {
    match verdict {
        Verdict::Pass(reason) => {
            count(GlobalStat::VerdictPass);
            count_index(*reason);
        }
        Verdict::Drop(reason) => {
            count(GlobalStat::VerdictDrop);
            count_index(*reason);
        }
        Verdict::Tx | Verdict::Reply => count(GlobalStat::VerdictTx),
        Verdict::Redirect(_) => count(GlobalStat::VerdictRedirect),
    }
}

/// Count a forwarded packet for its service and real server.
#[inline(always)]
pub fn count_forwarded(service: u32, real: u32, bytes: u64, new_flow: bool) {
    let conns = new_flow as u64;
    if let Some(c) = maps::SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).conns += conns;
        }
    }
    if let Some(c) = maps::REAL_STATS.get_ptr_mut(real) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).conns += conns;
        }
    }
}
