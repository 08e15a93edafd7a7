//! Building test packets byte by byte: Ethernet (optionally VLAN-tagged), IPv4 or IPv6, TCP or UDP,
//! with valid checksums, and knobs for the malformed cases.

/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;
/// TCP flag FIN.
pub const FIN: u8 = 0x01;
/// TCP flag RST.
pub const RST: u8 = 0x04;

/// The L4 part of a test packet.
#[derive(Clone, Debug)]
pub enum L4 {
    /// TCP with ports and flags, 20-byte header.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags byte.
        flags: u8,
    },
    /// UDP with ports.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// Another IP protocol with raw bytes after the IP header (e.g. ICMP).
    Raw {
        /// IP protocol number.
        proto: u8,
        /// Payload.
        bytes: Vec<u8>,
    },
}

impl L4 {
    /// The L4 header followed by `payload`, the IP protocol number, and the offset of the
    /// checksum to fill in (`None` for raw bytes).
    fn segment(&self, payload: &[u8]) -> (Vec<u8>, u8, Option<usize>) {
        let (mut bytes, proto, checksum_at) = match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&1u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = *flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                (h, 6, Some(16))
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                (h, 17, Some(6))
            }
            L4::Raw { proto, bytes } => (bytes.clone(), *proto, None),
        };
        bytes.extend_from_slice(payload);
        (bytes, proto, checksum_at)
    }
}

/// An IPv4 test packet, built by [`Ipv4Packet::build`].
#[derive(Clone, Debug)]
pub struct Ipv4Packet {
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// An 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// TTL.
    pub ttl: u8,
    /// Flags and fragment offset, host order (0x2000 = MF).
    pub frag: u16,
    /// IP options (padded with zeros to a multiple of 4).
    pub options: Vec<u8>,
    /// The IHL to write instead of the real one.
    pub ihl_override: Option<u8>,
    /// L4 header.
    pub l4: L4,
    /// Payload after the L4 header.
    pub payload: Vec<u8>,
}

impl Ipv4Packet {
    /// A TCP packet from `src:sport` to `dst:dport` with default MACs and TTL 64.
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// A UDP packet from `src:sport` to `dst:dport`.
    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(src, dst, L4::Udp { sport, dport })
    }

    /// A packet with the given L4 part.
    pub fn new(src: [u8; 4], dst: [u8; 4], l4: L4) -> Self {
        Self {
            eth_dst: [0x02, 0, 0, 0, 0, 0xaa],
            eth_src: [0x02, 0, 0, 0, 0, 0xcc],
            vlan: None,
            src,
            dst,
            ttl: 64,
            frag: 0,
            options: Vec::new(),
            ihl_override: None,
            l4,
            payload: b"hello".to_vec(),
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let ip = self.ip_bytes();
        let mut frame = ethernet(self.eth_dst, self.eth_src, self.vlan, 0x0800);
        frame.extend_from_slice(&ip);
        frame
    }

    /// The IPv4 packet's bytes, without the Ethernet header.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let (mut l4, proto, l4_csum_at) = self.l4.segment(&self.payload);
        if let Some(at) = l4_csum_at {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&self.src);
            pseudo.extend_from_slice(&self.dst);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(&l4);
            let c = checksum(&pseudo);
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }

        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let ihl = self.ihl_override.unwrap_or((5 + options.len() / 4) as u8);
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl & 0x0f);
        let tot_len = (20 + options.len() + l4.len()) as u16;
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        ip.extend_from_slice(&options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }
}

/// An IPv6 test packet, built by [`Ipv6Packet::build`].
#[derive(Clone, Debug)]
pub struct Ipv6Packet {
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// The next-header value to write instead of the L4 protocol (for extension-header cases).
    pub next_header_override: Option<u8>,
    /// L4 header.
    pub l4: L4,
    /// Payload after the L4 header.
    pub payload: Vec<u8>,
}

impl Ipv6Packet {
    /// A TCP packet with default MACs and hop limit 64.
    pub fn tcp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// A packet with the given L4 part.
    pub fn new(src: [u8; 16], dst: [u8; 16], l4: L4) -> Self {
        Self {
            eth_dst: [0x02, 0, 0, 0, 0, 0xaa],
            eth_src: [0x02, 0, 0, 0, 0, 0xcc],
            src,
            dst,
            hop_limit: 64,
            traffic_class: 0,
            next_header_override: None,
            l4,
            payload: b"hello".to_vec(),
        }
    }

    /// The IPv6 packet's bytes, without the Ethernet header.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let (mut l4, proto, csum_at) = self.l4.segment(&self.payload);
        let l4_csum_at = if proto == 58 { Some(2) } else { csum_at };
        if let Some(at) = l4_csum_at {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&self.src);
            pseudo.extend_from_slice(&self.dst);
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            l4[at..at + 2].copy_from_slice(&[0, 0]);
            pseudo.extend_from_slice(&l4);
            let c = checksum(&pseudo);
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut ip = vec![0u8; 40];
        let vcf = (6u32 << 28) | (u32::from(self.traffic_class) << 20);
        ip[0..4].copy_from_slice(&vcf.to_be_bytes());
        ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        ip[6] = self.next_header_override.unwrap_or(proto);
        ip[7] = self.hop_limit;
        ip[8..24].copy_from_slice(&self.src);
        ip[24..40].copy_from_slice(&self.dst);
        ip.extend_from_slice(&l4);
        ip
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = ethernet(self.eth_dst, self.eth_src, None, 0x86dd);
        frame.extend_from_slice(&self.ip_bytes());
        frame
    }
}

/// An Ethernet header (with an 802.1Q tag when `vlan` is set).
pub fn ethernet(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(id) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// An ARP request frame (who-has `target` tell `sender`).
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mac = [0x02, 0, 0, 0, 0, 0xcc];
    let mut f = ethernet([0xff; 6], mac, None, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// An IPv6 UDP packet (no IPv6 services exist yet: it must be passed untouched).
pub fn ipv6_udp(dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut f = ethernet(
        [0x02, 0, 0, 0, 0, 0xaa],
        [0x02, 0, 0, 0, 0, 0xcc],
        None,
        0x86dd,
    );
    let payload_len: u16 = 8 + 4;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
    ]);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(b"ping");
    f
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ipv4_headers_carry_a_valid_checksum() {
        let p = Ipv4Packet::tcp([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80, SYN).build();
        assert_eq!(checksum(&p[14..34]), 0);
    }
}
