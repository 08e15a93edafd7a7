//! Health checks end to end: xlbd checks three real servers by HTTP (status and a keyword in the
//! page) while a client requests continuously. A stopped web server, and then a page without the
//! keyword (port still open), take a server out within fall × interval + timeout; restored, it
//! comes back after rise × interval. The client sees failures only while a dead server is being
//! detected, and only for that server; nothing else is disturbed.

use std::{
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, VIP},
    root,
};

const INTERVAL: f64 = 0.5;
const TIMEOUT: f64 = 0.3;
const RISE: f64 = 2.0;
const FALL: f64 = 2.0;
/// Slack for scheduling in a loaded test machine.
const SLACK: f64 = 2.5;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Waits until `-L -n` shows real server `i` in `state` ("up"/"down"); returns when it did.
fn wait_for(daemon: &Daemon<'_>, i: usize, state: &str, within: f64) -> f64 {
    let start = Instant::now();
    let addr = format!("{}:80", real_addr(i));
    loop {
        let listing = daemon.adm_ok(&["-L", "-n"]);
        let line = listing
            .lines()
            .find(|l| l.contains(&addr))
            .unwrap_or_default()
            .to_owned();
        if line.trim_end().ends_with(state) {
            return now();
        }
        assert!(
            start.elapsed().as_secs_f64() < within,
            "rs{} not {state} after {within:.1}s: {line}\n{}",
            i + 1,
            daemon.adm_ok(&["-L", "-n", "--health"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The VIP's port 80 service, with `options` (its check and more) at this file's check timing
/// (500 ms interval, 300 ms timeout, rise 2, fall 2), and the lab's first `reals` real servers by
/// direct routing; returns once they are all up.
fn checked_service(daemon: &Daemon<'_>, options: &[&str], reals: usize) {
    let vip = format!("{VIP}:80");
    let timing = [
        "--check-interval",
        "500ms",
        "--check-timeout",
        "300ms",
        "--rise",
        "2",
        "--fall",
        "2",
    ];
    let mut add = vec!["-A", "-t", vip.as_str(), "-s", "mh"];
    add.extend_from_slice(options);
    add.extend_from_slice(&timing);
    daemon.adm_ok(&add);
    for i in 0..reals {
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-a", "-t", &vip, "-r", &real, "-g"]);
    }
    for i in 0..reals {
        wait_for(daemon, i, "up", 5.0);
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn failed_servers_leave_and_come_back_while_a_client_keeps_requesting() {
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    checked_service(
        &daemon,
        &[
            "--check",
            "http",
            "--check-path",
            "/",
            "--check-expect",
            "rs",
        ],
        3,
    );
    // The check settings are saved with the service.
    let saved = daemon.adm_ok(&["-S", "-n"]);
    assert!(
        saved.contains("--check http") && saved.contains("--fall 2"),
        "{saved}"
    );

    // A client requesting continuously, each answer stamped with its time.
    let client = lab
        .client
        .command("sh")
        .args([
            "-c",
            &format!(
                "end=$(( $(date +%s) + 14 )); while [ $(date +%s) -lt $end ]; do \
                 printf '%s ' $(date +%s.%N); curl -s --max-time 1 http://{VIP}/ || echo FAILED; \
                 sleep 0.02; done"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client");
    std::thread::sleep(Duration::from_secs(2));

    // rs1's web server stops.
    let stopped = now();
    lab.stop_web_server(0);
    let rs1_down = wait_for(&daemon, 0, "down", FALL * INTERVAL + TIMEOUT + SLACK);
    std::thread::sleep(Duration::from_secs(2));
    lab.start_web_server(0);
    let rs1_restarted = now();
    let rs1_up = wait_for(&daemon, 0, "up", RISE * INTERVAL + TIMEOUT + SLACK);

    // rs2's page loses the keyword; the port stays open.
    std::thread::sleep(Duration::from_millis(500));
    let changed = now();
    lab.set_page(1, "maintenance\n");
    let rs2_down = wait_for(&daemon, 1, "down", FALL * INTERVAL + TIMEOUT + SLACK);
    std::thread::sleep(Duration::from_secs(1));
    lab.set_page(1, "rs2\n");
    let rs2_up = wait_for(&daemon, 1, "up", RISE * INTERVAL + TIMEOUT + SLACK);

    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(health.contains("http"), "{health}");
    let out = client.wait_with_output().expect("client");
    let answers = String::from_utf8_lossy(&out.stdout).into_owned();

    let mut seen_after = [0usize; 3];
    for line in answers.lines() {
        let mut words = line.split_whitespace();
        let (Some(t), Some(who)) = (words.next(), words.next()) else {
            continue;
        };
        let t: f64 = t.parse().expect("a time stamp");
        let in_rs1_window = t >= stopped - 0.2 && t <= rs1_down + 0.5;
        let in_rs2_window = t >= changed - 0.2 && t <= rs2_down + 0.5;
        match who {
            // Connections to rs1 fail while its death is being detected.
            "FAILED" => assert!(
                in_rs1_window,
                "a request failed at {t:.2} outside rs1's detection window \
                 ({stopped:.2}..{rs1_down:.2}):\n{answers}"
            ),
            "maintenance" => assert!(
                in_rs2_window,
                "rs2's maintenance page served at {t:.2} outside its detection window \
                 ({changed:.2}..{rs2_down:.2})"
            ),
            "rs1" => {
                assert!(
                    !(t > rs1_down + 0.2 && t < rs1_restarted),
                    "rs1 got a request at {t:.2}, after it was taken out at {rs1_down:.2}"
                );
                if t > rs1_up + 0.5 {
                    seen_after[0] += 1;
                }
            }
            "rs2" => {
                assert!(
                    !(t > rs2_down + 0.2 && t < rs2_up - 0.2),
                    "rs2 got a request at {t:.2}, while out ({rs2_down:.2}..{rs2_up:.2})"
                );
                if t > rs2_up + 0.5 {
                    seen_after[1] += 1;
                }
            }
            "rs3" => seen_after[2] += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(seen_after[0] > 0, "rs1 never came back:\n{answers}");
    assert!(seen_after[1] > 0, "rs2 never came back:\n{answers}");
    assert!(seen_after[2] > 0, "rs3 never answered");
}

/// The value of a kernel SNMP counter in `ns` (`nstat` names, e.g. `TcpAttemptFails`).
fn tcp_counter(ns: &xlb_tests::netns::Netns, name: &str) -> u64 {
    let out = ns.sh(&format!("nstat -asz {name}"));
    out.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn half_open_checks_take_out_closed_and_silent_servers_without_connecting() {
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    checked_service(&daemon, &["--check", "tcp-half-open"], 3);
    assert!(
        daemon
            .adm_ok(&["-S", "-n"])
            .contains("--check tcp-half-open"),
        "the check kind is saved"
    );

    // Every check is a SYN that the server answers and the balancer's kernel resets: rs3 counts
    // one reset of an embryonic (SYN-RECV) connection per check, and opens none.
    let (resets, opens) = (
        tcp_counter(&lab.reals[2], "TcpExtEmbryonicRsts"),
        tcp_counter(&lab.reals[2], "TcpPassiveOpens"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let checks = tcp_counter(&lab.reals[2], "TcpExtEmbryonicRsts") - resets;
    let opened = tcp_counter(&lab.reals[2], "TcpPassiveOpens") - opens;
    assert!(
        (3..=6).contains(&checks),
        "{checks} checks in 2 s at 500 ms"
    );
    assert_eq!(opened, 0, "a half-open check completed a connection");
    let established = lab.reals[2].sh("ss -Htn state established '( sport = :80 )'");
    assert!(established.trim().is_empty(), "{established}");

    // A closed port answers with a reset: down.
    lab.stop_web_server(0);
    wait_for(&daemon, 0, "down", FALL * INTERVAL + TIMEOUT + SLACK);
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(health.contains("refused"), "{health}");
    lab.start_web_server(0);
    wait_for(&daemon, 0, "up", RISE * INTERVAL + TIMEOUT + SLACK);

    // A server that drops SYNs is silent: down after the timeouts.
    lab.reals[1].sh("nft add table inet xlbtest && \
         nft add chain inet xlbtest input '{ type filter hook input priority 0; }' && \
         nft add rule inet xlbtest input tcp dport 80 drop");
    wait_for(&daemon, 1, "down", FALL * (INTERVAL + TIMEOUT) + SLACK);
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(health.contains("timed out after 300ms"), "{health}");
    lab.reals[1].sh("nft delete table inet xlbtest");
    wait_for(&daemon, 1, "up", RISE * INTERVAL + TIMEOUT + SLACK);
    // rs3 was never disturbed.
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert_eq!(listing.matches(" up").count(), 3, "{listing}");
}

/// What `n` fresh connections from the client to the VIP got, one answer (the page's first
/// word) per connection.
fn answers(lab: &DrLab, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let out = lab
                .client
                .run(&format!("curl -s --max-time 2 http://{VIP}/"));
            let page = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if page.is_empty() {
                "FAILED".to_owned()
            } else {
                page
            }
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_lost_quorum_sends_new_flows_to_the_sorry_server_until_it_is_back() {
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    let sorry = format!("{}:80", real_addr(2));
    checked_service(
        &daemon,
        &[
            "--check",
            "http",
            "--check-expect",
            "rs",
            "--quorum",
            "2",
            "--sorry-server",
            &sorry,
        ],
        2,
    );
    let before = answers(&lab, 20);
    assert!(
        before.iter().all(|a| a == "rs1" || a == "rs2"),
        "with the quorum, only the real servers answer: {before:?}"
    );
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(!listing.contains(&sorry), "{listing}");

    // rs1 fails: live weight 1 < quorum 2, so the sorry server takes every new flow.
    lab.stop_web_server(0);
    wait_for(&daemon, 0, "down", FALL * INTERVAL + TIMEOUT + SLACK);
    wait_for(&daemon, 2, "sorry", 2.0);
    let during = answers(&lab, 20);
    assert!(
        during.iter().all(|a| a == "rs3"),
        "without the quorum, the sorry server answers: {during:?}"
    );
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(health.contains("sorry server: quorum lost"), "{health}");
    let saved = daemon.adm_ok(&["-S", "-n"]);
    assert!(
        saved.contains(&format!("--sorry-server {sorry}"))
            && !saved.contains(&format!("-r {sorry}")),
        "the sorry server is saved as such, not as a real server:\n{saved}"
    );

    // rs1 is back: the quorum holds again and the sorry server leaves.
    lab.start_web_server(0);
    wait_for(&daemon, 0, "up", RISE * INTERVAL + TIMEOUT + SLACK);
    // The table is rebuilt on the health event, right after the state shows.
    let start = Instant::now();
    while daemon.adm_ok(&["-L", "-n"]).contains(&sorry) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the sorry server is still in use:\n{}",
            daemon.adm_ok(&["-L", "-n"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = answers(&lab, 20);
    assert!(
        after.iter().all(|a| a == "rs1" || a == "rs2") && after.iter().any(|a| a == "rs1"),
        "with the quorum back, the real servers answer again: {after:?}"
    );
}
