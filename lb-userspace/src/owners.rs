//! Which real-server id belongs to which service, both ways: the data path counts a packet for
//! its real server only, and a service's counters are its servers' summed (dataplane.rs), so the
//! daemon asks "whose is this server" when one leaves and "which are this service's" for every
//! service each second (the rate samples and the metrics). Kept both ways so that the second
//! question costs the service's servers, not a walk of every server (4,096 by default) for each of
//! 512 services.

use std::collections::{BTreeMap, BTreeSet};

/// A real-server id (`dataplane::RealId`, spelled out so that this leaf module needs nothing of
/// the dataplane's).
type RealId = u32;

/// Real-server ids and the service id each belongs to, indexed both ways.
#[derive(Clone, Debug, Default)]
pub struct RealOwners {
    service_of: BTreeMap<RealId, u32>,
    reals_of: BTreeMap<u32, BTreeSet<RealId>>,
}

impl RealOwners {
    /// Gives real server `real` to service `service` (taking it from the one it had).
    pub fn insert(&mut self, real: RealId, service: u32) {
        self.remove(real);
        self.service_of.insert(real, service);
        self.reals_of.entry(service).or_default().insert(real);
    }

    /// Takes real server `real` from its service; the service it had.
    pub fn remove(&mut self, real: RealId) -> Option<u32> {
        let service = self.service_of.remove(&real)?;
        if let Some(reals) = self.reals_of.get_mut(&service) {
            reals.remove(&real);
            if reals.is_empty() {
                self.reals_of.remove(&service);
            }
        }
        Some(service)
    }

    /// The service real server `real` belongs to.
    pub fn service(&self, real: RealId) -> Option<u32> {
        self.service_of.get(&real).copied()
    }

    /// The real servers of service `service`, in id order.
    pub fn reals(&self, service: u32) -> impl Iterator<Item = RealId> + '_ {
        self.reals_of.get(&service).into_iter().flatten().copied()
    }

    /// Forgets every server.
    pub fn clear(&mut self) {
        self.service_of.clear();
        self.reals_of.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_lists_exactly_the_servers_given_to_it() {
        let mut owners = RealOwners::default();
        owners.insert(3, 1);
        owners.insert(1, 1);
        owners.insert(2, 2);
        assert_eq!(owners.reals(1).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(owners.reals(2).collect::<Vec<_>>(), [2]);
        assert_eq!(owners.reals(7).count(), 0);
        assert_eq!(owners.service(3), Some(1));
        assert_eq!(owners.service(4), None);
    }

    #[test]
    fn a_server_given_to_another_service_leaves_the_first() {
        let mut owners = RealOwners::default();
        owners.insert(5, 1);
        owners.insert(5, 2);
        assert_eq!(owners.reals(1).count(), 0);
        assert_eq!(owners.reals(2).collect::<Vec<_>>(), [5]);
        assert_eq!(owners.service(5), Some(2));
    }

    #[test]
    fn a_removed_server_is_in_neither_index() {
        let mut owners = RealOwners::default();
        owners.insert(5, 1);
        owners.insert(6, 1);
        assert_eq!(owners.remove(5), Some(1));
        assert_eq!(owners.remove(5), None);
        assert_eq!(owners.reals(1).collect::<Vec<_>>(), [6]);
        assert_eq!(owners.service(5), None);
        owners.clear();
        assert_eq!(owners.reals(1).count(), 0);
        assert_eq!(owners.service(6), None);
    }

    /// Against the plain map it replaces: any sequence of gives and takes leaves both indexes
    /// saying the same.
    #[test]
    fn both_ways_agree_with_a_plain_map_over_a_random_walk() {
        let mut owners = RealOwners::default();
        let mut plain: BTreeMap<RealId, u32> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let real = (seed % 64) as RealId;
            let service = ((seed >> 8) % 8) as u32;
            if seed >> 20 & 1 == 0 {
                owners.insert(real, service);
                plain.insert(real, service);
            } else {
                assert_eq!(owners.remove(real), plain.remove(&real));
            }
        }
        for service in 0..8 {
            let expected: Vec<RealId> = plain
                .iter()
                .filter(|(_, &s)| s == service)
                .map(|(&r, _)| r)
                .collect();
            assert_eq!(owners.reals(service).collect::<Vec<_>>(), expected);
        }
        for real in 0..64 {
            assert_eq!(owners.service(real), plain.get(&real).copied());
        }
    }
}
