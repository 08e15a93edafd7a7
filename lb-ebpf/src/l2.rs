//! Ethernet: writing a frame's header (and its VLAN tag) in front of a rewritten packet, for the
//! tunnel's outer header and for ICMP replies alike.

use aya_ebpf::programs::XdpContext;
use lb_common::NextHop;

use crate::{parse::ptr_at, store::store_word};

// The next hop's two addresses are read as three aligned 32-bit words (write_macs_at).
const _: () = assert!(
    core::mem::offset_of!(NextHop, dmac) % 4 == 0
        && core::mem::offset_of!(NextHop, smac) == core::mem::offset_of!(NextHop, dmac) + 6
        && core::mem::align_of::<NextHop>() >= 4
);

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
    write_type(ctx, tag, ether_type)
}

/// Writes the Ethernet header of a next hop (its addresses, the tag when there is one, then
/// `ether_type`) at `frame`, the start of a frame whose first 14 bytes (18 with a tag) the caller
/// checked lie within the packet: for a rewrite that checks the whole of its headers at once.
#[inline(always)]
pub fn write_hop_eth_at(frame: *mut u8, hop: &NextHop, tag: Option<[u8; 4]>, ether_type: u16) {
    write_macs_at(frame.cast(), hop);
    let ether_type = ether_type.to_be();
    // SAFETY: within the bytes the caller checked; 2-byte aligned (a frame starts at an even
    // address: XDP's headroom is even, and so is every adjustment the balancer makes to it).
    unsafe {
        let words = frame.cast::<u16>();
        match tag {
            None => *words.add(6) = ether_type,
            Some(tag) => {
                *words.add(6) = u16::from_ne_bytes([tag[0], tag[1]]);
                *words.add(7) = u16::from_ne_bytes([tag[2], tag[3]]);
                *words.add(8) = ether_type;
            }
        }
    }
}

/// Writes the next hop's destination and source MAC addresses at the start of the frame, by
/// three 32-bit loads and stores (the addresses lie side by side in the entry from a 4-byte
/// boundary, checked above; the frame is only 2-byte aligned, so the stores are
/// [`store_word`]'s), where copying byte arrays makes twelve of a byte each for the BPF target
/// and 16-bit words six of each.
#[inline(always)]
pub fn write_hop_macs(ctx: &XdpContext, hop: &NextHop) -> bool {
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return false;
    };
    write_macs_at(eth, hop);
    true
}

/// The next hop's two MAC addresses into the 12 bytes at `eth`, which the caller checked lie
/// within the frame.
#[inline(always)]
fn write_macs_at(eth: *mut [u16; 6], hop: &NextHop) {
    let words = (&raw const hop.dmac).cast::<u32>();
    let base = eth.cast::<u8>();
    // SAFETY: the three words lie within the entry's two addresses, 4-byte aligned (checked
    // above); the stores within the frame (the caller's check).
    unsafe {
        store_word::<0>(base, words.read());
        store_word::<4>(base, words.add(1).read());
        store_word::<8>(base, words.add(2).read());
    }
}

/// The ethertype after the addresses (behind the VLAN tag, when there is one).
#[inline(always)]
fn write_type(ctx: &XdpContext, tag: Option<[u8; 4]>, ether_type: u16) -> bool {
    let Some(eth) = ptr_at::<[u8; 14]>(ctx, 0) else {
        return false;
    };
    // SAFETY: ptr_at checked that the bytes lie inside the packet.
    let eth = unsafe { &mut *eth };
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
