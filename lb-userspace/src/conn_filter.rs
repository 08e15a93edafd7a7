//! The connection filter's userspace side ([`lb_common::conn_filter`] says what it is): set the
//! bits of the connection-table entries userspace writes, and build the standby half again from
//! each sweep's read of the table, then make it live.
//!
//! The filter is switched on by its first build, and only on x86-64: the data path reads the
//! control word and then a word of bits with no ordering between the two loads, which x86-64
//! keeps in order (`mapped::LOADS_IN_ORDER`, as for the service cache); elsewhere it stays off and
//! every SYN looks its flow up.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

use lb_common::{
    conn_filter::{self, CONTROL},
    FlowKey,
};

use crate::mapped::{MappedWords, LOADS_IN_ORDER};

/// The filter's words: the data path's map, mapped, or memory of our own (a fake data path's).
enum Words {
    Mapped(MappedWords),
    Owned(Box<[AtomicU64]>),
}

/// The connection filter: a control word and two halves of `2^log2` words.
pub struct ConnFilter {
    words: Words,
    log2: u32,
    /// Held by a build from its start to its end: one build at a time.
    building: Mutex<()>,
}

/// A build of the standby half under way ([`ConnFilter::begin_build`]).
pub struct Build<'a> {
    half: u32,
    _only: MutexGuard<'a, ()>,
}

impl ConnFilter {
    /// The filter of the data path's map (`elements` values, as
    /// [`conn_filter::elements`] gives), mapped; its control word set to "off" with the halves'
    /// size, which the data path reads. Before the program is attached.
    pub(crate) fn mapped(words: MappedWords) -> Option<Self> {
        let log2 = log2_of(words.words().len())?;
        Some(Self::new(Words::Mapped(words), log2))
    }

    /// A filter in memory of its own, with halves of `2^log2` words (for a fake data path).
    pub fn in_memory(log2: u32) -> Self {
        let words = (0..conn_filter::elements(log2))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self::new(Words::Owned(words), log2)
    }

    fn new(words: Words, log2: u32) -> Self {
        let filter = Self {
            words,
            log2,
            building: Mutex::new(()),
        };
        filter.words()[CONTROL as usize].store(conn_filter::control_off(log2), Ordering::Release);
        filter
    }

    fn words(&self) -> &[AtomicU64] {
        match &self.words {
            Words::Mapped(m) => m.words(),
            Words::Owned(w) => w,
        }
    }

    /// The live half, `None` while the filter is off.
    fn live_half(&self) -> Option<u32> {
        conn_filter::live_half(self.words()[CONTROL as usize].load(Ordering::Acquire))
    }

    /// The words of half `half`.
    fn half(&self, half: u32) -> &[AtomicU64] {
        let first = conn_filter::word(0, half, self.log2) as usize;
        &self.words()[first..first + (1 << self.log2)]
    }

    /// The word of half `half` that holds the bit of a flow of hash `hash`.
    fn word_of(&self, hash: u32, half: u32) -> &AtomicU64 {
        &self.words()[conn_filter::word(hash, half, self.log2) as usize]
    }

    /// Whether the data path asks the filter (it was built once).
    pub fn is_on(&self) -> bool {
        self.live_half().is_some()
    }

    /// Sets `flow`'s bit in both halves: before userspace writes it into the connection table.
    pub fn note(&self, flow: &FlowKey) {
        let hash = conn_filter::hash(flow);
        for half in 0..2 {
            self.word_of(hash, half)
                .fetch_or(conn_filter::bit(hash), Ordering::AcqRel);
        }
    }

    /// What the data path's check answers for `flow`: `false` when the filter is on and proves
    /// the flow is not in the connection table.
    pub fn may_hold(&self, flow: &FlowKey) -> bool {
        let Some(half) = self.live_half() else {
            return true;
        };
        let hash = conn_filter::hash(flow);
        self.word_of(hash, half).load(Ordering::Acquire) & conn_filter::bit(hash) != 0
    }

    /// Starts a build of the standby half (the first half while the filter is off): empties it.
    /// Then read the connection table and give what was read to [`Self::finish_build`]. Waits
    /// for a build under way to end.
    pub fn begin_build(&self) -> Build<'_> {
        let only = self
            .building
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let half = self.live_half().map_or(0, |live| 1 - live);
        for word in self.half(half) {
            word.store(0, Ordering::Release);
        }
        Build { half, _only: only }
    }

    /// Ends a build: sets the bits of `flows` (the connection table's entries read since
    /// [`Self::begin_build`]; the flows written meanwhile set their own) in the standby half,
    /// then makes it the live one and switches the filter on (on x86-64 only: see the module's
    /// comment). Returns whether the filter is on.
    pub fn finish_build<'f>(
        &self,
        build: Build<'_>,
        flows: impl IntoIterator<Item = &'f FlowKey>,
    ) -> bool {
        for flow in flows {
            let hash = conn_filter::hash(flow);
            self.word_of(hash, build.half)
                .fetch_or(conn_filter::bit(hash), Ordering::AcqRel);
        }
        if !LOADS_IN_ORDER {
            return false;
        }
        self.words()[CONTROL as usize].store(
            conn_filter::control_on(self.log2, build.half),
            Ordering::Release,
        );
        true
    }

    /// Whether the filter is on, and the bits of its live half (none while off).
    pub fn state(&self) -> FilterState {
        let bits = 64u64 << self.log2;
        let Some(half) = self.live_half() else {
            return FilterState {
                on: false,
                bits_set: 0,
                bits,
            };
        };
        let bits_set = self
            .half(half)
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        FilterState {
            on: true,
            bits_set,
            bits,
        }
    }

    /// The share of the live half's bits that are set (0 while off): about the share of new
    /// flows' SYNs that still look their flow up.
    pub fn fill(&self) -> f64 {
        self.state().fill()
    }
}

/// What the metrics say of the connection filter ([`ConnFilter::state`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterState {
    /// Built once and asked by the data path.
    pub on: bool,
    /// Bits set in the live half (0 while off).
    pub bits_set: u64,
    /// Bits of a half.
    pub bits: u64,
}

impl FilterState {
    /// The share of a half's bits that are set.
    pub fn fill(&self) -> f64 {
        if self.bits == 0 {
            return 0.0;
        }
        self.bits_set as f64 / self.bits as f64
    }
}

/// log2 of the words of each half of a filter map of `elements` values, if it is one.
fn log2_of(elements: usize) -> Option<u32> {
    let half = elements.checked_sub(1)? / 2;
    (half.is_power_of_two() && elements == 1 + 2 * half).then(|| half.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client: u8, sport: u16) -> FlowKey {
        FlowKey {
            src: [u32::from_ne_bytes([10, 0, 0, client]), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 10, 0, 100]), 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn off_until_built_then_it_proves_only_absent_flows_absent() {
        let filter = ConnFilter::in_memory(6);
        let present: Vec<FlowKey> = (0..40).map(|i| flow(1, 40000 + i)).collect();
        let absent: Vec<FlowKey> = (0..400).map(|i| flow(2, 40000 + i)).collect();
        assert!(!filter.is_on());
        assert!(
            absent.iter().all(|f| filter.may_hold(f)),
            "off: every flow may be there"
        );
        let build = filter.begin_build();
        assert_eq!(filter.finish_build(build, &present), LOADS_IN_ORDER);
        if !LOADS_IN_ORDER {
            return;
        }
        assert!(filter.is_on());
        assert!(
            present.iter().all(|f| filter.may_hold(f)),
            "no false 'absent'"
        );
        let proved = absent.iter().filter(|f| !filter.may_hold(f)).count();
        // 40 flows in 4096 bits: about 1 % of other flows share a bit.
        assert!(
            proved > 380,
            "only {proved} of 400 absent flows proved absent"
        );
        assert!(filter.fill() > 0.0 && filter.fill() < 0.011);
    }

    #[test]
    fn a_build_forgets_flows_gone_and_keeps_flows_written_while_it_ran() {
        if !LOADS_IN_ORDER {
            return;
        }
        let filter = ConnFilter::in_memory(6);
        let gone = flow(3, 50000);
        let stays = flow(3, 50001);
        let written_during = flow(3, 50002);
        // The data path writes two flows; the first build reads both.
        filter.note(&gone);
        filter.note(&stays);
        let build = filter.begin_build();
        filter.finish_build(build, [&gone, &stays]);
        assert!(filter.may_hold(&gone) && filter.may_hold(&stays));
        // `gone` leaves the table; a flow is written while the next build runs, after its read.
        let build = filter.begin_build();
        filter.note(&written_during);
        assert!(
            filter.may_hold(&gone),
            "the live half keeps its bits while the other is built"
        );
        filter.finish_build(build, [&stays]);
        assert!(filter.may_hold(&stays));
        assert!(
            filter.may_hold(&written_during),
            "a flow written during the build"
        );
        assert!(
            !filter.may_hold(&gone),
            "a flow gone from the table is forgotten"
        );
        // The halves take turns.
        let build = filter.begin_build();
        assert!(
            filter.may_hold(&stays),
            "the live half stays whole while the other is emptied"
        );
        filter.finish_build(build, [&stays, &written_during]);
        assert!(filter.may_hold(&stays) && filter.may_hold(&written_during));
        assert!(!filter.may_hold(&gone));
    }

    #[test]
    fn the_map_size_gives_the_halves() {
        assert_eq!(log2_of(conn_filter::elements(15) as usize), Some(15));
        assert_eq!(log2_of(conn_filter::elements(6) as usize), Some(6));
        assert_eq!(log2_of(0), None);
        assert_eq!(log2_of(100), None);
        assert_eq!(log2_of(1 + 2 * 48), None);
    }
}
