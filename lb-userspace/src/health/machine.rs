//! What check results mean (pure: no I/O, time passed in): the per-target state machine that
//! turns results into up and down with rise and fall, and the per-service computation of the
//! real servers and weights to build the Maglev table from.
//!
//! Rules:
//! - Before its first result a target is [`Health::Unknown`] and keeps its configured weight,
//!   as a server without checks does, so that a restarted daemon does not empty its tables while
//!   it checks everything again; the first result alone then decides up or down
//!   ([`StartState::First`]). `--check-start up` or `down` starts it there instead, and only
//!   `fall` failures or `rise` successes move it.
//! - An up target goes down after `fall` failed checks in a row, a down one comes up after `rise`
//!   good checks in a row; a result of the other sign resets the count, so a flapping server
//!   whose results alternate never changes state (with rise and fall of 2 or more).
//! - A target that comes back up (from down, not from unknown) ramps its weight linearly from 1
//!   to its full weight over the slow-start time.
//! - An exec check with dynamic weight sets the weight while it is up (keepalived's
//!   `misc_dynamic`); exit 0 gives the configured weight back.

use std::{net::SocketAddr, time::Instant};

use serde::{Deserialize, Serialize};

use crate::state::health::{ServiceHealth, StartState, Timing};
use crate::state::{Forwarding, RealServer, VirtualService};

/// What the checks say about a target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No result yet: it takes traffic at its configured weight.
    Unknown,
    /// It passes its checks.
    Up,
    /// It failed `fall` checks in a row (or its first one): no new flows.
    Down,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A change that the daemon must act on: the target's table weight is different now.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// It went up or down.
    Health {
        /// Before.
        from: Health,
        /// Now.
        to: Health,
    },
    /// It stayed up, but its check set another weight (exec with dynamic weight); `None` is the
    /// configured weight.
    Weight {
        /// Before.
        from: Option<u32>,
        /// Now.
        to: Option<u32>,
    },
}

/// One target's state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetMachine {
    timing: Timing,
    health: Health,
    /// Results in a row that disagree with `health` (failures while up, successes while down).
    streak: u32,
    /// When it last came back from down, for slow start.
    back_since: Option<Instant>,
    /// The weight set by the last good result of a dynamic-weight check.
    dynamic_weight: Option<u32>,
}

impl TargetMachine {
    /// A target that has not been checked yet, starting where `timing.start` says.
    pub fn new(timing: &Timing) -> Self {
        TargetMachine {
            timing: *timing,
            health: match timing.start {
                StartState::First => Health::Unknown,
                StartState::Up => Health::Up,
                StartState::Down => Health::Down,
            },
            streak: 0,
            back_since: None,
            dynamic_weight: None,
        }
    }

    /// Takes new rise, fall and slow-start settings without forgetting the state.
    pub fn set_timing(&mut self, timing: &Timing) {
        self.timing = *timing;
    }

    /// The current state.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The weight set by a dynamic-weight check, if any.
    pub fn dynamic_weight(&self) -> Option<u32> {
        self.dynamic_weight
    }

    /// Feeds one result: whether the check passed, the weight it gave (dynamic exec checks
    /// only), and when it finished. Returns the change it makes, if any.
    pub fn record(&mut self, ok: bool, weight: Option<u32>, now: Instant) -> Option<Transition> {
        let from = self.health;
        let old_weight = self.dynamic_weight;
        if ok {
            self.dynamic_weight = weight;
        }
        let to = match (from, ok) {
            (Health::Unknown, true) => Some(Health::Up),
            (Health::Unknown, false) => Some(Health::Down),
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                None
            }
            (Health::Up, false) => self.count(self.timing.fall, Health::Down),
            (Health::Down, true) => self.count(self.timing.rise, Health::Up),
        };
        match to {
            Some(to) => {
                self.health = to;
                self.streak = 0;
                self.back_since =
                    (from == Health::Down && !self.timing.slow_start.is_zero()).then_some(now);
                Some(Transition::Health { from, to })
            }
            None if self.health == Health::Up && old_weight != self.dynamic_weight => {
                Some(Transition::Weight {
                    from: old_weight,
                    to: self.dynamic_weight,
                })
            }
            None => None,
        }
    }

    fn count(&mut self, needed: u32, to: Health) -> Option<Health> {
        self.streak += 1;
        (self.streak >= needed).then_some(to)
    }

    /// The weight to build the table with at `now`, given the configured one; `None` when it is
    /// down and should get no new flows.
    pub fn weight(&self, configured: u32, now: Instant) -> Option<u32> {
        if self.health == Health::Down {
            return None;
        }
        let full = self.dynamic_weight.unwrap_or(configured);
        let Some(since) = self.back_since else {
            return Some(full);
        };
        let ramp = self.timing.slow_start.as_nanos();
        let elapsed = now.saturating_duration_since(since).as_nanos();
        if full == 0 || elapsed >= ramp {
            return Some(full);
        }
        // Linear, rounded up, and at least 1 so that a returning server gets some flows at once.
        let ramped = (u128::from(full) * elapsed).div_ceil(ramp);
        Some(u32::try_from(ramped).unwrap_or(full).clamp(1, full))
    }

    /// When its slow start ends, if it is ramping at `now`: until then its weight changes with
    /// time, and the table should be rebuilt every so often.
    pub fn ramp_ends(&self, now: Instant) -> Option<Instant> {
        let since = self.back_since.filter(|_| self.health == Health::Up)?;
        let end = since + self.timing.slow_start;
        (now < end).then_some(end)
    }
}

/// What a service's table should be built from at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveService {
    /// The real servers with the weights to build the table with, sorted by address and port:
    /// live ones at their effective weight, failed ones at weight 0 with inhibit-on-failure
    /// (left out otherwise), and the sorry server at weight 1 while the quorum is lost.
    pub reals: Vec<RealServer>,
    /// The total effective weight of the live real servers.
    pub live_weight: u64,
    /// Whether the live weight is below the quorum.
    pub quorum_lost: bool,
    /// Whether the sorry server is in `reals` (the quorum is lost and there is one).
    pub sorry_in_use: bool,
    /// When the last slow start in progress ends; until then, build again every second or so.
    pub ramp_ends: Option<Instant>,
}

/// The real servers and weights of `service` at `now`, given its health settings and each real
/// server's state machine (`None` for a server that is not checked, which always counts as live).
///
/// When the live weight is below the quorum and there is a sorry server, the sorry server takes
/// every new flow: the real servers leave the table (or stay at weight 0 with inhibit-on-failure).
/// Without a sorry server a lost quorum changes nothing but the report.
pub fn effective_service<'m>(
    service: &VirtualService,
    health: &ServiceHealth,
    machine_of: impl Fn(&RealServer) -> Option<&'m TargetMachine>,
    now: Instant,
) -> EffectiveService {
    let mut reals = Vec::with_capacity(service.reals.len() + 1);
    let mut live_weight = 0u64;
    let mut ramp_ends: Option<Instant> = None;
    for real in &service.reals {
        let machine = machine_of(real);
        let weight = match machine {
            Some(m) => m.weight(real.weight, now),
            None => Some(real.weight),
        };
        match weight {
            Some(weight) => {
                live_weight += u64::from(weight);
                reals.push(RealServer { weight, ..*real });
                if let Some(end) = machine.and_then(|m| m.ramp_ends(now)) {
                    ramp_ends = Some(ramp_ends.map_or(end, |e| e.max(end)));
                }
            }
            None if health.inhibit_on_failure => reals.push(RealServer { weight: 0, ..*real }),
            None => {}
        }
    }
    let quorum_lost = live_weight < u64::from(health.quorum);
    let sorry_in_use = quorum_lost && health.sorry_server.is_some();
    if let Some(sorry) = health.sorry_server.filter(|_| sorry_in_use) {
        let sorry = SocketAddr::new(sorry.addr, sorry.port.unwrap_or(service.addr.port));
        let is_sorry = |r: &RealServer| (r.addr, r.port) == (sorry.ip(), sorry.port());
        if health.inhibit_on_failure {
            for r in &mut reals {
                r.weight = 0;
            }
        } else {
            reals.retain(is_sorry);
        }
        match reals.iter_mut().find(|r| is_sorry(r)) {
            // The sorry server is also one of the real servers: it stays, with some weight.
            Some(r) => r.weight = r.weight.max(1),
            None => reals.push(RealServer {
                addr: sorry.ip(),
                port: sorry.port(),
                forwarding: health
                    .sorry_server
                    .map_or(Forwarding::DirectRoute, |s| s.forwarding),
                weight: 1,
                upper_threshold: 0,
                lower_threshold: 0,
            }),
        }
        reals.sort_by_key(|r| (r.addr, r.port));
    }
    EffectiveService {
        reals,
        live_weight,
        quorum_lost,
        sorry_in_use,
        ramp_ends,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::{
        state::health::SorryServer,
        state::{Protocol, Scheduler, ServiceAddr},
    };

    fn timing(rise: u32, fall: u32) -> Timing {
        Timing {
            rise,
            fall,
            ..Timing::default()
        }
    }

    fn up(timing: &Timing, at: Instant) -> TargetMachine {
        let mut m = TargetMachine::new(timing);
        m.record(true, None, at);
        assert_eq!(m.health(), Health::Up);
        m
    }

    fn real(last_octet: u8, weight: u32) -> RealServer {
        RealServer {
            addr: std::net::IpAddr::from([10, 0, 0, last_octet]),
            port: 80,
            forwarding: Forwarding::DirectRoute,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    fn service(reals: Vec<RealServer>) -> VirtualService {
        VirtualService {
            addr: ServiceAddr {
                protocol: Protocol::Tcp,
                addr: [10, 0, 0, 1].into(),
                port: 80,
            },
            scheduler: Scheduler::Maglev,
            sched_flags: Default::default(),
            persistence: None,
            reals,
            health: Default::default(),
            real_checks: Default::default(),
        }
    }

    fn weights(effective: &EffectiveService) -> Vec<(u8, u32)> {
        effective
            .reals
            .iter()
            .map(|r| match r.addr {
                std::net::IpAddr::V4(a) => (a.octets()[3], r.weight),
                std::net::IpAddr::V6(_) => (0, r.weight),
            })
            .collect()
    }

    #[test]
    fn the_first_result_decides_the_starting_state() {
        let t0 = Instant::now();
        let mut good = TargetMachine::new(&timing(3, 3));
        assert_eq!(good.health(), Health::Unknown);
        assert_eq!(good.weight(5, t0), Some(5), "unknown takes traffic");
        assert_eq!(
            good.record(true, None, t0),
            Some(Transition::Health {
                from: Health::Unknown,
                to: Health::Up
            })
        );
        let mut bad = TargetMachine::new(&timing(3, 3));
        assert_eq!(
            bad.record(false, None, t0),
            Some(Transition::Health {
                from: Health::Unknown,
                to: Health::Down
            })
        );
        assert_eq!(bad.weight(5, t0), None);
    }

    #[test]
    fn a_target_configured_to_start_down_needs_rise_successes() {
        let t0 = Instant::now();
        let mut m = TargetMachine::new(&Timing {
            start: StartState::Down,
            ..timing(2, 3)
        });
        assert_eq!(m.health(), Health::Down);
        assert_eq!(m.record(true, None, t0), None);
        assert!(m.record(true, None, t0).is_some());
        assert_eq!(m.health(), Health::Up);
    }

    #[test]
    fn an_up_target_goes_down_after_fall_failures_in_a_row() {
        let t0 = Instant::now();
        let mut m = up(&timing(2, 3), t0);
        assert_eq!(m.record(false, None, t0), None);
        assert_eq!(m.record(false, None, t0), None);
        assert_eq!(
            m.weight(1, t0),
            Some(1),
            "still up before the third failure"
        );
        assert_eq!(
            m.record(false, None, t0),
            Some(Transition::Health {
                from: Health::Up,
                to: Health::Down
            })
        );
        assert_eq!(m.weight(1, t0), None);
        assert_eq!(m.record(false, None, t0), None, "once per transition");
    }

    #[test]
    fn a_down_target_comes_back_after_rise_successes_in_a_row() {
        let t0 = Instant::now();
        let mut m = TargetMachine::new(&timing(2, 3));
        m.record(false, None, t0);
        assert_eq!(m.record(true, None, t0), None);
        assert_eq!(
            m.record(false, None, t0),
            None,
            "a failure resets the count"
        );
        assert_eq!(m.record(true, None, t0), None);
        assert_eq!(
            m.record(true, None, t0),
            Some(Transition::Health {
                from: Health::Down,
                to: Health::Up
            })
        );
        assert_eq!(m.weight(7, t0), Some(7));
    }

    #[test]
    fn flapping_results_never_reach_fall_or_rise() {
        let t0 = Instant::now();
        let mut m = up(&timing(2, 2), t0);
        for i in 0..100 {
            assert_eq!(m.record(i % 2 == 0, None, t0), None, "result {i}");
        }
        assert_eq!(m.health(), Health::Up);
    }

    #[test]
    fn slow_start_ramps_the_weight_up_linearly() {
        let t0 = Instant::now();
        let t = Timing {
            slow_start: Duration::from_secs(10),
            ..timing(1, 1)
        };
        let mut m = up(&t, t0);
        assert_eq!(
            m.weight(100, t0),
            Some(100),
            "no ramp after the first result"
        );
        m.record(false, None, t0);
        m.record(true, None, t0);
        let at = |secs: f64| m.weight(100, t0 + Duration::from_secs_f64(secs));
        assert_eq!(at(0.0), Some(1), "at least 1 at once");
        assert_eq!(at(1.0), Some(10));
        assert_eq!(at(2.5), Some(25));
        assert_eq!(at(5.0), Some(50));
        assert_eq!(at(9.99), Some(100));
        assert_eq!(at(10.0), Some(100));
        assert_eq!(at(60.0), Some(100));
        assert_eq!(m.ramp_ends(t0), Some(t0 + Duration::from_secs(10)));
        assert_eq!(m.ramp_ends(t0 + Duration::from_secs(10)), None);
        assert_eq!(
            m.weight(0, t0 + Duration::from_secs(1)),
            Some(0),
            "quiescent stays 0"
        );
    }

    #[test]
    fn a_dynamic_weight_replaces_the_configured_one_while_up() {
        let t0 = Instant::now();
        let mut m = up(&timing(2, 3), t0);
        assert_eq!(
            m.record(true, Some(5), t0),
            Some(Transition::Weight {
                from: None,
                to: Some(5)
            })
        );
        assert_eq!(m.weight(1, t0), Some(5));
        assert_eq!(m.record(true, Some(5), t0), None);
        assert!(m.record(true, None, t0).is_some(), "exit 0 restores it");
        assert_eq!(m.weight(1, t0), Some(1));
    }

    #[test]
    fn failed_servers_leave_the_table() {
        let t0 = Instant::now();
        let t = timing(1, 1);
        let mut down = TargetMachine::new(&t);
        down.record(false, None, t0);
        let machines = BTreeMap::from([(real(2, 0).addr, up(&t, t0)), (real(3, 0).addr, down)]);
        let svc = service(vec![real(2, 3), real(3, 4), real(4, 5)]);
        let effective = effective_service(
            &svc,
            &ServiceHealth::default(),
            |r| machines.get(&r.addr),
            t0,
        );
        assert_eq!(
            weights(&effective),
            [(2, 3), (4, 5)],
            "unchecked 4 counts as live"
        );
        assert_eq!(effective.live_weight, 8);
        assert!(!effective.quorum_lost);
    }

    #[test]
    fn inhibit_on_failure_gives_weight_zero_instead_of_removal() {
        let t0 = Instant::now();
        let mut down = TargetMachine::new(&timing(1, 1));
        down.record(false, None, t0);
        let svc = service(vec![real(2, 3), real(3, 4)]);
        let health = ServiceHealth {
            inhibit_on_failure: true,
            ..ServiceHealth::default()
        };
        let effective = effective_service(
            &svc,
            &health,
            |r| (r.addr == real(3, 0).addr).then_some(&down),
            t0,
        );
        assert_eq!(weights(&effective), [(2, 3), (3, 0)]);
        assert_eq!(effective.live_weight, 3);
    }

    #[test]
    fn a_lost_quorum_sends_every_new_flow_to_the_sorry_server() {
        let t0 = Instant::now();
        let mut down = TargetMachine::new(&timing(1, 1));
        down.record(false, None, t0);
        let svc = service(vec![real(2, 1), real(3, 1), real(4, 1)]);
        let health = ServiceHealth {
            quorum: 2,
            sorry_server: Some("10.0.0.9".parse::<SorryServer>().expect("sorry")),
            ..ServiceHealth::default()
        };
        let two_down = |r: &RealServer| (r.addr != real(4, 0).addr).then_some(&down);
        let effective = effective_service(&svc, &health, two_down, t0);
        assert!(effective.quorum_lost && effective.sorry_in_use);
        assert_eq!(weights(&effective), [(9, 1)], "sorry server only");
        assert_eq!(effective.reals[0].port, 80, "on the service's port");
        let inhibited = effective_service(
            &svc,
            &ServiceHealth {
                inhibit_on_failure: true,
                ..health.clone()
            },
            two_down,
            t0,
        );
        assert_eq!(
            weights(&inhibited),
            [(2, 0), (3, 0), (4, 0), (9, 1)],
            "with inhibit-on-failure the others stay at weight 0"
        );
    }

    #[test]
    fn a_regained_quorum_sends_flows_back_to_the_real_servers() {
        let t0 = Instant::now();
        let mut m = TargetMachine::new(&timing(2, 1));
        m.record(false, None, t0);
        let svc = service(vec![real(2, 1)]);
        let health = ServiceHealth {
            sorry_server: Some("10.0.0.9".parse::<SorryServer>().expect("sorry")),
            ..ServiceHealth::default()
        };
        let lost = effective_service(&svc, &health, |_| Some(&m), t0);
        assert_eq!(weights(&lost), [(9, 1)]);
        m.record(true, None, t0);
        m.record(true, None, t0);
        let regained = effective_service(&svc, &health, |_| Some(&m), t0);
        assert!(!regained.quorum_lost && !regained.sorry_in_use);
        assert_eq!(weights(&regained), [(2, 1)]);
    }

    #[test]
    fn without_a_sorry_server_a_lost_quorum_keeps_the_live_servers() {
        let t0 = Instant::now();
        let svc = service(vec![real(2, 1)]);
        let health = ServiceHealth {
            quorum: 5,
            ..ServiceHealth::default()
        };
        let effective = effective_service(&svc, &health, |_| None, t0);
        assert!(effective.quorum_lost && !effective.sorry_in_use);
        assert_eq!(weights(&effective), [(2, 1)]);
    }

    #[test]
    fn a_ramping_server_counts_its_current_weight_and_says_when_the_ramp_ends() {
        let t0 = Instant::now();
        let t = Timing {
            slow_start: Duration::from_secs(10),
            ..timing(1, 1)
        };
        let mut m = up(&t, t0);
        m.record(false, None, t0);
        m.record(true, None, t0);
        let svc = service(vec![real(2, 10)]);
        let at = t0 + Duration::from_secs(3);
        let effective = effective_service(&svc, &ServiceHealth::default(), |_| Some(&m), at);
        assert_eq!(weights(&effective), [(2, 3)]);
        assert_eq!(effective.live_weight, 3);
        assert_eq!(effective.ramp_ends, Some(t0 + Duration::from_secs(10)));
    }
}
