//! Packet parsing: Ethernet (+ one VLAN tag), IPv4, TCP and UDP, down to the flow key.
//!
//! The rules for unusual input (each counted under its own [`GlobalStat`]):
//! - not IP, or an Ethernet/VLAN/IPv4 header cut short, or a bad IHL: passed, untouched (the kernel
//!   drops what is malformed and counts it itself);
//! - not for a VIP: passed untouched, after one lookup of the destination address;
//! - for a VIP: TTL 0 and fragments are dropped (a non-first fragment carries no ports, so it cannot
//!   be steered to the server of its flow); protocols other than TCP and UDP are passed (the VIP
//!   answers ping itself); a TCP or UDP header cut short is dropped; IPv4 options are skipped over
//!   and the packet forwarded (counted).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, GlobalStat, ServiceKey, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{service, stats, verdict::Verdict};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HDR_LEN: usize = 4;

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// A packet for a VIP, parsed.
pub struct Packet {
    /// The flow as the client sent it.
    pub flow: FlowKey,
    /// The packet's length from the start of the Ethernet header, for the byte counters.
    pub len: u64,
    /// Total length of the IP packet, host order (for the route lookup's MTU check).
    pub ip_tot_len: u16,
    /// TCP FIN or RST seen: the connection is closing.
    pub closing: bool,
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
        ETH_P_IPV6 => Err(Verdict::pass(GlobalStat::PassIpv6)),
        _ => Err(Verdict::pass(GlobalStat::PassNotIp)),
    }
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
    let proto = ip.proto as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let l4 = l3 + ihl * 4;
    if ptr_at::<u8>(ctx, l4 - 1).is_none() {
        return Err(Verdict::pass(GlobalStat::PassBadIhl));
    }
    if ihl > 5 {
        stats::count(GlobalStat::SeenIpOptions);
    }
    let truncated = Verdict::drop(GlobalStat::DropTruncatedL4);
    let (sport, dport, closing) = if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(truncated)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let tcp = unsafe { &*tcp };
        let flags_byte: *const [u8; 14] = tcp as *const TcpHdr as *const [u8; 14];
        // SAFETY: the 14 bytes are the start of the TCP header checked above.
        let flags = unsafe { (*flags_byte)[13] };
        (tcp.source, tcp.dest, flags & (TCP_FIN | TCP_RST) != 0)
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(truncated)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let udp = unsafe { &*udp };
        (udp.src, udp.dst, false)
    };
    Ok(Packet {
        flow: FlowKey {
            src: [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
            dst: [dst, 0, 0, 0],
            sport: u16::from_ne_bytes(sport),
            dport: u16::from_ne_bytes(dport),
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        len: (ctx.data_end() - ctx.data()) as u64,
        ip_tot_len: u16::from_be_bytes(ip.tot_len),
        closing,
    })
}
