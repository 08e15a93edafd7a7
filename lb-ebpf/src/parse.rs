//! Packet parsing: Ethernet (+ one VLAN tag), IPv4 or IPv6, TCP and UDP, and the inner flow of
//! ICMP errors, down to the flow key.
//!
//! The rules for unusual input (each counted under its own [`GlobalStat`]):
//! - not IP, or an Ethernet/VLAN/IP header cut short, or a bad IHL: passed, untouched (the kernel
//!   drops what is malformed and counts it itself);
//! - not for a VIP: passed untouched, after one bit of the VIP filter (or, when the filter cannot
//!   tell, one lookup of the destination address);
//! - for a VIP: an IP length field that disagrees with the frame (more bytes than the frame
//!   holds, fewer than the IP header) is malformed: passed, and the kernel drops it; the frame,
//!   not the length field, bounds everything read after it, and lengths used later (the tunnel's
//!   outer length, the MTU check) are the checked ones;
//! - for a VIP: a source no host can have (martian) is dropped, so nothing is ever forwarded or
//!   answered for it;
//! - for a VIP: TTL / hop limit 0 and fragments are dropped (a non-first fragment carries no
//!   ports, so it cannot be steered to the server of its flow); IPv6 extension headers are not
//!   walked, such packets are dropped (other next headers are passed, as IPv4 passes other
//!   protocols); a TCP or UDP header cut short (by the frame or by the IP length) is dropped;
//!   IPv4 options are skipped over and the packet forwarded (counted);
//! - ICMP / ICMPv6 errors for a VIP (destination unreachable, "fragmentation needed" / "packet
//!   too big", time exceeded, parameter problem) are steered to the real server of the flow they
//!   quote, when the quoted packet was sent from that same VIP (an error addressed to one VIP
//!   that quotes another's flow is passed); other ICMP (echo) is passed, so the VIP answers ping
//!   itself.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use lb_common::{FlowKey, GlobalStat, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
pub use lb_ebpf::packet::ptr_at;
use lb_ebpf::packet::{self, ETH_P_IP, ETH_P_IPV6};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{service, store::load_word, verdict::Verdict};

const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const PROTO_IPV6_FRAGMENT: u8 = 44;

const IPV4_HDR_LEN: usize = 20;
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Length of the ICMP header before the quoted packet.
const ICMP_HDR_LEN: usize = 8;

/// A packet for a VIP, parsed (written in place by the balancer's global parsing functions).
pub struct Packet {
    /// The flow as the client sent it (for an ICMP error: the quoted flow, turned around).
    pub flow: FlowKey,
    /// The packet's length from the start of the Ethernet header, for the byte counters (a frame
    /// is shorter than 4 GiB).
    pub len: u32,
    /// Offset of the IP header: 14, or 18 behind a VLAN tag.
    pub l3_off: u16,
    /// Length of the whole IP packet, host order, from its length field: checked to lie within
    /// the frame (a frame may be longer: Ethernet padding) and to hold the IP header.
    pub ip_len: u16,
    /// IPv4 TOS / IPv6 traffic class, copied to a tunnel's outer header.
    pub tos: u8,
    /// The packet may not be fragmented on its way (IPv4 DF; always for IPv6).
    pub dont_fragment: bool,
    /// The IPv4 identification field as it sits in the packet (0 for IPv6).
    pub ip_id: u16,
    /// The IPv4 header carries options (skipped over; counted once the service is known).
    pub ip_options: bool,
    /// TCP FIN or RST seen: the connection is closing.
    pub closing: bool,
    /// The TCP flags as they came (0 for UDP and ICMP errors): an unknown value to the
    /// verifier, where a bool worked out here would be a known 0 or 1 on two paths that every
    /// later branch on it keeps apart (see [`Packet::syn`]).
    pub tcp_flags: u8,
    /// The packet is an ICMP error about `flow`, not part of it.
    pub icmp_error: bool,
}

impl Packet {
    /// A TCP SYN without ACK: a client opening (or retrying) a connection. A new flow that
    /// starts with one is embryonic until the client's next packet (see conntrack.rs).
    #[inline(always)]
    pub fn syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP RST: an embryonic flow it ends is forgotten instead of promoted.
    #[inline(always)]
    pub fn reset(&self) -> bool {
        self.tcp_flags & TCP_RST != 0
    }
}

/// What [`parse_into`] returns for a frame parsed into its packet.
pub const PARSED: u32 = 0;

/// What [`parse_into`] returns for a frame with a VLAN tag in the program for frames without:
/// the frame is for the tagged program (main.rs hands it over). Not a [`Verdict::code`].
pub const PARSE_TAGGED: u32 = 4 << 16;

/// The IPv4 header as the inline parser reads it: its 16-bit fields as 16-bit words (values as
/// they sit in the packet), so that they take one 16-bit load each, where network-types' byte
/// arrays make the BPF target load a byte at a time. 2-byte aligned, as the frame is: a frame
/// starts at an even address (XDP's headroom is even) and the IP header at 14.
#[repr(C)]
struct Ipv4Words {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frags: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    src: [u16; 2],
    dst: [u16; 2],
}

/// The IPv6 header, read as [`Ipv4Words`] is.
#[repr(C)]
struct Ipv6Words {
    vcf: [u16; 2],
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    src: [u16; 8],
    dst: [u16; 8],
}

/// The TCP header, read as [`Ipv4Words`] is (at 34 or 54: even).
#[repr(C)]
struct TcpWords {
    sport: u16,
    dport: u16,
    seq: [u16; 2],
    ack: [u16; 2],
    offset: u8,
    flags: u8,
    window: u16,
    check: u16,
    urgent: u16,
}

const _: () = assert!(
    size_of::<Ipv4Words>() == IPV4_HDR_LEN
        && size_of::<Ipv6Words>() == Ipv6Hdr::LEN
        && size_of::<TcpWords>() == TCP_HDR_LEN
        && size_of::<PortWords>() == 4
);

/// What [`parse_common`] returns for a frame that is not the common one: the full parser
/// ([`parse_into`]) decides. Not a [`Verdict::code`].
pub const PARSE_UNSURE: u32 = 5 << 16;

/// The common frame, parsed inline before the global parsing function is called: untagged
/// Ethernet, IPv4 without options (or IPv6, [`parse_common_v6`]), TCP, not a fragment, its
/// length within the frame and holding the TCP header, TTL above 0, a source that is not
/// martian. Writes the whole packet and returns [`PARSED`]; returns
/// [`Verdict::pass`]`(PassNotVip)`'s code for a frame the VIP filter clears (as [`parse_v4`] and
/// [`parse_v6`] would); anything else is [`PARSE_UNSURE`], for [`parse_into`], which
/// decides every frame the same way whether or not this ran first. It spares the common frame
/// the call, the zeroing of the slot a global function needs, and the bounds checked again
/// after the call (5-8 ns of a known flow's ~70).
///
/// # Safety
/// `out` is valid for writes of a [`Packet`].
#[inline(always)]
pub unsafe fn parse_common(ctx: &XdpContext, out: *mut Packet) -> u32 {
    const L4: usize = EthHdr::LEN + IPV4_HDR_LEN;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return PARSE_UNSURE;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_IPV6 {
        // SAFETY: the caller's promise.
        return unsafe { parse_common_v6(ctx, out) };
    }
    if ether_type != ETH_P_IP {
        return PARSE_UNSURE;
    }
    let Some(ip) = ptr_at::<Ipv4Words>(ctx, EthHdr::LEN) else {
        return PARSE_UNSURE;
    };
    // SAFETY: as above.
    let ip = unsafe { &*ip };
    if ip.vihl != 0x45 {
        return PARSE_UNSURE;
    }
    // The addresses by 32-bit loads, as IPv6's (parse_common_v6).
    let base = (ip as *const Ipv4Words).cast::<u8>();
    // SAFETY: within the header, which ptr_at checked lies inside the packet.
    let dst = unsafe { load_word::<16>(base) };
    if !service::maybe_vip(&[dst, 0, 0, 0], FAMILY_V4) {
        return Verdict::pass(GlobalStat::PassNotVip).code();
    }
    // SAFETY: as above.
    let src = unsafe { load_word::<12>(base) };
    let frags = u16::from_be(ip.frags);
    if ip.proto != PROTO_TCP
        || ip.ttl == 0
        || frags & (IP_OFFSET_MASK | IP_MF) != 0
        || martian_v4(&src.to_ne_bytes())
    {
        return PARSE_UNSURE;
    }
    let frame_len = ctx.data_end() - ctx.data();
    let ip_len = u16::from_be(ip.tot_len);
    let ip_end = EthHdr::LEN + ip_len as usize;
    if ip_end < L4 + TCP_HDR_LEN || ip_end > frame_len {
        return PARSE_UNSURE;
    }
    let Some(tcp) = ptr_at::<TcpWords>(ctx, L4) else {
        return PARSE_UNSURE;
    };
    // SAFETY: as above.
    let tcp = unsafe { &*tcp };
    let flags = tcp.flags;
    // SAFETY: the caller's promise.
    unsafe {
        write_packet(
            out,
            Packet {
                flow: FlowKey {
                    src: [src, 0, 0, 0],
                    dst: [dst, 0, 0, 0],
                    sport: tcp.sport,
                    dport: tcp.dport,
                    proto: PROTO_TCP,
                    family: FAMILY_V4,
                    _pad: [0; 2],
                },
                len: frame_len as u32,
                l3_off: EthHdr::LEN as u16,
                ip_len,
                tos: ip.tos,
                dont_fragment: frags & IP_DF != 0,
                ip_id: ip.id,
                ip_options: false,
                closing: flags & (TCP_FIN | TCP_RST) != 0,
                tcp_flags: flags,
                icmp_error: false,
            },
        )
    };
    PARSED
}

/// [`parse_common`] for IPv6: untagged, next header TCP, its length within the frame and holding
/// the TCP header, hop limit above 0, a source that is not martian; as [`parse_v6`] decides.
///
/// # Safety
/// As for [`parse_common`].
#[inline(always)]
unsafe fn parse_common_v6(ctx: &XdpContext, out: *mut Packet) -> u32 {
    const L4: usize = EthHdr::LEN + Ipv6Hdr::LEN;
    let Some(ip) = ptr_at::<Ipv6Words>(ctx, EthHdr::LEN) else {
        return PARSE_UNSURE;
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0].to_ne_bytes()[0] >> 4 != 6 {
        return PARSE_UNSURE;
    }
    // The addresses by 32-bit loads ([`load_word`]: 24 instructions fewer than joining 16-bit
    // words).
    let base = (ip as *const Ipv6Words).cast::<u8>();
    // SAFETY: within the header, which ptr_at checked lies inside the packet.
    let dst = unsafe {
        [
            load_word::<24>(base),
            load_word::<28>(base),
            load_word::<32>(base),
            load_word::<36>(base),
        ]
    };
    if !service::maybe_vip(&dst, FAMILY_V6) {
        return Verdict::pass(GlobalStat::PassNotVip).code();
    }
    // SAFETY: as above.
    let src = unsafe {
        [
            load_word::<8>(base),
            load_word::<12>(base),
            load_word::<16>(base),
            load_word::<20>(base),
        ]
    };
    if ip.next_hdr != PROTO_TCP || ip.hop_limit == 0 || martian_v6_words(&src) {
        return PARSE_UNSURE;
    }
    let frame_len = ctx.data_end() - ctx.data();
    let payload_len = u16::from_be(ip.payload_len) as usize;
    if payload_len < TCP_HDR_LEN || L4 + payload_len > frame_len {
        return PARSE_UNSURE;
    }
    let Some(tcp) = ptr_at::<TcpWords>(ctx, L4) else {
        return PARSE_UNSURE;
    };
    // SAFETY: as above.
    let tcp = unsafe { &*tcp };
    let flags = tcp.flags;
    // SAFETY: the caller's promise.
    unsafe {
        write_packet(
            out,
            Packet {
                flow: FlowKey {
                    src,
                    dst,
                    sport: tcp.sport,
                    dport: tcp.dport,
                    proto: PROTO_TCP,
                    family: FAMILY_V6,
                    _pad: [0; 2],
                },
                len: frame_len as u32,
                l3_off: EthHdr::LEN as u16,
                // Within the frame, checked above, so it fits 16 bits.
                ip_len: (payload_len + Ipv6Hdr::LEN) as u16,
                tos: (u16::from_be(ip.vcf[0]) >> 4) as u8,
                dont_fragment: true,
                ip_id: 0,
                ip_options: false,
                closing: flags & (TCP_FIN | TCP_RST) != 0,
                tcp_flags: flags,
                icmp_error: false,
            },
        )
    };
    PARSED
}

/// Parse the frame down to its packet, written to `out`: [`PARSED`], or the [`Verdict::code`]
/// that says why it is not forwarded, or [`PARSE_TAGGED`]. The body of the balancer's global
/// parsing functions (main.rs), which the verifier checks once, on their own: the balancer goes
/// on from one state whatever the frame was (IPv4 or IPv6, TCP, UDP or an ICMP error, with IP
/// options or not), where each way out of the parsing would otherwise make it walk the rest of
/// the program once more.
///
/// # Safety
/// `ctx` is the program's context; `out` is null or valid for writes of a [`Packet`].
#[inline(always)]
pub unsafe fn parse_into<const TAGGED: bool>(ctx: *mut xdp_md, out: *mut Packet) -> u32 {
    if out.is_null() {
        return Verdict::pass(GlobalStat::PassMalformed).code();
    }
    // SAFETY: the caller's promise, and not null.
    match unsafe { parse::<TAGGED>(&XdpContext::new(ctx), out) } {
        Ok(()) => PARSED,
        Err(code) => code,
    }
}

/// Parse the packet down to its flow, or say why it is not forwarded (a [`Verdict::code`], or
/// [`PARSE_TAGGED`]). `TAGGED`: the program for frames with a VLAN tag (IP header at 18), else
/// the one for frames without (at 14), which hands a tagged frame to the other by a tail call:
/// each program then knows where its IP header is, and the verifier walks each once instead of
/// the two offsets through one program.
///
/// # Safety
/// `out` is valid for writes of a [`Packet`]; written in place (the parsing functions' frame is
/// part of the balancer's 512 bytes of stack), whole before any field is changed.
#[inline(always)]
unsafe fn parse<const TAGGED: bool>(ctx: &XdpContext, out: *mut Packet) -> Result<(), u32> {
    let (ether_type, l3) =
        packet::ether_type(ctx).ok_or(Verdict::pass(GlobalStat::PassMalformed).code())?;
    let tagged = l3 != EthHdr::LEN;
    if tagged != TAGGED {
        // A tagged frame in the untagged program goes to the tagged one; a frame without a tag
        // in the tagged program (tail-called for it by mistake): the kernel gets it as it is.
        return Err(if tagged {
            PARSE_TAGGED
        } else {
            Verdict::pass(GlobalStat::PassNotIp).code()
        });
    }
    match ether_type {
        // SAFETY: the caller's promise.
        ETH_P_IP => unsafe { parse_v4(ctx, l3, out) },
        // SAFETY: the caller's promise.
        ETH_P_IPV6 => unsafe { parse_v6(ctx, l3, out) },
        _ => Err(Verdict::pass(GlobalStat::PassNotIp)),
    }
    .map_err(|verdict| verdict.code())
}

/// The two ports that start a TCP or UDP header, read as [`TcpWords`]' are (values as they sit
/// in the packet).
#[repr(C)]
struct PortWords {
    sport: u16,
    dport: u16,
}

/// Ports at `l4` of a TCP or UDP header (as they sit in the packet), and the TCP flags (0 for
/// UDP). The header must lie within the frame and within the IP packet, which ends at `ip_end`.
/// Read through the same word structs as the inline parser's: 16-bit loads of the ports, and
/// three plain values back (a tuple of byte arrays went through the stack at odd offsets).
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, ip_end: usize, proto: u8) -> Result<(u16, u16, u8), Verdict> {
    let truncated = Verdict::drop(GlobalStat::DropTruncatedL4);
    let header = if proto == PROTO_TCP {
        TCP_HDR_LEN
    } else {
        UDP_HDR_LEN
    };
    if l4 + header > ip_end {
        return Err(truncated);
    }
    if proto == PROTO_TCP {
        let tcp: *const TcpWords = ptr_at(ctx, l4).ok_or(truncated)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let tcp = unsafe { &*tcp };
        Ok((tcp.sport, tcp.dport, tcp.flags))
    } else {
        let udp: *const PortWords = ptr_at(ctx, l4).ok_or(truncated)?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let udp = unsafe { &*udp };
        Ok((udp.sport, udp.dport, 0))
    }
}

/// The first four bytes of a quoted L4 header: its ports (as they sit in the packet), which must
/// lie within the frame and within the ICMP error's IP packet, which ends at `ip_end`.
#[inline(always)]
fn quoted_ports(ctx: &XdpContext, l4: usize, ip_end: usize) -> Result<(u16, u16), Verdict> {
    if l4 + 4 > ip_end {
        return Err(Verdict::drop(GlobalStat::DropTruncatedL4));
    }
    let p: *const PortWords = ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the bytes lie inside the packet.
    let p = unsafe { &*p };
    Ok((p.sport, p.dport))
}

/// # Safety
/// As for [`parse`].
#[inline(always)]
unsafe fn parse_v4(ctx: &XdpContext, l3: usize, out: *mut Packet) -> Result<(), Verdict> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Verdict::pass(GlobalStat::PassMalformed))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Verdict::pass(GlobalStat::PassMalformed));
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Verdict::pass(GlobalStat::PassBadIhl));
    }
    let dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    if !service::maybe_vip(&dst, FAMILY_V4) {
        return Err(Verdict::pass(GlobalStat::PassNotVip));
    }
    // SAFETY: the caller's promise.
    unsafe { parse_v4_for_vip(ctx, l3, ip, ihl, out) }
        .map_err(|v| service::confirm_vip(&dst, FAMILY_V4, v))
}

/// The rest of [`parse_v4`], for a destination that may be a VIP.
///
/// # Safety
/// As for [`parse`].
#[inline(always)]
unsafe fn parse_v4_for_vip(
    ctx: &XdpContext,
    l3: usize,
    ip: &Ipv4Hdr,
    ihl: usize,
    out: *mut Packet,
) -> Result<(), Verdict> {
    let dst = u32::from_ne_bytes(ip.dst_addr);
    let l4 = l3 + ihl * 4;
    if ptr_at::<u8>(ctx, l4 - 1).is_none() {
        return Err(Verdict::pass(GlobalStat::PassBadIhl));
    }
    let frame_len = ctx.data_end() - ctx.data();
    let ip_len = u16::from_be_bytes(ip.tot_len);
    let ip_end = l3 + ip_len as usize;
    if ip_end < l4 || ip_end > frame_len {
        return Err(Verdict::pass(GlobalStat::PassBadLength));
    }
    let ip_end = opaque(ip_end);
    if martian_v4(&ip.src_addr) {
        return Err(Verdict::drop(GlobalStat::DropMartianSource));
    }
    if ip.ttl == 0 {
        return Err(Verdict::drop(GlobalStat::DropTtl));
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IP_OFFSET_MASK != 0 {
        return Err(Verdict::drop(GlobalStat::DropFragment));
    }
    if frags & IP_MF != 0 {
        return Err(Verdict::drop(GlobalStat::DropFragmentFirst));
    }
    let proto = ip.proto;
    // SAFETY: the caller's promise.
    unsafe {
        write_packet(
            out,
            Packet {
                flow: FlowKey {
                    src: [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
                    dst: [dst, 0, 0, 0],
                    sport: 0,
                    dport: 0,
                    proto,
                    family: FAMILY_V4,
                    _pad: [0; 2],
                },
                len: frame_len as u32,
                l3_off: l3 as u16,
                ip_len,
                tos: ip.tos,
                dont_fragment: frags & IP_DF != 0,
                ip_id: u16::from_ne_bytes(ip.id),
                ip_options: ihl > 5,
                closing: false,
                tcp_flags: 0,
                icmp_error: false,
            },
        )
    };
    // SAFETY: written whole just above.
    let packet = unsafe { &mut *out };
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let (sport, dport, flags) = ports(ctx, l4, ip_end, proto)?;
        packet.flow.sport = sport;
        packet.flow.dport = dport;
        packet.closing = flags & (TCP_FIN | TCP_RST) != 0;
        packet.tcp_flags = flags;
        return Ok(());
    }
    if proto != PROTO_ICMP {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    // ICMP: errors quote the packet that caused them, sent by a real server from the VIP.
    let icmp: *const [u8; ICMP_HDR_LEN] =
        ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let icmp_type = unsafe { (*icmp)[0] };
    if !matches!(icmp_type, 3 | 11 | 12) {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let inner_l3 = l4 + ICMP_HDR_LEN;
    if inner_l3 + IPV4_HDR_LEN > ip_end {
        return Err(Verdict::drop(GlobalStat::DropTruncatedL4));
    }
    let inner: *const Ipv4Hdr =
        ptr_at(ctx, inner_l3).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let inner = unsafe { &*inner };
    let inner_ihl = (inner.vihl & 0x0f) as usize;
    let inner_proto = inner.proto;
    if inner.vihl >> 4 != 4
        || inner_ihl < 5
        || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP)
    {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    if inner.src_addr != ip.dst_addr {
        // The error is addressed to this VIP but quotes a packet another address sent.
        return Err(Verdict::pass(GlobalStat::PassIcmpQuoteMismatch));
    }
    let (isport, idport) = quoted_ports(ctx, inner_l3 + inner_ihl * 4, ip_end)?;
    // The quoted packet went from the VIP to the client: turn it around into the client's flow.
    // SAFETY: the packet's own flow.
    unsafe {
        write_flow(
            &raw mut packet.flow,
            FlowKey {
                src: [u32::from_ne_bytes(inner.dst_addr), 0, 0, 0],
                dst: [u32::from_ne_bytes(inner.src_addr), 0, 0, 0],
                sport: idport,
                dport: isport,
                proto: inner_proto,
                family: FAMILY_V4,
                _pad: [0; 2],
            },
        )
    };
    packet.icmp_error = true;
    Ok(())
}

/// # Safety
/// As for [`parse`].
#[inline(always)]
unsafe fn parse_v6(ctx: &XdpContext, l3: usize, out: *mut Packet) -> Result<(), Verdict> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Verdict::pass(GlobalStat::PassMalformed))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Verdict::pass(GlobalStat::PassMalformed));
    }
    let dst: [u32; 4] = addr_words(&ip.dst_addr);
    if !service::maybe_vip(&dst, FAMILY_V6) {
        return Err(Verdict::pass(GlobalStat::PassNotVip));
    }
    // SAFETY: the caller's promise.
    unsafe { parse_v6_for_vip(ctx, l3, ip, dst, out) }
        .map_err(|v| service::confirm_vip(&dst, FAMILY_V6, v))
}

/// The rest of [`parse_v6`], for a destination that may be a VIP.
///
/// # Safety
/// As for [`parse`].
#[inline(always)]
unsafe fn parse_v6_for_vip(
    ctx: &XdpContext,
    l3: usize,
    ip: &Ipv6Hdr,
    dst: [u32; 4],
    out: *mut Packet,
) -> Result<(), Verdict> {
    let frame_len = ctx.data_end() - ctx.data();
    // At most 65535 + 40: no wrap in 32 bits.
    let ip_len32 = u32::from(u16::from_be_bytes(ip.payload_len)) + Ipv6Hdr::LEN as u32;
    let ip_end = l3 + ip_len32 as usize;
    if ip_end > frame_len {
        return Err(Verdict::pass(GlobalStat::PassBadLength));
    }
    let ip_end = opaque(ip_end);
    if martian_v6(&ip.src_addr) {
        return Err(Verdict::drop(GlobalStat::DropMartianSource));
    }
    if ip.hop_limit == 0 {
        return Err(Verdict::drop(GlobalStat::DropTtl));
    }
    let proto = ip.next_hdr;
    let l4 = l3 + Ipv6Hdr::LEN;
    // SAFETY: the caller's promise.
    unsafe {
        write_packet(
            out,
            Packet {
                flow: FlowKey {
                    src: addr_words(&ip.src_addr),
                    dst,
                    sport: 0,
                    dport: 0,
                    proto,
                    family: FAMILY_V6,
                    _pad: [0; 2],
                },
                len: frame_len as u32,
                l3_off: l3 as u16,
                // Within the frame, checked above, so it fits 16 bits.
                ip_len: ip_len32 as u16,
                tos: (u16::from_be_bytes([ip.vcf[0], ip.vcf[1]]) >> 4) as u8,
                dont_fragment: true,
                ip_id: 0,
                ip_options: false,
                closing: false,
                tcp_flags: 0,
                icmp_error: false,
            },
        )
    };
    // SAFETY: written whole just above.
    let packet = unsafe { &mut *out };
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let (sport, dport, flags) = ports(ctx, l4, ip_end, proto)?;
        packet.flow.sport = sport;
        packet.flow.dport = dport;
        packet.closing = flags & (TCP_FIN | TCP_RST) != 0;
        packet.tcp_flags = flags;
        return Ok(());
    }
    if proto == PROTO_IPV6_FRAGMENT {
        let frag: *const [u8; 8] =
            ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let offset = unsafe { u16::from_be_bytes([(*frag)[2], (*frag)[3]]) } >> 3;
        return Err(Verdict::drop(if offset == 0 {
            GlobalStat::DropFragmentFirst
        } else {
            GlobalStat::DropFragment
        }));
    }
    if proto != PROTO_ICMPV6 {
        return Err(if is_extension_header(proto) {
            // Hop-by-hop, routing, destination options...: not walked.
            Verdict::drop(GlobalStat::DropIpv6ExtHeaders)
        } else {
            Verdict::pass(GlobalStat::PassOtherProto)
        });
    }
    let icmp: *const [u8; ICMP_HDR_LEN] =
        ptr_at(ctx, l4).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let icmp_type = unsafe { (*icmp)[0] };
    if !matches!(icmp_type, 1..=4) {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    let inner_l3 = l4 + ICMP_HDR_LEN;
    if inner_l3 + Ipv6Hdr::LEN > ip_end {
        return Err(Verdict::drop(GlobalStat::DropTruncatedL4));
    }
    let inner: *const Ipv6Hdr =
        ptr_at(ctx, inner_l3).ok_or(Verdict::drop(GlobalStat::DropTruncatedL4))?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let inner = unsafe { &*inner };
    let inner_proto = inner.next_hdr;
    if inner.vcf[0] >> 4 != 6 || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP) {
        return Err(Verdict::pass(GlobalStat::PassOtherProto));
    }
    if inner.src_addr != ip.dst_addr {
        // The error is addressed to this VIP but quotes a packet another address sent.
        return Err(Verdict::pass(GlobalStat::PassIcmpQuoteMismatch));
    }
    let (isport, idport) = quoted_ports(ctx, inner_l3 + Ipv6Hdr::LEN, ip_end)?;
    // SAFETY: the packet's own flow.
    unsafe {
        write_flow(
            &raw mut packet.flow,
            FlowKey {
                src: addr_words(&inner.dst_addr),
                dst: addr_words(&inner.src_addr),
                sport: idport,
                dport: isport,
                proto: inner_proto,
                family: FAMILY_V6,
                _pad: [0; 2],
            },
        )
    };
    packet.icmp_error = true;
    Ok(())
}

/// Writes a parsed packet to `out` field by field, by volatile stores. A plain write of the
/// whole lets LLVM make the run of zeroes in it (an IPv4 flow's unused address words, the ports
/// before they are read, the flags) a call of `memset`, which the BPF target writes a byte at a
/// time in a function of its own: 7-10 ns of a known flow's ~70 in `xlb_parse`.
///
/// # Safety
/// `out` is valid for writes of a [`Packet`].
#[inline(always)]
unsafe fn write_packet(out: *mut Packet, packet: Packet) {
    // SAFETY: the caller's promise; every field of `out` is written.
    unsafe {
        write_flow(&raw mut (*out).flow, packet.flow);
        (&raw mut (*out).len).write_volatile(packet.len);
        (&raw mut (*out).l3_off).write_volatile(packet.l3_off);
        (&raw mut (*out).ip_len).write_volatile(packet.ip_len);
        (&raw mut (*out).tos).write_volatile(packet.tos);
        (&raw mut (*out).dont_fragment).write_volatile(packet.dont_fragment);
        (&raw mut (*out).ip_id).write_volatile(packet.ip_id);
        (&raw mut (*out).ip_options).write_volatile(packet.ip_options);
        (&raw mut (*out).closing).write_volatile(packet.closing);
        (&raw mut (*out).tcp_flags).write_volatile(packet.tcp_flags);
        (&raw mut (*out).icmp_error).write_volatile(packet.icmp_error);
    }
}

/// Writes a flow key to `out` by volatile stores (see [`write_packet`]).
///
/// # Safety
/// `out` is valid for writes of a [`FlowKey`].
#[inline(always)]
unsafe fn write_flow(out: *mut FlowKey, flow: FlowKey) {
    // SAFETY: the caller's promise; every field of `out` is written.
    unsafe {
        for i in 0..4 {
            (&raw mut (*out).src[i]).write_volatile(flow.src[i]);
            (&raw mut (*out).dst[i]).write_volatile(flow.dst[i]);
        }
        (&raw mut (*out).sport).write_volatile(flow.sport);
        (&raw mut (*out).dport).write_volatile(flow.dport);
        (&raw mut (*out).proto).write_volatile(flow.proto);
        (&raw mut (*out).family).write_volatile(flow.family);
        (&raw mut (*out)._pad).write_volatile(flow._pad);
    }
}

/// `value`, hidden from the optimiser. From `ip_end <= frame length` and `l4 + n <= ip_end`
/// LLVM would conclude that the packet holds `l4 + n` bytes and drop `ptr_at`'s own check, which
/// the verifier needs to see (it does not follow such relations between scalars).
#[inline(always)]
fn opaque(value: usize) -> usize {
    core::hint::black_box(value)
}

/// Whether an IPv4 source address is one no host can send from: this network (0/8), loopback
/// (127/8), multicast (224/4), class E and the limited broadcast (240/4).
#[inline(always)]
fn martian_v4(src: &[u8; 4]) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] >= 224
}

/// Whether an IPv6 source address is one that must not be forwarded: unspecified, loopback,
/// multicast (ff00::/8), link-local (fe80::/10, valid on its own link only) and IPv4-mapped
/// (::ffff:0:0/96, which the kernel drops as a source too).
#[inline(always)]
fn martian_v6(src: &[u8; 16]) -> bool {
    martian_v6_words(&addr_words(src))
}

/// [`martian_v6`] of an address as four words in network order.
#[inline(always)]
fn martian_v6_words(w: &[u32; 4]) -> bool {
    let first = w[0].to_ne_bytes();
    if first[0] == 0xff || (first[0] == 0xfe && first[1] & 0xc0 == 0x80) {
        return true;
    }
    if w[0] != 0 || w[1] != 0 {
        return false;
    }
    let w2 = u32::from_be(w[2]);
    let w3 = u32::from_be(w[3]);
    (w2 == 0 && w3 <= 1) || w2 == 0x0000_ffff
}

/// Whether an IPv6 next header is an extension header that would have to be walked to find the
/// transport header (RFC 8200 and the IANA list; the fragment header is handled on its own; ESP
/// and AH end the part we could read, like any other protocol).
#[inline(always)]
fn is_extension_header(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// An IPv6 address as four words in network order, as the maps hold it.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
