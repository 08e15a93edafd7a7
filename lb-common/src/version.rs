//! The layout versions of the maps, which a daemon pins beside them (`XLB_LAYOUT`) so that the
//! next daemon, maybe another build, knows whether it can read them.
//!
//! Bump [`LAYOUT`] whenever a map's key or value type, its kind, or what its bits mean changes
//! (a new map counts too); bump [`CONNTRACK_LAYOUT`] as well when the change concerns the
//! connection table ([`crate::FlowKey`], [`crate::Connection`], or how the data path reads it).
//! A new daemon adopts pinned maps of the same layout as they are; with another [`LAYOUT`] but
//! the same [`CONNTRACK_LAYOUT`] it builds a new map set and carries the connections over; with
//! another [`CONNTRACK_LAYOUT`] it refuses to start, leaving the running balancer alone.

/// The layout of the maps as a whole. 2: the least-connection maps (`XLB_REAL_CONNS`,
/// `XLB_REAL_WEIGHTS`) and scheduler `SCHED_LEAST_CONN`. 3: the embryonic table
/// (`XLB_EMBRYONIC`) and its two global counters; the connection table is unchanged (its entries
/// never carry the embryonic flags), so its connections are carried over.
/// 4: the connection thresholds (`XLB_REAL_LIMITS`) and `SERVICE_F_FALLBACK`.
/// 5: scheduler `SCHED_WEIGHT_ORDER` (`fo`, `ovf`) and the service flags
/// `SERVICE_F_EXPECTED_DELAY`, `SERVICE_F_IDLE_FIRST` (`sed`, `nq`) and `SERVICE_F_OVERFLOW`, and
/// the real servers' `LIMIT_F_FULL` and `LIMIT_F_WEIGHT_CAP` (`ovf`).
/// 6: the global counters (`XLB_GLOBAL`) are one per-CPU value holding every counter
/// ([`crate::GlobalCounters`]) instead of one entry per counter.
/// 7: the per-CPU clock (`XLB_CLOCK`, [`crate::config::TickClock`]).
/// 8: a real server's entry carries its service's epoch ([`crate::RealServer::service_epoch`]),
/// and the data path counts a service's packets only in its real servers' counters: a service's
/// entry of `XLB_SVC_STATS` holds what servers that have left it had counted.
/// 9: the per-CPU clock is part of `XLB_GLOBAL`'s value ([`crate::CpuGlobals`]); `XLB_CLOCK` is
/// gone.
pub const LAYOUT: u32 = 9;

/// The layout of the connection table alone.
pub const CONNTRACK_LAYOUT: u32 = 1;
