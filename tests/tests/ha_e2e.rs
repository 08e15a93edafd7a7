//! High availability end to end: `xlbd detach` takes the data path down after `kill -9`; two
//! balancers with keepalived (the shipped example and track script) hand the VIP over when the
//! master's xlbd is frozen, killed or stopped, when its keepalived dies, when it is cut off the
//! network and when it has no live real server, with a client requesting all along: the gap in
//! service and the failed requests are measured and printed, long-lived connections keep their
//! real server, and the old master takes the VIP back.

use std::time::Duration;

use xlb_tests::{
    daemon::{binary, Daemon},
    ha::{self, gap, holds_vip, wait_until, Keepalived, Recorder},
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    root,
};

/// xlbd's configuration: the VIP's port 80 over the lab's two real servers.
fn config() -> String {
    format!(
        "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"{VIP}\"\nport = 80\n\
         [[services.reals]]\naddr = \"{}\"\nport = 80\n\
         [[services.reals]]\naddr = \"{}\"\nport = 80\n",
        real_addr(0),
        real_addr(1)
    )
}

/// `xlbd detach` in the daemon's namespace, with its pin directory and socket.
fn detach(lab: &DrLab, daemon: &Daemon, extra: &[&str]) -> (bool, String) {
    let mut command = lab.balancer.command(binary("xlbd").to_str().expect("path"));
    command
        .arg("detach")
        .arg("--pin-dir")
        .arg(&daemon.pin_dir)
        .arg("--socket")
        .arg(daemon.socket())
        .args(extra);
    ha::output(command)
}

fn has_xdp(lab: &DrLab) -> bool {
    lab.balancer.sh("ip link show dev eth0").contains("xdp")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbd_detach_takes_the_data_path_down_after_kill_9() {
    root::require();
    let lab = DrLab::new(2);
    let mut daemon = Daemon::start_with_config(&lab.balancer, Some(&config()));
    // Ready once it answers (it binds its socket before it loads the data path).
    daemon.adm_ok(&["-L", "-n"]);
    let (_, failed) = lab.spread(10);
    assert_eq!(failed, 0);

    // Refused while the daemon answers.
    let (ok, out) = detach(&lab, &daemon, &[]);
    assert!(!ok && out.contains("an xlbd answers on"), "{out}");
    assert!(has_xdp(&lab));

    // kill -9: the balancer keeps forwarding, and ip link cannot take it off.
    daemon.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let (_, failed) = lab.spread(10);
    assert_eq!(failed, 0, "the pinned balancer stopped with its daemon");
    let off = lab.balancer.run("ip link set dev eth0 xdpgeneric off");
    assert!(
        !off.status.success() || has_xdp(&lab),
        "ip link took a pinned link off: the README's advice is out of date"
    );

    let (ok, out) = detach(&lab, &daemon, &["--iface", "eth0"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("eth0: removed the pin") && out.contains("the balancer is off eth0"),
        "{out}"
    );
    assert!(!has_xdp(&lab), "still attached after xlbd detach:\n{out}");
    // The VIP is the balancer's own address now: its kernel refuses the connection.
    let (counts, failed) = lab.spread(3);
    assert_eq!(failed, 3, "answered without the balancer: {counts:?}");
    assert!(
        daemon.pin_dir.join("prog").exists(),
        "the program's and maps' pins are kept for the next xlbd"
    );
    let (ok, out) = detach(&lab, &daemon, &[]);
    assert!(ok && out.contains("no pinned link"), "{out}");

    // A new xlbd adopts the maps and attaches again.
    daemon.spawn();
    daemon.adm_ok(&["-L", "-n"]);
    assert!(has_xdp(&lab));
    let (_, failed) = lab.spread(10);
    assert_eq!(failed, 0, "{}", daemon.log());

    // --all takes every pin.
    daemon.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out) = detach(
        &lab,
        &daemon,
        &[
            "--all",
            "--state-file",
            &format!("/tmp/{}-xlbd/state.json", lab.balancer.name()),
        ],
    );
    assert!(
        ok && out.contains("the connection table is forgotten"),
        "{out}"
    );
    assert!(!has_xdp(&lab));
    assert!(!daemon.pin_dir.exists(), "pins left after --all");
}

/// The three long-lived connections of a phase, and who answered each.
struct LongLived(Vec<(KeepAliveClient, String)>);

impl LongLived {
    fn open(lab: &DrLab) -> Self {
        Self((0..3).map(|_| KeepAliveClient::open(&lab.client)).collect())
    }

    /// Asks on each again: the same real server answers.
    fn check(&mut self, phase: &str) {
        for (client, owner) in &mut self.0 {
            assert_eq!(
                &client.again(),
                owner,
                "{phase}: a long-lived connection changed real server"
            );
        }
    }
}

/// What a phase measured, printed at the end.
struct Figures {
    phase: &'static str,
    requests: usize,
    failed: usize,
    outage: f64,
    back_failed: usize,
    back_outage: f64,
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_keepalived_pair_hands_the_vip_over_and_flows_keep_their_real_server() {
    root::require();
    ha::ensure_package("keepalived", "keepalived");
    let lab = DrLab::new(2);
    let lb2 = ha::second_balancer(&lab);
    let lb1 = &lab.balancer;
    let mut xlbd1 = Daemon::start_with_config(lb1, Some(&config()));
    let _xlbd2 = Daemon::start_with_config(&lb2, Some(&config()));
    xlbd1.adm_ok(&["-L", "-n"]);
    _xlbd2.adm_ok(&["-L", "-n"]);
    let mut ka1 = Keepalived::start(lb1, 150);
    let ka2 = Keepalived::start(&lb2, 100);
    let logs = |ka1: &Keepalived, xlbd1: &Daemon| {
        format!(
            "lb1's keepalived:\n{}\nlb2's keepalived:\n{}\nlb1's xlbd:\n{}",
            ka1.log(),
            ka2.log(),
            xlbd1.log()
        )
    };
    let lb1_master = |within: u64| {
        wait_until(Duration::from_secs(within), || {
            holds_vip(lb1) && !holds_vip(&lb2)
        })
    };
    let lb2_master = |within: u64| {
        wait_until(Duration::from_secs(within), || {
            holds_vip(&lb2) && !holds_vip(lb1)
        })
    };
    assert!(
        lb1_master(10),
        "lb1 did not become master:\n{}",
        logs(&ka1, &xlbd1)
    );
    let (_, failed) = lab.spread(5);
    assert_eq!(failed, 0);

    let recorder = Recorder::start(&lab.client);
    std::thread::sleep(Duration::from_millis(500));
    let mut figures = Vec::new();
    // Runs one phase: `act(true)` takes lb1 out, lb2 must hold the VIP (lb1 must not, unless
    // `lb1_keeps` says it cannot know, being cut off), the long-lived connections keep their
    // server; `act(false)` brings lb1 back, and it takes the VIP again.
    let mut phase = |name: &'static str, act: &mut dyn FnMut(bool), lb1_keeps: bool| {
        let mut long_lived = LongLived::open(&lab);
        let start = ha::now();
        act(true);
        let taken = if lb1_keeps {
            wait_until(Duration::from_secs(10), || holds_vip(&lb2))
        } else {
            lb2_master(10)
        };
        assert!(taken, "{name}: lb2 did not take the VIP");
        std::thread::sleep(Duration::from_millis(1500));
        long_lived.check(name);
        let mended = ha::now();
        act(false);
        assert!(lb1_master(15), "{name}: lb1 did not take the VIP back");
        std::thread::sleep(Duration::from_millis(1500));
        long_lived.check(name);
        let end = ha::now();
        let requests = recorder.requests();
        let (count, failed, outage) = gap(&requests, start, mended);
        let (back_count, back_failed, back_outage) = gap(&requests, mended, end);
        println!(
            "{name}: {failed} of {count} requests failed, gap {outage:.2} s; lb1's return: \
             {back_failed} of {back_count} failed, gap {back_outage:.2} s"
        );
        figures.push(Figures {
            phase: name,
            requests: count,
            failed,
            outage,
            back_failed,
            back_outage,
        });
    };

    // xlbd frozen: its metrics time out, the track script fails; the data path still forwards.
    phase(
        "xlbd frozen (SIGSTOP)",
        &mut |cut| xlbd1.signal(if cut { libc::SIGSTOP } else { libc::SIGCONT }),
        false,
    );
    // xlbd killed: the pinned data path forwards until lb2 has the VIP; a new xlbd adopts it.
    phase(
        "xlbd killed (kill -9)",
        &mut |cut| {
            if cut {
                xlbd1.signal(libc::SIGKILL)
            } else {
                xlbd1.spawn_with(&["--detach-on-exit"]);
                xlbd1.adm_ok(&["-L", "-n"]);
            }
        },
        false,
    );
    // keepalived dies at once (kill -9 of its VRRP process, then of itself): lb1 keeps the VIP
    // but stops advertising; lb2 takes over after the master-down interval.
    phase(
        "keepalived killed (kill -9)",
        &mut |cut| {
            if cut {
                let vrrp = ka1.vrrp_pid().expect("keepalived's VRRP process");
                // SAFETY: kill of keepalived's child, by its pid file.
                unsafe { libc::kill(vrrp, libc::SIGKILL) };
                ka1.signal(libc::SIGKILL);
            } else {
                ka1.spawn();
            }
        },
        true,
    );
    // lb1 cut off the network (its switch port down): both are masters until it returns. The
    // bridge forgets lb1's MAC and floods what the client still sends there to lb2, whose
    // generic-mode XDP forwards it: no gap here (a hardware switch floods too, but native XDP
    // does not see frames for another MAC). On its return lb1 has lost its neighbour entries
    // (the kernel flushes them with the carrier) and xlbd makes them again.
    phase(
        "master cut off (link down)",
        &mut |cut| {
            lab.switch.sh(&format!(
                "ip link set plb {}",
                if cut { "down" } else { "up" }
            ));
        },
        true,
    );
    // lb1 hung or powered off: the switch drops every frame from or to its port (which stays
    // up, so no frame for lb1 is flooded to lb2). lb2 takes over after the master-down interval.
    phase(
        "master cut off (its switch port drops all)",
        &mut |cut| {
            if cut {
                lab.switch.sh(
                    "nft add table bridge xlbt && nft add chain bridge xlbt cut \
                     \"{ type filter hook forward priority 0; }\" && \
                     nft add rule bridge xlbt cut iifname plb drop && \
                     nft add rule bridge xlbt cut oifname plb drop",
                );
            } else {
                lab.switch.sh("nft delete table bridge xlbt");
            }
        },
        true,
    );
    // No live real server on lb1 (both quiesced there only): its track script fails.
    phase(
        "no live real server on the master",
        &mut |cut| {
            for i in 0..2 {
                xlbd1.adm_ok(&[
                    "-e",
                    "-t",
                    &format!("{VIP}:80"),
                    "-r",
                    &format!("{}:80", real_addr(i)),
                    "-g",
                    "-w",
                    if cut { "0" } else { "1" },
                ]);
            }
        },
        false,
    );
    // The recommended stop: keepalived first (it hands over at once), then xlbd, which takes
    // its data path away with --detach-on-exit.
    phase(
        "keepalived stopped, then xlbd --detach-on-exit",
        &mut |cut| {
            if cut {
                ka1.signal(libc::SIGTERM);
                assert!(
                    lb2_master(10),
                    "lb2 did not take the VIP from a stopping keepalived"
                );
                xlbd1.stop();
            } else {
                xlbd1.spawn_with(&["--detach-on-exit"]);
                xlbd1.adm_ok(&["-L", "-n"]);
                ka1.spawn();
            }
        },
        false,
    );
    // The wrong order: xlbd --detach-on-exit stopped while lb1 is master. Its kernel refuses
    // connections to the VIP until the track script (every second) notices.
    phase(
        "xlbd --detach-on-exit stopped on the master",
        &mut |cut| {
            if cut {
                xlbd1.stop();
            } else {
                xlbd1.spawn_with(&["--detach-on-exit"]);
                xlbd1.adm_ok(&["-L", "-n"]);
            }
        },
        false,
    );
    drop(recorder);

    println!("phase | requests | failed | gap (s) | failed on lb1's return | gap (s)");
    for f in &figures {
        println!(
            "{} | {} | {} | {:.2} | {} | {:.2}",
            f.phase, f.requests, f.failed, f.outage, f.back_failed, f.back_outage
        );
    }
    for f in &figures {
        // The data path outlives the daemon or keepalived, or lb1 hands over before it goes:
        // nothing fails. Elsewhere lb1 cannot forward until lb2 has the VIP.
        if !f.phase.starts_with("master cut off (its switch")
            && !f.phase.starts_with("no live real server")
            && !f.phase.starts_with("xlbd --detach-on-exit")
        {
            assert_eq!(f.failed, 0, "{}: requests failed", f.phase);
        }
        assert!(f.outage < 3.0, "{}: a gap of {:.2} s", f.phase, f.outage);
        assert!(
            f.back_outage < 3.0,
            "{}: a gap of {:.2} s on lb1's return",
            f.phase,
            f.back_outage
        );
    }
    let log = ka1.log() + &ka2.log();
    for bad in ["SECURITY VIOLATION", "WARNING", "does not exist"] {
        assert!(!log.contains(bad), "keepalived warned ({bad}):\n{log}");
    }
}
