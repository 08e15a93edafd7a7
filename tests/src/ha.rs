//! High availability labs: a second balancer on the DR lab's bridge, keepalived run from the
//! shipped example configuration, and a client that records every request it makes (when, how
//! long, who answered) so that a failover's gap can be measured afterwards.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    lab::{DrLab, VIP},
    netns::{run_sh, sh, veth, Netns},
};

/// The second balancer's address on the lab's bridge.
pub const LB2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// The checkout's root (the tests crate's parent).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate has a parent")
        .to_path_buf()
}

/// Installs a Debian package when `command` is missing, as `cargo xtask setup` does.
pub fn ensure_package(command: &str, package: &str) {
    if run_sh(&format!("command -v {command}")).status.success() {
        return;
    }
    sh(&format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends {package}"
    ));
}

/// Seconds since the epoch, as the recording client writes them.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Polls `ok` every 20 ms until it holds or `within` has passed; whether it held.
pub fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `ns` holds the lab's VIP on its eth0.
pub fn holds_vip(ns: &Netns) -> bool {
    String::from_utf8_lossy(&ns.run("ip -4 -o addr show dev eth0").stdout)
        .contains(&format!(" {VIP}/32 "))
}

/// Adds a second balancer (`lb2`, eth0 at [`LB2`] and fd77::3) to the lab's bridge, and takes the VIP off the
/// first: keepalived gives it to one of them.
pub fn second_balancer(lab: &DrLab) -> Netns {
    let lb2 = Netns::new("lb2");
    veth(&lb2, "eth0", &lab.switch, "plb2");
    lab.switch.sh("ip link set plb2 master br0");
    lb2.sh(&format!(
        "ip addr add {LB2}/24 dev eth0 && ip addr add fd77::3/64 dev eth0 nodad"
    ));
    lab.balancer.sh(&format!("ip addr del {VIP}/32 dev eth0"));
    lb2
}

/// keepalived (VRRP only) in a namespace, from the shipped example with this lab's VIP, the
/// checkout's track script and `priority`; killed when dropped.
pub struct Keepalived<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    child: Option<Child>,
}

impl<'a> Keepalived<'a> {
    /// Writes its configuration and starts it.
    pub fn start(ns: &'a Netns, priority: u8) -> Self {
        Self::start_with(ns, priority, |config| config)
    }

    /// Writes its configuration, changed by `edit` after the lab's own changes, and starts it.
    pub fn start_with(ns: &'a Netns, priority: u8, edit: impl FnOnce(String) -> String) -> Self {
        let dir = PathBuf::from(format!("/tmp/{}-keepalived", ns.name()));
        std::fs::create_dir_all(&dir).expect("keepalived directory");
        let example =
            std::fs::read_to_string(repo().join("scripts/keepalived/keepalived.conf.example"))
                .expect("read the example configuration");
        let config = example
            .replace("10.0.0.100/32 dev eth0", &format!("{VIP}/32 dev eth0"))
            .replace(
                "/usr/bin/xlb-vrrp-check",
                repo()
                    .join("scripts/xlb-vrrp-check")
                    .to_str()
                    .expect("path"),
            )
            .replace("priority 150", &format!("priority {priority}"));
        assert_ne!(config, example, "the example's VIP or script path changed");
        let config = edit(config);
        std::fs::write(dir.join("keepalived.conf"), config).expect("write keepalived.conf");
        let mut this = Self {
            ns,
            dir,
            child: None,
        };
        this.spawn();
        this
    }

    /// Starts the process (again), logging to its directory.
    pub fn spawn(&mut self) {
        // keepalived refuses to start ("daemon is already running") while a pid file names a
        // process that still exists, and a VRRP child killed with its parent can stay a zombie
        // until whoever inherited it reaps it (CI's init may never do so): wait for the killed
        // processes to be gone and remove their pid files.
        for file in ["keepalived.pid", "vrrp.pid"] {
            let path = self.dir.join(file);
            let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|pid| pid.trim().parse::<i32>().ok())
            else {
                continue;
            };
            if wait_until(Duration::from_secs(3), || !running(pid)) {
                let _ = std::fs::remove_file(&path);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keepalived.log"))
            .expect("log file");
        let child = self
            .ns
            .command("keepalived")
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(self.dir.join("keepalived.conf"))
            .arg("--pid")
            .arg(self.dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(self.dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start keepalived");
        self.child = Some(child);
    }

    /// The pid of its VRRP process (keepalived's child), once it has one.
    pub fn vrrp_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("vrrp.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Sends `signal` to keepalived (its parent process) and, for SIGKILL, waits for it.
    pub fn signal(&mut self, signal: i32) {
        let child = self.child.as_mut().expect("keepalived is running");
        // SAFETY: kill on the pid of a child we own, not yet waited for.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) of keepalived failed");
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            let _ = child.wait();
            self.child = None;
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }
}

impl Drop for Keepalived<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: keepalived stops its VRRP child and removes the VIP.
            // SAFETY: kill on the pid of a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if !wait_until(Duration::from_secs(3), || {
                child.try_wait().ok().flatten().is_some()
            }) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = self.vrrp_pid() {
            // SAFETY: kill of a leftover VRRP process of ours, by its pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` names a live process (a zombie, killed but not reaped, is not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// One request of the recording client.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it started (seconds since the epoch).
    pub start: f64,
    /// How long it took, answered or failed.
    pub took: f64,
    /// Who answered (`rsN`), or None when it failed.
    pub answer: Option<String>,
}

/// A client requesting the VIP on a new connection every 20 ms (each with a 0.5 s timeout) until
/// stopped, recording each request.
pub struct Recorder {
    child: Child,
    log: PathBuf,
}

impl Recorder {
    /// Starts it in `client`.
    pub fn start(client: &Netns) -> Self {
        let log = PathBuf::from(format!("/tmp/{}-requests.log", client.name()));
        let child = client
            .command("timeout")
            .args([
                "300",
                "python3",
                "-c",
                &format!(
                    "import http.client, sys, time\n\
                     out = open(sys.argv[1], 'w', buffering=1)\n\
                     while True:\n\
                     \x20   t = time.time()\n\
                     \x20   try:\n\
                     \x20       c = http.client.HTTPConnection('{VIP}', 80, timeout=0.5)\n\
                     \x20       c.request('GET', '/')\n\
                     \x20       who = c.getresponse().read().decode().strip()\n\
                     \x20       c.close()\n\
                     \x20   except Exception as e:\n\
                     \x20       who = 'FAILED'\n\
                     \x20   out.write('%.3f %.3f %s\\n' % (t, time.time() - t, who))\n\
                     \x20   time.sleep(0.02)\n"
                ),
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(format!("{}.err", log.display())).expect("stderr file"))
            .spawn()
            .expect("start the recording client");
        Self { child, log }
    }

    /// Starts in `client` a prober that opens a new connection to the VIP every 20 ms whatever
    /// the earlier ones do (up to 45 at once), each answered within 0.9 s or failed: a SYN that
    /// had to be sent again (Linux's first retransmission is after 1 s) is a failure. The attempts
    /// that start during an outage fail and the first one after it is answered, so the gap is
    /// measured to 20 ms ([`outage`]), where the sequential client's is rounded up to its 0.5 s
    /// timeouts.
    pub fn concurrent(client: &Netns) -> Self {
        let log = PathBuf::from(format!("/tmp/{}-probes.log", client.name()));
        let child = client
            .command("timeout")
            .args([
                "600",
                "python3",
                "-c",
                &format!(
                    "import asyncio, sys, time\n\
                     out = open(sys.argv[1], 'w', buffering=1)\n\
                     async def once():\n\
                     \x20   r, w = await asyncio.open_connection('{VIP}', 80)\n\
                     \x20   w.write(b'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')\n\
                     \x20   data = await r.read()\n\
                     \x20   w.close()\n\
                     \x20   return data.decode().strip().splitlines()[-1]\n\
                     async def attempt(t):\n\
                     \x20   try:\n\
                     \x20       who = await asyncio.wait_for(once(), 0.9)\n\
                     \x20   except Exception:\n\
                     \x20       who = 'FAILED'\n\
                     \x20   out.write('%.3f %.3f %s\\n' % (t, time.time() - t, who))\n\
                     async def main():\n\
                     \x20   live = set()\n\
                     \x20   while True:\n\
                     \x20       task = asyncio.create_task(attempt(time.time()))\n\
                     \x20       live.add(task)\n\
                     \x20       task.add_done_callback(live.discard)\n\
                     \x20       await asyncio.sleep(0.02)\n\
                     asyncio.run(main())\n"
                ),
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(format!("{}.err", log.display())).expect("stderr file"))
            .spawn()
            .expect("start the prober");
        Self { child, log }
    }

    /// The requests so far, by start.
    pub fn requests(&self) -> Vec<Request> {
        let mut requests: Vec<Request> = std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let start = words.next()?.parse().ok()?;
                let took = words.next()?.parse().ok()?;
                let who = words.next()?;
                Some(Request {
                    start,
                    took,
                    answer: (who != "FAILED").then(|| who.to_owned()),
                })
            })
            .collect();
        requests.sort_by(|a, b| a.start.total_cmp(&b.start));
        requests
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(format!("{}.err", self.log.display()));
    }
}

/// The requests that started in `[from, to)`: how many, how many failed, and the gap in service
/// (from the start of the first failed request to the end of the last one; 0 without failure).
pub fn gap(requests: &[Request], from: f64, to: f64) -> (usize, usize, f64) {
    let window: Vec<&Request> = requests
        .iter()
        .filter(|r| r.start >= from && r.start < to)
        .collect();
    let failed: Vec<&&Request> = window.iter().filter(|r| r.answer.is_none()).collect();
    let outage = match (failed.first(), failed.last()) {
        (Some(first), Some(last)) => last.start + last.took - first.start,
        _ => 0.0,
    };
    (window.len(), failed.len(), outage)
}

/// The outage the requests that started in `[from, to)` saw (from the prober,
/// [`Recorder::concurrent`]): how many, how many failed, and the gap in service, from the start
/// of the last answered request before the first failed one to the start of the first answered
/// request after the last failed one (0 without failure). Answers that arrived after the gap
/// are not needed: the first answered request after it shows the service was back when it
/// started.
pub fn outage(requests: &[Request], from: f64, to: f64) -> (usize, usize, f64) {
    let window: Vec<&Request> = requests
        .iter()
        .filter(|r| r.start >= from && r.start < to)
        .collect();
    let failed = window.iter().filter(|r| r.answer.is_none()).count();
    let first = window.iter().position(|r| r.answer.is_none());
    let last = window.iter().rposition(|r| r.answer.is_none());
    let gap = match (first, last) {
        (Some(first), Some(last)) => {
            let before = window[..first]
                .iter()
                .rev()
                .find(|r| r.answer.is_some())
                .map_or(window[first].start, |r| r.start);
            let after = window[last..]
                .iter()
                .find(|r| r.answer.is_some())
                .map_or(to, |r| r.start);
            after - before
        }
        _ => 0.0,
    };
    (window.len(), failed, gap)
}

/// `ip -o monitor` in a namespace, each line stamped with the time it was read (seconds since
/// the epoch); stopped when dropped.
pub struct Monitor {
    child: Child,
    log: PathBuf,
}

impl Monitor {
    /// Watches `objects` (e.g. "address", "neigh") in `ns`.
    pub fn start(ns: &Netns, objects: &str) -> Self {
        let log = PathBuf::from(format!(
            "/tmp/{}-monitor-{}.log",
            ns.name(),
            objects.replace(' ', "-")
        ));
        let child = ns
            .command("python3")
            .args([
                "-c",
                "import subprocess, sys, time\n\
                 out = open(sys.argv[1], 'w', buffering=1)\n\
                 ip = subprocess.Popen(['ip', '-o', 'monitor'] + sys.argv[2].split(), \
                 stdout=subprocess.PIPE)\n\
                 for line in ip.stdout:\n\
                 \x20   out.write('%.3f %s\\n' % (time.time(), line.decode().strip()))\n",
            ])
            .arg(&log)
            .arg(objects)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ip monitor");
        Self { child, log }
    }

    /// The first event after `after` whose line contains every one of `words`: when it was
    /// seen.
    pub fn first(&self, after: f64, words: &[&str]) -> Option<f64> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (stamp, event) = line.split_once(' ')?;
                Some((stamp.parse::<f64>().ok()?, event))
            })
            .find(|(stamp, event)| *stamp >= after && words.iter().all(|w| event.contains(w)))
            .map(|(stamp, _)| stamp)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // The `ip monitor` child goes with the namespace, or on its next write to a closed pipe.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `command` and returns whether it succeeded and what it wrote (stdout then stderr).
pub fn output(mut command: Command) -> (bool, String) {
    let out = command.output().expect("run the command");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// BIRD 2 in a namespace with `config`, and, on a balancer, its health hook
/// (`scripts/bird/xlb-bird-health`); killed when dropped.
pub struct Bird<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    child: Option<Child>,
    hook: Option<Child>,
}

impl<'a> Bird<'a> {
    /// Writes its configuration and starts it.
    pub fn start(ns: &'a Netns, config: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/{}-bird", ns.name()));
        std::fs::create_dir_all(&dir).expect("bird directory");
        std::fs::write(dir.join("bird.conf"), config).expect("write bird.conf");
        let mut this = Self {
            ns,
            dir,
            child: None,
            hook: None,
        };
        this.spawn();
        this
    }

    fn log_file(&self, name: &str) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("log file")
    }

    /// Starts BIRD (again), in the foreground, logging to its directory.
    pub fn spawn(&mut self) {
        let log = self.log_file("bird.log");
        let child = self
            .ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(self.dir.join("bird.conf"))
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start bird");
        self.child = Some(child);
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// Starts the checkout's health hook against this BIRD, every second, checking `service`.
    pub fn start_hook(&mut self, service: &str) {
        let log = self.log_file("hook.log");
        let child = self
            .ns
            .command(
                repo()
                    .join("scripts/bird/xlb-bird-health")
                    .to_str()
                    .expect("path"),
            )
            .arg("--socket")
            .arg(self.socket())
            .args(["--", "--service", service])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start the health hook");
        self.hook = Some(child);
    }

    /// Stops the health hook (killed and waited for), so that a test can set the protocol by
    /// hand without the hook setting it back within a second.
    pub fn stop_hook(&mut self) {
        if let Some(mut child) = self.hook.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a birdc command against it and panics when it fails.
    pub fn birdc(&self, command: &str) -> String {
        self.ns
            .sh(&format!("birdc -s {} {command}", self.socket().display()))
    }

    /// Sends `signal` to BIRD.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("bird is running");
        // SAFETY: kill on the pid of a child we own, not yet waited for.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) of bird failed");
    }

    /// SIGKILL to BIRD (the hook keeps running), waited for.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What BIRD and its hook logged so far.
    pub fn log(&self) -> String {
        format!(
            "{}\nhook:\n{}",
            std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.join("hook.log")).unwrap_or_default()
        )
    }
}

impl Drop for Bird<'_> {
    fn drop(&mut self) {
        for child in [self.hook.take(), self.child.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Many long-lived HTTP/1.1 connections to the VIP from one client process, one from each source
/// port of a range (so that the flows are known in advance), asked again in rounds. A connection
/// that failed once (reset, closed or timed out after 3 s) stays failed: it is never opened again.
pub struct Flows {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// The source ports, in the order of every round's answers.
    pub ports: Vec<u16>,
}

impl Flows {
    /// Opens one connection from each port of `ports` in `client`, each with a first request;
    /// also returns who answered each (None: it failed).
    pub fn open(client: &Netns, ports: std::ops::Range<u16>) -> (Self, Vec<Option<String>>) {
        let mut child = client
            .command("timeout")
            .args([
                "300",
                "python3",
                "-c",
                &format!(
                    "import http.client, sys\n\
                     ports = range(int(sys.argv[1]), int(sys.argv[2]))\n\
                     conns = {{}}\n\
                     for p in ports:\n\
                     \x20   conns[p] = http.client.HTTPConnection('{VIP}', 80, timeout=3, \
                     source_address=('', p))\n\
                     def ask():\n\
                     \x20   out = []\n\
                     \x20   for p in ports:\n\
                     \x20       c, who = conns[p], 'FAILED'\n\
                     \x20       if c is not None:\n\
                     \x20           try:\n\
                     \x20               c.request('GET', '/')\n\
                     \x20               who = c.getresponse().read().decode().strip()\n\
                     \x20               c.auto_open = 0\n\
                     \x20           except Exception:\n\
                     \x20               c.close()\n\
                     \x20               conns[p] = None\n\
                     \x20       out.append(who)\n\
                     \x20   print(' '.join(out), flush=True)\n\
                     ask()\n\
                     for line in sys.stdin:\n\
                     \x20   ask()\n"
                ),
            ])
            .arg(ports.start.to_string())
            .arg(ports.end.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the long-lived connections");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut this = Self {
            child,
            stdin,
            stdout,
            ports: ports.collect(),
        };
        let first = this.read_round();
        (this, first)
    }

    fn read_round(&mut self) -> Vec<Option<String>> {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read a round of answers");
        let answers: Vec<Option<String>> = line
            .split_whitespace()
            .map(|who| (who != "FAILED").then(|| who.to_owned()))
            .collect();
        assert_eq!(
            answers.len(),
            self.ports.len(),
            "the long-lived connections' client stopped"
        );
        answers
    }

    /// Asks on every connection again: who answered each (None: it failed, now or before).
    pub fn ask(&mut self) -> Vec<Option<String>> {
        use std::io::Write as _;
        self.stdin.write_all(b"\n").expect("ask for a round");
        self.stdin.flush().expect("flush");
        self.read_round()
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
