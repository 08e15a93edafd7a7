//! Whether pinned maps have this xlbd's layout, so that no daemon ever reads a map written with
//! another.
//!
//! A daemon pins, beside its maps, `XLB_LAYOUT`: a one-element array holding lb-common's layout
//! versions ([`lb_common::version`]) of the maps and of the connection table. Before it opens any
//! pinned map, a new daemon compares them with its own, and each pinned map's kind and key and
//! value sizes with those of the maps in its own object ([`assess`]):
//! - the same: the maps are adopted as they are, and only the program changes (an upgrade that
//!   keeps the layout: the program in each pinned link is replaced atomically);
//! - another layout whose connection table is still this xlbd's: [`Pinned::Upgrade`], a new map
//!   set is built and the connections are carried over ([`crate::upgrade`]);
//! - a connection table of another layout: [`Pinned::Incompatible`], refused;
//! - the record of an upgrade that did not finish: [`Pinned::Interrupted`].
//!
//! Maps pinned by an xlbd from before the record carry none: their kinds and sizes decide.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapError, MapInfo};
use lb_common::{maps as names, version};
use thiserror::Error;

use crate::program;

/// The record's pin name in the pin directory.
pub const RECORD: &str = "XLB_LAYOUT";

/// Maps earlier layouts pinned that this one does not have: unpinned with the others when pins
/// of such a layout are replaced.
pub const RETIRED_MAPS: [&str; 1] = [names::RETIRED_CLOCK];

/// Every map of the object, as pinned.
pub const ALL_MAPS: [&str; 24] = [
    names::SERVICES,
    names::VIP_ADDRS,
    names::VIP_FILTER,
    names::SERVICE_EPOCHS,
    names::TAIL_CALLS,
    names::DEBUG_EVENT,
    names::ICMP_REPLY,
    names::NEXT_HOP_REQUEST,
    names::MAGLEV,
    names::REALS,
    names::CONNTRACK,
    names::SERVICE_STATS,
    names::REAL_STATS,
    names::GLOBAL_STATS,
    names::CONFIG,
    names::EGRESS,
    names::NEXT_HOPS,
    names::SCHED_CURSORS,
    names::PERSIST,
    names::PERSIST_SETTINGS,
    names::REAL_CONNS,
    names::REAL_WEIGHTS,
    names::EMBRYONIC,
    names::REAL_LIMITS,
];

/// Layout versions, as the record holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// The maps as a whole ([`version::LAYOUT`]).
    pub maps: u32,
    /// The connection table ([`version::CONNTRACK_LAYOUT`]).
    pub conntrack: u32,
}

impl Versions {
    /// This xlbd's.
    pub const CURRENT: Self = Self {
        maps: version::LAYOUT,
        conntrack: version::CONNTRACK_LAYOUT,
    };

    /// Written while a daemon moves to a new map set: what is pinned then is not a whole set.
    pub const UPGRADING: Self = Self {
        maps: u32::MAX,
        conntrack: u32::MAX,
    };
}

/// What a pin directory holds, against this xlbd's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// No maps.
    Empty,
    /// Maps of this layout: adopt them.
    Same,
    /// Maps of another layout whose connection table has this one's: build a new map set and
    /// carry the connections over. `why` says what differs.
    Upgrade {
        /// What differs.
        why: String,
    },
    /// Maps whose connection table this xlbd cannot read.
    Incompatible {
        /// What differs.
        why: String,
    },
    /// An upgrade to a new map set stopped half-way: the pinned maps are not a whole set.
    Interrupted,
}

/// Why the layout could not be told or recorded.
#[derive(Debug, Error)]
pub enum LayoutError {
    /// A pinned map could not be inspected.
    #[error("inspecting the pinned map {path}")]
    Inspect {
        /// Its pin.
        path: PathBuf,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The embedded object could not be parsed for its maps.
    #[error("reading the maps of the embedded XDP object")]
    Object(#[source] aya_obj::ParseError),
    /// The record could not be written.
    #[error("writing the layout record {path}")]
    Write {
        /// Its pin.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A map's kind and sizes: (`bpf_map_type`, key size, value size).
type Geometry = (u32, u32, u32);

/// The maps of this xlbd's object that are pinned, with their geometry.
fn ours() -> Result<BTreeMap<String, Geometry>, LayoutError> {
    let object = aya_obj::Object::parse(program::object()).map_err(LayoutError::Object)?;
    Ok(object
        .maps
        .iter()
        .filter(|(name, _)| ALL_MAPS.contains(&name.as_str()))
        .map(|(name, map)| {
            (
                name.clone(),
                (map.map_type(), map.key_size(), map.value_size()),
            )
        })
        .collect())
}

/// Compares what is pinned in `dir` with this xlbd's layout, opening no map for its contents
/// except the record.
pub fn assess(dir: &Path) -> Result<Pinned, LayoutError> {
    if !dir.join(names::SERVICES).exists() {
        return Ok(Pinned::Empty);
    }
    let record = read(dir);
    if record == Some(Ok(Versions::UPGRADING)) {
        return Ok(Pinned::Interrupted);
    }
    let ours = ours()?;
    let mut pinned = BTreeMap::new();
    for name in ours.keys() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| LayoutError::Inspect {
            path: path.clone(),
            source,
        })?;
        let kind = info.map_type().map_or(u32::MAX, |kind| kind as u32);
        pinned.insert(name.clone(), (kind, info.key_size(), info.value_size()));
    }
    Ok(compare(record, &pinned, &ours))
}

/// The verdict from the record (`None`: none pinned; `Some(Err)`: unreadable) and the geometry
/// of the pinned maps against ours.
fn compare(
    record: Option<Result<Versions, String>>,
    pinned: &BTreeMap<String, Geometry>,
    ours: &BTreeMap<String, Geometry>,
) -> Pinned {
    let record = match record {
        Some(Err(why)) => return Pinned::Incompatible { why },
        Some(Ok(record)) => Some(record),
        None => None,
    };
    let mut conntrack = Vec::new();
    let mut others = Vec::new();
    for (name, our) in ours {
        let why = match pinned.get(name) {
            None => format!("{name} is not pinned"),
            Some(theirs) if theirs == our => continue,
            Some((kind, key, value)) => format!(
                "{name} is of kind {kind} with {key}-byte keys and {value}-byte values, this \
                 xlbd's of kind {} with {}-byte keys and {}-byte values",
                our.0, our.1, our.2
            ),
        };
        if name == names::CONNTRACK {
            conntrack.push(why);
        } else {
            others.push(why);
        }
    }
    if let Some(record) = record {
        if record.conntrack != Versions::CURRENT.conntrack {
            conntrack.insert(
                0,
                format!(
                    "connection table layout {}, this xlbd's {}",
                    record.conntrack,
                    Versions::CURRENT.conntrack
                ),
            );
        }
        if record.maps != Versions::CURRENT.maps {
            others.insert(
                0,
                format!(
                    "layout {}, this xlbd's {}",
                    record.maps,
                    Versions::CURRENT.maps
                ),
            );
        }
    }
    if !conntrack.is_empty() {
        conntrack.extend(others);
        return Pinned::Incompatible {
            why: conntrack.join("; "),
        };
    }
    if others.is_empty() {
        Pinned::Same
    } else {
        Pinned::Upgrade {
            why: others.join("; "),
        }
    }
}

/// The record pinned in `dir`: `None` when there is none, `Err` with the reason when it cannot be
/// read as one.
pub fn read(dir: &Path) -> Option<Result<Versions, String>> {
    let path = dir.join(RECORD);
    if !path.exists() {
        return None;
    }
    let value = MapData::from_pin(&path)
        .and_then(|data| Array::<MapData, [u32; 2]>::try_from(Map::Array(data)))
        .and_then(|array| array.get(&0, 0));
    Some(
        value
            .map(|[maps, conntrack]| Versions { maps, conntrack })
            .map_err(|e| format!("the layout record {} cannot be read: {e}", path.display())),
    )
}

/// Pins `versions` as the record of `dir`, replacing the one there in one step (it is pinned
/// under another name, then renamed).
pub fn write(dir: &Path, versions: Versions) -> Result<(), LayoutError> {
    let path = dir.join(RECORD);
    // bpffs refuses names with a dot.
    let staged = dir.join(format!("{RECORD}_NEW_{}", std::process::id()));
    let err = |source| LayoutError::Write {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&staged);
    let fd = create_record_map().map_err(err)?;
    let data = MapData::from_fd(fd).map_err(|e| err(std::io::Error::other(e)))?;
    data.pin(&staged)
        .map_err(|e| err(std::io::Error::other(e)))?;
    let written = Array::<MapData, [u32; 2]>::try_from(Map::Array(data))
        .and_then(|mut array| array.set(0, [versions.maps, versions.conntrack], 0))
        .map_err(|e| err(std::io::Error::other(e)))
        .and_then(|()| std::fs::rename(&staged, &path).map_err(err));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    written
}

/// Removes the record of `dir`, if any.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(RECORD)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A new one-element array of two `u32`s (BPF_MAP_CREATE): aya creates only the maps of an
/// object.
fn create_record_map() -> std::io::Result<OwnedFd> {
    /// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel takes the rest as
    /// zero.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut map_name = [0u8; 16];
    map_name[..RECORD.len()].copy_from_slice(RECORD.as_bytes());
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    // SAFETY: BPF_MAP_CREATE reads `size_of::<MapCreate>()` bytes of a live, initialised value
    // and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(entries: &[(&str, Geometry)]) -> BTreeMap<String, Geometry> {
        entries
            .iter()
            .map(|(name, geometry)| (name.to_string(), *geometry))
            .collect()
    }

    const CT: (&str, Geometry) = (names::CONNTRACK, (9, 40, 24));
    const SVC: (&str, Geometry) = (names::SERVICES, (1, 20, 16));

    #[test]
    fn the_same_maps_and_versions_are_adopted_with_or_without_a_record() {
        let ours = maps(&[CT, SVC]);
        assert_eq!(compare(None, &ours, &ours), Pinned::Same);
        assert_eq!(
            compare(Some(Ok(Versions::CURRENT)), &ours, &ours),
            Pinned::Same
        );
    }

    #[test]
    fn another_map_layout_with_the_same_connection_table_is_an_upgrade() {
        let ours = maps(&[CT, SVC]);
        let theirs = maps(&[CT, (names::SERVICES, (1, 20, 12))]);
        let Pinned::Upgrade { why } = compare(None, &theirs, &ours) else {
            panic!("not an upgrade");
        };
        assert_eq!(
            why,
            "XLB_SERVICES is of kind 1 with 20-byte keys and 12-byte values, this xlbd's of kind \
             1 with 20-byte keys and 16-byte values"
        );
        let older = Versions {
            maps: Versions::CURRENT.maps + 1,
            ..Versions::CURRENT
        };
        let Pinned::Upgrade { why } = compare(Some(Ok(older)), &ours, &ours) else {
            panic!("not an upgrade");
        };
        let expected = format!(
            "layout {}, this xlbd's {}",
            Versions::CURRENT.maps + 1,
            Versions::CURRENT.maps
        );
        assert!(why.starts_with(&expected), "{why}");
        // A map this xlbd has and the pins lack is a change of layout too.
        assert!(matches!(
            compare(None, &maps(&[CT]), &ours),
            Pinned::Upgrade { .. }
        ));
    }

    #[test]
    fn a_connection_table_of_another_layout_is_never_read() {
        let ours = maps(&[CT, SVC]);
        let theirs = maps(&[(names::CONNTRACK, (9, 40, 32)), SVC]);
        assert!(matches!(
            compare(None, &theirs, &ours),
            Pinned::Incompatible { .. }
        ));
        let other = Versions {
            conntrack: 7,
            ..Versions::CURRENT
        };
        let Pinned::Incompatible { why } = compare(Some(Ok(other)), &ours, &ours) else {
            panic!("not refused");
        };
        assert_eq!(why, "connection table layout 7, this xlbd's 1");
        assert!(matches!(
            compare(Some(Err("unreadable".into())), &ours, &ours),
            Pinned::Incompatible { .. }
        ));
    }
}
