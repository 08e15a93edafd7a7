//! The connection table: which real server each flow was given.

use bytemuck::{Pod, Zeroable};

/// A flow: the 5-tuple of a packet as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    /// Client address, network byte order; IPv4 uses `src[0]`.
    pub src: [u32; 4],
    /// VIP, network byte order; IPv4 uses `dst[0]`.
    pub dst: [u32; 4],
    /// Client port, network byte order.
    pub sport: u16,
    /// Service port, network byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: [u8; 2],
}

/// The connection has seen a TCP FIN or RST: ipvsadm counts it as inactive.
pub const CONN_F_CLOSING: u32 = 1 << 0;
/// An embryonic TCP flow: its only packets so far are SYNs (SYN without ACK) from the client, and
/// it is remembered in the embryonic table ([`crate::maps::EMBRYONIC`]) until the client's next
/// packet promotes it into the connection table, so that a flood of SYNs from random sources
/// only ever evicts other embryonic flows. ipvsadm lists it as SYN_RECV, an inactive
/// connection. Never set in the connection table itself.
pub const CONN_F_EMBRYONIC: u32 = 1 << 1;
/// An embryonic flow of a least-connection service: its real server's active connections go up
/// by one when the flow is promoted, not for its SYN (IPVS counts a SYN_RECV connection as
/// inactive). Only set with [`CONN_F_EMBRYONIC`].
pub const CONN_F_COUNT_ON_PROMOTION: u32 = 1 << 2;
/// [`Connection::flags`] bits from this one up hold an IPv6 flow's flow label (the low 20 bits of
/// its flow hash), kept for the outer header of a tunnel so that a known flow needs no hash.
pub const CONN_FLOW_LABEL_SHIFT: u32 = 12;

/// What the connection table remembers about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Connection {
    /// The real server the flow was given.
    pub real: u32,
    /// The service the flow belongs to.
    pub service: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, to the last tick) of the flow's last packet,
    /// for idle accounting in userspace.
    pub last_seen_ns: u64,
    /// `CONN_F_*` bits, and from [`CONN_FLOW_LABEL_SHIFT`] up an IPv6 flow's flow label.
    pub flags: u32,
    /// The service's epoch when the flow was given its server ([`crate::maps::SERVICE_EPOCHS`]):
    /// a known flow is forwarded without looking its service up, and only while the service that
    /// gave it its server still exists under this epoch.
    pub service_epoch: u32,
}

crate::user_pod!(FlowKey, Connection);
