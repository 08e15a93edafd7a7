//! ICMP replies from the VIP: "fragmentation needed" (IPv4) and "packet too big" (IPv6), sent
//! back to the client when a packet would not fit the tunnel towards its real server.
//!
//! The packet is turned into the reply in place: cut to its L2 header and the first
//! [`QUOTE`] bytes of its IP packet (the quote the client needs to find its connection), given a
//! new IP and ICMP header in front, its MAC addresses swapped, and sent back out (XDP_TX).

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext as _,
};
use lb_common::GlobalStat;

use crate::{
    csum,
    l2::write_l2,
    parse::{ptr_at, Packet},
    stats,
    verdict::Verdict,
};

/// Bytes of the offending IP packet quoted in the reply: its headers and the start of its
/// payload, well within the 576 (IPv4) and 1280 (IPv6) bytes an ICMP error may take.
const QUOTE: usize = 64;
const ICMP_HDR_LEN: usize = 8;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;

/// The original packet's destination and source MACs and VLAN tag, to reply with.
type ReplyL2 = ([u8; 6], [u8; 6], Option<[u8; 4]>);

/// Cuts the packet to L2 + QUOTE and makes room for `headers` bytes of new headers in front.
/// Returns the MACs and VLAN tag of the original, to reply with.
#[inline(always)]
fn reshape(ctx: &XdpContext, packet: &Packet, headers: usize) -> Option<ReplyL2> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    // SAFETY: ptr_at checked that the bytes lie inside the packet.
    let eth = unsafe { *eth };
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&eth[0..6]);
    src.copy_from_slice(&eth[6..12]);
    let tag = if packet.l3_off == 18 {
        // SAFETY: as above.
        Some(unsafe { *ptr_at::<[u8; 4]>(ctx, 12)? })
    } else {
        None
    };
    let len = ctx.data_end() - ctx.data();
    let keep = packet.l3_off + QUOTE;
    if len < keep {
        return None;
    }
    // SAFETY: the context pointer is this program's; the helpers check the bounds.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, -((len - keep) as i32)) != 0 {
            return None;
        }
        if bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(headers as i32)) != 0 {
            return None;
        }
    }
    // Replies go back where the packet came from: the old source is the new destination.
    Some((src, dst, tag))
}

/// ICMP type 3 code 4, "fragmentation needed", with the next-hop MTU.
#[inline(always)]
pub fn fragmentation_needed_v4(ctx: &XdpContext, packet: &Packet, mtu: u16) -> Verdict {
    let failed = Verdict::drop(GlobalStat::DropTooBig);
    let Some((dst_mac, src_mac, tag)) = reshape(ctx, packet, IPV4_HDR_LEN + ICMP_HDR_LEN) else {
        return failed;
    };
    if !write_l2(ctx, &dst_mac, &src_mac, tag, 0x0800) {
        return failed;
    }
    let l3 = packet.l3_off;
    let Some(ip) = ptr_at::<[u8; IPV4_HDR_LEN]>(ctx, l3) else {
        return failed;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &mut *ip };
    let total = (IPV4_HDR_LEN + ICMP_HDR_LEN + QUOTE) as u16;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0, 0]);
    ip[8] = 64;
    ip[9] = 1;
    ip[10..12].copy_from_slice(&[0, 0]);
    // From the VIP to the client.
    ip[12..16].copy_from_slice(&packet.flow.dst[0].to_ne_bytes());
    ip[16..20].copy_from_slice(&packet.flow.src[0].to_ne_bytes());
    let check = csum::finish(csum::sum(ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());

    let Some(icmp) = ptr_at::<[u8; ICMP_HDR_LEN + QUOTE]>(ctx, l3 + IPV4_HDR_LEN) else {
        return failed;
    };
    // SAFETY: as above.
    let icmp = unsafe { &mut *icmp };
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[2..6].copy_from_slice(&[0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let check = csum::finish(csum::sum(icmp));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    stats::count(GlobalStat::IcmpTooBigSent);
    Verdict::Reply
}

/// ICMPv6 type 2, "packet too big", with the MTU.
#[inline(always)]
pub fn packet_too_big_v6(ctx: &XdpContext, packet: &Packet, mtu: u16) -> Verdict {
    let failed = Verdict::drop(GlobalStat::DropTooBig);
    let Some((dst_mac, src_mac, tag)) = reshape(ctx, packet, IPV6_HDR_LEN + ICMP_HDR_LEN) else {
        return failed;
    };
    if !write_l2(ctx, &dst_mac, &src_mac, tag, 0x86dd) {
        return failed;
    }
    let l3 = packet.l3_off;
    let Some(ip) = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, l3) else {
        return failed;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &mut *ip };
    let payload = (ICMP_HDR_LEN + QUOTE) as u16;
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    ip[6] = 58;
    ip[7] = 64;
    for i in 0..4 {
        // From the VIP to the client.
        ip[8 + i * 4..12 + i * 4].copy_from_slice(&packet.flow.dst[i].to_ne_bytes());
        ip[24 + i * 4..28 + i * 4].copy_from_slice(&packet.flow.src[i].to_ne_bytes());
    }
    // The pseudo-header: addresses, upper-layer length, next header.
    let mut addrs = [0u8; 32];
    addrs.copy_from_slice(&ip[8..40]);
    let pseudo = csum::sum(&addrs) + u64::from(payload) + 58;

    let Some(icmp) = ptr_at::<[u8; ICMP_HDR_LEN + QUOTE]>(ctx, l3 + IPV6_HDR_LEN) else {
        return failed;
    };
    // SAFETY: as above.
    let icmp = unsafe { &mut *icmp };
    icmp[0] = 2;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    let check = csum::finish(pseudo + csum::sum(icmp));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    stats::count(GlobalStat::IcmpTooBigSent);
    Verdict::Reply
}
