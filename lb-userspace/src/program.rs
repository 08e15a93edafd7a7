//! The compiled XDP objects, embedded at build time.

/// The ELF object of the balancer program and its maps, as built by `build.rs`.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

/// The ELF object of the real-server decapsulator and its maps.
pub fn decap_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"))
}
