//! The check through the forwarding path (`--check-via-vip`): a SYN to VIP:port delivered the
//! way the data path delivers a client's packet to the real server, answered by the real server
//! from the VIP.
//!
//! A direct-routing or tunnel real server fails most often in its own setup: the VIP missing
//! from its `lo`, no decapsulation. A check of its own address passes all the same; this one
//! does not. The SYN leaves through a packet socket on the interface of the real server's next
//! hop, to the MAC that the kernel's neighbour table holds for it (what the data path's FIB
//! lookup reads): with direct routing it is an IP packet to the VIP, with tunneling the same
//! packet inside an outer header to the real server's address (protocol 4 for IPv4, 41 for
//! IPv6), as `lb-ebpf/src/forward.rs` writes it. The SYN comes from the balancer's address
//! towards the real server and a port reserved for the probes, so the real server answers
//! from VIP:port straight to the balancer.
//!
//! The answer is read from a packet socket too, before the kernel's IP layer: a balancer that
//! holds the VIP itself (the VRRP master does) would drop a packet from its own address as a
//! martian. A SYN-ACK is up, and is answered at once with a reset through the same path, so
//! that the real server forgets the half-open connection (it would otherwise take the next
//! probe's SYN from the same port as an error and reset it). A reset is down (the VIP is there,
//! nothing listens), silence is down with the likely cause.
//!
//! Matching works as in [`super::half_open`]: address, port and a keyed-hash sequence number.

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher as _,
    io::{self, Read as _},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, OnceLock,
    },
};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::sync::oneshot;

use super::half_open::{
    answer_filter, checksum, parse_answer_v4, parse_answer_v6, prober_in_this_namespace,
    reserve_port, source_for, tcp_segment, v6_octets, Answer, Key, Layout, Probers, RST, SYN,
};
use crate::{neighbour::Netlink, state::Forwarding};

/// The outer header's hop limit, as the data path's (`TUNNEL_TTL`).
const TTL: u8 = 64;
/// IP protocol numbers.
const PROTO_IPIP: u8 = 4;
const PROTO_TCP: u8 = 6;
const PROTO_IPV6: u8 = 41;
/// Ethernet types.
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// More than an answer's headers (the filter keeps 120 bytes of each).
const RECEIVE_CAP: usize = 256;

/// How the data path reaches a real server, and so how the probe does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The packet as the client sent it, to the real server's MAC.
    DirectRoute,
    /// The packet inside an outer header to the real server's address.
    Tunnel {
        /// The real server's address (the outer destination).
        real: IpAddr,
    },
}

impl Delivery {
    /// How `forwarding` reaches the real server at `real`.
    pub fn new(forwarding: Forwarding, real: IpAddr) -> Self {
        match forwarding {
            Forwarding::DirectRoute => Delivery::DirectRoute,
            Forwarding::Tunnel => Delivery::Tunnel { real },
        }
    }
}

/// Where the probes to one real server leave: the interface and MAC of its next hop, and the
/// balancer's address the answers come back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// The interface of the next hop.
    pub ifindex: u32,
    /// The next hop's MAC.
    pub mac: [u8; 6],
    /// The balancer's address towards the real server (the SYN's source).
    pub source: IpAddr,
}

impl Path {
    /// The path to the real server at `real` as the kernel's tables give it now: the route's
    /// interface and next hop, the next hop's MAC from the neighbour table, the source address
    /// of the route. Fails with a sentence when any is missing.
    pub fn resolve(real: IpAddr) -> Result<Path, String> {
        let mut netlink = Netlink::open().map_err(|e| format!("reading the route: {e}"))?;
        let hop = netlink.next_hop(real).map_err(|e| e.to_string())?;
        if hop.local {
            return Err(format!(
                "{real} is an address of the balancer itself: there is no forwarding path to check"
            ));
        }
        let mac = netlink
            .neighbour_mac(hop.ifindex, hop.addr)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "the next hop {} towards {real} is not resolved (no MAC in the neighbour table): the data path cannot forward to it either",
                    hop.addr
                )
            })?;
        let source = source_for(SocketAddr::new(real, 9))
            .map_err(|e| format!("no source address towards {real}: {e}"))?;
        Ok(Path {
            ifindex: hop.ifindex,
            mac,
            source,
        })
    }
}

/// Why a probe through the forwarding path could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ViaError {
    /// The prober could not be set up (no CAP_NET_RAW, say).
    #[error("forwarding-path prober: {0}")]
    Setup(String),
    /// The kernel refused the packet.
    #[error("sending the SYN through the forwarding path: {0}")]
    Send(io::Error),
    /// The receiving side is gone.
    #[error("the forwarding-path prober's receiver stopped")]
    Stopped,
}

/// The packet sender and answer receiver of one address family in one network namespace: a
/// packet socket, the port reserved for the probes, the probes waiting for answers, and the
/// thread that receives them.
pub struct ViaProber {
    socket: Socket,
    /// Held for the reservation of `port`: no connection of the host can take it.
    _reservation: Socket,
    port: u16,
    v6: bool,
    pending: Mutex<HashMap<Key, oneshot::Sender<Answer>>>,
    /// The last SYN to each real server that got no answer in time, by server: a SYN-ACK that
    /// comes after the probe gave up is not reset by anyone (the balancer's kernel sends its
    /// reset to the VIP, often an address of its own), so the real server would keep the
    /// half-open connection and answer the next SYNs from the same port with the old one's
    /// SYN-ACK or a bare ACK, for a minute of SYN-ACK retries. The next probe resets it first.
    unanswered: Mutex<HashMap<Server, u32>>,
    /// Counts the SYNs; a SYN's sequence number is the keyed hash of its count.
    count: AtomicU64,
    secret: RandomState,
}

/// The forwarding-path probers made so far.
static PROBERS: Probers<ViaProber> = OnceLock::new();

impl ViaProber {
    /// The prober for `family_of`'s address family in the calling thread's network namespace,
    /// made on first use.
    pub fn for_family(family_of: IpAddr) -> Result<&'static ViaProber, ViaError> {
        let v6 = family_of.is_ipv6();
        prober_in_this_namespace(
            &PROBERS,
            v6,
            "xlb-via",
            || ViaProber::open(v6),
            |p| p.receive(),
        )
        .map_err(ViaError::Setup)
    }

    fn open(v6: bool) -> io::Result<ViaProber> {
        let ether_type = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
        let (reservation, port) = reserve_port(v6)?;
        // A datagram packet socket: the kernel writes and strips the Ethernet header, and only
        // packets of this family reach it. Not bound to an interface: the answer may come back
        // through another one than the SYN left by.
        let socket = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(ether_type.to_be()))),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("packet socket (needs CAP_NET_RAW): {e}")))?;
        let layout = if v6 { Layout::Ipv6Packet } else { Layout::Ipv4 };
        socket.attach_filter(&answer_filter(port, layout))?;
        // Packets that arrived before the filter are dropped by the port check of the parser.
        Ok(ViaProber {
            socket,
            _reservation: reservation,
            port,
            v6,
            pending: Mutex::new(HashMap::new()),
            unanswered: Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
            secret: RandomState::new(),
        })
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Key, oneshot::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a SYN to `target` (VIP:port) through `path` and `delivery` and waits for the
    /// answer, without a limit: the caller bounds the wait and drops the future, which forgets
    /// the SYN. A SYN-ACK is answered with a reset through the same path.
    pub async fn probe(
        &'static self,
        path: Path,
        delivery: Delivery,
        target: SocketAddr,
    ) -> Result<Answer, ViaError> {
        let seq = self
            .secret
            .hash_one(self.count.fetch_add(1, Ordering::Relaxed)) as u32;
        let key = (target.ip(), target.port(), seq);
        let server = (target, delivery, path.mac, path.source);
        let (sender, receiver) = oneshot::channel();
        self.pending().insert(key, sender);
        let mut waiting = Waiting {
            prober: self,
            key,
            server: Some(server),
        };
        let leftover = self
            .unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&server);
        if let Some(old) = leftover {
            let reset = probe_packet(
                delivery,
                path.source,
                target,
                self.port,
                old.wrapping_add(1),
                RST,
            );
            if let Err(e) = self.send(&path, &reset) {
                tracing::debug!(%target, "resetting an unanswered probe's connection: {e}");
            }
        }
        let syn = probe_packet(delivery, path.source, target, self.port, seq, SYN);
        self.send(&path, &syn).map_err(ViaError::Send)?;
        let answer = receiver.await.map_err(|_| ViaError::Stopped)?;
        // Answered: nothing to reset before the next probe.
        waiting.server = None;
        drop(waiting);
        if answer == Answer::Open {
            let reset = probe_packet(
                delivery,
                path.source,
                target,
                self.port,
                seq.wrapping_add(1),
                RST,
            );
            if let Err(e) = self.send(&path, &reset) {
                tracing::debug!(%target, "resetting the probe's half-open connection: {e}");
            }
        }
        Ok(answer)
    }

    fn send(&self, path: &Path, packet: &[u8]) -> io::Result<()> {
        let ether_type = if self.v6 { ETH_P_IPV6 } else { ETH_P_IP };
        self.socket
            .send_to(packet, &link_address(path, ether_type))
            .map(drop)
    }

    /// The receiving thread: answers in, waiting probes woken.
    fn receive(&self) {
        let mut buffer = [0_u8; RECEIVE_CAP];
        loop {
            let len = match (&self.socket).read(&mut buffer) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("forwarding-path prober: receiving: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            let Some((key, answer)) = parse_answer(&buffer[..len], self.v6, self.port) else {
                continue;
            };
            if let Some(waiter) = self.pending().remove(&key) {
                let _ = waiter.send(answer);
            }
        }
    }
}

/// A real server as a probe reaches it: the target (VIP:port), the delivery, the next hop's MAC
/// and the source address.
type Server = (SocketAddr, Delivery, [u8; 6], IpAddr);

/// Forgets a SYN whose probe ended (answered, failed, or dropped on timeout); one that got no
/// answer is remembered as its server's unanswered SYN.
struct Waiting<'a> {
    prober: &'a ViaProber,
    key: Key,
    /// The server, while the SYN has no answer.
    server: Option<Server>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.prober.pending().remove(&self.key);
        if let Some(server) = self.server {
            self.prober
                .unanswered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(server, self.key.2);
        }
    }
}

/// A packet socket's destination: the interface and the next hop's MAC.
fn link_address(path: &Path, ether_type: u16) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of the platform's socket address types, smaller than the
    // storage; all zeroes is a valid value of it, and every field set below is plain data.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = ether_type.to_be();
    ll.sll_ifindex = i32::try_from(path.ifindex).unwrap_or(0);
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&path.mac);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised sockaddr_ll of that length.
    unsafe { SockAddr::new(storage, len) }
}

/// The probe as it leaves the balancer, from the IP header on (the kernel writes the Ethernet
/// header): a TCP segment with `flags` (a SYN with the MSS option, or a bare reset) from
/// `source`:`port` to `target`, with sequence number `seq`; inside an outer header from
/// `source` to the real server when tunneled.
pub fn probe_packet(
    delivery: Delivery,
    source: IpAddr,
    target: SocketAddr,
    port: u16,
    seq: u32,
    flags: u8,
) -> Vec<u8> {
    let segment = tcp_segment(source, target, port, seq, flags);
    let inner = ip_packet(source, target.ip(), PROTO_TCP, &segment);
    match delivery {
        Delivery::DirectRoute => inner,
        Delivery::Tunnel { real } => {
            let protocol = if target.is_ipv6() {
                PROTO_IPV6
            } else {
                PROTO_IPIP
            };
            ip_packet(source, real, protocol, &inner)
        }
    }
}

/// An IP header of `source`'s family (IPv4 with DF and its checksum; IPv6 without a flow
/// label) followed by `payload`.
fn ip_packet(source: IpAddr, dest: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(40 + payload.len());
    match (source, dest) {
        (IpAddr::V4(source), IpAddr::V4(dest)) => {
            let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&total.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0x40, 0, TTL, protocol, 0, 0]);
            packet.extend_from_slice(&source.octets());
            packet.extend_from_slice(&dest.octets());
            let check = checksum(&[&packet]);
            packet[10..12].copy_from_slice(&check.to_be_bytes());
        }
        _ => {
            let length = u16::try_from(payload.len()).unwrap_or(u16::MAX);
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&length.to_be_bytes());
            packet.extend_from_slice(&[protocol, TTL]);
            packet.extend_from_slice(&v6_octets(source));
            packet.extend_from_slice(&v6_octets(dest));
        }
    }
    packet.extend_from_slice(payload);
    packet
}

/// An answer as a datagram packet socket receives it (from the IP header on): the key of the
/// SYN it answers, and how.
pub fn parse_answer(packet: &[u8], v6: bool, port: u16) -> Option<(Key, Answer)> {
    if !v6 {
        return parse_answer_v4(packet, port);
    }
    if packet.first()? >> 4 != 6 || *packet.get(6)? != PROTO_TCP {
        return None;
    }
    let from: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
    parse_answer_v6(packet.get(40..)?, Ipv6Addr::from(from), port)
}

/// Why a probe through the forwarding path got no answer, with the likely cause.
pub fn silence_reason(target: SocketAddr, delivery: Delivery, real: IpAddr) -> String {
    match delivery {
        Delivery::DirectRoute => format!(
            "no answer from {target} through the forwarding path (direct routing to {real}): is the VIP on the real server's lo and its ARP suppressed?"
        ),
        Delivery::Tunnel { .. } => format!(
            "no answer from {target} through the forwarding path (tunnel to {real}): does the real server decapsulate, and is the VIP on its lo?"
        ),
    }
}

/// Why no probe can go to the real server at `real` when the balancer's source address towards
/// it is the VIP itself (IPv6 prefers a /128 VIP held on the interface): the real server would
/// answer itself.
pub fn source_is_vip_reason(vip: IpAddr, real: IpAddr) -> String {
    format!(
        "the balancer's source address towards {real} is the VIP {vip} itself, so the answer would stay on the real server: give the VIP preferred_lft 0 on the balancer (ip addr change ... preferred_lft 0) so that it is never chosen as a source"
    )
}

/// Why a probe through the forwarding path was reset.
pub fn reset_reason(target: SocketAddr) -> String {
    format!(
        "{target} refused through the forwarding path (reset): the real server has the VIP, but nothing listens on port {}",
        target.port()
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const ACK: u8 = 0x10;

    fn v4(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    /// The answer a real server sends from `vip`:`service_port` to the balancer's `port`.
    fn answer_v4(
        vip: Ipv4Addr,
        balancer: Ipv4Addr,
        service_port: u16,
        port: u16,
        ack: u32,
        flags: u8,
    ) -> Vec<u8> {
        let mut tcp = vec![0_u8; 20];
        tcp[0..2].copy_from_slice(&service_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&port.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        ip_packet(IpAddr::V4(vip), IpAddr::V4(balancer), PROTO_TCP, &tcp)
    }

    #[test]
    fn a_direct_route_probe_is_a_syn_to_the_vip_from_the_balancer() {
        let target: SocketAddr = "10.0.0.100:80".parse().expect("target");
        let p = probe_packet(
            Delivery::DirectRoute,
            v4("10.0.0.2"),
            target,
            40000,
            0xdead_beef,
            SYN,
        );
        assert_eq!(p.len(), 20 + 24);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 44, "total length");
        assert_eq!(p[9], PROTO_TCP);
        assert_eq!(&p[12..16], &[10, 0, 0, 2], "from the balancer");
        assert_eq!(&p[16..20], &[10, 0, 0, 100], "to the VIP");
        assert_eq!(checksum(&[&p[..20]]), 0, "a valid header checksum");
        let tcp = &p[20..];
        assert_eq!(&tcp[0..4], &[0x9c, 0x40, 0, 80], "ports");
        assert_eq!(&tcp[4..8], &0xdead_beef_u32.to_be_bytes());
        assert_eq!(tcp[13], SYN);
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4], "the MSS option");
        assert_eq!(
            checksum(&[&p[12..16], &p[16..20], &[0, PROTO_TCP], &[0, 24], tcp]),
            0,
            "a valid TCP checksum"
        );
    }

    #[test]
    fn a_tunnel_probe_is_the_same_syn_inside_an_outer_header_to_the_real_server() {
        let target: SocketAddr = "10.0.0.100:80".parse().expect("target");
        let direct = probe_packet(Delivery::DirectRoute, v4("10.0.1.2"), target, 40000, 7, SYN);
        let tunneled = probe_packet(
            Delivery::Tunnel {
                real: v4("10.0.2.12"),
            },
            v4("10.0.1.2"),
            target,
            40000,
            7,
            SYN,
        );
        assert_eq!(&tunneled[20..], &direct[..], "the inner packet");
        assert_eq!(tunneled[9], PROTO_IPIP);
        assert_eq!(u16::from_be_bytes([tunneled[2], tunneled[3]]), 64);
        assert_eq!(&tunneled[12..16], &[10, 0, 1, 2]);
        assert_eq!(&tunneled[16..20], &[10, 0, 2, 12], "to the real server");
        assert_eq!(tunneled[8], TTL);
        assert_eq!(checksum(&[&tunneled[..20]]), 0);
    }

    #[test]
    fn an_ipv6_probe_carries_its_checksum_and_tunnels_with_next_header_41() {
        let target: SocketAddr = "[fd00::100]:443".parse().expect("target");
        let source: IpAddr = "fd00::2".parse().expect("source");
        let real: IpAddr = "fd00::12".parse().expect("real");
        let p = probe_packet(Delivery::Tunnel { real }, source, target, 40000, 1, SYN);
        assert_eq!(p.len(), 40 + 40 + 24);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(p[6], PROTO_IPV6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 64, "payload length");
        assert_eq!(&p[24..40], &v6_octets(real));
        let inner = &p[40..];
        assert_eq!(inner[6], PROTO_TCP);
        assert_eq!(&inner[24..40], &v6_octets(target.ip()));
        let tcp = &inner[40..];
        assert_eq!(
            checksum(&[
                &inner[8..24],
                &inner[24..40],
                &[0, 0, 0, 24],
                &[0, 0, 0, PROTO_TCP],
                tcp
            ]),
            0
        );
    }

    #[test]
    fn the_reset_follows_the_syn_with_the_next_sequence_number_and_no_options() {
        let target: SocketAddr = "10.0.0.100:80".parse().expect("target");
        let p = probe_packet(Delivery::DirectRoute, v4("10.0.0.2"), target, 40000, 8, RST);
        assert_eq!(p.len(), 40);
        assert_eq!(&p[24..28], &8_u32.to_be_bytes());
        assert_eq!(p[33], RST);
        assert_eq!(p[32], 5 << 4);
        assert_eq!(
            checksum(&[&p[12..16], &p[16..20], &[0, PROTO_TCP], &[0, 20], &p[20..]]),
            0
        );
    }

    #[test]
    fn a_syn_ack_from_the_vip_answers_the_probe_it_acknowledges() {
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let balancer = Ipv4Addr::new(10, 0, 0, 2);
        let open = answer_v4(vip, balancer, 80, 40000, 101, SYN | ACK);
        assert_eq!(
            parse_answer(&open, false, 40000),
            Some(((IpAddr::V4(vip), 80, 100), Answer::Open))
        );
        let reset = answer_v4(vip, balancer, 80, 40000, 101, RST | ACK);
        assert_eq!(
            parse_answer(&reset, false, 40000),
            Some(((IpAddr::V4(vip), 80, 100), Answer::Refused))
        );
        assert_eq!(parse_answer(&open, false, 40001), None, "another port");
        assert_eq!(
            parse_answer(&answer_v4(vip, balancer, 80, 40000, 101, SYN), false, 40000),
            None,
            "a SYN is no answer"
        );
    }

    #[test]
    fn an_ipv6_answer_is_read_after_its_header() {
        let vip: IpAddr = "fd00::100".parse().expect("vip");
        let balancer: IpAddr = "fd00::2".parse().expect("balancer");
        let mut tcp = vec![0_u8; 20];
        tcp[0..2].copy_from_slice(&443_u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000_u16.to_be_bytes());
        tcp[8..12].copy_from_slice(&9_u32.to_be_bytes());
        tcp[13] = SYN | ACK;
        let packet = ip_packet(vip, balancer, PROTO_TCP, &tcp);
        assert_eq!(
            parse_answer(&packet, true, 40000),
            Some(((vip, 443, 8), Answer::Open))
        );
        let mut udp = packet.clone();
        udp[6] = 17;
        assert_eq!(parse_answer(&udp, true, 40000), None);
        for cut in 0..packet.len() - 6 {
            assert_eq!(
                parse_answer(&packet[..cut], true, 40000),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn silence_names_the_likely_cause_of_each_forwarding() {
        let target: SocketAddr = "10.0.0.100:80".parse().expect("target");
        assert_eq!(
            silence_reason(target, Delivery::DirectRoute, v4("10.0.0.11")),
            "no answer from 10.0.0.100:80 through the forwarding path (direct routing to 10.0.0.11): is the VIP on the real server's lo and its ARP suppressed?"
        );
        assert!(silence_reason(
            target,
            Delivery::Tunnel {
                real: v4("10.0.2.12")
            },
            v4("10.0.2.12")
        )
        .contains("does the real server decapsulate"));
        assert!(
            source_is_vip_reason(target.ip(), v4("10.0.0.11")).starts_with(
                "the balancer's source address towards 10.0.0.11 is the VIP 10.0.0.100 itself"
            )
        );
    }
}
