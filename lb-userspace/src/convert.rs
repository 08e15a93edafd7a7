//! Conversions from the desired state to the data path's keys and entries.

use std::net::IpAddr;

use crate::state::{Forwarding, Protocol, RealServer, ServiceAddr};
use lb_common::{ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

/// The data-path key of a service.
pub fn service_key(addr: &ServiceAddr) -> ServiceKey {
    let proto = match addr.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    match addr.addr {
        IpAddr::V4(v4) => ServiceKey::v4(u32::from(v4), addr.port, proto),
        IpAddr::V6(v6) => ServiceKey::v6(v6.octets(), addr.port, proto),
    }
}

/// The data-path entry of a real server.
pub fn real_entry(real: &RealServer) -> lb_common::RealServer {
    let forward = match real.forwarding {
        Forwarding::DirectRoute => lb_common::Forwarding::DirectRoute,
        Forwarding::Tunnel => lb_common::Forwarding::Tunnel,
    };
    let (addr, family) = match real.addr {
        IpAddr::V4(v4) => ([u32::from(v4).to_be(), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => (bytemuck::cast(v6.octets()), FAMILY_V6),
    };
    lb_common::RealServer {
        addr,
        family,
        forward: forward as u8,
        _pad: [0; 2],
    }
}

/// What makes a real server the same on every balancer: its address and port.
pub fn identity(real: &RealServer) -> Vec<u8> {
    let mut id = match real.addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    id.extend_from_slice(&real.port.to_be_bytes());
    id
}
