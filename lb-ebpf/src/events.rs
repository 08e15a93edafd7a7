//! Debug events: why a packet was passed or dropped, which server a new flow got, through aya-log.
//!
//! They live in a program of their own, `xlb_events`, which the balancer reaches by a tail call
//! only when events are switched on: the balancer then carries no logging code, so the verifier
//! walks the logging once, not once for every path through the balancer (that was a quarter of
//! its work). The balancer leaves its verdict and a note in a per-CPU slot; the event program
//! logs them and returns the verdict's action. Without the event program in the program array,
//! the tail call falls through and the balancer returns the action itself.

use aya_ebpf::{
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::{
    config::{DebugEvent, EVENT_INSERT_FAILED, EVENT_NEW_FLOW},
    GlobalStat,
};

use crate::{maps, verdict::Verdict};

/// Room for a counter's name (the longest has 25 bytes).
const TEXT_LEN: usize = 28;

/// A counter's name, copied where the logging reads it.
#[repr(C)]
pub struct EventText {
    /// Bytes of `bytes` in use.
    len: u32,
    /// The name.
    bytes: [u8; TEXT_LEN],
}

/// Index 0 → per-CPU scratch for the reason's name. Written and read here only (not pinned).
#[map(name = "XLB_EVENT_TEXT")]
static EVENT_TEXT: PerCpuArray<EventText> = PerCpuArray::with_max_entries(1, 0);

/// Leave the verdict and `note` for the event program and call it; returns only when the call
/// could not be made.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, verdict: &Verdict, mut note: DebugEvent) {
    note.action = verdict.action();
    note.reason = match verdict {
        Verdict::Pass(reason) | Verdict::Drop(reason) => *reason,
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
        if let Some(name) = reason_text(*reason) {
            aya_log_ebpf::debug!(&ctx, "{}: {}", verdict, name);
        }
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

/// The reason's name, copied into this CPU's scratch and read back through a length the verifier
/// cannot know: the logging after it is then walked once, not once for each of the names (which
/// each have a length of their own: 340,650 processed instructions before, for this program).
#[inline(always)]
fn reason_text(reason: GlobalStat) -> Option<&'static str> {
    // SAFETY: a per-CPU slot, written and read by this CPU only, within this program run.
    let text: &'static mut EventText = unsafe { &mut *EVENT_TEXT.get_ptr_mut(0)? };
    let name = reason.name().as_bytes();
    let n = name.len().min(TEXT_LEN);
    text.bytes[..n].copy_from_slice(&name[..n]);
    // SAFETY: both pointers come from a live reference.
    let len = unsafe {
        core::ptr::write_volatile(&raw mut text.len, n as u32);
        core::ptr::read_volatile(&raw const text.len) as usize
    };
    if len > TEXT_LEN {
        return None;
    }
    // SAFETY: the bytes are a prefix of an ASCII name.
    Some(unsafe { core::str::from_utf8_unchecked(&text.bytes[..len]) })
}
