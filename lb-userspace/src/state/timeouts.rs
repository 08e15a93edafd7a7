//! The connection table's idle timeouts, per protocol, as IPVS keeps them (`ipvsadm --set TCP
//! TCPFIN UDP`, `ipvsadm -L --timeout`): how long a connection may go without a packet before
//! its entry expires and its next packet is a new flow, scheduled again.

use serde::{Deserialize, Serialize};

/// The longest connection timeout ipvsadm accepts (`MAX_TIMEOUT`, 31 days), in seconds.
pub const MAX_CONNECTION_TIMEOUT_SECS: u32 = 86_400 * 31;

/// How long a handshake in progress (a SYN seen, IPVS's SYN_RECV) is kept: IPVS's fixed 60 s,
/// which `--set` does not change.
pub const HANDSHAKE_TIMEOUT_SECS: u32 = 60;

/// The idle timeouts of connection-table entries, in seconds: IPVS's defaults are 900, 120 and
/// 300.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ConnectionTimeouts {
    /// An established TCP connection (IPVS's ESTABLISHED).
    pub tcp_secs: u32,
    /// A TCP connection that has seen a FIN or a RST (IPVS's FIN_WAIT and the states after it).
    pub tcpfin_secs: u32,
    /// A UDP flow.
    pub udp_secs: u32,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            tcp_secs: 900,
            tcpfin_secs: 120,
            udp_secs: 300,
        }
    }
}

impl ConnectionTimeouts {
    /// These timeouts with `--set TCP TCPFIN UDP` applied: a 0 keeps the value it replaces, as
    /// IPVS does.
    pub fn set(self, tcp_secs: u32, tcpfin_secs: u32, udp_secs: u32) -> Self {
        let or = |new: u32, old: u32| if new == 0 { old } else { new };
        Self {
            tcp_secs: or(tcp_secs, self.tcp_secs),
            tcpfin_secs: or(tcpfin_secs, self.tcpfin_secs),
            udp_secs: or(udp_secs, self.udp_secs),
        }
    }

    /// The first value above [`MAX_CONNECTION_TIMEOUT_SECS`], if any, and the timeout it is
    /// (`tcp`, `tcpfin` or `udp`).
    pub fn too_long(tcp_secs: u32, tcpfin_secs: u32, udp_secs: u32) -> Option<(&'static str, u32)> {
        [
            ("tcp", tcp_secs),
            ("tcpfin", tcpfin_secs),
            ("udp", udp_secs),
        ]
        .into_iter()
        .find(|(_, secs)| *secs > MAX_CONNECTION_TIMEOUT_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_in_set_keeps_the_value_it_would_replace() {
        let set = ConnectionTimeouts::default().set(0, 30, 0);
        assert_eq!(
            set,
            ConnectionTimeouts {
                tcp_secs: 900,
                tcpfin_secs: 30,
                udp_secs: 300
            }
        );
        assert_eq!(set.set(0, 0, 0), set);
        assert_eq!(set.set(1, 2, 3).udp_secs, 3);
    }

    #[test]
    fn a_value_above_31_days_is_named() {
        assert_eq!(ConnectionTimeouts::too_long(900, 120, 300), None);
        assert_eq!(
            ConnectionTimeouts::too_long(900, MAX_CONNECTION_TIMEOUT_SECS + 1, 300),
            Some(("tcpfin", MAX_CONNECTION_TIMEOUT_SECS + 1))
        );
    }
}
