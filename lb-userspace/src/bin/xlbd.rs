//! xlbd, the xlb daemon: loads the XDP balancer, attaches it to the given interfaces, installs the
//! services of its configuration, and reports the data path's counters until SIGINT or SIGTERM.
//!
//! SIGUSR1 switches the data path's debug events on, SIGUSR2 off; they are logged through
//! `tracing` (target `lb_ebpf`).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use clap::{Parser, ValueEnum};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    state::DesiredState,
    sync,
};
use tokio::signal::unix::{signal, SignalKind};

/// xlb's daemon: an XDP layer-4 load balancer.
#[derive(Parser, Debug)]
#[command(name = "xlbd", version)]
struct Args {
    /// Interface to balance on (repeat for several).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// XDP attachment mode: native (in the driver), generic (in the stack), or auto (native,
    /// falling back to generic with a log line).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    xdp_mode: Mode,
    /// The configuration: virtual services and their real servers (TOML).
    #[arg(long, default_value = "/etc/xlb/xlb.toml")]
    config: PathBuf,
    /// Start with the data path's debug events on.
    #[arg(long)]
    debug_events: bool,
    /// Seconds between two counter reports in the log; 0 = none.
    #[arg(long, default_value_t = 10)]
    report_every: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Native,
    Generic,
    Auto,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let state = load_config(&args.config)?;
    let mut dp = Dataplane::load(&LoadOptions::default()).context("loading the data path")?;
    let mut logger = aya_log::EbpfLogger::init(dp.ebpf_mut())
        .context("starting the reader of the data path's debug events")?;
    for iface in &args.ifaces {
        attach(&mut dp, iface, args.xdp_mode)?;
    }
    sync::install(&mut dp, &state).context("installing the configured services")?;
    dp.set_debug_events(args.debug_events)
        .context("setting the debug events")?;

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut logs = tokio::time::interval(Duration::from_millis(200));
    let report_period = Duration::from_secs(args.report_every.max(1));
    let mut report = tokio::time::interval(report_period);
    tracing::info!(ifaces = ?args.ifaces, services = state.services.len(), "xlbd is balancing");
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sigusr1.recv() => {
                dp.set_debug_events(true).context("switching debug events on")?;
                tracing::info!("data-path debug events on");
            }
            _ = sigusr2.recv() => {
                dp.set_debug_events(false).context("switching debug events off")?;
                tracing::info!("data-path debug events off");
            }
            _ = logs.tick() => logger.flush(),
            _ = report.tick(), if args.report_every > 0 => {
                let counters = dp.global_counters().context("reading counters")?;
                let nonzero: Vec<String> = counters
                    .iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(s, v)| format!("{}={v}", s.name()))
                    .collect();
                tracing::info!(counters = %nonzero.join(" "), "data path");
            }
        }
    }
    tracing::info!("shutting down: detaching from every interface");
    Ok(())
}

fn load_config(path: &std::path::Path) -> Result<DesiredState> {
    if !path.exists() {
        tracing::warn!(config = %path.display(), "no configuration: starting with no service");
        return Ok(DesiredState::default());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    let state: DesiredState = toml::from_str(&text)
        .with_context(|| format!("parsing the configuration {}", path.display()))?;
    let mut checked = DesiredState::default();
    for service in &state.services {
        checked
            .add_service(service.addr, service.scheduler, service.persistence)
            .with_context(|| format!("{}: service {}", path.display(), service.addr))?;
        for real in &service.reals {
            checked.add_real(&service.addr, *real).with_context(|| {
                format!(
                    "{}: real server {}:{} of {}",
                    path.display(),
                    real.addr,
                    real.port,
                    service.addr
                )
            })?;
        }
    }
    Ok(checked)
}

fn attach(dp: &mut Dataplane, iface: &str, mode: Mode) -> Result<()> {
    match mode {
        Mode::Native => dp.attach(iface, XdpMode::Driver),
        Mode::Generic => dp.attach(iface, XdpMode::Skb),
        Mode::Auto => match dp.attach(iface, XdpMode::Driver) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(iface, error = %e, "native XDP refused: falling back to generic mode");
                dp.attach(iface, XdpMode::Skb)
            }
        },
    }
    .with_context(|| format!("attaching to {iface}"))?;
    tracing::info!(iface, ?mode, "attached");
    Ok(())
}
