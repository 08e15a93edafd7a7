//! `BPF_MAP_UPDATE_BATCH`, which aya 0.14 does not expose: one system call for a whole Maglev
//! table instead of one per slot.

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
