//! A balancer at its limits: xlbd takes 512 services of 8 real servers each (4096) from one
//! `xlbadm -R`, lists them all, refuses the 513th service and the 4097th real server with the
//! limit and the option that raises it (changing nothing), keeps its size across a restart,
//! refuses a restart that asks for another size, and holds more once started with
//! `--max-services`.

use lb_userspace::dataplane::Dataplane;
use xlb_tests::{daemon::Daemon, root, scale};

fn services_listed(listing: &str) -> usize {
    listing.lines().filter(|l| l.starts_with("TCP ")).count()
}

fn reals_listed(listing: &str) -> usize {
    listing
        .lines()
        .filter(|l| l.trim_start().starts_with("-> ") && !l.contains("RemoteAddress"))
        .count()
}

/// 4,096 real servers on link want 4,096 neighbour entries: past the kernel's limit (its
/// `gc_thresh3`, global to every namespace, 1,024 by default) the operator reads one sentence
/// with the count and the sysctl, not a line per server.
fn neighbour_table_told_once(log: &str) {
    assert!(
        !log.contains("cannot keep the real server's next hop resolved"),
        "a line per server: {log}"
    );
    let limit: usize = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX);
    let told: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the kernel's neighbour table is full"))
        .collect();
    if limit < 1024 * 3 {
        assert_eq!(told.len(), 1, "{log}");
        assert!(
            told[0].contains("real servers (10.8.")
                && told[0].contains("raise net.ipv4.neigh.default.gc_thresh3"),
            "{}",
            told[0]
        );
    } else if limit > 8192 {
        assert!(told.is_empty(), "{log}");
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_balancer_holds_512_services_of_8_servers_and_refuses_more_with_the_option_to_raise_it() {
    root::require();
    let ns = scale::namespace("capacity");
    let mut daemon = Daemon::start(&ns);

    let (out, took) = scale::restore(&daemon, &scale::rules(512, 8));
    assert!(
        out.status.success(),
        "xlbadm -R of 512 × 8 failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert_eq!(services_listed(&listing), 512, "{listing}");
    assert_eq!(reals_listed(&listing), 4096);
    neighbour_table_told_once(&daemon.log());
    let saved = daemon.adm_ok(&["-S", "-n"]);

    // The 513th service: the limit and the option, nothing changed.
    let more = daemon.adm(&["-A", "-t", "10.9.100.1:80", "-s", "mh"]);
    assert_eq!(more.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&more.stderr);
    assert!(
        stderr.contains(
            "the balancer holds at most 512 services; start xlbd with --max-services N to raise it"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ServiceAddr"),
        "Rust debug output: {stderr}"
    );
    // The 4097th real server likewise.
    let more = daemon.adm(&["-a", "-t", "10.9.0.1:80", "-r", "10.8.100.1:80", "-g"]);
    assert_eq!(more.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&more.stderr);
    assert!(
        stderr.contains("the balancer holds at most 4096 real servers")
            && stderr.contains("--max-reals N"),
        "{stderr}"
    );
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), saved);

    // A restart adopts the pinned maps at their size; one asking for another size is refused
    // with the way out, and the balancer it would have replaced keeps its rules.
    daemon.stop();
    let refused = daemon.start_refused(&["--max-services", "1024"]);
    assert!(
        refused.contains("the running balancer's pinned maps hold 512 services, not the 1024"),
        "{refused}"
    );
    daemon.spawn();
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), saved);

    // Resized: stopped with its pins removed, started with --max-services.
    daemon.stop();
    Dataplane::remove_pins(&daemon.pin_dir).expect("remove the pins");
    daemon.spawn_with(&["--max-services", "600"]);
    let (out, _) = scale::restore(&daemon, &scale::rules(513, 1));
    assert!(
        out.status.success(),
        "xlbadm -R of 513 services with --max-services 600: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(services_listed(&daemon.adm_ok(&["-L", "-n"])), 513);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_restore_past_the_limit_is_refused_whole_with_the_limit() {
    root::require();
    let ns = scale::namespace("capacity-r");
    let daemon = Daemon::start_with_args(&ns, &["--max-services", "4"]);
    daemon.adm_ok(&["-A", "-t", "10.9.200.1:80", "-s", "mh"]);
    let saved = daemon.adm_ok(&["-S", "-n"]);

    let (out, _) = scale::restore(&daemon, &scale::rules(4, 2));
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the balancer holds at most 4 services; start xlbd with --max-services N to raise it"
        ),
        "{stderr}"
    );
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), saved);
}
