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

/// Set by SIGINT or SIGTERM.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const USAGE: &str =
    "usage: xlb-soak [--minutes N (10)] [--seed S (0x736f616b)] [--samples FILE.csv]";

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

fn run() -> Result<bool> {
    let mut minutes: f64 = 10.0;
    let mut seed: u64 = 0x736f_616b;
    let mut samples: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--minutes" => {
                let v = value("--minutes")?;
                minutes = v
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0)
                    .with_context(|| format!("--minutes {v}: not a positive number"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                seed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .with_context(|| format!("--seed {v}: not a number"))?;
            }
            "--samples" => samples = Some(value("--samples")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => bail!("unknown argument {other} ({USAGE})"),
        }
    }
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
