//! Virtual services: the key the data path looks up and what it finds.

use bytemuck::{Pod, Zeroable};

/// A virtual service as the data path looks it up: (VIP, port, protocol).
///
/// With `port == 0` the key names the "all ports" service of the VIP, the fallback when no service
/// has the packet's port. With `port == 0 && proto == 0` it is the key of [`crate::maps::VIP_ADDRS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    /// The VIP, network byte order as in the packet. IPv4 uses `addr[0]` and leaves the rest zero.
    pub addr: [u32; 4],
    /// Destination port, network byte order; 0 for the "all ports" service.
    pub port: u16,
    /// IP protocol number ([`crate::PROTO_TCP`], [`crate::PROTO_UDP`]).
    pub proto: u8,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
}

impl ServiceKey {
    /// The key of an IPv4 service. `addr` and `port` are given in host order.
    pub const fn v4(addr: u32, port: u16, proto: u8) -> Self {
        Self {
            addr: [addr.to_be(), 0, 0, 0],
            port: port.to_be(),
            proto,
            family: crate::FAMILY_V4,
        }
    }

    /// The key of an IPv6 service, from the address's 16 bytes and the port in host order.
    pub fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr: bytemuck::cast(addr),
            port: port.to_be(),
            proto,
            family: crate::FAMILY_V6,
        }
    }

    /// The key of this VIP's address alone, as held in [`crate::maps::VIP_ADDRS`].
    pub const fn vip_only(self) -> Self {
        Self {
            addr: self.addr,
            port: 0,
            proto: 0,
            family: self.family,
        }
    }

    /// The key of this VIP's "all ports" service for the same protocol.
    pub const fn all_ports(self) -> Self {
        Self {
            addr: self.addr,
            port: 0,
            proto: self.proto,
            family: self.family,
        }
    }
}

/// [`Service::scheduler`]: Maglev (ipvsadm's `mh`): the slot of the flow's 5-tuple hash in the
/// service's table. 0, so that entries written before schedulers existed keep meaning Maglev.
pub const SCHED_MAGLEV: u8 = 0;
/// [`Service::scheduler`]: round robin over a sequence (ipvsadm's `rr` and `wrr`): the service's
/// table holds the sequence from slot 0 up to its first empty slot, and each CPU walks it with a
/// position of its own ([`crate::maps::SCHED_CURSORS`]).
pub const SCHED_SEQUENCE: u8 = 1;
/// [`Service::scheduler`]: the slot of the client address's hash (ipvsadm's `sh`; with
/// [`SERVICE_F_HASH_PORT`] the client's port too).
pub const SCHED_SOURCE_HASH: u8 = 2;
/// [`Service::scheduler`]: the slot of the destination address's hash (ipvsadm's `dh`).
pub const SCHED_DEST_HASH: u8 = 3;

/// [`Service::scheduler`]: least connections (ipvsadm's `lc`, and `wlc` with
/// [`SERVICE_F_WEIGHTED`]) by two random choices: two slots of the service's table, which holds
/// every server with a weight above 0 in turn, and of their two servers the one with fewer active
/// connections ([`crate::maps::REAL_CONNS`]; with weights, fewer per unit of weight).
pub const SCHED_LEAST_CONN: u8 = 4;

/// [`Service::scheduler`]: the first server by weight (ipvsadm's `fo`, and `ovf` with
/// [`SERVICE_F_OVERFLOW`]): the service's table holds the servers with a weight above 0 from
/// slot 0, highest weight first (ties in the order the servers were added), up to its first
/// empty slot, and a new flow takes the first of them that takes new connections, trying at most
/// [`OVERLOAD_PROBES`].
pub const SCHED_WEIGHT_ORDER: u8 = 5;

/// Persistence (ipvsadm's `-p`): a new flow of a client that the service's persistence table
/// ([`crate::maps::PERSIST`]) remembers goes to the client's real server; its timeout and mask
/// are in [`crate::maps::PERSIST_SETTINGS`]. Bit 0, which meant a source hash before persistence
/// had a table.
pub const SERVICE_F_PERSISTENT: u32 = 1 << 0;
/// The source hash covers the client's port as well as its address (ipvsadm's `sh-port`).
pub const SERVICE_F_HASH_PORT: u32 = 1 << 1;
/// [`SCHED_LEAST_CONN`] weighs the active connections by the servers' weights
/// ([`crate::maps::REAL_WEIGHTS`]): ipvsadm's `wlc`.
pub const SERVICE_F_WEIGHTED: u32 = 1 << 2;

/// A source-hash service (`sh`) whose server is overloaded gives the flow the next servers of its
/// table instead of none (ipvsadm's `sh-fallback`). Without it the flow gets no server, as in
/// IPVS; `mh` always tries the next slots.
pub const SERVICE_F_FALLBACK: u32 = 1 << 3;

/// [`SCHED_LEAST_CONN`] compares expected delays, (connections + 1) per unit of weight, instead
/// of connections per unit of weight (with [`SERVICE_F_WEIGHTED`]): ipvsadm's `sed`.
pub const SERVICE_F_EXPECTED_DELAY: u32 = 1 << 4;

/// [`SCHED_LEAST_CONN`]: of the two servers drawn, one without active connections wins outright
/// (the first drawn when both are idle), before the expected delays are compared: ipvsadm's
/// `nq` (with [`SERVICE_F_WEIGHTED`] and [`SERVICE_F_EXPECTED_DELAY`]).
pub const SERVICE_F_IDLE_FIRST: u32 = 1 << 5;

/// [`SCHED_WEIGHT_ORDER`] counts its servers' active connections ([`crate::maps::REAL_CONNS`])
/// and passes by a server whose connections exceed its weight ([`crate::maps::REAL_WEIGHTS`]), as
/// IPVS's `ovf` does: ipvsadm's `ovf`. The servers carry the test ([`crate::RealLimits`]'s
/// `LIMIT_F_WEIGHT_CAP` and `LIMIT_F_FULL`), so the walk tests one flag per server as for the
/// thresholds. Userspace sets this bit on TCP services only (a UDP flow is never an active
/// connection, so a UDP `ovf` service is `fo`): the data path then counts without a test of the
/// protocol.
pub const SERVICE_F_OVERFLOW: u32 = 1 << 6;

/// A SYN that the connection table does not know skips the embryonic table
/// ([`crate::maps::EMBRYONIC`]) and is scheduled at once: the service's choice depends on the
/// flow and its table alone (`mh`, `sh` or `dh`, not persistent, no server with an upper
/// threshold), and userspace found every embryonic flow of the service on the server the table
/// gives it now, so a retransmitted SYN reaches the server its first one did either way. Set by
/// xlbd's sweep (lb-userspace's `Runtime::settle`) once the service's last change is a second old;
/// every write of the service's table or scheduling clears it in the same update, so that a SYN
/// looks its flow up in the embryonic table whenever its first SYN may have gone elsewhere.
/// Saves a new flow's SYN one hash lookup that misses (20-50 ns of about 450 here). A
/// retransmission is still told from a new connection: every SYN claims its flow in the
/// embryonic table with an insert that fails when the flow is there (an embryonic hit).
pub const SERVICE_F_SETTLED: u32 = 1 << 7;

/// Whether a service's choice of a server depends on the flow and the service's table alone,
/// so that it can be [`SERVICE_F_SETTLED`]: `mh`, `sh` (with or without `sh-port`) or `dh`, not
/// persistent; thresholds are the caller's to rule out (an overloaded server is passed by).
pub const fn choice_is_the_tables(scheduler: u8, flags: u32) -> bool {
    matches!(
        scheduler,
        SCHED_MAGLEV | SCHED_SOURCE_HASH | SCHED_DEST_HASH
    ) && flags & SERVICE_F_PERSISTENT == 0
}

/// The slot of a service's table that the scheduler gives `flow` before any overloaded server
/// is passed by (the data path's choice, `lb-ebpf`'s schedule.rs), for a service whose choice is
/// the table's ([`choice_is_the_tables`]); the data path's hash schedulers use it too.
#[inline(always)]
pub const fn table_slot(scheduler: u8, flags: u32, flow: &crate::FlowKey) -> u32 {
    let hash = match scheduler {
        SCHED_SOURCE_HASH => crate::hash::address_hash(
            &flow.src,
            flow.family,
            if flags & SERVICE_F_HASH_PORT != 0 {
                flow.sport
            } else {
                0
            },
        ),
        SCHED_DEST_HASH => crate::hash::address_hash(&flow.dst, flow.family, 0),
        _ => crate::hash::flow_hash(flow),
    };
    hash % crate::limits::MAGLEV_TABLE_SIZE
}

/// How many slots of its table a scheduler tries past an overloaded server (one whose connections
/// reached its upper threshold, [`crate::RealLimits`]) before it gives the flow no server: the
/// verifier needs a bound (each slot more costs the verifier about 2,700 processed instructions),
/// and with a quarter of a table's servers overloaded 8 slots miss the others once in 65,536 new
/// flows (half: once in 256).
pub const OVERLOAD_PROBES: u32 = 8;

/// What the data path knows about a virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// Index of the service's counters.
    pub id: u32,
    /// Which table of the Maglev pool ([`crate::maps::MAGLEV`]) is the service's live one.
    /// Userspace writes a spare table whole and then points this field at it with one map update,
    /// so the data path never sees a half-written table; [`crate::limits::EMPTY_MAGLEV_TABLE`]
    /// when the service has no server to offer. Every scheduler reads its choice from this table.
    pub table: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
    /// `SCHED_*`: how a new flow picks its slot of the table.
    pub scheduler: u8,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: [u8; 3],
}

impl Service {
    /// Index in [`crate::maps::MAGLEV`] of the first slot of the live table.
    pub const fn live_table_base(&self) -> u32 {
        self.table * crate::limits::MAGLEV_TABLE_STRIDE
    }
}

/// One slot of a CPU's service cache ([`crate::maps::SERVICE_CACHE`]): the entry [`Self::key`]
/// found in [`crate::maps::SERVICES`] (the "all ports" service's when the port has none), while
/// the services' generation ([`crate::maps::SERVICE_GENERATION`]) is still
/// [`Self::generation`]. An empty slot's key has family 0, which no packet's has.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceCacheSlot {
    /// The key the packet asked for.
    pub key: ServiceKey,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: u32,
    /// The services' generation when the entry was read.
    pub generation: u64,
    /// The entry.
    pub service: Service,
}

crate::user_pod!(ServiceKey, Service, ServiceCacheSlot);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_keys_hold_address_and_port_in_network_order() {
        let key = ServiceKey::v4(0x0a00_0001, 80, crate::PROTO_TCP);
        let bytes: [u8; 20] = bytemuck::cast(key);
        assert_eq!(&bytes[0..4], &[10, 0, 0, 1]);
        assert_eq!(&bytes[4..16], &[0; 12]);
        assert_eq!(&bytes[16..18], &[0, 80]);
        assert_eq!(bytes[18], 6);
        assert_eq!(bytes[19], 4);
    }

    #[test]
    fn a_hash_schedulers_slot_is_its_hash_of_the_flow_the_source_or_the_destination() {
        let flow = crate::FlowKey {
            src: [0x0102_0304, 0, 0, 0],
            dst: [0x0a00_0001, 0, 0, 0],
            sport: 4000u16.to_be(),
            dport: 80u16.to_be(),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            ..Default::default()
        };
        let size = crate::limits::MAGLEV_TABLE_SIZE;
        assert_eq!(
            table_slot(SCHED_MAGLEV, 0, &flow),
            crate::hash::flow_hash(&flow) % size
        );
        let client = crate::hash::address_hash(&flow.src, flow.family, 0) % size;
        assert_eq!(table_slot(SCHED_SOURCE_HASH, 0, &flow), client);
        let other_port = crate::FlowKey {
            sport: 4001u16.to_be(),
            ..flow
        };
        assert_eq!(
            table_slot(SCHED_SOURCE_HASH, 0, &other_port),
            client,
            "sh: the client's address only"
        );
        assert_eq!(
            table_slot(SCHED_SOURCE_HASH, SERVICE_F_HASH_PORT, &flow),
            crate::hash::address_hash(&flow.src, flow.family, flow.sport) % size
        );
        assert_eq!(
            table_slot(SCHED_DEST_HASH, 0, &other_port),
            crate::hash::address_hash(&flow.dst, flow.family, 0) % size
        );
    }

    #[test]
    fn only_mh_sh_and_dh_without_persistence_choose_by_their_table_alone() {
        for sched in [SCHED_MAGLEV, SCHED_SOURCE_HASH, SCHED_DEST_HASH] {
            assert!(choice_is_the_tables(sched, SERVICE_F_HASH_PORT));
            assert!(!choice_is_the_tables(sched, SERVICE_F_PERSISTENT));
        }
        for sched in [SCHED_SEQUENCE, SCHED_LEAST_CONN, SCHED_WEIGHT_ORDER] {
            assert!(!choice_is_the_tables(sched, 0));
        }
    }

    #[test]
    fn the_live_table_is_the_pool_table_the_entry_names_whatever_the_service_id() {
        let svc = Service {
            id: 3,
            table: 7,
            ..Service::default()
        };
        assert_eq!(
            svc.live_table_base(),
            7 * crate::limits::MAGLEV_TABLE_STRIDE
        );
        assert_eq!(svc.live_table_base() % 2, 0, "tables start on an even slot");
        let new = Service { id: 0, ..svc };
        assert_eq!(new.live_table_base(), svc.live_table_base());
    }
}
