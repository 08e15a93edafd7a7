//! The bench's lab: a client, the balancer and three real servers on one bridge, every address in
//! namespaces of its own, removed (with every process in them) when the lab is dropped.
//!
//! ```text
//! client 10.79.0.2 ── br0 ── balancer 10.79.0.1, VIPs 10.79.0.100-104 on eth0
//!                      ├── rs1 10.79.0.11   nginx on :80, the VIPs on lo, xlb's decapsulator
//!                      ├── rs2 10.79.0.12
//!                      └── rs3 10.79.0.13
//! ```
//!
//! The real servers are set up as an operator would, by `scripts/xlb-realserver up --mode tun
//! --decap xdp` (the VIPs on `lo` with ARP suppression, which direct routing needs too, and the
//! decapsulator, since this kernel has no ipip module). The client sends with TX checksum
//! offload off, which native XDP on veth needs (a partial checksum is lost when the balancer
//! turns the frame into an XDP frame); every target is measured so.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use xlb_tests::netns::{run_sh, sh, veth, Netns};

/// The balancer's own address, where the proxies listen.
pub const BALANCER: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
/// The VIPs, one per xlb service: DR to rs1, IP-in-IP to rs1, DR to all, IP-in-IP to all; then
/// [`FLOOR_VIP`].
pub const VIPS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(10, 79, 0, 100),
    Ipv4Addr::new(10, 79, 0, 101),
    Ipv4Addr::new(10, 79, 0, 102),
    Ipv4Addr::new(10, 79, 0, 103),
    FLOOR_VIP,
];
/// The VIP of the floor's fixed forwarder to rs1 (see `floor.rs`), held like the others: the
/// balancer answers ARP for it, the real servers have it on `lo`.
pub const FLOOR_VIP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 104);
/// How many real servers the lab has.
pub const REALS: usize = 3;

/// The address of real server `i` (0-based).
pub fn real_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 79, 0, 11 + i as u8)
}

/// One of the workspace's binaries, built in the same profile as this bench, beside it.
pub fn binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Fails unless xlbd and xlbadm were built beside this bench.
pub fn require_binaries() -> anyhow::Result<()> {
    for name in ["xlbd", "xlbadm"] {
        if !binary(name).exists() {
            bail!(
                "{} is missing: build it first (cargo xtask bench e2e does)",
                binary(name).display()
            );
        }
    }
    Ok(())
}

/// The nginx configuration of a real server: one worker, a small fixed answer naming it, no
/// logs, keep-alive connections never closed by the server during a run.
fn real_server_config(dir: &Path, name: &str) -> String {
    let dir = dir.display();
    format!(
        "worker_processes 1;\n\
         daemon off;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 10000000;\n\
         \x20 keepalive_timeout 60s;\n\
         \x20 client_body_temp_path {dir}/body;\n\
         \x20 proxy_temp_path {dir}/proxy;\n\
         \x20 fastcgi_temp_path {dir}/fastcgi;\n\
         \x20 uwsgi_temp_path {dir}/uwsgi;\n\
         \x20 scgi_temp_path {dir}/scgi;\n\
         \x20 server {{\n\
         \x20   listen 80 backlog=4096;\n\
         \x20   default_type text/plain;\n\
         \x20   location / {{ return 200 \"{name}\\n\"; }}\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The lab's namespaces, its directory (configurations, bpffs, logs) and the real servers' nginx.
pub struct Lab {
    /// Configurations, logs and the bpffs for the pins, under /tmp.
    pub dir: PathBuf,
    web_servers: Vec<Child>,
    /// The bridge.
    pub switch: Netns,
    /// Where wrk runs; its interface is `eth0`.
    pub client: Netns,
    /// Where xlb and the proxies run; its interface is `eth0`, its bridge port `plb`.
    pub balancer: Netns,
    /// The real servers `rs1`..`rs3`.
    pub reals: Vec<Netns>,
}

impl Lab {
    /// Builds the lab and starts the real servers' nginx.
    pub fn new() -> anyhow::Result<Self> {
        let switch = Netns::new("e2e-sw");
        let client = Netns::new("e2e-client");
        let balancer = Netns::new("e2e-lb");
        let reals = (0..REALS)
            .map(|i| Netns::new(&format!("e2e-rs{}", i + 1)))
            .collect();
        let dir = PathBuf::from(format!("/tmp/{}", balancer.name()));
        std::fs::create_dir_all(dir.join("bpffs")).context("the lab's directory")?;
        sh(&format!("mount -t bpf bpf {}/bpffs", dir.display()));
        let mut lab = Self {
            dir,
            web_servers: Vec::new(),
            switch,
            client,
            balancer,
            reals,
        };
        lab.wire();
        for i in 0..REALS {
            lab.set_up_real(i)?;
        }
        Ok(lab)
    }

    fn wire(&self) {
        self.switch
            .sh("ip link add br0 type bridge && ip link set br0 up");
        let plug = |host: &Netns, port: &str, addr: Ipv4Addr| {
            veth(host, "eth0", &self.switch, port);
            self.switch.sh(&format!("ip link set {port} master br0"));
            host.sh(&format!("ip addr add {addr}/24 dev eth0"));
            // Many short connections: a wide port range, a deep accept queue.
            host.sh("sysctl -qw net.ipv4.ip_local_port_range=\"1024 65535\" \
                 net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=4096 \
                 net.ipv4.tcp_max_syn_backlog=4096");
        };
        plug(&self.client, "pclient", CLIENT);
        plug(&self.balancer, "plb", BALANCER);
        for (i, rs) in self.reals.iter().enumerate() {
            plug(rs, &format!("prs{}", i + 1), real_addr(i));
        }
        // The balancer answers ARP for the VIPs, as an LVS director does.
        for vip in VIPS {
            self.balancer.sh(&format!("ip addr add {vip}/32 dev eth0"));
        }
        self.client.sh("ethtool -K eth0 tx off >/dev/null");
    }

    fn set_up_real(&mut self, i: usize) -> anyhow::Result<()> {
        let rs = &self.reals[i];
        let name = format!("rs{}", i + 1);
        let vips = VIPS.map(|v| v.to_string()).join(",");
        let out = rs
            .command("bash")
            .args([&self.realserver_script(), "up", "--vip", &vips])
            .args(["--mode", "tun", "--decap", "xdp", "--iface", "eth0"])
            .envs(self.realserver_env(i))
            .output()
            .context("running xlb-realserver")?;
        if !out.status.success() {
            bail!(
                "xlb-realserver up failed on {name}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = self.dir.join(&name);
        std::fs::create_dir_all(&dir).context("a real server's directory")?;
        let config = dir.join("nginx.conf");
        std::fs::write(&config, real_server_config(&dir, &name))
            .context("writing a real server's nginx.conf")?;
        let child = rs
            .command("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        self.web_servers.push(child);
        wait_for_answer(rs, &format!("http://{}/", real_addr(i)), &name)
    }

    fn realserver_script(&self) -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/xlb-realserver").to_owned()
    }

    fn realserver_env(&self, i: usize) -> [(String, PathBuf); 3] {
        [
            ("XLBD".into(), binary("xlbd")),
            (
                "XLB_DECAP_PIN_DIR".into(),
                self.dir.join(format!("bpffs/rs{}", i + 1)),
            ),
            (
                "XLB_REALSERVER_STATE".into(),
                self.dir.join(format!("rs{}.state", i + 1)),
            ),
        ]
    }
}

/// Waits until `url`, asked from `ns`, answers a text starting with `expected`.
pub fn wait_for_answer(ns: &Netns, url: &str, expected: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run(&format!("curl -s --max-time 1 {url}"));
        if String::from_utf8_lossy(&out.stdout).starts_with(expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{url} did not answer \"{expected}...\" from {} within 10 s",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.web_servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (i, rs) in self.reals.iter().enumerate() {
            let _ = rs
                .command("bash")
                .args([&self.realserver_script(), "down"])
                .envs(self.realserver_env(i))
                .output();
        }
        let _ = run_sh(&format!("umount {}/bpffs", self.dir.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
