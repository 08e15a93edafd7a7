//! `cargo xtask`: xlb's developer commands. Every command installs what it needs first, so a fresh
//! machine needs no manual preparation, and a second run installs nothing.
//!
//! - `setup`: nightly's rust-src, bpf-linker (built against rustc's own libLLVM), Debian packages.
//! - `build`: setup, then build the workspace (the XDP object through lb-userspace's build script).
//! - `run -- ARGS`: build, then run `xlbd ARGS` as root.
//! - `demo [--down]`: a lab of network namespaces showing xlb at work, left running.
//! - `bench`: the benchmarks, as ratios against baselines measured in the same run.
//! - `test`: setup, unit tests, then as root the data-path (BPF_PROG_TEST_RUN) and
//!   network-namespace end-to-end tests.
//! - `fuzz`, `soak`: the data path against its model; client load under churn (flaps, weights,
//!   services, reloads, restarts) with failures counted and xlbd's figures checked for growth.
//! - `lint`: rustfmt check, clippy on the workspace and, with nightly, on the eBPF crate, all
//!   with warnings as errors.
//! - `install [--prefix DIR] [--destdir DIR]`, `uninstall`: xlb as a systemd service (`install`).
//! - `deb`: the same as a Debian package, by cargo-deb.

mod install;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// xlb's developer commands.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent, quick when all is there).
    Setup {
        /// Only the toolchain pieces, no Debian packages.
        #[arg(long)]
        toolchain_only: bool,
    },
    /// Build xlb: the XDP programs, xlbd and xlbadm.
    Build {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
    },
    /// Build and run the daemon, xlbd, as root; arguments after `--` go to xlbd.
    Run {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Arguments for xlbd (e.g. `-- --iface eth0 --config /etc/xlb/xlb.toml`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build a lab of network namespaces on this machine (a client, xlbd, three real servers)
    /// with a direct-routing and a tunnel service, send traffic, and leave it running.
    Demo {
        /// Remove the lab instead.
        #[arg(long)]
        down: bool,
    },
    /// Run the benchmarks (as root): each reports ratios against a baseline of the same run.
    Bench {
        /// Only these: data-path, flood, thresholds, maglev, health, control, live, katran, e2e
        /// (all when none is named; katran only with --katran-src; data-path includes live).
        only: Vec<String>,
        /// A copy of Katran's source (facebookincubator/katran, a clone or `git archive`): its
        /// balancer is built from it and measured with xlb's by one harness, behind the same
        /// packet-restoring wrapper (bench/katran-compare). Also read from KATRAN_SRC.
        #[arg(long, env = "KATRAN_SRC")]
        katran_src: Option<std::path::PathBuf>,
    },
    /// Fuzz the balancer (as root): generated frames (valid, truncated, mutated, lying about
    /// their lengths, options, fragments, VLANs, extension headers, ICMP errors, tunnels in
    /// tunnels) through BPF_PROG_TEST_RUN, each compared with the model of the README's table.
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// The seed: the same seed gives the same frames.
        #[arg(long, default_value = "0x786c6221")]
        seed: String,
    },
    /// Soak the balancer (as root): continuous client load through a lab of namespaces while
    /// real servers flap, weights change, a service comes and goes, the configuration is
    /// reloaded and xlbd restarts; fails when a request to a server that stayed healthy fails
    /// or xlbd's memory, descriptors, threads or live connection entries grow.
    Soak {
        /// How long, in minutes (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// The seed of the churn's events and intervals.
        #[arg(long, default_value = "0x736f616b")]
        seed: String,
    },
    /// Check formatting, and lint the workspace and the eBPF crate with clippy (-D warnings).
    Lint,
    /// Build xlbd and xlbadm (release) and install them with xlb-realserver, an example
    /// /etc/xlb/xlb.toml and /etc/default/xlb (neither overwritten when present) and the systemd
    /// unit xlb.service.
    Install {
        #[command(flatten)]
        target: TargetArgs,
        /// Install the debug build (quicker to build, slower to run: for tests).
        #[arg(long)]
        debug: bool,
    },
    /// Remove what `install` installed with the same options, except the configuration files.
    Uninstall {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Build the Debian package (cargo-deb, installed when missing) in target/debian/.
    Deb {
        /// Package the debug build (quicker to build, slower to run: for tests).
        #[arg(long)]
        debug: bool,
    },
    /// Run every test: unit tests, then (as root) data-path and end-to-end tests.
    Test {
        /// Only the unit tests, which need no root.
        #[arg(long)]
        unit_only: bool,
        /// Passed to the test binaries as a name filter.
        filter: Option<String>,
    },
}

/// Where `install` puts the files.
#[derive(clap::Args)]
struct TargetArgs {
    /// Where the files are at run time: PREFIX/bin, PREFIX/lib/systemd/system, and the
    /// configuration in PREFIX/etc (in /etc for the prefixes /usr and /usr/local).
    #[arg(long, default_value = "/usr/local")]
    prefix: std::path::PathBuf,
    /// Stage the files under this directory instead of /, each at its run-time path below it
    /// (make's DESTDIR): the unit names the run-time paths, not the staged ones.
    #[arg(long)]
    destdir: Option<std::path::PathBuf>,
}

impl From<TargetArgs> for install::Target {
    fn from(args: TargetArgs) -> Self {
        Self {
            prefix: args.prefix,
            destdir: args.destdir,
        }
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup { toolchain_only } => {
            setup::toolchain()?;
            if !toolchain_only {
                setup::packages()?;
            }
            Ok(())
        }
        Cmd::Build { release } => {
            setup::toolchain()?;
            cargo(&["build"], release)
        }
        Cmd::Run { release, args } => {
            setup::toolchain()?;
            setup::require_root("xlbd loads XDP programs")?;
            setup::require_btf()?;
            cargo(&["build", "--bin", "xlbd"], release)?;
            let status = run_built(release, "xlbd", &args)?;
            if !status.success() {
                bail!("xlbd exited with {status}");
            }
            Ok(())
        }
        Cmd::Demo { down } => demo(down),
        Cmd::Bench { only, katran_src } => bench(&only, katran_src.as_deref()),
        Cmd::Fuzz { packets, seed } => fuzz(packets, &seed),
        Cmd::Soak { minutes, seed } => soak(minutes, &seed),
        Cmd::Lint => lint(),
        Cmd::Install { target, debug } => install::install(&target.into(), debug),
        Cmd::Uninstall { target } => install::uninstall(&target.into()),
        Cmd::Deb { debug } => install::deb(debug).map(|_| ()),
        Cmd::Test { unit_only, filter } => test(unit_only, filter),
    }
}

/// The benchmarks: xlb-bench's (data path through aya's TEST_RUN, Maglev, health checks), and the
/// libbpf harness of bench/katran-compare, which runs every case behind a wrapper that restores
/// the packet before each repeat (xlb alone for `data-path`; against Katran for `katran`), and
/// xlb-e2e-bench's HTTP through xlb, HAProxy, pen and nginx in a namespace lab (`e2e`).
fn bench(only: &[String], katran_src: Option<&std::path::Path>) -> Result<()> {
    setup::toolchain()?;
    setup::require_root("the benchmarks load XDP programs")?;
    setup::require_btf()?;
    let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if only.iter().any(|o| o == "katran") && katran_src.is_none() {
        bail!(
            "the katran benchmark needs Katran's source: cargo xtask bench katran --katran-src DIR \
             (a clone or `git archive` of facebookincubator/katran)"
        );
    }
    let ours: Vec<String> = only
        .iter()
        .filter(|o| !["katran", "e2e", "live"].contains(&o.as_str()))
        .cloned()
        .collect();
    if only.is_empty() || !ours.is_empty() {
        cargo(&["build", "-p", "xlb-tests", "--bin", "xlb-bench"], true)?;
        if wants("control") {
            // The control benchmark runs the release daemon and CLI.
            cargo(&["build", "--bin", "xlbd", "--bin", "xlbadm"], true)?;
        }
        let status = run_built(true, "xlb-bench", &ours)?;
        if !status.success() {
            bail!("the benchmarks failed ({status})");
        }
    }
    let harness = |katran: Option<&std::path::Path>, cases: Option<&str>| -> Result<()> {
        cargo(&["build", "--bin", "xlbd", "--bin", "xlbadm"], true)?;
        let root = setup::workspace_root()?;
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("bench/katran-compare/compare.sh"))
            .env("XLB_CHECKOUT", &root)
            .env_remove("KATRAN_SRC");
        if let Some(dir) = katran {
            cmd.env("KATRAN_SRC", dir);
        }
        if let Some(cases) = cases {
            cmd.env("ONLY", cases);
        }
        setup::run(&mut cmd, "the reset-wrapper harness (bench/katran-compare)")
    };
    if wants("data-path") && !(only.is_empty() && katran_src.is_some()) {
        println!("xtask: data path behind the packet-restoring wrapper (libbpf harness)");
        harness(None, None)?;
    } else if only.iter().any(|o| o == "live") {
        // Named alone: the live-frames run only (data-path includes it).
        println!("xtask: live frames on a veth pair, xlb against a MAC-swap program and a known flow's floor");
        harness(None, Some("live"))?;
    }
    if let Some(dir) = katran_src.filter(|_| wants("katran")) {
        println!("xtask: xlb against Katran ({})", dir.display());
        harness(Some(dir), None)?;
    }
    if wants("e2e") {
        println!("xtask: end to end with wrk (installs wrk, nginx, haproxy, pen when missing)");
        // Two builds as the other benchmarks do them, so that they share release artifacts.
        cargo(&["build", "--bin", "xlbd", "--bin", "xlbadm"], true)?;
        cargo(
            &["build", "-p", "xlb-tests", "--bin", "xlb-e2e-bench"],
            true,
        )?;
        let status = run_built(true, "xlb-e2e-bench", &[])?;
        if !status.success() {
            bail!("the end-to-end benchmark failed ({status})");
        }
    }
    Ok(())
}

/// `xlb-fuzz`, built with optimisations, run as root.
fn fuzz(packets: u64, seed: &str) -> Result<()> {
    setup::toolchain()?;
    setup::require_root("the fuzzer loads XDP programs into a namespace")?;
    setup::require_btf()?;
    cargo(&["build", "-p", "xlb-tests", "--bin", "xlb-fuzz"], true)?;
    let status = run_built(
        true,
        "xlb-fuzz",
        &[
            "--packets".into(),
            packets.to_string(),
            "--seed".into(),
            seed.to_owned(),
        ],
    )?;
    if !status.success() {
        bail!("the fuzzing run found frames that differ from the model ({status})");
    }
    Ok(())
}

/// `xlb-soak` with the debug xlbd and xlbadm it runs (the ones the tests run), as root; xlbd's
/// sampled figures go to target/soak-samples.csv.
fn soak(minutes: f64, seed: &str) -> Result<()> {
    setup::toolchain()?;
    setup::require_root("the soak creates network namespaces and loads XDP programs")?;
    setup::require_btf()?;
    setup::packages()?;
    cargo(
        &[
            "build", "--bin", "xlbd", "--bin", "xlbadm", "--bin", "xlb-soak",
        ],
        false,
    )?;
    let samples = setup::target_dir()?.join("soak-samples.csv");
    let status = run_built(
        false,
        "xlb-soak",
        &[
            "--minutes".into(),
            minutes.to_string(),
            "--seed".into(),
            seed.to_owned(),
            "--samples".into(),
            samples.display().to_string(),
        ],
    )?;
    println!("xtask: xlbd's sampled figures are in {}", samples.display());
    if !status.success() {
        bail!("the soak failed a goal or could not run ({status})");
    }
    Ok(())
}

fn demo(down: bool) -> Result<()> {
    setup::require_root("the demo lab creates network namespaces and loads XDP programs")?;
    let root = setup::workspace_root()?;
    let script = root.join("scripts/xlb-demo");
    if !down {
        setup::toolchain()?;
        setup::require_btf()?;
        setup::bpffs()?;
        setup::packages()?;
        cargo(&["build", "--bins"], false)?;
    }
    let bin = setup::target_dir()?.join("debug");
    let status = Command::new("bash")
        .arg(&script)
        .arg(if down { "down" } else { "up" })
        .env("XLBD", bin.join("xlbd"))
        .env("XLBADM", bin.join("xlbadm"))
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("the demo lab script failed ({status})");
    }
    Ok(())
}

fn test(unit_only: bool, filter: Option<String>) -> Result<()> {
    setup::toolchain()?;
    if !unit_only {
        setup::require_root(
            "the data-path and end-to-end tests load XDP programs and create network namespaces \
             (use --unit-only for the unit tests alone)",
        )?;
        setup::require_btf()?;
        setup::bpffs()?;
        setup::packages()?;
    }
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if let Some(f) = &filter {
        args.extend(["--", f.as_str()]);
    }
    println!("xtask: unit tests");
    cargo(&args, false)?;
    if unit_only {
        return Ok(());
    }
    println!("xtask: data-path and end-to-end tests (root)");
    let mut args = vec!["test", "--workspace", "--no-fail-fast", "--", "--ignored"];
    if let Some(f) = &filter {
        args.push(f.as_str());
    }
    cargo(&args, false)
}

/// Runs cargo with the workspace's toolchain from the workspace root.
/// Runs `binary`, as built in the release or debug profile, with `args`; its exit status.
fn run_built(release: bool, binary: &str, args: &[String]) -> Result<std::process::ExitStatus> {
    let profile = if release { "release" } else { "debug" };
    let path = setup::target_dir()?.join(profile).join(binary);
    Command::new(&path)
        .args(args)
        .status()
        .with_context(|| format!("running {}", path.display()))
}

/// rustfmt, clippy on the workspace (without building the eBPF object a second time), and clippy
/// on the eBPF crate, which only builds for the BPF target with nightly.
fn lint() -> Result<()> {
    setup::toolchain()?;
    setup::nightly_component("clippy")?;
    cargo(&["fmt", "--all", "--", "--check"], false)?;
    let root = setup::workspace_root()?;
    setup::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["clippy", "--all-targets", "--", "-D", "warnings"])
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(&root),
        "clippy on the workspace",
    )?;
    setup::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "-p",
                "lb-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root),
        "clippy on the eBPF crate (nightly)",
    )
}

fn cargo(args: &[&str], release: bool) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(setup::workspace_root()?);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
