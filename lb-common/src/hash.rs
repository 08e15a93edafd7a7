//! The flow hash that picks a Maglev slot.
//!
//! Every balancer must pick the same slot for the same flow (so that ECMP'd balancers agree without
//! sharing state) and userspace must be able to predict the data path's choice in tests, so the
//! hash is defined once, here, as MurmurHash3's x86_32 mixing over the key's words. It is written
//! without loops or tables so that the eBPF verifier accepts it as straight-line code.

use crate::FlowKey;

const SEED: u32 = 0x786c_6221; // "xlb!"

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finish: the bits of `h` (with `len` mixed in) spread over the whole word.
#[inline(always)]
pub(crate) const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of the whole 5-tuple: each flow is scheduled on its own.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, ((key.sport as u32) << 16) | key.dport as u32);
    h = mix(h, ((key.family as u32) << 8) | key.proto as u32);
    finish(h, 40)
}

/// Hash of the client address alone: all of a client's flows go to one real server (ipvsadm's
/// `sh`).
#[inline(always)]
pub const fn source_hash(key: &FlowKey) -> u32 {
    address_hash(&key.src, key.family, 0)
}

/// Hash of an address (network order, IPv4 in `addr[0]`) and a port (network order; 0 for none):
/// the slot of the source-hash (`sh`, `sh-port`) and destination-hash (`dh`) schedulers.
#[inline(always)]
pub const fn address_hash(addr: &[u32; 4], family: u8, port: u16) -> u32 {
    let mut h = SEED;
    h = mix(h, addr[0]);
    h = mix(h, addr[1]);
    h = mix(h, addr[2]);
    h = mix(h, addr[3]);
    h = mix(h, ((port as u32) << 16) | family as u32);
    finish(h, 20)
}

/// The slot of a CPU's service cache ([`crate::maps::SERVICE_CACHE`]) that holds `key`'s entry:
/// the key's words folded by multiplies, then MurmurHash3's finish (repeated Fibonacci multiplies
/// alone left 512 consecutive VIPs in 425 slots). A slot is checked against the whole key, so
/// the hash's quality only decides how often two services take turns in one slot.
#[inline(always)]
pub const fn service_cache_slot(key: &crate::ServiceKey) -> u32 {
    let mut x = key.addr[0].swap_bytes();
    x = x.wrapping_mul(0x9e37_79b1) ^ (key.addr[1] ^ key.addr[2]).swap_bytes();
    x = x.wrapping_mul(0x9e37_79b1) ^ key.addr[3].swap_bytes();
    x = x.wrapping_mul(0x9e37_79b1)
        ^ (key.port.swap_bytes() as u32 | (key.proto as u32) << 16 | (key.family as u32) << 24);
    finish(x, 20) >> (32 - SERVICE_CACHE_BITS)
}

/// log2 of [`crate::limits::SERVICE_CACHE_SLOTS`].
const SERVICE_CACHE_BITS: u32 = 12;
const _: () = assert!(1 << SERVICE_CACHE_BITS == crate::limits::SERVICE_CACHE_SLOTS);

/// Words of the VIP filter ([`crate::maps::VIP_FILTER`]): 1024 × 64 bits, 8 KiB, so that 512
/// VIPs set under 1 % of its bits.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// Where a VIP address sits in the VIP filter: the word's index and the bit within it. A bit that
/// is clear proves the address is no VIP; a set bit may be another address's (the data path then
/// asks the exact maps). `addr` is in network order, IPv4 in `addr[0]`.
///
/// Every packet on the balancer's interface pays for this, a known flow's too, so it is one
/// multiply (Fibonacci hashing of the address in host order; three for IPv6's words) rather
/// than the flow hash's rounds (6 ns less per packet in the known-flow benchmark). It decides
/// nothing on its own, so its quality only matters for the share of other addresses that need
/// the exact lookup (see the test below). A daemon that adopts pinned maps opens the filter
/// (every bit set) until its own program is attached, so that a program built with another
/// filter function never misses a VIP during an upgrade.
#[inline(always)]
pub const fn vip_filter_slot(addr: &[u32; 4], family: u8) -> (u32, u64) {
    let mut x = addr[0].swap_bytes() ^ family as u32;
    if family != crate::FAMILY_V4 {
        x = x.wrapping_mul(0x9e37_79b1) ^ (addr[1] ^ addr[2]).swap_bytes();
        x = x.wrapping_mul(0x9e37_79b1) ^ addr[3].swap_bytes();
    }
    let h = x.wrapping_mul(0x9e37_79b1);
    (
        h >> (32 - VIP_FILTER_BITS),
        1u64 << ((h >> (26 - VIP_FILTER_BITS)) & 63),
    )
}

/// log2 of [`VIP_FILTER_WORDS`].
const VIP_FILTER_BITS: u32 = 10;
const _: () = assert!(1 << VIP_FILTER_BITS == VIP_FILTER_WORDS);

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: u32, sport: u16) -> FlowKey {
        FlowKey {
            src: [src.to_be(), 0, 0, 0],
            dst: [0x0a00_0064u32.to_be(), 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn the_hash_is_a_fixed_function_of_the_key() {
        // Pinned so that a change to the hash, which would move flows between balancers running
        // different versions, cannot go unnoticed.
        assert_eq!(
            flow_hash(&flow(0x0a00_0001, 40000)),
            flow_hash(&flow(0x0a00_0001, 40000))
        );
        assert_eq!(flow_hash(&flow(0x0a00_0001, 40000)), 0xcde6_a86c);
    }

    #[test]
    fn ports_spread_over_maglev_slots() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            let slot = flow_hash(&flow(0x0a00_0001, port)) % crate::limits::MAGLEV_TABLE_SIZE;
            buckets[(slot % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "uneven spread: {buckets:?}");
        }
    }

    #[test]
    fn five_hundred_services_mostly_have_a_cache_slot_of_their_own() {
        use crate::{limits::SERVICE_CACHE_SLOTS, ServiceKey, PROTO_TCP, PROTO_UDP};
        // The slots 512 keys take (4096 slots drawn at random would give about 481).
        let slots_taken = |key: &dyn Fn(u16) -> ServiceKey| {
            let mut taken = [false; SERVICE_CACHE_SLOTS as usize];
            for i in 0..512 {
                let slot = service_cache_slot(&key(i));
                assert!(slot < SERVICE_CACHE_SLOTS);
                taken[slot as usize] = true;
            }
            taken.iter().filter(|t| **t).count()
        };
        let vips = |i: u16| ServiceKey::v4(0x0a09_0000 + u32::from(i), 80, PROTO_TCP);
        let ports = |i: u16| {
            let proto = if i.is_multiple_of(2) {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            ServiceKey::v4(0x0a00_0064, 8000 + i / 2, proto)
        };
        let v6 = |i: u16| {
            let mut addr = [0u8; 16];
            addr[0] = 0xfd;
            addr[14..16].copy_from_slice(&i.to_be_bytes());
            ServiceKey::v6(addr, 443, PROTO_TCP)
        };
        for (what, key) in [
            ("512 VIPs", &vips as &dyn Fn(u16) -> ServiceKey),
            ("one VIP's 512 ports", &ports),
            ("512 IPv6 VIPs", &v6),
        ] {
            let n = slots_taken(key);
            assert!(n >= 460, "{what} take only {n} slots");
        }
    }

    #[test]
    fn five_hundred_vips_leave_most_of_the_vip_filter_clear() {
        let mut words = [0u64; VIP_FILTER_WORDS as usize];
        for i in 0..512u32 {
            let (word, bit) = vip_filter_slot(&[(0x0a09_0000 + i).to_be(), 0, 0, 0], 4);
            words[word as usize] |= bit;
        }
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set > 500, "VIPs share too many bits: {set}");
        let misses = (0..100_000u32)
            .filter(|i| {
                let (word, bit) = vip_filter_slot(&[(0x0b00_0000 + i).to_be(), 0, 0, 0], 4);
                words[word as usize] & bit != 0
            })
            .count();
        assert!(
            misses < 1_000,
            "{misses} of 100000 other addresses look like VIPs"
        );
    }

    #[test]
    fn ipv6_vips_leave_most_of_the_vip_filter_clear() {
        let v6 = |hi: u32, lo: u32| [0xfd00_0010u32.to_be(), 0, hi.to_be(), lo.to_be()];
        let mut words = [0u64; VIP_FILTER_WORDS as usize];
        for i in 0..512u32 {
            let (word, bit) = vip_filter_slot(&v6(0, 0x100 + i), 6);
            words[word as usize] |= bit;
        }
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set > 500, "VIPs share too many bits: {set}");
        let misses = (0..100_000u32)
            .filter(|i| {
                let (word, bit) = vip_filter_slot(&v6(1 + *i / 1000, *i), 6);
                words[word as usize] & bit != 0
            })
            .count();
        assert!(
            misses < 1_000,
            "{misses} of 100000 other addresses look like VIPs"
        );
    }

    #[test]
    fn source_hash_ignores_ports() {
        assert_eq!(source_hash(&flow(7, 1)), source_hash(&flow(7, 2)));
        assert_ne!(source_hash(&flow(7, 1)), source_hash(&flow(8, 1)));
    }

    #[test]
    fn the_address_hash_with_a_port_tells_the_ports_apart() {
        let f = flow(7, 1);
        assert_eq!(address_hash(&f.src, 4, 0), source_hash(&f));
        assert_ne!(address_hash(&f.src, 4, 1), address_hash(&f.src, 4, 2));
        assert_ne!(address_hash(&f.dst, 4, 0), address_hash(&f.src, 4, 0));
    }
}
