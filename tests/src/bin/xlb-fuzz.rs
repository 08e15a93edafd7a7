//! `xlb-fuzz --packets N [--seed S]`: generated frames through the balancer, each compared with
//! the reference model (see `xlb_tests::fuzz`). Run as root (it loads the data path into a
//! namespace of its own); `cargo xtask fuzz` builds and runs it. The real server's decapsulator
//! gets a quarter as many frames of its own kind. Exits 1 when any frame was
//! aborted, rewritten although not for a service, or differs from the model.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

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

fn run() -> Result<bool> {
    let mut packets: u64 = 1_000_000;
    let mut seed: u64 = 0x786c_6221;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--packets" => {
                let v = value("--packets")?;
                packets = v
                    .replace('_', "")
                    .parse()
                    .with_context(|| format!("--packets {v}: not a number"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                seed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .with_context(|| format!("--seed {v}: not a number"))?;
            }
            "-h" | "--help" => {
                println!("usage: xlb-fuzz [--packets N (1000000)] [--seed S (0x786c6221)]");
                return Ok(true);
            }
            other => bail!("unknown argument {other} (usage: xlb-fuzz [--packets N] [--seed S])"),
        }
    }
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
