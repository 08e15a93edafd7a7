//! Fuzzing the balancer against the reference model ([`crate::model`]): seeded, reproducible
//! frames (valid ones, then truncated, mutated, lying about their lengths, with IP options,
//! fragments, VLAN tags, IPv6 extension headers, ICMP errors quoting other flows or garbage,
//! tunnels inside tunnels, random bytes) through BPF_PROG_TEST_RUN, each compared with what the
//! model says: the verdict, the counter that says why, and the bytes sent.
//!
//! `cargo xtask fuzz --packets N [--seed S]` runs it (the `xlb-fuzz` binary); the tests run a
//! shorter sample.

use std::net::IpAddr;

use lb_common::{Forwarding, GlobalStat, RealServer, ServiceKey, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    decap::Decapsulator,
    maglev,
};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

use crate::{
    fixture::{self, action, action_name, hex},
    model::{self, Expected, Method, Service, World},
    netns::Netns,
    packet::{Ipv4Packet, Ipv6Packet, ACK, FIN, L4, SYN},
};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];
const CLIENT: [u8; 4] = [10, 10, 0, 50];
const VIP: [u8; 4] = [10, 10, 0, 100];
const VIP_ALL_PORTS: [u8; 4] = [10, 10, 0, 103];
const TUN_RS: [u8; 4] = [10, 10, 0, 21];
const DR_RS: [u8; 4] = [10, 10, 0, 22];

fn v6(last: u16) -> [u8; 16] {
    let mut a = [0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[14..16].copy_from_slice(&last.to_be_bytes());
    a
}

fn mac_of(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, last]
}

/// The services of the fuzzing bench, as the model sees them.
pub fn world() -> World {
    let svc = |vip: IpAddr, port, proto, real: IpAddr, last: u8, method| Service {
        vip,
        port,
        proto,
        real,
        real_mac: mac_of(last),
        method,
    };
    World {
        our_mac: OUR_MAC,
        our_v4: [10, 10, 0, 1],
        our_v6: v6(1),
        mtu: 1500,
        services: vec![
            svc(
                VIP.into(),
                80,
                PROTO_TCP,
                TUN_RS.into(),
                0x21,
                Method::Tunnel,
            ),
            svc(
                VIP.into(),
                53,
                PROTO_UDP,
                TUN_RS.into(),
                0x21,
                Method::Tunnel,
            ),
            svc(
                VIP.into(),
                8080,
                PROTO_TCP,
                DR_RS.into(),
                0x22,
                Method::DirectRoute,
            ),
            svc(
                VIP_ALL_PORTS.into(),
                0,
                PROTO_TCP,
                DR_RS.into(),
                0x22,
                Method::DirectRoute,
            ),
            svc(
                v6(0x100).into(),
                80,
                PROTO_TCP,
                v6(0x21).into(),
                0x21,
                Method::Tunnel,
            ),
            svc(
                v6(0x100).into(),
                8080,
                PROTO_TCP,
                v6(0x22).into(),
                0x22,
                Method::DirectRoute,
            ),
        ],
    }
}

/// The balancer's namespace of the data-path tests (here and in tests/tunnel.rs): fx0 with our
/// MAC, 10.10.0.1/24 and fd00:10::1/64, MTU 1500, forwarding on, and permanent neighbours for the
/// real servers .21 and .22 of both families; with fx0's index.
pub fn namespace(tag: &str) -> (Netns, u32) {
    let ns = Netns::new(tag);
    ns.sh(
        "ip link add fx0 type veth peer name fx1 && ip link set fx0 address 02:00:00:00:00:aa && \
         ip link set fx0 up && ip link set fx1 up && ip addr add 10.10.0.1/24 dev fx0 && \
         ip addr add fd00:10::1/64 dev fx0 nodad && \
         sysctl -qw net.ipv4.conf.fx0.forwarding=1 net.ipv6.conf.fx0.forwarding=1 && \
         ip neigh replace 10.10.0.21 lladdr 02:00:00:00:01:21 dev fx0 nud permanent && \
         ip neigh replace 10.10.0.22 lladdr 02:00:00:00:01:22 dev fx0 nud permanent && \
         ip neigh replace fd00:10::21 lladdr 02:00:00:00:01:21 dev fx0 nud permanent && \
         ip neigh replace fd00:10::22 lladdr 02:00:00:00:01:22 dev fx0 nud permanent",
    );
    let ifindex = ns.ifindex("fx0");
    (ns, ifindex)
}

/// The namespace and data path the frames run through, set up as [`world`] says.
pub struct Bench {
    ns: Netns,
    dp: Dataplane,
    ifindex: u32,
}

impl Bench {
    /// A namespace with fx0 (our MAC, 10.10.0.1/24, fd00:10::1/64, MTU 1500, forwarding on),
    /// permanent neighbours for the real servers, and the world's services.
    pub fn new() -> Self {
        let (ns, ifindex) = namespace("fuzz");
        let mut dp = Dataplane::load(&LoadOptions {
            max_services: Some(16),
            max_connections: Some(65_536),
            ..LoadOptions::default()
        })
        .expect("load the data path");
        for s in world().services {
            let forward = match s.method {
                Method::DirectRoute => Forwarding::DirectRoute,
                Method::Tunnel => Forwarding::Tunnel,
            };
            let (key, real, identity) = match (s.vip, s.real) {
                (IpAddr::V4(vip), IpAddr::V4(real)) => (
                    ServiceKey::v4(u32::from(vip), s.port, s.proto),
                    RealServer::v4(u32::from(real), forward),
                    real.octets().to_vec(),
                ),
                (IpAddr::V6(vip), IpAddr::V6(real)) => (
                    ServiceKey::v6(vip.octets(), s.port, s.proto),
                    RealServer {
                        addr: bytemuck::cast(real.octets()),
                        family: FAMILY_V6,
                        forward: forward as u8,
                        _pad: [0; 2],
                        service_epoch: 0,
                    },
                    real.octets().to_vec(),
                ),
                _ => unreachable!("the world has no service across families"),
            };
            let service = dp
                .upsert_service(key, lb_common::service::SCHED_MAGLEV, 0)
                .expect("service");
            let id = dp.add_real(service, real).expect("real");
            let table = maglev::build(&[maglev::Backend {
                identity: &identity,
                id,
                weight: 1,
            }]);
            dp.set_maglev_table(key, &table).expect("table");
        }
        Self { ns, dp, ifindex }
    }

    fn run(&self, frame: &[u8]) -> fixture::Outcome {
        let program = self.dp.program().expect("program");
        self.ns.enter(|| fixture::run(program, frame, self.ifindex))
    }

    fn counter(&self, stat: GlobalStat) -> u64 {
        self.dp.global_counter(stat).expect("counter")
    }
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

/// The real server's side: a namespace with the decapsulator, whose tunnel endpoints are the
/// world's tunnel real servers.
pub struct DecapBench {
    ns: Netns,
    decap: Decapsulator,
    ifindex: u32,
    ours: Vec<IpAddr>,
}

impl DecapBench {
    /// The decapsulator for 10.10.0.21 and fd00:10::21 on a veth of a namespace of its own.
    pub fn new() -> Self {
        crate::root::require();
        let ns = Netns::new("fuzzd");
        ns.sh(
            "ip link add dx0 type veth peer name dx1 && ip link set dx0 up && ip link set dx1 up",
        );
        let ifindex = ns.ifindex("dx0");
        let ours: Vec<IpAddr> = vec![IpAddr::from(TUN_RS), IpAddr::from(v6(0x21))];
        let decap = Decapsulator::load(&ours, None).expect("load the decapsulator");
        Self {
            ns,
            decap,
            ifindex,
            ours,
        }
    }

    /// Runs the decapsulator once on `frame`.
    pub fn run(&self, frame: &[u8]) -> fixture::Outcome {
        let program = self.decap.program().expect("program");
        self.ns.enter(|| fixture::run(program, frame, self.ifindex))
    }
}

impl Default for DecapBench {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `packets` generated tunnel frames (and others) through the decapsulator and compares
/// each with the model: every frame passed, stripped of its outer header exactly when the model
/// says so.
pub fn run_decap(bench: &DecapBench, packets: u64, seed: u64) -> Report {
    let mut gen = Generator::new(seed);
    let mut report = Report::default();
    for n in 0..packets {
        let frame = gen.decap_frame();
        let want = model::expect_decap(&bench.ours, &frame);
        let out = bench.run(&frame);
        report.packets += 1;
        report.passed += 1;
        if want != frame {
            report.forwarded += 1;
        }
        if out.action == action::ABORTED {
            report.aborted += 1;
        }
        let why = if out.action != action::PASS {
            Some(format!("{} instead of XDP_PASS", action_name(out.action)))
        } else if out.packet != want {
            Some(format!(
                "{}
 got: {}
 want: {}",
                if want == frame {
                    "changed a frame it must leave alone"
                } else {
                    "decapsulated other bytes"
                },
                hex(&out.packet).replace('\n', " "),
                hex(&want).replace('\n', " ")
            ))
        } else {
            None
        };
        if let Some(why) = why {
            report.mismatches += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!(
                    "decapsulator, frame {n} (seed {seed:#x}): {why}\n in: {}",
                    hex(&frame).replace('\n', " ")
                ));
            }
        }
    }
    report
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Frames run.
    pub packets: u64,
    /// Frames the model expected forwarded (sent to a real server).
    pub forwarded: u64,
    /// Frames the model expected answered with "too big".
    pub answered: u64,
    /// Frames the model expected passed.
    pub passed: u64,
    /// Frames the model expected dropped.
    pub dropped: u64,
    /// XDP_ABORTED verdicts.
    pub aborted: u64,
    /// Packets for no service that were changed or not passed.
    pub rewritten_not_for_a_service: u64,
    /// Every difference from the model (the first few are kept in `examples`).
    pub mismatches: u64,
    /// The first differences, each with its frame in hex.
    pub examples: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} frames: {} forwarded, {} answered too big, {} passed, {} dropped (as the model expects)",
            self.packets, self.forwarded, self.answered, self.passed, self.dropped
        )?;
        writeln!(
            f,
            "XDP_ABORTED: {}; packets for no service changed or not passed: {}; verdicts or bytes that differ from the model: {}",
            self.aborted, self.rewritten_not_for_a_service, self.mismatches
        )?;
        for e in &self.examples {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Runs `packets` generated frames from `seed` through the bench and compares each with the
/// model.
pub fn run(bench: &Bench, packets: u64, seed: u64) -> Report {
    let world = world();
    let mut gen = Generator::new(seed);
    let mut report = Report::default();
    for n in 0..packets {
        let frame = gen.frame();
        let want = model::expect(&world, &frame);
        let counter = want.counter();
        let before = bench.counter(counter);
        let out = bench.run(&frame);
        let after = bench.counter(counter);
        report.packets += 1;
        match &want {
            Expected::Forward { .. } => report.forwarded += 1,
            Expected::TooBig { .. } => report.answered += 1,
            Expected::Pass(_) => report.passed += 1,
            Expected::Drop(_) => report.dropped += 1,
        }
        if out.action == action::ABORTED {
            report.aborted += 1;
        }
        let for_no_service = matches!(
            want,
            Expected::Pass(
                GlobalStat::PassNotVip
                    | GlobalStat::PassNotIp
                    | GlobalStat::PassNoService
                    | GlobalStat::PassMalformed
                    | GlobalStat::PassBadIhl
            )
        );
        if for_no_service && (out.action != action::PASS || out.packet != frame) {
            report.rewritten_not_for_a_service += 1;
        }
        let why = difference(&frame, &want, &out).or_else(|| {
            (after != before + 1).then(|| {
                format!(
                    "counter {} grew by {} instead of 1",
                    counter.name(),
                    after.wrapping_sub(before)
                )
            })
        });
        if let Some(why) = why {
            report.mismatches += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!(
                    "frame {n} (seed {seed:#x}): {why}\n in: {}",
                    hex(&frame).replace('\n', " ")
                ));
            }
        }
    }
    report
}

/// How the data path's outcome differs from the model's expectation, if it does.
fn difference(frame: &[u8], want: &Expected, out: &fixture::Outcome) -> Option<String> {
    let verdict = |expected: u32| {
        (out.action != expected).then(|| {
            format!(
                "{} instead of {}: {}",
                action_name(out.action),
                action_name(expected),
                want.summary()
            )
        })
    };
    match want {
        Expected::Pass(_) | Expected::Drop(_) => {
            let expected = if matches!(want, Expected::Pass(_)) {
                action::PASS
            } else {
                action::DROP
            };
            verdict(expected).or_else(|| {
                (out.packet != frame)
                    .then(|| format!("{}, but the frame was changed", want.summary()))
            })
        }
        Expected::Forward { bytes, .. } => verdict(action::TX).or_else(|| {
            (out.packet != *bytes).then(|| {
                format!(
                    "sent other bytes\n got: {}\n want: {}",
                    hex(&out.packet).replace('\n', " "),
                    hex(bytes).replace('\n', " ")
                )
            })
        }),
        Expected::TooBig { client, vip, mtu } => verdict(action::TX)
            .or_else(|| model::check_too_big(frame, &out.packet, *client, *vip, *mtu)),
    }
}

/// Seeded frames: a valid packet of one of many kinds, then (most of the time) one mutation.
pub struct Generator {
    rng: StdRng,
}

impl Generator {
    /// The frames of `seed`: the same seed gives the same frames.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn client_port(&mut self) -> u16 {
        // A few hundred flows, so that known flows come back as often as new ones.
        40_000 + self.rng.random_range(0..300)
    }

    fn v4(&mut self, dst: [u8; 4], dport: u16) -> Ipv4Packet {
        let flags = [SYN, ACK, ACK | FIN][self.rng.random_range(0..3)];
        let sport = self.client_port();
        let mut p = if self.rng.random_bool(0.8) {
            Ipv4Packet::tcp(CLIENT, sport, dst, dport, flags)
        } else {
            Ipv4Packet::udp(CLIENT, sport, dst, dport)
        };
        p.eth_dst = OUR_MAC;
        p.eth_src = CLIENT_MAC;
        p.frag = if self.rng.random_bool(0.7) { 0x4000 } else { 0 };
        let len = [0usize, 1, 100, 1400, 1459, 1460, 1461, 1480, 1481][self.rng.random_range(0..9)];
        p.payload = vec![0x5a; len];
        if self.rng.random_bool(0.1) {
            p.options = vec![1; 4 * self.rng.random_range(1..=10)];
        }
        p
    }

    fn v6(&mut self, dport: u16) -> Ipv6Packet {
        let sport = self.client_port();
        let mut p = Ipv6Packet::tcp(v6(0x50), sport, v6(0x100), dport, ACK);
        p.eth_dst = OUR_MAC;
        p.eth_src = CLIENT_MAC;
        p.traffic_class = self.rng.random();
        let len = [0usize, 100, 1400, 1419, 1420, 1421, 1440, 1441][self.rng.random_range(0..8)];
        p.payload = vec![0x6b; len];
        p
    }

    /// An ICMP error to the VIP from a router, quoting a packet from `quoted_src`:`sport`.
    fn icmp_v4(&mut self, quoted_src: [u8; 4], sport: u16) -> Vec<u8> {
        let client_port = self.client_port();
        let quoted = Ipv4Packet::tcp(quoted_src, sport, CLIENT, client_port, ACK).ip_bytes();
        let kind = [3u8, 11, 12, 0, 8][self.rng.random_range(0..5)];
        let mut body = vec![kind, 4, 0, 0, 0, 0, 0x05, 0x00];
        let keep = [28usize, 24, 20, 10, quoted.len()][self.rng.random_range(0..5)];
        body.extend_from_slice(&quoted[..keep.min(quoted.len())]);
        let mut error = Ipv4Packet::new(
            [10, 10, 0, 254],
            VIP,
            L4::Raw {
                proto: 1,
                bytes: body,
            },
        );
        error.eth_dst = OUR_MAC;
        error.payload.clear();
        error.build()
    }

    fn icmp_v6(&mut self, quoted_src: [u8; 16], sport: u16) -> Vec<u8> {
        let client_port = self.client_port();
        let quoted = Ipv6Packet::tcp(quoted_src, sport, v6(0x50), client_port, ACK).ip_bytes();
        let kind = [1u8, 2, 3, 4, 128][self.rng.random_range(0..5)];
        let mut body = vec![kind, 0, 0, 0, 0, 0, 0x05, 0x00];
        let keep = [48usize, 44, 40, 20][self.rng.random_range(0..4)];
        body.extend_from_slice(&quoted[..keep.min(quoted.len())]);
        let mut error = Ipv6Packet::new(
            v6(0xfe),
            v6(0x100),
            L4::Raw {
                proto: 58,
                bytes: body,
            },
        );
        error.eth_dst = OUR_MAC;
        error.payload.clear();
        error.build()
    }

    /// A valid frame of one of the kinds the balancer meets.
    fn template(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..16) {
            0..=2 => {
                let port = [80, 53, 8080, 81][self.rng.random_range(0..4)];
                self.v4(VIP, port).build()
            }
            3 => {
                let port = self.rng.random();
                self.v4(VIP_ALL_PORTS, port).build()
            }
            4 => self.v4([10, 10, 0, 99], 80).build(),
            5..=6 => {
                let port = [80, 8080, 81][self.rng.random_range(0..3)];
                self.v6(port).build()
            }
            7 => {
                let sport = [8080, 80, 53][self.rng.random_range(0..3)];
                let from = if self.rng.random_bool(0.8) {
                    VIP
                } else {
                    [10, 10, 0, 77]
                };
                self.icmp_v4(from, sport)
            }
            8 => {
                let sport = [8080, 80][self.rng.random_range(0..2)];
                let from = if self.rng.random_bool(0.8) {
                    v6(0x100)
                } else {
                    v6(0x77)
                };
                self.icmp_v6(from, sport)
            }
            9 => {
                // IPv6 with an extension header, a fragment header or no next header.
                let mut p = self.v6(80);
                p.next_header_override =
                    Some([0, 43, 60, 44, 59, 50, 51, 135][self.rng.random_range(0..8)]);
                p.build()
            }
            10 => {
                // A tunnel inside a tunnel: IP-in-IP to the VIP.
                let inner = self.v4(VIP, 80).ip_bytes();
                let mut p = Ipv4Packet::new(
                    [10, 10, 0, 60],
                    VIP,
                    L4::Raw {
                        proto: 4,
                        bytes: inner,
                    },
                );
                p.eth_dst = OUR_MAC;
                p.payload.clear();
                p.build()
            }
            11 => {
                // Ping to the VIP.
                let mut p = Ipv4Packet::new(
                    CLIENT,
                    VIP,
                    L4::Raw {
                        proto: 1,
                        bytes: vec![8, 0, 0, 0, 0, 1, 0, 1],
                    },
                );
                p.eth_dst = OUR_MAC;
                p.payload.clear();
                p.build()
            }
            12 => crate::packet::arp_request(CLIENT, VIP),
            13 => {
                // Random bytes behind an IPv4 or IPv6 Ethernet header.
                let len = self.rng.random_range(14..200);
                let mut p: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
                let t: [u8; 2] =
                    [[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]][self.rng.random_range(0..3)];
                p[12..14].copy_from_slice(&t);
                p
            }
            _ => {
                let port = [80, 8080][self.rng.random_range(0..2)];
                let mut p = self.v4(VIP, port);
                p.vlan = Some(self.rng.random_range(1..4095));
                p.build()
            }
        }
    }

    /// A frame for the decapsulator: a tunnel packet (IPv4 or IPv6 outside, either inside) for
    /// the real server or for another host, or a plain packet.
    fn decap_template(&mut self) -> Vec<u8> {
        let inner_v4 = self.rng.random_bool(0.5);
        let inner = if inner_v4 {
            self.v4(VIP, 80).ip_bytes()
        } else {
            self.v6(80).ip_bytes()
        };
        let proto = if inner_v4 { 4 } else { 41 };
        match self.rng.random_range(0..5) {
            0 | 1 => {
                let dst = if self.rng.random_bool(0.8) {
                    TUN_RS
                } else {
                    DR_RS
                };
                let mut p = Ipv4Packet::new(
                    [10, 10, 0, 1],
                    dst,
                    L4::Raw {
                        proto,
                        bytes: inner,
                    },
                );
                p.payload.clear();
                if self.rng.random_bool(0.2) {
                    p.vlan = Some(7);
                }
                p.build()
            }
            2 | 3 => {
                let dst = if self.rng.random_bool(0.8) {
                    v6(0x21)
                } else {
                    v6(0x22)
                };
                let mut p = Ipv6Packet::new(
                    v6(1),
                    dst,
                    L4::Raw {
                        proto,
                        bytes: inner,
                    },
                );
                p.payload.clear();
                p.build()
            }
            _ => self.v4(TUN_RS, 80).build(),
        }
    }

    /// The next frame for the decapsulator: a template, mutated three times in four.
    pub fn decap_frame(&mut self) -> Vec<u8> {
        let p = self.decap_template();
        self.mutate(p)
    }

    /// The next frame: a template, mutated three times in four.
    pub fn frame(&mut self) -> Vec<u8> {
        let p = self.template();
        self.mutate(p)
    }

    /// One mutation of `p`, or none.
    fn mutate(&mut self, mut p: Vec<u8>) -> Vec<u8> {
        let l3 = if p[12] == 0x81 { 18 } else { 14 };
        if p.len() < l3 + 8 {
            return p;
        }
        let v6 = p[l3 - 2..l3] == [0x86, 0xdd];
        // Field mutations need the whole IP header; short frames only get bits flipped.
        let mutation = if p.len() < l3 + 40 {
            11
        } else {
            self.rng.random_range(0..12)
        };
        match mutation {
            0..=2 => {}
            // A length field that says anything.
            3 => {
                let at = if v6 { l3 + 4 } else { l3 + 2 };
                let v: u16 = if self.rng.random_bool(0.5) {
                    self.rng.random()
                } else {
                    let real = u16::from_be_bytes([p[at], p[at + 1]]);
                    real.wrapping_add(self.rng.random_range(0..16))
                        .wrapping_sub(8)
                };
                p[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            // Cut anywhere after the Ethernet header, at a header boundary half of the time.
            4 => {
                let keep = if self.rng.random_bool(0.5) {
                    [
                        14,
                        16,
                        18,
                        l3 + 19,
                        l3 + 20,
                        l3 + 39,
                        l3 + 40,
                        l3 + 27,
                        l3 + 47,
                        l3 + 59,
                    ][self.rng.random_range(0..10)]
                } else {
                    self.rng.random_range(14..p.len())
                };
                p.truncate(keep.clamp(14, p.len()));
            }
            // A source no host can have.
            5 => {
                if v6 {
                    let choices: [[u8; 2]; 4] = [[0xff, 0x02], [0xfe, 0x80], [0, 0], [0xfd, 0]];
                    let c = choices[self.rng.random_range(0..4)];
                    p[l3 + 8..l3 + 10].copy_from_slice(&c);
                } else {
                    p[l3 + 12] = [0, 127, 224, 240, 255, 10][self.rng.random_range(0..6)];
                }
            }
            // A group MAC as the sender.
            6 => p[6] |= 1,
            // TTL / hop limit 0, or fragment bits.
            7 => {
                if v6 {
                    p[l3 + 7] = 0;
                } else if self.rng.random_bool(0.5) {
                    p[l3 + 8] = 0;
                } else {
                    let frag: u16 = [0x2000, 0x0001, 0x2001, 0x6000][self.rng.random_range(0..4)];
                    p[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
                }
            }
            // The IHL says anything.
            8 if !v6 => {
                p[l3] = 0x40 | self.rng.random_range(0..16u8);
            }
            // Padding after the IP packet.
            9 => p.extend(std::iter::repeat_n(0u8, self.rng.random_range(1..40))),
            // Flip bits in the headers.
            _ => {
                for _ in 0..self.rng.random_range(1..4) {
                    let end = p.len().min(l3 + 60);
                    let at = self.rng.random_range(0..end);
                    p[at] ^= 1 << self.rng.random_range(0..8);
                }
            }
        }
        p
    }
}
