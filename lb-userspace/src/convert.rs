//! Conversions from the desired state to the data path's keys and entries.

use std::net::IpAddr;

use crate::{
    plan::Scheduling,
    state::{Forwarding, Netmask, Protocol, RealServer, Scheduler, ServiceAddr},
};
use lb_common::{
    service::{
        SCHED_DEST_HASH, SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_SEQUENCE, SCHED_SOURCE_HASH,
        SCHED_WEIGHT_ORDER, SERVICE_F_EXPECTED_DELAY, SERVICE_F_FALLBACK, SERVICE_F_HASH_PORT,
        SERVICE_F_IDLE_FIRST, SERVICE_F_OVERFLOW, SERVICE_F_PERSISTENT, SERVICE_F_WEIGHTED,
    },
    PersistSettings, ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP,
};

/// A service's scheduling as the data path holds it: the service entry's scheduler and flags,
/// and its persistence settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulingEntry {
    /// `SCHED_*`.
    pub scheduler: u8,
    /// `SERVICE_F_*`.
    pub flags: u32,
    /// Persistence settings, for a persistent service.
    pub persistence: Option<PersistSettings>,
}

/// The data-path form of the scheduling of `service`.
pub fn scheduling_entry(service: &ServiceAddr, scheduling: &Scheduling) -> SchedulingEntry {
    let scheduler = match scheduling.scheduler {
        Scheduler::RoundRobin | Scheduler::WeightedRoundRobin => SCHED_SEQUENCE,
        Scheduler::LeastConnection
        | Scheduler::WeightedLeastConnection
        | Scheduler::ShortestExpectedDelay
        | Scheduler::NeverQueue => SCHED_LEAST_CONN,
        Scheduler::WeightedFailover | Scheduler::Overflow => SCHED_WEIGHT_ORDER,
        Scheduler::SourceHash => SCHED_SOURCE_HASH,
        Scheduler::DestinationHash => SCHED_DEST_HASH,
        Scheduler::Maglev => SCHED_MAGLEV,
    };
    let mut flags = 0;
    // xlb's mh hashes the port always; sh only with sh-port.
    if scheduling.scheduler == Scheduler::SourceHash && scheduling.flags.port {
        flags |= SERVICE_F_HASH_PORT;
    }
    // sh-fallback: an overloaded server's clients go to the next servers of the table.
    if scheduling.scheduler == Scheduler::SourceHash && scheduling.flags.fallback {
        flags |= SERVICE_F_FALLBACK;
    }
    let persistence = scheduling.persistence.map(|p| match p.netmask {
        Netmask::V4(mask) => PersistSettings::v4(p.timeout_secs, u32::from(mask)),
        Netmask::V6Prefix(prefix) => PersistSettings::v6(p.timeout_secs, prefix),
    });
    if persistence.is_some() {
        flags |= SERVICE_F_PERSISTENT;
    }
    flags |= match scheduling.scheduler {
        Scheduler::WeightedLeastConnection => SERVICE_F_WEIGHTED,
        Scheduler::ShortestExpectedDelay => SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY,
        Scheduler::NeverQueue => {
            SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY | SERVICE_F_IDLE_FIRST
        }
        // A UDP flow is never an active connection: a UDP ovf service is fo, and the data path
        // counts the flows of a service with the flag without looking at their protocol.
        Scheduler::Overflow if service.protocol == Protocol::Tcp => SERVICE_F_OVERFLOW,
        _ => 0,
    };
    SchedulingEntry {
        scheduler,
        flags,
        persistence,
    }
}

/// The data-path key of a service.
pub fn service_key(addr: &ServiceAddr) -> ServiceKey {
    let proto = match addr.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    match addr.addr {
        IpAddr::V4(v4) => ServiceKey::v4(u32::from(v4), addr.port, proto),
        IpAddr::V6(v6) => ServiceKey::v6(v6.octets(), addr.port, proto),
    }
}

/// The data-path entry of a real server.
pub fn real_entry(real: &RealServer) -> lb_common::RealServer {
    let forward = match real.forwarding {
        Forwarding::DirectRoute => lb_common::Forwarding::DirectRoute,
        Forwarding::Tunnel => lb_common::Forwarding::Tunnel,
    };
    let (addr, family) = match real.addr {
        IpAddr::V4(v4) => ([u32::from(v4).to_be(), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => (bytemuck::cast(v6.octets()), FAMILY_V6),
    };
    lb_common::RealServer {
        addr,
        family,
        forward: forward as u8,
        _pad: [0; 2],
        // Set by the data path's add_real, from the service the server is added to.
        service_epoch: 0,
    }
}

/// What makes a real server the same on every balancer: its address and port.
pub fn identity(real: &RealServer) -> Vec<u8> {
    let mut id = match real.addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    id.extend_from_slice(&real.port.to_be_bytes());
    id
}
