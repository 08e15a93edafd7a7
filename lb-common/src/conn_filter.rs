//! The connection filter: a bitmap that tells a SYN its flow cannot be in the connection table,
//! so that it skips the table's lookup (a new flow's miss is the dearest part of its way: a hash
//! of the 40-byte key and a bucket in a table of megabytes, 40-70 ns here).
//!
//! One array map ([`crate::maps::CONN_FILTER`], `u64` elements, mapped by userspace): element
//! [`CONTROL`], then two halves of `2^log2` words each. A flow sets bit [`bit`] of word
//! [`word`] of both halves before the data path (or userspace) writes it into the connection
//! table, and the data path never clears a bit, so a clear bit of the live half proves the flow
//! is not there. Bits of flows long gone would fill the filter up; userspace's sweep (once a
//! second) builds the standby half again from the table it reads anyway: it empties the half,
//! reads the table, sets the bits of the entries it read, then makes the half live. A flow
//! written meanwhile set its bit in the emptied half itself, and one written before was read.
//! Until the first such build the filter is off ([`CONTROL`] without [`FILTER_ON`]) and every SYN
//! looks its flow up, as before.
//!
//! With [`BITS_PER_CONNECTION`] bits for each entry the table can hold, a full table leaves
//! about 1 − e^(−1/8) ≈ 12 % of the bits set: that share of new flows' SYNs still looks up.

use crate::FlowKey;

/// Bits of the filter per connection-table entry.
pub const BITS_PER_CONNECTION: u32 = 8;

/// The element holding the control word.
pub const CONTROL: u32 = 0;

/// Control word: the filter is built and may be asked. Without it every SYN looks its flow up.
pub const FILTER_ON: u64 = 1;

/// Control word: the live half is the second one.
pub const FILTER_SECOND_HALF: u64 = 1 << 1;

/// Control word: log2 of the words of each half, from this bit (5 bits).
pub const FILTER_LOG2_SHIFT: u32 = 8;

/// log2 of the words of each half for a connection table of `max_connections` entries:
/// [`BITS_PER_CONNECTION`] bits for each, rounded up to a power of two, at least 64 words.
pub const fn words_log2(max_connections: u32) -> u32 {
    let words = (max_connections as u64 * BITS_PER_CONNECTION as u64).div_ceil(64);
    let mut log2 = 6;
    while (1u64 << log2) < words && log2 < 26 {
        log2 += 1;
    }
    log2
}

/// Elements of the filter's map: the control word and the two halves.
pub const fn elements(log2: u32) -> u32 {
    1 + (2 << log2)
}

/// The control word of a filter of `2^log2` words a half, off.
pub const fn control_off(log2: u32) -> u64 {
    (log2 as u64) << FILTER_LOG2_SHIFT
}

/// The control word of a filter of `2^log2` words a half, on, its half `half` (0 or 1) live.
pub const fn control_on(log2: u32, half: u32) -> u64 {
    control_off(log2) | FILTER_ON | if half == 1 { FILTER_SECOND_HALF } else { 0 }
}

/// The half (0 or 1) that a control word makes live; `None` while the filter is off.
#[inline(always)]
pub const fn live_half(control: u64) -> Option<u32> {
    if control & FILTER_ON == 0 {
        None
    } else if control & FILTER_SECOND_HALF == 0 {
        Some(0)
    } else {
        Some(1)
    }
}

/// The log2 that a control word carries.
pub const fn control_log2(control: u64) -> u32 {
    (control >> FILTER_LOG2_SHIFT) as u32 & 31
}

/// The flow's hash for the filter: its words folded by multiplies (no loop, for the verifier),
/// then MurmurHash3's finish. It decides nothing on its own (a set bit sends the SYN to the exact
/// table), so its quality only sets how many SYNs look up in vain.
#[inline(always)]
pub const fn hash(key: &FlowKey) -> u32 {
    // In host order, so that what varies most (a client's address and port) sits in the low
    // bits, which a multiply spreads up.
    let mut x = key.src[0].swap_bytes();
    x = x.wrapping_mul(0x9e37_79b1) ^ key.dst[0].swap_bytes();
    if key.family != crate::FAMILY_V4 {
        x = x.wrapping_mul(0x9e37_79b1) ^ (key.src[1] ^ key.dst[1]).swap_bytes();
        x = x.wrapping_mul(0x9e37_79b1) ^ key.src[2].swap_bytes();
        x = x.wrapping_mul(0x9e37_79b1) ^ key.src[3].swap_bytes();
        x = x.wrapping_mul(0x9e37_79b1) ^ (key.dst[2] ^ key.dst[3]).swap_bytes();
    }
    x = x.wrapping_mul(0x9e37_79b1)
        ^ ((key.dport.swap_bytes() as u32) << 16 | key.sport.swap_bytes() as u32);
    x = x.wrapping_mul(0x9e37_79b1) ^ ((key.family as u32) << 8 | key.proto as u32);
    crate::hash::finish(x, 0)
}

/// The element of half `half` (0 or 1) of a filter of `2^log2` words a half that holds the bit
/// of a flow of hash `hash`.
#[inline(always)]
pub const fn word(hash: u32, half: u32, log2: u32) -> u32 {
    1 + (half << log2) + ((hash >> 6) & ((1 << log2) - 1))
}

/// The bit, in its word, of a flow of hash `hash`.
#[inline(always)]
pub const fn bit(hash: u32) -> u64 {
    1 << (hash & 63)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn flow(src: u32, sport: u16) -> FlowKey {
        FlowKey {
            src: [src, 0, 0, 0],
            dst: [0x0a0a_0064, 0, 0, 0],
            sport,
            dport: 80,
            family: crate::FAMILY_V4,
            proto: crate::PROTO_TCP,
            ..FlowKey::default()
        }
    }

    #[test]
    fn the_default_table_gets_eight_bits_an_entry_in_each_half() {
        let log2 = words_log2(crate::limits::MAX_CONNECTIONS);
        assert_eq!(64u64 << log2, 8 * u64::from(crate::limits::MAX_CONNECTIONS));
        assert_eq!(elements(log2), 1 + 2 * (1 << log2));
        assert_eq!(words_log2(1), 6, "at least 64 words");
        assert_eq!(words_log2(262_145), log2 + 1, "rounded up");
        assert_eq!(control_log2(control_off(log2)), log2);
        assert_eq!(live_half(control_off(log2)), None);
        for half in 0..2 {
            assert_eq!(live_half(control_on(log2, half)), Some(half));
            assert_eq!(control_log2(control_on(log2, half)), log2);
        }
    }

    #[test]
    fn every_word_lies_in_its_half() {
        let log2 = 6;
        for h in [0, 1, 63, 64, u32::MAX, 0x8000_0000, 12_345_678] {
            assert!((1..1 + 64).contains(&word(h, 0, log2)));
            assert!((65..65 + 64).contains(&word(h, 1, log2)));
            assert_eq!(word(h, 1, log2) - word(h, 0, log2), 64);
        }
    }

    /// A full default table's flows (clients' ports of many addresses) set about the share of
    /// bits that one bit per entry in 8 gives, 1 − e^(−1/8) ≈ 11.8 %: the hash spreads them.
    #[test]
    fn a_full_table_sets_about_an_eighth_of_the_bits() {
        let log2 = words_log2(crate::limits::MAX_CONNECTIONS);
        let mut bits = std::vec![0u64; 1 << log2];
        let mut n = 0u32;
        'fill: for client in 0..1024u32 {
            for port in 0..256u16 {
                if n == crate::limits::MAX_CONNECTIONS {
                    break 'fill;
                }
                let addr = u32::from_ne_bytes([10, 0, (client >> 8) as u8, client as u8]);
                let h = hash(&flow(addr, (32768 + port * 7).to_be()));
                bits[(word(h, 0, log2) - 1) as usize] |= bit(h);
                n += 1;
            }
        }
        let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
        let share = f64::from(set) / (64.0 * bits.len() as f64);
        assert!(
            (0.110..0.125).contains(&share),
            "share of bits set: {share}"
        );
    }

    /// The same over IPv6: clients of one /64 (their last word varying) to one VIP.
    #[test]
    fn a_full_table_of_ipv6_flows_sets_about_an_eighth_of_the_bits() {
        let log2 = words_log2(crate::limits::MAX_CONNECTIONS);
        let mut bits = std::vec![0u64; 1 << log2];
        let prefix = u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]);
        for client in 0..1024u32 {
            for port in 0..256u16 {
                let key = FlowKey {
                    src: [prefix, 0, 0, client.to_be()],
                    dst: [prefix, 0, 0, 0x100u32.to_be()],
                    sport: (32768 + port * 7).to_be(),
                    dport: 443u16.to_be(),
                    family: crate::FAMILY_V6,
                    proto: crate::PROTO_TCP,
                    ..FlowKey::default()
                };
                let h = hash(&key);
                bits[(word(h, 0, log2) - 1) as usize] |= bit(h);
            }
        }
        let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
        let share = f64::from(set) / (64.0 * bits.len() as f64);
        assert!(
            (0.110..0.125).contains(&share),
            "share of bits set: {share}"
        );
    }
}
