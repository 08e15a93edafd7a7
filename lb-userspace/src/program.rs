//! The compiled XDP object, embedded at build time.

/// The ELF object holding xlb's XDP programs and maps, as built by `build.rs`.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}
