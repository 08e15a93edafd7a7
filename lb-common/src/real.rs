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
/// that still points at it is scheduled anew. A real-server id belongs to one service: the entry
/// carries that service's epoch, which a known flow's connection must have recorded (one read of
/// the entry the flow needs anyway, instead of a lookup of the service's epoch).
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
    /// The epoch of the service the id belongs to (`XLB_SERVICE_EPOCHS`), written by userspace
    /// when it adds the server; 0 once that service is removed, so that its known flows stop
    /// being followed at once.
    pub service_epoch: u32,
}

impl RealServer {
    /// An IPv4 real server; `addr` in host order.
    pub const fn v4(addr: u32, forward: Forwarding) -> Self {
        Self {
            addr: [addr.to_be(), 0, 0, 0],
            family: crate::FAMILY_V4,
            forward: forward as u8,
            _pad: [0; 2],
            service_epoch: 0,
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

/// [`RealLimits::flags`]: the server is overloaded (IPVS's `IP_VS_DEST_F_OVERLOAD`): it reached
/// its upper threshold and has not yet dropped back to its lower one, so schedulers pass it by.
pub const LIMIT_F_OVERLOADED: u32 = 1 << 0;

/// [`RealLimits::flags`]: the server is full (`ovf`): its active connections
/// ([`crate::maps::REAL_CONNS`]) exceed its weight ([`crate::maps::REAL_WEIGHTS`]), so schedulers
/// pass it by as an overloaded one. Only a server with [`LIMIT_F_WEIGHT_CAP`] gets it: set by the
/// data path when it counts such a server's connection, set or cleared by userspace when it
/// writes the counts or the weight. Kept apart from the overload flag, whose thresholds count
/// every connection, so that the schedulers still test one word.
pub const LIMIT_F_FULL: u32 = 1 << 1;

/// [`RealLimits::flags`]: the server belongs to an `ovf` service: it is full ([`LIMIT_F_FULL`])
/// while its active connections exceed its weight, as IPVS's `ovf` passes it by. Set by
/// userspace.
pub const LIMIT_F_WEIGHT_CAP: u32 = 1 << 2;

/// A real server's connection thresholds (ipvsadm's `-x` and `-y`) and what the data path counts
/// against them. A server without thresholds has `upper == 0` and costs a new flow one read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealLimits {
    /// The upper threshold: at this many connections the server takes no new ones; 0 = none.
    pub upper: u32,
    /// The lower threshold: an overloaded server takes new connections again below it; 0 means
    /// below three quarters of `upper`, as IPVS does.
    pub lower: u32,
    /// The server's connections, active and inactive (IPVS's `totalconns`): one more for each new
    /// flow the data path gives it; userspace writes the true count from the connection table
    /// every second (closed and idled-out flows leave here).
    pub conns: u32,
    /// `LIMIT_F_*` bits.
    pub flags: u32,
}

impl RealLimits {
    /// Whether the server is overloaded with `conns` connections, given whether it was: IPVS's
    /// rule (ip_vs_conn.c, `ip_vs_bind_dest` / `ip_vs_unbind_dest`): overloaded at `upper`
    /// connections or more; an overloaded server stays so down to `lower` (exclusive), or with
    /// `lower == 0` down to three quarters of `upper`; no upper threshold, never overloaded.
    #[inline(always)]
    pub const fn overloaded_at(&self, conns: u32, was: bool) -> bool {
        if self.upper == 0 {
            return false;
        }
        if conns >= self.upper {
            return true;
        }
        if !was {
            return false;
        }
        if self.lower != 0 {
            conns >= self.lower
        } else {
            // conns * 4 >= upper * 3, in 64 bits (both may be up to i32::MAX).
            (conns as u64) * 4 >= (self.upper as u64) * 3
        }
    }

    /// These limits with new thresholds (IPVS's `-x`/`-y` on `-a`/`-e`): the count is kept while
    /// there is an upper threshold, `ovf`'s marks (the weight's, not the thresholds') are kept,
    /// and the server is overloaded if the count already reaches the new upper threshold.
    #[inline(always)]
    pub const fn with_thresholds(self, upper: u32, lower: u32) -> Self {
        let mut limits = Self {
            upper,
            lower,
            conns: if upper == 0 { 0 } else { self.conns },
            flags: self.flags & (LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL),
        };
        if limits.overloaded_at(limits.conns, false) {
            limits.flags |= LIMIT_F_OVERLOADED;
        }
        limits
    }

    /// These limits with the server's connections counted anew (by userspace, from the
    /// connection table): overloaded or not by IPVS's rule ([`Self::overloaded_at`]).
    #[inline(always)]
    pub const fn with_count(self, conns: u32) -> Self {
        let over = self.overloaded_at(conns, self.is_overloaded());
        Self {
            conns,
            flags: if over {
                self.flags | LIMIT_F_OVERLOADED
            } else {
                self.flags & !LIMIT_F_OVERLOADED
            },
            ..self
        }
    }

    /// Whether the flag says overloaded.
    #[inline(always)]
    pub const fn is_overloaded(&self) -> bool {
        self.flags & LIMIT_F_OVERLOADED != 0
    }

    /// Whether the flag says full (`ovf`: active connections beyond the weight).
    #[inline(always)]
    pub const fn is_full(&self) -> bool {
        self.flags & LIMIT_F_FULL != 0
    }

    /// These flags with the server marked as an `ovf` server's (`capped`) or not, full when
    /// capped and its `active` connections exceed its `weight` (IPVS's `ovf` test).
    #[inline(always)]
    pub const fn with_weight_cap(flags: u32, capped: bool, active: u32, weight: u32) -> u32 {
        let flags = flags & !(LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL);
        if !capped {
            flags
        } else if active > weight {
            flags | LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL
        } else {
            flags | LIMIT_F_WEIGHT_CAP
        }
    }
}

crate::user_pod!(RealLimits);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(upper: u32, lower: u32) -> RealLimits {
        RealLimits {
            upper,
            lower,
            ..RealLimits::default()
        }
    }

    #[test]
    fn a_server_without_an_upper_threshold_is_never_overloaded() {
        assert!(!limits(0, 0).overloaded_at(u32::MAX, true));
        assert!(!limits(0, 5).overloaded_at(10, true));
    }

    #[test]
    fn a_server_is_overloaded_from_its_upper_threshold_up() {
        let l = limits(2, 0);
        assert!(!l.overloaded_at(0, false));
        assert!(!l.overloaded_at(1, false));
        assert!(l.overloaded_at(2, false));
        assert!(l.overloaded_at(3, false));
    }

    #[test]
    fn an_overloaded_server_stays_so_until_it_drops_below_its_lower_threshold() {
        let l = limits(10, 4);
        assert!(l.overloaded_at(9, true));
        assert!(l.overloaded_at(4, true));
        assert!(!l.overloaded_at(3, true));
        // Not overloaded before: between the thresholds it takes connections.
        assert!(!l.overloaded_at(9, false));
    }

    #[test]
    fn without_a_lower_threshold_it_drops_back_below_three_quarters_of_the_upper_one() {
        // IPVS: clear when conns * 4 < upper * 3.
        let l = limits(8, 0);
        assert!(l.overloaded_at(6, true));
        assert!(!l.overloaded_at(5, true));
        let l = limits(2, 0);
        assert!(!l.overloaded_at(1, true), "1 * 4 < 2 * 3");
        let l = limits(i32::MAX as u32, 0);
        assert!(l.overloaded_at(i32::MAX as u32 - 1, true), "no overflow");
    }

    #[test]
    fn new_thresholds_keep_the_count_and_ovfs_marks_and_a_new_count_moves_the_flag() {
        let counted = RealLimits {
            upper: 10,
            lower: 4,
            conns: 5,
            flags: LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL | LIMIT_F_OVERLOADED,
        };
        let lowered = counted.with_thresholds(5, 0);
        assert_eq!(
            (lowered.conns, lowered.flags),
            (5, LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL | LIMIT_F_OVERLOADED),
            "5 connections reach the new upper threshold"
        );
        let raised = counted.with_thresholds(20, 0);
        assert_eq!(
            raised.flags,
            LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL,
            "freed at once"
        );
        assert_eq!(
            counted.with_thresholds(0, 0).conns,
            0,
            "no threshold, no count"
        );
        // Overloaded at 10, stays so down to the lower threshold 4, free below it.
        let l = limits(10, 4).with_count(10);
        assert!(l.is_overloaded() && l.conns == 10);
        assert!(l.with_count(4).is_overloaded());
        assert!(!l.with_count(3).is_overloaded());
        assert!(!limits(10, 4).with_count(9).is_overloaded());
    }

    #[test]
    fn an_ovf_server_is_full_once_its_active_connections_exceed_its_weight() {
        let capped = |active| RealLimits::with_weight_cap(LIMIT_F_OVERLOADED, true, active, 3);
        assert_eq!(
            capped(3),
            LIMIT_F_OVERLOADED | LIMIT_F_WEIGHT_CAP,
            "3 of weight 3"
        );
        assert_eq!(
            capped(4),
            LIMIT_F_OVERLOADED | LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL
        );
        // No longer ovf's: neither mark stays, the overload flag does.
        let flags = LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL | LIMIT_F_OVERLOADED;
        assert_eq!(
            RealLimits::with_weight_cap(flags, false, 9, 3),
            LIMIT_F_OVERLOADED
        );
    }

    #[test]
    fn a_lower_threshold_above_the_upper_one_gives_no_hysteresis() {
        let l = limits(2, 5);
        assert!(l.overloaded_at(2, false));
        assert!(!l.overloaded_at(1, true));
    }
}
