//! The real-server decapsulator: loads `xlb_decap`, tells it which addresses are this host's
//! tunnel endpoints, and attaches it to an interface through a pinned link, so that it stays after
//! the command exits (`xlbd decap --iface IF`); `--remove` takes it away again.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    EbpfLoader,
};
use lb_common::{maps as names, stats::DecapStat, ServiceKey, FAMILY_V4, FAMILY_V6};
use thiserror::Error;

use crate::{links, program};

/// What went wrong with the decapsulator.
#[derive(Debug, Error)]
pub enum DecapError {
    /// Loading the object failed.
    #[error("loading the decapsulator (is this root, on a kernel with BTF?)")]
    Load {
        /// The error.
        #[source]
        source: aya::EbpfError,
    },
    /// The binary holds no object (built with AYA_BUILD_SKIP=1).
    #[error("this binary was built with AYA_BUILD_SKIP=1 and holds no XDP object")]
    NoObject,
    /// The program or a map is missing or of the wrong kind.
    #[error("the decapsulator object is broken: {what}")]
    Object {
        /// What is wrong.
        what: String,
    },
    /// A map operation failed.
    #[error("{action}")]
    Map {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
    /// Attaching failed.
    #[error("attaching the decapsulator to {iface}")]
    Attach {
        /// The interface.
        iface: String,
        /// The error.
        #[source]
        source: links::PinnedLinkError,
    },
    /// There is no interface of that name.
    #[error("there is no interface {iface} in this network namespace")]
    NoInterface {
        /// The interface.
        iface: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// Reading the interface's addresses failed.
    #[error("reading the addresses of {iface}")]
    Addresses {
        /// The interface.
        iface: String,
        /// The error.
        #[source]
        source: crate::neighbour::NeighbourError,
    },
    /// A file operation on the pin directory failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The key of a tunnel endpoint address.
pub fn endpoint_key(addr: IpAddr) -> ServiceKey {
    match addr {
        IpAddr::V4(v4) => ServiceKey {
            addr: [u32::from(v4).to_be(), 0, 0, 0],
            port: 0,
            proto: 0,
            family: FAMILY_V4,
        },
        IpAddr::V6(v6) => ServiceKey {
            addr: bytemuck::cast(v6.octets()),
            port: 0,
            proto: 0,
            family: FAMILY_V6,
        },
    }
}

/// The addresses of an interface but for link-local ones, as `ip addr show dev IF` lists them
/// (over rtnetlink).
pub fn interface_addresses(iface: &str) -> Result<Vec<IpAddr>, DecapError> {
    let ifindex =
        nix::net::if_::if_nametoindex(iface).map_err(|source| DecapError::NoInterface {
            iface: iface.to_owned(),
            source,
        })?;
    crate::neighbour::Netlink::open()
        .and_then(|mut netlink| netlink.global_addresses(ifindex))
        .map_err(|source| DecapError::Addresses {
            iface: iface.to_owned(),
            source,
        })
}

/// The loaded decapsulator.
pub struct Decapsulator {
    ebpf: aya::Ebpf,
}

impl Decapsulator {
    /// Loads the program for the tunnel endpoints `addrs`; with a pin directory, its maps are
    /// pinned there (or the pinned ones adopted, their endpoint set replaced).
    pub fn load(addrs: &[IpAddr], pin_dir: Option<&Path>) -> Result<Self, DecapError> {
        let object = program::decap_object();
        if object.is_empty() {
            return Err(DecapError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DecapError::Io {
                action: "creating",
                path: dir.to_path_buf(),
                source,
            })?;
            loader
                .map_pin_path(names::DECAP_ADDRS, dir.join(names::DECAP_ADDRS))
                .map_pin_path(names::DECAP_STATS, dir.join(names::DECAP_STATS));
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|source| DecapError::Load { source })?;
        let mut endpoints: HashMap<MapData, ServiceKey, u32> = ebpf
            .take_map(names::DECAP_ADDRS)
            .ok_or_else(|| DecapError::Object {
                what: format!("no map {}", names::DECAP_ADDRS),
            })?
            .try_into()
            .map_err(|source| DecapError::Map {
                action: "opening the endpoint map",
                source,
            })?;
        // Replace the endpoint set: remove what is no longer wanted, add what is.
        let wanted: Vec<ServiceKey> = addrs.iter().copied().map(endpoint_key).collect();
        let present: Vec<ServiceKey> = endpoints.keys().filter_map(Result::ok).collect();
        for key in present.iter().filter(|k| !wanted.contains(k)) {
            endpoints.remove(key).map_err(|source| DecapError::Map {
                action: "removing a tunnel endpoint",
                source,
            })?;
        }
        for key in &wanted {
            endpoints
                .insert(key, 1, 0)
                .map_err(|source| DecapError::Map {
                    action: "adding a tunnel endpoint",
                    source,
                })?;
        }
        let mut this = Self { ebpf };
        this.program_mut()?.load().map_err(|e| DecapError::Object {
            what: format!("the verifier refused the decapsulator: {e}"),
        })?;
        Ok(this)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, DecapError> {
        self.ebpf
            .program_mut(names::PROG_DECAP)
            .ok_or_else(no_program)?
            .try_into()
            .map_err(not_xdp)
    }

    /// The program, e.g. for `test_run`.
    pub fn program(&self) -> Result<&Xdp, DecapError> {
        self.ebpf
            .program(names::PROG_DECAP)
            .ok_or_else(no_program)?
            .try_into()
            .map_err(not_xdp)
    }

    /// Attaches through the link pinned at `pin_dir/link_<iface>` (taking an existing one over).
    /// Returns whether an existing attachment was replaced.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: XdpMode,
        pin_dir: &Path,
    ) -> Result<bool, DecapError> {
        let link = pin_dir.join(format!("link_{iface}"));
        links::attach_pinned(self.program_mut()?, iface, mode, &link).map_err(|source| {
            DecapError::Attach {
                iface: iface.to_owned(),
                source,
            }
        })
    }
}

fn no_program() -> DecapError {
    DecapError::Object {
        what: format!("no program {}", names::PROG_DECAP),
    }
}

fn not_xdp(e: aya::programs::ProgramError) -> DecapError {
    DecapError::Object {
        what: e.to_string(),
    }
}

/// Attaches the decapsulator to `iface` for the tunnel endpoints `addrs` (pins in `pin_dir`).
/// Running it again updates the addresses and replaces the program atomically.
pub fn attach(
    iface: &str,
    mode: XdpMode,
    addrs: &[IpAddr],
    pin_dir: &Path,
) -> Result<DecapReport, DecapError> {
    let mut decap = Decapsulator::load(addrs, Some(pin_dir))?;
    let replaced = decap.attach_pinned(iface, mode, pin_dir)?;
    Ok(DecapReport {
        replaced,
        endpoints: addrs.to_vec(),
    })
}

/// What [`attach`] did.
#[derive(Debug)]
pub struct DecapReport {
    /// An existing attachment was taken over (the program replaced atomically).
    pub replaced: bool,
    /// The tunnel endpoints now in force.
    pub endpoints: Vec<IpAddr>,
}

/// Detaches the decapsulator from `iface`; when no interface keeps it, removes its maps' pins.
pub fn remove(iface: &str, pin_dir: &Path) -> Result<(), DecapError> {
    let link = pin_dir.join(format!("link_{iface}"));
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DecapError::Io {
                action: "removing",
                path: link,
                source: e,
            })
        }
        _ => {}
    }
    let links_left = std::fs::read_dir(pin_dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("link_"))
        })
        .unwrap_or(false);
    if !links_left {
        for name in [names::DECAP_ADDRS, names::DECAP_STATS] {
            let _ = std::fs::remove_file(pin_dir.join(name));
        }
        let _ = std::fs::remove_dir(pin_dir);
    }
    Ok(())
}

/// The decapsulator's counters (from its pinned map), summed over the CPUs.
pub fn counters(pin_dir: &Path) -> Result<Vec<(DecapStat, u64)>, DecapError> {
    let path = pin_dir.join(names::DECAP_STATS);
    let data = MapData::from_pin(&path).map_err(|source| DecapError::Map {
        action: "opening the decapsulator's counters",
        source,
    })?;
    let map: PerCpuArray<MapData, u64> =
        aya::maps::Map::PerCpuArray(data)
            .try_into()
            .map_err(|source| DecapError::Map {
                action: "opening the decapsulator's counters",
                source,
            })?;
    DecapStat::ALL
        .iter()
        .map(|&stat| {
            let values = map
                .get(&(stat as u32), 0)
                .map_err(|source| DecapError::Map {
                    action: "reading the decapsulator's counters",
                    source,
                })?;
            Ok((stat, values.iter().copied().fold(0u64, u64::wrapping_add)))
        })
        .collect()
}
