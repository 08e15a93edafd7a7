//! Metrics in Prometheus' text exposition format and a live status page, served over HTTP/1.1
//! (xlbd's `--metrics-listen`, loopback by default).
//!
//! Layout:
//! - [`prometheus`]: the exposition text of a [`Snapshot`] (pure).
//! - [`page`]: the HTML status page of a [`Snapshot`], with its traffic charts (pure).
//! - [`history`]: each service's traffic over the last minutes, a ring buffer of rates (pure).
//! - [`sampler`]: the timer that counts the connections and feeds the history, so that a scrape
//!   never walks the connection table.
//! - [`server`]: the HTTP server (axum on hyper), its routes, timeouts and connection limit.
//!
//! The daemon's state is locked only while a [`Snapshot`] is taken, never while rendering or
//! writing to a client, so that a slow scraper cannot hold up xlbadm or the health checks.
//! Counters come straight from the maps and are never reset here; `xlbadm -Z` zeroes them in the
//! maps, which Prometheus sees as a counter reset.

#[cfg(test)]
mod fixtures;
pub mod history;
pub mod page;
pub mod prometheus;
pub mod sampler;
pub mod server;

use std::{collections::BTreeMap, sync::Arc};

use lb_common::GlobalStat;
use thiserror::Error;
use tokio::{net::TcpListener, sync::Mutex};

use self::{
    history::History,
    sampler::Sampled,
    server::{serve_with, Limits},
};
pub use self::{
    page::render_status,
    prometheus::{render, METRICS_CONTENT_TYPE},
    sampler::ConnectionTable,
    server::DEFAULT_LISTEN,
};
use crate::{
    conn_filter::FilterState,
    control::Shared,
    dataplane::DataplaneError,
    health::engine::EngineStats,
    state::{health::ServiceHealth, ServiceAddr},
    status::Listing,
};

/// Why the daemon's numbers could not be read.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// A map could not be read.
    #[error("reading the data path's counters")]
    Dataplane(#[from] DataplaneError),
}

/// Everything one page shows, taken under the daemon's lock and rendered after it is released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Services and real servers with counters, connections (as last sampled), weights, rates
    /// and health.
    pub listing: Listing,
    /// Every global counter of the data path.
    pub globals: Vec<(GlobalStat, u64)>,
    /// The health engine's counters, when the daemon runs one.
    pub health: Option<EngineStats>,
    /// Each service's health settings (checks, quorum, sorry server), for the page.
    pub settings: BTreeMap<ServiceAddr, ServiceHealth>,
    /// Each service's traffic over the last minutes, for the page's charts.
    pub traffic: Arc<History>,
    /// The connection filter's state, when the data path has one.
    pub conn_filter: Option<FilterState>,
}

impl Snapshot {
    /// Reads the counters from the daemon's state; connection counts and traffic come from the
    /// last sample.
    pub fn of(shared: &mut Shared, sampled: &Sampled) -> Result<Self, MetricsError> {
        let listing = shared
            .runtime
            .listing_with(&shared.rates, &sampled.connections)?;
        let health = shared.runtime.health_stats();
        let globals = shared.runtime.dataplane().global_counters()?;
        let settings = shared
            .runtime
            .desired()
            .services
            .iter()
            .map(|s| (s.addr, s.health.clone()))
            .collect();
        let conn_filter = shared
            .runtime
            .datapath()
            .connection_filter()
            .map(|f| f.state());
        Ok(Self {
            listing,
            globals,
            health,
            settings,
            traffic: sampled.traffic.clone(),
            conn_filter,
        })
    }
}

/// Serves the daemon's metrics and status page on `listener`, and samples the connection counts
/// (from `table`) and the traffic every [`sampler::EVERY`], until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>, table: ConnectionTable) {
    let (sampled, samples) = tokio::sync::watch::channel(Sampled::default());
    let sampler = sampler::run(shared.clone(), table, sampler::EVERY, sampled);
    let server = serve_with(listener, Limits::default(), move || {
        let shared = shared.clone();
        let sample = samples.borrow().clone();
        // The guard lives only inside this future: it is released before anything is rendered
        // or written.
        async move { Snapshot::of(&mut *shared.lock().await, &sample) }
    });
    tokio::join!(sampler, server);
}
