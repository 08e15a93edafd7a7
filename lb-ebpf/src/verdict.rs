//! What the program does with a packet, and the counter that says why.

use aya_ebpf::bindings::xdp_action;
use lb_common::GlobalStat;

/// [`Verdict::code`] of a pass: the reason in the low bits.
const CODE_PASS: u32 = 1 << 16;
/// [`Verdict::code`] of a drop.
const CODE_DROP: u32 = 2 << 16;
/// The reason's bits of a code.
const CODE_REASON: u32 = 0xffff;

/// The outcome of one packet.
pub enum Verdict {
    /// Hand the packet to the kernel, counted under the reason (a [`GlobalStat`]'s index).
    Pass(u32),
    /// Drop the packet, counted under the reason (a [`GlobalStat`]'s index).
    Drop(u32),
    /// Send the rewritten packet back out of the interface it came in on.
    Tx,
    /// Send a reply of our own (an ICMP error) back out of the interface it came in on.
    Reply,
    /// The packet was redirected to another interface; holds the helper's return value.
    Redirect(u32),
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: GlobalStat) -> Self {
        Self::Pass(reason as u32)
    }

    #[inline(always)]
    pub const fn drop(reason: GlobalStat) -> Self {
        Self::Drop(reason as u32)
    }

    /// A pass or a drop as one number, for a global function to return ([`Verdict::from_code`]);
    /// never 0. Other verdicts are not returned that way: they give a pass as malformed.
    #[inline(always)]
    pub const fn code(&self) -> u32 {
        match self {
            Self::Pass(reason) => CODE_PASS | *reason,
            Self::Drop(reason) => CODE_DROP | *reason,
            _ => CODE_PASS | GlobalStat::PassMalformed as u32,
        }
    }

    /// The verdict that [`Verdict::code`] gave `code`.
    #[inline(always)]
    pub const fn from_code(code: u32) -> Self {
        if code & CODE_DROP != 0 {
            Self::Drop(code & CODE_REASON)
        } else {
            Self::Pass(code & CODE_REASON)
        }
    }

    /// The XDP action to return.
    #[inline(always)]
    pub const fn action(&self) -> u32 {
        match self {
            Self::Pass(_) => xdp_action::XDP_PASS,
            Self::Drop(_) => xdp_action::XDP_DROP,
            Self::Tx | Self::Reply => xdp_action::XDP_TX,
            Self::Redirect(action) => *action,
        }
    }

    /// Whether the packet leaves towards a real server.
    #[inline(always)]
    pub const fn is_forwarded(&self) -> bool {
        matches!(self, Self::Tx | Self::Redirect(_))
    }
}
