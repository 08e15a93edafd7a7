//! xlbd and xlbadm end to end: the daemon runs in the balancer's namespace of the DR lab and is
//! configured only with xlbadm commands; curl requests go through the VIP; the counters of
//! `-L -n --stats` match what the client sent; a restart of the daemon while the client keeps
//! requesting loses no request and keeps the connection table; `-C` clears; the Prometheus
//! metrics on the namespace's loopback agree with `-L -n --stats`.

use std::{process::Stdio, time::Duration};

use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    root,
};

/// The numbers of the service line of `-L -n --stats` for `service`.
fn stats_line(listing: &str, service: &str) -> Vec<u64> {
    let line = listing
        .lines()
        .find(|l| l.contains(service) && !l.trim_start().starts_with("->"))
        .unwrap_or_else(|| panic!("no line for {service} in:\n{listing}"));
    line.split_whitespace()
        .skip(2)
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("not a number in {line}"))
        })
        .collect()
}

/// With xlbadm: a Maglev service on `vip` and the lab's first `reals` real servers by direct
/// routing, weight 1.
fn add_dr_service(daemon: &Daemon, vip: &str, reals: usize) {
    daemon.adm_ok(&["-A", "-t", vip, "-s", "mh"]);
    for i in 0..reals {
        daemon.adm_ok(&[
            "-a",
            "-t",
            vip,
            "-r",
            &format!("{}:80", real_addr(i)),
            "-g",
            "-w",
            "1",
        ]);
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbadm_configures_xlbd_which_survives_a_restart_without_losing_a_request() {
    root::require();
    let lab = DrLab::new(2);
    let mut daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");

    // Configure with xlbadm only.
    add_dr_service(&daemon, &vip, 2);
    let dup = daemon.adm(&["-A", "-t", &vip]);
    assert_eq!(dup.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("Service already exists"));
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(listing.contains(&format!("TCP  {vip} mh")), "{listing}");
    assert_eq!(listing.matches("Route").count(), 2, "{listing}");
    // One service listed by itself (xlbd sends that service alone): the same lines, without
    // the version line, as ipvsadm prints one service.
    let (version, lines) = listing.split_once('\n').expect("a listing");
    assert!(
        version.starts_with("IP Virtual Server version"),
        "{listing}"
    );
    assert_eq!(daemon.adm_ok(&["-L", "-n", "-t", &vip]), lines);
    let none = daemon.adm(&["-L", "-n", "-t", &format!("{VIP}:81")]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No such service"),
        "{none:?}"
    );

    // Count what the client sends to the VIP with an nftables counter.
    lab.client.sh(&format!(
        "nft add table ip xlbt && \
         nft add chain ip xlbt out {{ type filter hook output priority 0 \\; }} && \
         nft add rule ip xlbt out ip daddr {VIP} tcp dport 80 counter"
    ));
    let (counts, failed) = lab.spread(40);
    assert_eq!(failed, 0, "{counts:?}");
    let counter = lab.client.sh("nft list chain ip xlbt out");
    let sent: Vec<u64> = counter
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .filter_map(|w| w.parse().ok())
        .collect();
    let (packets, ip_bytes) = (sent[0], sent[1]);
    let stats = stats_line(&daemon.adm_ok(&["-L", "-n", "--stats", "--exact"]), &vip);
    // Conns InPkts OutPkts InBytes OutBytes; bytes counted from the Ethernet header.
    assert_eq!(stats[0], 40, "connections: {stats:?}");
    assert_eq!(stats[1], packets, "packets: {stats:?} vs {packets} sent");
    assert_eq!(
        stats[3],
        ip_bytes + 14 * packets,
        "bytes: {stats:?} vs {ip_bytes} sent"
    );
    assert_eq!((stats[2], stats[4]), (0, 0), "DR sees no reply");

    // Restart while the client keeps requesting, and while a connection stays open.
    let saved = daemon.adm_ok(&["-S", "-n"]);
    let (mut kept, owner) = KeepAliveClient::open(&lab.client);
    let loop_out = lab
        .client
        .command("sh")
        .args([
            "-c",
            &format!(
                "for i in $(seq 60); do curl -s --max-time 3 http://{VIP}/ || echo FAILED; \
                 sleep 0.05; done"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the request loop");
    std::thread::sleep(Duration::from_millis(500));
    daemon.stop();
    std::thread::sleep(Duration::from_millis(300));
    daemon.spawn();
    let out = loop_out.wait_with_output().expect("request loop");
    let answers = String::from_utf8_lossy(&out.stdout);
    assert_eq!(answers.lines().count(), 60, "{answers}");
    assert!(
        !answers.contains("FAILED"),
        "requests failed across the restart:\n{answers}\nxlbd log:\n{}",
        daemon.log()
    );
    assert_eq!(
        kept.again(),
        owner,
        "the open connection moved across the restart"
    );
    assert_eq!(
        daemon.adm_ok(&["-S", "-n"]),
        saved,
        "the restarted daemon lost its state"
    );
    assert!(
        daemon.log().contains("adopted the running state"),
        "{}",
        daemon.log()
    );
    let listing = daemon.adm_ok(&["-L", "-n"]);
    let active: u32 = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("->") && l.contains("Route"))
        .map(|l| {
            l.split_whitespace()
                .nth(4)
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(active >= 1, "the connection table was lost:\n{listing}");
    let conns = daemon.adm_ok(&["-L", "-c", "-n"]);
    let owner_addr = real_addr(owner[2..].parse::<usize>().expect("rsN") - 1);
    assert!(
        conns
            .lines()
            .any(|l| l.contains("ESTABLISHED") && l.ends_with(&format!("{owner_addr}:80"))),
        "the kept connection is not listed:\n{conns}"
    );

    // -C clears: nothing listed, nothing forwarded.
    daemon.adm_ok(&["-C"]);
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), "");
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(!listing.contains(&vip), "{listing}");
    let out = lab
        .client
        .run(&format!("curl -s --max-time 2 http://{VIP}/"));
    assert!(!out.status.success(), "a cleared service still answered");

    // --detach-on-exit leaves nothing behind.
    daemon.stop();
    daemon.spawn_with(&["--detach-on-exit"]);
    assert!(lab.balancer.sh("ip link show dev eth0").contains("xdp"));
    daemon.stop();
    let left: Vec<_> = std::fs::read_dir(&daemon.pin_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "pins left after --detach-on-exit: {left:?}"
    );
    let link = lab.balancer.sh("ip link show dev eth0");
    assert!(!link.contains("xdp"), "still attached:\n{link}");
}

/// Whether the pinned service entry of TCP `VIP:port` has `SERVICE_F_SETTLED` (its SYNs skip
/// the embryonic table).
fn settled(daemon: &Daemon, port: u16) -> bool {
    let data = aya::maps::MapData::from_pin(daemon.pin_dir.join(lb_common::maps::SERVICES))
        .expect("open the pinned services");
    let services: aya::maps::HashMap<_, lb_common::ServiceKey, lb_common::Service> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
    let key = lb_common::ServiceKey::v4(u32::from(VIP), port, lb_common::PROTO_TCP);
    let svc = services.get(&key, 0).expect("the service");
    svc.flags & lb_common::service::SERVICE_F_SETTLED != 0
}

/// Polls [`settled`] for up to 10 s; whether it became `want`.
fn becomes_settled(daemon: &Daemon, port: u16, want: bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if settled(daemon, port) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbd_settles_a_maglev_service_a_moment_after_each_change_and_never_a_round_robin_one() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");
    add_dr_service(&daemon, &vip, 2);
    assert!(
        !settled(&daemon, 80),
        "settled at once: a SYN retransmitted across the change could move"
    );
    assert!(becomes_settled(&daemon, 80, true), "{}", daemon.log());
    let settled_metric = || {
        let metrics = lab
            .balancer
            .sh("curl -s --fail --max-time 5 http://127.0.0.1:9641/metrics");
        sample(
            &metrics,
            "xlb_service_settled",
            &format!(r#"{{service="{vip}",protocol="tcp"}}"#),
        )
    };
    assert_eq!(settled_metric(), 1, "the metric says so");
    let (counts, failed) = lab.spread(40);
    assert_eq!(failed, 0, "through the settled service: {counts:?}");
    // A weight edited: the new table unsettles the service in the same update (the flag is
    // clear when xlbadm returns), and the sweep settles it again.
    daemon.adm_ok(&[
        "-e",
        "-t",
        &vip,
        "-r",
        &format!("{}:80", real_addr(0)),
        "-g",
        "-w",
        "3",
    ]);
    assert!(
        !settled(&daemon, 80),
        "a new table left the service settled"
    );
    assert!(becomes_settled(&daemon, 80, true), "{}", daemon.log());
    // Round robin: a retransmitted SYN scheduled again would take the next turn.
    daemon.adm_ok(&["-E", "-t", &vip, "-s", "rr"]);
    assert!(!settled(&daemon, 80));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!settled(&daemon, 80), "a round-robin service was settled");
    assert_eq!(settled_metric(), 0);
    let (counts, failed) = lab.spread(40);
    assert_eq!(failed, 0, "{counts:?}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbd_installs_its_configuration_file_and_refuses_a_bad_one() {
    root::require();
    let lab = DrLab::new(2);
    let config = format!(
        "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"{VIP}\"\nport = 80\n\
         [[services.reals]]\naddr = \"{}\"\nport = 80\n\
         [[services.reals]]\naddr = \"{}\"\nport = 80\nweight = 2\n",
        real_addr(0),
        real_addr(1)
    );
    {
        let daemon = Daemon::start_with_config(&lab.balancer, Some(&config));
        let saved = daemon.adm_ok(&["-S", "-n"]);
        assert_eq!(
            saved,
            format!(
                "-A -t {VIP}:80 -s mh\n-a -t {VIP}:80 -r {}:80 -g -w 1\n\
                 -a -t {VIP}:80 -r {}:80 -g -w 2\n",
                real_addr(0),
                real_addr(1)
            )
        );
        let (counts, failed) = lab.spread(30);
        assert_eq!(failed, 0, "{counts:?}");
    }

    // A real server on another port than its service's: refused, with the reason, at start.
    let bad = config.replace(
        &format!("addr = \"{}\"\nport = 80", real_addr(1)),
        &format!("addr = \"{}\"\nport = 81", real_addr(1)),
    );
    let dir = std::env::temp_dir().join(format!("{}-bad", lab.balancer.name()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("xlb.toml"), bad).expect("bad config");
    let out = lab
        .balancer
        .command("timeout")
        .arg("20")
        .arg(xlb_tests::daemon::binary("xlbd"))
        .args(["--iface", "eth0", "--xdp-mode", "generic"])
        .arg("--config")
        .arg(dir.join("xlb.toml"))
        .arg("--socket")
        .arg(dir.join("xlb.sock"))
        .arg("--pin-dir")
        .arg(format!("/sys/fs/bpf/{}", lab.balancer.name()))
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .arg("--detach-on-exit")
        .output()
        .expect("run xlbd");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xlbd accepted a bad configuration");
    assert!(
        stderr.contains("in the configuration")
            && stderr.contains(":81")
            && stderr.contains("xlb.toml:")
            && stderr.contains("services[0].reals[1].port"),
        "unclear error: {stderr}"
    );
}

/// The value of `name`'s sample whose labels are exactly `labels` (`{...}` included), in a
/// Prometheus text exposition.
fn sample(metrics: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{labels} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}{labels} in:\n{metrics}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbd_serves_prometheus_metrics_and_a_status_page_on_its_loopback() {
    root::require();
    let lab = DrLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "mh"]);
    for i in 0..2 {
        let weight = (i + 1).to_string();
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-a", "-t", &vip, "-r", &real, "-g", "-w", &weight]);
    }
    let requests = 20;
    let (counts, failed) = lab.spread(requests);
    assert_eq!(failed, 0, "{counts:?}");

    // Inside the balancer's namespace, on its default address.
    let base = "http://127.0.0.1:9641";
    let metrics = lab
        .balancer
        .sh(&format!("curl -s --fail --max-time 5 {base}/metrics"));
    let listing = daemon.adm_ok(&["-L", "-n", "--stats", "--exact"]);
    assert!(metrics.lines().any(|l| l == "xlb_up 1"), "{metrics}");
    // The sweep (once a second, the first at start) has built the connection filter; x86-64
    // only (lb-userspace's conn_filter.rs).
    assert_eq!(
        sample(&metrics, "xlb_connection_filter_on", ""),
        u64::from(cfg!(target_arch = "x86_64")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix("xlb_connection_filter_bits_set_ratio "))
            .any(|v| v.parse::<f64>().is_ok_and(|r| (0.0..0.5).contains(&r))),
        "{metrics}"
    );

    let svc = format!("service=\"{vip}\",protocol=\"tcp\"");
    let svc_packets = sample(&metrics, "xlb_service_packets_total", &format!("{{{svc}}}"));
    let svc_stats = stats_line(&listing, &vip);
    assert_eq!(svc_packets, svc_stats[1], "InPkts:\n{listing}\n{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "xlb_service_connections_total",
            &format!("{{{svc}}}")
        ),
        requests as u64
    );
    let mut real_packets = 0;
    for (i, &answered) in counts.iter().enumerate() {
        let real = format!("{}:80", real_addr(i));
        let labels = format!("{{{svc},real=\"{real}\",forwarding=\"dr\"}}");
        let packets = sample(&metrics, "xlb_real_packets_total", &labels);
        // The server's line of -L --stats: "-> RIP:PORT Conns InPkts OutPkts InBytes OutBytes".
        let line = listing
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("-> {real}")))
            .unwrap_or_else(|| panic!("no line for {real} in:\n{listing}"));
        let numbers: Vec<u64> = line
            .split_whitespace()
            .skip(2)
            .map(|n| n.parse().expect("a number"))
            .collect();
        assert_eq!(packets, numbers[1], "{real}: {line} vs\n{metrics}");
        assert_eq!(
            sample(&metrics, "xlb_real_bytes_total", &labels),
            numbers[3]
        );
        assert_eq!(
            sample(&metrics, "xlb_real_connections_total", &labels),
            answered as u64,
            "each request is a new connection to the server that answered it"
        );
        assert_eq!(sample(&metrics, "xlb_real_weight", &labels), i as u64 + 1);
        assert_eq!(sample(&metrics, "xlb_real_up", &labels), 1, "unchecked");
        real_packets += packets;
    }
    assert_eq!(real_packets, svc_packets, "{metrics}");
    assert!(
        sample(
            &metrics,
            "xlb_datapath_packets_total",
            "{reason=\"verdict_tx\"}"
        ) >= svc_packets
    );

    let content_type = lab.balancer.sh(&format!(
        "curl -s --max-time 5 -o /dev/null -w %{{content_type}} {base}/metrics"
    ));
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let page = lab
        .balancer
        .sh(&format!("curl -s --fail --max-time 5 {base}/"));
    assert!(page.contains(&vip), "{page}");
    assert!(page.contains(&format!("{}:80", real_addr(1))), "{page}");
    let status = |args: &str| {
        lab.balancer.sh(&format!(
            "curl -s --max-time 5 -o /dev/null -w %{{http_code}} {args}"
        ))
    };
    browser_shows_the_status_page(&lab, base, &page, &vip);
    assert_eq!(status(&format!("{base}/nope")), "404");
    assert_eq!(status(&format!("-X POST {base}/metrics")), "405");
    assert_eq!(status(&format!("-I {base}/metrics")), "200");
    assert!(daemon.log().contains("serving metrics"), "{}", daemon.log());

    // Connection counts come from the sampler's walk of the pinned table, a second old at most:
    // they catch up with -L's (ActiveConn + InActConn of every server).
    let listing = daemon.adm_ok(&["-L", "-n"]);
    let listed: u64 = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("-> ") && !l.contains("RemoteAddress"))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| fields[i].parse::<u64>().expect("a count");
            n(4) + n(5)
        })
        .sum();
    assert_eq!(
        listed, requests as u64,
        "every flow is in the table:\n{listing}"
    );
    let sampled = |metrics: &str| -> u64 {
        (0..2)
            .map(|i| {
                let labels = format!("{{{svc},real=\"{}:80\",forwarding=\"dr\"}}", real_addr(i));
                sample(metrics, "xlb_real_active_connections", &labels)
                    + sample(metrics, "xlb_real_inactive_connections", &labels)
            })
            .sum()
    };
    let mut last = String::new();
    let caught_up = (0..30).any(|_| {
        last = lab
            .balancer
            .sh(&format!("curl -s --fail --max-time 5 {base}/metrics"));
        sampled(&last) == listed || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(caught_up, "-L counts {listed} connections:\n{last}");

    // The page: the service at a glance, and charts once the sampler has two samples.
    let mut page = String::new();
    let charted = (0..50).any(|_| {
        page = lab
            .balancer
            .sh(&format!("curl -s --fail --max-time 5 {base}/"));
        page.contains("<polyline points=") || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    assert!(charted, "no chart on the page:\n{page}");
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 3, "{page}");
    assert!(
        page.contains("<span class=\"badge\">UP 2/2</span>"),
        "{page}"
    );
}

/// `ip netns exec NS xlbd` pins on the /sys that `ip netns exec` mounts for that command alone:
/// xlbd (and `xlbd decap`) refuse it with the fix, touching nothing; `nsenter --net` keeps the
/// host's /sys/fs/bpf, and the pins and the program outlive the daemon.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbd_under_ip_netns_exec_refuses_pins_that_would_vanish_and_nsenter_keeps_them() {
    root::require();
    let ns = xlb_tests::netns::Netns::new("pins");
    let dir = std::env::temp_dir().join(format!("{}-pins", ns.name()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pin_dir = format!("/sys/fs/bpf/{}", ns.name());
    let xlbd = xlb_tests::daemon::binary("xlbd");
    let daemon_args = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "--iface",
            "lo",
            "--xdp-mode",
            "generic",
            "--report-every",
            "0",
            "--metrics-listen",
            "off",
            "--pin-dir",
            &pin_dir,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        for (flag, file) in [
            ("--config", "none.toml"),
            ("--socket", "xlb.sock"),
            ("--state-file", "state.json"),
        ] {
            args.push(flag.to_owned());
            args.push(dir.join(file).display().to_string());
        }
        args.extend(extra.iter().map(ToString::to_string));
        args
    };
    let fix = format!("nsenter --net=/run/netns/{}", ns.name());

    // Bounded: an xlbd that accepted would serve until stopped.
    let out = ns
        .command("timeout")
        .arg("20")
        .arg(&xlbd)
        .args(daemon_args(&[]))
        .output()
        .expect("run xlbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xlbd pinned on a vanishing /sys");
    assert!(stderr.contains(&fix), "no fix given: {stderr}");
    let out = ns
        .command(xlbd.to_str().expect("path"))
        .args(["decap", "--iface", "lo", "--addr", "10.99.0.1"])
        .output()
        .expect("run xlbd decap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "xlbd decap pinned on a vanishing /sys"
    );
    assert!(stderr.contains(&fix), "no fix given: {stderr}");
    assert!(
        ns.sh("ip -d link show lo")
            .lines()
            .all(|l| !l.contains("xdp")),
        "a refused xlbd attached a program"
    );

    // The fix: the pins and the program outlive the daemon; a second one adopts them and, with
    // --detach-on-exit, removes them.
    let nsenter = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(&xlbd)
            .args(daemon_args(extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    for (extra, pins_after) in [(&[][..], true), (&["--detach-on-exit"][..], false)] {
        let mut child = nsenter(extra).spawn().expect("start xlbd");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !dir.join("xlb.sock").exists() {
            assert!(std::time::Instant::now() < deadline, "xlbd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().expect("wait for xlbd").success());
        assert_eq!(
            std::path::Path::new(&pin_dir)
                .join(lb_common::maps::SERVICES)
                .exists(),
            pins_after,
            "pins after xlbd {extra:?} exited"
        );
        assert_eq!(
            ns.sh("ip -d link show lo").contains("xdp"),
            pins_after,
            "the program after xlbd {extra:?} exited"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_permanent_neighbour_entry_the_operator_made_is_left_alone() {
    root::require();
    let lab = DrLab::new(3);
    let daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");
    // The operator pins real server 1's MAC, and server 3's with a noarp entry; real server 2 is
    // left to xlbd.
    let pinned = "02:00:00:00:99:01";
    lab.balancer.sh(&format!(
        "ip neigh replace {} lladdr {pinned} dev eth0 nud permanent",
        real_addr(0)
    ));
    let noarp = "02:00:00:00:99:03";
    lab.balancer.sh(&format!(
        "ip neigh replace {} lladdr {noarp} dev eth0 nud noarp",
        real_addr(2)
    ));
    add_dr_service(&daemon, &vip, 3);
    let first = lab
        .balancer
        .sh(&format!("ip neigh show {} dev eth0", real_addr(0)));
    assert!(
        first.contains(pinned) && first.contains("PERMANENT") && !first.contains("MANAGED"),
        "the operator's entry was replaced: {first}"
    );
    let second = lab
        .balancer
        .sh(&format!("ip -d neigh show {} dev eth0", real_addr(1)));
    assert!(
        second.contains("managed") || second.contains("MANAGED"),
        "real server 2 has no managed entry: {second}"
    );
    let third = lab.balancer.sh(&format!(
        "ip -d neigh show {} dev eth0 nud all",
        real_addr(2)
    ));
    assert!(
        third.contains(noarp)
            && third.contains("NOARP")
            && !third.contains("managed")
            && !third.contains("MANAGED"),
        "the operator's noarp entry was replaced: {third}"
    );
}

/// A browser profile directory, removed when dropped (also when the test fails).
struct Profile(String);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The status page in a real browser, as an operator opens it: headless Chromium in the
/// balancer's namespace builds the page (`--dump-dom`: the document after parsing) with the
/// service's box and badge, both servers and every traffic chart the server sent, and draws it
/// (`--screenshot`: a picture of some size, not a blank one).
fn browser_shows_the_status_page(lab: &DrLab, base: &str, served: &str, vip: &str) {
    let profile = Profile(format!("/tmp/xlbt{}-chromium", std::process::id()));
    let chromium = format!(
        "timeout 90 chromium --headless --no-sandbox --disable-gpu --no-first-run \
         --user-data-dir={} --window-size=1280,1024",
        profile.0
    );
    let dom = lab
        .balancer
        .sh(&format!("{chromium} --dump-dom {base}/ 2>/dev/null"));
    assert!(dom.contains("<title>xlb status</title>"), "{dom}");
    assert!(
        dom.contains(vip),
        "the service is missing from the page:\n{dom}"
    );
    for i in 0..2 {
        let real = format!("{}:80", real_addr(i));
        assert!(
            dom.contains(&real),
            "{real} is missing from the page:\n{dom}"
        );
    }
    assert!(dom.contains("UP 2/2"), "the service's badge:\n{dom}");
    let charts = served.matches("<svg class=\"chart\"").count();
    assert!(charts >= 1, "no traffic chart was served:\n{served}");
    assert_eq!(
        dom.matches("<svg class=\"chart\"").count(),
        charts,
        "the browser did not build every chart the server sent:\n{dom}"
    );
    let shot = format!("{}/page.png", profile.0);
    lab.balancer.sh(&format!(
        "{chromium} --screenshot={shot} {base}/ 2>/dev/null"
    ));
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!(
        "the status page in Chromium: a screenshot of {} bytes",
        png.len()
    );
    // A blank 1280x1024 page compresses to a few kilobytes; this one has text, tables and charts.
    assert!(
        png.len() > 20_000,
        "a screenshot of {} bytes: the page looks empty",
        png.len()
    );
}
