//! A measure of the engine's cost: N TCP targets on 127.0.0.1 checked at an interval for a
//! while, with the process's CPU time and the worst lateness of a check against its schedule.
//! `cargo xtask bench` calls [`run`]; the goal is 10,000 targets at 1 s under 10% of one core.

use std::{
    fmt,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::thread::JoinHandleExt as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::runtime::Handle;

use super::{
    config::{Check, CheckSpec, Timing},
    engine::{Engine, Target, DEFAULT_MAX_CONCURRENT_CHECKS},
};
use crate::state::{Protocol, ServiceAddr};

/// How many local listeners the targets share: each target is one of them under another
/// (never contacted) service address.
const LISTENERS: usize = 4;

/// What a run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchReport {
    /// Targets checked.
    pub targets: usize,
    /// Their interval.
    pub interval: Duration,
    /// How long the measure lasted.
    pub duration: Duration,
    /// Checks done in that time.
    pub checks: u64,
    /// How many of them failed.
    pub failures: u64,
    /// The process's CPU time (user and system) in that time. The listeners that accept the
    /// checks' connections run in the same process and are counted too, and so is the kernel's
    /// work for both ends of every connection, so this is an upper bound for the checker alone.
    pub cpu: Duration,
    /// The part of `cpu` that the listeners' threads used (accepting and closing).
    pub listener_cpu: Duration,
    /// The worst delay between a check's scheduled time and its start, over the whole run.
    pub max_lateness: Duration,
}

impl BenchReport {
    /// CPU time over wall time: 1.0 is one core busy.
    pub fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.duration.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} TCP targets every {:?} for {:.1?}: {} checks ({} failed), process CPU {:.3?} = {:.1}% of one core (listeners {:.1}%), worst lateness {:.1?}",
            self.targets,
            self.interval,
            self.duration,
            self.checks,
            self.failures,
            self.cpu,
            self.cpu_share() * 100.0,
            self.listener_cpu.as_secs_f64() / self.duration.as_secs_f64().max(f64::MIN_POSITIVE)
                * 100.0,
            self.max_lateness,
        )
    }
}

/// Checks `targets` TCP targets on 127.0.0.1 every `interval` for `duration` (on a runtime of
/// its own: call it outside of one) and reports the cost. The timeout is half the interval, at
/// most 1 s. Up to 16 × 65,535 targets.
pub fn run(targets: usize, interval: Duration, duration: Duration) -> std::io::Result<BenchReport> {
    if targets > LISTENERS * usize::from(u16::MAX) {
        return Err(std::io::Error::other("too many targets for the bench"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(targets, interval, duration))
}

async fn measure(
    targets: usize,
    interval: Duration,
    duration: Duration,
) -> std::io::Result<BenchReport> {
    let listeners = Listeners::start()?;
    let spec = CheckSpec {
        timing: Timing {
            interval,
            timeout: (interval / 2).min(Duration::from_secs(1)),
            ..Timing::default()
        },
        ..CheckSpec::new(Check::Tcp)
    };
    let all: Vec<Target> = (0..targets)
        .map(|i| Target {
            service: ServiceAddr {
                protocol: Protocol::Tcp,
                addr: [192, 0, 2, 1].into(),
                port: u16::try_from(i / LISTENERS + 1).unwrap_or(u16::MAX),
            },
            real: listeners.addrs[i % LISTENERS],
            spec: spec.clone(),
            notify: None,
        })
        .collect();
    let (engine, mut events) = Engine::new(Handle::current(), DEFAULT_MAX_CONCURRENT_CHECKS);
    let draining = tokio::spawn(async move { while events.recv().await.is_some() {} });
    engine
        .update_targets(all)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let before = (cpu_time()?, listeners.cpu(), engine.stats());
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let after = (cpu_time()?, listeners.cpu(), engine.stats());
    let elapsed = started.elapsed();
    drop(engine);
    draining.abort();
    listeners.stop();
    Ok(BenchReport {
        targets,
        interval,
        duration: elapsed,
        checks: after.2.checks - before.2.checks,
        failures: after.2.failures - before.2.failures,
        cpu: after.0.saturating_sub(before.0),
        listener_cpu: after.1.saturating_sub(before.1),
        max_lateness: after.2.max_lateness,
    })
}

/// The bench's servers: plain threads that accept and close, outside the runtime, so that their
/// CPU time can be told apart from the checker's.
struct Listeners {
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Listeners {
    fn start() -> std::io::Result<Self> {
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

    /// The CPU time their threads used so far.
    fn cpu(&self) -> Duration {
        self.threads.iter().map(thread_cpu_time).sum()
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

/// The CPU time a running thread used so far.
fn thread_cpu_time(thread: &JoinHandle<()>) -> Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread has not been joined, so its pthread_t is valid; the call writes one
    // clockid_t through a valid pointer.
    if unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) } != 0 {
        return Duration::ZERO;
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The process's user and system CPU time so far.
fn cpu_time() -> std::io::Result<Duration> {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a pointer that is valid for it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
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
        assert!(report.listener_cpu <= report.cpu, "{report}");
        assert!(report.to_string().starts_with("64 TCP targets every 100ms"));
    }
}
