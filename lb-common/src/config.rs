//! Settings of the data path that userspace changes at run time.

use bytemuck::{Pod, Zeroable};

/// Emit data-path debug events (why a packet was passed or dropped, which server a flow got)
/// through aya-log. Off by default: the hot path then pays one load and one branch.
pub const CONFIG_F_DEBUG_EVENTS: u32 = 1 << 0;

/// The data path's run-time settings, index 0 of [`crate::maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DataplaneConfig {
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Source address of IPv4 tunnels, network order; 0: the egress interface's, from the FIB.
    pub tunnel_src_v4: u32,
    /// Source address of IPv6 tunnels, network order; all zero: the egress interface's.
    pub tunnel_src_v6: [u32; 4],
}

crate::user_pod!(DataplaneConfig);
