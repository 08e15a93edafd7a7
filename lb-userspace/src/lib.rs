//! xlb's userspace.
//!
//! Layout:
//! - [`program`]: the compiled XDP object and loading it.
//! - [`maglev`]: the Maglev lookup-table builder (pure).
//! - [`dataplane`]: the only code that touches the BPF maps; a typed API over them.
//! - [`state`]: the desired state (virtual services, real servers) and ipvsadm's operations on it (pure).
//! - [`ipvsadm`]: xlbadm's ipvsadm-compatible command line, listings and save/restore format (pure).
//! - [`neighbour`]: keeping real servers' next hops resolved in the kernel.
//! - [`sync`]: installing a desired state into the data path.

mod batch;
pub mod dataplane;
pub mod ipvsadm;
pub mod maglev;
pub mod neighbour;
pub mod program;
pub mod state;
pub mod sync;
