//! A SYN flood through xlbd: SYNs from random sources, sent from the client's namespace on a raw
//! socket, more of them than the connection table holds, while kept-alive connections run
//! through the balancer to a real server that gets no new flow (weight 0: only the connection
//! table sends them there) and `xlbadm -L -n` is timed all along.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_common::limits::{MAX_CONNECTIONS, MAX_EMBRYONIC};
use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    packet::{Ipv4Packet, SYN},
    root,
};

/// SYNs in the flood: twice the connection table's size.
const FLOOD: u32 = 2 * MAX_CONNECTIONS;

/// The flood stops sending after this long, whatever it sent (the kept-alive clients give up
/// after 60 s).
const FLOOD_LIMIT: Duration = Duration::from_secs(30);

/// Sends up to [`FLOOD`] SYNs to the VIP's port 80 from random sources through a raw socket of
/// the calling thread's namespace, until `stop`; returns how many were sent.
fn flood(stop: &AtomicBool) -> u32 {
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "a raw socket: {}", std::io::Error::last_os_error());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(VIP.octets()),
        },
        sin_zero: [0; 8],
    };
    let started = Instant::now();
    let mut sent = 0;
    let mut x: u32 = 0x9e37_79b9;
    while sent < FLOOD && !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_LIMIT {
        // xorshift32: sources over 11.0.0.0 to 100.255.255.255 (no martian), random ports.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let [a, b, c, d] = x.to_be_bytes();
        let src = [11 + a % 90, b, c, d];
        let sport = 1024 + (x >> 3) as u16 % 60_000;
        let frame = Ipv4Packet::tcp(src, sport, VIP.octets(), 80, SYN).build();
        let ip = &frame[14..];
        // SAFETY: sendto(2) reads `ip` and `to` through valid pointers with their lengths.
        let n = unsafe {
            libc::sendto(
                fd,
                ip.as_ptr().cast(),
                ip.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A full queue: let it drain.
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOBUFS),
                "sending the flood: {e}"
            );
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        sent += 1;
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    sent
}

/// The median and the largest of `times`, in ms.
fn median_max(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(times[times.len() / 2]), ms(times[times.len() - 1]))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_syn_flood_keeps_established_connections_and_the_control_plane_answers() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");
    let (rs1, rs2) = (
        format!("{}:80", real_addr(0)),
        format!("{}:80", real_addr(1)),
    );
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "rr"]);
    daemon.adm_ok(&["-a", "-t", &vip, "-r", &rs1, "-g", "-w", "1"]);
    daemon.adm_ok(&["-a", "-t", &vip, "-r", &rs2, "-g", "-w", "0"]);

    // Kept-alive connections to rs1, which then takes no new flow: only their entries in the
    // connection table send them there.
    let mut kept: Vec<KeepAliveClient> = (0..4)
        .map(|_| {
            let (client, owner) = KeepAliveClient::open(&lab.client);
            assert_eq!(owner, "rs1");
            client
        })
        .collect();
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs1, "-g", "-w", "0"]);
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "1"]);

    // `-L -n` counts each server's connections from both tables; `-S -n` (the rules alone)
    // shows what the load of the flood on the machine costs any request.
    let timed = |args: &[&str]| {
        let started = Instant::now();
        daemon.adm_ok(args);
        started.elapsed()
    };
    let list = || timed(&["-L", "-n"]);
    let save = || timed(&["-S", "-n"]);
    let mut quiet: Vec<Duration> = (0..10).map(|_| list()).collect();

    let stop = AtomicBool::new(false);
    let (sent, took, mut flooded, mut saved) = std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            let started = Instant::now();
            let sent = lab.client.enter(|| flood(&stop));
            (sent, started.elapsed())
        });
        let (mut lists, mut saves) = (Vec::new(), Vec::new());
        while !flooder.is_finished() {
            lists.push(list());
            saves.push(save());
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let (sent, took) = flooder.join().expect("the flood's thread");
        (sent, took, lists, saves)
    });
    let (quiet_median, quiet_max) = median_max(&mut quiet);
    let (median, max) = median_max(&mut flooded);
    let (save_median, save_max) = median_max(&mut saved);
    eprintln!(
        "flood: {sent} SYNs in {:.1} s ({:.0}/s); xlbadm -L -n before: median {quiet_median:.1} \
         ms, max {quiet_max:.1} ms; during ({} runs): median {median:.1} ms, max {max:.1} ms; \
         xlbadm -S -n during: median {save_median:.1} ms, max {save_max:.1} ms",
        took.as_secs_f64(),
        f64::from(sent) / took.as_secs_f64(),
        flooded.len()
    );
    assert!(
        sent > MAX_CONNECTIONS,
        "only {sent} SYNs sent in {FLOOD_LIMIT:?}: the flood is too small to prove anything"
    );
    assert!(
        max < 2000.0,
        "xlbadm -L -n took up to {max:.0} ms during the flood"
    );

    // Every kept connection still reaches rs1.
    for (i, client) in kept.iter_mut().enumerate() {
        assert_eq!(
            client.again(),
            "rs1",
            "kept connection {i} moved during the flood"
        );
    }
    // The flood's flows are listed as SYN_RECV (those of the last minute, at most the embryonic
    // table's size).
    let listing = daemon.adm_ok(&["-L", "-c", "-n"]);
    let embryonic = listing.lines().filter(|l| l.contains("SYN_RECV")).count();
    eprintln!("xlbadm -L -c after the flood: {embryonic} SYN_RECV entries");
    assert!(
        embryonic > 1000 && embryonic <= MAX_EMBRYONIC as usize,
        "{embryonic} SYN_RECV entries listed"
    );
}
