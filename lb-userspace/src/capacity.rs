//! How much a balancer holds (services, real servers) and the pool of Maglev tables behind its
//! services (pure: no map is touched here).
//!
//! Every service has one live Maglev table of 65537 slots (256 KiB), taken from a pool of
//! [`maglev_tables`] tables: one per service, a few spares and the empty table 0. A change writes a
//! spare table whole, points the service at it with one map update, and gives the old table back.
//! Half the memory of two fixed tables per service, and a service without a server costs none.

use std::collections::{BTreeSet, VecDeque};

use lb_common::limits::{
    maglev_elements, maglev_tables, real_ids, EMPTY_MAGLEV_TABLE, MAGLEV_TABLE_STRIDE, MAX_REALS,
    MAX_SERVICES,
};
use thiserror::Error;

/// Most services `--max-services` accepts: the pool's slots must be indexable by a `u32`.
pub const SERVICES_LIMIT: u32 = 32_768;

/// Most real servers `--max-reals` accepts.
pub const REALS_LIMIT: u32 = 1 << 20;

/// What a balancer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Virtual services.
    pub services: u32,
    /// Real servers, counted per service (a server in two services counts twice).
    pub reals: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: MAX_SERVICES,
            reals: MAX_REALS,
        }
    }
}

/// Why a capacity cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapacityError {
    /// A limit out of range.
    #[error("--max-{what} must be between 1 and {limit}, not {asked}")]
    OutOfRange {
        /// "services" or "reals".
        what: &'static str,
        /// The largest accepted.
        limit: u32,
        /// What was asked.
        asked: u32,
    },
    /// The running balancer's maps were sized differently.
    #[error(
        "the running balancer's pinned maps hold {pinned} {noun}, not the {asked} of \
         --max-{what}: start xlbd without --max-{what} (or with {pinned}) to adopt them, or stop \
         it with --detach-on-exit first to resize (which forgets the connection table)"
    )]
    PinnedDiffers {
        /// "services" or "reals".
        what: &'static str,
        /// "services" or "real servers".
        noun: &'static str,
        /// What the pinned maps hold.
        pinned: u32,
        /// What was asked.
        asked: u32,
    },
}

impl Capacity {
    /// The capacity to load with: what the pinned maps of a running balancer hold when there are
    /// any (a limit asked for must then agree, since a map cannot be resized under the program
    /// that uses it), else what was asked, else the defaults.
    pub fn resolve(
        services: Option<u32>,
        reals: Option<u32>,
        pinned: Option<Capacity>,
    ) -> Result<Self, CapacityError> {
        let check = |what, limit, asked: Option<u32>| match asked {
            Some(n) if n == 0 || n > limit => Err(CapacityError::OutOfRange {
                what,
                limit,
                asked: n,
            }),
            _ => Ok(()),
        };
        check("services", SERVICES_LIMIT, services)?;
        check("reals", REALS_LIMIT, reals)?;
        let Some(pinned) = pinned else {
            let default = Self::default();
            return Ok(Self {
                services: services.unwrap_or(default.services),
                reals: reals.unwrap_or(default.reals),
            });
        };
        let agree = |what, noun, pinned: u32, asked: Option<u32>| match asked {
            Some(n) if n != pinned => Err(CapacityError::PinnedDiffers {
                what,
                noun,
                pinned,
                asked: n,
            }),
            _ => Ok(()),
        };
        agree("services", "services", pinned.services, services)?;
        agree("reals", "real servers", pinned.reals, reals)?;
        Ok(pinned)
    }

    /// Tables in the Maglev pool.
    pub const fn tables(&self) -> u32 {
        maglev_tables(self.services)
    }

    /// Entries of the maps indexed by real-server id.
    pub const fn real_ids(&self) -> u32 {
        real_ids(self.reals)
    }

    /// Elements of the Maglev map (two slots each).
    pub const fn maglev_elements(&self) -> u32 {
        maglev_elements(self.tables())
    }

    /// Slots of the Maglev pool, padding included.
    pub const fn maglev_slots(&self) -> usize {
        self.tables() as usize * MAGLEV_TABLE_STRIDE as usize
    }

    /// Kernel memory of the Maglev pool, in bytes (8 per element).
    pub const fn maglev_bytes(&self) -> u64 {
        self.maglev_elements() as u64 * 8
    }
}

/// The sentence for a full balancer: the limit and the option that raises it.
pub fn services_full(max: u32) -> String {
    format!(
        "the balancer holds at most {max} services; start xlbd with --max-services N to raise it"
    )
}

/// The sentence for a balancer out of real-server ids.
pub fn reals_full(max: u32) -> String {
    format!(
        "the balancer holds at most {max} real servers (one in two services counts twice); start \
         xlbd with --max-reals N to raise it"
    )
}

/// The Maglev tables not in use. Table [`EMPTY_MAGLEV_TABLE`] is never handed out.
#[derive(Clone, Debug)]
pub struct TablePool {
    /// Oldest freed first, so that a table that just left service is rewritten as late as can be.
    free: VecDeque<u32>,
}

impl TablePool {
    /// A pool of `tables` tables of which `in_use` are live.
    pub fn new(tables: u32, in_use: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = in_use.into_iter().collect();
        Self {
            free: (0..tables)
                .filter(|t| *t != EMPTY_MAGLEV_TABLE && !used.contains(t))
                .collect(),
        }
    }

    /// A free table to write, if any is left.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop_front()
    }

    /// Gives back a table that no service points at any more (the empty table stays out).
    pub fn give_back(&mut self, table: u32) {
        if table != EMPTY_MAGLEV_TABLE && !self.free.contains(&table) {
            self.free.push_back(table);
        }
    }

    /// Free tables.
    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::limits::SPARE_MAGLEV_TABLES;

    use super::*;

    #[test]
    fn the_defaults_are_katrans_512_services_and_4096_real_servers() {
        let c = Capacity::resolve(None, None, None).expect("defaults");
        assert_eq!(c, Capacity::default());
        assert_eq!((c.services, c.reals), (512, 4096));
        assert_eq!(c.real_ids(), 4097);
        // One table per service and a few: about Katran's 512 × 65537 slots, not twice that.
        assert_eq!(c.tables(), 512 + SPARE_MAGLEV_TABLES + 1);
        assert!(c.maglev_bytes() < 140_000_000, "{}", c.maglev_bytes());
    }

    #[test]
    fn asked_limits_are_used_on_a_fresh_start_and_checked() {
        let c = Capacity::resolve(Some(2048), Some(20_000), None).expect("asked");
        assert_eq!((c.services, c.reals), (2048, 20_000));
        let e = Capacity::resolve(Some(0), None, None).expect_err("zero");
        assert_eq!(
            e.to_string(),
            "--max-services must be between 1 and 32768, not 0"
        );
        assert!(Capacity::resolve(None, Some(REALS_LIMIT + 1), None).is_err());
        // The largest pool still has every slot indexable by a u32.
        let largest = Capacity::resolve(Some(SERVICES_LIMIT), None, None).expect("largest");
        assert!((largest.maglev_slots() as u64) < u64::from(u32::MAX));
    }

    #[test]
    fn pinned_maps_keep_their_size_and_a_different_limit_is_refused_with_the_way_out() {
        let pinned = Capacity {
            services: 1024,
            reals: 8192,
        };
        assert_eq!(Capacity::resolve(None, None, Some(pinned)), Ok(pinned));
        assert_eq!(
            Capacity::resolve(Some(1024), Some(8192), Some(pinned)),
            Ok(pinned)
        );
        let e = Capacity::resolve(Some(512), None, Some(pinned)).expect_err("differs");
        assert_eq!(
            e.to_string(),
            "the running balancer's pinned maps hold 1024 services, not the 512 of \
             --max-services: start xlbd without --max-services (or with 1024) to adopt them, or \
             stop it with --detach-on-exit first to resize (which forgets the connection table)"
        );
        assert!(Capacity::resolve(None, Some(4096), Some(pinned))
            .expect_err("reals differ")
            .to_string()
            .contains("hold 8192 real servers, not the 4096 of --max-reals"));
    }

    #[test]
    fn full_balancers_name_the_limit_and_the_option() {
        assert_eq!(
            services_full(512),
            "the balancer holds at most 512 services; start xlbd with --max-services N to raise it"
        );
        assert!(reals_full(4096).contains("at most 4096 real servers"));
        assert!(reals_full(4096).contains("--max-reals N"));
    }

    #[test]
    fn the_pool_never_hands_out_the_empty_table_or_a_live_one() {
        let mut pool = TablePool::new(6, [2, 4]);
        let mut taken = Vec::new();
        while let Some(t) = pool.take() {
            taken.push(t);
        }
        assert_eq!(taken, vec![1, 3, 5]);
        pool.give_back(EMPTY_MAGLEV_TABLE);
        assert_eq!(pool.free(), 0);
    }

    #[test]
    fn a_freed_table_is_reused_only_after_every_other_free_one() {
        let mut pool = TablePool::new(5, []);
        let first = pool.take().expect("a table");
        pool.give_back(first);
        let order: Vec<u32> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(order, vec![2, 3, 4, first]);
    }

    #[test]
    fn giving_a_table_back_twice_frees_it_once() {
        let mut pool = TablePool::new(3, [1, 2]);
        pool.give_back(2);
        pool.give_back(2);
        assert_eq!(pool.free(), 1);
    }
}
