//! ICMP replies from the VIP: "fragmentation needed" (IPv4) and "packet too big" (IPv6), sent
//! back to the client when a packet would not fit the tunnel towards its real server.
//!
//! The packet is turned into the reply in place: cut to its L2 header and the first
//! [`QUOTE`] bytes of its IP packet (the quote the client needs to find its connection), given a
//! new IP and ICMP header in front, its MAC addresses swapped, and sent back out (XDP_TX).
//!
//! Replies are rare, so they are built by a program of their own, `xlb_icmp_reply`, which the
//! balancer tail-calls with a request in a per-CPU slot ([`request`]): the balancer carries no
//! reply code, and the verifier walks it once instead of once for every path that can reach it
//! (a third of its work). The reply program counts its own verdict, as the balancer's entry point
//! is not returned to.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::xdp,
    programs::XdpContext,
    EbpfContext as _,
};
use lb_common::{config::IcmpReply, GlobalStat, FAMILY_V6};

use crate::{
    csum,
    l2::write_l2,
    maps,
    parse::{ptr_at, Packet},
    stats,
    verdict::Verdict,
};

/// What a "too big" reply needs to know of the packet that did not fit.
pub struct Offender {
    /// The client, network order.
    pub client: [u32; 4],
    /// The VIP, network order.
    pub vip: [u32; 4],
    /// The address family.
    pub family: u8,
    /// The frame carries a VLAN tag.
    pub vlan: bool,
    /// The packet is an ICMP error itself.
    pub icmp_error: bool,
    /// The packet may not be fragmented.
    pub dont_fragment: bool,
}

impl Offender {
    /// The offender that a parsed packet is.
    #[inline(always)]
    pub fn of(packet: &Packet) -> Self {
        Self {
            client: packet.flow.src,
            vip: packet.flow.dst,
            family: packet.flow.family,
            vlan: packet.l3_off == 18,
            icmp_error: packet.icmp_error,
            dont_fragment: packet.dont_fragment,
        }
    }
}

/// What to do with a packet that, grown by `overhead`, does not fit the egress `mtu`: a reply
/// announcing the MTU less the overhead, except for an ICMP error, an IPv4 packet without DF or a
/// frame from a group MAC address (the source IP is a unicast one: parsing dropped the rest),
/// which are dropped. Returns only when no reply is made.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, offender: &Offender, mtu: u16, overhead: u16) -> Verdict {
    if offender.icmp_error || !offender.dont_fragment || !unicast_sender(ctx) {
        return Verdict::drop(GlobalStat::DropTooBig);
    }
    request(ctx, offender, mtu.saturating_sub(overhead))
}

/// Whether the frame's source MAC is an individual address (group bit clear).
#[inline(always)]
fn unicast_sender(ctx: &XdpContext) -> bool {
    // SAFETY: ptr_at checks that the byte lies inside the packet.
    ptr_at::<u8>(ctx, 6).is_some_and(|b| unsafe { *b } & 1 == 0)
}

/// Asks the reply program for a "too big" reply to the offender announcing `mtu`; returns only
/// when the request could not be made (the packet is then dropped as too big).
#[inline(always)]
fn request(ctx: &XdpContext, offender: &Offender, mtu: u16) -> Verdict {
    if let Some(slot) = maps::ICMP_REPLY.get_ptr_mut(0) {
        let reply = IcmpReply {
            client: offender.client,
            vip: offender.vip,
            mtu: u32::from(mtu),
            family: offender.family,
            vlan: u8::from(offender.vlan),
            _pad: [0; 2],
        };
        // SAFETY: a per-CPU slot, written by this CPU only; the tail call runs on this CPU.
        unsafe {
            *slot = reply;
            maps::TAIL_CALLS.tail_call(ctx, lb_common::maps::TAIL_CALL_ICMP_REPLY);
        }
    }
    Verdict::drop(GlobalStat::DropTooBig)
}

/// The reply program: turns the packet into the reply the balancer asked for, counts, returns
/// the action.
#[xdp]
pub fn xlb_icmp_reply(ctx: XdpContext) -> u32 {
    let verdict = match maps::ICMP_REPLY.get(0).copied() {
        Some(reply) => {
            // Constants for the verifier, which needs bounded offsets into the packet.
            let l3 = if reply.vlan != 0 { 18 } else { 14 };
            let mtu = reply.mtu as u16;
            if reply.family == FAMILY_V6 {
                packet_too_big_v6(&ctx, &reply, l3, mtu)
            } else {
                fragmentation_needed_v4(&ctx, &reply, l3, mtu)
            }
        }
        None => Verdict::drop(GlobalStat::DropTooBig),
    };
    stats::count_verdict(stats::globals(), &verdict, false);
    verdict.action()
}

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
fn reshape(ctx: &XdpContext, l3: usize, headers: usize) -> Option<ReplyL2> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    // SAFETY: ptr_at checked that the bytes lie inside the packet.
    let eth = unsafe { *eth };
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&eth[0..6]);
    src.copy_from_slice(&eth[6..12]);
    let tag = if l3 == 18 {
        // SAFETY: as above.
        Some(unsafe { *ptr_at::<[u8; 4]>(ctx, 12)? })
    } else {
        None
    };
    let len = ctx.data_end() - ctx.data();
    let keep = l3 + QUOTE;
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
fn fragmentation_needed_v4(ctx: &XdpContext, reply: &IcmpReply, l3: usize, mtu: u16) -> Verdict {
    let failed = Verdict::drop(GlobalStat::DropTooBig);
    let Some((dst_mac, src_mac, tag)) = reshape(ctx, l3, IPV4_HDR_LEN + ICMP_HDR_LEN) else {
        return failed;
    };
    if !write_l2(ctx, &dst_mac, &src_mac, tag, 0x0800) {
        return failed;
    }
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
    ip[12..16].copy_from_slice(&reply.vip[0].to_ne_bytes());
    ip[16..20].copy_from_slice(&reply.client[0].to_ne_bytes());
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
fn packet_too_big_v6(ctx: &XdpContext, reply: &IcmpReply, l3: usize, mtu: u16) -> Verdict {
    let failed = Verdict::drop(GlobalStat::DropTooBig);
    let Some((dst_mac, src_mac, tag)) = reshape(ctx, l3, IPV6_HDR_LEN + ICMP_HDR_LEN) else {
        return failed;
    };
    if !write_l2(ctx, &dst_mac, &src_mac, tag, 0x86dd) {
        return failed;
    }
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
        ip[8 + i * 4..12 + i * 4].copy_from_slice(&reply.vip[i].to_ne_bytes());
        ip[24 + i * 4..28 + i * 4].copy_from_slice(&reply.client[i].to_ne_bytes());
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
