//! xlbd, the xlb daemon: loads the XDP balancer, attaches it to the given interfaces through
//! pinned links, installs the configured services, and serves xlbadm on its control socket until
//! SIGINT or SIGTERM.
//!
//! Restarts do not interrupt traffic: the program, its maps and its links are pinned under the pin
//! directory, and a daemon that finds them (with its state file) adopts them: same maps, same
//! connection table, and the program in each link is replaced atomically by its own. By default
//! the balancer keeps forwarding after the daemon exits; `--detach-on-exit` removes everything.
//!
//! SIGUSR1 switches the data path's debug events on, SIGUSR2 off; they are logged through
//! `tracing`.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    bpffs, config,
    control::{self, Shared, DEFAULT_SOCKET},
    dataplane::{Dataplane, LoadOptions, PinnedMaps},
    decap,
    health::engine::{Engine, DEFAULT_MAX_CONCURRENT_CHECKS},
    metrics,
    runtime::{error_chain, RateEstimator, Runtime},
    state::DesiredState,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};

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
    /// The configuration: virtual services and their real servers (TOML), used when there is no
    /// running state to adopt.
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
    /// On exit, detach from the interfaces and remove every pin (default: keep forwarding).
    #[arg(long)]
    detach_on_exit: bool,
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
        .map_err(|_| format!("{text:?} is neither ADDRESS:PORT nor off"))
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
    if args.check_config {
        std::process::exit(check_config(&args.config));
    }

    // A bad configuration is refused before anything is touched.
    let config = load_config(&args.config)?;
    // Bound before the data path is touched, so that a busy port stops the daemon with nothing
    // attached or pinned.
    let metrics_listener = match args.metrics_listen {
        Listen::Off => None,
        Listen::At(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("listening for metrics on {addr} (--metrics-listen ADDR:PORT or off)")
        })?),
    };
    ensure_bpffs(&args.pin_dir)?;
    let mut saved = Runtime::read_state_file(&args.state_file);
    // The rules of a balancer whose maps cannot be adopted, to install on fresh ones.
    let mut reinstall = None;
    match Dataplane::pinned_maps(&args.pin_dir).context("inspecting the pinned maps")? {
        PinnedMaps::Current(_) if saved.is_none() => {
            tracing::warn!(
                pin_dir = %args.pin_dir.display(),
                "pinned maps without a state file: starting from empty maps"
            );
            Dataplane::unpin(&args.pin_dir).context("removing the old map pins")?;
        }
        PinnedMaps::Older => {
            tracing::warn!(
                pin_dir = %args.pin_dir.display(),
                "the pinned maps have an older xlbd's layout: starting from empty maps with the \
                 saved rules (the connection table is forgotten)"
            );
            Dataplane::unpin(&args.pin_dir).context("removing the old map pins")?;
            reinstall = saved.take().map(|s| s.desired);
        }
        PinnedMaps::Current(_) | PinnedMaps::None => {}
    }
    let pinned = args.pin_dir.join(lb_common::maps::SERVICES).exists();
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(args.pin_dir.clone()),
        max_services: args.max_services,
        max_reals: args.max_reals,
        ..LoadOptions::default()
    })
    .context("loading the data path")?;
    let capacity = dp.capacity();
    tracing::info!(
        services = capacity.services,
        reals = capacity.reals,
        maglev_mib = capacity.maglev_bytes() >> 20,
        "data path sized"
    );
    let mut logger = aya_log::EbpfLogger::init(dp.ebpf_mut())
        .context("starting the reader of the data path's debug events")?;
    for iface in &args.ifaces {
        attach(&mut dp, iface, args.xdp_mode, &args.pin_dir)?;
    }
    dp.set_debug_events(args.debug_events)
        .context("setting the debug events")?;
    let v4 = args.tunnel_sources.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = args.tunnel_sources.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    dp.set_tunnel_source(v4, v6)
        .context("setting the tunnel source")?;

    let runtime = match saved.filter(|_| pinned) {
        Some(saved) => {
            tracing::info!(
                services = saved.desired.services.len(),
                "adopted the running state and its connection table"
            );
            Runtime::adopt(dp, saved, Some(args.state_file.clone()))
        }
        None => {
            let mut runtime = Runtime::new(dp, Some(args.state_file.clone()));
            match reinstall {
                Some(rules) => runtime
                    .change_to(rules)
                    .map_err(|e| anyhow::anyhow!(error_chain(&e)))
                    .context("installing the saved services")?,
                None => runtime
                    .change_to(config)
                    .map_err(|e| anyhow::anyhow!(error_chain(&e)))
                    .context("installing the configured services")?,
            }
            runtime
        }
    };
    let (engine, mut health_events) = Engine::new(
        tokio::runtime::Handle::current(),
        args.max_concurrent_checks,
    );
    let runtime = runtime
        .with_health(engine)
        .context("starting the health checks")?;
    let shared = Arc::new(Mutex::new(Shared {
        runtime,
        rates: RateEstimator::default(),
    }));
    let listener = control::bind(&args.socket)
        .with_context(|| format!("binding the control socket {}", args.socket.display()))?;
    let server = tokio::spawn(control::serve(listener, shared.clone()));
    let metrics_server = metrics_listener.map(|listener| {
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "serving metrics (/metrics) and the status page (/)"),
            Err(e) => tracing::warn!(error = %e, "the metrics listener has no address"),
        }
        let conntrack = args.pin_dir.join(lb_common::maps::CONNTRACK);
        tokio::spawn(metrics::serve(
            listener,
            shared.clone(),
            metrics::ConnectionTable::Pinned(conntrack),
        ))
    });

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut logs = tokio::time::interval(Duration::from_millis(200));
    let mut rates = tokio::time::interval(Duration::from_secs(2));
    // Slow starts ramp weights up: bring the tables along every second (no step when nothing
    // changed).
    let mut ramps = tokio::time::interval(Duration::from_secs(1));
    let mut report = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    tracing::info!(ifaces = ?args.ifaces, socket = %args.socket.display(), "xlbd is balancing");
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sigusr1.recv() => debug_events(&shared, true).await,
            _ = sigusr2.recv() => debug_events(&shared, false).await,
            _ = logs.tick() => logger.flush(),
            Some(_event) = health_events.recv() => refresh(&shared).await,
            _ = ramps.tick() => refresh(&shared).await,
            _ = rates.tick() => {
                let mut guard = shared.lock().await;
                let Shared { runtime, rates } = &mut *guard;
                runtime.sample(rates);
            }
            _ = report.tick(), if args.report_every > 0 => {
                let mut guard = shared.lock().await;
                match guard.runtime.dataplane().global_counters() {
                    Ok(counters) => {
                        let nonzero: Vec<String> = counters
                            .iter()
                            .filter(|(_, v)| *v > 0)
                            .map(|(s, v)| format!("{}={v}", s.name()))
                            .collect();
                        tracing::info!(counters = %nonzero.join(" "), "data path");
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the counters"),
                }
            }
        }
    }
    server.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    if args.detach_on_exit {
        tracing::info!("detaching and removing every pin");
        Dataplane::remove_pins(&args.pin_dir).context("removing the pins")?;
        let _ = std::fs::remove_file(&args.state_file);
    } else {
        tracing::info!("exiting; the balancer keeps forwarding (pinned)");
    }
    Ok(())
}

/// Brings the data path in line with the health checks.
async fn refresh(shared: &Mutex<Shared>) {
    if let Err(e) = shared.lock().await.runtime.refresh() {
        tracing::error!(error = %e, "applying health-check results to the data path");
    }
}

async fn debug_events(shared: &Mutex<Shared>, on: bool) {
    match shared.lock().await.runtime.dataplane().set_debug_events(on) {
        Ok(()) => tracing::info!(on, "data-path debug events"),
        Err(e) => tracing::warn!(error = %e, "switching the debug events"),
    }
}

fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
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
    let c_root = std::ffi::CString::new("/sys/fs/bpf").context("path")?;
    tracing::info!("mounting bpffs on /sys/fs/bpf");
    let fstype = std::ffi::CString::new("bpf").context("fstype")?;
    // SAFETY: mount with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_root.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
    }
    Ok(())
}

fn load_config(path: &Path) -> Result<DesiredState> {
    if !path.exists() {
        tracing::warn!(config = %path.display(), "no configuration: starting with no service");
        return Ok(DesiredState::default());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    config::parse(path, &text).with_context(|| format!("in the configuration {}", path.display()))
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
    let attach = |mode| decap::attach(iface, mode, &addrs, pin_dir);
    let report = match mode {
        Mode::Native => attach(XdpMode::Driver),
        Mode::Generic => attach(XdpMode::Skb),
        Mode::Auto => attach(XdpMode::Driver).or_else(|e| {
            tracing::warn!(iface, error = %e, "native XDP refused: falling back to generic mode");
            attach(XdpMode::Skb)
        }),
    }
    .with_context(|| format!("attaching the decapsulator to {iface}"))?;
    tracing::info!(
        iface,
        endpoints = ?report.endpoints,
        replaced = report.replaced,
        "decapsulator attached"
    );
    Ok(())
}

fn attach(dp: &mut Dataplane, iface: &str, mode: Mode, pin_dir: &Path) -> Result<()> {
    match mode {
        Mode::Native => dp.attach_pinned(iface, XdpMode::Driver, pin_dir),
        Mode::Generic => dp.attach_pinned(iface, XdpMode::Skb, pin_dir),
        Mode::Auto => match dp.attach_pinned(iface, XdpMode::Driver, pin_dir) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(iface, error = %e, "native XDP refused: falling back to generic mode");
                dp.attach_pinned(iface, XdpMode::Skb, pin_dir)
            }
        },
    }
    .with_context(|| format!("attaching to {iface}"))?;
    tracing::info!(iface, ?mode, "attached");
    Ok(())
}
