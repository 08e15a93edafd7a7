//! The round-robin sequences of `rr` and `wrr` (pure): the order in which a service's servers
//! take new flows, written into the service's table from its first slot. The data path walks it,
//! one position per CPU, and starts over at the first empty slot.
//!
//! `wrr` interleaves as IPVS's `wrr` does: a current weight falls from the largest weight by the
//! weights' greatest common divisor each time the servers have been passed, and each pass takes
//! every server whose weight reaches it. Over one sequence each server appears exactly its weight
//! (divided by the common divisor) times, so the shares are exact; a heavy server's turns are
//! spread over the sequence rather than bunched.
//!
//! Across CPUs: each CPU walks the whole sequence from a position of its own, spread evenly by
//! [`cursor_starts`], so every CPU's flows follow the weights to within one sequence, and all the
//! CPUs' flows together to within one turn per server per CPU.

use lb_common::limits::MAGLEV_TABLE_SIZE;

/// The longest sequence a table holds.
pub const MAX_LEN: usize = MAGLEV_TABLE_SIZE as usize;

/// `rr`: every server with a weight above 0 once, in the order given.
pub fn round_robin(servers: &[(u32, u32)]) -> Vec<u32> {
    servers
        .iter()
        .filter(|(_, weight)| *weight > 0)
        .map(|(id, _)| *id)
        .collect()
}

/// `wrr`: the servers `(id, weight)` interleaved by weight as IPVS's `wrr` does. Weights whose
/// sequence would not fit a table (their sum over their common divisor above [`MAX_LEN`]) are
/// scaled down to fit first, which keeps every share within half a turn in [`MAX_LEN`].
pub fn weighted_round_robin(servers: &[(u32, u32)]) -> Vec<u32> {
    let mut live: Vec<(u32, u64)> = servers
        .iter()
        .filter(|(_, weight)| *weight > 0)
        .map(|(id, weight)| (*id, u64::from(*weight)))
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let divisor = live.iter().fold(0, |g, (_, w)| gcd(g, *w));
    live.iter_mut().for_each(|(_, w)| *w /= divisor);
    let total: u64 = live.iter().map(|(_, w)| w).sum();
    if total > MAX_LEN as u64 {
        // Rounded down, at least 1: the sum then stays within the table.
        let room = MAX_LEN as u64 - live.len() as u64;
        live.iter_mut()
            .for_each(|(_, w)| *w = (*w * room / total).max(1));
        let divisor = live.iter().fold(0, |g, (_, w)| gcd(g, *w));
        live.iter_mut().for_each(|(_, w)| *w /= divisor);
    }
    let len: u64 = live.iter().map(|(_, w)| w).sum();
    let max = live.iter().map(|(_, w)| *w).max().unwrap_or(1);
    let mut sequence = Vec::with_capacity(len as usize);
    let mut current = max;
    // IPVS's loop with a divisor of 1 (the weights are divided already): passes at current
    // weights max, max-1, ..., 1 take every server whose weight reaches the current one.
    while sequence.len() < len as usize {
        for (id, weight) in &live {
            if *weight >= current {
                sequence.push(*id);
            }
        }
        current = if current > 1 { current - 1 } else { max };
    }
    sequence
}

/// `fo` and `ovf`: the servers with a weight above 0, highest weight first, servers of one
/// weight in the order given (IPVS takes the first of the highest weight in its list).
pub fn by_weight(servers: &[(u32, u32)]) -> Vec<u32> {
    let mut live: Vec<(u32, u32)> = servers
        .iter()
        .copied()
        .filter(|(_, weight)| *weight > 0)
        .collect();
    // Stable: ties keep their order.
    live.sort_by_key(|&(_, weight)| std::cmp::Reverse(weight));
    live.into_iter().map(|(id, _)| id).collect()
}

/// The sequence as a table of [`MAGLEV_TABLE_SIZE`] slots: the sequence, then empty slots.
pub fn table(sequence: &[u32]) -> Vec<u32> {
    let mut table = sequence[..sequence.len().min(MAX_LEN)].to_vec();
    table.resize(MAX_LEN, 0);
    table
}

/// The table of `lc` and `wlc`: the servers in turn (`round_robin`'s order) over every slot, so
/// that a slot drawn at random names each server with the same chance (to within one slot in
/// 65537).
pub fn cyclic_table(servers: &[u32]) -> Vec<u32> {
    if servers.is_empty() {
        return vec![0; MAX_LEN];
    }
    servers.iter().copied().cycle().take(MAX_LEN).collect()
}

/// Where each of `cpus` CPUs starts walking a sequence of `len`: evenly apart, so that CPUs that
/// each take a few new flows do not all give them to the first servers.
pub fn cursor_starts(len: usize, cpus: usize) -> Vec<u32> {
    (0..cpus)
        .map(|cpu| (cpu * len / cpus.max(1)) as u32)
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn by_weight_puts_the_heaviest_first_and_keeps_the_order_of_ties() {
        assert_eq!(
            by_weight(&[(1, 2), (2, 5), (3, 0), (4, 2), (5, 5)]),
            vec![2, 5, 1, 4]
        );
        assert!(by_weight(&[(1, 0)]).is_empty());
    }

    fn shares(sequence: &[u32]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for id in sequence {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    /// What the data path does: each CPU takes the next slot from its own position, starting
    /// over at the sequence's end. Returns the flows each server got, `flows` spread over the
    /// CPUs in turn.
    fn walk(sequence: &[u32], cpus: usize, flows: usize) -> BTreeMap<u32, usize> {
        let mut cursors = cursor_starts(sequence.len(), cpus);
        let mut got = BTreeMap::new();
        for flow in 0..flows {
            let cursor = &mut cursors[flow % cpus];
            let pos = if (*cursor as usize) < sequence.len() {
                *cursor as usize
            } else {
                0
            };
            *got.entry(sequence[pos]).or_default() += 1;
            *cursor = pos as u32 + 1;
        }
        got
    }

    #[test]
    fn round_robin_takes_each_server_with_a_weight_once() {
        assert_eq!(round_robin(&[(1, 1), (2, 0), (3, 5)]), vec![1, 3]);
        assert!(round_robin(&[(1, 0)]).is_empty());
    }

    #[test]
    fn weighted_round_robin_interleaves_as_ipvs_does() {
        // IPVS's wrr with weights 4, 3, 2: a a b a b c a b c.
        assert_eq!(
            weighted_round_robin(&[(1, 4), (2, 3), (3, 2)]),
            vec![1, 1, 2, 1, 2, 3, 1, 2, 3]
        );
        // Common divisors go: 200:100 is 2:1.
        assert_eq!(weighted_round_robin(&[(1, 200), (2, 100)]), vec![1, 1, 2]);
        assert!(weighted_round_robin(&[(1, 0), (2, 0)]).is_empty());
    }

    #[test]
    fn weighted_round_robin_shares_are_the_weights_within_one_percent() {
        let weights = [(1, 1), (2, 2), (3, 3), (4, 7), (5, 13)];
        let sequence = weighted_round_robin(&weights);
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        for (cpus, flows) in [(1, 26_000), (2, 26_000), (4, 25_999), (8, 1_000)] {
            let got = walk(&sequence, cpus, flows);
            for (id, weight) in weights {
                let expected = flows as f64 * f64::from(weight) / f64::from(total);
                let share = got[&id] as f64;
                assert!(
                    (share - expected).abs() <= expected * 0.01 + cpus as f64,
                    "{cpus} CPUs, {flows} flows: server {id} got {share}, expected {expected:.1}"
                );
            }
        }
    }

    #[test]
    fn weights_too_large_for_a_table_are_scaled_to_within_one_percent() {
        let weights = [(1, 65_535), (2, 65_534), (3, 30_001), (4, 1_000)];
        let sequence = weighted_round_robin(&weights);
        assert!(sequence.len() <= MAX_LEN);
        let total: f64 = weights.iter().map(|(_, w)| f64::from(*w)).sum();
        let got = shares(&sequence);
        for (id, weight) in weights {
            let expected = f64::from(weight) / total;
            let share = got[&id] as f64 / sequence.len() as f64;
            assert!(
                (share - expected).abs() <= expected * 0.01,
                "server {id}: share {share:.5}, weight's {expected:.5}"
            );
        }
    }

    #[test]
    fn round_robin_spreads_300_flows_over_two_cpus_evenly() {
        let sequence = round_robin(&[(1, 1), (2, 1), (3, 1)]);
        let got = walk(&sequence, 2, 300);
        assert!(got.values().all(|n| (99..=101).contains(n)), "{got:?}");
    }

    #[test]
    fn the_least_connection_table_names_every_server_equally_often() {
        let table = cyclic_table(&[7, 8, 9]);
        assert_eq!(table.len(), MAX_LEN);
        let got = shares(&table);
        assert!(
            got.values().all(|n| n.abs_diff(MAX_LEN / 3) <= 1),
            "{got:?}"
        );
        assert!(cyclic_table(&[]).iter().all(|&id| id == 0));
    }

    #[test]
    fn cpus_start_evenly_apart() {
        assert_eq!(cursor_starts(9, 3), vec![0, 3, 6]);
        assert_eq!(cursor_starts(2, 4), vec![0, 0, 1, 1]);
    }

    #[test]
    fn a_table_is_the_sequence_then_empty_slots() {
        let t = table(&[3, 4]);
        assert_eq!(t.len(), MAX_LEN);
        assert_eq!(&t[..3], &[3, 4, 0]);
    }
}
