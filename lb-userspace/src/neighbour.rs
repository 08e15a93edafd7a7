//! Keeping the kernel's neighbour entries of real servers resolved.
//!
//! The data path takes each next hop's MAC from the kernel's neighbour table and drops (counting
//! `drop_no_neighbour`) while there is none, so every real server's next hop gets a *managed*
//! neighbour entry (Linux >= 5.16): the kernel resolves it at once and keeps it resolved, without
//! waiting for traffic of its own to the server.
//!
//! Spoken over rtnetlink (what `ip route get` and `ip neigh replace ... managed` send): two
//! messages on one socket per server instead of two processes, which cost milliseconds each.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use thiserror::Error;

/// Why a neighbour entry could not be set up.
#[derive(Debug, Error)]
pub enum NeighbourError {
    /// The routing socket failed.
    #[error("{what} over rtnetlink")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
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

// From linux/netlink.h, linux/rtnetlink.h and linux/neighbour.h.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const RTM_F_LOOKUP_TABLE: u32 = 0x1000;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NDA_DST: u16 = 1;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1;
const NUD_NONE: u16 = 0;
const NUD_PERMANENT: u16 = 0x80;
const NLMSG_HDRLEN: usize = 16;

/// A route socket of the calling thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> NeighbourError {
    move |source| NeighbourError::Netlink { what, source }
}

fn push_attr(msg: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

fn addr_bytes(addr: IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

/// The attributes after a fixed header of `skip` bytes, as (type, payload).
fn attrs(body: &[u8], skip: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = body.get(skip..).unwrap_or_default();
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(rest.get(2..4)?.try_into().ok()?) & 0x3fff;
        let payload = rest.get(4..len)?;
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, payload))
    })
}

impl Netlink {
    /// Opens a route socket.
    pub fn open() -> Result<Self, NeighbourError> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io_err("opening a socket")(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request (`header` is the family header after the netlink header, followed by
    /// `attrs`) and returns the body of the answer: the reply's family header and attributes, or
    /// empty for an acknowledgement. A kernel refusal is an error of its errno.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        header: &[u8],
        attributes: &[(u16, &[u8])],
    ) -> std::io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = vec![0u8; NLMSG_HDRLEN];
        msg.extend_from_slice(header);
        for (attr, payload) in attributes {
            push_attr(&mut msg, *attr, payload);
        }
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&kind.to_ne_bytes());
        msg[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // SAFETY: sockaddr_nl is plain data, valid when zeroed.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and addr are live for the call; their lengths are passed with them.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: buf is live and writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(std::io::Error::other("a truncated netlink message"));
                }
                let body = &rest[NLMSG_HDRLEN..len];
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if seq != self.seq {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let errno = i32::from_ne_bytes(
                        body.get(0..4)
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(|| std::io::Error::other("a short netlink error"))?,
                    );
                    if errno != 0 {
                        return Err(std::io::Error::from_raw_os_error(-errno));
                    }
                    return Ok(Vec::new());
                }
                return Ok(body.to_vec());
            }
        }
    }

    /// The next hop towards `addr`, as the kernel's main routing lookup gives it.
    pub fn next_hop(&mut self, addr: IpAddr) -> Result<NextHop, NeighbourError> {
        let (family, dst) = addr_bytes(addr);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut rtmsg = vec![family, (dst.len() * 8) as u8, 0, 0, 0, 0, 0, 0];
        rtmsg.extend_from_slice(&RTM_F_LOOKUP_TABLE.to_ne_bytes());
        let reply = self
            .request(RTM_GETROUTE, 0, &rtmsg, &[(RTA_DST, &dst)])
            .map_err(|source| NeighbourError::NoRoute { addr, source })?;
        let no_answer = || NeighbourError::NoRoute {
            addr,
            source: std::io::Error::other("the kernel's answer holds no route"),
        };
        let route_type = *reply.get(7).ok_or_else(no_answer)?;
        let mut hop = NextHop {
            addr,
            ifindex: 0,
            local: route_type == RTN_LOCAL,
        };
        for (kind, payload) in attrs(&reply, 12) {
            match kind {
                RTA_OIF => {
                    hop.ifindex = u32::from_ne_bytes(payload.try_into().map_err(|_| no_answer())?);
                }
                RTA_GATEWAY => {
                    hop.addr = match payload.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(payload).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(payload).expect("16 bytes")),
                        _ => return Err(no_answer()),
                    };
                }
                _ => {}
            }
        }
        if hop.ifindex == 0 {
            return Err(no_answer());
        }
        Ok(hop)
    }

    /// Makes the kernel resolve the next hop towards `addr` now and keep it resolved.
    pub fn keep_resolved(&mut self, addr: IpAddr) -> Result<(), NeighbourError> {
        let hop = self.next_hop(addr)?;
        if hop.local || hop.addr.is_loopback() {
            return Ok(());
        }
        let (family, dst) = addr_bytes(hop.addr);
        // struct ndmsg: family, 3 bytes of padding, ifindex, state, flags, type.
        let mut ndmsg = vec![family, 0, 0, 0];
        ndmsg.extend_from_slice(&(hop.ifindex as i32).to_ne_bytes());
        ndmsg.extend_from_slice(&NUD_NONE.to_ne_bytes());
        ndmsg.extend_from_slice(&[0, 0]);
        // An entry the operator made permanent is theirs: left as it is.
        if let Ok(entry) = self.request(RTM_GETNEIGH, 0, &ndmsg, &[(NDA_DST, &dst)]) {
            if entry_state(&entry) & NUD_PERMANENT != 0 {
                tracing::debug!(%addr, next_hop = %hop.addr, "a permanent neighbour entry is in place: left alone");
                return Ok(());
            }
        }
        self.request(
            RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
            &ndmsg,
            &[
                (NDA_DST, &dst),
                (NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes()),
            ],
        )
        .map_err(io_err("adding a managed neighbour entry"))?;
        tracing::debug!(%addr, next_hop = %hop.addr, ifindex = hop.ifindex, "managed neighbour entry in place");
        Ok(())
    }
}

/// The `ndm_state` of a neighbour entry as the kernel answers it (struct ndmsg: family, 3 bytes of
/// padding, ifindex, state, ...); 0 when the answer is too short.
fn entry_state(ndmsg: &[u8]) -> u16 {
    ndmsg
        .get(8..10)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_ne_bytes)
}

/// Makes the kernel resolve the next hop towards `addr` now and keep it resolved (leaving an
/// operator's permanent entry alone). Runs in the calling thread's network namespace.
pub fn keep_resolved(addr: IpAddr) -> Result<(), NeighbourError> {
    Netlink::open()?.keep_resolved(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_entrys_state_is_read_from_its_header() {
        let mut ndmsg = vec![2u8, 0, 0, 0];
        ndmsg.extend_from_slice(&7i32.to_ne_bytes());
        ndmsg.extend_from_slice(&NUD_PERMANENT.to_ne_bytes());
        ndmsg.extend_from_slice(&[0, 1]);
        assert_eq!(entry_state(&ndmsg), NUD_PERMANENT);
        assert_eq!(entry_state(&ndmsg[..9]), 0, "a short answer has no state");
    }

    #[test]
    fn attributes_are_padded_to_four_bytes_and_read_back() {
        let mut msg = vec![0u8; 12];
        push_attr(&mut msg, NDA_DST, &[10, 0, 0, 1]);
        push_attr(&mut msg, 7, &[1, 2, 3]);
        push_attr(&mut msg, RTA_OIF, &5u32.to_ne_bytes());
        assert_eq!(msg.len(), 12 + 8 + 8 + 8);
        let read: Vec<(u16, Vec<u8>)> = attrs(&msg, 12).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(
            read,
            vec![
                (NDA_DST, vec![10, 0, 0, 1]),
                (7, vec![1, 2, 3]),
                (RTA_OIF, 5u32.to_ne_bytes().to_vec())
            ]
        );
    }
}
