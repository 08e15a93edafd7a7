//! Forwarding to the chosen real server.
//!
//! Direct routing rewrites the Ethernet addresses only: the destination becomes the next hop
//! towards the real server (the server itself on a flat L2), the source the egress interface's own
//! address. Both come from the kernel's FIB and neighbour table through `bpf_fib_lookup`, so routes
//! and neighbour changes need no copy in our maps. When the kernel has no neighbour entry for the
//! next hop yet, the packet is dropped and counted (`drop_no_neighbour`): passing it up would make
//! the balancer's own stack answer for the VIP. Userspace keeps a managed neighbour entry for each
//! real server so that this only happens before the first resolution.
//!
//! The kernel answers FIB lookups only for an ingress interface with IPv4 forwarding on, so the
//! dataplane turns `net.ipv4.conf.<iface>.forwarding` on where it attaches; when it is off the
//! packet is dropped and counted (`drop_forwarding_disabled`).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
use lb_common::{Forwarding, GlobalStat, RealServer};
use network_types::eth::EthHdr;

use crate::{parse::ptr_at, parse::Packet, verdict::Verdict};

const AF_INET: u8 = 2;

/// Send the packet to `real` by its forwarding method.
#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &Packet, real: &RealServer) -> Verdict {
    match Forwarding::from_u8(real.forward) {
        Some(Forwarding::DirectRoute) => direct_route(ctx, packet, real),
        _ => Verdict::drop(GlobalStat::DropUnsupportedForward),
    }
}

#[inline(always)]
fn direct_route(ctx: &XdpContext, packet: &Packet, real: &RealServer) -> Verdict {
    // SAFETY: FibParams is a plain C struct for which all zeroes is a valid value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = packet.flow.proto;
    params.sport = packet.flow.sport;
    params.dport = packet.flow.dport;
    params.__bindgen_anon_1.tot_len = packet.ip_tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_3.ipv4_src = packet.flow.src[0];
    params.__bindgen_anon_4.ipv4_dst = real.addr[0];

    let rc = fib_lookup(ctx, &mut params);
    if rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64 {
        // The kernel answers FIB lookups only for interfaces with forwarding on (even for an
        // egress-perspective lookup); the dataplane switches it on where it attaches.
        return Verdict::drop(GlobalStat::DropForwardingDisabled);
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Verdict::drop(GlobalStat::DropNoNeighbour);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Verdict::drop(GlobalStat::DropNoRoute);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::drop(GlobalStat::DropNoRoute);
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    if params.ifindex == ctx.ingress_ifindex() as u32 {
        Verdict::Tx
    } else {
        // SAFETY: a helper taking plain integers.
        Verdict::Redirect(unsafe { bpf_redirect(params.ifindex, 0) } as u32)
    }
}

#[inline(always)]
fn fib_lookup(ctx: &XdpContext, params: &mut FibParams) -> i64 {
    // SAFETY: params points to a live FibParams of the size given.
    unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    }
}
