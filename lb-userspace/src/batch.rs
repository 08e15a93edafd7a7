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
    // SAFETY: attr points to a live, fully initialised bpf_attr batch member, and keys/values
    // stay borrowed (alive and unmoved) for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.count as usize != keys.len() {
        return Err(std::io::Error::other("a batch update stopped part way"));
    }
    Ok(())
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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
        // SAFETY: attr points to a live, fully initialised bpf_attr batch member; keys and values
        // have room for `count` entries of the map's key and value sizes (K and V), and the
        // tokens are live u32s, for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let got = (attr.count as usize).min(chunk);
        let error = (rc < 0).then(std::io::Error::last_os_error);
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
