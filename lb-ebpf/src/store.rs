//! Loads and stores that LLVM's BPF target would not emit as one instruction: of 32-bit words of
//! packet memory that is only 2-byte aligned (it would split them into bytes), and an atomic OR,
//! which Rust's core has no atomics for on BPF.

/// Stores `word` at `OFF` bytes past `p`, which is only 2-byte aligned, by one 32-bit store,
/// written by hand: LLVM's BPF target splits a store it cannot prove 4-byte aligned into bytes
/// (`write_unaligned` of a `u32` is four byte stores), and the target feature that lets it make
/// misaligned accesses (`+allows-misaligned-mem-access`) applies to the whole program, where it
/// also merged the parsers' 16-bit loads into 32-bit ones (3-4 ns slower). The kernel takes a
/// misaligned access to packet memory on the CPUs that do them well
/// (`CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`: x86-64, arm64, ...), as the verifier checks
/// every packet access without `BPF_F_STRICT_ALIGNMENT`.
///
/// # Safety
/// `OFF..OFF + 4` past `p` lies within the packet, as checked by `ptr_at`.
#[inline(always)]
pub unsafe fn store_word<const OFF: usize>(p: *mut u8, word: u32) {
    // SAFETY: the caller's promise; the instruction touches those four bytes only.
    unsafe {
        core::arch::asm!(
            "*(u32 *)({p} + {off}) = {w}",
            p = in(reg) p,
            off = const OFF,
            w = in(reg) u64::from(word),
            options(nostack, preserves_flags)
        );
    }
}

/// Loads the 32-bit word at `OFF` bytes past `p`, which is only 2-byte aligned, by one 32-bit
/// load (see [`store_word`]), where two 16-bit loads take a shift and an or more.
///
/// # Safety
/// `OFF..OFF + 4` past `p` lies within the packet, as checked by `ptr_at`.
#[inline(always)]
pub unsafe fn load_word<const OFF: usize>(p: *const u8) -> u32 {
    let word: u64;
    // SAFETY: the caller's promise; the instruction reads those four bytes only.
    unsafe {
        core::arch::asm!(
            "{w} = *(u32 *)({p} + {off})",
            p = in(reg) p,
            off = const OFF,
            w = out(reg) word,
            options(nostack, preserves_flags, readonly)
        );
    }
    word as u32
}

/// ORs `bits` into the `u64` at `p` by one atomic instruction (`BPF_ATOMIC | BPF_OR`, BPF v3),
/// so that two CPUs setting bits of one word at once both keep theirs.
///
/// # Safety
/// `p` points at a `u64` of a map value, 8-byte aligned, valid for the call.
#[inline(always)]
pub unsafe fn atomic_or(p: *mut u64, bits: u64) {
    // SAFETY: the caller's promise; the instruction touches those eight bytes only.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) |= {b}",
            p = in(reg) p,
            b = in(reg) bits,
            options(nostack, preserves_flags)
        );
    }
}
