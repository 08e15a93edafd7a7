//! Installing what xlb's build and tests need, each step skipped when already done.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The bpf-linker version we build; it must match the nightly toolchain's LLVM (22 here).
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Debian packages the tests use: (command that proves it is there, package).
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("nft", "nftables"),
    ("shellcheck", "shellcheck"),
    ("sysctl", "procps"),
    ("ping", "iputils-ping"),
    ("keepalived", "keepalived"),
    ("bird", "bird2"),
    // The status page is looked at in a real browser (headless) by the daemon's tests.
    ("chromium", "chromium"),
];

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(dir
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

/// Where cargo puts build output.
pub fn target_dir() -> Result<PathBuf> {
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(workspace_root()?.join("target")))
}

/// Fails with a clear message unless running as root.
pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root: {why}. Run it as root, e.g. `sudo -E cargo xtask ...`");
    }
    Ok(())
}

/// Fails with a clear message when the kernel has no BTF (needed to load the programs).
pub fn require_btf() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): xlb needs Linux \
             >= 5.x built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

/// Mounts the BPF file system on /sys/fs/bpf when nothing is mounted there (a fresh container
/// or VM whose init does not): xlbd pins there by default, and so do the data-path tests.
pub fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    println!("xtask: mounting the BPF file system on /sys/fs/bpf");
    run(
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
        "mounting the BPF file system on /sys/fs/bpf",
    )
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    println!("xtask: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Nightly with rust-src, and bpf-linker.
pub fn toolchain() -> Result<()> {
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!(
            "rustup is not installed (or not on PATH): xlb's eBPF programs build with a nightly \
             toolchain managed by rustup; install rustup, then run `cargo xtask setup` again"
        );
    }
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "installing the nightly toolchain",
        )?;
    }
    nightly_component("rust-src")?;
    bpf_linker()
}

/// Adds `component` (rust-src, clippy) to the nightly toolchain unless it is there.
pub fn nightly_component(component: &str) -> Result<()> {
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with(component)) {
        run(
            Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]),
            &format!("adding {component} to nightly"),
        )?;
    }
    Ok(())
}

/// bpf-linker built against the nightly rustc's own libLLVM: no system LLVM of that version
/// exists here. The linker finds libLLVM through an rpath to a directory of symlinks that we keep
/// at a stable place under the cargo home.
fn bpf_linker() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("asking nightly rustc for its sysroot")?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm_dir = cargo_home()?.join("xlb-llvm");
    let llvm_lib = llvm_dir.join("lib");
    std::fs::create_dir_all(&llvm_lib)
        .with_context(|| format!("creating {}", llvm_lib.display()))?;
    let mut found = None;
    for entry in std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") && name.contains(".so") {
            relink(&entry.path(), &llvm_lib.join(&name))?;
            if name.starts_with("libLLVM.so.") {
                found = Some(entry.path());
            }
        }
    }
    let Some(libllvm) = found else {
        bail!(
            "nightly's sysroot {} has no libLLVM.so.*: cannot build bpf-linker against it",
            sysroot_lib.display()
        );
    };
    relink(&libllvm, &llvm_lib.join("libLLVM.so"))?;

    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--force",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        BPF_LINKER_LLVM_FEATURE,
    ])
    .env("LLVM_PREFIX", &llvm_dir);
    run(
        &mut cmd,
        "building bpf-linker against nightly's libLLVM (about 2 minutes)",
    )
}

fn relink(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// The Debian packages the tests use; installs the missing ones (as root).
pub fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).is_none()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root(&format!("installing Debian packages {}", missing.join(" ")))?;
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "updating the package lists",
    )?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("installing {}", missing.join(" ")),
    )
}
