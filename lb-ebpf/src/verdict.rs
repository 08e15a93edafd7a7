//! What the program does with a packet, and the counter that says why.

use aya_ebpf::bindings::xdp_action;
use lb_common::GlobalStat;

/// The outcome of one packet.
pub enum Verdict {
    /// Hand the packet to the kernel, counted under the reason.
    Pass(GlobalStat),
    /// Drop the packet, counted under the reason.
    Drop(GlobalStat),
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
        Self::Pass(reason)
    }

    #[inline(always)]
    pub const fn drop(reason: GlobalStat) -> Self {
        Self::Drop(reason)
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
