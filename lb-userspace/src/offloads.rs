//! Offloads that hand the balancer merged super-packets in generic mode, turned off while it is
//! attached there and restored when it is detached.
//!
//! In generic (skb) mode XDP runs on socket buffers, after the receive offloads: a packet merged
//! by GRO or LRO, or a TSO/GSO buffer that came whole through a veth, reaches the balancer as
//! one packet of up to 64 KiB, which a tunneled service cannot forward (it answers "fragmentation
//! needed", and the sender's TCP, whose segments are small enough, keeps sending them: the upload
//! stalls). The kernel already skips GRO on the interface that holds the generic program, and
//! turns its LRO and hardware GRO off (without turning them back on at detach); it does nothing
//! about the devices below it, nor about a veth's peer. So, for an interface attached in generic
//! mode, xlbd turns off:
//! - GRO, LRO and hardware GRO (`rx-gro`, `rx-lro`, `rx-gro-hw`) on the interface and on the
//!   devices whose receive path feeds it: a VLAN's, macvlan's or ipvlan's lower device, a bridge's
//!   or bond's ports, and theirs in turn;
//! - segmentation offloads (TSO, GSO of UDP, SCTP and lists) on the peer of each veth among them,
//!   when that peer is in xlbd's network namespace, so that its stack sends segments (what the
//!   kernel does itself for a native program on a veth); a peer in another namespace is out of
//!   reach: xlbd says so in a warning that names the setting.
//!
//! What was on before is recorded in a file beside the state file, before anything is changed,
//! and turned on again when the last interface that needed it is detached (`--detach-on-exit`,
//! `xlbd detach`, or a restart in native mode). A restarted xlbd finds the record and keeps it:
//! it never records as original what it turned off itself.
//!
//! [`Record`] and [`receive_path`] are pure; the rest reads and changes the kernel's state
//! (`ethtool` for the features, rtnetlink for the links).

mod ethtool;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::neighbour::{NeighbourError, Netlink};

/// The receive offloads that merge packets: turned off on the receive path.
pub const RECEIVE: [&str; 3] = ["rx-gro", "rx-lro", "rx-gro-hw"];

/// The segmentation offloads of a veth peer that send buffers larger than a packet through the
/// veth (the kernel's `NETIF_F_GSO_SOFTWARE`, which it clears on the peer of a veth with a native
/// program): turned off on the peers in xlbd's namespace.
pub const PEER_SEGMENTATION: [&str; 8] = [
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
    "tx-tcp6-segmentation",
    "tx-tcp-accecn-segmentation",
    "tx-sctp-segmentation",
    "tx-udp-segmentation",
    "tx-gso-list",
];

/// Why the offloads could not be read, changed or recorded.
#[derive(Debug, Error)]
pub enum OffloadError {
    /// The interfaces could not be listed.
    #[error("listing the interfaces")]
    Links(#[source] NeighbourError),
    /// The interface is not there.
    #[error("there is no interface {iface}")]
    NoInterface {
        /// The interface.
        iface: String,
    },
    /// The features of a device could not be read or changed.
    #[error("{what} the offload features of {device} (SIOCETHTOOL)")]
    Features {
        /// "reading" or "changing".
        what: &'static str,
        /// The device.
        device: String,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },
    /// The record is another network namespace's.
    #[error(
        "the record of changed offloads {} is another network namespace's (net:[{theirs}], this \
         is net:[{ours}]): give the xlbd of each namespace a state file of its own (--state-file)",
        .path.display()
    )]
    OtherNamespace {
        /// The file.
        path: PathBuf,
        /// The namespace it was written in.
        theirs: u64,
        /// This thread's namespace.
        ours: u64,
    },
    /// The record of what was changed could not be read or written.
    #[error("{what} the record of changed offloads {}", .path.display())]
    Record {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a device is to the interface the balancer is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The interface itself.
    Attached,
    /// A device whose receive path feeds it (a VLAN's lower device, a bridge's port, ...).
    Lower,
    /// The peer of a veth of the receive path: what it sends arrives as it was sent.
    VethPeer,
}

impl Role {
    /// The features turned off on a device of this role.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Role::Attached | Role::Lower => &RECEIVE,
            Role::VethPeer => &PEER_SEGMENTATION,
        }
    }
}

/// A device of an interface's receive path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// What it is to the interface.
    pub role: Role,
}

/// An interface's receive path: the devices to change, and the veths whose peer is out of reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceivePath {
    /// The devices, the interface first.
    pub devices: Vec<Device>,
    /// The veths of the path whose peer is in another network namespace.
    pub foreign_peers: Vec<String>,
}

/// What [`receive_path`] needs to know of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// Its kind (`veth`, `vlan`, `bridge`, ...; none for a physical device).
    pub kind: Option<String>,
    /// `IFLA_LINK`: a VLAN's or macvlan's lower device, a veth's peer.
    pub link: Option<u32>,
    /// Whether `link` is in another network namespace (`IFLA_LINK_NETNSID`).
    pub link_elsewhere: bool,
    /// `IFLA_MASTER`: the bridge or bond it is a port of.
    pub controller: Option<u32>,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Self {
        let mut link = Link {
            ifindex: message.header.index,
            ..Link::default()
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Link(index) => link.link = Some(*index),
                LinkAttribute::LinkNetNsId(_) => link.link_elsewhere = true,
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind_name(kind)),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".to_owned(),
        InfoKind::Vlan => "vlan".to_owned(),
        InfoKind::MacVlan => "macvlan".to_owned(),
        InfoKind::MacVtap => "macvtap".to_owned(),
        InfoKind::IpVlan => "ipvlan".to_owned(),
        InfoKind::IpVtap => "ipvtap".to_owned(),
        InfoKind::Bridge => "bridge".to_owned(),
        InfoKind::Bond => "bond".to_owned(),
        other => other.to_string(),
    }
}

/// The devices of the receive path of `iface` among `links`: the interface, the ports of a bridge
/// or bond, the lower device of a VLAN, macvlan or ipvlan (in this namespace), and so on down;
/// the peer of every veth among them (or its name among the foreign peers). `None` when there is
/// no such interface.
pub fn receive_path(links: &[Link], iface: &str) -> Option<ReceivePath> {
    let start = links.iter().find(|l| l.name == iface)?;
    let mut path = ReceivePath::default();
    let mut seen = BTreeSet::from([start.ifindex]);
    let mut queue = vec![(start, Role::Attached)];
    while let Some((link, role)) = queue.pop() {
        path.devices.push(Device {
            name: link.name.clone(),
            ifindex: link.ifindex,
            role,
        });
        if role == Role::VethPeer {
            continue;
        }
        let mut below: Vec<(&Link, Role)> = links
            .iter()
            .filter(|l| l.controller == Some(link.ifindex))
            .map(|l| (l, Role::Lower))
            .collect();
        let by_index = |index| links.iter().find(|l| l.ifindex == index);
        match (link.kind.as_deref(), link.link) {
            (Some("vlan" | "macvlan" | "macvtap" | "ipvlan" | "ipvtap"), Some(lower))
                if !link.link_elsewhere =>
            {
                below.extend(by_index(lower).map(|l| (l, Role::Lower)));
            }
            (Some("veth"), _) if link.link_elsewhere => path.foreign_peers.push(link.name.clone()),
            (Some("veth"), Some(peer)) => below.extend(by_index(peer).map(|l| (l, Role::VethPeer))),
            _ => {}
        }
        // Depth first, in the order of the links.
        for (l, role) in below.into_iter().rev() {
            if seen.insert(l.ifindex) {
                queue.push((l, role));
            }
        }
    }
    Some(path)
}

/// A device as found before the balancer was attached: which of its role's features are on and
/// can be changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// The features to turn off.
    pub on: BTreeSet<String>,
}

/// Features of one device to turn on or off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    /// The device's name.
    pub name: String,
    /// Its index, to tell a device that was made again under the same name.
    pub ifindex: u32,
    /// The features.
    pub features: Vec<String>,
    /// On (restore) or off.
    pub on: bool,
}

/// Offloads that xlbd turned off on one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The device's name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// The features that were on before xlbd turned them off.
    pub features: BTreeSet<String>,
    /// The interfaces attached in generic mode that need them off.
    pub for_ifaces: BTreeSet<String>,
}

/// What xlbd turned off and must turn on again: the file beside the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The network namespace of the devices (the inode of its `ns/net`): device names and
    /// indexes mean something only there.
    #[serde(default)]
    pub netns: Option<u64>,
    /// The devices.
    pub held: Vec<Held>,
}

impl Record {
    /// `iface` is attached in generic mode and `observed` is its receive path as it was found:
    /// records what is on (unless already recorded: what a restarted xlbd finds off may be its
    /// own doing) and says what to turn off; devices that `iface` held and that left its path
    /// are released (see [`Record::release`]). Returns the switches off, then the restores.
    pub fn hold(&mut self, iface: &str, observed: &[Observed]) -> (Vec<Switch>, Vec<Switch>) {
        let on_path = |held: &Held| {
            observed
                .iter()
                .any(|o| o.name == held.name && o.ifindex == held.ifindex)
        };
        let restores = self.release_where(
            |held| held.for_ifaces.contains(iface) && !on_path(held),
            &[iface.to_owned()],
        );
        let mut off = Vec::new();
        for device in observed {
            let held = self
                .held
                .iter_mut()
                .find(|h| h.name == device.name && h.ifindex == device.ifindex);
            match held {
                Some(held) => {
                    held.for_ifaces.insert(iface.to_owned());
                    held.features.extend(device.on.iter().cloned());
                }
                None if device.on.is_empty() => continue,
                None => self.held.push(Held {
                    name: device.name.clone(),
                    ifindex: device.ifindex,
                    features: device.on.clone(),
                    for_ifaces: BTreeSet::from([iface.to_owned()]),
                }),
            }
            if !device.on.is_empty() {
                off.push(Switch {
                    name: device.name.clone(),
                    ifindex: device.ifindex,
                    features: device.on.iter().cloned().collect(),
                    on: false,
                });
            }
        }
        (off, restores)
    }

    /// `ifaces` are detached (every interface when `None`): the devices no other interface needs
    /// off any more leave the record, and their features are to be turned on again.
    pub fn release(&mut self, ifaces: Option<&[String]>) -> Vec<Switch> {
        match ifaces {
            Some(ifaces) => self.release_where(
                |held| ifaces.iter().any(|i| held.for_ifaces.contains(i)),
                ifaces,
            ),
            None => {
                let all: Vec<String> = self
                    .held
                    .iter()
                    .flat_map(|h| h.for_ifaces.iter().cloned())
                    .collect();
                self.release_where(|_| true, &all)
            }
        }
    }

    /// Takes `ifaces` off the devices `which` selects; those left needed by none are restored.
    fn release_where(&mut self, which: impl Fn(&Held) -> bool, ifaces: &[String]) -> Vec<Switch> {
        let mut restores = Vec::new();
        self.held.retain_mut(|held| {
            if !which(held) {
                return true;
            }
            for iface in ifaces {
                held.for_ifaces.remove(iface);
            }
            if !held.for_ifaces.is_empty() {
                return true;
            }
            restores.push(Switch {
                name: held.name.clone(),
                ifindex: held.ifindex,
                features: held.features.iter().cloned().collect(),
                on: true,
            });
            false
        });
        restores
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The record of changed offloads kept beside `state_file`: `state.json` → `state.offloads.json`.
pub fn record_path(state_file: &Path) -> PathBuf {
    let stem = state_file
        .file_stem()
        .map_or_else(|| "state".into(), |s| s.to_string_lossy().into_owned());
    state_file.with_file_name(format!("{stem}.offloads.json"))
}

/// The network namespace of the calling thread: the inode of its `ns/net`.
fn this_netns(path: &Path) -> Result<u64, OffloadError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|source| OffloadError::Record {
            what: "telling the network namespace of",
            path: path.to_owned(),
            source,
        })
}

/// The record at `path`, which must be this network namespace's; an empty one when there is no
/// file.
fn read_record(path: &Path) -> Result<Record, OffloadError> {
    let record = read_any_record(path)?;
    let ours = this_netns(path)?;
    match record.netns {
        Some(theirs) if theirs != ours && !record.is_empty() => Err(OffloadError::OtherNamespace {
            path: path.to_owned(),
            theirs,
            ours,
        }),
        _ => Ok(Record {
            netns: Some(ours),
            ..record
        }),
    }
}

/// The record at `path`, of whatever namespace; an empty one when there is no file.
fn read_any_record(path: &Path) -> Result<Record, OffloadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
        Err(source) => {
            return Err(OffloadError::Record {
                what: "reading",
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| OffloadError::Record {
        what: "reading",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Writes the record (removes the file when nothing is held), through a temporary file, so
/// that a crash leaves the old record or the new one.
fn write_record(path: &Path, record: &Record) -> Result<(), OffloadError> {
    let error = |source| OffloadError::Record {
        what: "writing",
        path: path.to_owned(),
        source,
    };
    if record.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(error(e)),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let text = serde_json::to_string_pretty(record)
        .map_err(std::io::Error::other)
        .map_err(error)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// The links of this network namespace.
fn links() -> Result<Vec<(Link, LinkMessage)>, OffloadError> {
    let messages = Netlink::open()
        .and_then(|mut netlink| netlink.links())
        .map_err(OffloadError::Links)?;
    Ok(messages
        .into_iter()
        .map(|m| (Link::from_message(&m), m))
        .collect())
}

/// The receive path of `iface` and what is on along it, read before the balancer is attached
/// (the kernel turns the interface's LRO and hardware GRO off when a generic program comes).
#[derive(Clone, Debug)]
pub struct Before {
    iface: String,
    path: ReceivePath,
    observed: Vec<Observed>,
}

/// Reads the receive path of `iface` and the features on along it.
pub fn observe(iface: &str) -> Result<Before, OffloadError> {
    let links: Vec<Link> = links()?.into_iter().map(|(l, _)| l).collect();
    let path = receive_path(&links, iface).ok_or_else(|| OffloadError::NoInterface {
        iface: iface.to_owned(),
    })?;
    let mut observed = Vec::new();
    for device in &path.devices {
        let features =
            ethtool::features(&device.name).map_err(|source| OffloadError::Features {
                what: "reading",
                device: device.name.clone(),
                source,
            })?;
        let on = features
            .iter()
            .filter(|f| {
                f.active && f.changeable && device.role.features().contains(&f.name.as_str())
            })
            .map(|f| f.name.clone())
            .collect();
        observed.push(Observed {
            name: device.name.clone(),
            ifindex: device.ifindex,
            on,
        });
    }
    Ok(Before {
        iface: iface.to_owned(),
        path,
        observed,
    })
}

/// Whether the balancer's program on `message`'s link runs in generic mode.
fn generic(message: &LinkMessage) -> bool {
    message.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().any(|x| {
            matches!(
                x,
                LinkXdp::Attached(XdpAttached::SocketBuffer) | LinkXdp::SkbProgId(_)
            )
        }),
        _ => false,
    })
}

/// Turns features on or off; a feature the kernel kept as it was is logged.
fn apply(switch: &Switch) -> Result<(), OffloadError> {
    let changes: Vec<(&str, bool)> = switch
        .features
        .iter()
        .map(|f| (f.as_str(), switch.on))
        .collect();
    let what = if switch.on { "restoring" } else { "changing" };
    let error = |what| {
        move |source| OffloadError::Features {
            what,
            device: switch.name.clone(),
            source,
        }
    };
    ethtool::set_features(&switch.name, &changes).map_err(error(what))?;
    let now = ethtool::features(&switch.name).map_err(error("reading"))?;
    let kept: Vec<&str> = now
        .iter()
        .filter(|f| switch.features.contains(&f.name) && f.active != switch.on)
        .map(|f| f.name.as_str())
        .collect();
    if !kept.is_empty() {
        tracing::warn!(
            device = %switch.name,
            features = %kept.join(" "),
            "the kernel kept these features {} on the device",
            if switch.on { "off" } else { "on" }
        );
    }
    Ok(())
}

/// The index of the device named `name` now, if there is one.
fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Turns the recorded features of each switch back on, where the device is still the one that
/// was changed; says what it did in the log and returns it.
fn restore(restores: &[Switch]) -> Vec<Switch> {
    let mut done = Vec::new();
    for switch in restores {
        if ifindex(&switch.name) != Some(switch.ifindex) {
            tracing::info!(
                device = %switch.name,
                "the device whose offloads xlbd turned off is gone (or was made again with its \
                 defaults): nothing to restore"
            );
            continue;
        }
        match apply(switch) {
            Ok(()) => {
                tracing::info!(
                    device = %switch.name,
                    features = %switch.features.join(" "),
                    "offloads turned on again, as they were before xlbd attached in generic mode"
                );
                done.push(switch.clone());
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::error_chain(&e), "restoring offloads")
            }
        }
    }
    done
}

/// After the balancer was attached to `before`'s interface: in generic mode, turns the
/// offloads of its receive path off (recorded first in `record`), and warns about veth peers
/// out of reach; in native mode, gives back what an earlier generic attachment held.
pub fn after_attach(record: &Path, before: &Before) -> Result<(), OffloadError> {
    let iface = before.iface.as_str();
    let is_generic = links()?
        .iter()
        .find(|(l, _)| l.name == iface)
        .is_some_and(|(_, m)| generic(m));
    let mut held = read_record(record)?;
    if !is_generic {
        let restores = held.release(Some(&[iface.to_owned()]));
        write_record(record, &held)?;
        restore(&restores);
        return Ok(());
    }
    for peer in &before.path.foreign_peers {
        tracing::warn!(
            iface,
            veth = %peer,
            "{peer} is a veth whose peer is in another network namespace, out of xlbd's reach: \
             in generic mode, the TSO/GSO buffers its peer sends (or forwards after GRO) arrive \
             here whole, as super-packets that a tunneled service answers with 'fragmentation \
             needed', and uploads through it stall. Turn segmentation off on the peer \
             (ethtool -K PEER tso off gso off) or attach in native mode (--xdp-mode native), \
             where the kernel does it itself"
        );
    }
    let (off, restores) = held.hold(iface, &before.observed);
    // Recorded before anything changes: a crash in between leaves what to restore.
    write_record(record, &held)?;
    restore(&restores);
    for switch in &off {
        apply(switch)?;
        tracing::info!(
            iface,
            device = %switch.name,
            features = %switch.features.join(" "),
            "generic mode: offloads that would hand the balancer merged super-packets turned \
             off (restored on detach)"
        );
    }
    Ok(())
}

/// `ifaces` were detached (every interface when `None`): turns back on what no attached
/// interface needs off any more. Returns what was restored.
pub fn after_detach(record: &Path, ifaces: Option<&[String]>) -> Result<Vec<Switch>, OffloadError> {
    let mut held = read_record(record)?;
    let restores = held.release(ifaces);
    if restores.is_empty() {
        return Ok(Vec::new());
    }
    let done = restore(&restores);
    write_record(record, &held)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(name: &str, ifindex: u32, on: &[&str]) -> Observed {
        Observed {
            name: name.to_owned(),
            ifindex,
            on: on.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn switch(name: &str, ifindex: u32, features: &[&str], on: bool) -> Switch {
        Switch {
            name: name.to_owned(),
            ifindex,
            features: features.iter().map(|s| (*s).to_owned()).collect(),
            on,
        }
    }

    fn link(name: &str, ifindex: u32, kind: Option<&str>) -> Link {
        Link {
            name: name.to_owned(),
            ifindex,
            kind: kind.map(str::to_owned),
            ..Link::default()
        }
    }

    #[test]
    fn what_was_on_is_recorded_turned_off_and_restored_at_detach() {
        let mut record = Record::default();
        let (off, restores) = record.hold(
            "eth0",
            &[
                observed("eth0", 2, &["rx-gro", "rx-lro"]),
                observed("eth1", 3, &[]),
            ],
        );
        assert_eq!(off, vec![switch("eth0", 2, &["rx-gro", "rx-lro"], false)]);
        assert!(restores.is_empty());
        assert_eq!(
            record.held.len(),
            1,
            "a device with nothing on is not recorded"
        );
        assert_eq!(
            record.release(Some(&["eth0".to_owned()])),
            vec![switch("eth0", 2, &["rx-gro", "rx-lro"], true)]
        );
        assert!(record.is_empty());
    }

    #[test]
    fn a_restarted_xlbd_keeps_the_original_settings_and_not_its_own() {
        let mut record = Record::default();
        record.hold("eth0", &[observed("eth0", 2, &["rx-gro"])]);
        let saved = serde_json::to_string(&record).expect("serialize");
        // The restarted daemon reads the record back and finds GRO off (its own doing).
        let mut restarted: Record = serde_json::from_str(&saved).expect("parse");
        let (off, restores) = restarted.hold("eth0", &[observed("eth0", 2, &[])]);
        assert!(off.is_empty() && restores.is_empty());
        assert_eq!(
            restarted.release(None),
            vec![switch("eth0", 2, &["rx-gro"], true)],
            "GRO was on before the first xlbd: it comes back"
        );
        // Someone turned LRO on meanwhile: off again, and on again at detach.
        let mut record = Record::default();
        record.hold("eth0", &[observed("eth0", 2, &["rx-gro"])]);
        let (off, _) = record.hold("eth0", &[observed("eth0", 2, &["rx-lro"])]);
        assert_eq!(off, vec![switch("eth0", 2, &["rx-lro"], false)]);
        assert_eq!(
            record.release(None),
            vec![switch("eth0", 2, &["rx-gro", "rx-lro"], true)]
        );
    }

    #[test]
    fn a_device_under_two_interfaces_comes_back_when_the_last_one_is_detached() {
        let mut record = Record::default();
        record.hold(
            "eth0.100",
            &[
                observed("eth0.100", 5, &["rx-gro"]),
                observed("eth0", 2, &["rx-gro"]),
            ],
        );
        // The second VLAN finds eth0 already off: it shares the record.
        let (off, _) = record.hold(
            "eth0.200",
            &[
                observed("eth0.200", 6, &["rx-gro"]),
                observed("eth0", 2, &[]),
            ],
        );
        assert_eq!(off, vec![switch("eth0.200", 6, &["rx-gro"], false)]);
        assert_eq!(
            record.release(Some(&["eth0.100".to_owned()])),
            vec![switch("eth0.100", 5, &["rx-gro"], true)],
            "eth0 is still needed off by eth0.200"
        );
        assert_eq!(
            record.release(Some(&["eth0.200".to_owned()])),
            vec![
                switch("eth0", 2, &["rx-gro"], true),
                switch("eth0.200", 6, &["rx-gro"], true)
            ]
        );
        assert!(record.is_empty());
    }

    #[test]
    fn a_device_that_left_the_path_or_a_native_attachment_gives_back_what_was_held() {
        let mut record = Record::default();
        record.hold(
            "br0",
            &[
                observed("br0", 4, &["rx-gro"]),
                observed("port1", 7, &["rx-gro"]),
            ],
        );
        // port1 left the bridge before the restart.
        let (off, restores) = record.hold("br0", &[observed("br0", 4, &[])]);
        assert!(off.is_empty());
        assert_eq!(restores, vec![switch("port1", 7, &["rx-gro"], true)]);
        // A device made again under the same name is another device.
        let (_, restores) = record.hold("br0", &[observed("br0", 9, &["rx-gro"])]);
        assert_eq!(restores, vec![switch("br0", 4, &["rx-gro"], true)]);
        // Another interface's release leaves br0's devices alone.
        assert!(record.release(Some(&["eth5".to_owned()])).is_empty());
        assert_eq!(record.held.len(), 1);
    }

    #[test]
    fn a_record_of_another_network_namespace_is_refused_and_an_empty_one_is_removed() {
        let dir = std::env::temp_dir().join(format!("xlb-offloads-{}", std::process::id()));
        let path = dir.join("state.offloads.json");
        let mut record = Record::default();
        record.hold("eth0", &[observed("eth0", 2, &["rx-gro"])]);
        write_record(&path, &record).expect("write");
        let mut read = read_record(&path).expect("read back");
        assert_eq!(read.held, record.held);
        assert!(read.netns.is_some(), "the namespace is recorded");
        read.netns = read.netns.map(|n| n + 1);
        std::fs::write(&path, serde_json::to_string(&read).expect("json")).expect("write");
        let refused = read_record(&path).expect_err("another namespace's record");
        assert!(
            crate::errors::error_chain(&refused).contains("another network namespace's"),
            "{refused}"
        );
        write_record(&path, &Record::default()).expect("write an empty record");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_record_lives_beside_the_state_file() {
        assert_eq!(
            record_path(Path::new("/run/xlb/state.json")),
            PathBuf::from("/run/xlb/state.offloads.json")
        );
        assert_eq!(
            record_path(Path::new("/tmp/lab/ns1.json")),
            PathBuf::from("/tmp/lab/ns1.offloads.json")
        );
    }

    #[test]
    fn the_receive_path_goes_down_to_ports_and_lower_devices_and_over_to_veth_peers() {
        let mut links = vec![
            link("lo", 1, None),
            link("eth0", 2, None),
            link("br0", 3, Some("bridge")),
            link("veth0", 4, Some("veth")),
            link("veth1", 5, Some("veth")),
            link("ext0", 6, Some("veth")),
            link("vlan100", 7, Some("vlan")),
        ];
        links[3].controller = Some(3);
        links[3].link = Some(5);
        links[4].link = Some(4);
        links[5].controller = Some(3);
        links[5].link = Some(2);
        links[5].link_elsewhere = true;
        links[6].link = Some(3);
        let path = receive_path(&links, "vlan100").expect("vlan100");
        let names: Vec<(&str, Role)> = path
            .devices
            .iter()
            .map(|d| (d.name.as_str(), d.role))
            .collect();
        assert_eq!(
            names,
            vec![
                ("vlan100", Role::Attached),
                ("br0", Role::Lower),
                ("veth0", Role::Lower),
                ("veth1", Role::VethPeer),
                ("ext0", Role::Lower),
            ]
        );
        assert_eq!(path.foreign_peers, vec!["ext0".to_owned()]);
        // A physical interface is alone on its path; a veth's peer is not followed further.
        let alone = receive_path(&links, "eth0").expect("eth0");
        assert_eq!(alone.devices.len(), 1);
        let veth = receive_path(&links, "veth1").expect("veth1");
        assert_eq!(veth.devices.len(), 2);
        assert_eq!(veth.devices[1].role, Role::VethPeer);
        assert!(receive_path(&links, "nope").is_none());
    }
}
