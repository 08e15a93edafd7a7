//! Real servers: where a flow goes and how it gets there.

use bytemuck::{Pod, Zeroable};

/// How packets reach a real server.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct routing (LVS-DR, ipvsadm `-g`): only the Ethernet header is rewritten; the real
    /// server holds the VIP on its loopback.
    DirectRoute = 0,
    /// IP-in-IP tunneling (LVS-TUN, ipvsadm `-i`).
    Tunnel = 1,
}

impl Forwarding {
    /// The forwarding method from its wire value, if it is one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::DirectRoute),
            1 => Some(Self::Tunnel),
            _ => None,
        }
    }
}

/// A real server as the data path sees it. An entry whose `family` is 0 is unused: a connection
/// that still points at it is scheduled anew.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealServer {
    /// The real server's address, network byte order; IPv4 uses `addr[0]`.
    pub addr: [u32; 4],
    /// [`crate::FAMILY_V4`], [`crate::FAMILY_V6`], or 0 for an unused entry.
    pub family: u8,
    /// [`Forwarding`] as its `u8` value (a plain byte so that every bit pattern is valid).
    pub forward: u8,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: [u8; 2],
}

impl RealServer {
    /// An IPv4 real server; `addr` in host order.
    pub const fn v4(addr: u32, forward: Forwarding) -> Self {
        Self {
            addr: [addr.to_be(), 0, 0, 0],
            family: crate::FAMILY_V4,
            forward: forward as u8,
            _pad: [0; 2],
        }
    }

    /// Whether this entry names a server.
    pub const fn is_used(&self) -> bool {
        self.family != 0
    }
}

crate::user_pod!(RealServer);

/// The next hop towards a real server, as the kernel's FIB last gave it: reused for a short time
/// (see `NEXT_HOP_TTL_NS` in the data path) instead of a FIB lookup per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// `bpf_ktime_get_ns()` after which the entry must be looked up again; 0 = empty.
    pub expires_ns: u64,
    /// The interface packets leave through.
    pub ifindex: u32,
    /// The interface the packets that made the lookup came in on (the lookup depends on it).
    pub ingress_ifindex: u32,
    /// The egress MTU; 0 when the kernel did not say (the entry is then not reused).
    pub mtu: u32,
    /// Our source address towards the server (tunnels), network order; IPv4 uses `src[0]`.
    pub src: [u32; 4],
    /// The next hop's MAC address.
    pub dmac: [u8; 6],
    /// Our MAC address on the egress interface.
    pub smac: [u8; 6],
}

crate::user_pod!(NextHop);
