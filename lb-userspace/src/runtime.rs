//! The daemon's state: the desired state, which data-path ids it was given, and the loaded data
//! path. Every change goes through [`Runtime::change_to`]: the plan from the current desired state
//! to the new one is applied step by step, and when a step fails, the steps already done are
//! undone, so that a request applies whole or not at all.
//!
//! The desired state and its ids are saved to a state file after every change, so that a daemon
//! restarted on the pinned maps knows what they hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use std::time::Instant;

mod save_cache;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    capacity,
    convert::{identity, real_entry, scheduling_entry, service_key},
    datapath::{DataPath, SweptTables, Through},
    dataplane::{AllCounters, Dataplane, DataplaneError, RealId},
    errors::error_chain,
    expiry::{self, ConnKind},
    health::engine::{Engine, EngineStats, Target, TargetError},
    maglev,
    next_hops::NextHops,
    plan::{plan, Scheduling, Step},
    sequence,
    state::{
        timeouts::ConnectionTimeouts, DesiredState, Protocol, RealServer, Scheduler, ServiceAddr,
        VirtualService,
    },
    status::{ConnectionListing, Listing, Rates, RealHealth, RealListing, Stats},
};

/// Why a change could not be applied.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The data path refused a step (the change was rolled back).
    #[error("the data path refused the change: {step}")]
    Dataplane {
        /// The step, which reads as a sentence ("adding real server 10.0.0.11:80 to service TCP
        /// ...").
        step: Box<Step>,
        /// The error.
        #[source]
        source: Box<DataplaneError>,
    },
    /// The change needs more services or real servers than the balancer holds (nothing was
    /// touched).
    #[error("{message}")]
    Capacity {
        /// Which limit, and the option that raises it.
        message: String,
    },
    /// Health-check settings the engine refused (nothing was touched).
    #[error(transparent)]
    Health(Box<TargetError>),
    /// The state file could not be written.
    #[error("saving the state to {path}")]
    Save {
        /// The state file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<TargetError> for RuntimeError {
    fn from(e: TargetError) -> Self {
        Self::Health(Box::new(e))
    }
}

/// Data-path ids of what is installed: per service, its real servers' ids by address and port.
///
/// Saved as `{"services": [{"service": {...}, "reals": {"10.0.0.11:80": 1}}]}`. An older xlbd
/// saved it under string keys (`{"services": {"Tcp/10.0.0.1:80": {"10.0.0.11#80": 1}}}`), which
/// are still read, so that a daemon restarted after an upgrade adopts the maps of the old one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Per service, its real servers' ids.
    pub services: BTreeMap<ServiceAddr, BTreeMap<SocketAddr, RealId>>,
}

/// One service's ids as the state file holds them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceIds<S, R> {
    service: S,
    reals: R,
}

impl Serialize for Installed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Repr<'a> {
            services: Vec<ServiceIds<&'a ServiceAddr, &'a BTreeMap<SocketAddr, RealId>>>,
        }
        Repr {
            services: self
                .services
                .iter()
                .map(|(service, reals)| ServiceIds { service, reals })
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Installed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Repr {
            services: Services,
        }
        struct Services(BTreeMap<ServiceAddr, BTreeMap<SocketAddr, RealId>>);
        impl<'de> Deserialize<'de> for Services {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ServicesVisitor).map(Services)
            }
        }
        Ok(Installed {
            services: Repr::deserialize(deserializer)?.services.0,
        })
    }
}

/// Reads the installed services in either form: a list (this xlbd) or a map under string keys
/// (older ones).
struct ServicesVisitor;

impl<'de> serde::de::Visitor<'de> for ServicesVisitor {
    type Value = BTreeMap<ServiceAddr, BTreeMap<SocketAddr, RealId>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of services with their real servers' ids")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut services = BTreeMap::new();
        while let Some(ids) = seq.next_element::<ServiceIds<ServiceAddr, _>>()? {
            services.insert(ids.service, ids.reals);
        }
        Ok(services)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut services = BTreeMap::new();
        while let Some((name, reals)) = map.next_entry::<String, BTreeMap<String, RealId>>()? {
            let service = older_service_name(&name).ok_or_else(|| {
                A::Error::custom(format!(
                    "the service \"{name}\" is neither Tcp/ADDRESS:PORT nor Udp/ADDRESS:PORT"
                ))
            })?;
            let reals = reals
                .into_iter()
                .map(|(key, id)| {
                    let real = older_real_key(&key).ok_or_else(|| {
                        A::Error::custom(format!(
                            "the real server \"{key}\" of service {service} is not ADDRESS#PORT"
                        ))
                    })?;
                    Ok((real, id))
                })
                .collect::<Result<_, A::Error>>()?;
            services.insert(service, reals);
        }
        Ok(services)
    }
}

/// A service as an older xlbd named it in the state file: `Tcp/10.0.0.1:80`,
/// `Udp/[2001:db8::1]:53`.
fn older_service_name(name: &str) -> Option<ServiceAddr> {
    let (protocol, addr) = name.split_once('/')?;
    let protocol = match protocol {
        "Tcp" => Protocol::Tcp,
        "Udp" => Protocol::Udp,
        _ => return None,
    };
    let addr: SocketAddr = addr.parse().ok()?;
    Some(ServiceAddr {
        protocol,
        addr: addr.ip(),
        port: addr.port(),
    })
}

/// A real server as an older xlbd named it in the state file: `10.0.0.11#80`, `2001:db8::11#80`.
fn older_real_key(key: &str) -> Option<SocketAddr> {
    let (addr, port) = key.rsplit_once('#')?;
    Some(SocketAddr::new(addr.parse().ok()?, port.parse().ok()?))
}

/// What the state file holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    /// The desired state.
    pub desired: DesiredState,
    /// What the data path holds: the desired state as health checks leave it (failed servers
    /// out or at weight 0, slow starts, the sorry server). Missing in older files: the desired
    /// state.
    #[serde(default)]
    pub applied: Option<DesiredState>,
    /// The ids it was given.
    pub installed: Installed,
    /// The services a refused change left in an unknown state, which the next change rewrites
    /// whole. Missing in older files: none.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unsure: BTreeSet<ServiceAddr>,
    /// Written by an xlbd that runs check and notify commands without a shell unless asked.
    /// Missing in older files, whose commands that need a shell are marked as asking for one.
    #[serde(default)]
    pub commands_without_shell: bool,
}

impl Saved {
    /// Reads a state file; `None` when there is none or it cannot be understood (which is
    /// logged).
    pub fn read(path: &Path) -> Option<Saved> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str::<Saved>(&text) {
            Ok(mut saved) => {
                if !saved.commands_without_shell {
                    let mut changed = saved.desired.keep_older_shell();
                    if let Some(applied) = &mut saved.applied {
                        changed += applied.keep_older_shell();
                    }
                    if changed > 0 {
                        tracing::warn!(
                            services = changed,
                            "the state file was saved by an older xlbd, which ran every check \
                             and notify command with sh -c: the commands that need a shell keep \
                             it (--check-shell, --check-notify-shell)"
                        );
                    }
                    saved.commands_without_shell = true;
                }
                Some(saved)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable state file");
                None
            }
        }
    }
}

/// The daemon's state and its data path: the BPF maps ([`Dataplane`]) in the daemon, any
/// [`DataPath`] (the in-memory [`crate::datapath::fake::FakeDataPath`] in tests).
pub struct Runtime<D = Dataplane> {
    dp: D,
    /// What the operator asked for.
    desired: DesiredState,
    /// What the data path holds (the desired state as the health checks leave it).
    applied: DesiredState,
    installed: Installed,
    state_file: Option<PathBuf>,
    health: Option<Engine>,
    /// Real servers the health checks hold at weight 0 whose persistent clients were forgotten.
    failed: BTreeSet<RealId>,
    /// Real servers (of any service) the health checks hold at weight 0 whose handshakes in
    /// progress were forgotten.
    down: BTreeSet<RealId>,
    /// The services with a slow start in progress when they were last brought in line: their
    /// weights change with time ([`Self::refresh_ramps`]).
    ramping: BTreeSet<ServiceAddr>,
    /// The services a refused change left in an unknown state: a step of its rollback was
    /// refused too. The next change rewrites them whole ([`Self::plan_to`]).
    unsure: BTreeSet<ServiceAddr>,
    /// The neighbour thread, told the next hops of the real servers a change adds.
    next_hops: Option<NextHops>,
    /// When each service was last changed in the data path (monotonic ns): the sweep settles a
    /// service a second after its last change at the earliest ([`Self::settle`]).
    changed: BTreeMap<ServiceAddr, u64>,
    /// The services this runtime settled (`SERVICE_F_SETTLED`) and has not changed since.
    settled: BTreeSet<ServiceAddr>,
    /// The pieces of the last state file, for the next one.
    save_cache: save_cache::SaveCache,
}

impl Runtime {
    /// Reads a state file; `None` when there is none or it cannot be understood
    /// ([`Saved::read`]).
    pub fn read_state_file(path: &Path) -> Option<Saved> {
        Saved::read(path)
    }
}

impl<D: DataPath> Runtime<D> {
    /// A runtime over a freshly loaded (empty) data path.
    pub fn new(dp: D, state_file: Option<PathBuf>) -> Self {
        Self {
            dp,
            desired: DesiredState::default(),
            applied: DesiredState::default(),
            installed: Installed::default(),
            state_file,
            health: None,
            failed: Default::default(),
            down: Default::default(),
            ramping: BTreeSet::new(),
            unsure: BTreeSet::new(),
            next_hops: None,
            changed: BTreeMap::new(),
            settled: BTreeSet::new(),
            save_cache: Default::default(),
        }
    }

    /// Checks the real servers' health with `engine`, and gives the data path only the ones
    /// that pass.
    pub fn with_health(mut self, engine: Engine) -> Result<Self, RuntimeError> {
        engine.update_targets(targets(&self.desired)?)?;
        self.health = Some(engine);
        Ok(self)
    }

    /// Tells `next_hops` (the neighbour thread) the next hops of the real servers each change
    /// adds, for it to keep them resolved; the change does not wait for it.
    pub fn with_next_hops(mut self, next_hops: NextHops) -> Self {
        self.next_hops = Some(next_hops);
        self
    }

    /// The neighbour thread the changes tell, if any: to wait for it
    /// ([`NextHops::settled`]) once the state lock is released.
    pub fn next_hops(&self) -> Option<&NextHops> {
        self.next_hops.as_ref()
    }

    /// A runtime over adopted (pinned) maps that hold `saved`.
    pub fn adopt(dp: D, saved: Saved, state_file: Option<PathBuf>) -> Self {
        let applied = saved.applied.unwrap_or_else(|| saved.desired.clone());
        let mut runtime = Self {
            dp,
            desired: saved.desired,
            applied,
            installed: saved.installed,
            unsure: saved.unsure,
            state_file,
            health: None,
            failed: Default::default(),
            down: Default::default(),
            ramping: BTreeSet::new(),
            next_hops: None,
            // The xlbd before may have changed them a moment ago.
            changed: BTreeMap::new(),
            settled: BTreeSet::new(),
            save_cache: Default::default(),
        };
        let now = monotonic_ns();
        for svc in &runtime.applied.services {
            runtime.changed.insert(svc.addr, now);
        }
        runtime.rewrite_scheduling();
        runtime
    }

    /// Brings every adopted service's scheduling entries in line with its state, where they
    /// differ: maps pinned by an xlbd that knew only a source-hash bit for `-p` get persistence
    /// settings. Best effort: a service that cannot be written keeps what it had.
    fn rewrite_scheduling(&mut self) {
        for svc in &self.applied.services {
            let key = service_key(&svc.addr);
            let Some(entry) = self.dp.service(&key) else {
                continue;
            };
            let want = scheduling_entry(&svc.addr, &Scheduling::of(svc));
            // Settled or not is the sweep's, not the configuration's.
            if entry.scheduler == want.scheduler
                && entry.flags & !lb_common::service::SERVICE_F_SETTLED == want.flags
                && self.dp.persistence(entry.id) == want.persistence
            {
                continue;
            }
            let written = self
                .dp
                .upsert_service(key, want.scheduler, want.flags)
                .and_then(|id| self.dp.set_persistence(id, want.persistence));
            if let Err(e) = written {
                tracing::warn!(service = %svc.addr, error = %error_chain(&e), "rewriting an adopted service's scheduling");
            }
        }
    }

    /// The desired state.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// What the data path holds: the desired state as the health checks leave it.
    pub fn applied(&self) -> &DesiredState {
        &self.applied
    }

    /// The health engine's counters, when it checks the real servers.
    pub fn health_stats(&self) -> Option<EngineStats> {
        self.health.as_ref().map(Engine::stats)
    }

    /// The data path.
    pub fn dataplane(&mut self) -> &mut D {
        &mut self.dp
    }

    /// The data path, to read.
    pub fn datapath(&self) -> &D {
        &self.dp
    }

    /// The data-path ids of what is installed.
    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    /// The data path, handed on (to another runtime that adopts its maps).
    pub fn into_datapath(self) -> D {
        self.dp
    }

    /// Takes the desired state to `new` and the data path with it, whole or not at all.
    pub fn change_to(&mut self, new: DesiredState) -> Result<(), RuntimeError> {
        if let Some(engine) = &self.health {
            engine.update_targets(targets(&new)?)?;
        }
        let (effective, ramping) = self.effective(&new);
        if let Err(e) = self.transition(effective) {
            if let Some(engine) = &self.health {
                // Put the checks back as they were; the old targets were valid.
                let _ = targets(&self.desired).map(|t| engine.update_targets(t));
            }
            return Err(e);
        }
        self.desired = new;
        self.forget_clients_of_failed_servers();
        self.ramping = ramping;
        self.save()
    }

    /// Brings every service in line with the health checks' latest results. Returns whether
    /// anything changed.
    pub fn refresh(&mut self) -> Result<bool, RuntimeError> {
        let (effective, ramping) = self.effective(&self.desired);
        let changed = self.refresh_to(effective)?;
        self.ramping = ramping;
        Ok(changed)
    }

    /// Brings one service in line with the health checks' latest results, after a health event
    /// of one of its real servers: the others are neither recomputed nor touched. Returns
    /// whether anything changed.
    pub fn refresh_service(&mut self, service: &ServiceAddr) -> Result<bool, RuntimeError> {
        self.refresh_only(&[*service])
    }

    /// Brings the services with a slow start in progress in line with their weights now (every
    /// second or so): the others are not recomputed, and nothing is when no server ramps up.
    /// Returns whether anything changed.
    pub fn refresh_ramps(&mut self) -> Result<bool, RuntimeError> {
        // The same timer expires idle connections and brings the connection counts in line.
        self.sweep();
        self.refresh_ramping()
    }

    /// [`Self::refresh_ramps`] without the sweep: for a daemon that sweeps the pinned tables off
    /// its lock ([`sweep_tables`]).
    pub fn refresh_ramping(&mut self) -> Result<bool, RuntimeError> {
        if self.ramping.is_empty() {
            return Ok(false);
        }
        let ramping: Vec<ServiceAddr> = self.ramping.iter().copied().collect();
        self.refresh_only(&ramping)
    }

    /// Whether a slow start is in progress in some service.
    pub fn is_ramping(&self) -> bool {
        !self.ramping.is_empty()
    }

    /// Brings `services` in line with the health checks, and only them.
    fn refresh_only(&mut self, services: &[ServiceAddr]) -> Result<bool, RuntimeError> {
        let now = Instant::now();
        let mut effective = self.applied.clone();
        let mut ramping = Vec::with_capacity(services.len());
        for addr in services {
            let (Some(desired), Some(at)) = (
                self.desired.service(addr),
                effective.services.iter().position(|s| s.addr == *addr),
            ) else {
                ramping.push((*addr, false));
                continue;
            };
            let (reals, ramps) = self.effective_reals(desired, now);
            effective.services[at] = VirtualService {
                reals,
                ..desired.clone()
            };
            ramping.push((*addr, ramps));
        }
        let changed = self.refresh_to(effective)?;
        for (addr, ramps) in ramping {
            if ramps {
                self.ramping.insert(addr);
            } else {
                self.ramping.remove(&addr);
            }
        }
        Ok(changed)
    }

    fn refresh_to(&mut self, effective: DesiredState) -> Result<bool, RuntimeError> {
        if effective == self.applied && self.unsure.is_empty() {
            return Ok(false);
        }
        self.transition(effective)?;
        self.forget_clients_of_failed_servers();
        self.save()?;
        Ok(true)
    }

    /// Once a second (with [`Self::refresh_ramps`]): removes the connection-table entries idle
    /// longer than their timeout (their next packet is a new flow, scheduled again), holds the
    /// persistent clients that still have connections and lets the others lapse
    /// ([`expiry::sweep`]), and then corrects the connection counts from the entries left.
    /// One walk of the connection table.
    pub fn sweep(&mut self) {
        let inputs = self.sweep_inputs();
        if let Some(swept) = sweep_tables(&mut Through(&mut self.dp), &inputs, monotonic_ns()) {
            self.correct_connection_counts(&swept.counts);
            self.settle(&inputs, &swept.handshakes);
        }
    }

    /// What a sweep needs of the runtime ([`sweep_tables`]): the timeouts in force, each
    /// persistent service's settings, and the services it may settle.
    pub fn sweep_inputs(&self) -> SweepInputs {
        SweepInputs {
            timeouts: self.desired.timeouts,
            persistence: self.persistence_settings(),
            settling: self.settling(monotonic_ns()),
        }
    }

    /// The services a sweep at `now` may settle, by id: those whose choice of a server is their
    /// table's (`mh`, `sh`, `dh`, not persistent, no server with an upper threshold), not settled
    /// yet, and last changed a second ago or more, so that no packet is still being scheduled
    /// on a table they had before.
    fn settling(&self, now: u64) -> BTreeMap<u32, Settling> {
        let mut settling = BTreeMap::new();
        for svc in &self.applied.services {
            if self.settled.contains(&svc.addr) {
                continue;
            }
            let changed = self.changed.get(&svc.addr).copied();
            if changed.is_some_and(|at| now.saturating_sub(at) < SETTLE_AFTER_NS) {
                continue;
            }
            let entry = scheduling_entry(&svc.addr, &Scheduling::of(svc));
            if !lb_common::service::choice_is_the_tables(entry.scheduler, entry.flags)
                || svc.reals.iter().any(|r| r.upper_threshold != 0)
            {
                continue;
            }
            let key = service_key(&svc.addr);
            let Some(id) = self.dp.service(&key).map(|s| s.id) else {
                continue;
            };
            settling.insert(
                id,
                Settling {
                    addr: svc.addr,
                    scheduler: entry.scheduler,
                    flags: entry.flags,
                    changed,
                },
            );
        }
        settling
    }

    /// After a sweep made with `inputs`: settles each service of `inputs.settling` that has not
    /// changed since and whose handshakes in progress (`handshakes`, as the sweep read the
    /// embryonic table) are all on the server its table gives them now. Its SYNs then skip the
    /// embryonic table (`SERVICE_F_SETTLED`): a retransmitted SYN is scheduled again, to the
    /// server its first SYN went to. A service with a handshake elsewhere (its first SYN came
    /// before the table's last change) is tried again at the next sweep; the handshake ends
    /// or idles out within a minute.
    pub fn settle(&mut self, inputs: &SweepInputs, handshakes: &Handshakes) {
        for (id, settling) in &inputs.settling {
            if self.changed.get(&settling.addr).copied() != settling.changed
                || self.settled.contains(&settling.addr)
            {
                continue;
            }
            let key = service_key(&settling.addr);
            if self.dp.service(&key).map(|s| s.id) != Some(*id) {
                continue;
            }
            if let Some(flows) = handshakes.get(id).filter(|f| !f.is_empty()) {
                let Ok(table) = self.dp.maglev_table(&key) else {
                    continue;
                };
                if !flows
                    .iter()
                    .all(|&(slot, real)| table_choice(&table, slot) == Some(real))
                {
                    continue;
                }
            }
            match self.dp.settle_service(key, true) {
                Ok(()) => {
                    self.settled.insert(settling.addr);
                }
                Err(e) => tracing::warn!(
                    service = %settling.addr,
                    error = %error_chain(&e),
                    "settling a service (its SYNs keep asking the embryonic table)"
                ),
            }
        }
    }

    /// The persistence settings of each persistent service, by id.
    fn persistence_settings(&self) -> BTreeMap<u32, lb_common::PersistSettings> {
        self.applied
            .services
            .iter()
            .filter(|s| s.persistence.is_some())
            .filter_map(|svc| {
                let id = self.dp.service(&service_key(&svc.addr))?.id;
                Some((id, self.dp.persistence(id)?))
            })
            .collect()
    }

    /// Writes the active connections of every real server of a service that reads them (`lc`,
    /// `wlc`, `sed`, `nq`, `ovf`), and the connections (active and inactive) of every real server with thresholds
    /// (`-x`), from the connection table's `counts`: the data path only adds one for each new
    /// flow, so closed, reset and idled-out connections leave its counts here.
    pub fn correct_connection_counts(&mut self, counts: &ConnectionCounts) {
        let mut least = Vec::new();
        let mut limited = Vec::new();
        for svc in &self.applied.services {
            for real in &svc.reals {
                let Some(id) = self.real_id(&svc.addr, real.addr, real.port) else {
                    continue;
                };
                if svc.scheduler.counts_connections() {
                    least.push(id);
                }
                if real.upper_threshold != 0 {
                    limited.push(id);
                }
            }
        }
        if least.is_empty() && limited.is_empty() {
            return;
        }
        if !least.is_empty() {
            let active: Vec<(RealId, u32)> = least
                .iter()
                .map(|id| (*id, counts.get(id).map_or(0, |(active, _)| *active)))
                .collect();
            if let Err(e) = self.dp.set_connection_counts(&active) {
                tracing::warn!(error = %error_chain(&e), "writing the active connections");
            }
        }
        if !limited.is_empty() {
            let total: Vec<(RealId, u32)> = limited
                .iter()
                .map(|id| {
                    let (active, inactive) = counts.get(id).copied().unwrap_or_default();
                    (*id, active + inactive)
                })
                .collect();
            if let Err(e) = self.dp.set_threshold_counts(&total) {
                tracing::warn!(error = %error_chain(&e), "writing connections for the thresholds");
            }
        }
    }

    /// The real servers the health checks hold at weight 0 though the operator gave them a
    /// weight (failed), of the persistent services only or of every service.
    fn held_servers(&self, persistent_only: bool) -> BTreeSet<RealId> {
        let mut held_ids = BTreeSet::new();
        let applied_services = self.applied.services_by_addr();
        for svc in self
            .desired
            .services
            .iter()
            .filter(|s| !persistent_only || s.persistence.is_some())
        {
            let (Some(applied), Some(ids)) = (
                applied_services.get(&svc.addr),
                self.installed.services.get(&svc.addr),
            ) else {
                continue;
            };
            for real in svc.reals.iter().filter(|r| r.weight > 0) {
                let held = applied
                    .reals
                    .iter()
                    .find(|r| r.addr == real.addr && r.port == real.port)
                    .is_none_or(|r| r.weight == 0);
                if let (true, Some(&id)) = (held, ids.get(&SocketAddr::new(real.addr, real.port))) {
                    held_ids.insert(id);
                }
            }
        }
        held_ids
    }

    /// What the data path remembers for the servers the health checks have just failed, so
    /// that clients reach a server that works: their persistent clients (a server quiesced by
    /// the operator, weight 0, keeps them, as in IPVS), and their handshakes in progress (a
    /// SYN given to a server that then failed, refused by it or unanswered: in direct routing
    /// its reset goes around the balancer, so the entry would send the client's next SYN from
    /// that port to the failed server again). Established flows stay: a server failing a
    /// keyword check may well finish them.
    fn forget_clients_of_failed_servers(&mut self) {
        let down = self.held_servers(false);
        let newly_down: BTreeSet<RealId> = down.difference(&self.down).copied().collect();
        if !newly_down.is_empty() {
            match self.dp.forget_handshakes_of(&newly_down) {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        handshakes = n,
                        "handshakes given to failed servers forgotten"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "forgetting the handshakes of failed servers");
                }
            }
        }
        self.down = down;

        let failed = self.held_servers(true);
        let newly: BTreeSet<RealId> = failed.difference(&self.failed).copied().collect();
        if !newly.is_empty() {
            match self.dp.forget_persistent_clients_of(&newly) {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        clients = n,
                        "persistent clients of failed servers forgotten"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "forgetting the persistent clients of failed servers");
                    return;
                }
            }
        }
        self.failed = failed;
    }

    /// The desired state as the health checks leave it now, and the services whose weights
    /// ramp up.
    fn effective(&self, desired: &DesiredState) -> (DesiredState, BTreeSet<ServiceAddr>) {
        let now = Instant::now();
        let mut effective = desired.clone();
        let mut ramping = BTreeSet::new();
        for svc in &mut effective.services {
            let (reals, ramps) = self.effective_reals(svc, now);
            svc.reals = reals;
            if ramps {
                ramping.insert(svc.addr);
            }
        }
        (effective, ramping)
    }

    /// A service's real servers and weights as the health checks leave them at `now`, and
    /// whether a slow start is in progress (the weights change with time).
    fn effective_reals(&self, svc: &VirtualService, now: Instant) -> (Vec<RealServer>, bool) {
        let Some(engine) = &self.health else {
            return (svc.reals.clone(), false);
        };
        let effective = engine.effective_service(svc, &svc.health, now);
        let mut reals = effective.reals;
        // A failed server leaves the table but stays in the data path at weight 0, so that the
        // flows it still has keep reaching it (a server failing its keyword check may well
        // finish them); only new flows avoid it.
        for real in &svc.reals {
            if !reals
                .iter()
                .any(|r| r.addr == real.addr && r.port == real.port)
            {
                reals.push(RealServer { weight: 0, ..*real });
            }
        }
        reals.sort_by_key(|r| (r.addr, r.port));
        (reals, effective.ramp_ends.is_some())
    }

    /// Takes the data path from what it holds to `to`, step by step; when a step fails, undoes
    /// the steps done (the plan back is idempotent) and leaves `applied` as it was.
    fn transition(&mut self, to: DesiredState) -> Result<(), RuntimeError> {
        self.check_capacity(&to)?;
        let steps = self.plan_to(&to);
        let mut prebuilt = Tables::new();
        for (i, step) in steps.iter().enumerate() {
            if matches!(step, Step::RebuildTable { .. }) && prebuilt.is_empty() {
                prebuilt = self.build_tables(&steps[i..], &to);
            }
            if let Err(source) = self.execute(step, &to, &mut prebuilt) {
                tracing::warn!(%step, error = %error_chain(&source), "change refused: rolling back");
                let old = self.applied.clone();
                let mut undone = true;
                for undo in &plan(&to, &old) {
                    if let Err(e) = self.execute(undo, &old, &mut Tables::new()) {
                        tracing::error!(step = %undo, error = %error_chain(&e), "rollback step failed");
                        undone = false;
                    }
                }
                if !undone {
                    let touched = steps.iter().map(step_service);
                    self.unsure.extend(touched);
                    tracing::warn!(
                        services = self.unsure.len(),
                        "services left as the refused change and its rollback left them: the next \
                         change rewrites them whole"
                    );
                }
                // The ids may have changed (a server the rollback added back has a new one):
                // a restart must find the ones the maps hold.
                if let Err(e) = self.save() {
                    tracing::error!(error = %error_chain(&e), "saving the state after a refused change");
                }
                return Err(RuntimeError::Dataplane {
                    step: Box::new(step.clone()),
                    source: Box::new(source),
                });
            }
        }
        if !steps.is_empty() {
            tracing::info!(steps = steps.len(), "data path updated");
        }
        if let Some(next_hops) = &self.next_hops {
            // Only said here: the neighbour thread does the netlink work without the lock.
            next_hops.keep_resolved(added_reals(&steps));
        }
        self.applied = to;
        self.unsure.clear();
        Ok(())
    }

    /// The steps from what the data path holds to `to`: [`plan`] from the applied state, and
    /// for each service in an unknown state ([`Self::unsure`]) every step that makes it `to`'s
    /// whatever it holds (each is harmless where the data path already agrees): its scheduling,
    /// every real server's entry and its table, or its removal; and the removal of every real
    /// server it may still hold that `to` does not have.
    fn plan_to(&self, to: &DesiredState) -> Vec<Step> {
        if self.unsure.is_empty() {
            return plan(&self.applied, to);
        }
        let mut known = self.applied.clone();
        known.services.retain(|s| !self.unsure.contains(&s.addr));
        let planned = plan(&known, to);
        let mut gone = Vec::new();
        let mut rewrites = Vec::new();
        let mut leftovers = Vec::new();
        for addr in &self.unsure {
            let installed: Vec<SocketAddr> = self
                .installed
                .services
                .get(addr)
                .map(|reals| reals.keys().copied().collect())
                .unwrap_or_default();
            let Some(svc) = to.service(addr) else {
                gone.push(Step::RemoveService { service: *addr });
                gone.extend(installed.iter().map(|real| Step::RemoveReal {
                    service: *addr,
                    addr: real.ip(),
                    port: real.port(),
                }));
                continue;
            };
            rewrites.push(Step::SetScheduling {
                service: *addr,
                scheduling: crate::plan::Scheduling::of(svc),
            });
            for real in &installed {
                match svc
                    .reals
                    .iter()
                    .find(|r| SocketAddr::new(r.addr, r.port) == *real)
                {
                    Some(r) => rewrites.push(Step::UpdateReal {
                        service: *addr,
                        real: *r,
                    }),
                    None => leftovers.push(Step::RemoveReal {
                        service: *addr,
                        addr: real.ip(),
                        port: real.port(),
                    }),
                }
            }
        }
        // Removals first (room for what comes), the rewrites before the tables are rebuilt, the
        // real servers no table holds any more last.
        let tables = planned
            .iter()
            .position(|s| matches!(s, Step::RebuildTable { .. }))
            .unwrap_or(planned.len());
        let mut steps = gone;
        steps.extend_from_slice(&planned[..tables]);
        steps.extend(rewrites);
        steps.extend_from_slice(&planned[tables..]);
        steps.extend(leftovers);
        steps
    }

    /// Refuses a state with more services or real servers than the data path holds, before
    /// anything is touched.
    fn check_capacity(&self, to: &DesiredState) -> Result<(), RuntimeError> {
        let capacity = self.dp.capacity();
        let services = to.services.len();
        let reals: usize = to.services.iter().map(|s| s.reals.len()).sum();
        let message = if services > capacity.services as usize {
            capacity::services_full(capacity.services)
        } else if reals > capacity.reals as usize {
            capacity::reals_full(capacity.reals)
        } else {
            return Ok(());
        };
        Err(RuntimeError::Capacity { message })
    }

    fn execute(
        &mut self,
        step: &Step,
        target: &DesiredState,
        prebuilt: &mut Tables,
    ) -> Result<(), DataplaneError> {
        // Whatever the step, the service is settled again only a second after it (see
        // Self::settle); its table and scheduling writes clear the flag in the data path.
        let changed = step_service(step);
        self.changed.insert(changed, monotonic_ns());
        self.settled.remove(&changed);
        match step {
            Step::AddService {
                service,
                scheduling,
            }
            | Step::SetScheduling {
                service,
                scheduling,
            } => {
                let entry = scheduling_entry(service, scheduling);
                let id =
                    self.dp
                        .upsert_service(service_key(service), entry.scheduler, entry.flags)?;
                // A service's settings are cleared when it is removed: a new one that is not
                // persistent needs no write.
                if entry.persistence.is_some() || matches!(step, Step::SetScheduling { .. }) {
                    self.dp.set_persistence(id, entry.persistence)?;
                }
                // Servers the data path still holds for a service it does not: a rollback adding
                // back a service removed before its servers were. They become the new entry's.
                if matches!(step, Step::AddService { .. }) {
                    for real in self.installed_ids(service) {
                        self.dp.adopt_real(id, real)?;
                    }
                }
                self.installed.services.entry(*service).or_default();
            }
            Step::AddReal { service, real } => {
                let key = service_key(service);
                let reals = self.installed.services.entry(*service).or_default();
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    reals.entry(SocketAddr::new(real.addr, real.port))
                {
                    // The plan adds a service before its servers.
                    let svc = self
                        .dp
                        .service(&key)
                        .ok_or(DataplaneError::NoSuchService { key })?;
                    let id = self.dp.add_real(svc.id, real_entry(real))?;
                    slot.insert(id);
                    if real.upper_threshold != 0 {
                        // An overloaded server is passed by: the table alone no longer
                        // says where a retransmitted SYN goes.
                        self.dp.settle_service(key, false)?;
                    }
                    if real.upper_threshold != 0 || real.lower_threshold != 0 {
                        self.dp.set_real_thresholds(
                            id,
                            real.upper_threshold,
                            real.lower_threshold,
                        )?;
                    }
                }
            }
            Step::UpdateReal { service, real } => {
                if let Some(id) = self.real_id(service, real.addr, real.port) {
                    if real.upper_threshold != 0 {
                        // As for a new server with a threshold.
                        self.dp.settle_service(service_key(service), false)?;
                    }
                    self.dp.update_real(id, real_entry(real))?;
                    self.dp
                        .set_real_thresholds(id, real.upper_threshold, real.lower_threshold)?;
                }
            }
            Step::RebuildTable { service } => self.rebuild(service, target, prebuilt)?,
            Step::RemoveReal {
                service,
                addr,
                port,
            } => {
                // The id is forgotten once the data path has let it go: a refused removal keeps
                // it, so that the rollback finds the server where it still is.
                if let Some(id) = self.real_id(service, *addr, *port) {
                    self.dp.remove_real(id)?;
                    if let Some(reals) = self.installed.services.get_mut(service) {
                        reals.remove(&SocketAddr::new(*addr, *port));
                    }
                }
            }
            Step::RemoveService { service } => {
                let key = service_key(service);
                if self.dp.service(&key).is_some() {
                    self.dp.remove_service(key)?;
                }
                // Its real servers are removed by the steps that follow; keep their ids until then.
                if self
                    .installed
                    .services
                    .get(service)
                    .is_some_and(BTreeMap::is_empty)
                {
                    self.installed.services.remove(service);
                }
                self.changed.remove(service);
            }
        }
        if let Step::RemoveReal { service, .. } = step {
            let name = *service;
            let gone = target.service(service).is_none();
            if gone
                && self
                    .installed
                    .services
                    .get(&name)
                    .is_some_and(BTreeMap::is_empty)
            {
                self.installed.services.remove(&name);
            }
        }
        Ok(())
    }

    /// The ids of the real servers the data path holds for `service`.
    fn installed_ids(&self, service: &ServiceAddr) -> Vec<RealId> {
        self.installed
            .services
            .get(service)
            .map(|reals| reals.values().copied().collect())
            .unwrap_or_default()
    }

    fn real_id(&self, service: &ServiceAddr, addr: IpAddr, port: u16) -> Option<RealId> {
        self.installed
            .services
            .get(service)?
            .get(&SocketAddr::new(addr, port))
            .copied()
    }

    fn rebuild(
        &mut self,
        service: &ServiceAddr,
        target: &DesiredState,
        prebuilt: &mut Tables,
    ) -> Result<(), DataplaneError> {
        let Some(job) = self.table_job(service, target) else {
            return Ok(());
        };
        let table = match prebuilt.remove(service) {
            Some(table) => table,
            None => job.build(),
        };
        let key = service_key(service);
        self.dp.set_maglev_table(key, &table)?;
        if job.scheduler.counts_connections() {
            let weights: Vec<(RealId, u32)> =
                job.backends.iter().map(|(_, id, w)| (*id, *w)).collect();
            self.dp.set_real_weights(&weights)?;
        }
        // ovf's servers are full beyond their weight; a service that is no longer ovf (its
        // scheduler changed, which rebuilds its table) lets its servers' marks go.
        let ids: Vec<RealId> = job.backends.iter().map(|(_, id, _)| *id).collect();
        self.dp
            .set_weight_caps(&ids, job.scheduler == Scheduler::Overflow)?;
        if job.scheduler.is_sequence() {
            // Each CPU starts its walk of the new sequence at its own place.
            let len = table.iter().take_while(|&&real| real != 0).count();
            if let Some(entry) = self.dp.service(&key) {
                self.dp.spread_sequence_cursors(entry.id, len)?;
            }
        }
        Ok(())
    }

    /// What the Maglev table of `service` is built from, as `target` has it.
    fn table_job(&self, service: &ServiceAddr, target: &DesiredState) -> Option<TableJob> {
        let svc = target.service(service)?;
        let backends = svc
            .reals
            .iter()
            .filter_map(|real| {
                let id = self.real_id(service, real.addr, real.port)?;
                Some((identity(real), id, real.weight))
            })
            .collect();
        Some(TableJob {
            service: *service,
            scheduler: svc.scheduler,
            backends,
        })
    }

    /// The tables of the run of [`Step::RebuildTable`] that `steps` starts with, built on every
    /// CPU at once (a restore of hundreds of services spends most of its time building them);
    /// none for a single table, which its step builds.
    fn build_tables(&self, steps: &[Step], target: &DesiredState) -> Tables {
        let jobs: Vec<TableJob> = steps
            .iter()
            .map_while(|step| match step {
                Step::RebuildTable { service } => Some(service),
                _ => None,
            })
            .filter_map(|service| self.table_job(service, target))
            .collect();
        if jobs.len() < 2 {
            return Tables::new();
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(jobs.len());
        let per_thread = jobs.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = jobs
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|job| (job.service, job.build()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("a Maglev build panicked"))
                .collect()
        })
    }

    fn save(&mut self) -> Result<(), RuntimeError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        // Compact, and made from the pieces of the last file where services did not change
        // (save_cache.rs): with thousands of real servers the file is written after every
        // change. `applied` is left out when it is the desired state (a reader takes the
        // desired state then).
        let applied = (self.applied != self.desired).then_some(&self.applied);
        let text = self
            .save_cache
            .json(&self.desired, applied, &self.installed, &self.unsure)
            .map_err(std::io::Error::other);
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let text = text?;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir)?;
            }
            // Made whole in memory and written by one call (through an 8 KiB buffer, 628 KB at
            // 512 services × 8 servers took 77 writes), then synced before it replaces the old
            // file, and the rename synced in its directory: after a crash or a power cut the
            // file is the old state or the new one, never a truncated one, which xlbd would
            // not read (it would start from the configuration file alone).
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &text)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, path)?;
            // A file system that cannot sync a directory (EINVAL) still has the file whole.
            match std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all() {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                other => other,
            }
        };
        write().map_err(|source| RuntimeError::Save {
            path: path.clone(),
            source,
        })
    }

    /// Zeroes the counters of one service (and its servers) or of all.
    pub fn zero(&mut self, service: Option<&ServiceAddr>) -> Result<(), DataplaneError> {
        let services: Vec<ServiceAddr> = match service {
            Some(s) => vec![*s],
            None => self.desired.services.iter().map(|s| s.addr).collect(),
        };
        for addr in services {
            if let Some(svc) = self.dp.service(&service_key(&addr)) {
                self.dp.zero_service_counters(svc.id)?;
            }
            for id in self.installed_ids(&addr) {
                self.dp.zero_real_counters(id)?;
            }
        }
        Ok(())
    }

    /// The listing of every service with counters, connection counts and the given rates.
    pub fn listing(&self, rates: &RateEstimator) -> Result<Listing, DataplaneError> {
        self.listing_with(rates, &self.connection_counts()?)
    }

    /// The listing of one service (`-L -t ADDR`), as [`Self::listing`] lists it, without the
    /// others: their counters are not read nor listed, nor sent. Empty when there is no such
    /// service.
    pub fn listing_of(
        &self,
        rates: &RateEstimator,
        service: &ServiceAddr,
    ) -> Result<Listing, DataplaneError> {
        self.listing_filtered(rates, &self.connection_counts()?, Some(service))
    }

    /// [`Self::listing`] with connection counts taken earlier ([`Self::connection_counts`]):
    /// what the metrics serve, so that a scrape reads the counters but not the whole
    /// connection table.
    pub fn listing_with(
        &self,
        rates: &RateEstimator,
        conns: &ConnectionCounts,
    ) -> Result<Listing, DataplaneError> {
        self.listing_filtered(rates, conns, None)
    }

    /// The listing of every service, or of `only`.
    fn listing_filtered(
        &self,
        rates: &RateEstimator,
        conns: &ConnectionCounts,
        only: Option<&ServiceAddr>,
    ) -> Result<Listing, DataplaneError> {
        let mut listing = Listing::from_state(&self.desired);
        if let Some(only) = only {
            listing.services.retain(|s| s.addr == *only);
            if listing.services.is_empty() {
                return Ok(listing);
            }
        }
        let persistent = self.persistent_counts()?;
        let health: BTreeMap<(ServiceAddr, SocketAddr), RealHealth> = self
            .health
            .iter()
            .flat_map(|engine| engine.snapshot())
            .filter(|status| only.is_none_or(|only| status.service == *only))
            .map(|status| {
                (
                    (status.service, status.real),
                    RealHealth {
                        state: status.health.to_string(),
                        check: format!("{} {}", status.kind, status.checked),
                        last_ok: status.last.as_ref().map(|r| r.ok),
                        latency_us: status.last.as_ref().map(|r| r.latency.as_micros() as u64),
                        last_failure: status.last_failure,
                    },
                )
            })
            .collect();
        let applied_services = self.applied.services_by_addr();
        let counters = match only {
            None => self.dp.all_counters()?,
            Some(service) => self.counters_of(service)?,
        };
        for svc in &mut listing.services {
            if let Some(entry) = self.dp.service(&service_key(&svc.addr)) {
                svc.stats = stats(counters.service(entry.id));
                svc.rates = rates.service(entry.id);
                svc.settled = entry.flags & lb_common::service::SERVICE_F_SETTLED != 0;
            }
            let applied = applied_services.get(&svc.addr).copied();
            for real in &mut svc.reals {
                // The weight in force: 0 while the health checks hold the server out.
                real.weight = applied
                    .and_then(|a| {
                        a.reals
                            .iter()
                            .find(|r| r.addr == real.addr && r.port == real.port)
                    })
                    .map_or(0, |r| r.weight);
                real.health = health
                    .get(&(svc.addr, SocketAddr::new(real.addr, real.port)))
                    .cloned();
                self.fill_real(&svc.addr, real, conns, rates, &counters);
                if let Some(id) = self.real_id(&svc.addr, real.addr, real.port) {
                    real.persistent_conns = persistent.get(&id).copied().unwrap_or(0);
                }
            }
            // A real server in force that is not configured is the sorry server, in use while
            // the quorum is lost: listed as keepalived's would be (it adds the sorry server to
            // the IPVS table), with "sorry" for a health state. `-S` saves only what is configured.
            let extra: Vec<RealServer> = applied
                .map(|a| {
                    a.reals
                        .iter()
                        .filter(|r| {
                            !svc.reals
                                .iter()
                                .any(|l| (l.addr, l.port) == (r.addr, r.port))
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for sorry in extra {
                let mut real = RealListing::idle(&sorry);
                real.health = Some(RealHealth {
                    state: "sorry".to_owned(),
                    check: "sorry server: quorum lost".to_owned(),
                    last_ok: None,
                    latency_us: None,
                    last_failure: None,
                });
                self.fill_real(&svc.addr, &mut real, conns, rates, &counters);
                svc.reals.push(real);
            }
        }
        Ok(listing)
    }

    /// The counters of `service` and of its real servers in the data path, read one by one (for
    /// a few ids cheaper than every id at once), in [`AllCounters`]' form.
    fn counters_of(&self, service: &ServiceAddr) -> Result<AllCounters, DataplaneError> {
        /// `value` at `index` of `by_id`, which grows to hold it.
        fn put(by_id: &mut Vec<lb_common::Counters>, index: u32, value: lb_common::Counters) {
            let index = index as usize;
            if by_id.len() <= index {
                by_id.resize(index + 1, lb_common::Counters::default());
            }
            by_id[index] = value;
        }
        let mut counters = AllCounters::default();
        if let Some(entry) = self.dp.service(&service_key(service)) {
            put(
                &mut counters.services,
                entry.id,
                self.dp.service_counters(entry.id)?,
            );
        }
        for id in self.installed_ids(service) {
            put(&mut counters.reals, id, self.dp.real_counters(id)?);
        }
        Ok(counters)
    }

    /// A listed real server's counters, rates and connections, when it is in the data path.
    fn fill_real(
        &self,
        service: &ServiceAddr,
        real: &mut RealListing,
        conns: &ConnectionCounts,
        rates: &RateEstimator,
        counters: &AllCounters,
    ) {
        let Some(id) = self.real_id(service, real.addr, real.port) else {
            return;
        };
        real.stats = stats(counters.real(id));
        real.rates = rates.real(id);
        let (active, inactive) = conns.get(&id).copied().unwrap_or((0, 0));
        real.active_conns = active;
        real.inactive_conns = inactive;
    }

    /// Active and inactive connections per real server ([`count_connections`]). Walks the whole
    /// connection table.
    pub fn connection_counts(&self) -> Result<ConnectionCounts, DataplaneError> {
        Ok(count_connections(
            self.dp.connections()?,
            monotonic_ns(),
            &self.desired.timeouts,
        ))
    }

    /// The connection table as `-L -c` lists it, with each entry's seconds left of its timeout
    /// (0 for one that idled out, until the sweep removes it), and the persistent clients.
    pub fn connections(&self) -> Result<Vec<ConnectionListing>, DataplaneError> {
        let now = monotonic_ns();
        let mut reals: BTreeMap<RealId, (ServiceAddr, IpAddr, u16)> = BTreeMap::new();
        for svc in &self.desired.services {
            for real in &svc.reals {
                if let Some(id) = self.real_id(&svc.addr, real.addr, real.port) {
                    reals.insert(id, (svc.addr, real.addr, real.port));
                }
            }
        }
        let mut out = Vec::new();
        for (flow, conn) in self.dp.connections()? {
            let Some((service, addr, port)) = reals.get(&conn.real) else {
                continue;
            };
            let state = ConnState::of(&flow, &conn, now, &self.desired.timeouts);
            out.push(ConnectionListing {
                protocol: service.protocol,
                expire_secs: state.expire_secs,
                state: state.name.to_owned(),
                source: SocketAddr::new(
                    flow_addr(&flow.src, flow.family),
                    u16::from_be(flow.sport),
                ),
                virtual_addr: SocketAddr::new(service.addr, u16::from_be(flow.dport)),
                destination: SocketAddr::new(*addr, *port),
            });
        }
        out.extend(self.persistent_clients(now)?);
        Ok(out)
    }

    /// The live persistent clients (client networks) of persistent services, as `-L -c` lists
    /// IPVS's persistence templates: state NONE, the client's address under the mask with port
    /// 0, the service, the real server, and the seconds left of the timeout.
    fn persistent_clients(&self, now: u64) -> Result<Vec<ConnectionListing>, DataplaneError> {
        let mut services: BTreeMap<u32, (ServiceAddr, u64)> = BTreeMap::new();
        let mut reals: BTreeMap<RealId, (IpAddr, u16)> = BTreeMap::new();
        for svc in self
            .desired
            .services
            .iter()
            .filter(|s| s.persistence.is_some())
        {
            let Some(entry) = self.dp.service(&service_key(&svc.addr)) else {
                continue;
            };
            let Some(settings) = self.dp.persistence(entry.id) else {
                continue;
            };
            services.insert(entry.id, (svc.addr, settings.timeout_ns));
            for real in &svc.reals {
                if let Some(id) = self.real_id(&svc.addr, real.addr, real.port) {
                    reals.insert(id, (real.addr, real.port));
                }
            }
        }
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (key, client) in self.dp.persistent_clients()? {
            let (Some((service, timeout_ns)), Some((addr, port))) =
                (services.get(&key.service), reals.get(&client.real))
            else {
                continue;
            };
            let idle = now.saturating_sub(client.last_seen_ns);
            if idle >= *timeout_ns {
                continue;
            }
            out.push(ConnectionListing {
                protocol: service.protocol,
                expire_secs: ((timeout_ns - idle) / 1_000_000_000) as u32,
                state: "NONE".to_owned(),
                source: SocketAddr::new(flow_addr(&key.client, key.family), 0),
                virtual_addr: SocketAddr::new(service.addr, service.port),
                destination: SocketAddr::new(*addr, *port),
            });
        }
        Ok(out)
    }

    /// Live persistent clients per real server (`--persistent-conn`'s PersistConn).
    fn persistent_counts(&self) -> Result<BTreeMap<RealId, u32>, DataplaneError> {
        let mut counts = BTreeMap::new();
        if self
            .desired
            .services
            .iter()
            .all(|s| s.persistence.is_none())
        {
            return Ok(counts);
        }
        let now = monotonic_ns();
        let mut timeouts: BTreeMap<u32, u64> = BTreeMap::new();
        for (key, client) in self.dp.persistent_clients()? {
            let timeout = *timeouts
                .entry(key.service)
                .or_insert_with(|| self.dp.persistence(key.service).map_or(0, |s| s.timeout_ns));
            if now.saturating_sub(client.last_seen_ns) < timeout {
                *counts.entry(client.real).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Forgets every tracked connection.
    pub fn flush_connections(&mut self) -> Result<usize, DataplaneError> {
        self.dp.flush_connections()
    }

    /// Takes a sample of every counter for the rate estimator.
    pub fn sample(&self, rates: &mut RateEstimator) {
        let counters = match self.dp.all_counters() {
            Ok(counters) => counters,
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "no rate sample this time: the counters cannot be read");
                return;
            }
        };
        let mut services = BTreeMap::new();
        let mut reals = BTreeMap::new();
        for svc in &self.desired.services {
            if let Some(entry) = self.dp.service(&service_key(&svc.addr)) {
                services.insert(entry.id, counters.service(entry.id));
            }
            for id in self
                .installed
                .services
                .get(&svc.addr)
                .into_iter()
                .flat_map(|r| r.values())
            {
                reals.insert(*id, counters.real(*id));
            }
        }
        rates.update(monotonic_ns(), services, reals);
    }
}

/// What a sweep needs of the runtime ([`Runtime::sweep_inputs`]).
#[derive(Clone, Debug, Default)]
pub struct SweepInputs {
    /// The connection timeouts in force.
    pub timeouts: ConnectionTimeouts,
    /// The persistence settings of each persistent service, by id.
    pub persistence: BTreeMap<u32, lb_common::PersistSettings>,
    /// The services the sweep may settle ([`Runtime::settle`]), by id.
    pub settling: BTreeMap<u32, Settling>,
}

/// A service a sweep may settle: what the sweep needs to work out the table slot of each of
/// its handshakes, and when the runtime last changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settling {
    /// The service.
    pub addr: ServiceAddr,
    /// Its `SCHED_*`.
    pub scheduler: u8,
    /// Its `SERVICE_F_*`.
    pub flags: u32,
    /// When the runtime last changed it (monotonic ns), if it did.
    pub changed: Option<u64>,
}

/// The handshakes in progress (embryonic flows) of the services being settled, by service id:
/// each flow's slot of its service's table ([`lb_common::service::table_slot`]) and its real
/// server.
pub type Handshakes = BTreeMap<u32, Vec<(u32, RealId)>>;

/// What one sweep found ([`sweep_tables`]).
#[derive(Clone, Debug, Default)]
pub struct Swept {
    /// The connection counts of the entries left.
    pub counts: ConnectionCounts,
    /// The handshakes of the services of [`SweepInputs::settling`].
    pub handshakes: Handshakes,
}

/// How long after its last change a service may be settled: longer than a packet takes
/// through the data path, so that none is still scheduled on a table it had before.
pub const SETTLE_AFTER_NS: u64 = 1_000_000_000;

/// The server the data path gives a flow whose walk starts at `slot` of `table`, when no
/// server is overloaded (schedule.rs, `first_admitted`): the slot's, or the first slot's when
/// it is empty; `None` for an empty table.
fn table_choice(table: &[u32], slot: u32) -> Option<RealId> {
    let real = match table.get(slot as usize).copied()? {
        0 => *table.first()?,
        real => real,
    };
    (real != 0).then_some(real)
}

/// One sweep of `tables` at `now` ([`expiry::sweep`]): removes the entries idle past their
/// timeouts, holds the persistent clients with live connections and removes the lapsed ones;
/// returns the connection counts of the entries left and the handshakes of the services being
/// settled, or `None` when the connection table could not be read (logged). Every write is best effort, logged when refused, and only touches an
/// entry still as it was read, so the sweep may run while the runtime changes the data path.
pub fn sweep_tables(
    tables: &mut impl SweptTables,
    inputs: &SweepInputs,
    now: u64,
) -> Option<Swept> {
    // The connection filter's standby half is emptied before the table is read and gets the
    // bits of what was read (lb_common::conn_filter); a flow written meanwhile set its own.
    let filter = tables.connection_filter();
    let build = filter.as_ref().map(|f| f.begin_build());
    let entries = match tables.connections() {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "reading the connection table to expire idle connections");
            return None;
        }
    };
    if let (Some(filter), Some(build)) = (&filter, build) {
        let was_on = filter.is_on();
        let on = filter.finish_build(
            build,
            entries
                .iter()
                .filter(|(_, c)| c.flags & lb_common::conntrack::CONN_F_EMBRYONIC == 0)
                .map(|(flow, _)| flow),
        );
        // The share of bits set is counted (a walk of a half) only for an event that is logged.
        if on && !was_on {
            tracing::info!(
                bits_set = filter.fill(),
                "connection filter built: new flows' SYNs skip the connection table's lookup"
            );
        } else {
            tracing::debug!(bits_set = filter.fill(), "connection filter built again");
        }
    }
    let mut handshakes = Handshakes::new();
    if !inputs.settling.is_empty() {
        // Idled-out handshakes too: the sweep's removal of one is best effort.
        for (flow, conn) in &entries {
            if conn.flags & lb_common::conntrack::CONN_F_EMBRYONIC == 0 {
                continue;
            }
            if let Some(s) = inputs.settling.get(&conn.service) {
                let slot = lb_common::service::table_slot(s.scheduler, s.flags, flow);
                handshakes
                    .entry(conn.service)
                    .or_default()
                    .push((slot, conn.real));
            }
        }
    }
    let clients = if inputs.persistence.is_empty() {
        Vec::new()
    } else {
        tables.persistent_clients().unwrap_or_else(|e| {
            tracing::warn!(error = %error_chain(&e), "reading the persistence table to hold its clients");
            Vec::new()
        })
    };
    let swept = expiry::sweep(
        entries,
        &clients,
        &inputs.persistence,
        &inputs.timeouts,
        now,
    );
    if !swept.expired.is_empty() {
        match tables.expire_connections(&swept.expired) {
            Ok(n) => tracing::debug!(expired = n, "idle connections expired"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "expiring idle connections"),
        }
    }
    if !swept.held.is_empty() {
        if let Err(e) = tables.hold_persistent_clients(&swept.held) {
            tracing::warn!(error = %error_chain(&e), "holding persistent clients with live connections");
        }
    }
    if !swept.lapsed.is_empty() {
        if let Err(e) = tables.expire_persistent_clients(&swept.lapsed) {
            tracing::warn!(error = %error_chain(&e), "expiring persistent clients");
        }
    }
    Some(Swept {
        counts: count_connections(swept.live, now, &inputs.timeouts),
        handshakes,
    })
}

/// (active, inactive) connections by real server, from [`Runtime::connection_counts`].
pub type ConnectionCounts = BTreeMap<RealId, (u32, u32)>;

/// Active and inactive connections per real server in the connection table's `entries` (read at
/// `now_ns`), as ipvsadm counts them: a TCP connection is active until it closes or idles out;
/// embryonic (SYN_RECV) and closing TCP flows and UDP flows are inactive. An entry past its
/// timeout counts until the sweep removes it (the data path still follows it until then).
pub fn count_connections(
    entries: impl IntoIterator<Item = (lb_common::FlowKey, lb_common::Connection)>,
    now_ns: u64,
    timeouts: &ConnectionTimeouts,
) -> ConnectionCounts {
    let mut counts = ConnectionCounts::new();
    for (flow, conn) in entries {
        let state = ConnState::of(&flow, &conn, now_ns, timeouts);
        let entry = counts.entry(conn.real).or_default();
        if state.active {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    counts
}

/// Maglev tables built ahead of their steps, by service.
type Tables = std::collections::HashMap<ServiceAddr, Vec<u32>>;

/// A service's real servers as the table builders take them: (identity, id, weight).
struct TableJob {
    service: ServiceAddr,
    scheduler: Scheduler,
    backends: Vec<(Vec<u8>, RealId, u32)>,
}

impl TableJob {
    fn build(&self) -> Vec<u32> {
        let weights = || -> Vec<(RealId, u32)> {
            self.backends
                .iter()
                .map(|(_, id, weight)| (*id, *weight))
                .collect()
        };
        match self.scheduler {
            Scheduler::RoundRobin => return sequence::table(&sequence::round_robin(&weights())),
            Scheduler::WeightedRoundRobin => {
                return sequence::table(&sequence::weighted_round_robin(&weights()))
            }
            Scheduler::LeastConnection
            | Scheduler::WeightedLeastConnection
            | Scheduler::ShortestExpectedDelay
            | Scheduler::NeverQueue => {
                return sequence::cyclic_table(&sequence::round_robin(&weights()))
            }
            Scheduler::WeightedFailover | Scheduler::Overflow => {
                return sequence::table(&sequence::by_weight(&weights()))
            }
            Scheduler::SourceHash | Scheduler::DestinationHash | Scheduler::Maglev => {}
        }
        let backends: Vec<maglev::Backend<'_>> = self
            .backends
            .iter()
            .map(|(identity, id, weight)| maglev::Backend {
                identity,
                id: *id,
                weight: *weight,
            })
            .collect();
        maglev::build(&backends)
    }
}

/// The service a step is about.
fn step_service(step: &Step) -> ServiceAddr {
    match step {
        Step::AddService { service, .. }
        | Step::SetScheduling { service, .. }
        | Step::AddReal { service, .. }
        | Step::UpdateReal { service, .. }
        | Step::RebuildTable { service }
        | Step::RemoveReal { service, .. }
        | Step::RemoveService { service } => *service,
    }
}

/// The addresses of the real servers the steps add, whose next hops the data path needs.
fn added_reals(steps: &[Step]) -> BTreeSet<IpAddr> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::AddReal { real, .. } => Some(real.addr),
            _ => None,
        })
        .collect()
}

/// How ipvsadm would see a tracked connection.
struct ConnState {
    active: bool,
    name: &'static str,
    expire_secs: u32,
}

impl ConnState {
    /// An entry idle past its timeout is still the data path's (its packets still follow it)
    /// until the next sweep removes it ([`Runtime::sweep`], within a second): it is listed with
    /// 0 seconds left, and counted.
    fn of(
        flow: &lb_common::FlowKey,
        conn: &lb_common::Connection,
        now_ns: u64,
        timeouts: &ConnectionTimeouts,
    ) -> Self {
        // An embryonic flow (a SYN seen, in the embryonic table) is IPVS's SYN_RECV, an
        // inactive connection.
        let kind = ConnKind::of(flow, conn);
        let (active, name) = match kind {
            ConnKind::Udp => (false, "UDP"),
            ConnKind::Handshake => (false, "SYN_RECV"),
            ConnKind::Closing => (false, "FIN_WAIT"),
            ConnKind::Established => (true, "ESTABLISHED"),
        };
        let timeout = u64::from(kind.timeout_secs(timeouts));
        let idle = now_ns.saturating_sub(conn.last_seen_ns) / 1_000_000_000;
        Self {
            active,
            name,
            expire_secs: timeout.saturating_sub(idle) as u32,
        }
    }
}

fn flow_addr(words: &[u32; 4], family: u8) -> IpAddr {
    if family == lb_common::FAMILY_V6 {
        IpAddr::V6(std::net::Ipv6Addr::from(
            bytemuck::cast::<[u32; 4], [u8; 16]>(*words),
        ))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(words[0])))
    }
}

/// The health-check targets of every service of `state`.
fn targets(state: &DesiredState) -> Result<Vec<Target>, RuntimeError> {
    let mut all = Vec::new();
    for svc in &state.services {
        all.extend(Target::for_service(svc, &svc.health, &svc.real_checks)?);
    }
    Ok(all)
}

fn stats(c: lb_common::Counters) -> Stats {
    Stats {
        conns: c.conns,
        in_pkts: c.packets,
        out_pkts: 0,
        in_bytes: c.bytes,
        out_bytes: 0,
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the data path's `bpf_ktime_get_coarse_ns`, which
/// lags it by at most a tick.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; a zero would only make every connection look old.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        .unwrap_or(0)
}

type Samples = BTreeMap<u32, lb_common::Counters>;

/// Per-second rates from two samples of the counters, as ipvsadm's `--rate` shows them.
#[derive(Default)]
pub struct RateEstimator {
    last: Option<(u64, Samples, Samples)>,
    services: BTreeMap<u32, Rates>,
    reals: BTreeMap<u32, Rates>,
}

impl RateEstimator {
    /// Records a sample taken at `now_ns`; rates are over the time since the previous one.
    pub fn update(&mut self, now_ns: u64, services: Samples, reals: Samples) {
        if let Some((then, old_services, old_reals)) = &self.last {
            let secs = (now_ns.saturating_sub(*then)) as f64 / 1e9;
            if secs > 0.0 {
                self.services = rates_between(old_services, &services, secs);
                self.reals = rates_between(old_reals, &reals, secs);
            }
        }
        self.last = Some((now_ns, services, reals));
    }

    /// A service's rates.
    pub fn service(&self, id: u32) -> Rates {
        self.services.get(&id).copied().unwrap_or_default()
    }

    /// A real server's rates.
    pub fn real(&self, id: RealId) -> Rates {
        self.reals.get(&id).copied().unwrap_or_default()
    }
}

fn rates_between(old: &Samples, new: &Samples, secs: f64) -> BTreeMap<u32, Rates> {
    new.iter()
        .map(|(id, n)| {
            let o = old.get(id).copied().unwrap_or_default();
            let per_sec = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs).round() as u64;
            (
                *id,
                Rates {
                    cps: per_sec(o.conns, n.conns),
                    in_pps: per_sec(o.packets, n.packets),
                    out_pps: 0,
                    in_bps: per_sec(o.bytes, n.bytes),
                    out_bps: 0,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_count_as_ipvsadm_counts_them() {
        const SECOND: u64 = 1_000_000_000;
        let now = 10_000 * SECOND;
        let entry = |proto: u8, real: u32, flags: u32, idle_secs: u64| {
            let flow = lb_common::FlowKey {
                proto,
                ..Default::default()
            };
            let conn = lb_common::Connection {
                real,
                flags,
                last_seen_ns: now - idle_secs * SECOND,
                ..Default::default()
            };
            (flow, conn)
        };
        let tcp = lb_common::PROTO_TCP;
        let closing = lb_common::conntrack::CONN_F_CLOSING;
        let counts = count_connections(
            [
                entry(tcp, 1, 0, 10),
                entry(tcp, 1, 0, 899),
                entry(tcp, 1, closing, 119),
                entry(tcp, 2, closing, 120),
                entry(lb_common::PROTO_UDP, 2, 0, 299),
            ],
            now,
            &ConnectionTimeouts::default(),
        );
        assert_eq!(
            counts,
            ConnectionCounts::from([(1, (2, 1)), (2, (0, 2))]),
            "established active, closing and UDP inactive (idled out or not: until swept)"
        );
    }

    #[test]
    fn embryonic_flows_count_as_inactive_syn_recv_for_60_seconds() {
        const SECOND: u64 = 1_000_000_000;
        let now = 10_000 * SECOND;
        let flow = lb_common::FlowKey {
            proto: lb_common::PROTO_TCP,
            ..Default::default()
        };
        let embryonic = |real: u32, idle_secs: u64| {
            let conn = lb_common::Connection {
                real,
                flags: lb_common::conntrack::CONN_F_EMBRYONIC
                    | lb_common::conntrack::CONN_F_COUNT_ON_PROMOTION,
                last_seen_ns: now - idle_secs * SECOND,
                ..Default::default()
            };
            (flow, conn)
        };
        let (young, old) = (embryonic(1, 5), embryonic(1, 60));
        let timeouts = ConnectionTimeouts::default();
        let state = ConnState::of(&young.0, &young.1, now, &timeouts);
        assert_eq!(
            (state.name, state.active, state.expire_secs),
            ("SYN_RECV", false, 55)
        );
        assert_eq!(
            ConnState::of(&old.0, &old.1, now, &timeouts).expire_secs,
            0,
            "idled out after 60 s: 0 s left until the sweep removes it"
        );
        assert!(expiry::idled_out(&old.0, &old.1, &timeouts, now));
        assert!(!expiry::idled_out(&young.0, &young.1, &timeouts, now));
        assert_eq!(
            count_connections([young], now, &timeouts),
            ConnectionCounts::from([(1, (0, 1))]),
            "a SYN_RECV connection is inactive"
        );
    }

    #[test]
    fn rates_are_the_counter_deltas_per_second() {
        let mut est = RateEstimator::default();
        let c = |conns, packets, bytes| lb_common::Counters {
            packets,
            bytes,
            conns,
        };
        est.update(0, BTreeMap::from([(1, c(0, 0, 0))]), BTreeMap::new());
        est.update(
            2_000_000_000,
            BTreeMap::from([(1, c(10, 100, 6000))]),
            BTreeMap::new(),
        );
        assert_eq!(
            est.service(1),
            Rates {
                cps: 5,
                in_pps: 50,
                out_pps: 0,
                in_bps: 3000,
                out_bps: 0
            }
        );
        assert_eq!(est.service(2), Rates::default());
    }

    /// Tests of the runtime over the in-memory data path.
    mod over_the_fake {
        use std::{net::SocketAddr, path::PathBuf, time::Duration};

        use lb_common::limits::MAGLEV_TABLE_SIZE;

        use super::super::*;
        use crate::{
            capacity::Capacity,
            datapath::fake::{FakeDataPath, Write},
            ipvsadm::save::restore,
            next_hops::FakeResolver,
        };

        /// A desired state from `-R` rules.
        fn state(rules: &str) -> DesiredState {
            restore(&DesiredState::default(), rules).unwrap_or_else(|e| panic!("{rules}: {e}"))
        }

        fn tcp(addr: &str) -> ServiceAddr {
            let addr: SocketAddr = addr.parse().expect("ADDRESS:PORT");
            ServiceAddr {
                protocol: Protocol::Tcp,
                addr: addr.ip(),
                port: addr.port(),
            }
        }

        fn key(addr: &str) -> lb_common::ServiceKey {
            service_key(&tcp(addr))
        }

        /// The data-path entry of a real server of `state`.
        fn entry(state: &DesiredState, service: &str, real: &str) -> lb_common::RealServer {
            let real: SocketAddr = real.parse().expect("ADDRESS:PORT");
            let svc = state.service(&tcp(service)).expect("the service");
            real_entry(
                svc.reals
                    .iter()
                    .find(|r| SocketAddr::new(r.addr, r.port) == real)
                    .expect("the real server"),
            )
        }

        /// A state file of its own under the temporary directory, removed on drop.
        struct StateFile(PathBuf);

        impl StateFile {
            fn new(name: &str) -> Self {
                let dir =
                    std::env::temp_dir().join(format!("xlb-runtime-{}-{name}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                Self(dir.join("state.json"))
            }
        }

        impl Drop for StateFile {
            fn drop(&mut self) {
                if let Some(dir) = self.0.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }

        const TWO_SERVICES: &str = "\
            -A -t 10.0.0.1:80\n\
            -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
            -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n\
            -A -t 10.0.0.2:80 -p 60\n\
            -a -t 10.0.0.2:80 -r 10.0.0.21:80 -i -w 1\n";

        /// What TWO_SERVICES becomes: a scheduler and persistence set, a weight changed, a server
        /// replaced, a service replaced by a UDP one.
        const CHANGED: &str = "\
            -A -t 10.0.0.1:80 -s wrr -p 30\n\
            -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 3\n\
            -a -t 10.0.0.1:80 -r 10.0.0.13:80 -i -w 1\n\
            -A -u 10.0.0.3:53\n\
            -a -u 10.0.0.3:53 -r 10.0.0.31:53 -g -w 1\n";

        #[test]
        fn a_new_service_reaches_the_maps_with_its_servers_and_a_table_shared_by_weight() {
            let desired = state(
                "-A -t 10.0.0.1:80\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -i -w 2\n",
            );
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(desired.clone()).expect("applied");

            let svc = key("10.0.0.1:80");
            let r11 = entry(&desired, "10.0.0.1:80", "10.0.0.11:80");
            let r12 = entry(&desired, "10.0.0.1:80", "10.0.0.12:80");
            let dp = rt.datapath();
            assert_eq!(
                dp.writes(),
                [
                    Write::UpsertService(svc),
                    Write::AddReal(r11),
                    Write::AddReal(r12),
                    Write::SetMaglevTable(svc),
                ]
            );
            let contents = dp.contents();
            assert_eq!(contents.reals, BTreeMap::from([(1, r11), (2, r12)]));
            assert_eq!(contents.services.len(), 1);
            let (listed, entry) = &contents.services[0];
            assert_eq!((*listed, entry.id, entry.flags), (svc, 0, 0));
            let reals = &desired.services[0].reals;
            let expected = maglev::build(&[
                maglev::Backend {
                    identity: &identity(&reals[0]),
                    id: 1,
                    weight: 1,
                },
                maglev::Backend {
                    identity: &identity(&reals[1]),
                    id: 2,
                    weight: 2,
                },
            ]);
            assert!(
                entry.table == expected,
                "the table is Maglev's of ids 1 and 2"
            );
            let shares = entry.shares();
            let second = shares[&2] as f64 / f64::from(MAGLEV_TABLE_SIZE);
            assert!(
                (second - 2.0 / 3.0).abs() < 0.01,
                "weight 2 of 3 takes {second:.3} of the table"
            );
            assert_eq!(
                rt.installed().services,
                BTreeMap::from([(
                    tcp("10.0.0.1:80"),
                    BTreeMap::from([
                        ("10.0.0.11:80".parse().expect("addr"), 1),
                        ("10.0.0.12:80".parse().expect("addr"), 2),
                    ])
                )])
            );
        }

        /// The change only tells the neighbour thread which next hops it needs (the servers it
        /// adds): it completes while the thread is held, as it would while the kernel is slow,
        /// and the thread resolves them once free, without the runtime.
        #[tokio::test]
        async fn a_change_tells_the_neighbour_thread_its_new_next_hops_and_does_not_wait() {
            let resolver = FakeResolver::default();
            let next_hops = NextHops::start(resolver.clone()).expect("the neighbour thread");
            let mut rt = Runtime::new(FakeDataPath::default(), None).with_next_hops(next_hops);
            resolver.hold(true);
            rt.change_to(state(
                "-A -t 10.0.0.1:80\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -i -w 2\n",
            ))
            .expect("applied while the neighbour thread is held");
            assert_eq!(
                rt.datapath().contents().reals.len(),
                2,
                "both servers are in the maps"
            );
            let next_hops = rt.next_hops().expect("the neighbour thread").clone();
            assert!(
                !next_hops.settled(Duration::from_millis(50)).await,
                "the held thread has resolved nothing"
            );
            assert!(resolver.asked().is_empty());
            // A change that adds no server asks for nothing more.
            rt.change_to(state(
                "-A -t 10.0.0.1:80\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 3\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -i -w 2\n",
            ))
            .expect("weight changed");
            resolver.hold(false);
            assert!(next_hops.settled(Duration::from_secs(10)).await);
            let ip = |a: &str| a.parse::<IpAddr>().expect("addr");
            assert_eq!(resolver.asked(), [ip("10.0.0.11"), ip("10.0.0.12")]);
            rt.change_to(state(
                "-A -t 10.0.0.1:80\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 3\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.13:80 -i -w 2\n",
            ))
            .expect("a server replaced");
            assert!(next_hops.settled(Duration::from_secs(10)).await);
            assert_eq!(
                resolver.asked(),
                [ip("10.0.0.11"), ip("10.0.0.12"), ip("10.0.0.13")],
                "only the server added"
            );
        }

        #[test]
        fn a_weight_change_rewrites_only_that_services_table() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(TWO_SERVICES)).expect("applied");
            rt.dataplane().take_writes();
            let other = rt.datapath().contents().services[1].clone();
            rt.change_to(state(
                &TWO_SERVICES.replace("10.0.0.12:80 -g -w 1", "10.0.0.12:80 -g -w 5"),
            ))
            .expect("weight changed");
            assert_eq!(
                rt.datapath().writes(),
                [Write::SetMaglevTable(key("10.0.0.1:80"))]
            );
            let contents = rt.datapath().contents();
            assert_eq!(
                contents.services[1], other,
                "the other service is untouched"
            );
            let shares = contents.services[0].1.shares();
            assert!(shares[&2] > 4 * shares[&1], "{shares:?}");
        }

        #[test]
        fn a_persistent_service_is_flagged_and_gets_its_timeout_and_mask() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(TWO_SERVICES)).expect("applied");
            let services = rt.datapath().contents().services;
            let flags: Vec<u32> = services.iter().map(|(_, s)| s.flags).collect();
            assert_eq!(flags, [0, lb_common::service::SERVICE_F_PERSISTENT]);
            assert_eq!(rt.datapath().persistence(services[0].1.id), None);
            let settings = rt
                .datapath()
                .persistence(services[1].1.id)
                .expect("persistence settings");
            assert_eq!(settings.timeout_ns, 60 * 1_000_000_000);
            assert_eq!(settings.mask, [u32::MAX, 0, 0, 0]);
        }

        #[test]
        fn a_refused_write_anywhere_in_a_change_leaves_the_maps_and_the_state_as_they_were() {
            let before = state(TWO_SERVICES);
            let after = state(CHANGED);
            let mut reference = Runtime::new(FakeDataPath::default(), None);
            reference.change_to(before.clone()).expect("before");
            reference.dataplane().take_writes();
            reference.change_to(after.clone()).expect("after");
            let writes = reference.datapath().writes().len();
            assert!(writes >= 8, "the change takes {writes} writes");

            for failing in 1..=writes {
                let mut rt = Runtime::new(FakeDataPath::default(), None);
                rt.change_to(before.clone()).expect("before");
                let maps = rt.datapath().contents();
                rt.dataplane().fail_write(failing, libc::E2BIG);
                let refused = rt
                    .change_to(after.clone())
                    .expect_err("one write is refused");
                let text = error_chain(&refused);
                assert!(
                    text.starts_with("the data path refused the change: ")
                        && text.ends_with(
                            " failed: `bpf_map_update_elem` failed: Argument list too long (os \
                             error 7)"
                        ),
                    "{text}"
                );
                assert_eq!(
                    rt.datapath().contents().behaviour(),
                    maps.behaviour(),
                    "the maps after write {failing} of {writes} was refused"
                );
                assert_eq!(rt.desired(), &before);
                assert_eq!(rt.applied(), &before);
                assert_ids_match_the_maps(&rt);
                assert!(
                    !rt.refresh().expect("refreshed"),
                    "nothing is left to apply"
                );

                rt.change_to(after.clone())
                    .expect("the same change, not refused");
                assert_eq!(rt.desired(), &after);
                assert_eq!(
                    rt.datapath().contents().behaviour(),
                    reference.datapath().contents().behaviour(),
                    "after write {failing} was refused once"
                );
                assert_ids_match_the_maps(&rt);
            }
        }

        #[test]
        fn services_a_refused_rollback_left_unknown_are_rewritten_whole_by_the_next_change() {
            let before = state(TWO_SERVICES);
            let after = state(CHANGED);
            let behaviour_of = |rules: &[&DesiredState]| {
                let mut rt = Runtime::new(FakeDataPath::default(), None);
                for state in rules {
                    rt.change_to((*state).clone()).expect("applied");
                }
                rt.datapath().contents().behaviour()
            };
            let mut counted = Runtime::new(FakeDataPath::default(), None);
            counted.change_to(before.clone()).expect("before");
            counted.dataplane().take_writes();
            counted.change_to(after.clone()).expect("after");
            let writes = counted.datapath().writes().len();

            let mut unsure = 0;
            for failing in 1..=writes {
                for (next, expected) in [
                    (&after, behaviour_of(&[&before, &after])),
                    (&before, behaviour_of(&[&before])),
                ] {
                    let mut rt = Runtime::new(FakeDataPath::default(), None);
                    rt.change_to(before.clone()).expect("before");
                    // The write refused and the first write of the rollback too.
                    rt.dataplane()
                        .fail_writes(&[failing, failing + 1], libc::E2BIG);
                    rt.change_to(after.clone()).expect_err("refused");
                    rt.dataplane().fail_writes(&[], 0);
                    assert_eq!(rt.desired(), &before);
                    if !rt.unsure.is_empty() {
                        unsure += 1;
                    }

                    rt.change_to(next.clone()).expect("the next change");
                    assert_eq!(
                        rt.datapath().contents().behaviour(),
                        expected,
                        "write {failing} of {writes} and the next refused"
                    );
                    assert_ids_match_the_maps(&rt);
                    assert!(rt.unsure.is_empty());
                    assert!(!rt.refresh().expect("refreshed"), "nothing left to repair");
                }
            }
            assert!(unsure > 0, "some rollbacks were refused a write");
        }

        #[test]
        fn a_runtime_restarted_after_a_refused_change_adopts_the_ids_the_maps_hold() {
            let before = state(TWO_SERVICES);
            let after = state(CHANGED);
            let mut counted = Runtime::new(FakeDataPath::default(), None);
            counted.change_to(before.clone()).expect("before");
            counted.dataplane().take_writes();
            counted.change_to(after.clone()).expect("after");
            let writes = counted.datapath().writes().len();
            let expected = counted.datapath().contents().behaviour();

            for failing in 1..=writes {
                for refused in [vec![failing], vec![failing, failing + 1]] {
                    let file = StateFile::new(&format!("refused-{failing}-{}", refused.len()));
                    let mut rt = Runtime::new(FakeDataPath::default(), Some(file.0.clone()));
                    rt.change_to(before.clone()).expect("before");
                    rt.dataplane().fail_writes(&refused, libc::E2BIG);
                    rt.change_to(after.clone()).expect_err("refused");
                    let unsure = rt.unsure.clone();
                    let mut maps = rt.into_datapath();
                    maps.fail_writes(&[], 0);

                    let saved = Saved::read(&file.0).expect("the state file");
                    assert_eq!(saved.unsure, unsure);
                    let mut adopted = Runtime::adopt(maps, saved, Some(file.0.clone()));
                    if unsure.is_empty() {
                        assert_ids_match_the_maps(&adopted);
                    }
                    adopted
                        .change_to(after.clone())
                        .expect("the change, after the restart");
                    assert_eq!(
                        adopted.datapath().contents().behaviour(),
                        expected,
                        "writes {refused:?} of {writes} refused, then a restart"
                    );
                    assert_ids_match_the_maps(&adopted);
                }
            }
        }

        /// Every id the runtime keeps is its real server's in the maps, and the maps hold no
        /// other.
        fn assert_ids_match_the_maps(rt: &Runtime<FakeDataPath>) {
            let mut kept = BTreeMap::new();
            for svc in &rt.applied().services {
                for real in &svc.reals {
                    let id = rt
                        .real_id(&svc.addr, real.addr, real.port)
                        .unwrap_or_else(|| panic!("no id for {} of {}", real.addr, svc.addr));
                    kept.insert(id, real_entry(real));
                }
            }
            assert_eq!(
                kept.len(),
                rt.installed()
                    .services
                    .values()
                    .map(BTreeMap::len)
                    .sum::<usize>()
            );
            assert_eq!(kept, rt.datapath().contents().reals);
        }

        /// A TCP listener on the loopback to check, and its accepting task (abort it to make
        /// the check fail).
        async fn listener() -> (u16, tokio::task::JoinHandle<()>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1");
            let port = listener.local_addr().expect("local address").port();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            });
            (port, task)
        }

        /// A fast TCP check of 127.0.0.1:`port` on a real server.
        fn check(port: u16) -> String {
            format!(
                "--check-address 127.0.0.1 --check-port {port} --check-interval 100ms \
                 --check-timeout 90ms --rise 1 --fall 1"
            )
        }

        /// A runtime over the fake data path whose health engine checks the servers of `rules`,
        /// with the rules applied, and the engine's events.
        fn checked(
            rules: &str,
        ) -> (
            Runtime<FakeDataPath>,
            tokio::sync::mpsc::UnboundedReceiver<crate::health::engine::HealthEvent>,
        ) {
            let (engine, events) =
                crate::health::engine::Engine::new(tokio::runtime::Handle::current(), 4);
            let mut rt = Runtime::new(FakeDataPath::default(), None)
                .with_health(engine)
                .expect("no targets yet");
            rt.change_to(state(rules)).expect("applied");
            (rt, events)
        }

        async fn next_event(
            events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::health::engine::HealthEvent>,
        ) -> crate::health::engine::HealthEvent {
            tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("a health event within 5 s")
                .expect("the engine is alive")
        }

        fn weight_of(rt: &Runtime<FakeDataPath>, service: &str, real: &str) -> u32 {
            let real: SocketAddr = real.parse().expect("ADDRESS:PORT");
            rt.applied()
                .service(&tcp(service))
                .and_then(|s| {
                    s.reals
                        .iter()
                        .find(|r| SocketAddr::new(r.addr, r.port) == real)
                })
                .map_or(0, |r| r.weight)
        }

        /// The share of `service`'s table held by the real server with this id.
        fn share(rt: &Runtime<FakeDataPath>, service: &str, id: RealId) -> f64 {
            let table = rt
                .datapath()
                .maglev_table(&key(service))
                .expect("the service's table");
            table.iter().filter(|&&slot| slot == id).count() as f64 / table.len() as f64
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_failed_server_loses_its_persistent_clients_and_a_quiesced_one_keeps_them() {
            let (a11, a11_task) = listener().await;
            let (a12, _a12_task) = listener().await;
            let rules = format!(
                "-A -t 10.0.0.1:80 -s rr -p 300\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g {}\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g {}\n",
                check(a11),
                check(a12),
            );
            let (mut rt, mut events) = checked(&rules);
            for _ in 0..2 {
                let up = next_event(&mut events).await;
                assert!(up.result.ok, "{}", up.real);
                rt.refresh_service(&up.service).expect("refreshed");
            }
            let client = |last: u32, real: RealId| {
                (
                    lb_common::PersistKey {
                        service: 0,
                        family: lb_common::FAMILY_V4,
                        _pad: [0; 3],
                        client: [last.to_be(), 0, 0, 0],
                    },
                    lb_common::Persistent {
                        real,
                        service_epoch: 1,
                        last_seen_ns: monotonic_ns(),
                    },
                )
            };
            for (last, real) in [(5, 1), (6, 2)] {
                let (key, value) = client(last, real);
                rt.dataplane().remember_client(key, value);
            }
            // Quiesced by the operator: its client stays.
            rt.change_to(state(&rules.replace(
                &format!("10.0.0.12:80 -g {}", check(a12)),
                &format!("10.0.0.12:80 -g -w 0 {}", check(a12)),
            )))
            .expect("quiesced");
            assert_eq!(
                rt.datapath().persistent_clients().expect("clients").len(),
                2
            );
            // Failed: its client goes, the quiesced server's stays.
            a11_task.abort();
            let down = next_event(&mut events).await;
            assert!(!down.result.ok);
            assert!(rt.refresh_service(&down.service).expect("refreshed"));
            let left: Vec<RealId> = rt
                .datapath()
                .persistent_clients()
                .expect("clients")
                .iter()
                .map(|(_, c)| c.real)
                .collect();
            assert_eq!(left, [2]);
            let listing = rt.connections().expect("-L -c");
            assert_eq!(listing.len(), 1);
            assert_eq!(listing[0].state, "NONE");
            assert_eq!(listing[0].source.to_string(), "0.0.0.6:0");
            assert_eq!(listing[0].destination.to_string(), "10.0.0.12:80");
            assert!((299..=300).contains(&listing[0].expire_secs));
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_failed_server_loses_its_handshakes_in_progress_and_keeps_its_established_flows()
        {
            let (a11, a11_task) = listener().await;
            let (a12, _a12_task) = listener().await;
            let rules = format!(
                "-A -t 10.0.0.1:80 -s mh\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g {}\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g {}\n",
                check(a11),
                check(a12),
            );
            let (mut rt, mut events) = checked(&rules);
            for _ in 0..2 {
                let up = next_event(&mut events).await;
                assert!(up.result.ok, "{}", up.real);
                rt.refresh_service(&up.service).expect("refreshed");
            }
            let embryonic = lb_common::conntrack::CONN_F_EMBRYONIC;
            // Port 1000: a handshake given to rs1; 1001: rs1's established flow; 1002: a
            // handshake given to rs2.
            track(
                &mut rt,
                &[(1000, 1, embryonic), (1001, 1, 0), (1002, 2, embryonic)],
            );
            let ports = |rt: &Runtime<FakeDataPath>| -> Vec<u16> {
                let mut ports: Vec<u16> = rt
                    .datapath()
                    .connections()
                    .expect("connections")
                    .iter()
                    .map(|(flow, _)| u16::from_be(flow.sport))
                    .collect();
                ports.sort();
                ports
            };
            assert_eq!(ports(&rt), [1000, 1001, 1002]);
            a11_task.abort();
            let down = next_event(&mut events).await;
            assert!(!down.result.ok);
            assert!(rt.refresh_service(&down.service).expect("refreshed"));
            assert_eq!(
                ports(&rt),
                [1001, 1002],
                "rs1's handshake forgotten, nothing else"
            );
            // Once only: a refresh while it stays down forgets nothing more.
            rt.dataplane().take_writes();
            rt.dataplane().track(
                client_flow(1003),
                lb_common::Connection {
                    real: 1,
                    last_seen_ns: monotonic_ns(),
                    flags: embryonic,
                    ..Default::default()
                },
            );
            rt.refresh_service(&down.service).expect("refreshed");
            assert!(!rt.datapath().writes().contains(&Write::ForgetHandshakes));
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_failed_check_rewrites_only_its_services_table_once() {
            let (a11, a11_task) = listener().await;
            let (a12, _a12_task) = listener().await;
            let (b21, _b21_task) = listener().await;
            let rules = format!(
                "-A -t 10.0.0.1:80\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g {}\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g {}\n\
                 -A -t 10.0.0.2:80\n\
                 -a -t 10.0.0.2:80 -r 10.0.0.21:80 -g {}\n",
                check(a11),
                check(a12),
                check(b21)
            );
            let (mut rt, mut events) = checked(&rules);
            for _ in 0..3 {
                let up = next_event(&mut events).await;
                assert!(up.result.ok, "{}", up.real);
                assert!(
                    !rt.refresh_service(&up.service).expect("refreshed"),
                    "a server not checked yet already counts as live"
                );
            }
            rt.dataplane().take_writes();
            let other = rt.datapath().contents().services[1].clone();

            a11_task.abort();
            let down = next_event(&mut events).await;
            assert_eq!(
                (down.service, down.real),
                (tcp("10.0.0.1:80"), "10.0.0.11:80".parse().expect("addr"))
            );
            assert!(rt.refresh_service(&down.service).expect("refreshed"));
            assert_eq!(
                rt.datapath().writes(),
                [
                    Write::SetMaglevTable(key("10.0.0.1:80")),
                    Write::ForgetHandshakes
                ],
                "one table rewritten and the failed server's handshakes forgotten, no server \
                 removed"
            );
            assert_eq!(weight_of(&rt, "10.0.0.1:80", "10.0.0.11:80"), 0);
            assert_eq!(
                share(&rt, "10.0.0.1:80", 1),
                0.0,
                "no new flow for the failed server"
            );
            assert_eq!(share(&rt, "10.0.0.1:80", 2), 1.0);
            assert!(rt.datapath().real(1).is_some(), "its flows still reach it");
            assert_eq!(rt.datapath().contents().services[1], other);
            assert!(!rt.refresh_ramps().expect("refreshed"), "no slow start");
            assert!(!rt.refresh().expect("refreshed"), "nothing else changed");
            assert_eq!(rt.datapath().writes().len(), 2, "nothing written since");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_server_back_from_down_ramps_up_over_its_slow_start() {
            let (port, _task) = listener().await;
            let slow_start = Duration::from_secs(2);
            let rules = format!(
                "-A -t 10.0.0.1:80\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 100 {} --check-start down \
                 --slow-start 2s\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 100\n",
                check(port)
            );
            let (mut rt, mut events) = checked(&rules);
            assert_eq!(
                weight_of(&rt, "10.0.0.1:80", "10.0.0.11:80"),
                0,
                "down at first"
            );
            assert_eq!(share(&rt, "10.0.0.1:80", 1), 0.0);

            let up = next_event(&mut events).await;
            let back = std::time::Instant::now();
            assert!(up.result.ok);
            assert!(rt.refresh_service(&up.service).expect("refreshed"));
            let first = weight_of(&rt, "10.0.0.1:80", "10.0.0.11:80");
            let first_share = share(&rt, "10.0.0.1:80", 1);
            assert!(
                (1..50).contains(&first),
                "weight {first} just after coming back"
            );
            assert!(rt.is_ramping());
            assert!(
                first_share > 0.0 && first_share < 0.34,
                "share {first_share}"
            );

            tokio::time::sleep(slow_start / 2).await;
            assert!(rt.refresh_ramps().expect("refreshed"), "the ramp goes on");
            let halfway = weight_of(&rt, "10.0.0.1:80", "10.0.0.11:80");
            assert!(halfway > first && halfway < 100, "weight {halfway} halfway");

            tokio::time::sleep(
                (back + slow_start).saturating_duration_since(std::time::Instant::now()),
            )
            .await;
            assert!(
                rt.refresh_ramps().expect("refreshed"),
                "the ramp's last step"
            );
            assert_eq!(weight_of(&rt, "10.0.0.1:80", "10.0.0.11:80"), 100);
            assert!(!rt.is_ramping());
            let full = share(&rt, "10.0.0.1:80", 1);
            assert!((full - 0.5).abs() < 0.01, "share {full} at full weight");
            rt.dataplane().take_writes();
            assert!(!rt.refresh_ramps().expect("refreshed"), "the ramp is over");
            assert!(!rt.refresh().expect("refreshed"));
            assert!(rt.datapath().writes().is_empty());
        }

        #[test]
        fn the_listing_shows_each_ids_counters_and_zeroing_one_service_touches_only_its_own() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(TWO_SERVICES)).expect("applied");
            let traffic = |n: u64| lb_common::Counters {
                packets: n,
                bytes: 100 * n,
                conns: n / 10,
            };
            for (id, n) in [(0, 30), (1, 50)] {
                rt.dataplane().count_service(id, traffic(n));
            }
            for (id, n) in [(1, 10), (2, 20), (3, 50)] {
                rt.dataplane().count_real(id, traffic(n));
            }
            let packets = |rt: &Runtime<FakeDataPath>| -> Vec<(u64, Vec<u64>)> {
                rt.listing(&RateEstimator::default())
                    .expect("listing")
                    .services
                    .iter()
                    .map(|s| {
                        (
                            s.stats.in_pkts,
                            s.reals.iter().map(|r| r.stats.in_pkts).collect(),
                        )
                    })
                    .collect()
            };
            assert_eq!(packets(&rt), [(30, vec![10, 20]), (50, vec![50])]);

            rt.dataplane().take_writes();
            rt.zero(Some(&tcp("10.0.0.1:80"))).expect("zeroed");
            assert_eq!(
                rt.datapath().writes(),
                [
                    Write::ZeroServiceCounters(0),
                    Write::ZeroRealCounters(1),
                    Write::ZeroRealCounters(2),
                ]
            );
            assert_eq!(packets(&rt), [(0, vec![0, 0]), (50, vec![50])]);
        }

        #[test]
        fn one_services_listing_is_its_entry_in_the_whole_listing() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s rr\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 2\n\
                 -A -t 10.0.0.2:80 -p 300\n\
                 -a -t 10.0.0.2:80 -r 10.0.0.21:80 -g -w 1\n\
                 -A -u 10.0.0.1:53\n\
                 -a -u 10.0.0.1:53 -r 10.0.0.11:53 -g -w 1\n",
            ))
            .expect("applied");
            for id in 0..3 {
                rt.dataplane().count_service(
                    id,
                    lb_common::Counters {
                        packets: 10 + u64::from(id),
                        bytes: 1000,
                        conns: 1,
                    },
                );
            }
            for id in 1..5 {
                rt.dataplane().count_real(
                    id,
                    lb_common::Counters {
                        packets: 100 * u64::from(id),
                        bytes: 7 * u64::from(id),
                        conns: u64::from(id),
                    },
                );
            }
            let closing = lb_common::conntrack::CONN_F_CLOSING;
            track(&mut rt, &[(1000, 1, 0), (1001, 2, closing), (1002, 3, 0)]);
            let rates = RateEstimator::default();
            let all = rt.listing(&rates).expect("listing");
            assert_eq!(all.services.len(), 3);
            for service in &all.services {
                let one = rt.listing_of(&rates, &service.addr).expect("listing");
                assert_eq!(
                    one.services,
                    std::slice::from_ref(service),
                    "{}",
                    service.addr
                );
            }
            // Per service: its packets, and per server its packets, active and inactive.
            type Listed = Vec<(u64, Vec<(u64, u32, u32)>)>;
            let listed: Listed = all
                .services
                .iter()
                .map(|s| {
                    let reals = s.reals.iter();
                    let reals = reals.map(|r| (r.stats.in_pkts, r.active_conns, r.inactive_conns));
                    (s.stats.in_pkts, reals.collect())
                })
                .collect();
            assert_eq!(
                listed,
                [
                    (10, vec![(100, 1, 0), (200, 0, 1)]),
                    (11, vec![(300, 1, 0)]),
                    (12, vec![(400, 0, 0)]),
                ],
                "the entries compared are not empty ones"
            );
            let none = rt.listing_of(&rates, &tcp("10.0.0.3:80")).expect("listing");
            assert!(
                none.services.is_empty(),
                "no such service: an empty listing"
            );
        }

        #[test]
        fn least_connection_services_get_weights_and_their_servers_counts_every_refresh() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s wlc\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 3\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n",
            ))
            .expect("applied");
            assert_eq!(rt.datapath().real_weight(1), Some(3));
            assert_eq!(rt.datapath().real_weight(2), Some(1));
            let svc = &rt.datapath().contents().services[0].1;
            assert_eq!(svc.flags, lb_common::service::SERVICE_F_WEIGHTED);
            assert_eq!(svc.shares().get(&1), Some(&32_769), "every server in turn");
            track(&mut rt, &TWO_ACTIVE_ONE_CLOSING_AND_ONE);
            rt.refresh_ramps().expect("refreshed");
            // Active only: the closing one does not count.
            assert_eq!(rt.datapath().active_connections(1), Some(2));
            assert_eq!(rt.datapath().active_connections(2), Some(1));
            // A service of another scheduler costs no write.
            let mut mh = Runtime::new(FakeDataPath::default(), None);
            mh.change_to(state(TWO_SERVICES)).expect("applied");
            mh.dataplane().take_writes();
            mh.refresh_ramps().expect("refreshed");
            assert!(mh.datapath().writes().is_empty());
        }

        #[test]
        fn ovf_orders_its_servers_by_weight_and_marks_them_full_beyond_their_weight() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            let ovf = "-A -t 10.0.0.1:80 -s ovf\n\
                       -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                       -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 2\n\
                       -a -t 10.0.0.1:80 -r 10.0.0.13:80 -g -w 0\n";
            rt.change_to(state(ovf)).expect("applied");
            let svc = &rt.datapath().contents().services[0].1;
            assert_eq!(svc.scheduler, lb_common::service::SCHED_WEIGHT_ORDER);
            assert_eq!(svc.flags, lb_common::service::SERVICE_F_OVERFLOW);
            assert_eq!(
                svc.table[..3],
                [2, 1, 0],
                "heaviest first, the quiesced one out"
            );
            assert_eq!(rt.datapath().real_weight(2), Some(2));
            track(&mut rt, &[(1000, 2, 0), (1001, 2, 0), (1002, 2, 0)]);
            rt.refresh_ramps().expect("refreshed");
            // 3 active connections of weight 2: full; rs11's 0 of 1 is not.
            assert!(rt.datapath().real_limits(2).is_full());
            assert!(!rt.datapath().real_limits(1).is_full());
            // A weight of 3 takes it back at once.
            rt.change_to(state(&ovf.replace("12:80 -g -w 2", "12:80 -g -w 3")))
                .expect("applied");
            assert!(!rt.datapath().real_limits(2).is_full());
            // As fo (or any other scheduler) its servers are never full.
            rt.change_to(state(
                &ovf.replace("-s ovf", "-s fo").replace("-w 2", "-w 1"),
            ))
            .expect("applied");
            assert_eq!(rt.datapath().real_limits(2).flags, 0);
            let svc = &rt.datapath().contents().services[0].1;
            assert_eq!(
                (svc.scheduler, svc.flags),
                (lb_common::service::SCHED_WEIGHT_ORDER, 0)
            );
        }

        #[test]
        fn sed_and_nq_are_least_connection_services_with_their_flags_and_udp_ovf_counts_nothing() {
            use lb_common::service::*;
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s sed\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 3\n\
                 -A -t 10.0.0.2:80 -s nq\n\
                 -a -t 10.0.0.2:80 -r 10.0.0.11:80 -g -w 3\n\
                 -A -u 10.0.0.3:53 -s ovf\n\
                 -a -u 10.0.0.3:53 -r 10.0.0.11:53 -g -w 3\n",
            ))
            .expect("applied");
            let contents = rt.datapath().contents();
            let entry = |i: usize| {
                (
                    contents.services[i].1.scheduler,
                    contents.services[i].1.flags,
                )
            };
            assert_eq!(
                entry(0),
                (
                    SCHED_LEAST_CONN,
                    SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY
                )
            );
            assert_eq!(
                entry(1),
                (
                    SCHED_LEAST_CONN,
                    SERVICE_F_WEIGHTED | SERVICE_F_EXPECTED_DELAY | SERVICE_F_IDLE_FIRST
                )
            );
            assert_eq!(
                entry(2),
                (SCHED_WEIGHT_ORDER, 0),
                "a UDP flow is never active"
            );
            assert_eq!(rt.datapath().real_weight(1), Some(3));
        }

        #[test]
        fn thresholds_reach_the_data_path_and_their_servers_count_every_connection_each_refresh() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s rr\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1 -x 3\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n",
            ))
            .expect("applied");
            assert_eq!(rt.datapath().real_limits(1).upper, 3);
            assert_eq!(
                rt.datapath().real_limits(2),
                lb_common::RealLimits::default()
            );
            track(&mut rt, &TWO_ACTIVE_ONE_CLOSING_AND_ONE);
            rt.refresh_ramps().expect("refreshed");
            // Active and inactive (IPVS's totalconns): 3 of -x 3, overloaded.
            let limits = rt.datapath().real_limits(1);
            assert_eq!((limits.conns, limits.is_overloaded()), (3, true));
            assert_eq!(
                rt.datapath().real_limits(2).conns,
                0,
                "no thresholds, no count"
            );
            // Raised with -e: written again (and no longer overloaded at 3 of 10).
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s rr\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1 -x 10 -y 4\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n",
            ))
            .expect("applied");
            let limits = rt.datapath().real_limits(1);
            assert_eq!((limits.upper, limits.lower), (10, 4));
            assert_eq!((limits.conns, limits.is_overloaded()), (3, false));
            // Without any threshold, a refresh writes nothing.
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s rr\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n",
            ))
            .expect("applied");
            assert_eq!(rt.datapath().real_limits(1).upper, 0);
            rt.dataplane().take_writes();
            rt.refresh_ramps().expect("refreshed");
            assert!(rt.datapath().writes().is_empty());
        }

        #[test]
        fn the_sweep_expires_flows_idle_past_their_protocols_timeout_and_their_servers_count_them_no_more(
        ) {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s lc\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1 -x 100\n\
                 --set 5 0 2\n",
            ))
            .expect("applied");
            assert_eq!(
                rt.desired().timeouts,
                ConnectionTimeouts {
                    tcp_secs: 5,
                    tcpfin_secs: 120,
                    udp_secs: 2
                },
                "0 keeps tcpfin"
            );
            const SECOND: u64 = 1_000_000_000;
            let now = monotonic_ns();
            let udp = |sport| lb_common::FlowKey {
                proto: lb_common::PROTO_UDP,
                ..client_flow(sport)
            };
            let closing = lb_common::conntrack::CONN_F_CLOSING;
            // (flow, idle seconds, flags, still there after the sweep)
            let entries = [
                (client_flow(1000), 1, 0, true),
                (client_flow(1001), 6, 0, false),
                (client_flow(1002), 6, closing, true),
                (udp(1003), 1, 0, true),
                (udp(1004), 3, 0, false),
            ];
            for (flow, idle, flags, _) in entries {
                let conn = lb_common::Connection {
                    real: 1,
                    last_seen_ns: now - idle * SECOND,
                    flags,
                    ..Default::default()
                };
                rt.dataplane().track(flow, conn);
            }
            rt.refresh_ramps().expect("refreshed");
            let left: BTreeSet<u16> = rt
                .datapath()
                .connections()
                .expect("connections")
                .iter()
                .map(|(flow, _)| u16::from_be(flow.sport))
                .collect();
            let kept: BTreeSet<u16> = entries
                .iter()
                .filter(|e| e.3)
                .map(|e| u16::from_be(e.0.sport))
                .collect();
            assert_eq!(
                left, kept,
                "the established flow idle 6 s of 5 and the UDP one 3 s of 2 went"
            );
            assert_eq!(rt.datapath().active_connections(1), Some(1));
            assert_eq!(rt.datapath().real_limits(1).conns, 3);
            // -L -c counts down from the timeouts in force.
            let mut expiries: Vec<(String, u32)> = rt
                .connections()
                .expect("listing")
                .into_iter()
                .map(|c| (c.state, c.expire_secs))
                .collect();
            expiries.sort();
            assert_eq!(
                expiries,
                [
                    ("ESTABLISHED".to_owned(), 4),
                    ("FIN_WAIT".to_owned(), 114),
                    ("UDP".to_owned(), 1)
                ]
            );
        }

        /// Each sweep builds the connection filter from the table it reads: on after the first,
        /// never "absent" for a flow the table holds, and a flow that idled out is proved absent
        /// once a sweep after its removal has built the filter again. Embryonic flows are not in
        /// the connection table and are not in the filter.
        #[test]
        fn each_sweep_builds_the_connection_filter_from_the_table_it_read() {
            const SECOND: u64 = 1_000_000_000;
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            let filter = rt.datapath().connection_filter().expect("a filter");
            let now = monotonic_ns();
            let established = lb_common::Connection {
                real: 1,
                last_seen_ns: now,
                ..Default::default()
            };
            let open: Vec<_> = (0..20).map(|i| client_flow(20_000 + i)).collect();
            for flow in &open {
                rt.dataplane().track(*flow, established);
            }
            let idle = client_flow(30_000);
            rt.dataplane().track(
                idle,
                lb_common::Connection {
                    last_seen_ns: now - 1000 * SECOND,
                    ..established
                },
            );
            let handshake = client_flow(30_001);
            rt.dataplane().track(
                handshake,
                lb_common::Connection {
                    flags: lb_common::conntrack::CONN_F_EMBRYONIC,
                    ..established
                },
            );
            assert!(!filter.is_on(), "off until a sweep built it");
            rt.sweep();
            if !crate::mapped::LOADS_IN_ORDER {
                assert!(!filter.is_on(), "on x86-64 only");
                return;
            }
            assert!(filter.is_on());
            assert!(open.iter().all(|f| filter.may_hold(f)));
            assert!(
                !filter.may_hold(&handshake),
                "embryonic flows are not in the table"
            );
            // The idle flow was read (so it is in the filter) and then expired.
            assert!(filter.may_hold(&idle));
            assert!(!rt
                .datapath()
                .connections()
                .expect("connections")
                .iter()
                .any(|(f, _)| *f == idle));
            rt.sweep();
            assert!(
                !filter.may_hold(&idle),
                "built again without the expired flow"
            );
            assert!(open.iter().all(|f| filter.may_hold(f)));
            let others = (0..1000)
                .filter(|i| !filter.may_hold(&client_flow(40_000 + i)))
                .count();
            assert!(others > 980, "{others} of 1000 other flows proved absent");
        }

        #[test]
        fn an_entry_a_packet_refreshed_after_the_sweep_read_it_is_not_expired() {
            let mut dp = FakeDataPath::default();
            let old = lb_common::Connection {
                real: 1,
                last_seen_ns: 1,
                ..Default::default()
            };
            dp.track(client_flow(1000), old);
            let read = dp.connections().expect("connections");
            dp.track(
                client_flow(1000),
                lb_common::Connection {
                    last_seen_ns: 2,
                    ..old
                },
            );
            assert_eq!(dp.expire_connections(&read).expect("expired"), 0);
            assert_eq!(dp.connections().expect("connections").len(), 1);
        }

        #[test]
        fn a_persistent_client_is_held_while_its_connection_lives_and_lapses_its_timeout_after() {
            const SECOND: u64 = 1_000_000_000;
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s rr -p 3\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n",
            ))
            .expect("applied");
            let service = rt
                .datapath()
                .service(&key("10.0.0.1:80"))
                .expect("service")
                .id;
            let settings = rt.datapath().persistence(service).expect("persistent");
            let flow = client_flow(1000);
            let client_key = settings.key(service, &flow.src, flow.family);
            let now = monotonic_ns();
            // Its last new connection 2.5 s ago, of -p 3; the connection still open.
            rt.dataplane().remember_client(
                client_key,
                lb_common::Persistent {
                    real: 1,
                    service_epoch: 0,
                    last_seen_ns: now - 2_500_000_000,
                },
            );
            let conn = lb_common::Connection {
                real: 1,
                service,
                last_seen_ns: now - 10 * SECOND,
                ..Default::default()
            };
            rt.dataplane().track(flow, conn);
            let last_seen = |rt: &Runtime<FakeDataPath>| {
                rt.datapath()
                    .persistent_clients()
                    .expect("clients")
                    .first()
                    .map(|(_, c)| c.last_seen_ns)
            };
            rt.sweep();
            let held = last_seen(&rt).expect("held");
            assert!(held > now, "held a sweep ahead: {held} vs {now}");
            let listed = rt.connections().expect("listing");
            let template = listed.iter().find(|c| c.state == "NONE").expect("listed");
            assert_eq!(template.expire_secs, 3, "{listed:?}");
            // The connection ends (idle past the 900 s of TCP): the client keeps its server for
            // 3 s from then. Swept at a time of the test's (`at`, 901 s after the connection's
            // last packet), which a machine up for less than 901 s has not reached.
            let at = now + 901 * SECOND;
            let sweep_at = |rt: &mut Runtime<FakeDataPath>, at: u64| {
                let inputs = rt.sweep_inputs();
                sweep_tables(&mut Through(rt.dataplane()), &inputs, at).expect("swept");
            };
            rt.dataplane().track(
                flow,
                lb_common::Connection {
                    last_seen_ns: now,
                    ..conn
                },
            );
            rt.dataplane().remember_client(
                client_key,
                lb_common::Persistent {
                    real: 1,
                    service_epoch: 0,
                    last_seen_ns: at - SECOND,
                },
            );
            sweep_at(&mut rt, at);
            assert!(rt.datapath().connections().expect("connections").is_empty());
            let ended = last_seen(&rt).expect("kept");
            assert!(ended >= at, "its timeout starts when the connection ends");
            // 3 s later, no connection: it lapses.
            rt.dataplane().remember_client(
                client_key,
                lb_common::Persistent {
                    real: 1,
                    service_epoch: 0,
                    last_seen_ns: at - 3 * SECOND,
                },
            );
            sweep_at(&mut rt, at);
            assert_eq!(last_seen(&rt), None, "lapsed and removed");
        }

        /// A TCP flow from 192.0.2.1:`sport` to the service 10.0.0.1:80, as the data path keys it.
        /// Three connections to real server 1, the last closing (two active, one inactive), and
        /// one to real server 2: (client port, real server, flags).
        const TWO_ACTIVE_ONE_CLOSING_AND_ONE: [(u16, RealId, u32); 4] = [
            (1000, 1, 0),
            (1001, 1, 0),
            (1002, 1, lb_common::conntrack::CONN_F_CLOSING),
            (1003, 2, 0),
        ];

        /// Connections of `client_flow(sport)` to `real` with `flags`, seen now, in the fake's
        /// connection table.
        fn track(rt: &mut Runtime<FakeDataPath>, flows: &[(u16, RealId, u32)]) {
            let now = monotonic_ns();
            for &(sport, real, flags) in flows {
                let conn = lb_common::Connection {
                    real,
                    last_seen_ns: now,
                    flags,
                    ..Default::default()
                };
                rt.dataplane().track(client_flow(sport), conn);
            }
        }

        fn client_flow(sport: u16) -> lb_common::FlowKey {
            lb_common::FlowKey {
                src: [
                    u32::from(std::net::Ipv4Addr::new(192, 0, 2, 1)).to_be(),
                    0,
                    0,
                    0,
                ],
                dst: [
                    u32::from(std::net::Ipv4Addr::new(10, 0, 0, 1)).to_be(),
                    0,
                    0,
                    0,
                ],
                sport: sport.to_be(),
                dport: 80u16.to_be(),
                proto: lb_common::PROTO_TCP,
                family: lb_common::FAMILY_V4,
                ..Default::default()
            }
        }

        #[test]
        fn a_real_server_removed_takes_its_connections_with_it() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(TWO_SERVICES)).expect("applied");
            let now = monotonic_ns();
            for (sport, real) in [(1000, 1), (1001, 2), (1002, 2)] {
                let flow = client_flow(sport);
                let conn = lb_common::Connection {
                    real,
                    last_seen_ns: now,
                    ..Default::default()
                };
                rt.dataplane().track(flow, conn);
            }
            let destinations = |rt: &Runtime<FakeDataPath>| -> Vec<String> {
                let mut d: Vec<String> = rt
                    .connections()
                    .expect("connections")
                    .iter()
                    .map(|c| format!("{} -> {}", c.source, c.destination))
                    .collect();
                d.sort();
                d
            };
            assert_eq!(
                destinations(&rt),
                [
                    "192.0.2.1:1000 -> 10.0.0.11:80",
                    "192.0.2.1:1001 -> 10.0.0.12:80",
                    "192.0.2.1:1002 -> 10.0.0.12:80",
                ]
            );
            rt.change_to(state(
                &TWO_SERVICES.replace("-a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n", ""),
            ))
            .expect("removed");
            assert_eq!(destinations(&rt), ["192.0.2.1:1000 -> 10.0.0.11:80"]);
        }

        #[test]
        fn a_rollback_that_adds_back_a_removed_service_gives_it_the_servers_still_there() {
            let before = state(
                "-A -t 10.0.0.100:80\n-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g\n\
                 -a -t 10.0.0.100:80 -r 10.0.0.12:80 -g\n",
            );
            // Where the removal's first server removal comes, after the service's.
            let mut reference = Runtime::new(FakeDataPath::default(), None);
            reference.change_to(before.clone()).expect("before");
            reference.dataplane().take_writes();
            reference
                .change_to(DesiredState::default())
                .expect("removed");
            let writes = reference.datapath().writes();
            let service_gone = writes
                .iter()
                .position(|w| matches!(w, Write::RemoveService(_)))
                .expect("the service is removed");
            let first_real = writes
                .iter()
                .position(|w| matches!(w, Write::RemoveReal(_)))
                .expect("its servers are removed");
            assert!(service_gone < first_real, "{writes:?}");

            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(before.clone()).expect("before");
            let maps = rt.datapath().contents();
            let kept: Vec<RealId> = maps.reals.keys().copied().collect();
            rt.dataplane().take_writes();
            rt.dataplane().fail_write(first_real + 1, libc::E2BIG);
            rt.change_to(DesiredState::default())
                .expect_err("a server removal is refused");
            let id = rt
                .datapath()
                .service(&service_key(&before.services[0].addr))
                .expect("added back")
                .id;
            for real in kept {
                assert!(
                    rt.datapath().writes().contains(&Write::AdoptReal(id, real)),
                    "server {real} not given back to the service: {:?}",
                    rt.datapath().writes()
                );
            }
            assert_eq!(rt.datapath().contents().behaviour(), maps.behaviour());
            assert_eq!(rt.applied(), &before);
        }

        #[test]
        fn a_refused_change_reads_as_one_sentence_down_to_the_kernels_error() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.dataplane().fail_write(2, libc::E2BIG);
            let refused = rt
                .change_to(state(
                    "-A -t 10.0.0.100:80\n-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g\n",
                ))
                .expect_err("refused");
            assert_eq!(
                error_chain(&refused),
                "the data path refused the change: adding real server 10.0.0.11:80 to service \
                 TCP 10.0.0.100:80: adding a real server failed: `bpf_map_update_elem` failed: \
                 Argument list too long (os error 7)"
            );
        }

        #[test]
        fn more_than_the_balancer_holds_is_refused_in_a_sentence_before_anything_is_written() {
            let capacity = Capacity {
                services: 1,
                reals: 2,
            };
            let mut rt = Runtime::new(FakeDataPath::new(capacity), None);
            let services = rt.change_to(state(TWO_SERVICES)).expect_err("two services");
            assert_eq!(
                error_chain(&services),
                "the balancer holds at most 1 services; start xlbd with --max-services N to \
                 raise it"
            );
            let reals = rt
                .change_to(state(
                    "-A -t 10.0.0.1:80\n\
                     -a -t 10.0.0.1:80 -r 10.0.0.11:80\n\
                     -a -t 10.0.0.1:80 -r 10.0.0.12:80\n\
                     -a -t 10.0.0.1:80 -r 10.0.0.13:80\n",
                ))
                .expect_err("three real servers");
            assert_eq!(
                error_chain(&reals),
                "the balancer holds at most 2 real servers (one in two services counts twice); \
                 start xlbd with --max-reals N to raise it"
            );
            assert!(rt.datapath().writes().is_empty());
            assert_eq!(rt.desired(), &DesiredState::default());
        }

        #[test]
        fn the_connection_timeouts_are_saved_with_the_state_kept_by_clear_and_left_out_of_save() {
            let file = StateFile::new("timeouts");
            let mut rt = Runtime::new(FakeDataPath::default(), Some(file.0.clone()));
            let mut desired = state(TWO_SERVICES);
            desired
                .apply(&crate::state::Change::SetTimeouts {
                    tcp_secs: 60,
                    tcpfin_secs: 0,
                    udp_secs: 10,
                })
                .expect("set");
            desired.apply(&crate::state::Change::Clear).expect("clear");
            rt.change_to(desired).expect("applied");
            let saved = Saved::read(&file.0).expect("the state file");
            let set = ConnectionTimeouts {
                tcp_secs: 60,
                tcpfin_secs: 120,
                udp_secs: 10,
            };
            assert_eq!(saved.desired.timeouts, set, "-C keeps them; a restart too");
            let adopted = Runtime::adopt(rt.into_datapath(), saved, None);
            assert_eq!(adopted.desired().timeouts, set);
            assert!(
                !crate::ipvsadm::save::save(adopted.desired()).contains("--set"),
                "ipvsadm -S does not save the timeouts"
            );
        }

        #[test]
        fn each_change_replaces_the_state_file_whole_and_leaves_nothing_beside_it() {
            let file = StateFile::new("replace");
            let mut rt = Runtime::new(FakeDataPath::default(), Some(file.0.clone()));
            let big = state(TWO_SERVICES);
            rt.change_to(big.clone()).expect("applied");
            assert_eq!(Saved::read(&file.0).expect("the state file").desired, big);
            // A smaller state after a bigger one: the file holds it alone.
            let small = state("-A -t 10.0.0.1:80\n");
            rt.change_to(small.clone()).expect("applied");
            let text = std::fs::read_to_string(&file.0).expect("read");
            let saved: Saved = serde_json::from_str(&text).expect("one JSON document, whole");
            assert_eq!(saved.desired, small);
            let dir = file.0.parent().expect("a directory");
            let names: Vec<String> = std::fs::read_dir(dir)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["state.json"], "no temporary file left");
        }

        #[test]
        fn a_restarted_runtime_adopts_the_saved_state_and_the_maps_without_writing() {
            let file = StateFile::new("adopt");
            let mut first = Runtime::new(FakeDataPath::default(), Some(file.0.clone()));
            first.change_to(state(TWO_SERVICES)).expect("applied");
            let installed = first.installed().clone();
            let mut maps = first.into_datapath();
            maps.take_writes();

            let saved = Saved::read(&file.0).expect("the state file");
            assert_eq!(saved.installed, installed);
            let mut second = Runtime::adopt(maps, saved, Some(file.0.clone()));
            second
                .change_to(state(TWO_SERVICES))
                .expect("the same state");
            assert!(!second.refresh().expect("refreshed"));
            assert!(
                second.datapath().writes().is_empty(),
                "{:?}",
                second.datapath().writes()
            );

            // The adopted ids are the ones changed from then on.
            second.change_to(state(CHANGED)).expect("changed");
            let mut fresh = Runtime::new(FakeDataPath::default(), None);
            fresh.change_to(state(TWO_SERVICES)).expect("applied");
            fresh.change_to(state(CHANGED)).expect("changed");
            assert_eq!(second.datapath().contents(), fresh.datapath().contents());
            assert_eq!(second.installed(), fresh.installed());
        }

        #[test]
        fn a_state_file_of_an_older_xlbd_with_string_keys_is_adopted() {
            let older = include_str!("../testdata/state-with-string-keys.json");
            let saved: Saved = serde_json::from_str(older).expect("the older format is read");
            let udp = ServiceAddr {
                protocol: Protocol::Udp,
                addr: "2001:db8::1".parse().expect("addr"),
                port: 53,
            };
            assert_eq!(
                saved.installed.services,
                BTreeMap::from([
                    (
                        tcp("10.0.0.1:80"),
                        BTreeMap::from([
                            ("10.0.0.11:80".parse().expect("addr"), 1),
                            ("10.0.0.12:80".parse().expect("addr"), 2),
                        ])
                    ),
                    (
                        udp,
                        BTreeMap::from([("[2001:db8::31]:53".parse().expect("addr"), 3)])
                    ),
                ])
            );

            // The maps the older xlbd left: it gave ids as this one does.
            let mut older_xlbd = Runtime::new(FakeDataPath::default(), None);
            older_xlbd
                .change_to(saved.desired.clone())
                .expect("applied");
            assert_eq!(older_xlbd.installed(), &saved.installed);
            let mut maps = older_xlbd.into_datapath();
            maps.take_writes();

            let file = StateFile::new("older");
            let desired = saved.desired.clone();
            let mut rt = Runtime::adopt(maps, saved.clone(), Some(file.0.clone()));
            rt.change_to(desired).expect("the same state");
            assert!(
                rt.datapath().writes().is_empty(),
                "{:?}",
                rt.datapath().writes()
            );
            let rewritten = std::fs::read_to_string(&file.0).expect("saved");
            assert!(
                rewritten.contains(r#""reals":{"10.0.0.11:80":1,"10.0.0.12:80":2}"#),
                "saved with typed keys: {rewritten}"
            );
            assert_eq!(
                Saved::read(&file.0),
                Some(Saved {
                    commands_without_shell: true,
                    ..saved
                })
            );
        }

        #[test]
        fn commands_that_an_older_xlbd_ran_by_sh_keep_their_shell() {
            let desired = state(
                "-A -t 10.0.0.1:80 --check exec --check-command 'probe | grep ok' --check-shell \
                 --check-notify 'logger -t xlb' \n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1 --check exec \
                 --check-command 'probe > /dev/null' --check-shell\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1 --check exec --check-command 'probe -x'\n",
            );
            let file = StateFile::new("shell");
            let mut rt = Runtime::new(FakeDataPath::default(), Some(file.0.clone()));
            rt.change_to(desired.clone()).expect("applied");
            let saved = std::fs::read_to_string(&file.0).expect("saved");
            // What an older xlbd wrote: no flag, every command run by sh -c.
            let older = saved
                .replace(r#","shell":true"#, "")
                .replace(r#""shell":true,"#, "")
                .replace(r#","commands_without_shell":true"#, "");
            assert!(!older.contains("shell"), "{older}");
            std::fs::write(&file.0, older).expect("written");
            let read = Saved::read(&file.0).expect("read");
            assert_eq!(read.desired, desired);
            assert!(read.commands_without_shell);
            // This xlbd's own file is read as it is.
            std::fs::write(&file.0, saved).expect("written");
            assert_eq!(Saved::read(&file.0).expect("read").desired, desired);
        }

        #[test]
        fn a_state_file_naming_a_service_it_cannot_read_is_refused_with_the_name() {
            let bad =
                r#"{"desired":{"services":[]},"installed":{"services":{"Sctp/10.0.0.1:80":{}}}}"#;
            let e = serde_json::from_str::<Saved>(bad).expect_err("refused");
            assert!(
                e.to_string().starts_with(
                    "the service \"Sctp/10.0.0.1:80\" is neither Tcp/ADDRESS:PORT nor \
                     Udp/ADDRESS:PORT"
                ),
                "{e}"
            );
        }

        /// Makes every change of `rt` a second older: the next sweep may settle its services.
        fn age_changes(rt: &mut Runtime<FakeDataPath>) {
            for at in rt.changed.values_mut() {
                *at = at.saturating_sub(SETTLE_AFTER_NS);
            }
        }

        fn is_settled(rt: &Runtime<FakeDataPath>, service: &str) -> bool {
            let flags = rt.datapath().service(&key(service)).expect("service").flags;
            flags & lb_common::service::SERVICE_F_SETTLED != 0
        }

        /// An embryonic flow of service 10.0.0.1:80 from client port `sport`, given to `real`.
        fn handshake(rt: &mut Runtime<FakeDataPath>, sport: u16, real: RealId) {
            let service = rt
                .datapath()
                .service(&key("10.0.0.1:80"))
                .expect("service")
                .id;
            let conn = lb_common::Connection {
                real,
                service,
                last_seen_ns: monotonic_ns(),
                flags: lb_common::conntrack::CONN_F_EMBRYONIC,
                ..Default::default()
            };
            rt.dataplane().track(client_flow(sport), conn);
        }

        /// The server service 10.0.0.1:80's table gives the flow from client port `sport`.
        fn table_server(rt: &Runtime<FakeDataPath>, sport: u16) -> RealId {
            let svc = rt.datapath().service(&key("10.0.0.1:80")).expect("service");
            let table = rt
                .datapath()
                .maglev_table(&key("10.0.0.1:80"))
                .expect("table");
            let slot =
                lb_common::service::table_slot(svc.scheduler, svc.flags, &client_flow(sport));
            table_choice(&table, slot).expect("a server")
        }

        const MAGLEV_TWO: &str = "-A -t 10.0.0.1:80 -s mh\n\
            -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
            -a -t 10.0.0.1:80 -r 10.0.0.12:80 -g -w 1\n";

        #[test]
        fn a_maglev_service_is_settled_by_the_first_sweep_a_second_after_its_last_change() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(MAGLEV_TWO)).expect("applied");
            rt.sweep();
            assert!(!is_settled(&rt, "10.0.0.1:80"), "changed a moment ago");
            age_changes(&mut rt);
            rt.sweep();
            assert!(is_settled(&rt, "10.0.0.1:80"));
            let writes = rt.datapath().writes().len();
            rt.sweep();
            assert_eq!(
                rt.datapath().writes().len(),
                writes,
                "settled once, not every sweep"
            );
            // A new weight: the table's write clears the flag, and the service waits again.
            let mut next = rt.desired().clone();
            next.services[0].reals[0].weight = 3;
            rt.change_to(next).expect("applied");
            assert!(!is_settled(&rt, "10.0.0.1:80"), "the new table cleared it");
            rt.sweep();
            assert!(!is_settled(&rt, "10.0.0.1:80"));
            age_changes(&mut rt);
            rt.sweep();
            assert!(is_settled(&rt, "10.0.0.1:80"));
        }

        #[test]
        fn a_handshake_on_another_server_than_the_table_gives_keeps_its_service_unsettled() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(MAGLEV_TWO)).expect("applied");
            // Its first SYN went by a table before the last: to the server the table does not
            // give it now.
            let now_there = table_server(&rt, 1000);
            let other = if now_there == 1 { 2 } else { 1 };
            handshake(&mut rt, 1000, other);
            let right = table_server(&rt, 1001);
            handshake(&mut rt, 1001, right);
            age_changes(&mut rt);
            rt.sweep();
            assert!(
                !is_settled(&rt, "10.0.0.1:80"),
                "a retransmitted SYN must find its flow in the embryonic table"
            );
            // The handshake completes (or idles out): the next sweep settles the service.
            handshake(&mut rt, 1000, now_there);
            rt.sweep();
            assert!(is_settled(&rt, "10.0.0.1:80"));
        }

        #[test]
        fn only_a_service_whose_table_alone_chooses_is_settled() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(
                "-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.2:80 -s sh\n-a -t 10.0.0.2:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.3:80 -s dh\n-a -t 10.0.0.3:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.4:80 -s rr\n-a -t 10.0.0.4:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.5:80 -s wlc\n-a -t 10.0.0.5:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.6:80 -s mh -p 60\n-a -t 10.0.0.6:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.7:80 -s mh\n-a -t 10.0.0.7:80 -r 10.0.0.11:80 -g -w 1 -x 10\n\
                 -A -t 10.0.0.8:80 -s ovf\n-a -t 10.0.0.8:80 -r 10.0.0.11:80 -g -w 1\n",
            ))
            .expect("applied");
            age_changes(&mut rt);
            rt.sweep();
            let settled: Vec<bool> = (1..=8)
                .map(|n| is_settled(&rt, &format!("10.0.0.{n}:80")))
                .collect();
            assert_eq!(
                settled,
                [true, true, true, false, false, false, false, false],
                "mh, sh, dh; not rr, wlc, persistence, a threshold or ovf"
            );
            // A threshold on a settled service's server: cleared before the threshold is set.
            let mut next = rt.desired().clone();
            next.services[0].reals[0].upper_threshold = 5;
            rt.change_to(next).expect("applied");
            assert!(!is_settled(&rt, "10.0.0.1:80"));
            age_changes(&mut rt);
            rt.sweep();
            assert!(
                !is_settled(&rt, "10.0.0.1:80"),
                "an overloaded server is passed by"
            );
        }

        #[test]
        fn a_service_is_not_settled_when_it_changed_after_the_sweep_read_its_inputs() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(MAGLEV_TWO)).expect("applied");
            age_changes(&mut rt);
            // The daemon's sweep: inputs under the lock, the walk off it, the settling under it.
            let inputs = rt.sweep_inputs();
            assert_eq!(inputs.settling.len(), 1);
            let swept =
                sweep_tables(&mut Through(rt.dataplane()), &inputs, monotonic_ns()).expect("swept");
            let mut next = rt.desired().clone();
            next.services[0].reals[1].weight = 2;
            rt.change_to(next).expect("applied");
            rt.settle(&inputs, &swept.handshakes);
            assert!(
                !is_settled(&rt, "10.0.0.1:80"),
                "its table changed meanwhile"
            );
        }

        #[test]
        fn an_adopted_service_is_settled_a_second_after_the_adoption() {
            let mut rt = Runtime::new(FakeDataPath::default(), None);
            rt.change_to(state(MAGLEV_TWO)).expect("applied");
            let saved = Saved {
                desired: rt.desired().clone(),
                applied: None,
                installed: rt.installed.clone(),
                unsure: BTreeSet::new(),
                commands_without_shell: true,
            };
            let dp = rt.into_datapath();
            let mut adopted = Runtime::adopt(dp, saved.clone(), None);
            adopted.sweep();
            assert!(
                !is_settled(&adopted, "10.0.0.1:80"),
                "the xlbd before may have just changed it"
            );
            age_changes(&mut adopted);
            adopted.sweep();
            assert!(is_settled(&adopted, "10.0.0.1:80"));
            // Adopted again, settled: the flag is kept and the entry not rewritten.
            let dp = adopted.into_datapath();
            let writes = dp.writes().len();
            let again = Runtime::adopt(dp, saved, None);
            assert!(is_settled(&again, "10.0.0.1:80"));
            assert_eq!(
                again.datapath().writes().len(),
                writes,
                "{:?}",
                &again.datapath().writes()[writes..]
            );
        }

        #[test]
        fn the_table_choice_is_the_slots_server_or_the_first_slots_when_it_is_empty() {
            assert_eq!(table_choice(&[3, 0, 5], 2), Some(5));
            assert_eq!(table_choice(&[3, 0, 5], 1), Some(3));
            assert_eq!(table_choice(&[0, 0, 0], 1), None);
            assert_eq!(table_choice(&[3, 0, 5], 7), None);
        }
    }
}
