//! The half-open checks of an engine, run by one task rather than a task per target: at each
//! step of the grid ([`on_grid`]) it sends the SYNs of every check due with one `sendmmsg`,
//! matches the answers that the prober's receiving thread leaves in one [`BatchSink`] to the
//! checks by a token, and fails the checks whose timeout passed, with one timer for all (the
//! next step or the next deadline, whichever is first). No timer, task, channel or allocation
//! per check.
//!
//! What a check does and says is [`Probe::run`]'s: the same SYN, the same verdicts and reasons
//! (from [`Probe::half_open_result`]), the same timeout, the same concurrency limit (a permit
//! of the engine's semaphore per SYN waiting for its answer), the same schedule ([`next_due`],
//! [`on_grid`]) and the same lateness accounting as the engine's other checks ([`watch`]).
//!
//! [`watch`]: super::watch

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{next_due, on_grid, record, Key, Shared};
use crate::health::{
    checker::Probe,
    half_open::{self, BatchSink, Prober},
};

/// A half-open target in the batch: what [`super::watch`] holds for a target of another kind.
pub(in crate::health) struct Slot {
    pub key: Key,
    pub generation: u64,
    /// Set when its target is gone or replaced.
    pub stopped: Arc<AtomicBool>,
    pub probe: Probe,
    pub prober: &'static Prober,
    pub interval: Duration,
    /// When its next check is due (before rounding up to the grid).
    pub due: Instant,
}

/// A slot whose SYN is out.
struct Flight {
    slot: Slot,
    started: Instant,
    syn: half_open::Key,
}

/// Things to do at instants: the slots by the grid step they start at.
#[derive(Debug)]
pub(super) struct Schedule<T> {
    steps: BTreeMap<Instant, Vec<T>>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            steps: BTreeMap::new(),
        }
    }
}

impl<T> Schedule<T> {
    /// `item` to be done at `at`.
    pub(super) fn insert(&mut self, at: Instant, item: T) {
        self.steps.entry(at).or_default().push(item);
    }

    /// The first instant something is to be done.
    pub(super) fn next(&self) -> Option<Instant> {
        self.steps.keys().next().copied()
    }

    /// Moves what is due at `now` or before to `into`, earliest first, and in the order it was
    /// inserted within an instant.
    pub(super) fn take_due(&mut self, now: Instant, into: &mut VecDeque<T>) {
        while let Some(entry) = self.steps.first_entry() {
            if *entry.key() > now {
                break;
            }
            into.extend(entry.remove());
        }
    }

    /// How many items wait.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.steps.values().map(Vec::len).sum()
    }
}

/// Things waiting for an answer, each under a token, until its deadline.
#[derive(Debug)]
pub(super) struct Flights<T> {
    next_token: u64,
    by_token: HashMap<u64, (Instant, T)>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            next_token: 0,
            by_token: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<T> Flights<T> {
    /// A token that no flight has had.
    pub(super) fn token(&mut self) -> u64 {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token
    }

    /// `item` waits under `token` until `deadline`.
    pub(super) fn insert(&mut self, token: u64, deadline: Instant, item: T) {
        if let Some((old, _)) = self.by_token.insert(token, (deadline, item)) {
            self.deadlines.remove(&(old, token));
        }
        self.deadlines.insert((deadline, token));
    }

    /// The item waiting under `token`, which no longer waits; none if it is not waiting (it
    /// timed out, or the answer is a duplicate).
    pub(super) fn answer(&mut self, token: u64) -> Option<T> {
        let (deadline, item) = self.by_token.remove(&token)?;
        self.deadlines.remove(&(deadline, token));
        Some(item)
    }

    /// Takes the items whose deadline is `now` or before, earliest first.
    pub(super) fn expired(&mut self, now: Instant, into: &mut Vec<T>) {
        while let Some(&(deadline, token)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some((_, item)) = self.by_token.remove(&token) {
                into.push(item);
            }
        }
    }

    /// The first deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// How many wait.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Takes them all.
    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.deadlines.clear();
        self.by_token.drain().map(|(_, (_, item))| item)
    }
}

/// The SYNs of a step that go out through one prober: (token, source, target) each, and
/// their slots in the same order.
struct Sending {
    prober: &'static Prober,
    probes: Vec<(u64, IpAddr, SocketAddr)>,
    slots: Vec<Slot>,
}

/// The batch's state, owned by its task.
struct Batch {
    shared: Arc<Shared>,
    sink: Arc<BatchSink>,
    schedule: Schedule<Slot>,
    /// Due and current, waiting for a permit.
    ready: VecDeque<Slot>,
    flights: Flights<Flight>,
    /// Permits taken from the semaphore while `ready` waited, not yet given to a check.
    held: usize,
}

impl Drop for Batch {
    /// Forgets the SYNs still out and gives the permits back (the engine is gone, or its
    /// runtime).
    fn drop(&mut self) {
        let mut permits = self.held;
        for flight in self.flights.drain() {
            flight.slot.prober.forget([flight.syn]);
            permits += 1;
        }
        self.shared.semaphore.add_permits(permits);
    }
}

/// The batch's task: runs the slots it is sent until the sender is dropped.
pub(super) async fn run(shared: Arc<Shared>, mut slots: mpsc::UnboundedReceiver<Slot>) {
    let mut batch = Batch {
        shared,
        sink: Arc::new(BatchSink::default()),
        schedule: Schedule::default(),
        ready: VecDeque::new(),
        flights: Flights::default(),
        held: 0,
    };
    // Far enough never to fire: the timer is reset before every wait.
    let idle = || Instant::now() + Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep_until(idle().into());
    tokio::pin!(sleep);
    let mut answers = Vec::new();
    let mut expired = Vec::new();
    let (shared, sink) = (batch.shared.clone(), batch.sink.clone());
    loop {
        let wake = [batch.schedule.next(), batch.flights.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(idle);
        if sleep.deadline() != wake.into() {
            sleep.as_mut().reset(wake.into());
        }
        tokio::select! {
            slot = slots.recv() => {
                let Some(slot) = slot else { return };
                batch.add(slot);
                while let Ok(slot) = slots.try_recv() {
                    batch.add(slot);
                }
            }
            () = sink.ready() => {}
            () = &mut sleep => {}
            permit = shared.semaphore.acquire(), if !batch.ready.is_empty() => {
                if let Ok(permit) = permit {
                    permit.forget();
                    batch.held += 1;
                }
            }
        }
        let now = Instant::now();
        sink.take(&mut answers);
        for (token, answer, at) in answers.drain(..) {
            if let Some(flight) = batch.flights.answer(token) {
                let latency = at.saturating_duration_since(flight.started);
                let result = flight
                    .slot
                    .probe
                    .half_open_result(Some(Ok(answer)), latency);
                batch.finish(flight.slot, result, now);
            }
        }
        batch.flights.expired(now, &mut expired);
        for flight in expired.drain(..) {
            flight.slot.prober.forget([flight.syn]);
            let latency = now.saturating_duration_since(flight.started);
            let result = flight.slot.probe.half_open_result(None, latency);
            batch.finish(flight.slot, result, now);
        }
        batch.schedule.take_due(now, &mut batch.ready);
        if !batch.ready.is_empty() {
            batch.start();
        }
    }
}

impl Batch {
    fn add(&mut self, slot: Slot) {
        self.schedule.insert(on_grid(slot.due, slot.interval), slot);
    }

    /// The check of `slot` ended with `result` at `now`: its permit back, the result recorded,
    /// and its next check scheduled unless its target is gone or was replaced.
    fn finish(&mut self, mut slot: Slot, result: super::CheckResult, now: Instant) {
        self.shared.semaphore.add_permits(1);
        if record(&self.shared, &slot.key, slot.generation, result, now) {
            slot.due = next_due(slot.due, slot.interval, now);
            self.add(slot);
        }
    }

    /// Sends the SYNs of the ready slots that are still current, as many as permits allow.
    fn start(&mut self) {
        // Slots of gone or replaced targets end here, before their SYN.
        self.ready
            .retain(|slot| !slot.stopped.load(Ordering::Relaxed));
        let started = Instant::now();
        // Per prober: the probes, and their slots with tokens.
        let mut sends: Vec<Sending> = Vec::new();
        let mut failed = Vec::new();
        while !self.ready.is_empty() {
            if self.held > 0 {
                self.held -= 1;
            } else if let Ok(permit) = self.shared.semaphore.try_acquire() {
                permit.forget();
            } else {
                break;
            }
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            let late = u64::try_from(started.saturating_duration_since(slot.due).as_nanos())
                .unwrap_or(u64::MAX);
            self.shared
                .max_lateness_ns
                .fetch_max(late, Ordering::Relaxed);
            if u128::from(late) > slot.interval.as_nanos() / 10 {
                self.shared.late.fetch_add(1, Ordering::Relaxed);
            }
            let source = match slot.probe.half_open_source() {
                Ok(source) => source,
                Err(reason) => {
                    failed.push((slot, reason));
                    continue;
                }
            };
            let token = self.flights.token();
            let probe = (token, source, slot.probe.target());
            match sends
                .iter_mut()
                .find(|s| std::ptr::eq(s.prober, slot.prober))
            {
                Some(sending) => {
                    sending.probes.push(probe);
                    sending.slots.push(slot);
                }
                None => sends.push(Sending {
                    prober: slot.prober,
                    probes: vec![probe],
                    slots: vec![slot],
                }),
            }
        }
        let mut keys = Vec::new();
        for Sending {
            prober,
            probes,
            slots,
        } in sends
        {
            keys.clear();
            let mut errors = prober
                .send_batch(&self.sink, &probes, &mut keys)
                .into_iter()
                .peekable();
            for (index, ((slot, &(token, _, _)), &syn)) in
                slots.into_iter().zip(&probes).zip(&keys).enumerate()
            {
                if errors.peek().is_some_and(|(i, _)| *i == index) {
                    let error = errors.next().map(|(_, e)| e);
                    let now = Instant::now();
                    let latency = now.saturating_duration_since(started);
                    let result = slot.probe.half_open_result(error.map(Err), latency);
                    self.finish(slot, result, now);
                    continue;
                }
                let deadline = started + slot.probe.timeout();
                self.flights
                    .insert(token, deadline, Flight { slot, started, syn });
            }
        }
        for (slot, reason) in failed {
            let now = Instant::now();
            let result = slot
                .probe
                .failed(reason, now.saturating_duration_since(started));
            self.finish(slot, result, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_gives_what_is_due_earliest_first_and_keeps_the_rest() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut schedule = Schedule::default();
        assert_eq!(schedule.next(), None);
        schedule.insert(t0 + ms(20), "c");
        schedule.insert(t0 + ms(10), "a");
        schedule.insert(t0 + ms(10), "b");
        schedule.insert(t0 + ms(30), "d");
        assert_eq!(schedule.next(), Some(t0 + ms(10)));
        let mut due = VecDeque::new();
        schedule.take_due(t0 + ms(5), &mut due);
        assert!(due.is_empty());
        schedule.take_due(t0 + ms(20), &mut due);
        assert_eq!(due, ["a", "b", "c"], "by step, then as inserted");
        assert_eq!((schedule.len(), schedule.next()), (1, Some(t0 + ms(30))));
        // A step of its own for what comes back at the same instant as another.
        schedule.insert(t0 + ms(30), "e");
        due.clear();
        schedule.take_due(t0 + ms(30), &mut due);
        assert_eq!(due, ["d", "e"]);
        assert_eq!(schedule.next(), None);
    }

    #[test]
    fn a_flight_ends_once_by_its_answer_or_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut flights = Flights::default();
        let (a, b, c) = (flights.token(), flights.token(), flights.token());
        assert!(a != b && b != c && a != c, "tokens are distinct");
        flights.insert(a, t0 + ms(500), "a");
        flights.insert(b, t0 + ms(300), "b");
        flights.insert(c, t0 + ms(500), "c");
        assert_eq!(flights.next_deadline(), Some(t0 + ms(300)));
        assert_eq!(flights.answer(a), Some("a"));
        assert_eq!(flights.answer(a), None, "a second answer matches nothing");
        let mut expired = Vec::new();
        flights.expired(t0 + ms(299), &mut expired);
        assert!(expired.is_empty());
        flights.expired(t0 + ms(300), &mut expired);
        assert_eq!(expired, ["b"]);
        assert_eq!(
            flights.answer(b),
            None,
            "an answer after the timeout matches nothing"
        );
        assert_eq!(flights.next_deadline(), Some(t0 + ms(500)));
        expired.clear();
        flights.expired(t0 + ms(10_000), &mut expired);
        assert_eq!(expired, ["c"], "the answered one does not expire");
        assert_eq!((flights.len(), flights.next_deadline()), (0, None));
    }

    #[test]
    fn unanswered_flights_are_all_taken_back() {
        let t0 = Instant::now();
        let mut flights = Flights::default();
        for i in 0..100_u32 {
            let token = flights.token();
            flights.insert(token, t0 + Duration::from_millis(u64::from(i % 7)), i);
        }
        let mut all: Vec<u32> = flights.drain().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!((flights.len(), flights.next_deadline()), (0, None));
    }
}
