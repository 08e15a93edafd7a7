//! The check through the forwarding path (`--check-via-vip`) end to end: a direct-routing real
//! server and a tunnel real server (with xlb's XDP decapsulator), both prepared by
//! `scripts/xlb-realserver`, are up when checked through the forwarding path. When the VIP is
//! taken off a real server's `lo`, that check takes it down with the likely cause as its
//! reason, while a plain tcp check of the same server's own address (another service) keeps
//! passing; with the VIP back, it comes back.
//!
//! Lab (namespaces of its own): a bridge; the balancer 10.78.0.1 / fd78::1, which holds the VIPs
//! on its eth0 (as a VRRP master does: the real servers' answers come from an address of its
//! own); rs1 10.78.0.11 / fd78::11 (direct routing) and rs2 10.78.0.12 / fd78::12 (tunnel), each
//! listening on port 80. The same steps run over IPv4 and over IPv6. And in the routed lab
//! (`xlb_tests::routed`): tunnel real servers in subnets of their own, reached through a router.

use std::{
    path::PathBuf,
    process::{Child, Output},
    time::{Duration, Instant},
};

use xlb_tests::{
    daemon::{binary, Daemon},
    netns::{run_sh, sh, veth, Netns},
    root,
    routed::{RoutedLab, VIP4 as ROUTED_VIP4, VIP6 as ROUTED_VIP6},
};

/// The lab's addresses in one family.
struct Family {
    /// The VIP checked through the forwarding path.
    vip: &'static str,
    /// A second service over the same real servers, checked the plain way.
    vip_plain: &'static str,
    balancer: &'static str,
    reals: [&'static str; 2],
    /// The prefix length of the lab's network, and of a VIP.
    prefix: u8,
    host_prefix: u8,
}

const V4: Family = Family {
    vip: "10.78.0.100",
    vip_plain: "10.78.0.101",
    balancer: "10.78.0.1",
    reals: ["10.78.0.11", "10.78.0.12"],
    prefix: 24,
    host_prefix: 32,
};

const V6: Family = Family {
    vip: "fd78::100",
    vip_plain: "fd78::101",
    balancer: "fd78::1",
    reals: ["fd78::11", "fd78::12"],
    prefix: 64,
    host_prefix: 128,
};

impl Family {
    /// An address and port 80 as `-L -n` prints it.
    fn at(addr: &str) -> String {
        if addr.contains(':') {
            format!("[{addr}]:80")
        } else {
            format!("{addr}:80")
        }
    }
}

/// Both families' VIPs, as xlb-realserver takes them.
const VIPS: &str = "10.78.0.100,fd78::100";
const MODES: [&str; 2] = ["dr", "tun"];

struct Lab {
    _switch: Netns,
    balancer: Netns,
    reals: Vec<Netns>,
    dir: PathBuf,
    listeners: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        let switch = Netns::new("vsw");
        switch.sh("ip link add br0 type bridge && ip link set br0 up");
        let balancer = Netns::new("vlb");
        let reals = vec![Netns::new("vrs1"), Netns::new("vrs2")];
        let dir = PathBuf::from(format!("/tmp/{}-via", balancer.name()));
        std::fs::create_dir_all(dir.join("bpffs")).expect("lab directory");
        sh(&format!("mount -t bpf bpf {}/bpffs", dir.display()));
        let mut lab = Lab {
            _switch: switch,
            balancer,
            reals,
            dir,
            listeners: Vec::new(),
        };
        let plug = |host: &Netns, port: &str, addrs: [&str; 2]| {
            veth(host, "eth0", &lab._switch, port);
            lab._switch.sh(&format!("ip link set {port} master br0"));
            host.sh(&format!(
                "ip addr add {}/{} dev eth0 && ip addr add {}/{} dev eth0 nodad",
                addrs[0], V4.prefix, addrs[1], V6.prefix
            ));
        };
        plug(&lab.balancer, "plb", [V4.balancer, V6.balancer]);
        // The IPv6 VIP deprecated (preferred_lft 0): a /128 on the interface would otherwise
        // be the balancer's preferred source towards the real servers, and every answer to the
        // balancer, plain checks' too, would stay on the real server that holds the VIP.
        lab.balancer.sh(&format!(
            "ip addr add {}/{} dev eth0 && ip addr add {}/{} dev eth0 nodad preferred_lft 0",
            V4.vip, V4.host_prefix, V6.vip, V6.host_prefix
        ));
        for (i, rs) in lab.reals.iter().enumerate() {
            plug(rs, &format!("prs{}", i + 1), [V4.reals[i], V6.reals[i]]);
        }
        for i in 0..lab.reals.len() {
            lab.realserver(i, "up");
            let listener = lab.reals[i]
                .command("python3")
                // Both families: http.server binds "::" dual-stack.
                .args(["-m", "http.server", "80", "--bind", "::"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start a listener");
            lab.listeners.push(listener);
        }
        for rs in &lab.reals {
            let start = Instant::now();
            while !rs
                .run("ss -Hltn sport = :80 | grep -q LISTEN")
                .status
                .success()
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no listener on port 80"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        lab
    }

    /// Runs `xlb-realserver ACTION` on real server `i` in its mode.
    fn realserver(&self, i: usize, action: &str) -> Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/xlb-realserver");
        let mut command = self.reals[i].command("bash");
        command
            .args([
                script, action, "--vip", VIPS, "--mode", MODES[i], "--iface", "eth0",
            ])
            .env("XLBD", binary("xlbd"))
            .env(
                "XLB_DECAP_PIN_DIR",
                self.dir.join(format!("bpffs/rs{}", i + 1)),
            )
            .env(
                "XLB_REALSERVER_STATE",
                self.dir.join(format!("rs{}.state", i + 1)),
            );
        if MODES[i] == "tun" {
            command.args(["--decap", "xdp"]);
        }
        let out = command.output().expect("run xlb-realserver");
        if action == "up" {
            assert!(
                out.status.success(),
                "xlb-realserver up failed on rs{}:\n{}{}",
                i + 1,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }
}

impl Lab {
    /// Attaches (or with `attach` false, removes) xlb's decapsulator on real server `i`.
    fn decap(&self, i: usize, attach: bool) {
        let mut command = self.reals[i].command(binary("xlbd").to_str().expect("a path"));
        command.args(["decap", "--iface", "eth0"]).env(
            "XLB_DECAP_PIN_DIR",
            self.dir.join(format!("bpffs/rs{}", i + 1)),
        );
        if !attach {
            command.arg("--remove");
        }
        let out = command.output().expect("run xlbd decap");
        assert!(
            out.status.success(),
            "xlbd decap on rs{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.reals.len() {
            let _ = self.realserver(i, "down");
        }
        let _ = run_sh(&format!("umount {}/bpffs", self.dir.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `-L -n` line of real server `real` under the service `vip`, both on port 80.
fn line_of(listing: &str, vip: &str, real: &str) -> String {
    let (service, real) = (Family::at(vip), Family::at(real));
    let mut in_service = false;
    for line in listing.lines() {
        if line.starts_with("TCP") {
            in_service = line.split_whitespace().nth(1) == Some(service.as_str());
        } else if in_service && line.split_whitespace().nth(1) == Some(real.as_str()) {
            return line.to_owned();
        }
    }
    String::new()
}

/// Waits until real server `real` of the service `vip` (port 80) is in `state` ("up"/"down").
fn wait_for(daemon: &Daemon<'_>, vip: &str, real: &str, state: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let line = line_of(&daemon.adm_ok(&["-L", "-n"]), vip, real);
        if line.trim_end().ends_with(state) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{real} of {vip} not {state} after {within:?}: {line}\n{}\n{}",
            daemon.adm_ok(&["-L", "-n", "--health"]),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_real_server_without_the_vip_on_lo_fails_the_check_through_the_forwarding_path() {
    root::require();
    check_through_the_forwarding_path(&V4);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_check_through_the_forwarding_path_works_over_ipv6() {
    root::require();
    check_through_the_forwarding_path(&V6);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_check_through_the_forwarding_path_reaches_tunnel_servers_behind_a_router() {
    root::require();
    // The real servers in subnets of their own: the probe goes to the router's MAC, inside the
    // tunnel; the balancer holds the VIPs on its lo.
    let lab = RoutedLab::new(2);
    let daemon = Daemon::start(&lab.balancer);
    let reals4 = ["10.81.3.2", "10.81.4.2"];
    let reals6 = ["fd81:3::2", "fd81:4::2"];
    for (vip, reals) in [(ROUTED_VIP4, reals4), (ROUTED_VIP6, reals6)] {
        let service = Family::at(vip);
        daemon.adm_ok(&[
            "-A",
            "-t",
            &service,
            "-s",
            "mh",
            "--check-via-vip",
            "--check-interval",
            "500ms",
            "--check-timeout",
            "400ms",
            "--rise",
            "2",
            "--fall",
            "2",
        ]);
        for real in reals {
            daemon.adm_ok(&["-a", "-t", &service, "-r", &Family::at(real), "-i"]);
        }
    }
    let within = Duration::from_secs(10);
    for (vip, reals) in [(ROUTED_VIP4, reals4), (ROUTED_VIP6, reals6)] {
        for real in reals {
            wait_for(&daemon, vip, real, "up", within);
        }
    }
    lab.reals[0].sh(&format!("ip addr del {ROUTED_VIP4}/32 dev lo"));
    wait_for(&daemon, ROUTED_VIP4, reals4[0], "down", within);
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(
        health.contains(
            "(tunnel to 10.81.3.2): does the real server decapsulate, and is the VIP on its lo?"
        ),
        "{health}"
    );
    // Its IPv6 VIP is still there.
    assert!(
        line_of(&daemon.adm_ok(&["-L", "-n"]), ROUTED_VIP6, reals6[0])
            .trim_end()
            .ends_with("up"),
        "{health}"
    );
    lab.reals[0].sh(&format!("ip addr add {ROUTED_VIP4}/32 dev lo"));
    wait_for(&daemon, ROUTED_VIP4, reals4[0], "up", within);
}

/// Both real servers up through the forwarding path of `family`; each down with its reason
/// without the VIP on its lo (its plain check still passing), up with it back; the tunnel real
/// server down without its decapsulator, up with it back.
fn check_through_the_forwarding_path(family: &Family) {
    let lab = Lab::new();
    let daemon = Daemon::start(&lab.balancer);
    let timing = [
        "--check-interval",
        "500ms",
        "--check-timeout",
        "400ms",
        "--rise",
        "2",
        "--fall",
        "2",
    ];
    let via = Family::at(family.vip);
    let plain = Family::at(family.vip_plain);
    let mut add = vec!["-A", "-t", via.as_str(), "-s", "mh", "--check-via-vip"];
    add.extend_from_slice(&timing);
    daemon.adm_ok(&add);
    let mut add = vec!["-A", "-t", plain.as_str(), "-s", "mh", "--check", "tcp"];
    add.extend_from_slice(&timing);
    daemon.adm_ok(&add);
    for (i, flag) in ["-g", "-i"].into_iter().enumerate() {
        let real = Family::at(family.reals[i]);
        daemon.adm_ok(&["-a", "-t", &via, "-r", &real, flag]);
        daemon.adm_ok(&["-a", "-t", &plain, "-r", &real, flag]);
    }
    let saved = daemon.adm_ok(&["-S", "-n"]);
    assert!(saved.contains("--check-via-vip"), "{saved}");

    let within = Duration::from_secs(10);
    for real in family.reals {
        wait_for(&daemon, family.vip, real, "up", within);
        wait_for(&daemon, family.vip_plain, real, "up", within);
    }
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(
        health.contains(&format!("tcp {via}")),
        "checked at the VIP:\n{health}"
    );

    let causes = [
        format!(
            "(direct routing to {}): is the VIP on the real server's lo and its ARP suppressed?",
            family.reals[0]
        ),
        format!(
            "(tunnel to {}): does the real server decapsulate, and is the VIP on its lo?",
            family.reals[1]
        ),
    ];
    let vip_on_lo = format!("{}/{} dev lo", family.vip, family.host_prefix);
    for (i, rs) in lab.reals.iter().enumerate() {
        rs.sh(&format!("ip addr del {vip_on_lo}"));
        wait_for(&daemon, family.vip, family.reals[i], "down", within);
        let health = daemon.adm_ok(&["-L", "-n", "--health"]);
        assert!(
            health.contains(&format!("no answer from {via} through the forwarding path"))
                && health.contains(&causes[i]),
            "rs{} down without its reason:\n{health}",
            i + 1
        );
        // The same server's own address still passes a plain check.
        assert!(
            line_of(
                &daemon.adm_ok(&["-L", "-n"]),
                family.vip_plain,
                family.reals[i]
            )
            .trim_end()
            .ends_with("up"),
            "the plain check of rs{} should pass:\n{}",
            i + 1,
            daemon.adm_ok(&["-L", "-n", "--health"])
        );
        rs.sh(&format!("ip addr add {vip_on_lo} nodad"));
        wait_for(&daemon, family.vip, family.reals[i], "up", within);
    }

    // The tunnel real server without its decapsulator: the probe really is tunneled.
    lab.decap(1, false);
    wait_for(&daemon, family.vip, family.reals[1], "down", within);
    let health = daemon.adm_ok(&["-L", "-n", "--health"]);
    assert!(health.contains(&causes[1]), "{health}");
    lab.decap(1, true);
    wait_for(&daemon, family.vip, family.reals[1], "up", within);
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(!listing.contains("down"), "everything back up:\n{listing}");
}
