//! `cargo xtask bench`: xlb's benchmarks, each reported as a ratio against a baseline measured in
//! the same run, so that numbers from different machines and loads compare.
//!
//! - Data path, through BPF_PROG_TEST_RUN with many repeats: ns per packet for a packet that is
//!   not for a VIP (parse and one lookup) and for a packet of a known flow forwarded by direct
//!   routing (parse, service and connection lookups, FIB lookup, MAC rewrite), against the
//!   decapsulator passing a plain packet (about the least an XDP program can do).
//! - Maglev: building a 65537-slot table for 100 servers, against one server.
//! - Health checks: 10,000 TCP targets checked every second, the share of one core the process
//!   uses, against the kernel's floor measured here: the same number of bare blocking
//!   connect-and-reset exchanges on loopback, listener included.
//!
//! Needs root (it loads XDP programs and makes a network namespace).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{Forwarding, RealServer, ServiceKey, PROTO_TCP};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    decap::Decapsulator,
    maglev,
};
use xlb_tests::{
    netns::Netns,
    packet::{Ipv4Packet, ACK},
    root,
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

fn data_path() {
    let ns = Netns::new("bench");
    ns.sh(
        "ip link add fx0 type veth peer name fx1 && ip link set fx0 up && ip link set fx1 up && \
         ip addr add 10.10.0.1/24 dev fx0 && sysctl -qw net.ipv4.conf.fx0.forwarding=1 && \
         ip neigh replace 10.10.0.21 lladdr 02:00:00:00:01:21 dev fx0 nud permanent",
    );
    let ifindex = ns.ifindex("fx0");
    let mut dp = Dataplane::load(&LoadOptions {
        max_services: Some(8),
        ..LoadOptions::default()
    })
    .expect("load the data path");
    let key = ServiceKey::v4(0x0a0a_0064, 80, PROTO_TCP);
    dp.upsert_service(key, 0).expect("service");
    let id = dp
        .add_real(RealServer::v4(0x0a0a_0015, Forwarding::DirectRoute))
        .expect("real");
    let table = maglev::build(&[maglev::Backend {
        identity: &[10, 10, 0, 21, 0, 80],
        id,
        weight: 1,
    }]);
    dp.set_maglev_table(key, &table).expect("table");
    let decap = Decapsulator::load(&[IpAddr::from([10, 10, 0, 1])], None).expect("decapsulator");

    let plain = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 99], 80, ACK).build();
    let to_vip = Ipv4Packet::tcp([10, 10, 0, 50], 40000, [10, 10, 0, 100], 80, ACK).build();
    let balancer = dp.program().expect("balancer");
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

fn maglev_build() {
    let identities: Vec<Vec<u8>> = (0..100u8).map(|i| vec![10, 1, 0, i, 0, 80]).collect();
    let time = |n: usize| {
        let backends: Vec<maglev::Backend<'_>> = identities[..n]
            .iter()
            .enumerate()
            .map(|(i, identity)| maglev::Backend {
                identity,
                id: i as u32 + 1,
                weight: 1 + (i as u32 % 3),
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
    let one = time(1);
    let hundred = time(100);
    println!("maglev table build (65537 slots, best of 5):");
    println!(
        "  baseline: 1 server      {:>8.2} ms   1.00",
        one.as_secs_f64() * 1e3
    );
    println!(
        "  100 weighted servers    {:>8.2} ms   {:.2}",
        hundred.as_secs_f64() * 1e3,
        hundred.as_secs_f64() / one.as_secs_f64()
    );
}

/// CPU time (user and system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: all zeroes is a valid rusage, and getrusage writes one through a valid pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU seconds per bare TCP connect + reset on loopback, listener included.
fn bare_connect_cost(connections: u32) -> f64 {
    use std::{net::TcpListener, net::TcpStream, os::fd::AsRawFd as _};
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let start = cpu_time();
    for _ in 0..connections {
        let stream = TcpStream::connect(addr).expect("connect");
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a valid linger value on an open socket.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
    (cpu_time() - start).as_secs_f64() / f64::from(connections)
}

fn health_checks() {
    let targets = 10_000;
    let report =
        lb_userspace::health::bench::run(targets, Duration::from_secs(1), Duration::from_secs(5))
            .expect("the health-check bench");
    let floor = bare_connect_cost(20_000) * targets as f64;
    println!("health checks ({targets} TCP targets, 1 s interval, 5 s):");
    println!(
        "  baseline: bare connect+reset, same rate   {:>6.1}% of one core   1.00",
        floor * 100.0
    );
    println!(
        "  xlbd's checker                            {:>6.1}% of one core   {:.2}",
        report.cpu_share() * 100.0,
        report.cpu_share() / floor
    );
    println!("  {report}");
}

fn main() {
    root::require();
    data_path();
    maglev_build();
    health_checks();
}
