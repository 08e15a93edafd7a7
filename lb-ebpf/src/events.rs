//! Debug events: why a packet was passed or dropped, which server a new flow got, through aya-log.
//!
//! They live in a program of their own, `xlb_events`, which the balancer reaches by a tail call
//! only when events are switched on: the balancer then carries no logging code, so the verifier
//! walks the logging once, not once for every path through the balancer (that was a quarter of
//! its work). The balancer leaves its verdict and a note in a per-CPU slot; the event program
//! logs them and returns the verdict's action. Without the event program in the program array,
//! the tail call falls through and the balancer returns the action itself.

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    config::{DebugEvent, EVENT_INSERT_FAILED, EVENT_NEW_FLOW},
    GlobalStat,
};

use crate::{maps, verdict::Verdict};

/// Leave the verdict and `note` for the event program and call it; returns only when the call
/// could not be made.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, verdict: &Verdict, mut note: DebugEvent) {
    note.action = verdict.action();
    note.reason = match verdict {
        Verdict::Pass(reason) | Verdict::Drop(reason) => *reason as u32,
        _ => u32::MAX,
    };
    let Some(slot) = maps::DEBUG_EVENT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot, written by this CPU only; the tail call below runs on this CPU.
    unsafe {
        *slot = note;
        maps::TAIL_CALLS.tail_call(ctx, lb_common::maps::TAIL_CALL_EVENTS);
    }
}

/// The debug-event program: logs what the balancer left in its slot, returns its action.
#[xdp]
pub fn xlb_events(ctx: XdpContext) -> u32 {
    let Some(note) = maps::DEBUG_EVENT.get(0).copied() else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    let verdict = match note.action {
        aya_ebpf::bindings::xdp_action::XDP_PASS => "pass",
        aya_ebpf::bindings::xdp_action::XDP_DROP => "drop",
        _ => "",
    };
    if let Some(reason) = GlobalStat::ALL.get(note.reason as usize) {
        aya_log_ebpf::debug!(&ctx, "{}: {}", verdict, reason.name());
    }
    if note.kind == EVENT_NEW_FLOW {
        aya_log_ebpf::debug!(
            &ctx,
            "new flow from port {} -> service {} real server {}",
            u16::from_be(note.sport),
            note.service,
            note.real
        );
    } else if note.kind == EVENT_INSERT_FAILED {
        aya_log_ebpf::warn!(&ctx, "connection table insert failed");
    }
    note.action
}
