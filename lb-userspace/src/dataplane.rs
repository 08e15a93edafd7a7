//! The dataplane: the only code that touches xlb's BPF maps.
//!
//! It loads the XDP object, attaches the balancer, and offers a small typed API over the maps:
//! services, real servers, Maglev tables (rewritten whole and swapped with one update, never
//! half-written), counters, and the connection table. Ids of services and real servers are
//! allocated here; on a load that adopts pinned maps they are recovered from the maps' contents.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{
        Array, DevMapHash, HashMap, IterableMap as _, MapData, MapError, PerCpuArray, ProgramArray,
    },
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    conntrack::CONN_F_EMBRYONIC,
    hash::{vip_filter_slot, VIP_FILTER_WORDS},
    limits::{EMPTY_MAGLEV_TABLE, MAGLEV_TABLE_SIZE, MAGLEV_TABLE_STRIDE},
    maps as names,
    real::{LIMIT_F_FULL, LIMIT_F_WEIGHT_CAP},
    service::{ServiceCacheSlot, SERVICE_F_SETTLED},
    Connection, Counters, CpuGlobals, DataplaneConfig, FlowKey, GlobalCounters, GlobalStat,
    NextHop, PersistKey, PersistSettings, Persistent, RealLimits, RealServer, Service, ServiceKey,
};
use thiserror::Error;

use crate::{
    batch,
    capacity::{self, Capacity, CapacityError, TablePool},
    conn_filter::ConnFilter,
    layout::{ALL_MAPS, RETIRED_MAPS},
    links,
    mapped::{MappedArray, MappedGeneration, MappedWords, LOADS_IN_ORDER},
    owners::RealOwners,
    program,
};

/// What went wrong in the dataplane.
#[derive(Debug, Error)]
pub enum DataplaneError {
    /// The embedded object could not be loaded (verifier, missing BTF, not root, ...).
    #[error("loading the XDP object failed (is this root, on a kernel with BTF?)")]
    Load {
        /// The loader's error.
        #[source]
        source: aya::EbpfError,
    },
    /// The object was built without its programs (`AYA_BUILD_SKIP=1`).
    #[error("this binary was built with AYA_BUILD_SKIP=1 and holds no XDP object")]
    NoObject,
    /// A program or map the object should hold is missing.
    #[error("the XDP object has no {what} named {name}")]
    Missing {
        /// "program" or "map".
        what: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// Loading or attaching the program failed.
    #[error("{action} the balancer program failed")]
    Program {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: ProgramError,
    },
    /// The kernel refused to load a program: its errno and the verifier's last lines (the whole
    /// log is at debug level).
    #[error(
        "the kernel refused to load the balancer program: {io_error}{}; the verifier's last \
         lines: {last_lines}",
        if matches!(io_error.kind(), std::io::ErrorKind::PermissionDenied) {
            " (xlbd needs CAP_BPF and CAP_PERFMON to load it: run it as root or with the \
             capabilities of its systemd unit)"
        } else {
            ""
        }
    )]
    ProgramRefused {
        /// The system call's error.
        io_error: std::io::Error,
        /// The verifier's last lines, joined by " / ".
        last_lines: String,
    },
    /// A map operation failed.
    #[error("{action} failed")]
    Map {
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: MapError,
    },
    /// Every service id is taken.
    #[error("{}", capacity::services_full(*max))]
    ServicesFull {
        /// The limit.
        max: u32,
    },
    /// Every real-server id is taken.
    #[error("{}", capacity::reals_full(*max))]
    RealsFull {
        /// The limit.
        max: u32,
    },
    /// No Maglev table is free: the pool's bookkeeping disagrees with the maps.
    #[error("no Maglev table of the pool is free ({tables} tables)")]
    NoFreeTable {
        /// Tables in the pool.
        tables: u32,
    },
    /// The capacity asked for cannot be used.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// The pinned maps were made by an xlbd with another table layout.
    #[error(
        "the maps pinned in {dir} have the layout of an older xlbd (two Maglev tables per \
         service); remove them to start afresh"
    )]
    OlderPinnedLayout {
        /// The pin directory.
        dir: PathBuf,
    },
    /// A pinned map could not be inspected.
    #[error("inspecting the pinned map {path}")]
    PinnedMap {
        /// Its pin.
        path: PathBuf,
        /// The error.
        #[source]
        source: MapError,
    },
    /// The service is not in the data path.
    #[error("no such service in the data path")]
    NoSuchService {
        /// Its key.
        key: ServiceKey,
    },
    /// A real server was to be added to a service id that is not in use.
    #[error("no service has id {id} in the data path")]
    NoSuchServiceId {
        /// The id.
        id: u32,
    },
    /// A real-server id that is not in use was named.
    #[error("no real server has id {id} in the data path")]
    NoSuchReal {
        /// The id.
        id: u32,
    },
    /// A Maglev table of the wrong size was given.
    #[error("a Maglev table has {expected} slots, not {got}")]
    TableSize {
        /// MAGLEV_TABLE_SIZE.
        expected: u32,
        /// What was given.
        got: usize,
    },
    /// A map could not be mapped into memory.
    #[error("{what} failed (the kernel refused to map it into memory)")]
    MapIo {
        /// What was being mapped.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A map's descriptor could not be duplicated.
    #[error("duplicating a map or program descriptor")]
    Dup {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Per-CPU values could not be prepared (the number of possible CPUs is unreadable).
    #[error("preparing per-CPU values")]
    Cpus {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Attaching through a pinned link failed.
    #[error("attaching through a pinned link")]
    PinnedLink {
        /// The error.
        #[source]
        source: links::PinnedLinkError,
    },
    /// Pinning failed.
    #[error("pinning on bpffs failed")]
    Pin {
        /// The error.
        #[source]
        source: aya::pin::PinError,
    },
    /// A sysctl could not be written.
    #[error("writing {path}")]
    Sysctl {
        /// The file under /proc/sys.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A pin directory could not be prepared.
    #[error("preparing the pin directory {path}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(action: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let action = action.into();
    move |source| DataplaneError::Map { action, source }
}

/// How to load the data path.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin (or adopt already pinned) maps in this directory on bpffs. `None`: maps live as long as
    /// this process.
    pub pin_dir: Option<PathBuf>,
    /// Connection-table size; `None` keeps the compiled default.
    pub max_connections: Option<u32>,
    /// Services the data path holds; `None`: as many as the adopted pinned maps hold, else the
    /// default ([`lb_common::limits::MAX_SERVICES`]). Each costs a Maglev table of 65537 slots
    /// (256 KiB).
    pub max_services: Option<u32>,
    /// Real servers the data path holds; `None`: as the pinned maps, else the default
    /// ([`lb_common::limits::MAX_REALS`]).
    pub max_reals: Option<u32>,
}

/// What is pinned in a pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinnedMaps {
    /// No maps.
    None,
    /// Maps of this layout, sized for this capacity.
    Current(Capacity),
    /// Maps of an older layout, which this xlbd cannot adopt.
    Older,
}

/// A real server's id in the data path (index into the real-server map, never 0).
pub type RealId = u32;

/// The loaded data path and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    services: ServiceMap,
    vip_addrs: HashMap<MapData, ServiceKey, u32>,
    vip_filter: Array<MapData, u64>,
    /// How many VIP addresses share each set bit of the VIP filter (word, bit).
    vip_filter_users: StdHashMap<(u32, u64), u32>,
    /// The filter has every bit set (pinned maps adopted; see [`Dataplane::open_vip_filter`])
    /// until this process's program is attached.
    vip_filter_open: bool,
    /// Slot pairs: element `i` holds slots `2i` and `2i + 1`.
    maglev: Array<MapData, [u32; 2]>,
    /// A second descriptor of the Maglev map for batch updates, which aya does not offer.
    maglev_fd: OwnedFd,
    /// The Maglev pool mapped into memory, where the kernel allows it.
    maglev_mapped: Option<MappedArray>,
    service_epochs: Array<MapData, u32>,
    reals: Array<MapData, RealServer>,
    next_hops: PerCpuArray<MapData, NextHop>,
    /// The connection, embryonic and persistence tables.
    flows: ConnectionTables,
    sched_cursors: PerCpuArray<MapData, u32>,
    persist_settings: Array<MapData, PersistSettings>,
    real_conns: Array<MapData, u32>,
    real_weights: Array<MapData, u32>,
    real_limits: Array<MapData, RealLimits>,
    service_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
    global_stats: PerCpuArray<MapData, CpuGlobals>,
    config: Array<MapData, DataplaneConfig>,
    egress: DevMapHash<MapData>,
    capacity: Capacity,
    free_service_ids: BTreeSet<u32>,
    free_real_ids: BTreeSet<u32>,
    /// Each real-server id in use and the id of the service it belongs to (while that service
    /// exists): whose counters a server's are, and whose epoch its entry carries. Rebuilt from
    /// the entries' epochs when pinned maps are adopted.
    real_owners: RealOwners,
    tables: TablePool,
}

/// Every service's and real server's counters, read at once ([`Dataplane::all_counters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllCounters {
    /// By service id: its servers' counters and those of the servers that left it.
    pub services: Vec<Counters>,
    /// By real-server id.
    pub reals: Vec<Counters>,
}

impl AllCounters {
    /// Service `id`'s counters (zero for an id past the map).
    pub fn service(&self, id: u32) -> Counters {
        self.services.get(id as usize).copied().unwrap_or_default()
    }

    /// Real server `id`'s counters (zero for an id past the map).
    pub fn real(&self, id: RealId) -> Counters {
        self.reals.get(id as usize).copied().unwrap_or_default()
    }
}

/// A second descriptor of the object's array or hash map `name`, for the batch calls aya does not
/// offer.
fn map_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd> {
    let data = match ebpf.map(name) {
        Some(
            aya::maps::Map::Array(data)
            | aya::maps::Map::HashMap(data)
            | aya::maps::Map::LruHashMap(data),
        ) => data,
        _ => {
            return Err(DataplaneError::Missing {
                what: "array or hash map",
                name,
            })
        }
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::Dup { source })
}

/// The services' generation mapped, on a machine that keeps loads in order (x86-64: see
/// lb-ebpf's service.rs); `None` elsewhere, which leaves the data path's service cache off.
fn service_generation(ebpf: &Ebpf) -> Result<Option<MappedGeneration>> {
    if !LOADS_IN_ORDER {
        return Ok(None);
    }
    let fd = map_fd(ebpf, names::SERVICE_GENERATION)?;
    MappedGeneration::new(fd.as_fd())
        .map(Some)
        .map_err(|source| DataplaneError::MapIo {
            what: "mapping the services' generation",
            source,
        })
}

/// The connection filter ([`names::CONN_FILTER`]) mapped, off until the first sweep builds it;
/// `None` (the filter stays off, every SYN looks its flow up) when the map cannot be mapped.
fn connection_filter(ebpf: &Ebpf, log2: u32) -> Result<Option<Arc<ConnFilter>>> {
    let fd = map_fd(ebpf, names::CONN_FILTER)?;
    let elements = lb_common::conn_filter::elements(log2) as usize;
    Ok(match MappedWords::new(fd.as_fd(), elements) {
        Ok(words) => ConnFilter::mapped(words).map(Arc::new),
        Err(e) => {
            tracing::info!(error = %e, "the connection filter cannot be mapped: every SYN looks its flow up");
            None
        }
    })
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { what: "map", name })?;
    T::try_from(map).map_err(map_err(format!("opening map {name}")))
}

/// The services map ([`names::SERVICES`]), whose every write is followed by a new services'
/// generation ([`names::SERVICE_GENERATION`]): the data path keeps per-CPU copies of the entries
/// its new flows found and takes a copy only while the generation is the one it was made under.
/// Without the mapping (a machine whose loads may pass each other: see lb-ebpf's service.rs) the
/// generation stays 0, which the data path reads as "no copies".
struct ServiceMap {
    map: HashMap<MapData, ServiceKey, Service>,
    generation: Option<MappedGeneration>,
}

impl ServiceMap {
    fn new(
        map: HashMap<MapData, ServiceKey, Service>,
        generation: Option<MappedGeneration>,
    ) -> Self {
        if let Some(generation) = &generation {
            // A fresh map holds 0, "no copies": copies start with the first generation.
            generation.set(generation.get().max(1));
        }
        Self { map, generation }
    }

    fn get(&self, key: &ServiceKey, flags: u64) -> Result<Service, MapError> {
        self.map.get(key, flags)
    }

    fn iter(&self) -> impl Iterator<Item = Result<(ServiceKey, Service), MapError>> + '_ {
        self.map.iter()
    }

    fn insert(&mut self, key: ServiceKey, svc: Service, flags: u64) -> Result<(), MapError> {
        let written = self.map.insert(key, svc, flags);
        self.next_generation();
        written
    }

    fn remove(&mut self, key: &ServiceKey) -> Result<(), MapError> {
        let removed = self.map.remove(key);
        self.next_generation();
        removed
    }

    /// Every copy the data path holds is stale from now on (also after a failed write, which
    /// may have done part of its work).
    fn next_generation(&self) {
        if let Some(generation) = &self.generation {
            generation.set(generation.get().wrapping_add(1).max(1));
        }
    }
}

/// The connection table, the embryonic table and the persistence table: what xlbd's sweep reads
/// and writes. The daemon's own are in its [`Dataplane`]; [`ConnectionTables::open_pinned`] opens
/// handles of their own on the pinned maps, for a sweep that runs off the daemon's lock.
pub struct ConnectionTables {
    conntrack: HashMap<MapData, FlowKey, Connection>,
    /// Embryonic TCP flows (a SYN seen), apart from the connection table until promoted.
    embryonic: HashMap<MapData, FlowKey, Connection>,
    /// Second descriptors of the connection table and the embryonic table, for batch reads.
    conntrack_fd: OwnedFd,
    embryonic_fd: OwnedFd,
    persist: HashMap<MapData, PersistKey, Persistent>,
    /// The connection filter of the data path that writes these tables, which each sweep builds
    /// again from what it reads ([`ConnFilter`]).
    filter: Option<Arc<ConnFilter>>,
}

impl ConnectionTables {
    /// The table a flow's entry lives in: the embryonic table when `flags` (the entry's) include
    /// [`CONN_F_EMBRYONIC`], the connection table otherwise.
    fn table_of(&mut self, flags: u32) -> &mut HashMap<MapData, FlowKey, Connection> {
        if flags & CONN_F_EMBRYONIC != 0 {
            &mut self.embryonic
        } else {
            &mut self.conntrack
        }
    }

    /// Handles of their own on the tables pinned in `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        fn open<K: aya::Pod, V: aya::Pod>(
            pin_dir: &Path,
            name: &'static str,
        ) -> Result<(HashMap<MapData, K, V>, OwnedFd)> {
            let path = pin_dir.join(name);
            let opening = || map_err(format!("opening the pinned map {}", path.display()));
            let data = MapData::from_pin(&path).map_err(opening())?;
            let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| {
                opening()(MapError::from(aya::sys::SyscallError {
                    call: "dup",
                    io_error: e,
                }))
            })?;
            let map = aya::maps::Map::from_map_data(data).map_err(opening())?;
            Ok((HashMap::try_from(map).map_err(opening())?, fd))
        }
        let (conntrack, conntrack_fd) = open(pin_dir, names::CONNTRACK)?;
        let (embryonic, embryonic_fd) = open(pin_dir, names::EMBRYONIC)?;
        let (persist, _) = open(pin_dir, names::PERSIST)?;
        Ok(Self {
            conntrack,
            embryonic,
            conntrack_fd,
            embryonic_fd,
            persist,
            filter: None,
        })
    }

    /// These handles with the connection filter of the data path that writes the tables, for
    /// the sweep to build ([`ConnFilter`]).
    pub fn with_filter(mut self, filter: Option<Arc<ConnFilter>>) -> Self {
        self.filter = filter;
        self
    }

    /// The connection filter the sweep builds, if there is one.
    pub fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        self.filter.clone()
    }

    /// Every entry of the persistence table (persistent clients and their real servers).
    pub fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>> {
        self.persist
            .iter()
            .map(|r| r.map_err(map_err("reading the persistence table")))
            .collect()
    }

    /// The connection table's entries, then the embryonic table's (their flags include
    /// [`CONN_F_EMBRYONIC`]).
    ///
    /// Read in batches of thousands (`BPF_MAP_LOOKUP_BATCH`), so that a full table (a SYN flood
    /// fills the embryonic one) costs the control plane milliseconds, not two system calls per
    /// entry; key by key where the kernel refuses batches.
    pub fn connections(&self) -> Result<Vec<(FlowKey, Connection)>> {
        let read = |fd: &OwnedFd,
                    map: &HashMap<MapData, FlowKey, Connection>,
                    what: &'static str|
         -> Result<Vec<(FlowKey, Connection)>> {
            match batch::lookup_all(fd.as_fd()) {
                Ok(all) => Ok(all),
                Err(e) => {
                    tracing::debug!(error = %e, "{what}: no batch reads, key by key instead");
                    map.iter()
                        .map(|r| r.map_err(map_err(format!("reading the {what}"))))
                        .collect()
                }
            }
        };
        let mut all = read(&self.conntrack_fd, &self.conntrack, "connection table")?;
        all.extend(
            read(&self.embryonic_fd, &self.embryonic, "embryonic table")?
                .into_iter()
                .map(|(key, mut conn)| {
                    conn.flags |= CONN_F_EMBRYONIC;
                    (key, conn)
                }),
        );
        Ok(all)
    }

    /// Removes connection-table entries that idled out (embryonic ones from the embryonic
    /// table), each only while its last packet is still the one read: a flow that a packet
    /// refreshed since stays. Returns how many were removed.
    pub fn expire_connections(&mut self, entries: &[(FlowKey, Connection)]) -> Result<usize> {
        let mut removed = 0;
        for (key, read) in entries {
            let table = self.table_of(read.flags);
            match table.get(key, 0) {
                Ok(now) if now.last_seen_ns == read.last_seen_ns => {}
                Ok(_) | Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err("reading the connection table")(e)),
            }
            match table.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("expiring connections")(e)),
            }
        }
        Ok(removed)
    }

    /// Gives persistent clients a new last-seen time, each only while it is still the client
    /// read (the same server, epoch and time: the data path did not give it another server
    /// meanwhile). Returns how many were written.
    pub fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize> {
        let mut written = 0;
        for (key, read, last_seen_ns) in held {
            match self.persist.get(key, 0) {
                Ok(now) if now == *read => {}
                Ok(_) | Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err("reading the persistence table")(e)),
            }
            let client = Persistent {
                last_seen_ns: *last_seen_ns,
                ..*read
            };
            self.persist
                .insert(key, client, 0)
                .map_err(map_err("holding persistent clients"))?;
            written += 1;
        }
        Ok(written)
    }

    /// Removes persistent clients past their timeout, each only while it is still as read.
    /// Returns how many were removed.
    pub fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize> {
        let mut removed = 0;
        for (key, read) in lapsed {
            match self.persist.get(key, 0) {
                Ok(now) if now == *read => {}
                Ok(_) | Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err("reading the persistence table")(e)),
            }
            match self.persist.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("expiring persistent clients")(e)),
            }
        }
        Ok(removed)
    }
}

impl Dataplane {
    /// Loads the object and its balancer program (not attached yet).
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let object = program::object();
        if object.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let pinned = match &options.pin_dir {
            Some(dir) => match Self::pinned_maps(dir)? {
                PinnedMaps::None => None,
                PinnedMaps::Current(capacity) => Some(capacity),
                PinnedMaps::Older => {
                    return Err(DataplaneError::OlderPinnedLayout { dir: dir.clone() })
                }
            },
            None => None,
        };
        let capacity = Capacity::resolve(options.max_services, options.max_reals, pinned)?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::SERVICES, capacity.services)
            .map_max_entries(names::VIP_ADDRS, capacity.services)
            .map_max_entries(names::SERVICE_STATS, capacity.services)
            .map_max_entries(names::SERVICE_EPOCHS, capacity.services + 1)
            .map_max_entries(names::SCHED_CURSORS, capacity.services)
            .map_max_entries(names::PERSIST_SETTINGS, capacity.services)
            .map_max_entries(names::MAGLEV, capacity.maglev_elements())
            .map_max_entries(names::REALS, capacity.real_ids())
            .map_max_entries(names::NEXT_HOPS, capacity.real_ids())
            .map_max_entries(names::REAL_STATS, capacity.real_ids())
            .map_max_entries(names::REAL_CONNS, capacity.real_ids())
            .map_max_entries(names::REAL_WEIGHTS, capacity.real_ids())
            .map_max_entries(names::REAL_LIMITS, capacity.real_ids());
        let filter_log2 = lb_common::conn_filter::words_log2(
            options
                .max_connections
                .unwrap_or(lb_common::limits::MAX_CONNECTIONS),
        );
        loader.map_max_entries(
            names::CONN_FILTER,
            lb_common::conn_filter::elements(filter_log2),
        );
        if let Some(n) = options.max_connections {
            loader.map_max_entries(names::CONNTRACK, n);
            loader.map_max_entries(names::EMBRYONIC, lb_common::limits::embryonic_entries(n));
        }
        if let Some(dir) = &options.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                path: dir.clone(),
                source,
            })?;
            for name in ALL_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|source| DataplaneError::Load { source })?;
        balancer_mut(&mut ebpf)?.load().map_err(load_refused)?;
        install_tail_calls(&mut ebpf)?;

        let maglev_fd = map_fd(&ebpf, names::MAGLEV)?;
        let conntrack_fd = map_fd(&ebpf, names::CONNTRACK)?;
        let embryonic_fd = map_fd(&ebpf, names::EMBRYONIC)?;
        let mut dataplane = Self {
            maglev_mapped: MappedArray::new(
                maglev_fd.as_fd(),
                capacity.maglev_slots(),
            )
            .inspect_err(|e| {
                tracing::info!(error = %e, "the Maglev pool cannot be mapped: batch updates instead");
            })
            .ok(),
            maglev_fd,
            services: ServiceMap::new(
                take(&mut ebpf, names::SERVICES)?,
                service_generation(&ebpf)?,
            ),
            vip_addrs: take(&mut ebpf, names::VIP_ADDRS)?,
            vip_filter: take(&mut ebpf, names::VIP_FILTER)?,
            vip_filter_users: StdHashMap::new(),
            vip_filter_open: false,
            maglev: take(&mut ebpf, names::MAGLEV)?,
            service_epochs: take(&mut ebpf, names::SERVICE_EPOCHS)?,
            reals: take(&mut ebpf, names::REALS)?,
            next_hops: take(&mut ebpf, names::NEXT_HOPS)?,
            flows: ConnectionTables {
                conntrack: take(&mut ebpf, names::CONNTRACK)?,
                embryonic: take(&mut ebpf, names::EMBRYONIC)?,
                conntrack_fd,
                embryonic_fd,
                persist: take(&mut ebpf, names::PERSIST)?,
                filter: connection_filter(&ebpf, filter_log2)?,
            },
            sched_cursors: take(&mut ebpf, names::SCHED_CURSORS)?,
            persist_settings: take(&mut ebpf, names::PERSIST_SETTINGS)?,
            real_conns: take(&mut ebpf, names::REAL_CONNS)?,
            real_weights: take(&mut ebpf, names::REAL_WEIGHTS)?,
            real_limits: take(&mut ebpf, names::REAL_LIMITS)?,
            service_stats: take(&mut ebpf, names::SERVICE_STATS)?,
            real_stats: take(&mut ebpf, names::REAL_STATS)?,
            global_stats: take(&mut ebpf, names::GLOBAL_STATS)?,
            config: take(&mut ebpf, names::CONFIG)?,
            egress: take(&mut ebpf, names::EGRESS)?,
            ebpf,
            capacity,
            free_service_ids: BTreeSet::new(),
            free_real_ids: BTreeSet::new(),
            real_owners: RealOwners::default(),
            tables: TablePool::new(0, []),
        };
        dataplane.recover_ids()?;
        if pinned.is_some() {
            dataplane.open_vip_filter()?;
        } else {
            dataplane.rebuild_vip_filter()?;
        }
        Ok(dataplane)
    }

    /// What is pinned in `dir`: nothing, maps of this layout (and their capacity), or maps of
    /// an older layout. Read from the pinned maps' sizes.
    pub fn pinned_maps(dir: &Path) -> Result<PinnedMaps> {
        let info = |name: &str| {
            let path = dir.join(name);
            aya::maps::MapInfo::from_pin(&path)
                .map(|info| (info.max_entries(), info.value_size()))
                .map_err(|source| DataplaneError::PinnedMap { path, source })
        };
        if !dir.join(names::SERVICES).exists() {
            return Ok(PinnedMaps::None);
        }
        let services = info(names::SERVICES)?.0;
        let reals = info(names::REALS)?.0.saturating_sub(1);
        let capacity = Capacity { services, reals };
        let maglev = info(names::MAGLEV)?;
        Ok(if maglev == (capacity.maglev_elements(), 8) {
            PinnedMaps::Current(capacity)
        } else {
            PinnedMaps::Older
        })
    }

    /// What this data path holds.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Rebuilds the free-id sets and the free tables from the maps (all free on a fresh load;
    /// what the services do not use when pinned maps were adopted).
    fn recover_ids(&mut self) -> Result<()> {
        let mut used_services = BTreeSet::new();
        let mut used_tables = BTreeSet::new();
        // A service's epoch is never given to another: it names the service a server's entry
        // belongs to.
        let mut epochs = BTreeMap::new();
        for entry in self.services.iter() {
            let (_, svc) = entry.map_err(map_err("reading the services"))?;
            used_services.insert(svc.id);
            used_tables.insert(svc.table);
            epochs.insert(self.service_epoch(svc.id)?, svc.id);
        }
        self.free_service_ids = (0..self.capacity.services)
            .filter(|id| !used_services.contains(id))
            .collect();
        self.tables = TablePool::new(self.capacity.tables(), used_tables);
        let mut free_reals = BTreeSet::new();
        self.real_owners.clear();
        for id in 1..self.capacity.real_ids() {
            let real = self
                .reals
                .get(&id, 0)
                .map_err(map_err("reading the real servers"))?;
            if !real.is_used() {
                free_reals.insert(id);
            } else if let Some(&service) = epochs.get(&real.service_epoch) {
                self.real_owners.insert(id, service);
            }
        }
        self.free_real_ids = free_reals;
        Ok(())
    }

    /// Rewrites the VIP filter from the VIP map, after a load: the pinned filter of an older
    /// version may be missing or stale. Only words that differ are written.
    fn rebuild_vip_filter(&mut self) -> Result<()> {
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        self.vip_filter_users.clear();
        for entry in self.vip_addrs.keys() {
            let vip = entry.map_err(map_err("reading the VIP addresses"))?;
            let (word, bit) = vip_filter_slot(&vip.addr, vip.family);
            words[word as usize] |= bit;
            *self.vip_filter_users.entry((word, bit)).or_default() += 1;
        }
        for (index, word) in (0u32..).zip(words) {
            if self.vip_filter.get(&index, 0).ok() != Some(word) {
                self.vip_filter
                    .set(index, word, 0)
                    .map_err(map_err("writing the VIP filter"))?;
            }
        }
        Ok(())
    }

    /// Sets every bit of the VIP filter: each packet then asks the exact VIP map. Done when this
    /// process adopts pinned maps, where the program still attached may have been built with
    /// another filter function (an upgrade): until this process's own program is attached (and
    /// the filter rebuilt by [`Self::filter_for_this_program`]), neither program can miss a VIP.
    fn open_vip_filter(&mut self) -> Result<()> {
        for index in 0..VIP_FILTER_WORDS {
            self.vip_filter
                .set(index, u64::MAX, 0)
                .map_err(map_err("writing the VIP filter"))?;
        }
        self.vip_filter_open = true;
        Ok(())
    }

    /// Once this process's program is attached: the VIP filter as its filter function computes
    /// it, when it was left open at load.
    fn filter_for_this_program(&mut self) -> Result<()> {
        if self.vip_filter_open {
            self.rebuild_vip_filter()?;
            self.vip_filter_open = false;
        }
        Ok(())
    }

    /// A service epoch never given before: one more than the highest so far, which is kept in
    /// the map's last entry (pinned with it, so it survives restarts).
    fn next_service_epoch(&mut self) -> Result<u32> {
        let last = self.capacity.services;
        let highest = self
            .service_epochs
            .get(&last, 0)
            .map_err(map_err("reading the service epochs"))?;
        let next = highest.checked_add(1).unwrap_or(1);
        self.service_epochs
            .set(last, next, 0)
            .map_err(map_err("writing the service epochs"))?;
        Ok(next)
    }

    /// Sets or clears one bit of the VIP filter's `word`.
    fn write_vip_filter_bit(&mut self, word: u32, bit: u64, set: bool) -> Result<()> {
        if self.vip_filter_open {
            // Every bit stays set until the rebuild after attaching.
            return Ok(());
        }
        let current = self
            .vip_filter
            .get(&word, 0)
            .map_err(map_err("reading the VIP filter"))?;
        let new = if set { current | bit } else { current & !bit };
        if new != current {
            self.vip_filter
                .set(word, new, 0)
                .map_err(map_err("writing the VIP filter"))?;
        }
        Ok(())
    }

    /// A VIP address arrives: its filter bit is set before any entry for it exists.
    fn add_vip_to_filter(&mut self, vip: &ServiceKey) -> Result<()> {
        let slot = vip_filter_slot(&vip.addr, vip.family);
        let users = self.vip_filter_users.entry(slot).or_default();
        *users += 1;
        if *users == 1 {
            self.write_vip_filter_bit(slot.0, slot.1, true)?;
        }
        Ok(())
    }

    /// A VIP address is gone: its filter bit is cleared when no other VIP shares it.
    fn remove_vip_from_filter(&mut self, vip: &ServiceKey) -> Result<()> {
        let slot = vip_filter_slot(&vip.addr, vip.family);
        let Some(users) = self.vip_filter_users.get_mut(&slot) else {
            return Ok(());
        };
        *users -= 1;
        if *users == 0 {
            self.vip_filter_users.remove(&slot);
            self.write_vip_filter_bit(slot.0, slot.1, false)?;
        }
        Ok(())
    }

    /// The balancer program, e.g. for `test_run`.
    pub fn program(&self) -> Result<&Xdp> {
        self.ebpf
            .program(names::PROG_BALANCER)
            .ok_or_else(no_balancer)?
            .try_into()
            .map_err(not_xdp)
    }

    /// Attaches the balancer to an interface (in the calling thread's network namespace) and
    /// turns IPv4 forwarding on for it: the kernel's FIB, which gives the data path its next hops,
    /// answers only for interfaces that forward. The attachment lasts as long as this value.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        enable_forwarding(iface)?;
        self.fill_egress()?;
        self.program_mut()?
            .attach(iface, mode)
            .map_err(|source| DataplaneError::Program {
                action: "attaching",
                source,
            })?;
        self.filter_for_this_program()
    }

    /// Attaches the balancer to an interface through a bpf_link pinned at `pin_dir/link_<iface>`,
    /// so that it keeps forwarding after this process exits. When that pin exists (a daemon ran
    /// before), the program in the pinned link is replaced atomically by this one: not one packet
    /// meets an interface without the balancer. The program itself is pinned at `pin_dir/prog`.
    pub fn attach_pinned(&mut self, iface: &str, mode: XdpMode, pin_dir: &Path) -> Result<()> {
        enable_forwarding(iface)?;
        self.fill_egress()?;
        let link_path = pin_dir.join(format!("link_{iface}"));
        let replaced = links::attach_pinned(self.program_mut()?, iface, mode, &link_path)
            .map_err(|source| DataplaneError::PinnedLink { source })?;
        let prog_path = pin_dir.join("prog");
        let _ = std::fs::remove_file(&prog_path);
        self.program_mut()?
            .pin(&prog_path)
            .map_err(|source| DataplaneError::Pin { source })?;
        tracing::info!(iface, replaced, "balancer attached through a pinned link");
        self.filter_for_this_program()
    }

    /// Puts every interface of the calling thread's network namespace in the redirect devmap.
    fn fill_egress(&mut self) -> Result<()> {
        for ifindex in interface_indexes() {
            if self.egress.get(ifindex, 0).is_ok() {
                continue;
            }
            if let Err(e) = self.egress.insert(ifindex, ifindex, None, 0) {
                // Some devices cannot be redirect targets; bpf_redirect still reaches them.
                tracing::debug!(ifindex, error = %e, "interface left out of the redirect devmap");
            }
        }
        Ok(())
    }

    /// Removes every pin under `pin_dir` (links, program, maps): once this process exits, the
    /// balancer is detached and its maps are freed.
    pub fn remove_pins(pin_dir: &Path) -> std::io::Result<()> {
        if let Ok(entries) = std::fs::read_dir(pin_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("link_") || name == "prog" || name == crate::layout::RECORD {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Self::unpin(pin_dir)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp> {
        balancer_mut(&mut self.ebpf)
    }

    /// Adds a service, or updates the flags of an existing one, keeping its id and its table.
    /// A new service has an empty table (no server) until [`Dataplane::set_maglev_table`].
    pub fn upsert_service(&mut self, key: ServiceKey, scheduler: u8, flags: u32) -> Result<u32> {
        if let Ok(mut svc) = self.services.get(&key, 0) {
            svc.flags = flags;
            svc.scheduler = scheduler;
            self.services
                .insert(key, svc, 0)
                .map_err(map_err("updating a service"))?;
            return Ok(svc.id);
        }
        let id = *self
            .free_service_ids
            .first()
            .ok_or(DataplaneError::ServicesFull {
                max: self.capacity.services,
            })?;
        // Known flows are followed without a service lookup while the service's epoch is the one
        // they recorded: a new service gets an epoch no earlier service had, before it exists.
        let epoch = self.next_service_epoch()?;
        self.service_epochs
            .set(id, epoch, 0)
            .map_err(map_err("writing a service's epoch"))?;
        // The empty table until its first table is written: no server yet.
        let svc = Service {
            id,
            table: EMPTY_MAGLEV_TABLE,
            flags,
            scheduler,
            _pad: [0; 3],
        };
        self.service_stats
            .set(id, zeroed_per_cpu()?, 0)
            .map_err(map_err("zeroing a service's counters"))?;
        let vip = key.vip_only();
        let count = self.vip_addrs.get(&vip, 0).unwrap_or(0);
        if count == 0 {
            self.add_vip_to_filter(&vip)?;
        }
        let added = self
            .services
            .insert(key, svc, 0)
            .map_err(map_err("adding a service"))
            .and_then(|()| {
                self.vip_addrs
                    .insert(vip, count + 1, 0)
                    .map_err(map_err("adding a VIP address"))
            });
        if let Err(e) = added {
            let _ = self.services.remove(&key);
            if count == 0 {
                let _ = self.remove_vip_from_filter(&vip);
            }
            return Err(e);
        }
        self.free_service_ids.remove(&id);
        Ok(id)
    }

    /// Removes a service. Its connections stay in the table until they age out, but no longer
    /// match: packets of the service are passed from now on.
    pub fn remove_service(&mut self, key: ServiceKey) -> Result<()> {
        let svc = self
            .services
            .get(&key, 0)
            .map_err(|_| DataplaneError::NoSuchService { key })?;
        self.services
            .remove(&key)
            .map_err(map_err("removing a service"))?;
        // Its known flows stop being followed at once: they compare the epoch they recorded with
        // their server's entry's.
        self.service_epochs
            .set(svc.id, 0, 0)
            .map_err(map_err("clearing a service's epoch"))?;
        let owned: Vec<RealId> = self.owned_reals(svc.id).collect();
        for id in owned {
            self.set_real_service_epoch(id, 0)?;
            self.real_owners.remove(id);
        }
        let vip = key.vip_only();
        match self.vip_addrs.get(&vip, 0) {
            Ok(n) if n > 1 => self
                .vip_addrs
                .insert(vip, n - 1, 0)
                .map_err(map_err("updating a VIP address"))?,
            _ => {
                let _ = self.vip_addrs.remove(&vip);
                self.remove_vip_from_filter(&vip)?;
            }
        }
        self.free_service_ids.insert(svc.id);
        self.tables.give_back(svc.table);
        self.persist_settings
            .set(svc.id, PersistSettings::default(), 0)
            .map_err(map_err("clearing a service's persistence settings"))?;
        self.flush_persistent_where(|k, _| k.service == svc.id)?;
        Ok(())
    }

    /// Spreads where the CPUs start walking the sequence of service `id` (`rr`, `wrr`), of
    /// `len` servers, evenly over it ([`crate::sequence::cursor_starts`]).
    pub fn spread_sequence_cursors(&mut self, id: u32, len: usize) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DataplaneError::Cpus { source })?;
        let values = aya::maps::PerCpuValues::try_from(crate::sequence::cursor_starts(len, cpus))
            .map_err(|source| DataplaneError::Cpus { source })?;
        self.sched_cursors
            .set(id, values, 0)
            .map_err(map_err("setting a service's round-robin positions"))
    }

    /// Sets the persistence settings of service `id` (`None`: not persistent), forgetting its
    /// persistent clients when they change.
    pub fn set_persistence(&mut self, id: u32, settings: Option<PersistSettings>) -> Result<()> {
        let settings = settings.unwrap_or_default();
        let old = self.persist_settings.get(&id, 0).unwrap_or_default();
        self.persist_settings
            .set(id, settings, 0)
            .map_err(map_err("writing a service's persistence settings"))?;
        if old != settings {
            self.flush_persistent_where(|k, _| k.service == id)?;
        }
        Ok(())
    }

    /// Sets the weights of real servers as `wlc` weighs their connections.
    pub fn set_real_weights(&mut self, weights: &[(RealId, u32)]) -> Result<()> {
        for (id, weight) in weights {
            self.real_weights
                .set(*id, *weight, 0)
                .map_err(map_err("writing a real server's weight"))?;
        }
        Ok(())
    }

    /// Sets the active connections of real servers as `lc`/`wlc`/`sed`/`nq` compare them, and
    /// whether each `ovf` server is full with them.
    pub fn set_connection_counts(&mut self, counts: &[(RealId, u32)]) -> Result<()> {
        for (id, count) in counts {
            self.real_conns
                .set(*id, *count, 0)
                .map_err(map_err("writing a real server's connection count"))?;
            self.update_weight_cap(*id, None)?;
        }
        Ok(())
    }

    /// Marks real servers as an `ovf` service's (`capped`: full while their active connections
    /// exceed their weight) or not, and whether each is full now.
    pub fn set_weight_caps(&mut self, ids: &[RealId], capped: bool) -> Result<()> {
        for id in ids {
            self.update_weight_cap(*id, Some(capped))?;
        }
        Ok(())
    }

    /// Rewrites a real server's `ovf` marks from its count and weight: as an `ovf` server's or
    /// not when `capped` says, else as they are. Written only when they change.
    fn update_weight_cap(&mut self, id: RealId, capped: Option<bool>) -> Result<()> {
        let mut limits = self
            .real_limits
            .get(&id, 0)
            .map_err(map_err("reading a real server's connection thresholds"))?;
        let capped = capped.unwrap_or(limits.flags & LIMIT_F_WEIGHT_CAP != 0);
        // Not an ovf server's, and not marked: one read (every rebuild of every service asks).
        if !capped && limits.flags & (LIMIT_F_WEIGHT_CAP | LIMIT_F_FULL) == 0 {
            return Ok(());
        }
        let active = self
            .real_conns
            .get(&id, 0)
            .map_err(map_err("reading a real server's connection count"))?;
        let weight = self
            .real_weights
            .get(&id, 0)
            .map_err(map_err("reading a real server's weight"))?;
        let flags = RealLimits::with_weight_cap(limits.flags, capped, active, weight);
        if flags == limits.flags {
            return Ok(());
        }
        limits.flags = flags;
        self.real_limits
            .set(id, limits, 0)
            .map_err(map_err("writing a real server's ovf marks"))
    }

    /// Sets a real server's connection thresholds (`-x`, `-y`; 0 = none), keeping its count.
    /// As IPVS does on such a change, the server stays overloaded only when it has `upper`
    /// connections or more.
    pub fn set_real_thresholds(&mut self, id: RealId, upper: u32, lower: u32) -> Result<()> {
        let limits = self
            .real_limits
            .get(&id, 0)
            .unwrap_or_default()
            .with_thresholds(upper, lower);
        self.real_limits
            .set(id, limits, 0)
            .map_err(map_err("writing a real server's connection thresholds"))
    }

    /// Writes the connections (active and inactive) of real servers with thresholds, as counted
    /// in the connection table, and whether each is overloaded with them.
    pub fn set_threshold_counts(&mut self, counts: &[(RealId, u32)]) -> Result<()> {
        for (id, count) in counts {
            let limits = self
                .real_limits
                .get(id, 0)
                .map_err(map_err("reading a real server's connection thresholds"))?;
            if limits.upper == 0 {
                continue;
            }
            let limits = limits.with_count(*count);
            self.real_limits
                .set(*id, limits, 0)
                .map_err(map_err("writing a real server's connection count"))?;
        }
        Ok(())
    }

    /// A real server's thresholds, connections and overload flag as the data path has them.
    pub fn real_limits(&self, id: RealId) -> Result<RealLimits> {
        self.real_limits
            .get(&id, 0)
            .map_err(map_err("reading a real server's connection thresholds"))
    }

    /// The active connections `lc`/`wlc` see for a real server now.
    pub fn connection_count(&self, id: RealId) -> Result<u32> {
        self.real_conns
            .get(&id, 0)
            .map_err(map_err("reading a real server's connection count"))
    }

    /// The persistence settings of service `id`.
    pub fn persistence(&self, id: u32) -> Option<PersistSettings> {
        self.persist_settings
            .get(&id, 0)
            .ok()
            .filter(|s| s.timeout_ns != 0)
    }

    /// Every entry of the persistence table (persistent clients and their real servers).
    pub fn persistent_clients(&self) -> Result<Vec<(PersistKey, Persistent)>> {
        self.flows.persistent_clients()
    }

    /// Forgets the persistent clients that match.
    pub fn flush_persistent_where(
        &mut self,
        mut matches: impl FnMut(&PersistKey, &Persistent) -> bool,
    ) -> Result<usize> {
        let doomed: Vec<PersistKey> = self
            .persistent_clients()?
            .into_iter()
            .filter(|(k, v)| matches(k, v))
            .map(|(k, _)| k)
            .collect();
        for key in &doomed {
            match self.flows.persist.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("flushing the persistence table")(e)),
            }
        }
        Ok(doomed.len())
    }

    /// The data path's entry for a service.
    pub fn service(&self, key: &ServiceKey) -> Option<Service> {
        self.services.get(key, 0).ok()
    }

    /// Adds a real server to service `service` (its id) and returns the server's id, which
    /// belongs to that service alone.
    pub fn add_real(&mut self, service: u32, mut real: RealServer) -> Result<RealId> {
        real.service_epoch = self.live_service_epoch(service)?;
        let id = *self
            .free_real_ids
            .first()
            .ok_or(DataplaneError::RealsFull {
                max: self.capacity.reals,
            })?;
        self.real_stats
            .set(id, zeroed_per_cpu()?, 0)
            .map_err(map_err("zeroing a real server's counters"))?;
        self.forget_next_hop(id)?;
        // A reused id starts with no connections for lc/wlc, and no thresholds.
        self.real_conns
            .set(id, 0, 0)
            .map_err(map_err("zeroing a real server's connection count"))?;
        self.real_limits
            .set(id, RealLimits::default(), 0)
            .map_err(map_err("zeroing a real server's connection thresholds"))?;
        self.reals
            .set(id, real, 0)
            .map_err(map_err("adding a real server"))?;
        self.free_real_ids.remove(&id);
        self.real_owners.insert(id, service);
        Ok(id)
    }

    /// Changes a real server's entry in place (e.g. its forwarding method); it stays its
    /// service's.
    pub fn update_real(&mut self, id: RealId, mut real: RealServer) -> Result<()> {
        real.service_epoch = self
            .reals
            .get(&id, 0)
            .map_err(map_err("reading a real server"))?
            .service_epoch;
        self.reals
            .set(id, real, 0)
            .map_err(map_err("updating a real server"))?;
        self.forget_next_hop(id)
    }

    /// Empties the data path's cached next hop of a real-server id, so that a server given the
    /// id (or changed) is looked up afresh.
    fn forget_next_hop(&mut self, id: RealId) -> Result<()> {
        self.next_hops
            .set(id, zeroed_per_cpu()?, 0)
            .map_err(map_err("clearing a cached next hop"))
    }

    /// Removes a real server. Take it out of every Maglev table first. Its connections are
    /// forgotten, so that their next packets are scheduled anew and a later server given the same
    /// id does not inherit them; so are its persistent clients, which go to another server next.
    pub fn remove_real(&mut self, id: RealId) -> Result<()> {
        self.reals
            .set(id, RealServer::default(), 0)
            .map_err(map_err("removing a real server"))?;
        // What it counted stays its service's (the data path no longer counts for it).
        if let Some(service) = self.real_owners.remove(id) {
            self.retire_counters(service, id)?;
        }
        self.forget_next_hop(id)?;
        self.flush_connections_where(|c| c.real == id)?;
        self.flush_persistent_where(|_, p| p.real == id)?;
        self.free_real_ids.insert(id);
        Ok(())
    }

    /// Gives real server `id` (in use) to service `service`: its entry takes the service's epoch
    /// and its counters count for it. For a rollback that adds back a service removed before its
    /// servers were ([`Self::remove_service`] took their epoch away).
    pub fn adopt_real(&mut self, service: u32, id: RealId) -> Result<()> {
        let epoch = self.live_service_epoch(service)?;
        self.set_real_service_epoch(id, epoch)?;
        self.real_owners.insert(id, service);
        Ok(())
    }

    /// The epoch of service `service`, which must exist.
    fn live_service_epoch(&self, service: u32) -> Result<u32> {
        match self.service_epoch(service)? {
            0 => Err(DataplaneError::NoSuchServiceId { id: service }),
            epoch => Ok(epoch),
        }
    }

    /// Rewrites the service epoch in real server `id`'s entry (in use).
    fn set_real_service_epoch(&mut self, id: RealId, epoch: u32) -> Result<()> {
        let mut real = self
            .reals
            .get(&id, 0)
            .map_err(map_err("reading a real server"))?;
        if !real.is_used() {
            return Err(DataplaneError::NoSuchReal { id });
        }
        real.service_epoch = epoch;
        self.reals
            .set(id, real, 0)
            .map_err(map_err("writing a real server's service epoch"))
    }

    /// The ids of the real servers of service `id`.
    fn owned_reals(&self, id: u32) -> impl Iterator<Item = RealId> + '_ {
        self.real_owners.reals(id)
    }

    /// Adds real server `real`'s counters to those its service `service` keeps of the servers
    /// that left it, CPU by CPU (the data path writes neither any more).
    fn retire_counters(&mut self, service: u32, real: RealId) -> Result<()> {
        let counted = self
            .real_stats
            .get(&real, 0)
            .map_err(map_err("reading a real server's counters"))?;
        let retired = self
            .service_stats
            .get(&service, 0)
            .map_err(map_err("reading a service's counters"))?;
        let sums: Vec<Counters> = retired
            .iter()
            .zip(counted.iter())
            .map(|(a, b)| a.add(*b))
            .collect();
        let values = aya::maps::PerCpuValues::try_from(sums)
            .map_err(|source| DataplaneError::Cpus { source })?;
        self.service_stats
            .set(service, values, 0)
            .map_err(map_err("writing a service's counters"))
    }

    /// Replaces the service's Maglev table: writes a free table of the pool whole, then makes it
    /// live with one update of the service entry, and gives the old one back to the pool. A table
    /// without any server is the shared empty table, which is never written.
    pub fn set_maglev_table(&mut self, key: ServiceKey, table: &[u32]) -> Result<()> {
        if table.len() != MAGLEV_TABLE_SIZE as usize {
            return Err(DataplaneError::TableSize {
                expected: MAGLEV_TABLE_SIZE,
                got: table.len(),
            });
        }
        let mut svc = self
            .services
            .get(&key, 0)
            .map_err(|_| DataplaneError::NoSuchService { key })?;
        let old = svc.table;
        // Its SYNs look their flows up in the embryonic table again until a sweep finds every
        // handshake in progress on the server the new table gives it (see SERVICE_F_SETTLED).
        svc.flags &= !SERVICE_F_SETTLED;
        svc.table = if table.iter().all(|&real| real == 0) {
            EMPTY_MAGLEV_TABLE
        } else {
            let fresh = self.tables.take().ok_or(DataplaneError::NoFreeTable {
                tables: self.capacity.tables(),
            })?;
            let written = Service {
                table: fresh,
                ..svc
            };
            if let Err(e) = self.write_table(written.live_table_base(), table) {
                self.tables.give_back(fresh);
                return Err(e);
            }
            fresh
        };
        if let Err(e) = self.services.insert(key, svc, 0) {
            self.tables.give_back(svc.table);
            return Err(map_err("swapping in a Maglev table")(e));
        }
        self.tables.give_back(old);
        Ok(())
    }

    /// Sets or clears the service's `SERVICE_F_SETTLED`, keeping the rest of its entry.
    pub fn settle_service(&mut self, key: ServiceKey, settled: bool) -> Result<()> {
        let mut svc = self
            .services
            .get(&key, 0)
            .map_err(|_| DataplaneError::NoSuchService { key })?;
        let flags = if settled {
            svc.flags | SERVICE_F_SETTLED
        } else {
            svc.flags & !SERVICE_F_SETTLED
        };
        if flags == svc.flags {
            return Ok(());
        }
        svc.flags = flags;
        self.services
            .insert(key, svc, 0)
            .map_err(map_err("settling a service"))
    }

    /// The live Maglev table of a service.
    pub fn maglev_table(&self, key: &ServiceKey) -> Result<Vec<u32>> {
        let svc = self
            .services
            .get(key, 0)
            .map_err(|_| DataplaneError::NoSuchService { key: *key })?;
        let base = svc.live_table_base();
        if let Some(mapped) = &self.maglev_mapped {
            return Ok(mapped.read(base as usize, MAGLEV_TABLE_SIZE as usize));
        }
        let mut slots = Vec::with_capacity(MAGLEV_TABLE_STRIDE as usize);
        for pair in base / 2..(base + MAGLEV_TABLE_STRIDE) / 2 {
            let values = self
                .maglev
                .get(&pair, 0)
                .map_err(map_err("reading a Maglev table"))?;
            slots.extend(values);
        }
        slots.truncate(MAGLEV_TABLE_SIZE as usize);
        Ok(slots)
    }

    fn write_table(&mut self, base: u32, table: &[u32]) -> Result<()> {
        if let Some(mapped) = &mut self.maglev_mapped {
            mapped.write(base as usize, table);
            return Ok(());
        }
        // Whole elements: the table starts on an even slot and its padding slot stays 0.
        let keys: Vec<u32> = (base / 2..(base + MAGLEV_TABLE_STRIDE) / 2).collect();
        let values: Vec<[u32; 2]> = keys
            .iter()
            .map(|pair| {
                let first = (pair * 2 - base) as usize;
                let slot = |i: usize| table.get(i).copied().unwrap_or(0);
                [slot(first), slot(first + 1)]
            })
            .collect();
        // One BPF_MAP_UPDATE_BATCH instead of 65537 updates; the element-wise path remains for
        // kernels without batch support for arrays (before 5.6).
        if batch::update(self.maglev_fd.as_fd(), &keys, &values).is_ok() {
            return Ok(());
        }
        for (key, value) in keys.into_iter().zip(values) {
            self.maglev
                .set(key, value, 0)
                .map_err(map_err("writing a Maglev table"))?;
        }
        Ok(())
    }

    /// Zeroes a service's counters: what its servers count and what those that left it had.
    pub fn zero_service_counters(&mut self, id: u32) -> Result<()> {
        self.service_stats
            .set(id, zeroed_per_cpu()?, 0)
            .map_err(map_err("zeroing a service's counters"))?;
        let owned: Vec<RealId> = self.owned_reals(id).collect();
        for real in owned {
            self.zero_real_counters(real)?;
        }
        Ok(())
    }

    /// Zeroes a real server's counters.
    pub fn zero_real_counters(&mut self, id: RealId) -> Result<()> {
        self.real_stats
            .set(id, zeroed_per_cpu()?, 0)
            .map_err(map_err("zeroing a real server's counters"))
    }

    /// Packets, bytes and new connections of a service, summed over the CPUs: its servers'
    /// counters and those of the servers that left it.
    pub fn service_counters(&self, id: u32) -> Result<Counters> {
        let mut total = sum_counters(&self.service_stats, id)?;
        for real in self.owned_reals(id) {
            total = total.add(sum_counters(&self.real_stats, real)?);
        }
        Ok(total)
    }

    /// Every service's and real server's counters, summed over the CPUs: what a listing or a
    /// rate sample reads, in a few batch reads where reading them one by one took a system call
    /// per server, twice (its row, its service's sum). One by one on kernels without batch reads
    /// of arrays (before 5.6).
    pub fn all_counters(&self) -> Result<AllCounters> {
        let reals = per_cpu_sums(&self.real_stats, self.capacity.real_ids())?;
        let retired = per_cpu_sums(&self.service_stats, self.capacity.services)?;
        let services = retired
            .iter()
            .enumerate()
            .map(|(id, left)| {
                self.owned_reals(id as u32).fold(*left, |sum, real| {
                    sum.add(reals.get(real as usize).copied().unwrap_or_default())
                })
            })
            .collect();
        Ok(AllCounters { services, reals })
    }

    /// Packets, bytes and new connections sent to a real server, summed over the CPUs.
    pub fn real_counters(&self, id: RealId) -> Result<Counters> {
        sum_counters(&self.real_stats, id)
    }

    /// Every global counter, summed over the CPUs.
    pub fn global_counters(&self) -> Result<Vec<(GlobalStat, u64)>> {
        let sum = self.global_sum()?;
        Ok(GlobalStat::ALL
            .iter()
            .map(|&stat| (stat, sum.get(stat)))
            .collect())
    }

    /// One global counter, summed over the CPUs.
    pub fn global_counter(&self, stat: GlobalStat) -> Result<u64> {
        Ok(self.global_sum()?.get(stat))
    }

    /// The global counters (one value per CPU), summed over the CPUs.
    fn global_sum(&self) -> Result<GlobalCounters> {
        let values = self
            .global_stats
            .get(&0, 0)
            .map_err(map_err("reading the global counters"))?;
        Ok(values.iter().fold(GlobalCounters::default(), |sum, cpu| {
            sum.plus(&cpu.counters)
        }))
    }

    /// The connection table's entries, then the embryonic table's (their flags include
    /// [`CONN_F_EMBRYONIC`]).
    ///
    /// Read in batches of thousands (`BPF_MAP_LOOKUP_BATCH`), so that a full table (a SYN flood
    /// fills the embryonic one) costs the control plane milliseconds, not two system calls per
    /// entry; key by key where the kernel refuses batches.
    pub fn connections(&self) -> Result<Vec<(FlowKey, Connection)>> {
        self.flows.connections()
    }

    /// The connection filter that the sweep builds ([`ConnFilter`]); `None` when it could not
    /// be mapped.
    pub fn connection_filter(&self) -> Option<Arc<ConnFilter>> {
        self.flows.connection_filter()
    }

    /// Writes a connection-table entry (to the embryonic table when its flags include
    /// [`CONN_F_EMBRYONIC`]); with `only_new`, an entry the data path already has is left as it
    /// is. Returns whether the entry was written.
    pub fn insert_connection(
        &mut self,
        key: FlowKey,
        connection: Connection,
        only_new: bool,
    ) -> Result<bool> {
        const BPF_NOEXIST: u64 = 1;
        if connection.flags & CONN_F_EMBRYONIC == 0 {
            // Before the entry exists, as the data path does (lb_common::conn_filter).
            if let Some(filter) = &self.flows.filter {
                filter.note(&key);
            }
        }
        let table = self.flows.table_of(connection.flags);
        match table.insert(key, connection, if only_new { BPF_NOEXIST } else { 0 }) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e))
                if only_new && e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(map_err("writing the connection table")(e)),
        }
    }

    /// The epoch of the service with this id (what its known flows record).
    pub fn service_epoch(&self, id: u32) -> Result<u32> {
        self.service_epochs
            .get(&id, 0)
            .map_err(map_err("reading the service epochs"))
    }

    /// Forgets every connection (ipvsadm's flush of the connection table).
    pub fn flush_connections(&mut self) -> Result<usize> {
        self.flush_connections_where(|_| true)
    }

    /// Forgets the connections that match.
    pub fn flush_connections_where(
        &mut self,
        mut matches: impl FnMut(&Connection) -> bool,
    ) -> Result<usize> {
        let doomed: Vec<(FlowKey, u32)> = self
            .connections()?
            .into_iter()
            .filter(|(_, c)| matches(c))
            .map(|(k, c)| (k, c.flags))
            .collect();
        for (key, flags) in &doomed {
            match self.flows.table_of(*flags).remove(key) {
                // Evicted or removed by someone else meanwhile: gone either way.
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("flushing the connection table")(e)),
            }
        }
        Ok(doomed.len())
    }

    /// [`ConnectionTables::expire_connections`] on the daemon's tables.
    pub fn expire_connections(&mut self, entries: &[(FlowKey, Connection)]) -> Result<usize> {
        self.flows.expire_connections(entries)
    }

    /// [`ConnectionTables::hold_persistent_clients`] on the daemon's tables.
    pub fn hold_persistent_clients(
        &mut self,
        held: &[(PersistKey, Persistent, u64)],
    ) -> Result<usize> {
        self.flows.hold_persistent_clients(held)
    }

    /// [`ConnectionTables::expire_persistent_clients`] on the daemon's tables.
    pub fn expire_persistent_clients(
        &mut self,
        lapsed: &[(PersistKey, Persistent)],
    ) -> Result<usize> {
        self.flows.expire_persistent_clients(lapsed)
    }

    /// Switches the data path's debug events (aya-log) on or off.
    pub fn set_debug_events(&mut self, on: bool) -> Result<()> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        if on {
            config.flags |= lb_common::config::CONFIG_F_DEBUG_EVENTS;
        } else {
            config.flags &= !lb_common::config::CONFIG_F_DEBUG_EVENTS;
        }
        self.config
            .set(0, config, 0)
            .map_err(map_err("writing the data-path settings"))
    }

    /// Sets the source addresses of tunnels; `None` lets the FIB choose the egress interface's.
    pub fn set_tunnel_source(
        &mut self,
        v4: Option<std::net::Ipv4Addr>,
        v6: Option<std::net::Ipv6Addr>,
    ) -> Result<()> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        config.tunnel_src_v4 = v4.map_or(0, |a| u32::from(a).to_be());
        config.tunnel_src_v6 = v6.map_or([0; 4], |a| bytemuck::cast(a.octets()));
        self.config
            .set(0, config, 0)
            .map_err(map_err("writing the data-path settings"))
    }

    /// The underlying object, for the logger (`aya_log::EbpfLogger::init`).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The services' generation (0: the data path keeps no copies of service entries) and every
    /// CPU's filled slots of the service cache ([`names::SERVICE_CACHE`]): what the data path
    /// would take a new flow's service from.
    pub fn service_cache(&self) -> Result<(u64, Vec<ServiceCacheSlot>)> {
        let generation = self.services.generation.as_ref().map_or(0, |g| g.get());
        let map = self
            .ebpf
            .map(names::SERVICE_CACHE)
            .ok_or(DataplaneError::Missing {
                what: "map",
                name: names::SERVICE_CACHE,
            })?;
        let cache = PerCpuArray::<_, ServiceCacheSlot>::try_from(map)
            .map_err(map_err("opening the service cache"))?;
        let mut filled = Vec::new();
        for slot in 0..lb_common::limits::SERVICE_CACHE_SLOTS {
            let cpus = cache
                .get(&slot, 0)
                .map_err(map_err("reading the service cache"))?;
            filled.extend(cpus.iter().filter(|s| s.key.family != 0).copied());
        }
        Ok((generation, filled))
    }

    /// Every service in the data path with its entry.
    pub fn services(&self) -> Result<StdHashMap<ServiceKey, Service>> {
        self.services
            .iter()
            .map(|r| r.map_err(map_err("reading the services")))
            .collect()
    }

    /// The real server with this id, if the entry is in use.
    pub fn real(&self, id: RealId) -> Option<RealServer> {
        self.reals.get(&id, 0).ok().filter(RealServer::is_used)
    }

    /// Removes the map pins in `dir` (the maps themselves live on while anything still uses
    /// them), and `dir` once nothing else is pinned there (links stay: the balancer keeps
    /// forwarding with the maps its program holds).
    pub fn unpin(dir: &Path) -> std::io::Result<()> {
        for name in ALL_MAPS.iter().chain(&RETIRED_MAPS) {
            match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::remove_dir(dir) {
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }
}

/// Sets `net.ipv4.conf.<iface>.forwarding` and `net.ipv6.conf.<iface>.forwarding` to 1 (in the
/// calling thread's network namespace; IPv6 only where the interface has it).
fn enable_forwarding(iface: &str) -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        let path = PathBuf::from(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"));
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => continue,
            Err(_) if family == "ipv6" => continue,
            _ => {}
        }
        tracing::info!(
            iface,
            family,
            "turning forwarding on for the interface (the FIB needs it)"
        );
        std::fs::write(&path, "1").map_err(|source| DataplaneError::Sysctl { path, source })?;
    }
    Ok(())
}

/// The indexes of the interfaces of the calling thread's network namespace.
fn interface_indexes() -> Vec<u32> {
    nix::net::if_::if_nameindex()
        .map(|list| list.iter().map(|i| i.index()).collect())
        .unwrap_or_default()
}

/// The balancer program of a loaded object.
/// Loads the programs the balancer tail-calls (debug events, ICMP replies, next-hop lookups:
/// rare work kept out of the balancer, see `lb-ebpf/src/events.rs`, `icmp.rs`, `next_hop.rs`;
/// and its twin for VLAN-tagged frames) and puts each in its slot, with the balancer itself,
/// which the next-hop program runs again.
fn install_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    for (name, slot) in [
        (names::PROG_EVENTS, names::TAIL_CALL_EVENTS),
        (names::PROG_ICMP_REPLY, names::TAIL_CALL_ICMP_REPLY),
        (names::PROG_NEXT_HOP, names::TAIL_CALL_NEXT_HOP),
        (names::PROG_BALANCER, names::TAIL_CALL_BALANCER),
        (names::PROG_BALANCER_VLAN, names::TAIL_CALL_BALANCER_VLAN),
    ] {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing {
                what: "program",
                name,
            })?
            .try_into()
            .map_err(not_xdp)?;
        if program.fd().is_err() {
            program.load().map_err(load_refused)?;
        }
        let fd = program
            .fd()
            .map_err(|source| DataplaneError::Program {
                action: "finding",
                source,
            })?
            .try_clone()
            .map_err(|source| DataplaneError::Dup { source })?;
        let map = ebpf
            .map_mut(names::TAIL_CALLS)
            .ok_or(DataplaneError::Missing {
                what: "map",
                name: names::TAIL_CALLS,
            })?;
        ProgramArray::try_from(map)
            .map_err(map_err(format!("opening map {}", names::TAIL_CALLS)))?
            .set(slot, &fd, 0)
            .map_err(map_err(format!("installing the program {name}")))?;
    }
    Ok(())
}

fn balancer_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(names::PROG_BALANCER)
        .ok_or_else(no_balancer)?
        .try_into()
        .map_err(not_xdp)
}

fn no_balancer() -> DataplaneError {
    DataplaneError::Missing {
        what: "program",
        name: names::PROG_BALANCER,
    }
}

fn not_xdp(source: ProgramError) -> DataplaneError {
    DataplaneError::Program {
        action: "finding",
        source,
    }
}

fn zeroed_per_cpu<T: aya::Pod + Default + Clone>() -> Result<aya::maps::PerCpuValues<T>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| DataplaneError::Cpus { source })?;
    aya::maps::PerCpuValues::try_from(vec![T::default(); cpus])
        .map_err(|source| DataplaneError::Cpus { source })
}

/// Entries `0..len` of a per-CPU counter map, each summed over the CPUs: by batch reads where
/// the kernel has them, else one by one.
fn per_cpu_sums(map: &PerCpuArray<MapData, Counters>, len: u32) -> Result<Vec<Counters>> {
    let sum = |cpus: &[Counters]| cpus.iter().fold(Counters::default(), |a, c| a.add(*c));
    if let Ok(cpus) = aya::util::nr_cpus() {
        if let Ok(all) = batch::lookup_per_cpu::<Counters>(map.map().fd().as_fd(), len, cpus) {
            return Ok(all.iter().map(|values| sum(values)).collect());
        }
    }
    (0..len).map(|id| sum_counters(map, id)).collect()
}

fn sum_counters(map: &PerCpuArray<MapData, Counters>, id: u32) -> Result<Counters> {
    let values = map.get(&id, 0).map_err(map_err("reading counters"))?;
    Ok(values
        .iter()
        .fold(Counters::default(), |acc, c| acc.add(*c)))
}

/// A program's load error: [`DataplaneError::ProgramRefused`] with the verifier's last lines
/// when the kernel refused it (the whole log, thousands of lines, only at debug level).
fn load_refused(source: ProgramError) -> DataplaneError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(verifier_log = %log, "the verifier's log");
            // The refusal is the last line before the verifier's statistics.
            let statistics = ["processed ", "stack depth ", "verification time "];
            let mut last: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !statistics.iter().any(|s| l.starts_with(s)))
                .rev()
                .take(2)
                .collect();
            last.reverse();
            DataplaneError::ProgramRefused {
                io_error,
                last_lines: if last.is_empty() {
                    "none".to_owned()
                } else {
                    last.join(" / ")
                },
            }
        }
        source => DataplaneError::Program {
            action: "loading",
            source,
        },
    }
}
