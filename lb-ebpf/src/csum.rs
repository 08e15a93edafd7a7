//! Internet checksums over fixed-size regions (fixed so the verifier sees bounded loops).

/// One's-complement sum of the big-endian 16-bit words of `bytes`, not yet folded.
#[inline(always)]
pub fn sum<const N: usize>(bytes: &[u8; N]) -> u64 {
    let mut total = 0u64;
    let mut i = 0;
    while i + 1 < N {
        total += u64::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        total += u64::from(bytes[N - 1]) << 8;
    }
    total
}

/// Folds a sum to 16 bits and complements it: the value to store in a checksum field.
#[inline(always)]
pub fn finish(mut total: u64) -> u16 {
    total = (total & 0xffff) + (total >> 16);
    total = (total & 0xffff) + (total >> 16);
    total = (total & 0xffff) + (total >> 16);
    !(total as u16)
}
