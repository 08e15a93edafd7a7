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

/// A fresh shared, writable mapping of the first `bytes` of the array map `map`'s values, which the
/// caller owns (and unmaps).
fn map_shared(map: BorrowedFd<'_>, bytes: NonZeroUsize) -> std::io::Result<NonNull<c_void>> {
    // SAFETY: a new mapping of the map's fd, nothing else's memory; the kernel checks length and
    // flags.
    unsafe {
        mmap(
            None,
            bytes,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            map,
            0,
        )
    }
    .map_err(std::io::Error::from)
}

/// Unmaps what [`map_shared`] mapped (`what` names it in the warning if the kernel refuses).
fn unmap(ptr: NonNull<c_void>, bytes: usize, what: &str) {
    // SAFETY: a mapping made by `map_shared`, unmapped once by its owner's drop; nothing borrows
    // it any more.
    if let Err(e) = unsafe { munmap(ptr, bytes) } {
        tracing::warn!(error = %e, "unmapping {what} failed");
    }
}

/// A shared, writable mapping of an array map's values.
pub struct MappedArray {
    ptr: NonNull<u32>,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone; it is written through `&mut self` only.
unsafe impl Send for MappedArray {}
// SAFETY: as above; `&self` only reads.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps the `len` values of the array map `map` (created with `BPF_F_MMAPABLE`).
    pub fn new(map: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        let bytes = NonZeroUsize::new(len * std::mem::size_of::<u32>())
            .ok_or_else(|| std::io::Error::other("an empty map cannot be mapped"))?;
        let ptr = map_shared(map, bytes)?.cast();
        Ok(Self { ptr, len })
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
                self.ptr.as_ptr().add(start),
                values.len(),
            );
        }
    }

    /// The slots from `start` on, `count` of them.
    pub fn read(&self, start: usize, count: usize) -> Vec<u32> {
        assert!(start + count <= self.len, "a read past the map's end");
        // SAFETY: as in `write`; u32 has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), count).to_vec() }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        unmap(
            self.ptr.cast(),
            self.len * std::mem::size_of::<u32>(),
            "the Maglev pool",
        );
    }
}

/// The services' generation (`lb_common::maps::SERVICE_GENERATION`, a one-element `u64` array
/// created with `BPF_F_MMAPABLE`) mapped into this process, so that a new value is one aligned
/// 8-byte store: written through the map helpers it would be a byte copy, which the data path
/// could read half done and take for a generation it cached under long ago.
pub struct MappedGeneration {
    ptr: NonNull<AtomicU64>,
}

// SAFETY: the mapping belongs to this value alone; the value it points at is atomic.
unsafe impl Send for MappedGeneration {}
// SAFETY: as above.
unsafe impl Sync for MappedGeneration {}

impl MappedGeneration {
    /// Maps the generation of the array map `map`.
    pub fn new(map: BorrowedFd<'_>) -> std::io::Result<Self> {
        // A mapping starts at a page, so the value is 8-byte aligned.
        let ptr = map_shared(map, GENERATION_BYTES)?.cast();
        Ok(Self { ptr })
    }

    /// The generation.
    pub fn get(&self) -> u64 {
        // SAFETY: inside the mapping, which lives as long as self.
        unsafe { self.ptr.as_ref() }.load(Ordering::Acquire)
    }

    /// Sets the generation, after every write it is to make visible (release order).
    pub fn set(&self, generation: u64) {
        // SAFETY: as in `get`.
        unsafe { self.ptr.as_ref() }.store(generation, Ordering::Release);
    }
}

/// Bytes of the generation's mapping.
const GENERATION_BYTES: NonZeroUsize = NonZeroUsize::new(8).unwrap();

impl Drop for MappedGeneration {
    fn drop(&mut self) {
        unmap(
            self.ptr.cast(),
            GENERATION_BYTES.get(),
            "the services' generation",
        );
    }
}

/// A shared, writable mapping of an array map of `u64` values, each read and written as an
/// atomic (the connection filter's: the data path sets bits in them while userspace does).
pub struct MappedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone; its values are atomics.
unsafe impl Send for MappedWords {}
// SAFETY: as above.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// Maps the `len` values of the array map `map` (created with `BPF_F_MMAPABLE`).
    pub fn new(map: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        let bytes = NonZeroUsize::new(len * std::mem::size_of::<u64>())
            .ok_or_else(|| std::io::Error::other("an empty map cannot be mapped"))?;
        // A mapping starts at a page, so every value is 8-byte aligned.
        let ptr = map_shared(map, bytes)?.cast();
        Ok(Self { ptr, len })
    }

    /// The values.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` atomics inside the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        unmap(
            self.ptr.cast(),
            self.len * std::mem::size_of::<u64>(),
            "the connection filter",
        );
    }
}
