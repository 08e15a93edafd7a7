//! Ethernet: writing a frame's header (and its VLAN tag) in front of a rewritten packet, for the
//! tunnel's outer header and for ICMP replies alike.

use aya_ebpf::programs::XdpContext;

use crate::parse::ptr_at;

/// Writes an Ethernet header (with the VLAN tag, when there is one) at the start of the packet.
#[inline(always)]
pub fn write_l2(
    ctx: &XdpContext,
    dst: &[u8; 6],
    src: &[u8; 6],
    tag: Option<[u8; 4]>,
    ether_type: u16,
) -> bool {
    let Some(eth) = ptr_at::<[u8; 14]>(ctx, 0) else {
        return false;
    };
    // SAFETY: ptr_at checked that the bytes lie inside the packet.
    let eth = unsafe { &mut *eth };
    eth[0..6].copy_from_slice(dst);
    eth[6..12].copy_from_slice(src);
    match tag {
        None => eth[12..14].copy_from_slice(&ether_type.to_be_bytes()),
        Some(tag) => {
            eth[12..14].copy_from_slice(&[tag[0], tag[1]]);
            let Some(rest) = ptr_at::<[u8; 4]>(ctx, 14) else {
                return false;
            };
            // SAFETY: as above.
            let rest = unsafe { &mut *rest };
            rest[0..2].copy_from_slice(&[tag[2], tag[3]]);
            rest[2..4].copy_from_slice(&ether_type.to_be_bytes());
        }
    }
    true
}
