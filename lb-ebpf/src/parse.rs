//! Packet parsing: Ethernet (+ one VLAN tag), IPv4 or IPv6, TCP and UDP, and the inner flow of
//! ICMP errors, down to the flow key.
//!
//! The rules for unusual input (each counted under its own [`GlobalStat`]):
//! - not IP, or an Ethernet/VLAN/IP header cut short, or a bad IHL: passed, untouched (the kernel
//!   drops what is malformed and counts it itself);
//! - not for a VIP: passed untouched, after one lookup of the destination address;
//! - for a VIP: TTL / hop limit 0 and fragments are dropped (a non-first fragment carries no
//!   ports, so it cannot be steered to the server of its flow); IPv6 extension headers are not
//!   walked, such packets are dropped; a TCP or UDP header cut short is dropped; IPv4 options are
//!   skipped over and the packet forwarded (counted);
//! - ICMP / ICMPv6 errors for a VIP (destination unreachable, "fragmentation needed" / "packet
//!   too big", time exceeded, parameter problem) are steered to the real server of the flow they
//!   quote; other ICMP (echo) is passed, so the VIP answers ping itself.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, GlobalStat, ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{service, stats, verdict::Verdict};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HDR_LEN: usize = 4;

const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const PROTO_IPV6_FRAGMENT: u8 = 44;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Length of the ICMP header before the quoted packet.
const ICMP_HDR_LEN: usize = 8;

/// A packet for a VIP, parsed.
pub struct Packet {
    /// The flow as the client sent it (for an ICMP error: the quoted flow, turned around).
    pub flow: FlowKey,
    /// The packet's length from the start of the Ethernet header, for the byte counters.
    pub len: u64,
    /// Offset of the IP header: 14, or 18 behind a VLAN tag.
    pub l3_off: usize,
    /// Length of the whole IP packet, host order.
    pub ip_len: u16,
    /// IPv4 TOS / IPv6 traffic class, copied to a tunnel's outer header.
    pub tos: u8,
    /// The packet may not be fragmented on its way (IPv4 DF; always for IPv6).
    pub dont_fragment: bool,
    /// TCP FIN or RST seen: the connection is closing.
    pub closing: bool,
    /// The packet is an ICMP error about `flow`, not part of it.
    pub icmp_error: bool,
}

/// A pointer to a `T` at `offset` from the start of the packet, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Parse the packet down to its flow, or say why it is not forwarded.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let malformed = Verdict::pass(GlobalStat::PassMalformed);
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(malformed)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const [u8; VLAN_HDR_LEN] =
            ptr_at(ctx, l3).ok_or(Verdict::pass(GlobalStat::PassMalformed))?;
        // SAFETY: as above.
        let vlan = unsafe { &*vlan };
        ether_type = u16::from_be_bytes([vlan[2], vlan[3]]);
        l3 += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IP => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Err(Verdict::pass(GlobalStat::PassNotIp)),
    }
}

/// Ports at `l4` of a TCP or UDP header, and whether a TCP FIN or RST is set.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, proto: u8) -> Result<([u8; 2], [u8; 2], bool), Verdict> {
    let truncated = Verdict::drop(GlobalStat::DropTruncatedL4);
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(truncated)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let tcp = unsafe { &*tcp };
        let bytes: *const [u8; 14] = tcp as *const TcpHdr as *const [u8; 14];
        // SAFETY: the 14 bytes are the start of the TCP header checked above.
        let flags = unsafe { (*bytes)[13] };
        Ok((tcp.source, tcp.dest, flags & (TCP_FIN | TCP_RST) != 0))
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(truncated)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let udp = unsafe { &*udp };
        Ok((udp.src, udp.dst, false))
    }
}

/// The first four bytes of a quoted L4 header: its ports.
#[inline(always)]
fn quoted_ports(ctx: &XdpContext, l4: usize) -> Result<([u8; 2], [u8; 2]), Verdict> {
    let p: *const [u8; 4] = ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the bytes lie inside the packet.
    let p = unsafe { &*p };
    Ok(([p[0], p[1]], [p[2], p[3]]))
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize) -> Result<Packet, Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Verdict::pass(GlobalStat::PassMalformed))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Verdict::pass(GlobalStat::PassMalformed));
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Verdict::pass(GlobalStat::PassBadIhl));
    }
    let dst = u32::from_ne_bytes(ip.dst_addr);
    let vip = ServiceKey {
        addr: [dst, 0, 0, 0],
        port: 0,
        proto: 0,
        family: FAMILY_V4,
    };
    if !service::is_vip(&vip) {
        return Err(Verdict::pass(GlobalStat::PassNotVip));
    }
    if ip.ttl == 0 {
        return Err(Verdict::drop(GlobalStat::DropTtl));
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IP_OFFSET_MASK != 0 {
        return Err(Verdict::drop(GlobalStat::DropFragment));
    }
    if frags & IP_MF != 0 {
        return Err(Verdict::drop(GlobalStat::DropFragmentFirst));
    }
    let proto = ip.proto;
    let l4 = l3 + ihl * 4;
    if ptr_at::<u8>(ctx, l4 - 1).is_none() {
        return Err(Verdict::pass(GlobalStat::PassBadIhl));
    }
    if ihl > 5 {
        stats::count(GlobalStat::SeenIpOptions);
    }
    let mut packet = Packet {
        flow: FlowKey {
            src: [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
            dst: [dst, 0, 0, 0],
            sport: 0,
            dport: 0,
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        len: (ctx.data_end() - ctx.data()) as u64,
        l3_off: l3,
        ip_len: u16::from_be_bytes(ip.tot_len),
        tos: ip.tos,
        dont_fragment: frags & IP_DF != 0,
        closing: false,
        icmp_error: false,
    };
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let (sport, dport, closing) = ports(ctx, l4, proto)?;
        packet.flow.sport = u16::from_ne_bytes(sport);
        packet.flow.dport = u16::from_ne_bytes(dport);
        packet.closing = closing;
        return Ok(packet);
    }
    if proto != PROTO_ICMP {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    // ICMP: errors quote the packet that caused them, sent by a real server from the VIP.
    let icmp: *const [u8; ICMP_HDR_LEN] =
        ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let icmp_type = unsafe { (*icmp)[0] };
    if !matches!(icmp_type, 3 | 11 | 12) {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let inner_l3 = l4 + ICMP_HDR_LEN;
    let inner: *const Ipv4Hdr =
        ptr_at(ctx, inner_l3).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let inner = unsafe { &*inner };
    let inner_ihl = (inner.vihl & 0x0f) as usize;
    let inner_proto = inner.proto;
    if inner.vihl >> 4 != 4
        || inner_ihl < 5
        || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP)
    {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let (isport, idport) = quoted_ports(ctx, inner_l3 + inner_ihl * 4)?;
    // The quoted packet went from the VIP to the client: turn it around into the client's flow.
    packet.flow = FlowKey {
        src: [u32::from_ne_bytes(inner.dst_addr), 0, 0, 0],
        dst: [u32::from_ne_bytes(inner.src_addr), 0, 0, 0],
        sport: u16::from_ne_bytes(idport),
        dport: u16::from_ne_bytes(isport),
        proto: inner_proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    packet.icmp_error = true;
    Ok(packet)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize) -> Result<Packet, Verdict> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Verdict::pass(GlobalStat::PassMalformed))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Verdict::pass(GlobalStat::PassMalformed));
    }
    let dst: [u32; 4] = addr_words(&ip.dst_addr);
    let vip = ServiceKey {
        addr: dst,
        port: 0,
        proto: 0,
        family: FAMILY_V6,
    };
    if !service::is_vip(&vip) {
        return Err(Verdict::pass(GlobalStat::PassNotVip));
    }
    if ip.hop_limit == 0 {
        return Err(Verdict::drop(GlobalStat::DropTtl));
    }
    let proto = ip.next_hdr;
    let l4 = l3 + Ipv6Hdr::LEN;
    let mut packet = Packet {
        flow: FlowKey {
            src: addr_words(&ip.src_addr),
            dst,
            sport: 0,
            dport: 0,
            proto,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        len: (ctx.data_end() - ctx.data()) as u64,
        l3_off: l3,
        ip_len: u16::from_be_bytes(ip.payload_len).wrapping_add(Ipv6Hdr::LEN as u16),
        tos: (u16::from_be_bytes([ip.vcf[0], ip.vcf[1]]) >> 4) as u8,
        dont_fragment: true,
        closing: false,
        icmp_error: false,
    };
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let (sport, dport, closing) = ports(ctx, l4, proto)?;
        packet.flow.sport = u16::from_ne_bytes(sport);
        packet.flow.dport = u16::from_ne_bytes(dport);
        packet.closing = closing;
        return Ok(packet);
    }
    if proto == PROTO_IPV6_FRAGMENT {
        let frag: *const [u8; 8] =
            ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let offset = unsafe { u16::from_be_bytes([(*frag)[2], (*frag)[3]]) } >> 3;
        return Err(Verdict::drop(if offset == 0 {
            GlobalStat::DropFragmentFirst
        } else {
            GlobalStat::DropFragment
        }));
    }
    if proto != PROTO_ICMPV6 {
        // Hop-by-hop, routing, destination options...: not walked.
        return Err(Verdict::drop(GlobalStat::DropIpv6ExtHeaders));
    }
    let icmp: *const [u8; ICMP_HDR_LEN] =
        ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let icmp_type = unsafe { (*icmp)[0] };
    if !matches!(icmp_type, 1..=4) {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let inner_l3 = l4 + ICMP_HDR_LEN;
    let inner: *const Ipv6Hdr =
        ptr_at(ctx, inner_l3).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let inner = unsafe { &*inner };
    let inner_proto = inner.next_hdr;
    if inner_proto != PROTO_TCP && inner_proto != PROTO_UDP {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let (isport, idport) = quoted_ports(ctx, inner_l3 + Ipv6Hdr::LEN)?;
    packet.flow = FlowKey {
        src: addr_words(&inner.dst_addr),
        dst: addr_words(&inner.src_addr),
        sport: u16::from_ne_bytes(idport),
        dport: u16::from_ne_bytes(isport),
        proto: inner_proto,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    packet.icmp_error = true;
    Ok(packet)
}

/// An IPv6 address as four words in network order, as the maps hold it.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
