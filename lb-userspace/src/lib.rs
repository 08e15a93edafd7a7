//! xlb's userspace.
//!
//! Layout:
//! - [`program`]: the compiled XDP object and loading it.
//! - [`maglev`]: the Maglev lookup-table builder (pure).
//! - [`dataplane`]: the only code that touches the BPF maps; a typed API over them.

mod batch;
pub mod dataplane;
pub mod maglev;
pub mod program;
