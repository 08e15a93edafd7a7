//! End to end through xlbd and xlbadm: the connection timeouts (`--set`, `-L --timeout`) and
//! persistence that lasts while a client's connection lives, in the direct-routing lab (a client,
//! the balancer in generic XDP mode and HTTP real servers on one bridge).

use std::time::{Duration, Instant};

use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    root,
};

/// Polls `done` every 200 ms until it holds, for at most `limit`; how long it took.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// The column `column` (0-based, split at spaces) of the first line of `text` that contains
/// `needle`.
fn column(text: &str, needle: &str, column: usize) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"));
    line.split_whitespace()
        .nth(column)
        .unwrap_or_else(|| panic!("no column {column}: {line}"))
        .to_owned()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_idle_udp_flow_expires_after_the_udp_timeout_and_its_next_packet_is_scheduled_anew() {
    root::require();
    let lab = DrLab::new(1);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:5353");
    let rs1 = format!("{}:5353", real_addr(0));
    daemon.adm_ok(&["-A", "-u", &vip, "-s", "rr"]);
    daemon.adm_ok(&["-a", "-u", &vip, "-r", &rs1, "-g", "-w", "1"]);
    assert_eq!(
        daemon.adm_ok(&["-L", "--timeout"]),
        "Timeout (tcp tcpfin udp): 900 120 300\n"
    );
    daemon.adm_ok(&["--set", "0", "0", "2"]);
    assert_eq!(
        daemon.adm_ok(&["-L", "--timeout"]),
        "Timeout (tcp tcpfin udp): 900 120 2\n"
    );
    let refused = daemon.adm(&["--set", "900", "-5", "300"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid timeout value `-5' specified"),
        "{refused:?}"
    );

    // One datagram a time from the client's port 40000 (the real server has no UDP listener:
    // only the balancer's side matters).
    let send = || {
        lab.client.sh(&format!(
            "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
             s.bind(('10.77.0.2', 40000)); s.sendto(b'x', ('{VIP}', 5353))\""
        ));
    };
    let conns = || column(&daemon.adm_ok(&["-L", "-n", "--stats"]), "UDP  ", 2);
    let inactive = || column(&daemon.adm_ok(&["-L", "-n"]), &rs1, 5);
    let listed = || {
        daemon
            .adm_ok(&["-L", "-n", "-c"])
            .lines()
            .any(|l| l.contains("10.77.0.2:40000"))
    };
    send();
    assert_eq!(conns(), "1");
    assert!(listed(), "{}", daemon.adm_ok(&["-L", "-n", "-c"]));
    wait_until(Duration::from_secs(3), "the UDP flow counted", || {
        inactive() == "1"
    });

    // A packet every second keeps the flow (2 s of idle expire it): still one connection.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1_000));
        send();
    }
    assert_eq!(conns(), "1", "a flow with traffic is not expired");

    // Idle: gone within a second of its 2 s (the sweep's period), no sooner; -L -c lists it
    // until then (0 s left once its timeout passed), as the data path still follows it.
    let sent = Instant::now();
    wait_until(Duration::from_secs(8), "the idle flow expired", || {
        !listed()
    });
    let idle = sent.elapsed();
    assert!(
        idle >= Duration::from_millis(1_900) && idle < Duration::from_secs(5),
        "expired after {idle:?} idle, of a 2 s timeout swept every second"
    );
    eprintln!("udp timeout 2 s: the flow left the table after {idle:?} idle");
    wait_until(Duration::from_secs(3), "InActConn back to 0", || {
        inactive() == "0"
    });

    // Its next packet is a new flow: scheduled again, a second connection.
    send();
    assert_eq!(
        conns(),
        "2",
        "the expired flow's next packet is a new connection"
    );
    assert!(listed());
    let log = daemon.log();
    assert!(
        !log.contains("under the state lock"),
        "xlbd sweeps the pinned tables off its lock: {log}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_persistent_client_keeps_its_server_while_its_connection_lives_and_loses_it_its_timeout_after()
{
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "rr", "-p", "3"]);
    for i in 0..3 {
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-a", "-t", &vip, "-r", &real, "-g", "-w", "1"]);
    }
    // A closed connection leaves the table 1 s after its last packet.
    daemon.adm_ok(&["--set", "0", "1", "0"]);
    let answers = |n: usize| -> Vec<String> {
        lab.client
            .sh(&format!(
                "for i in $(seq {n}); do curl -s --max-time 3 --interface 10.77.0.2 \
                 http://{VIP}/ || echo FAILED; done"
            ))
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    };
    let template = || {
        daemon
            .adm_ok(&["-L", "-n", "-c"])
            .lines()
            .find(|l| l.contains("NONE"))
            .map(str::to_owned)
    };

    let (held, owner) = KeepAliveClient::open(&lab.client);
    let index: usize = owner[2..].parse().expect("rsN");
    let owner_real = format!("{}:80", real_addr(index - 1));
    // Twice the timeout with the connection open and idle; its server quiesced meanwhile, so
    // that only persistence can send the client there.
    daemon.adm_ok(&["-e", "-t", &vip, "-r", &owner_real, "-g", "-w", "0"]);
    std::thread::sleep(Duration::from_secs(6));
    let line = template().expect("the client's persistence entry is listed");
    assert!(line.contains(&owner_real), "{line}");
    let during = answers(4);
    assert!(
        during.iter().all(|a| *a == owner),
        "while its connection lives the client keeps {owner}: {during:?}"
    );

    // The connection ends (FIN): it leaves the table 1 s later, and the client's server 3 s
    // after that; the curl connections above ended earlier.
    drop(held);
    let ended = Instant::now();
    let kept = wait_until(
        Duration::from_secs(10),
        "the persistence entry lapsed",
        || template().is_none(),
    );
    eprintln!("-p 3, tcpfin 1: the client lost its server {kept:?} after its connection ended");
    assert!(
        ended.elapsed() >= Duration::from_millis(3_500),
        "lapsed {kept:?} after the end, before tcpfin + the timeout"
    );
    // Scheduled again: its quiesced server takes no new client.
    let after = answers(3);
    assert!(
        after.iter().all(|a| *a != owner && a.starts_with("rs")),
        "{after:?}"
    );
}
