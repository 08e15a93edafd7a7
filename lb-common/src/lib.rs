//! Types shared by the xlb XDP program (`lb-ebpf`) and its userspace (`lb-userspace`).
//!
//! Every BPF map key and value lives here once, `#[repr(C)]` with explicit padding so that the
//! kernel and userspace agree on the layout byte for byte (the `layout` tests pin the sizes).
//! Addresses and ports that travel in packets are kept in network byte order, as they sit in the
//! packet, so the data path never swaps them; each such field says so.
//!
//! Layout:
//! - [`maps`]: the names of the maps and the program, as userspace finds them in the object.
//! - [`limits`]: table sizes.
//! - [`service`], [`real`], [`conntrack`], [`persist`], [`stats`], [`config`]: the map types.
//! - [`conn_filter`]: the filter that spares a new flow's SYN the connection table's lookup.
//! - [`hash`]: the flow hash, which must be the same on every balancer and on both sides.
//! - [`version`]: the maps' layout versions, pinned beside them for the next daemon.
#![no_std]

pub mod config;
pub mod conn_filter;
pub mod conntrack;
pub mod hash;
pub mod limits;
pub mod maps;
pub mod persist;
pub mod real;
pub mod service;
pub mod stats;
pub mod version;

pub use config::DataplaneConfig;
pub use conntrack::{Connection, FlowKey};
pub use persist::{PersistKey, PersistSettings, Persistent};
pub use real::{Forwarding, NextHop, RealLimits, RealServer};
pub use service::{Service, ServiceKey};
pub use stats::{Counters, CpuGlobals, GlobalCounters, GlobalStat};

/// Address family tag used in keys: IPv4.
pub const FAMILY_V4: u8 = 4;
/// Address family tag used in keys: IPv6.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Implements `aya::Pod` for the userspace side; the kernel side needs nothing.
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], has no padding (checked by bytemuck's derive) and
            // every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use user_pod;

#[cfg(test)]
mod layout {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn map_types_have_the_sizes_the_data_path_expects() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<Service>(), 16);
        assert_eq!(size_of::<service::ServiceCacheSlot>(), 48);
        assert_eq!(size_of::<RealServer>(), 24);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Connection>(), 24);
        assert_eq!(size_of::<Counters>(), 24);
        assert_eq!(size_of::<DataplaneConfig>(), 24);
        assert_eq!(size_of::<NextHop>(), 48);
        assert_eq!(size_of::<PersistKey>(), 24);
        assert_eq!(size_of::<Persistent>(), 16);
        assert_eq!(size_of::<PersistSettings>(), 24);
        assert_eq!(size_of::<RealLimits>(), 16);
        assert!(align_of::<Connection>() <= 8);
    }
}
