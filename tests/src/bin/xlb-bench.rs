//! `cargo xtask bench`: xlb's benchmarks, each reported as a ratio against a baseline measured in
//! the same run, so that numbers from different machines and loads compare.
//!
//! - Data path, through BPF_PROG_TEST_RUN with many repeats: ns per packet for a packet that is
//!   not for a VIP (parse and one lookup) and for a packet of a known flow forwarded by direct
//!   routing (parse, service and connection lookups, FIB lookup, MAC rewrite), against the
//!   decapsulator passing a plain packet (about the least an XDP program can do).
//! - Floods, through BPF_PROG_TEST_RUN one packet a call (every packet a flow of its own), with
//!   the connection table and the embryonic table full: ns per packet for a SYN from a new source
//!   (what a SYN flood costs: a miss in both tables, Maglev, an insert into the embryonic table
//!   that evicts its oldest entry), for the first packet of a new flow that is no SYN (an ACK from
//!   a new source: an insert into the connection table that evicts), and for a packet of a known
//!   flow measured the same way (a cold cache line each), against the decapsulator passing a
//!   plain packet the same way.
//! - Thresholds: ns per new flow (a SYN from a new source, one packet a call) under `mh`, `rr`
//!   and `wlc` with an upper connection threshold (`-x`) on the real server that the run never
//!   reaches, against the same without one; and the balancer's verifier count.
//! - Sweep: xlbd's once-a-second walk of a full connection table (262,144 entries) that expires
//!   idle entries (`--set`) and makes the connection counts, with none to expire and with half
//!   of them idle past their timeout.
//! - Maglev: building a 65537-slot table for 100 servers, and for 100, 1000 and 4096 servers of
//!   which one has a weight far above the others', against one server.
//! - Health checks: 10,000 targets checked every second by xlbd's checker, for each check kind
//!   in [`health_check_specs`], in a lab of two namespaces with the checker alone on CPU 0 and
//!   the servers on CPU 1 (`xlb_tests::hcbench`): the busy share of CPU 0, net of its idle
//!   share measured just before and after, against the kernel's floor measured there: the same
//!   rate of bare blocking connect-and-reset exchanges from CPU 0. The servers' side of every
//!   connection runs on CPU 1 and is not counted, as it runs on other machines in production.
//!
//! - Control: xlbd (release build) in a namespace of its own; the time `xlbadm -R` takes to
//!   apply 512 services × 8 real servers (each with an address of its own) to an empty balancer,
//!   and the median time of one change (`-e`, a weight) on that balancer, against the round trip
//!   of `xlbadm -S -n` on it (spawning xlbadm, one request, the whole state back).
//!
//! Needs root (it loads XDP programs and makes network namespaces) and two CPUs.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::{
    conntrack::CONN_F_EMBRYONIC,
    limits::{MAX_CONNECTIONS, MAX_EMBRYONIC},
    Connection, FlowKey, Forwarding, RealServer, ServiceKey, FAMILY_V4, PROTO_TCP,
};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    decap::Decapsulator,
    health::bench,
    maglev,
    state::health::{Check, CheckKind, CheckSpec, Timing},
};
use xlb_tests::{
    daemon::Daemon,
    hcbench::{self, Lab, CHECKER_CPU, SERVERS_CPU},
    netns::Netns,
    packet::{Ipv4Packet, ACK, SYN},
    root, scale,
};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};

const REPEAT: u32 = 2_000_000;

/// Nanoseconds per run of `program` on `packet`, arriving on `ifindex`: the best of five rounds.
fn ns_per_packet(ns: &Netns, program: &Xdp, packet: &[u8], ifindex: u32) -> f64 {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut out = vec![0u8; packet.len() + 256];
        let result = ns.enter(|| {
            program.test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: REPEAT,
                ..TestRunOptions::default()
            })
        });
        let result = result.unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        // The kernel reports the mean duration of one run.
        best = best.min(result.duration.as_nanos() as f64);
    }
    best
}

/// The balancer's namespace of the benches: fx0 at 10.10.0.1/24, forwarding on, the real server
/// 10.10.0.21's neighbour entry; fx0's index; and a data path for 8 services.
fn bench_lab(name: &str) -> (Netns, u32, Dataplane) {
    let ns = Netns::new(name);
    ns.sh(
        "ip link add fx0 type veth peer name fx1 && ip link set fx0 up && ip link set fx1 up && \
         ip addr add 10.10.0.1/24 dev fx0 && sysctl -qw net.ipv4.conf.fx0.forwarding=1 && \
         ip neigh replace 10.10.0.21 lladdr 02:00:00:00:01:21 dev fx0 nud permanent",
    );
    let ifindex = ns.ifindex("fx0");
    let dp = Dataplane::load(&LoadOptions {
        max_services: Some(8),
        ..LoadOptions::default()
    })
    .expect("load the data path");
    (ns, ifindex, dp)
}

/// The Maglev service 10.10.0.100:80 with its one real server, 10.10.0.21 by direct routing.
fn one_real_service(dp: &mut Dataplane) -> (ServiceKey, lb_userspace::dataplane::RealId) {
    let key = ServiceKey::v4(0x0a0a_0064, 80, PROTO_TCP);
    let service = dp.upsert_service(key, 0, 0).expect("service");
    let id = dp
        .add_real(
            service,
            RealServer::v4(0x0a0a_0015, Forwarding::DirectRoute),
        )
        .expect("real");
    let table = maglev::build(&[maglev::Backend {
        identity: &[10, 10, 0, 21, 0, 80],
        id,
        weight: 1,
    }]);
    dp.set_maglev_table(key, &table).expect("table");
    (key, id)
}

fn data_path() {
    let (ns, ifindex, mut dp) = bench_lab("bench");
    one_real_service(&mut dp);
    let decap = Decapsulator::load(&[IpAddr::from([10, 10, 0, 1])], None).expect("decapsulator");

    let plain = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 99], 80, ACK).build();
    let to_vip = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 100], 80, ACK).build();
    let balancer = dp.program().expect("balancer");
    if let Some(n) = balancer
        .info()
        .ok()
        .and_then(|info| info.verified_instruction_count())
    {
        println!("balancer: {n} instructions processed by the verifier");
    }
    let baseline = ns_per_packet(&ns, decap.program().expect("decap"), &plain, ifindex);
    let pass = ns_per_packet(&ns, balancer, &plain, ifindex);
    let forward = ns_per_packet(&ns, balancer, &to_vip, ifindex);
    println!("data path (BPF_PROG_TEST_RUN, {REPEAT} repeats, best of 5):");
    println!("  baseline: decapsulator passing a plain packet   {baseline:>7.1} ns   1.00");
    println!(
        "  balancer: packet not for a VIP (passed)          {pass:>7.1} ns   {:.2}",
        pass / baseline
    );
    println!(
        "  balancer: known flow, direct routing (XDP_TX)    {forward:>7.1} ns   {:.2}",
        forward / baseline
    );
}

/// The `i`th source of the flood benchmark: one address each (in 11.0.0.0 to 100.255.255.255,
/// no martian) and a port.
fn source(i: u32) -> ([u8; 4], u16) {
    let [_, b, c, d] = i.to_be_bytes();
    (
        [11 + ((i >> 24) % 90) as u8, b, c, d],
        1024 + (i % 60_000) as u16,
    )
}

/// The flow key of a TCP packet from the `i`th source to 10.10.0.100:80.
fn source_flow(i: u32) -> FlowKey {
    let (src, sport) = source(i);
    FlowKey {
        src: [u32::from_ne_bytes(src), 0, 0, 0],
        dst: [u32::from_ne_bytes([10, 10, 0, 100]), 0, 0, 0],
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

/// Mean ns per run of `program` over `packets`, each run once (the kernel's duration of that
/// one run), in the namespace of `ns`.
fn ns_per_distinct_packet(ns: &Netns, program: &Xdp, packets: &[Vec<u8>], ifindex: u32) -> f64 {
    let mut ctx = [0u8; 24];
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let total: u128 = ns.enter(|| {
        packets
            .iter()
            .map(|packet| {
                ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
                let mut out = vec![0u8; packet.len() + 256];
                program
                    .test_run(TestRunOptions {
                        data_in: Some(packet),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx),
                        repeat: 1,
                        ..TestRunOptions::default()
                    })
                    .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
                    .duration
                    .as_nanos()
            })
            .sum()
    });
    total as f64 / packets.len() as f64
}

/// Packets a flood benchmark round sends per case.
const FLOOD_PACKETS: u32 = 20_000;

/// New flows per round and case of the thresholds benchmark.
const THRESHOLD_PACKETS: u32 = 20_000;

/// What an upper connection threshold costs a new flow (see the module's comment).
fn thresholds() {
    let (ns, ifindex, mut dp) = bench_lab("thresh");
    if let Some(n) = dp
        .program()
        .ok()
        .and_then(|p| p.info().ok())
        .and_then(|info| info.verified_instruction_count())
    {
        println!("balancer: {n} instructions processed by the verifier");
    }
    use lb_common::service::{SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_SEQUENCE, SERVICE_F_WEIGHTED};
    let schedulers = [
        ("mh", 80u16, SCHED_MAGLEV, 0),
        ("rr", 81, SCHED_SEQUENCE, 0),
        ("wlc", 82, SCHED_LEAST_CONN, SERVICE_F_WEIGHTED),
    ];
    let mut reals = Vec::new();
    for (_, port, scheduler, flags) in schedulers {
        let key = ServiceKey::v4(0x0a0a_0064, port, PROTO_TCP);
        let service = dp.upsert_service(key, scheduler, flags).expect("service");
        let real = dp
            .add_real(
                service,
                RealServer::v4(0x0a0a_0015, Forwarding::DirectRoute),
            )
            .expect("real");
        // One server: Maglev's table, rr's sequence of one and lc's every slot are all it.
        dp.set_maglev_table(key, &vec![real; 65537]).expect("table");
        dp.set_real_weights(&[(real, 1)]).expect("weight");
        if scheduler == SCHED_SEQUENCE {
            let mut sequence = vec![0; 65537];
            sequence[0] = real;
            dp.set_maglev_table(key, &sequence).expect("sequence");
        }
        reals.push(real);
    }
    println!(
        "thresholds (BPF_PROG_TEST_RUN, one run per packet, {THRESHOLD_PACKETS} SYNs of new flows, \
         best of 5 rounds, with and without -x in turn, either first):"
    );
    for (case, ((name, port, _, _), real)) in schedulers.iter().zip(&reals).enumerate() {
        let mut best = [f64::MAX; 2];
        for round in 0..5u32 {
            // Which goes first alternates with the round.
            for step in 0..2usize {
                let with = (step + round as usize) % 2;
                let best = &mut best[with];
                let upper = if with == 1 { 2_000_000_000 } else { 0 };
                dp.set_real_thresholds(*real, upper, 0).expect("thresholds");
                let first = (10 + case as u32 * 10 + round * 2 + with as u32) << 24;
                let syns: Vec<Vec<u8>> = (first..first + THRESHOLD_PACKETS)
                    .map(|i| {
                        let (src, sport) = source(i);
                        Ipv4Packet::tcp(src, sport, [10, 10, 0, 100], *port, SYN).build()
                    })
                    .collect();
                let balancer = dp.program().expect("balancer");
                *best = best.min(ns_per_distinct_packet(&ns, balancer, &syns, ifindex));
            }
        }
        let [without, with] = best;
        println!(
            "  {name:<4} new flow: without -x {without:>7.1} ns, with -x {with:>7.1} ns   {:.2}",
            with / without
        );
    }
}

/// What xlbd's sweep of a full connection table costs (see the module's comment).
fn sweep() {
    let (_ns, _ifindex, mut dp) = bench_lab("sweep");
    let (key, real) = one_real_service(&mut dp);
    let service = dp.service(&key).expect("the service").id;
    let fill = |dp: &mut Dataplane, idle_every: u32| {
        let now = lb_userspace::runtime::monotonic_ns();
        for i in 0..MAX_CONNECTIONS {
            let idle = idle_every != 0 && i % idle_every == 0;
            let conn = Connection {
                real,
                service,
                last_seen_ns: if idle { 0 } else { now },
                flags: 0,
                service_epoch: dp.service_epoch(service).expect("epoch"),
            };
            dp.insert_connection(source_flow(i), conn, false)
                .expect("fill the connection table");
        }
    };
    fill(&mut dp, 0);
    let mut runtime = lb_userspace::runtime::Runtime::new(dp, None);
    let mut none = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        runtime.sweep();
        none = none.min(started.elapsed().as_secs_f64() * 1e3);
    }
    let mut dp = runtime.into_datapath();
    fill(&mut dp, 2);
    let before = dp.connections().expect("read").len();
    let mut runtime = lb_userspace::runtime::Runtime::new(dp, None);
    let started = Instant::now();
    runtime.sweep();
    let half = started.elapsed().as_secs_f64() * 1e3;
    let after = runtime.datapath().connections().expect("read").len();
    println!(
        "sweep of a full connection table ({before} entries): nothing to expire {none:.1} ms \
         (best of 5); {} of them expired {half:.1} ms",
        before - after
    );
}

/// What a SYN flood costs per packet, with full tables (see the module's comment).
fn flood() {
    let (ns, ifindex, mut dp) = bench_lab("flood");
    let (key, real) = one_real_service(&mut dp);
    let service = dp.service(&key).expect("the service").id;
    let established = Connection {
        real,
        service,
        last_seen_ns: 0,
        flags: 0,
        service_epoch: dp.service_epoch(service).expect("epoch"),
    };
    // Both tables filled past their size from userspace (each CPU keeps its own share of an
    // LRU's entries, so every insert below evicts).
    let started = Instant::now();
    for i in 0..MAX_CONNECTIONS * 2 {
        dp.insert_connection(source_flow(i), established, false)
            .expect("fill the connection table");
    }
    let embryonic = Connection {
        flags: CONN_F_EMBRYONIC,
        ..established
    };
    let base = 1 << 24;
    for i in base..base + MAX_EMBRYONIC * 2 {
        dp.insert_connection(source_flow(i), embryonic, false)
            .expect("fill the embryonic table");
    }
    let entries = dp.connections().expect("read the tables");
    let young = entries
        .iter()
        .filter(|(_, c)| c.flags & CONN_F_EMBRYONIC != 0)
        .count();
    println!(
        "flood (BPF_PROG_TEST_RUN, one run per packet, {FLOOD_PACKETS} packets, best of 5; tables \
         filled in {:.1} s: {} connections, {young} embryonic):",
        started.elapsed().as_secs_f64(),
        entries.len() - young
    );
    let decap = Decapsulator::load(&[IpAddr::from([10, 10, 0, 1])], None).expect("decapsulator");
    let balancer = dp.program().expect("balancer");
    // The known flows: the last ones in, still in the table.
    let known: Vec<Vec<u8>> = (0..FLOOD_PACKETS)
        .map(|i| {
            let (src, sport) = source(MAX_CONNECTIONS * 2 - 1 - i * 3);
            Ipv4Packet::tcp(src, sport, [10, 10, 0, 100], 80, ACK).build()
        })
        .collect();
    let plain: Vec<Vec<u8>> = (0..FLOOD_PACKETS)
        .map(|i| {
            let (src, sport) = source(i);
            Ipv4Packet::tcp(src, sport, [10, 10, 0, 99], 80, ACK).build()
        })
        .collect();
    let mut best = [f64::MAX; 4];
    for round in 0..5 {
        // New sources every round and case.
        let fresh = |case: u32, flags: u8| -> Vec<Vec<u8>> {
            let first = (2 + case * 5 + round) << 24;
            (first..first + FLOOD_PACKETS)
                .map(|i| {
                    let (src, sport) = source(i);
                    Ipv4Packet::tcp(src, sport, [10, 10, 0, 100], 80, flags).build()
                })
                .collect()
        };
        let (syns, acks) = (fresh(0, SYN), fresh(1, ACK));
        let runs = [
            ns_per_distinct_packet(&ns, decap.program().expect("decap"), &plain, ifindex),
            ns_per_distinct_packet(&ns, balancer, &known, ifindex),
            ns_per_distinct_packet(&ns, balancer, &syns, ifindex),
            ns_per_distinct_packet(&ns, balancer, &acks, ifindex),
        ];
        for (best, run) in best.iter_mut().zip(runs) {
            *best = best.min(run);
        }
    }
    let [baseline, known, syn, ack] = best;
    println!("  baseline: decapsulator passing a plain packet   {baseline:>7.1} ns   1.00");
    for (what, ns) in [
        ("known flow, direct routing (XDP_TX)     ", known),
        ("SYN from a new source (a flood's packet)", syn),
        ("new flow without SYN (ACK, new source)  ", ack),
    ] {
        println!("  balancer: {what} {ns:>7.1} ns   {:.2}", ns / baseline);
    }
}

/// A Maglev bench case: its name, its number of servers and the weight of server `i`.
type MaglevCase = (&'static str, usize, fn(usize) -> u32);

fn maglev_build() {
    let identities: Vec<Vec<u8>> = (0..4096u16)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            vec![10, 1, hi, lo, 0, 80]
        })
        .collect();
    let time = |n: usize, weight: fn(usize) -> u32| {
        let backends: Vec<maglev::Backend<'_>> = identities[..n]
            .iter()
            .enumerate()
            .map(|(i, identity)| maglev::Backend {
                identity,
                id: i as u32 + 1,
                weight: weight(i),
            })
            .collect();
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            std::hint::black_box(maglev::build(&backends));
            best = best.min(start.elapsed());
        }
        best
    };
    // One server at ipvsadm's largest weight among servers of weight 1: the case where a
    // round-by-round builder spends most rounds on servers that claim nothing.
    let skewed: fn(usize) -> u32 = |i| if i == 0 { 65535 } else { 1 };
    let one = time(1, |_| 1);
    println!("maglev table build (65537 slots, best of 5):");
    println!(
        "  baseline: 1 server                      {:>8.2} ms   1.00",
        one.as_secs_f64() * 1e3
    );
    let cases: [MaglevCase; 6] = [
        ("8 servers, weight 1 (a usual service)", 8, |_| 1),
        ("8 servers, weights 1-3", 8, |i| 1 + (i as u32 % 3)),
        ("100 servers, weights 1-3", 100, |i| 1 + (i as u32 % 3)),
        ("100 servers, one of weight 65535", 100, skewed),
        ("1000 servers, one of weight 65535", 1000, skewed),
        ("4096 servers, one of weight 65535", 4096, skewed),
    ];
    for (name, n, weight) in cases {
        let took = time(n, weight);
        println!(
            "  {name:<38}  {:>8.2} ms   {:.2}",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() / one.as_secs_f64()
        );
    }
}

/// The check kinds the health-check bench compares: one entry each (their timing is set by the
/// bench). Each must pass against the lab's servers, which accept TCP connections and close them.
fn health_check_specs() -> Vec<CheckSpec> {
    vec![
        CheckSpec::new(Check::Tcp),
        CheckSpec::new(Check::TcpHalfOpen),
    ]
}

/// `time` over `wall`: 1.0 is one core busy.
fn share(time: Duration, wall: Duration) -> f64 {
    time.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// `cpu`'s busy share over `window` with nothing of ours running on it.
fn idle_share(window: Duration) -> anyhow::Result<f64> {
    let (wall, busy) = hcbench::idle_busy(CHECKER_CPU, window)?;
    Ok(share(busy, wall))
}

fn health_checks() -> anyhow::Result<()> {
    const TARGETS: usize = 10_000;
    const GOAL: f64 = 0.10;
    // Above this idle share of CPU 0, other work on the machine is too much to take out.
    const NOISY: f64 = 0.05;
    let interval = Duration::from_secs(1);
    let window = Duration::from_secs(5);
    let lab = Lab::new(TARGETS).context("build the health-check lab")?;
    let rps = lab.verify_rps(2_000).context("verify RPS steering")?;
    let rate = TARGETS as f64 / interval.as_secs_f64();

    // Each measure is taken net of CPU 0's idle share (the machine's background) measured over
    // a window of the same length just before and just after it.
    let quiet = hcbench::wait_quiet(CHECKER_CPU, NOISY / 2.0, Duration::from_secs(30))?;
    let idle_before = idle_share(window)?;
    // The floor: what the kernel alone spends on the client's core for one TCP connect check.
    let bare = lab.bare_connects(window)?;
    let mut idle_after = idle_share(window)?;
    let idle = (idle_before + idle_after) / 2.0;
    let connections = bare.connections as f64;
    let per_connection_raw = bare.busy.as_secs_f64() / connections;
    let per_connection =
        (bare.busy.as_secs_f64() - idle * bare.wall.as_secs_f64()).max(0.0) / connections;
    let floor = per_connection * rate;
    // The half-open check's floor: bare SYN probes at the same rate and in the bursts the
    // checker makes (its checks start on a grid of a hundredth of the interval, at most 10 ms:
    // 100 SYNs every 10 ms here), same raw socket and filter, without the engine.
    let step = (interval / 100).clamp(Duration::from_millis(1), Duration::from_millis(10));
    let per_round =
        usize::try_from((TARGETS as u128 * step.as_nanos() / interval.as_nanos().max(1)).max(1))
            .unwrap_or(1);
    let half = lab.bare_half_open(window, per_round, step)?;
    let idle_after_half = idle_share(window)?;
    let idle_half = (idle_after + idle_after_half) / 2.0;
    let probes = half.connections as f64;
    let per_probe =
        (half.busy.as_secs_f64() - idle_half * half.wall.as_secs_f64()).max(0.0) / probes;
    let half_floor = per_probe * rate;
    idle_after = idle_after_half;

    println!(
        "health checks ({TARGETS} targets every {interval:?}, {window:?} measured; busy share of \
         CPU {CHECKER_CPU} from /proc/stat, net of its idle share; servers on CPU {SERVERS_CPU}):"
    );
    println!("  {rps}");
    println!(
        "  {:<40}  {:>6.1}% of one core          (before and after: {:.1}%, {:.1}%; last second of the wait for a quiet machine: {:.1}%)",
        format!("idle: CPU {CHECKER_CPU} without the checker"),
        idle * 100.0,
        idle_before * 100.0,
        idle_after * 100.0,
        quiet * 100.0
    );
    println!(
        "  {:<40}  {:>6.1}% of one core   1.00   ({} in {:.1?}: {:.1} µs each, raw {:.1}%, its thread {:.1}%)",
        "baseline: bare connect+reset, same rate",
        floor * 100.0,
        bare.connections,
        bare.wall,
        per_connection * 1e6,
        per_connection_raw * rate * 100.0,
        bare.thread.as_secs_f64() / connections * rate * 100.0,
    );
    println!(
        "  {:<40}  {:>6.1}% of one core   {:.2}   ({} in {:.1?}: {:.1} µs each, raw {:.1}%, its thread {:.1}%)",
        "floor, half-open: bare SYN probes, same pace",
        half_floor * 100.0,
        half_floor / floor,
        half.connections,
        half.wall,
        per_probe * 1e6,
        half.busy.as_secs_f64() / probes * rate * 100.0,
        half.thread.as_secs_f64() / probes * rate * 100.0,
    );
    for spec in health_check_specs() {
        let spec = CheckSpec {
            timing: Timing {
                interval,
                timeout: interval / 2,
                ..spec.timing
            },
            ..spec
        };
        let kind = spec.check.kind();
        let drops_before = lab.listen_drops()?;
        let idle_before = idle_after;
        let report = hcbench::on_cpu(CHECKER_CPU, &lab.checker, || {
            bench::run_targets(&lab.targets, &spec, window, || {
                hcbench::busy_time(CHECKER_CPU)
            })
            .with_context(|| format!("the {kind} health-check bench"))
        })?;
        idle_after = idle_share(window)?;
        let drops = lab.listen_drops()? - drops_before;
        let idle = (idle_before + idle_after) / 2.0;
        let raw = report.cpu_share();
        let net = (raw - idle).max(0.0);
        // Each kind against the bare kernel exchange it makes.
        let own_floor = match kind {
            CheckKind::TcpHalfOpen => half_floor,
            _ => floor,
        };
        // A floor lost in the machine's background (net share under 0.1 % of a core) gives no
        // ratio.
        let ratio = |of: f64, to: f64| {
            if to >= 0.001 {
                format!("{:.2}×", of / to)
            } else {
                "n/a×".to_owned()
            }
        };
        // Half-open: the process (the checker and its prober's thread; the servers are never
        // woken) against the floor's thread, a ratio that a busy machine hardly moves.
        let threads_ratio = match kind {
            CheckKind::TcpHalfOpen => format!(
                "; process vs the floor's thread {}",
                ratio(
                    report.share(report.process_cpu),
                    half.thread.as_secs_f64() / probes * rate
                )
            ),
            _ => String::new(),
        };
        println!(
            "  {:<40}  {:>6.1}% of one core   {:.2}   ({} its kernel floor; raw {:.1}%, idle after {:.1}%, checker threads {:.1}%, whole process with the servers {:.1}%{threads_ratio})",
            format!("xlbd's checker, {kind}"),
            net * 100.0,
            net / floor,
            ratio(net, own_floor),
            raw * 100.0,
            idle_after * 100.0,
            report.share(report.threads_cpu) * 100.0,
            report.share(report.process_cpu) * 100.0,
        );
        // The checker's own threads' time is a lower bound that the machine's background
        // cannot inflate: over the goal, the verdict stands whatever the background did.
        let threads = report.share(report.threads_cpu);
        let noisy = idle_before.max(idle_after) > NOISY;
        let verdict = if threads >= GOAL || (!noisy && net >= GOAL) {
            "FAIL"
        } else if noisy {
            "UNSURE"
        } else {
            "PASS"
        };
        println!(
            "  goal, {kind}: {TARGETS} targets at {interval:?} under {:.0}% of one core: {verdict} ({:.1}%, its threads alone {:.1}%{})",
            GOAL * 100.0,
            net * 100.0,
            threads * 100.0,
            if noisy {
                format!(
                    "; the machine was busy: CPU {CHECKER_CPU}'s idle share up to {:.1}%",
                    idle_before.max(idle_after) * 100.0
                )
            } else {
                String::new()
            }
        );
        println!(
            "  on time, {kind}: worst lateness {:.1?}, {} of {} checks started more than {:?} late; {} failed; {drops} connections dropped by full listen queues",
            report.max_lateness, report.late, report.checks, interval / 10, report.failures
        );
        println!("  {report}");
    }
    Ok(())
}

/// `xlb-bench [data-path|maglev|health]...`: the named benchmarks, or all of them.
/// The median of `runs` timings of `f`.
fn median_of(runs: usize, mut f: impl FnMut(usize) -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(&mut f).collect();
    times.sort();
    times[runs / 2]
}

fn control() -> anyhow::Result<()> {
    const SERVICES: usize = 512;
    const REALS: usize = 8;
    let ns = scale::namespace("ctlbench");
    let daemon = Daemon::start(&ns);
    let (out, restore) = scale::restore(&daemon, &scale::rules(SERVICES, REALS));
    anyhow::ensure!(
        out.status.success(),
        "xlbadm -R failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timed = |args: &[&str]| {
        let start = Instant::now();
        daemon.adm_ok(args);
        start.elapsed()
    };
    let vip = format!("{}:80", scale::vip(SERVICES / 2));
    let real = "10.8.8.1:80";
    let edit = median_of(21, |i| {
        let weight = (2 + i % 2).to_string();
        timed(&["-e", "-t", &vip, "-r", real, "-g", "-w", &weight])
    });
    let save = median_of(21, |_| timed(&["-S", "-n"]));
    let list = median_of(21, |_| timed(&["-L", "-n"]));
    let stats = median_of(21, |_| timed(&["-L", "-n", "--stats"]));
    let one = median_of(21, |_| timed(&["-L", "-n", "-t", &vip]));
    // What the idle daemon spends holding the balancer: each second it samples every counter
    // for the rates and the metrics, and sweeps the tables.
    let idle = Duration::from_secs(10);
    let cpu_before = process_cpu(daemon.pid())?;
    std::thread::sleep(idle);
    let idle_cpu = process_cpu(daemon.pid())? - cpu_before;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("control ({SERVICES} services × {REALS} real servers, release xlbd and xlbadm):");
    println!(
        "  baseline: xlbadm -S -n round trip (median of 21)   {:>8.1} ms   1.00",
        ms(save)
    );
    println!(
        "  xlbadm -R of {SERVICES} × {REALS} on an empty balancer    {:>8.1} ms   {:.1}",
        ms(restore),
        ms(restore) / ms(save)
    );
    let rows = [
        (
            "xlbadm -e of one weight (median of 21)           ".to_owned(),
            edit,
        ),
        (
            "xlbadm -L -n (median of 21)                      ".to_owned(),
            list,
        ),
        (
            "xlbadm -L -n --stats (median of 21)              ".to_owned(),
            stats,
        ),
        (
            "xlbadm -L -n -t VIP, one service (median of 21)  ".to_owned(),
            one,
        ),
        (
            format!("xlbd idle, CPU time per second of {idle:?}          "),
            idle_cpu.div_f64(idle.as_secs_f64()),
        ),
    ];
    for (label, took) in rows {
        println!("  {label}{:>8.1} ms   {:.2}", ms(took), ms(took) / ms(save));
    }
    Ok(())
}

/// The CPU time (user and system) process `pid` has used so far, from /proc/PID/stat.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command's closing parenthesis; utime and stime are the 14th and
    // 15th of the line, the 12th and 13th after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("/proc/PID/stat is shorter than expected")?
            .parse()
            .context("a CPU time in /proc/PID/stat is not a number")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        (ticks(11)? + ticks(12)?) * 1_000_000_000 / hz,
    ))
}

fn main() -> anyhow::Result<()> {
    root::require();
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if let Some(unknown) = only.iter().find(|o| {
        ![
            "data-path",
            "flood",
            "thresholds",
            "sweep",
            "maglev",
            "health",
            "control",
        ]
        .contains(&o.as_str())
    }) {
        anyhow::bail!(
            "unknown benchmark {unknown:?} (expected data-path, flood, thresholds, sweep, maglev, \
             health or control)"
        );
    }
    if wanted("data-path") {
        data_path();
    }
    if wanted("flood") {
        // On one CPU, whose share of each LRU table the fill filled.
        std::thread::spawn(|| {
            hcbench::pin(1).expect("pin the flood benchmark to CPU 1");
            flood();
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the flood benchmark failed"))?;
    }
    if wanted("thresholds") {
        thresholds();
    }
    if wanted("sweep") {
        sweep();
    }
    if wanted("maglev") {
        maglev_build();
    }
    if wanted("health") {
        health_checks()?;
    }
    if wanted("control") {
        control()?;
    }
    Ok(())
}
