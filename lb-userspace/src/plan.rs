//! The difference between two desired states, as the steps that take the data path from one to
//! the other (pure: computed without touching anything, and unit-tested).
//!
//! A change touches only what it concerns: a service whose servers and weights are the same in
//! both states gets no step at all, so its table is not even rewritten. Steps come in an order
//! that never leaves a live table pointing at a missing server: the services that are gone first
//! (with their servers, which no other table holds), so that a change that replaces services
//! never needs more than the balancer holds; then new services and servers, then the rebuilt
//! tables, then the servers that are gone.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use crate::state::{
    DesiredState, Persistence, Protocol, RealServer, SchedFlags, Scheduler, ServiceAddr,
    VirtualService,
};

/// How a service schedules its new flows, as the data path's service entry and persistence
/// settings hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduling {
    /// The scheduler.
    pub scheduler: Scheduler,
    /// Its flags.
    pub flags: SchedFlags,
    /// Persistence, if any.
    pub persistence: Option<Persistence>,
}

impl Scheduling {
    /// The scheduling of `service`.
    pub fn of(service: &VirtualService) -> Self {
        Self {
            scheduler: service.scheduler,
            flags: service.sched_flags,
            persistence: service.persistence,
        }
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add the service (with an empty table).
    AddService {
        /// The service.
        service: ServiceAddr,
        /// Its scheduler, flags and persistence.
        scheduling: Scheduling,
    },
    /// Change the service's scheduler, flags or persistence (a new kind of table is rebuilt by
    /// a [`Step::RebuildTable`] of its own).
    SetScheduling {
        /// The service.
        service: ServiceAddr,
        /// Its scheduler, flags and persistence.
        scheduling: Scheduling,
    },
    /// Add a real server to the service's set (not yet to its table).
    AddReal {
        /// The service.
        service: ServiceAddr,
        /// The server.
        real: RealServer,
    },
    /// Rewrite a real server's data-path entry and thresholds (its forwarding method or its
    /// connection thresholds changed).
    UpdateReal {
        /// The service.
        service: ServiceAddr,
        /// The server as it is now.
        real: RealServer,
    },
    /// Rebuild the service's table (Maglev, or the sequence of `rr`/`wrr`) from its servers and
    /// weights and swap it in.
    RebuildTable {
        /// The service.
        service: ServiceAddr,
    },
    /// Remove a real server (already out of the table).
    RemoveReal {
        /// The service.
        service: ServiceAddr,
        /// Its address.
        addr: IpAddr,
        /// Its port.
        port: u16,
    },
    /// Remove the service.
    RemoveService {
        /// The service.
        service: ServiceAddr,
    },
}

/// A service as ipvsadm lists it: `TCP 10.0.0.1:80`.
struct Named<'a>(&'a ServiceAddr);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.0.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        write!(f, "service {protocol} {}", self.0)
    }
}

/// What the step does, as an operator reads it in an error or a log line.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddService { service, .. } => write!(f, "adding {}", Named(service)),
            Self::SetScheduling {
                service,
                scheduling,
            } => write!(
                f,
                "setting the scheduler of {} to {}{}",
                Named(service),
                scheduling.scheduler.name(),
                if scheduling.persistence.is_some() {
                    " with persistence"
                } else {
                    ""
                }
            ),
            Self::AddReal { service, real } => write!(
                f,
                "adding real server {} to {}",
                SocketAddr::new(real.addr, real.port),
                Named(service)
            ),
            Self::UpdateReal { service, real } => write!(
                f,
                "changing the forwarding or thresholds of real server {} of {}",
                SocketAddr::new(real.addr, real.port),
                Named(service)
            ),
            Self::RebuildTable { service } => {
                write!(f, "writing the scheduling table of {}", Named(service))
            }
            Self::RemoveReal {
                service,
                addr,
                port,
            } => write!(
                f,
                "removing real server {} from {}",
                SocketAddr::new(*addr, *port),
                Named(service)
            ),
            Self::RemoveService { service } => write!(f, "removing {}", Named(service)),
        }
    }
}

type RealKey = (IpAddr, u16);

/// Which table a scheduler reads: its own sequence (`rr`, `wrr`), every server in turn (`lc`,
/// `wlc`, `sed`, `nq`), the servers by weight (`fo`; `ovf`'s is the same table, but the rebuild
/// also marks its servers, so it is a kind of its own) or a consistent-hash table (`sh`, `dh`,
/// `mh`, which share it).
fn table_kind(scheduler: Scheduler) -> Scheduler {
    match scheduler {
        Scheduler::SourceHash | Scheduler::DestinationHash => Scheduler::Maglev,
        Scheduler::WeightedLeastConnection
        | Scheduler::ShortestExpectedDelay
        | Scheduler::NeverQueue => Scheduler::LeastConnection,
        other => other,
    }
}

fn reals(service: &VirtualService) -> BTreeMap<RealKey, &RealServer> {
    service
        .reals
        .iter()
        .map(|r| ((r.addr, r.port), r))
        .collect()
}

/// The steps from `old` to `new`.
pub fn plan(old: &DesiredState, new: &DesiredState) -> Vec<Step> {
    let old_services: BTreeMap<ServiceAddr, &VirtualService> =
        old.services.iter().map(|s| (s.addr, s)).collect();
    let new_services: BTreeMap<ServiceAddr, &VirtualService> =
        new.services.iter().map(|s| (s.addr, s)).collect();
    let mut gone = Vec::new();
    let mut adds = Vec::new();
    let mut rebuilds = Vec::new();
    let mut removals = Vec::new();

    for (addr, svc) in &new_services {
        let scheduling = Scheduling::of(svc);
        let new_reals = reals(svc);
        match old_services.get(addr) {
            None => {
                adds.push(Step::AddService {
                    service: *addr,
                    scheduling,
                });
                adds.extend(new_reals.values().map(|r| Step::AddReal {
                    service: *addr,
                    real: **r,
                }));
                rebuilds.push(Step::RebuildTable { service: *addr });
            }
            Some(old_svc) => {
                let old_scheduling = Scheduling::of(old_svc);
                if old_scheduling != scheduling {
                    adds.push(Step::SetScheduling {
                        service: *addr,
                        scheduling,
                    });
                }
                let old_reals = reals(old_svc);
                // rr, wrr and the hashing schedulers each build their table differently.
                let mut table_changed = table_kind(old_svc.scheduler) != table_kind(svc.scheduler);
                for (key, real) in &new_reals {
                    match old_reals.get(key) {
                        None => {
                            adds.push(Step::AddReal {
                                service: *addr,
                                real: **real,
                            });
                            table_changed |= real.weight > 0;
                        }
                        Some(old_real) => {
                            if old_real.forwarding != real.forwarding
                                || old_real.upper_threshold != real.upper_threshold
                                || old_real.lower_threshold != real.lower_threshold
                            {
                                adds.push(Step::UpdateReal {
                                    service: *addr,
                                    real: **real,
                                });
                            }
                            table_changed |= old_real.weight != real.weight;
                        }
                    }
                }
                for (key, old_real) in &old_reals {
                    if !new_reals.contains_key(key) {
                        removals.push(Step::RemoveReal {
                            service: *addr,
                            addr: key.0,
                            port: key.1,
                        });
                        table_changed |= old_real.weight > 0;
                    }
                }
                if table_changed {
                    rebuilds.push(Step::RebuildTable { service: *addr });
                }
            }
        }
    }
    for (addr, old_svc) in &old_services {
        if !new_services.contains_key(addr) {
            gone.push(Step::RemoveService { service: *addr });
            gone.extend(old_svc.reals.iter().map(|r| Step::RemoveReal {
                service: *addr,
                addr: r.addr,
                port: r.port,
            }));
        }
    }
    gone.extend(adds);
    gone.extend(rebuilds);
    gone.extend(removals);
    gone
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::Forwarding;

    fn svc(last: u8) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            port: 80,
        }
    }

    fn real(last: u8, weight: u32) -> RealServer {
        RealServer {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, last)),
            port: 80,
            forwarding: Forwarding::DirectRoute,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    fn maglev() -> Scheduling {
        Scheduling {
            scheduler: Scheduler::Maglev,
            flags: SchedFlags::default(),
            persistence: None,
        }
    }

    fn state(services: &[(u8, &[RealServer])]) -> DesiredState {
        let mut s = DesiredState::default();
        for (last, reals) in services {
            s.add_service(svc(*last), Scheduler::Maglev, None)
                .expect("add service");
            for r in *reals {
                s.add_real(&svc(*last), *r).expect("add real");
            }
        }
        s
    }

    #[test]
    fn steps_read_as_sentences_with_ipvsadm_addresses() {
        let v6 = ServiceAddr {
            protocol: Protocol::Udp,
            addr: "2001:db8::1".parse().expect("address"),
            port: 53,
        };
        assert_eq!(
            Step::AddReal {
                service: svc(100),
                real: real(11, 1)
            }
            .to_string(),
            "adding real server 10.0.1.11:80 to service TCP 10.0.0.100:80"
        );
        assert_eq!(
            Step::AddService {
                service: v6,
                scheduling: maglev()
            }
            .to_string(),
            "adding service UDP [2001:db8::1]:53"
        );
        assert_eq!(
            Step::RebuildTable { service: svc(1) }.to_string(),
            "writing the scheduling table of service TCP 10.0.0.1:80"
        );
    }

    #[test]
    fn the_same_state_needs_no_step() {
        let s = state(&[(1, &[real(1, 1), real(2, 2)])]);
        assert!(plan(&s, &s).is_empty());
    }

    #[test]
    fn a_weight_change_rebuilds_only_that_services_table() {
        let old = state(&[(1, &[real(1, 1), real(2, 1)]), (2, &[real(3, 1)])]);
        let new = state(&[(1, &[real(1, 1), real(2, 0)]), (2, &[real(3, 1)])]);
        assert_eq!(
            plan(&old, &new),
            vec![Step::RebuildTable { service: svc(1) }]
        );
    }

    #[test]
    fn a_new_service_is_added_with_its_servers_before_its_table() {
        let old = state(&[]);
        let new = state(&[(1, &[real(1, 1)])]);
        assert_eq!(
            plan(&old, &new),
            vec![
                Step::AddService {
                    service: svc(1),
                    scheduling: maglev()
                },
                Step::AddReal {
                    service: svc(1),
                    real: real(1, 1)
                },
                Step::RebuildTable { service: svc(1) },
            ]
        );
    }

    #[test]
    fn a_removed_server_leaves_the_table_before_the_data_path() {
        let old = state(&[(1, &[real(1, 1), real(2, 1)])]);
        let new = state(&[(1, &[real(1, 1)])]);
        assert_eq!(
            plan(&old, &new),
            vec![
                Step::RebuildTable { service: svc(1) },
                Step::RemoveReal {
                    service: svc(1),
                    addr: real(2, 1).addr,
                    port: 80
                },
            ]
        );
    }

    #[test]
    fn adding_a_quiescent_server_does_not_rewrite_the_table() {
        let old = state(&[(1, &[real(1, 1)])]);
        let new = state(&[(1, &[real(1, 1), real(2, 0)])]);
        assert_eq!(
            plan(&old, &new),
            vec![Step::AddReal {
                service: svc(1),
                real: real(2, 0)
            }]
        );
    }

    #[test]
    fn a_removed_service_goes_before_its_servers_and_others_are_untouched() {
        let old = state(&[(1, &[real(1, 1)]), (2, &[real(2, 1)])]);
        let new = state(&[(2, &[real(2, 1)])]);
        assert_eq!(
            plan(&old, &new),
            vec![
                Step::RemoveService { service: svc(1) },
                Step::RemoveReal {
                    service: svc(1),
                    addr: real(1, 1).addr,
                    port: 80
                },
            ]
        );
    }

    #[test]
    fn services_that_are_gone_leave_before_new_ones_come_so_a_full_balancer_can_swap_them() {
        let old = state(&[(1, &[real(1, 1)])]);
        let new = state(&[(2, &[real(2, 1)])]);
        let steps = plan(&old, &new);
        assert_eq!(
            steps[..3],
            [
                Step::RemoveService { service: svc(1) },
                Step::RemoveReal {
                    service: svc(1),
                    addr: real(1, 1).addr,
                    port: 80
                },
                Step::AddService {
                    service: svc(2),
                    scheduling: maglev()
                },
            ]
        );
    }

    #[test]
    fn persistence_and_forwarding_changes_update_in_place() {
        let old = state(&[(1, &[real(1, 1)])]);
        let mut new = old.clone();
        new.services[0].persistence = Some(Persistence::default_for(svc(1).addr));
        new.services[0].reals[0].forwarding = Forwarding::Tunnel;
        assert_eq!(
            plan(&old, &new),
            vec![
                Step::SetScheduling {
                    service: svc(1),
                    scheduling: Scheduling {
                        persistence: Some(Persistence::default_for(svc(1).addr)),
                        ..maglev()
                    }
                },
                Step::UpdateReal {
                    service: svc(1),
                    real: RealServer {
                        forwarding: Forwarding::Tunnel,
                        ..real(1, 1)
                    }
                },
            ]
        );
    }

    #[test]
    fn a_threshold_change_updates_the_server_in_place_without_a_new_table() {
        let old = state(&[(1, &[real(1, 1)])]);
        let mut new = old.clone();
        new.services[0].reals[0].upper_threshold = 100;
        new.services[0].reals[0].lower_threshold = 50;
        assert_eq!(
            plan(&old, &new),
            vec![Step::UpdateReal {
                service: svc(1),
                real: new.services[0].reals[0],
            }]
        );
        let mut lower = new.clone();
        lower.services[0].reals[0].lower_threshold = 0;
        assert_eq!(plan(&new, &lower).len(), 1);
    }

    #[test]
    fn a_change_between_hashing_and_round_robin_rebuilds_the_table() {
        let old = state(&[(1, &[real(1, 1)])]);
        let mut new = old.clone();
        new.services[0].scheduler = Scheduler::RoundRobin;
        let rr = Scheduling {
            scheduler: Scheduler::RoundRobin,
            ..maglev()
        };
        assert_eq!(
            plan(&old, &new),
            vec![
                Step::SetScheduling {
                    service: svc(1),
                    scheduling: rr
                },
                Step::RebuildTable { service: svc(1) },
            ]
        );
        // mh to sh: the same consistent table, another hash.
        let mut sh = old.clone();
        sh.services[0].scheduler = Scheduler::SourceHash;
        assert_eq!(plan(&old, &sh).len(), 1);
    }
}
