//! A minimal owner of services for tests that drive the dataplane directly (before the daemon):
//! keeps each service's real servers and weights and rebuilds its table (Maglev, or the `wrr`
//! sequence for [`SCHED_SEQUENCE`], every server in turn for [`SCHED_LEAST_CONN`], the servers by
//! weight for [`SCHED_WEIGHT_ORDER`]) on every change.

use std::net::Ipv4Addr;

use lb_common::{
    service::{
        SCHED_LEAST_CONN, SCHED_MAGLEV, SCHED_SEQUENCE, SCHED_WEIGHT_ORDER, SERVICE_F_OVERFLOW,
        SERVICE_F_PERSISTENT,
    },
    Forwarding, PersistSettings, RealServer, ServiceKey,
};
use lb_userspace::{
    dataplane::{Dataplane, RealId},
    maglev, sequence,
};

/// One real server of a [`TestService`].
#[derive(Clone, Debug)]
pub struct TestReal {
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its id in the data path.
    pub id: RealId,
    /// Its weight.
    pub weight: u32,
}

/// A service and its real servers.
pub struct TestService {
    /// The service's key.
    pub key: ServiceKey,
    /// Its port, host order (the real servers' identity includes it).
    pub port: u16,
    /// Its real servers.
    pub reals: Vec<TestReal>,
    /// Its scheduler (`SCHED_*`).
    pub scheduler: u8,
    /// Its `SERVICE_F_*` flags.
    pub flags: u32,
}

impl TestService {
    /// Adds the service (with no server) to the data path.
    pub fn add(dp: &mut Dataplane, vip: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self::add_scheduled(dp, vip, port, proto, SCHED_MAGLEV, 0)
    }

    /// Adds the service with a scheduler (`SCHED_*`) and flags (`SERVICE_F_*`).
    pub fn add_scheduled(
        dp: &mut Dataplane,
        vip: Ipv4Addr,
        port: u16,
        proto: u8,
        scheduler: u8,
        flags: u32,
    ) -> Self {
        let key = ServiceKey::v4(u32::from(vip), port, proto);
        dp.upsert_service(key, scheduler, flags)
            .expect("add service");
        Self {
            key,
            port,
            reals: Vec::new(),
            scheduler,
            flags,
        }
    }

    /// The service's id in the data path.
    pub fn id(&self, dp: &Dataplane) -> u32 {
        dp.service(&self.key).expect("the service is there").id
    }

    /// Makes the service persistent: a client network (`mask`, host order) keeps its server for
    /// `timeout_secs` after its last new connection.
    pub fn persist(&mut self, dp: &mut Dataplane, timeout_secs: u32, mask: u32) {
        self.flags |= SERVICE_F_PERSISTENT;
        dp.upsert_service(self.key, self.scheduler, self.flags)
            .expect("update service");
        let id = self.id(dp);
        dp.set_persistence(id, Some(PersistSettings::v4(timeout_secs, mask)))
            .expect("set persistence");
    }

    /// Adds a direct-routing real server and rebuilds the table.
    pub fn add_real(&mut self, dp: &mut Dataplane, addr: Ipv4Addr, weight: u32) -> RealId {
        let service = self.id(dp);
        let id = dp
            .add_real(
                service,
                RealServer::v4(u32::from(addr), Forwarding::DirectRoute),
            )
            .expect("add real");
        self.reals.push(TestReal { addr, id, weight });
        self.rebuild(dp);
        id
    }

    /// Changes a real server's weight and rebuilds the table.
    pub fn set_weight(&mut self, dp: &mut Dataplane, addr: Ipv4Addr, weight: u32) {
        let real = self
            .reals
            .iter_mut()
            .find(|r| r.addr == addr)
            .expect("known real");
        real.weight = weight;
        self.rebuild(dp);
    }

    /// Removes a real server: out of the table first, then out of the data path.
    pub fn remove_real(&mut self, dp: &mut Dataplane, addr: Ipv4Addr) {
        let pos = self
            .reals
            .iter()
            .position(|r| r.addr == addr)
            .expect("known real");
        let real = self.reals.remove(pos);
        self.rebuild(dp);
        dp.remove_real(real.id).expect("remove real");
    }

    /// Gives the service a server the data path still holds (as a rollback does for a service it
    /// adds back) and rebuilds the table.
    pub fn adopt_real(&mut self, dp: &mut Dataplane, real: TestReal) {
        dp.adopt_real(self.id(dp), real.id).expect("adopt real");
        self.reals.push(real);
        self.rebuild(dp);
    }

    /// The real server with this id.
    pub fn real(&self, id: RealId) -> Option<&TestReal> {
        self.reals.iter().find(|r| r.id == id)
    }

    fn rebuild(&self, dp: &mut Dataplane) {
        if self.scheduler == SCHED_WEIGHT_ORDER {
            let weights: Vec<(u32, u32)> = self.reals.iter().map(|r| (r.id, r.weight)).collect();
            dp.set_maglev_table(self.key, &sequence::table(&sequence::by_weight(&weights)))
                .expect("set the servers by weight");
            dp.set_real_weights(&weights).expect("set weights");
            let ids: Vec<u32> = self.reals.iter().map(|r| r.id).collect();
            dp.set_weight_caps(&ids, self.flags & SERVICE_F_OVERFLOW != 0)
                .expect("mark ovf's servers");
            return;
        }
        if self.scheduler == SCHED_LEAST_CONN {
            let weights: Vec<(u32, u32)> = self.reals.iter().map(|r| (r.id, r.weight)).collect();
            dp.set_maglev_table(
                self.key,
                &sequence::cyclic_table(&sequence::round_robin(&weights)),
            )
            .expect("set least-connection table");
            dp.set_real_weights(&weights).expect("set weights");
            return;
        }
        if self.scheduler == SCHED_SEQUENCE {
            let weights: Vec<(u32, u32)> = self.reals.iter().map(|r| (r.id, r.weight)).collect();
            let order = sequence::weighted_round_robin(&weights);
            dp.set_maglev_table(self.key, &sequence::table(&order))
                .expect("set sequence table");
            let id = self.id(dp);
            dp.spread_sequence_cursors(id, order.len())
                .expect("spread cursors");
            return;
        }
        let identities: Vec<Vec<u8>> = self
            .reals
            .iter()
            .map(|r| {
                let mut v = r.addr.octets().to_vec();
                v.extend_from_slice(&self.port.to_be_bytes());
                v
            })
            .collect();
        let backends: Vec<maglev::Backend<'_>> = self
            .reals
            .iter()
            .zip(&identities)
            .map(|(r, identity)| maglev::Backend {
                identity,
                id: r.id,
                weight: r.weight,
            })
            .collect();
        dp.set_maglev_table(self.key, &maglev::build(&backends))
            .expect("set maglev table");
    }
}
