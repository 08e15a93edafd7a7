//! The direct-routing lab: a client, the balancer and real servers on one bridge, each real server
//! running a real HTTP server (python's http.server, HTTP/1.1 keep-alive) that names itself, with
//! the VIP on `lo` and ARP suppression.
//!
//! Addresses (inside the lab's own namespaces only): 10.77.0.0/24; balancer .1, client .2, real
//! servers .11, .12, ...; VIP 10.77.0.100, held by the balancer's eth0 (it answers ARP for it, as
//! an LVS director does).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, Ipv6Addr},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use crate::netns::{veth, Netns};

/// The VIP of the lab.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The IPv6 VIP of the lab.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);

/// The IPv6 address of real server `i` (0-based).
pub fn real_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x11 + i as u16)
}

/// The address of real server `i` (0-based).
pub fn real_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 11 + i as u8)
}

/// The lab's namespaces.
pub struct DrLab {
    /// The bridge ("switch").
    pub switch: Netns,
    /// The client.
    pub client: Netns,
    /// The balancer; its interface is `eth0`.
    pub balancer: Netns,
    /// The real servers, named `rs1`, `rs2`, ... by their web servers.
    pub reals: Vec<Netns>,
    /// The web servers' processes by real server, stopped when the lab is dropped.
    web_servers: std::sync::Mutex<std::collections::HashMap<usize, Child>>,
}

impl DrLab {
    /// Builds the lab with `n` real servers and starts their web servers.
    pub fn new(n: usize) -> Self {
        let switch = Netns::new("sw");
        switch.sh("ip link add br0 type bridge && ip link set br0 up");
        let client = Netns::new("client");
        let balancer = Netns::new("lb");
        let reals: Vec<Netns> = (0..n)
            .map(|i| Netns::new(&format!("rs{}", i + 1)))
            .collect();

        let plug = |host: &Netns, port: &str, addr: Ipv4Addr, addr6: Ipv6Addr| {
            veth(host, "eth0", &switch, port);
            switch.sh(&format!("ip link set {port} master br0"));
            host.sh(&format!(
                "ip addr add {addr}/24 dev eth0 && ip addr add {addr6}/64 dev eth0 nodad"
            ));
        };
        plug(
            &client,
            "pclient",
            CLIENT,
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2),
        );
        plug(
            &balancer,
            "plb",
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1),
        );
        balancer.sh(&format!(
            "ip addr add {VIP}/32 dev eth0 && ip addr add {VIP6}/128 dev eth0 nodad"
        ));
        for (i, rs) in reals.iter().enumerate() {
            plug(rs, &format!("prs{}", i + 1), real_addr(i), real_addr6(i));
            rs.sh(&format!(
                "ip addr add {VIP}/32 dev lo && ip addr add {VIP6}/128 dev lo nodad && \
                 sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                 net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2"
            ));
        }
        let lab = Self {
            switch,
            client,
            balancer,
            reals,
            web_servers: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        for i in 0..n {
            lab.start_web_server(i);
        }
        lab
    }

    /// Starts the HTTP server of real server `i`, answering `rs<i+1>`, and waits until it serves.
    pub fn start_web_server(&self, i: usize) {
        let rs = &self.reals[i];
        let dir = format!("/tmp/{}-www", rs.name());
        std::fs::create_dir_all(&dir).expect("web root");
        std::fs::write(format!("{dir}/index.html"), format!("rs{}\n", i + 1)).expect("index");
        let child = spawn_web_server(rs, &dir, 80);
        self.web_servers
            .lock()
            .expect("web servers")
            .insert(i, child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = rs.run("curl -s --max-time 1 http://127.0.0.1/");
            if String::from_utf8_lossy(&out.stdout).trim() == format!("rs{}", i + 1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "web server of rs{} did not start",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the HTTP server of real server `i` (its host stays up).
    pub fn stop_web_server(&self, i: usize) {
        if let Some(mut child) = self.web_servers.lock().expect("web servers").remove(&i) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the page real server `i` serves.
    pub fn set_page(&self, i: usize, text: &str) {
        let dir = format!("/tmp/{}-www", self.reals[i].name());
        std::fs::write(format!("{dir}/index.html"), text).expect("write the page");
    }

    /// Sends `n` requests to the VIP from the client, each on a new connection, and returns
    /// how many each real server answered and how many failed.
    pub fn spread(&self, n: usize) -> (Vec<usize>, usize) {
        let out = self.client.sh(&format!(
            "for i in $(seq {n}); do curl -s --max-time 3 http://{VIP}/ || echo FAILED; done"
        ));
        let mut counts = vec![0; self.reals.len()];
        let mut failed = 0;
        for line in out.lines() {
            match line
                .trim()
                .strip_prefix("rs")
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) if (1..=counts.len()).contains(&i) => counts[i - 1] += 1,
                _ => failed += 1,
            }
        }
        failed += n.saturating_sub(out.lines().count());
        (counts, failed)
    }
}

/// Starts python's http.server in `ns` on `port` (IPv4 and IPv6), serving the files of `dir` over
/// HTTP/1.1 keep-alive, a thread per connection, without logging; it is not waited for.
pub fn spawn_web_server(ns: &Netns, dir: &str, port: u16) -> Child {
    ns.command("python3")
        .args([
            "-c",
            "import functools, http.server as h, sys\n\
             h.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'\n\
             h.SimpleHTTPRequestHandler.log_message = lambda *a: None\n\
             handler = functools.partial(h.SimpleHTTPRequestHandler, directory=sys.argv[1])\n\
             class S(h.ThreadingHTTPServer): address_family = __import__('socket').AF_INET6\n\
             S(('::', int(sys.argv[2])), handler).serve_forever()",
            dir,
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python http.server")
}

/// A client keeping one HTTP/1.1 connection to the VIP open, sending a request on it whenever
/// asked.
pub struct KeepAliveClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl KeepAliveClient {
    /// Opens the connection from `client` and sends the first request.
    pub fn open(client: &Netns) -> (Self, String) {
        let mut child = client
            .command("timeout")
            .args([
                "60",
                "python3",
                "-c",
                &format!(
                    "import http.client, sys\n\
                     c = http.client.HTTPConnection('{VIP}', 80, timeout=5)\n\
                     while True:\n\
                     \x20   c.request('GET', '/')\n\
                     \x20   print(c.getresponse().read().decode().strip(), flush=True)\n\
                     \x20   if not sys.stdin.readline():\n\
                     \x20       break\n"
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the keep-alive client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut this = Self {
            child,
            stdin,
            stdout,
        };
        let first = this.read_answer();
        (this, first)
    }

    fn read_answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read an answer");
        assert!(
            !line.is_empty(),
            "the keep-alive connection failed (see stderr)"
        );
        line.trim().to_owned()
    }

    /// Sends another request on the same connection and returns who answered.
    pub fn again(&mut self) -> String {
        self.stdin
            .write_all(b"\n")
            .expect("ask for another request");
        self.stdin.flush().expect("flush");
        self.read_answer()
    }
}

impl Drop for KeepAliveClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DrLab {
    fn drop(&mut self) {
        for child in self.web_servers.lock().expect("web servers").values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for rs in &self.reals {
            let _ = std::fs::remove_dir_all(format!("/tmp/{}-www", rs.name()));
        }
    }
}
