//! A reference model of the balancer: the README's table "What the data path does with each
//! packet", written as Rust, for a fixed set of services. Given a frame, it says what the data
//! path must do with it: the verdict, the counter that says why and, when the packet is sent on,
//! the exact bytes (or, for an ICMP "too big" reply, what the reply must say).
//!
//! It is written from the table, not from the eBPF code: where the two disagree, one of them is
//! wrong. It models a balancer whose services each have one real server (so a known flow and a
//! new one go to the same place) and whose next hops all resolve on the ingress interface.

use std::net::IpAddr;

use lb_common::{hash::flow_hash, FlowKey, GlobalStat, FAMILY_V4, FAMILY_V6};

use crate::packet::checksum;

/// How a real server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// MAC rewrite.
    DirectRoute,
    /// IP-in-IP / IPv6-in-IPv6.
    Tunnel,
}

/// One service and its only real server.
#[derive(Clone, Debug)]
pub struct Service {
    /// The VIP.
    pub vip: IpAddr,
    /// The port (0: every port).
    pub port: u16,
    /// TCP or UDP.
    pub proto: u8,
    /// The real server's address.
    pub real: IpAddr,
    /// The real server's (or its next hop's) MAC address.
    pub real_mac: [u8; 6],
    /// How it is reached.
    pub method: Method,
}

/// The balancer the model describes: its interface and its services.
#[derive(Clone, Debug)]
pub struct World {
    /// The balancer's MAC address on the interface.
    pub our_mac: [u8; 6],
    /// The balancer's IPv4 address there (a tunnel's source).
    pub our_v4: [u8; 4],
    /// The balancer's IPv6 address there.
    pub our_v6: [u8; 16],
    /// The interface's MTU.
    pub mtu: usize,
    /// The services.
    pub services: Vec<Service>,
}

/// What the data path must do with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// XDP_PASS, the frame untouched, counted under the reason.
    Pass(GlobalStat),
    /// XDP_DROP, counted under the reason.
    Drop(GlobalStat),
    /// XDP_TX of exactly these bytes; `also` is a counter that grows besides `verdict_tx`.
    Forward {
        /// The frame sent.
        bytes: Vec<u8>,
        /// A second counter that grows (IP options, ICMP error forwarded), if any.
        also: Option<GlobalStat>,
    },
    /// XDP_TX of an ICMP "fragmentation needed" / ICMPv6 "packet too big" to `client` from
    /// `vip`, announcing `mtu`.
    TooBig {
        /// The client (the packet's source).
        client: IpAddr,
        /// The VIP.
        vip: IpAddr,
        /// The MTU announced.
        mtu: u16,
    },
}

impl Expected {
    /// The expectation in a few words (without the bytes), for messages.
    pub fn summary(&self) -> String {
        match self {
            Self::Pass(s) => format!("pass ({})", s.name()),
            Self::Drop(s) => format!("drop ({})", s.name()),
            Self::Forward { bytes, .. } => format!("forward {} bytes", bytes.len()),
            Self::TooBig { client, vip, mtu } => {
                format!("too big: a reply from {vip} to {client} announcing {mtu}")
            }
        }
    }

    /// The counter that must grow by one.
    pub fn counter(&self) -> GlobalStat {
        match self {
            Self::Pass(s) | Self::Drop(s) => *s,
            Self::Forward { also, .. } => also.unwrap_or(GlobalStat::VerdictTx),
            Self::TooBig { .. } => GlobalStat::IcmpTooBigSent,
        }
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// A frame read up to its IP header.
struct Frame<'a> {
    bytes: &'a [u8],
    /// Offset of the IP header.
    l3: usize,
}

/// The parsed flow of a packet for a VIP, and what forwarding needs of it.
struct Flow {
    /// Client address (the packet's source; an ICMP error's quoted destination).
    client: IpAddr,
    vip: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
    /// The IP packet's length from its header, checked against the frame.
    ip_len: usize,
    tos: u8,
    dont_fragment: bool,
    /// The IPv4 id as it sits in the packet (its two bytes).
    ip_id: [u8; 2],
    icmp_error: bool,
    ip_options: bool,
}

/// What the data path must do with `frame`.
pub fn expect(world: &World, frame: &[u8]) -> Expected {
    let (ether_type, l3) = match ether_type(frame) {
        Some(t) => t,
        None => return Expected::Pass(GlobalStat::PassMalformed),
    };
    let f = Frame { bytes: frame, l3 };
    let flow = match ether_type {
        0x0800 => parse_v4(world, &f),
        0x86dd => parse_v6(world, &f),
        _ => Err(Expected::Pass(GlobalStat::PassNotIp)),
    };
    let flow = match flow {
        Ok(flow) => flow,
        Err(e) => return e,
    };
    let Some(service) = find_service(world, &flow) else {
        return Expected::Pass(GlobalStat::PassNoService);
    };
    forward(world, &f, &flow, service)
}

/// The Ethernet type and the offset of what follows (one VLAN tag skipped).
fn ether_type(frame: &[u8]) -> Option<(u16, usize)> {
    let t = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if t != 0x8100 && t != 0x88a8 {
        return Some((t, 14));
    }
    Some((u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]), 18))
}

fn is_vip(world: &World, addr: IpAddr) -> bool {
    world.services.iter().any(|s| s.vip == addr)
}

fn martian(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0 || o[0] == 127 || o[0] >= 224
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            let mapped = o[..10] == [0; 10] && o[10..12] == [0xff, 0xff];
            o[0] == 0xff
                || (o[0] == 0xfe && o[1] & 0xc0 == 0x80)
                || mapped
                || a.is_unspecified()
                || a.is_loopback()
        }
    }
}

fn v4(b: &[u8]) -> IpAddr {
    IpAddr::from([b[0], b[1], b[2], b[3]])
}

fn v6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::from(a)
}

/// The ports of a TCP or UDP header at `l4` inside an IP packet that ends at `ip_end`.
fn ports(bytes: &[u8], l4: usize, ip_end: usize, proto: u8) -> Result<(u16, u16), Expected> {
    let header = if proto == TCP { 20 } else { 8 };
    if l4 + header > ip_end || l4 + header > bytes.len() {
        return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
    }
    Ok((
        u16::from_be_bytes([bytes[l4], bytes[l4 + 1]]),
        u16::from_be_bytes([bytes[l4 + 2], bytes[l4 + 3]]),
    ))
}

fn parse_v4(world: &World, f: &Frame<'_>) -> Result<Flow, Expected> {
    let b = f.bytes;
    let l3 = f.l3;
    if b.len() < l3 + 20 || b[l3] >> 4 != 4 {
        return Err(Expected::Pass(GlobalStat::PassMalformed));
    }
    let ihl = usize::from(b[l3] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Expected::Pass(GlobalStat::PassBadIhl));
    }
    let dst = v4(&b[l3 + 16..]);
    if !is_vip(world, dst) {
        return Err(Expected::Pass(GlobalStat::PassNotVip));
    }
    let l4 = l3 + ihl;
    if l4 > b.len() {
        return Err(Expected::Pass(GlobalStat::PassBadIhl));
    }
    let ip_len = usize::from(u16::from_be_bytes([b[l3 + 2], b[l3 + 3]]));
    let ip_end = l3 + ip_len;
    if ip_end < l4 || ip_end > b.len() {
        return Err(Expected::Pass(GlobalStat::PassBadLength));
    }
    let src = v4(&b[l3 + 12..]);
    if martian(src) {
        return Err(Expected::Drop(GlobalStat::DropMartianSource));
    }
    if b[l3 + 8] == 0 {
        return Err(Expected::Drop(GlobalStat::DropTtl));
    }
    let frags = u16::from_be_bytes([b[l3 + 6], b[l3 + 7]]);
    if frags & 0x1fff != 0 {
        return Err(Expected::Drop(GlobalStat::DropFragment));
    }
    if frags & 0x2000 != 0 {
        return Err(Expected::Drop(GlobalStat::DropFragmentFirst));
    }
    let mut flow = Flow {
        client: src,
        vip: dst,
        sport: 0,
        dport: 0,
        proto: b[l3 + 9],
        ip_len,
        tos: b[l3 + 1],
        dont_fragment: frags & 0x4000 != 0,
        ip_id: [b[l3 + 4], b[l3 + 5]],
        icmp_error: false,
        ip_options: ihl > 20,
    };
    match flow.proto {
        TCP | UDP => {
            (flow.sport, flow.dport) = ports(b, l4, ip_end, flow.proto)?;
            Ok(flow)
        }
        1 => {
            // An ICMP error about a flow the VIP sent: steered like the flow.
            if l4 + 8 > b.len() {
                return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
            }
            if !matches!(b[l4], 3 | 11 | 12) {
                return Err(Expected::Pass(GlobalStat::PassOtherProto));
            }
            let inner = l4 + 8;
            if inner + 20 > ip_end {
                return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
            }
            let inner_ihl = usize::from(b[inner] & 0x0f) * 4;
            let inner_proto = b[inner + 9];
            if b[inner] >> 4 != 4 || inner_ihl < 20 || (inner_proto != TCP && inner_proto != UDP) {
                return Err(Expected::Pass(GlobalStat::PassOtherProto));
            }
            if b[inner + 12..inner + 16] != b[l3 + 16..l3 + 20] {
                return Err(Expected::Pass(GlobalStat::PassIcmpQuoteMismatch));
            }
            let (client, vip) = (v4(&b[inner + 16..]), v4(&b[inner + 12..]));
            quoted_flow(
                flow,
                b,
                inner + inner_ihl,
                ip_end,
                (client, vip, inner_proto),
            )
        }
        _ => Err(Expected::Pass(GlobalStat::PassOtherProto)),
    }
}

fn parse_v6(world: &World, f: &Frame<'_>) -> Result<Flow, Expected> {
    let b = f.bytes;
    let l3 = f.l3;
    if b.len() < l3 + 40 || b[l3] >> 4 != 6 {
        return Err(Expected::Pass(GlobalStat::PassMalformed));
    }
    let dst = v6(&b[l3 + 24..]);
    if !is_vip(world, dst) {
        return Err(Expected::Pass(GlobalStat::PassNotVip));
    }
    let ip_len = usize::from(u16::from_be_bytes([b[l3 + 4], b[l3 + 5]])) + 40;
    let ip_end = l3 + ip_len;
    if ip_end > b.len() {
        return Err(Expected::Pass(GlobalStat::PassBadLength));
    }
    let src = v6(&b[l3 + 8..]);
    if martian(src) {
        return Err(Expected::Drop(GlobalStat::DropMartianSource));
    }
    if b[l3 + 7] == 0 {
        return Err(Expected::Drop(GlobalStat::DropTtl));
    }
    let l4 = l3 + 40;
    let mut flow = Flow {
        client: src,
        vip: dst,
        sport: 0,
        dport: 0,
        proto: b[l3 + 6],
        ip_len,
        tos: ((u16::from_be_bytes([b[l3], b[l3 + 1]]) >> 4) & 0xff) as u8,
        dont_fragment: true,
        ip_id: [0, 0],
        icmp_error: false,
        ip_options: false,
    };
    match flow.proto {
        TCP | UDP => {
            (flow.sport, flow.dport) = ports(b, l4, ip_end, flow.proto)?;
            Ok(flow)
        }
        44 => {
            if l4 + 8 > b.len() {
                return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
            }
            let offset = u16::from_be_bytes([b[l4 + 2], b[l4 + 3]]) >> 3;
            Err(Expected::Drop(if offset == 0 {
                GlobalStat::DropFragmentFirst
            } else {
                GlobalStat::DropFragment
            }))
        }
        0 | 43 | 60 | 135 | 139 | 140 | 253 | 254 => {
            Err(Expected::Drop(GlobalStat::DropIpv6ExtHeaders))
        }
        58 => {
            if l4 + 8 > b.len() {
                return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
            }
            if !matches!(b[l4], 1..=4) {
                return Err(Expected::Pass(GlobalStat::PassOtherProto));
            }
            let inner = l4 + 8;
            if inner + 40 > ip_end {
                return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
            }
            let inner_proto = b[inner + 6];
            if b[inner] >> 4 != 6 || (inner_proto != TCP && inner_proto != UDP) {
                return Err(Expected::Pass(GlobalStat::PassOtherProto));
            }
            if b[inner + 8..inner + 24] != b[l3 + 24..l3 + 40] {
                return Err(Expected::Pass(GlobalStat::PassIcmpQuoteMismatch));
            }
            let (client, vip) = (v6(&b[inner + 24..]), v6(&b[inner + 8..]));
            quoted_flow(flow, b, inner + 40, ip_end, (client, vip, inner_proto))
        }
        _ => Err(Expected::Pass(GlobalStat::PassOtherProto)),
    }
}

/// An ICMP error's flow: the quoted packet (VIP to client, its ports at `quoted`, which must
/// lie within the error's IP packet) turned around into the client's flow.
fn quoted_flow(
    mut flow: Flow,
    b: &[u8],
    quoted: usize,
    ip_end: usize,
    (client, vip, proto): (IpAddr, IpAddr, u8),
) -> Result<Flow, Expected> {
    if quoted + 4 > ip_end {
        return Err(Expected::Drop(GlobalStat::DropTruncatedL4));
    }
    flow.client = client;
    flow.vip = vip;
    flow.sport = u16::from_be_bytes([b[quoted + 2], b[quoted + 3]]);
    flow.dport = u16::from_be_bytes([b[quoted], b[quoted + 1]]);
    flow.proto = proto;
    flow.icmp_error = true;
    Ok(flow)
}

/// The service for (VIP, port, protocol), else the VIP's every-port service.
fn find_service<'w>(world: &'w World, flow: &Flow) -> Option<&'w Service> {
    let on = |port: u16| {
        world
            .services
            .iter()
            .find(|s| s.vip == flow.vip && s.proto == flow.proto && s.port == port)
    };
    on(flow.dport).or_else(|| on(0))
}

/// The flow key as the data path hashes it (addresses and ports in network order).
fn flow_key(flow: &Flow) -> FlowKey {
    let words = |a: IpAddr| -> [u32; 4] {
        match a {
            IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
            IpAddr::V6(a) => bytemuck::cast(a.octets()),
        }
    };
    FlowKey {
        src: words(flow.client),
        dst: words(flow.vip),
        sport: flow.sport.to_be(),
        dport: flow.dport.to_be(),
        proto: flow.proto,
        family: if flow.vip.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        },
        _pad: [0; 2],
    }
}

fn forward(world: &World, f: &Frame<'_>, flow: &Flow, service: &Service) -> Expected {
    let overhead = match (service.method, service.real) {
        (Method::DirectRoute, _) => 0,
        (Method::Tunnel, IpAddr::V4(_)) => 20,
        (Method::Tunnel, IpAddr::V6(_)) => 40,
    };
    if flow.ip_len + overhead > world.mtu {
        // Too big for the egress: a reply for the client, unless it cannot be one.
        let sender_is_group = f.bytes[6] & 1 != 0;
        if flow.icmp_error || !flow.dont_fragment || sender_is_group {
            return Expected::Drop(GlobalStat::DropTooBig);
        }
        return Expected::TooBig {
            client: flow.client,
            vip: flow.vip,
            mtu: (world.mtu - overhead) as u16,
        };
    }
    let also = if flow.icmp_error {
        Some(GlobalStat::SeenIcmpErrorForwarded)
    } else if flow.ip_options {
        Some(GlobalStat::SeenIpOptions)
    } else {
        None
    };
    let b = f.bytes;
    let mut out = Vec::with_capacity(b.len() + overhead);
    out.extend_from_slice(&service.real_mac);
    out.extend_from_slice(&world.our_mac);
    if service.method == Method::DirectRoute {
        out.extend_from_slice(&b[12..]);
        return Expected::Forward { bytes: out, also };
    }
    if f.l3 == 18 {
        out.extend_from_slice(&b[12..16]);
    }
    let inner = &b[f.l3..];
    match service.real {
        IpAddr::V4(real) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[1] = flow.tos;
            h[2..4].copy_from_slice(&((flow.ip_len + 20) as u16).to_be_bytes());
            if !flow.dont_fragment {
                // The inner id mixed with the client's address and port (RFC 6864), in the
                // packet's byte order.
                let key = flow_key(flow);
                let word = key.src[0];
                let id = u16::from_ne_bytes(flow.ip_id) ^ (word ^ (word >> 16)) as u16 ^ key.sport;
                h[4..6].copy_from_slice(&id.to_ne_bytes());
                h[6..8].copy_from_slice(&[0, 0]);
            } else {
                h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            }
            h[8] = 64;
            h[9] = 4;
            h[12..16].copy_from_slice(&world.our_v4);
            h[16..20].copy_from_slice(&real.octets());
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
        }
        IpAddr::V6(real) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            let label = flow_hash(&flow_key(flow)) & 0x000f_ffff;
            let vcf = (6u32 << 28) | (u32::from(flow.tos) << 20) | label;
            out.extend_from_slice(&vcf.to_be_bytes());
            out.extend_from_slice(&(flow.ip_len as u16).to_be_bytes());
            out.extend_from_slice(&[41, 64]);
            out.extend_from_slice(&world.our_v6);
            out.extend_from_slice(&real.octets());
        }
    }
    out.extend_from_slice(inner);
    Expected::Forward { bytes: out, also }
}

/// What is wrong with `reply` as the "too big" reply the model expects for `input`; `None` when
/// it is right: MACs swapped, from the VIP to the client, type and code, the MTU announced, a
/// valid IPv4 header checksum, and a quote of the start of the offending packet.
pub fn check_too_big(
    input: &[u8],
    reply: &[u8],
    client: IpAddr,
    vip: IpAddr,
    mtu: u16,
) -> Option<String> {
    if reply.len() < 14 || reply[0..6] != input[6..12] || reply[6..12] != input[0..6] {
        return Some("the reply's MACs are not the offender's, swapped".into());
    }
    let (_, l3) = ether_type(reply)?;
    let ip = &reply[l3..];
    match (client, vip) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            if ip.len() < 28 || ip[9] != 1 || ip[12..16] != v.octets() || ip[16..20] != c.octets() {
                return Some("not an ICMP packet from the VIP to the client".into());
            }
            if checksum(&ip[..20]) != 0 {
                return Some("the reply's IPv4 header checksum is wrong".into());
            }
            let icmp = &ip[20..];
            if icmp[0] != 3 || icmp[1] != 4 || u16::from_be_bytes([icmp[6], icmp[7]]) != mtu {
                return Some(format!(
                    "type {} code {} mtu {} instead of 3/4/{mtu}",
                    icmp[0],
                    icmp[1],
                    u16::from_be_bytes([icmp[6], icmp[7]])
                ));
            }
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            if ip.len() < 48 || ip[6] != 58 || ip[8..24] != v.octets() || ip[24..40] != c.octets() {
                return Some("not an ICMPv6 packet from the VIP to the client".into());
            }
            let icmp = &ip[40..];
            let announced = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
            if icmp[0] != 2 || icmp[1] != 0 || announced != u32::from(mtu) {
                return Some(format!(
                    "type {} code {} mtu {announced} instead of 2/0/{mtu}",
                    icmp[0], icmp[1]
                ));
            }
        }
        _ => return Some("a reply across address families".into()),
    }
    None
}

/// What the real server's decapsulator must make of `frame` (it passes every frame): the frame
/// without its outer IP header when it is an IPIP, IPv6-in-IPv6, IPv4-in-IPv6 or IPv6-in-IPv4
/// packet addressed to one of `ours` and well formed (no IPv4 options or fragments, lengths
/// within the frame, something inside); otherwise the frame untouched.
pub fn expect_decap(ours: &[IpAddr], frame: &[u8]) -> Vec<u8> {
    let untouched = frame.to_vec();
    let Some((ether_type, l3)) = ether_type(frame) else {
        return untouched;
    };
    let (outer_len, inner_proto) = match ether_type {
        0x0800 => {
            if frame.len() < l3 + 20 {
                return untouched;
            }
            let ip = &frame[l3..];
            let frags = u16::from_be_bytes([ip[6], ip[7]]);
            let len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if !matches!(ip[9], 4 | 41)
                || ip[0] != 0x45
                || frags & 0x3fff != 0
                || len < 20
                || l3 + len > frame.len()
                || !ours.contains(&v4(&ip[16..]))
            {
                return untouched;
            }
            (20, ip[9])
        }
        0x86dd => {
            if frame.len() < l3 + 40 {
                return untouched;
            }
            let ip = &frame[l3..];
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]])) + 40;
            if !matches!(ip[6], 4 | 41)
                || ip[0] >> 4 != 6
                || l3 + len > frame.len()
                || !ours.contains(&v6(&ip[24..]))
            {
                return untouched;
            }
            (40, ip[6])
        }
        _ => return untouched,
    };
    if frame.len() <= l3 + outer_len {
        return untouched;
    }
    let mut out = frame[..l3 - 2].to_vec();
    out.extend_from_slice(if inner_proto == 4 {
        &[0x08, 0x00]
    } else {
        &[0x86, 0xdd]
    });
    out.extend_from_slice(&frame[l3 + outer_len..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Ipv4Packet, Ipv6Packet, ACK, SYN};

    fn world() -> World {
        World {
            our_mac: [2, 0, 0, 0, 0, 0xaa],
            our_v4: [10, 10, 0, 1],
            our_v6: [0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            mtu: 1500,
            services: vec![
                Service {
                    vip: IpAddr::from([10, 10, 0, 100]),
                    port: 8080,
                    proto: TCP,
                    real: IpAddr::from([10, 10, 0, 22]),
                    real_mac: [2, 0, 0, 0, 1, 0x22],
                    method: Method::DirectRoute,
                },
                Service {
                    vip: IpAddr::from([10, 10, 0, 100]),
                    port: 80,
                    proto: TCP,
                    real: IpAddr::from([10, 10, 0, 21]),
                    real_mac: [2, 0, 0, 0, 1, 0x21],
                    method: Method::Tunnel,
                },
            ],
        }
    }

    #[test]
    fn a_packet_for_a_direct_routing_service_gets_new_macs_and_nothing_else() {
        let w = world();
        let p = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 100], 8080, SYN).build();
        let Expected::Forward { bytes, also } = expect(&w, &p) else {
            panic!("not forwarded");
        };
        assert_eq!(also, None);
        assert_eq!(bytes[0..6], [2, 0, 0, 0, 1, 0x22]);
        assert_eq!(bytes[6..12], w.our_mac);
        assert_eq!(bytes[12..], p[12..]);
    }

    #[test]
    fn a_tunneled_packet_gets_an_outer_header_that_counts_only_the_ip_packet() {
        let w = world();
        let mut p = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 100], 80, ACK);
        p.frag = 0x4000;
        let mut frame = p.build();
        frame.extend_from_slice(&[0; 6]); // Ethernet padding travels along, uncounted
        let Expected::Forward { bytes, .. } = expect(&w, &frame) else {
            panic!("not forwarded");
        };
        let outer = &bytes[14..34];
        assert_eq!(
            usize::from(u16::from_be_bytes([outer[2], outer[3]])),
            frame.len() - 14 - 6 + 20
        );
        assert_eq!(checksum(outer), 0);
        assert_eq!(bytes[34..], frame[14..]);
    }

    #[test]
    fn the_tables_rows_for_unusual_packets() {
        let w = world();
        let vip = [10, 10, 0, 100];
        let base = || Ipv4Packet::tcp([10, 10, 0, 50], 40000, vip, 8080, SYN);
        let mut cases: Vec<(Vec<u8>, Expected)> = Vec::new();
        let mut p = base();
        p.ttl = 0;
        cases.push((p.build(), Expected::Drop(GlobalStat::DropTtl)));
        let mut p = base();
        p.src = [127, 0, 0, 1];
        cases.push((p.build(), Expected::Drop(GlobalStat::DropMartianSource)));
        let mut p = base();
        p.frag = 0x2000;
        cases.push((p.build(), Expected::Drop(GlobalStat::DropFragmentFirst)));
        let p = Ipv4Packet::tcp([10, 10, 0, 50], 40000, vip, 81, SYN);
        cases.push((p.build(), Expected::Pass(GlobalStat::PassNoService)));
        let p = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 99], 80, SYN);
        cases.push((p.build(), Expected::Pass(GlobalStat::PassNotVip)));
        let mut long = base().build();
        long[16..18].copy_from_slice(&2000u16.to_be_bytes());
        cases.push((long, Expected::Pass(GlobalStat::PassBadLength)));
        let mut v6p = Ipv6Packet::tcp(
            [0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50],
            1,
            [0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            80,
            SYN,
        );
        v6p.next_header_override = Some(0);
        cases.push((v6p.build(), Expected::Pass(GlobalStat::PassNotVip)));
        for (frame, want) in cases {
            assert_eq!(expect(&w, &frame), want, "{frame:02x?}");
        }
    }

    #[test]
    fn a_big_packet_with_df_to_a_tunnel_gets_a_reply_and_without_df_is_dropped() {
        let w = world();
        let mut p = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 100], 80, ACK);
        p.frag = 0x4000;
        p.payload = vec![0; 1500 - 40];
        assert_eq!(
            expect(&w, &p.build()),
            Expected::TooBig {
                client: IpAddr::from([10, 10, 0, 50]),
                vip: IpAddr::from([10, 10, 0, 100]),
                mtu: 1480
            }
        );
        p.frag = 0;
        assert_eq!(
            expect(&w, &p.build()),
            Expected::Drop(GlobalStat::DropTooBig)
        );
    }
}
