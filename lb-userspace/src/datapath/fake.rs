//! A data path in memory, for tests of what drives the maps (the runtime, the daemon) without
//! root.
//!
//! It keeps what the BPF maps keep, with the rules [`crate::dataplane::Dataplane`] follows: the
//! lowest free id for a new service (from 0) or real server (from 1), the same limits and the
//! same errors when they are reached, a new service on the empty table, a Maglev table written
//! to a free table of the pool and then switched live, a removed real server's connections
//! forgotten. On top of that it logs every write ([`Write`]) and can make a chosen write fail
//! ([`FakeDataPath::fail_write`]) the way a map update fails, to test what happens next.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use aya::{maps::MapError, sys::SyscallError};
use lb_common::{
    limits::{EMPTY_MAGLEV_TABLE, MAGLEV_TABLE_SIZE},
    real::LIMIT_F_WEIGHT_CAP,
    service::SERVICE_F_SETTLED,
    Connection, Counters, DataplaneConfig, FlowKey, GlobalStat, PersistKey, PersistSettings,
    Persistent, RealLimits, RealServer, Service, ServiceKey,
};

use super::DataPath;
use crate::{
    capacity::{Capacity, TablePool},
    conn_filter::ConnFilter,
    dataplane::{AllCounters, DataplaneError, RealId},
};

/// One write asked of the data path, as [`FakeDataPath::writes`] logs it (refused ones too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// [`DataPath::upsert_service`].
    UpsertService(ServiceKey),
    /// [`DataPath::remove_service`].
    RemoveService(ServiceKey),
    /// [`DataPath::spread_sequence_cursors`], with the service's id and the sequence's length.
    SpreadSequenceCursors(u32, usize),
    /// [`DataPath::set_persistence`], with the service's id.
    SetPersistence(u32),
    /// [`DataPath::forget_persistent_clients_of`].
    ForgetPersistentClients,
    /// [`DataPath::forget_handshakes_of`].
    ForgetHandshakes,
    /// [`DataPath::set_real_weights`].
    SetRealWeights,
    /// [`DataPath::set_connection_counts`].
    SetConnectionCounts,
    /// [`DataPath::set_real_thresholds`].
    SetRealThresholds(RealId),
    /// [`DataPath::set_weight_caps`], with whether the servers are capped.
    SetWeightCaps(bool),
    /// [`DataPath::set_threshold_counts`].
    SetThresholdCounts,
    /// [`DataPath::add_real`], with the entry.
    AddReal(RealServer),
    /// [`DataPath::update_real`].
    UpdateReal(RealId),
    /// [`DataPath::adopt_real`], with the service's id and the server's.
    AdoptReal(u32, RealId),
    /// [`DataPath::remove_real`].
    RemoveReal(RealId),
    /// [`DataPath::set_maglev_table`].
    SetMaglevTable(ServiceKey),
    /// [`DataPath::settle_service`], with whether the service is settled.
    SettleService(ServiceKey, bool),
    /// [`DataPath::zero_service_counters`].
    ZeroServiceCounters(u32),
    /// [`DataPath::zero_real_counters`].
    ZeroRealCounters(RealId),
    /// [`DataPath::flush_connections`].
    FlushConnections,
    /// [`DataPath::expire_connections`].
    ExpireConnections,
    /// [`DataPath::hold_persistent_clients`].
    HoldPersistentClients,
    /// [`DataPath::expire_persistent_clients`].
    ExpirePersistentClients,
    /// [`DataPath::set_debug_events`].
    SetDebugEvents(bool),
    /// [`DataPath::set_tunnel_source`].
    SetTunnelSource,
}

impl Write {
    /// What the real data path says it was doing when this write fails (its first map update).
    fn action(&self) -> &'static str {
        match self {
            Self::UpsertService(_) => "adding a service",
            Self::RemoveService(_) => "removing a service",
            Self::SpreadSequenceCursors(..) => "setting a service's round-robin positions",
            Self::SetPersistence(_) => "writing a service's persistence settings",
            Self::ForgetPersistentClients => "flushing the persistence table",
            Self::ForgetHandshakes => "flushing the embryonic table",
            Self::SetRealWeights => "writing real servers' weights",
            Self::SetConnectionCounts => "writing real servers' connection counts",
            Self::SetRealThresholds(_) => "writing a real server's connection thresholds",
            Self::SetThresholdCounts => "writing a real server's connection count",
            Self::SetWeightCaps(_) => "writing a real server's ovf marks",
            Self::AddReal(_) => "adding a real server",
            Self::UpdateReal(_) => "updating a real server",
            Self::AdoptReal(..) => "giving a real server to a service",
            Self::RemoveReal(_) => "removing a real server",
            Self::SetMaglevTable(_) => "writing a Maglev table",
            Self::SettleService(..) => "settling a service",
            Self::ZeroServiceCounters(_) => "zeroing a service's counters",
            Self::ZeroRealCounters(_) => "zeroing a real server's counters",
            Self::FlushConnections => "flushing the connection table",
            Self::ExpireConnections => "expiring connections",
            Self::HoldPersistentClients => "holding persistent clients",
            Self::ExpirePersistentClients => "expiring persistent clients",
            Self::SetDebugEvents(_) | Self::SetTunnelSource => "writing the data-path settings",
        }
    }
}

/// What packets would meet in the data path: the services with their ids, flags and live
/// tables, and the real servers by id. Equal before and after a change that was rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    /// Every service, ordered by key.
    pub services: Vec<(ServiceKey, ServiceContents)>,
    /// Every real server in use, by id.
    pub reals: BTreeMap<RealId, RealServer>,
}

impl Contents {
    /// What packets would meet, whatever the ids: the same after a rollback that gave a real
    /// server back under another id (it must: the id it had may have gone to a server the change
    /// added, which leaves the tables last, so that no live table points at a missing server).
    pub fn behaviour(&self) -> Behaviour {
        let mut reals: Vec<RealServer> = self.reals.values().copied().collect();
        reals.sort_by_key(|r| bytemuck::bytes_of(r).to_vec());
        let services = self
            .services
            .iter()
            .map(|(key, svc)| {
                let entry = |id: RealId| self.reals.get(&id).copied().unwrap_or_default();
                let mut shares: Vec<(RealServer, usize)> = svc
                    .shares()
                    .into_iter()
                    .map(|(id, slots)| (entry(id), slots))
                    .collect();
                shares.sort_by_key(|(r, _)| bytemuck::bytes_of(r).to_vec());
                let mut hasher = std::hash::DefaultHasher::new();
                for &id in &svc.table {
                    std::hash::Hash::hash(bytemuck::bytes_of(&entry(id)), &mut hasher);
                }
                let behaviour = ServiceBehaviour {
                    flags: svc.flags,
                    scheduler: svc.scheduler,
                    persistence: svc.persistence,
                    shares,
                    slots: std::hash::Hasher::finish(&hasher),
                };
                (*key, behaviour)
            })
            .collect();
        Behaviour { services, reals }
    }
}

/// [`Contents`] with real servers named by their entries rather than their ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Every service, ordered by key.
    pub services: Vec<(ServiceKey, ServiceBehaviour)>,
    /// Every real server's entry, ordered by its bytes.
    pub reals: Vec<RealServer>,
}

/// A service as packets meet it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBehaviour {
    /// Its `SERVICE_F_*` flags.
    pub flags: u32,
    /// Its scheduler (`lb_common::service::SCHED_*`).
    pub scheduler: u8,
    /// Its persistence settings, if it is persistent.
    pub persistence: Option<PersistSettings>,
    /// How many slots of its table each real server holds (the default entry: none).
    pub shares: Vec<(RealServer, usize)>,
    /// A hash of the real server in each slot, in order.
    pub slots: u64,
}

/// A service's entry and its live Maglev table.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceContents {
    /// Its id.
    pub id: u32,
    /// Its `SERVICE_F_*` flags.
    pub flags: u32,
    /// Its scheduler (`lb_common::service::SCHED_*`).
    pub scheduler: u8,
    /// Its persistence settings, if it is persistent.
    pub persistence: Option<PersistSettings>,
    /// Its live table: a real-server id (0: none) in each of the 65537 slots.
    pub table: Vec<u32>,
}

impl ServiceContents {
    /// How many slots of the table each real-server id holds (0: the empty slots).
    pub fn shares(&self) -> BTreeMap<RealId, usize> {
        let mut shares = BTreeMap::new();
        for &id in &self.table {
            *shares.entry(id).or_default() += 1;
        }
        shares
    }
}

impl fmt::Debug for ServiceContents {
    /// The table by its shares: 65537 numbers say nothing in a failed assertion.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContents")
            .field("id", &self.id)
            .field("flags", &self.flags)
            .field("scheduler", &self.scheduler)
            .field("persistence", &self.persistence)
            .field("table_shares", &self.shares())
            .finish()
    }
}

/// The data path in memory. See the module's documentation.
pub struct FakeDataPath {
    capacity: Capacity,
    services: HashMap<ServiceKey, Service>,
    /// The written tables of the pool, by table number (the empty table is never written).
    tables: HashMap<u32, Vec<u32>>,
    pool: TablePool,
    reals: BTreeMap<RealId, RealServer>,
    service_counters: BTreeMap<u32, Counters>,
    real_counters: BTreeMap<RealId, Counters>,
    connections: HashMap<FlowKey, Connection>,
    /// Persistence settings by service id.
    persistence: BTreeMap<u32, PersistSettings>,
    /// The persistence table.
    persistent: HashMap<PersistKey, Persistent>,
    /// Weights of real servers (`wlc`).
    weights: BTreeMap<RealId, u32>,
    /// Active connections of real servers (`lc`, `wlc`).
    active: BTreeMap<RealId, u32>,
    /// Connection thresholds, connections and overload flags of real servers.
    limits: BTreeMap<RealId, RealLimits>,
    config: DataplaneConfig,
    writes: Vec<Write>,
    /// Writes asked for since the start (the log can be taken).
    writes_seen: usize,
    /// Which writes fail ([`Self::writes_seen`] when they are asked), and with which errno.
    failing: BTreeMap<usize, i32>,
    /// The connection filter, in memory: [`Self::track`] sets a flow's bits as the data path
    /// does before it writes the connection table.
    filter: Arc<ConnFilter>,
}

impl Default for FakeDataPath {
    /// Empty maps of the default capacity.
    fn default() -> Self {
        Self::new(Capacity::default())
    }
}

impl FakeDataPath {
    /// Empty maps holding `capacity`.
    pub fn new(capacity: Capacity) -> Self {
        Self {
            capacity,
            services: HashMap::new(),
            tables: HashMap::new(),
            pool: TablePool::new(capacity.tables(), []),
            reals: BTreeMap::new(),
            service_counters: BTreeMap::new(),
            real_counters: BTreeMap::new(),
            connections: HashMap::new(),
            persistence: BTreeMap::new(),
            persistent: HashMap::new(),
            weights: BTreeMap::new(),
            active: BTreeMap::new(),
            limits: BTreeMap::new(),
            config: DataplaneConfig::default(),
            writes: Vec::new(),
            writes_seen: 0,
            failing: BTreeMap::new(),
            filter: Arc::new(ConnFilter::in_memory(6)),
        }
    }

    /// Makes the `n`-th write from now on (1: the next one) fail as a map update refused by the
    /// kernel with `errno`, changing nothing; the writes after it succeed again.
    pub fn fail_write(&mut self, n: usize, errno: i32) {
        self.fail_writes(&[n], errno);
    }

    /// [`Self::fail_write`] for each of the `ns`-th writes from now on, at once (a failure
    /// armed before and not reached yet is disarmed).
    pub fn fail_writes(&mut self, ns: &[usize], errno: i32) {
        assert!(
            ns.iter().all(|&n| n >= 1),
            "the first write from now on is the 1st"
        );
        self.failing = ns.iter().map(|n| (self.writes_seen + n, errno)).collect();
    }

    /// Every write asked for since the start or the last [`Self::take_writes`], in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// The log of writes, emptied.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// What packets would meet now.
    pub fn contents(&self) -> Contents {
        let mut services: Vec<(ServiceKey, ServiceContents)> = self
            .services
            .iter()
            .map(|(key, svc)| {
                let contents = ServiceContents {
                    id: svc.id,
                    flags: svc.flags,
                    scheduler: svc.scheduler,
                    persistence: self.persistence.get(&svc.id).copied(),
                    table: self.live_table(svc),
                };
                (*key, contents)
            })
            .collect();
        services.sort_by_key(|(key, _)| bytemuck::bytes_of(key).to_vec());
        Contents {
            services,
            reals: self.reals.clone(),
        }
    }

    /// The data-path settings (debug events, tunnel sources).
    pub fn config(&self) -> DataplaneConfig {
        self.config
    }

    /// Counts traffic of a service, as the data path would.
    pub fn count_service(&mut self, id: u32, counters: Counters) {
        let total = self.service_counters.entry(id).or_default();
        *total = total.add(counters);
    }

    /// Counts traffic of a real server, as the data path would.
    pub fn count_real(&mut self, id: RealId, counters: Counters) {
        let total = self.real_counters.entry(id).or_default();
        *total = total.add(counters);
    }

    /// The weight `wlc` sees for a real server.
    pub fn real_weight(&self, id: RealId) -> Option<u32> {
        self.weights.get(&id).copied()
    }

    /// The active connections `lc`/`wlc` see for a real server.
    pub fn active_connections(&self, id: RealId) -> Option<u32> {
        self.active.get(&id).copied()
    }

    /// A real server's thresholds, connections and overload flag, as last written.
    pub fn real_limits(&self, id: RealId) -> RealLimits {
        self.limits.get(&id).copied().unwrap_or_default()
    }

    /// As the data path's: a real server's `ovf` marks from its count and weight.
    fn update_weight_cap(&mut self, id: RealId, capped: Option<bool>) {
        let limits = self.limits.entry(id).or_default();
        let capped = capped.unwrap_or(limits.flags & LIMIT_F_WEIGHT_CAP != 0);
        let active = self.active.get(&id).copied().unwrap_or(0);
        let weight = self.weights.get(&id).copied().unwrap_or(0);
        limits.flags = RealLimits::with_weight_cap(limits.flags, capped, active, weight);
    }

    /// Remembers a persistent client, as the data path would for a persistent service's new flow.
    pub fn remember_client(&mut self, key: PersistKey, client: Persistent) {
        self.persistent.insert(key, client);
    }

    /// Tracks a connection, as the data path would for a new flow.
    pub fn track(&mut self, flow: FlowKey, connection: Connection) {
        if connection.flags & lb_common::conntrack::CONN_F_EMBRYONIC == 0 {
            self.filter.note(&flow);
        }
        self.connections.insert(flow, connection);
    }

    /// Logs a write and fails it if it is the one chosen by [`Self::fail_write`].
    fn write(&mut self, write: Write) -> Result<(), DataplaneError> {
        self.writes_seen += 1;
        let action = write.action();
        self.writes.push(write);
        match self.failing.remove(&self.writes_seen) {
            Some(errno) => Err(DataplaneError::Map {
                action: action.to_owned(),
                source: MapError::SyscallError(SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(errno),
                }),
            }),
            None => Ok(()),
        }
    }

    fn live_table(&self, svc: &Service) -> Vec<u32> {
        match self.tables.get(&svc.table) {
            Some(table) if svc.table != EMPTY_MAGLEV_TABLE => table.clone(),
            _ => vec![0; MAGLEV_TABLE_SIZE as usize],
        }
    }

    /// The id an array map indexes, or the error the kernel gives beyond its end.
    fn real_index(&self, id: RealId) -> Result<RealId, DataplaneError> {
        let max_entries = self.capacity.real_ids();
        if id >= max_entries {
            return Err(DataplaneError::Map {
                action: "updating a real server".to_owned(),
                source: MapError::OutOfBounds {
                    index: id,
                    max_entries,
                },
            });
        }
        Ok(id)
    }
}

impl DataPath for FakeDataPath {
    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn upsert_service(
        &mut self,
        key: ServiceKey,
        scheduler: u8,
        flags: u32,
    ) -> Result<u32, DataplaneError> {
        self.write(Write::UpsertService(key))?;
        if let Some(svc) = self.services.get_mut(&key) {
            svc.flags = flags;
            svc.scheduler = scheduler;
            return Ok(svc.id);
        }
        let id = (0..self.capacity.services)
            .find(|id| self.services.values().all(|s| s.id != *id))
            .ok_or(DataplaneError::ServicesFull {
                max: self.capacity.services,
            })?;
        self.service_counters.insert(id, Counters::default());
        self.services.insert(
            key,
            Service {
                id,
                table: EMPTY_MAGLEV_TABLE,
                flags,
                scheduler,
                _pad: [0; 3],
            },
        );
        Ok(id)
    }

    fn spread_sequence_cursors(&mut self, id: u32, len: usize) -> Result<(), DataplaneError> {
        self.write(Write::SpreadSequenceCursors(id, len))
    }

    fn set_persistence(
        &mut self,
        id: u32,
        settings: Option<PersistSettings>,
    ) -> Result<(), DataplaneError> {
        self.write(Write::SetPersistence(id))?;
        let old = self.persistence.get(&id).copied();
        match settings {
            Some(settings) => self.persistence.insert(id, settings),
            None => self.persistence.remove(&id),
        };
        if old != settings {
            self.persistent.retain(|k, _| k.service != id);
        }
        Ok(())
    }

    fn persistence(&self, id: u32) -> Option<PersistSettings> {
        self.persistence.get(&id).copied()
    }

    fn set_real_weights(&mut self, weights: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        self.write(Write::SetRealWeights)?;
        self.weights.extend(weights.iter().copied());
        Ok(())
    }

    fn set_connection_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        self.write(Write::SetConnectionCounts)?;
        self.active.extend(counts.iter().copied());
        for (id, _) in counts {
            self.update_weight_cap(*id, None);
        }
        Ok(())
    }

    fn set_weight_caps(&mut self, ids: &[RealId], capped: bool) -> Result<(), DataplaneError> {
        // As the data path, which writes only the servers whose marks change: the servers of
        // any service but ovf's, once unmarked, cost nothing (and log nothing here).
        let changes = ids.iter().any(|id| {
            let limits = self.real_limits(*id);
            let active = self.active.get(id).copied().unwrap_or(0);
            let weight = self.weights.get(id).copied().unwrap_or(0);
            RealLimits::with_weight_cap(limits.flags, capped, active, weight) != limits.flags
        });
        if !changes {
            return Ok(());
        }
        self.write(Write::SetWeightCaps(capped))?;
        for id in ids {
            self.update_weight_cap(*id, Some(capped));
        }
        Ok(())
    }

    fn set_real_thresholds(
        &mut self,
        id: RealId,
        upper: u32,
        lower: u32,
    ) -> Result<(), DataplaneError> {
        self.write(Write::SetRealThresholds(id))?;
        let limits = self.real_limits(id).with_thresholds(upper, lower);
        self.limits.insert(id, limits);
        Ok(())
    }

    fn set_threshold_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        self.write(Write::SetThresholdCounts)?;
        for (id, count) in counts {
            let Some(limits) = self.limits.get_mut(id).filter(|l| l.upper != 0) else {
                continue;
            };
            *limits = limits.with_count(*count);
        }
        Ok(())
    }

    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError> {
        Ok(self.persistent.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn forget_persistent_clients_of(
        &mut self,
        reals: &BTreeSet<RealId>,
    ) -> Result<usize, DataplaneError> {
        self.write(Write::ForgetPersistentClients)?;
        let before = self.persistent.len();
        self.persistent.retain(|_, c| !reals.contains(&c.real));
        Ok(before - self.persistent.len())
    }

    fn forget_handshakes_of(&mut self, reals: &BTreeSet<RealId>) -> Result<usize, DataplaneError> {
        self.write(Write::ForgetHandshakes)?;
        let before = self.connections.len();
        self.connections.retain(|_, c| {
            c.flags & lb_common::conntrack::CONN_F_EMBRYONIC == 0 || !reals.contains(&c.real)
        });
        Ok(before - self.connections.len())
    }

    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        self.write(Write::RemoveService(key))?;
        let svc = self
            .services
            .remove(&key)
            .ok_or(DataplaneError::NoSuchService { key })?;
        self.pool.give_back(svc.table);
        self.persistence.remove(&svc.id);
        self.persistent.retain(|k, _| k.service != svc.id);
        Ok(())
    }

    fn service(&self, key: &ServiceKey) -> Option<Service> {
        self.services.get(key).copied()
    }

    fn add_real(&mut self, service: u32, real: RealServer) -> Result<RealId, DataplaneError> {
        if !self.services.values().any(|svc| svc.id == service) {
            return Err(DataplaneError::NoSuchServiceId { id: service });
        }
        self.write(Write::AddReal(real))?;
        let id = (1..self.capacity.real_ids())
            .find(|id| !self.reals.contains_key(id))
            .ok_or(DataplaneError::RealsFull {
                max: self.capacity.reals,
            })?;
        self.real_counters.insert(id, Counters::default());
        self.limits.remove(&id);
        self.reals.insert(id, real);
        Ok(id)
    }

    fn update_real(&mut self, id: RealId, real: RealServer) -> Result<(), DataplaneError> {
        self.write(Write::UpdateReal(id))?;
        let id = self.real_index(id)?;
        if real.is_used() {
            self.reals.insert(id, real);
        } else {
            self.reals.remove(&id);
        }
        Ok(())
    }

    fn adopt_real(&mut self, service: u32, id: RealId) -> Result<(), DataplaneError> {
        if !self.services.values().any(|svc| svc.id == service) {
            return Err(DataplaneError::NoSuchServiceId { id: service });
        }
        self.write(Write::AdoptReal(service, id))?;
        if !self.reals.contains_key(&id) {
            return Err(DataplaneError::NoSuchReal { id });
        }
        Ok(())
    }

    fn remove_real(&mut self, id: RealId) -> Result<(), DataplaneError> {
        self.write(Write::RemoveReal(id))?;
        let id = self.real_index(id)?;
        self.reals.remove(&id);
        self.connections.retain(|_, c| c.real != id);
        self.persistent.retain(|_, c| c.real != id);
        Ok(())
    }

    fn real(&self, id: RealId) -> Option<RealServer> {
        self.reals.get(&id).copied()
    }

    fn set_maglev_table(&mut self, key: ServiceKey, table: &[u32]) -> Result<(), DataplaneError> {
        self.write(Write::SetMaglevTable(key))?;
        if table.len() != MAGLEV_TABLE_SIZE as usize {
            return Err(DataplaneError::TableSize {
                expected: MAGLEV_TABLE_SIZE,
                got: table.len(),
            });
        }
        let old = self
            .services
            .get(&key)
            .ok_or(DataplaneError::NoSuchService { key })?
            .table;
        let live = if table.iter().all(|&real| real == 0) {
            EMPTY_MAGLEV_TABLE
        } else {
            let fresh = self.pool.take().ok_or(DataplaneError::NoFreeTable {
                tables: self.capacity.tables(),
            })?;
            self.tables.insert(fresh, table.to_vec());
            fresh
        };
        if let Some(svc) = self.services.get_mut(&key) {
            svc.table = live;
            svc.flags &= !SERVICE_F_SETTLED;
        }
        self.pool.give_back(old);
        Ok(())
    }

    fn settle_service(&mut self, key: ServiceKey, settled: bool) -> Result<(), DataplaneError> {
        self.write(Write::SettleService(key, settled))?;
        let svc = self
            .services
            .get_mut(&key)
            .ok_or(DataplaneError::NoSuchService { key })?;
        if settled {
            svc.flags |= SERVICE_F_SETTLED;
        } else {
            svc.flags &= !SERVICE_F_SETTLED;
        }
        Ok(())
    }

    fn maglev_table(&self, key: &ServiceKey) -> Result<Vec<u32>, DataplaneError> {
        let svc = self
            .services
            .get(key)
            .ok_or(DataplaneError::NoSuchService { key: *key })?;
        Ok(self.live_table(svc))
    }

    fn zero_service_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.write(Write::ZeroServiceCounters(id))?;
        self.service_counters.insert(id, Counters::default());
        Ok(())
    }

    fn zero_real_counters(&mut self, id: RealId) -> Result<(), DataplaneError> {
        self.write(Write::ZeroRealCounters(id))?;
        self.real_counters.insert(id, Counters::default());
        Ok(())
    }

    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Ok(self.service_counters.get(&id).copied().unwrap_or_default())
    }

    fn real_counters(&self, id: RealId) -> Result<Counters, DataplaneError> {
        Ok(self.real_counters.get(&id).copied().unwrap_or_default())
    }

    fn all_counters(&self) -> Result<AllCounters, DataplaneError> {
        let by_id = |map: &BTreeMap<u32, Counters>| {
            let len = map.keys().next_back().map_or(0, |&last| last as usize + 1);
            let mut all = vec![Counters::default(); len];
            for (&id, &c) in map {
                all[id as usize] = c;
            }
            all
        };
        Ok(AllCounters {
            services: by_id(&self.service_counters),
            reals: by_id(&self.real_counters),
        })
    }

    fn global_counters(&self) -> Result<Vec<(GlobalStat, u64)>, DataplaneError> {
        Ok(GlobalStat::ALL.iter().map(|&stat| (stat, 0)).collect())
    }

    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError> {
        Ok(self.connections.iter().map(|(k, c)| (*k, *c)).collect())
    }

    fn flush_connections(&mut self) -> Result<usize, DataplaneError> {
        self.write(Write::FlushConnections)?;
        let flushed = self.connections.len();
        self.connections.clear();
        Ok(flushed)
    }

    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError> {
        self.write(Write::ExpireConnections)?;
        let mut removed = 0;
        for (key, read) in entries {
            if self
                .connections
                .get(key)
                .is_some_and(|now| now.last_seen_ns == read.last_seen_ns)
            {
                self.connections.remove(key);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError> {
        self.write(Write::HoldPersistentClients)?;
        let mut written = 0;
        for (key, read, last_seen_ns) in held {
            if let Some(client) = self.persistent.get_mut(key).filter(|now| **now == *read) {
                client.last_seen_ns = *last_seen_ns;
                written += 1;
            }
        }
        Ok(written)
    }

    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError> {
        self.write(Write::ExpirePersistentClients)?;
        let before = self.persistent.len();
        for (key, read) in lapsed {
            if self.persistent.get(key) == Some(read) {
                self.persistent.remove(key);
            }
        }
        Ok(before - self.persistent.len())
    }

    fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        Some(self.filter.clone())
    }

    fn set_debug_events(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.write(Write::SetDebugEvents(on))?;
        if on {
            self.config.flags |= lb_common::config::CONFIG_F_DEBUG_EVENTS;
        } else {
            self.config.flags &= !lb_common::config::CONFIG_F_DEBUG_EVENTS;
        }
        Ok(())
    }

    fn set_tunnel_source(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> Result<(), DataplaneError> {
        self.write(Write::SetTunnelSource)?;
        self.config.tunnel_src_v4 = v4.map_or(0, |a| u32::from(a).to_be());
        self.config.tunnel_src_v6 = v6.map_or([0; 4], |a| bytemuck::cast(a.octets()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lb_common::PROTO_TCP;

    use super::*;
    use crate::errors::error_chain;

    fn key(last: u8) -> ServiceKey {
        ServiceKey::v4(u32::from(Ipv4Addr::new(10, 0, 0, last)), 80, PROTO_TCP)
    }

    fn real(last: u8) -> RealServer {
        RealServer {
            addr: [u32::from(Ipv4Addr::new(10, 0, 1, last)).to_be(), 0, 0, 0],
            family: lb_common::FAMILY_V4,
            forward: lb_common::Forwarding::DirectRoute as u8,
            _pad: [0; 2],
            service_epoch: 0,
        }
    }

    #[test]
    fn ids_are_the_lowest_free_and_the_limits_refuse_as_the_maps_do() {
        let mut dp = FakeDataPath::new(Capacity {
            services: 2,
            reals: 2,
        });
        assert_eq!(dp.upsert_service(key(1), 0, 0).expect("first"), 0);
        assert_eq!(dp.upsert_service(key(2), 0, 0).expect("second"), 1);
        assert_eq!(dp.upsert_service(key(1), 0, 1).expect("same key"), 0);
        let full = dp.upsert_service(key(3), 0, 0).expect_err("full");
        assert_eq!(
            full.to_string(),
            "the balancer holds at most 2 services; start xlbd with --max-services N to raise it"
        );
        dp.remove_service(key(1)).expect("remove");
        assert_eq!(dp.upsert_service(key(3), 0, 0).expect("reused"), 0);

        assert_eq!(dp.add_real(0, real(1)).expect("first"), 1);
        assert_eq!(dp.add_real(0, real(2)).expect("second"), 2);
        assert!(matches!(
            dp.add_real(0, real(3)),
            Err(DataplaneError::RealsFull { max: 2 })
        ));
        dp.remove_real(1).expect("remove");
        assert_eq!(dp.add_real(0, real(3)).expect("reused"), 1);
    }

    #[test]
    fn a_table_is_switched_live_whole_and_an_empty_one_is_the_shared_empty_table() {
        let mut dp = FakeDataPath::default();
        dp.upsert_service(key(1), 0, 0).expect("service");
        assert_eq!(
            dp.service(&key(1)).expect("there").table,
            EMPTY_MAGLEV_TABLE
        );
        let ones = vec![1; MAGLEV_TABLE_SIZE as usize];
        dp.set_maglev_table(key(1), &ones).expect("table");
        let first = dp.service(&key(1)).expect("there").table;
        assert_ne!(first, EMPTY_MAGLEV_TABLE);
        assert_eq!(dp.maglev_table(&key(1)).expect("read"), ones);
        dp.set_maglev_table(key(1), &ones).expect("again");
        assert_ne!(
            dp.service(&key(1)).expect("there").table,
            first,
            "a new table is written beside the live one"
        );
        dp.set_maglev_table(key(1), &vec![0; MAGLEV_TABLE_SIZE as usize])
            .expect("empty");
        assert_eq!(
            dp.service(&key(1)).expect("there").table,
            EMPTY_MAGLEV_TABLE
        );
        assert!(matches!(
            dp.set_maglev_table(key(1), &[1, 2]),
            Err(DataplaneError::TableSize { got: 2, .. })
        ));
        assert!(matches!(
            dp.set_maglev_table(key(9), &ones),
            Err(DataplaneError::NoSuchService { .. })
        ));
    }

    #[test]
    fn the_chosen_write_fails_as_the_kernel_refuses_it_and_changes_nothing() {
        let mut dp = FakeDataPath::default();
        dp.upsert_service(key(1), 0, 0).expect("service");
        let before = dp.contents();
        dp.fail_write(2, libc::E2BIG);
        dp.add_real(0, real(1)).expect("the first write succeeds");
        let refused = dp.add_real(0, real(2)).expect_err("the second fails");
        assert_eq!(
            error_chain(&refused),
            "adding a real server failed: `bpf_map_update_elem` failed: Argument list too long \
             (os error 7)"
        );
        assert_eq!(dp.add_real(0, real(2)).expect("the third succeeds"), 2);
        assert_eq!(dp.writes().len(), 4);
        assert_eq!(
            dp.writes()[2],
            Write::AddReal(real(2)),
            "refused writes are logged"
        );
        dp.remove_real(1).expect("remove");
        dp.remove_real(2).expect("remove");
        assert_eq!(dp.contents(), before);
    }

    #[test]
    fn removing_a_real_server_forgets_its_connections() {
        let mut dp = FakeDataPath::default();
        dp.upsert_service(key(1), 0, 0).expect("service");
        let a = dp.add_real(0, real(1)).expect("a");
        let b = dp.add_real(0, real(2)).expect("b");
        for (port, id) in [(1, a), (2, b), (3, a)] {
            let flow = FlowKey {
                sport: port,
                ..Default::default()
            };
            let conn = Connection {
                real: id,
                ..Default::default()
            };
            dp.track(flow, conn);
        }
        dp.remove_real(a).expect("remove");
        let left: Vec<RealId> = dp
            .connections()
            .expect("read")
            .iter()
            .map(|(_, c)| c.real)
            .collect();
        assert_eq!(left, vec![b]);
    }
}
