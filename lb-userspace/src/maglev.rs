//! The Maglev lookup-table builder (Eisenbud et al., NSDI'16, section 3.4), with weights.
//!
//! Each real server walks its own permutation of the table's slots, `offset + j * skip (mod M)`,
//! where `offset` and `skip` come from a hash of the server's identity (its address and port, not
//! its id or its place in the configuration). Servers take turns claiming the next free slot of their
//! permutation until the table is full. Because the permutations depend only on the identities, two
//! balancers with the same servers build the same table byte for byte, and removing a server
//! mostly moves only the slots it held.
//!
//! Weights: in each round every server adds its weight to a credit and claims one slot per
//! `max_weight` of credit, so that shares follow the weights to within one slot per server
//! (NSDI'16 leaves the weighting open; this is the credit form of its "turns"). Rounds in which a
//! server claims nothing cost nothing: its k-th claim falls in round ⌈k·max_weight/weight⌉, so the
//! builder visits only the (round, server) turns that claim, in the order the rounds would reach
//! them. The work is one turn per slot whatever the weights, where walking every round would cost
//! rounds × servers (0.4 s for 4096 servers when one weight is 65535 and the others 1).

use std::{cmp::Reverse, collections::BinaryHeap};

use lb_common::limits::MAGLEV_TABLE_SIZE;

/// A table the builder cannot make.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not prime: a server's permutation `offset + j * skip (mod size)` would not
    /// reach every slot, and the table could not be filled.
    #[error("a Maglev table needs a prime number of slots; {size} is not prime")]
    SizeNotPrime {
        /// The size asked for.
        size: u32,
    },
}

/// One real server as the builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend<'a> {
    /// What makes the server the same server on every balancer: its address and port, as bytes.
    pub identity: &'a [u8],
    /// The value its slots get: the real-server id in the data path (never 0, which means "none").
    pub id: u32,
    /// Its weight. 0 = quiescent: it gets no slot.
    pub weight: u32,
}

const _: () = assert!(
    is_prime(MAGLEV_TABLE_SIZE),
    "MAGLEV_TABLE_SIZE must be prime"
);

/// Builds a table of [`MAGLEV_TABLE_SIZE`] slots.
pub fn build(backends: &[Backend<'_>]) -> Vec<u32> {
    // The size is checked prime at compile time, above.
    fill(backends, MAGLEV_TABLE_SIZE)
}

/// Builds a table of `size` slots, which must be prime so that every permutation reaches every
/// slot. Slots are 0 when no backend has a weight.
pub fn build_sized(backends: &[Backend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    Ok(fill(backends, size))
}

/// Fills a table of `size` slots; `size` is prime.
fn fill(backends: &[Backend<'_>], size: u32) -> Vec<u32> {
    let mut live: Vec<&Backend<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return vec![0u32; size as usize];
    }
    // The order of turns decides contested slots, so make it independent of configuration order.
    live.sort_by(|a, b| a.identity.cmp(b.identity).then(a.id.cmp(&b.id)));
    let mut filler = Filler::new(&live, size);

    let max_weight = u64::from(live.iter().map(|b| b.weight).max().unwrap_or(1));
    if live.iter().all(|b| u64::from(b.weight) == max_weight) {
        // Equal weights (the usual service): every round, each server in turn claims one slot,
        // which is the order the turns below take for them, without a heap.
        loop {
            for i in 0..live.len() {
                if filler.claim(i) {
                    return filler.table;
                }
            }
        }
    }
    // After round r, a server of weight w has made ⌊r·w/max⌋ claims (its credit form); its k-th
    // claim therefore falls in round ⌈k·max/w⌉. Within a round, servers take their turns in
    // sorted order and make all of that round's claims in one turn.
    let round_of_claim = |k: u64, weight: u64| (k * max_weight).div_ceil(weight);
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> = live
        .iter()
        .enumerate()
        .map(|(i, b)| Reverse((round_of_claim(1, u64::from(b.weight)), i)))
        .collect();
    let mut claims = vec![0u64; live.len()];
    // The next turn is always the first's; it is rescheduled in place (one sift instead of a pop
    // and a push).
    while let Some(mut turn) = turns.peek_mut() {
        let Reverse((round, i)) = *turn;
        let weight = u64::from(live[i].weight);
        let due = round * weight / max_weight;
        while claims[i] < due {
            claims[i] += 1;
            if filler.claim(i) {
                return filler.table;
            }
        }
        *turn = Reverse((round_of_claim(claims[i] + 1, weight), i));
    }
    filler.table
}

/// A table being filled: the servers' places in their permutations and the slots taken.
struct Filler {
    table: Vec<u32>,
    claimed: Vec<bool>,
    /// Per server (in turn order): its id, the next slot of its permutation and its step.
    servers: Vec<(u32, u64, u64)>,
    size: u64,
    filled: u64,
}

impl Filler {
    fn new(live: &[&Backend<'_>], size: u32) -> Self {
        let m = u64::from(size);
        let servers = live
            .iter()
            .map(|b| {
                let offset = fnv1a64(b.identity, 0xcbf2_9ce4_8422_2325) % m;
                let skip = fnv1a64(b.identity, 0x8422_2325_cbf2_9ce4) % (m - 1).max(1) + 1;
                (b.id, offset, skip)
            })
            .collect();
        Self {
            table: vec![0u32; size as usize],
            claimed: vec![false; size as usize],
            servers,
            size: m,
            filled: 0,
        }
    }

    /// Server `i` claims the next free slot of its permutation `offset + j * skip (mod size)`,
    /// walked by adding the step (less the size once past the end) rather than by a division per
    /// slot tried; whether the table is now full.
    fn claim(&mut self, i: usize) -> bool {
        let (id, pos, skip) = &mut self.servers[i];
        let slot = loop {
            let c = *pos as usize;
            *pos += *skip;
            if *pos >= self.size {
                *pos -= self.size;
            }
            if !self.claimed[c] {
                break c;
            }
        };
        self.claimed[slot] = true;
        self.table[slot] = *id;
        self.filled += 1;
        self.filled == self.size
    }
}

/// Whether `n` is prime, by trial division (at most 65,536 divisions for a `u32`).
const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// FNV-1a, 64 bits, from a given basis: two bases give the two independent hashes Maglev needs.
/// Fixed forever: a change would move flows between balancers running different versions.
fn fnv1a64(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn identities(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut id = vec![10, 1, (i / 250) as u8, (i % 250) as u8 + 1];
                id.extend_from_slice(&80u16.to_be_bytes());
                id
            })
            .collect()
    }

    fn backends<'a>(ids: &'a [Vec<u8>], weights: &[u32]) -> Vec<Backend<'a>> {
        ids.iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (identity, &weight))| Backend {
                identity,
                id: i as u32 + 1,
                weight,
            })
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for &id in table {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn two_builds_from_the_same_servers_agree_byte_for_byte() {
        let ids = identities(7);
        let a = build(&backends(&ids, &[1, 2, 3, 1, 1, 5, 2]));
        let mut reordered = backends(&ids, &[1, 2, 3, 1, 1, 5, 2]);
        reordered.reverse();
        let b = build(&reordered);
        assert_eq!(a, b, "configuration order must not change the table");
    }

    #[test]
    fn shares_follow_the_weights_within_one_percent() {
        let ids = identities(4);
        let weights = [1, 1, 2, 4];
        let table = build(&backends(&ids, &weights));
        let counts = shares(&table);
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let expected = f64::from(MAGLEV_TABLE_SIZE) * f64::from(w) / f64::from(total);
            let got = counts[&(i as u32 + 1)] as f64;
            assert!(
                (got - expected).abs() / expected < 0.01,
                "server {i}: {got} slots, expected {expected}"
            );
        }
    }

    #[test]
    fn equal_weights_give_equal_shares_for_many_servers() {
        let ids = identities(100);
        let table = build(&backends(&ids, &[1; 100]));
        let counts = shares(&table);
        assert_eq!(counts.len(), 100);
        for (&id, &n) in &counts {
            assert!((655..=656).contains(&n), "server {id} has {n} slots");
        }
    }

    #[test]
    fn removing_one_server_moves_only_its_slots_and_at_most_one_percent_of_the_rest() {
        let ids = identities(10);
        let before = build(&backends(&ids, &[1; 10]));
        let mut after_backends = backends(&ids, &[1; 10]);
        let removed = after_backends.remove(3).id;
        let after = build(&after_backends);
        let others_moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != removed && b != a)
            .count();
        let limit = MAGLEV_TABLE_SIZE as usize / 100;
        assert!(
            others_moved <= limit,
            "{others_moved} slots of other servers moved"
        );
        assert!(!after.contains(&removed));
    }

    #[test]
    fn a_quiescent_server_owns_no_slot() {
        let ids = identities(3);
        let table = build(&backends(&ids, &[1, 0, 1]));
        assert!(!table.contains(&2));
        assert!(!table.contains(&0), "every slot has a server");
    }

    #[test]
    fn no_server_with_a_weight_leaves_every_slot_empty() {
        let ids = identities(2);
        assert!(build(&backends(&ids, &[0, 0])).iter().all(|&s| s == 0));
        assert!(build(&[]).iter().all(|&s| s == 0));
    }

    #[test]
    fn a_single_server_gets_every_slot() {
        let ids = identities(1);
        assert!(build(&backends(&ids, &[7])).iter().all(|&s| s == 1));
    }

    #[test]
    fn a_table_size_that_is_not_prime_is_refused() {
        let ids = identities(3);
        for size in [0, 1, 4, 9, 65536, 65535 * 65535] {
            assert_eq!(
                build_sized(&backends(&ids, &[1, 2, 3]), size),
                Err(MaglevError::SizeNotPrime { size }),
                "size {size}"
            );
        }
        assert_eq!(
            build_sized(&backends(&ids, &[1, 2, 3]), 13).unwrap().len(),
            13
        );
    }

    /// The builder as it was first written: every server takes a turn in every round, adding its
    /// weight to its credit and claiming one slot per `max_weight` of credit. Kept as the
    /// definition the fast builder must match slot for slot (`size` must be prime).
    fn reference_build(backends: &[Backend<'_>], size: u32) -> Vec<u32> {
        let mut table = vec![0u32; size as usize];
        let mut live: Vec<&Backend<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
        if live.is_empty() {
            return table;
        }
        live.sort_by(|a, b| a.identity.cmp(b.identity).then(a.id.cmp(&b.id)));
        let m = u64::from(size);
        let perms: Vec<(u64, u64)> = live
            .iter()
            .map(|b| {
                let offset = fnv1a64(b.identity, 0xcbf2_9ce4_8422_2325) % m;
                let skip = fnv1a64(b.identity, 0x8422_2325_cbf2_9ce4) % (m - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = u64::from(live.iter().map(|b| b.weight).max().unwrap_or(1));
        let mut next = vec![0u64; live.len()];
        let mut credit = vec![0u64; live.len()];
        let mut claimed = vec![false; size as usize];
        let mut filled = 0u64;
        loop {
            for (i, backend) in live.iter().enumerate() {
                credit[i] += u64::from(backend.weight);
                while credit[i] >= max_weight {
                    credit[i] -= max_weight;
                    let (offset, skip) = perms[i];
                    let slot = loop {
                        let c = ((offset + next[i] * skip) % m) as usize;
                        next[i] += 1;
                        if !claimed[c] {
                            break c;
                        }
                    };
                    claimed[slot] = true;
                    table[slot] = backend.id;
                    filled += 1;
                    if filled == m {
                        return table;
                    }
                }
            }
        }
    }

    const GOLDEN_EQUAL: u64 = 0xa8d6_d65f_b5fb_db04;
    const GOLDEN_WEIGHTED: u64 = 0x3632_1ecb_2240_8797;

    /// xorshift64*: reproducible random cases without a dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Balancers of different versions must build the same tables (a flow keeps its server when
    /// the other balancer takes over during an upgrade): the tables of two fixed sets of servers,
    /// by a digest, as every version since the builder's first has built them.
    #[test]
    fn tables_stay_those_every_earlier_version_built() {
        let digest = |table: &[u32]| {
            let bytes: Vec<u8> = table.iter().flat_map(|id| id.to_le_bytes()).collect();
            fnv1a64(&bytes, 0xcbf2_9ce4_8422_2325)
        };
        let ids = identities(8);
        let equal = build(&backends(&ids, &[1; 8]));
        let ids = identities(5);
        let weighted = build(&backends(&ids, &[1, 2, 3, 0, 65535]));
        assert_eq!(
            (digest(&equal), digest(&weighted)),
            (GOLDEN_EQUAL, GOLDEN_WEIGHTED)
        );
    }

    #[test]
    fn the_fast_builder_matches_the_round_by_round_definition_slot_for_slot() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let small_primes = [2, 3, 5, 7, 11, 13, 31, 101, 251, 1009, 4099];
        for case in 0..400 {
            // Every tenth case uses the real table size, with fewer servers to keep the
            // round-by-round reference quick.
            let (size, most_servers) = if case % 10 == 0 {
                (MAGLEV_TABLE_SIZE, 40)
            } else {
                (
                    small_primes[random.below(small_primes.len() as u64) as usize],
                    300,
                )
            };
            let n = random.below(most_servers + 1) as usize;
            let skewed = random.below(3) == 0;
            // Every fifth case gives every server the same weight (the builder's shortcut).
            let equal = (case % 5 == 1).then(|| 1 + random.below(100) as u32);
            let weights: Vec<u32> = (0..n)
                .map(|_| match (equal, random.below(10)) {
                    (Some(weight), _) => weight,
                    (None, 0) => 0,
                    (None, 1) if skewed => [65535, 1_000_000, u32::MAX][random.below(3) as usize],
                    _ => 1 + random.below(if skewed { 3 } else { 100 }) as u32,
                })
                .collect();
            let ids = identities(n);
            let servers = backends(&ids, &weights);
            assert_eq!(
                build_sized(&servers, size).unwrap(),
                reference_build(&servers, size),
                "case {case}: {n} servers, size {size}, weights {weights:?}"
            );
        }
    }
}
