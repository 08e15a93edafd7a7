//! Forwarding to the chosen real server: direct routing or IP-in-IP tunneling.
//!
//! The next hop comes from the kernel's FIB through [`next_hop`] (its per-CPU cache, filled by
//! the next-hop program), so routes, a second egress interface (XDP_REDIRECT, through the
//! `XLB_EGRESS` devmap) and neighbour changes need no copy in our maps.
//!
//! Direct routing rewrites the Ethernet addresses only. Tunneling prepends an outer IPv4 header
//! (protocol 4, RFC 2003: TOS copied, DF copied from the inner header, TTL 64) or IPv6 header
//! (next header 41, RFC 2473: traffic class copied, hop limit 64, a flow label from the flow hash)
//! addressed to the real server, from the balancer's address on the egress interface (or the one
//! configured). When the result would not fit the egress MTU, the client gets an ICMP
//! "fragmentation needed" / ICMPv6 "packet too big" from the VIP with the MTU less the tunnel's
//! overhead; an IPv4 packet without DF is dropped and counted instead (`drop_too_big`).

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
    EbpfContext as _,
};
use lb_common::{Forwarding, GlobalStat, NextHop, RealServer, FAMILY_V4};

use lb_ebpf::packet::{PROTO_IPIP, PROTO_IPV6};

use crate::{
    csum, icmp,
    l2::{write_hop_eth_at, write_hop_macs},
    maps,
    next_hop::{next_hop, NoRoute},
    parse::{ptr_at, Packet},
    store::store_word,
    verdict::Verdict,
};

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TUNNEL_TTL: u8 = 64;

/// Send the packet to `real` by its forwarding method; `flow_label` is an IPv6 flow's (for a
/// tunnel's outer header), `now` the packet's coarse time. `TAGGED`: the program for frames with
/// a VLAN tag, whose IP header is at 18 (else 14): a constant for the verifier, which knows
/// nothing of the parsed packet's fields (parse.rs).
#[inline(always)]
pub fn forward<const TAGGED: bool>(
    ctx: &XdpContext,
    packet: &Packet,
    real_id: u32,
    real: &RealServer,
    flow_label: u32,
    now: u64,
) -> Verdict {
    if real.family != packet.flow.family {
        // No tunneling between address families.
        return Verdict::drop(GlobalStat::DropUnsupportedForward);
    }
    match Forwarding::from_u8(real.forward) {
        Some(Forwarding::DirectRoute) => direct_route(ctx, packet, real_id, real, now),
        Some(Forwarding::Tunnel) => tunnel::<TAGGED>(ctx, packet, real_id, real, flow_label, now),
        None => Verdict::drop(GlobalStat::DropUnsupportedForward),
    }
}

/// What to do when the packet, grown by `overhead`, does not fit the egress `mtu`.
#[inline(always)]
fn too_big(ctx: &XdpContext, packet: &Packet, mtu: u16, overhead: u16) -> Verdict {
    icmp::too_big(ctx, &icmp::Offender::of(packet), mtu, overhead)
}

/// Leaves through the next hop's interface: back out of the ingress one, or redirected. The
/// entry was looked up for this packet's ingress interface (next_hop checked it), so its own
/// copy of the ingress index is compared: reading the context's again costs three loads.
#[inline(always)]
fn send(hop: &NextHop) -> Verdict {
    let ifindex = hop.ifindex;
    if ifindex == hop.ingress_ifindex {
        return Verdict::Tx;
    }
    match maps::EGRESS.redirect(ifindex, 0) {
        Ok(action) => Verdict::Redirect(action),
        // SAFETY: a helper taking plain integers.
        Err(_) => Verdict::Redirect(unsafe { bpf_redirect(ifindex, 0) } as u32),
    }
}

#[inline(always)]
fn direct_route(
    ctx: &XdpContext,
    packet: &Packet,
    real_id: u32,
    real: &RealServer,
    now: u64,
) -> Verdict {
    let params = match next_hop(
        ctx,
        packet,
        real_id,
        real,
        packet.ip_len,
        packet.flow.proto,
        false,
        0,
        now,
    ) {
        Ok(params) => params,
        Err(NoRoute::Verdict(v)) => return v,
        Err(NoRoute::TooBig(mtu)) => return too_big(ctx, packet, mtu, 0),
    };
    if !write_hop_macs(ctx, params) {
        return Verdict::drop(GlobalStat::DropNoRoute);
    }
    send(params)
}

#[inline(always)]
fn tunnel<const TAGGED: bool>(
    ctx: &XdpContext,
    packet: &Packet,
    real_id: u32,
    real: &RealServer,
    flow_label: u32,
    now: u64,
) -> Verdict {
    let (overhead, proto) = if real.family == FAMILY_V4 {
        (IPV4_HDR_LEN, PROTO_IPIP)
    } else {
        (IPV6_HDR_LEN, PROTO_IPV6)
    };
    // ip_len lies within the frame (parsing checked it), so this only fails for a frame near
    // 64 KiB, which is too big for any tunnel.
    let Some(outer_len) = packet.ip_len.checked_add(overhead as u16) else {
        return Verdict::drop(GlobalStat::DropTooBig);
    };
    let params = match next_hop(
        ctx,
        packet,
        real_id,
        real,
        outer_len,
        proto,
        true,
        overhead as u16,
        now,
    ) {
        Ok(params) => params,
        Err(NoRoute::Verdict(v)) => return v,
        Err(NoRoute::TooBig(mtu)) => return too_big(ctx, packet, mtu, overhead as u16),
    };
    // The VLAN tag, if any, before the new header overwrites where it was.
    let tag = if TAGGED {
        match ptr_at::<[u8; 4]>(ctx, 12) {
            // SAFETY: ptr_at checked that the bytes lie inside the packet.
            Some(tag) => Some(unsafe { *tag }),
            None => return Verdict::drop(GlobalStat::DropNoRoute),
        }
    } else {
        None
    };
    // SAFETY: the context pointer is this program's; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(overhead as i32)) } != 0 {
        return Verdict::drop(GlobalStat::DropAdjustFailed);
    }
    let l3 = if TAGGED { 18 } else { 14 };
    // The new Ethernet and outer IP headers after one bounds check of both (a check reloads the
    // packet's start and end from the context).
    let written = if real.family == FAMILY_V4 {
        match ptr_at::<[u8; IPV4_HDR_LEN]>(ctx, l3) {
            Some(ip) => {
                let frame = ip.cast::<u8>().wrapping_sub(l3);
                write_hop_eth_at(frame, params, tag, 0x0800);
                write_outer_v4(ip.cast(), packet, params.src[0], real.addr[0], outer_len);
                true
            }
            None => false,
        }
    } else {
        match ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, l3) {
            Some(ip) => {
                let frame = ip.cast::<u8>().wrapping_sub(l3);
                write_hop_eth_at(frame, params, tag, 0x86dd);
                write_outer_v6(ip.cast(), packet, params.src, real.addr, flow_label);
                true
            }
            None => false,
        }
    };
    if !written {
        return Verdict::drop(GlobalStat::DropAdjustFailed);
    }
    send(params)
}

/// Writes the outer IPv4 header at `ip`, whose 20 bytes the caller checked lie within the packet.
#[inline(always)]
fn write_outer_v4(ip: *mut u8, packet: &Packet, src: u32, dst: u32, total_len: u16) {
    // With DF the id is unused (RFC 6864). Without it, the id must keep the fragments of
    // different packets apart: the inner id (unique per packet from its sender) mixed with the
    // flow, so that flows sharing the tunnel's two addresses do not move in step.
    let id = if packet.dont_fragment {
        0
    } else {
        packet.ip_id ^ fold16(packet.flow.src[0]) ^ packet.flow.sport
    };
    let frags: u16 = if packet.dont_fragment { 0x4000 } else { 0 };
    // The header as five 32-bit words as they sit in memory (the addresses as they sit in the
    // maps, network order; the id in the packet's byte order, as the inner id was read), summed
    // for the checksum as they are: the one's-complement sum of the 16-bit words they hold is
    // the sum of the 32-bit words folded (2^16 is 1 modulo 2^16 - 1), whatever the byte order it
    // is taken in (RFC 1071). Stored a word at a time ([`store_word`]: the header is only 2-byte
    // aligned); ten 16-bit stores cost the tunnel about 2 ns more.
    let len = total_len.to_be_bytes();
    let id = id.to_ne_bytes();
    let frags = frags.to_be_bytes();
    let first = u32::from_ne_bytes([0x45, packet.tos, len[0], len[1]]);
    let second = u32::from_ne_bytes([id[0], id[1], frags[0], frags[1]]);
    let ttl_proto = u32::from_ne_bytes([TUNNEL_TTL, PROTO_IPIP, 0, 0]);
    let sum = u64::from(first)
        + u64::from(second)
        + u64::from(ttl_proto)
        + u64::from(src)
        + u64::from(dst);
    let check = csum::finish(sum).to_ne_bytes();
    let third = u32::from_ne_bytes([TUNNEL_TTL, PROTO_IPIP, check[0], check[1]]);
    // SAFETY: the caller checked that the header's 20 bytes lie inside the packet.
    unsafe {
        store_word::<0>(ip, first);
        store_word::<4>(ip, second);
        store_word::<8>(ip, third);
        store_word::<12>(ip, src);
        store_word::<16>(ip, dst);
    }
}

/// The two halves of a word, XORed.
#[inline(always)]
const fn fold16(word: u32) -> u16 {
    (word ^ (word >> 16)) as u16
}

/// Writes the outer IPv6 header at `ip`, whose 40 bytes the caller checked lie within the packet.
#[inline(always)]
fn write_outer_v6(ip: *mut u8, packet: &Packet, src: [u32; 4], dst: [u32; 4], flow_label: u32) {
    // Worked out for a new flow and remembered with its connection (0, "unlabeled", for an
    // entry made before labels were kept).
    let label = flow_label & 0x000f_ffff;
    let vcf = (6u32 << 28) | (u32::from(packet.tos) << 20) | label;
    let len = packet.ip_len.to_be_bytes();
    // Stored by 32-bit words, as the IPv4 header (write_outer_v4): 2-byte aligned. The
    // addresses as they sit in the maps (network order).
    // SAFETY: the caller checked that the header lies inside the packet.
    unsafe {
        store_word::<0>(ip, vcf.to_be());
        store_word::<4>(
            ip,
            u32::from_ne_bytes([len[0], len[1], PROTO_IPV6, TUNNEL_TTL]),
        );
        store_word::<8>(ip, src[0]);
        store_word::<12>(ip, src[1]);
        store_word::<16>(ip, src[2]);
        store_word::<20>(ip, src[3]);
        store_word::<24>(ip, dst[0]);
        store_word::<28>(ip, dst[1]);
        store_word::<32>(ip, dst[2]);
        store_word::<36>(ip, dst[3]);
    }
}
