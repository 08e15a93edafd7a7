//! Data-path tests through BPF_PROG_TEST_RUN: fixtures of packet in → verdict, packet out and the
//! counter that says why.
//!
//! Each test builds a namespace with one veth interface (fx0, our MAC 02:00:00:00:00:aa,
//! 10.10.0.1/24) and permanent neighbour entries for the real servers, so that the program's FIB
//! lookup resolves them to known MACs; the packets are run as if received on fx0.

use std::{cell::RefCell, net::Ipv4Addr};

use lb_common::{
    hash::flow_hash, limits::MAGLEV_TABLE_SIZE, Counters, FlowKey, GlobalStat, ServiceKey,
    PROTO_TCP, PROTO_UDP,
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};
use xlb_tests::{
    fixture::{self, action, action_name, hex},
    netns::Netns,
    packet::{self, Ipv4Packet, ACK, FIN, L4, RST, SYN},
    root,
    services::{TestReal, TestService},
};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const CLIENT: [u8; 4] = [10, 10, 0, 50];
const VIP: [u8; 4] = [10, 10, 0, 100];
const VIP_EMPTY: [u8; 4] = [10, 10, 0, 101];
const VIP_UNRESOLVED: [u8; 4] = [10, 10, 0, 102];
const VIP_ALL_PORTS: [u8; 4] = [10, 10, 0, 103];
const RS: [[u8; 4]; 3] = [[10, 10, 0, 11], [10, 10, 0, 12], [10, 10, 0, 13]];
const RS_UNRESOLVED: [u8; 4] = [10, 10, 0, 14];

fn rs_mac(addr: [u8; 4]) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, addr[3]]
}

/// A service's Maglev table, with the service and its (real id, weight) list it was read for.
type CachedTable = (ServiceKey, Vec<(u32, u32)>, Vec<u32>);

struct Bench {
    ns: Netns,
    dp: Dataplane,
    ifindex: u32,
    web: TestService,
    dns: TestService,
    table_cache: RefCell<Option<CachedTable>>,
}

fn bench() -> Bench {
    root::require();
    let ns = Netns::new("fix");
    ns.sh(
        "ip link add fx0 type veth peer name fx1 && ip link set fx0 address 02:00:00:00:00:aa && \
         ip link set fx0 up && ip link set fx1 up && ip addr add 10.10.0.1/24 dev fx0 && sysctl -qw net.ipv4.conf.fx0.forwarding=1",
    );
    for rs in RS {
        let [a, b, c, d] = rs;
        let [m0, m1, m2, m3, m4, m5] = rs_mac(rs);
        ns.sh(&format!(
            "ip neigh replace {a}.{b}.{c}.{d} lladdr \
             {m0:02x}:{m1:02x}:{m2:02x}:{m3:02x}:{m4:02x}:{m5:02x} dev fx0 nud permanent"
        ));
    }
    let ifindex = ns.ifindex("fx0");
    let mut dp = Dataplane::load(&LoadOptions {
        max_services: Some(8),
        max_connections: Some(4096),
        ..LoadOptions::default()
    })
    .expect("load the data path");
    let mut web = TestService::add(&mut dp, VIP.into(), 80, PROTO_TCP);
    web.add_real(&mut dp, RS[0].into(), 1);
    web.add_real(&mut dp, RS[1].into(), 1);
    let mut dns = TestService::add(&mut dp, VIP.into(), 53, PROTO_UDP);
    dns.add_real(&mut dp, RS[2].into(), 1);
    TestService::add(&mut dp, VIP_EMPTY.into(), 80, PROTO_TCP);
    let mut unresolved = TestService::add(&mut dp, VIP_UNRESOLVED.into(), 80, PROTO_TCP);
    unresolved.add_real(&mut dp, RS_UNRESOLVED.into(), 1);
    let mut all_ports = TestService::add(&mut dp, VIP_ALL_PORTS.into(), 0, PROTO_TCP);
    all_ports.add_real(&mut dp, RS[2].into(), 1);
    Bench {
        ns,
        dp,
        ifindex,
        web,
        dns,
        table_cache: RefCell::new(None),
    }
}

impl Bench {
    fn run(&self, packet: &[u8]) -> fixture::Outcome {
        let program = self.dp.program().expect("program");
        self.ns
            .enter(|| fixture::run(program, packet, self.ifindex))
    }

    fn counter(&self, stat: GlobalStat) -> u64 {
        self.dp.global_counter(stat).expect("read counter")
    }

    /// The real server the data path's Maglev table gives a new flow of `service`.
    fn maglev_choice(&self, service: &TestService, flow: &FlowKey) -> [u8; 4] {
        // Reading a table takes 65537 lookups: keep the last one while the service is unchanged.
        let version: Vec<(u32, u32)> = service.reals.iter().map(|r| (r.id, r.weight)).collect();
        let mut cache = self.table_cache.borrow_mut();
        if cache
            .as_ref()
            .is_none_or(|(k, v, _)| *k != service.key || *v != version)
        {
            let table = self.dp.maglev_table(&service.key).expect("table");
            *cache = Some((service.key, version, table));
        }
        let table = &cache.as_ref().expect("cached").2;
        let id = table[(flow_hash(flow) % MAGLEV_TABLE_SIZE) as usize];
        service.real(id).expect("a real server").addr.octets()
    }
}

fn flow(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: [u32::from_ne_bytes(src), 0, 0, 0],
        dst: [u32::from_ne_bytes(dst), 0, 0, 0],
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        family: lb_common::FAMILY_V4,
        _pad: [0; 2],
    }
}

/// The packet as it should leave for `real`: new MACs, every other byte unchanged.
fn rewritten(input: &[u8], real: [u8; 4]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[0..6].copy_from_slice(&rs_mac(real));
    out[6..12].copy_from_slice(&OUR_MAC);
    out
}

struct Case {
    description: &'static str,
    packet: Vec<u8>,
    action: u32,
    /// `None`: the packet must come out unchanged.
    output: Option<Vec<u8>>,
    counter: GlobalStat,
}

fn check(bench: &Bench, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let before = bench.counter(case.counter);
        let out = bench.run(&case.packet);
        let after = bench.counter(case.counter);
        let expected_packet = case.output.as_ref().unwrap_or(&case.packet);
        if out.action != case.action {
            failures.push(format!(
                "{}: verdict {} instead of {}",
                case.description,
                action_name(out.action),
                action_name(case.action)
            ));
        }
        if &out.packet != expected_packet {
            failures.push(format!(
                "{}: packet out differs\n got:\n{}\n expected:\n{}",
                case.description,
                hex(&out.packet),
                hex(expected_packet)
            ));
        }
        if after != before + 1 {
            failures.push(format!(
                "{}: counter {} went from {before} to {after}",
                case.description,
                case.counter.name()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn packets_for_services_are_forwarded_by_mac_rewrite_and_the_rest_pass_untouched() {
    let bench = bench();
    let syn = Ipv4Packet::tcp(CLIENT, 40000, VIP, 80, SYN).build();
    let syn_rs = bench.maglev_choice(&bench.web, &flow(CLIENT, 40000, VIP, 80, PROTO_TCP));
    let udp = Ipv4Packet::udp(CLIENT, 40001, VIP, 53).build();
    let mut tagged = Ipv4Packet::tcp(CLIENT, 40002, VIP, 80, SYN);
    tagged.vlan = Some(42);
    let tagged = tagged.build();
    let tagged_rs = bench.maglev_choice(&bench.web, &flow(CLIENT, 40002, VIP, 80, PROTO_TCP));
    let mut with_options = Ipv4Packet::tcp(CLIENT, 40003, VIP, 80, SYN);
    with_options.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let with_options = with_options.build();
    let options_rs = bench.maglev_choice(&bench.web, &flow(CLIENT, 40003, VIP, 80, PROTO_TCP));
    let any_port = Ipv4Packet::tcp(CLIENT, 40004, VIP_ALL_PORTS, 8443, SYN).build();

    check(
        &bench,
        vec![
            Case {
                description: "TCP SYN to the VIP",
                output: Some(rewritten(&syn, syn_rs)),
                packet: syn,
                action: action::TX,
                counter: GlobalStat::VerdictTx,
            },
            Case {
                description: "UDP to the VIP's UDP service",
                output: Some(rewritten(&udp, RS[2])),
                packet: udp,
                action: action::TX,
                counter: GlobalStat::VerdictTx,
            },
            Case {
                description: "VLAN-tagged TCP to the VIP keeps its tag",
                output: Some(rewritten(&tagged, tagged_rs)),
                packet: tagged,
                action: action::TX,
                counter: GlobalStat::VerdictTx,
            },
            Case {
                description: "IPv4 options are skipped over",
                output: Some(rewritten(&with_options, options_rs)),
                packet: with_options,
                action: action::TX,
                counter: GlobalStat::SeenIpOptions,
            },
            Case {
                description: "any port of an all-ports service",
                output: Some(rewritten(&any_port, RS[2])),
                packet: any_port,
                action: action::TX,
                counter: GlobalStat::VerdictTx,
            },
            Case {
                description: "TCP to an address that is not a VIP",
                packet: Ipv4Packet::tcp(CLIENT, 40000, [10, 10, 0, 99], 80, SYN).build(),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassNotVip,
            },
            Case {
                description: "TCP to the VIP on a port without a service",
                packet: Ipv4Packet::tcp(CLIENT, 40000, VIP, 8080, SYN).build(),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassNoService,
            },
            Case {
                description: "UDP to the VIP's TCP-only port",
                packet: Ipv4Packet::udp(CLIENT, 40000, VIP, 80).build(),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassNoService,
            },
            Case {
                description: "ARP for the VIP",
                packet: packet::arp_request(CLIENT, VIP),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassNotIp,
            },
            Case {
                description: "IPv6 to an address that is not a VIP",
                packet: packet::ipv6_udp(
                    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    53,
                ),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassNotVip,
            },
            Case {
                description: "ICMP echo to the VIP",
                packet: Ipv4Packet::new(
                    CLIENT,
                    VIP,
                    L4::Raw {
                        proto: 1,
                        bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0],
                    },
                )
                .build(),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassOtherProto,
            },
        ],
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_and_unusual_packets_get_their_documented_verdict_and_counter() {
    let bench = bench();
    let syn = Ipv4Packet::tcp(CLIENT, 41000, VIP, 80, SYN);
    let full = syn.build();
    let mut bad_ihl = syn.clone();
    bad_ihl.ihl_override = Some(4);
    let mut ihl_beyond = full.clone();
    ihl_beyond[14] = 0x4f; // IHL 15 = 60 bytes of header in a 59-byte IP packet
    ihl_beyond.truncate(14 + 59);
    let mut first_fragment = syn.clone();
    first_fragment.frag = 0x2000;
    let mut later_fragment = syn.clone();
    later_fragment.frag = 100;
    let mut ttl0 = syn.clone();
    ttl0.ttl = 0;
    // The frame ends inside the TCP header and the IP length says so too...
    let mut truncated_tcp = full.clone();
    truncated_tcp.truncate(14 + 20 + 10);
    truncated_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    // ...or the IP length still claims the whole packet: the length disagrees with the frame.
    let mut cut_frame = full.clone();
    cut_frame.truncate(14 + 20 + 10);
    let mut truncated_ip = full.clone();
    truncated_ip.truncate(14 + 12);
    let mut not_v4 = full.clone();
    not_v4[14] = 0x65;

    check(
        &bench,
        vec![
            Case {
                description: "IPv4 header cut short",
                packet: truncated_ip,
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassMalformed,
            },
            Case {
                description: "IPv4 ethertype with IP version 6",
                packet: not_v4,
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassMalformed,
            },
            Case {
                description: "IHL below 5",
                packet: bad_ihl.build(),
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassBadIhl,
            },
            Case {
                description: "IHL beyond the end of the packet",
                packet: ihl_beyond,
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassBadIhl,
            },
            Case {
                description: "first fragment for the VIP",
                packet: first_fragment.build(),
                action: action::DROP,
                output: None,
                counter: GlobalStat::DropFragmentFirst,
            },
            Case {
                description: "later fragment for the VIP",
                packet: later_fragment.build(),
                action: action::DROP,
                output: None,
                counter: GlobalStat::DropFragment,
            },
            Case {
                description: "TTL 0 for the VIP",
                packet: ttl0.build(),
                action: action::DROP,
                output: None,
                counter: GlobalStat::DropTtl,
            },
            Case {
                description: "TCP header cut short",
                packet: truncated_tcp,
                action: action::DROP,
                output: None,
                counter: GlobalStat::DropTruncatedL4,
            },
            Case {
                description: "frame cut short inside the TCP header, IP length unchanged",
                packet: cut_frame,
                action: action::PASS,
                output: None,
                counter: GlobalStat::PassBadLength,
            },
            Case {
                description: "a service without any real server",
                packet: Ipv4Packet::tcp(CLIENT, 41001, VIP_EMPTY, 80, SYN).build(),
                action: action::DROP,
                output: None,
                counter: GlobalStat::DropNoReal,
            },
            Case {
                description: "a real server the kernel has no neighbour entry for",
                packet: Ipv4Packet::tcp(CLIENT, 41002, VIP_UNRESOLVED, 80, SYN).build(),
                action: action::DROP,
                output: None,
                counter: GlobalStat::DropNoNeighbour,
            },
        ],
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn forwarded_packets_are_counted_for_their_service_and_real_server() {
    let bench = bench();
    let syn = Ipv4Packet::tcp(CLIENT, 42000, VIP, 80, SYN).build();
    let ack = Ipv4Packet::tcp(CLIENT, 42000, VIP, 80, ACK).build();
    let rs = bench.maglev_choice(&bench.web, &flow(CLIENT, 42000, VIP, 80, PROTO_TCP));
    let real_id = bench
        .web
        .reals
        .iter()
        .find(|r| r.addr == Ipv4Addr::from(rs))
        .expect("chosen real")
        .id;
    let svc_id = bench.dp.service(&bench.web.key).expect("service").id;
    assert_eq!(bench.run(&syn).action, action::TX);
    assert_eq!(bench.run(&ack).action, action::TX);
    let svc = bench.dp.service_counters(svc_id).expect("counters");
    let real = bench.dp.real_counters(real_id).expect("counters");
    let bytes = (syn.len() + ack.len()) as u64;
    for c in [svc, real] {
        assert_eq!((c.packets, c.bytes, c.conns), (2, bytes, 1), "{c:?}");
    }
    // Read at once (batch reads of the per-CPU maps), the same figures for every id.
    let all = bench.dp.all_counters().expect("every counter");
    assert_eq!(all.service(svc_id), svc);
    assert_eq!(all.real(real_id), real);
    assert_eq!(all.reals.len() as u32, bench.dp.capacity().real_ids());
    for id in 0..bench.dp.capacity().real_ids() {
        assert_eq!(
            all.real(id),
            bench.dp.real_counters(id).expect("one"),
            "{id}"
        );
    }
    let dns_id = bench.dp.service(&bench.dns.key).expect("service").id;
    assert_eq!(
        bench.dp.service_counters(dns_id).expect("counters").packets,
        0
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_services_counters_keep_what_a_removed_server_counted_and_survive_a_new_daemon() {
    let bench = bench();
    let (_pins, options) = pinned("count");
    let mut first = Dataplane::load(&options).expect("load with pins");
    let mut svc = TestService::add(&mut first, VIP.into(), 80, PROTO_TCP);
    let a = svc.add_real(&mut first, RS[0].into(), 1);
    let b = svc.add_real(&mut first, RS[1].into(), 1);
    let run = |dp: &Dataplane, packet: &[u8]| {
        let program = dp.program().expect("program");
        bench
            .ns
            .enter(|| fixture::run(program, packet, bench.ifindex))
    };
    // Flows until both servers have some.
    let mut sent = 0u64;
    let mut bytes = 0u64;
    for port in 43000..43040 {
        let syn = Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build();
        assert_eq!(run(&first, &syn).action, action::TX);
        sent += 1;
        bytes += syn.len() as u64;
    }
    let id = first.service(&svc.key).expect("service").id;
    let (ca, cb) = (
        first.real_counters(a).expect("a"),
        first.real_counters(b).expect("b"),
    );
    assert!(ca.packets > 0 && cb.packets > 0, "{ca:?} {cb:?}");
    let total = first.service_counters(id).expect("service");
    assert_eq!(
        (total.packets, total.bytes, total.conns),
        (sent, bytes, sent)
    );

    // A second daemon adopting the pinned maps finds whose servers they are.
    let mut second = Dataplane::load(&options).expect("adopt the pins");
    assert_eq!(second.service_counters(id).expect("adopted"), total);

    // A server leaves: what it counted stays the service's; the other goes on counting.
    svc.remove_real(&mut second, RS[0].into());
    assert_eq!(second.service_counters(id).expect("after removal"), total);
    let ack = Ipv4Packet::tcp(CLIENT, 43000, VIP, 80, ACK).build();
    assert_eq!(run(&second, &ack).action, action::TX);
    let after = second.service_counters(id).expect("one more");
    assert_eq!(after.packets, total.packets + 1);
    assert_eq!(
        second.all_counters().expect("every counter").service(id),
        after,
        "read at once: the remaining server's and the removed one's"
    );
    assert_eq!(
        second.real_counters(b).expect("b").packets,
        cb.packets + 1,
        "the remaining server took the removed one's flow"
    );

    // Zeroed: the service's and its servers'.
    second.zero_service_counters(id).expect("zero");
    assert_eq!(
        second.service_counters(id).expect("zeroed"),
        Counters::default()
    );
    assert_eq!(
        second.real_counters(b).expect("b zeroed"),
        Counters::default()
    );
    drop(second);
    drop(first);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_known_flow_keeps_its_server_when_that_server_is_quiesced_or_another_is_added() {
    let mut bench = bench();
    // A flow, and the server Maglev gives it now.
    let sport = 43000;
    let first = bench.run(&Ipv4Packet::tcp(CLIENT, sport, VIP, 80, SYN).build());
    assert_eq!(first.action, action::TX);
    let owner_mac = first.packet[0..6].to_vec();
    let owner = *RS
        .iter()
        .find(|rs| rs_mac(**rs).to_vec() == owner_mac)
        .expect("a real's MAC");

    // Weight 0 on its server: no new flow goes there, the known flow still does.
    bench.web.set_weight(&mut bench.dp, owner.into(), 0);
    let ack = bench.run(&Ipv4Packet::tcp(CLIENT, sport, VIP, 80, ACK).build());
    assert_eq!(ack.action, action::TX);
    assert_eq!(
        ack.packet[0..6],
        owner_mac[..],
        "the known flow moved off its quiesced server"
    );
    for new_port in 44000..44050 {
        let out = bench.run(&Ipv4Packet::tcp(CLIENT, new_port, VIP, 80, SYN).build());
        assert_eq!(out.action, action::TX);
        assert_ne!(
            out.packet[0..6],
            owner_mac[..],
            "a new flow went to a quiesced server"
        );
    }

    // Back to weight 1, then a third server: find a known flow whose Maglev slot moves to the new
    // server, and check that it stays where it was.
    bench.web.set_weight(&mut bench.dp, owner.into(), 1);
    let known: Vec<(u16, [u8; 4])> = (45000..45200)
        .map(|port| {
            let rs = bench.maglev_choice(&bench.web, &flow(CLIENT, port, VIP, 80, PROTO_TCP));
            let out = bench.run(&Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
            assert_eq!(out.packet[0..6], rs_mac(rs)[..]);
            (port, rs)
        })
        .collect();
    bench.web.add_real(&mut bench.dp, RS[2].into(), 1);
    let moved: Vec<&(u16, [u8; 4])> = known
        .iter()
        .filter(|(port, _)| {
            bench.maglev_choice(&bench.web, &flow(CLIENT, *port, VIP, 80, PROTO_TCP)) == RS[2]
        })
        .collect();
    assert!(!moved.is_empty(), "no flow's slot moved to the new server");
    for (port, rs) in moved {
        let out = bench.run(&Ipv4Packet::tcp(CLIENT, *port, VIP, 80, ACK).build());
        assert_eq!(
            out.packet[0..6],
            rs_mac(*rs)[..],
            "flow {port} left its server"
        );
    }
    // A new flow whose slot is the new server's goes there.
    let port = (46000..47000)
        .find(|p| bench.maglev_choice(&bench.web, &flow(CLIENT, *p, VIP, 80, PROTO_TCP)) == RS[2])
        .expect("a slot of the new server");
    let out = bench.run(&Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
    assert_eq!(out.packet[0..6], rs_mac(RS[2])[..]);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn removing_a_server_forgets_its_flows_and_the_connection_table_can_be_flushed() {
    let mut bench = bench();
    for port in 47000..47020 {
        bench.run(&Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
    }
    let fin = bench.run(&Ipv4Packet::tcp(CLIENT, 47000, VIP, 80, FIN | ACK).build());
    assert_eq!(fin.action, action::TX);
    let conns = bench.dp.connections().expect("connections");
    assert_eq!(conns.len(), 20);
    let closing = conns
        .iter()
        .filter(|(_, c)| c.flags & lb_common::conntrack::CONN_F_CLOSING != 0)
        .count();
    assert_eq!(closing, 1, "the FIN marks its connection closing");

    let victim = bench.web.reals[0].clone();
    let victims = conns.iter().filter(|(_, c)| c.real == victim.id).count();
    bench.web.remove_real(&mut bench.dp, victim.addr);
    let left = bench.dp.connections().expect("connections");
    assert_eq!(left.len(), 20 - victims);
    assert!(left.iter().all(|(_, c)| c.real != victim.id));
    // Its former flows now go to the remaining server.
    let survivor = bench.web.reals[0].addr.octets();
    for port in 47000..47020 {
        let out = bench.run(&Ipv4Packet::tcp(CLIENT, port, VIP, 80, ACK).build());
        assert_eq!(out.packet[0..6], rs_mac(survivor)[..]);
    }
    assert_eq!(bench.dp.flush_connections().expect("flush"), 20);
    assert!(bench.dp.connections().expect("connections").is_empty());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_forwarding_on_the_interface_packets_for_services_are_dropped_and_counted() {
    let bench = bench();
    bench.ns.sh("sysctl -qw net.ipv4.conf.fx0.forwarding=0");
    check(
        &bench,
        vec![Case {
            description: "TCP SYN to the VIP, forwarding off",
            packet: Ipv4Packet::tcp(CLIENT, 48000, VIP, 80, SYN).build(),
            action: action::DROP,
            output: None,
            counter: GlobalStat::DropForwardingDisabled,
        }],
    );
}

/// Collects the data path's debug events.
#[derive(Clone, Default)]
struct Events(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Events {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .expect("events")
            .push(record.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn debug_events_say_why_packets_were_passed_or_dropped_only_when_switched_on() {
    let mut bench = bench();
    let events = Events::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(bench.dp.ebpf_mut(), events.clone())
        .expect("event reader");
    let not_vip = Ipv4Packet::tcp(CLIENT, 49000, [10, 10, 0, 99], 80, SYN).build();
    let syn = Ipv4Packet::tcp(CLIENT, 49001, VIP, 80, SYN).build();

    bench.run(&not_vip);
    logger.flush();
    assert!(
        events.0.lock().expect("events").is_empty(),
        "events while switched off"
    );

    bench.dp.set_debug_events(true).expect("switch on");
    bench.run(&not_vip);
    bench.run(&syn);
    logger.flush();
    let seen = events.0.lock().expect("events").clone();
    assert!(
        seen.iter().any(|e| e.contains("pass: pass_not_vip")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e.contains("new flow")), "{seen:?}");

    bench.dp.set_debug_events(false).expect("switch off");
    events.0.lock().expect("events").clear();
    bench.run(&not_vip);
    logger.flush();
    assert!(
        events.0.lock().expect("events").is_empty(),
        "events after switching off"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_real_server_id_given_to_another_server_does_not_keep_the_old_next_hop() {
    let mut bench = bench();
    let mut svc = TestService::add(&mut bench.dp, Ipv4Addr::new(10, 10, 0, 104), 80, PROTO_TCP);
    let first = svc.add_real(&mut bench.dp, RS[0].into(), 1);
    let vip = [10, 10, 0, 104];
    let out = bench.run(&Ipv4Packet::tcp(CLIENT, 50000, vip, 80, SYN).build());
    assert_eq!(out.packet[0..6], rs_mac(RS[0])[..]);
    svc.remove_real(&mut bench.dp, RS[0].into());
    let second = svc.add_real(&mut bench.dp, RS[1].into(), 1);
    assert_eq!(first, second, "the id is reused");
    let out = bench.run(&Ipv4Packet::tcp(CLIENT, 50001, vip, 80, SYN).build());
    assert_eq!(
        out.packet[0..6],
        rs_mac(RS[1])[..],
        "a stale next hop was used"
    );
}

/// `frame` with its IPv4 total length set to `len` (the header checksum is not checked by the data
/// path, so it is left as it was).
fn with_ipv4_length(frame: &[u8], len: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn lengths_that_disagree_with_the_frame_and_martian_sources_are_never_forwarded() {
    let bench = bench();
    let syn = Ipv4Packet::tcp(CLIENT, 51000, VIP, 80, SYN).build();
    let ip_len = (syn.len() - 14) as u16;
    // Ethernet pads a short frame to 60 bytes: the IP length, not the frame, says where the
    // packet ends, and the padding travels along untouched.
    let mut padded = Ipv4Packet::tcp(CLIENT, 51001, VIP, 80, SYN);
    padded.payload.clear();
    let mut padded = padded.build();
    padded.resize(60, 0);
    let padded_rs = bench.maglev_choice(&bench.web, &flow(CLIENT, 51001, VIP, 80, PROTO_TCP));

    let mut cases = vec![
        Case {
            description: "IPv4 length beyond the frame",
            packet: with_ipv4_length(&syn, ip_len + 10),
            action: action::PASS,
            output: None,
            counter: GlobalStat::PassBadLength,
        },
        Case {
            description: "IPv4 length 0xfff0 in a short frame",
            packet: with_ipv4_length(&syn, 0xfff0),
            action: action::PASS,
            output: None,
            counter: GlobalStat::PassBadLength,
        },
        Case {
            description: "IPv4 length shorter than the IP header",
            packet: with_ipv4_length(&syn, 16),
            action: action::PASS,
            output: None,
            counter: GlobalStat::PassBadLength,
        },
        Case {
            description: "IPv4 length that ends inside the TCP header",
            packet: with_ipv4_length(&syn, 30),
            action: action::DROP,
            output: None,
            counter: GlobalStat::DropTruncatedL4,
        },
        Case {
            description: "a frame with Ethernet padding after the IP packet",
            output: Some(rewritten(&padded, padded_rs)),
            packet: padded,
            action: action::TX,
            counter: GlobalStat::VerdictTx,
        },
    ];
    for (what, src) in [
        ("this network", [0, 0, 0, 0]),
        ("this network, not zero", [0, 1, 2, 3]),
        ("loopback", [127, 0, 0, 1]),
        ("multicast", [224, 0, 0, 1]),
        ("class E", [240, 0, 0, 1]),
        ("broadcast", [255, 255, 255, 255]),
    ] {
        cases.push(Case {
            description: what,
            packet: Ipv4Packet::tcp(src, 51002, VIP, 80, SYN).build(),
            action: action::DROP,
            output: None,
            counter: GlobalStat::DropMartianSource,
        });
    }
    check(&bench, cases);
}

/// A flow of service `vip`:80 with one server (RS[0]), opened by a SYN; then the service is
/// removed while its server's entry stays (the runtime removes it in a later step). Returns the
/// server and the flow's ACK.
fn flow_of_a_removed_service(bench: &mut Bench, vip: [u8; 4], sport: u16) -> (TestReal, Vec<u8>) {
    let mut svc = TestService::add(&mut bench.dp, Ipv4Addr::from(vip), 80, PROTO_TCP);
    svc.add_real(&mut bench.dp, RS[0].into(), 1);
    let syn = Ipv4Packet::tcp(CLIENT, sport, vip, 80, SYN).build();
    assert_eq!(bench.run(&syn).packet[0..6], rs_mac(RS[0])[..]);
    bench
        .dp
        .remove_service(svc.key)
        .expect("remove the service");
    let kept = svc.reals.remove(0);
    (kept, Ipv4Packet::tcp(CLIENT, sport, vip, 80, ACK).build())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_removed_services_known_flows_are_not_followed_even_while_their_server_exists() {
    let mut bench = bench();
    let vip = [10, 10, 0, 105];
    let (_, ack) = flow_of_a_removed_service(&mut bench, vip, 52000);
    check(
        &bench,
        vec![Case {
            description: "a known flow of a removed service",
            packet: ack.clone(),
            action: action::PASS,
            output: None,
            counter: GlobalStat::PassNotVip,
        }],
    );

    // The same key again, now with another server: the flow is scheduled anew, not sent to the
    // server the old service gave it.
    let mut again = TestService::add(&mut bench.dp, Ipv4Addr::from(vip), 80, PROTO_TCP);
    again.add_real(&mut bench.dp, RS[1].into(), 1);
    let out = bench.run(&ack);
    assert_eq!(out.action, action::TX);
    assert_eq!(
        out.packet[0..6],
        rs_mac(RS[1])[..],
        "the flow followed its removed service's server"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_service_added_back_with_the_server_it_kept_counts_that_servers_packets() {
    let mut bench = bench();
    let vip = [10, 10, 0, 106];
    // Removed before its server (the runtime's order); then added back, as a rollback does,
    // with the server the data path still holds.
    let (kept, ack) = flow_of_a_removed_service(&mut bench, vip, 52100);
    let mut again = TestService::add(&mut bench.dp, Ipv4Addr::from(vip), 80, PROTO_TCP);
    again.adopt_real(&mut bench.dp, kept);
    let id = again.id(&bench.dp);
    let hits = bench.counter(GlobalStat::ConntrackHit);
    // The flow of the removed service is new to this one: scheduled (to the one server) and
    // counted as its connection; its next packet is a known flow of the new service.
    for _ in 0..2 {
        let out = bench.run(&ack);
        assert_eq!(out.action, action::TX);
        assert_eq!(out.packet[0..6], rs_mac(RS[0])[..]);
    }
    assert_eq!(bench.counter(GlobalStat::ConntrackHit), hits + 1);
    let counted = bench.dp.service_counters(id).expect("counters");
    assert!(
        counted.packets >= 2 && counted.conns >= 1,
        "the adopted server's packets are not the service's: {counted:?}"
    );
}

/// Removes a pin directory when dropped, so that a failing test leaves no maps behind.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = Dataplane::remove_pins(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pin directory of this test process's own (`tag` tells the tests apart) and the bench's
/// load options with it: what two daemons that pin their maps there share.
fn pinned(tag: &str) -> (PinDir, LoadOptions) {
    let pins = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/xlbt{}-{tag}",
        std::process::id()
    )));
    let options = LoadOptions {
        max_services: Some(8),
        max_connections: Some(4096),
        pin_dir: Some(pins.0.clone()),
        ..LoadOptions::default()
    };
    (pins, options)
}

/// The words of the pinned VIP filter.
fn pinned_vip_filter(dir: &std::path::Path) -> Vec<u64> {
    let data = aya::maps::MapData::from_pin(dir.join("XLB_VIP_FILTER")).expect("open the filter");
    let filter: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("an array");
    (0..filter.len())
        .map(|i| filter.get(&i, 0).expect("read a word"))
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_daemon_adopting_pinned_maps_keeps_every_vip_visible_until_its_program_is_attached() {
    let bench = bench();
    let (pins, options) = pinned("filter");
    let mut first = Dataplane::load(&options).expect("load with pins");
    let mut svc = TestService::add(&mut first, VIP.into(), 80, PROTO_TCP);
    svc.add_real(&mut first, RS[0].into(), 1);
    let precise = pinned_vip_filter(&pins.0);
    assert_eq!(precise.iter().map(|w| w.count_ones()).sum::<u32>(), 1);

    // A second daemon (an upgrade) adopts the maps while the first one's program still runs,
    // which may have been built with another filter function: every bit is set until the new
    // program is attached, so neither program can take a VIP for another address.
    let mut second = Dataplane::load(&options).expect("adopt the pins");
    assert!(
        pinned_vip_filter(&pins.0).iter().all(|w| *w == u64::MAX),
        "the filter was not opened while the old program may still run"
    );
    let run = |dp: &Dataplane, packet: &[u8]| {
        let program = dp.program().expect("program");
        bench
            .ns
            .enter(|| fixture::run(program, packet, bench.ifindex))
    };
    let syn = Ipv4Packet::tcp(CLIENT, 53000, VIP, 80, SYN).build();
    let other = Ipv4Packet::tcp(CLIENT, 53000, [10, 10, 0, 99], 80, SYN).build();
    for dp in [&first, &second] {
        assert_eq!(run(dp, &syn).action, action::TX);
        let out = run(dp, &other);
        assert_eq!(out.action, action::PASS);
        assert_eq!(out.packet, other, "a packet for no VIP was changed");
    }

    // Attached: the filter is this program's own again, with the adopted VIP in it.
    bench
        .ns
        .enter(|| second.attach("fx0", aya::programs::XdpMode::Skb))
        .expect("attach");
    assert_eq!(pinned_vip_filter(&pins.0), precise);
    assert_eq!(run(&second, &syn).action, action::TX);
    drop(second);
    drop(first);
}

/// The server (by its MAC) a packet went to.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_syn_on_a_closed_connections_port_or_after_its_handshakes_server_failed_is_scheduled_anew() {
    let mut bench = bench();
    // Connections from 40 client ports, each through its handshake to its server.
    let ports: Vec<u16> = (47000..47040).collect();
    let owners: Vec<[u8; 4]> = ports
        .iter()
        .map(|&port| {
            let rs = server_of(&bench, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
            assert_eq!(
                server_of(&bench, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, ACK).build()),
                rs
            );
            rs
        })
        .collect();
    // RS[0] leaves the table (its check failed: weight 0), its flows stay.
    bench.web.set_weight(&mut bench.dp, RS[0].into(), 0);
    let mut reused = 0;
    for (&port, &owner) in ports.iter().zip(&owners) {
        let packet = |flags| Ipv4Packet::tcp(CLIENT, port, VIP, 80, flags).build();
        if port % 2 == 0 {
            // Still open: its packets, a SYN included, keep their server.
            assert_eq!(server_of(&bench, &packet(ACK)), owner);
            assert_eq!(server_of(&bench, &packet(SYN)), owner, "port {port}");
            continue;
        }
        // Closed by the client, then the port is used again: a new connection, scheduled by
        // the table as it is now; the handshake's ACK and the rest follow the new server.
        assert_eq!(server_of(&bench, &packet(ACK | FIN)), owner);
        let now = bench.maglev_choice(&bench.web, &flow(CLIENT, port, VIP, 80, PROTO_TCP));
        let again = server_of(&bench, &packet(SYN));
        assert_eq!(again, now, "port {port}: the SYN of a new connection");
        assert_ne!(
            again, RS[0],
            "port {port}: a new connection went to a server out of the table"
        );
        assert_eq!(
            server_of(&bench, &packet(ACK)),
            again,
            "port {port}: its ACK"
        );
        let entry = entry_of(&bench, &flow(CLIENT, port, VIP, 80, PROTO_TCP)).expect("an entry");
        assert!(!embryonic(&entry), "promoted by its ACK");
        assert_eq!(
            entry.flags & lb_common::conntrack::CONN_F_CLOSING,
            0,
            "the new connection is not closing"
        );
        reused += usize::from(owner == RS[0]);
    }
    assert!(
        reused > 0,
        "no closed connection was on the server that left: {owners:?}"
    );

    // A handshake given to a server that then fails (its SYN refused or unanswered: in direct
    // routing the reset goes around the balancer) follows it until xlbd forgets the failed
    // server's handshakes; the client's next SYN from that port then goes where the table says.
    bench.web.set_weight(&mut bench.dp, RS[0].into(), 1);
    let port = (47100..48000)
        .find(|p| bench.maglev_choice(&bench.web, &flow(CLIENT, *p, VIP, 80, PROTO_TCP)) == RS[0])
        .expect("a slot of RS[0]");
    let syn = Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build();
    assert_eq!(server_of(&bench, &syn), RS[0]);
    bench.web.set_weight(&mut bench.dp, RS[0].into(), 0);
    assert_eq!(
        server_of(&bench, &syn),
        RS[0],
        "a retransmitted SYN keeps its server"
    );
    let failed = bench
        .web
        .reals
        .iter()
        .find(|r| r.addr == std::net::Ipv4Addr::from(RS[0]))
        .expect("RS[0]")
        .id;
    let forgotten = lb_userspace::datapath::DataPath::forget_handshakes_of(
        &mut bench.dp,
        &std::collections::BTreeSet::from([failed]),
    )
    .expect("forget");
    assert_eq!(forgotten, 1, "only the failed server's handshake");
    let now = bench.maglev_choice(&bench.web, &flow(CLIENT, port, VIP, 80, PROTO_TCP));
    assert_ne!(now, RS[0]);
    assert_eq!(server_of(&bench, &syn), now);
}

fn server_of(bench: &Bench, packet: &[u8]) -> [u8; 4] {
    let out = bench.run(packet);
    assert_eq!(out.action, action::TX, "{}", action_name(out.action));
    *RS.iter()
        .find(|rs| out.packet[0..6] == rs_mac(**rs))
        .expect("a real server's MAC")
}

/// The connection-table entries of `flow` (embryonic or not) through userspace's walk.
fn entry_of(bench: &Bench, flow: &FlowKey) -> Option<lb_common::Connection> {
    bench
        .dp
        .connections()
        .expect("connections")
        .into_iter()
        .find(|(k, _)| k == flow)
        .map(|(_, c)| c)
}

fn embryonic(conn: &lb_common::Connection) -> bool {
    conn.flags & lb_common::conntrack::CONN_F_EMBRYONIC != 0
}

/// The `i`th source of a flood: addresses spread over 11.0.0.0/8 to 100.0.0.0/8 (no martian),
/// ports over 1024..65535.
fn flood_source(i: u32) -> ([u8; 4], u16) {
    let x = i.wrapping_mul(2_654_435_761).rotate_left(7) ^ i;
    let [a, b, c, d] = x.to_be_bytes();
    (
        [11 + a % 90, b, c, d | 1],
        1024 + (x.wrapping_mul(31) % 64_000) as u16,
    )
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_syn_flood_from_random_sources_evicts_no_established_flow() {
    let bench = bench();
    // 1000 established flows (SYN, then the handshake's ACK) in a table of 4096, beside an
    // embryonic table of 1024.
    let established: Vec<(u16, [u8; 4])> = (20_000..21_000)
        .map(|port| {
            let syn = server_of(&bench, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
            let ack = server_of(&bench, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, ACK).build());
            assert_eq!(syn, ack, "flow {port}: its ACK went elsewhere than its SYN");
            (port, syn)
        })
        .collect();
    assert_eq!(bench.counter(GlobalStat::ConntrackPromoted), 1000);
    // A flood: 12 times the connection table's size in SYNs, each from a source of its own.
    let flood = 12 * 4096;
    let misses = bench.counter(GlobalStat::ConntrackMiss);
    for i in 0..flood {
        let (src, sport) = flood_source(i);
        let out = bench.run(&Ipv4Packet::tcp(src, sport, VIP, 80, SYN).build());
        assert_eq!(out.action, action::TX, "flood SYN {i}");
    }
    assert_eq!(
        bench.counter(GlobalStat::ConntrackMiss) - misses,
        u64::from(flood),
        "every flood SYN is a new flow"
    );
    let entries = bench.dp.connections().expect("connections");
    let (young, settled): (Vec<&(FlowKey, lb_common::Connection)>, Vec<_>) =
        entries.iter().partition(|(_, c)| embryonic(c));
    assert_eq!(
        settled.len(),
        1000,
        "the connection table holds only the established flows"
    );
    assert!(
        young.len() <= 1024 + 64 && young.len() >= 512,
        "the embryonic table holds {} flood flows",
        young.len()
    );
    // Every established flow is still known, at its own server: hits, not new flows.
    let (hits, misses) = (
        bench.counter(GlobalStat::ConntrackHit),
        bench.counter(GlobalStat::ConntrackMiss),
    );
    for (port, rs) in &established {
        let got = server_of(
            &bench,
            &Ipv4Packet::tcp(CLIENT, *port, VIP, 80, ACK).build(),
        );
        assert_eq!(got, *rs, "established flow {port} moved during the flood");
    }
    assert_eq!(bench.counter(GlobalStat::ConntrackHit) - hits, 1000);
    assert_eq!(
        bench.counter(GlobalStat::ConntrackMiss),
        misses,
        "an established flow was lost"
    );
}

/// Sends `syn` again (a retransmission): the embryonic table finds its flow, which goes to
/// `server`.
fn found_embryonic(bench: &Bench, syn: &[u8], server: [u8; 4]) {
    let young_hits = bench.counter(GlobalStat::ConntrackEmbryonicHit);
    assert_eq!(server_of(bench, syn), server, "a retransmitted SYN moved");
    assert_eq!(
        bench.counter(GlobalStat::ConntrackEmbryonicHit) - young_hits,
        1,
        "not found in the embryonic table"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_settled_services_syn_skips_the_embryonic_table_and_reaches_its_first_syns_server() {
    let mut bench = bench();
    let settled = |bench: &Bench| {
        let flags = bench.dp.service(&bench.web.key).expect("web").flags;
        flags & lb_common::service::SERVICE_F_SETTLED != 0
    };
    let a = flow(CLIENT, 31_000, VIP, 80, PROTO_TCP);
    let syn = Ipv4Packet::tcp(CLIENT, 31_000, VIP, 80, SYN).build();
    let owner = server_of(&bench, &syn);
    // Not settled (a new service): a retransmitted SYN is found in the embryonic table.
    assert!(!settled(&bench));
    found_embryonic(&bench, &syn, owner);

    // Settled, as xlbd's sweep leaves a service whose handshakes are all where its table sends
    // them: the retransmitted SYN skips the embryonic lookup and is scheduled again, to the same
    // server; its claim of the flow (an insert that fails when the flow is there) finds its first
    // SYN's entry, so it counts as that embryonic flow's packet (an embryonic hit), not as a new
    // connection, and its flow stays embryonic, once.
    bench
        .dp
        .settle_service(bench.web.key, true)
        .expect("settle");
    assert!(settled(&bench));
    let svc_id = bench.dp.service(&bench.web.key).expect("web").id;
    let conns = bench.dp.service_counters(svc_id).expect("counters").conns;
    let (young_hits, misses) = (
        bench.counter(GlobalStat::ConntrackEmbryonicHit),
        bench.counter(GlobalStat::ConntrackMiss),
    );
    for _ in 0..3 {
        assert_eq!(server_of(&bench, &syn), owner, "a retransmitted SYN moved");
    }
    assert_eq!(
        bench.counter(GlobalStat::ConntrackEmbryonicHit) - young_hits,
        3,
        "a retransmitted SYN was not told from a new connection"
    );
    assert_eq!(bench.counter(GlobalStat::ConntrackMiss), misses);
    assert_eq!(
        bench.dp.service_counters(svc_id).expect("counters").conns,
        conns,
        "a retransmitted SYN counted as a connection"
    );
    // A SYN of a new flow is a miss and a connection, as before.
    let fresh = Ipv4Packet::tcp(CLIENT, 31_002, VIP, 80, SYN).build();
    server_of(&bench, &fresh);
    assert_eq!(bench.counter(GlobalStat::ConntrackMiss) - misses, 1);
    assert_eq!(
        bench.dp.service_counters(svc_id).expect("counters").conns,
        conns + 1
    );
    let entries = bench.dp.connections().expect("connections");
    let kept: Vec<_> = entries.iter().filter(|(k, _)| *k == a).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(embryonic(&kept[0].1));
    // The handshake's ACK asks the embryonic table as before, and promotes the flow.
    let promoted = bench.counter(GlobalStat::ConntrackPromoted);
    let ack = Ipv4Packet::tcp(CLIENT, 31_000, VIP, 80, ACK).build();
    assert_eq!(server_of(&bench, &ack), owner);
    assert_eq!(bench.counter(GlobalStat::ConntrackPromoted) - promoted, 1);
    assert!(!embryonic(&entry_of(&bench, &a).expect("promoted")));

    // A new table (the first SYN's server quiesced) clears the flag in the same update: a
    // retransmitted SYN of a handshake begun before it is found again, at its first server.
    let b = Ipv4Packet::tcp(CLIENT, 31_001, VIP, 80, SYN).build();
    let first = server_of(&bench, &b);
    bench.web.set_weight(&mut bench.dp, first.into(), 0);
    assert!(!settled(&bench), "a new table left the service settled");
    found_embryonic(&bench, &b, first);
    // Settling the service by hand now would be wrong (the sweep does not: that handshake is
    // on another server than the table gives it); the table alone now sends the SYN elsewhere.
    bench
        .dp
        .settle_service(bench.web.key, true)
        .expect("settle");
    assert_ne!(server_of(&bench, &b), first, "the table sends it elsewhere");
    bench.web.set_weight(&mut bench.dp, first.into(), 1);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_embryonic_flow_keeps_its_server_until_its_ack_promotes_it_and_a_reset_forgets_it() {
    let mut bench = bench();
    let a = flow(CLIENT, 30_000, VIP, 80, PROTO_TCP);
    let syn = Ipv4Packet::tcp(CLIENT, 30_000, VIP, 80, SYN).build();
    let owner = server_of(&bench, &syn);
    let conn = entry_of(&bench, &a).expect("the SYN's flow is remembered");
    assert!(embryonic(&conn), "a SYN's flow is embryonic");

    // Its server quiesced: the SYN retransmitted still goes there, found in the embryonic table.
    bench.web.set_weight(&mut bench.dp, owner.into(), 0);
    let (hits, young_hits, misses) = (
        bench.counter(GlobalStat::ConntrackHit),
        bench.counter(GlobalStat::ConntrackEmbryonicHit),
        bench.counter(GlobalStat::ConntrackMiss),
    );
    assert_eq!(server_of(&bench, &syn), owner, "a retransmitted SYN moved");
    assert!(embryonic(&entry_of(&bench, &a).expect("still there")));
    // The handshake's ACK goes there too and promotes the flow.
    let ack = Ipv4Packet::tcp(CLIENT, 30_000, VIP, 80, ACK).build();
    assert_eq!(server_of(&bench, &ack), owner, "the handshake's ACK moved");
    let conn = entry_of(&bench, &a).expect("promoted");
    assert!(!embryonic(&conn), "the ACK did not promote the flow");
    assert_eq!(
        conn.flags & lb_common::conntrack::CONN_F_COUNT_ON_PROMOTION,
        0
    );
    let entries = bench.dp.connections().expect("connections");
    assert_eq!(
        entries.iter().filter(|(k, _)| *k == a).count(),
        1,
        "a promoted flow is in one table only"
    );
    assert_eq!(bench.counter(GlobalStat::ConntrackHit) - hits, 2);
    assert_eq!(
        bench.counter(GlobalStat::ConntrackEmbryonicHit) - young_hits,
        2
    );
    assert_eq!(bench.counter(GlobalStat::ConntrackMiss), misses);
    // From now on a known flow: data goes to its server, a SYN too.
    assert_eq!(server_of(&bench, &ack), owner);
    assert_eq!(server_of(&bench, &syn), owner);
    assert_eq!(
        bench.counter(GlobalStat::ConntrackEmbryonicHit) - young_hits,
        2
    );
    bench.web.set_weight(&mut bench.dp, owner.into(), 1);

    // A RST after the SYN goes to the flow's server and forgets the flow.
    let b = flow(CLIENT, 30_001, VIP, 80, PROTO_TCP);
    let server = server_of(
        &bench,
        &Ipv4Packet::tcp(CLIENT, 30_001, VIP, 80, SYN).build(),
    );
    let promoted = bench.counter(GlobalStat::ConntrackPromoted);
    let rst = Ipv4Packet::tcp(CLIENT, 30_001, VIP, 80, RST).build();
    assert_eq!(server_of(&bench, &rst), server, "the RST moved");
    assert!(
        entry_of(&bench, &b).is_none(),
        "a reset embryonic flow is remembered"
    );
    assert_eq!(bench.counter(GlobalStat::ConntrackPromoted), promoted);

    // A FIN (with its ACK) after the SYN promotes the flow as closing.
    let c = flow(CLIENT, 30_002, VIP, 80, PROTO_TCP);
    server_of(
        &bench,
        &Ipv4Packet::tcp(CLIENT, 30_002, VIP, 80, SYN).build(),
    );
    server_of(
        &bench,
        &Ipv4Packet::tcp(CLIENT, 30_002, VIP, 80, FIN | ACK).build(),
    );
    let conn = entry_of(&bench, &c).expect("promoted");
    assert!(!embryonic(&conn));
    assert_ne!(conn.flags & lb_common::conntrack::CONN_F_CLOSING, 0);

    // A flow that starts without a SYN (a client of a failed-over balancer), and UDP: in the
    // connection table at once, as before.
    let d = flow(CLIENT, 30_003, VIP, 80, PROTO_TCP);
    server_of(
        &bench,
        &Ipv4Packet::tcp(CLIENT, 30_003, VIP, 80, ACK).build(),
    );
    assert!(!embryonic(&entry_of(&bench, &d).expect("remembered")));
    let e = flow(CLIENT, 30_004, VIP, 53, PROTO_UDP);
    server_of(&bench, &Ipv4Packet::udp(CLIENT, 30_004, VIP, 53).build());
    assert!(!embryonic(&entry_of(&bench, &e).expect("remembered")));

    // Removing a server forgets its embryonic flows too; a flush empties both tables.
    let f = flow(CLIENT, 30_005, VIP, 80, PROTO_TCP);
    let server = server_of(
        &bench,
        &Ipv4Packet::tcp(CLIENT, 30_005, VIP, 80, SYN).build(),
    );
    bench.web.remove_real(&mut bench.dp, server.into());
    assert!(
        entry_of(&bench, &f).is_none(),
        "a removed server's embryonic flow is kept"
    );
    server_of(
        &bench,
        &Ipv4Packet::tcp(CLIENT, 30_006, VIP, 80, SYN).build(),
    );
    bench.dp.flush_connections().expect("flush");
    assert!(bench.dp.connections().expect("connections").is_empty());
}

/// Whether a CPU's service cache holds `key`'s entry taken under the current generation, and
/// which table it names.
fn cached_table(bench: &Bench, key: &ServiceKey) -> Option<u32> {
    let (generation, slots) = bench.dp.service_cache().expect("the service cache");
    assert_ne!(generation, 0, "the service cache is off on this machine");
    slots
        .iter()
        .find(|s| s.key == *key && s.generation == generation)
        .map(|s| s.service.table)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_cached_service_entry_is_never_used_after_the_service_changed() {
    let mut bench = bench();
    let vip = [10, 10, 0, 106];
    let syn = |sport: u16| Ipv4Packet::tcp(CLIENT, sport, vip, 80, SYN).build();
    let mut svc = TestService::add(&mut bench.dp, Ipv4Addr::from(vip), 80, PROTO_TCP);
    svc.add_real(&mut bench.dp, RS[0].into(), 1);
    // A new flow takes the entry into its CPU's cache; the next ones read it there.
    assert_eq!(bench.run(&syn(40_000)).packet[0..6], rs_mac(RS[0])[..]);
    let table = cached_table(&bench, &svc.key).expect("the entry was not cached");
    assert_eq!(table, bench.dp.service(&svc.key).expect("svc").table);
    assert_eq!(bench.run(&syn(40_001)).packet[0..6], rs_mac(RS[0])[..]);

    // A new table (RS[0] at weight 0, RS[1] added): every new flow goes by it, none by the
    // copy of the entry that named the old one.
    let generation = bench.dp.service_cache().expect("cache").0;
    svc.add_real(&mut bench.dp, RS[1].into(), 1);
    svc.set_weight(&mut bench.dp, RS[0].into(), 0);
    assert!(bench.dp.service_cache().expect("cache").0 > generation);
    assert_eq!(cached_table(&bench, &svc.key), None, "a stale copy counts");
    for sport in 40_010..40_030 {
        let out = bench.run(&syn(sport));
        assert_eq!(out.packet[0..6], rs_mac(RS[1])[..], "port {sport}");
    }
    assert_eq!(
        cached_table(&bench, &svc.key),
        Some(bench.dp.service(&svc.key).expect("svc").table)
    );

    // Removed: its SYNs are for no VIP at once.
    bench.dp.remove_service(svc.key).expect("remove");
    let out = bench.run(&syn(40_100));
    assert_eq!(out.action, action::PASS, "{}", action_name(out.action));
    // Added again with another server: that server.
    let mut again = TestService::add(&mut bench.dp, Ipv4Addr::from(vip), 80, PROTO_TCP);
    again.add_real(&mut bench.dp, RS[2].into(), 1);
    assert_eq!(bench.run(&syn(40_101)).packet[0..6], rs_mac(RS[2])[..]);

    // A port without a service of its own is the VIP's "all ports" service's, cached under the
    // port's key; a service for the port made later takes its flows from the next one on.
    let to_port = |sport: u16| Ipv4Packet::tcp(CLIENT, sport, VIP_ALL_PORTS, 8080, SYN).build();
    assert_eq!(bench.run(&to_port(40_200)).packet[0..6], rs_mac(RS[2])[..]);
    let port_key = ServiceKey::v4(u32::from(Ipv4Addr::from(VIP_ALL_PORTS)), 8080, PROTO_TCP);
    assert!(cached_table(&bench, &port_key).is_some());
    let mut exact = TestService::add(&mut bench.dp, VIP_ALL_PORTS.into(), 8080, PROTO_TCP);
    exact.add_real(&mut bench.dp, RS[0].into(), 1);
    assert_eq!(bench.run(&to_port(40_201)).packet[0..6], rs_mac(RS[0])[..]);
}

/// What a sweep does to `dp`'s connection filter (lb_common::conn_filter): builds its standby
/// half from the connection table it read, then makes it live. `except`: a flow of the table
/// left out (which no sweep does), to show that the data path asks the filter.
fn build_connection_filter(dp: &Dataplane, except: Option<FlowKey>) {
    let filter = dp.connection_filter().expect("the filter is mapped");
    let build = filter.begin_build();
    let entries = dp.connections().expect("connections");
    filter.finish_build(
        build,
        entries
            .iter()
            .filter(|(f, c)| !embryonic(c) && Some(*f) != except)
            .map(|(flow, _)| flow),
    );
}

/// With the connection filter on, a new flow's SYN skips the connection table, and a SYN of an
/// open connection still keeps its server: connections made before a build, after it (their
/// bits set by the data path), and written by userspace (an upgrade's carry), across builds.
/// Then the filter is shown to be what the data path asks: built without a flow the table holds
/// (which no sweep does), that flow's SYN is scheduled by the table as if the flow were new.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_the_connection_filter_on_a_syn_of_an_open_connection_keeps_its_server() {
    if !cfg!(target_arch = "x86_64") {
        return; // The filter is never switched on elsewhere (lb-userspace's conn_filter.rs).
    }
    let mut bench = bench();
    let filter = bench.dp.connection_filter().expect("the filter is mapped");
    assert!(!filter.is_on(), "off until the first build");
    let handshake = |bench: &Bench, port: u16| {
        let rs = server_of(bench, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
        assert_eq!(
            server_of(bench, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, ACK).build()),
            rs
        );
        rs
    };
    let before: Vec<(u16, [u8; 4])> = (48000..48040).map(|p| (p, handshake(&bench, p))).collect();
    build_connection_filter(&bench.dp, None);
    assert!(filter.is_on());
    let after: Vec<(u16, [u8; 4])> = (48040..48080).map(|p| (p, handshake(&bench, p))).collect();
    // A connection userspace writes, on RS[0] whichever server the table gives it.
    let carried_port = 48100;
    let carried = flow(CLIENT, carried_port, VIP, 80, PROTO_TCP);
    let rs0 = bench
        .web
        .reals
        .iter()
        .find(|r| r.addr == Ipv4Addr::from(RS[0]))
        .expect("RS[0]");
    let service = bench.web.id(&bench.dp);
    let epoch = bench.dp.service_epoch(service).expect("epoch");
    bench
        .dp
        .insert_connection(
            carried,
            lb_common::Connection {
                real: rs0.id,
                service,
                service_epoch: epoch,
                last_seen_ns: 0,
                flags: 0,
            },
            false,
        )
        .expect("written");
    // RS[0] leaves the table: its connections keep it, SYNs included.
    bench.web.set_weight(&mut bench.dp, RS[0].into(), 0);
    let open: Vec<(u16, [u8; 4])> = before
        .iter()
        .chain(&after)
        .copied()
        .chain([(carried_port, RS[0])])
        .collect();
    assert!(open.iter().filter(|(_, rs)| *rs == RS[0]).count() > 1);
    for round in 0..2 {
        for &(port, owner) in &open {
            let syn = Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build();
            assert_eq!(server_of(&bench, &syn), owner, "round {round}, port {port}");
        }
        build_connection_filter(&bench.dp, None);
    }
    // New flows: scheduled by the table; the filter proves nearly all of them absent.
    let mut proved = 0;
    for port in 49000..49200 {
        let new = flow(CLIENT, port, VIP, 80, PROTO_TCP);
        proved += usize::from(!filter.may_hold(&new));
        let syn = Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build();
        assert_eq!(
            server_of(&bench, &syn),
            bench.maglev_choice(&bench.web, &new)
        );
    }
    assert!(proved > 190, "{proved} of 200 new flows proved absent");

    // The filter built without the carried flow, which the table still holds: its SYN no longer
    // finds its entry (RS[0]) but takes the table's choice, so the data path did ask the filter.
    build_connection_filter(&bench.dp, Some(carried));
    assert!(
        !filter.may_hold(&carried),
        "a bit shared with another flow: pick another port"
    );
    let syn = Ipv4Packet::tcp(CLIENT, carried_port, VIP, 80, SYN).build();
    let table = bench.maglev_choice(&bench.web, &carried);
    assert_ne!(table, RS[0]);
    assert_eq!(server_of(&bench, &syn), table);
}

/// A daemon that adopts pinned maps (a restart, an upgrade) gets a connection filter of its own,
/// off, so that the connections the old program made are looked up; its first build, from the
/// adopted table, keeps every SYN of an open connection with its server.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_daemon_adopting_pinned_maps_starts_its_connection_filter_off_and_builds_it_from_their_table() {
    if !cfg!(target_arch = "x86_64") {
        return; // The filter is never switched on elsewhere (lb-userspace's conn_filter.rs).
    }
    let bench = bench();
    let (_pins, options) = pinned("connfilter");
    let run = |dp: &Dataplane, packet: &[u8]| {
        let program = dp.program().expect("program");
        let out = bench
            .ns
            .enter(|| fixture::run(program, packet, bench.ifindex));
        assert_eq!(out.action, action::TX, "{}", action_name(out.action));
        *RS.iter()
            .find(|rs| out.packet[0..6] == rs_mac(**rs))
            .expect("a real server's MAC")
    };
    let mut first = Dataplane::load(&options).expect("load with pins");
    let mut svc = TestService::add(&mut first, VIP.into(), 80, PROTO_TCP);
    svc.add_real(&mut first, RS[0].into(), 1);
    svc.add_real(&mut first, RS[1].into(), 1);
    let open: Vec<(u16, [u8; 4])> = (54000..54040)
        .map(|port| {
            let rs = run(&first, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build());
            assert_eq!(
                run(&first, &Ipv4Packet::tcp(CLIENT, port, VIP, 80, ACK).build()),
                rs
            );
            (port, rs)
        })
        .collect();
    assert!(open.iter().any(|(_, rs)| *rs == RS[0]));
    build_connection_filter(&first, None);
    assert!(first.connection_filter().expect("mapped").is_on());

    let mut second = Dataplane::load(&options).expect("adopt the pins");
    let filter = second.connection_filter().expect("mapped");
    assert!(!filter.is_on(), "a new program's filter starts off");
    // RS[0] leaves the table, through the new daemon: its connections keep it, SYNs included,
    // before the new filter is built and after.
    svc.set_weight(&mut second, RS[0].into(), 0);
    for built in [false, true] {
        if built {
            let adopted = second.connections().expect("connections");
            assert!(adopted.len() >= open.len(), "the adopted table");
            build_connection_filter(&second, None);
            assert!(filter.is_on());
        }
        for &(port, owner) in &open {
            let syn = Ipv4Packet::tcp(CLIENT, port, VIP, 80, SYN).build();
            assert_eq!(run(&second, &syn), owner, "built {built}, port {port}");
        }
    }
    drop(second);
    drop(first);
}
