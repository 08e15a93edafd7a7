//! The identities the desired state is built from, below everything else in it: what names a
//! virtual service ([`ServiceAddr`]: protocol, address, port) and how packets reach a real server
//! ([`Forwarding`]). The health settings and the rest of the state both use them; [`crate::state`]
//! names them for everyone else.

use std::{
    cmp::Ordering,
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// The transport protocol of a virtual service (`-t` or `-u`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `-t`, `--tcp-service`.
    Tcp,
    /// `-u`, `--udp-service`.
    Udp,
}

/// What identifies a virtual service: protocol, address and port, as ipvsadm's service-address.
/// Port 0 is ipvsadm's "all ports" service, which must be persistent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ServiceAddr {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The virtual IP.
    pub addr: IpAddr,
    /// The virtual port; 0 = every port of the VIP.
    pub port: u16,
}

impl fmt::Display for ServiceAddr {
    /// As ipvsadm prints an address and port: `10.0.0.1:80`, `[2001:db8::1]:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

impl Ord for ServiceAddr {
    /// ipvsadm's listing order (libipvs `ipvs_cmp_services`): address family first, so that all
    /// IPv4 services come before IPv6 ones, then protocol (TCP before UDP), address and port.
    fn cmp(&self, other: &Self) -> Ordering {
        let key = |s: &Self| (s.addr.is_ipv6(), s.protocol, s.addr, s.port);
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for ServiceAddr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// How packets reach a real server. Both leave the reply to go straight back to the client; NAT
/// (ipvsadm's `-m`) is not supported because the balancer never sees replies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// `-g`: rewrite the destination MAC (LVS-DR); ipvsadm prints it as "Route". The default,
    /// as in ipvsadm.
    #[default]
    DirectRoute,
    /// `-i`: IP-in-IP encapsulation (LVS-TUN); ipvsadm prints it as "Tunnel".
    Tunnel,
}
