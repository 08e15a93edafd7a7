//! End to end through xlbd and xlbadm: the schedulers and persistence with real clients and
//! real servers (the direct-routing lab: a client, the balancer in generic XDP mode and three
//! HTTP servers on one bridge; each server answers its own name).

use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    root,
};

/// With xlbadm: a service on the VIP with `options` (`-s rr -p 300 ...`) and the lab's real
/// servers by direct routing, weight 1.
fn add_service(daemon: &Daemon, options: &[&str], reals: usize) {
    let vip = format!("{VIP}:80");
    let mut add = vec!["-A", "-t", &vip];
    add.extend_from_slice(options);
    daemon.adm_ok(&add);
    for i in 0..reals {
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-a", "-t", &vip, "-r", &real, "-g", "-w", "1"]);
    }
}

/// Who answers each of `n` requests from the client's address `source`, each on a new
/// connection.
fn answers(lab: &DrLab, source: &str, n: usize) -> Vec<String> {
    let out = lab.client.sh(&format!(
        "for i in $(seq {n}); do curl -s --max-time 3 --interface {source} http://{VIP}/ || echo FAILED; done"
    ));
    out.lines().map(|l| l.trim().to_owned()).collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn round_robin_spreads_300_new_connections_within_5_percent_per_server() {
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    add_service(&daemon, &["-s", "rr"], 3);
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(
        listing.contains(&format!("TCP  {VIP}:80 rr\n")),
        "{listing}"
    );
    let (counts, failed) = lab.spread(300);
    assert_eq!(failed, 0, "failed requests; spread {counts:?}");
    eprintln!("rr: 300 new connections spread {counts:?}");
    for (i, n) in counts.iter().enumerate() {
        assert!(
            n.abs_diff(100) <= 5,
            "rs{} got {n} of 300 new connections: {counts:?}",
            i + 1
        );
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn persistence_keeps_a_client_network_on_its_server_across_connections_and_weight_changes() {
    root::require();
    let lab = DrLab::new(3);
    // A second client of the same /24.
    lab.client.sh("ip addr add 10.77.0.3/24 dev eth0");
    let daemon = Daemon::start(&lab.balancer);
    // rr would give each new connection the next server: persistence is what keeps them.
    add_service(
        &daemon,
        &["-s", "rr", "-p", "300", "-M", "255.255.255.0"],
        3,
    );
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(
        listing.contains(&format!(
            "TCP  {VIP}:80 rr persistent 300 mask 255.255.255.0\n"
        )),
        "{listing}"
    );

    let first = answers(&lab, "10.77.0.2", 10);
    let owner = first[0].clone();
    assert!(owner.starts_with("rs"), "{first:?}");
    assert!(first.iter().all(|a| *a == owner), "{first:?}");
    // The other client of the /24 goes to the same server.
    let neighbour = answers(&lab, "10.77.0.3", 5);
    assert!(neighbour.iter().all(|a| *a == owner), "{neighbour:?}");

    // Weights change and the client stays, even on its server quiesced.
    let index: usize = owner[2..].parse().expect("rsN");
    let vip = format!("{VIP}:80");
    for (i, weight) in [(0, "3"), (1, "2"), (2, "5")] {
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-e", "-t", &vip, "-r", &real, "-g", "-w", weight]);
    }
    let owner_real = format!("{}:80", real_addr(index - 1));
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &owner_real, "-g", "-w", "0"]);
    let after = answers(&lab, "10.77.0.2", 10);
    assert!(after.iter().all(|a| *a == owner), "{after:?}");

    // The persistence table, as ipvsadm lists its templates.
    let conns = daemon.adm_ok(&["-L", "-n", "-c"]);
    assert!(
        conns
            .lines()
            .any(|l| l.contains("NONE") && l.contains("10.77.0.0:0") && l.contains(&owner_real)),
        "{conns}"
    );
    let persistent = daemon.adm_ok(&["-L", "-n", "--persistent-conn"]);
    let line = persistent
        .lines()
        .find(|l| l.contains(&owner_real))
        .unwrap_or_else(|| panic!("{persistent}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns[3], "1",
        "one persistent client network: {persistent}"
    );

    // Without persistence (-E without -p) the clients are scheduled again: rr moves them.
    daemon.adm_ok(&["-E", "-t", &vip, "-s", "rr"]);
    let free = answers(&lab, "10.77.0.2", 9);
    let servers: std::collections::BTreeSet<&String> = free.iter().collect();
    assert!(servers.len() > 1, "{free:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn weighted_least_connections_sends_fewer_new_connections_to_a_server_holding_many() {
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    add_service(&daemon, &["-s", "wlc"], 3);
    let vip = format!("{VIP}:80");
    let weight = |i: usize, w: &str| {
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-e", "-t", &vip, "-r", &real, "-g", "-w", w]);
    };
    // rs1 is the slow one: twelve connections stay open on it (the others quiesced meanwhile).
    weight(1, "0");
    weight(2, "0");
    let held: Vec<_> = (0..12)
        .map(|_| {
            let (client, who) = KeepAliveClient::open(&lab.client);
            assert_eq!(who, "rs1");
            client
        })
        .collect();
    weight(1, "1");
    weight(2, "1");
    // xlbd writes the servers' active connections from its connection table every second.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let (counts, failed) = lab.spread(60);
    assert_eq!(failed, 0, "{counts:?}");
    eprintln!("wlc: 60 new connections with 12 held on rs1: {counts:?}");
    assert!(
        counts[0] < counts[1] && counts[0] < counts[2] && counts[0] <= 15,
        "the loaded server got {} of 60: {counts:?}",
        counts[0]
    );
    drop(held);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_upper_threshold_of_2_caps_a_server_at_2_connections_until_it_is_raised() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    add_service(&daemon, &["-s", "rr"], 2);
    let vip = format!("{VIP}:80");
    let rs1 = format!("{}:80", real_addr(0));
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs1, "-g", "-w", "1", "-x", "2"]);
    let saved = daemon.adm_ok(&["-S", "-n"]);
    assert!(
        saved.contains(&format!("-a -t {vip} -r {rs1} -g -w 1 -x 2\n")),
        "{saved}"
    );
    // rr alternates until rs1 holds 2 connections; the others go to rs2.
    let held: Vec<(KeepAliveClient, String)> =
        (0..6).map(|_| KeepAliveClient::open(&lab.client)).collect();
    let on_rs1 = held.iter().filter(|(_, who)| who == "rs1").count();
    let whom: Vec<&str> = held.iter().map(|(_, who)| who.as_str()).collect();
    assert_eq!(on_rs1, 2, "held connections went to {whom:?}");
    // New connections while they are held (and after xlbd counted them from its table): none
    // for rs1.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let (counts, failed) = lab.spread(20);
    assert_eq!(failed, 0, "{counts:?}");
    assert_eq!(counts, [0, 20], "new connections with rs1 at -x 2");
    let listing = daemon.adm_ok(&["-L", "-n", "--thresholds", "-t", &vip]);
    let line = listing
        .lines()
        .find(|l| l.contains(&rs1))
        .unwrap_or_else(|| panic!("{listing}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &columns[2..5],
        ["2", "0", "2"],
        "Uthreshold Lthreshold ActiveConn: {listing}"
    );
    // Raised above its connections (-e -x 10), it takes new ones again at once.
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs1, "-g", "-w", "1", "-x", "10"]);
    let (counts, failed) = lab.spread(10);
    assert_eq!(failed, 0, "{counts:?}");
    assert!(
        counts[0] >= 4,
        "rs1 got {} of 10 after -x 10: {counts:?}",
        counts[0]
    );
    // The held connections still work, each on its own server.
    for (mut client, who) in held {
        assert_eq!(client.again(), who);
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn weighted_failover_and_overflow_fill_the_heaviest_server_first() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    add_service(&daemon, &["-s", "fo"], 2);
    let vip = format!("{VIP}:80");
    let rs2 = format!("{}:80", real_addr(1));
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "3"]);
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(
        listing.contains(&format!("TCP  {VIP}:80 fo\n")),
        "{listing}"
    );
    // fo: every new connection to the heaviest, rs2.
    let (counts, failed) = lab.spread(10);
    assert_eq!((counts, failed), (vec![0, 10], 0));
    // Quiesced, it gives way to the next by weight.
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "0"]);
    let (counts, failed) = lab.spread(5);
    assert_eq!((counts, failed), (vec![5, 0], 0));

    // ovf: rs2 (weight 2) takes connections while it holds no more than 2, then rs1 (weight 1).
    daemon.adm_ok(&["-E", "-t", &vip, "-s", "ovf"]);
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "2"]);
    let saved = daemon.adm_ok(&["-S", "-n"]);
    assert!(saved.contains(&format!("-A -t {vip} -s ovf\n")), "{saved}");
    // Each held connection is counted once its handshake completes, before the next opens.
    let held: Vec<(KeepAliveClient, String)> =
        (0..4).map(|_| KeepAliveClient::open(&lab.client)).collect();
    let whom: Vec<&str> = held.iter().map(|(_, who)| who.as_str()).collect();
    assert_eq!(whom, ["rs2", "rs2", "rs2", "rs1"]);
    // rs2 beyond its weight (3 of 2); rs1 at 1 of weight 1 takes one more.
    let (counts, failed) = lab.spread(1);
    assert_eq!((counts, failed), (vec![1, 0], 0));
    drop(held);
    // The held connections closed: xlbd counts them out within a second or two, and rs2 is
    // first again.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let (counts, failed) = lab.spread(1);
    assert_eq!((counts, failed), (vec![0, 1], 0));
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn never_queue_sends_new_connections_to_the_idle_server_that_sed_would_pass_by() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    add_service(&daemon, &["-s", "nq"], 2);
    let vip = format!("{VIP}:80");
    let (rs1, rs2) = (
        format!("{}:80", real_addr(0)),
        format!("{}:80", real_addr(1)),
    );
    // rs1: weight 10 with 3 connections held, expected delay (3 + 1) / 10; rs2 idle at weight 1,
    // (0 + 1) / 1. sed prefers rs1; nq the idle rs2.
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "0"]);
    let held: Vec<_> = (0..3)
        .map(|_| {
            let (client, who) = KeepAliveClient::open(&lab.client);
            assert_eq!(who, "rs1");
            client
        })
        .collect();
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs1, "-g", "-w", "10"]);
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "1"]);
    // One new connection at a time, each after xlbd counted the last one out (it closed): rs2
    // is idle for each. Two random draws of two servers find it 3 times in 4.
    let tries = 12;
    let mut to_rs2 = 0;
    for _ in 0..tries {
        std::thread::sleep(std::time::Duration::from_millis(1_300));
        let (counts, failed) = lab.spread(1);
        assert_eq!(failed, 0);
        to_rs2 += counts[1];
    }
    eprintln!("nq: {to_rs2} of {tries} new connections to the idle server");
    // Binomial(12, 3/4) is 5 or less once in 700 runs; sed's (1/4) is 6 or more once in 25.
    assert!(to_rs2 >= 6, "{to_rs2} of {tries} to the idle server");
    // As sed, by the same draws: 3 in 4 to rs1.
    daemon.adm_ok(&["-E", "-t", &vip, "-s", "sed"]);
    let mut to_rs2 = 0;
    for _ in 0..tries {
        std::thread::sleep(std::time::Duration::from_millis(1_300));
        let (counts, failed) = lab.spread(1);
        assert_eq!(failed, 0);
        to_rs2 += counts[1];
    }
    eprintln!("sed: {to_rs2} of {tries} new connections to the idle server");
    assert!(to_rs2 <= 6, "{to_rs2} of {tries} to the idle server");
    drop(held);
}
