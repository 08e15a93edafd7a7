//! The state file's JSON, kept per service between changes. At 512 services × 8 real servers the
//! file is 628 KB, written after every change, and serialising all of it was a large part of a
//! one-weight change (`xlbadm -e`) that touched one service. Each service's JSON (in the desired
//! state, in the applied state, and its ids) is kept with the value it was made from, and only a
//! service whose value differs is serialised again; the file is those pieces put together by
//! serde_json (as `RawValue`s): byte for byte what serialising the whole gives (a unit test holds
//! it to that).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Installed, ServiceIds};
use crate::{
    dataplane::RealId,
    state::{timeouts::ConnectionTimeouts, DesiredState, ServiceAddr, VirtualService},
};

/// The JSON of one service's value, and the value it was made from.
struct Piece<T> {
    value: T,
    json: Box<RawValue>,
}

/// The pieces of the last state file made.
#[derive(Default)]
pub(super) struct SaveCache {
    desired: BTreeMap<ServiceAddr, Piece<VirtualService>>,
    applied: BTreeMap<ServiceAddr, Piece<VirtualService>>,
    installed: BTreeMap<ServiceAddr, Piece<BTreeMap<SocketAddr, RealId>>>,
}

/// [`DesiredState`] as it serialises, its services given as pieces.
#[derive(Serialize)]
struct StateRef<'a> {
    services: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "are_default")]
    timeouts: &'a ConnectionTimeouts,
}

fn are_default(timeouts: &&ConnectionTimeouts) -> bool {
    **timeouts == ConnectionTimeouts::default()
}

/// [`Installed`] as it serialises, each service's ids given as a piece.
#[derive(Serialize)]
struct InstalledRef<'a> {
    services: Vec<&'a RawValue>,
}

/// The state file, as [`super::Saved`] reads it.
#[derive(Serialize)]
struct SavedRef<'a> {
    desired: StateRef<'a>,
    applied: Option<StateRef<'a>>,
    installed: InstalledRef<'a>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    unsure: &'a BTreeSet<ServiceAddr>,
    commands_without_shell: bool,
}

impl SaveCache {
    /// The state file's text for `desired`, `applied` (left out when it is the desired state),
    /// `installed` and `unsure`, reusing the pieces of the services that did not change.
    pub(super) fn json(
        &mut self,
        desired: &DesiredState,
        applied: Option<&DesiredState>,
        installed: &Installed,
        unsure: &BTreeSet<ServiceAddr>,
    ) -> serde_json::Result<Vec<u8>> {
        let service = |_: &ServiceAddr, svc: &VirtualService| serde_json::value::to_raw_value(svc);
        refresh(
            &mut self.desired,
            desired.services.iter().map(|s| (s.addr, s)),
            service,
        )?;
        match applied {
            Some(applied) => refresh(
                &mut self.applied,
                applied.services.iter().map(|s| (s.addr, s)),
                service,
            )?,
            None => self.applied.clear(),
        }
        refresh(
            &mut self.installed,
            installed
                .services
                .iter()
                .map(|(addr, reals)| (*addr, reals)),
            |service, reals| serde_json::value::to_raw_value(&ServiceIds { service, reals }),
        )?;
        let saved = SavedRef {
            desired: StateRef {
                services: in_order(&self.desired, desired),
                timeouts: &desired.timeouts,
            },
            applied: applied.map(|applied| StateRef {
                services: in_order(&self.applied, applied),
                timeouts: &applied.timeouts,
            }),
            installed: InstalledRef {
                services: self.installed.values().map(|piece| &*piece.json).collect(),
            },
            unsure,
            commands_without_shell: true,
        };
        serde_json::to_vec(&saved)
    }
}

/// The pieces of the services of `state`, in its order.
fn in_order<'a>(
    pieces: &'a BTreeMap<ServiceAddr, Piece<VirtualService>>,
    state: &DesiredState,
) -> Vec<&'a RawValue> {
    state
        .services
        .iter()
        .map(|s| &*pieces[&s.addr].json)
        .collect()
}

/// Brings `pieces` in line with `items` (each service's value): a piece whose value differs is
/// made again by `serialize`, the piece of a service no longer there is dropped.
fn refresh<'a, T: Clone + PartialEq + 'a>(
    pieces: &mut BTreeMap<ServiceAddr, Piece<T>>,
    items: impl Iterator<Item = (ServiceAddr, &'a T)>,
    serialize: impl Fn(&ServiceAddr, &T) -> serde_json::Result<Box<RawValue>>,
) -> serde_json::Result<()> {
    let mut seen = Vec::new();
    for (addr, value) in items {
        seen.push(addr);
        if pieces.get(&addr).is_some_and(|piece| piece.value == *value) {
            continue;
        }
        let json = serialize(&addr, value)?;
        pieces.insert(
            addr,
            Piece {
                value: value.clone(),
                json,
            },
        );
    }
    // Every service seen has its piece: more pieces means some services are gone.
    if seen.len() != pieces.len() {
        let seen: BTreeSet<ServiceAddr> = seen.into_iter().collect();
        pieces.retain(|addr, _| seen.contains(addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvsadm::save::restore;

    /// The state file as serialising the whole makes it (what xlbd wrote before the pieces).
    fn whole(
        desired: &DesiredState,
        applied: Option<&DesiredState>,
        installed: &Installed,
        unsure: &BTreeSet<ServiceAddr>,
    ) -> Vec<u8> {
        #[derive(Serialize)]
        struct Whole<'a> {
            desired: &'a DesiredState,
            applied: Option<&'a DesiredState>,
            installed: &'a Installed,
            #[serde(skip_serializing_if = "BTreeSet::is_empty")]
            unsure: &'a BTreeSet<ServiceAddr>,
            commands_without_shell: bool,
        }
        serde_json::to_vec(&Whole {
            desired,
            applied,
            installed,
            unsure,
            commands_without_shell: true,
        })
        .expect("serialised")
    }

    /// Ids for every real server of `state`, numbered in order from `first`.
    fn ids(state: &DesiredState, first: RealId) -> Installed {
        let mut next = first;
        Installed {
            services: state
                .services
                .iter()
                .map(|svc| {
                    let reals = svc
                        .reals
                        .iter()
                        .map(|r| {
                            next += 1;
                            (SocketAddr::new(r.addr, r.port), next)
                        })
                        .collect();
                    (svc.addr, reals)
                })
                .collect(),
        }
    }

    #[test]
    fn the_pieces_make_the_file_byte_for_byte_as_serialising_the_whole_does() {
        let rules = |weight: u32, third: bool, timeout: bool| {
            let mut rules = format!(
                "-A -t 10.0.0.1:80 -s mh\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w {weight}\n\
                 -a -t 10.0.0.1:80 -r 10.0.0.12:80 -i -w 1 -x 10 -y 5\n\
                 -A -u [2001:db8::1]:53 -s sh -b sh-port -p 60\n\
                 -a -u [2001:db8::1]:53 -r [2001:db8::11]:53 -g -w 2\n"
            );
            if third {
                rules
                    .push_str("-A -t 10.0.0.3:443 -s rr\n-a -t 10.0.0.3:443 -r 10.0.0.31:443 -g\n");
            }
            if timeout {
                rules.push_str("--set 60 120 30\n");
            }
            restore(&DesiredState::default(), &rules).expect("rules")
        };
        let mut cache = SaveCache::default();
        let mut unsure = BTreeSet::new();
        // A sequence of changes: each file equals the whole's, whatever the pieces kept.
        let steps = [
            (rules(1, false, false), None, 0),
            (rules(2, false, false), None, 0),
            (rules(2, true, false), Some(rules(1, true, false)), 0),
            (rules(2, true, true), Some(rules(1, true, true)), 5),
            (rules(2, false, true), None, 5),
            (DesiredState::default(), None, 0),
            (rules(3, true, false), Some(DesiredState::default()), 9),
        ];
        for (i, (desired, applied, first)) in steps.iter().enumerate() {
            let installed = ids(desired, *first);
            if i == 3 {
                unsure.insert(desired.services[0].addr);
            }
            let pieces = cache
                .json(desired, applied.as_ref(), &installed, &unsure)
                .expect("made");
            let expected = whole(desired, applied.as_ref(), &installed, &unsure);
            assert_eq!(
                String::from_utf8_lossy(&pieces),
                String::from_utf8_lossy(&expected),
                "step {i}"
            );
            let read: super::super::Saved = serde_json::from_slice(&pieces).expect("read back");
            assert_eq!(&read.desired, desired);
            assert_eq!(read.installed, installed);
        }
    }

    #[test]
    fn only_the_changed_services_pieces_are_made_again() {
        let state = |weight: u32| {
            restore(
                &DesiredState::default(),
                &format!(
                    "-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.0.11:80 -w {weight}\n\
                     -A -t 10.0.0.2:80\n-a -t 10.0.0.2:80 -r 10.0.0.21:80 -w 1\n"
                ),
            )
            .expect("rules")
        };
        let mut cache = SaveCache::default();
        let first = state(1);
        cache
            .json(&first, None, &ids(&first, 0), &BTreeSet::new())
            .expect("made");
        let json_of = |cache: &SaveCache, n: usize| {
            let addr = first.services[n].addr;
            cache.desired[&addr].json.get().as_ptr()
        };
        let before = (json_of(&cache, 0), json_of(&cache, 1));
        let second = state(4);
        cache
            .json(&second, None, &ids(&second, 0), &BTreeSet::new())
            .expect("made");
        assert_ne!(
            json_of(&cache, 0),
            before.0,
            "the changed service is made again"
        );
        assert_eq!(json_of(&cache, 1), before.1, "the other is kept");
        assert!(cache.applied.is_empty());
    }
}
