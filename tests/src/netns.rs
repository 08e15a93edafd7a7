//! Network-namespace topologies for tests, removed when dropped (also when the test panics), and
//! running code or commands inside them.
//!
//! Names carry the test process's pid (`xlbt<pid>-...`), so that a later run can remove what a
//! killed run left behind ([`sweep_stale`]).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

const PREFIX: &str = "xlbt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = run_sh(cmd);
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstatus: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command through `sh -c` and returns its output, whatever its status.
pub fn run_sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh for {cmd}: {e}"))
}

/// Whether a process with this pid is alive.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the namespaces of test runs whose process is gone.
pub fn sweep_stale() {
    let list = run_sh("ip netns list");
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|pid| !alive(pid)) {
            let _ = run_sh(&format!(
                "ip netns pids {name} | xargs -r kill -9; ip netns del {name}"
            ));
        }
    }
}

/// One network namespace, deleted (with every process still in it) when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after the test (`tag`) with its loopback up.
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        sh(&format!("ip netns add {name}"));
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// The namespace's name, for `ip netns exec` and `ip link set ... netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and panics when it fails.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', r"'\''")
        ))
    }

    /// Runs a command inside the namespace, whatever its status.
    pub fn run(&self, cmd: &str) -> Output {
        run_sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', r"'\''")
        ))
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on this thread with the thread inside the namespace, then moves it back. BPF
    /// attachment by interface name and `BPF_PROG_TEST_RUN` with an ingress interface resolve
    /// names in the calling thread's namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target =
            File::open(format!("/run/netns/{}", self.name)).expect("open the test namespace");
        // SAFETY: setns on a namespace fd we hold open; only this thread changes namespace.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        struct Back(File);
        impl Drop for Back {
            fn drop(&mut self) {
                // SAFETY: as above, back to the namespace the thread came from.
                let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
            }
        }
        let _back = Back(home);
        f()
    }

    /// The interface's index inside the namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        self.sh(&format!("cat /sys/class/net/{iface}/ifindex"))
            .trim()
            .parse()
            .expect("ifindex")
    }

    /// The interface's MAC address inside the namespace.
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        parse_mac(
            self.sh(&format!("cat /sys/class/net/{iface}/address"))
                .trim(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_sh(&format!(
            "ip netns pids {0} | xargs -r kill -9; ip netns del {0}",
            self.name
        ));
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC address: {s}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a MAC address: {s}"));
    }
    mac
}

/// Connects `a`'s interface `a_if` to `b`'s interface `b_if` with a veth pair.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let tmp_a = format!("xa{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let tmp_b = format!("xb{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let tmp_a = format!("{tmp_a}{}", std::process::id() % 100_000);
    let tmp_b = format!("{tmp_b}{}", std::process::id() % 100_000);
    sh(&format!(
        "ip link add {tmp_a} type veth peer name {tmp_b} && \
         ip link set {tmp_a} netns {} && ip link set {tmp_b} netns {}",
        a.name(),
        b.name()
    ));
    a.sh(&format!(
        "ip link set {tmp_a} name {a_if} && ip link set {a_if} up"
    ));
    b.sh(&format!(
        "ip link set {tmp_b} name {b_if} && ip link set {b_if} up"
    ));
}
