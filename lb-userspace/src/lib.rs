//! xlb's userspace.
//!
//! Layout:
//! - [`program`]: the compiled XDP object and loading it.
//! - [`maglev`]: the Maglev lookup-table builder (pure).
//! - [`sequence`]: the `rr`/`wrr` sequences and where each CPU starts walking them (pure).
//! - [`capacity`]: how many services and real servers a balancer holds; the pool of Maglev tables (pure).
//! - [`dataplane`]: the only code that touches the balancer's BPF maps; a typed API over them.
//! - [`datapath`]: the data path as the runtime sees it (a trait), over the maps or in memory (`fake`).
//! - [`decap`]: the real-server decapsulator (`xlbd decap`).
//! - [`links`]: attaching XDP programs through pinned bpf_links.
//! - [`bpffs`]: whether a pin directory's pins outlive this process (`ip netns exec`).
//! - [`layout`]: whether pinned maps have this xlbd's layout (the record pinned beside them).
//! - [`upgrade`]: moving a running balancer to a new map set, its connections carried over.
//! - [`state`]: the desired state (virtual services, real servers, `Change`, typed health settings)
//!   and ipvsadm's operations on it (pure; no flag syntax).
//! - [`ipvsadm`]: xlbadm's ipvsadm-compatible command line, listings and save/restore format (pure).
//! - [`neighbour`]: rtnetlink: real servers' next hops and neighbour entries, the addresses of
//!   an interface (or of them all) and links.
//! - [`next_hops`]: the neighbour thread that keeps real servers' next hops resolved, outside the
//!   daemon's lock.
//! - [`offloads`]: GRO/LRO (and a veth peer's TSO/GSO) off where the balancer runs in generic
//!   mode, restored when it is detached.
//! - [`convert`]: conversions from the desired state to data-path keys and entries.
//! - [`plan`]: the steps between two desired states (pure).
//! - [`expiry`]: which connection-table entries and persistent clients idle out, decided once a
//!   second (pure).
//! - [`runtime`]: the daemon's state; applies changes whole or not at all, saves them.
//! - [`config`]: the configuration file, checked by xlbadm's rules.
//! - [`control`]: the control socket between xlbadm and xlbd.
//! - [`daemon`]: the daemon as a library (`daemon::run`): start-up, adoption, reload, serving;
//!   `daemon::handover`: on exit, the wait for the VIPs that are local addresses to leave.
//! - [`health`]: health checks of real servers and what they mean for the tables.
//! - [`status`]: the status model (services, servers, counters, health, connections) that `-L` and the metrics render.
//! - [`metrics`]: Prometheus metrics and the status page over HTTP (axum), from samples taken
//!   every second.

mod batch;
pub mod bpffs;
pub mod capacity;
pub mod config;
pub mod conn_filter;
pub mod control;
pub mod convert;
pub mod daemon;
pub mod datapath;
pub mod dataplane;
pub mod decap;
pub mod errors;
pub mod expiry;
pub mod health;
pub mod ipvsadm;
pub mod layout;
pub mod links;
pub mod maglev;
mod mapped;
pub mod metrics;
pub mod neighbour;
pub mod next_hops;
pub mod offloads;
pub mod owners;
pub mod plan;
pub mod program;
pub mod runtime;
pub mod sequence;
pub mod state;
pub mod status;
pub mod upgrade;
