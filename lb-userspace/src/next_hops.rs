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
        for addr in addrs {
            if let Err(e) = resolver.keep_resolved(addr) {
                tracing::warn!(real = %addr, error = %error_chain(&e), "cannot keep the real server's next hop resolved");
            }
        }
        done.send_replace(number);
    }
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
