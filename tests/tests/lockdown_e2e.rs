//! A locked-down xlbd: with only the capabilities its systemd unit gives it (CAP_BPF,
//! CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW) it loads, attaches, forwards, checks real servers with
//! raw sockets and commands, and serves its metrics; without one of the first three it refuses to
//! start with a sentence, and without CAP_NET_RAW only the half-open check fails, saying why.
//! Other users than root are refused by the control socket with a sentence, also when the
//! socket's mode lets them connect.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use xlb_tests::{
    daemon::{binary, Daemon},
    lab::{real_addr, DrLab, VIP},
    root,
};

/// The capabilities of packaging/xlb.service, in setpriv's spelling.
const UNIT_CAPS: [&str; 4] = ["bpf", "perfmon", "net_admin", "net_raw"];

/// The bits of those capabilities in /proc/PID/status (CAP_NET_ADMIN 12, CAP_NET_RAW 13,
/// CAP_PERFMON 38, CAP_BPF 39).
const UNIT_CAP_MASK: u64 = 1 << 12 | 1 << 13 | 1 << 38 | 1 << 39;

/// setpriv's options that leave a root process only `caps` (its bounding set; nothing
/// inheritable), then run the rest of the command line.
fn only(caps: &[&str]) -> Vec<String> {
    let set = caps
        .iter()
        .fold("-all".to_owned(), |set, c| format!("{set},+{c}"));
    [
        "setpriv",
        "--bounding-set",
        &set,
        "--inh-caps",
        "-all",
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn wrapper(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The effective capabilities of process `pid`.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(hex.trim(), 16).expect("hex")
}

/// Waits until `-L -n` lists real server `i` in `state`, within `within`.
fn wait_for(daemon: &Daemon<'_>, i: usize, state: &str, within: Duration) {
    let addr = format!("{}:80", real_addr(i));
    let start = Instant::now();
    loop {
        let listing = daemon.adm_ok(&["-L", "-n"]);
        if listing
            .lines()
            .any(|l| l.contains(&addr) && l.trim_end().ends_with(state))
        {
            return;
        }
        assert!(
            start.elapsed() < within,
            "rs{} not {state} after {within:?}:\n{}",
            i + 1,
            daemon.adm_ok(&["-L", "-n", "--health"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service with a half-open check (a raw socket) on real server 1 and a command run without
/// a shell on real server 2.
fn add_checked_service(daemon: &Daemon<'_>) {
    let vip = format!("{VIP}:80");
    daemon.adm_ok(&[
        "-A",
        "-t",
        &vip,
        "-s",
        "mh",
        "--check",
        "tcp-half-open",
        "--check-interval",
        "500ms",
        "--check-timeout",
        "300ms",
        "--rise",
        "1",
        "--fall",
        "1",
    ]);
    let rs1 = format!("{}:80", real_addr(0));
    daemon.adm_ok(&["-a", "-t", &vip, "-r", &rs1, "-g", "-w", "1"]);
    let rs2 = format!("{}:80", real_addr(1));
    daemon.adm_ok(&[
        "-a",
        "-t",
        &vip,
        "-r",
        &rs2,
        "-g",
        "-w",
        "1",
        "--check",
        "exec",
        "--check-command",
        "test -d '/proc/self'",
    ]);
}

/// xlbadm run as user and group nobody.
fn adm_as_nobody(daemon: &Daemon<'_>, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(binary("xlbadm"))
        .args(args)
        .env("XLB_SOCKET", daemon.socket())
        .output()
        .expect("run xlbadm as nobody")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbd_does_its_whole_job_with_only_the_capabilities_of_its_unit() {
    root::require();
    let lab = DrLab::new(2);
    let caps = only(&UNIT_CAPS);
    let daemon = Daemon::start_wrapped(&lab.balancer, &wrapper(&caps));
    assert_eq!(
        effective_caps(daemon.pid()),
        UNIT_CAP_MASK,
        "xlbd should hold exactly the unit's capabilities"
    );

    add_checked_service(&daemon);
    wait_for(&daemon, 0, "up", Duration::from_secs(15));
    wait_for(&daemon, 1, "up", Duration::from_secs(15));
    let (counts, failed) = lab.spread(20);
    assert_eq!(failed, 0, "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 20, "{counts:?}");

    // The half-open check's raw socket sees the real server go away.
    lab.stop_web_server(0);
    wait_for(&daemon, 0, "down", Duration::from_secs(15));
    lab.start_web_server(0);
    wait_for(&daemon, 0, "up", Duration::from_secs(15));

    let metrics = lab
        .balancer
        .sh("curl -s --fail --max-time 5 http://127.0.0.1:9641/metrics");
    assert!(metrics.lines().any(|l| l == "xlb_up 1"), "{metrics}");

    // Another user: the socket (root's, mode 0600) refuses them, in a sentence.
    let before = daemon.adm_ok(&["-S", "-n"]);
    let refused = adm_as_nobody(&daemon, &["-L", "-n"]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!(
            "permission denied: only root may control xlbd (its socket {} is root's)\n",
            daemon.socket().display()
        )
    );
    // Opened to everyone by mistake, the daemon still refuses them by their uid, and nothing
    // changes.
    std::fs::set_permissions(
        daemon.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod the socket");
    let refused = adm_as_nobody(&daemon, &["-A", "-t", "10.0.0.200:80"]);
    assert_eq!(refused.status.code(), Some(255));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "permission denied: only root may control xlbd\n"
    );
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), before);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn each_capability_of_the_unit_is_needed_and_its_absence_is_said_in_a_sentence() {
    root::require();
    let lab = DrLab::new(2);
    for missing in ["bpf", "perfmon", "net_admin"] {
        let caps: Vec<&str> = UNIT_CAPS.into_iter().filter(|c| *c != missing).collect();
        let caps = only(&caps);
        let daemon = Daemon::wrapped(&lab.balancer, &wrapper(&caps));
        let said = daemon.start_refused(&[]);
        assert!(
            said.starts_with("xlbd: ") || said.contains("Error: "),
            "without {missing}: {said}"
        );
        assert!(
            !said.contains(" { ") && !said.contains("Os {"),
            "without {missing}, a debug dump rather than a sentence: {said}"
        );
        assert!(
            said.contains("ermission") || said.contains("not permitted"),
            "without {missing}, the cause should be named: {said}"
        );
    }

    // Without CAP_NET_RAW xlbd runs; only the half-open check fails, and says why.
    let caps = only(&["bpf", "perfmon", "net_admin"]);
    let daemon = Daemon::start_wrapped(&lab.balancer, &wrapper(&caps));
    add_checked_service(&daemon);
    wait_for(&daemon, 1, "up", Duration::from_secs(15));
    wait_for(&daemon, 0, "down", Duration::from_secs(15));
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(
        health.contains("not permitted") || health.contains("ermission"),
        "{health}"
    );
}
