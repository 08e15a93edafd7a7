//! The schedulers and persistence in the data path, through BPF_PROG_TEST_RUN: which real server
//! each new flow gets from `rr`, `wrr`, `lc`, `wlc`, `sed`, `nq`, `fo`, `ovf`, `sh` (with and
//! without `sh-port`), `dh` and a persistent service, and that known flows keep theirs.
//!
//! The namespace is datapath.rs's: one veth (fx0, 10.10.0.1/24) and permanent neighbour entries
//! for the real servers, whose MACs end in their address's last byte, so the destination MAC of
//! a forwarded packet names the server it went to. The thread is pinned to CPU 0: `rr` and `wrr`
//! keep a position per CPU.

use std::net::Ipv4Addr;

use lb_common::{
    hash::address_hash,
    limits::MAGLEV_TABLE_SIZE,
    service::{
        SCHED_DEST_HASH, SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_SEQUENCE, SCHED_SOURCE_HASH,
        SCHED_WEIGHT_ORDER, SERVICE_F_EXPECTED_DELAY, SERVICE_F_FALLBACK, SERVICE_F_HASH_PORT,
        SERVICE_F_IDLE_FIRST, SERVICE_F_OVERFLOW, SERVICE_F_WEIGHTED,
    },
    PROTO_TCP,
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};
use xlb_tests::{
    fixture::{self, action, action_name},
    hcbench,
    netns::Netns,
    packet::{Ipv4Packet, ACK, SYN},
    root,
    services::TestService,
};

const VIP: [u8; 4] = [10, 10, 0, 100];
const RS: [[u8; 4]; 4] = [
    [10, 10, 0, 11],
    [10, 10, 0, 12],
    [10, 10, 0, 13],
    [10, 10, 0, 14],
];

struct Bench {
    ns: Netns,
    dp: Dataplane,
    ifindex: u32,
}

fn bench() -> Bench {
    root::require();
    hcbench::pin(0).expect("pin the test to CPU 0");
    let ns = Netns::new("sch");
    ns.sh(
        "ip link add fx0 type veth peer name fx1 && ip link set fx0 address 02:00:00:00:00:aa && \
         ip link set fx0 up && ip link set fx1 up && ip addr add 10.10.0.1/24 dev fx0 && \
         sysctl -qw net.ipv4.conf.fx0.forwarding=1",
    );
    for [a, b, c, d] in RS {
        ns.sh(&format!(
            "ip neigh replace {a}.{b}.{c}.{d} lladdr 02:00:00:00:01:{d:02x} dev fx0 nud permanent"
        ));
    }
    let ifindex = ns.ifindex("fx0");
    let dp = Dataplane::load(&LoadOptions {
        max_services: Some(8),
        max_connections: Some(4096),
        ..LoadOptions::default()
    })
    .expect("load the data path");
    Bench { ns, dp, ifindex }
}

impl Bench {
    /// A service on port `port` of the VIP with `scheduler`, `flags` and the servers
    /// `(index into RS, weight)`.
    fn service(
        &mut self,
        port: u16,
        scheduler: u8,
        flags: u32,
        reals: &[(usize, u32)],
    ) -> TestService {
        let mut svc =
            TestService::add_scheduled(&mut self.dp, VIP.into(), port, PROTO_TCP, scheduler, flags);
        for (i, weight) in reals {
            svc.add_real(&mut self.dp, RS[*i].into(), *weight);
        }
        svc
    }

    /// The last byte of the real server a SYN from `client:sport` to the VIP's `port` went to.
    fn send(&self, client: [u8; 4], sport: u16, port: u16) -> u8 {
        self.send_flags(client, sport, port, SYN)
    }

    /// The last byte of the real server a TCP packet with `flags` went to.
    fn send_flags(&self, client: [u8; 4], sport: u16, port: u16, flags: u8) -> u8 {
        let packet = Ipv4Packet::tcp(client, sport, VIP, port, flags).build();
        let program = self.dp.program().expect("program");
        let out = self
            .ns
            .enter(|| fixture::run(program, &packet, self.ifindex));
        assert_eq!(
            out.action,
            action::TX,
            "{client:?}:{sport} -> port {port}: {}",
            action_name(out.action)
        );
        out.packet[5]
    }

    /// The last byte of the server a SYN from `client:sport` went to, or `None` when the data
    /// path dropped it for want of a server.
    fn try_send(&self, client: [u8; 4], sport: u16, port: u16) -> Option<u8> {
        self.try_send_flags(client, sport, port, SYN)
    }

    /// As [`Self::try_send`], for a TCP packet with `flags`.
    fn try_send_flags(&self, client: [u8; 4], sport: u16, port: u16, flags: u8) -> Option<u8> {
        let packet = Ipv4Packet::tcp(client, sport, VIP, port, flags).build();
        let program = self.dp.program().expect("program");
        let out = self
            .ns
            .enter(|| fixture::run(program, &packet, self.ifindex));
        match out.action {
            action::TX => Some(out.packet[5]),
            action::DROP => None,
            other => panic!("{client:?}:{sport} -> port {port}: {}", action_name(other)),
        }
    }

    /// The servers (last bytes) of new flows from one client on successive ports.
    fn sequence(&self, port: u16, first_sport: u16, flows: u16) -> Vec<u8> {
        (0..flows)
            .map(|i| self.send([10, 10, 0, 50], first_sport + i, port))
            .collect()
    }
}

/// The last byte of the real server in the Maglev table of `svc` at `hash`.
fn in_table(dp: &Dataplane, svc: &TestService, hash: u32) -> u8 {
    let table = dp.maglev_table(&svc.key).expect("table");
    let id = table[(hash % MAGLEV_TABLE_SIZE) as usize];
    svc.real(id).expect("a real server").addr.octets()[3]
}

fn be(addr: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(addr), 0, 0, 0]
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn round_robin_gives_each_new_flow_the_next_server_and_a_known_flow_keeps_its_own() {
    let mut bench = bench();
    bench.service(80, SCHED_SEQUENCE, 0, &[(0, 1), (1, 1), (2, 1)]);
    // CPU 0 starts at the sequence's first slot.
    assert_eq!(
        bench.sequence(80, 1000, 7),
        vec![11, 12, 13, 11, 12, 13, 11]
    );
    // The first flow again: known, so it stays where it was and does not move the position.
    assert_eq!(bench.send([10, 10, 0, 50], 1000, 80), 11);
    assert_eq!(bench.sequence(80, 2000, 2), vec![12, 13]);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn weighted_round_robin_follows_the_weights_and_skips_quiesced_servers() {
    let mut bench = bench();
    let mut svc = bench.service(80, SCHED_SEQUENCE, 0, &[(0, 3), (1, 1), (2, 0)]);
    // IPVS's wrr for 3:1: a a a b.
    assert_eq!(
        bench.sequence(80, 1000, 8),
        vec![11, 11, 11, 12, 11, 11, 11, 12]
    );
    svc.set_weight(&mut bench.dp, Ipv4Addr::from(RS[1]), 2);
    svc.set_weight(&mut bench.dp, Ipv4Addr::from(RS[2]), 1);
    // 3:2:1: a a b a b c.
    assert_eq!(bench.sequence(80, 2000, 6), vec![11, 11, 12, 11, 12, 13]);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn source_hashing_keeps_a_client_on_one_server_across_ports_unless_sh_port() {
    let mut bench = bench();
    let sh = bench.service(80, SCHED_SOURCE_HASH, 0, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    let sh_port = bench.service(
        81,
        SCHED_SOURCE_HASH,
        SERVICE_F_HASH_PORT,
        &[(0, 1), (1, 1), (2, 1), (3, 1)],
    );
    let mut servers = std::collections::BTreeSet::new();
    for last in 1..=20u8 {
        let client = [10, 10, 1, last];
        let expected = in_table(&bench.dp, &sh, address_hash(&be(client), 4, 0));
        for sport in [1000, 2000, 3000] {
            assert_eq!(
                bench.send(client, sport, 80),
                expected,
                "client {client:?}:{sport}"
            );
        }
        servers.insert(expected);
        for sport in [1000u16, 2000, 3000] {
            let expected = in_table(
                &bench.dp,
                &sh_port,
                address_hash(&be(client), 4, sport.to_be()),
            );
            assert_eq!(
                bench.send(client, sport, 81),
                expected,
                "sh-port {client:?}:{sport}"
            );
        }
    }
    assert!(servers.len() > 1, "20 clients all hashed to {servers:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn destination_hashing_picks_by_the_vip_and_maglev_by_the_whole_flow() {
    let mut bench = bench();
    let dh = bench.service(80, SCHED_DEST_HASH, 0, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    let expected = in_table(&bench.dp, &dh, address_hash(&be(VIP), 4, 0));
    for last in 1..=10u8 {
        assert_eq!(
            bench.send([10, 10, 1, last], 1000 + u16::from(last), 80),
            expected
        );
    }
    let mh = bench.service(81, SCHED_MAGLEV, 0, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    let servers: std::collections::BTreeSet<u8> = (0..40)
        .map(|i| bench.send([10, 10, 0, 50], 5000 + i, 81))
        .collect();
    assert!(
        servers.len() > 1,
        "mh sent 40 flows of one client to {servers:?}"
    );
    drop(mh);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn persistence_keeps_a_client_network_on_its_server_across_ports_weights_and_additions_until_it_times_out(
) {
    let mut bench = bench();
    // rr would give every new flow another server: persistence is what keeps them together.
    let mut svc = bench.service(80, SCHED_SEQUENCE, 0, &[(0, 1), (1, 1), (2, 1)]);
    svc.persist(&mut bench.dp, 1, 0xffff_ff00);
    let first = bench.send([10, 10, 1, 5], 1000, 80);
    for sport in 1001..1006 {
        assert_eq!(
            bench.send([10, 10, 1, 5], sport, 80),
            first,
            "same client, port {sport}"
        );
    }
    // Another client of the same /24 joins it; one of another /24 is scheduled.
    assert_eq!(bench.send([10, 10, 1, 200], 1000, 80), first);
    let other = bench.send([10, 10, 2, 5], 1000, 80);
    assert_ne!(other, first, "rr gave the next /24 the next server");
    // Quiesced (weight 0) and a server added: the client stays.
    svc.set_weight(&mut bench.dp, Ipv4Addr::new(10, 10, 0, first), 0);
    svc.add_real(&mut bench.dp, RS[3].into(), 5);
    assert_eq!(
        bench.send([10, 10, 1, 5], 1010, 80),
        first,
        "after weight changes"
    );
    // The timeout (1 s) after its last new connection: scheduled anew, away from the quiesced one.
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    let again = bench.send([10, 10, 1, 5], 1020, 80);
    assert_ne!(
        again, first,
        "after the timeout the quiesced server gets no new client"
    );
    assert_eq!(
        bench.send([10, 10, 1, 6], 1020, 80),
        again,
        "and the network follows"
    );
    // A removed server's clients are forgotten at once.
    svc.remove_real(&mut bench.dp, Ipv4Addr::new(10, 10, 0, again));
    let moved = bench.send([10, 10, 1, 5], 1030, 80);
    assert_ne!(moved, again);
    assert_eq!(
        bench
            .dp
            .persistent_clients()
            .expect("persistence table")
            .iter()
            .filter(|(_, p)| svc.real(p.real).is_none())
            .count(),
        0,
        "an entry still names the removed server"
    );
}

/// How many of `flows` new flows (from one client, successive ports) went to each server.
fn tally(bench: &Bench, port: u16, flows: u16) -> std::collections::BTreeMap<u8, u32> {
    let mut got = std::collections::BTreeMap::new();
    for server in bench.sequence(port, 3000, flows) {
        *got.entry(server).or_default() += 1;
    }
    got
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn least_connections_sends_most_new_flows_to_the_less_loaded_server_and_counts_them() {
    let mut bench = bench();
    let svc = bench.service(80, SCHED_LEAST_CONN, 0, &[(0, 1), (1, 1)]);
    let (a, b) = (svc.reals[0].id, svc.reals[1].id);
    bench
        .dp
        .set_connection_counts(&[(a, 1000), (b, 0)])
        .expect("counts");
    let servers = bench.sequence(80, 3000, 200);
    let got = |last: u8| servers.iter().filter(|s| **s == last).count() as u32;
    // Two random draws: the loaded server only when both draw it (about 1 in 4).
    assert!(got(12) > 120, "{servers:?}");
    assert!(got(11) < 80, "{servers:?}");
    // A SYN's flow is embryonic, IPVS's SYN_RECV: an inactive connection, not counted yet.
    let counted = |id| bench.dp.connection_count(id).expect("count");
    assert_eq!(
        (counted(a), counted(b)),
        (1000, 0),
        "a SYN counted as active"
    );
    // The client's ACK promotes it: each flow, at its own server, counts one more connection for
    // it (one CPU: none lost); its SYN retransmitted before that changes nothing.
    for (i, server) in servers.iter().enumerate() {
        let sport = 3000 + i as u16;
        assert_eq!(bench.send([10, 10, 0, 50], sport, 80), *server);
        assert_eq!(bench.send_flags([10, 10, 0, 50], sport, 80, ACK), *server);
    }
    assert_eq!(counted(a), 1000 + got(11));
    assert_eq!(counted(b), got(12));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn weighted_least_connections_compares_connections_per_unit_of_weight() {
    let mut bench = bench();
    // rs11: 100 connections at weight 1; rs12: 500 at weight 10, the less loaded per weight.
    let svc = bench.service(80, SCHED_LEAST_CONN, SERVICE_F_WEIGHTED, &[(0, 1), (1, 10)]);
    let (a, b) = (svc.reals[0].id, svc.reals[1].id);
    bench
        .dp
        .set_connection_counts(&[(a, 100), (b, 500)])
        .expect("counts");
    let got = tally(&bench, 80, 200);
    assert!(got.get(&12).copied().unwrap_or(0) > 120, "{got:?}");
    // Unweighted, the same counts send most to rs11.
    let lc = bench.service(81, SCHED_LEAST_CONN, 0, &[(0, 1), (1, 10)]);
    let (a, b) = (lc.reals[0].id, lc.reals[1].id);
    bench
        .dp
        .set_connection_counts(&[(a, 100), (b, 500)])
        .expect("counts");
    let got = tally(&bench, 81, 200);
    assert!(got.get(&11).copied().unwrap_or(0) > 120, "{got:?}");
}

/// The thresholds, count and overload flag of a real server, as the data path has them.
fn limits(bench: &Bench, id: u32) -> lb_common::RealLimits {
    bench.dp.real_limits(id).expect("limits")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn round_robin_passes_a_server_at_its_upper_threshold_by_until_it_drops_back() {
    let mut bench = bench();
    let svc = bench.service(80, SCHED_SEQUENCE, 0, &[(0, 1), (1, 1), (2, 1)]);
    let a = svc.reals[0].id;
    bench.dp.set_real_thresholds(a, 2, 0).expect("-x 2");
    // rs11 takes its turn twice, then the others share its turns.
    assert_eq!(
        bench.sequence(80, 1000, 9),
        vec![11, 12, 13, 11, 12, 13, 12, 13, 12]
    );
    let l = limits(&bench, a);
    assert_eq!((l.conns, l.is_overloaded()), (2, true));
    // Its known flows keep going to it.
    assert_eq!(bench.send([10, 10, 0, 50], 1000, 80), 11);
    // Userspace counts 2 (nothing closed): still overloaded. 1 of -x 2 is below three quarters:
    // it takes new flows again.
    bench.dp.set_threshold_counts(&[(a, 2)]).expect("count");
    assert!(!bench.sequence(80, 2000, 6).contains(&11));
    bench.dp.set_threshold_counts(&[(a, 1)]).expect("count");
    assert!(!limits(&bench, a).is_overloaded());
    assert!(bench.sequence(80, 3000, 3).contains(&11));
    assert_eq!(limits(&bench, a).conns, 2, "counted again");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_overloaded_server_stays_so_down_to_its_lower_threshold() {
    let mut bench = bench();
    let svc = bench.service(80, SCHED_SEQUENCE, 0, &[(0, 1), (1, 1)]);
    let a = svc.reals[0].id;
    bench.dp.set_real_thresholds(a, 4, 2).expect("-x 4 -y 2");
    bench.dp.set_threshold_counts(&[(a, 4)]).expect("count");
    assert!(limits(&bench, a).is_overloaded());
    for count in [3, 2] {
        bench.dp.set_threshold_counts(&[(a, count)]).expect("count");
        assert!(
            !bench
                .sequence(80, 1000 + count as u16 * 100, 4)
                .contains(&11),
            "still overloaded at {count} (-y 2)"
        );
    }
    bench.dp.set_threshold_counts(&[(a, 1)]).expect("count");
    assert!(bench.sequence(80, 2000, 4).contains(&11), "below -y 2");
    // Raising the thresholds clears the flag at once (IPVS does so when -x goes above the count).
    bench.dp.set_threshold_counts(&[(a, 3)]).expect("count");
    bench.dp.set_real_thresholds(a, 3, 0).expect("-x 3");
    assert!(limits(&bench, a).is_overloaded(), "3 connections of -x 3");
    bench.dp.set_real_thresholds(a, 10, 0).expect("-x 10");
    assert!(!limits(&bench, a).is_overloaded());
    assert_eq!(limits(&bench, a).conns, 3, "the count is kept");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn maglev_and_least_connections_give_an_overloaded_servers_flows_to_the_others() {
    let mut bench = bench();
    // One server of four overloaded: 8 slots all on it once in 65,536 new flows.
    let mh = bench.service(80, SCHED_MAGLEV, 0, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    let a = mh.reals[0].id;
    bench.dp.set_real_thresholds(a, 3, 0).expect("-x 3");
    let got = tally(&bench, 80, 60);
    assert_eq!(got.values().sum::<u32>(), 60, "every flow got a server");
    assert_eq!(got.get(&11).copied(), Some(3), "{got:?}");
    let lc = bench.service(81, SCHED_LEAST_CONN, 0, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    let a = lc.reals[0].id;
    bench.dp.set_real_thresholds(a, 5, 0).expect("-x 5");
    let got = tally(&bench, 81, 40);
    assert_eq!(got.values().sum::<u32>(), 40, "every flow got a server");
    assert_eq!(got.get(&11).copied(), Some(5), "{got:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn source_and_destination_hashing_give_no_server_when_theirs_is_overloaded_unless_sh_fallback() {
    let mut bench = bench();
    let reals = [(0, 1), (1, 1), (2, 1), (3, 1)];
    let sh = bench.service(80, SCHED_SOURCE_HASH, 0, &reals);
    let fallback = bench.service(81, SCHED_SOURCE_HASH, SERVICE_F_FALLBACK, &reals);
    let dh = bench.service(82, SCHED_DEST_HASH, 0, &reals);
    let client = [10, 10, 1, 7];
    let own = |svc: &TestService| in_table(&bench.dp, svc, address_hash(&be(client), 4, 0));
    let (sh_own, fallback_own) = (own(&sh), own(&fallback));
    let dh_own = in_table(&bench.dp, &dh, address_hash(&be(VIP), 4, 0));
    let id_of = |svc: &TestService, last: u8| {
        svc.reals
            .iter()
            .find(|r| r.addr.octets()[3] == last)
            .expect("server")
            .id
    };
    for (svc, last) in [(&sh, sh_own), (&fallback, fallback_own), (&dh, dh_own)] {
        bench
            .dp
            .set_real_thresholds(id_of(svc, last), 1, 0)
            .expect("-x 1");
    }
    // The first connection takes the server's only place.
    assert_eq!(bench.try_send(client, 1000, 80), Some(sh_own));
    assert_eq!(bench.try_send(client, 1000, 81), Some(fallback_own));
    assert_eq!(bench.try_send(client, 1000, 82), Some(dh_own));
    // Then IPVS's sh and dh have no server for the client; sh-fallback gives it another one.
    assert_eq!(bench.try_send(client, 1001, 80), None, "sh");
    assert_eq!(bench.try_send(client, 1001, 82), None, "dh");
    let moved = bench.try_send(client, 1001, 81).expect("sh-fallback");
    assert_ne!(moved, fallback_own);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_persistent_client_keeps_its_overloaded_server_and_every_new_flow_counts() {
    let mut bench = bench();
    let mut svc = bench.service(80, SCHED_SEQUENCE, 0, &[(0, 1), (1, 1)]);
    svc.persist(&mut bench.dp, 300, 0xffff_ffff);
    let a = svc.reals[0].id;
    bench.dp.set_real_thresholds(a, 1, 0).expect("-x 1");
    assert_eq!(bench.send([10, 10, 1, 5], 1000, 80), 11);
    // IPVS's persistence templates do not look at the overload flag: the client stays.
    assert_eq!(bench.send([10, 10, 1, 5], 1001, 80), 11);
    assert_eq!(limits(&bench, a).conns, 2);
    // A new client does not get the overloaded server.
    assert_eq!(bench.send([10, 10, 1, 6], 1000, 80), 12);
    // UDP flows count as well (IPVS counts every connection against the thresholds).
    let mut udp = TestService::add_scheduled(
        &mut bench.dp,
        VIP.into(),
        53,
        lb_common::PROTO_UDP,
        SCHED_SEQUENCE,
        0,
    );
    let u = udp.add_real(&mut bench.dp, RS[2].into(), 1);
    udp.add_real(&mut bench.dp, RS[3].into(), 1);
    bench.dp.set_real_thresholds(u, 100, 0).expect("-x 100");
    let program = bench.dp.program().expect("program");
    for sport in 0..4 {
        let packet = Ipv4Packet::udp([10, 10, 1, 9], 4000 + sport, VIP, 53).build();
        let out = bench
            .ns
            .enter(|| fixture::run(program, &packet, bench.ifindex));
        assert_eq!(out.action, action::TX, "{}", action_name(out.action));
    }
    assert_eq!(
        limits(&bench, u).conns,
        2,
        "rr gave it every other UDP flow"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn shortest_expected_delay_counts_the_new_flow_in_each_servers_delay() {
    let mut bench = bench();
    // rs11: idle at weight 1, delay (0 + 1) / 1; rs12: 5 connections at weight 10, (5 + 1) / 10.
    // wlc prefers rs11 (0 / 1 < 5 / 10), sed rs12.
    let reals = [(0, 1), (1, 10)];
    let sed = bench.service(
        80,
        SCHED_LEAST_CONN,
        SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY,
        &reals,
    );
    let wlc = bench.service(81, SCHED_LEAST_CONN, SERVICE_F_WEIGHTED, &reals);
    for svc in [&sed, &wlc] {
        let (a, b) = (svc.reals[0].id, svc.reals[1].id);
        bench
            .dp
            .set_connection_counts(&[(a, 0), (b, 5)])
            .expect("counts");
    }
    // SYNs: not counted (embryonic), so every flow meets the same counts. Two draws of two
    // servers: the other one only when both draw it (1 in 4).
    let got = tally(&bench, 80, 200);
    assert!(got.get(&12).copied().unwrap_or(0) > 130, "sed: {got:?}");
    let got = tally(&bench, 81, 200);
    assert!(got.get(&11).copied().unwrap_or(0) > 130, "wlc: {got:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn shortest_expected_delay_shares_counted_flows_by_weight() {
    let mut bench = bench();
    let svc = bench.service(
        80,
        SCHED_LEAST_CONN,
        SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY,
        &[(0, 1), (1, 3)],
    );
    // First packets that are no SYN: each flow counts at once, so each choice meets the
    // previous ones.
    let mut got = std::collections::BTreeMap::<u8, u32>::new();
    for sport in 0..400 {
        *got.entry(bench.send_flags([10, 10, 0, 50], 5000 + sport, 80, ACK))
            .or_default() += 1;
    }
    let light = got.get(&11).copied().unwrap_or(0);
    let counted = |i: usize| bench.dp.connection_count(svc.reals[i].id).expect("count");
    assert_eq!(counted(0) + counted(1), 400);
    // Weights 1:3, a quarter for rs11; two draws of two servers give it at least the quarter of
    // pairs that are rs11 twice, so the share cannot drop below, and the other pairs bring it
    // back up to it.
    println!("sed 1:3 over 400 counted flows: {got:?}");
    assert!((90..=125).contains(&light), "{got:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn never_queue_gives_a_new_flow_to_an_idle_server_it_draws() {
    let mut bench = bench();
    // rs11 idle at weight 1 (sed's delay 1), rs12 at 5 of weight 10 (0.6): sed prefers rs12,
    // nq the idle rs11.
    let nq = SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY | SERVICE_F_IDLE_FIRST;
    let svc = bench.service(80, SCHED_LEAST_CONN, nq, &[(0, 1), (1, 10)]);
    let (a, b) = (svc.reals[0].id, svc.reals[1].id);
    bench
        .dp
        .set_connection_counts(&[(a, 0), (b, 5)])
        .expect("counts");
    let got = tally(&bench, 80, 200);
    assert!(got.get(&11).copied().unwrap_or(0) > 130, "{got:?}");
    // A counted flow ends rs11's idleness at once: then as sed, rs12 (0.6 against 2).
    let mut sport = 6000;
    while bench.send_flags([10, 10, 0, 51], sport, 80, ACK) != 11 {
        sport += 1;
    }
    assert_eq!(bench.dp.connection_count(a).expect("count"), 1);
    let later = bench.sequence(80, 7000, 200);
    let to_rs12 = later.iter().filter(|s| **s == 12).count();
    assert!(to_rs12 > 130, "{later:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn never_queue_finds_one_idle_server_of_four_as_often_as_two_draws_do() {
    let mut bench = bench();
    let nq = SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY | SERVICE_F_IDLE_FIRST;
    let svc = bench.service(80, SCHED_LEAST_CONN, nq, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
    let counts: Vec<(u32, u32)> = svc
        .reals
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, if i == 3 { 0 } else { 5 }))
        .collect();
    bench.dp.set_connection_counts(&counts).expect("counts");
    // SYNs, not counted: every flow meets one idle server (rs14) among four. Two independent
    // draws find it with 1 - (3/4)^2 = 7/16 (43.75 %); the busy three share the rest.
    let flows = 1600;
    let got = tally(&bench, 80, flows);
    let idle = f64::from(got.get(&14).copied().unwrap_or(0)) / f64::from(flows);
    println!(
        "nq, one idle server of four: {:.1} % of new flows to it",
        idle * 100.0
    );
    assert!((0.39..=0.49).contains(&idle), "{got:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn weighted_failover_sends_every_new_flow_to_the_heaviest_available_server() {
    let mut bench = bench();
    let mut svc = bench.service(80, SCHED_WEIGHT_ORDER, 0, &[(0, 1), (1, 3), (2, 2)]);
    assert_eq!(bench.sequence(80, 1000, 6), vec![12; 6]);
    // rs12 at its upper threshold: the next by weight, rs13.
    let heavy = svc.reals[1].id;
    bench.dp.set_real_thresholds(heavy, 2, 0).expect("-x 2");
    assert_eq!(bench.sequence(80, 2000, 4), vec![12, 12, 13, 13]);
    // Known flows keep their server.
    assert_eq!(bench.send([10, 10, 0, 50], 2000, 80), 12);
    // rs13 quiesced (weight 0): rs11.
    svc.set_weight(&mut bench.dp, RS[2].into(), 0);
    assert_eq!(bench.sequence(80, 3000, 3), vec![11; 3]);
    // rs12 back below its lower threshold: everything to it again.
    bench.dp.set_threshold_counts(&[(heavy, 0)]).expect("count");
    assert_eq!(bench.sequence(80, 4000, 2), vec![12, 12]);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn overflow_fills_the_heaviest_server_up_to_its_weight_then_the_next() {
    let mut bench = bench();
    let svc = bench.service(
        80,
        SCHED_WEIGHT_ORDER,
        SERVICE_F_OVERFLOW,
        &[(0, 1), (1, 2)],
    );
    let (light, heavy) = (svc.reals[0].id, svc.reals[1].id);
    let first = |bench: &Bench, sport: u16| bench.try_send_flags([10, 10, 0, 50], sport, 80, ACK);
    // IPVS's ovf passes a server by once its active connections exceed its weight: rs12 takes
    // a third at 2 of weight 2, then rs11 two, then nothing is left.
    let got: Vec<Option<u8>> = (1000..1006).map(|sport| first(&bench, sport)).collect();
    assert_eq!(
        got,
        [Some(12), Some(12), Some(12), Some(11), Some(11), None]
    );
    assert!(limits(&bench, heavy).is_full() && limits(&bench, light).is_full());
    // Userspace counts what the connection table holds: one of rs12's closed.
    bench
        .dp
        .set_connection_counts(&[(heavy, 2), (light, 2)])
        .expect("counts");
    assert!(!limits(&bench, heavy).is_full());
    assert_eq!(first(&bench, 2000), Some(12));
    // A SYN's flow counts once its handshake completes (IPVS's SYN_RECV is inactive): a burst
    // of SYNs all go to the first server, and their ACKs make it full.
    bench
        .dp
        .set_connection_counts(&[(heavy, 0), (light, 0)])
        .expect("counts");
    let syns = bench.sequence(80, 3000, 4);
    assert_eq!(syns, vec![12; 4]);
    for i in 0..4 {
        assert_eq!(bench.send_flags([10, 10, 0, 50], 3000 + i, 80, ACK), 12);
    }
    assert_eq!(bench.dp.connection_count(heavy).expect("count"), 4);
    assert!(limits(&bench, heavy).is_full());
    assert_eq!(first(&bench, 4000), Some(11));
}
