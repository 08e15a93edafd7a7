//! xlbd and xlbadm end to end: the daemon runs in the balancer's namespace of the DR lab and is
//! configured only with xlbadm commands; curl requests go through the VIP; the counters of
//! `-L -n --stats` match what the client sent; a restart of the daemon while the client keeps
//! requesting loses no request and keeps the connection table; `-C` clears.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use lb_userspace::dataplane::Dataplane;
use xlb_tests::{
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    netns::Netns,
    root,
};

/// The workspace's binaries, next to this test's executable's directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo xtask test does)",
        path.display()
    );
    path
}

/// A running xlbd with its own socket, pins and state file; stopped and unpinned when dropped.
struct Daemon<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    pin_dir: PathBuf,
    child: Option<Child>,
}

impl<'a> Daemon<'a> {
    fn start(ns: &'a Netns) -> Self {
        let dir = PathBuf::from(format!("/tmp/{}-xlbd", ns.name()));
        std::fs::create_dir_all(&dir).expect("daemon directory");
        // `ip netns exec` gives the daemon a mount namespace of its own with a fresh /sys, so pins
        // under its /sys/fs/bpf would vanish with it: pin on a bpffs mounted here instead.
        let bpffs = dir.join("bpffs");
        std::fs::create_dir_all(&bpffs).expect("bpffs mount point");
        xlb_tests::netns::sh(&format!("mount -t bpf bpf {}", bpffs.display()));
        let pin_dir = bpffs.join("xlb");
        let mut daemon = Self {
            ns,
            dir,
            pin_dir,
            child: None,
        };
        daemon.spawn();
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("xlb.sock")
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("xlbd.log"))
            .expect("log file");
        let child = self
            .ns
            .command(binary("xlbd").to_str().expect("path"))
            .args([
                "--iface",
                "eth0",
                "--xdp-mode",
                "generic",
                "--report-every",
                "0",
            ])
            .arg("--config")
            .arg(self.dir.join("none.toml"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-file")
            .arg(self.dir.join("state.json"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start xlbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "xlbd did not open its socket; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("xlbd.log")).unwrap_or_default()
    }

    /// SIGTERM, and wait for the exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on the pid of a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait for xlbd");
            assert!(
                status.success(),
                "xlbd exited with {status}; log:\n{}",
                self.log()
            );
        }
    }

    fn adm(&self, args: &[&str]) -> Output {
        Command::new(binary("xlbadm"))
            .args(args)
            .env("XLB_SOCKET", self.socket())
            .output()
            .expect("run xlbadm")
    }

    fn adm_ok(&self, args: &[&str]) -> String {
        let out = self.adm(args);
        assert!(
            out.status.success(),
            "xlbadm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Dataplane::remove_pins(&self.pin_dir);
        let _ = xlb_tests::netns::run_sh(&format!("umount {}/bpffs", self.dir.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlbadm_configures_xlbd_which_survives_a_restart_without_losing_a_request() {
    root::require();
    let lab = DrLab::new(2);
    let mut daemon = Daemon::start(&lab.balancer);
    let vip = format!("{VIP}:80");

    // Configure with xlbadm only.
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "mh"]);
    for i in 0..2 {
        daemon.adm_ok(&[
            "-a",
            "-t",
            &vip,
            "-r",
            &format!("{}:80", real_addr(i)),
            "-g",
            "-w",
            "1",
        ]);
    }
    let dup = daemon.adm(&["-A", "-t", &vip]);
    assert_eq!(dup.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("Service already exists"));
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(listing.contains(&format!("TCP  {vip} mh")), "{listing}");
    assert_eq!(listing.matches("Route").count(), 2, "{listing}");

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
