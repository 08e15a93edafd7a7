//! Runs the checks of a set of targets: each on its own interval, starting at a deterministic
//! offset within it (so that thousands of targets do not all fire at once), at most so many at a
//! time (a semaphore), feeding the results to the targets' state machines. Each change is logged
//! once and sent to the daemon as a [`HealthEvent`]; the set of targets can be replaced at run
//! time without resetting the state of those that stay.
//!
//! The daemon's side: build the targets of each service with [`Target::for_service`], hand all of
//! them to [`Engine::update_targets`] whenever the desired state or the health settings change,
//! and on each event rebuild the service's table from [`Engine::effective_service`].

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    runtime::Handle,
    sync::{mpsc, Semaphore},
    task::AbortHandle,
};

mod batch;

use super::{
    checker::{CheckResult, Probe},
    machine::{effective_service, EffectiveService, Health, TargetMachine, Transition},
    process::{run_program, run_shell, Outcome},
};
use crate::state::{
    health::{CheckKind, CheckOptions, CheckSpec, ConfigError, ServiceHealth},
    Forwarding, Protocol, ServiceAddr, VirtualService,
};

/// How many checks run at once by default: enough for 10,000 targets a second with room for
/// slow ones, few enough that a flood of timeouts cannot exhaust file descriptors.
pub const DEFAULT_MAX_CONCURRENT_CHECKS: usize = 256;

/// How long a notify hook may run before it is killed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// One real server of one service, and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The service.
    pub service: ServiceAddr,
    /// The real server's address and port (what the check's address and port default to).
    pub real: SocketAddr,
    /// How the data path reaches the real server (what a check through the forwarding path
    /// does too).
    pub forwarding: Forwarding,
    /// The check.
    pub spec: CheckSpec,
    /// The service's notify hook, run on each of this target's health changes.
    pub notify: Option<Notify>,
}

/// A notify hook (`--check-notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The command line.
    pub command: String,
    /// Run by `sh -c` (`--check-notify-shell`) rather than as a program and its arguments.
    pub shell: bool,
}

/// A real server whose check configuration is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the health check of real server {real} of service {service}: {error}")]
pub struct TargetError {
    /// The service.
    pub service: ServiceAddr,
    /// The real server.
    pub real: SocketAddr,
    /// What is wrong.
    pub error: ConfigError,
}

impl Target {
    /// The targets of `service`: each real server with its options in `real_options` (if any)
    /// over the service's default check; real servers without a check are left out (they always
    /// count as live).
    pub fn for_service(
        service: &VirtualService,
        health: &ServiceHealth,
        real_options: &BTreeMap<SocketAddr, CheckOptions>,
    ) -> Result<Vec<Target>, TargetError> {
        let none = CheckOptions::default();
        let mut targets = Vec::with_capacity(service.reals.len());
        for real in &service.reals {
            let addr = SocketAddr::new(real.addr, real.port);
            let options = real_options.get(&addr).unwrap_or(&none);
            let spec = health.spec_for(options).map_err(|error| TargetError {
                service: service.addr,
                real: addr,
                error,
            })?;
            if let Some(spec) = spec {
                targets.push(Target {
                    service: service.addr,
                    real: addr,
                    forwarding: real.forwarding,
                    spec,
                    notify: health.notify.clone().map(|command| Notify {
                        command,
                        shell: health.notify_shell,
                    }),
                });
            }
        }
        Ok(targets)
    }

    fn key(&self) -> Key {
        (self.service, self.real)
    }
}

/// A change of one target, for the daemon to apply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// The service.
    pub service: ServiceAddr,
    /// The real server.
    pub real: SocketAddr,
    /// What changed.
    pub transition: Transition,
    /// The check that made the change.
    pub result: CheckResult,
}

/// What the listing shows of one target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    /// The service.
    pub service: ServiceAddr,
    /// The real server.
    pub real: SocketAddr,
    /// The address and port that are checked.
    pub checked: SocketAddr,
    /// The check's kind.
    pub kind: CheckKind,
    /// Its state.
    pub health: Health,
    /// The last result, with its latency.
    pub last: Option<CheckResult>,
    /// Why the last failed check failed, even if later ones passed.
    pub last_failure: Option<String>,
    /// The weight its check set, if it is a dynamic-weight exec check.
    pub dynamic_weight: Option<u32>,
}

/// Counters over the engine's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Checks done.
    pub checks: u64,
    /// Checks failed.
    pub failures: u64,
    /// The worst delay between a check's scheduled time and its start (since the engine
    /// started, or since [`Engine::reset_max_lateness`]).
    pub max_lateness: Duration,
    /// Checks that started more than a tenth of their interval late.
    pub late: u64,
}

type Key = (ServiceAddr, SocketAddr);

/// A running target.
struct Entry {
    target: Target,
    /// Which task is the current one, so that a replaced task's last result is not recorded.
    generation: u64,
    /// Its task, once spawned.
    task: Option<AbortHandle>,
    /// Set when the entry is stopped: its check in the batch of half-open checks, which has
    /// no task of its own, ends at its next round.
    stopped: Arc<AtomicBool>,
    kind: CheckKind,
    checked: SocketAddr,
    machine: TargetMachine,
    last: Option<CheckResult>,
    last_failure: Option<String>,
}

impl Entry {
    fn stop(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.stopped.store(true, Ordering::Relaxed);
    }
}

struct Shared {
    semaphore: Semaphore,
    events: mpsc::UnboundedSender<HealthEvent>,
    entries: Mutex<HashMap<Key, Entry>>,
    generations: AtomicU64,
    checks: AtomicU64,
    failures: AtomicU64,
    max_lateness_ns: AtomicU64,
    late: AtomicU64,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic elsewhere cannot leave an entry half-updated in a way that matters here.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The health-check engine: owns the targets, their tasks and their state machines.
pub struct Engine {
    runtime: Handle,
    shared: Arc<Shared>,
    /// The task that runs the half-open checks ([`batch`]), once there is one: where to send
    /// it targets, and its handle.
    batch: OnceLock<(mpsc::UnboundedSender<batch::Slot>, AbortHandle)>,
}

impl Engine {
    /// An engine without targets that runs its checks on `runtime`, at most `max_concurrent` at
    /// once, and the receiver of its events.
    pub fn new(
        runtime: Handle,
        max_concurrent: usize,
    ) -> (Engine, mpsc::UnboundedReceiver<HealthEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            semaphore: Semaphore::new(max_concurrent.max(1)),
            events,
            entries: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            max_lateness_ns: AtomicU64::new(0),
            late: AtomicU64::new(0),
        });
        (
            Engine {
                runtime,
                shared,
                batch: OnceLock::new(),
            },
            receiver,
        )
    }

    /// Makes `targets` the set that is checked: new ones start (unknown, or as their spec says),
    /// gone ones stop, and those that stay keep their state; one whose check changed is checked
    /// the new way from its next round on. Every probe is prepared first, so that an invalid
    /// target changes nothing.
    pub fn update_targets(&self, targets: Vec<Target>) -> Result<(), TargetError> {
        let mut prepared = HashMap::with_capacity(targets.len());
        for target in targets {
            let probe = Probe::for_real(
                &target.spec,
                target.real,
                target.service.addr,
                target.forwarding,
            )
            .map_err(|error| TargetError {
                service: target.service,
                real: target.real,
                error,
            })?;
            prepared.insert(target.key(), (target, probe));
        }
        // The entries change under the lock, but the tasks are spawned outside it: spawning
        // thousands takes a while, and checks that finish meanwhile must not block a worker on
        // the lock. A task that runs before its handle is installed finds its entry by
        // generation all the same.
        let now = Instant::now();
        let mut to_start = Vec::new();
        {
            let mut entries = self.shared.entries();
            entries.retain(|key, entry| {
                let stays = prepared.contains_key(key);
                if !stays {
                    entry.stop();
                }
                stays
            });
            for (key, (target, probe)) in prepared {
                let (machine, last, last_failure) = match entries.remove(&key) {
                    Some(mut entry) if entry.target.spec == target.spec => {
                        // The same check: its task goes on; only the notify hook may have changed.
                        entry.target = target;
                        entries.insert(key, entry);
                        continue;
                    }
                    Some(mut entry) => {
                        entry.stop();
                        entry.machine.set_timing(&target.spec.timing);
                        (entry.machine, entry.last, entry.last_failure)
                    }
                    None => (TargetMachine::new(&target.spec.timing), None, None),
                };
                let generation = self.shared.generations.fetch_add(1, Ordering::Relaxed);
                let interval = target.spec.timing.interval;
                let stopped = Arc::new(AtomicBool::new(false));
                to_start.push((
                    key,
                    generation,
                    probe,
                    interval,
                    now + first_offset(&key, interval),
                    stopped.clone(),
                ));
                entries.insert(
                    key,
                    Entry {
                        kind: target.spec.check.kind(),
                        checked: target.spec.target_via(target.real, target.service.addr),
                        target,
                        generation,
                        task: None,
                        stopped,
                        machine,
                        last,
                        last_failure,
                    },
                );
            }
        }
        let mut started: Vec<(Key, u64, AbortHandle)> = Vec::with_capacity(to_start.len());
        for (key, generation, probe, interval, due, stopped) in to_start {
            // Half-open checks go to the batch's task; they stop when their entry is stopped,
            // or at their next result if it was replaced meanwhile (by generation), as a task
            // does.
            if let Some(prober) = probe.half_open_prober() {
                let slot = batch::Slot {
                    key,
                    generation,
                    stopped,
                    probe,
                    prober,
                    interval,
                    due,
                };
                let (slots, _) = self.batch.get_or_init(|| {
                    let (sender, receiver) = mpsc::unbounded_channel();
                    let task = self
                        .runtime
                        .spawn(batch::run(self.shared.clone(), receiver));
                    (sender, task.abort_handle())
                });
                // The task ends only with the engine.
                let _ = slots.send(slot);
                continue;
            }
            let task = watch(self.shared.clone(), key, generation, probe, interval, due);
            started.push((key, generation, self.runtime.spawn(task).abort_handle()));
        }
        let mut entries = self.shared.entries();
        for (key, generation, task) in started {
            // An entry replaced meanwhile by another update is not this task's: the task stops by
            // itself at its first result, which its generation no longer matches.
            if let Some(entry) = entries.get_mut(&key).filter(|e| e.generation == generation) {
                entry.task = Some(task);
            }
        }
        Ok(())
    }

    /// Every target's status, sorted by service and real server.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let entries = self.shared.entries();
        let mut statuses: Vec<TargetStatus> = entries
            .iter()
            .map(|(&(service, real), e)| TargetStatus {
                service,
                real,
                checked: e.checked,
                kind: e.kind,
                health: e.machine.health(),
                last: e.last.clone(),
                last_failure: e.last_failure.clone(),
                dynamic_weight: e.machine.dynamic_weight(),
            })
            .collect();
        statuses.sort_by_key(|s| (s.service, s.real));
        statuses
    }

    /// The real servers and weights to build `service`'s table from at `now`
    /// ([`effective_service`] over the targets' current state).
    pub fn effective_service(
        &self,
        service: &VirtualService,
        health: &ServiceHealth,
        now: Instant,
    ) -> EffectiveService {
        let entries = self.shared.entries();
        effective_service(
            service,
            health,
            |real| {
                entries
                    .get(&(service.addr, SocketAddr::new(real.addr, real.port)))
                    .map(|e| &e.machine)
            },
            now,
        )
    }

    /// Counters since the engine started.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            checks: self.shared.checks.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            max_lateness: Duration::from_nanos(self.shared.max_lateness_ns.load(Ordering::Relaxed)),
            late: self.shared.late.load(Ordering::Relaxed),
        }
    }

    /// Starts the worst lateness over (a measure that skips the start-up, when thousands of
    /// targets are spawned at once, calls it at its start).
    pub fn reset_max_lateness(&self) {
        self.shared.max_lateness_ns.store(0, Ordering::Relaxed);
    }
}

impl Drop for Engine {
    /// Stops every check.
    fn drop(&mut self) {
        for entry in self.shared.entries().values() {
            entry.stop();
        }
        if let Some((_, task)) = self.batch.get() {
            task.abort();
        }
    }
}

/// Where in its interval a target's first check falls: a hash of the target, so that the same
/// targets spread the same way on every balancer and every restart.
fn first_offset(key: &Key, interval: Duration) -> Duration {
    let (service, real) = key;
    // FNV-1a: small, stable across Rust versions (unlike std's hasher), spreads well enough.
    let hash = format!("{}|{real}", service_name(service))
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let span = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_nanos(hash % span)
}

/// A service as the notify hook gets it: `10.0.0.1:80/tcp`.
fn service_name(service: &ServiceAddr) -> String {
    let protocol = match service.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{service}/{protocol}")
}

/// The next round after `due`, skipping rounds that are already past (after a stall, or a long
/// wait for a permit) while keeping the target's phase.
fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let skipped = behind / interval.as_nanos().max(1) + 1;
    next + interval * u32::try_from(skipped).unwrap_or(u32::MAX)
}

/// Where the checks of the whole process start from: the origin of [`on_grid`]'s grid.
static GRID_ORIGIN: OnceLock<Instant> = OnceLock::new();

/// `due`, rounded up to a grid of a hundredth of `interval` (between 1 and 10 ms): checks due
/// within one step of each other start together, so that their packets go out in one burst
/// and their answers come back in one (one wake-up, one `sendmmsg` for half-open checks, one
/// interrupt for many answers), at the price of starting up to a step late (which the lateness
/// figures count).
fn on_grid(due: Instant, interval: Duration) -> Instant {
    let step = (interval / 100).clamp(Duration::from_millis(1), Duration::from_millis(10));
    let origin = *GRID_ORIGIN.get_or_init(Instant::now);
    let since = due.saturating_duration_since(origin).as_nanos();
    let step = step.as_nanos();
    let rounded = since.div_ceil(step) * step;
    origin + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// One target's task: check at every round, record, report.
async fn watch(
    shared: Arc<Shared>,
    key: Key,
    generation: u64,
    probe: Probe,
    interval: Duration,
    mut due: Instant,
) {
    loop {
        tokio::time::sleep_until(on_grid(due, interval).into()).await;
        let Ok(permit) = shared.semaphore.acquire().await else {
            return;
        };
        let started = Instant::now();
        let late =
            u64::try_from(started.saturating_duration_since(due).as_nanos()).unwrap_or(u64::MAX);
        shared.max_lateness_ns.fetch_max(late, Ordering::Relaxed);
        if u128::from(late) > interval.as_nanos() / 10 {
            shared.late.fetch_add(1, Ordering::Relaxed);
        }
        // Boxed so that an idle task stays small: the check's state lives only while it runs.
        let result = Box::pin(probe.run()).await;
        drop(permit);
        let now = Instant::now();
        if !record(&shared, &key, generation, result, now) {
            return;
        }
        due = next_due(due, interval, now);
    }
}

/// Feeds a result to its target's machine; on a change, logs it, sends the event and runs the
/// notify hook. False when the target is gone or its task was replaced.
fn record(shared: &Shared, key: &Key, generation: u64, result: CheckResult, now: Instant) -> bool {
    shared.checks.fetch_add(1, Ordering::Relaxed);
    if !result.ok {
        shared.failures.fetch_add(1, Ordering::Relaxed);
    }
    let (transition, kind, notify) = {
        let mut entries = shared.entries();
        let Some(entry) = entries.get_mut(key).filter(|e| e.generation == generation) else {
            return false;
        };
        let transition = entry.machine.record(result.ok, result.weight, now);
        if let Some(reason) = &result.reason {
            entry.last_failure = Some(reason.clone());
        }
        entry.last = Some(result.clone());
        (transition, entry.kind, entry.target.notify.clone())
    };
    let Some(transition) = transition else {
        return true;
    };
    let (service, real) = *key;
    log_transition(service, real, kind, transition, &result);
    if let (Transition::Health { from, to }, Some(notify)) = (transition, notify) {
        tokio::spawn(run_notify(
            notify,
            service,
            real,
            from,
            to,
            result.reason.clone(),
        ));
    }
    // The daemon may be gone while shutting down; then nobody needs the event.
    let _ = shared.events.send(HealthEvent {
        service,
        real,
        transition,
        result,
    });
    true
}

fn log_transition(
    service: ServiceAddr,
    real: SocketAddr,
    kind: CheckKind,
    transition: Transition,
    result: &CheckResult,
) {
    let latency = result.latency;
    match transition {
        Transition::Health {
            from,
            to: Health::Down,
        } => tracing::warn!(
            %service, %real, check = %kind, %from, ?latency,
            reason = result.reason.as_deref().unwrap_or(""),
            "real server is down"
        ),
        Transition::Health { from, to } => tracing::info!(
            %service, %real, check = %kind, %from, ?latency,
            "real server is {to}"
        ),
        Transition::Weight { from, to } => tracing::info!(
            %service, %real, check = %kind, ?from, ?to,
            "real server's weight set by its check"
        ),
    }
}

/// Runs a notify hook: `COMMAND SERVICE REAL STATE`, with the same in the environment.
async fn run_notify(
    Notify { command, shell }: Notify,
    service: ServiceAddr,
    real: SocketAddr,
    from: Health,
    to: Health,
    reason: Option<String>,
) {
    let service = service_name(&service);
    let args = [service.clone(), real.to_string(), to.to_string()];
    let env = [
        ("XLB_SERVICE", service.clone()),
        ("XLB_REAL", real.to_string()),
        ("XLB_STATE", to.to_string()),
        ("XLB_PREVIOUS_STATE", from.to_string()),
        ("XLB_REASON", reason.unwrap_or_default()),
    ];
    let outcome = if shell {
        // "$@" appends the arguments to the command as written, as keepalived's notify scripts
        // get them.
        let script = format!("{command} \"$@\"");
        run_shell("xlb-notify", &script, &args, &env, NOTIFY_TIMEOUT).await
    } else {
        run_program(&command, &args, &env, NOTIFY_TIMEOUT).await
    };
    match outcome {
        Ok(Outcome::Exited { code: 0, .. }) => {}
        Ok(outcome) => tracing::warn!(%service, %real, ?outcome, "notify hook failed"),
        Err(error) => tracing::warn!(%service, %real, %error, "cannot run the notify hook"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::{net::TcpListener, task::JoinHandle};

    use super::*;
    use crate::state::{RealServer, Scheduler};

    fn service() -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: [10, 0, 0, 1].into(),
            port: 80,
        }
    }

    fn fast_tcp() -> CheckSpec {
        let options = CheckOptions {
            kind: Some(CheckKind::Tcp),
            // Generous for loopback, so that a loaded machine does not fail a live target.
            interval: Some(Duration::from_millis(300)),
            timeout: Some(Duration::from_millis(250)),
            rise: Some(2),
            fall: Some(2),
            ..CheckOptions::default()
        };
        options.build().expect("valid").expect("a check")
    }

    fn target(real: SocketAddr) -> Target {
        Target {
            service: service(),
            real,
            forwarding: Forwarding::DirectRoute,
            spec: fast_tcp(),
            notify: None,
        }
    }

    /// A listener on `addr` (port 0 for any) that accepts and drops connections until aborted.
    async fn serve(addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(addr).await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        (addr, task)
    }

    async fn next_event(events: &mut mpsc::UnboundedReceiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the engine is alive")
    }

    fn health(from: Health, to: Health) -> Transition {
        Transition::Health { from, to }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_whose_listener_goes_away_goes_down_and_comes_back() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let (a, _a_task) = serve(any).await;
        let (b, b_task) = serve(any).await;
        let (c, _c_task) = serve(any).await;
        let (engine, mut events) = Engine::new(Handle::current(), 4);
        engine
            .update_targets(vec![target(a), target(b), target(c)])
            .expect("valid targets");

        let mut up = Vec::new();
        for _ in 0..3 {
            let event = next_event(&mut events).await;
            assert_eq!(event.transition, health(Health::Unknown, Health::Up));
            assert!(event.result.ok);
            up.push(event.real);
        }
        up.sort();
        let mut all = vec![a, b, c];
        all.sort();
        assert_eq!(up, all);

        b_task.abort();
        let _ = b_task.await;
        let down = next_event(&mut events).await;
        assert_eq!(
            (down.real, down.transition),
            (b, health(Health::Up, Health::Down))
        );
        assert!(!down.result.ok);
        let reason = down.result.reason.clone().expect("a reason");
        assert!(reason.starts_with("connect: "), "{reason}");

        let status = engine.snapshot();
        let b_status = status.iter().find(|s| s.real == b).expect("b is listed");
        assert_eq!(
            (b_status.kind, b_status.health),
            (CheckKind::Tcp, Health::Down)
        );
        assert_eq!(b_status.last_failure.as_deref(), Some(reason.as_str()));
        assert!(status
            .iter()
            .filter(|s| s.real != b)
            .all(|s| s.health == Health::Up));

        let vs = VirtualService {
            addr: service(),
            scheduler: Scheduler::Maglev,
            sched_flags: Default::default(),
            persistence: None,
            reals: [a, b, c]
                .iter()
                .map(|r| RealServer {
                    addr: r.ip(),
                    port: r.port(),
                    forwarding: Forwarding::DirectRoute,
                    weight: 1,
                    upper_threshold: 0,
                    lower_threshold: 0,
                })
                .collect(),
            health: Default::default(),
            real_checks: Default::default(),
        };
        let effective = engine.effective_service(&vs, &ServiceHealth::default(), Instant::now());
        assert_eq!(effective.reals.len(), 2);
        assert!(effective.reals.iter().all(|r| r.port != b.port()));

        let (_, _b_again) = serve(b).await;
        let back = next_event(&mut events).await;
        assert_eq!(
            (back.real, back.transition),
            (b, health(Health::Down, Health::Up))
        );
        assert!(
            events.try_recv().is_err(),
            "the other targets never changed, and each change is sent once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root (a raw socket)"]
    async fn half_open_targets_share_one_batch_and_each_gets_its_own_verdict() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let (a, _a_task) = serve(any).await;
        let (b, b_task) = serve(any).await;
        let half_open = CheckSpec {
            check: crate::state::health::Check::TcpHalfOpen,
            ..fast_tcp()
        };
        // 40 targets, each a real server of its own service, on two listeners.
        let targets: Vec<Target> = (0..40_u16)
            .map(|i| Target {
                service: ServiceAddr {
                    port: 1000 + i,
                    ..service()
                },
                spec: half_open.clone(),
                ..target(if i % 2 == 0 { a } else { b })
            })
            .collect();
        let (engine, mut events) = Engine::new(Handle::current(), 8);
        engine.update_targets(targets).expect("valid targets");
        let mut up = 0;
        while up < 40 {
            let event = next_event(&mut events).await;
            assert_eq!(event.transition, health(Health::Unknown, Health::Up));
            up += 1;
        }
        b_task.abort();
        let _ = b_task.await;
        for _ in 0..20 {
            let event = next_event(&mut events).await;
            assert_eq!(
                (event.real, event.transition),
                (b, health(Health::Up, Health::Down))
            );
            assert_eq!(
                event.result.reason.as_deref(),
                Some("connect: refused (reset)")
            );
        }
        // Gone targets stop: only a's remain, and they stay up.
        let stays: Vec<Target> = engine
            .snapshot()
            .iter()
            .filter(|s| s.real == a)
            .map(|s| Target {
                service: s.service,
                spec: half_open.clone(),
                ..target(a)
            })
            .collect();
        engine.update_targets(stays).expect("valid targets");
        let before = engine.stats();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let after = engine.stats();
        let checks = after.checks - before.checks;
        // 20 targets every 300 ms for 700 ms: 2 or 3 rounds each.
        assert!((40..=60).contains(&checks), "{checks} checks");
        assert_eq!(after.failures, before.failures);
        assert!(events.try_recv().is_err(), "no change after the removal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replacing_the_targets_keeps_the_state_of_those_that_stay() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let (a, _a_task) = serve(any).await;
        let (b, _b_task) = serve(any).await;
        let (c, _c_task) = serve(any).await;
        let (engine, mut events) = Engine::new(Handle::current(), 4);
        engine
            .update_targets(vec![target(a), target(b)])
            .expect("valid targets");
        for _ in 0..2 {
            next_event(&mut events).await;
        }

        let slower = Target {
            spec: CheckSpec {
                timing: crate::state::health::Timing {
                    interval: Duration::from_millis(400),
                    ..fast_tcp().timing
                },
                ..fast_tcp()
            },
            ..target(a)
        };
        engine
            .update_targets(vec![slower, target(c)])
            .expect("valid targets");
        let listed: Vec<(SocketAddr, Health)> = engine
            .snapshot()
            .iter()
            .map(|s| (s.real, s.health))
            .collect();
        let mut expected = vec![(a, Health::Up), (c, Health::Unknown)];
        expected.sort_by_key(|(addr, _)| *addr);
        assert_eq!(
            listed, expected,
            "a stays up with its new interval; b is gone"
        );

        let event = next_event(&mut events).await;
        assert_eq!(
            (event.real, event.transition),
            (c, health(Health::Unknown, Health::Up))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_target_changes_nothing() {
        let (engine, _events) = Engine::new(Handle::current(), 4);
        let real: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let mut bad = target(real);
        bad.spec.timing.rise = 0;
        let err = engine.update_targets(vec![bad]).expect_err("rise 0");
        assert_eq!(err.real, real);
        assert!(engine.snapshot().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_notify_hook_gets_the_service_the_server_and_the_new_state() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let (a, _a_task) = serve(any).await;
        let log = std::env::temp_dir().join(format!("xlb-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let (engine, mut events) = Engine::new(Handle::current(), 4);
        engine
            .update_targets(vec![Target {
                notify: Some(Notify {
                    command: format!(
                        "exec >>{}; echo \"$XLB_PREVIOUS_STATE\"; echo",
                        log.display()
                    ),
                    shell: true,
                }),
                ..target(a)
            }])
            .expect("valid target");
        next_event(&mut events).await;
        let expected = format!("unknown\n10.0.0.1:80/tcp {a} up\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let written = std::fs::read_to_string(&log).unwrap_or_default();
            if written == expected || Instant::now() > deadline {
                let _ = std::fs::remove_file(&log);
                assert_eq!(written, expected);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Collects what a tracing subscriber writes.
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn checks_start_on_a_grid_of_a_hundredth_of_their_interval() {
        let origin = *GRID_ORIGIN.get_or_init(Instant::now);
        let ms = Duration::from_millis;
        for (interval, step) in [
            (Duration::from_secs(1), ms(10)),
            (Duration::from_secs(60), ms(10)),
            (ms(500), ms(5)),
            (ms(50), ms(1)),
        ] {
            for offset_us in [0_u64, 1, 999, 4_999, 5_000, 12_345, 1_000_001] {
                let due = origin + Duration::from_micros(offset_us);
                let start = on_grid(due, interval);
                assert!(
                    start >= due && start - due < step,
                    "{offset_us} µs at {interval:?}"
                );
                let since = start.duration_since(origin).as_nanos();
                assert_eq!(since % step.as_nanos(), 0, "{offset_us} µs at {interval:?}");
            }
        }
        // Two checks due within one step start together.
        let a = origin + ms(1001);
        assert_eq!(
            on_grid(a, Duration::from_secs(1)),
            on_grid(a + ms(8), Duration::from_secs(1))
        );
    }

    #[test]
    fn a_change_is_logged_once_and_not_on_every_check() {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // tracing caches each callsite's interest once, process-wide: with a single registered
        // dispatcher it asks the registering thread's own, so a sibling test's thread without a
        // subscriber could pin "real server is up" to never (tokio-rs/tracing#3611). A second
        // live dispatcher makes it ask every registered one, this test's capture included.
        let _second = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(std::io::sink)
                .finish(),
        );
        // One thread, so that the subscriber sees what the engine's tasks log.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let checks = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let (a, _a_task) = serve("127.0.0.1:0".parse().expect("address")).await;
                let (engine, mut events) = Engine::new(Handle::current(), 4);
                engine
                    .update_targets(vec![target(a)])
                    .expect("valid target");
                next_event(&mut events).await;
                tokio::time::sleep(Duration::from_millis(1000)).await;
                engine.stats().checks
            })
        });
        assert!(checks >= 3, "only {checks} checks");
        let written =
            String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned();
        assert_eq!(written.matches("real server is up").count(), 1, "{written}");
        assert_eq!(written.lines().count(), 1, "{written}");
    }

    #[test]
    fn first_checks_are_spread_over_the_interval_the_same_way_every_time() {
        let interval = Duration::from_secs(1);
        let key = |i: u16| (service(), SocketAddr::from(([10, 0, 1, 1], i)));
        assert_eq!(
            first_offset(&key(1), interval),
            first_offset(&key(1), interval)
        );
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let offset = first_offset(&key(i), interval);
            assert!(offset < interval);
            buckets[(offset.as_millis() / 100) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..=1200).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn a_late_round_skips_the_missed_ones_and_keeps_the_phase() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(next_due(t0, second, t0), t0 + second);
        let after_stall = t0 + Duration::from_millis(3500);
        assert_eq!(next_due(t0, second, after_stall), t0 + 4 * second);
    }

    #[test]
    fn a_services_targets_take_each_real_servers_options_over_the_default() {
        let reals = ["10.0.0.2", "10.0.0.3", "10.0.0.4"].map(|a| RealServer {
            addr: a.parse().expect("address"),
            port: 80,
            forwarding: Forwarding::DirectRoute,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        });
        let vs = VirtualService {
            addr: service(),
            scheduler: Scheduler::Maglev,
            sched_flags: Default::default(),
            persistence: None,
            reals: reals.to_vec(),
            health: Default::default(),
            real_checks: Default::default(),
        };
        let health = ServiceHealth {
            check: CheckOptions {
                kind: Some(CheckKind::Http),
                ..CheckOptions::default()
            },
            notify: Some("logger".to_owned()),
            ..ServiceHealth::default()
        };
        let own = CheckOptions {
            port: Some(8080),
            ..CheckOptions::default()
        };
        let unchecked = CheckOptions {
            kind: Some(CheckKind::None),
            ..CheckOptions::default()
        };
        let options = BTreeMap::from([
            ("10.0.0.3:80".parse().expect("address"), own),
            ("10.0.0.4:80".parse().expect("address"), unchecked),
        ]);
        let targets = Target::for_service(&vs, &health, &options).expect("valid");
        let checked: Vec<String> = targets
            .iter()
            .map(|t| t.spec.target(t.real).to_string())
            .collect();
        assert_eq!(checked, ["10.0.0.2:80", "10.0.0.3:8080"]);
        assert!(targets
            .iter()
            .all(|t| t.spec.check.kind() == CheckKind::Http));
        assert!(targets
            .iter()
            .all(|t| t.notify.as_ref().map(|n| n.command.as_str()) == Some("logger")));

        let broken = CheckOptions {
            timeout: Some(Duration::from_secs(5)),
            ..CheckOptions::default()
        };
        let options = BTreeMap::from([("10.0.0.2:80".parse().expect("address"), broken)]);
        let err = Target::for_service(&vs, &health, &options).expect_err("timeout > interval");
        assert_eq!(
            err.to_string(),
            "the health check of real server 10.0.0.2:80 of service 10.0.0.1:80: the check timeout (5s) must not be longer than the interval (2s)"
        );
    }
}
