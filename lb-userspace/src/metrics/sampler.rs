//! The metrics' timer: every [`EVERY`], counts the connections of each real server (the one walk
//! of the connection table, however many scrapers there are) and adds each service's traffic to
//! the history. Scrapes serve the last sample.
//!
//! The walk holds the daemon's lock, as the runtime reads the table through its data path; once
//! a second rather than once per scrape.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{watch, Mutex},
    time::MissedTickBehavior,
};

use super::history::History;
use crate::{
    control::Shared,
    dataplane::DataplaneError,
    runtime::{monotonic_ns, ConnectionCounts},
    status::Listing,
};

/// How often the sampler runs.
pub const EVERY: Duration = Duration::from_secs(1);

/// How many samples the history keeps: five minutes at [`EVERY`].
pub const HISTORY_POINTS: usize = 300;

/// The last sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampled {
    /// Active and inactive connections by real server.
    pub connections: Arc<ConnectionCounts>,
    /// Each service's traffic, a point per sample.
    pub traffic: Arc<History>,
}

impl Default for Sampled {
    fn default() -> Self {
        Sampled {
            connections: Arc::default(),
            traffic: Arc::new(History::new(HISTORY_POINTS, EVERY)),
        }
    }
}

impl Sampled {
    /// Takes in a new sample: the connection counts, and the listing's totals (taken at
    /// `now_ns`) as the next point of the history. The history is changed in place unless a
    /// scrape still holds it.
    pub fn record(&mut self, connections: ConnectionCounts, now_ns: u64, listing: &Listing) {
        self.connections = Arc::new(connections);
        Arc::make_mut(&mut self.traffic).record(now_ns, listing);
    }
}

/// Samples `shared` every `every` into `sampled`, until the task is dropped.
pub async fn run(shared: Arc<Mutex<Shared>>, every: Duration, sampled: watch::Sender<Sampled>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let taken = {
            let shared = shared.lock().await;
            sample(&shared)
        };
        match taken {
            Ok((connections, now_ns, listing)) => sampled.send_modify(|s| {
                s.record(connections, now_ns, &listing);
            }),
            Err(e) => tracing::warn!(error = %e, "metrics: counting the connections"),
        }
    }
}

/// The connection counts, and the listing with them (for its totals) and when it was taken.
fn sample(shared: &Shared) -> Result<(ConnectionCounts, u64, Listing), DataplaneError> {
    let connections = shared.runtime.connection_counts()?;
    let now_ns = monotonic_ns();
    let listing = shared.runtime.listing_with(&shared.rates, &connections)?;
    Ok((connections, now_ns, listing))
}
