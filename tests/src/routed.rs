//! The routed tunneling lab: client — router — balancer, and real servers in subnets of their own
//! behind the router, each using xlb's decapsulator (set up by `scripts/xlb-realserver`) and
//! holding the VIPs on `lo`. Every address lives in the lab's own namespaces.
//!
//! ```text
//! client 10.81.1.2 / fd81:1::2 ── router ── balancer 10.81.2.2 / fd81:2::2 (VIPs routed here)
//!                                  ├── rs1 10.81.3.2 / fd81:3::2
//!                                  └── rs2 10.81.4.2 / fd81:4::2
//! VIPs 10.81.100.1 and fd81:100::1
//! ```
//!
//! Each real server runs one Python program: HTTP on port 80 (`/` names the server, `/big.bin`
//! is 5 MB), a UDP echo on 5353 answering its name, and on 9000 a TCP sink that answers with its
//! name and the number of bytes it received, all dual-stack.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    daemon::binary,
    netns::{run_sh, sh, veth, Netns},
};

/// The IPv4 VIP.
pub const VIP4: &str = "10.81.100.1";
/// The IPv6 VIP.
pub const VIP6: &str = "fd81:100::1";
/// Size of `/big.bin` on every real server.
pub const BIG: usize = 5 * 1024 * 1024;

const SERVER: &str = r#"
import http.server, socket, socketserver, sys, threading, os
name, root = sys.argv[1], sys.argv[2]
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def __init__(self, *a, **k): super().__init__(*a, directory=root, **k)
    def log_message(self, *a): pass
class S6(http.server.ThreadingHTTPServer): address_family = socket.AF_INET6
class Sink(socketserver.BaseRequestHandler):
    def handle(self):
        n = 0
        while True:
            b = self.request.recv(65536)
            if not b: break
            n += len(b)
        self.request.sendall(f"{name} {n}\n".encode())
class T6(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(('::', 5353))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(name.encode(), peer)
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=T6(('::', 9000), Sink).serve_forever, daemon=True).start()
S6(('::', 80), H).serve_forever()
"#;

/// The lab's namespaces and what runs in them.
pub struct RoutedLab {
    /// The client.
    pub client: Netns,
    /// The router between everything.
    pub router: Netns,
    /// The balancer; its interface is `eth0`.
    pub balancer: Netns,
    /// The real servers `rs1`, `rs2`.
    pub reals: Vec<Netns>,
    dir: PathBuf,
    servers: Vec<Child>,
}

impl RoutedLab {
    /// Builds the lab with `n` real servers (at most 4), sets them up with
    /// `xlb-realserver up --mode tun --decap xdp`, and starts their servers.
    pub fn new(n: usize) -> Self {
        let client = Netns::new("client");
        let router = Netns::new("router");
        let balancer = Netns::new("lb");
        let reals: Vec<Netns> = (0..n)
            .map(|i| Netns::new(&format!("rs{}", i + 1)))
            .collect();
        let dir = PathBuf::from(format!("/tmp/{}-lab", router.name()));
        std::fs::create_dir_all(dir.join("bpffs")).expect("lab directory");
        sh(&format!("mount -t bpf bpf {}/bpffs", dir.display()));
        let mut lab = Self {
            client,
            router,
            balancer,
            reals,
            dir,
            servers: Vec::new(),
        };
        lab.wire();
        for i in 0..n {
            lab.set_up_real(i);
        }
        lab
    }

    fn wire(&self) {
        self.router
            .sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        let link = |host: &Netns, subnet: u8, port: &str| {
            veth(host, "eth0", &self.router, port);
            self.router.sh(&format!(
                "ip addr add 10.81.{subnet}.1/24 dev {port} && \
                 ip addr add fd81:{subnet}::1/64 dev {port} nodad"
            ));
            host.sh(&format!(
                "ip addr add 10.81.{subnet}.2/24 dev eth0 && \
                 ip addr add fd81:{subnet}::2/64 dev eth0 nodad && \
                 ip route add default via 10.81.{subnet}.1 && \
                 ip -6 route add default via fd81:{subnet}::1"
            ));
        };
        link(&self.client, 1, "c0");
        link(&self.balancer, 2, "l0");
        for (i, rs) in self.reals.iter().enumerate() {
            link(rs, 3 + i as u8, &format!("r{}", i + 1));
        }
        // The VIPs are routed to the balancer, which also holds them (on lo) so that what it
        // passes up is answered by its own stack.
        self.router.sh(&format!(
            "ip route add {VIP4}/32 via 10.81.2.2 && ip -6 route add {VIP6}/128 via fd81:2::2"
        ));
        self.balancer.sh(&format!(
            "ip addr add {VIP4}/32 dev lo && ip addr add {VIP6}/128 dev lo nodad"
        ));
        // Whole segments, not TSO/GSO trains, so that the path MTU is exercised packet by packet.
        self.client.sh("ethtool -K eth0 tso off gso off >/dev/null");
    }

    fn set_up_real(&mut self, i: usize) {
        let rs = &self.reals[i];
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/xlb-realserver");
        let out = rs
            .command("bash")
            .args([
                script,
                "up",
                "--vip",
                &format!("{VIP4},{VIP6}"),
                "--mode",
                "tun",
            ])
            .args(["--decap", "xdp", "--iface", "eth0"])
            .env("XLBD", binary("xlbd"))
            .env(
                "XLB_DECAP_PIN_DIR",
                self.dir.join(format!("bpffs/rs{}", i + 1)),
            )
            .env(
                "XLB_REALSERVER_STATE",
                self.dir.join(format!("rs{}.state", i + 1)),
            )
            .output()
            .expect("run xlb-realserver");
        assert!(
            out.status.success(),
            "xlb-realserver up failed on rs{}:\n{}{}",
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let root = self.dir.join(format!("www{}", i + 1));
        std::fs::create_dir_all(&root).expect("web root");
        std::fs::write(root.join("index.html"), format!("rs{}\n", i + 1)).expect("index");
        let big: Vec<u8> = (0..BIG).map(|b| (b % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), big).expect("big file");
        let child = rs
            .command("python3")
            .args(["-c", SERVER, &format!("rs{}", i + 1)])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the servers");
        self.servers.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&rs.run("curl -s --max-time 1 http://127.0.0.1/").stdout)
            .starts_with("rs")
        {
            assert!(
                Instant::now() < deadline,
                "the servers of rs{} did not start",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Adds a real server on a link of its own to the balancer's second interface `eth1`
    /// (10.81.9.0/24, fd81:9::/64), so that packets for it leave through another interface than
    /// they came in on (XDP_REDIRECT). Its replies are routed back through the balancer, which
    /// accepts them on eth1 although their source, the VIP, is one of its own addresses.
    pub fn add_real_behind_balancer(&mut self) -> usize {
        let i = self.reals.len();
        let rs = Netns::new(&format!("rs{}", i + 1));
        veth(&self.balancer, "eth1", &rs, "eth0");
        self.balancer.sh(
            "ip addr add 10.81.9.1/24 dev eth1 && ip addr add fd81:9::1/64 dev eth1 nodad && \
             sysctl -qw net.ipv4.conf.eth1.forwarding=1 net.ipv4.conf.eth0.forwarding=1 \
             net.ipv4.conf.eth1.accept_local=1 net.ipv6.conf.all.forwarding=1",
        );
        rs.sh(
            "ip addr add 10.81.9.2/24 dev eth0 && ip addr add fd81:9::2/64 dev eth0 nodad && \
             ip route add default via 10.81.9.1 && ip -6 route add default via fd81:9::1",
        );
        // The router reaches that subnet through the balancer.
        self.router.sh(
            "ip route add 10.81.9.0/24 via 10.81.2.2 && ip -6 route add fd81:9::/64 via fd81:2::2",
        );
        self.reals.push(rs);
        self.set_up_real(i);
        i
    }

    /// The bpffs directory for the balancer's pins.
    pub fn pin_root(&self) -> PathBuf {
        self.dir.join("bpffs")
    }
}

impl Drop for RoutedLab {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (i, rs) in self.reals.iter().enumerate() {
            let _ = rs.run(&format!(
                "XLBD={} XLB_DECAP_PIN_DIR={} XLB_REALSERVER_STATE={} bash {}/../scripts/xlb-realserver down",
                binary("xlbd").display(),
                self.dir.join(format!("bpffs/rs{}", i + 1)).display(),
                self.dir.join(format!("rs{}.state", i + 1)).display(),
                env!("CARGO_MANIFEST_DIR"),
            ));
        }
        let _ = run_sh(&format!("umount {}/bpffs", self.dir.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
