//! Sizes of the tables. Userspace may raise the map sizes at load time; these are the defaults
//! compiled into the object.

/// Slots in one Maglev lookup table: a prime, so that every (offset, skip) permutation visits every
/// slot (Maglev, NSDI'16, section 3.4). 65537 keeps shares within about 1% of the weights for up to
/// a few hundred real servers per service.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;

/// Virtual services one balancer holds (service ids are `0..MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 64;

/// Maglev tables: two per service, one live and one being rewritten (see [`crate::Service::table`]).
pub const MAGLEV_TABLES: u32 = MAX_SERVICES * 2;

/// Real servers across all services. Id 0 is reserved as "no server" (an empty Maglev slot).
pub const MAX_REALS: u32 = 4096;

/// Flows the connection table remembers before the least recently used ones are evicted.
pub const MAX_CONNECTIONS: u32 = 262_144;
