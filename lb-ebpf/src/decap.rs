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
    use core::mem::size_of;

    use aya_ebpf::{
        bindings::xdp_action,
        helpers::bpf_xdp_adjust_head,
        macros::{map, xdp},
        maps::{HashMap, PerCpuArray},
        programs::XdpContext,
        EbpfContext as _,
    };
    use lb_common::{stats::DecapStat, ServiceKey, FAMILY_V4, FAMILY_V6};

    /// Tunnel endpoint address → 1. Written by userspace (`xlbd decap`).
    #[map(name = "XLB_DECAP_ADDRS")]
    static DECAP_ADDRS: HashMap<ServiceKey, u32> = HashMap::with_max_entries(64, 0);

    /// Counter index → per-CPU packet count. Written here.
    #[map(name = "XLB_DECAP_STATS")]
    static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88a8;
    const PROTO_IPIP: u8 = 4;
    const PROTO_IPV6: u8 = 41;

    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
        let start = ctx.data();
        if start + offset + size_of::<T>() > ctx.data_end() {
            return None;
        }
        Some((start + offset) as *mut T)
    }

    /// Whether an IP packet at `l3` whose length field says `len` holds its `header` bytes and
    /// lies within the frame (a frame may be longer: Ethernet padding).
    #[inline(always)]
    fn length_fits(ctx: &XdpContext, l3: usize, len: usize, header: usize) -> bool {
        len >= header && ctx.data() + l3 + len <= ctx.data_end()
    }

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
    fn ours(key: &ServiceKey) -> bool {
        // SAFETY: the value is not kept; userspace only replaces whole values.
        unsafe { DECAP_ADDRS.get(key).is_some() }
    }

    #[inline(always)]
    fn decap(ctx: &XdpContext) -> DecapStat {
        let Some(eth) = ptr_at::<[u8; 14]>(ctx, 0) else {
            return DecapStat::PassMalformed;
        };
        // SAFETY: ptr_at checked that the bytes lie inside the packet.
        let eth = unsafe { *eth };
        let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
        let mut l3 = 14;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            let Some(tag) = ptr_at::<[u8; 4]>(ctx, 14) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: as above.
            let tag = unsafe { *tag };
            ether_type = u16::from_be_bytes([tag[2], tag[3]]);
            l3 = 18;
        }
        let (outer_len, inner_proto) = if ether_type == ETH_P_IP {
            let Some(ip) = ptr_at::<[u8; 20]>(ctx, l3) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: as above.
            let ip = unsafe { &*ip };
            if ip[9] != PROTO_IPIP && ip[9] != PROTO_IPV6 {
                return DecapStat::PassNotTunnel;
            }
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ip[0] != 0x45 || frag & 0x3fff != 0 {
                // Options or a fragment: leave it to the kernel (it reassembles or drops).
                return DecapStat::PassMalformed;
            }
            if !length_fits(ctx, l3, u16::from_be_bytes([ip[2], ip[3]]) as usize, 20) {
                return DecapStat::PassMalformed;
            }
            let key = ServiceKey {
                addr: [
                    u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
                    0,
                    0,
                    0,
                ],
                port: 0,
                proto: 0,
                family: FAMILY_V4,
            };
            if !ours(&key) {
                return DecapStat::PassNotOurs;
            }
            (20usize, ip[9])
        } else if ether_type == ETH_P_IPV6 {
            let Some(ip) = ptr_at::<[u8; 40]>(ctx, l3) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: as above.
            let ip = unsafe { &*ip };
            if ip[6] != PROTO_IPV6 && ip[6] != PROTO_IPIP {
                return DecapStat::PassNotTunnel;
            }
            let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if ip[0] >> 4 != 6 || !length_fits(ctx, l3, payload + 40, 40) {
                return DecapStat::PassMalformed;
            }
            let mut addr = [0u32; 4];
            for (i, word) in addr.iter_mut().enumerate() {
                let at = 24 + i * 4;
                *word = u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
            }
            let key = ServiceKey {
                addr,
                port: 0,
                proto: 0,
                family: FAMILY_V6,
            };
            if !ours(&key) {
                return DecapStat::PassNotOurs;
            }
            (40usize, ip[6])
        } else {
            return DecapStat::PassNotTunnel;
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
        let mut l2 = [0u8; 18];
        let Some(src) = ptr_at::<[u8; 18]>(ctx, 0) else {
            return DecapStat::PassMalformed;
        };
        // SAFETY: ptr_at checked that the bytes lie inside the packet.
        l2.copy_from_slice(unsafe { &*src });
        if l3 == 18 {
            l2[16..18].copy_from_slice(&inner_type.to_be_bytes());
            let Some(dst) = ptr_at::<[u8; 18]>(ctx, outer_len) else {
                return DecapStat::PassMalformed;
            };
            // SAFETY: as above.
            unsafe { *dst = l2 };
        } else {
            l2[12..14].copy_from_slice(&inner_type.to_be_bytes());
            let Some(dst) = ptr_at::<[u8; 14]>(ctx, outer_len) else {
                return DecapStat::PassMalformed;
            };
            let mut eth = [0u8; 14];
            eth.copy_from_slice(&l2[0..14]);
            // SAFETY: as above.
            unsafe { *dst = eth };
        }
        // SAFETY: the context pointer is this program's; the helper checks the bounds.
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, outer_len as i32) } != 0 {
            return DecapStat::PassMalformed;
        }
        DecapStat::Decapsulated
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
