//! The health-check bench's lab: the checker and its targets' servers in two network namespaces
//! joined by a veth pair, each on a core of its own, so that the busy time of the checker's core
//! is what checking costs the machine that checks. In production the real servers are other
//! machines; on one machine their side of every connection (SYN to SYN-ACK, accept, teardown)
//! would otherwise be counted as the checker's.
//!
//! - Checker: namespace `hcc`, `eth0` 10.77.0.1/24, a route to 10.78.0.0/16 via the servers.
//!   Whatever runs there should be pinned to [`CHECKER_CPU`] ([`on_cpu`]).
//! - Servers: namespace `hcs`, `eth0` 10.77.0.2/24 and 10.78.0.0/16 on `lo`, which makes every
//!   address in it local (as 127.0.0.0/8 is); [`PORTS`] listeners on 0.0.0.0 accept and drop, in
//!   threads pinned to [`SERVERS_CPU`]. Target `i` is 10.78.0.0 + 1 + i / PORTS, port
//!   9000 + i % PORTS: distinct addresses and ports, as 10,000 real servers would be.
//! - Packet processing is steered with RPS: veth's transmit hands each packet to `netif_rx` on
//!   the peer, which queues it to the CPU of the peer's `rps_cpus` mask. So packets arriving at
//!   the checker are processed on the checker's core and packets arriving at the servers on
//!   theirs, whichever core sent them ([`Lab::verify_rps`] shows it).
//!
//! The CPU is measured from `/proc/stat` ([`CpuTimes::busy_time`]).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::netns::{veth, Netns};

/// The checker's core.
pub const CHECKER_CPU: usize = 0;
/// The servers' core.
pub const SERVERS_CPU: usize = 1;
/// How many listening ports the servers have.
pub const PORTS: usize = 8;
/// The first of them.
const FIRST_PORT: u16 = 9000;
/// The listen backlog, with `somaxconn` and `tcp_max_syn_backlog` raised to match: far more
/// than a burst of 10,000 checks a second can fill while the accepting threads are scheduled.
const BACKLOG: i32 = 4096;

/// Pins the calling thread to one CPU (threads it creates later inherit that).
pub fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is a bit mask, for which all zeroes is a valid (empty) value; CPU_SET
    // writes within it (cpu < CPU_SETSIZE is checked first).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    ensure!(
        cpu < libc::CPU_SETSIZE as usize,
        "CPU {cpu} is out of range"
    );
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads one cpu_set_t through a valid pointer; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pin to CPU {cpu}"));
    }
    Ok(())
}

/// Runs `f` on a new thread pinned to `cpu` inside `ns`, and waits for it: the calling thread's
/// affinity and namespace stay as they are, and what `f` starts inherits both.
pub fn on_cpu<T: Send>(
    cpu: usize,
    ns: &Netns,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            pin(cpu)?;
            ns.enter(f)
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One CPU's line of `/proc/stat`, in clock ticks (`sysconf(_SC_CLK_TCK)` a second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time in user mode (guest time included, as the kernel counts it).
    pub user: u64,
    /// Time in user mode at a positive nice.
    pub nice: u64,
    /// Time in the kernel, outside interrupts (softirqs run by ksoftirqd included).
    pub system: u64,
    /// Idle time.
    pub idle: u64,
    /// Idle time while a task waited for I/O.
    pub iowait: u64,
    /// Time in hard interrupts.
    pub irq: u64,
    /// Time in softirqs (where most of the network stack's receive work runs).
    pub softirq: u64,
    /// Time the hypervisor gave this virtual CPU's turn to something else.
    pub steal: u64,
    /// When it was read (CLOCK_MONOTONIC, the clock of the kernel's idle accounting).
    pub at: Duration,
}

impl CpuTimes {
    /// Reads `cpu`'s line.
    pub fn read(cpu: usize) -> anyhow::Result<Self> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
            return Err(std::io::Error::last_os_error()).context("clock_gettime");
        }
        let at = Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .with_context(|| format!("no {name} line in /proc/stat"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parse /proc/stat: {line}"))?;
        ensure!(v.len() >= 8, "short /proc/stat line: {line}");
        Ok(CpuTimes {
            user: v[0],
            nice: v[1],
            system: v[2],
            idle: v[3],
            iowait: v[4],
            irq: v[5],
            softirq: v[6],
            steal: v[7],
            at,
        })
    }

    /// Busy time so far (a difference of two of them is meaningful, not one alone): the time
    /// since boot less idle, iowait and steal, that is what the CPU spent running something,
    /// user, kernel and interrupts. Not idle and iowait (idle, whatever the reason), nor steal:
    /// time the hypervisor ran something else instead of this CPU, which is no more the
    /// checker's than idle time is.
    ///
    /// Why not the sum of user, nice, system, irq and softirq: those are sampled at the
    /// scheduler tick, and on this tickless-idle kernel (without IRQ time accounting) a CPU
    /// that wakes from idle for an interrupt, handles the packets in the softirq and goes back
    /// to sleep often sees no tick at all: that work is lost from every field, while the idle
    /// time, measured exactly on each entry and exit, excludes it. Measured here with the
    /// checker running: the fields plus idle and steal summed to 4.78 s of 5.0 s, and their busy
    /// sum came out below the checker's own threads' exact run time.
    pub fn busy_time(&self) -> Duration {
        self.at
            .saturating_sub(ticks(self.idle + self.iowait + self.steal))
    }
}

/// Clock ticks as a duration.
pub fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / hz)
}

/// `cpu`'s busy time so far, for [`lb_userspace::health::bench::run_targets`]'s clock.
pub fn busy_time(cpu: usize) -> std::io::Result<Duration> {
    CpuTimes::read(cpu)
        .map(|t| t.busy_time())
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
}

/// Per CPU, packets the network stack's receive softirq processed and times another CPU woke it
/// to process its RPS queue (`/proc/net/softnet_stat`'s 1st and 10th columns).
pub fn softnet() -> anyhow::Result<Vec<(u64, u64)>> {
    let text =
        std::fs::read_to_string("/proc/net/softnet_stat").context("read /proc/net/softnet_stat")?;
    text.lines()
        .map(|line| {
            let cols: Vec<u64> = line
                .split_whitespace()
                .map(|c| u64::from_str_radix(c, 16))
                .collect::<Result<_, _>>()
                .with_context(|| format!("parse softnet_stat: {line}"))?;
            ensure!(cols.len() >= 10, "short softnet_stat line: {line}");
            Ok((cols[0], cols[9]))
        })
        .collect()
}

/// Opens a TCP connection and closes it with a reset (zero linger), as the checker's TCP check
/// does: no TIME_WAIT left on either side.
pub fn connect_and_reset(addr: SocketAddr) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one linger through a valid pointer, on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The servers: threads pinned to [`SERVERS_CPU`] that accept and drop, stopped when dropped.
struct Servers {
    listeners: Vec<RawFd>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Servers {
    fn start(ns: &Netns) -> anyhow::Result<Self> {
        let mut servers = Servers {
            listeners: Vec::new(),
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for k in 0..PORTS {
            let port = FIRST_PORT + k as u16;
            // Created inside the namespace, the socket stays in it whichever thread uses it.
            let listener = ns
                .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
                .with_context(|| format!("listen on port {port} in the servers' namespace"))?;
            // Listening again only changes the backlog.
            // SAFETY: listen on a socket we own.
            if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
                return Err(std::io::Error::last_os_error()).context("listen backlog");
            }
            let (pinned_tx, pinned) = mpsc::channel();
            let stop = servers.stop.clone();
            servers.listeners.push(listener.as_raw_fd());
            servers.threads.push(std::thread::spawn(move || {
                let _ = pinned_tx.send(pin(SERVERS_CPU));
                // Even unpinned, the thread holds its listener until it is stopped, so that
                // the listener's fd stays valid for `drop` to shut it down.
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => drop(stream),
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        // A connection that went away before it was accepted, or no fds left
                        // for a moment: go on.
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
            pinned
                .recv()
                .context("a server thread died")?
                .context("server thread")?;
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for &fd in &self.listeners {
            // Shutting a listening socket down wakes its blocked accept with an error. The
            // socket stays open (its thread owns it) until the thread ends.
            // SAFETY: the fd is open: its thread holds the listener until it sees `stop`, and is
            // joined only below.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The lab; dropping it stops the servers and deletes the namespaces (also on a panic).
pub struct Lab {
    // Dropped first: the servers' threads end before their namespace goes.
    _servers_threads: Servers,
    /// The checker's namespace.
    pub checker: Netns,
    /// The servers' namespace.
    pub servers: Netns,
    /// The targets, all served.
    pub targets: Vec<SocketAddr>,
}

impl Lab {
    /// Builds the lab with `targets` targets and starts the servers.
    pub fn new(targets: usize) -> anyhow::Result<Self> {
        ensure!(
            std::thread::available_parallelism().map_or(0, usize::from) > SERVERS_CPU,
            "the health-check lab needs CPUs {CHECKER_CPU} and {SERVERS_CPU}"
        );
        ensure!(targets <= PORTS * 65_000, "too many targets for the lab");
        let checker = Netns::new("hcc");
        let servers = Netns::new("hcs");
        veth(&checker, "eth0", &servers, "eth0");
        checker.sh("ip addr add 10.77.0.1/24 dev eth0 && ip route add 10.78.0.0/16 via 10.77.0.2");
        servers.sh(&format!(
            "ip addr add 10.77.0.2/24 dev eth0 && ip addr add 10.78.0.0/16 dev lo && \
             sysctl -qw net.core.somaxconn={BACKLOG} net.ipv4.tcp_max_syn_backlog={BACKLOG}"
        ));
        for (ns, cpu) in [(&checker, CHECKER_CPU), (&servers, SERVERS_CPU)] {
            // Every receive queue, in case veth records another one than rx-0 on a packet.
            ns.sh(&format!(
                "for q in /sys/class/net/eth0/queues/rx-*; do echo {:x} > $q/rps_cpus; done",
                1u64 << cpu
            ));
        }
        let targets = (0..targets)
            .map(|i| {
                let host = u32::try_from(1 + i / PORTS).expect("checked above");
                let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 78, 0, 0)) + host);
                SocketAddr::from((addr, FIRST_PORT + (i % PORTS) as u16))
            })
            .collect();
        let servers_threads = Servers::start(&servers)?;
        Ok(Lab {
            _servers_threads: servers_threads,
            checker,
            servers,
            targets,
        })
    }

    /// Checks that packet processing follows the RPS masks: `n` connections from the checker's
    /// core, and the packets each core's receive softirq processed meanwhile. Without RPS, what
    /// the checker's core sends (SYN, ACK, RST) would be processed on that core too. Returns a
    /// line that says what was seen.
    pub fn verify_rps(&self, n: usize) -> anyhow::Result<String> {
        let before = softnet()?;
        on_cpu(CHECKER_CPU, &self.checker, || {
            for addr in self.targets.iter().cycle().take(n) {
                connect_and_reset(*addr).with_context(|| format!("connect to {addr}"))?;
            }
            Ok(())
        })?;
        // The last resets may still be on their way to the servers' core.
        std::thread::sleep(Duration::from_millis(100));
        let after = softnet()?;
        let delta = |cpu: usize| -> anyhow::Result<(u64, u64)> {
            let (Some(a), Some(b)) = (after.get(cpu), before.get(cpu)) else {
                bail!("no softnet_stat line for CPU {cpu}");
            };
            Ok((a.0 - b.0, a.1 - b.1))
        };
        let checker = delta(CHECKER_CPU)?;
        let servers = delta(SERVERS_CPU)?;
        let n64 = n as u64;
        // Per connection the servers' side receives SYN, ACK and RST; the checker's side the
        // SYN-ACK (and a FIN when the server closes before the reset arrives).
        ensure!(
            servers.0 >= 2 * n64 && checker.0 >= n64,
            "RPS does not steer as expected: {n} connections from CPU {CHECKER_CPU}, packets \
             processed: CPU {CHECKER_CPU} {}, CPU {SERVERS_CPU} {}",
            checker.0,
            servers.0
        );
        Ok(format!(
            "RPS: {n} connections from CPU {CHECKER_CPU}: packets processed on CPU {CHECKER_CPU} \
             {} ({:.1}/connection, RPS wake-ups {}), on CPU {SERVERS_CPU} {} ({:.1}/connection, \
             RPS wake-ups {})",
            checker.0,
            checker.0 as f64 / n as f64,
            checker.1,
            servers.0,
            servers.0 as f64 / n as f64,
            servers.1
        ))
    }

    /// The servers' namespace's count of connections dropped for a full accept or SYN queue
    /// (TcpExt ListenOverflows + ListenDrops).
    pub fn listen_drops(&self) -> anyhow::Result<u64> {
        let netstat = self.servers.sh("cat /proc/net/netstat");
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            bail!("no TcpExt in /proc/net/netstat");
        };
        let mut drops = 0;
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if name == "ListenOverflows" || name == "ListenDrops" {
                drops += value.parse::<u64>().context("parse netstat")?;
            }
        }
        Ok(drops)
    }

    /// Bare connect-and-reset exchanges in a tight loop from the checker's core, over the
    /// targets, for about `duration` (after a few hundred to warm up).
    pub fn bare_connects(&self, duration: Duration) -> anyhow::Result<BareConnects> {
        on_cpu(CHECKER_CPU, &self.checker, || {
            let mut targets = self.targets.iter().cycle();
            for addr in targets.by_ref().take(500) {
                connect_and_reset(*addr).with_context(|| format!("connect to {addr}"))?;
            }
            measure_rounds(duration, None, || {
                for addr in targets.by_ref().take(100) {
                    connect_and_reset(*addr).with_context(|| format!("connect to {addr}"))?;
                }
                Ok(100)
            })
        })
    }

    /// Bare half-open probes from the checker's core, over the targets, for about `duration`:
    /// every `period`, `batch` SYNs sent with one `sendmmsg` and their answers read, with the
    /// same raw socket and filter as the checker's, then a sleep until the next period. The
    /// kernel's part of a half-open check at the checker's pace (the core idles between rounds
    /// and is woken for each, as the checker's is): the SYN out, the SYN-ACK in, the kernel's
    /// reset out.
    pub fn bare_half_open(
        &self,
        duration: Duration,
        batch: usize,
        period: Duration,
    ) -> anyhow::Result<BareConnects> {
        use lb_userspace::health::half_open::{self, Outgoing, ProbeSocket, ReceiveBuffers};
        on_cpu(CHECKER_CPU, &self.checker, || {
            let socket = ProbeSocket::open(false).context("the raw probe socket")?;
            socket.set_receive_timeout(Duration::from_secs(1))?;
            let source = half_open::source_for(self.targets[0]).context("the source address")?;
            let mut buffers = ReceiveBuffers::default();
            let mut targets = self.targets.iter().cycle();
            let mut seq = 0u32;
            let mut round = |count: usize| -> anyhow::Result<()> {
                let syns: Vec<Outgoing> = targets
                    .by_ref()
                    .take(count)
                    .map(|&target| {
                        seq = seq.wrapping_add(1);
                        Outgoing {
                            key: (target.ip(), target.port(), seq),
                            segment: half_open::syn(source, target, socket.port(), seq),
                        }
                    })
                    .collect();
                let failed = socket.send(&syns);
                ensure!(failed.is_empty(), "SYNs not sent: {failed:?}");
                let mut waiting: std::collections::HashSet<_> =
                    syns.iter().map(|s| s.key).collect();
                while !waiting.is_empty() {
                    for (key, answer) in socket.receive(&mut buffers).context("answers")? {
                        ensure!(
                            answer == half_open::Answer::Open,
                            "{key:?} answered {answer:?}"
                        );
                        waiting.remove(&key);
                    }
                }
                Ok(())
            };
            for _ in 0..50 {
                round(batch)?;
            }
            measure_rounds(duration, Some(period), || {
                round(batch)?;
                Ok(batch as u64)
            })
        })
    }
}

/// Runs `round` (which says how many exchanges it made) again and again for about `duration`,
/// one every `period` if given (sleeping in between) or back to back, and measures the checker's
/// core and the calling thread meanwhile.
fn measure_rounds(
    duration: Duration,
    period: Option<Duration>,
    mut round: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<BareConnects> {
    let before = (CpuTimes::read(CHECKER_CPU)?, thread_runtime()?);
    let start = Instant::now();
    let mut next = start;
    let mut connections = 0u64;
    while start.elapsed() < duration {
        connections += round()?;
        if let Some(period) = period {
            next += period;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    let after = (CpuTimes::read(CHECKER_CPU)?, thread_runtime()?);
    Ok(BareConnects {
        connections,
        wall: after.0.at.saturating_sub(before.0.at),
        busy: after.0.busy_time().saturating_sub(before.0.busy_time()),
        thread: after.1.saturating_sub(before.1),
    })
}

/// What [`Lab::bare_connects`] and [`Lab::bare_half_open`] measured.
#[derive(Clone, Copy, Debug)]
pub struct BareConnects {
    /// Connections made.
    pub connections: u64,
    /// In how long.
    pub wall: Duration,
    /// The checker's core's busy time meanwhile.
    pub busy: Duration,
    /// The looping thread's own on-CPU time meanwhile (schedstat).
    pub thread: Duration,
}

/// The calling thread's on-CPU time so far (schedstat's first field, in ns).
fn thread_runtime() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("read /proc/thread-self/schedstat")?;
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("parse schedstat: {text}"))?;
    Ok(Duration::from_nanos(ns))
}

/// Waits, up to `max_wait`, for a second in which `cpu` was at most `threshold` busy (a share of
/// one core), so that the measures start on a quiet machine; returns the last second's share.
pub fn wait_quiet(cpu: usize, threshold: f64, max_wait: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    loop {
        let (wall, busy) = idle_busy(cpu, Duration::from_secs(1))?;
        let share = busy.as_secs_f64() / wall.as_secs_f64();
        if share <= threshold || start.elapsed() >= max_wait {
            return Ok(share);
        }
    }
}

/// `cpu`'s busy time over `duration` while this process does nothing on it: the machine's
/// background, to take out of the measures.
pub fn idle_busy(cpu: usize, duration: Duration) -> anyhow::Result<(Duration, Duration)> {
    let before = CpuTimes::read(cpu)?;
    std::thread::sleep(duration);
    let after = CpuTimes::read(cpu)?;
    Ok((
        after.at.saturating_sub(before.at),
        after.busy_time().saturating_sub(before.busy_time()),
    ))
}
