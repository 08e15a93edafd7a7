//! The test harness shared by xlb's data-path and end-to-end tests.
//!
//! Layout:
//! - [`netns`]: network namespaces and veth links, removed even when a test panics.
//! - [`lab`]: the direct-routing lab of namespaces with real web servers.
//! - [`packet`]: test packets built byte by byte.
//! - [`routed`]: the routed tunneling lab (client, router, balancer, real servers behind it).
//! - [`daemon`]: running xlbd and xlbadm in a test namespace.
//! - [`ha`]: a second balancer, keepalived, and a client recording every request.
//! - [`fixture`]: running the XDP program through `BPF_PROG_TEST_RUN`.
//! - [`model`]: the README's table of what the data path does with each packet, as Rust.
//! - [`fuzz`]: generated frames through the data path, compared with the model.
//! - [`services`]: services and real servers set up through the dataplane API.
//! - [`scale`]: a large balancer's rules and namespace.
//! - [`hcbench`]: the health-check benchmark's lab (checker and servers on separate cores).
//! - [`soak`]: client load through the lab under churn (flaps, weights, services, reloads,
//!   restarts), failures attributed, xlbd's figures checked for growth.
//! - [`root`]: the guard that root-only tests call first.

pub mod cli;
pub mod daemon;
pub mod fixture;
pub mod fuzz;
pub mod ha;
pub mod hcbench;
pub mod lab;
pub mod model;
pub mod netns;
pub mod packet;
pub mod routed;
pub mod scale;
pub mod services;
pub mod soak;

/// Root-only tests are `#[ignore]`d so that a plain `cargo test` (as any user) runs the unit tests;
/// `cargo xtask test` runs them as root with `--ignored`. This guard turns a non-root run into a
/// clear failure instead of a confusing permission error.
pub mod root {
    /// Panics with a clear message unless the process runs as root.
    pub fn require() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test loads XDP programs and creates network namespaces: run it as root \
             (cargo xtask test does)"
        );
        super::netns::sweep_stale();
    }
}
