//! On exit with `--detach-on-exit`: the VIPs leave the balancer before its data path does.
//!
//! A balancer that holds a VIP as an address of its own (the master of a keepalived pair) must
//! not take its data path away while the VIP is local: its kernel would then take the VIP's
//! packets itself and, with nothing listening, answer them with resets. Once xlbd has closed its
//! metrics and control socket, keepalived's track script (`xlb-vrrp-check`) fails and keepalived
//! moves the VIP to the backup. Meanwhile xlbd keeps forwarding, looks at its network
//! namespace's addresses every [`POLL`], and detaches:
//! - at once when no VIP of its services is local: keepalived was stopped first, or the VIPs are
//!   only announced (a BGP balancer whose VIPs are routes, not addresses: there the route's
//!   withdrawal is what matters, which xlbd cannot see; `--detach-delay` gives the health hook
//!   its time);
//! - [`LINGER`] after the last VIP left: the neighbours still send to this balancer until the
//!   new holder's gratuitous ARP (or unsolicited neighbour advertisement) reaches them;
//! - when the bound (`--detach-wait-vip`, [`DEFAULT_BOUND`]) is reached with a VIP still local:
//!   a VIP configured statically, with no keepalived to move it, costs that much on every stop,
//!   and the log says so.
//!
//! A VIP on a loopback device (a BGP balancer that holds its VIPs on `lo`) is waited for like any
//! other, though nothing moves it: the kernel answers for it all the same, and the wait gives the
//! BGP health hook, which withdraws the routes once the metrics are closed, the bound's time.
//!
//! [`Handover`] decides, from the addresses it is given (pure, tested without root); [`wait`]
//! reads them over rtnetlink.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::neighbour::{LocalAddress, Netlink};

/// How long a stopping xlbd waits, at most, for its VIPs to leave when it is not told
/// (`--detach-wait-vip`). keepalived's track script runs every second by default (the shipped
/// configuration too) and one failure hands the VIP over: it leaves about a second after the
/// metrics close, later on a busy machine. Five seconds also covers a script that runs every 2 s
/// and must fail twice (`interval 2`, `fall 2`), and it is what a balancer whose VIP is
/// configured statically pays on every stop, far below systemd's 90 s stop timeout.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(5);

/// How often the addresses are looked at while a VIP is local.
pub const POLL: Duration = Duration::from_millis(50);

/// How long the balancer keeps forwarding once no VIP is local any more. A keepalived backup
/// that hears the master give up (a priority-0 advert) becomes master after its skew time,
/// (256 - priority) / 256 of the advert interval, and then sends its gratuitous ARPs; until
/// they arrive the neighbours send to this balancer. One second covers advert intervals up to
/// a second (keepalived's default; 0.1 s in the shipped configuration) whatever the backup's
/// priority. Measured with `advert_int 1` (ha_e2e, the wrong stop order): without it one
/// request of about 100 failed in each of two runs, with it none.
pub const LINGER: Duration = Duration::from_secs(1);

/// The local addresses (`local`) that are one of `vips`, with the interface holding each.
pub fn held<'a>(vips: &[IpAddr], local: &'a [LocalAddress]) -> Vec<&'a LocalAddress> {
    local.iter().filter(|a| vips.contains(&a.addr)).collect()
}

/// What to do after a look at the addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep forwarding; look again after [`POLL`].
    Wait,
    /// Detach now.
    Detach,
}

/// The wait for the VIPs to leave: given the namespace's addresses at each look, it says whether
/// to detach, and logs what it waits for and why it stops waiting.
#[derive(Debug)]
pub struct Handover {
    /// The services' VIPs, each once.
    vips: Vec<IpAddr>,
    /// The longest wait for a VIP to leave.
    bound: Duration,
    /// The VIPs local at the last look.
    held: Vec<LocalAddress>,
    /// Whether a VIP was local at the first look (the wait began).
    waiting: bool,
    /// When the wait found no VIP local any more (since then).
    left_at: Option<Duration>,
}

impl Handover {
    /// The wait for `vips` (a service's address each; repeats are fine), bounded by `bound`.
    pub fn new(vips: impl IntoIterator<Item = IpAddr>, bound: Duration) -> Self {
        let mut vips: Vec<IpAddr> = vips.into_iter().collect();
        vips.sort_unstable();
        vips.dedup();
        Self {
            vips,
            bound,
            held: Vec::new(),
            waiting: false,
            left_at: None,
        }
    }

    /// What to do `elapsed` after the wait began, the namespace's addresses being `local`.
    pub fn step(&mut self, elapsed: Duration, local: &[LocalAddress]) -> Next {
        let held: Vec<LocalAddress> = held(&self.vips, local).into_iter().cloned().collect();
        if !self.waiting {
            if held.is_empty() || self.bound.is_zero() {
                tracing::debug!("no VIP of the services is a local address: detaching at once");
                return Next::Detach;
            }
            self.waiting = true;
            self.held = held;
            self.log_start();
            return self.bound_reached(elapsed);
        }
        if held.is_empty() {
            if self.left_at.is_none() {
                tracing::info!(
                    after = ?elapsed,
                    linger = ?LINGER,
                    "no VIP is a local address any more: the balancer forwards a little longer, \
                     while the neighbours learn the VIPs' new holder"
                );
                self.left_at = Some(elapsed);
                self.held.clear();
            }
            let left_at = self.left_at.unwrap_or(elapsed);
            if elapsed >= left_at + LINGER {
                return Next::Detach;
            }
            return Next::Wait;
        }
        if self.left_at.take().is_some() || held != self.held {
            tracing::info!(
                vips = %list(&held),
                "still waiting for these VIPs to leave"
            );
        }
        self.held = held;
        self.bound_reached(elapsed)
    }

    fn log_start(&self) {
        tracing::info!(
            vips = %list(&self.held),
            bound = ?self.bound,
            "metrics and control socket closed; the balancer forwards until these VIPs are no \
             local address any more, so that keepalived's track script moves them to another \
             balancer first (a VIP configured statically stays: the whole bound is waited; \
             --detach-wait-vip 0 turns the wait off, a second SIGINT or SIGTERM ends it)"
        );
        if self.held.iter().any(|a| a.loopback) {
            tracing::info!(
                vips = %list(&self.held),
                "VIPs on a loopback device stay there (nothing moves them): the wait runs to \
                 its bound, the time for a BGP health hook to withdraw their routes"
            );
        }
    }

    /// Detach when the bound is reached (saying with which VIPs still local), else wait.
    fn bound_reached(&self, elapsed: Duration) -> Next {
        if elapsed < self.bound {
            return Next::Wait;
        }
        if self.held.iter().all(|a| a.loopback) {
            tracing::info!(
                vips = %list(&self.held),
                waited = ?self.bound,
                "the bound is reached, the VIPs still on a loopback device: detaching (their \
                 routes should be withdrawn by now)"
            );
        } else {
            tracing::warn!(
                vips = %list(&self.held),
                waited = ?self.bound,
                "the bound is reached with these VIPs still local: detaching anyway; this \
                 host's kernel answers their packets (resets) until they move"
            );
        }
        Next::Detach
    }
}

/// `10.0.0.100 on eth0, fd00::100 on eth0`.
fn list(held: &[LocalAddress]) -> String {
    held.iter()
        .map(|a| format!("{} on {}", a.addr, a.iface))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits, in the calling thread's network namespace, until [`Handover`] says to detach: the
/// addresses read over rtnetlink every [`POLL`], or until `hurry` is set (checked as often).
/// Blocks the thread; a bound of 0 returns at once, without a look. When the addresses cannot be
/// read it says so and returns.
pub fn wait(vips: impl IntoIterator<Item = IpAddr>, bound: Duration, hurry: &AtomicBool) {
    if bound.is_zero() {
        return;
    }
    let mut handover = Handover::new(vips, bound);
    if handover.vips.is_empty() {
        return;
    }
    let cannot_read = |e: crate::neighbour::NeighbourError| {
        tracing::warn!(
            error = %crate::errors::error_chain(&e),
            "the addresses of the network namespace cannot be read: detaching without waiting \
             for the VIPs to leave"
        );
    };
    let mut netlink = match Netlink::open() {
        Ok(netlink) => netlink,
        Err(e) => return cannot_read(e),
    };
    let start = Instant::now();
    while !hurry.load(Ordering::Relaxed) {
        match netlink.local_addresses() {
            Ok(local) => {
                if handover.step(start.elapsed(), &local) == Next::Detach {
                    return;
                }
            }
            Err(e) => return cannot_read(e),
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(addr: &str, iface: &str) -> LocalAddress {
        LocalAddress {
            addr: addr.parse().expect("address"),
            iface: iface.to_owned(),
            loopback: iface == "lo",
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn vips() -> Vec<IpAddr> {
        ["10.0.0.100", "fd00::100", "10.0.0.100"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect()
    }

    #[test]
    fn only_the_local_addresses_that_are_vips_are_held() {
        let local = [
            on("127.0.0.1", "lo"),
            on("10.0.0.1", "eth0"),
            on("10.0.0.100", "eth0"),
            on("fd00::100", "lo"),
            on("fd00::1", "eth0"),
        ];
        let held: Vec<String> = held(&vips(), &local)
            .iter()
            .map(|a| format!("{} on {}", a.addr, a.iface))
            .collect();
        assert_eq!(held, ["10.0.0.100 on eth0", "fd00::100 on lo"]);
        assert!(super::held(&[], &local).is_empty());
    }

    #[test]
    fn a_balancer_without_a_local_vip_detaches_at_once() {
        let mut handover = Handover::new(vips(), ms(5000));
        // A BGP balancer: the VIPs are routes, not addresses.
        let local = [on("127.0.0.1", "lo"), on("10.0.0.1", "eth0")];
        assert_eq!(handover.step(ms(0), &local), Next::Detach);
    }

    #[test]
    fn no_wait_when_it_is_off() {
        let mut handover = Handover::new(vips(), Duration::ZERO);
        assert_eq!(
            handover.step(ms(0), &[on("10.0.0.100", "eth0")]),
            Next::Detach
        );
    }

    #[test]
    fn a_vip_that_leaves_is_followed_by_the_linger_then_the_detach() {
        let mut handover = Handover::new(vips(), ms(5000));
        let with_vip = [on("10.0.0.1", "eth0"), on("10.0.0.100", "eth0")];
        let without = [on("10.0.0.1", "eth0")];
        assert_eq!(handover.step(ms(0), &with_vip), Next::Wait);
        assert_eq!(handover.step(ms(900), &with_vip), Next::Wait);
        // keepalived's track script failed: the VIP moved to the backup.
        assert_eq!(handover.step(ms(1000), &without), Next::Wait);
        assert_eq!(handover.step(ms(1999), &without), Next::Wait);
        assert_eq!(handover.step(ms(2000), &without), Next::Detach);
    }

    #[test]
    fn the_linger_may_run_past_the_bound() {
        let mut handover = Handover::new(vips(), ms(1000));
        assert_eq!(
            handover.step(ms(0), &[on("10.0.0.100", "eth0")]),
            Next::Wait
        );
        assert_eq!(handover.step(ms(950), &[]), Next::Wait);
        assert_eq!(handover.step(ms(1500), &[]), Next::Wait);
        assert_eq!(handover.step(ms(1950), &[]), Next::Detach);
    }

    #[test]
    fn a_vip_that_comes_back_is_waited_for_again() {
        let mut handover = Handover::new(vips(), ms(5000));
        let with_vip = [on("10.0.0.100", "eth0")];
        assert_eq!(handover.step(ms(0), &with_vip), Next::Wait);
        assert_eq!(handover.step(ms(500), &[]), Next::Wait);
        // Back before the linger is over (keepalived flapped): the linger starts again when it
        // leaves again.
        assert_eq!(handover.step(ms(800), &with_vip), Next::Wait);
        assert_eq!(handover.step(ms(1600), &[]), Next::Wait);
        assert_eq!(handover.step(ms(2500), &[]), Next::Wait);
        assert_eq!(handover.step(ms(2600), &[]), Next::Detach);
    }

    #[test]
    fn a_vip_that_stays_is_waited_for_up_to_the_bound() {
        // A VIP configured statically, or on lo: nothing moves it.
        for iface in ["eth0", "lo"] {
            let mut handover = Handover::new(vips(), ms(3000));
            let local = [on("10.0.0.1", "eth0"), on("fd00::100", iface)];
            assert_eq!(handover.step(ms(0), &local), Next::Wait, "{iface}");
            assert_eq!(handover.step(ms(2950), &local), Next::Wait, "{iface}");
            assert_eq!(handover.step(ms(3000), &local), Next::Detach, "{iface}");
        }
    }

    #[test]
    fn every_vip_must_leave() {
        let mut handover = Handover::new(vips(), ms(5000));
        let both = [on("10.0.0.100", "eth0"), on("fd00::100", "eth0")];
        let one = [on("fd00::100", "eth0")];
        assert_eq!(handover.step(ms(0), &both), Next::Wait);
        assert_eq!(handover.step(ms(300), &one), Next::Wait);
        assert_eq!(handover.step(ms(2000), &one), Next::Wait);
        assert_eq!(handover.step(ms(2100), &[]), Next::Wait);
        assert_eq!(handover.step(ms(3100), &[]), Next::Detach);
    }
}
