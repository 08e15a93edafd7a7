//! xlb's real-server decapsulator: strips the outer header of IPIP (protocol 4) and IP6IP6 /
//! IPv4-in-IPv6 (next header 41 / 4) packets addressed to one of this host's tunnel endpoints and
//! passes the inner packet to the stack, which delivers it to the VIP on `lo`. Everything else is
//! passed untouched. For real servers whose kernel has no `ipip` module, or that would rather not
//! configure tunnel devices.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys are passed to the map helpers by reference, as the kernel takes them: by value they
// would be copied onto the 512-byte BPF stack first (a flow key is 40 bytes).
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::bpf_xdp_adjust_head,
        macros::{map, xdp},
        maps::{HashMap, PerCpuArray},
        programs::XdpContext,
        EbpfContext as _,
    };
    use lb_common::{stats::DecapStat, ServiceKey, FAMILY_V4, FAMILY_V6};
    use lb_ebpf::packet::{
        ether_type, ptr_at, ETH_P_IP, ETH_P_IPV6, PROTO_IPIP, PROTO_IPV6, VLAN_HDR_LEN,
    };
    use network_types::{
        eth::EthHdr,
        ip::{Ipv4Hdr, Ipv6Hdr},
    };

    /// Tunnel endpoint address → 1. Written by userspace (`xlbd decap`).
    #[map(name = "XLB_DECAP_ADDRS")]
    static DECAP_ADDRS: HashMap<ServiceKey, u32> = HashMap::with_max_entries(64, 0);

    /// Counter index → per-CPU packet count. Written here.
    #[map(name = "XLB_DECAP_STATS")]
    static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

    /// IPv4 flags and fragment offset: MF or any offset.
    const IP_MF_OR_OFFSET: u16 = 0x3fff;

    /// Every packet is passed: decapsulated when it is a tunnel packet for us, untouched otherwise.
    #[xdp]
    pub fn xlb_decap(ctx: XdpContext) -> u32 {
        let stat = decap(&ctx);
        if let Some(counter) = DECAP_STATS.get_ptr_mut(stat as u32) {
            // SAFETY: a per-CPU slot, written by this CPU only.
            unsafe { *counter += 1 };
        }
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn ours(addr: [u32; 4], family: u8) -> bool {
        let key = ServiceKey {
            addr,
            port: 0,
            proto: 0,
            family,
        };
        // SAFETY: the value is not kept; userspace only replaces whole values.
        unsafe { DECAP_ADDRS.get(&key).is_some() }
    }

    /// Whether an IP packet at `l3` whose length field says `len` holds its `header` bytes and
    /// lies within the frame (a frame may be longer: Ethernet padding).
    #[inline(always)]
    fn length_fits(ctx: &XdpContext, l3: usize, len: usize, header: usize) -> bool {
        len >= header && ctx.data() + l3 + len <= ctx.data_end()
    }

    /// The outer header's length and the inner packet's protocol, when the packet at `l3` is an
    /// IPv4 tunnel packet for one of our addresses.
    #[inline(always)]
    fn outer_v4(ctx: &XdpContext, l3: usize) -> Result<(usize, u8), DecapStat> {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(DecapStat::PassMalformed)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let ip = unsafe { &*ip };
        if ip.proto != PROTO_IPIP && ip.proto != PROTO_IPV6 {
            return Err(DecapStat::PassNotTunnel);
        }
        // Options, another version or a fragment: left to the kernel (it reassembles or drops).
        if ip.vihl != 0x45 || u16::from_be_bytes(ip.frags) & IP_MF_OR_OFFSET != 0 {
            return Err(DecapStat::PassMalformed);
        }
        let len = usize::from(u16::from_be_bytes(ip.tot_len));
        if !length_fits(ctx, l3, len, Ipv4Hdr::LEN) {
            return Err(DecapStat::PassMalformed);
        }
        if !ours([u32::from_ne_bytes(ip.dst_addr), 0, 0, 0], FAMILY_V4) {
            return Err(DecapStat::PassNotOurs);
        }
        Ok((Ipv4Hdr::LEN, ip.proto))
    }

    /// As [`outer_v4`], for an IPv6 outer header.
    #[inline(always)]
    fn outer_v6(ctx: &XdpContext, l3: usize) -> Result<(usize, u8), DecapStat> {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(DecapStat::PassMalformed)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let ip = unsafe { &*ip };
        if ip.next_hdr != PROTO_IPV6 && ip.next_hdr != PROTO_IPIP {
            return Err(DecapStat::PassNotTunnel);
        }
        let len = usize::from(u16::from_be_bytes(ip.payload_len)) + Ipv6Hdr::LEN;
        if ip.vcf[0] >> 4 != 6 || !length_fits(ctx, l3, len, Ipv6Hdr::LEN) {
            return Err(DecapStat::PassMalformed);
        }
        let d = &ip.dst_addr;
        let addr = [
            u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_ne_bytes([d[4], d[5], d[6], d[7]]),
            u32::from_ne_bytes([d[8], d[9], d[10], d[11]]),
            u32::from_ne_bytes([d[12], d[13], d[14], d[15]]),
        ];
        if !ours(addr, FAMILY_V6) {
            return Err(DecapStat::PassNotOurs);
        }
        Ok((Ipv6Hdr::LEN, ip.next_hdr))
    }

    #[inline(always)]
    fn decap(ctx: &XdpContext) -> DecapStat {
        let Some((outer_type, l3)) = ether_type(ctx) else {
            return DecapStat::PassMalformed;
        };
        let outer = match outer_type {
            ETH_P_IP => outer_v4(ctx, l3),
            ETH_P_IPV6 => outer_v6(ctx, l3),
            _ => Err(DecapStat::PassNotTunnel),
        };
        let (outer_len, inner_proto) = match outer {
            Ok(found) => found,
            Err(stat) => return stat,
        };
        let inner_type = if inner_proto == PROTO_IPIP {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        // The inner packet must at least hold its version byte.
        if ptr_at::<u8>(ctx, l3 + outer_len).is_none() {
            return DecapStat::PassMalformed;
        }
        // Move the L2 header forward over the outer IP header, then drop the bytes before it.
        let tagged = l3 == EthHdr::LEN + VLAN_HDR_LEN;
        if tagged {
            let Some(src) = ptr_at::<[u8; EthHdr::LEN + VLAN_HDR_LEN]>(ctx, 0) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: ptr_at checked that the bytes lie inside the packet.
            let mut l2 = unsafe { *src };
            l2[16..18].copy_from_slice(&inner_type.to_be_bytes());
            let Some(dst) = ptr_at::<[u8; EthHdr::LEN + VLAN_HDR_LEN]>(ctx, outer_len) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: as above.
            unsafe { *dst = l2 };
        } else {
            let Some(src) = ptr_at::<[u8; EthHdr::LEN]>(ctx, 0) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: ptr_at checked that the bytes lie inside the packet.
            let mut l2 = unsafe { *src };
            l2[12..14].copy_from_slice(&inner_type.to_be_bytes());
            let Some(dst) = ptr_at::<[u8; EthHdr::LEN]>(ctx, outer_len) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: as above.
            unsafe { *dst = l2 };
        }
        // SAFETY: the context pointer is this program's; the helper checks the bounds.
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, outer_len as i32) } != 0 {
            return DecapStat::PassMalformed;
        }
        DecapStat::Decapsulated
    }
}

// The panic handler is the library's (lb_ebpf), shared with the balancer.
#[cfg(target_arch = "bpf")]
use lb_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
