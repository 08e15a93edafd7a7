//! ipvsadm compatibility: `xlbadm`'s command line, its listings and its save/restore format,
//! following ipvsadm's man page and source so that scripts and habits carry over. Pure: no I/O;
//! the binaries read arguments and stdin, talk to the daemon and print.
//!
//! - [`parse`]: a command line into a [`Command`].
//! - [`check_flags`]: xlb's health-check options (`--check …`, `--quorum`, …), spelled once.
//! - [`format`]: the `-L` listings from a [`Listing`](crate::status::Listing) snapshot.
//! - [`save`]: `-S` output from a [`DesiredState`](crate::state::DesiredState), `-R` input back.
//!
//! Where xlb departs from ipvsadm (default scheduler `mh`, no NAT, no firewall marks, restore is
//! all-or-nothing, DR/TUN ports must match instead of being overridden), the item concerned says so.

pub mod check_flags;
pub mod format;
pub mod parse;
pub mod save;

mod ports;

pub use format::{format_listing, ListError};
pub use parse::{parse, usage, Command, Invocation, ListOptions, ParseError};
pub use save::{restore, save, RestoreError, RestoreFailure};
