//! The data path as the runtime sees it: the operations on the balancer's maps that applying a
//! desired state, listing it and counting its traffic need, and nothing about loading programs
//! or attaching them.
//!
//! [`Dataplane`] implements it over the BPF maps (root, a kernel); [`fake::FakeDataPath`] in
//! memory, with the same ids, limits and errors, a log of the writes and writes that fail on
//! demand, so that the runtime's apply, rollback and adoption are tested without root.

pub mod fake;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use lb_common::{
    Connection, Counters, FlowKey, GlobalStat, PersistKey, PersistSettings, Persistent, RealServer,
    Service, ServiceKey,
};

use crate::{
    capacity::Capacity,
    conn_filter::ConnFilter,
    dataplane::{AllCounters, ConnectionTables, Dataplane, DataplaneError, RealId},
};

/// What the runtime does to the data path. Every write either takes effect whole or fails and
/// changes nothing that the data path's packets would see.
pub trait DataPath: Send {
    /// How many services and real servers the maps hold.
    fn capacity(&self) -> Capacity;

    /// Adds a service with the empty table, or changes the scheduler (`SCHED_*`) and flags of an
    /// existing one (keeping its id and table); returns its id.
    /// [`DataplaneError::ServicesFull`] when every id is taken.
    fn upsert_service(
        &mut self,
        key: ServiceKey,
        scheduler: u8,
        flags: u32,
    ) -> Result<u32, DataplaneError>;

    /// Spreads where the CPUs start walking the `rr`/`wrr` sequence of service `id`, `len`
    /// servers long.
    fn spread_sequence_cursors(&mut self, id: u32, len: usize) -> Result<(), DataplaneError>;

    /// Sets the persistence settings of service `id` (`None`: not persistent), forgetting its
    /// persistent clients when they change.
    fn set_persistence(
        &mut self,
        id: u32,
        settings: Option<PersistSettings>,
    ) -> Result<(), DataplaneError>;

    /// The persistence settings of service `id`, when it is persistent.
    fn persistence(&self, id: u32) -> Option<PersistSettings>;

    /// Sets the weights of real servers as `wlc` weighs their connections.
    fn set_real_weights(&mut self, weights: &[(RealId, u32)]) -> Result<(), DataplaneError>;

    /// Sets the active connections of real servers as `lc`/`wlc`/`sed`/`nq` compare them, and
    /// whether each `ovf` server is full with them.
    fn set_connection_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError>;

    /// Marks real servers as an `ovf` service's (`capped`: full while their active connections
    /// exceed their weight) or not.
    fn set_weight_caps(&mut self, ids: &[RealId], capped: bool) -> Result<(), DataplaneError>;

    /// Sets a real server's connection thresholds (`-x`, `-y`; 0 = none).
    fn set_real_thresholds(
        &mut self,
        id: RealId,
        upper: u32,
        lower: u32,
    ) -> Result<(), DataplaneError>;

    /// Sets the connections (active and inactive) of real servers with thresholds, as the
    /// connection table counts them, and so whether each is overloaded.
    fn set_threshold_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError>;

    /// The persistence table's entries (persistent clients and their real servers).
    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError>;

    /// Forgets the persistent clients of these real servers; returns how many there were.
    fn forget_persistent_clients_of(
        &mut self,
        reals: &BTreeSet<RealId>,
    ) -> Result<usize, DataplaneError>;

    /// Forgets the embryonic flows (handshakes not completed) given to these real servers;
    /// returns how many there were.
    fn forget_handshakes_of(&mut self, reals: &BTreeSet<RealId>) -> Result<usize, DataplaneError>;

    /// Removes a service; [`DataplaneError::NoSuchService`] when it is not there.
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError>;

    /// The entry of a service, if it is there.
    fn service(&self, key: &ServiceKey) -> Option<Service>;

    /// Adds a real server to service `service` (its id) under the lowest free id and returns it
    /// (the id belongs to that service alone); [`DataplaneError::RealsFull`] when every id is
    /// taken, [`DataplaneError::NoSuchServiceId`] when no service has that id.
    fn add_real(&mut self, service: u32, real: RealServer) -> Result<RealId, DataplaneError>;

    /// Rewrites the entry of a real server (its forwarding method changed).
    fn update_real(&mut self, id: RealId, real: RealServer) -> Result<(), DataplaneError>;

    /// Gives real server `id`, still in the data path, to service `service` (its id): what a
    /// rollback needs when it adds back a service that was removed before its servers were.
    fn adopt_real(&mut self, service: u32, id: RealId) -> Result<(), DataplaneError>;

    /// Removes a real server (out of every table already) and forgets its connections.
    fn remove_real(&mut self, id: RealId) -> Result<(), DataplaneError>;

    /// The entry of a real server, if the id is in use.
    fn real(&self, id: RealId) -> Option<RealServer>;

    /// Makes `table` the service's live Maglev table, in one switch from a standby table written
    /// whole; a table without any server becomes the shared empty table.
    fn set_maglev_table(&mut self, key: ServiceKey, table: &[u32]) -> Result<(), DataplaneError>;

    /// The live Maglev table of a service.
    fn maglev_table(&self, key: &ServiceKey) -> Result<Vec<u32>, DataplaneError>;

    /// Sets or clears a service's `SERVICE_F_SETTLED` (its SYNs skip the embryonic table),
    /// keeping the rest of its entry; [`DataplaneError::NoSuchService`] when it is not there.
    /// [`Self::upsert_service`] and [`Self::set_maglev_table`] clear it in the update they make.
    fn settle_service(&mut self, key: ServiceKey, settled: bool) -> Result<(), DataplaneError>;

    /// Zeroes a service's counters.
    fn zero_service_counters(&mut self, id: u32) -> Result<(), DataplaneError>;

    /// Zeroes a real server's counters.
    fn zero_real_counters(&mut self, id: RealId) -> Result<(), DataplaneError>;

    /// A service's packets, bytes and new connections: its servers' and those of the servers
    /// that left it.
    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError>;

    /// A real server's packets, bytes and new connections.
    fn real_counters(&self, id: RealId) -> Result<Counters, DataplaneError>;

    /// Every service's and real server's counters at once (as [`Self::service_counters`] and
    /// [`Self::real_counters`] give them one by one).
    fn all_counters(&self) -> Result<AllCounters, DataplaneError>;

    /// Every global counter.
    fn global_counters(&self) -> Result<Vec<(GlobalStat, u64)>, DataplaneError>;

    /// The connection table's entries.
    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError>;

    /// Forgets every connection; returns how many there were.
    fn flush_connections(&mut self) -> Result<usize, DataplaneError>;

    /// Removes connection-table entries that idled out, as read by [`Self::connections`], each
    /// only while its last packet is still the one read; returns how many were removed.
    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError>;

    /// Gives persistent clients, as read by [`Self::persistent_clients`], a new last-seen time,
    /// each only while it is still as read; returns how many were written.
    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError>;

    /// Removes persistent clients past their timeout, as read, each only while it is still as
    /// read; returns how many were removed.
    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError>;

    /// The connection filter that each sweep builds from the connection table it reads
    /// ([`ConnFilter`]); `None` when the data path has none (every SYN looks its flow up).
    fn connection_filter(&self) -> Option<Arc<ConnFilter>>;

    /// Switches the data path's debug events on or off.
    fn set_debug_events(&mut self, on: bool) -> Result<(), DataplaneError>;

    /// Sets the source addresses of tunnels; `None`: the egress interface's.
    fn set_tunnel_source(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> Result<(), DataplaneError>;
}

/// The tables a sweep reads and writes ([`crate::runtime::sweep_tables`]): a data path's own
/// ([`Through`], under the daemon's lock), or handles of their own on the pinned maps
/// ([`ConnectionTables`], off it). Each is the [`DataPath`] method of the same name.
pub trait SweptTables {
    /// [`DataPath::connections`].
    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError>;
    /// [`DataPath::persistent_clients`].
    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError>;
    /// [`DataPath::expire_connections`].
    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError>;
    /// [`DataPath::hold_persistent_clients`].
    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError>;
    /// [`DataPath::expire_persistent_clients`].
    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError>;
    /// [`DataPath::connection_filter`].
    fn connection_filter(&self) -> Option<Arc<ConnFilter>>;
}

/// A data path's own tables, for a sweep through it.
pub struct Through<'a, D: ?Sized>(pub &'a mut D);

impl<D: DataPath + ?Sized> SweptTables for Through<'_, D> {
    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError> {
        self.0.connections()
    }

    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError> {
        self.0.persistent_clients()
    }

    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError> {
        self.0.expire_connections(entries)
    }

    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError> {
        self.0.hold_persistent_clients(held)
    }

    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError> {
        self.0.expire_persistent_clients(lapsed)
    }

    fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        self.0.connection_filter()
    }
}

/// The pinned maps, through handles of their own.
impl SweptTables for ConnectionTables {
    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError> {
        ConnectionTables::connections(self)
    }

    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError> {
        ConnectionTables::persistent_clients(self)
    }

    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError> {
        ConnectionTables::expire_connections(self, entries)
    }

    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError> {
        ConnectionTables::hold_persistent_clients(self, held)
    }

    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError> {
        ConnectionTables::expire_persistent_clients(self, lapsed)
    }

    fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        ConnectionTables::connection_filter(self)
    }
}

/// The BPF maps: each operation is the [`Dataplane`] method of the same name.
impl DataPath for Dataplane {
    fn capacity(&self) -> Capacity {
        Dataplane::capacity(self)
    }

    fn upsert_service(
        &mut self,
        key: ServiceKey,
        scheduler: u8,
        flags: u32,
    ) -> Result<u32, DataplaneError> {
        Dataplane::upsert_service(self, key, scheduler, flags)
    }

    fn spread_sequence_cursors(&mut self, id: u32, len: usize) -> Result<(), DataplaneError> {
        Dataplane::spread_sequence_cursors(self, id, len)
    }

    fn set_persistence(
        &mut self,
        id: u32,
        settings: Option<PersistSettings>,
    ) -> Result<(), DataplaneError> {
        Dataplane::set_persistence(self, id, settings)
    }

    fn persistence(&self, id: u32) -> Option<PersistSettings> {
        Dataplane::persistence(self, id)
    }

    fn set_real_weights(&mut self, weights: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        Dataplane::set_real_weights(self, weights)
    }

    fn set_connection_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        Dataplane::set_connection_counts(self, counts)
    }

    fn set_weight_caps(&mut self, ids: &[RealId], capped: bool) -> Result<(), DataplaneError> {
        Dataplane::set_weight_caps(self, ids, capped)
    }

    fn set_real_thresholds(
        &mut self,
        id: RealId,
        upper: u32,
        lower: u32,
    ) -> Result<(), DataplaneError> {
        Dataplane::set_real_thresholds(self, id, upper, lower)
    }

    fn set_threshold_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        Dataplane::set_threshold_counts(self, counts)
    }

    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError> {
        Dataplane::persistent_clients(self)
    }

    fn forget_persistent_clients_of(
        &mut self,
        reals: &BTreeSet<RealId>,
    ) -> Result<usize, DataplaneError> {
        self.flush_persistent_where(|_, client| reals.contains(&client.real))
    }

    fn forget_handshakes_of(&mut self, reals: &BTreeSet<RealId>) -> Result<usize, DataplaneError> {
        self.flush_connections_where(|conn| {
            conn.flags & lb_common::conntrack::CONN_F_EMBRYONIC != 0 && reals.contains(&conn.real)
        })
    }

    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        Dataplane::remove_service(self, key)
    }

    fn service(&self, key: &ServiceKey) -> Option<Service> {
        Dataplane::service(self, key)
    }

    fn add_real(&mut self, service: u32, real: RealServer) -> Result<RealId, DataplaneError> {
        Dataplane::add_real(self, service, real)
    }

    fn update_real(&mut self, id: RealId, real: RealServer) -> Result<(), DataplaneError> {
        Dataplane::update_real(self, id, real)
    }

    fn adopt_real(&mut self, service: u32, id: RealId) -> Result<(), DataplaneError> {
        Dataplane::adopt_real(self, service, id)
    }

    fn remove_real(&mut self, id: RealId) -> Result<(), DataplaneError> {
        Dataplane::remove_real(self, id)
    }

    fn real(&self, id: RealId) -> Option<RealServer> {
        Dataplane::real(self, id)
    }

    fn set_maglev_table(&mut self, key: ServiceKey, table: &[u32]) -> Result<(), DataplaneError> {
        Dataplane::set_maglev_table(self, key, table)
    }

    fn settle_service(&mut self, key: ServiceKey, settled: bool) -> Result<(), DataplaneError> {
        Dataplane::settle_service(self, key, settled)
    }

    fn maglev_table(&self, key: &ServiceKey) -> Result<Vec<u32>, DataplaneError> {
        Dataplane::maglev_table(self, key)
    }

    fn zero_service_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        Dataplane::zero_service_counters(self, id)
    }

    fn zero_real_counters(&mut self, id: RealId) -> Result<(), DataplaneError> {
        Dataplane::zero_real_counters(self, id)
    }

    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        Dataplane::service_counters(self, id)
    }

    fn real_counters(&self, id: RealId) -> Result<Counters, DataplaneError> {
        Dataplane::real_counters(self, id)
    }

    fn all_counters(&self) -> Result<AllCounters, DataplaneError> {
        Dataplane::all_counters(self)
    }

    fn global_counters(&self) -> Result<Vec<(GlobalStat, u64)>, DataplaneError> {
        Dataplane::global_counters(self)
    }

    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError> {
        Dataplane::connections(self)
    }

    fn flush_connections(&mut self) -> Result<usize, DataplaneError> {
        Dataplane::flush_connections(self)
    }

    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError> {
        Dataplane::expire_connections(self, entries)
    }

    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError> {
        Dataplane::hold_persistent_clients(self, held)
    }

    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError> {
        Dataplane::expire_persistent_clients(self, lapsed)
    }

    fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        Dataplane::connection_filter(self)
    }

    fn set_debug_events(&mut self, on: bool) -> Result<(), DataplaneError> {
        Dataplane::set_debug_events(self, on)
    }

    fn set_tunnel_source(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> Result<(), DataplaneError> {
        Dataplane::set_tunnel_source(self, v4, v6)
    }
}

/// A boxed data path is one too, for a runtime that picks its data path at run time
/// (`Runtime<Box<dyn DataPath>>`).
impl<D: DataPath + ?Sized> DataPath for Box<D> {
    fn capacity(&self) -> Capacity {
        (**self).capacity()
    }

    fn upsert_service(
        &mut self,
        key: ServiceKey,
        scheduler: u8,
        flags: u32,
    ) -> Result<u32, DataplaneError> {
        (**self).upsert_service(key, scheduler, flags)
    }

    fn spread_sequence_cursors(&mut self, id: u32, len: usize) -> Result<(), DataplaneError> {
        (**self).spread_sequence_cursors(id, len)
    }

    fn set_persistence(
        &mut self,
        id: u32,
        settings: Option<PersistSettings>,
    ) -> Result<(), DataplaneError> {
        (**self).set_persistence(id, settings)
    }

    fn persistence(&self, id: u32) -> Option<PersistSettings> {
        (**self).persistence(id)
    }

    fn set_real_weights(&mut self, weights: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        (**self).set_real_weights(weights)
    }

    fn set_connection_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        (**self).set_connection_counts(counts)
    }

    fn set_weight_caps(&mut self, ids: &[RealId], capped: bool) -> Result<(), DataplaneError> {
        (**self).set_weight_caps(ids, capped)
    }

    fn set_real_thresholds(
        &mut self,
        id: RealId,
        upper: u32,
        lower: u32,
    ) -> Result<(), DataplaneError> {
        (**self).set_real_thresholds(id, upper, lower)
    }

    fn set_threshold_counts(&mut self, counts: &[(RealId, u32)]) -> Result<(), DataplaneError> {
        (**self).set_threshold_counts(counts)
    }

    fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>, DataplaneError> {
        (**self).persistent_clients()
    }

    fn forget_persistent_clients_of(
        &mut self,
        reals: &BTreeSet<RealId>,
    ) -> Result<usize, DataplaneError> {
        (**self).forget_persistent_clients_of(reals)
    }

    fn forget_handshakes_of(&mut self, reals: &BTreeSet<RealId>) -> Result<usize, DataplaneError> {
        (**self).forget_handshakes_of(reals)
    }

    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        (**self).remove_service(key)
    }

    fn service(&self, key: &ServiceKey) -> Option<Service> {
        (**self).service(key)
    }

    fn add_real(&mut self, service: u32, real: RealServer) -> Result<RealId, DataplaneError> {
        (**self).add_real(service, real)
    }

    fn update_real(&mut self, id: RealId, real: RealServer) -> Result<(), DataplaneError> {
        (**self).update_real(id, real)
    }

    fn adopt_real(&mut self, service: u32, id: RealId) -> Result<(), DataplaneError> {
        (**self).adopt_real(service, id)
    }

    fn remove_real(&mut self, id: RealId) -> Result<(), DataplaneError> {
        (**self).remove_real(id)
    }

    fn real(&self, id: RealId) -> Option<RealServer> {
        (**self).real(id)
    }

    fn set_maglev_table(&mut self, key: ServiceKey, table: &[u32]) -> Result<(), DataplaneError> {
        (**self).set_maglev_table(key, table)
    }

    fn settle_service(&mut self, key: ServiceKey, settled: bool) -> Result<(), DataplaneError> {
        (**self).settle_service(key, settled)
    }

    fn maglev_table(&self, key: &ServiceKey) -> Result<Vec<u32>, DataplaneError> {
        (**self).maglev_table(key)
    }

    fn zero_service_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        (**self).zero_service_counters(id)
    }

    fn zero_real_counters(&mut self, id: RealId) -> Result<(), DataplaneError> {
        (**self).zero_real_counters(id)
    }

    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        (**self).service_counters(id)
    }

    fn real_counters(&self, id: RealId) -> Result<Counters, DataplaneError> {
        (**self).real_counters(id)
    }

    fn all_counters(&self) -> Result<AllCounters, DataplaneError> {
        (**self).all_counters()
    }

    fn global_counters(&self) -> Result<Vec<(GlobalStat, u64)>, DataplaneError> {
        (**self).global_counters()
    }

    fn connections(&self) -> Result<Vec<(FlowKey, Connection)>, DataplaneError> {
        (**self).connections()
    }

    fn flush_connections(&mut self) -> Result<usize, DataplaneError> {
        (**self).flush_connections()
    }

    fn expire_connections(
        &mut self,
        entries: &[(FlowKey, Connection)],
    ) -> Result<usize, DataplaneError> {
        (**self).expire_connections(entries)
    }

    fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize, DataplaneError> {
        (**self).hold_persistent_clients(held)
    }

    fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize, DataplaneError> {
        (**self).expire_persistent_clients(lapsed)
    }

    fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        (**self).connection_filter()
    }

    fn set_debug_events(&mut self, on: bool) -> Result<(), DataplaneError> {
        (**self).set_debug_events(on)
    }

    fn set_tunnel_source(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> Result<(), DataplaneError> {
        (**self).set_tunnel_source(v4, v6)
    }
}
