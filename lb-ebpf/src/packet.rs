//! Reading packets: bounds-checked pointers into the frame, the Ethernet header with an optional
//! VLAN tag, and the numbers both programs look for.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;

/// Ethertype: IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype: IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype: an 802.1Q VLAN tag follows.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype: an 802.1ad (QinQ outer) VLAN tag follows.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Length of a VLAN tag.
pub const VLAN_HDR_LEN: usize = 4;

/// IP protocol: IPv4 in IP (IPIP).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol: IPv6 in IP.
pub const PROTO_IPV6: u8 = 41;

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

/// The frame's ethertype, behind one VLAN tag if there is one, and the offset of what follows
/// (14, or 18 behind a tag); `None` when the frame is cut short.
#[inline(always)]
pub fn ether_type(ctx: &XdpContext) -> Option<(u16, usize)> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
        return Some((ether_type, EthHdr::LEN));
    }
    let tag: *const [u8; VLAN_HDR_LEN] = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: as above.
    let tag = unsafe { &*tag };
    Some((
        u16::from_be_bytes([tag[2], tag[3]]),
        EthHdr::LEN + VLAN_HDR_LEN,
    ))
}
