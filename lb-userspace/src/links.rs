//! Attaching an XDP program through a bpf_link pinned on bpffs, so that it stays attached after
//! the process exits, taking over such a pinned link atomically, and removing pinned links
//! (which detaches the program once no process holds them).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

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

/// What [`remove_pinned`] did with one pinned link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The interface the link was for (its pin's name without `link_`).
    pub iface: String,
    /// The pin that was removed.
    pub path: PathBuf,
    /// The kernel's id of the link.
    pub link_id: u32,
    /// The id of the program the link held.
    pub program_id: u32,
    /// The link outlived its pin: another process holds it open (a running xlbd, or a tool
    /// that opened the pin), and the program stays attached until that process closes it.
    pub still_held: bool,
}

/// Why a pinned link could not be removed.
#[derive(Debug, Error)]
pub enum RemoveError {
    /// The pin directory could not be listed.
    #[error("listing the pin directory {}", .dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The pin is not a link the kernel can open (not a bpf_link, or a stale file).
    #[error("{} is not a pinned bpf_link", .path.display())]
    Open {
        /// The pin.
        path: PathBuf,
        /// The error.
        #[source]
        source: LinkError,
    },
    /// Removing the pin failed.
    #[error("removing the pin {}", .path.display())]
    Unlink {
        /// The pin.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How long the kernel may take to free a link once its last reference is gone (the release of
/// a pin's reference runs on a work queue).
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Removes the pinned links `pin_dir/link_<iface>` of `ifaces` (every `link_*` there when
/// `ifaces` is empty), which takes the XDP program off each interface once no process holds the
/// link: the way to take the data path down after the daemon was killed (`ip link set dev IF
/// xdp off` cannot replace a bpf_link). The program's and maps' pins are left alone, so that a
/// daemon started later adopts them (the connection table with them). An interface with no pin
/// is left out of the answer; a pin directory that does not exist has no link.
pub fn remove_pinned(pin_dir: &Path, ifaces: &[String]) -> Result<Vec<Removed>, RemoveError> {
    let names: Vec<String> = if ifaces.is_empty() {
        let entries = match std::fs::read_dir(pin_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RemoveError::List {
                    dir: pin_dir.to_owned(),
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("link_")
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    } else {
        ifaces.to_vec()
    };
    let mut removed = Vec::new();
    for iface in names {
        let path = pin_dir.join(format!("link_{iface}"));
        if !path.exists() {
            continue;
        }
        let info = PinnedLink::from_pin(&path)
            .map(FdLink::from)
            .and_then(|link| link.info())
            .map_err(|source| RemoveError::Open {
                path: path.clone(),
                source,
            })?;
        // Our descriptor is closed here (the FdLink dropped above): only the pin and other
        // processes hold the link now.
        std::fs::remove_file(&path).map_err(|source| RemoveError::Unlink {
            path: path.clone(),
            source,
        })?;
        let still_held = wait_released(info.id());
        removed.push(Removed {
            iface,
            path,
            link_id: info.id(),
            program_id: info.program_id(),
            still_held,
        });
    }
    Ok(removed)
}

/// Waits until the kernel has freed link `id`; whether it is still there after [`RELEASE_WAIT`].
fn wait_released(id: u32) -> bool {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        let loaded = aya::programs::loaded_links()
            .flatten()
            .any(|link| link.id() == id);
        if !loaded || Instant::now() >= deadline {
            return loaded;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
