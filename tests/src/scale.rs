//! A large balancer: the save/restore rules of many services with many real servers each, and
//! the namespace that xlbd runs them in.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    daemon::{binary, Daemon},
    netns::Netns,
};

/// The VIP of service `s`: 10.9.0.0/16, from 10.9.0.1 on.
pub fn vip(s: usize) -> String {
    let n = s + 1;
    format!("10.9.{}.{}", n / 256, n % 256)
}

/// The `-S` rules of `services` services (TCP port 80, Maglev) with `reals` real servers each
/// (direct routing, weight 1). Every real server has an address of its own, in 10.8.0.0/16: the
/// worst case for the daemon, which keeps each one's next hop resolved.
pub fn rules(services: usize, reals: usize) -> String {
    let mut text = String::new();
    for s in 0..services {
        let vip = vip(s);
        text.push_str(&format!("-A -t {vip}:80 -s mh\n"));
        for r in 0..reals {
            let n = s * reals + r + 1;
            text.push_str(&format!(
                "-a -t {vip}:80 -r 10.8.{}.{}:80 -g -w 1\n",
                n / 256,
                n % 256
            ));
        }
    }
    text
}

/// A namespace for a large balancer: eth0 (a veth whose peer stays in it) with the real servers'
/// network on link, and room in the neighbour table for one entry per real server.
pub fn namespace(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.sh(
        "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && \
         ip link set eth1 up && ip addr add 10.8.255.254/16 dev eth0",
    );
    ns
}

/// Runs `xlbadm -R` against the daemon with `rules` on its standard input; returns its output
/// and how long it took.
pub fn restore(daemon: &Daemon<'_>, rules: &str) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(binary("xlbadm"))
        .arg("-R")
        .env("XLB_SOCKET", daemon.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xlbadm -R");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write the rules");
    let out = child.wait_with_output().expect("wait for xlbadm -R");
    (out, start.elapsed())
}
