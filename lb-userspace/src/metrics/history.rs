//! Each service's traffic over the last minutes: a short ring buffer of the rates between two
//! samples of its counters, which the status page draws as charts. Pure: the sampler feeds it
//! listings and the time they were taken.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use crate::{
    state::ServiceAddr,
    status::{Listing, Stats},
};

/// A service's traffic between two samples, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// New connections per second.
    pub cps: u64,
    /// Packets per second from clients.
    pub pps: u64,
    /// Bytes per second from clients.
    pub bps: u64,
}

/// The last `capacity` [`Traffic`] points of every service, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    capacity: usize,
    /// How often it is fed: with `capacity`, the span its charts cover.
    every: Duration,
    /// Each service's totals at the last sample, and when it was taken (monotonic ns).
    last: BTreeMap<ServiceAddr, (u64, Stats)>,
    points: BTreeMap<ServiceAddr, VecDeque<Traffic>>,
}

impl History {
    /// An empty history that keeps `capacity` points per service, fed every `every`.
    pub fn new(capacity: usize, every: Duration) -> Self {
        History {
            capacity,
            every,
            last: BTreeMap::new(),
            points: BTreeMap::new(),
        }
    }

    /// Adds the traffic since the previous sample of each service listed in `listing` (taken at
    /// `now_ns`). A service's first sample only sets its baseline; a service no longer listed is
    /// forgotten. Counters that went down (`xlbadm -Z`) count as no traffic, not as a spike.
    pub fn record(&mut self, now_ns: u64, listing: &Listing) {
        let listed: BTreeMap<ServiceAddr, Stats> =
            listing.services.iter().map(|s| (s.addr, s.stats)).collect();
        self.last.retain(|addr, _| listed.contains_key(addr));
        self.points.retain(|addr, _| listed.contains_key(addr));
        for (addr, now) in listed {
            if let Some((then_ns, then)) = self.last.get(&addr) {
                let secs = now_ns.saturating_sub(*then_ns) as f64 / 1e9;
                if secs > 0.0 {
                    let per_sec =
                        |old: u64, new: u64| (new.saturating_sub(old) as f64 / secs).round() as u64;
                    let points = self.points.entry(addr).or_default();
                    if points.len() == self.capacity {
                        points.pop_front();
                    }
                    points.push_back(Traffic {
                        cps: per_sec(then.conns, now.conns),
                        pps: per_sec(then.in_pkts, now.in_pkts),
                        bps: per_sec(then.in_bytes, now.in_bytes),
                    });
                }
            }
            self.last.insert(addr, (now_ns, now));
        }
    }

    /// A service's points, oldest first (none before its second sample).
    pub fn of(&self, service: &ServiceAddr) -> Vec<Traffic> {
        self.points
            .get(service)
            .map(|points| points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many points a service keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a full ring of points spans.
    pub fn span(&self) -> Duration {
        self.every * self.capacity as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fixtures::listing;

    #[test]
    fn a_full_ring_spans_capacity_times_the_period() {
        assert_eq!(
            History::new(300, Duration::from_secs(1)).span(),
            Duration::from_secs(300)
        );
    }

    const SECOND: u64 = 1_000_000_000;

    fn with_totals(conns: u64, in_pkts: u64, in_bytes: u64) -> Listing {
        let mut l = listing();
        l.services[0].stats = Stats {
            conns,
            in_pkts,
            out_pkts: 0,
            in_bytes,
            out_bytes: 0,
        };
        l
    }

    fn points(history: &History) -> Vec<Traffic> {
        history.of(&listing().services[0].addr)
    }

    #[test]
    fn the_first_sample_is_a_baseline_and_the_next_ones_are_rates() {
        let mut history = History::new(4, Duration::from_secs(1));
        history.record(10 * SECOND, &with_totals(100, 1000, 60_000));
        assert!(points(&history).is_empty());
        history.record(12 * SECOND, &with_totals(110, 1400, 84_000));
        assert_eq!(
            points(&history),
            [Traffic {
                cps: 5,
                pps: 200,
                bps: 12_000
            }]
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_points() {
        let mut history = History::new(3, Duration::from_secs(1));
        for (i, total) in [0, 1, 3, 6, 10, 15].into_iter().enumerate() {
            history.record(i as u64 * SECOND, &with_totals(total, 0, 0));
        }
        let cps: Vec<u64> = points(&history).iter().map(|p| p.cps).collect();
        assert_eq!(cps, [3, 4, 5], "oldest first, at most 3");
    }

    #[test]
    fn zeroed_counters_are_no_traffic_rather_than_a_spike() {
        let mut history = History::new(3, Duration::from_secs(1));
        history.record(0, &with_totals(1000, 1000, 1000));
        history.record(SECOND, &with_totals(0, 0, 0));
        assert_eq!(points(&history), [Traffic::default()]);
    }

    #[test]
    fn a_removed_service_is_forgotten_and_starts_anew_when_added_back() {
        let mut history = History::new(3, Duration::from_secs(1));
        history.record(0, &with_totals(0, 0, 0));
        history.record(SECOND, &with_totals(5, 0, 0));
        history.record(2 * SECOND, &Listing::default());
        assert!(points(&history).is_empty());
        history.record(3 * SECOND, &with_totals(50, 0, 0));
        assert!(points(&history).is_empty(), "a new baseline, not 45/s");
    }

    #[test]
    fn two_samples_at_the_same_instant_add_no_point() {
        let mut history = History::new(3, Duration::from_secs(1));
        history.record(SECOND, &with_totals(0, 0, 0));
        history.record(SECOND, &with_totals(9, 0, 0));
        assert!(points(&history).is_empty());
    }
}
