//! Next hops: the kernel's FIB answer for each real server, cached per CPU.
//!
//! The balancer reads this CPU's cached next hop for the real server ([`next_hop`]): a fresh
//! entry (at most [`NEXT_HOP_TTL_NS`] old, for the same ingress interface) gives the MACs, the
//! egress interface, the MTU and a tunnel's source address with no helper call. A stale or empty
//! one is refreshed by a program of its own, `xlb_next_hop`, which the balancer tail-calls with a
//! request: it asks `bpf_fib_lookup`, fills the cache and runs the balancer again on the same
//! packet, which then finds the entry fresh. The FIB lookup is most of the code that can run for
//! a packet; kept out of the balancer, the verifier walks it once instead of once for every path
//! that reaches it. (The re-run is bounded: a tail call chain stops after 33 calls, and each run
//! that finds no fresh entry asks again; should one fail, the packet is dropped as `drop_no_route`.)
//!
//! Routes, a second egress interface and neighbour changes need no copy in our maps, and are
//! followed within [`NEXT_HOP_TTL_NS`]; userspace empties a real server's entries when it changes.
//! When the kernel has no neighbour entry for the next hop yet, the packet is dropped and counted
//! (`drop_no_neighbour`): passing it up would make the balancer's own stack answer for the VIP.
//! Userspace keeps a managed neighbour entry for each real server so that this only happens
//! before the first resolution. The kernel answers FIB lookups only for an ingress interface with
//! forwarding on, so the dataplane turns it on where it attaches; when it is off the packet is
//! dropped and counted (`drop_forwarding_disabled`).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SRC,
    },
    helpers::bpf_fib_lookup,
    macros::xdp,
    programs::XdpContext,
    EbpfContext as _,
};
use lb_common::{
    config::{NextHopRequest, NEXT_HOP_F_DONT_FRAGMENT, NEXT_HOP_F_ICMP_ERROR, NEXT_HOP_F_VLAN},
    maps::{TAIL_CALL_BALANCER, TAIL_CALL_NEXT_HOP},
    GlobalStat, NextHop, RealServer, FAMILY_V4,
};

use crate::{conntrack, icmp, maps, parse::Packet, stats, verdict::Verdict};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Why a route lookup gave no next hop.
pub enum NoRoute {
    /// Drop or pass with this verdict.
    Verdict(Verdict),
    /// The packet (with `overhead` more bytes) would not fit: the egress MTU.
    TooBig(u16),
}

/// How long a next hop from the FIB is reused before it is looked up again: routes and
/// neighbours that change are followed within this time, and the FIB is asked about once per
/// real server and CPU in it instead of once per packet.
const NEXT_HOP_TTL_NS: u64 = 100_000_000;

/// The next hop for a packet of `ip_len` bytes to real server `real_id` (a tunnel's `overhead`
/// included): this CPU's cached entry when it is fresh against `now` (the packet's coarse time: a
/// tick is fine for a 100 ms expiry) and was looked up for the same ingress interface, read in
/// place. Otherwise the next-hop program is asked, which does not return here: it runs the
/// balancer again with the entry filled, or gives the packet's verdict itself.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the FIB lookup needs each of them"
)]
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    packet: &Packet,
    real_id: u32,
    real: &RealServer,
    ip_len: u16,
    l4_protocol: u8,
    want_source: bool,
    overhead: u16,
    now: u64,
) -> Result<&'static NextHop, NoRoute> {
    let no_route = NoRoute::Verdict(Verdict::drop(GlobalStat::DropNoRoute));
    let Some(cache) = maps::NEXT_HOPS.get_ptr_mut(real_id) else {
        return Err(no_route);
    };
    // SAFETY: a per-CPU slot, read and written by this CPU only, for this program run.
    let cached = unsafe { &*cache };
    if cached.expires_ns > now && cached.ingress_ifindex == ctx.ingress_ifindex() as u32 {
        if u32::from(ip_len) > cached.mtu {
            return Err(NoRoute::TooBig(cached.mtu as u16));
        }
        return Ok(cached);
    }
    let Some(slot) = maps::NEXT_HOP_REQUEST.get_ptr_mut(0) else {
        return Err(no_route);
    };
    let mut flags = 0;
    if packet.l3_off == 18 {
        flags |= NEXT_HOP_F_VLAN;
    }
    if packet.icmp_error {
        flags |= NEXT_HOP_F_ICMP_ERROR;
    }
    if packet.dont_fragment {
        flags |= NEXT_HOP_F_DONT_FRAGMENT;
    }
    let request = NextHopRequest {
        client: packet.flow.src,
        vip: packet.flow.dst,
        real: *real,
        real_id,
        sport: packet.flow.sport,
        dport: packet.flow.dport,
        ip_len,
        overhead,
        l4_protocol,
        flow_proto: packet.flow.proto,
        want_source: u8::from(want_source),
        flags,
    };
    // SAFETY: a per-CPU slot, written by this CPU only; the tail call runs on this CPU.
    unsafe {
        *slot = request;
        maps::TAIL_CALLS.tail_call(ctx, TAIL_CALL_NEXT_HOP);
    }
    Err(no_route)
}

/// The next-hop program: asks the FIB for the balancer's request, fills this CPU's cache entry
/// and runs the balancer again; or gives the verdict (a drop by reason, or a "too big" reply) and
/// counts it.
#[xdp]
pub fn xlb_next_hop(ctx: XdpContext) -> u32 {
    let verdict = match maps::NEXT_HOP_REQUEST.get(0).copied() {
        Some(req) => refresh(&ctx, &req),
        None => Verdict::drop(GlobalStat::DropNoRoute),
    };
    stats::count_verdict(stats::globals(), &verdict, false);
    verdict.action()
}

/// The FIB's answer for `req` into the cache, then the balancer again; the verdict when that
/// cannot be.
#[inline(always)]
fn refresh(ctx: &XdpContext, req: &NextHopRequest) -> Verdict {
    let params = match route(ctx, req) {
        Ok(params) => params,
        Err(NoRoute::Verdict(v)) => return v,
        Err(NoRoute::TooBig(mtu)) => {
            let offender = icmp::Offender {
                client: req.client,
                vip: req.vip,
                family: req.real.family,
                vlan: req.flags & NEXT_HOP_F_VLAN != 0,
                icmp_error: req.flags & NEXT_HOP_F_ICMP_ERROR != 0,
                dont_fragment: req.flags & NEXT_HOP_F_DONT_FRAGMENT != 0,
            };
            return icmp::too_big(ctx, &offender, mtu, req.overhead);
        }
    };
    let Some(cache) = maps::NEXT_HOPS.get_ptr_mut(req.real_id) else {
        return Verdict::drop(GlobalStat::DropNoRoute);
    };
    // SAFETY: after a successful lookup the union holds the egress MTU (Linux >= 5.12). Should it
    // say 0, no limit is kept: the egress device drops what it cannot send.
    let mtu = match u32::from(unsafe { params.__bindgen_anon_1.mtu_result }) {
        0 => u32::MAX,
        mtu => mtu,
    };
    let hop = NextHop {
        expires_ns: conntrack::now_or_helper(stats::globals()) + NEXT_HOP_TTL_NS,
        ifindex: params.ifindex,
        ingress_ifindex: ctx.ingress_ifindex() as u32,
        mtu,
        src: if req.real.family == FAMILY_V4 {
            // SAFETY: the union holds the address family the lookup was made for.
            [unsafe { params.__bindgen_anon_3.ipv4_src }, 0, 0, 0]
        } else {
            // SAFETY: as above.
            unsafe { params.__bindgen_anon_3.ipv6_src }
        },
        dmac: params.dmac,
        smac: params.smac,
    };
    // SAFETY: a per-CPU slot, written by this CPU only.
    unsafe {
        *cache = hop;
        maps::TAIL_CALLS.tail_call(ctx, TAIL_CALL_BALANCER);
    }
    Verdict::drop(GlobalStat::DropNoRoute)
}

/// The FIB's answer for the request: next-hop MAC, our MAC, egress interface, and (when the
/// request wants it) our source address towards the real server.
#[inline(always)]
fn route(ctx: &XdpContext, req: &NextHopRequest) -> Result<FibParams, NoRoute> {
    let real = &req.real;
    let want_source = req.want_source != 0;
    // SAFETY: FibParams is a plain C struct for which all zeroes is a valid value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.l4_protocol = req.l4_protocol;
    if req.l4_protocol == req.flow_proto {
        params.sport = req.sport;
        params.dport = req.dport;
    }
    params.__bindgen_anon_1.tot_len = req.ip_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    let mut flags = 0;
    let config = maps::CONFIG.get(0);
    if real.family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_4.ipv4_dst = real.addr[0];
        let configured = config.map_or(0, |c| c.tunnel_src_v4);
        if !want_source {
            params.__bindgen_anon_3.ipv4_src = req.client[0];
        } else if configured != 0 {
            params.__bindgen_anon_3.ipv4_src = configured;
        } else {
            flags = BPF_FIB_LOOKUP_SRC;
        }
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_4.ipv6_dst = real.addr;
        let configured = config.map_or([0; 4], |c| c.tunnel_src_v6);
        if !want_source {
            params.__bindgen_anon_3.ipv6_src = req.client;
        } else if configured != [0; 4] {
            params.__bindgen_anon_3.ipv6_src = configured;
        } else {
            flags = BPF_FIB_LOOKUP_SRC;
        }
    }
    // SAFETY: params points to a live FibParams of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params as *mut FibParams,
            size_of::<FibParams>() as i32,
            flags,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Ok(params);
    }
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: the kernel wrote the MTU into the union for this return code.
        return Err(NoRoute::TooBig(unsafe {
            params.__bindgen_anon_1.mtu_result
        }));
    }
    let reason = if rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64 {
        GlobalStat::DropForwardingDisabled
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        GlobalStat::DropNoNeighbour
    } else if rc == BPF_FIB_LKUP_RET_NO_SRC_ADDR as i64 {
        GlobalStat::DropNoTunnelSource
    } else {
        GlobalStat::DropNoRoute
    };
    Err(NoRoute::Verdict(Verdict::drop(reason)))
}
