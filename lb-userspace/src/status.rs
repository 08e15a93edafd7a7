//! The balancer's status as the daemon reports it: every service and real server with its
//! counters, rates and health ([`Listing`]), and the connection table ([`ConnectionListing`]).
//! One model, several renderings: [`crate::ipvsadm::format`] prints it as ipvsadm's `-L`, and
//! [`crate::metrics`] as Prometheus metrics and the status page. Pure data, sent over the control
//! socket as JSON.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::state::{
    DesiredState, Forwarding, Persistence, Protocol, RealServer, SchedFlags, Scheduler, ServiceAddr,
};

/// What `-L` shows: every service with its servers and their counters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The services, in any order (the formatter sorts them unless told not to).
    pub services: Vec<ServiceListing>,
}

/// One service in a [`Listing`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceListing {
    /// Its address.
    pub addr: ServiceAddr,
    /// Its scheduler.
    pub scheduler: Scheduler,
    /// The scheduler's flags.
    pub sched_flags: SchedFlags,
    /// Its persistence.
    pub persistence: Option<Persistence>,
    /// Totals over the service.
    pub stats: Stats,
    /// Per-second rates over the service.
    pub rates: Rates,
    /// Its real servers.
    pub reals: Vec<RealListing>,
    /// Whether its SYNs skip the embryonic table (`SERVICE_F_SETTLED`: its choice of a server
    /// is its table's, and every handshake in progress is on the server the table gives it).
    /// Left out when not (and by an xlbd before it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub settled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One real server in a [`ServiceListing`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RealListing {
    /// Its address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// DR or TUN.
    pub forwarding: Forwarding,
    /// Its weight now (0 while a health check holds it out).
    pub weight: u32,
    /// `-x`.
    pub upper_threshold: u32,
    /// `-y`.
    pub lower_threshold: u32,
    /// Connections in an established state.
    pub active_conns: u32,
    /// Other tracked connections (handshake, closing, UDP).
    pub inactive_conns: u32,
    /// Persistence entries pointing at it.
    pub persistent_conns: u32,
    /// Its totals.
    pub stats: Stats,
    /// Its rates.
    pub rates: Rates,
    /// Its health, when it is checked.
    #[serde(default)]
    pub health: Option<RealHealth>,
}

/// A real server's health, as `-L` and `-L --health` show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RealHealth {
    /// up, down or unknown (not checked yet).
    pub state: String,
    /// The check: its kind and the address it checks.
    pub check: String,
    /// Whether the last check passed; `None` before the first.
    pub last_ok: Option<bool>,
    /// How long the last check took, in microseconds.
    pub latency_us: Option<u64>,
    /// Why the last failed check failed.
    pub last_failure: Option<String>,
}

/// Totals, as `--stats` shows them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets from clients.
    pub in_pkts: u64,
    /// Packets to clients through the balancer: 0 with DR and TUN.
    pub out_pkts: u64,
    /// Bytes from clients.
    pub in_bytes: u64,
    /// Bytes to clients through the balancer: 0 with DR and TUN.
    pub out_bytes: u64,
}

/// Per-second rates, as `--rate` shows them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    /// Connections per second.
    pub cps: u64,
    /// Packets per second from clients.
    pub in_pps: u64,
    /// Packets per second to clients: 0 with DR and TUN.
    pub out_pps: u64,
    /// Bytes per second from clients.
    pub in_bps: u64,
    /// Bytes per second to clients: 0 with DR and TUN.
    pub out_bps: u64,
}

impl Listing {
    /// A listing of `state` with every counter at zero, for the daemon to fill in.
    pub fn from_state(state: &DesiredState) -> Self {
        let services = state
            .services
            .iter()
            .map(|service| ServiceListing {
                addr: service.addr,
                scheduler: service.scheduler,
                sched_flags: service.sched_flags,
                persistence: service.persistence,
                stats: Stats::default(),
                rates: Rates::default(),
                reals: service.reals.iter().map(RealListing::idle).collect(),
                settled: false,
            })
            .collect();
        Listing { services }
    }
}

impl RealListing {
    /// `real` with no connections and zero counters.
    pub fn idle(real: &RealServer) -> Self {
        RealListing {
            addr: real.addr,
            port: real.port,
            forwarding: real.forwarding,
            weight: real.weight,
            upper_threshold: real.upper_threshold,
            lower_threshold: real.lower_threshold,
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
            stats: Stats::default(),
            rates: Rates::default(),
            health: None,
        }
    }
}

/// One tracked connection, as `-L -c` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConnectionListing {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Seconds until the entry counts as expired.
    pub expire_secs: u32,
    /// ipvsadm's state name: ESTABLISHED, FIN_WAIT (a FIN or RST was seen) or UDP.
    pub state: String,
    /// The client.
    pub source: SocketAddr,
    /// The virtual service.
    pub virtual_addr: SocketAddr,
    /// The real server.
    pub destination: SocketAddr,
}
