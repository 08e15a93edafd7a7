//! Moving a running balancer to a new map set without losing its flows, when a new xlbd's maps
//! have another layout than the pinned ones ([`crate::layout::Pinned::Upgrade`]).
//!
//! The old program keeps forwarding with its maps (held by the program in the pinned links)
//! while the new daemon, in order:
//! 1. opens the old connection table ([`OldTable::open`], whose layout is this xlbd's; and the
//!    embryonic table, when the old layout has one) and marks
//!    the pins as an upgrade in progress; unpins the old maps;
//! 2. loads a new map set and installs the saved rules in it, before anything runs on it;
//! 3. copies the connections ([`OldTable::carry`]): each keeps its real server, with the ids and
//!    the service epoch the new maps gave them (a connection whose server is gone is left out);
//! 4. swaps its program, with the new maps, into each pinned link (one atomic update each);
//! 5. copies the connections the old program made meanwhile (entries the new one already has are
//!    left alone), and records the new layout.

use std::{
    collections::HashMap as StdHashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{conntrack::CONN_F_EMBRYONIC, maps as names, Connection, FlowKey};
use thiserror::Error;

use crate::{
    convert,
    dataplane::{Dataplane, DataplaneError, RealId},
    runtime::{Installed, Runtime},
    state::ServiceAddr,
};

/// Why the connections could not be carried over.
#[derive(Debug, Error)]
pub enum UpgradeError {
    /// The old connection table could not be opened or read.
    #[error("reading the running balancer's connection table {path}")]
    Old {
        /// Its pin.
        path: PathBuf,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The new connection table could not be written.
    #[error("writing the new connection table")]
    New(#[source] DataplaneError),
}

/// How many connections were carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Copied into the new table.
    pub copied: usize,
    /// Left out: their server or service is not in the new maps.
    pub left_out: usize,
}

/// The running balancer's connection table (and its embryonic table, when its layout has one),
/// with the old daemon's ids.
pub struct OldTable {
    /// The connection table, then the embryonic table when the layout has one.
    tables: Vec<Table>,
    /// Each old real-server id's service and address (an id belongs to one service).
    owners: StdHashMap<RealId, (ServiceAddr, SocketAddr)>,
}

impl OldTable {
    /// Opens the connection table pinned in `dir`, which [`crate::layout::assess`] found to have
    /// this xlbd's layout, with the ids the old daemon saved.
    pub fn open(dir: &Path, ids: &Installed) -> Result<Self, UpgradeError> {
        let open = |name: &str, embryonic: bool| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .and_then(HashMap::try_from)
                .map(|map| Table {
                    path: path.clone(),
                    map,
                    embryonic,
                })
                .map_err(|source| UpgradeError::Old { path, source })
        };
        let mut tables = vec![open(names::CONNTRACK, false)?];
        if dir.join(names::EMBRYONIC).exists() {
            tables.push(open(names::EMBRYONIC, true)?);
        }
        Ok(Self {
            tables,
            owners: owners(ids),
        })
    }

    /// Copies every connection whose real server the runtime's data path holds, translated to
    /// its ids; `only_new` leaves the entries the new table has alone.
    pub fn carry(
        &self,
        runtime: &mut Runtime<Dataplane>,
        only_new: bool,
    ) -> Result<Carried, UpgradeError> {
        let mut entries = Vec::new();
        for table in &self.tables {
            for entry in table.map.iter() {
                let (key, mut conn) = entry.map_err(|source| UpgradeError::Old {
                    path: table.path.clone(),
                    source,
                })?;
                // Embryonic flows go back to the embryonic table (by their flag): their
                // handshake's ACK then finds them.
                if table.embryonic {
                    conn.flags |= CONN_F_EMBRYONIC;
                }
                entries.push((key, conn));
            }
        }
        let installed = runtime.installed().clone();
        let dp = runtime.dataplane();
        let mut carried = Carried::default();
        // Per service: its new id and epoch.
        let mut services: StdHashMap<ServiceAddr, Option<(u32, u32)>> = StdHashMap::new();
        for (key, old) in entries {
            let translated = self.owners.get(&old.real).and_then(|(service, addr)| {
                let real = *installed.services.get(service)?.get(addr)?;
                let slot = match services.get(service) {
                    Some(slot) => *slot,
                    None => {
                        let slot = dp
                            .service(&convert::service_key(service))
                            .and_then(|svc| Some((svc.id, dp.service_epoch(svc.id).ok()?)));
                        services.insert(*service, slot);
                        slot
                    }
                };
                let (id, epoch) = slot?;
                Some(Connection {
                    real,
                    service: id,
                    service_epoch: epoch,
                    ..old
                })
            });
            match translated {
                Some(connection) => {
                    if dp
                        .insert_connection(key, connection, only_new)
                        .map_err(UpgradeError::New)?
                    {
                        carried.copied += 1;
                    }
                }
                None => carried.left_out += 1,
            }
        }
        Ok(carried)
    }
}

/// One of the running balancer's tables.
struct Table {
    path: PathBuf,
    map: HashMap<MapData, FlowKey, Connection>,
    /// The embryonic table: its entries are embryonic flows.
    embryonic: bool,
}

/// Each real-server id's service and address.
fn owners(ids: &Installed) -> StdHashMap<RealId, (ServiceAddr, SocketAddr)> {
    ids.services
        .iter()
        .flat_map(|(service, reals)| reals.iter().map(move |(addr, id)| (*id, (*service, *addr))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::Protocol;

    #[test]
    fn each_old_id_names_its_service_and_server() {
        let vip = "10.0.0.1".parse().expect("addr");
        let web = ServiceAddr {
            protocol: Protocol::Tcp,
            addr: vip,
            port: 80,
        };
        let dns = ServiceAddr {
            protocol: Protocol::Udp,
            addr: vip,
            port: 53,
        };
        let rs: SocketAddr = "10.0.0.11:80".parse().expect("addr");
        let ns: SocketAddr = "10.0.0.11:53".parse().expect("addr");
        let ids = Installed {
            services: BTreeMap::from([
                (web, BTreeMap::from([(rs, 3)])),
                (dns, BTreeMap::from([(ns, 7)])),
            ]),
        };
        let owners = owners(&ids);
        assert_eq!(owners[&3], (web, rs));
        assert_eq!(owners[&7], (dns, ns));
        assert_eq!(owners.len(), 2);
    }
}
