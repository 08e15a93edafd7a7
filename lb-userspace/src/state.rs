//! The desired state: which virtual services xlb balances and to which real servers, as ipvsadm
//! models them, with ipvsadm's operations on it.
//!
//! Pure: no I/O. `xlbadm` commands and `-R` restores become [`Change`]s applied here; the daemon
//! then diffs the result against the BPF maps. Every operation either succeeds whole or leaves the
//! state untouched, and its errors print as ipvsadm prints the kernel's answer (libipvs'
//! `ipvs_strerror` table), so that scripts that grep for them keep working.
//!
//! Services are kept sorted the way `ipvsadm -L` and `-S` sort them (IPv4 before IPv6, then
//! protocol, address, port) and real servers by address and port, so that two states with the same
//! content compare equal and serialize the same whatever order they were built in.
//!
//! - `endpoint` (its types are named here): [`ServiceAddr`], [`Protocol`],
//!   [`Forwarding`], the identities everything else is built from.
//! - [`health`]: each service's health settings and each real server's own check options.
//! - [`timeouts`]: the connection table's idle timeouts per protocol (`--set`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod command;
pub mod health;
pub mod timeouts;

mod endpoint;

pub use endpoint::{Forwarding, Protocol, ServiceAddr};
use health::{CheckOptions, ConfigError, ServiceHealth};
use timeouts::ConnectionTimeouts;

/// ipvsadm's persistence timeout when `-p` has no value: libipvs' `IPVS_SVC_PERSISTENT_TIMEOUT`
/// (6*60). The man page says 300 s, but ipvsadm and `ipvsadm -S` really use 360, and we follow the
/// program so that saved configurations compare equal.
pub const DEFAULT_PERSISTENCE_TIMEOUT_SECS: u32 = 360;

/// The longest persistence timeout ipvsadm accepts: `MAX_TIMEOUT`, 31 days.
pub const MAX_PERSISTENCE_TIMEOUT_SECS: u32 = 86_400 * 31;

/// The weight a real server gets without `-w`, as in ipvsadm.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The largest weight ipvsadm accepts (`-w` is 0..=65535; 0 means quiescent).
pub const MAX_WEIGHT: u32 = 65_535;

/// The largest connection threshold ipvsadm accepts (`-x`/`-y` are parsed up to `INT_MAX`).
pub const MAX_THRESHOLD: u32 = 0x7fff_ffff;

/// How a service picks the real server for a new flow (`-s`).
///
/// Maglev is the default, where ipvsadm's default is `wlc`: Maglev needs no connection counts
/// and lets ECMP'd balancers agree. The schedulers xlb does not have are refused by name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Scheduler {
    /// Round robin (`rr`): each new flow the next server with a weight above 0, in turn.
    RoundRobin,
    /// Weighted round robin (`wrr`): each server in turn, as many times per round as its weight,
    /// interleaved as IPVS's `wrr` interleaves them.
    WeightedRoundRobin,
    /// Least connections (`lc`): of two servers drawn at random, the one with fewer active
    /// connections.
    LeastConnection,
    /// Weighted least connections (`wlc`): of two servers drawn at random, the one with fewer
    /// active connections per unit of weight.
    WeightedLeastConnection,
    /// Shortest expected delay (`sed`): of two servers drawn at random, the one with the fewer
    /// active connections plus one (the new flow) per unit of weight.
    ShortestExpectedDelay,
    /// Never queue (`nq`): of two servers drawn at random, one without active connections, else
    /// as `sed`.
    NeverQueue,
    /// Weighted failover (`fo`): the available server (weight above 0, not overloaded) with the
    /// highest weight.
    WeightedFailover,
    /// Overflow (`ovf`): the available server with the highest weight while its active
    /// connections do not exceed its weight, then the next by weight.
    Overflow,
    /// Source hashing (`sh`): a client address's flows all go to one server, by a consistent
    /// (Maglev) table weighted like `mh`'s.
    SourceHash,
    /// Destination hashing (`dh`): the flows to one destination address go to one server.
    DestinationHash,
    /// Maglev consistent hashing (ipvsadm's `mh`): every balancer with the same servers picks the
    /// same server for a flow, so ECMP'd balancers agree without sharing state.
    #[default]
    Maglev,
}

/// ipvsadm's schedulers that xlb refuses by name: they balance by locality tables (`lblc`,
/// `lblcr`), which xlb's data path does not keep, or by random choices of its own (`twos`).
const UNIMPLEMENTED_SCHEDULERS: &[&str] = &["lblc", "lblcr", "twos"];

impl Scheduler {
    /// Every scheduler xlb implements, in the order `-h` and error messages list them.
    pub const ALL: &'static [Scheduler] = &[
        Scheduler::RoundRobin,
        Scheduler::WeightedRoundRobin,
        Scheduler::LeastConnection,
        Scheduler::WeightedLeastConnection,
        Scheduler::ShortestExpectedDelay,
        Scheduler::NeverQueue,
        Scheduler::WeightedFailover,
        Scheduler::Overflow,
        Scheduler::SourceHash,
        Scheduler::DestinationHash,
        Scheduler::Maglev,
    ];

    /// The ipvsadm name, as given to `-s` and printed by `-L` and `-S`.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::RoundRobin => "rr",
            Scheduler::WeightedRoundRobin => "wrr",
            Scheduler::LeastConnection => "lc",
            Scheduler::WeightedLeastConnection => "wlc",
            Scheduler::ShortestExpectedDelay => "sed",
            Scheduler::NeverQueue => "nq",
            Scheduler::WeightedFailover => "fo",
            Scheduler::Overflow => "ovf",
            Scheduler::SourceHash => "sh",
            Scheduler::DestinationHash => "dh",
            Scheduler::Maglev => "mh",
        }
    }

    /// The scheduler that ipvsadm calls `name`.
    pub fn from_name(name: &str) -> Result<Self, UnknownScheduler> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownScheduler {
                name: name.to_owned(),
            })
    }

    /// The supported names separated by `|`, as ipvsadm's usage lists them.
    pub fn supported_names() -> String {
        Self::ALL
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join("|")
    }

    /// Whether the scheduler walks a sequence (`rr`, `wrr`) rather than hashing into a
    /// consistent table (`sh`, `dh`, `mh`), drawing from every server in turn (`lc`, `wlc`,
    /// `sed`, `nq`) or taking the first by weight (`fo`, `ovf`).
    pub fn is_sequence(self) -> bool {
        matches!(self, Scheduler::RoundRobin | Scheduler::WeightedRoundRobin)
    }

    /// Whether the scheduler takes the less loaded of two servers drawn at random (`lc`, `wlc`,
    /// `sed`, `nq`).
    pub fn is_least_connection(self) -> bool {
        matches!(
            self,
            Scheduler::LeastConnection
                | Scheduler::WeightedLeastConnection
                | Scheduler::ShortestExpectedDelay
                | Scheduler::NeverQueue
        )
    }

    /// Whether the scheduler reads its servers' active connections and weights, which the
    /// runtime writes for it (the least-connection schedulers and `ovf`).
    pub fn counts_connections(self) -> bool {
        self.is_least_connection() || self == Scheduler::Overflow
    }

    /// Whether the scheduler takes the first available server by weight (`fo`, `ovf`).
    pub fn is_weight_order(self) -> bool {
        matches!(self, Scheduler::WeightedFailover | Scheduler::Overflow)
    }

    /// The names of its `-b` flags: (fallback, port), for the schedulers that have them.
    pub fn flag_names(self) -> Option<(&'static str, &'static str)> {
        match self {
            Scheduler::SourceHash => Some(("sh-fallback", "sh-port")),
            Scheduler::Maglev => Some(("mh-fallback", "mh-port")),
            _ => None,
        }
    }
}

impl TryFrom<String> for Scheduler {
    type Error = UnknownScheduler;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Scheduler::from_name(&name)
    }
}

impl From<Scheduler> for &'static str {
    fn from(scheduler: Scheduler) -> Self {
        scheduler.name()
    }
}

/// A scheduler name that xlb does not implement.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}", self.message())]
pub struct UnknownScheduler {
    /// The name as given.
    pub name: String,
}

impl UnknownScheduler {
    fn message(&self) -> String {
        let supported = Scheduler::supported_names();
        if UNIMPLEMENTED_SCHEDULERS.contains(&self.name.as_str()) {
            format!(
                "xlb does not implement the '{}' scheduler yet (xlb supports: {supported})",
                self.name
            )
        } else {
            format!(
                "Scheduler not found: '{}' (xlb supports: {supported})",
                self.name
            )
        }
    }
}

/// ipvsadm's scheduler flags (`-b`, `--sched-flags`), for `sh` and `mh`.
///
/// xlb's `sh` and `mh` tables hold only the servers that are available (weight above 0,
/// healthy), so a client of an unavailable server always moves to another one: the behaviour
/// of `sh-fallback`/`mh-fallback`. A server at its upper connection threshold (`-x`) stays in the
/// table: `sh-fallback` then gives its new clients the next servers of the table (without it they
/// get none, as in IPVS); `mh` always does. xlb's `mh` hashes the client's port always
/// (`mh-port`); `sh-port` adds it to `sh`'s hash.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SchedFlags {
    /// `sh-fallback` / `mh-fallback` (ipvsadm's `flag-1`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub fallback: bool,
    /// `sh-port` / `mh-port` (ipvsadm's `flag-2`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub port: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl SchedFlags {
    /// Whether no flag is set.
    pub fn is_empty(&self) -> bool {
        !self.fallback && !self.port
    }

    /// The flags as ipvsadm prints them for `scheduler`: `sh-fallback,sh-port`.
    pub fn names(&self, scheduler: Scheduler) -> String {
        let (fallback, port) = scheduler.flag_names().unwrap_or(("flag-1", "flag-2"));
        let mut names = Vec::new();
        if self.fallback {
            names.push(fallback);
        }
        if self.port {
            names.push(port);
        }
        names.join(",")
    }
}

/// The granularity of persistence (`-M`): clients whose source addresses agree under this mask
/// stick to the same real server.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Netmask {
    /// A dotted IPv4 mask, as ipvsadm takes it for IPv4 services (it need not be contiguous).
    V4(Ipv4Addr),
    /// A prefix length 1..=128, as ipvsadm takes it for IPv6 services.
    V6Prefix(u8),
}

impl Netmask {
    /// The mask that makes every client host its own group: ipvsadm's default,
    /// 255.255.255.255 or /128.
    pub fn host(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Netmask::V4(Ipv4Addr::BROADCAST),
            IpAddr::V6(_) => Netmask::V6Prefix(128),
        }
    }
}

/// Persistence (`-p [timeout] [-M netmask]`): a client keeps its real server across connections
/// for `timeout_secs` after its last one.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    /// Seconds, 1..=[`MAX_PERSISTENCE_TIMEOUT_SECS`].
    pub timeout_secs: u32,
    /// Which source addresses count as the same client.
    pub netmask: Netmask,
}

impl Persistence {
    /// What a bare `-p` means for a service on `addr`: ipvsadm's default timeout, per-host mask.
    pub fn default_for(addr: IpAddr) -> Self {
        Persistence {
            timeout_secs: DEFAULT_PERSISTENCE_TIMEOUT_SECS,
            netmask: Netmask::host(addr),
        }
    }
}

/// One real server of a virtual service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    /// Its address; with [`Forwarding::Tunnel`] it may be of the other family than the VIP.
    pub addr: IpAddr,
    /// Its port: always the service's port, since DR and TUN cannot rewrite ports.
    pub port: u16,
    /// DR or TUN.
    #[serde(default)]
    pub forwarding: Forwarding,
    /// Its share of new flows relative to the others, 0..=[`MAX_WEIGHT`]; 0 = no new flows.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// ipvsadm's `-x`: no new connections above this many; 0 = unset.
    #[serde(default)]
    pub upper_threshold: u32,
    /// ipvsadm's `-y`: new connections again below this many; 0 = unset.
    #[serde(default)]
    pub lower_threshold: u32,
}

/// A virtual service and its real servers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VirtualService {
    /// What clients connect to.
    pub addr: ServiceAddr,
    /// How it picks a real server.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// The scheduler's flags (`-b`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub sched_flags: SchedFlags,
    /// Whether clients stick to their real server, and how.
    pub persistence: Option<Persistence>,
    /// Its real servers, sorted by address and port.
    #[serde(default)]
    pub reals: Vec<RealServer>,
    /// Health checking of its real servers: the default check, inhibit-on-failure, quorum,
    /// sorry server.
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: ServiceHealth,
    /// Check options of single real servers, overriding the service's default field by field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub real_checks: BTreeMap<SocketAddr, CheckOptions>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Everything xlb should be balancing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The virtual services, in ipvsadm's listing order; none when absent, so that an empty
    /// configuration file (or one of comments only) means no services.
    #[serde(default)]
    pub services: Vec<VirtualService>,
    /// The connection table's idle timeouts (`--set`): not part of the services, so `-C` keeps
    /// them and `-S` does not save them, as with IPVS. Left out of a state file when they are
    /// IPVS's defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: ConnectionTimeouts,
}

/// One ipvsadm operation on the desired state, as `xlbadm` sends it to `xlbd` and `-R` applies it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// `-A`: a new virtual service without real servers.
    AddService {
        /// Its address.
        service: ServiceAddr,
        /// Its scheduler.
        scheduler: Scheduler,
        /// The scheduler's flags.
        #[serde(default)]
        sched_flags: SchedFlags,
        /// Its persistence, if any.
        persistence: Option<Persistence>,
        /// Its health-check settings.
        #[serde(default)]
        health: ServiceHealth,
    },
    /// `-E`: replace a service's scheduler and persistence (as ipvsadm, options left out go back to
    /// their defaults); its real servers stay.
    EditService {
        /// Which service.
        service: ServiceAddr,
        /// Its new scheduler.
        scheduler: Scheduler,
        /// The scheduler's new flags.
        #[serde(default)]
        sched_flags: SchedFlags,
        /// Its new persistence.
        persistence: Option<Persistence>,
        /// Its new health-check settings.
        #[serde(default)]
        health: ServiceHealth,
    },
    /// `-D`: remove a service and its real servers.
    DeleteService {
        /// Which service.
        service: ServiceAddr,
    },
    /// `-a`: add a real server to a service.
    AddReal {
        /// To which service.
        service: ServiceAddr,
        /// The new server.
        real: RealServer,
        /// Its own check options.
        #[serde(default)]
        check: CheckOptions,
    },
    /// `-e`: replace the settings of the real server with the same address and port.
    EditReal {
        /// In which service.
        service: ServiceAddr,
        /// The server's new settings.
        real: RealServer,
        /// Its new check options.
        #[serde(default)]
        check: CheckOptions,
    },
    /// `-d`: remove a real server from a service.
    DeleteReal {
        /// From which service.
        service: ServiceAddr,
        /// The server's address.
        addr: IpAddr,
        /// The server's port.
        port: u16,
    },
    /// `-C`: remove every service.
    Clear,
    /// `--set TCP TCPFIN UDP`: the connection table's idle timeouts, in seconds; a 0 keeps the
    /// timeout it would replace.
    SetTimeouts {
        /// Established TCP connections.
        tcp_secs: u32,
        /// TCP connections that saw a FIN or RST.
        tcpfin_secs: u32,
        /// UDP flows.
        udp_secs: u32,
    },
}

/// Why an operation was refused. Display strings are ipvsadm's own messages where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    /// `-A` of a service that exists.
    #[error("Service already exists")]
    ServiceExists,
    /// `-E` or `-D` of a service that does not exist.
    #[error("No such service")]
    NoSuchService,
    /// `-a`, `-e` or `-d` on a service that does not exist (ipvsadm words this one differently
    /// from [`StateError::NoSuchService`]).
    #[error("Service not defined")]
    ServiceNotDefined,
    /// `-a` of a real server that the service already has.
    #[error("Destination already exists")]
    DestinationExists,
    /// `-e` or `-d` of a real server that the service does not have.
    #[error("No such destination")]
    NoSuchDestination,
    /// A port-0 ("all ports") service without persistence, which ipvsadm refuses.
    #[error("Zero port specified for non-persistent service")]
    ZeroPortNotPersistent,
    /// A persistence timeout outside 1..=[`MAX_PERSISTENCE_TIMEOUT_SECS`].
    #[error("invalid timeout value `{timeout_secs}' specified")]
    InvalidTimeout {
        /// The timeout given.
        timeout_secs: u32,
    },
    /// A connection timeout (`--set`) above [`timeouts::MAX_CONNECTION_TIMEOUT_SECS`].
    #[error("invalid timeout value `{timeout_secs}' specified: the {which} timeout is at most {max} seconds (31 days)", max = timeouts::MAX_CONNECTION_TIMEOUT_SECS)]
    InvalidConnectionTimeout {
        /// Which timeout: `tcp`, `tcpfin` or `udp`.
        which: &'static str,
        /// The timeout given.
        timeout_secs: u32,
    },
    /// An IPv4 mask on an IPv6 service.
    #[error("illegal virtual server persistent mask specified")]
    IllegalNetmask,
    /// An IPv6 prefix outside 1..=128, or on an IPv4 service.
    #[error("illegal ipv6 netmask specified")]
    IllegalIpv6Netmask,
    /// A weight above [`MAX_WEIGHT`].
    #[error("illegal weight specified")]
    IllegalWeight {
        /// The weight given.
        weight: u32,
    },
    /// An upper threshold above [`MAX_THRESHOLD`].
    #[error("illegal u_threshold specified")]
    IllegalUpperThreshold {
        /// The threshold given.
        threshold: u32,
    },
    /// A lower threshold above [`MAX_THRESHOLD`].
    #[error("illegal l_threshold specified")]
    IllegalLowerThreshold {
        /// The threshold given.
        threshold: u32,
    },
    /// A scheduler flag that the service's scheduler does not have.
    #[error("the '{scheduler}' scheduler takes no scheduler flags (-b): only sh has sh-fallback and sh-port, and mh has mh-fallback and mh-port")]
    SchedFlagsNotFor {
        /// The scheduler's name.
        scheduler: &'static str,
    },
    /// `-y` above `-x` (IPVS refuses it too, with ERANGE).
    #[error("the lower threshold (-y {lower}) is higher than the upper threshold (-x {upper}): a server would never take new connections again")]
    LowerAboveUpper {
        /// The upper threshold given.
        upper: u32,
        /// The lower threshold given.
        lower: u32,
    },
    /// A real server port that differs from the service's: DR and TUN deliver the packet as the
    /// client sent it, so they cannot change its port (ipvsadm silently overrides it instead).
    #[error(
        "real server port {real_port} differs from the service port {service_port}: direct routing and tunneling cannot change the port"
    )]
    PortMismatch {
        /// The service's port.
        service_port: u16,
        /// The real server's port.
        real_port: u16,
    },
    /// An IPv4 service with an IPv6 real server or the reverse, with direct routing: only a
    /// tunnel can carry one family inside the other.
    #[error("Different address family is allowed only for tunneling servers")]
    AddressFamilyMismatch,
    /// A tunnel between address families (IPv4 in IPv6 or the reverse): ipvsadm allows it, xlb's
    /// data path does not encapsulate across families.
    #[error("xlb does not tunnel across address families: the real server must have the service's family")]
    TunnelAcrossFamilies,
    /// Health-check settings that do not hold together.
    #[error("{message}")]
    Check {
        /// What is wrong.
        message: String,
    },
}

impl StateError {
    fn check(error: ConfigError) -> Self {
        Self::Check {
            message: error.to_string(),
        }
    }
}

impl Change {
    /// Checks what can be checked without the current state (ranges, ports, families), so that
    /// `xlbadm` can refuse a bad command before it reaches the daemon.
    pub fn validate(&self) -> Result<(), StateError> {
        match self {
            Change::AddService {
                service,
                scheduler,
                sched_flags,
                persistence,
                ..
            }
            | Change::EditService {
                service,
                scheduler,
                sched_flags,
                persistence,
                ..
            } => {
                validate_sched_flags(*scheduler, *sched_flags)?;
                validate_service(service, persistence.as_ref())
            }
            Change::AddReal { service, real, .. } | Change::EditReal { service, real, .. } => {
                validate_real(service, real)
            }
            Change::SetTimeouts {
                tcp_secs,
                tcpfin_secs,
                udp_secs,
            } => match ConnectionTimeouts::too_long(*tcp_secs, *tcpfin_secs, *udp_secs) {
                Some((which, timeout_secs)) => Err(StateError::InvalidConnectionTimeout {
                    which,
                    timeout_secs,
                }),
                None => Ok(()),
            },
            Change::DeleteService { .. } | Change::DeleteReal { .. } | Change::Clear => Ok(()),
        }
    }
}

impl DesiredState {
    /// Commands saved by an older xlbd, which ran every command by `sh -c`, that only a shell
    /// can run keep it (`--check-shell`, `--check-notify-shell`); the number of services
    /// changed.
    pub fn keep_older_shell(&mut self) -> usize {
        let mut changed = 0;
        for svc in &mut self.services {
            let mut any = svc.health.keep_older_shell();
            for check in svc.real_checks.values_mut() {
                any |= check.keep_older_shell();
            }
            changed += usize::from(any);
        }
        changed
    }

    /// The service at `addr`, if any.
    pub fn service(&self, addr: &ServiceAddr) -> Option<&VirtualService> {
        self.services.iter().find(|s| s.addr == *addr)
    }

    /// Every service by its address, for walks that look many services up (a listing, the
    /// comparison of two states): [`Self::service`] scans the list, which for each of 512
    /// services is 131,000 comparisons a walk.
    pub fn services_by_addr(&self) -> BTreeMap<ServiceAddr, &VirtualService> {
        self.services.iter().map(|s| (s.addr, s)).collect()
    }

    /// Applies one [`Change`]; on error the state is unchanged.
    pub fn apply(&mut self, change: &Change) -> Result<(), StateError> {
        let mut next = self.clone();
        match change {
            Change::AddService {
                service,
                scheduler,
                sched_flags,
                persistence,
                health,
            } => {
                next.add_service(*service, *scheduler, *persistence)?;
                next.set_sched_flags(service, *sched_flags)?;
                next.set_health(service, health.clone())?;
            }
            Change::EditService {
                service,
                scheduler,
                sched_flags,
                persistence,
                health,
            } => {
                next.edit_service(service, *scheduler, *persistence)?;
                next.set_sched_flags(service, *sched_flags)?;
                next.set_health(service, health.clone())?;
            }
            Change::DeleteService { service } => next.delete_service(service)?,
            Change::AddReal {
                service,
                real,
                check,
            } => {
                next.add_real(service, *real)?;
                next.set_real_check(service, real, check.clone())?;
            }
            Change::EditReal {
                service,
                real,
                check,
            } => {
                next.edit_real(service, *real)?;
                next.set_real_check(service, real, check.clone())?;
            }
            Change::DeleteReal {
                service,
                addr,
                port,
            } => next.delete_real(service, *addr, *port)?,
            Change::Clear => next.clear(),
            Change::SetTimeouts {
                tcp_secs,
                tcpfin_secs,
                udp_secs,
            } => {
                change.validate()?;
                next.timeouts = next.timeouts.set(*tcp_secs, *tcpfin_secs, *udp_secs);
            }
        }
        *self = next;
        Ok(())
    }

    /// Replaces a service's health-check settings, checking that they and every real server's
    /// resulting check are valid.
    pub fn set_health(
        &mut self,
        service: &ServiceAddr,
        health: ServiceHealth,
    ) -> Result<(), StateError> {
        let vs = self.service_mut(service).ok_or(StateError::NoSuchService)?;
        health.validate(service).map_err(StateError::check)?;
        health
            .spec_for(&CheckOptions::default())
            .map_err(StateError::check)?;
        for options in vs.real_checks.values() {
            health.spec_for(options).map_err(StateError::check)?;
        }
        vs.health = health;
        Ok(())
    }

    /// Replaces a service's scheduler flags, checking that its scheduler has them.
    pub fn set_sched_flags(
        &mut self,
        service: &ServiceAddr,
        flags: SchedFlags,
    ) -> Result<(), StateError> {
        let vs = self.service_mut(service).ok_or(StateError::NoSuchService)?;
        validate_sched_flags(vs.scheduler, flags)?;
        vs.sched_flags = flags;
        Ok(())
    }

    /// Replaces a real server's own check options (the default ones remove the override).
    pub fn set_real_check(
        &mut self,
        service: &ServiceAddr,
        real: &RealServer,
        check: CheckOptions,
    ) -> Result<(), StateError> {
        let vs = self
            .service_mut(service)
            .ok_or(StateError::ServiceNotDefined)?;
        vs.health.spec_for(&check).map_err(StateError::check)?;
        let key = SocketAddr::new(real.addr, real.port);
        if check == CheckOptions::default() {
            vs.real_checks.remove(&key);
        } else {
            vs.real_checks.insert(key, check);
        }
        Ok(())
    }

    /// ipvsadm `-A`: adds a service without real servers.
    pub fn add_service(
        &mut self,
        addr: ServiceAddr,
        scheduler: Scheduler,
        persistence: Option<Persistence>,
    ) -> Result<(), StateError> {
        validate_service(&addr, persistence.as_ref())?;
        match self.services.binary_search_by(|s| s.addr.cmp(&addr)) {
            Ok(_) => Err(StateError::ServiceExists),
            Err(at) => {
                self.services.insert(
                    at,
                    VirtualService {
                        addr,
                        scheduler,
                        sched_flags: SchedFlags::default(),
                        persistence,
                        reals: Vec::new(),
                        health: ServiceHealth::default(),
                        real_checks: BTreeMap::new(),
                    },
                );
                Ok(())
            }
        }
    }

    /// ipvsadm `-E`: replaces a service's scheduler and persistence, keeping its real servers.
    pub fn edit_service(
        &mut self,
        addr: &ServiceAddr,
        scheduler: Scheduler,
        persistence: Option<Persistence>,
    ) -> Result<(), StateError> {
        let service = self.service_mut(addr).ok_or(StateError::NoSuchService)?;
        validate_service(addr, persistence.as_ref())?;
        service.scheduler = scheduler;
        if scheduler.flag_names().is_none() {
            service.sched_flags = SchedFlags::default();
        }
        service.persistence = persistence;
        Ok(())
    }

    /// ipvsadm `-D`: removes a service and its real servers.
    pub fn delete_service(&mut self, addr: &ServiceAddr) -> Result<(), StateError> {
        let at = self
            .services
            .iter()
            .position(|s| s.addr == *addr)
            .ok_or(StateError::NoSuchService)?;
        self.services.remove(at);
        Ok(())
    }

    /// ipvsadm `-a`: adds a real server to a service.
    pub fn add_real(&mut self, service: &ServiceAddr, real: RealServer) -> Result<(), StateError> {
        let vs = self
            .service_mut(service)
            .ok_or(StateError::ServiceNotDefined)?;
        validate_real(service, &real)?;
        match vs
            .reals
            .binary_search_by(|r| (r.addr, r.port).cmp(&(real.addr, real.port)))
        {
            Ok(_) => Err(StateError::DestinationExists),
            Err(at) => {
                vs.reals.insert(at, real);
                Ok(())
            }
        }
    }

    /// ipvsadm `-e`: replaces the settings of the real server with `real`'s address and port.
    pub fn edit_real(&mut self, service: &ServiceAddr, real: RealServer) -> Result<(), StateError> {
        let vs = self
            .service_mut(service)
            .ok_or(StateError::ServiceNotDefined)?;
        let existing = vs
            .reals
            .iter_mut()
            .find(|r| r.addr == real.addr && r.port == real.port)
            .ok_or(StateError::NoSuchDestination)?;
        validate_real(service, &real)?;
        *existing = real;
        Ok(())
    }

    /// ipvsadm `-d`: removes a real server from a service.
    pub fn delete_real(
        &mut self,
        service: &ServiceAddr,
        addr: IpAddr,
        port: u16,
    ) -> Result<(), StateError> {
        let vs = self
            .service_mut(service)
            .ok_or(StateError::ServiceNotDefined)?;
        let at = vs
            .reals
            .iter()
            .position(|r| r.addr == addr && r.port == port)
            .ok_or(StateError::NoSuchDestination)?;
        vs.reals.remove(at);
        vs.real_checks.remove(&SocketAddr::new(addr, port));
        Ok(())
    }

    /// ipvsadm `-C`: removes every service.
    pub fn clear(&mut self) {
        self.services.clear();
    }

    fn service_mut(&mut self, addr: &ServiceAddr) -> Option<&mut VirtualService> {
        self.services.iter_mut().find(|s| s.addr == *addr)
    }
}

fn validate_service(
    addr: &ServiceAddr,
    persistence: Option<&Persistence>,
) -> Result<(), StateError> {
    let Some(persistence) = persistence else {
        return if addr.port == 0 {
            Err(StateError::ZeroPortNotPersistent)
        } else {
            Ok(())
        };
    };
    if !(1..=MAX_PERSISTENCE_TIMEOUT_SECS).contains(&persistence.timeout_secs) {
        return Err(StateError::InvalidTimeout {
            timeout_secs: persistence.timeout_secs,
        });
    }
    match (addr.addr, persistence.netmask) {
        (IpAddr::V4(_), Netmask::V4(_)) => Ok(()),
        (IpAddr::V6(_), Netmask::V6Prefix(1..=128)) => Ok(()),
        (IpAddr::V6(_), Netmask::V4(_)) => Err(StateError::IllegalNetmask),
        (_, Netmask::V6Prefix(_)) => Err(StateError::IllegalIpv6Netmask),
    }
}

fn validate_sched_flags(scheduler: Scheduler, flags: SchedFlags) -> Result<(), StateError> {
    if flags.is_empty() || scheduler.flag_names().is_some() {
        Ok(())
    } else {
        Err(StateError::SchedFlagsNotFor {
            scheduler: scheduler.name(),
        })
    }
}

fn validate_real(service: &ServiceAddr, real: &RealServer) -> Result<(), StateError> {
    if real.weight > MAX_WEIGHT {
        return Err(StateError::IllegalWeight {
            weight: real.weight,
        });
    }
    if real.upper_threshold > MAX_THRESHOLD {
        return Err(StateError::IllegalUpperThreshold {
            threshold: real.upper_threshold,
        });
    }
    if real.lower_threshold > MAX_THRESHOLD {
        return Err(StateError::IllegalLowerThreshold {
            threshold: real.lower_threshold,
        });
    }
    if real.lower_threshold > real.upper_threshold {
        return Err(StateError::LowerAboveUpper {
            upper: real.upper_threshold,
            lower: real.lower_threshold,
        });
    }
    if real.port != service.port {
        return Err(StateError::PortMismatch {
            service_port: service.port,
            real_port: real.port,
        });
    }
    if real.addr.is_ipv6() != service.addr.is_ipv6() {
        return Err(match real.forwarding {
            Forwarding::DirectRoute => StateError::AddressFamilyMismatch,
            Forwarding::Tunnel => StateError::TunnelAcrossFamilies,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: addr.parse().expect("test address"),
            port,
        }
    }

    fn real(addr: &str, port: u16) -> RealServer {
        RealServer {
            addr: addr.parse().expect("test address"),
            port,
            forwarding: Forwarding::DirectRoute,
            weight: DEFAULT_WEIGHT,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    fn one_service() -> DesiredState {
        let mut state = DesiredState::default();
        state
            .add_service(tcp("10.0.0.1", 80), Scheduler::Maglev, None)
            .expect("add service");
        state
    }

    #[test]
    fn service_addresses_print_as_ipvsadm_prints_them() {
        assert_eq!(tcp("10.0.0.1", 80).to_string(), "10.0.0.1:80");
        assert_eq!(tcp("2001:db8::1", 80).to_string(), "[2001:db8::1]:80");
    }

    #[test]
    fn schedulers_go_by_their_ipvsadm_names_and_maglev_is_the_default() {
        for scheduler in Scheduler::ALL {
            assert_eq!(Scheduler::from_name(scheduler.name()), Ok(*scheduler));
        }
        assert_eq!(
            Scheduler::from_name("wrr"),
            Ok(Scheduler::WeightedRoundRobin)
        );
        assert_eq!(Scheduler::default(), Scheduler::Maglev);
    }

    #[test]
    fn an_unknown_scheduler_names_the_supported_ones() {
        let err = Scheduler::from_name("xyz").expect_err("no such scheduler");
        assert_eq!(
            err.to_string(),
            "Scheduler not found: 'xyz' (xlb supports: rr|wrr|lc|wlc|sed|nq|fo|ovf|sh|dh|mh)"
        );
    }

    #[test]
    fn an_ipvs_scheduler_xlb_lacks_is_refused_by_name() {
        let err = Scheduler::from_name("lblc").expect_err("lblc is not implemented");
        assert_eq!(
            err.to_string(),
            "xlb does not implement the 'lblc' scheduler yet (xlb supports: \
             rr|wrr|lc|wlc|sed|nq|fo|ovf|sh|dh|mh)"
        );
    }

    #[test]
    fn scheduler_flags_belong_to_sh_and_mh_only() {
        let mut state = DesiredState::default();
        let addr = tcp("10.0.0.1", 80);
        state
            .add_service(addr, Scheduler::RoundRobin, None)
            .expect("add service");
        let port = SchedFlags {
            fallback: false,
            port: true,
        };
        assert_eq!(
            state.set_sched_flags(&addr, port),
            Err(StateError::SchedFlagsNotFor { scheduler: "rr" })
        );
        state
            .edit_service(&addr, Scheduler::SourceHash, None)
            .expect("edit service");
        state
            .set_sched_flags(&addr, port)
            .expect("sh takes sh-port");
        assert_eq!(port.names(Scheduler::SourceHash), "sh-port");
        // Back to a scheduler without flags: they go.
        state
            .edit_service(&addr, Scheduler::WeightedRoundRobin, None)
            .expect("edit service");
        assert!(state.services[0].sched_flags.is_empty());
    }

    #[test]
    fn thresholds_are_kept_and_a_lower_one_above_the_upper_one_is_refused() {
        let mut state = one_service();
        let mut capped = real("10.0.0.11", 80);
        capped.upper_threshold = 2;
        state
            .add_real(&tcp("10.0.0.1", 80), capped)
            .expect("an upper threshold alone");
        assert_eq!(state.services[0].reals[0].upper_threshold, 2);
        let mut inverted = real("10.0.0.12", 80);
        inverted.upper_threshold = 10;
        inverted.lower_threshold = 20;
        let err = state
            .add_real(&tcp("10.0.0.1", 80), inverted)
            .expect_err("-y above -x");
        assert_eq!(
            err.to_string(),
            "the lower threshold (-y 20) is higher than the upper threshold (-x 10): a server would never take new connections again"
        );
        let mut lower_only = real("10.0.0.13", 80);
        lower_only.lower_threshold = 5;
        assert!(matches!(
            state.add_real(&tcp("10.0.0.1", 80), lower_only),
            Err(StateError::LowerAboveUpper { upper: 0, lower: 5 })
        ));
    }

    #[test]
    fn a_second_add_of_the_same_service_is_rejected() {
        let mut state = one_service();
        let before = state.clone();
        assert_eq!(
            state.add_service(tcp("10.0.0.1", 80), Scheduler::Maglev, None),
            Err(StateError::ServiceExists)
        );
        assert_eq!(
            StateError::ServiceExists.to_string(),
            "Service already exists"
        );
        assert_eq!(state, before);
    }

    #[test]
    fn the_same_address_and_port_over_udp_is_another_service() {
        let mut state = one_service();
        let udp = ServiceAddr {
            protocol: Protocol::Udp,
            ..tcp("10.0.0.1", 80)
        };
        state
            .add_service(udp, Scheduler::Maglev, None)
            .expect("udp service");
        assert_eq!(state.services.len(), 2);
    }

    #[test]
    fn services_are_kept_in_ipvsadm_order_whatever_the_order_they_were_added_in() {
        let udp = ServiceAddr {
            protocol: Protocol::Udp,
            ..tcp("10.0.0.1", 53)
        };
        let addrs = [
            tcp("2001:db8::1", 80),
            udp,
            tcp("10.0.0.2", 80),
            tcp("10.0.0.1", 443),
            tcp("10.0.0.1", 80),
        ];
        let mut state = DesiredState::default();
        for addr in addrs {
            state
                .add_service(addr, Scheduler::Maglev, None)
                .expect("add");
        }
        let order: Vec<String> = state.services.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(
            order,
            [
                "10.0.0.1:80",
                "10.0.0.1:443",
                "10.0.0.2:80",
                "10.0.0.1:53",
                "[2001:db8::1]:80"
            ]
        );
    }

    #[test]
    fn editing_a_service_replaces_its_settings_and_keeps_its_real_servers() {
        let mut state = one_service();
        let svc = tcp("10.0.0.1", 80);
        state
            .add_real(&svc, real("10.0.0.2", 80))
            .expect("add real");
        let persistence = Persistence {
            timeout_secs: 60,
            netmask: Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)),
        };
        state
            .edit_service(&svc, Scheduler::Maglev, Some(persistence))
            .expect("edit");
        let vs = state.service(&svc).expect("service");
        assert_eq!(vs.persistence, Some(persistence));
        assert_eq!(vs.reals.len(), 1);
    }

    #[test]
    fn editing_or_deleting_a_missing_service_is_rejected() {
        let mut state = one_service();
        let before = state.clone();
        let missing = tcp("10.0.0.9", 80);
        assert_eq!(
            state.edit_service(&missing, Scheduler::Maglev, None),
            Err(StateError::NoSuchService)
        );
        assert_eq!(
            state.delete_service(&missing),
            Err(StateError::NoSuchService)
        );
        assert_eq!(StateError::NoSuchService.to_string(), "No such service");
        assert_eq!(state, before);
    }

    #[test]
    fn deleting_a_service_removes_its_real_servers_with_it() {
        let mut state = one_service();
        let svc = tcp("10.0.0.1", 80);
        state
            .add_real(&svc, real("10.0.0.2", 80))
            .expect("add real");
        state.delete_service(&svc).expect("delete");
        assert_eq!(state, DesiredState::default());
    }

    #[test]
    fn a_real_server_needs_its_service_to_exist() {
        let mut state = DesiredState::default();
        let svc = tcp("10.0.0.1", 80);
        assert_eq!(
            state.add_real(&svc, real("10.0.0.2", 80)),
            Err(StateError::ServiceNotDefined)
        );
        assert_eq!(
            state.edit_real(&svc, real("10.0.0.2", 80)),
            Err(StateError::ServiceNotDefined)
        );
        assert_eq!(
            state.delete_real(&svc, "10.0.0.2".parse().expect("ip"), 80),
            Err(StateError::ServiceNotDefined)
        );
        assert_eq!(
            StateError::ServiceNotDefined.to_string(),
            "Service not defined"
        );
    }

    #[test]
    fn a_second_add_of_the_same_real_server_is_rejected() {
        let mut state = one_service();
        let svc = tcp("10.0.0.1", 80);
        state
            .add_real(&svc, real("10.0.0.2", 80))
            .expect("first add");
        let before = state.clone();
        assert_eq!(
            state.add_real(&svc, real("10.0.0.2", 80)),
            Err(StateError::DestinationExists)
        );
        assert_eq!(
            StateError::DestinationExists.to_string(),
            "Destination already exists"
        );
        assert_eq!(state, before);
    }

    #[test]
    fn editing_a_real_server_replaces_its_weight_and_forwarding() {
        let mut state = one_service();
        let svc = tcp("10.0.0.1", 80);
        state.add_real(&svc, real("10.0.0.2", 80)).expect("add");
        let edited = RealServer {
            weight: 0,
            forwarding: Forwarding::Tunnel,
            ..real("10.0.0.2", 80)
        };
        state.edit_real(&svc, edited).expect("edit");
        assert_eq!(state.service(&svc).expect("service").reals, [edited]);
    }

    #[test]
    fn editing_or_deleting_a_missing_real_server_is_rejected() {
        let mut state = one_service();
        let svc = tcp("10.0.0.1", 80);
        let before = state.clone();
        assert_eq!(
            state.edit_real(&svc, real("10.0.0.2", 80)),
            Err(StateError::NoSuchDestination)
        );
        assert_eq!(
            state.delete_real(&svc, "10.0.0.2".parse().expect("ip"), 80),
            Err(StateError::NoSuchDestination)
        );
        assert_eq!(
            StateError::NoSuchDestination.to_string(),
            "No such destination"
        );
        assert_eq!(state, before);
    }

    #[test]
    fn a_real_server_on_another_port_than_its_service_is_rejected() {
        let mut state = one_service();
        let before = state.clone();
        assert_eq!(
            state.add_real(&tcp("10.0.0.1", 80), real("10.0.0.2", 8080)),
            Err(StateError::PortMismatch {
                service_port: 80,
                real_port: 8080
            })
        );
        assert_eq!(state, before);
    }

    #[test]
    fn an_ipv6_real_server_of_an_ipv4_service_is_refused_with_either_method() {
        let mut state = one_service();
        let before = state.clone();
        let svc = tcp("10.0.0.1", 80);
        assert_eq!(
            state.add_real(&svc, real("2001:db8::2", 80)),
            Err(StateError::AddressFamilyMismatch)
        );
        let tunneled = RealServer {
            forwarding: Forwarding::Tunnel,
            ..real("2001:db8::2", 80)
        };
        assert_eq!(
            state.add_real(&svc, tunneled),
            Err(StateError::TunnelAcrossFamilies)
        );
        assert_eq!(state, before);
    }

    #[test]
    fn a_weight_above_ipvsadms_range_is_rejected() {
        let mut state = one_service();
        let heavy = RealServer {
            weight: MAX_WEIGHT + 1,
            ..real("10.0.0.2", 80)
        };
        assert_eq!(
            state.add_real(&tcp("10.0.0.1", 80), heavy),
            Err(StateError::IllegalWeight { weight: 65_536 })
        );
        let max = RealServer {
            weight: MAX_WEIGHT,
            ..real("10.0.0.2", 80)
        };
        state
            .add_real(&tcp("10.0.0.1", 80), max)
            .expect("65535 is allowed");
    }

    #[test]
    fn a_port_zero_service_must_be_persistent() {
        let mut state = DesiredState::default();
        let all_ports = tcp("10.0.0.1", 0);
        assert_eq!(
            state.add_service(all_ports, Scheduler::Maglev, None),
            Err(StateError::ZeroPortNotPersistent)
        );
        let persistence = Persistence::default_for(all_ports.addr);
        state
            .add_service(all_ports, Scheduler::Maglev, Some(persistence))
            .expect("persistent all-ports service");
    }

    #[test]
    fn persistence_must_match_the_service_family_and_ranges() {
        let mut state = DesiredState::default();
        let v4 = tcp("10.0.0.1", 80);
        let v6 = tcp("2001:db8::1", 80);
        let with = |timeout_secs, netmask| {
            Some(Persistence {
                timeout_secs,
                netmask,
            })
        };
        let v4_mask = Netmask::V4(Ipv4Addr::BROADCAST);
        assert_eq!(
            state.add_service(v4, Scheduler::Maglev, with(0, v4_mask)),
            Err(StateError::InvalidTimeout { timeout_secs: 0 })
        );
        assert_eq!(
            state.add_service(v4, Scheduler::Maglev, with(60, Netmask::V6Prefix(64))),
            Err(StateError::IllegalIpv6Netmask)
        );
        assert_eq!(
            state.add_service(v6, Scheduler::Maglev, with(60, v4_mask)),
            Err(StateError::IllegalNetmask)
        );
        assert_eq!(
            state.add_service(v6, Scheduler::Maglev, with(60, Netmask::V6Prefix(129))),
            Err(StateError::IllegalIpv6Netmask)
        );
        assert_eq!(state, DesiredState::default());
        state
            .add_service(v6, Scheduler::Maglev, with(60, Netmask::V6Prefix(64)))
            .expect("a /64 is fine");
    }

    #[test]
    fn clear_removes_every_service() {
        let mut state = one_service();
        state.apply(&Change::Clear).expect("clear");
        assert!(state.services.is_empty());
    }

    #[test]
    fn a_rejected_change_leaves_the_state_unchanged() {
        let mut state = one_service();
        let before = state.clone();
        let change = Change::AddReal {
            service: tcp("10.0.0.1", 80),
            real: real("10.0.0.2", 81),
            check: Default::default(),
        };
        assert!(state.apply(&change).is_err());
        assert_eq!(state, before);
    }
}
