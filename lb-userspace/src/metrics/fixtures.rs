//! The listing the metrics' tests render: one TCP service with two real servers, one up and one
//! down by its HTTP check.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb_common::GlobalStat;

use crate::{
    health::engine::EngineStats,
    state::{Forwarding, Protocol, Scheduler, ServiceAddr},
    status::{Listing, Rates, RealHealth, RealListing, ServiceListing, Stats},
};

/// A real server 10.0.0.LAST:80 whose numbers grow with LAST.
pub fn real(last: u8, weight: u32, health: Option<RealHealth>) -> RealListing {
    RealListing {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port: 80,
        forwarding: Forwarding::DirectRoute,
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
        active_conns: u32::from(last),
        inactive_conns: 1,
        persistent_conns: 0,
        stats: Stats {
            conns: 10 * u64::from(last),
            in_pkts: 100 * u64::from(last),
            out_pkts: 0,
            in_bytes: 6000 * u64::from(last),
            out_bytes: 0,
        },
        rates: Rates {
            cps: 1,
            in_pps: 2,
            out_pps: 0,
            in_bps: 3,
            out_bps: 0,
        },
        health,
    }
}

/// One TCP service, 10.0.0.1:80, with 10.0.0.2 up and 10.0.0.3 down (status 503).
pub fn listing() -> Listing {
    Listing {
        services: vec![ServiceListing {
            addr: ServiceAddr {
                protocol: Protocol::Tcp,
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                port: 80,
            },
            scheduler: Scheduler::default(),
            sched_flags: Default::default(),
            persistence: None,
            stats: Stats {
                conns: 50,
                in_pkts: 500,
                out_pkts: 0,
                in_bytes: 30000,
                out_bytes: 0,
            },
            rates: Rates::default(),
            reals: vec![
                real(
                    2,
                    3,
                    Some(RealHealth {
                        state: "up".into(),
                        check: "http 10.0.0.2:80".into(),
                        last_ok: Some(true),
                        latency_us: Some(1500),
                        last_failure: None,
                    }),
                ),
                real(
                    3,
                    0,
                    Some(RealHealth {
                        state: "down".into(),
                        check: "http 10.0.0.3:80".into(),
                        last_ok: Some(false),
                        latency_us: Some(250),
                        last_failure: Some("status 503 <\"oops\">".into()),
                    }),
                ),
            ],
            settled: true,
        }],
    }
}

/// Every global counter, 7 packets dropped for want of a real server.
pub fn globals() -> Vec<(GlobalStat, u64)> {
    GlobalStat::ALL
        .iter()
        .map(|&s| (s, if s == GlobalStat::DropNoReal { 7 } else { 0 }))
        .collect()
}

/// The health engine: 40 checks, 4 failed, 1 late.
pub fn stats() -> EngineStats {
    EngineStats {
        checks: 40,
        failures: 4,
        max_lateness: Duration::ZERO,
        late: 1,
    }
}
