//! Sizes of the tables. Userspace may raise the map sizes at load time (xlbd's `--max-services`
//! and `--max-reals`); these are the defaults compiled into the object.

/// Slots in one Maglev lookup table: a prime, so that every (offset, skip) permutation visits every
/// slot (Maglev, NSDI'16, section 3.4). 65537 keeps shares within about 1% of the weights for up to
/// a few hundred real servers per service.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;

/// Slots from the start of one table of the pool to the next: the table and one unused slot, so
/// that every table starts on an even slot. The map stores two slots per element (the kernel
/// rounds an array's values up to 8 bytes: one `u32` per element would take twice the memory),
/// and no element then holds slots of two tables. The unused slot stays 0: a scheduler walking
/// past an overloaded server at the table's end meets it and goes on at the table's first slot.
pub const MAGLEV_TABLE_STRIDE: u32 = MAGLEV_TABLE_SIZE + 1;

/// Elements of the Maglev map (two slots each) for a pool of `tables` tables.
pub const fn maglev_elements(tables: u32) -> u32 {
    tables * MAGLEV_TABLE_STRIDE / 2
}

/// Virtual services one balancer holds (service ids are `0..MAX_SERVICES`), Katran's default.
pub const MAX_SERVICES: u32 = 512;

/// Slots of each CPU's service cache ([`crate::maps::SERVICE_CACHE`]), a power of two: 48 bytes
/// each, 192 KiB a CPU. A cache, not a table: two services in one slot take turns (each new flow
/// of the other does the hash lookup), so it is sized for few such pairs at 512 services (about
/// 32 of 512 × 511 / 2, one flow of two of each pair a lookup when both are busy on one CPU).
pub const SERVICE_CACHE_SLOTS: u32 = 4096;

/// Maglev tables beyond one per service in the pool: a change writes a spare table whole and then
/// makes it live, freeing the table it replaces. Freed tables are reused last, so a table that
/// just left service goes unwritten for at least this many rewrites (each far longer than a packet
/// takes through the data path, which may still be reading it).
pub const SPARE_MAGLEV_TABLES: u32 = 8;

/// Table 0 of the pool is never written: all its slots are 0 ("no server"). A service without an
/// available server points at it, and so does a new service until its first table is written.
pub const EMPTY_MAGLEV_TABLE: u32 = 0;

/// Maglev tables in the pool of a balancer holding `services` services: one each, the spares and
/// the empty table.
pub const fn maglev_tables(services: u32) -> u32 {
    services + SPARE_MAGLEV_TABLES + 1
}

/// Maglev tables in the compiled-in pool.
pub const MAGLEV_TABLES: u32 = maglev_tables(MAX_SERVICES);

/// Real servers across all services (the same server in two services counts twice).
pub const MAX_REALS: u32 = 4096;

/// Entries of the maps indexed by real-server id for `reals` real servers: id 0 is reserved as
/// "no server" (an empty Maglev slot).
pub const fn real_ids(reals: u32) -> u32 {
    reals + 1
}

/// Flows the connection table remembers before the least recently used ones are evicted.
pub const MAX_CONNECTIONS: u32 = 262_144;

/// Embryonic TCP flows (a SYN seen, nothing else yet) the embryonic table remembers before the
/// least recently used ones are evicted: [`embryonic_entries`] of [`MAX_CONNECTIONS`]. A
/// handshake needs its entry for one round trip; a SYN flood of `r` packets a second leaves each
/// entry `MAX_EMBRYONIC / r` seconds (65 ms at 1 Mpps).
pub const MAX_EMBRYONIC: u32 = embryonic_entries(MAX_CONNECTIONS);

/// The embryonic table's size beside a connection table of `connections` entries: a quarter of
/// it, at least 256 (each CPU keeps its own share of an LRU table's free entries).
pub const fn embryonic_entries(connections: u32) -> u32 {
    let quarter = connections / 4;
    if quarter < 256 {
        256
    } else {
        quarter
    }
}

/// Persistent clients (client networks, per service) the persistence table remembers before the
/// least recently used ones are evicted.
pub const MAX_PERSISTENT: u32 = 65_536;
