//! The soak run: continuous client load through the direct-routing lab while real servers flap,
//! weights change, a service comes and goes, the configuration is reloaded and xlbd restarts,
//! at seeded random intervals; every request is counted by the kind of server it was meant for,
//! and xlbd's memory, descriptors, threads and live connection entries are sampled to show that
//! they stay flat. `xlb-soak` (`cargo xtask soak --minutes N`) and `tests/soak.rs` run it.
//!
//! A failure is attributed by design, not guessed: each service holds one kind of server, and
//! every server answers its own name.
//! - Service A, VIP:80 (mh): rs1 and rs2, the steady servers. They never flap; only their weights
//!   change (1 to 5, never 0). Short connections and long-lived keep-alive connections.
//!   Goal: no failed request at all, also while xlbd restarts.
//! - Service B, VIP:8080 (mh, HTTP check of /health): rs3 and rs4, the flapping servers, one at a
//!   time either crashed (its web server killed) or drained (its /health removed, so the check
//!   takes it out, and stopped once it is out). A flap's window runs from the kill or the drain
//!   until the check sees the server up again; failures inside a window are expected while the
//!   check has not noticed, and are reported with the time it took to notice. A failure outside
//!   every window is a failure of a healthy server and counts against the goal.
//! - Service C, VIP:8081: rs5, added and removed; requested only while it is there (the client
//!   holds a lock the churn takes before removing it). Goal: no failure.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Child,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

use crate::{
    daemon::Daemon,
    lab::{real_addr, spawn_web_server, DrLab, VIP},
    netns::Netns,
};

/// The steady servers' service's port (rs1, rs2).
const STEADY_PORT: u16 = 80;
/// The flapping servers' service's port (rs3, rs4).
const FLAPPING_PORT: u16 = 8080;
/// The transient service's port (rs5).
const TRANSIENT_PORT: u16 = 8081;
/// Real servers by index: 0, 1 steady; 2, 3 flapping; 4 transient.
const STEADY: [usize; 2] = [0, 1];
const FLAPPING: [usize; 2] = [2, 3];
const TRANSIENT: usize = 4;
/// How long an xlbd process runs before its resident memory counts: under the soak's load it
/// climbs by steps while the connection table fills (most of it in the first 90 s, 155 to about
/// 166 MiB in three minutes) and then stays nearly level; measured with `--samples`
/// (BENCHMARKS.md).
const MEMORY_WARMUP: f64 = 90.0;
/// How long an xlbd process runs before its descriptors and threads count.
const PROCESS_WARMUP: f64 = 10.0;
/// The connection table's live entries settle once the first closing connections idle out
/// (120 s, IPVS's closing timeout) plus a margin.
const CONNECTIONS_WARMUP: f64 = 130.0;
/// The shortest time between two random restarts of xlbd, so that each process lives past its
/// warm-up long enough for its own slope.
const RESTART_SPACING: f64 = 150.0;
/// The longest wait for the balancer to show a change, a check's verdict or a server to serve.
const WAIT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How long the load and the churn last.
    pub duration: Duration,
    /// The seed of the churn's events and intervals.
    pub seed: u64,
    /// How often xlbd's figures are sampled.
    pub sample_every: Duration,
    /// Figures before this are not judged (the whole process's warm-up).
    pub warmup: Duration,
}

impl Plan {
    /// A run of `duration` with figures sampled every 2 s (short runs) to 5 s, the first 15 s
    /// not judged.
    pub fn new(duration: Duration, seed: u64) -> Self {
        let sample_every = if duration < Duration::from_secs(300) {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        Self {
            duration,
            seed,
            sample_every,
            warmup: Duration::from_secs(15),
        }
    }
}

/// Which servers a request was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Service A on a new connection.
    Steady,
    /// Service A on a long-lived keep-alive connection.
    SteadyKeepAlive,
    /// Service B.
    Flapping,
    /// Service C.
    Transient,
}

impl Class {
    /// The servers (indices) allowed to answer.
    fn servers(self) -> &'static [usize] {
        match self {
            Self::Steady | Self::SteadyKeepAlive => &STEADY,
            Self::Flapping => &FLAPPING,
            Self::Transient => &[TRANSIENT],
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Steady | Self::SteadyKeepAlive => STEADY_PORT,
            Self::Flapping => FLAPPING_PORT,
            Self::Transient => TRANSIENT_PORT,
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// The connection was refused (a RST to the SYN: no server listening).
    Refused,
    /// The connection was reset or closed before a whole answer.
    Reset,
    /// No connection or no answer in time.
    Timeout,
    /// An answer other than 200 OK, or not HTTP.
    BadAnswer,
    /// Answered by a server that is not one of the service's.
    WrongServer,
    /// A keep-alive connection answered by another server than before.
    Moved,
    /// Another socket error.
    Other,
}

impl Cause {
    fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::BadAnswer => "bad answer",
            Self::WrongServer => "wrong server",
            Self::Moved => "moved",
            Self::Other => "other error",
        }
    }

    fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Self::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                Self::Reset
            }
            K::TimedOut | K::WouldBlock => Self::Timeout,
            _ => Self::Other,
        }
    }
}

/// One request: when it ran (seconds since the start) and who answered or why it failed.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// What it was meant for.
    pub class: Class,
    /// When it started.
    pub start: f64,
    /// When it ended.
    pub end: f64,
    /// The answering server's index, or the cause of the failure.
    pub outcome: Result<usize, Cause>,
}

/// What a window of the timeline was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// A flapping server's web server killed, until the check saw it up again.
    Crash,
    /// A flapping server's check made to fail, the server stopped once out, until it was up
    /// again.
    Drain,
    /// xlbd stopped, until the new process had applied its configuration.
    Restart,
}

/// A stretch of the timeline during which failures of some servers are explained.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// What happened.
    pub kind: WindowKind,
    /// The flapping server (index), for a flap.
    pub server: Option<usize>,
    /// Seconds since the start.
    pub start: f64,
    /// Seconds since the start (the run's end when it never closed).
    pub end: f64,
    /// For a flap: how long the check took to take the server out.
    pub noticed_after: Option<f64>,
}

impl Window {
    fn overlaps(&self, r: &Request) -> bool {
        r.start <= self.end && r.end >= self.start
    }
}

/// One sample of xlbd's figures.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// The process sampled (a restart starts a new one).
    pub pid: u32,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads (tasks).
    pub threads: u64,
    /// Live connection-table entries (xlbd's own count from its metrics: active and inactive
    /// connections of every real server, idled-out entries left out).
    pub connections: Option<u64>,
    /// Every entry of the connection table, idled out or not (an LRU map, read through its pin).
    pub table_entries: Option<u64>,
}

/// The failures by cause of one kind of request.
pub type Causes = BTreeMap<Cause, u64>;

/// Requests and failures of one class.
#[derive(Debug, Default)]
pub struct ClassCount {
    /// Requests made.
    pub requests: u64,
    /// Failures by cause.
    pub failed: Causes,
}

impl ClassCount {
    fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Where the failures fell.
#[derive(Debug, Default)]
pub struct Attribution {
    /// Per class, all requests.
    pub classes: BTreeMap<Class, ClassCount>,
    /// Steady requests that overlapped a restart, and those of them that failed.
    pub steady_in_restarts: (u64, u64),
    /// Flapping-server failures inside crash windows.
    pub flap_crash: Causes,
    /// Flapping-server failures inside drain windows.
    pub flap_drain: Causes,
    /// Flapping-server failures outside every flap window (a healthy server failing).
    pub flap_outside: Causes,
    /// Of the failures inside flap windows, those that started after the check had taken the
    /// server out (new connections that still reached it).
    pub flap_after_noticed: Causes,
    /// How long after the check had taken its server out the latest of those started, seconds.
    pub flap_after_noticed_latest: f64,
}

/// Sorts every request into its class and every failure into the window that explains it.
pub fn attribute(requests: &[Request], windows: &[Window]) -> Attribution {
    let mut a = Attribution::default();
    let restarts: Vec<&Window> = windows
        .iter()
        .filter(|w| w.kind == WindowKind::Restart)
        .collect();
    for r in requests {
        let count = a.classes.entry(r.class).or_default();
        count.requests += 1;
        let steady = matches!(r.class, Class::Steady | Class::SteadyKeepAlive);
        let in_restart = restarts.iter().any(|w| w.overlaps(r));
        if steady && in_restart {
            a.steady_in_restarts.0 += 1;
        }
        let Err(cause) = r.outcome else {
            continue;
        };
        *count.failed.entry(cause).or_default() += 1;
        if steady && in_restart {
            a.steady_in_restarts.1 += 1;
        }
        if r.class == Class::Flapping {
            let flap = windows
                .iter()
                .find(|w| w.kind != WindowKind::Restart && w.overlaps(r));
            let bucket = match flap.map(|w| w.kind) {
                Some(WindowKind::Crash) => &mut a.flap_crash,
                Some(_) => &mut a.flap_drain,
                None => &mut a.flap_outside,
            };
            *bucket.entry(cause).or_default() += 1;
            let noticed = flap.and_then(|w| w.noticed_after.map(|n| w.start + n));
            if let Some(after) = noticed.map(|at| r.start - at).filter(|after| *after > 0.0) {
                *a.flap_after_noticed.entry(cause).or_default() += 1;
                a.flap_after_noticed_latest = a.flap_after_noticed_latest.max(after);
            }
        }
    }
    a
}

/// The growth rate of samples taken in segments (one per process), each with its own level: the
/// least-squares slope of the values after each segment's own mean is taken away, so that a
/// restart's drop does not hide a leak nor a new process's level fake one. `None` without two
/// samples at different times in some segment.
pub fn pooled_slope(points: &[(u32, f64, f64)]) -> Option<f64> {
    let mut segments: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for &(segment, t, v) in points {
        segments.entry(segment).or_default().push((t, v));
    }
    let (mut num, mut den) = (0.0, 0.0);
    for points in segments.values() {
        let n = points.len() as f64;
        let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
        for (t, v) in points {
            num += (t - mt) * (v - mv);
            den += (t - mt) * (t - mt);
        }
    }
    (den > 0.0).then(|| num / den)
}

/// One figure's course over the run.
#[derive(Clone, Debug)]
pub struct Trend {
    /// What it is.
    pub name: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// The first judged sample.
    pub start: f64,
    /// The last sample.
    pub end: f64,
    /// The largest sample.
    pub max: f64,
    /// Growth per minute (pooled over processes), after warm-up; `None` when not judged.
    pub slope_per_min: Option<f64>,
    /// The growth the slope gives over the judged time.
    pub growth: Option<f64>,
    /// The growth allowed.
    pub limit: f64,
    /// Why it was not judged, when it was not.
    pub not_judged: Option<String>,
}

impl Trend {
    /// Whether it stayed within its limit (a figure that could not be judged passes, and says
    /// so).
    pub fn flat(&self) -> bool {
        self.growth.is_none_or(|g| g <= self.limit)
    }
}

/// Judges one figure: samples of `value` after `warmup` (and after each process's own
/// warm-up when `per_process`), growth = pooled slope × the judged time, against
/// `limit(median)`.
fn trend(
    name: &'static str,
    unit: &'static str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> Option<f64>,
    warmup: f64,
    process_warmup: Option<f64>,
    limit: impl Fn(f64) -> f64,
) -> Trend {
    let per_process = process_warmup.is_some();
    let mut first_seen: HashMap<u32, f64> = HashMap::new();
    for s in samples {
        first_seen.entry(s.pid).or_insert(s.t);
    }
    let all: Vec<(u32, f64, f64)> = samples
        .iter()
        .filter_map(|s| value(s).map(|v| (if per_process { s.pid } else { 0 }, s.t, v)))
        .collect();
    let judged: Vec<(u32, f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= warmup && process_warmup.is_none_or(|w| s.t >= first_seen[&s.pid] + w))
        .filter_map(|s| value(s).map(|v| (if per_process { s.pid } else { 0 }, s.t, v)))
        .collect();
    let mut sorted: Vec<f64> = judged.iter().map(|p| p.2).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let span = match (judged.first(), judged.last()) {
        (Some(a), Some(b)) => b.1 - a.1,
        _ => 0.0,
    };
    let slope = pooled_slope(&judged);
    let not_judged = match slope {
        Some(_) => None,
        None if all.is_empty() => Some("no sample".to_owned()),
        None => Some(format!(
            "the run is shorter than its warm-up ({warmup:.0} s{})",
            match process_warmup {
                Some(w) => format!(", and {w:.0} s after each start of xlbd"),
                None => String::new(),
            }
        )),
    };
    Trend {
        name,
        unit,
        start: judged.first().or(all.first()).map_or(0.0, |p| p.2),
        end: all.last().map_or(0.0, |p| p.2),
        max: all.iter().map(|p| p.2).fold(0.0, f64::max),
        slope_per_min: slope.map(|s| s * 60.0),
        growth: slope.map(|s| s * span),
        limit: limit(median),
        not_judged,
    }
}

/// The flatness figures of a run's samples; `warmup` in seconds.
pub fn flatness(samples: &[Sample], warmup: f64) -> Vec<Trend> {
    vec![
        trend(
            "xlbd resident memory",
            "MiB",
            samples,
            |s| Some(s.rss_kib as f64 / 1024.0),
            warmup,
            Some(MEMORY_WARMUP),
            |median| f64::max(4.0, median * 0.1),
        ),
        trend(
            "xlbd open file descriptors",
            "",
            samples,
            |s| Some(s.fds as f64),
            warmup,
            Some(PROCESS_WARMUP),
            |_| 4.0,
        ),
        trend(
            "xlbd threads",
            "",
            samples,
            |s| Some(s.threads as f64),
            warmup,
            Some(PROCESS_WARMUP),
            |_| 4.0,
        ),
        trend(
            "live connection entries",
            "",
            samples,
            |s| s.connections.map(|c| c as f64),
            warmup.max(CONNECTIONS_WARMUP),
            None,
            |median| f64::max(200.0, median * 0.2),
        ),
        Trend {
            growth: None,
            slope_per_min: None,
            not_judged: Some(format!(
                "an LRU map keeps idled-out entries until it is full ({} entries) and then \
                 evicts the oldest, so it grows by design",
                lb_common::limits::MAX_CONNECTIONS
            )),
            ..trend(
                "connection table entries",
                "",
                samples,
                |s| s.table_entries.map(|c| c as f64),
                0.0,
                None,
                |_| f64::INFINITY,
            )
        },
    ]
}

/// What happened in a run, and its verdict.
#[derive(Debug)]
pub struct Report {
    /// The plan run.
    pub plan: Plan,
    /// How long it really ran, seconds.
    pub ran: f64,
    /// Whether it was interrupted (Ctrl-C, SIGTERM) before its end.
    pub interrupted: bool,
    /// Churn events done, by name.
    pub events: BTreeMap<&'static str, u64>,
    /// The requests and failures, attributed.
    pub attribution: Attribution,
    /// Flap and restart windows.
    pub windows: Vec<Window>,
    /// The flatness figures.
    pub trends: Vec<Trend>,
    /// xlbd's figures as sampled.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Each goal with whether it was met.
    pub fn goals(&self) -> Vec<(String, bool)> {
        let failures = |class: Class| {
            self.attribution
                .classes
                .get(&class)
                .map_or(0, ClassCount::failures)
        };
        let steady = failures(Class::Steady) + failures(Class::SteadyKeepAlive);
        let outside: u64 = self.attribution.flap_outside.values().sum();
        let mut goals = vec![
            (
                format!("0 failed requests to the steady servers ({steady})"),
                steady == 0,
            ),
            (
                format!("0 failed requests to flapping servers outside their flaps ({outside})"),
                outside == 0,
            ),
            (
                format!(
                    "0 failed requests to the transient service while it is there ({})",
                    failures(Class::Transient)
                ),
                failures(Class::Transient) == 0,
            ),
        ];
        for t in &self.trends {
            let judged = if t.not_judged.is_some() {
                " (not judged)"
            } else {
                ""
            };
            goals.push((format!("{} flat{judged}", t.name), t.flat()));
        }
        goals.push(("ran to its end".to_owned(), !self.interrupted));
        goals
    }

    /// Whether every goal was met.
    pub fn passed(&self) -> bool {
        self.goals().iter().all(|g| g.1)
    }
}

fn causes(c: &Causes) -> String {
    if c.is_empty() {
        return "none".to_owned();
    }
    c.iter()
        .map(|(cause, n)| format!("{} {n}", cause.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn spread(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "none".to_owned();
    }
    values.sort_by(f64::total_cmp);
    format!(
        "n={} min {:.2} s, median {:.2} s, max {:.2} s",
        values.len(),
        values[0],
        values[values.len() / 2],
        values[values.len() - 1]
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: {:.0} s of {:.0} s{}, seed {:#x}; rs1 rs2 steady (VIP:80), rs3 rs4 flapping \
             (VIP:8080), rs5 transient (VIP:8081)",
            self.ran,
            self.plan.duration.as_secs_f64(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            self.plan.seed
        )?;
        let events: Vec<String> = self
            .events
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        writeln!(f, "churn: {}", events.join(", "))?;
        writeln!(f, "requests:")?;
        let a = &self.attribution;
        for (class, count) in &a.classes {
            writeln!(
                f,
                "  {:<18} {:>8} ({:>6.1}/s), failed {}: {}",
                format!("{class:?}").to_lowercase(),
                count.requests,
                count.requests as f64 / self.ran.max(1.0),
                count.failures(),
                causes(&count.failed)
            )?;
        }
        let restarts: Vec<&Window> = self
            .windows
            .iter()
            .filter(|w| w.kind == WindowKind::Restart)
            .collect();
        writeln!(
            f,
            "  during {} restarts of xlbd ({:.1} s in all): {} steady requests, {} failed",
            restarts.len(),
            restarts.iter().map(|w| w.end - w.start).sum::<f64>(),
            a.steady_in_restarts.0,
            a.steady_in_restarts.1
        )?;
        writeln!(
            f,
            "  flapping servers' failures: during crashes {}; during drains {}; outside flaps {}",
            causes(&a.flap_crash),
            causes(&a.flap_drain),
            causes(&a.flap_outside)
        )?;
        writeln!(
            f,
            "  of those in flaps, started after the check had taken the server out: {} (the \
             latest {:.2} s after)",
            causes(&a.flap_after_noticed),
            a.flap_after_noticed_latest
        )?;
        for kind in [WindowKind::Crash, WindowKind::Drain] {
            let mut noticed: Vec<f64> = self
                .windows
                .iter()
                .filter(|w| w.kind == kind)
                .filter_map(|w| w.noticed_after)
                .collect();
            let mut lasted: Vec<f64> = self
                .windows
                .iter()
                .filter(|w| w.kind == kind)
                .map(|w| w.end - w.start)
                .collect();
            writeln!(
                f,
                "  {kind:?}: the check took the server out after {}; windows {}",
                spread(&mut noticed),
                spread(&mut lasted)
            )?;
        }
        writeln!(
            f,
            "flatness ({} samples; judged after {:.0} s, and after each start of xlbd {MEMORY_WARMUP:.0} \
             s for its memory, {PROCESS_WARMUP:.0} s for its descriptors and threads):",
            self.samples.len(),
            self.plan.warmup.as_secs_f64()
        )?;
        for t in &self.trends {
            let unit = if t.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", t.unit)
            };
            write!(
                f,
                "  {:<28} start {:.1}, end {:.1}, max {:.1}{unit}",
                t.name, t.start, t.end, t.max
            )?;
            match (&t.not_judged, t.slope_per_min, t.growth) {
                (Some(why), _, _) => writeln!(f, "; not judged: {why}")?,
                (None, Some(slope), Some(growth)) => writeln!(
                    f,
                    "; slope {slope:+.3}{unit}/min, growth {growth:+.1} (limit {:.1}): {}",
                    t.limit,
                    if t.flat() { "flat" } else { "GROWING" }
                )?,
                _ => writeln!(f)?,
            }
        }
        for (goal, met) in self.goals() {
            writeln!(f, "{} {goal}", if met { "ok:    " } else { "FAILED:" })?;
        }
        Ok(())
    }
}

impl Report {
    /// The samples as CSV: seconds, pid, resident KiB, descriptors, threads, live connection
    /// entries, table entries (empty when not read).
    pub fn samples_csv(&self) -> String {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let mut csv = "t_s,pid,rss_kib,fds,threads,live_connections,table_entries\n".to_owned();
        for s in &self.samples {
            csv.push_str(&format!(
                "{:.1},{},{},{},{},{},{}\n",
                s.t,
                s.pid,
                s.rss_kib,
                s.fds,
                s.threads,
                opt(s.connections),
                opt(s.table_entries)
            ));
        }
        csv
    }
}

/// Reads `/proc/PID` for the resident memory, descriptors and threads.
fn process_figures(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("VmRSS:")?, fds, field("Threads:")?))
}

/// The sum of `xlb_real_active_connections` and `xlb_real_inactive_connections` over every real
/// server in xlbd's metrics (its sampler's last walk of the table: reading them walks nothing).
pub fn live_connections(metrics: &str) -> Option<u64> {
    let mut sum = 0;
    let mut seen = false;
    for line in metrics.lines() {
        if !(line.starts_with("xlb_real_active_connections{")
            || line.starts_with("xlb_real_inactive_connections{"))
        {
            continue;
        }
        sum += line.rsplit(' ').next()?.parse::<u64>().ok()?;
        seen = true;
    }
    seen.then_some(sum)
}

/// xlbd's metrics page, from inside its namespace (its default listener, 127.0.0.1:9641).
fn metrics_page() -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9641));
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    match parse_answer(&answer) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Every entry of the connection table pinned at `path`, counted through a handle of our own.
fn table_entries(path: &std::path::Path) -> Option<u64> {
    let data = aya::maps::MapData::from_pin(path).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let table =
        aya::maps::HashMap::<_, lb_common::FlowKey, lb_common::Connection>::try_from(map).ok()?;
    Some(table.keys().filter(Result::is_ok).count() as u64)
}

/// The server index an answer names (`rsN`, 1-based, to 0-based).
fn server_of(body: &str) -> Option<usize> {
    body.trim()
        .strip_prefix("rs")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// Splits an HTTP answer into status code and body.
pub fn parse_answer(answer: &[u8]) -> Result<(u16, String), Cause> {
    if answer.is_empty() {
        return Err(Cause::Reset);
    }
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(Cause::Reset)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(Cause::BadAnswer)?;
    Ok((code, body.to_owned()))
}

/// Checks that a 200 answer came from one of `class`'s servers.
fn judge(class: Class, code: u16, body: &str) -> Result<usize, Cause> {
    if code != 200 {
        return Err(Cause::BadAnswer);
    }
    let server = server_of(body).ok_or(Cause::BadAnswer)?;
    if class.servers().contains(&server) {
        Ok(server)
    } else {
        Err(Cause::WrongServer)
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// One request on a new connection.
fn request_once(class: Class) -> Result<usize, Cause> {
    let addr = SocketAddr::from((VIP, class.port()));
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| Cause::of(&e))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(|e| Cause::of(&e))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .map_err(|e| Cause::of(&e))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| Cause::of(&e))?;
    let (code, body) = parse_answer(&answer)?;
    judge(class, code, &body)
}

/// A long-lived HTTP/1.1 connection to the steady service.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    server: Option<usize>,
}

impl KeepAlive {
    fn open() -> Result<Self, Cause> {
        let addr = SocketAddr::from((VIP, STEADY_PORT));
        let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| Cause::of(&e))?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(ANSWER_TIMEOUT)))
            .map_err(|e| Cause::of(&e))?;
        Ok(Self {
            reader: BufReader::new(s),
            server: None,
        })
    }

    fn request(&mut self) -> Result<usize, Cause> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n")
            .map_err(|e| Cause::of(&e))?;
        let mut status = String::new();
        if self
            .reader
            .read_line(&mut status)
            .map_err(|e| Cause::of(&e))?
            == 0
        {
            return Err(Cause::Reset);
        }
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or(Cause::BadAnswer)?;
        let mut length = None;
        loop {
            let mut line = String::new();
            if self
                .reader
                .read_line(&mut line)
                .map_err(|e| Cause::of(&e))?
                == 0
            {
                return Err(Cause::Reset);
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length.ok_or(Cause::BadAnswer)?];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| Cause::of(&e))?;
        let server = judge(
            Class::SteadyKeepAlive,
            code,
            &String::from_utf8_lossy(&body),
        )?;
        if self.server.is_some_and(|s| s != server) {
            return Err(Cause::Moved);
        }
        self.server = Some(server);
        Ok(server)
    }
}

/// The balancer's configuration as the churn wants it.
#[derive(Clone, Debug)]
struct Model {
    /// Weights of rs1, rs2 (service A) and rs3, rs4 (service B).
    weights: [u32; 4],
    /// Whether service C is there.
    transient: bool,
}

impl Model {
    fn check(path: &str) -> String {
        format!(
            "[services.health.check]\nkind = \"http\"\npath = \"{path}\"\ninterval = \"500ms\"\n\
             timeout = \"300ms\"\nrise = 2\nfall = 2\n"
        )
    }

    /// The configuration file.
    fn config(&self) -> String {
        let mut text = String::new();
        for (port, path, servers) in [
            (STEADY_PORT, "/", STEADY),
            (FLAPPING_PORT, "/health", FLAPPING),
        ] {
            text.push_str(&format!(
                "[[services]]\naddress = \"{VIP}:{port}\"\nscheduler = \"mh\"\n{}",
                Self::check(path)
            ));
            for i in servers {
                text.push_str(&format!(
                    "[[services.reals]]\naddress = \"{}:{port}\"\nweight = {}\n",
                    real_addr(i),
                    self.weights[i]
                ));
            }
        }
        if self.transient {
            text.push_str(&format!(
                "[[services]]\naddress = \"{VIP}:{TRANSIENT_PORT}\"\nscheduler = \"mh\"\n\
                 [[services.reals]]\naddress = \"{}:{TRANSIENT_PORT}\"\nweight = 1\n",
                real_addr(TRANSIENT)
            ));
        }
        text
    }

    /// `-S -n` lines that must be there, and those that must not.
    fn saved(&self) -> (Vec<String>, Vec<String>) {
        let mut present = Vec::new();
        for (port, servers) in [(STEADY_PORT, STEADY), (FLAPPING_PORT, FLAPPING)] {
            for i in servers {
                present.push(format!(
                    "-a -t {VIP}:{port} -r {}:{port} -g -w {}",
                    real_addr(i),
                    self.weights[i]
                ));
            }
        }
        let transient = format!(
            "-a -t {VIP}:{TRANSIENT_PORT} -r {}:{TRANSIENT_PORT} -g -w 1",
            real_addr(TRANSIENT)
        );
        if self.transient {
            (present, vec![])
        } else {
            (present, vec![transient])
        }
    }
}

/// How a change reaches xlbd.
#[derive(Clone, Copy, Debug)]
enum Method {
    /// xlbadm commands in ipvsadm syntax.
    Xlbadm,
    /// The file rewritten, then SIGHUP.
    Sighup,
    /// The file rewritten, then `xlbadm --reload`.
    Reload,
}

/// One churn event.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// A flapping server taken down (crashed or drained), or the one down brought back.
    Flap(Option<WindowKind>),
    /// A weight of a steady or a flapping server changed.
    Weight(Method),
    /// Service C added or removed.
    Transient(Method),
    /// xlbd stopped and started.
    Restart,
}

/// The first events of every run, so that a short run does each kind and each method at least
/// once; random ones follow.
const FIRST: [Event; 11] = [
    Event::Flap(Some(WindowKind::Crash)),
    Event::Weight(Method::Sighup),
    Event::Transient(Method::Reload),
    Event::Restart,
    Event::Flap(None),
    Event::Weight(Method::Xlbadm),
    Event::Transient(Method::Xlbadm),
    Event::Flap(Some(WindowKind::Drain)),
    Event::Weight(Method::Reload),
    Event::Transient(Method::Sighup),
    Event::Flap(None),
];

/// Sets a flag when dropped, so that the client threads stop even when the churn panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The churn's side of the run: the lab, xlbd, the flapping and transient web servers.
struct Churn<'a> {
    lab: &'a DrLab,
    daemon: Daemon<'a>,
    model: Model,
    rng: StdRng,
    t0: Instant,
    /// Web servers on the flapping and transient ports, by server index.
    servers: HashMap<usize, Child>,
    /// The flapping server down, with its window's index.
    down: Option<(usize, usize)>,
    windows: Vec<Window>,
    events: BTreeMap<&'static str, u64>,
    /// xlbd's pid for the sampler (0 while it restarts).
    pid: &'a AtomicU32,
    /// Whether service C may be requested; held by the client during a request.
    transient_open: &'a Mutex<bool>,
    /// When xlbd last restarted.
    last_restart: f64,
}

impl Churn<'_> {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn count(&mut self, name: &'static str) {
        *self.events.entry(name).or_default() += 1;
    }

    fn web_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/tmp/{}-soak-www", self.lab.reals[i].name()))
    }

    /// Starts server `i`'s web server on its port (with /health) and waits until it serves.
    fn start_server(&mut self, i: usize) {
        let port = if i == TRANSIENT {
            TRANSIENT_PORT
        } else {
            FLAPPING_PORT
        };
        let dir = self.web_dir(i);
        std::fs::create_dir_all(&dir).expect("web root");
        std::fs::write(dir.join("index.html"), format!("rs{}\n", i + 1)).expect("page");
        std::fs::write(dir.join("health"), "ok\n").expect("health page");
        let ns: &Netns = &self.lab.reals[i];
        let child = spawn_web_server(ns, dir.to_str().expect("path"), port);
        self.servers.insert(i, child);
        let deadline = Instant::now() + WAIT;
        loop {
            let out = ns.run(&format!("curl -s --max-time 1 http://127.0.0.1:{port}/"));
            if server_of(&String::from_utf8_lossy(&out.stdout)) == Some(i) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rs{}'s web server did not start",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_server(&mut self, i: usize) {
        if let Some(mut child) = self.servers.remove(&i) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until `-L -n` shows flapping server `i` in `state`.
    fn wait_state(&self, i: usize, state: &str) {
        let addr = format!("{}:{FLAPPING_PORT}", real_addr(i));
        let deadline = Instant::now() + WAIT;
        loop {
            let listing = self.daemon.adm_ok(&["-L", "-n"]);
            if listing
                .lines()
                .any(|l| l.contains(&addr) && l.trim_end().ends_with(state))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rs{} not {state} within {WAIT:?}:\n{listing}\nxlbd log:\n{}",
                i + 1,
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `-S -n` shows the model.
    fn wait_applied(&self) {
        let (present, absent) = self.model.saved();
        let deadline = Instant::now() + WAIT;
        loop {
            let saved = self.daemon.adm_ok(&["-S", "-n"]);
            if present.iter().all(|l| saved.contains(l.as_str()))
                && !absent.iter().any(|l| saved.contains(l.as_str()))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not applied within {WAIT:?}: {present:?} without {absent:?} in:\n{saved}\n\
                 xlbd log:\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Applies the model (already changed) by `method`; `commands` are the xlbadm commands
    /// that make the same change.
    fn apply(&mut self, method: Method, commands: &[Vec<String>]) {
        self.daemon.write_config(&self.model.config());
        match method {
            Method::Xlbadm => {
                for command in commands {
                    let args: Vec<&str> = command.iter().map(String::as_str).collect();
                    self.daemon.adm_ok(&args);
                }
                self.count("xlbadm changes");
            }
            Method::Sighup => {
                self.daemon.signal(libc::SIGHUP);
                self.count("reloads by SIGHUP");
            }
            Method::Reload => {
                self.daemon.adm_ok(&["--reload"]);
                self.count("reloads by xlbadm --reload");
            }
        }
        self.wait_applied();
    }

    fn flap(&mut self, kind: Option<WindowKind>) {
        if let Some((i, window)) = self.down.take() {
            self.start_server(i);
            self.wait_state(i, "up");
            self.windows[window].end = self.now();
            return;
        }
        let i = FLAPPING[self.rng.random_range(0..FLAPPING.len())];
        let kind = kind.unwrap_or(if self.rng.random_bool(0.5) {
            WindowKind::Crash
        } else {
            WindowKind::Drain
        });
        let start = self.now();
        if kind == WindowKind::Crash {
            self.stop_server(i);
            self.count("crashes");
        } else {
            std::fs::remove_file(self.web_dir(i).join("health")).expect("remove /health");
            self.count("drains");
        }
        self.wait_state(i, "down");
        let noticed = self.now() - start;
        if kind == WindowKind::Drain {
            self.stop_server(i);
        }
        self.windows.push(Window {
            kind,
            server: Some(i),
            start,
            end: f64::INFINITY,
            noticed_after: Some(noticed),
        });
        self.down = Some((i, self.windows.len() - 1));
    }

    fn weight(&mut self, method: Method) {
        let i = self.rng.random_range(0..4);
        let old = self.model.weights[i];
        let mut weight = self.rng.random_range(1..=5);
        if weight == old {
            weight = old % 5 + 1;
        }
        self.model.weights[i] = weight;
        let port = if STEADY.contains(&i) {
            STEADY_PORT
        } else {
            FLAPPING_PORT
        };
        let command = [
            "-e".to_owned(),
            "-t".to_owned(),
            format!("{VIP}:{port}"),
            "-r".to_owned(),
            format!("{}:{port}", real_addr(i)),
            "-g".to_owned(),
            "-w".to_owned(),
            weight.to_string(),
        ];
        self.apply(method, &[command.to_vec()]);
        self.count("weight changes");
    }

    fn transient(&mut self, method: Method) {
        let service = format!("{VIP}:{TRANSIENT_PORT}");
        if self.model.transient {
            // No request is in flight once the lock is ours.
            *self.transient_open.lock().expect("transient lock") = false;
            self.model.transient = false;
            self.apply(
                method,
                &[vec!["-D".to_owned(), "-t".to_owned(), service.clone()]],
            );
            self.count("services removed");
        } else {
            self.model.transient = true;
            let real = format!("{}:{TRANSIENT_PORT}", real_addr(TRANSIENT));
            self.apply(
                method,
                &[
                    ["-A", "-t", &service, "-s", "mh"]
                        .map(str::to_owned)
                        .to_vec(),
                    ["-a", "-t", &service, "-r", &real, "-g", "-w", "1"]
                        .map(str::to_owned)
                        .to_vec(),
                ],
            );
            *self.transient_open.lock().expect("transient lock") = true;
            self.count("services added");
        }
    }

    fn restart(&mut self) {
        let start = self.now();
        self.pid.store(0, Ordering::SeqCst);
        self.daemon.stop();
        self.daemon.spawn();
        self.pid.store(self.daemon.pid(), Ordering::SeqCst);
        self.wait_applied();
        self.windows.push(Window {
            kind: WindowKind::Restart,
            server: None,
            start,
            end: self.now(),
            noticed_after: None,
        });
        self.last_restart = self.now();
        self.count("restarts");
    }

    fn random_event(&mut self) -> Event {
        let method = match self.rng.random_range(0..3) {
            0 => Method::Xlbadm,
            1 => Method::Sighup,
            _ => Method::Reload,
        };
        match self.rng.random_range(0..9) {
            0..=2 => Event::Flap(None),
            3..=5 => Event::Weight(method),
            6 | 7 => Event::Transient(method),
            // A restart at most every RESTART_SPACING, so that processes live long enough for
            // their own figures to show growth.
            _ if self.now() - self.last_restart < RESTART_SPACING => Event::Weight(method),
            _ => Event::Restart,
        }
    }

    fn run(&mut self, plan: &Plan, interrupted: &AtomicBool) {
        let mut first = FIRST.iter();
        let mut next = Instant::now() + Duration::from_secs(3);
        while self.t0.elapsed() < plan.duration && !interrupted.load(Ordering::SeqCst) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let event = match first.next() {
                Some(event) => *event,
                None => self.random_event(),
            };
            match event {
                Event::Flap(kind) => self.flap(kind),
                Event::Weight(method) => self.weight(method),
                Event::Transient(method) => self.transient(method),
                Event::Restart => self.restart(),
            }
            next = Instant::now() + Duration::from_secs_f64(self.rng.random_range(1.5..4.5));
        }
        // A server still down is brought back, so that the end of its window is known.
        if self.down.is_some() {
            self.flap(None);
        }
    }
}

impl Drop for Churn<'_> {
    /// Stops the web servers it started and removes their files (xlbd stops with `daemon`).
    fn drop(&mut self) {
        for i in FLAPPING.into_iter().chain([TRANSIENT]) {
            self.stop_server(i);
            let _ = std::fs::remove_dir_all(self.web_dir(i));
        }
    }
}

/// A client thread's loop: `request` until `stop`, every request recorded.
fn client_loop(
    t0: Instant,
    stop: &AtomicBool,
    pause: Duration,
    mut request: impl FnMut() -> Option<(Class, Result<usize, Cause>)>,
) -> Vec<Request> {
    let mut requests = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let start = t0.elapsed().as_secs_f64();
        if let Some((class, outcome)) = request() {
            requests.push(Request {
                class,
                start,
                end: t0.elapsed().as_secs_f64(),
                outcome,
            });
        }
        std::thread::sleep(pause);
    }
    requests
}

/// Runs the soak in a lab of its own (namespaces and processes removed at the end, also when it
/// panics); `interrupted` ends it early (Ctrl-C).
pub fn run(plan: &Plan, interrupted: &AtomicBool) -> Report {
    let lab = DrLab::new(5);
    let model = Model {
        weights: [1; 4],
        transient: false,
    };
    let daemon = Daemon::start_with_config(&lab.balancer, Some(&model.config()));
    let pid = AtomicU32::new(daemon.pid());
    let transient_open = Mutex::new(false);
    let table = daemon.pin_dir.join(lb_common::maps::CONNTRACK);
    let mut churn = Churn {
        lab: &lab,
        daemon,
        model,
        rng: StdRng::seed_from_u64(plan.seed),
        t0: Instant::now(),
        servers: HashMap::new(),
        down: None,
        windows: Vec::new(),
        events: BTreeMap::new(),
        pid: &pid,
        transient_open: &transient_open,
        last_restart: 0.0,
    };
    for i in FLAPPING.into_iter().chain([TRANSIENT]) {
        churn.start_server(i);
    }
    churn.wait_applied();
    for i in FLAPPING {
        churn.wait_state(i, "up");
    }
    let t0 = Instant::now();
    churn.t0 = t0;
    let stop = AtomicBool::new(false);
    let (requests, samples) = std::thread::scope(|scope| {
        let stop = &stop;
        let client = &lab.client;
        let mut clients = Vec::new();
        for class in [
            Class::Steady,
            Class::Steady,
            Class::Steady,
            Class::Flapping,
            Class::Flapping,
        ] {
            clients.push(scope.spawn(move || {
                client.enter(|| {
                    client_loop(t0, stop, Duration::from_millis(20), || {
                        Some((class, request_once(class)))
                    })
                })
            }));
        }
        let open = &transient_open;
        clients.push(scope.spawn(move || {
            client.enter(|| {
                client_loop(t0, stop, Duration::from_millis(100), || {
                    let guard = open.lock().expect("transient lock");
                    if !*guard {
                        return None;
                    }
                    let outcome = request_once(Class::Transient);
                    drop(guard);
                    Some((Class::Transient, outcome))
                })
            })
        }));
        // Four keep-alive connections, a request on one of them in turn every 25 ms; one that
        // fails is opened again.
        clients.push(scope.spawn(move || {
            client.enter(|| {
                let mut connections: Vec<Option<KeepAlive>> = (0..4).map(|_| None).collect();
                let mut turn = 0;
                client_loop(t0, stop, Duration::from_millis(25), || {
                    turn = (turn + 1) % connections.len();
                    let slot = &mut connections[turn];
                    let outcome = match slot {
                        Some(c) => c.request(),
                        None => KeepAlive::open().and_then(|mut c| {
                            let outcome = c.request();
                            *slot = Some(c);
                            outcome
                        }),
                    };
                    if outcome.is_err() {
                        *slot = None;
                    }
                    Some((Class::SteadyKeepAlive, outcome))
                })
            })
        }));
        let pid = &pid;
        let every = plan.sample_every;
        let balancer = &lab.balancer;
        let sampler = scope.spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                next += every;
                let p = pid.load(Ordering::SeqCst);
                if p == 0 {
                    continue;
                }
                let t = t0.elapsed().as_secs_f64();
                let connections = balancer
                    .enter(metrics_page)
                    .and_then(|page| live_connections(&page));
                let entries = table_entries(&table);
                // A restart between the pid's read and here leaves the old pid gone: no sample.
                if let Some((rss_kib, fds, threads)) = process_figures(p) {
                    samples.push(Sample {
                        t,
                        pid: p,
                        rss_kib,
                        fds,
                        threads,
                        connections,
                        table_entries: entries,
                    });
                }
            }
            samples
        });
        {
            let _stop = StopOnDrop(stop);
            churn.run(plan, interrupted);
        }
        let requests: Vec<Request> = clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread panicked"))
            .collect();
        (requests, sampler.join().expect("the sampler panicked"))
    });
    let ran = t0.elapsed().as_secs_f64();
    for w in &mut churn.windows {
        w.end = w.end.min(ran);
    }
    // A process sampled while it stopped shows its exit, not its course.
    let mut samples = samples;
    samples.retain(|s| {
        !churn
            .windows
            .iter()
            .any(|w| w.kind == WindowKind::Restart && (w.start..=w.end).contains(&s.t))
    });
    let warmup = plan.warmup.as_secs_f64();
    Report {
        plan: plan.clone(),
        ran,
        interrupted: interrupted.load(Ordering::SeqCst),
        events: std::mem::take(&mut churn.events),
        attribution: attribute(&requests, &churn.windows),
        windows: std::mem::take(&mut churn.windows),
        trends: flatness(&samples, warmup),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pooled_slope_ignores_each_process_level_and_sees_growth_within_them() {
        // Two processes at different levels, each flat: no growth.
        let flat = [
            (1, 0.0, 10.0),
            (1, 10.0, 10.0),
            (2, 20.0, 30.0),
            (2, 30.0, 30.0),
        ];
        assert_eq!(pooled_slope(&flat), Some(0.0));
        // Each grows 1 per second, from a lower level after the restart.
        let growing = [
            (1, 0.0, 10.0),
            (1, 10.0, 20.0),
            (2, 20.0, 5.0),
            (2, 30.0, 15.0),
        ];
        assert!((pooled_slope(&growing).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(pooled_slope(&[(1, 0.0, 1.0)]), None);
    }

    fn request(class: Class, start: f64, outcome: Result<usize, Cause>) -> Request {
        Request {
            class,
            start,
            end: start + 0.01,
            outcome,
        }
    }

    #[test]
    fn failures_are_attributed_to_the_window_that_explains_them() {
        let windows = [
            Window {
                kind: WindowKind::Crash,
                server: Some(2),
                start: 10.0,
                end: 15.0,
                noticed_after: Some(1.0),
            },
            Window {
                kind: WindowKind::Restart,
                server: None,
                start: 20.0,
                end: 22.0,
                noticed_after: None,
            },
        ];
        let requests = [
            request(Class::Flapping, 11.0, Err(Cause::Refused)),
            request(Class::Flapping, 21.0, Err(Cause::Refused)),
            request(Class::Steady, 21.0, Ok(0)),
            request(Class::SteadyKeepAlive, 21.5, Err(Cause::Reset)),
            request(Class::Steady, 30.0, Ok(1)),
        ];
        let a = attribute(&requests, &windows);
        assert_eq!(a.flap_crash, Causes::from([(Cause::Refused, 1)]));
        assert_eq!(a.flap_outside, Causes::from([(Cause::Refused, 1)]));
        assert!(a.flap_after_noticed.is_empty());
        assert_eq!(a.steady_in_restarts, (2, 1));
        assert_eq!(a.classes[&Class::Steady].requests, 2);
        assert_eq!(a.classes[&Class::SteadyKeepAlive].failures(), 1);
        let later = [request(Class::Flapping, 12.5, Err(Cause::Refused))];
        let a = attribute(&later, &windows);
        assert_eq!(a.flap_after_noticed, Causes::from([(Cause::Refused, 1)]));
        assert!((a.flap_after_noticed_latest - 1.5).abs() < 1e-9);
    }

    fn sample(t: f64, pid: u32, rss_mib: u64, fds: u64) -> Sample {
        Sample {
            t,
            pid,
            rss_kib: rss_mib * 1024,
            fds,
            threads: 5,
            connections: Some(1000),
            table_entries: Some(t as u64 * 100),
        }
    }

    #[test]
    fn a_descriptor_leak_fails_flatness_and_a_restart_drop_does_not() {
        let mut samples = Vec::new();
        for k in 0..60 {
            let t = f64::from(k) * 5.0;
            let pid = if t < 150.0 { 1 } else { 2 };
            // Memory drops at the restart; descriptors grow by one every 10 s in each process.
            let rss = if pid == 1 { 40 } else { 30 };
            samples.push(sample(t, pid, rss, 10 + (k % 30) as u64 / 2));
        }
        let trends = flatness(&samples, 15.0);
        assert!(trends[0].flat(), "{:?}", trends[0]);
        assert!(!trends[1].flat(), "{:?}", trends[1]);
        assert!(trends[2].flat() && trends[3].flat());
        assert!(trends[3].not_judged.is_none());
        // A run shorter than the connection table's warm-up does not judge it, and says so.
        let short: Vec<Sample> = samples.into_iter().filter(|s| s.t < 60.0).collect();
        let trends = flatness(&short, 15.0);
        assert!(trends[3].not_judged.is_some() && trends[3].flat());
    }

    #[test]
    fn answers_name_their_server_and_a_stranger_is_a_wrong_server() {
        let (code, body) = parse_answer(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nrs3\n").unwrap();
        assert_eq!(judge(Class::Flapping, code, &body), Ok(2));
        assert_eq!(judge(Class::Steady, code, &body), Err(Cause::WrongServer));
        assert_eq!(parse_answer(b""), Err(Cause::Reset));
        let (code, body) = parse_answer(b"HTTP/1.0 404 Not Found\r\n\r\nno").unwrap();
        assert_eq!(judge(Class::Steady, code, &body), Err(Cause::BadAnswer));
    }

    #[test]
    fn live_connections_add_active_and_inactive_of_every_real_server_from_the_metrics() {
        let metrics = "# TYPE xlb_real_active_connections gauge\n\
                       xlb_real_active_connections{service=\"a\",real=\"b\"} 3\n\
                       xlb_real_active_connections{service=\"a\",real=\"c\"} 4\n\
                       xlb_real_inactive_connections{service=\"a\",real=\"b\"} 100\n\
                       xlb_real_inactive_connections{service=\"a\",real=\"c\"} 200\n\
                       xlb_real_weight{service=\"a\",real=\"c\"} 2\n";
        assert_eq!(live_connections(metrics), Some(307));
        assert_eq!(live_connections("xlb_up 1\n"), None);
    }
}
