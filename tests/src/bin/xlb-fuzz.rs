//! `xlb-fuzz --packets N [--seed S]`: generated frames through the balancer, each compared with
//! the reference model (see `xlb_tests::fuzz`). Run as root (it loads the data path into a
//! namespace of its own); `cargo xtask fuzz` builds and runs it. The real server's decapsulator
//! gets a quarter as many frames of its own kind. Exits 1 when any frame was
//! aborted, rewritten although not for a service, or differs from the model.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser as _;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xlb-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Generated frames through the balancer and the decapsulator, each compared with the model.
#[derive(clap::Parser)]
#[command(name = "xlb-fuzz")]
struct Args {
    /// Frames for the balancer (the decapsulator gets a quarter as many); `_` may group digits.
    #[arg(long, default_value = "1000000", value_parser = xlb_tests::cli::count)]
    packets: u64,
    /// The generator's seed, decimal or 0x-hex: the same seed gives the same frames.
    #[arg(long, default_value = "0x786c6221", value_parser = xlb_tests::cli::seed)]
    seed: u64,
}

fn run() -> Result<bool> {
    let Args { packets, seed } = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb-fuzz loads XDP programs into a namespace of its own: run it as root");
    }
    xlb_tests::netns::sweep_stale();
    let bench = xlb_tests::fuzz::Bench::new();
    let started = std::time::Instant::now();
    let report = xlb_tests::fuzz::run(&bench, packets, seed);
    println!("balancer:");
    print!("{report}");
    println!("seed {seed:#x}, {:.1} s", started.elapsed().as_secs_f64());
    // The decapsulator has far fewer paths: a quarter as many frames.
    let decap = xlb_tests::fuzz::DecapBench::new();
    let started = std::time::Instant::now();
    let decap_report = xlb_tests::fuzz::run_decap(&decap, packets.div_ceil(4), seed);
    println!("decapsulator (every frame passed; 'forwarded' = stripped of its outer header):");
    print!("{decap_report}");
    println!("seed {seed:#x}, {:.1} s", started.elapsed().as_secs_f64());
    Ok([&report, &decap_report]
        .iter()
        .all(|r| r.aborted == 0 && r.rewritten_not_for_a_service == 0 && r.mismatches == 0))
}
