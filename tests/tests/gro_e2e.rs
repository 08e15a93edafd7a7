//! Generic mode and merged super-packets, end to end: a client with TSO on uploads 30 MB to a
//! tunneled service through the routed lab, and the balancer (generic mode) must let it through
//! whole. Two ways super-packets reach a generic program on veths:
//! - GRO on a device below the interface: the router's egress segments (`tso off gso off`, as a
//!   wire would) and the balancer's bridge port merges again (`gro on`); xlbd runs on the bridge;
//! - a veth whose peer sends TSO buffers whole: the router forwards the client's TSO buffers,
//!   a bridge hands them to a veth whose peer xlbd runs on.
//!
//! xlbd turns those offloads off while it is attached (GRO on the port; TSO/GSO on the peer, which
//! is in its namespace) and turns them on again when it is detached, across a restart. Each test
//! then turns the offload on again behind xlbd's back and sees the upload stall, so that a lab
//! that makes no super-packets cannot pass for a fix.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use xlb_tests::{
    daemon::{binary, Daemon},
    ha::ensure_package,
    netns::Netns,
    root,
    routed::{RoutedLab, VIP4},
};

/// The upload's size.
const UPLOAD: usize = 30 * 1024 * 1024;
/// How long it may take (about 1 s here when nothing stalls; a stalled one never ends).
const WITHIN: Duration = Duration::from_secs(45);

/// Whether `feature` of `iface` in `ns` is on, as `ethtool -k` says.
fn feature_on(ns: &Netns, iface: &str, feature: &str) -> bool {
    let out = ns.sh(&format!("ethtool -k {iface}"));
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{feature}:")))
        .unwrap_or_else(|| panic!("{iface} has no feature {feature}:\n{out}"));
    line.split_whitespace().nth(1) == Some("on")
}

/// The client with TSO on, the balancer's eth0 (to the router) a port of a bridge `br0`, and the
/// real servers' tunneled sink on the VIP's port 9000.
fn lab() -> RoutedLab {
    ensure_package("ethtool", "ethtool");
    let lab = RoutedLab::new(1);
    lab.client.sh("ethtool -K eth0 tso on gso on >/dev/null");
    lab.balancer.sh(
        "ip addr flush dev eth0 && ip link add br0 type bridge && ip link set br0 up && \
         ip link set eth0 master br0",
    );
    lab
}

/// A TCP service on the VIP's port 9000, tunneled to rs1's sink.
fn tunneled_service(daemon: &Daemon) {
    let vip = format!("{VIP4}:9000");
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "mh"]);
    daemon.adm_ok(&["-a", "-t", &vip, "-r", "10.81.3.2:9000", "-i"]);
}

/// How long the upload is given to show that it stalls with the offloads back on.
const STALLED: Duration = Duration::from_secs(10);

/// Uploads [`UPLOAD`] bytes to the VIP's sink within `within`; the throughput in MB/s, or the
/// failure.
fn upload(lab: &RoutedLab, within: Duration) -> Result<f64, String> {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{VIP4}', 9000), timeout={})\n\
         s.sendall(b'x' * {UPLOAD})\n\
         s.shutdown(socket.SHUT_WR)\n\
         print(s.recv(100).decode().strip())\n",
        within.as_secs()
    );
    let started = Instant::now();
    let out = lab
        .client
        .command("timeout")
        .args([&within.as_secs().to_string(), "python3", "-c", &script])
        .output()
        .expect("upload client");
    let seconds = started.elapsed().as_secs_f64();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if answer == format!("rs1 {UPLOAD}") {
        Ok(UPLOAD as f64 / seconds / 1e6)
    } else {
        Err(format!(
            "after {seconds:.1} s: {answer:?} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The bytes the balancer forwarded to the service so far (`-L --stats --exact`).
fn forwarded(daemon: &Daemon) -> u64 {
    let stats = daemon.adm_ok(&["-L", "-n", "--stats", "--exact"]);
    stats
        .lines()
        .find(|l| l.starts_with("TCP"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no service line with its bytes:\n{stats}"))
}

/// Uploads again, with an offload turned on again behind xlbd's back: it must stall. Says how
/// much got through.
fn stalls(lab: &RoutedLab, daemon: &Daemon, offload: &str) {
    let before = forwarded(daemon);
    match upload(lab, STALLED) {
        Ok(mb_s) => panic!("with {offload}, the upload went through at {mb_s:.1} MB/s"),
        Err(e) => eprintln!(
            "with {offload}: stalled {e}, {:.2} MB forwarded",
            (forwarded(daemon) - before) as f64 / 1e6
        ),
    }
}

/// `xlbd detach` in the daemon's namespace, with its pin directory, socket and state file.
fn detach(ns: &Netns, daemon: &Daemon) -> String {
    let out = ns
        .command(binary("xlbd").to_str().expect("path"))
        .arg("detach")
        .arg("--pin-dir")
        .arg(&daemon.pin_dir)
        .arg("--socket")
        .arg(daemon.socket())
        .arg("--state-file")
        .arg(daemon.state_file())
        .output()
        .expect("run xlbd detach");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "xlbd detach failed: {text}");
    text
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_tunneled_upload_completes_when_a_port_below_the_generic_interface_merges_with_gro() {
    root::require();
    let lab = lab();
    // The router segments as a wire would; the balancer's port merges again.
    lab.router.sh("ethtool -K l0 tso off gso off >/dev/null");
    lab.balancer.sh(
        "ethtool -K eth0 gro on >/dev/null && ip addr add 10.81.2.2/24 dev br0 && \
         ip route add default via 10.81.2.1",
    );
    assert!(feature_on(&lab.balancer, "eth0", "generic-receive-offload"));

    let mut daemon = Daemon::start_on(&lab.balancer, "br0", &[]);
    tunneled_service(&daemon);
    assert!(
        !feature_on(&lab.balancer, "eth0", "generic-receive-offload"),
        "GRO is still on on the bridge's port; xlbd's log:\n{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("eth0 is a veth whose peer is in another network namespace"),
        "no warning about the router's side of eth0:\n{}",
        daemon.log()
    );
    let record = std::fs::read_to_string(daemon.state_file().with_file_name("state.offloads.json"))
        .expect("the record of changed offloads");
    assert!(record.contains("rx-gro"), "{record}");

    // A restart finds GRO off, its own doing: the record keeps "on".
    daemon.stop();
    assert!(!feature_on(
        &lab.balancer,
        "eth0",
        "generic-receive-offload"
    ));
    daemon.spawn();
    // It answers once it has attached and seen to the offloads (it binds its socket before).
    daemon.adm_ok(&["-L", "-n"]);
    match upload(&lab, WITHIN) {
        Ok(mb_s) => eprintln!("upload through the bridge: {mb_s:.1} MB/s"),
        Err(e) => panic!(
            "the upload stalled {e}\n{}\n{}",
            daemon.adm_ok(&["-L", "-n", "--stats"]),
            daemon.log()
        ),
    }
    // The lab does make super-packets: with GRO on again on the port, the upload stalls.
    lab.balancer.sh("ethtool -K eth0 gro on >/dev/null");
    stalls(&lab, &daemon, "GRO on on the port");
    daemon.stop();
    let out = detach(&lab.balancer, &daemon);
    assert!(
        out.contains("eth0: turned rx-gro on again"),
        "xlbd detach said:\n{out}"
    );
    assert!(
        feature_on(&lab.balancer, "eth0", "generic-receive-offload"),
        "GRO is not back on after xlbd detach:\n{out}"
    );
    assert!(!Path::new(&daemon.state_file().with_file_name("state.offloads.json")).exists());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_tunneled_upload_completes_when_a_veth_peer_in_the_namespace_sends_tso_buffers() {
    root::require();
    let lab = lab();
    // The router forwards the client's TSO buffers whole; the bridge hands them to up0, whose
    // peer lb0 the balancer runs on.
    lab.balancer.sh(
        "ip link add up0 type veth peer name lb0 && ip link set up0 master br0 && \
         ip link set up0 up && ip link set lb0 up && ip addr add 10.81.2.2/24 dev lb0 && \
         ip route add default via 10.81.2.1",
    );
    assert!(feature_on(&lab.balancer, "up0", "tx-tcp-segmentation"));

    let mut daemon = Daemon::start_on(&lab.balancer, "lb0", &["--detach-on-exit"]);
    tunneled_service(&daemon);
    for feature in ["tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-gso-list"] {
        assert!(
            !feature_on(&lab.balancer, "up0", feature),
            "{feature} is still on on the peer; xlbd's log:\n{}",
            daemon.log()
        );
    }
    match upload(&lab, WITHIN) {
        Ok(mb_s) => eprintln!("upload from the veth peer: {mb_s:.1} MB/s"),
        Err(e) => panic!(
            "the upload stalled {e}\n{}\n{}",
            daemon.adm_ok(&["-L", "-n", "--stats"]),
            daemon.log()
        ),
    }
    // The lab does make super-packets: with TSO on again on the peer, the upload stalls.
    lab.balancer.sh("ethtool -K up0 tso on gso on >/dev/null");
    stalls(&lab, &daemon, "TSO on on the peer");
    // --detach-on-exit restores them.
    daemon.stop();
    for feature in ["tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-gso-list"] {
        assert!(
            feature_on(&lab.balancer, "up0", feature),
            "{feature} is not back on after the exit; xlbd's log:\n{}",
            daemon.log()
        );
    }
}
