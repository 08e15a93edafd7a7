//! `xlb-soak --minutes N [--seed S]`: continuous client load through a lab of namespaces while
//! real servers flap, weights change, a service comes and goes, the configuration is reloaded and
//! xlbd restarts (see `xlb_tests::soak`). Run as root; `cargo xtask soak` builds and runs it.
//! Prints a report (and, with `--samples FILE`, xlbd's sampled figures as CSV) and exits 1 when a goal failed (a failed request to a server that stayed
//! healthy, a figure that grew), 2 when it could not run. SIGINT or SIGTERM ends the run early;
//! the lab is removed in every case.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;

/// Set by SIGINT or SIGTERM.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xlb-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Continuous client load through a lab while everything around it changes.
#[derive(clap::Parser)]
#[command(name = "xlb-soak")]
struct Args {
    /// How long the load runs, in minutes (a fraction is fine).
    #[arg(long, default_value = "10", value_parser = xlb_tests::cli::minutes)]
    minutes: f64,
    /// The seed of the changes' order and timing, decimal or 0x-hex.
    #[arg(long, default_value = "0x736f616b", value_parser = xlb_tests::cli::seed)]
    seed: u64,
    /// Where to write xlbd's sampled figures as CSV.
    #[arg(long, value_name = "FILE.csv")]
    samples: Option<std::path::PathBuf>,
}

fn run() -> Result<bool> {
    let Args {
        minutes,
        seed,
        samples,
    } = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb-soak creates network namespaces and loads XDP programs: run it as root");
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous =
            unsafe { libc::signal(signal, interrupted as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            bail!(
                "cannot install the handler of signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    xlb_tests::netns::sweep_stale();
    let plan = xlb_tests::soak::Plan::new(Duration::from_secs_f64(minutes * 60.0), seed);
    let report = xlb_tests::soak::run(&plan, &INTERRUPTED);
    print!("{report}");
    if let Some(path) = samples {
        std::fs::write(&path, report.samples_csv())
            .with_context(|| format!("writing the samples to {}", path.display()))?;
    }
    Ok(report.passed())
}
