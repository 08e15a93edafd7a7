//! Array maps mapped into this process (`BPF_F_MMAPABLE`, Linux >= 5.5, values laid end to end):
//! the services' generation ([`MappedGeneration`]), the connection filter's words
//! ([`MappedWords`]), and the `u32` slots of the Maglev pool (two
//! slots per 8-byte element), which is written with a memory copy, where
//! `BPF_MAP_UPDATE_BATCH` copies and checks each of a table's 65537 slots one by one in the
//! kernel (about 5 ms a table here, most of a restore).

use std::{
    ffi::c_void,
    num::NonZeroUsize,
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Whether this machine keeps one CPU's loads in order (x86-64's TSO), which the data path's
/// readers of what userspace writes through these mappings rely on: a control value (the
/// services' generation, the connection filter's live half) read before the values it vouches
/// for, with no barrier between (BPF has no acquire load before kernel 6.15). Elsewhere the
/// service cache and the connection filter stay off.
pub const LOADS_IN_ORDER: bool = cfg!(target_arch = "x86_64");

/// A shared, writable mapping of the first bytes of an array map's values, unmapped when dropped.
struct Mapping {
    ptr: NonNull<c_void>,
    bytes: NonZeroUsize,
    /// What it maps, for the warning if the kernel refuses to unmap it.
    what: &'static str,
}

// SAFETY: the mapping belongs to its owner alone, which says how it is read and written.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `bytes` of the values of the array map `map` (created with
    /// `BPF_F_MMAPABLE`). A mapping starts at a page, so its values are 8-byte aligned.
    fn new(map: BorrowedFd<'_>, bytes: usize, what: &'static str) -> std::io::Result<Self> {
        let bytes = NonZeroUsize::new(bytes)
            .ok_or_else(|| std::io::Error::other("an empty map cannot be mapped"))?;
        // SAFETY: a new mapping of the map's fd, nothing else's memory; the kernel checks length
        // and flags.
        let ptr = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map,
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(Self { ptr, bytes, what })
    }

    fn as_ptr<T>(&self) -> *mut T {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this value's own mapping, unmapped once; nothing borrows it any more (its
        // owner's borrows end before the owner is dropped).
        if let Err(e) = unsafe { munmap(self.ptr, self.bytes.get()) } {
            tracing::warn!(error = %e, "unmapping {} failed", self.what);
        }
    }
}

/// A shared, writable mapping of an array map's values.
pub struct MappedArray {
    mapping: Mapping,
    len: usize,
}

impl MappedArray {
    /// Maps the `len` values of the array map `map` (created with `BPF_F_MMAPABLE`).
    pub fn new(map: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        let mapping = Mapping::new(map, len * std::mem::size_of::<u32>(), "the Maglev pool")?;
        Ok(Self { mapping, len })
    }

    /// Copies `values` to the slots from `start` on.
    pub fn write(&mut self, start: usize, values: &[u32]) {
        assert!(
            start + values.len() <= self.len,
            "a write past the map's end"
        );
        // SAFETY: the range is inside the mapping (checked above), which stays mapped while self
        // lives; the data path reads these slots concurrently only once they are made live.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.mapping.as_ptr::<u32>().add(start),
                values.len(),
            );
        }
    }

    /// The slots from `start` on, `count` of them.
    pub fn read(&self, start: usize, count: usize) -> Vec<u32> {
        assert!(start + count <= self.len, "a read past the map's end");
        // SAFETY: as in `write`; u32 has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts(self.mapping.as_ptr::<u32>().add(start), count) }
            .to_vec()
    }
}

/// The services' generation (`lb_common::maps::SERVICE_GENERATION`, a one-element `u64` array
/// created with `BPF_F_MMAPABLE`) mapped into this process, so that a new value is one aligned
/// 8-byte store: written through the map helpers it would be a byte copy, which the data path
/// could read half done and take for a generation it cached under long ago.
pub struct MappedGeneration {
    mapping: Mapping,
}

impl MappedGeneration {
    /// Maps the generation of the array map `map`.
    pub fn new(map: BorrowedFd<'_>) -> std::io::Result<Self> {
        let mapping = Mapping::new(map, 8, "the services' generation")?;
        Ok(Self { mapping })
    }

    fn value(&self) -> &AtomicU64 {
        // SAFETY: an aligned u64 inside the mapping, which lives as long as self.
        unsafe { &*self.mapping.as_ptr::<AtomicU64>() }
    }

    /// The generation.
    pub fn get(&self) -> u64 {
        self.value().load(Ordering::Acquire)
    }

    /// Sets the generation, after every write it is to make visible (release order).
    pub fn set(&self, generation: u64) {
        self.value().store(generation, Ordering::Release);
    }
}

/// A shared, writable mapping of an array map of `u64` values, each read and written as an
/// atomic (the connection filter's: the data path sets bits in them while userspace does).
pub struct MappedWords {
    mapping: Mapping,
    len: usize,
}

impl MappedWords {
    /// Maps the `len` values of the array map `map` (created with `BPF_F_MMAPABLE`).
    pub fn new(map: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        let mapping = Mapping::new(
            map,
            len * std::mem::size_of::<u64>(),
            "the connection filter",
        )?;
        Ok(Self { mapping, len })
    }

    /// The values.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` aligned atomics inside the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.mapping.as_ptr(), self.len) }
    }
}
