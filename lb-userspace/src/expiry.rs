//! Idle expiry, decided in userspace once a second ([`SWEEP_PERIOD`]) so that the data path's
//! known-flow path does no more than record each packet's time: which connection-table entries
//! have been idle longer than their protocol's timeout (`--set TCP TCPFIN UDP`) and go, and which
//! persistent clients (`-p`) are held or let go.
//!
//! Persistence as IPVS's templates: a client keeps its real server while a connection it was
//! given there is still in the connection table, and for the service's timeout after the last
//! one leaves it (the data path also restarts the timeout at each new connection). A client
//! with a live connection is held a sweep ahead of now, so it never lapses between sweeps
//! however short its timeout; when its last connection expires, its timeout starts then.
//!
//! Pure: the runtime reads the tables, asks [`sweep`] and writes what it says, each write only
//! while the entry is still as it was read (a packet or a new connection since wins).

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use lb_common::{
    conntrack::{CONN_F_CLOSING, CONN_F_EMBRYONIC},
    Connection, FlowKey, PersistKey, PersistSettings, Persistent, PROTO_TCP,
};

use crate::state::timeouts::{ConnectionTimeouts, HANDSHAKE_TIMEOUT_SECS};

/// How often xlbd sweeps: an entry expires within this of its timeout.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(1);

const SECOND_NS: u64 = 1_000_000_000;

/// What a connection-table entry is, as IPVS names its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// A TCP handshake in progress (SYN_RECV): kept [`HANDSHAKE_TIMEOUT_SECS`].
    Handshake,
    /// An established TCP connection: kept `tcp_secs`.
    Established,
    /// A TCP connection that saw a FIN or RST (FIN_WAIT): kept `tcpfin_secs`.
    Closing,
    /// A UDP flow: kept `udp_secs`.
    Udp,
}

impl ConnKind {
    /// The kind of the entry `conn` of `flow`.
    pub fn of(flow: &FlowKey, conn: &Connection) -> Self {
        if flow.proto != PROTO_TCP {
            ConnKind::Udp
        } else if conn.flags & CONN_F_EMBRYONIC != 0 {
            ConnKind::Handshake
        } else if conn.flags & CONN_F_CLOSING != 0 {
            ConnKind::Closing
        } else {
            ConnKind::Established
        }
    }

    /// How long an entry of this kind may go without a packet, in seconds.
    pub fn timeout_secs(self, timeouts: &ConnectionTimeouts) -> u32 {
        match self {
            ConnKind::Handshake => HANDSHAKE_TIMEOUT_SECS,
            ConnKind::Established => timeouts.tcp_secs,
            ConnKind::Closing => timeouts.tcpfin_secs,
            ConnKind::Udp => timeouts.udp_secs,
        }
    }
}

/// Whether the entry `conn` of `flow` has been idle at `now_ns` for its whole timeout.
pub fn idled_out(
    flow: &FlowKey,
    conn: &Connection,
    timeouts: &ConnectionTimeouts,
    now_ns: u64,
) -> bool {
    let timeout = u64::from(ConnKind::of(flow, conn).timeout_secs(timeouts)) * SECOND_NS;
    now_ns.saturating_sub(conn.last_seen_ns) >= timeout
}

/// What one sweep does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// The connection-table entries still live: what the connection counts are made of.
    pub live: Vec<(FlowKey, Connection)>,
    /// The entries idled out, as read: to remove.
    pub expired: Vec<(FlowKey, Connection)>,
    /// Persistent clients to hold, as read, and the last-seen time to give them.
    pub held: Vec<(PersistKey, Persistent, u64)>,
    /// Persistent clients past their timeout without a live connection, as read: to remove.
    pub lapsed: Vec<(PersistKey, Persistent)>,
}

/// One sweep at `now_ns` of the connection table's `entries` and the persistence table's
/// `clients`, given the connection `timeouts` and the persistence settings of each persistent
/// service (by id; a client of any other service is left alone).
pub fn sweep(
    entries: Vec<(FlowKey, Connection)>,
    clients: &[(PersistKey, Persistent)],
    persistence: &BTreeMap<u32, PersistSettings>,
    timeouts: &ConnectionTimeouts,
    now_ns: u64,
) -> Sweep {
    let mut out = Sweep::default();
    // The persistent clients (key, server, epoch) with a live connection, and with one that
    // expires now.
    let mut holding = HashSet::new();
    let mut ending = HashSet::new();
    for (flow, conn) in entries {
        let expired = idled_out(&flow, &conn, timeouts, now_ns);
        if let Some(settings) = persistence.get(&conn.service) {
            let client = (
                settings.key(conn.service, &flow.src, flow.family),
                conn.real,
                conn.service_epoch,
            );
            if expired {
                ending.insert(client);
            } else {
                holding.insert(client);
            }
        }
        if expired {
            out.expired.push((flow, conn));
        } else {
            out.live.push((flow, conn));
        }
    }
    let ahead = now_ns + SWEEP_PERIOD.as_nanos() as u64;
    for (key, client) in clients {
        let Some(settings) = persistence.get(&key.service) else {
            continue;
        };
        let id = (*key, client.real, client.service_epoch);
        if holding.contains(&id) {
            // Rewritten only when half its timeout is used up: a client with long-lived
            // connections costs one write per half timeout, not one a second.
            if ahead.saturating_sub(client.last_seen_ns) >= settings.timeout_ns / 2 {
                out.held.push((*key, *client, ahead));
            }
        } else if ending.contains(&id) {
            if now_ns > client.last_seen_ns {
                out.held.push((*key, *client, now_ns));
            }
        } else if now_ns.saturating_sub(client.last_seen_ns) >= settings.timeout_ns {
            out.lapsed.push((*key, *client));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_V4, PROTO_UDP};

    use super::*;

    const S: u64 = SECOND_NS;
    const NOW: u64 = 10_000 * S;

    fn flow(proto: u8, client: u32, sport: u16) -> FlowKey {
        FlowKey {
            src: [client.to_be(), 0, 0, 0],
            dst: [0x0a00_0001u32.to_be(), 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    fn conn(idle_secs: u64, flags: u32) -> Connection {
        Connection {
            real: 7,
            service: 3,
            last_seen_ns: NOW - idle_secs * S,
            flags,
            service_epoch: 1,
        }
    }

    fn timeouts() -> ConnectionTimeouts {
        ConnectionTimeouts {
            tcp_secs: 900,
            tcpfin_secs: 120,
            udp_secs: 5,
        }
    }

    #[test]
    fn each_entry_expires_after_its_protocols_and_states_timeout() {
        let t = timeouts();
        let cases = [
            (PROTO_TCP, 0, 899, false),
            (PROTO_TCP, 0, 900, true),
            (PROTO_TCP, CONN_F_CLOSING, 119, false),
            (PROTO_TCP, CONN_F_CLOSING, 120, true),
            (PROTO_TCP, CONN_F_EMBRYONIC, 59, false),
            (PROTO_TCP, CONN_F_EMBRYONIC, 60, true),
            (PROTO_UDP, 0, 4, false),
            (PROTO_UDP, 0, 5, true),
        ];
        for (i, (proto, flags, idle, gone)) in cases.into_iter().enumerate() {
            let entry = (flow(proto, 0x0a00_0102, 1000 + i as u16), conn(idle, flags));
            let swept = sweep(vec![entry], &[], &BTreeMap::new(), &t, NOW);
            assert_eq!(
                swept.expired.len(),
                usize::from(gone),
                "proto {proto} flags {flags} idle {idle}"
            );
            assert_eq!(swept.live.len(), usize::from(!gone));
        }
    }

    fn settings(timeout_secs: u32) -> BTreeMap<u32, PersistSettings> {
        BTreeMap::from([(3, PersistSettings::v4(timeout_secs, 0xffff_ffff))])
    }

    fn client(idle_secs: u64, real: u32) -> (PersistKey, Persistent) {
        let key = settings(1)[&3].key(3, &[0x0a00_0102u32.to_be(), 0, 0, 0], FAMILY_V4);
        (
            key,
            Persistent {
                real,
                service_epoch: 1,
                last_seen_ns: NOW - idle_secs * S,
            },
        )
    }

    #[test]
    fn a_client_with_a_live_connection_is_held_a_sweep_ahead_once_half_its_timeout_is_used() {
        let live = (flow(PROTO_TCP, 0x0a00_0102, 1000), conn(500, 0));
        // Idle 2 s of 3: held one sweep ahead of now.
        let swept = sweep(vec![live], &[client(2, 7)], &settings(3), &timeouts(), NOW);
        let ahead = NOW + SWEEP_PERIOD.as_nanos() as u64;
        assert_eq!(swept.held, vec![(client(2, 7).0, client(2, 7).1, ahead)]);
        assert!(swept.lapsed.is_empty());
        // Past its timeout, too: the connection still holds it.
        let swept = sweep(vec![live], &[client(10, 7)], &settings(3), &timeouts(), NOW);
        assert_eq!(swept.held.len(), 1);
        // Refreshed recently: no write.
        let swept = sweep(
            vec![live],
            &[client(0, 7)],
            &settings(300),
            &timeouts(),
            NOW,
        );
        assert!(swept.held.is_empty() && swept.lapsed.is_empty());
    }

    #[test]
    fn a_client_whose_last_connection_expires_keeps_its_server_for_its_timeout_from_then() {
        let ending = (flow(PROTO_UDP, 0x0a00_0102, 1000), conn(5, 0));
        let swept = sweep(
            vec![ending],
            &[client(2, 7)],
            &settings(3),
            &timeouts(),
            NOW,
        );
        assert_eq!(swept.expired.len(), 1);
        assert_eq!(swept.held, vec![(client(2, 7).0, client(2, 7).1, NOW)]);
        // Without connections, it lapses its timeout after its last one.
        let swept = sweep(vec![], &[client(2, 7)], &settings(3), &timeouts(), NOW);
        assert!(swept.held.is_empty() && swept.lapsed.is_empty());
        let swept = sweep(vec![], &[client(3, 7)], &settings(3), &timeouts(), NOW);
        assert_eq!(swept.lapsed, vec![client(3, 7)]);
    }

    #[test]
    fn only_a_connection_to_the_clients_server_in_the_same_service_holds_it() {
        // The client's connection went to server 7; the client is now another server's (its
        // persistence lapsed and it was scheduled again), or of a service removed and added
        // again (another epoch).
        let live = (flow(PROTO_TCP, 0x0a00_0102, 1000), conn(1, 0));
        let swept = sweep(vec![live], &[client(5, 8)], &settings(3), &timeouts(), NOW);
        assert_eq!(swept.lapsed, vec![client(5, 8)]);
        let (key, mut other_epoch) = client(5, 7);
        other_epoch.service_epoch = 2;
        let swept = sweep(
            vec![live],
            &[(key, other_epoch)],
            &settings(3),
            &timeouts(),
            NOW,
        );
        assert_eq!(swept.lapsed, vec![(key, other_epoch)]);
        // A service that is not persistent (any more) leaves its clients alone.
        let swept = sweep(
            vec![live],
            &[client(5, 7)],
            &BTreeMap::new(),
            &timeouts(),
            NOW,
        );
        assert!(swept.held.is_empty() && swept.lapsed.is_empty());
    }
}
