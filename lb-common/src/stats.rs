//! Counters: per service, per real server, and global by verdict and reason.

use bytemuck::{Pod, Zeroable};

/// Per-CPU counters of one service or one real server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded, counted from the start of the Ethernet header as received.
    pub bytes: u64,
    /// New connections scheduled (connection-table misses that were forwarded).
    pub conns: u64,
}

impl Counters {
    /// Field-wise sum, for adding up the per-CPU values.
    pub const fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            conns: self.conns.wrapping_add(other.conns),
        }
    }
}

crate::user_pod!(Counters);

macro_rules! global_stats {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)+) => {
        /// Index of a global counter: every verdict, and every reason a packet was passed or
        /// dropped instead of forwarded.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GlobalStat {
            $($(#[doc = $doc])* $variant,)+
        }

        impl GlobalStat {
            /// Every counter, in index order.
            pub const ALL: &'static [GlobalStat] = &[$(GlobalStat::$variant,)+];

            /// The counter's name, as the daemon exports it (prefixed `xlb_`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(GlobalStat::$variant => $name,)+
                }
            }
        }
    };
}

global_stats! {
    /// Verdict: handed to the kernel's stack.
    VerdictPass = "verdict_pass",
    /// Verdict: sent back out of the interface it came in on.
    VerdictTx = "verdict_tx",
    /// Verdict: redirected to another interface.
    VerdictRedirect = "verdict_redirect",
    /// Verdict: dropped.
    VerdictDrop = "verdict_drop",
    /// Passed: neither IPv4 nor IPv6 (ARP, LLDP, ...).
    PassNotIp = "pass_not_ip",
    /// Passed: the Ethernet, VLAN or IP header is cut short; the kernel drops it with its own count.
    PassMalformed = "pass_malformed",
    /// Passed: IPv4 header length below 5 words or beyond the packet.
    PassBadIhl = "pass_bad_ihl",
    /// Passed: the destination is not a VIP.
    PassNotVip = "pass_not_vip",
    /// Passed: for a VIP, but no service has this port and protocol (and no "all ports" service).
    PassNoService = "pass_no_service",
    /// Passed: for a VIP, but neither TCP nor UDP (ping to the VIP, ...).
    PassOtherProto = "pass_other_proto",
    /// Counted, not a verdict: IPv4 packets for a service that carry IP options (forwarded).
    SeenIpOptions = "seen_ip_options",
    /// Dropped: for a VIP, with the TCP or UDP header cut short.
    DropTruncatedL4 = "drop_truncated_l4",
    /// Dropped: the first fragment of a fragmented packet for a VIP.
    DropFragmentFirst = "drop_fragment_first",
    /// Dropped: a later fragment of a fragmented packet for a VIP.
    DropFragment = "drop_fragment",
    /// Dropped: an IPv6 packet for a VIP with extension headers (they are not walked).
    DropIpv6ExtHeaders = "drop_ipv6_ext_headers",
    /// Dropped: TTL 0 on a packet for a VIP.
    DropTtl = "drop_ttl",
    /// Dropped: the service has no real server available (all quiescent or removed).
    DropNoReal = "drop_no_real",
    /// Dropped: the kernel has no neighbour entry for the real server yet (userspace keeps one).
    DropNoNeighbour = "drop_no_neighbour",
    /// Dropped: the kernel has no route to the real server.
    DropNoRoute = "drop_no_route",
    /// Dropped: IPv4 forwarding is off on the ingress interface, so the kernel's FIB does not
    /// answer for it.
    DropForwardingDisabled = "drop_forwarding_disabled",
    /// Dropped: too big for the tunnel, and an ICMP reply was not possible (IPv4 without DF, or
    /// an ICMP error itself).
    DropTooBig = "drop_too_big",
    /// Dropped: the kernel has no source address for the tunnel towards the real server.
    DropNoTunnelSource = "drop_no_tunnel_source",
    /// Dropped: the packet could not be grown or shrunk (no headroom).
    DropAdjustFailed = "drop_adjust_failed",
    /// Counted, not a verdict: "fragmentation needed" / "packet too big" sent to a client.
    IcmpTooBigSent = "icmp_too_big_sent",
    /// Counted, not a verdict: ICMP errors about a flow forwarded to the flow's real server.
    SeenIcmpErrorForwarded = "seen_icmp_error_forwarded",
    /// Dropped: the real server's forwarding method is not supported by this data path.
    DropUnsupportedForward = "drop_unsupported_forward",
    /// Counted, not a verdict: connection-table hits.
    ConntrackHit = "conntrack_hit",
    /// Counted, not a verdict: connection-table misses (new flows scheduled).
    ConntrackMiss = "conntrack_miss",
    /// Passed: for a VIP, but the IP length field disagrees with the frame (it claims more bytes
    /// than the frame holds, or fewer than the IP header); the kernel drops it with its own count.
    PassBadLength = "pass_bad_length",
    /// Dropped: for a VIP, from a source no host can have (IPv4 0/8, 127/8, multicast, class E
    /// and broadcast; IPv6 unspecified, loopback, multicast, link-local, IPv4-mapped).
    DropMartianSource = "drop_martian_source",
    /// Passed: an ICMP error for a VIP that quotes a packet the VIP did not send (the kernel's
    /// own ICMP handling finds no socket for it and ignores it).
    PassIcmpQuoteMismatch = "pass_icmp_quote_mismatch",
    /// Counted, not a verdict: packets of an embryonic TCP flow found in the embryonic table (a
    /// SYN retransmitted, or the client's next packet, which promotes the flow); counted in
    /// `conntrack_hit` too.
    ConntrackEmbryonicHit = "conntrack_embryonic_hit",
    /// Counted, not a verdict: embryonic TCP flows moved into the connection table by the
    /// client's packet after its SYN.
    ConntrackPromoted = "conntrack_promoted",
}

/// Number of global counters (the words of [`GlobalCounters`]).
pub const GLOBAL_STATS_LEN: u32 = GlobalStat::ALL.len() as u32;

/// Every global counter of one CPU, indexed by [`GlobalStat`]: the one value of
/// [`crate::maps::GLOBAL_STATS`], so that a packet's verdict, its reason and a connection-table
/// hit are counted after one map lookup (one per counter cost a known flow about 1.7 ns each).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct GlobalCounters(pub [u64; GLOBAL_STATS_LEN as usize]);

impl GlobalCounters {
    /// One counter.
    pub const fn get(&self, stat: GlobalStat) -> u64 {
        self.0[stat as usize]
    }

    /// Word-wise sum, for adding up the per-CPU values.
    pub fn plus(mut self, other: &Self) -> Self {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        self
    }
}

impl Default for GlobalCounters {
    fn default() -> Self {
        Self([0; GLOBAL_STATS_LEN as usize])
    }
}

crate::user_pod!(GlobalCounters);

/// One CPU's value of [`crate::maps::GLOBAL_STATS`]: every global counter, then the coarse clock
/// as this CPU's data path last read it. One value, so that a packet's clock and its counters take
/// one map lookup, whose pointer the balancer checks once: with the clock in a map of its own the
/// verifier walked more of the balancer (without the global function that made it walk the inline
/// parser's packet as the full parser's, 35,728 processed instructions instead of 30,520).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CpuGlobals {
    /// The counters, indexed by [`GlobalStat`].
    pub counters: GlobalCounters,
    /// The clock ([`crate::config::TickClock`]); nothing userspace reads.
    pub clock: crate::config::TickClock,
}

crate::user_pod!(CpuGlobals);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_stats_are_indexed_in_declaration_order() {
        for (i, stat) in GlobalStat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i, "{}", stat.name());
        }
    }

    #[test]
    fn global_counters_add_word_by_word_and_read_by_stat() {
        let mut a = GlobalCounters::default();
        let mut b = GlobalCounters::default();
        a.0[GlobalStat::ConntrackHit as usize] = u64::MAX;
        b.0[GlobalStat::ConntrackHit as usize] = 2;
        b.0[GlobalStat::VerdictTx as usize] = 5;
        let sum = a.plus(&b);
        assert_eq!(
            sum.get(GlobalStat::ConntrackHit),
            1,
            "wraps as the kernel's counters do"
        );
        assert_eq!(sum.get(GlobalStat::VerdictTx), 5);
        assert_eq!(sum.get(GlobalStat::VerdictPass), 0);
    }
}

/// Counters of the real-server decapsulator; every packet is passed to the stack.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapStat {
    /// An IPIP / IP6IP6 packet for one of our addresses, passed on without its outer header.
    Decapsulated,
    /// Not a tunnel packet: passed untouched.
    PassNotTunnel,
    /// A tunnel packet for an address that is not ours: passed untouched.
    PassNotOurs,
    /// Cut short, fragmented outer header or IPv4 options: passed untouched to the kernel.
    PassMalformed,
}

impl DecapStat {
    /// Every counter, in index order.
    pub const ALL: &'static [DecapStat] = &[
        DecapStat::Decapsulated,
        DecapStat::PassNotTunnel,
        DecapStat::PassNotOurs,
        DecapStat::PassMalformed,
    ];

    /// The counter's name.
    pub const fn name(self) -> &'static str {
        match self {
            DecapStat::Decapsulated => "decapsulated",
            DecapStat::PassNotTunnel => "pass_not_tunnel",
            DecapStat::PassNotOurs => "pass_not_ours",
            DecapStat::PassMalformed => "pass_malformed",
        }
    }
}
