//! The metrics' timer: every [`EVERY`], counts the connections of each real server (the one walk
//! of the connection table, however many scrapers there are) and adds each service's traffic to
//! the history. Scrapes serve the last sample.
//!
//! xlbd's connection table is pinned: the sampler walks it through a handle of its own, on a
//! blocking thread, without the daemon's lock (which a table of a million flows would hold for
//! seconds). The lock is taken only to read the counters, one lookup per service and server.
//! Without a pin, the walk goes through the runtime, under the lock.

use std::{path::PathBuf, sync::Arc, time::Duration};

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{Connection, FlowKey};

use tokio::{
    sync::{watch, Mutex},
    time::MissedTickBehavior,
};

use super::history::History;
use crate::{
    control::Shared,
    dataplane::DataplaneError,
    runtime::{count_connections, monotonic_ns, ConnectionCounts},
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

/// Where the sampler reads the connection table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionTable {
    /// Through the runtime, under the daemon's lock.
    Runtime,
    /// The map pinned at this path (xlbd's `PIN_DIR/XLB_CONNTRACK`), without the lock.
    Pinned(PathBuf),
}

/// Samples `shared` (and `table`) every `every` into `sampled`, until the task is dropped.
pub async fn run(
    shared: Arc<Mutex<Shared>>,
    table: ConnectionTable,
    every: Duration,
    sampled: watch::Sender<Sampled>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let taken = match &table {
            ConnectionTable::Runtime => {
                let shared = shared.lock().await;
                shared
                    .runtime
                    .connection_counts()
                    .map_err(|e| e.to_string())
                    .and_then(|connections| {
                        totals(&shared, &connections)
                            .map(|(now_ns, listing)| (connections, now_ns, listing))
                    })
            }
            ConnectionTable::Pinned(path) => {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || walk_pinned(&path)).await {
                    Ok(Ok(connections)) => totals(&*shared.lock().await, &connections)
                        .map(|(now_ns, listing)| (connections, now_ns, listing)),
                    Ok(Err(e)) => Err(format!("reading the pinned connection table: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match taken {
            Ok((connections, now_ns, listing)) => sampled.send_modify(|s| {
                s.record(connections, now_ns, &listing);
            }),
            Err(e) => tracing::warn!(error = %e, "metrics: sampling the connections"),
        }
    }
}

/// The listing with `connections`, for its totals, and when its counters were read.
fn totals(shared: &Shared, connections: &ConnectionCounts) -> Result<(u64, Listing), String> {
    let now_ns = monotonic_ns();
    let listing = shared
        .runtime
        .listing_with(&shared.rates, connections)
        .map_err(|e: DataplaneError| e.to_string())?;
    Ok((now_ns, listing))
}

/// Counts the connections in the table pinned at `path`, through a handle of our own.
fn walk_pinned(path: &std::path::Path) -> Result<ConnectionCounts, MapError> {
    let map = Map::from_map_data(MapData::from_pin(path)?)?;
    let table = HashMap::<_, FlowKey, Connection>::try_from(map)?;
    let now_ns = monotonic_ns();
    let entries = table.iter().collect::<Result<Vec<_>, _>>()?;
    Ok(count_connections(entries, now_ns))
}
