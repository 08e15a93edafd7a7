//! Builds the XDP programs in `lb-ebpf` for the BPF target (nightly, build-std, bpf-linker) and
//! leaves the object in OUT_DIR, where `src/program.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build and embeds an empty object instead, for checks that do
//! not load programs (clippy, pure unit tests); loading it then fails with a clear error.

use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        std::fs::write(out_dir.join("lb-ebpf"), [])?;
        std::fs::write(out_dir.join("lb-decap"), [])?;
    }
    let ebpf_dir = Path::new(&manifest_dir).join("../lb-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the path of lb-ebpf is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
