//! Data-path fixtures for tunneling, IPv6, path MTU, ICMP steering and the real-server
//! decapsulator, through BPF_PROG_TEST_RUN: exact bytes out.
//!
//! The namespace has one veth interface fx0 (our MAC 02:00:00:00:00:aa, 10.10.0.1/24 and
//! fd00:10::1/64, MTU 1500, forwarding on) and permanent neighbours for the real servers.

use lb_common::{
    hash::flow_hash, FlowKey, Forwarding, GlobalStat, RealServer, ServiceKey, FAMILY_V6, PROTO_TCP,
    PROTO_UDP,
};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    maglev,
};
use xlb_tests::{
    fixture::{self, action, action_name, hex},
    fuzz,
    netns::Netns,
    packet::{checksum, ethernet, Ipv4Packet, Ipv6Packet, ACK, L4, SYN},
    root,
};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];
const OUR_V4: [u8; 4] = [10, 10, 0, 1];
const CLIENT: [u8; 4] = [10, 10, 0, 50];
const VIP: [u8; 4] = [10, 10, 0, 100];
const TUN_RS: [u8; 4] = [10, 10, 0, 21];
const DR_RS: [u8; 4] = [10, 10, 0, 22];
const RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x21];
const DR_RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x22];

fn v6(last: u16) -> [u8; 16] {
    let mut a = [0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[14..16].copy_from_slice(&last.to_be_bytes());
    a
}

struct Bench {
    ns: Netns,
    dp: Dataplane,
    ifindex: u32,
}

fn add_service(dp: &mut Dataplane, key: ServiceKey, real: RealServer, identity: &[u8]) {
    let service = dp.upsert_service(key, 0, 0).expect("service");
    let id = dp.add_real(service, real).expect("real");
    let table = maglev::build(&[maglev::Backend {
        identity,
        id,
        weight: 1,
    }]);
    dp.set_maglev_table(key, &table).expect("table");
}

fn real_v6(addr: [u8; 16], forward: Forwarding) -> RealServer {
    RealServer {
        addr: bytemuck::cast(addr),
        family: FAMILY_V6,
        forward: forward as u8,
        _pad: [0; 2],
        service_epoch: 0,
    }
}

fn bench() -> Bench {
    root::require();
    let (ns, ifindex) = fuzz::namespace("tun");
    let mut dp = Dataplane::load(&LoadOptions {
        max_services: Some(8),
        max_connections: Some(4096),
        ..LoadOptions::default()
    })
    .expect("load the data path");
    let tun = |a: [u8; 4]| RealServer::v4(u32::from_be_bytes(a), Forwarding::Tunnel);
    add_service(
        &mut dp,
        ServiceKey::v4(u32::from_be_bytes(VIP), 80, PROTO_TCP),
        tun(TUN_RS),
        &TUN_RS,
    );
    add_service(
        &mut dp,
        ServiceKey::v4(u32::from_be_bytes(VIP), 53, PROTO_UDP),
        tun(TUN_RS),
        &TUN_RS,
    );
    add_service(
        &mut dp,
        ServiceKey::v4(u32::from_be_bytes(VIP), 8080, PROTO_TCP),
        RealServer::v4(u32::from_be_bytes(DR_RS), Forwarding::DirectRoute),
        &DR_RS,
    );
    add_service(
        &mut dp,
        ServiceKey::v6(v6(0x100), 80, PROTO_TCP),
        real_v6(v6(0x21), Forwarding::Tunnel),
        &v6(0x21),
    );
    add_service(
        &mut dp,
        ServiceKey::v6(v6(0x100), 8080, PROTO_TCP),
        real_v6(v6(0x22), Forwarding::DirectRoute),
        &v6(0x22),
    );
    Bench { ns, dp, ifindex }
}

impl Bench {
    fn run(&self, packet: &[u8]) -> fixture::Outcome {
        let program = self.dp.program().expect("program");
        self.ns
            .enter(|| fixture::run(program, packet, self.ifindex))
    }

    fn counter(&self, stat: GlobalStat) -> u64 {
        self.dp.global_counter(stat).expect("counter")
    }

    fn expect(&self, what: &str, input: &[u8], verdict: u32, output: &[u8], stat: GlobalStat) {
        let before = self.counter(stat);
        let out = self.run(input);
        assert_eq!(
            out.action,
            verdict,
            "{what}: {} instead of {}",
            action_name(out.action),
            action_name(verdict)
        );
        assert!(
            out.packet == output,
            "{what}: packet out differs\n got:\n{}\n expected:\n{}",
            hex(&out.packet),
            hex(output)
        );
        assert_eq!(
            self.counter(stat),
            before + 1,
            "{what}: counter {}",
            stat.name()
        );
    }
}

/// An IPv4 packet from the client with DF set and an IP packet of exactly `ip_len` bytes.
fn v4_of_len(sport: u16, dport: u16, ip_len: usize, df: bool) -> Ipv4Packet {
    let mut p = Ipv4Packet::tcp(CLIENT, sport, VIP, dport, ACK);
    p.eth_dst = OUR_MAC;
    p.eth_src = CLIENT_MAC;
    p.frag = if df { 0x4000 } else { 0 };
    p.payload = vec![0x5a; ip_len - 40];
    p
}

/// The frame the balancer sends to the tunnel real server for `inner` (an IPv4 packet).
fn ipip(inner: &[u8]) -> Vec<u8> {
    let mut outer = vec![0u8; 20];
    outer[0] = 0x45;
    outer[1] = inner[1];
    outer[2..4].copy_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
    let df = u16::from_be_bytes([inner[6], inner[7]]) & 0x4000;
    if df == 0 {
        // Without DF: the inner id mixed with the client's address and port, in packet order.
        let word = u32::from_ne_bytes([inner[12], inner[13], inner[14], inner[15]]);
        let ihl = usize::from(inner[0] & 0x0f) * 4;
        let id = u16::from_ne_bytes([inner[4], inner[5]])
            ^ (word ^ (word >> 16)) as u16
            ^ u16::from_ne_bytes([inner[ihl], inner[ihl + 1]]);
        outer[4..6].copy_from_slice(&id.to_ne_bytes());
    }
    outer[6..8].copy_from_slice(&df.to_be_bytes());
    outer[8] = 64;
    outer[9] = 4;
    outer[12..16].copy_from_slice(&OUR_V4);
    outer[16..20].copy_from_slice(&TUN_RS);
    let c = checksum(&outer);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = ethernet(RS_MAC, OUR_MAC, None, 0x0800);
    frame.extend_from_slice(&outer);
    frame.extend_from_slice(inner);
    frame
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn ipv4_in_ipv4_has_the_exact_outer_header_and_the_inner_packet_untouched() {
    let bench = bench();
    let syn = {
        let mut p = Ipv4Packet::tcp(CLIENT, 40000, VIP, 80, SYN);
        p.frag = 0x4000;
        p.eth_dst = OUR_MAC;
        p
    };
    bench.expect(
        "TCP SYN to a tunnel service",
        &syn.build(),
        action::TX,
        &ipip(&syn.ip_bytes()),
        GlobalStat::VerdictTx,
    );
    let mut udp = Ipv4Packet::udp(CLIENT, 40001, VIP, 53);
    udp.frag = 0x4000;
    udp.eth_dst = OUR_MAC;
    bench.expect(
        "UDP to a tunnel service",
        &udp.build(),
        action::TX,
        &ipip(&udp.ip_bytes()),
        GlobalStat::VerdictTx,
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn ipv6_in_ipv6_and_ipv6_direct_routing_are_exact() {
    let bench = bench();
    let mut syn = Ipv6Packet::tcp(v6(0x50), 40000, v6(0x100), 80, SYN);
    syn.eth_dst = OUR_MAC;
    syn.traffic_class = 0x28;
    let inner = syn.ip_bytes();
    let flow = FlowKey {
        src: bytemuck::cast(v6(0x50)),
        dst: bytemuck::cast(v6(0x100)),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    let mut outer = vec![0u8; 40];
    let vcf = (6u32 << 28) | (0x28 << 20) | (flow_hash(&flow) & 0xf_ffff);
    outer[0..4].copy_from_slice(&vcf.to_be_bytes());
    outer[4..6].copy_from_slice(&(inner.len() as u16).to_be_bytes());
    outer[6] = 41;
    outer[7] = 64;
    outer[8..24].copy_from_slice(&v6(1));
    outer[24..40].copy_from_slice(&v6(0x21));
    let mut expected = ethernet(RS_MAC, OUR_MAC, None, 0x86dd);
    expected.extend_from_slice(&outer);
    expected.extend_from_slice(&inner);
    bench.expect(
        "IPv6 TCP SYN to a tunnel service",
        &syn.build(),
        action::TX,
        &expected,
        GlobalStat::VerdictTx,
    );
    // The flow's next packet: the flow label remembered with its connection, the same.
    let mut ack = syn.clone();
    ack.l4 = L4::Tcp {
        sport: 40000,
        dport: 80,
        flags: ACK,
    };
    let inner = ack.ip_bytes();
    let mut expected = ethernet(RS_MAC, OUR_MAC, None, 0x86dd);
    expected.extend_from_slice(&outer);
    expected[18..20].copy_from_slice(&(inner.len() as u16).to_be_bytes());
    expected.extend_from_slice(&inner);
    bench.expect(
        "IPv6 TCP ACK of the known flow to a tunnel service",
        &ack.build(),
        action::TX,
        &expected,
        GlobalStat::ConntrackHit,
    );

    let mut dr = Ipv6Packet::tcp(v6(0x50), 40001, v6(0x100), 8080, SYN);
    dr.eth_dst = OUR_MAC;
    let input = dr.build();
    let mut expected = input.clone();
    expected[0..6].copy_from_slice(&DR_RS_MAC);
    expected[6..12].copy_from_slice(&OUR_MAC);
    bench.expect(
        "IPv6 TCP SYN to a direct-routing service",
        &input,
        action::TX,
        &expected,
        GlobalStat::VerdictTx,
    );

    let mut ext = Ipv6Packet::tcp(v6(0x50), 40002, v6(0x100), 80, SYN);
    ext.next_header_override = Some(0); // hop-by-hop options
    let input = ext.build();
    bench.expect(
        "IPv6 with an extension header",
        &input,
        action::DROP,
        &input,
        GlobalStat::DropIpv6ExtHeaders,
    );
    // A fragment header (next header TCP, offset 0, more fragments) and the start of TCP.
    let mut header = vec![6u8, 0, 0x00, 0x01, 0, 0, 0x12, 0x34];
    header.extend_from_slice(&[0x9c, 0x43, 0x00, 0x50, 0, 0, 0, 1]);
    let frag = Ipv6Packet::new(
        v6(0x50),
        v6(0x100),
        L4::Raw {
            proto: 44,
            bytes: header,
        },
    );
    let input = frag.build();
    bench.expect(
        "IPv6 first fragment",
        &input,
        action::DROP,
        &input,
        GlobalStat::DropFragmentFirst,
    );
}

/// The "fragmentation needed" the client gets for `input` (a frame from the client).
fn frag_needed(input: &[u8], mtu: u16) -> Vec<u8> {
    let quote = &input[14..14 + 64];
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&VIP);
    ip[16..20].copy_from_slice(&CLIENT);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = ethernet(CLIENT_MAC, OUR_MAC, None, 0x0800);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_largest_packet_that_fits_the_tunnel_goes_and_one_byte_more_gets_fragmentation_needed() {
    let bench = bench();
    // A small packet first, so that the next hop (and its MTU) comes from the cache after it.
    let small = v4_of_len(40999, 80, 60, true);
    assert_eq!(bench.run(&small.build()).action, action::TX);
    let fits = v4_of_len(41000, 80, 1480, true);
    bench.expect(
        "a 1480-byte packet (1500 with the tunnel)",
        &fits.build(),
        action::TX,
        &ipip(&fits.ip_bytes()),
        GlobalStat::VerdictTx,
    );
    let too_big = v4_of_len(41001, 80, 1481, true).build();
    bench.expect(
        "a 1481-byte packet with DF",
        &too_big,
        action::TX,
        &frag_needed(&too_big, 1480),
        GlobalStat::IcmpTooBigSent,
    );
    let no_df = v4_of_len(41002, 80, 1481, false).build();
    bench.expect(
        "a 1481-byte packet without DF",
        &no_df,
        action::DROP,
        &no_df,
        GlobalStat::DropTooBig,
    );

    // IPv6: 1460 + 40 fits, one more byte gets "packet too big" with MTU 1460.
    let of_len = |sport: u16, len: usize| {
        let mut p = Ipv6Packet::tcp(v6(0x50), sport, v6(0x100), 80, ACK);
        p.eth_dst = OUR_MAC;
        p.eth_src = CLIENT_MAC;
        p.payload = vec![0x5a; len - 60];
        p.build()
    };
    let fits = of_len(41003, 1460);
    let out = bench.run(&fits);
    assert_eq!(out.action, action::TX);
    assert_eq!(out.packet.len(), fits.len() + 40);
    let too_big = of_len(41004, 1461);
    let quote = &too_big[14..14 + 64];
    let mut icmp = vec![2u8, 0, 0, 0];
    icmp.extend_from_slice(&1460u32.to_be_bytes());
    icmp.extend_from_slice(quote);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&v6(0x100));
    pseudo.extend_from_slice(&v6(0x50));
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let c = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut expected = ethernet(CLIENT_MAC, OUR_MAC, None, 0x86dd);
    expected.extend_from_slice(&[0x60, 0, 0, 0]);
    expected.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    expected.extend_from_slice(&[58, 64]);
    expected.extend_from_slice(&v6(0x100));
    expected.extend_from_slice(&v6(0x50));
    expected.extend_from_slice(&icmp);
    bench.expect(
        "a 1461-byte IPv6 packet",
        &too_big,
        action::TX,
        &expected,
        GlobalStat::IcmpTooBigSent,
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn icmp_errors_about_a_flow_go_to_the_flows_real_server() {
    let bench = bench();
    // The flow exists (DR service on 8080), then a router tells the VIP that the real server's
    // reply to the client was too big: it quotes VIP:8080 -> CLIENT:42000.
    let syn = Ipv4Packet::tcp(CLIENT, 42000, VIP, 8080, SYN).build();
    assert_eq!(bench.run(&syn).action, action::TX);
    let error = icmp_error_v4(VIP, 8080, 42000);
    let input = error.build();
    let mut expected = input.clone();
    expected[0..6].copy_from_slice(&DR_RS_MAC);
    expected[6..12].copy_from_slice(&OUR_MAC);
    bench.expect(
        "ICMP fragmentation needed quoting a flow",
        &input,
        action::TX,
        &expected,
        GlobalStat::SeenIcmpErrorForwarded,
    );
    // An echo request to the VIP is the VIP's own business.
    let echo = Ipv4Packet::new(
        CLIENT,
        VIP,
        L4::Raw {
            proto: 1,
            bytes: vec![8, 0, 0, 0, 0, 1, 0, 1],
        },
    )
    .build();
    bench.expect(
        "ICMP echo",
        &echo,
        action::PASS,
        &echo,
        GlobalStat::PassOtherProto,
    );

    // IPv6: "packet too big" quoting VIP6:8080 -> client.
    let error = icmp_error_v6(v6(0x100), 8080, 42001);
    let input = error.build();
    let mut expected = input.clone();
    expected[0..6].copy_from_slice(&DR_RS_MAC);
    expected[6..12].copy_from_slice(&OUR_MAC);
    bench.expect(
        "ICMPv6 packet too big quoting a flow",
        &input,
        action::TX,
        &expected,
        GlobalStat::SeenIcmpErrorForwarded,
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_decapsulator_strips_only_tunnels_addressed_to_us() {
    let bench = fuzz::DecapBench::new();
    let run = |p: &[u8]| bench.run(p);

    let inner = Ipv4Packet::tcp(CLIENT, 40000, VIP, 80, SYN).ip_bytes();
    let tunneled = ipip(&inner);
    let out = run(&tunneled);
    assert_eq!(out.action, action::PASS);
    let mut expected = ethernet(RS_MAC, OUR_MAC, None, 0x0800);
    expected.extend_from_slice(&inner);
    assert_eq!(out.packet, expected, "IPIP for us:\n{}", hex(&out.packet));

    // The same for another host, and a plain packet: untouched.
    let mut other = tunneled.clone();
    other[14 + 19] = 99;
    assert_eq!(run(&other).packet, other);
    let plain = Ipv4Packet::tcp(CLIENT, 40000, TUN_RS, 80, SYN).build();
    assert_eq!(run(&plain).packet, plain);

    // IPv6 in IPv6, behind a VLAN tag.
    let inner6 = Ipv6Packet::tcp(v6(0x50), 40000, v6(0x100), 80, SYN).ip_bytes();
    let mut frame = ethernet(RS_MAC, OUR_MAC, Some(7), 0x86dd);
    let mut outer = vec![0u8; 40];
    outer[0] = 0x60;
    outer[4..6].copy_from_slice(&(inner6.len() as u16).to_be_bytes());
    outer[6] = 41;
    outer[7] = 64;
    outer[8..24].copy_from_slice(&v6(1));
    outer[24..40].copy_from_slice(&v6(0x21));
    frame.extend_from_slice(&outer);
    frame.extend_from_slice(&inner6);
    let out = run(&frame);
    let mut expected = ethernet(RS_MAC, OUR_MAC, Some(7), 0x86dd);
    expected.extend_from_slice(&inner6);
    assert_eq!(out.packet, expected, "IP6IP6 for us:\n{}", hex(&out.packet));
}

/// `frame` (IPv4 behind 14 bytes of Ethernet) with its total length set to `len`.
fn with_ipv4_length(frame: &[u8], len: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out
}

/// `frame` (IPv6 behind 14 bytes of Ethernet) with its payload length set to `len`.
fn with_ipv6_payload_length(frame: &[u8], len: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn lengths_that_disagree_with_the_frame_are_never_tunneled_or_answered() {
    let bench = bench();
    // Found by fuzzing: IPv4 total length 46 in a 40-byte packet to a tunnel service (addressed
    // here to this bench's tunnel VIP).
    let mut found = unhex(
        "0200000000aa0200000000cc08004500002ef63000004006b45749bb7c180a0a0065aa0000504770a7be0000000050e44aaafa940000",
    );
    found[30..34].copy_from_slice(&VIP);
    bench.expect(
        "IPv4 length 46 in a 40-byte packet to a tunnel service",
        &found,
        action::PASS,
        &found,
        GlobalStat::PassBadLength,
    );
    let syn = v4_of_len(43000, 80, 60, true).build();
    let wraps = with_ipv4_length(&syn, 0xfff0);
    bench.expect(
        "IPv4 length 0xfff0 in a short frame (the outer length would wrap)",
        &wraps,
        action::PASS,
        &wraps,
        GlobalStat::PassBadLength,
    );
    // A frame that fits the MTU but claims more than it holds gets no "fragmentation needed",
    // by tunnel or by direct routing.
    for (what, dport) in [("tunnel", 80), ("direct routing", 8080)] {
        let frame = v4_of_len(43001, dport, 1473, true).build();
        let lying = with_ipv4_length(&frame, 1595);
        bench.expect(
            &format!("a 1487-byte frame claiming 1595 bytes, {what}"),
            &lying,
            action::PASS,
            &lying,
            GlobalStat::PassBadLength,
        );
    }
    let frame6 = {
        let mut p = Ipv6Packet::tcp(v6(0x50), 43002, v6(0x100), 80, ACK);
        p.eth_dst = OUR_MAC;
        p.build()
    };
    let payload = (frame6.len() - 54) as u16;
    for (what, len) in [
        ("IPv6 payload length beyond the frame", payload + 1),
        (
            "IPv6 payload length 0xfff0 (the outer length would wrap)",
            0xfff0,
        ),
    ] {
        let lying = with_ipv6_payload_length(&frame6, len);
        bench.expect(
            what,
            &lying,
            action::PASS,
            &lying,
            GlobalStat::PassBadLength,
        );
    }
    let short = with_ipv6_payload_length(&frame6, 10);
    bench.expect(
        "IPv6 payload length that ends inside the TCP header",
        &short,
        action::DROP,
        &short,
        GlobalStat::DropTruncatedL4,
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn martian_sources_and_group_mac_senders_get_nothing_forwarded_or_answered() {
    let bench = bench();
    let mut martians: Vec<[u8; 16]> = vec![
        [0; 16],
        {
            let mut a = [0; 16];
            a[15] = 1;
            a
        },
        [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfe, 0xbf, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    ];
    martians.push([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 10, 0, 50]);
    for src in martians {
        for dport in [80, 8080] {
            let mut p = Ipv6Packet::tcp(src, 44000, v6(0x100), dport, SYN);
            p.eth_dst = OUR_MAC;
            let input = p.build();
            bench.expect(
                &format!("IPv6 from {src:02x?} to port {dport}"),
                &input,
                action::DROP,
                &input,
                GlobalStat::DropMartianSource,
            );
        }
    }
    // fec0::/10 (deprecated site-local) is not link-local: forwarded.
    let mut site = Ipv6Packet::tcp(
        [0xfe, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        44001,
        v6(0x100),
        8080,
        SYN,
    );
    site.eth_dst = OUR_MAC;
    assert_eq!(bench.run(&site.build()).action, action::TX);

    // A packet too big for the tunnel, sent from a group MAC address: no reply.
    let mut big = v4_of_len(44002, 80, 1481, true);
    big.eth_src = [0x01, 0x00, 0x5e, 0, 0, 1];
    let big = big.build();
    bench.expect(
        "a 1481-byte packet with DF from a multicast MAC",
        &big,
        action::DROP,
        &big,
        GlobalStat::DropTooBig,
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tunneled_packets_without_df_get_an_ip_id_from_their_own_and_their_flow() {
    let bench = bench();
    let mut seen = Vec::new();
    for id_seed in [0u8, 1] {
        let mut p = v4_of_len(45000, 80, 100, false);
        p.payload[0] = id_seed;
        let mut input = p.build();
        // A different identification for each packet, as its sender gives it.
        input[18..20].copy_from_slice(&[0x12, 0x34 + id_seed]);
        let inner = input[14..].to_vec();
        let expected = ipip(&inner);
        bench.expect(
            "a tunneled packet without DF",
            &input,
            action::TX,
            &expected,
            GlobalStat::VerdictTx,
        );
        seen.push(expected[18..20].to_vec());
    }
    assert_ne!(
        seen[0], seen[1],
        "two packets of one flow share an outer id"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn icmp_errors_quoting_another_address_and_ipv6_protocols_get_their_verdicts() {
    let bench = bench();
    // An error addressed to VIP that quotes a packet sent by another VIP (10.10.0.200).
    let error = icmp_error_v4([10, 10, 0, 200], 8080, 42000);
    let input = error.build();
    bench.expect(
        "ICMP error to the VIP quoting another address's flow",
        &input,
        action::PASS,
        &input,
        GlobalStat::PassIcmpQuoteMismatch,
    );
    // The same error quoting the VIP's own flow, with an IP length that ends before the quoted
    // ports.
    let error = icmp_error_v4(VIP, 8080, 42000);
    let cut = with_ipv4_length(&error.build(), 20 + 8 + 20 + 2);
    bench.expect(
        "ICMP error whose IP length ends inside the quoted ports",
        &cut,
        action::DROP,
        &cut,
        GlobalStat::DropTruncatedL4,
    );

    // IPv6: the same mismatch.
    let error = icmp_error_v6(v6(0x200), 8080, 42001);
    let input = error.build();
    bench.expect(
        "ICMPv6 error to the VIP quoting another address's flow",
        &input,
        action::PASS,
        &input,
        GlobalStat::PassIcmpQuoteMismatch,
    );

    // Next headers: extension headers are dropped, other protocols passed as in IPv4.
    for (next, verdict, stat) in [
        (43, action::DROP, GlobalStat::DropIpv6ExtHeaders),
        (60, action::DROP, GlobalStat::DropIpv6ExtHeaders),
        (59, action::PASS, GlobalStat::PassOtherProto),
        (47, action::PASS, GlobalStat::PassOtherProto),
        (132, action::PASS, GlobalStat::PassOtherProto),
        (50, action::PASS, GlobalStat::PassOtherProto),
    ] {
        let mut p = Ipv6Packet::tcp(v6(0x50), 46000, v6(0x100), 80, SYN);
        p.next_header_override = Some(next);
        let input = p.build();
        bench.expect(
            &format!("IPv6 with next header {next}"),
            &input,
            verdict,
            &input,
            stat,
        );
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_decapsulator_leaves_wrong_versions_and_lying_lengths_to_the_kernel() {
    let bench = fuzz::DecapBench::new();
    let run = |p: &[u8]| bench.run(p);

    let inner6 = Ipv6Packet::tcp(v6(0x50), 40000, v6(0x100), 80, SYN).ip_bytes();
    let mut frame = ethernet(RS_MAC, OUR_MAC, None, 0x86dd);
    let mut outer = vec![0u8; 40];
    outer[0] = 0x40; // version 4 behind the IPv6 ethertype
    outer[4..6].copy_from_slice(&(inner6.len() as u16).to_be_bytes());
    outer[6] = 41;
    outer[7] = 64;
    outer[8..24].copy_from_slice(&v6(1));
    outer[24..40].copy_from_slice(&v6(0x21));
    frame.extend_from_slice(&outer);
    frame.extend_from_slice(&inner6);
    let out = run(&frame);
    assert_eq!(out.action, action::PASS);
    assert_eq!(
        out.packet, frame,
        "an IPv6 ethertype with version 4 was decapsulated"
    );
    // Version 6, but a payload length beyond the frame.
    frame[14] = 0x60;
    frame[18..20].copy_from_slice(&((inner6.len() + 1) as u16).to_be_bytes());
    assert_eq!(run(&frame).packet, frame, "an IPv6 length beyond the frame");

    let inner = Ipv4Packet::tcp(CLIENT, 40000, VIP, 80, SYN).ip_bytes();
    let tunneled = ipip(&inner);
    for len in [(inner.len() + 21) as u16, 19] {
        let lying = with_ipv4_length(&tunneled, len);
        assert_eq!(run(&lying).packet, lying, "an IPv4 outer length of {len}");
    }
}

/// A router's "fragmentation needed" to the VIP about a TCP ACK that `from`:`sport` sent to the
/// client's port `client_port`, quoting its IP header and 8 bytes.
fn icmp_error_v4(from: [u8; 4], sport: u16, client_port: u16) -> Ipv4Packet {
    let quoted = Ipv4Packet::tcp(from, sport, CLIENT, client_port, ACK).ip_bytes();
    let mut body = vec![3u8, 4, 0, 0, 0, 0, 0x05, 0x00];
    body.extend_from_slice(&quoted[..28]);
    let mut error = Ipv4Packet::new(
        [10, 10, 0, 254],
        VIP,
        L4::Raw {
            proto: 1,
            bytes: body,
        },
    );
    error.payload.clear();
    error
}

/// A router's "packet too big" to the IPv6 VIP about a TCP ACK that `from`:`sport` sent to the
/// client's port `client_port`, quoting its IPv6 header and 8 bytes.
fn icmp_error_v6(from: [u8; 16], sport: u16, client_port: u16) -> Ipv6Packet {
    let quoted = Ipv6Packet::tcp(from, sport, v6(0x50), client_port, ACK).ip_bytes();
    let mut body = vec![2u8, 0, 0, 0, 0, 0, 0x05, 0x00];
    body.extend_from_slice(&quoted[..48]);
    let mut error = Ipv6Packet::new(
        v6(0xfe),
        v6(0x100),
        L4::Raw {
            proto: 58,
            bytes: body,
        },
    );
    error.payload.clear();
    error
}
