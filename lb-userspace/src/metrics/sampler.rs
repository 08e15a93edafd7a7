//! The metrics' timer: every [`EVERY`], counts the connections of each real server (the one walk
//! of the connection table, however many scrapers there are) and adds each service's traffic to
//! the history. Scrapes serve the last sample.
//!
//! xlbd's connection table is pinned and swept every second off the daemon's lock (expiring idle
//! entries): the sampler takes the counts of the last sweep ([`ConnectionTable::Swept`]), or, when
//! xlbd does not sweep the pins, walks the table through a handle of its own, on a blocking
//! thread, without the daemon's lock (which a table of a million flows would hold for seconds).
//! The lock is taken only to read the counters, one lookup per service and server. Without a pin,
//! the walk goes through the runtime, under the lock.

use std::{path::PathBuf, sync::Arc, time::Duration};

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{Connection, FlowKey};

use thiserror::Error;
use tokio::{
    sync::{watch, Mutex},
    time::MissedTickBehavior,
};

use super::history::History;
use crate::{
    control::Shared,
    dataplane::DataplaneError,
    runtime::{count_connections, monotonic_ns, ConnectionCounts},
    state::timeouts::ConnectionTimeouts,
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
#[derive(Clone, Debug)]
pub enum ConnectionTable {
    /// Through the runtime, under the daemon's lock.
    Runtime,
    /// The map pinned at this path (xlbd's `PIN_DIR/XLB_CONNTRACK`), without the lock.
    Pinned(PathBuf),
    /// No walk of its own: the counts of xlbd's last sweep of the connection table, which walks
    /// it every second anyway (`daemon`'s sweep of the pinned tables).
    Swept(watch::Receiver<Arc<ConnectionCounts>>),
}

/// Why a sample was not taken (the previous one stays in force).
#[derive(Debug, Error)]
pub enum SampleError {
    /// The runtime could not read the counters or the connection table.
    #[error("reading the data path")]
    Dataplane(#[from] DataplaneError),
    /// The pinned connection table could not be opened or read.
    #[error("reading the pinned connection table")]
    Pinned(#[from] MapError),
    /// The walk's thread ended without a result.
    #[error("walking the connection table")]
    Walk(#[from] tokio::task::JoinError),
}

/// A sample before it is recorded: the connection counts, when the counters were read, and the
/// listing with them.
type Sample = (ConnectionCounts, u64, Listing);

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
        match sample(&shared, &table).await {
            Ok((connections, now_ns, listing)) => sampled.send_modify(|s| {
                s.record(connections, now_ns, &listing);
            }),
            Err(e) => {
                // With its sources, down to the kernel's errno.
                let error = anyhow::Error::new(e);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "metrics: sampling the connections"
                );
            }
        }
    }
}

async fn sample(shared: &Mutex<Shared>, table: &ConnectionTable) -> Result<Sample, SampleError> {
    let connections = match table {
        ConnectionTable::Runtime => shared.lock().await.runtime.connection_counts()?,
        ConnectionTable::Pinned(path) => {
            let path = path.clone();
            let timeouts = shared.lock().await.runtime.desired().timeouts;
            tokio::task::spawn_blocking(move || walk_pinned(&path, &timeouts)).await??
        }
        ConnectionTable::Swept(counts) => counts.borrow().as_ref().clone(),
    };
    let shared = shared.lock().await;
    let now_ns = monotonic_ns();
    let listing = shared.runtime.listing_with(&shared.rates, &connections)?;
    Ok((connections, now_ns, listing))
}

/// Counts the connections in the table pinned at `path`, and in the embryonic table pinned
/// beside it when there is one, through handles of our own.
fn walk_pinned(
    path: &std::path::Path,
    timeouts: &ConnectionTimeouts,
) -> Result<ConnectionCounts, MapError> {
    let open = |path: &std::path::Path| {
        let map = Map::from_map_data(MapData::from_pin(path)?)?;
        HashMap::<_, FlowKey, Connection>::try_from(map)
    };
    let now_ns = monotonic_ns();
    let mut entries = open(path)?.iter().collect::<Result<Vec<_>, _>>()?;
    let embryonic = path.with_file_name(lb_common::maps::EMBRYONIC);
    if embryonic.exists() {
        for entry in open(&embryonic)?.iter() {
            let (key, mut conn) = entry?;
            conn.flags |= lb_common::conntrack::CONN_F_EMBRYONIC;
            entries.push((key, conn));
        }
    }
    Ok(count_connections(entries, now_ns, timeouts))
}
