//! End to end across network namespaces: a client, the balancer and real servers on one bridge,
//! real HTTP servers, curl. Run in XDP generic (skb) mode and in native (driver) mode.

use aya::programs::XdpMode;
use lb_common::{GlobalStat, PROTO_TCP};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    neighbour,
};
use xlb_tests::{
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    netns::{veth, Netns},
    root,
    services::TestService,
};

fn load() -> Dataplane {
    Dataplane::load(&LoadOptions {
        max_services: Some(4),
        max_connections: Some(16_384),
        ..LoadOptions::default()
    })
    .expect("load the data path")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_attached_balancer_passes_ordinary_traffic_untouched() {
    root::require();
    let a = Netns::new("a");
    let b = Netns::new("b");
    veth(&a, "eth0", &b, "eth0");
    a.sh("ip addr add 10.78.0.1/24 dev eth0");
    b.sh("ip addr add 10.78.0.2/24 dev eth0");
    let mut dp = load();
    b.enter(|| dp.attach("eth0", XdpMode::Skb)).expect("attach");

    a.sh("ping -c 3 -i 0.2 -W 2 10.78.0.2");
    let mut server = b
        .command("timeout")
        .args([
            "20",
            "python3",
            "-c",
            "import socket\n\
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
            s.bind(('10.78.0.2', 7000)); s.listen(1)\n\
            c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()",
        ])
        .spawn()
        .expect("start the TCP server");
    let client = "import socket, time\n\
                  for _ in range(50):\n    \
                  try:\n        \
                  s = socket.create_connection(('10.78.0.2', 7000), timeout=2)\n        \
                  break\n    \
                  except OSError:\n        \
                  time.sleep(0.1)\n\
                  s.sendall(b'hello xlb')\n\
                  print(s.recv(100).decode())\n";
    let out = a
        .command("timeout")
        .args(["20", "python3", "-c", client])
        .output()
        .expect("run the TCP client");
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = server.wait();
    assert_eq!(reply.trim(), "HELLO XLB");
    let passed = dp.global_counter(GlobalStat::PassNotVip).expect("counter");
    assert!(
        passed >= 6,
        "the program saw {passed} packets not for a VIP"
    );
    assert_eq!(
        dp.global_counter(GlobalStat::VerdictDrop).expect("counter"),
        0
    );
}

fn requests_are_spread_by_weight_and_known_connections_survive_changes(mode: XdpMode) {
    root::require();
    let lab = DrLab::new(3);
    let mut dp = load();
    // The pass-all program on the bridge side of the balancer's veth: in native mode, a veth
    // delivers XDP_TX'd frames only to a peer that has an XDP program of its own.
    let mut peer = load();
    if mode == XdpMode::Driver {
        lab.switch
            .enter(|| peer.attach("plb", XdpMode::Driver))
            .expect("attach the peer's program");
        // A checksum left for the NIC to fill is lost when the frame becomes an XDP frame.
        lab.client.sh("ethtool -K eth0 tx off >/dev/null");
    }
    lab.balancer
        .enter(|| dp.attach("eth0", mode))
        .expect("attach");

    let mut web = TestService::add(&mut dp, VIP, 80, PROTO_TCP);
    for (i, weight) in [1, 1, 2].into_iter().enumerate() {
        web.add_real(&mut dp, real_addr(i), weight);
        lab.balancer
            .enter(|| neighbour::keep_resolved(real_addr(i).into()))
            .expect("neighbour entry");
    }

    // 300 new connections spread 1:1:2.
    let (counts, failed) = lab.spread(300);
    assert_eq!(failed, 0, "failed requests; spread {counts:?}");
    for (i, expected) in [75, 75, 150].into_iter().enumerate() {
        assert!(
            counts[i].abs_diff(expected) <= 30,
            "rs{} got {} of 300, expected about {expected}: {counts:?}",
            i + 1,
            counts[i]
        );
    }
    let svc = dp.service(&web.key).expect("service");
    let svc_counters = dp.service_counters(svc.id).expect("counters");
    assert_eq!(svc_counters.conns, 300, "{svc_counters:?}");

    // Weight 0: no new connection goes there, an open one keeps working.
    let (mut kept, owner) = KeepAliveClient::open(&lab.client);
    let owner_index: usize = owner[2..].parse().expect("rsN");
    web.set_weight(&mut dp, real_addr(owner_index - 1), 0);
    let (counts, failed) = lab.spread(60);
    assert_eq!(failed, 0, "failed requests after quiescing: {counts:?}");
    assert_eq!(
        counts[owner_index - 1],
        0,
        "a quiesced server got new connections"
    );
    assert_eq!(kept.again(), owner, "the open connection moved");

    // Removing a server leaves the connections to the others alone.
    let (mut other, other_owner) = loop {
        let (client, who) = KeepAliveClient::open(&lab.client);
        if who != owner {
            break (client, who);
        }
    };
    let removed = (1..=3)
        .find(|i| format!("rs{i}") != other_owner)
        .expect("another server");
    web.remove_real(&mut dp, real_addr(removed - 1));
    assert_eq!(
        other.again(),
        other_owner,
        "a connection to another server broke"
    );
    let (counts, failed) = lab.spread(60);
    assert_eq!(failed, 0, "failed requests after a removal: {counts:?}");
    assert_eq!(
        counts[removed - 1],
        0,
        "a removed server got new connections"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn generic_mode_spreads_requests_by_weight_and_keeps_known_connections() {
    requests_are_spread_by_weight_and_known_connections_survive_changes(XdpMode::Skb);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn native_mode_spreads_requests_by_weight_and_keeps_known_connections() {
    requests_are_spread_by_weight_and_known_connections_survive_changes(XdpMode::Driver);
}
