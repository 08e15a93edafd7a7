//! Keeping the real servers' next hops resolved, on a thread of its own, outside the daemon's
//! lock.
//!
//! A change only says which next hops it needs ([`NextHops::keep_resolved`]: a message on a
//! channel, cheap under the lock); the neighbour thread does the rtnetlink requests (a route
//! lookup and a managed neighbour entry for each, an operator's permanent entry left alone:
//! [`crate::neighbour::Netlink::keep_resolved`]) while the daemon goes on serving. Whoever must
//! not answer before the entries are in place (the control socket, after a change, as xlbd always
//! did) waits for them with [`NextHops::settled`], without the lock.
//!
//! The route socket is opened by whoever starts the thread, so it speaks to that thread's network
//! namespace whatever thread it is used from.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{mpsc, Arc, Condvar, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    errors::error_chain,
    neighbour::{NeighbourError, Netlink},
};

/// What keeps one real server's next hop resolved: the kernel's neighbour table over rtnetlink
/// ([`Netlink`]), or [`FakeResolver`] in tests.
pub trait Resolver: Send + 'static {
    /// Makes the next hop towards `addr` resolved now and kept so.
    fn keep_resolved(&mut self, addr: IpAddr) -> Result<(), NeighbourError>;
}

impl Resolver for Netlink {
    fn keep_resolved(&mut self, addr: IpAddr) -> Result<(), NeighbourError> {
        Netlink::keep_resolved(self, addr)
    }
}

/// How long [`NextHops::wait`] waits at most: a route lookup and a neighbour entry take well
/// under a millisecond each, so this is only reached when the kernel (or the thread) is stuck.
pub const WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// A request: the addresses, and the request's number.
type Request = (BTreeSet<IpAddr>, u64);

/// The neighbour thread's side, for whoever asks: cheap to clone, every clone asks the same
/// thread. The thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct NextHops {
    /// The number of the last request, and the channel; numbered and sent under one lock, so
    /// that requests arrive in the order of their numbers.
    requests: Arc<Mutex<(u64, mpsc::Sender<Request>)>>,
    /// The number of the last request the thread has done.
    done: watch::Receiver<u64>,
}

impl NextHops {
    /// Starts the neighbour thread over `resolver`.
    pub fn start(resolver: impl Resolver) -> Result<Self, NeighbourError> {
        let (send, receive) = mpsc::channel();
        let (done_send, done) = watch::channel(0);
        std::thread::Builder::new()
            .name("xlb-neighbours".into())
            .spawn(move || work(resolver, &receive, &done_send))
            .map_err(|source| NeighbourError::Netlink {
                what: "starting the neighbour thread",
                source,
            })?;
        Ok(Self {
            requests: Arc::new(Mutex::new((0, send))),
            done,
        })
    }

    /// Asks for the next hops towards `addrs` to be resolved and kept so; returns at once.
    pub fn keep_resolved(&self, addrs: BTreeSet<IpAddr>) {
        if addrs.is_empty() {
            return;
        }
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let number = requests.0 + 1;
        if requests.1.send((addrs, number)).is_ok() {
            requests.0 = number;
        } else {
            tracing::warn!(
                "the neighbour thread has stopped: the real servers' next hops are no longer kept \
                 resolved"
            );
        }
    }

    /// Waits until every request made so far is done, for at most `within`; whether it is.
    pub async fn settled(&self, within: Duration) -> bool {
        let asked = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        let mut done = self.done.clone();
        let waited = tokio::time::timeout(within, done.wait_for(|done| *done >= asked)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

impl NextHops {
    /// Waits, at most [`WAIT_AT_MOST`], until every request made so far is done: the entries
    /// are in place, as they were when a change returned while the change made them itself.
    /// Logs when it gives up waiting.
    pub async fn wait(&self) {
        if !self.settled(WAIT_AT_MOST).await {
            tracing::warn!(
                waited = ?WAIT_AT_MOST,
                "the real servers' next hops are still being resolved: answering anyway"
            );
        }
    }
}

/// The neighbour thread: does the requests in order (those queued meanwhile as one), until
/// every [`NextHops`] is gone.
fn work(
    mut resolver: impl Resolver,
    requests: &mpsc::Receiver<Request>,
    done: &watch::Sender<u64>,
) {
    while let Ok((mut addrs, mut number)) = requests.recv() {
        while let Ok((more, later)) = requests.try_recv() {
            addrs.extend(more);
            number = later;
        }
        resolve(&mut resolver, addrs).log();
        done.send_replace(number);
    }
}

/// The next hops a request could not keep resolved.
#[derive(Debug, Default)]
struct Unresolved {
    /// The servers whose entry the kernel's full neighbour table refused, by family (the
    /// sysctl's name for it): one sentence for all of them, not one line each (4,096 servers on
    /// link against the default limit of 1,024 would be 3,072 lines, again at each retry).
    table_full: std::collections::BTreeMap<&'static str, Vec<IpAddr>>,
    /// Every other failure, each with its server.
    failed: Vec<(IpAddr, NeighbourError)>,
}

/// Asks `resolver` for each of `addrs` in turn.
fn resolve(resolver: &mut impl Resolver, addrs: BTreeSet<IpAddr>) -> Unresolved {
    let mut unresolved = Unresolved::default();
    for addr in addrs {
        match resolver.keep_resolved(addr) {
            Ok(()) => {}
            Err(NeighbourError::TableFull { family }) => {
                unresolved.table_full.entry(family).or_default().push(addr);
            }
            Err(e) => unresolved.failed.push((addr, e)),
        }
    }
    unresolved
}

impl Unresolved {
    fn log(&self) {
        for (addr, e) in &self.failed {
            tracing::warn!(real = %addr, error = %error_chain(e), "cannot keep the real server's next hop resolved");
        }
        for (family, addrs) in &self.table_full {
            tracing::warn!("{}", table_full_message(family, addrs));
        }
    }
}

/// What an operator is told when the kernel's neighbour table refused entries: how many, which
/// (the first few), what it costs and what to raise.
fn table_full_message(family: &str, addrs: &[IpAddr]) -> String {
    const SHOWN: usize = 3;
    let mut which: Vec<String> = addrs.iter().take(SHOWN).map(IpAddr::to_string).collect();
    if addrs.len() > SHOWN {
        which.push("…".to_owned());
    }
    let (hops, servers, are) = if addrs.len() == 1 {
        ("hop", "server", "is")
    } else {
        ("hops", "servers", "are")
    };
    format!(
        "the kernel's neighbour table is full: the next {hops} of {} real {servers} ({}) {are} not \
         kept resolved, and packets to them are dropped (drop_no_neighbour) while the kernel has \
         no entry for them; raise net.{family}.neigh.default.gc_thresh3 (and gc_thresh2) above \
         the number of real servers on link (xlbd makes the entries again when it sees such \
         drops)",
        addrs.len(),
        which.join(", ")
    )
}

/// A resolver in memory, for tests: it records the addresses it was asked for, and can be held
/// (as a slow kernel would be) until released. Its clones share the record and the hold.
#[derive(Clone, Default)]
pub struct FakeResolver {
    shared: Arc<(Mutex<FakeState>, Condvar)>,
}

#[derive(Default)]
struct FakeState {
    asked: Vec<IpAddr>,
    held: bool,
    /// Addresses whose entry a full neighbour table refuses.
    full: BTreeSet<IpAddr>,
}

impl FakeResolver {
    /// The addresses resolved so far, in order.
    pub fn asked(&self) -> Vec<IpAddr> {
        self.state().asked.clone()
    }

    /// Holds the resolver (`true`: it waits before each address) or releases it.
    pub fn hold(&self, held: bool) {
        self.state().held = held;
        self.shared.1.notify_all();
    }

    /// Makes the neighbour table refuse `addrs` as a full one does.
    pub fn table_full_for(&self, addrs: BTreeSet<IpAddr>) {
        self.state().full = addrs;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Resolver for FakeResolver {
    fn keep_resolved(&mut self, addr: IpAddr) -> Result<(), NeighbourError> {
        let (state, released) = &*self.shared;
        let mut state = released
            .wait_while(
                state.lock().unwrap_or_else(PoisonError::into_inner),
                |state| state.held,
            )
            .unwrap_or_else(PoisonError::into_inner);
        state.asked.push(addr);
        if state.full.contains(&addr) {
            return Err(NeighbourError::TableFull {
                family: if addr.is_ipv4() { "ipv4" } else { "ipv6" },
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter()
            .map(|a| a.parse().expect("an address"))
            .collect()
    }

    #[test]
    fn a_full_neighbour_table_is_told_once_per_family_with_its_count_and_the_sysctl() {
        let mut resolver = FakeResolver::default();
        let all = addrs(&[
            "10.8.0.1", "10.8.0.2", "10.8.0.3", "10.8.0.4", "10.8.0.5", "fd00::1",
        ]);
        let full = addrs(&["10.8.0.2", "10.8.0.3", "10.8.0.4", "10.8.0.5", "fd00::1"]);
        resolver.table_full_for(full);
        let unresolved = resolve(&mut resolver, all.clone());
        assert_eq!(resolver.asked().len(), all.len(), "every address asked");
        assert!(unresolved.failed.is_empty());
        assert_eq!(
            unresolved.table_full.keys().copied().collect::<Vec<_>>(),
            ["ipv4", "ipv6"]
        );
        let v4 = &unresolved.table_full["ipv4"];
        assert_eq!(v4.len(), 4);
        assert_eq!(
            table_full_message("ipv4", v4),
            "the kernel's neighbour table is full: the next hops of 4 real servers (10.8.0.2, \
             10.8.0.3, 10.8.0.4, …) are not kept resolved, and packets to them are dropped \
             (drop_no_neighbour) while the kernel has no entry for them; raise \
             net.ipv4.neigh.default.gc_thresh3 (and gc_thresh2) above the number of real \
             servers on link (xlbd makes the entries again when it sees such drops)"
        );
        assert!(table_full_message("ipv6", &unresolved.table_full["ipv6"])
            .contains("the next hop of 1 real server (fd00::1) is not kept resolved"));
    }

    #[tokio::test]
    async fn requests_are_done_in_order_and_settled_says_when() {
        let resolver = FakeResolver::default();
        let next_hops = NextHops::start(resolver.clone()).expect("started");
        assert!(
            next_hops.settled(Duration::ZERO).await,
            "nothing asked is settled"
        );
        resolver.hold(true);
        next_hops.keep_resolved(addrs(&["10.0.0.12", "10.0.0.11"]));
        next_hops.keep_resolved(addrs(&["10.0.0.13"]));
        next_hops.keep_resolved(BTreeSet::new());
        assert!(
            !next_hops.settled(Duration::from_millis(50)).await,
            "a held resolver has done nothing"
        );
        resolver.hold(false);
        assert!(next_hops.settled(Duration::from_secs(10)).await);
        let asked = resolver.asked();
        assert_eq!(
            asked.iter().collect::<BTreeSet<_>>(),
            addrs(&["10.0.0.11", "10.0.0.12", "10.0.0.13"])
                .iter()
                .collect(),
            "every address once: {asked:?}"
        );
        assert_eq!(asked.len(), 3, "{asked:?}");
    }

    #[tokio::test]
    async fn a_resolver_that_fails_does_not_stop_the_thread() {
        struct Failing(FakeResolver);
        impl Resolver for Failing {
            fn keep_resolved(&mut self, addr: IpAddr) -> Result<(), NeighbourError> {
                self.0.keep_resolved(addr)?;
                Err(NeighbourError::NoRoute {
                    addr,
                    source: std::io::Error::from_raw_os_error(libc::ENETUNREACH),
                })
            }
        }
        let resolver = FakeResolver::default();
        let next_hops = NextHops::start(Failing(resolver.clone())).expect("started");
        next_hops.keep_resolved(addrs(&["10.0.0.11"]));
        next_hops.keep_resolved(addrs(&["10.0.0.12"]));
        assert!(next_hops.settled(Duration::from_secs(10)).await);
        assert_eq!(resolver.asked().len(), 2);
    }
}
