//! A measure of the engine's cost: targets checked at an interval for a while, with the CPU time
//! that a clock of the caller's choice measured, the process's and the checker's own threads' CPU
//! time, and the worst lateness of a check against its schedule. The goal is 10,000 targets at
//! 1 s under 10% of one core.
//!
//! [`run_targets`] checks whatever targets and check the caller gives: `cargo xtask bench` runs it
//! in a lab of two network namespaces, with the checker alone on one core and the servers on the
//! other, and passes that core's busy time as the clock. [`run`] is the self-contained variant on
//! loopback, with its own listeners in this process.

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::runtime::Handle;

use super::engine::{Engine, Target, DEFAULT_MAX_CONCURRENT_CHECKS};
use crate::state::{
    health::{Check, CheckKind, CheckSpec, Timing},
    Forwarding, Protocol, ServiceAddr,
};

/// How many local listeners [`run`]'s targets share.
const LISTENERS: usize = 4;

/// What a run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchReport {
    /// The kind of check.
    pub kind: CheckKind,
    /// Targets checked.
    pub targets: usize,
    /// Their interval.
    pub interval: Duration,
    /// How long the run waited before the measure: one interval, so that every target has started
    /// (the engine spreads the first checks over it).
    pub warmup: Duration,
    /// How long the measure lasted.
    pub duration: Duration,
    /// Checks done in that time.
    pub checks: u64,
    /// How many of them failed.
    pub failures: u64,
    /// What the caller's clock counted in that time (for [`run`], the process's CPU time).
    pub cpu: Duration,
    /// The process's CPU time (user and system, getrusage) in that time: everything in the
    /// process, which may hold more than the checker (the servers of a bench, for one).
    pub process_cpu: Duration,
    /// The on-CPU time of the checker's runtime threads in that time (from schedstat): the
    /// checker's code and the kernel work done in its threads' context, not the network
    /// interrupts and softirqs that run elsewhere.
    pub threads_cpu: Duration,
    /// The worst delay between a check's scheduled time and its start, in the measure.
    pub max_lateness: Duration,
    /// Checks of the measure that started more than a tenth of the interval late.
    pub late: u64,
}

impl BenchReport {
    /// `cpu` over wall time: 1.0 is one core busy.
    pub fn cpu_share(&self) -> f64 {
        self.share(self.cpu)
    }

    /// `time` over the measure's wall time.
    pub fn share(&self, time: Duration) -> f64 {
        time.as_secs_f64() / self.duration.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} targets every {:?}, measured {:.1?} after {:?}: {} checks ({} failed), CPU {:.3?} = {:.1}% of one core (checker threads {:.1}%, process {:.1}%), worst lateness {:.1?}, {} checks more than a tenth of the interval late",
            self.targets,
            self.kind,
            self.interval,
            self.duration,
            self.warmup,
            self.checks,
            self.failures,
            self.cpu,
            self.cpu_share() * 100.0,
            self.share(self.threads_cpu) * 100.0,
            self.share(self.process_cpu) * 100.0,
            self.max_lateness,
            self.late,
        )
    }
}

/// Checks `targets` TCP targets on 127.0.0.1 every `interval` for `duration` (after one interval
/// of warm-up), with listeners in this process, and reports the process's CPU time as the cost.
/// That counts the listeners and the kernel's work for both ends of every connection, so it is
/// an upper bound for the checker alone. The timeout is half the interval, at most 1 s.
pub fn run(targets: usize, interval: Duration, duration: Duration) -> io::Result<BenchReport> {
    let listeners = Listeners::start()?;
    let addrs: Vec<SocketAddr> = (0..targets)
        .map(|i| listeners.addrs[i % LISTENERS])
        .collect();
    let spec = CheckSpec {
        timing: Timing {
            interval,
            timeout: (interval / 2).min(Duration::from_secs(1)),
            ..Timing::default()
        },
        ..CheckSpec::new(Check::Tcp)
    };
    let report = run_targets(&addrs, &spec, duration, process_cpu_time);
    listeners.stop();
    report
}

/// Checks each of `targets` (repeats allowed: each is a real server of its own service) with
/// `spec`, at `spec`'s interval, for `duration` after one interval of warm-up, on a runtime of
/// its own built on the calling thread (call it outside of one): its threads inherit the calling
/// thread's CPU affinity and network namespace, and a runtime pinned to one CPU gets one worker.
/// `cpu` is read at the start and the end of the measure; the report's `cpu` is the difference.
pub fn run_targets(
    targets: &[SocketAddr],
    spec: &CheckSpec,
    duration: Duration,
    cpu: impl FnMut() -> io::Result<Duration>,
) -> io::Result<BenchReport> {
    // A multi-thread runtime even on one core: pinned to one CPU it has one worker, and it
    // measured a few points of a core cheaper here than a current-thread runtime (57-59% against
    // 62% for 10,000 TCP targets a second).
    let threads = Arc::new(Mutex::new(vec![gettid()]));
    let registry = threads.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(gettid());
        })
        .build()?;
    let threads_cpu = move || {
        threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|&tid| thread_runtime(tid))
            .sum::<Duration>()
    };
    runtime.block_on(measure(targets, spec, duration, cpu, threads_cpu))
}

async fn measure(
    reals: &[SocketAddr],
    spec: &CheckSpec,
    duration: Duration,
    mut cpu: impl FnMut() -> io::Result<Duration>,
    threads_cpu: impl Fn() -> Duration,
) -> io::Result<BenchReport> {
    let all: Vec<Target> = reals
        .iter()
        .enumerate()
        .map(|(i, &real)| {
            // A service of its own for each target (in the benchmarking range 198.18.0.0/15,
            // never contacted), so that the same real server may be listed many times.
            let i = u32::try_from(i).map_err(|_| io::Error::other("too many targets"))?;
            Ok(Target {
                service: ServiceAddr {
                    protocol: Protocol::Tcp,
                    addr: Ipv4Addr::from(0xc612_0000 + i / 65_535).into(),
                    port: u16::try_from(i % 65_535 + 1).unwrap_or(u16::MAX),
                },
                real,
                forwarding: Forwarding::DirectRoute,
                spec: spec.clone(),
                notify: None,
            })
        })
        .collect::<io::Result<_>>()?;
    let (engine, mut events) = Engine::new(Handle::current(), DEFAULT_MAX_CONCURRENT_CHECKS);
    let draining = tokio::spawn(async move { while events.recv().await.is_some() {} });
    engine
        .update_targets(all)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let warmup = spec.timing.interval;
    tokio::time::sleep(warmup).await;
    engine.reset_max_lateness();
    let before = (cpu()?, process_cpu_time()?, threads_cpu(), engine.stats());
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let after = (cpu()?, process_cpu_time()?, threads_cpu(), engine.stats());
    let elapsed = started.elapsed();
    drop(engine);
    draining.abort();
    Ok(BenchReport {
        kind: spec.check.kind(),
        targets: reals.len(),
        interval: spec.timing.interval,
        warmup,
        duration: elapsed,
        checks: after.3.checks - before.3.checks,
        failures: after.3.failures - before.3.failures,
        cpu: after.0.saturating_sub(before.0),
        process_cpu: after.1.saturating_sub(before.1),
        threads_cpu: after.2.saturating_sub(before.2),
        max_lateness: after.3.max_lateness,
        late: after.3.late - before.3.late,
    })
}

/// [`run`]'s servers: plain threads that accept and close.
struct Listeners {
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Listeners {
    fn start() -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::with_capacity(LISTENERS);
        let mut threads = Vec::with_capacity(LISTENERS);
        for _ in 0..LISTENERS {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            addrs.push(listener.local_addr()?);
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    drop(stream);
                }
            }));
        }
        Ok(Listeners {
            addrs,
            threads,
            stop,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for addr in &self.addrs {
            // Wakes the thread out of accept so that it sees the flag.
            let _ = TcpStream::connect(addr);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The calling thread's id.
fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// How long a thread of this process has run on a CPU so far (schedstat's first field, in ns);
/// zero once it is gone (a runtime's blocking threads come and go: their time is then lost,
/// which is small next to the workers').
fn thread_runtime(tid: i32) -> Duration {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The process's user and system CPU time so far.
pub fn process_cpu_time() -> io::Result<Duration> {
    use nix::sys::{
        resource::{getrusage, UsageWho},
        time::TimeValLike as _,
    };
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_micros(u64::try_from(t.num_microseconds()).unwrap_or(0))
    };
    Ok(time(usage.user_time()) + time(usage.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_bench_checks_every_target_and_reports_its_cost() {
        let report =
            run(64, Duration::from_millis(100), Duration::from_millis(500)).expect("bench runs");
        assert_eq!(report.failures, 0, "{report}");
        assert!(report.checks >= 64 * 3, "{report}");
        assert!(report.cpu > Duration::ZERO, "{report}");
        assert!(report.threads_cpu > Duration::ZERO, "{report}");
        assert!(report.to_string().starts_with("64 tcp targets every 100ms"));
    }
}
