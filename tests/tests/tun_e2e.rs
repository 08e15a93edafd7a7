//! Tunneling end to end, routed: client — router — balancer, real servers in other subnets behind
//! the router with xlb's decapsulator and the VIPs on `lo`. TCP and UDP through an IPv4 and an
//! IPv6 VIP, a 5 MB download, and uploads larger than the MTU (path MTU discovery through the
//! balancer's "fragmentation needed" / "packet too big"), plus direct routing over IPv6.

use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr6, DrLab, VIP6 as VIP6_DR},
    root,
    routed::{RoutedLab, BIG, VIP4, VIP6},
};

/// Asks the VIP over UDP from the client and returns who answered.
fn udp_ask(lab: &RoutedLab, vip: &str) -> String {
    let script = format!(
        "import socket\n\
         fam = socket.AF_INET6 if ':' in '{vip}' else socket.AF_INET\n\
         s = socket.socket(fam, socket.SOCK_DGRAM)\n\
         s.settimeout(2)\n\
         for _ in range(3):\n    \
         s.sendto(b'who', ('{vip}', 5353))\n    \
         try:\n        \
         print(s.recvfrom(100)[0].decode()); break\n    \
         except socket.timeout:\n        \
         pass\n"
    );
    let out = lab
        .client
        .command("timeout")
        .args(["10", "python3", "-c", &script])
        .output()
        .expect("UDP client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Sends `bytes` to the VIP's TCP sink and returns its answer ("rsN <count>").
fn upload(lab: &RoutedLab, vip: &str, bytes: usize) -> String {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{vip}', 9000), timeout=20)\n\
         s.sendall(b'x' * {bytes})\n\
         s.shutdown(socket.SHUT_WR)\n\
         print(s.recv(100).decode().strip())\n"
    );
    let out = lab
        .client
        .command("timeout")
        .args(["30", "python3", "-c", &script])
        .output()
        .expect("upload client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tunneled_services_work_through_a_router_for_ipv4_and_ipv6_with_path_mtu_discovery() {
    root::require();
    let mut lab = RoutedLab::new(2);
    // A third server behind the balancer's second interface, added to a service at the end.
    lab.add_real_behind_balancer();
    let daemon = Daemon::start(&lab.balancer);
    for (vip, rs) in [
        (format!("{VIP4}:80"), ["10.81.3.2:80", "10.81.4.2:80"]),
        (format!("{VIP4}:9000"), ["10.81.3.2:9000", "10.81.4.2:9000"]),
        (format!("[{VIP6}]:80"), ["[fd81:3::2]:80", "[fd81:4::2]:80"]),
        (
            format!("[{VIP6}]:9000"),
            ["[fd81:3::2]:9000", "[fd81:4::2]:9000"],
        ),
    ] {
        daemon.adm_ok(&["-A", "-t", &vip, "-s", "mh"]);
        for r in rs {
            daemon.adm_ok(&["-a", "-t", &vip, "-r", r, "-i", "-w", "1"]);
        }
    }
    for (vip, rs) in [
        (format!("{VIP4}:5353"), ["10.81.3.2:5353", "10.81.4.2:5353"]),
        (
            format!("[{VIP6}]:5353"),
            ["[fd81:3::2]:5353", "[fd81:4::2]:5353"],
        ),
    ] {
        daemon.adm_ok(&["-A", "-u", &vip, "-s", "mh"]);
        for r in rs {
            daemon.adm_ok(&["-a", "-u", &vip, "-r", r, "-i", "-w", "1"]);
        }
    }

    // TCP over both VIPs reaches both servers.
    for url in [format!("http://{VIP4}/"), format!("http://[{VIP6}]/")] {
        let out = lab.client.sh(&format!(
            "for i in $(seq 20); do curl -sg --max-time 3 {url} || echo FAILED; done"
        ));
        assert!(!out.contains("FAILED"), "{url}:\n{out}\n{}", daemon.log());
        assert!(
            out.contains("rs1") && out.contains("rs2"),
            "{url} spread:\n{out}"
        );
    }
    // UDP over both VIPs.
    for vip in [VIP4, VIP6] {
        let who = udp_ask(&lab, vip);
        assert!(who == "rs1" || who == "rs2", "UDP to {vip}: {who:?}");
    }
    // A 5 MB download over both.
    for url in [
        format!("http://{VIP4}/big.bin"),
        format!("http://[{VIP6}]/big.bin"),
    ] {
        let size = lab.client.sh(&format!(
            "curl -sg --max-time 20 -o /dev/null -w '%{{size_download}}' {url}"
        ));
        assert_eq!(size.trim(), BIG.to_string(), "download of {url}");
    }
    // Uploads of full-size segments: each needs the balancer's "too big" answer first.
    for vip in [VIP4, VIP6] {
        let answer = upload(&lab, vip, 3 * 1024 * 1024);
        assert!(
            answer.ends_with(&format!(" {}", 3 * 1024 * 1024)),
            "upload to {vip}: {answer:?}\n{}",
            daemon.adm_ok(&["-L", "-n", "--stats"])
        );
    }
    // The client learnt the tunnel's MTU from the balancer's answers.
    let pmtu4 = lab.client.sh(&format!("ip route get {VIP4}"));
    assert!(
        pmtu4.contains("mtu 1480"),
        "no IPv4 path MTU learnt: {pmtu4}"
    );
    let pmtu6 = lab.client.sh(&format!("ip -6 route get {VIP6}"));
    assert!(
        pmtu6.contains("mtu 1460"),
        "no IPv6 path MTU learnt: {pmtu6}"
    );
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert_eq!(listing.matches("Tunnel").count(), 12, "{listing}");

    // The third server: its packets leave through eth1 (XDP_REDIRECT).
    daemon.adm_ok(&[
        "-a",
        "-t",
        &format!("{VIP4}:80"),
        "-r",
        "10.81.9.2:80",
        "-i",
    ]);
    let out = lab.client.sh(&format!(
        "for i in $(seq 30); do curl -s --max-time 3 http://{VIP4}/ || echo FAILED; done"
    ));
    assert!(!out.contains("FAILED"), "with a server behind eth1:\n{out}");
    assert!(
        out.contains("rs3"),
        "no request reached the server behind eth1:\n{out}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn direct_routing_works_over_ipv6_on_a_bridge() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("[{VIP6_DR}]:80");
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "mh"]);
    for i in 0..2 {
        daemon.adm_ok(&[
            "-a",
            "-t",
            &vip,
            "-r",
            &format!("[{}]:80", real_addr6(i)),
            "-g",
        ]);
    }
    // The lab's first IPv6 packets may wait for neighbour discovery (on some VMs a first SYN is
    // lost and retransmitted after 1 s and 3 s): one request that gets through, for up to 10 s,
    // then the counters zeroed, so that the 30 below are counted from zero.
    let warm = lab.client.sh(&format!(
        "for i in $(seq 10); do curl -sg --max-time 1 http://[{VIP6_DR}]/ && break; done; true"
    ));
    assert!(
        warm.contains("rs"),
        "no request got through in 10 s:\n{}",
        daemon.log()
    );
    daemon.adm_ok(&["-Z"]);
    let out = lab.client.sh(&format!(
        "for i in $(seq 30); do curl -sg --max-time 3 http://[{VIP6_DR}]/ || echo FAILED; done"
    ));
    assert!(!out.contains("FAILED"), "{out}\n{}", daemon.log());
    assert!(out.contains("rs1") && out.contains("rs2"), "spread:\n{out}");
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert_eq!(listing.matches("Route").count(), 2, "{listing}");
    let stats = daemon.adm_ok(&["-L", "-n", "--stats", "--exact"]);
    let conns: u64 = stats
        .lines()
        .find(|l| l.starts_with("TCP"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .expect("a service line");
    assert_eq!(conns, 30, "{stats}");
}
