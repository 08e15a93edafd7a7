//! Persistence (ipvsadm's `-p TIMEOUT -M NETMASK`): which real server each client of a persistent
//! service was given, so that its next connections, on any port, go there too.

use bytemuck::{Pod, Zeroable};

/// A client of a persistent service: the service and the client's address under the service's
/// mask, so that the clients of one network share an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PersistKey {
    /// The service's id.
    pub service: u32,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// Padding made explicit so that the type is `Pod`.
    pub _pad: [u8; 3],
    /// The client's address ANDed with the mask, network byte order; IPv4 uses `client[0]`.
    pub client: [u32; 4],
}

/// What the persistence table remembers about a client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Persistent {
    /// The real server the client was given.
    pub real: u32,
    /// The service's epoch when it was given ([`crate::maps::SERVICE_EPOCHS`]): a removed and
    /// re-added service does not inherit the clients of the old one.
    pub service_epoch: u32,
    /// `bpf_ktime_get_coarse_ns()` of the client's last new connection; the entry holds until
    /// the service's timeout after it.
    pub last_seen_ns: u64,
}

/// A persistent service's settings, by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PersistSettings {
    /// How long a client keeps its server after its last new connection, in nanoseconds.
    pub timeout_ns: u64,
    /// The mask a client's address is ANDed with (`-M`), network byte order; IPv4 uses `mask[0]`.
    pub mask: [u32; 4],
}

impl PersistSettings {
    /// Settings for an IPv4 service: `mask` in host order (255.255.255.0 is `0xffff_ff00`).
    pub const fn v4(timeout_secs: u32, mask: u32) -> Self {
        Self {
            timeout_ns: timeout_secs as u64 * 1_000_000_000,
            mask: [mask.to_be(), 0, 0, 0],
        }
    }

    /// Settings for an IPv6 service with a prefix length of `prefix` (0..=128).
    pub fn v6(timeout_secs: u32, prefix: u8) -> Self {
        let prefix = prefix.min(128) as u32;
        let mut mask = [0u32; 4];
        for (i, word) in mask.iter_mut().enumerate() {
            let bits = prefix.saturating_sub(32 * i as u32).min(32);
            let host = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            *word = host.to_be();
        }
        Self {
            timeout_ns: timeout_secs as u64 * 1_000_000_000,
            mask,
        }
    }

    /// The key of a client at `src` (network order, as in a [`crate::FlowKey`]) of service `service`.
    ///
    /// Built as six 32-bit words, the family's word holding the padding's zeroes: a literal's
    /// three bytes of padding became a call of the BPF target's byte-wise `memset` on every new
    /// flow of a persistent service (and zeroing the key first was cut back to those three bytes).
    #[inline(always)]
    pub const fn key(&self, service: u32, src: &[u32; 4], family: u8) -> PersistKey {
        // The family is the first byte of its word in memory, the three padding bytes after it.
        #[cfg(target_endian = "little")]
        let family_word = family as u32;
        #[cfg(target_endian = "big")]
        let family_word = (family as u32) << 24;
        let words: [u32; 6] = [
            service,
            family_word,
            src[0] & self.mask[0],
            src[1] & self.mask[1],
            src[2] & self.mask[2],
            src[3] & self.mask[3],
        ];
        // SAFETY: PersistKey is repr(C), 24 bytes of plain integers aligned to 4 (checked below):
        // service, family and its padding, then the four address words.
        unsafe { core::mem::transmute::<[u32; 6], PersistKey>(words) }
    }
}

crate::user_pod!(PersistKey, Persistent, PersistSettings);

// `PersistSettings::key` builds a key from six words.
const _: () = assert!(
    core::mem::size_of::<PersistKey>() == 24
        && core::mem::align_of::<PersistKey>() == 4
        && core::mem::offset_of!(PersistKey, family) == 4
        && core::mem::offset_of!(PersistKey, client) == 8
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_the_service_the_family_zero_padding_and_the_masked_client() {
        let settings = PersistSettings::v4(300, 0xffff_ff00);
        let src = [0x0a00_0105u32.to_be(), 7, 8, 9];
        let key = settings.key(42, &src, crate::FAMILY_V6);
        assert_eq!(
            key,
            PersistKey {
                service: 42,
                family: crate::FAMILY_V6,
                _pad: [0; 3],
                client: [
                    src[0] & settings.mask[0],
                    src[1] & settings.mask[1],
                    src[2] & settings.mask[2],
                    src[3] & settings.mask[3],
                ],
            }
        );
        assert_eq!(
            &bytemuck::bytes_of(&key)[4..8],
            &[crate::FAMILY_V6, 0, 0, 0]
        );
    }

    #[test]
    fn clients_of_one_network_share_a_key_under_its_mask() {
        let settings = PersistSettings::v4(300, 0xffff_ff00);
        let a = settings.key(1, &[0x0a00_0105u32.to_be(), 0, 0, 0], crate::FAMILY_V4);
        let b = settings.key(1, &[0x0a00_01c8u32.to_be(), 0, 0, 0], crate::FAMILY_V4);
        let c = settings.key(1, &[0x0a00_0205u32.to_be(), 0, 0, 0], crate::FAMILY_V4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.client[0], 0x0a00_0100u32.to_be());
        assert_eq!(settings.timeout_ns, 300_000_000_000);
    }

    #[test]
    fn an_ipv6_prefix_becomes_a_mask_of_that_many_leading_ones() {
        let words = |prefix| PersistSettings::v6(1, prefix).mask.map(u32::from_be);
        assert_eq!(words(128), [u32::MAX; 4]);
        assert_eq!(words(64), [u32::MAX, u32::MAX, 0, 0]);
        assert_eq!(words(48), [u32::MAX, 0xffff_0000, 0, 0]);
        assert_eq!(words(1), [0x8000_0000, 0, 0, 0]);
    }
}
