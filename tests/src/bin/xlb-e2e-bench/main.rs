//! `xlb-e2e-bench` (`cargo xtask bench e2e`): requests per second and latency percentiles of HTTP
//! through xlb, end to end, against a client talking to a real server directly and against
//! user-space balancers in the same place.
//!
//! wrk runs in a client namespace against nginx real servers, with keep-alive and with a new
//! connection per request (`Connection: close`): directly to one real server; through the floor
//! of any XDP forwarder on the balancer's veth (a fixed MAC rewrite and XDP_TX to that server, no
//! lookup: [`floor`]); through xlb in native XDP mode by direct routing and by IP-in-IP, to one
//! real server and to three; and through HAProxy (TCP mode), pen and nginx's stream proxy in the
//! balancer's namespace, to three.
//! The targets are interleaved: every round measures each of them once in each mode, the order
//! of the targets rotating from round to round, after one warm-up round that is not counted.
//! Each figure is the median over the rounds, and rates are shown as a multiple of the direct
//! connection's in the same run. The goals (through xlb to one server at least 0.97× the
//! direct rate with a p99 within 10 %, through xlb to three at least 1.2× the best proxy) are
//! reported, not asserted, with xlb by direct routing to one server as a multiple of the floor and
//! the floor as a multiple of direct: what is xlb's and what the veth lab's.
//!
//! Knobs (environment): `XLB_E2E_SECONDS` per run (5), `XLB_E2E_ROUNDS` (3),
//! `XLB_E2E_CONNECTIONS` wrk keeps open (32), `XLB_E2E_THREADS` of wrk (1), `XLB_E2E_TARGETS`
//! (every target: a comma-separated list of [`Target::key`]s measures only those, and the
//! direct connection, which every rate is a multiple of; more rounds of fewer targets in the
//! same time, for a comparison the rounds' spread would otherwise hide).
//!
//! Layout: [`lab`] builds the namespaces and the real servers, [`xlb`] runs xlbd and its services,
//! [`floor`] the fixed forwarder, [`proxies`] the user-space balancers, [`wrk`] runs the client
//! and reads its report.
//!
//! Every namespace, process, mount and file of the run is removed when it ends, also on failure
//! and on SIGINT/SIGTERM (the run stops after the wrk run in progress). Needs root.

mod floor;
mod lab;
mod proxies;
mod wrk;
mod xlb;

use std::{
    path::Path,
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context as _};
use xlb_tests::root;

use crate::{
    floor::Floor,
    lab::{real_addr, require_binaries, wait_for_answer, Lab, BALANCER, FLOOR_VIP, REALS},
    proxies::{Proxy, NGINX_STREAM_MODULE},
    wrk::{ConnectionUse, Load, Report},
    xlb::{vip, Forwarding, Xlb},
};

/// Set by SIGINT/SIGTERM/SIGHUP: stop after the current run and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Debian packages the bench runs: (what proves it is installed, package).
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/wrk", "wrk"),
    ("/usr/sbin/nginx", "nginx"),
    (NGINX_STREAM_MODULE, "libnginx-mod-stream"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/bin/pen", "pen"),
    ("/usr/sbin/ethtool", "ethtool"),
    ("/usr/bin/curl", "curl"),
];

/// Where a client's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Straight to the first real server.
    Direct,
    /// To the first real server through the fixed XDP forwarder on the balancer ([`floor`]).
    Floor,
    /// Through xlb to this many real servers.
    Xlb(Forwarding, usize),
    /// Through a user-space proxy to all real servers.
    Proxy(Proxy),
}

impl Target {
    const ALL: [Self; 9] = [
        Self::Direct,
        Self::Floor,
        Self::Xlb(Forwarding::DirectRoute, 1),
        Self::Xlb(Forwarding::Tunnel, 1),
        Self::Xlb(Forwarding::DirectRoute, REALS),
        Self::Xlb(Forwarding::Tunnel, REALS),
        Self::Proxy(Proxy::Haproxy),
        Self::Proxy(Proxy::Pen),
        Self::Proxy(Proxy::NginxStream),
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct to one real server",
            Self::Floor => "XDP forwarder floor",
            Self::Xlb(forwarding, _) => forwarding.name(),
            Self::Proxy(proxy) => proxy.name(),
        }
    }

    fn reals(self) -> usize {
        match self {
            Self::Direct | Self::Floor => 1,
            Self::Xlb(_, reals) => reals,
            Self::Proxy(_) => REALS,
        }
    }

    fn url(self) -> String {
        match self {
            Self::Direct => format!("http://{}:80/", real_addr(0)),
            Self::Floor => format!("http://{FLOOR_VIP}:80/"),
            Self::Xlb(forwarding, reals) => format!("http://{}:80/", vip(forwarding, reals)),
            Self::Proxy(proxy) => format!("http://{BALANCER}:{}/", proxy.port()),
        }
    }

    fn is_xlb(self) -> bool {
        matches!(self, Self::Xlb(..))
    }

    /// Its name in `XLB_E2E_TARGETS`.
    fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Floor => "floor",
            Self::Xlb(Forwarding::DirectRoute, 1) => "xlb-dr-1",
            Self::Xlb(Forwarding::Tunnel, 1) => "xlb-ipip-1",
            Self::Xlb(Forwarding::DirectRoute, _) => "xlb-dr-3",
            Self::Xlb(Forwarding::Tunnel, _) => "xlb-ipip-3",
            Self::Proxy(Proxy::Haproxy) => "haproxy",
            Self::Proxy(Proxy::Pen) => "pen",
            Self::Proxy(Proxy::NginxStream) => "nginx-stream",
        }
    }

    /// The targets `XLB_E2E_TARGETS` names (all of them when it is unset), with the direct
    /// connection always among them.
    fn selected(list: Option<&str>) -> anyhow::Result<Vec<Self>> {
        let Some(list) = list else {
            return Ok(Self::ALL.to_vec());
        };
        let mut wanted = vec![Self::Direct];
        for key in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let Some(target) = Self::ALL.into_iter().find(|t| t.key() == key) else {
                let keys: Vec<&str> = Self::ALL.iter().map(|t| t.key()).collect();
                bail!(
                    "XLB_E2E_TARGETS names \"{key}\", which is no target of this bench (they \
                     are: {})",
                    keys.join(", ")
                );
            };
            if !wanted.contains(&target) {
                wanted.push(target);
            }
        }
        Ok(Self::ALL
            .into_iter()
            .filter(|t| wanted.contains(t))
            .collect())
    }
}

/// The targets measured one after the other, of those `selected`: xlb's share one start of xlbd.
fn blocks(selected: &[Target]) -> Vec<Vec<Target>> {
    let mut blocks = vec![vec![Target::Direct], vec![Target::Floor]];
    blocks.push(Target::ALL.into_iter().filter(|t| t.is_xlb()).collect());
    blocks.extend(
        Target::ALL
            .into_iter()
            .filter(|t| matches!(t, Target::Proxy(_)))
            .map(|t| vec![t]),
    );
    blocks
        .into_iter()
        .map(|block| {
            block
                .into_iter()
                .filter(|t| selected.contains(t))
                .collect::<Vec<_>>()
        })
        .filter(|block| !block.is_empty())
        .collect()
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{name}=\"{text}\" is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Installs the missing packages, with services kept from starting on the host meanwhile (a
/// policy-rc.d that refuses, unless one is already there): the bench starts its own copies.
fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("e2e: installing {}", missing.join(" "));
    const POLICY: &str = "/usr/sbin/policy-rc.d";
    let ours = !Path::new(POLICY).exists();
    if ours {
        std::fs::write(POLICY, "#!/bin/sh\nexit 101\n").context("writing policy-rc.d")?;
        Command::new("chmod").args(["755", POLICY]).status()?;
    }
    let result = (|| {
        let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
        let install = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !update.success() || !install.success() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
        Ok(())
    })();
    if ours {
        let _ = std::fs::remove_file(POLICY);
    }
    result
}

/// The proxies' processes, stopped when dropped.
struct Proxies(Vec<Child>);

impl Drop for Proxies {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The runs of every target in every mode: `runs[target][mode]`.
type Runs = Vec<[Vec<Report>; 2]>;

fn measure(lab: &Lab, block: &[Target], load: Load, runs: Option<&mut Runs>) -> anyhow::Result<()> {
    let xlb = if block.iter().any(|t| t.is_xlb()) {
        Some(Xlb::start(lab)?)
    } else {
        None
    };
    let floor = if block.contains(&Target::Floor) {
        Some(Floor::start(lab)?)
    } else {
        None
    };
    let mut runs = runs;
    for &target in block {
        // Every server behind the target answers before it is measured.
        wait_for_answer(&lab.client, &target.url(), "rs")?;
        for (m, use_) in ConnectionUse::ALL.into_iter().enumerate() {
            let report = wrk::run(&lab.client, &target.url(), load, use_)?;
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted: cleaning up");
            }
            if let Some(runs) = runs.as_deref_mut() {
                let t = Target::ALL
                    .iter()
                    .position(|&x| x == target)
                    .expect("a target");
                runs[t][m].push(report);
            }
        }
    }
    drop(xlb);
    drop(floor);
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians of one target's runs in one mode: (requests/s, p50 µs, p99 µs, errors in all runs).
fn medians(reports: &[Report]) -> (f64, f64, f64, u64) {
    (
        median(reports.iter().map(|r| r.requests_per_s)),
        median(reports.iter().map(|r| r.p50_us)),
        median(reports.iter().map(|r| r.p99_us)),
        reports.iter().map(|r| r.errors).sum(),
    )
}

fn latency(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn print_results(runs: &Runs, rounds: u64, load: Load) {
    println!(
        "\ne2e: medians of {rounds} interleaved rounds × {} s per run, {} connections, {} wrk \
         thread(s); rates as × direct",
        load.duration.as_secs_f64(),
        load.connections,
        load.threads
    );
    for (m, use_) in ConnectionUse::ALL.into_iter().enumerate() {
        println!("\n{}", use_.label());
        println!(
            "| {:<26} | {:>5} | {:>9} | {:>13} | {:>8} | {:>9} | {:>9} | {:>6} |",
            "target", "reals", "req/s", "rounds' range", "× direct", "p50", "p99", "errors"
        );
        println!(
            "| {:-<26} | {:->4}: | {:->8}: | {:->12}: | {:->7}: | {:->8}: | {:->8}: | {:->5}: |",
            "", "", "", "", "", "", "", ""
        );
        let direct = medians(&runs[0][m]).0;
        for (t, target) in Target::ALL.into_iter().enumerate() {
            if runs[t][m].is_empty() {
                continue;
            }
            let (rate, p50, p99, errors) = medians(&runs[t][m]);
            let rates = runs[t][m].iter().map(|r| r.requests_per_s / 1000.0);
            let low = rates.clone().fold(f64::INFINITY, f64::min);
            let high = rates.fold(0.0, f64::max);
            println!(
                "| {:<26} | {:>5} | {:>9.0} | {:>13} | {:>8.2} | {:>9} | {:>9} | {:>6} |",
                target.name(),
                target.reals(),
                rate,
                format!("{low:.1}k–{high:.1}k"),
                rate / direct,
                latency(p50),
                latency(p99),
                errors
            );
        }
    }
    println!("\ngoals (reported, not asserted; a line needs the targets it compares):");
    let position = |target: Target| {
        Target::ALL
            .iter()
            .position(|&x| x == target)
            .expect("a target")
    };
    let measured = |target: Target| runs[position(target)].iter().all(|r| !r.is_empty());
    for (m, use_) in ConnectionUse::ALL.into_iter().enumerate() {
        let (direct_rate, _, direct_p99, _) = medians(&runs[0][m]);
        let (floor_rate, _, floor_p99, _) = medians(&runs[position(Target::Floor)][m]);
        let (dr_rate, _, dr_p99, _) =
            medians(&runs[position(Target::Xlb(Forwarding::DirectRoute, 1))][m]);
        if measured(Target::Floor) && measured(Target::Xlb(Forwarding::DirectRoute, 1)) {
            println!(
                "  {}, the XDP forwarder floor: {:.2}× direct, p99 {:.2}× direct's; xlb direct \
                 routing, one real server: {:.2}× the floor, p99 {:.2}× the floor's",
                use_.label(),
                floor_rate / direct_rate,
                floor_p99 / direct_p99,
                dr_rate / floor_rate,
                dr_p99 / floor_p99
            );
        }
        for forwarding in [Forwarding::DirectRoute, Forwarding::Tunnel] {
            if !measured(Target::Xlb(forwarding, 1)) {
                continue;
            }
            let t = position(Target::Xlb(forwarding, 1));
            let (rate, _, p99, _) = medians(&runs[t][m]);
            println!(
                "  {}, {}, one real server: {:.2}× direct (goal ≥ 0.97), p99 {:.2}× direct's \
                 (goal ≤ 1.10)",
                use_.label(),
                forwarding.name(),
                rate / direct_rate,
                p99 / direct_p99
            );
        }
        let Some((best_rate, best)) = Target::ALL
            .into_iter()
            .enumerate()
            .filter(|(t, target)| matches!(target, Target::Proxy(_)) && !runs[*t][m].is_empty())
            .map(|(t, target)| (medians(&runs[t][m]).0, target.name()))
            .max_by(|a, b| a.0.total_cmp(&b.0))
        else {
            continue;
        };
        for forwarding in [Forwarding::DirectRoute, Forwarding::Tunnel] {
            if !measured(Target::Xlb(forwarding, REALS)) {
                continue;
            }
            let t = position(Target::Xlb(forwarding, REALS));
            println!(
                "  {}, {}, three real servers: {:.2}× the best proxy ({best}) (goal ≥ 1.2)",
                use_.label(),
                forwarding.name(),
                medians(&runs[t][m]).0 / best_rate
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    root::require();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    // The knobs first: a mistyped one is told before anything is installed or built.
    let load = Load {
        duration: Duration::from_secs(env_number("XLB_E2E_SECONDS", 5)?),
        connections: env_number("XLB_E2E_CONNECTIONS", 32)?.try_into()?,
        threads: env_number("XLB_E2E_THREADS", 1)?.try_into()?,
    };
    let rounds = env_number("XLB_E2E_ROUNDS", 3)?;
    let selected = Target::selected(std::env::var("XLB_E2E_TARGETS").ok().as_deref())?;
    require_binaries()?;
    install_packages()?;
    println!("e2e: building the lab (client, balancer, {REALS} nginx real servers)");
    let lab = Lab::new()?;
    let _proxies = Proxies(
        Proxy::ALL
            .into_iter()
            .filter(|p| selected.contains(&Target::Proxy(*p)))
            .map(|p| p.start(&lab.balancer, &lab.dir))
            .collect::<anyhow::Result<_>>()?,
    );
    let blocks = blocks(&selected);
    println!("e2e: warm-up round (1 s runs, not counted)");
    let warm_up = Load {
        duration: Duration::from_secs(1),
        ..load
    };
    for block in &blocks {
        measure(&lab, block, warm_up, None)?;
    }
    let mut runs: Runs = Target::ALL.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..rounds {
        println!("e2e: round {} of {rounds}", round + 1);
        for b in 0..blocks.len() {
            let block = &blocks[(b + round as usize) % blocks.len()];
            measure(&lab, block, load, Some(&mut runs))?;
        }
    }
    print_results(&runs, rounds, load);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_measured_unless_some_are_named() {
        assert_eq!(Target::selected(None).unwrap(), Target::ALL.to_vec());
        let keys: Vec<&str> = Target::ALL.iter().map(|t| t.key()).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            keys.len(),
            "two targets share a key: {keys:?}"
        );
    }

    #[test]
    fn named_targets_are_measured_with_the_direct_connection_in_their_blocks() {
        let selected = Target::selected(Some("xlb-ipip-1, floor,xlb-dr-1,floor")).unwrap();
        assert_eq!(
            selected,
            vec![
                Target::Direct,
                Target::Floor,
                Target::Xlb(Forwarding::DirectRoute, 1),
                Target::Xlb(Forwarding::Tunnel, 1),
            ]
        );
        assert_eq!(
            blocks(&selected),
            vec![
                vec![Target::Direct],
                vec![Target::Floor],
                vec![
                    Target::Xlb(Forwarding::DirectRoute, 1),
                    Target::Xlb(Forwarding::Tunnel, 1)
                ],
            ]
        );
        let proxies = Target::selected(Some("pen")).unwrap();
        assert_eq!(proxies, vec![Target::Direct, Target::Proxy(Proxy::Pen)]);
        assert_eq!(
            blocks(&proxies),
            vec![vec![Target::Direct], vec![Target::Proxy(Proxy::Pen)]]
        );
        assert_eq!(blocks(&Target::ALL).concat(), Target::ALL.to_vec());
    }

    #[test]
    fn an_unknown_target_is_refused_with_the_names_there_are() {
        let err = Target::selected(Some("floor,xlb")).unwrap_err().to_string();
        assert_eq!(
            err,
            "XLB_E2E_TARGETS names \"xlb\", which is no target of this bench (they are: \
             direct, floor, xlb-dr-1, xlb-ipip-1, xlb-dr-3, xlb-ipip-3, haproxy, pen, \
             nginx-stream)"
        );
    }
}
