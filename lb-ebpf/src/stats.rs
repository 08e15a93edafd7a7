//! Per-CPU counters: global by verdict and reason, per service and per real server.

use aya_ebpf::programs::XdpContext;
use lb_common::GlobalStat;

use crate::{maps, verdict::Verdict};

/// Add one to a global counter.
#[inline(always)]
pub fn count(stat: GlobalStat) {
    if let Some(counter) = maps::GLOBAL_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe { *counter += 1 };
    }
}

/// Count the verdict and, for a packet not forwarded, its reason (with a debug event when those
/// are switched on).
#[inline(always)]
pub fn count_verdict(ctx: &XdpContext, verdict: &Verdict) {
    match verdict {
        Verdict::Pass(reason) => {
            count(GlobalStat::VerdictPass);
            count(*reason);
            if maps::debug_events() {
                aya_log_ebpf::debug!(ctx, "pass: {}", reason.name());
            }
        }
        Verdict::Drop(reason) => {
            count(GlobalStat::VerdictDrop);
            count(*reason);
            if maps::debug_events() {
                aya_log_ebpf::debug!(ctx, "drop: {}", reason.name());
            }
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
