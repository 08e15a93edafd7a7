//! xlbd, the xlb daemon: loads the XDP balancer, attaches it to the given interfaces through
//! pinned links, installs the configured services, and serves xlbadm on its control socket until
//! SIGINT or SIGTERM. This file parses the arguments, prepares the bpffs and binds the listeners;
//! the daemon itself is `lb_userspace::daemon::run`.
//!
//! The configuration file is the source of truth at start and on reload (SIGHUP, or
//! `xlbadm --reload`): its difference from the running state is applied in one transaction, and
//! a file with a mistake is refused whole.
//!
//! Restarts do not interrupt traffic: the program, its maps and its links are pinned under the pin
//! directory, and a daemon that finds them (with its state file) adopts them: same maps, same
//! connection table, and the program in each link is replaced atomically by its own. By default
//! the balancer keeps forwarding after the daemon exits; `--detach-on-exit` removes everything,
//! once the VIPs that are local addresses have left (`--detach-wait-vip`: a keepalived master
//! hands them over first).
//!
//! After `kill -9` (or a crash) the balancer keeps forwarding; `xlbd detach` takes it off the
//! interfaces by removing the pinned links.
//!
//! SIGHUP reloads the configuration file; SIGUSR1 switches the data path's debug events on, SIGUSR2 off; they are logged through
//! `tracing`.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    bpffs, config,
    control::{self, DEFAULT_SOCKET},
    daemon::{self, AttachMode},
    dataplane::Dataplane,
    decap,
    errors::error_chain,
    health::engine::DEFAULT_MAX_CONCURRENT_CHECKS,
    links, metrics, offloads,
};
use tokio::signal::unix::{signal, SignalKind};

/// xlb's daemon: an XDP layer-4 load balancer.
#[derive(Parser, Debug)]
#[command(name = "xlbd", version, subcommand_negates_reqs = true)]
struct Args {
    /// Run a real-server command instead of the daemon.
    #[command(subcommand)]
    command: Option<Sub>,
    /// Interface to balance on (repeat for several).
    #[arg(long = "iface", required_unless_present = "check_config")]
    ifaces: Vec<String>,
    /// XDP attachment mode: native (in the driver), generic (in the stack), or auto (native,
    /// falling back to generic with a log line).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    xdp_mode: Mode,
    /// The configuration: virtual services and their real servers (TOML). Applied at start (over
    /// the adopted running state after a restart) and on every reload (SIGHUP, xlbadm --reload);
    /// without a file, a restart keeps the running state.
    #[arg(long, default_value = "/etc/xlb/xlb.toml")]
    config: PathBuf,
    /// Check the configuration file and exit, touching nothing else (no root needed): 0 and a
    /// summary when it is valid, 1 and every mistake (FILE:LINE:COLUMN: FIELD: what) when not.
    #[arg(long)]
    check_config: bool,
    /// The control socket xlbadm talks to.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where the program, its maps and links are pinned (on bpffs).
    #[arg(long, env = "XLB_PIN_DIR", default_value = "/sys/fs/bpf/xlb")]
    pin_dir: PathBuf,
    /// Where the desired state and its data-path ids are saved after every change.
    #[arg(long, default_value = "/run/xlb/state.json")]
    state_file: PathBuf,
    /// On exit, detach from the interfaces and remove every pin (default: keep forwarding), once
    /// the VIPs that are addresses of this host have left (see --detach-wait-vip).
    #[arg(long)]
    detach_on_exit: bool,
    /// With --detach-on-exit: seconds to wait before detaching, with the metrics and control
    /// socket already closed, so that keepalived's track script or a BGP health hook hands the
    /// VIP to another balancer while this one still forwards (e.g. 2 with a check every second);
    /// then --detach-wait-vip waits for the VIPs that are still local addresses.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, requires = "detach_on_exit", value_parser = parse_delay)]
    detach_delay: f64,
    /// With --detach-on-exit: at most this many seconds (after --detach-delay, if given: the two
    /// add up) of forwarding while a VIP of the services is still an address of this host (of
    /// xlbd's network namespace), so that keepalived's track script, failing once the metrics are
    /// closed, moves it to the backup before the data path goes; once no VIP is local, 1 s more
    /// while the neighbours learn the new holder. A VIP that is no local address (a BGP
    /// balancer's route) is not waited for; one configured statically, or on lo, stays, and
    /// costs the whole wait on every stop (logged). 0: no wait. A second SIGINT or SIGTERM ends
    /// this wait and --detach-delay's at once.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = daemon::handover::DEFAULT_BOUND.as_secs_f64(),
        requires = "detach_on_exit",
        value_parser = parse_delay
    )]
    detach_wait_vip: f64,
    /// Start with the data path's debug events on.
    #[arg(long)]
    debug_events: bool,
    /// Source address of tunneled packets (one IPv4 and/or one IPv6); default: the egress
    /// interface's address, as the kernel's FIB gives it.
    #[arg(long = "tunnel-source")]
    tunnel_sources: Vec<IpAddr>,
    /// At most this many health checks run at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_CHECKS)]
    max_concurrent_checks: usize,
    /// Virtual services the balancer holds (default 512). Each costs about 256 KiB of kernel
    /// memory, its Maglev table. A restart adopts the running balancer's maps with their size.
    #[arg(long, value_name = "N")]
    max_services: Option<u32>,
    /// Real servers the balancer holds, counting a server once per service it is in (default
    /// 4096). Each costs about 40 bytes of kernel memory plus 72 per CPU.
    #[arg(long, value_name = "N")]
    max_reals: Option<u32>,
    /// Seconds between two counter reports in the log; 0 = none.
    #[arg(long, default_value_t = 60)]
    report_every: u64,
    /// Where to serve Prometheus metrics (/metrics) and the status page (/) over HTTP, read-only
    /// and without authentication: keep it on loopback or a management network. `off` = none.
    #[arg(long, default_value = metrics::DEFAULT_LISTEN, value_parser = parse_listen)]
    metrics_listen: Listen,
}

/// `--detach-delay`, `--detach-wait-vip`: seconds, from 0 to an hour.
fn parse_delay(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.0..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "\"{text}\" is not a number of seconds from 0 to 3600"
        )),
    }
}

/// `--metrics-listen`: an address, or off.
#[derive(Clone, Copy, Debug)]
enum Listen {
    Off,
    At(SocketAddr),
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen::Off);
    }
    text.parse()
        .map(Listen::At)
        .map_err(|_| format!("\"{text}\" is neither ADDRESS:PORT nor off"))
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// On a real server: strip the outer header of IPIP / IP6IP6 packets for this host's tunnel
    /// endpoints (xlb's own decapsulation, for kernels without the ipip module). The program stays
    /// attached after the command exits; `--remove` detaches it.
    Decap {
        /// The interface the tunneled packets arrive on.
        #[arg(long)]
        iface: String,
        /// Detach from the interface instead.
        #[arg(long)]
        remove: bool,
        /// A tunnel endpoint address (repeat for several); default: the interface's addresses.
        #[arg(long = "addr")]
        addrs: Vec<IpAddr>,
        /// XDP attachment mode.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        xdp_mode: Mode,
        /// Where its program, maps and links are pinned (on bpffs).
        #[arg(
            long,
            env = "XLB_DECAP_PIN_DIR",
            default_value = "/sys/fs/bpf/xlb-decap"
        )]
        pin_dir: PathBuf,
    },
    /// Take the balancer off interfaces after xlbd was killed (kill -9, a crash): removes the
    /// pinned links, which detaches the program (`ip link set dev IF xdp off` cannot replace a
    /// pinned bpf_link), and turns back on the offloads xlbd turned off for generic mode. The
    /// program's and maps' pins stay, so that an xlbd started later adopts
    /// them with the connection table, unless --all is given. Refused while an xlbd answers on
    /// the control socket (stop it with --detach-on-exit instead), unless --force.
    Detach {
        /// The interface to take the balancer off (repeat for several); default: every
        /// interface with a pinned link.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Where the program, its maps and links are pinned (on bpffs).
        #[arg(long, env = "XLB_PIN_DIR", default_value = "/sys/fs/bpf/xlb")]
        pin_dir: PathBuf,
        /// The control socket of the xlbd that would be running.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Also remove the program's and maps' pins and the state file, as --detach-on-exit
        /// does: the connection table is forgotten (only with no --iface).
        #[arg(long, conflicts_with = "ifaces")]
        all: bool,
        /// The state file removed with --all; the record of the offloads xlbd turned off for
        /// generic mode, restored here, lies beside it (STATE.offloads.json).
        #[arg(long, default_value = "/run/xlb/state.json")]
        state_file: PathBuf,
        /// Detach even though an xlbd answers on the control socket (a hung one): it keeps
        /// running without its data path until it is stopped.
        #[arg(long)]
        force: bool,
    },
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
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Sub::Decap {
        iface,
        remove,
        addrs,
        xdp_mode,
        pin_dir,
    }) = args.command
    {
        return decap(&iface, remove, addrs, xdp_mode, &pin_dir);
    }
    if let Some(Sub::Detach {
        ifaces,
        pin_dir,
        socket,
        all,
        state_file,
        force,
    }) = args.command
    {
        return detach(&ifaces, &pin_dir, &socket, all, &state_file, force);
    }
    if args.check_config {
        std::process::exit(check_config(&args.config));
    }

    // A bad configuration is refused before anything is touched (the bpffs below included); the
    // daemon reads it again as it starts.
    config::load(&args.config)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("in the configuration")?;
    // Bound before the data path is touched, so that a busy port stops the daemon with nothing
    // attached or pinned.
    let metrics = match args.metrics_listen {
        Listen::Off => None,
        Listen::At(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("listening for metrics on {addr} (--metrics-listen ADDR:PORT or off)")
        })?),
    };
    ensure_bpffs(&args.pin_dir)?;
    let control = control::bind(&args.socket)
        .with_context(|| format!("binding the control socket {}", args.socket.display()))?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    let config = daemon::Config {
        ifaces: args.ifaces,
        attach_mode: args.xdp_mode.into(),
        config_file: args.config,
        pin_dir: args.pin_dir,
        state_file: args.state_file,
        detach_on_exit: args.detach_on_exit,
        detach_delay: Duration::from_secs_f64(args.detach_delay),
        detach_wait_vip: Duration::from_secs_f64(args.detach_wait_vip),
        debug_events: args.debug_events,
        tunnel_sources: args.tunnel_sources,
        max_concurrent_checks: args.max_concurrent_checks,
        max_services: args.max_services,
        max_reals: args.max_reals,
        report_every: (args.report_every > 0).then(|| Duration::from_secs(args.report_every)),
        signals: true,
    };
    let listeners = daemon::Listeners {
        control,
        control_path: Some(args.socket),
        metrics,
    };
    daemon::run(config, listeners, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
}

fn on_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mounts bpffs on /sys/fs/bpf when the pin directory is under it and it is not mounted;
/// refuses a pin directory elsewhere that is not on a bpffs, and one whose pins would vanish
/// with this process's mount namespace (`ip netns exec`).
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    bpffs::refuse_transient(pin_dir, pin_dir.starts_with(root) && !on_bpffs(root))?;
    if !pin_dir.starts_with(root) {
        let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(pin_dir);
        if !on_bpffs(existing) {
            anyhow::bail!(
                "the pin directory {} is not on a bpffs (mount -t bpf bpf DIR)",
                pin_dir.display()
            );
        }
        return Ok(());
    }
    if on_bpffs(root) {
        return Ok(());
    }
    tracing::info!("mounting bpffs on /sys/fs/bpf");
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting bpffs on /sys/fs/bpf")?;
    Ok(())
}

/// `--check-config`: the exit code, after printing the summary or every mistake.
fn check_config(path: &Path) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return 1;
        }
    };
    match config::parse(path, &text) {
        Ok(state) => {
            let reals: usize = state.services.iter().map(|s| s.reals.len()).sum();
            println!(
                "{}: valid: {} service{}, {reals} real server{}",
                path.display(),
                state.services.len(),
                if state.services.len() == 1 { "" } else { "s" },
                if reals == 1 { "" } else { "s" },
            );
            0
        }
        Err(refused) => {
            for mistake in &refused.mistakes {
                eprintln!("{mistake}");
            }
            1
        }
    }
}

fn decap(iface: &str, remove: bool, addrs: Vec<IpAddr>, mode: Mode, pin_dir: &Path) -> Result<()> {
    ensure_bpffs(pin_dir)?;
    if remove {
        decap::remove(iface, pin_dir).with_context(|| format!("detaching from {iface}"))?;
        tracing::info!(iface, "decapsulator removed");
        return Ok(());
    }
    let addrs = if addrs.is_empty() {
        decap::interface_addresses(iface)?
    } else {
        addrs
    };
    if addrs.is_empty() {
        anyhow::bail!("{iface} has no address to be a tunnel endpoint for: give --addr");
    }
    let report = AttachMode::from(mode)
        .attach(iface, |mode| decap::attach(iface, mode, &addrs, pin_dir))
        .with_context(|| format!("attaching the decapsulator to {iface}"))?;
    tracing::info!(
        iface,
        endpoints = ?report.endpoints,
        replaced = report.replaced,
        "decapsulator attached"
    );
    Ok(())
}

/// `xlbd detach`: removes the pinned links (and with --all every pin and the state file), and
/// says what it did on stdout.
fn detach(
    ifaces: &[String],
    pin_dir: &Path,
    socket: &Path,
    all: bool,
    state_file: &Path,
    force: bool,
) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        if !force {
            anyhow::bail!(
                "an xlbd answers on {}: stop it with --detach-on-exit (or SIGTERM, then detach), \
                 or give --force to take its data path away while it runs",
                socket.display()
            );
        }
        println!(
            "an xlbd answers on {}: detaching anyway (--force)",
            socket.display()
        );
    }
    let removed = links::remove_pinned(pin_dir, ifaces)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("detaching the balancer pinned in {}", pin_dir.display()))?;
    for iface in ifaces {
        if !removed.iter().any(|r| &r.iface == iface) {
            println!(
                "{iface}: no pinned link {}: nothing to detach",
                pin_dir.join(format!("link_{iface}")).display()
            );
        }
    }
    if ifaces.is_empty() && removed.is_empty() {
        println!("no pinned link in {}: nothing to detach", pin_dir.display());
    }
    let mut held = false;
    for r in &removed {
        if r.still_held {
            held = true;
            println!(
                "{}: removed the pin {} (link {}, program {}), but another process still holds \
                 the link: the program stays attached until it closes it",
                r.iface,
                r.path.display(),
                r.link_id,
                r.program_id
            );
        } else {
            println!(
                "{}: removed the pin {} (link {}, program {}): the balancer is off {}",
                r.iface,
                r.path.display(),
                r.link_id,
                r.program_id,
                r.iface
            );
        }
    }
    // What xlbd turned off for generic mode comes back on the interfaces that are off the
    // balancer now.
    let detached: Vec<String> = removed
        .iter()
        .filter(|r| !r.still_held)
        .map(|r| r.iface.clone())
        .collect();
    let record = offloads::record_path(state_file);
    let everything = ifaces.is_empty() && !held;
    let restored = offloads::after_detach(&record, (!everything).then_some(detached.as_slice()))
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("restoring the offloads xlbd turned off for generic mode")?;
    for r in &restored {
        println!(
            "{}: turned {} on again, as it was before xlbd attached in generic mode",
            r.name,
            r.features.join(", ")
        );
    }
    if all {
        Dataplane::remove_pins(pin_dir)
            .with_context(|| format!("removing the pins in {}", pin_dir.display()))?;
        match std::fs::remove_file(state_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", state_file.display()))
            }
            _ => {}
        }
        println!(
            "removed the program's and maps' pins in {} and the state file {}: the connection \
             table is forgotten",
            pin_dir.display(),
            state_file.display()
        );
    }
    if held {
        anyhow::bail!("a link is still held by another process: see above");
    }
    Ok(())
}

impl From<Mode> for AttachMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Native => AttachMode::Native,
            Mode::Generic => AttachMode::Generic,
            Mode::Auto => AttachMode::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["xlbd", "--iface", "eth0"].iter().chain(extra))
    }

    #[test]
    fn the_detach_waits_take_seconds_from_0_to_an_hour_with_detach_on_exit_only() {
        let args = parse(&["--detach-on-exit"]).expect("the defaults");
        assert_eq!(args.detach_delay, 0.0);
        assert_eq!(
            args.detach_wait_vip,
            daemon::handover::DEFAULT_BOUND.as_secs_f64()
        );
        let args = parse(&[
            "--detach-on-exit",
            "--detach-delay",
            "2",
            "--detach-wait-vip",
            "0.5",
        ])
        .expect("both");
        assert_eq!((args.detach_delay, args.detach_wait_vip), (2.0, 0.5));
        assert_eq!(
            parse(&["--detach-on-exit", "--detach-wait-vip", "0"])
                .expect("0 turns the wait off")
                .detach_wait_vip,
            0.0
        );
        for bad in ["7200", "nan", "inf", "soon", ""] {
            let error = parse(&["--detach-on-exit", "--detach-wait-vip", bad])
                .expect_err(bad)
                .to_string();
            assert!(
                error.contains(&format!(
                    "\"{bad}\" is not a number of seconds from 0 to 3600"
                )),
                "{error}"
            );
        }
        let error = parse(&["--detach-wait-vip", "2"])
            .expect_err("without --detach-on-exit")
            .to_string();
        assert!(error.contains("--detach-on-exit"), "{error}");
    }
}
