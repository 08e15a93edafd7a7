//! The daemon as a library: [`run`] takes the daemon's settings, the listeners it serves on and a
//! future that says when to stop, so that `xlbd` only parses its arguments and binds, and a test
//! can run a daemon inside its own process.
//!
//! What [`run`] does, in order: reads the configuration file (a refused file stops it before
//! anything is touched); loads the data path or adopts the pinned one (same maps, same
//! connection table) and attaches it (in generic mode, with the offloads that would hand it
//! merged super-packets turned off: `offloads`); brings the running state to the configuration file in one
//! transaction ([`start_state`] says which state wins when); starts the health checks; serves the
//! control socket and the metrics; and, until `shutdown` completes, reloads the configuration
//! on SIGHUP, switches the debug events on SIGUSR1/SIGUSR2, folds health results and slow starts
//! into the tables, samples rates and reports counters. On exit with `detach_on_exit` it keeps
//! forwarding while a VIP of its services is still a local address ([`handover`]), then detaches.

pub mod handover;

use std::{
    future::Future,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::programs::XdpMode;
use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{signal, Signal, SignalKind},
    sync::{mpsc::UnboundedReceiver, Mutex},
};

use crate::{
    config::{self, LoadError},
    control::{self, Request, Response, Shared},
    datapath::DataPath,
    dataplane::{ConnectionTables, Dataplane, DataplaneError, LoadOptions},
    expiry,
    health::engine::{Engine, HealthEvent, DEFAULT_MAX_CONCURRENT_CHECKS},
    layout::{self, LayoutError, Pinned, Versions},
    metrics,
    neighbour::{NeighbourError, Netlink},
    next_hops::NextHops,
    offloads,
    runtime::{monotonic_ns, sweep_tables, RateEstimator, Runtime, RuntimeError, Saved},
    state::DesiredState,
    upgrade::{OldTable, UpgradeError},
};

/// How the balancer is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver.
    Native,
    /// In the stack (every driver has it).
    Generic,
    /// Native, falling back to generic with a log line.
    #[default]
    Auto,
}

impl AttachMode {
    /// Runs `attach` with the XDP mode(s) this stands for: native, generic, or native then generic
    /// when native is refused.
    pub fn attach<T, E: std::error::Error + 'static>(
        self,
        iface: &str,
        mut attach: impl FnMut(XdpMode) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            AttachMode::Native => attach(XdpMode::Driver),
            AttachMode::Generic => attach(XdpMode::Skb),
            AttachMode::Auto => attach(XdpMode::Driver).or_else(|e| {
                tracing::warn!(
                    iface,
                    error = %crate::errors::error_chain(&e),
                    "native XDP refused: falling back to generic mode"
                );
                attach(XdpMode::Skb)
            }),
        }
    }
}

/// The daemon's settings (xlbd's options).
#[derive(Clone, Debug)]
pub struct Config {
    /// The interfaces to balance on.
    pub ifaces: Vec<String>,
    /// How to attach to them.
    pub attach_mode: AttachMode,
    /// The configuration file: read at start and on every reload.
    pub config_file: PathBuf,
    /// Where the program, its maps and links are pinned (on a bpffs that is mounted).
    pub pin_dir: PathBuf,
    /// Where the desired state and its data-path ids are saved after every change.
    pub state_file: PathBuf,
    /// On exit, detach from the interfaces and remove every pin.
    pub detach_on_exit: bool,
    /// With `detach_on_exit`: how long the daemon waits, its control socket and metrics closed,
    /// before it detaches, so that what holds the VIP for it (keepalived's track script, a BGP
    /// speaker's health hook) hands it over while the data path still forwards.
    pub detach_delay: Duration,
    /// With `detach_on_exit`, after `detach_delay`: how long the daemon waits, at most, while a
    /// VIP of its services is an address of its network namespace (a keepalived master's), for
    /// it to move to another balancer before the data path goes ([`handover`]); zero: no wait.
    pub detach_wait_vip: Duration,
    /// Start with the data path's debug events on.
    pub debug_events: bool,
    /// Sources of tunneled packets (one IPv4 and/or one IPv6); none: the kernel's choice.
    pub tunnel_sources: Vec<IpAddr>,
    /// At most this many health checks at once.
    pub max_concurrent_checks: usize,
    /// Virtual services the balancer holds (`None`: as pinned, else the default).
    pub max_services: Option<u32>,
    /// Real servers the balancer holds (`None`: as pinned, else the default).
    pub max_reals: Option<u32>,
    /// How often the counters are logged; `None`: never.
    pub report_every: Option<Duration>,
    /// Whether the daemon answers SIGHUP (reload), SIGUSR1 and SIGUSR2 (debug events on, off).
    /// A daemon inside a test leaves the process's signals alone.
    pub signals: bool,
}

impl Config {
    /// The settings of a daemon on `ifaces` with xlbd's defaults elsewhere.
    pub fn new(ifaces: Vec<String>, config_file: PathBuf) -> Self {
        Self {
            ifaces,
            attach_mode: AttachMode::Auto,
            config_file,
            pin_dir: PathBuf::from("/sys/fs/bpf/xlb"),
            state_file: PathBuf::from("/run/xlb/state.json"),
            detach_on_exit: false,
            detach_delay: Duration::ZERO,
            detach_wait_vip: handover::DEFAULT_BOUND,
            debug_events: false,
            tunnel_sources: Vec::new(),
            max_concurrent_checks: DEFAULT_MAX_CONCURRENT_CHECKS,
            max_services: None,
            max_reals: None,
            report_every: Some(Duration::from_secs(60)),
            signals: true,
        }
    }
}

/// What the daemon serves on, bound by the caller (so that a busy address stops it before the
/// data path is touched).
#[derive(Debug)]
pub struct Listeners {
    /// The control socket (xlbadm's requests).
    pub control: UnixListener,
    /// The control socket's path, removed when the daemon stops.
    pub control_path: Option<PathBuf>,
    /// The metrics and status page, if served.
    pub metrics: Option<TcpListener>,
}

/// Why the daemon could not start (or stop cleanly).
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The configuration file is unreadable or refused; nothing was touched.
    #[error("in the configuration")]
    Config(#[source] LoadError),
    /// The pinned maps could not be inspected or removed.
    #[error("{what} in {}", .pin_dir.display())]
    Pins {
        /// What was being done.
        what: &'static str,
        /// The pin directory.
        pin_dir: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A step of setting up the data path failed.
    #[error("{what}")]
    Dataplane {
        /// The step ("loading the data path", "attaching to eth0", ...).
        what: String,
        /// Why.
        #[source]
        source: Box<DataplaneError>,
    },
    /// The pinned maps' layout could not be told or recorded.
    #[error("the layout of the pinned maps")]
    Layout(#[source] LayoutError),
    /// The pinned maps have a connection table this xlbd cannot read: refused, touching nothing.
    #[error(
        "the running balancer's maps in {} have another layout than this xlbd's ({why}): it \
         cannot carry their connections over, and leaves the running balancer as it is. To \
         start it anyway, dropping every established connection: remove the pins \
         (rm -r {}; the balancer stops until xlbd has started)",
        .pin_dir.display(),
        .pin_dir.display()
    )]
    Incompatible {
        /// The pin directory.
        pin_dir: PathBuf,
        /// What differs.
        why: String,
    },
    /// The connections could not be carried over to the new maps.
    #[error("carrying the connections over to the new maps")]
    Upgrade(#[source] UpgradeError),
    /// The reader of the data path's debug events could not start.
    #[error("starting the reader of the data path's debug events")]
    Logger(#[source] aya_log::Error),
    /// The services could not be installed, or the health checks started.
    #[error("{what}")]
    Runtime {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The thread that keeps the real servers' next hops resolved could not start.
    #[error("starting the neighbour thread (it keeps the real servers' next hops resolved)")]
    NextHops(#[source] NeighbourError),
    /// A signal handler could not be installed.
    #[error("handling {signal}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn data_path(what: impl Into<String>) -> impl FnOnce(DataplaneError) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Dataplane {
        what,
        source: Box::new(source),
    }
}

/// Runs the daemon until `shutdown` completes: see the module's documentation. The control
/// socket's path is removed when it returns, whether it stopped or failed to start.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let control_path = listeners.control_path.clone();
    let result = start_and_serve(config, listeners, shutdown).await;
    if let Some(path) = control_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn start_and_serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let signals = handle_signals(&config)?;
    // A bad configuration is refused before anything is touched.
    let file = config::load(&config.config_file).map_err(DaemonError::Config)?;
    if file.is_none() {
        tracing::warn!(
            config = %config.config_file.display(),
            "no configuration file: starting with the running state if there is one to adopt, \
             else with no service"
        );
    }
    let (mut dp, adopted) = load_data_path(&config)?;
    let logger = aya_log::EbpfLogger::init(dp.ebpf_mut()).map_err(DaemonError::Logger)?;
    dp.set_debug_events(config.debug_events)
        .map_err(data_path("setting the debug events"))?;
    let v4 = config.tunnel_sources.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = config.tunnel_sources.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    dp.set_tunnel_source(v4, v6)
        .map_err(data_path("setting the tunnel source"))?;

    // The route socket is opened here, in the daemon's network namespace.
    let next_hops = Netlink::open()
        .and_then(NextHops::start)
        .map_err(DaemonError::NextHops)?;
    let state_file = Some(config.state_file.clone());
    let (mut runtime, old_table) = match adopted {
        Adopted::Maps(saved) => {
            tracing::info!(
                services = saved.desired.services.len(),
                "adopted the running state and its connection table"
            );
            (
                Runtime::adopt(dp, saved, state_file).with_next_hops(next_hops),
                None,
            )
        }
        Adopted::NewMaps { saved, old_table } => {
            // The new maps get the rules and the connections before the program runs on them.
            let mut runtime = Runtime::new(dp, state_file).with_next_hops(next_hops);
            runtime
                .change_to(saved.desired)
                .map_err(|source| DaemonError::Runtime {
                    what: "installing the saved services in the new maps",
                    source: Box::new(source),
                })?;
            if let Some(old) = &old_table {
                let carried = old
                    .carry(&mut runtime, false)
                    .map_err(DaemonError::Upgrade)?;
                tracing::info!(
                    copied = carried.copied,
                    left_out = carried.left_out,
                    "connections carried over to the new maps"
                );
            }
            (runtime, old_table)
        }
        Adopted::Nothing => (Runtime::new(dp, state_file).with_next_hops(next_hops), None),
    };
    let offloads_record = offloads::record_path(&config.state_file);
    for iface in &config.ifaces {
        // Read before the program comes: the kernel turns LRO and hardware GRO off for a generic
        // program, and xlbd restores what was on before.
        let before = offloads::observe(iface);
        let dp = runtime.dataplane();
        config
            .attach_mode
            .attach(iface, |mode| dp.attach_pinned(iface, mode, &config.pin_dir))
            .map_err(data_path(format!("attaching to {iface}")))?;
        tracing::info!(iface, mode = ?config.attach_mode, "attached");
        if let Err(e) = before.and_then(|before| offloads::after_attach(&offloads_record, &before))
        {
            tracing::error!(
                iface,
                error = %crate::errors::error_chain(&e),
                "the offloads of the interface's receive path are left as they are: in generic \
                 mode, merged super-packets may reach the balancer (tunneled uploads stall)"
            );
        }
    }
    if let Some(old) = old_table {
        // What the old program added until its links were handed over.
        let carried = old
            .carry(&mut runtime, true)
            .map_err(DaemonError::Upgrade)?;
        tracing::info!(
            copied = carried.copied,
            "connections the old program made meanwhile carried over; upgrade done"
        );
    }
    layout::write(&config.pin_dir, Versions::CURRENT).map_err(DaemonError::Layout)?;
    // The sweep walks the whole connection table every second: through handles of its own on
    // the pins, off the state lock.
    let filter = runtime.datapath().connection_filter();
    let pinned_tables = ConnectionTables::open_pinned(&config.pin_dir)
        .map(|tables| tables.with_filter(filter))
        .inspect_err(|e| {
            tracing::warn!(
                error = %crate::errors::error_chain(e),
                "the sweep of the connection table runs under the state lock"
            );
        })
        .ok();
    // Its counts are the metrics' too: one walk of the table a second, not two.
    let (swept_counts, counts) = tokio::sync::watch::channel(Arc::default());
    let (shared, health_events) = start(runtime, file, &config)?;
    let metrics = listeners.metrics.map(|listener| {
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "serving metrics (/metrics) and the status page (/)"),
            Err(e) => tracing::warn!(error = %e, "the metrics listener has no address"),
        }
        let table = if pinned_tables.is_some() {
            metrics::ConnectionTable::Swept(counts)
        } else {
            metrics::ConnectionTable::Pinned(config.pin_dir.join(lb_common::maps::CONNTRACK))
        };
        tokio::spawn(metrics::serve(listener, shared.clone(), table))
    });
    // The services as they are when the daemon stops: their VIPs are waited for before it
    // detaches.
    let services = shared.clone();
    serve(
        shared,
        &config,
        listeners.control,
        metrics,
        Some(logger),
        Inputs {
            health_events,
            signals,
            pinned_tables: pinned_tables.map(|tables| (tables, swept_counts)),
        },
        shutdown,
    )
    .await?;
    if config.detach_on_exit {
        let vips: Vec<IpAddr> = services
            .lock()
            .await
            .runtime
            .desired()
            .services
            .iter()
            .map(|s| s.addr.addr)
            .collect();
        drop(services);
        before_detaching(&config, vips).await?;
        tracing::info!("detaching and removing every pin");
        Dataplane::remove_pins(&config.pin_dir).map_err(|source| DaemonError::Pins {
            what: "removing the pins",
            pin_dir: config.pin_dir.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&config.state_file);
        if let Err(e) = offloads::after_detach(&offloads_record, Some(&config.ifaces)) {
            tracing::error!(
                error = %crate::errors::error_chain(&e),
                "the offloads xlbd turned off for generic mode are not restored"
            );
        }
    } else {
        tracing::info!("exiting; the balancer keeps forwarding (pinned)");
    }
    Ok(())
}

/// The waits of a stopping daemon before it detaches, its metrics and control socket closed:
/// `detach_delay`, then as long as a VIP of `vips` is a local address ([`handover`], at most
/// `detach_wait_vip`). A second SIGINT or SIGTERM (when the daemon handles signals) ends them.
async fn before_detaching(config: &Config, vips: Vec<IpAddr>) -> Result<(), DaemonError> {
    // Made now, they hear only the signals that come from now on, not the one that stopped
    // the daemon.
    let mut again = if config.signals {
        let on = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| DaemonError::Signal {
                signal: name,
                source,
            })
        };
        Some((
            on(SignalKind::interrupt(), "SIGINT")?,
            on(SignalKind::terminate(), "SIGTERM")?,
        ))
    } else {
        None
    };
    let hurried = || {
        tracing::info!("a second SIGINT or SIGTERM: detaching at once");
    };
    if !config.detach_delay.is_zero() {
        tracing::info!(
            delay = ?config.detach_delay,
            "metrics and control socket closed; the balancer forwards until the delay is \
             over, for the VIP to move to another balancer"
        );
        tokio::select! {
            () = tokio::time::sleep(config.detach_delay) => {}
            () = stop_signal(&mut again) => {
                hurried();
                return Ok(());
            }
        }
    }
    let bound = config.detach_wait_vip;
    let hurry = Arc::new(AtomicBool::new(false));
    // Rtnetlink reads block: off the runtime's threads.
    let mut wait = tokio::task::spawn_blocking({
        let hurry = hurry.clone();
        move || handover::wait(vips, bound, &hurry)
    });
    let waited = tokio::select! {
        waited = &mut wait => waited,
        () = stop_signal(&mut again) => {
            hurried();
            hurry.store(true, Ordering::Relaxed);
            wait.await
        }
    };
    if let Err(e) = waited {
        tracing::error!(error = %e, "the wait for the VIPs to leave failed: detaching");
    }
    Ok(())
}

/// The next SIGINT or SIGTERM of `signals`; never without them.
async fn stop_signal(signals: &mut Option<(Signal, Signal)>) {
    match signals {
        Some((int, term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        None => std::future::pending().await,
    }
}

/// Runs a daemon over `runtime`, a data path that is already loaded and set up (fresh, or
/// adopted with its state), until `shutdown` completes: the configuration file applied as at
/// start, the health checks, the control socket on `control`, reloads. No metrics, interfaces or
/// pins: those are [`run`]'s, over the kernel's maps; this is the daemon a test runs over
/// [`crate::datapath::fake::FakeDataPath`]. Returns the daemon's state as it stopped.
pub async fn run_over<D: DataPath + 'static>(
    runtime: Runtime<D>,
    config: &Config,
    control: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<Mutex<Shared<D>>>, DaemonError> {
    let signals = handle_signals(config)?;
    let file = config::load(&config.config_file).map_err(DaemonError::Config)?;
    let (shared, health_events) = start(runtime, file, config)?;
    serve(
        shared.clone(),
        config,
        control,
        None,
        None,
        Inputs {
            health_events,
            signals,
            pinned_tables: None,
        },
        shutdown,
    )
    .await?;
    Ok(shared)
}

/// A started daemon's state, and the events of its health checks.
type Started<D> = (Arc<Mutex<Shared<D>>>, UnboundedReceiver<HealthEvent>);

/// Starts the health checks of `runtime` and brings it to the state [`start_state`] says.
fn start<D: DataPath>(
    runtime: Runtime<D>,
    file: Option<DesiredState>,
    config: &Config,
) -> Result<Started<D>, DaemonError> {
    let (engine, health_events) = Engine::new(
        tokio::runtime::Handle::current(),
        config.max_concurrent_checks,
    );
    let runtime = runtime
        .with_health(engine)
        .map_err(|source| DaemonError::Runtime {
            what: "starting the health checks",
            source: Box::new(source),
        })?;
    let mut shared = Shared {
        runtime,
        rates: RateEstimator::default(),
        config: config.config_file.clone(),
    };
    // With the health engine in place, so that the checks of the servers that stay go on and
    // those of new ones start. Even an unchanged state is saved, so that the next start adopts.
    let (what, state) = start_state(shared.runtime.desired(), file);
    let summary = control::summary(shared.runtime.desired(), &state);
    shared
        .runtime
        .change_to(state)
        .map_err(|source| DaemonError::Runtime {
            what,
            source: Box::new(source),
        })?;
    tracing::info!("{what}: {summary}");
    Ok((Arc::new(Mutex::new(shared)), health_events))
}

/// What the pin directory held when the daemon started.
enum Adopted {
    /// Maps of this layout and the state file that says what they hold: adopted as they are.
    Maps(Saved),
    /// Maps of another layout, unpinned (the running program still uses them): a new map set
    /// gets their rules, from the state file, and their connections when they can be read.
    NewMaps {
        /// The state file.
        saved: Saved,
        /// The old connection table, when its layout is this xlbd's.
        old_table: Option<OldTable>,
    },
    /// Nothing to adopt: a fresh data path.
    Nothing,
}

/// Loads the data path, adopting the pinned maps when they can be (see [`Adopted`]).
fn load_data_path(config: &Config) -> Result<(Dataplane, Adopted), DaemonError> {
    let pin_dir = &config.pin_dir;
    let pins = |what| {
        move |source| DaemonError::Pins {
            what,
            pin_dir: pin_dir.clone(),
            source,
        }
    };
    let mut saved = Runtime::read_state_file(&config.state_file);
    let mut adopted = Adopted::Nothing;
    // Nothing pinned is opened before its layout is known to be this xlbd's.
    let pinned = layout::assess(pin_dir).map_err(DaemonError::Layout)?;
    let other_layout = match pinned {
        Pinned::Empty => None,
        Pinned::Same if saved.is_none() => {
            tracing::warn!(
                pin_dir = %pin_dir.display(),
                "pinned maps without a state file: starting from empty maps"
            );
            Dataplane::unpin(pin_dir).map_err(pins("removing the old map pins"))?;
            None
        }
        Pinned::Same => None,
        Pinned::Incompatible { why } => {
            return Err(DaemonError::Incompatible {
                pin_dir: pin_dir.clone(),
                why,
            })
        }
        Pinned::Upgrade { why } => Some(Some(why)),
        Pinned::Interrupted => Some(None),
    };
    if let Some(why) = other_layout {
        let old_table = match (&why, &saved) {
            (Some(why), Some(saved)) => {
                tracing::warn!(
                    pin_dir = %pin_dir.display(),
                    why,
                    "the pinned maps have another layout: moving the balancer to new maps with \
                     the saved rules, its connections carried over"
                );
                Some(OldTable::open(pin_dir, &saved.installed).map_err(DaemonError::Upgrade)?)
            }
            (Some(why), None) => {
                tracing::warn!(
                    pin_dir = %pin_dir.display(),
                    why,
                    "the pinned maps have another layout and there is no state file: starting \
                     from empty maps"
                );
                None
            }
            (None, _) => {
                tracing::warn!(
                    pin_dir = %pin_dir.display(),
                    "an earlier move to new maps stopped half-way: new maps with the saved \
                     rules (the connection table is forgotten)"
                );
                None
            }
        };
        // Until the new maps are in place, the pins are not a set to adopt.
        layout::write(pin_dir, Versions::UPGRADING).map_err(DaemonError::Layout)?;
        Dataplane::unpin(pin_dir).map_err(pins("removing the old map pins"))?;
        if let Some(saved) = saved.take() {
            adopted = Adopted::NewMaps { saved, old_table };
        }
    }
    let pinned = pin_dir.join(lb_common::maps::SERVICES).exists();
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        max_services: config.max_services,
        max_reals: config.max_reals,
        ..LoadOptions::default()
    })
    .map_err(data_path("loading the data path"))?;
    let capacity = dp.capacity();
    tracing::info!(
        services = capacity.services,
        reals = capacity.reals,
        maglev_mib = capacity.maglev_bytes() >> 20,
        "data path sized"
    );
    if let Some(saved) = saved.filter(|_| pinned) {
        adopted = Adopted::Maps(saved);
    }
    Ok((dp, adopted))
}

/// The state to take the running one (`running`: adopted, or empty) to once the data path is
/// up, and what doing it is called in the log.
///
/// The configuration file, when there is one, is the source of truth at start as on reload:
/// after a restart the pinned maps are adopted first (no flow notices the restart) and the file
/// is then applied as a reload would, so that an edited file counts and changes made with xlbadm
/// since the last reload are dropped. Without a file, an adopted state is kept, as are the rules
/// saved with maps of another layout, installed in new maps before the program ran on them.
fn start_state(running: &DesiredState, file: Option<DesiredState>) -> (&'static str, DesiredState) {
    match file {
        Some(file) => ("applied the configuration file", file),
        None => ("kept the running state", running.clone()),
    }
}

/// The signals a daemon answers: SIGHUP, SIGUSR1, SIGUSR2.
type Signals = (Signal, Signal, Signal);

/// Where the sweep sends the connection counts it makes.
type SweptCounts = tokio::sync::watch::Sender<Arc<crate::runtime::ConnectionCounts>>;

/// What a serving daemon answers besides its sockets.
struct Inputs {
    /// The health checks' events.
    health_events: UnboundedReceiver<HealthEvent>,
    /// The signals, if it handles them.
    signals: Option<Signals>,
    /// The pinned connection tables, for a sweep off the state lock, and where it sends the
    /// connection counts it makes (for the metrics); without them the runtime sweeps its own
    /// under the lock.
    pinned_tables: Option<(ConnectionTables, SweptCounts)>,
}

/// Installs the daemon's signal handlers when `config` says so, first thing at start: a SIGHUP
/// (`systemctl reload`) that comes while the daemon starts is then a reload once it serves, not
/// the end of the process.
fn handle_signals(config: &Config) -> Result<Option<Signals>, DaemonError> {
    if !config.signals {
        return Ok(None);
    }
    let on = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| DaemonError::Signal {
            signal: name,
            source,
        })
    };
    Ok(Some((
        on(SignalKind::hangup(), "SIGHUP")?,
        on(SignalKind::user_defined1(), "SIGUSR1")?,
        on(SignalKind::user_defined2(), "SIGUSR2")?,
    )))
}

/// Serves the control socket, and keeps the data path in line with the health checks, until
/// `shutdown` completes; then stops the metrics server too.
async fn serve<D: DataPath + 'static>(
    shared: Arc<Mutex<Shared<D>>>,
    config: &Config,
    control: UnixListener,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    mut logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    inputs: Inputs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Inputs {
        mut health_events,
        mut signals,
        pinned_tables,
    } = inputs;
    // The next hops of the servers the start installed are resolved before xlbd says it
    // balances (and before it answers xlbadm), as when the start made the entries itself.
    let next_hops = shared.lock().await.runtime.next_hops().cloned();
    if let Some(next_hops) = next_hops {
        next_hops.wait().await;
    }
    let server = tokio::spawn(control::serve(control, shared.clone()));
    let sweeper = pinned_tables
        .map(|(tables, counts)| tokio::spawn(sweep_pinned(shared.clone(), tables, counts)));
    let sweeps_off_lock = sweeper.is_some();
    let mut logs = tokio::time::interval(Duration::from_millis(200));
    let mut rates = tokio::time::interval(Duration::from_secs(2));
    // Slow starts ramp weights up: bring their services' tables along every second (nothing is
    // recomputed while no server ramps up; health events refresh their own service).
    let mut ramps = tokio::time::interval(Duration::from_secs(1));
    // Packets dropped for want of a neighbour entry so far, looked at five times a second (see
    // `resolve_lost_next_hops`).
    let mut no_neighbour = 0;
    let mut neighbours = tokio::time::interval(Duration::from_millis(200));
    let report_every = config.report_every.filter(|d| !d.is_zero());
    let mut report = tokio::time::interval(report_every.unwrap_or(Duration::from_secs(3600)));
    tracing::info!(
        ifaces = ?config.ifaces,
        config = %config.config_file.display(),
        "xlbd is balancing"
    );
    tokio::pin!(shutdown);
    loop {
        let (hup, usr1, usr2) = match &mut signals {
            Some((hup, usr1, usr2)) => (Some(hup), Some(usr1), Some(usr2)),
            None => (None, None, None),
        };
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = recv(hup) => {
                tracing::info!(config = %config.config_file.display(), "SIGHUP: reloading");
                // The outcome is logged by the reload itself.
                let _ = control::handle(&mut *shared.lock().await, Request::Reload);
            }
            Some(()) = recv(usr1) => debug_events(&shared, true).await,
            Some(()) = recv(usr2) => debug_events(&shared, false).await,
            _ = logs.tick() => {
                if let Some(logger) = &mut logger {
                    logger.flush();
                }
            }
            Some(event) = health_events.recv() => refresh_service(&shared, &event.service).await,
            _ = ramps.tick() => refresh_ramps(&shared, sweeps_off_lock).await,
            _ = neighbours.tick() => {
                no_neighbour = resolve_lost_next_hops(&shared, no_neighbour).await;
            }
            _ = rates.tick() => {
                let mut guard = shared.lock().await;
                let Shared { runtime, rates, .. } = &mut *guard;
                runtime.sample(rates);
            }
            _ = report.tick(), if report_every.is_some() => {
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
                    Err(e) => tracing::warn!(
                        error = %crate::errors::error_chain(&e),
                        "reading the counters"
                    ),
                }
            }
        }
    }
    server.abort();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    Ok(())
}

/// The next delivery of a signal that is handled; never, for one that is not.
async fn recv(signal: Option<&mut Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Brings one service's table in line with a health event of one of its servers.
async fn refresh_service<D: DataPath>(
    shared: &Mutex<Shared<D>>,
    service: &crate::state::ServiceAddr,
) {
    if let Err(e) = shared.lock().await.runtime.refresh_service(service) {
        tracing::error!(
            %service,
            error = %crate::errors::error_chain(&e),
            "applying a health-check result to the data path"
        );
    }
}

/// Brings the services whose servers ramp up (slow starts) in line with their weights now, and
/// sweeps the connection table unless [`sweep_pinned`] does (`swept_elsewhere`).
async fn refresh_ramps<D: DataPath>(shared: &Mutex<Shared<D>>, swept_elsewhere: bool) {
    let mut guard = shared.lock().await;
    let refreshed = if swept_elsewhere {
        guard.runtime.refresh_ramping()
    } else {
        guard.runtime.refresh_ramps()
    };
    if let Err(e) = refreshed {
        tracing::error!(
            error = %crate::errors::error_chain(&e),
            "applying health-check results to the data path"
        );
    }
}

/// Every [`expiry::SWEEP_PERIOD`], sweeps the pinned `tables` ([`sweep_tables`]: idle
/// connections expired, persistent clients held or let go) on a blocking thread, off the state
/// lock, which is taken only to read the timeouts and persistence settings and to write the
/// connection counts. A full table's walk takes about 0.1 s (BENCHMARKS.md); the runtime's
/// changes meanwhile are safe, as the sweep writes only entries still as it read them.
async fn sweep_pinned<D: DataPath>(
    shared: Arc<Mutex<Shared<D>>>,
    tables: ConnectionTables,
    counts_out: SweptCounts,
) {
    let tables = Arc::new(std::sync::Mutex::new(tables));
    let mut ticks = tokio::time::interval(expiry::SWEEP_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let inputs = shared.lock().await.runtime.sweep_inputs();
        let inputs_kept = inputs.clone();
        let tables = tables.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let mut tables = tables
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            sweep_tables(&mut *tables, &inputs, monotonic_ns())
        })
        .await;
        match swept {
            Ok(Some(swept)) => {
                let mut guard = shared.lock().await;
                guard.runtime.correct_connection_counts(&swept.counts);
                guard.runtime.settle(&inputs_kept, &swept.handshakes);
                drop(guard);
                counts_out.send_replace(Arc::new(swept.counts));
            }
            // Logged by the sweep.
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "the sweep of the connection table failed"),
        }
    }
}

/// The kernel flushes an interface's neighbour entries when its carrier goes down, the managed
/// entries of the real servers' next hops with them, and the data path then drops what goes to
/// those servers (`drop_no_neighbour`) until something resolves them again: when that counter
/// grew since `seen`, the entries are made again, for every real server. Returns the counter.
async fn resolve_lost_next_hops<D: DataPath>(shared: &Mutex<Shared<D>>, seen: u64) -> u64 {
    let guard = shared.lock().await;
    let Ok(counters) = guard.runtime.datapath().global_counters() else {
        return seen;
    };
    let now = counters
        .iter()
        .find(|(stat, _)| *stat == lb_common::GlobalStat::DropNoNeighbour)
        .map_or(seen, |(_, count)| *count);
    if now > seen {
        let addrs: std::collections::BTreeSet<IpAddr> = guard
            .runtime
            .desired()
            .services
            .iter()
            .flat_map(|s| s.reals.iter().map(|r| r.addr))
            .collect();
        tracing::info!(
            dropped = now - seen,
            "packets dropped for want of a real server's neighbour entry (flushed when a link \
             went down?): making the entries again"
        );
        // Only said here: the neighbour thread does the netlink work without the lock.
        if let Some(next_hops) = guard.runtime.next_hops() {
            next_hops.keep_resolved(addrs);
        }
    }
    now
}

async fn debug_events<D: DataPath>(shared: &Mutex<Shared<D>>, on: bool) {
    match control::handle(&mut *shared.lock().await, Request::DebugEvents { on }) {
        Response::Ok => tracing::info!(on, "data-path debug events"),
        Response::Error { message, .. } => {
            tracing::warn!(error = %message, "switching the debug events")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::SocketAddr,
        path::Path,
        time::{Duration, Instant},
    };

    use tokio::{net::TcpListener, task::JoinHandle};

    use super::*;
    use crate::health::{
        engine::{HealthEvent, Target},
        machine::Health,
    };

    fn state(text: &str) -> DesiredState {
        config::parse(Path::new("xlb.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_configuration_file_wins_at_start_and_without_one_the_running_state_stays() {
        let file = state(
            "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n",
        );
        let empty = DesiredState::default();
        let saved = state(
            "[[services]]\n[services.addr]\nprotocol = \"udp\"\naddr = \"10.0.0.2\"\nport = 53\n",
        );
        assert_eq!(
            start_state(&saved, Some(file.clone())),
            ("applied the configuration file", file.clone())
        );
        assert_eq!(
            start_state(&empty, Some(file.clone())),
            ("applied the configuration file", file)
        );
        assert_eq!(start_state(&saved, None), ("kept the running state", saved));
    }

    /// A listener that accepts and drops connections until aborted.
    async fn listen() -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        (port, task)
    }

    /// What the runtime gives the health engine for `state`.
    fn targets(state: &DesiredState) -> Vec<Target> {
        state
            .services
            .iter()
            .flat_map(|s| Target::for_service(s, &s.health, &s.real_checks).expect("valid"))
            .collect()
    }

    fn config_text(reals: &[(&str, u32, u16)]) -> String {
        let mut text = String::from(
            "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n\
             [services.health.check]\nkind = \"tcp\"\naddr = \"127.0.0.1\"\n\
             interval = \"300ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 2\n",
        );
        for (addr, weight, port) in reals {
            text.push_str(&format!(
                "[services.real_checks.\"{addr}:80\"]\nport = {port}\n\
                 [[services.reals]]\naddr = \"{addr}\"\nport = 80\nweight = {weight}\n"
            ));
        }
        text
    }

    fn health_of(engine: &Engine) -> BTreeMap<SocketAddr, Health> {
        engine
            .snapshot()
            .into_iter()
            .map(|s| (s.real, s.health))
            .collect()
    }

    /// A reload hands the engine the targets of the new file: a server whose check did not
    /// change keeps its state (no new rise while it is re-checked) and its task, whatever else
    /// changed around it (its weight, other servers).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_keeps_the_health_of_the_servers_whose_check_did_not_change() {
        let ((a, _a), (b, _b), (c, _c)) = (listen().await, listen().await, listen().await);
        let (engine, mut events) = Engine::new(tokio::runtime::Handle::current(), 4);
        let before = state(&config_text(&[("10.0.0.11", 1, a), ("10.0.0.12", 1, b)]));
        engine.update_targets(targets(&before)).expect("valid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while health_of(&engine).values().any(|h| *h != Health::Up) {
            assert!(Instant::now() < deadline, "{:?}", health_of(&engine));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while events.try_recv().is_ok() {}

        // .11 is heavier, .12 goes, .13 comes.
        let after = state(&config_text(&[("10.0.0.11", 5, a), ("10.0.0.13", 1, c)]));
        engine.update_targets(targets(&after)).expect("valid");
        let real = |addr: &str| SocketAddr::new(addr.parse().expect("address"), 80);
        assert_eq!(
            health_of(&engine),
            BTreeMap::from([
                (real("10.0.0.11"), Health::Up),
                (real("10.0.0.13"), Health::Unknown)
            ])
        );
        let event: HealthEvent = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the engine is alive");
        assert_eq!(event.real, real("10.0.0.13"), "{event:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            events.try_recv().is_err(),
            "10.0.0.11 was never reported again"
        );
        assert_eq!(health_of(&engine)[&real("10.0.0.11")], Health::Up);
    }

    /// A daemon inside this process over the fake data path, driven through its control socket
    /// as xlbadm drives xlbd: `-R`'s parsed changes all or none, reloads of the file (a broken
    /// one changes nothing), and the old text form of `-R` refused with the reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_daemon_in_process_reloads_its_file_and_applies_parsed_changes_whole() {
        use crate::{
            control::{NumberedChange, Request, Response},
            datapath::fake::FakeDataPath,
            state::{Change, Forwarding, RealServer, ServiceAddr},
        };

        let dir = std::env::temp_dir().join(format!("xlb-daemon-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test directory");
        let file = dir.join("xlb.toml");
        let socket = dir.join("xlb.sock");
        let reals = |reals: &[(&str, u32)]| {
            let mut text = String::from(
                "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n",
            );
            for (addr, weight) in reals {
                text.push_str(&format!(
                    "[[services.reals]]\naddr = \"{addr}\"\nport = 80\nweight = {weight}\n"
                ));
            }
            text
        };
        std::fs::write(&file, reals(&[("10.0.0.11", 1), ("10.0.0.12", 1)])).expect("write");
        let mut config = Config::new(Vec::new(), file.clone());
        config.signals = false;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let control = control::bind(&socket).expect("bind the control socket");
        let daemon = tokio::spawn(async move {
            run_over(
                Runtime::new(FakeDataPath::default(), None),
                &config,
                control,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let call = |request: Request| {
            let socket = socket.clone();
            async move {
                tokio::task::spawn_blocking(move || control::call(&socket, &request))
                    .await
                    .expect("the client thread")
                    .expect("an answer")
            }
        };
        let running = || async {
            match call(Request::State).await {
                Response::State(state) => state,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            running().await,
            state(&reals(&[("10.0.0.11", 1), ("10.0.0.12", 1)]))
        );

        // -R's changes: applied in order, all or none; a refusal names its line.
        let service: ServiceAddr = running().await.services[0].addr;
        let real = |addr: &str, weight| RealServer {
            addr: addr.parse().expect("address"),
            port: 80,
            forwarding: Forwarding::DirectRoute,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        };
        let numbered = |changes: Vec<Change>| Request::Changes {
            changes: changes
                .into_iter()
                .enumerate()
                .map(|(i, change)| NumberedChange {
                    line: i + 1,
                    change,
                })
                .collect(),
        };
        let edit = Change::EditReal {
            service,
            real: real("10.0.0.11", 3),
            check: Default::default(),
        };
        let missing = Change::DeleteReal {
            service,
            addr: "10.0.0.99".parse().expect("address"),
            port: 80,
        };
        match call(numbered(vec![edit.clone(), missing])).await {
            Response::Error { message, exit_code } => {
                assert_eq!(message, "line 2: No such destination");
                assert_eq!(exit_code, 255);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            running().await,
            state(&reals(&[("10.0.0.11", 1), ("10.0.0.12", 1)])),
            "a refused -R changed something"
        );
        let add = Change::AddReal {
            service,
            real: real("10.0.0.13", 1),
            check: Default::default(),
        };
        assert_eq!(call(numbered(vec![edit, add])).await, Response::Ok);
        let by_hand = reals(&[("10.0.0.11", 3), ("10.0.0.12", 1), ("10.0.0.13", 1)]);
        assert_eq!(running().await, state(&by_hand));

        // A reload takes the running state back to the file, whatever xlbadm did since.
        let v2 = reals(&[("10.0.0.11", 2), ("10.0.0.14", 1)]);
        std::fs::write(&file, &v2).expect("write");
        assert_eq!(
            call(Request::Reload).await,
            Response::Reloaded {
                summary: "1 real server added, 2 real servers removed, 1 real server changed"
                    .to_owned()
            }
        );
        assert_eq!(running().await, state(&v2));

        // A broken file: refused whole with its line and field; nothing changes.
        std::fs::write(&file, reals(&[("10.0.0.11", 5), ("10.0.0.14", 70000)])).expect("write");
        match call(Request::Reload).await {
            Response::Error { message, .. } => assert!(
                message.starts_with("reload refused, nothing changed: ")
                    && message.contains("xlb.toml:13:1: services[0].reals[1].weight: ")
                    && message.ends_with("illegal weight specified"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(running().await, state(&v2));
        std::fs::remove_file(&file).expect("remove");
        match call(Request::Reload).await {
            Response::Error { message, .. } => {
                assert!(
                    message.contains("there is no configuration file"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }

        // An xlbadm from before -R was parsed on its side.
        match call(Request::Restore {
            rules: "-C\n".to_owned(),
        })
        .await
        {
            Response::Error { message, .. } => {
                assert!(message.contains("older than xlbd"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(running().await, state(&v2));

        stop.send(()).expect("the daemon is running");
        let shared = daemon
            .await
            .expect("the daemon's task")
            .expect("a clean stop");
        let mut reference = Runtime::new(FakeDataPath::default(), None);
        reference.change_to(state(&v2)).expect("v2");
        assert_eq!(
            shared
                .lock()
                .await
                .runtime
                .datapath()
                .contents()
                .behaviour(),
            reference.datapath().contents().behaviour(),
            "the data path holds something else than the file says"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The neighbour work is done outside the daemon's lock: while the neighbour thread is held
    /// (a slow kernel), a change is applied and other requests are answered; the change itself
    /// is answered once the next hop of the server it added is resolved, as when the change made
    /// the entry itself (xlbadm returns with the entry in place).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_answered_once_its_next_hops_are_resolved_without_the_lock_held() {
        use crate::{
            control::{Request, Response},
            datapath::fake::FakeDataPath,
            next_hops::FakeResolver,
            state::{Change, Forwarding, RealServer},
        };

        let dir = std::env::temp_dir().join(format!("xlb-neighbour-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test directory");
        let file = dir.join("xlb.toml");
        let socket = dir.join("xlb.sock");
        std::fs::write(
            &file,
            "[[services]]\naddress = \"10.0.0.1:80\"\n\
             [[services.reals]]\naddress = \"10.0.0.11:80\"\n",
        )
        .expect("write");
        let mut config = Config::new(Vec::new(), file.clone());
        config.signals = false;
        let resolver = FakeResolver::default();
        let runtime = Runtime::new(FakeDataPath::default(), None)
            .with_next_hops(NextHops::start(resolver.clone()).expect("the neighbour thread"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let control = control::bind(&socket).expect("bind the control socket");
        let daemon = tokio::spawn(async move {
            run_over(runtime, &config, control, async {
                let _ = stopped.await;
            })
            .await
        });
        let call = |request: Request| {
            let socket = socket.clone();
            async move {
                tokio::task::spawn_blocking(move || control::call(&socket, &request))
                    .await
                    .expect("the client thread")
                    .expect("an answer")
            }
        };
        let running = || async {
            match call(Request::State).await {
                Response::State(state) => state,
                other => panic!("{other:?}"),
            }
        };
        let ip = |a: &str| a.parse::<IpAddr>().expect("address");
        let service = running().await.services[0].addr;
        assert_eq!(
            resolver.asked(),
            [ip("10.0.0.11")],
            "the file's server was resolved before xlbd answered"
        );

        resolver.hold(true);
        let add = tokio::spawn(call(Request::Change(Change::AddReal {
            service,
            real: RealServer {
                addr: ip("10.0.0.12"),
                port: 80,
                forwarding: Forwarding::DirectRoute,
                weight: 1,
                upper_threshold: 0,
                lower_threshold: 0,
            },
            check: Default::default(),
        })));
        let applied = tokio::time::timeout(Duration::from_secs(10), async {
            while running().await.services[0].reals.len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            applied.is_ok(),
            "the change was not applied, or the daemon did not answer, while the neighbour \
             thread was held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !add.is_finished(),
            "the change was answered before its next hop was resolved"
        );
        assert_eq!(resolver.asked(), [ip("10.0.0.11")]);
        resolver.hold(false);
        let answer = tokio::time::timeout(Duration::from_secs(10), add)
            .await
            .expect("an answer once the thread is free")
            .expect("the client task");
        assert_eq!(answer, Response::Ok);
        assert_eq!(resolver.asked(), [ip("10.0.0.11"), ip("10.0.0.12")]);

        stop.send(()).expect("the daemon is running");
        daemon
            .await
            .expect("the daemon's task")
            .expect("a clean stop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
