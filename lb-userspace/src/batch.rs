//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH`, which aya 0.14 does not expose: one system
//! call for a whole Maglev table instead of one per slot, and for thousands of connections
//! instead of two per connection.

use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `bpf` system call `cmd` (a batch command) with `attr`; the kernel's error, if any.
///
/// # Safety
/// Every pointer in `attr` is valid, for the duration of the call, for what the command reads or
/// writes through it: `count` keys and values of the map's sizes, and the batch tokens.
unsafe fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr) -> Option<std::io::Error> {
    // SAFETY: attr is a live, fully initialised bpf_attr batch member; its pointers are the
    // caller's promise.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    (rc < 0).then(std::io::Error::last_os_error)
}

/// Writes `values[i]` at `keys[i]` for every i in one call (`V` is the map's value type).
pub fn update<V: Copy>(map: BorrowedFd<'_>, keys: &[u32], values: &[V]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: keys and values stay borrowed (alive and unmoved) for the duration of the call,
    // one value of the map's type per key.
    if let Some(error) = unsafe { batch_call(BPF_MAP_UPDATE_BATCH, &mut attr) } {
        return Err(error);
    }
    if attr.count as usize != keys.len() {
        return Err(std::io::Error::other("a batch update stopped part way"));
    }
    Ok(())
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// One `BPF_MAP_LOOKUP_BATCH` call on `map` from `position` (`None`: the start) into `keys` and
/// `values`, which have room for `keys.len()` entries of the map's key and value sizes (`values`
/// holds each key's value, or its values of every CPU, contiguously): how many entries it
/// answered, the position after them, and the kernel's error, if any (`ENOENT`: the end).
///
/// # Safety
/// `K` and `V` are the map's key and value (or per-CPU value) types, and `values` has room for
/// `keys.len()` keys' values: the kernel writes that many bytes.
unsafe fn lookup_batch<K: bytemuck::Pod, V: bytemuck::Pod>(
    map: BorrowedFd<'_>,
    position: Option<u32>,
    keys: &mut [K],
    values: &mut [V],
) -> (usize, u32, Option<std::io::Error>) {
    let chunk = keys.len();
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: position.as_ref().map_or(0, |p| p as *const u32 as u64),
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: chunk as u32,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: keys and values have room for `count` entries of the map's key and value sizes
    // (the caller's promise), and the tokens are live u32s, for the duration of the call.
    let error = unsafe { batch_call(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    ((attr.count as usize).min(chunk), next, error)
}

/// Every entry of the hash map `map` (keys `K`, values `V`: the map's own sizes), read with
/// `BPF_MAP_LOOKUP_BATCH`, some thousands per call, where walking it key by key takes two calls
/// per entry. The kernel walks the buckets in order, so entries the data path adds or evicts
/// meanwhile may or may not be seen, and none is seen twice.
pub fn lookup_all<K: bytemuck::Pod, V: bytemuck::Pod>(
    map: BorrowedFd<'_>,
) -> std::io::Result<Vec<(K, V)>> {
    let mut all = Vec::new();
    let mut chunk = 4096usize;
    // The position in the map: a bucket index for a hash map (the kernel's token is a u32).
    let mut position: Option<u32> = None;
    loop {
        let mut keys = vec![K::zeroed(); chunk];
        let mut values = vec![V::zeroed(); chunk];
        // SAFETY: K and V are the map's key and value types (this function's contract), one
        // value per key.
        let (got, next, error) = unsafe { lookup_batch(map, position, &mut keys, &mut values) };
        all.extend(keys.into_iter().zip(values).take(got));
        let Some(error) = error else {
            position = Some(next);
            continue;
        };
        match error.raw_os_error() {
            // The end of the map.
            Some(libc::ENOENT) => return Ok(all),
            // A bucket holds more entries than the chunk: a bigger one.
            Some(libc::ENOSPC) if got == 0 && chunk < 1 << 20 => chunk *= 4,
            _ => return Err(error),
        }
    }
}

/// Entries `0..len` of the per-CPU array `map`, each as its `cpus` values (`V`: the map's value
/// type, a multiple of 8 bytes long, as the kernel lays each CPU's value out), read with
/// `BPF_MAP_LOOKUP_BATCH`: a few calls for thousands of entries, where `PerCpuArray::get` takes
/// one per entry.
pub fn lookup_per_cpu<V: bytemuck::Pod>(
    map: BorrowedFd<'_>,
    len: u32,
    cpus: usize,
) -> std::io::Result<Vec<Vec<V>>> {
    assert_eq!(
        std::mem::size_of::<V>() % 8,
        0,
        "per-CPU values are laid out 8-byte aligned"
    );
    const CHUNK: u32 = 1024;
    let mut all = Vec::with_capacity(len as usize);
    let mut position: Option<u32> = None;
    while (all.len() as u32) < len {
        let chunk = CHUNK.min(len - all.len() as u32) as usize;
        let mut keys = vec![0u32; chunk];
        let mut values = vec![V::zeroed(); chunk * cpus];
        // SAFETY: an array's keys are u32s and V its value type (this function's contract),
        // `cpus` values per key.
        let (got, next, error) = unsafe { lookup_batch(map, position, &mut keys, &mut values) };
        // An array answers its keys in order from the position, so entry i is key i.
        for (i, key) in keys.iter().take(got).enumerate() {
            if *key as usize != all.len() {
                return Err(std::io::Error::other(
                    "a batch read of an array answered keys out of order",
                ));
            }
            all.push(values[i * cpus..(i + 1) * cpus].to_vec());
        }
        match error {
            None => position = Some(next),
            // The end of the array.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
    }
    if (all.len() as u32) < len {
        return Err(std::io::Error::other(
            "a batch read of an array ended before its last entry",
        ));
    }
    Ok(all)
}
