//! Reading and setting an interface's offload features by name (`ethtool -k` / `ethtool -K`),
//! through the SIOCETHTOOL ioctl: ETHTOOL_GSSET_INFO and ETHTOOL_GSTRINGS for the names,
//! ETHTOOL_GFEATURES and ETHTOOL_SFEATURES for the bits.
//!
//! Written by hand because no maintained crate sets features: the `ethtool` crate of rust-netlink
//! (0.3) reads them over genetlink, but its emitter of feature bits is a `todo!()`, so it cannot
//! send `ETHTOOL_MSG_FEATURES_SET`. The ioctl is the one `ethtool -K` used before netlink, and
//! every kernel keeps it.

use std::os::fd::{AsRawFd as _, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// `ETHTOOL_GSTRINGS`: the names of a string set.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
/// `ETHTOOL_GSSET_INFO`: the sizes of string sets.
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// `ETHTOOL_GFEATURES`: the feature bits (available, requested, active, never changed).
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// `ETHTOOL_SFEATURES`: request feature bits.
const ETHTOOL_SFEATURES: u32 = 0x3b;
/// `ETH_SS_FEATURES`: the string set of the feature names.
const ETH_SS_FEATURES: u32 = 4;
/// `ETH_GSTRING_LEN`: a name's room in `ETHTOOL_GSTRINGS`' answer.
const ETH_GSTRING_LEN: usize = 32;

nix::ioctl_readwrite_bad!(siocethtool, libc::SIOCETHTOOL, libc::ifreq);

/// One feature of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Its name, as `ethtool -k` prints it in full (`rx-gro`, `tx-tcp-segmentation`).
    pub name: String,
    /// Whether it is on.
    pub active: bool,
    /// Whether it can be changed (not `[fixed]`).
    pub changeable: bool,
}

/// Runs one SIOCETHTOOL command on `iface` with `data` (the command's structure, its first word
/// the command).
fn ethtool(socket: &OwnedFd, iface: &str, data: &mut [u32]) -> nix::Result<i32> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= request.ifr_name.len() {
        return Err(nix::errno::Errno::ENAMETOOLONG);
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: `request` names the interface and points at `data`, which is as large as the
    // command's structure says (its callers size it from the counts the kernel gave), and lives
    // until the call returns.
    unsafe { siocethtool(socket.as_raw_fd(), &mut request) }
}

fn control_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// The names of the features, in the order of their bits.
fn feature_names(socket: &OwnedFd, iface: &str) -> nix::Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ethtool(socket, iface, &mut info)?;
    let count = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, data[len * ETH_GSTRING_LEN].
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool(socket, iface, &mut strings)?;
    let bytes: &[u8] = bytemuck::cast_slice(&strings[3..]);
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|name| {
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect())
}

/// Blocks of 32 feature bits for `count` features.
fn blocks(count: usize) -> usize {
    count.div_ceil(32)
}

/// The features of `iface`, by name.
pub fn features(iface: &str) -> nix::Result<Vec<Feature>> {
    let socket = control_socket()?;
    let names = feature_names(&socket, iface)?;
    let size = blocks(names.len());
    // struct ethtool_gfeatures: cmd, size, then per block available, requested, active,
    // never_changed.
    let mut data = vec![0u32; 2 + 4 * size];
    data[..2].copy_from_slice(&[ETHTOOL_GFEATURES, size as u32]);
    ethtool(&socket, iface, &mut data)?;
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(bit, name)| {
            let block = &data[2 + 4 * (bit / 32)..][..4];
            let mask = 1u32 << (bit % 32);
            Feature {
                name,
                active: block[2] & mask != 0,
                changeable: block[0] & mask != 0 && block[3] & mask == 0,
            }
        })
        .collect())
}

/// Asks for each named feature of `iface` on or off (`ethtool -K`). The kernel may keep a
/// feature as it was (another feature or the device's state holds it): read them again to know.
pub fn set_features(iface: &str, changes: &[(&str, bool)]) -> nix::Result<()> {
    let socket = control_socket()?;
    let names = feature_names(&socket, iface)?;
    let size = blocks(names.len());
    // struct ethtool_sfeatures: cmd, size, then per block valid, requested.
    let mut data = vec![0u32; 2 + 2 * size];
    data[..2].copy_from_slice(&[ETHTOOL_SFEATURES, size as u32]);
    for (name, on) in changes {
        let Some(bit) = names.iter().position(|n| n == name) else {
            return Err(nix::errno::Errno::EOPNOTSUPP);
        };
        let mask = 1u32 << (bit % 32);
        data[2 + 2 * (bit / 32)] |= mask;
        if *on {
            data[3 + 2 * (bit / 32)] |= mask;
        }
    }
    // A positive answer (ETHTOOL_F_WISH, ETHTOOL_F_UNSUPPORTED) says that not everything took:
    // the caller reads the features again.
    ethtool(&socket, iface, &mut data).map(drop)
}
