//! Attaching an XDP program through a bpf_link pinned on bpffs, so that it stays attached after
//! the process exits, and taking over such a pinned link atomically.

use std::path::Path;

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    xdp::XdpLink,
    ProgramError, Xdp, XdpMode,
};
use thiserror::Error;

/// Why a pinned attachment failed.
#[derive(Debug, Error)]
pub enum PinnedLinkError {
    /// Attaching the program failed.
    #[error("attaching the XDP program")]
    Attach {
        /// The error.
        #[source]
        source: ProgramError,
    },
    /// The attachment is not a bpf_link (the kernel is older than 5.9).
    #[error("the XDP attachment is not a bpf_link and cannot be pinned (Linux >= 5.9 needed)")]
    Link {
        /// The error.
        #[source]
        source: LinkError,
    },
    /// Pinning failed.
    #[error("pinning the link on bpffs")]
    Pin {
        /// The error.
        #[source]
        source: aya::pin::PinError,
    },
}

/// Attaches `program` to `iface` through the link pinned at `link_path`: when that pin exists, the
/// program it holds is replaced atomically (no packet meets the interface without a program);
/// otherwise a new link is made and pinned there. Returns whether an existing link was taken over.
pub fn attach_pinned(
    program: &mut Xdp,
    iface: &str,
    mode: XdpMode,
    link_path: &Path,
) -> Result<bool, PinnedLinkError> {
    if link_path.exists() {
        let adopted = PinnedLink::from_pin(link_path)
            .map_err(|e| e.to_string())
            .and_then(|pinned| XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string()))
            .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()));
        match adopted {
            Ok(_) => return Ok(true),
            Err(error) => {
                tracing::warn!(iface, %error, "cannot take over the pinned link: attaching anew");
                let _ = std::fs::remove_file(link_path);
            }
        }
    }
    let id = program
        .attach(iface, mode)
        .map_err(|source| PinnedLinkError::Attach { source })?;
    let link = program
        .take_link(id)
        .map_err(|source| PinnedLinkError::Attach { source })?;
    let fd_link = FdLink::try_from(link).map_err(|source| PinnedLinkError::Link { source })?;
    // The pin holds the link from now on; our descriptor closes when this value drops.
    fd_link
        .pin(link_path)
        .map_err(|source| PinnedLinkError::Pin { source })?;
    Ok(false)
}
