//! Health checks of real servers (issue 6): what to check, what the results mean for the
//! tables, and the engine that runs the checks.
//!
//! Layout:
//! - [`machine`]: the per-target state machine (rise, fall, slow start) and the per-service
//!   weights with quorum and sorry server (pure).
//! - [`checker`]: the checks: TCP, HTTP(S), send/expect, exec.
//! - [`half_open`]: the half-open TCP check's raw-socket SYN prober.
//! - [`via_vip`]: the check through the forwarding path (`--check-via-vip`): a SYN to the VIP
//!   sent to the real server's MAC or inside its tunnel.
//! - [`engine`]: runs the checks on schedule, records the results, reports the changes; the
//!   half-open checks of an engine in one batch (one task, one `sendmmsg` per grid step).
//! - [`bench`]: the engine's cost for many targets, for `cargo xtask bench`.
//!
//! What to check is the desired state's ([`crate::state::health`]); the flags that set it are
//! [`crate::ipvsadm::check_flags`].
//!
//! Wiring in the daemon: keep a [`ServiceHealth`](crate::state::health::ServiceHealth) per
//! service and the [`CheckOptions`](crate::state::health::CheckOptions) of each real server
//! that has its own; after every change of either or of the desired state, build the targets with [`engine::Target::for_service`] (refusing
//! the change on error) and pass all of them to [`engine::Engine::update_targets`], then build
//! every service's table from [`engine::Engine::effective_service`] rather than from its
//! configured weights (a target may start down, and has no event for that). On each
//! [`engine::HealthEvent`], rebuild the event's service the same way; while its `ramp_ends` is
//! set, rebuild it again about every second.

pub mod bench;
pub mod checker;
pub mod engine;
pub mod half_open;
pub mod machine;
mod process;
pub mod via_vip;
