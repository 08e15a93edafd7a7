//! Settings of the data path that userspace changes at run time.

use bytemuck::{Pod, Zeroable};

/// Emit data-path debug events (why a packet was passed or dropped, which server a flow got)
/// through aya-log. Off by default: the hot path then pays one load and one branch.
pub const CONFIG_F_DEBUG_EVENTS: u32 = 1 << 0;

/// The data path's run-time settings, index 0 of [`crate::maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DataplaneConfig {
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Source address of IPv4 tunnels, network order; 0: the egress interface's, from the FIB.
    pub tunnel_src_v4: u32,
    /// Source address of IPv6 tunnels, network order; all zero: the egress interface's.
    pub tunnel_src_v6: [u32; 4],
}

crate::user_pod!(DataplaneConfig);

/// [`DebugEvent::kind`]: nothing beyond the verdict.
pub const EVENT_NONE: u32 = 0;
/// [`DebugEvent::kind`]: a new flow was given a real server.
pub const EVENT_NEW_FLOW: u32 = 1;
/// [`DebugEvent::kind`]: a new flow could not be remembered (the kernel refused the insert).
pub const EVENT_INSERT_FAILED: u32 = 2;

/// What the balancer hands its debug-event program about one packet (per-CPU scratch, index 0 of
/// [`crate::maps::DEBUG_EVENT`]), when debug events are on. The events are written by a program
/// of their own, reached by a tail call, so that the balancer carries no logging code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DebugEvent {
    /// The XDP action the balancer decided, returned by the event program.
    pub action: u32,
    /// The [`crate::GlobalStat`] index of the reason a packet was passed or dropped; `u32::MAX`
    /// when it was forwarded.
    pub reason: u32,
    /// `EVENT_*`.
    pub kind: u32,
    /// The service's id (new flow).
    pub service: u32,
    /// The real server's id (new flow).
    pub real: u32,
    /// The client's port, network order (new flow).
    pub sport: u16,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: u16,
}

crate::user_pod!(DebugEvent);

/// The kernel's coarse monotonic clock as this CPU's data path last read it, and the tick
/// (`jiffies`) it read it in (per-CPU, in index 0 of [`crate::maps::GLOBAL_STATS`]: see
/// [`crate::CpuGlobals`]). The coarse clock moves
/// once a tick, when the tick moves `jiffies` (which a program reads with one load: the verifier
/// inlines `bpf_jiffies64`), so a packet in the same tick takes the time from here instead of
/// calling `bpf_ktime_get_coarse_ns`. At most one tick staler than the helper's answer (when the
/// helper was called between the tick's two updates), which the timeouts it serves do not feel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TickClock {
    /// `jiffies` when `ns` was read; 0 before the first read.
    pub jiffies: u64,
    /// The coarse clock's nanoseconds then.
    pub ns: u64,
}

crate::user_pod!(TickClock);

/// What the balancer hands its ICMP program for a "fragmentation needed" / "packet too big" reply
/// (per-CPU scratch, index 0 of [`crate::maps::ICMP_REPLY`]). Replies are rare, and built by a
/// program of their own reached by a tail call, so that the balancer carries no reply code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IcmpReply {
    /// The client, who gets the reply; network order, IPv4 in `client[0]`.
    pub client: [u32; 4],
    /// The VIP, the reply's source; network order, IPv4 in `vip[0]`.
    pub vip: [u32; 4],
    /// The MTU to announce.
    pub mtu: u32,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// 1 when the frame carries a VLAN tag (the IP header at 18, not 14).
    pub vlan: u8,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: [u8; 2],
}

crate::user_pod!(IcmpReply);

/// [`NextHopRequest::flags`]: the frame carries a VLAN tag.
pub const NEXT_HOP_F_VLAN: u8 = 1 << 0;
/// [`NextHopRequest::flags`]: the packet is an ICMP error (never answered with another).
pub const NEXT_HOP_F_ICMP_ERROR: u8 = 1 << 1;
/// [`NextHopRequest::flags`]: the packet may not be fragmented (IPv4 DF; always for IPv6).
pub const NEXT_HOP_F_DONT_FRAGMENT: u8 = 1 << 2;

/// What the balancer hands its next-hop program when its cached next hop for a real server is
/// stale or missing (per-CPU scratch, index 0 of [`crate::maps::NEXT_HOP_REQUEST`]). The program
/// asks the kernel's FIB, fills the cache and runs the balancer again on the same packet, which
/// then finds the next hop fresh; on a failure it gives the verdict itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHopRequest {
    /// The client, network order, IPv4 in `client[0]`.
    pub client: [u32; 4],
    /// The VIP, network order, IPv4 in `vip[0]`.
    pub vip: [u32; 4],
    /// The real server.
    pub real: crate::RealServer,
    /// The real server's id (its slot of the next-hop cache).
    pub real_id: u32,
    /// The client's port, network order.
    pub sport: u16,
    /// The service's port, network order.
    pub dport: u16,
    /// Length of the IP packet that will leave (with a tunnel's outer header).
    pub ip_len: u16,
    /// The tunnel's overhead, taken off the MTU announced to a client when it is too big.
    pub overhead: u16,
    /// Protocol of what will leave: the flow's, or IPIP / IPv6 for a tunnel.
    pub l4_protocol: u8,
    /// The flow's protocol.
    pub flow_proto: u8,
    /// 1 when the FIB should give our source address (a tunnel's outer header).
    pub want_source: u8,
    /// `NEXT_HOP_F_*`.
    pub flags: u8,
}

crate::user_pod!(NextHopRequest);
