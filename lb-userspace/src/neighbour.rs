//! Keeping the kernel's neighbour entries of real servers resolved, and reading an interface's
//! addresses: rtnetlink, spoken with the netlink-packet-route / netlink-sys crates.
//!
//! The data path takes each next hop's MAC from the kernel's neighbour table and drops (counting
//! `drop_no_neighbour`) while there is none, so every real server's next hop gets a *managed*
//! neighbour entry (Linux >= 5.16): the kernel resolves it at once and keeps it resolved, without
//! waiting for traffic of its own to the server. An entry the operator made permanent (or a
//! noarp one) is left as it is.
//!
//! The same messages as `ip route get`, `ip neigh replace ... managed`, `ip addr show` and `ip link
//! show`, on one socket of the calling thread's network namespace, without a process per request.
//! The daemon makes the entries on a thread of its own, outside its state lock:
//! [`crate::next_hops`].

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use thiserror::Error;

/// Why a neighbour entry could not be set up, or addresses not read.
#[derive(Debug, Error)]
pub enum NeighbourError {
    /// The routing socket failed, or the kernel refused the request.
    #[error("{what} over rtnetlink")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's neighbour table for the family holds no more entries: it is at its
    /// `gc_thresh3`, which is 1024 by default, below the number of real servers a balancer may
    /// have on link.
    #[error("the kernel's neighbour table is full (net.{family}.neigh.default.gc_thresh3)")]
    TableFull {
        /// `ipv4` or `ipv6`, as in the sysctl's name.
        family: &'static str,
    },
    /// The kernel has no route to the server.
    #[error("no route to {addr}")]
    NoRoute {
        /// The server.
        addr: IpAddr,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// The next hop towards a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The gateway, or the server itself when it is on link.
    pub addr: IpAddr,
    /// The interface it is reached through.
    pub ifindex: u32,
    /// Whether the server is a local address (no neighbour to resolve).
    pub local: bool,
}

/// An address of an interface of the namespace: the kernel delivers what is sent to it locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddress {
    /// The address.
    pub addr: IpAddr,
    /// The interface's name (`eth0`), or its index when the kernel gave no name.
    pub iface: String,
    /// Whether the interface is a loopback device (`lo`).
    pub loopback: bool,
}

/// A route socket of the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> NeighbourError {
    move |source| NeighbourError::Netlink { what, source }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

impl Netlink {
    /// Opens a route socket.
    pub fn open() -> Result<Self, NeighbourError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err("opening a socket"))?;
        socket.bind_auto().map_err(io_err("binding a socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io_err("connecting a socket"))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and returns the messages of the answer (none for an acknowledgement;
    /// every part of a dump). A kernel refusal is an error of its errno.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answer = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| std::io::Error::other(format!("an unreadable answer: {e}")))?;
                let len = (message.header.length as usize).max(16);
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
                if message.header.sequence_number != self.seq {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(answer),
                            Some(_) => Err(error.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(answer),
                    NetlinkPayload::InnerMessage(inner) => {
                        answer.push(inner);
                        if !dump {
                            return Ok(answer);
                        }
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }

    /// The next hop towards `addr`, as the kernel's main routing lookup gives it.
    pub fn next_hop(&mut self, addr: IpAddr) -> Result<NextHop, NeighbourError> {
        let mut query = RouteMessage::default();
        query.header.address_family = family(addr);
        query.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
        query.header.flags = RouteFlags::LookupTable;
        query
            .attributes
            .push(RouteAttribute::Destination(match addr {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        let reply = self
            .request(RouteNetlinkMessage::GetRoute(query), 0)
            .map_err(|source| NeighbourError::NoRoute { addr, source })?;
        let no_answer = || NeighbourError::NoRoute {
            addr,
            source: std::io::Error::other("the kernel's answer holds no route"),
        };
        let Some(RouteNetlinkMessage::NewRoute(route)) = reply.into_iter().next() else {
            return Err(no_answer());
        };
        next_hop_of(addr, &route).ok_or_else(no_answer)
    }

    /// Makes the kernel resolve the next hop towards `addr` now and keep it resolved.
    pub fn keep_resolved(&mut self, addr: IpAddr) -> Result<(), NeighbourError> {
        let hop = self.next_hop(addr)?;
        if hop.local || hop.addr.is_loopback() {
            return Ok(());
        }
        let mut entry = NeighbourMessage::default();
        entry.header.family = family(hop.addr);
        entry.header.ifindex = hop.ifindex;
        entry.header.state = NeighbourState::None;
        entry
            .attributes
            .push(NeighbourAttribute::Destination(match hop.addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        // An entry the operator made permanent is theirs: left as it is (a noarp one too: it
        // needs no resolution, and the kernel makes them itself on links without ARP).
        if let Ok(found) = self.request(RouteNetlinkMessage::GetNeighbour(entry.clone()), 0) {
            if found.iter().any(is_static) {
                tracing::debug!(%addr, next_hop = %hop.addr, "a permanent (or noarp) neighbour entry is in place: left alone");
                return Ok(());
            }
        }
        entry
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        self.request(
            RouteNetlinkMessage::NewNeighbour(entry),
            NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
        )
        .map_err(|source| match source.raw_os_error() {
            // neigh_create's answer when the table is at gc_thresh3 and nothing can be collected.
            Some(libc::ENOBUFS) => NeighbourError::TableFull {
                family: if hop.addr.is_ipv4() { "ipv4" } else { "ipv6" },
            },
            _ => NeighbourError::Netlink {
                what: "adding a managed neighbour entry",
                source,
            },
        })?;
        tracing::debug!(%addr, next_hop = %hop.addr, ifindex = hop.ifindex, "managed neighbour entry in place");
        Ok(())
    }

    /// The link-layer address (MAC) the kernel's neighbour table holds for `addr` on the
    /// interface `ifindex`, as the data path reads it; `None` while there is no entry or it is
    /// not resolved (incomplete, failed).
    pub fn neighbour_mac(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<[u8; 6]>, NeighbourError> {
        let mut entry = NeighbourMessage::default();
        entry.header.family = family(addr);
        entry.header.ifindex = ifindex;
        entry
            .attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        let found = match self.request(RouteNetlinkMessage::GetNeighbour(entry), 0) {
            Ok(found) => found,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => {
                return Err(NeighbourError::Netlink {
                    what: "reading a neighbour entry",
                    source,
                })
            }
        };
        Ok(found.iter().find_map(resolved_mac))
    }

    /// The addresses of the interface `ifindex`, but for link-local ones (`ip addr show`'s
    /// "scope link").
    pub fn global_addresses(&mut self, ifindex: u32) -> Result<Vec<IpAddr>, NeighbourError> {
        let reply = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(io_err("listing addresses"))?;
        Ok(reply
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .filter(|a| a.header.index == ifindex)
            .filter_map(global_address)
            .collect())
    }

    /// Every address of every interface of the namespace, whatever its scope (`ip addr show`).
    pub fn local_addresses(&mut self) -> Result<Vec<LocalAddress>, NeighbourError> {
        let reply = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(io_err("listing addresses"))?;
        let links = self.links()?;
        Ok(reply
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .filter_map(|a| {
                let addr = address_of(a)?;
                let link = links.iter().find(|l| l.header.index == a.header.index);
                Some(LocalAddress {
                    addr,
                    iface: link
                        .and_then(|l| {
                            l.attributes.iter().find_map(|attribute| match attribute {
                                LinkAttribute::IfName(name) => Some(name.clone()),
                                _ => None,
                            })
                        })
                        .unwrap_or_else(|| format!("interface {}", a.header.index)),
                    loopback: link.is_some_and(|l| l.header.flags.contains(LinkFlags::Loopback)),
                })
            })
            .collect())
    }

    /// Every interface of the namespace, as `ip link show` lists them.
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, NeighbourError> {
        let reply = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(io_err("listing interfaces"))?;
        Ok(reply
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }
}

/// The next hop a route answer gives for `addr`: its output interface and gateway (or `addr`
/// itself on link); `None` when the answer names no interface.
fn next_hop_of(addr: IpAddr, route: &RouteMessage) -> Option<NextHop> {
    let mut hop = NextHop {
        addr,
        ifindex: 0,
        local: route.header.kind == RouteType::Local,
    };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(ifindex) => hop.ifindex = *ifindex,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => hop.addr = IpAddr::V4(*a),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => hop.addr = IpAddr::V6(*a),
            _ => {}
        }
    }
    (hop.ifindex != 0).then_some(hop)
}

/// The MAC of a neighbour entry in a state that has one (not incomplete, failed or none).
fn resolved_mac(message: &RouteNetlinkMessage) -> Option<[u8; 6]> {
    let RouteNetlinkMessage::NewNeighbour(entry) = message else {
        return None;
    };
    if matches!(
        entry.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
    ) {
        return None;
    }
    entry.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) => mac.as_slice().try_into().ok(),
        _ => None,
    })
}

/// Whether a neighbour entry is one that is never resolved: permanent (as an operator makes it)
/// or noarp.
fn is_static(message: &RouteNetlinkMessage) -> bool {
    matches!(
        message,
        RouteNetlinkMessage::NewNeighbour(n)
            if matches!(n.header.state, NeighbourState::Permanent | NeighbourState::Noarp)
    )
}

/// The address an address message holds (its local address, else its address), unless its
/// scope is the link.
fn global_address(message: &AddressMessage) -> Option<IpAddr> {
    if message.header.scope == AddressScope::Link {
        return None;
    }
    address_of(message)
}

/// The address an address message holds: its local address (the other end's is the address of
/// a point-to-point IPv4 one), else its address.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let mut found = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => found = Some(*a),
            _ => {}
        }
    }
    found
}

/// Makes the kernel resolve the next hop towards `addr` now and keep it resolved (leaving an
/// operator's permanent entry alone). Runs in the calling thread's network namespace.
pub fn keep_resolved(addr: IpAddr) -> Result<(), NeighbourError> {
    Netlink::open()?.keep_resolved(addr)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_route_answer_gives_its_gateway_and_interface_or_the_server_on_link() {
        let server: IpAddr = "10.0.0.11".parse().expect("address");
        let mut route = RouteMessage::default();
        route.attributes.push(RouteAttribute::Oif(7));
        assert_eq!(
            next_hop_of(server, &route),
            Some(NextHop {
                addr: server,
                ifindex: 7,
                local: false
            })
        );
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 0, 0, 1,
            ))));
        route.header.kind = RouteType::Local;
        let hop = next_hop_of(server, &route).expect("a next hop");
        assert_eq!(hop.addr, IpAddr::from([10, 0, 0, 1]));
        assert!(hop.local);
        assert_eq!(
            next_hop_of(server, &RouteMessage::default()),
            None,
            "an answer without an interface is no next hop"
        );
    }

    #[test]
    fn only_an_entry_the_operator_made_permanent_or_a_noarp_one_is_left_alone() {
        let mut entry = NeighbourMessage::default();
        for (state, left_alone) in [
            (NeighbourState::Permanent, true),
            (NeighbourState::Noarp, true),
            (NeighbourState::Reachable, false),
            (NeighbourState::Stale, false),
            (NeighbourState::Failed, false),
            (NeighbourState::Incomplete, false),
        ] {
            entry.header.state = state;
            assert_eq!(
                is_static(&RouteNetlinkMessage::NewNeighbour(entry.clone())),
                left_alone,
                "{state:?}"
            );
        }
    }

    #[test]
    fn only_a_resolved_entry_gives_a_mac() {
        let mut entry = NeighbourMessage::default();
        entry
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![
                2, 0, 0, 0, 0, 11,
            ]));
        for (state, mac) in [
            (NeighbourState::Reachable, Some([2, 0, 0, 0, 0, 11])),
            (NeighbourState::Stale, Some([2, 0, 0, 0, 0, 11])),
            (NeighbourState::Permanent, Some([2, 0, 0, 0, 0, 11])),
            (NeighbourState::Incomplete, None),
            (NeighbourState::Failed, None),
        ] {
            entry.header.state = state;
            assert_eq!(
                resolved_mac(&RouteNetlinkMessage::NewNeighbour(entry.clone())),
                mac,
                "{state:?}"
            );
        }
    }

    #[test]
    fn link_local_addresses_are_left_out_and_the_local_address_wins() {
        let mut message = AddressMessage::default();
        message.attributes.push(AddressAttribute::Address(
            "10.0.0.2".parse().expect("address"),
        ));
        message.attributes.push(AddressAttribute::Local(
            "10.0.0.1".parse().expect("address"),
        ));
        assert_eq!(global_address(&message), Some(IpAddr::from([10, 0, 0, 1])));
        message.header.scope = AddressScope::Host;
        assert!(
            global_address(&message).is_some(),
            "a VIP on lo has host scope"
        );
        message.header.scope = AddressScope::Link;
        assert_eq!(global_address(&message), None);
    }

    #[test]
    fn the_kernel_answers_for_loopback_without_anything_changed() {
        // Reads only (a route lookup, an address dump): no root needed, nothing is changed.
        let mut netlink = Netlink::open().expect("a route socket");
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo exists");
        let addrs = netlink.global_addresses(lo).expect("lo's addresses");
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
        let local = netlink
            .local_addresses()
            .expect("the namespace's addresses");
        assert!(
            local
                .iter()
                .any(|a| a.addr == IpAddr::from([127, 0, 0, 1]) && a.iface == "lo" && a.loopback),
            "{local:?}"
        );
        let hop = netlink
            .next_hop(IpAddr::from([127, 0, 0, 1]))
            .expect("a route to 127.0.0.1");
        assert!(hop.local, "{hop:?}");
        assert_eq!(hop.ifindex, lo);
        netlink
            .keep_resolved(IpAddr::from([127, 0, 0, 1]))
            .expect("a local address needs no neighbour entry");
    }

    #[test]
    fn requests_are_built_by_the_library_and_read_back() {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        query.header.flags = RouteFlags::LookupTable;
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(query.clone())),
        );
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).expect("parses");
        assert_eq!(
            back.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(query))
        );
    }
}
