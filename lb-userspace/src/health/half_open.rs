//! The half-open TCP check (`--check tcp-half-open`): one SYN, and the answer decides. A SYN-ACK
//! is up, a reset is down (nothing listens), and silence past the timeout is down.
//!
//! Nothing on the checker's side owns the probe's port, so the kernel answers the server's SYN-ACK
//! with a reset and the server drops its half-open connection at once: the server never accepts
//! anything (no accept, no request in its log), and the checker makes no socket per check (no
//! connect, no epoll registration, no close): about a third of a connect check's cost (see
//! `cargo xtask bench health`). The price is that only the kernel's listen queue is checked, not
//! the application's accept loop (F5 calls the same monitor "TCP Half Open", nmap a SYN scan).
//!
//! One [`Prober`] per network namespace and address family serves every target: a raw TCP
//! socket sends the SYNs, and a thread receives the answers through a socket filter that lets
//! only SYN-ACKs and resets to the probe port through. The engine sends the SYNs of a whole
//! grid step at once ([`Prober::send_batch`]) and takes their answers from a [`BatchSink`];
//! [`Prober::probe`] is the one-check form. The probe port is reserved by a TCP
//! socket bound to it (never listening), so that no connection of the host can take it.
//! Answers are matched by address, port and sequence number, and sequence numbers are keyed
//! hashes of a counter: a stray packet cannot pass a target that did not answer its own SYN,
//! and a forged one would have to guess a 32-bit number.

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher as _,
    io::{self, IoSlice, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, Instant},
};

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::sync::{oneshot, Notify};

/// TCP header flags.
const FIN: u8 = 0x01;
pub(super) const SYN: u8 = 0x02;
pub(super) const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// TCP's protocol number.
const IPPROTO_TCP: u8 = 6;

/// The SYN: a 20-byte header and one option, the MSS (servers answer a SYN without options
/// all the same, but some middleboxes drop it).
pub const SYN_LEN: usize = 24;
const MSS: u16 = 1460;
const WINDOW: u16 = 64240;

/// Answers read per receive call.
const BATCH: usize = 64;
/// Enough for an IPv4 header with options and a TCP header with options.
const ANSWER_CAP: usize = 120;

/// How a target answered its SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// SYN-ACK: something listens.
    Open,
    /// Reset: nothing listens.
    Refused,
}

/// Why a probe could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The prober could not be set up (no CAP_NET_RAW, say).
    #[error("half-open prober: {0}")]
    Setup(String),
    /// The kernel refused the SYN.
    #[error("sending the SYN: {0}")]
    Send(io::Error),
    /// The receiving side is gone.
    #[error("the half-open prober's receiver stopped")]
    Stopped,
}

/// What identifies a SYN and its answer: (target address, target port, the SYN's sequence
/// number).
pub type Key = (IpAddr, u16, u32);

/// What a waiting probe learns: the answer, or the error (errno) that sending its SYN met.
type Outcome = Result<Answer, i32>;

/// A SYN to send: whom it is for, and the segment.
pub struct Outgoing {
    /// The target and the sequence number.
    pub key: Key,
    /// The TCP segment ([`syn`]).
    pub segment: [u8; SYN_LEN],
}

/// A raw TCP socket that sends SYNs from a reserved port and receives only the answers to
/// that port (SYN-ACKs and resets), with nothing else: the kernel's part of a half-open check.
pub struct ProbeSocket {
    raw: Socket,
    /// Held for the reservation of `port`.
    _reservation: Socket,
    port: u16,
    v6: bool,
}

/// Buffers for [`ProbeSocket::receive`]: the packets and the message headers of one batch.
pub struct ReceiveBuffers {
    packets: Box<[[u8; ANSWER_CAP]; BATCH]>,
    headers: MultiHeaders<SockaddrStorage>,
}

impl Default for ReceiveBuffers {
    fn default() -> Self {
        ReceiveBuffers {
            packets: Box::new([[0; ANSWER_CAP]; BATCH]),
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }
}

impl ProbeSocket {
    /// Opens one for IPv6 or IPv4 in the calling thread's network namespace (needs
    /// CAP_NET_RAW).
    pub fn open(v6: bool) -> io::Result<ProbeSocket> {
        let (reservation, port) = reserve_port(v6)?;
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let raw = Socket::new(domain, Type::RAW, Some(Protocol::TCP)).map_err(|e| {
            io::Error::new(e.kind(), format!("raw TCP socket (needs CAP_NET_RAW): {e}"))
        })?;
        // Room for a burst of answers while the receiver is not scheduled, and of SYNs.
        raw.set_recv_buffer_size(4 << 20)?;
        raw.set_send_buffer_size(4 << 20)?;
        let layout = if v6 {
            Layout::Ipv6Segment
        } else {
            Layout::Ipv4
        };
        raw.attach_filter(&answer_filter(port, layout))?;
        // Packets that arrived between the socket's creation and its filter are dropped by the
        // port check in `parse_answer_*`; nothing else needs draining.
        Ok(ProbeSocket {
            raw,
            _reservation: reservation,
            port,
            v6,
        })
    }

    /// The port the SYNs come from.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends SYNs with as few `sendmmsg` calls as the kernel allows; the ones that could not be
    /// sent, by index, with their errno.
    pub fn send(&self, batch: &[Outgoing]) -> Vec<(usize, i32)> {
        let mut failed = Vec::new();
        for (start, chunk) in (0..).step_by(BATCH).zip(batch.chunks(BATCH)) {
            failed.extend(
                send_batch(&self.raw, chunk)
                    .into_iter()
                    .map(|(i, errno)| (start + i, errno)),
            );
        }
        failed
    }

    /// Makes [`ProbeSocket::receive`] give up (with `WouldBlock`) after `timeout` without an
    /// answer; it waits forever otherwise.
    pub fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        // Zero would mean no timeout at all.
        self.raw
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))
    }

    /// Waits for at least one answer and reads up to a batch of them (one `recvmmsg`).
    pub fn receive(&self, buffers: &mut ReceiveBuffers) -> io::Result<Vec<(Key, Answer)>> {
        let ReceiveBuffers { packets, headers } = buffers;
        // Each answer's length and, for IPv6 (whose raw sockets give no IP header), its source.
        let received: Vec<(usize, Option<Ipv6Addr>)> = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = packets
                .iter_mut()
                .map(|packet| [IoSliceMut::new(packet)])
                .collect();
            recvmmsg(
                self.raw.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            )?
            .map(|message| {
                let from = message
                    .address
                    .and_then(|a| a.as_sockaddr_in6().map(|a| a.ip()));
                (message.bytes, from)
            })
            .collect()
        };
        Ok(received
            .iter()
            .zip(packets.iter())
            .filter_map(|(&(len, from), buffer)| {
                let packet = &buffer[..len.min(ANSWER_CAP)];
                if self.v6 {
                    parse_answer_v6(packet, from?, self.port)
                } else {
                    parse_answer_v4(packet, self.port)
                }
            })
            .collect())
    }
}

/// The SYN sender and answer receiver of one address family in one network namespace, for
/// every check there: a [`ProbeSocket`], the probes waiting for answers, and the thread that
/// receives them.
pub struct Prober {
    socket: ProbeSocket,
    pending: Mutex<HashMap<Key, Waiter>>,
    /// SYNs to send at the next flush, and whether one is on its way.
    outbox: Mutex<Vec<Outgoing>>,
    flush_scheduled: AtomicBool,
    /// Counts the SYNs; a SYN's sequence number is the keyed hash of its count.
    count: AtomicU64,
    secret: RandomState,
}

/// Who waits for the answer to a SYN.
enum Waiter {
    /// One probe ([`Prober::probe`]).
    One(oneshot::Sender<Outcome>),
    /// A batch of them ([`Prober::send_batch`]): the answer goes to the sink with the token.
    Batch { sink: Arc<BatchSink>, token: u64 },
}

/// Where the receiving thread leaves the answers to a batch's SYNs
/// ([`Prober::send_batch`]), and wakes the batch's owner once per read of answers rather than
/// once per answer.
#[derive(Default)]
pub struct BatchSink {
    answers: Mutex<Vec<(u64, Answer, Instant)>>,
    notify: Notify,
}

impl BatchSink {
    /// Waits until answers are there (or were left since the last take).
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Takes the answers so far: each SYN's token, its answer, and when it was read.
    pub fn take(&self, into: &mut Vec<(u64, Answer, Instant)>) {
        into.append(&mut self.answers.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Probers of one kind, by network namespace (its inode) and family. They live as long as the
/// process, as their receiving threads do.
pub(super) type Probers<P> = OnceLock<Mutex<HashMap<(u64, bool), &'static P>>>;

/// The prober of `probers` for the family `v6` in the calling thread's network namespace, made
/// by `open` on first use and given a receiving thread named `name` that runs `receive`; why
/// it could not be made, as a sentence.
pub(super) fn prober_in_this_namespace<P: Sync + 'static>(
    probers: &'static Probers<P>,
    v6: bool,
    name: &str,
    open: impl FnOnce() -> io::Result<P>,
    receive: fn(&'static P),
) -> Result<&'static P, String> {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|e| format!("reading the network namespace: {e}"))?;
    let mut made = probers
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(prober) = made.get(&(netns, v6)) {
        return Ok(prober);
    }
    let prober: &'static P = Box::leak(Box::new(open().map_err(|e| e.to_string())?));
    std::thread::Builder::new()
        .name(format!("{name}-v{}", if v6 { 6 } else { 4 }))
        .spawn(move || receive(prober))
        .map_err(|e| format!("starting the receiver: {e}"))?;
    made.insert((netns, v6), prober);
    tracing::debug!(v6, prober = name, "prober ready");
    Ok(prober)
}

/// The half-open probers made so far.
static PROBERS: Probers<Prober> = OnceLock::new();

impl Prober {
    /// The prober for `family_of`'s address family in the calling thread's network namespace,
    /// made on first use.
    pub fn for_target(family_of: IpAddr) -> Result<&'static Prober, ProbeError> {
        let v6 = family_of.is_ipv6();
        prober_in_this_namespace(
            &PROBERS,
            v6,
            "xlb-syn",
            || Prober::open(v6),
            |p| p.receive(),
        )
        .map_err(ProbeError::Setup)
    }

    fn open(v6: bool) -> io::Result<Prober> {
        let socket = ProbeSocket::open(v6)?;
        Ok(Prober {
            socket,
            pending: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
            count: AtomicU64::new(0),
            secret: RandomState::new(),
        })
    }

    /// The port the SYNs come from.
    pub fn port(&self) -> u16 {
        self.socket.port()
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Key, Waiter>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn outbox(&self) -> MutexGuard<'_, Vec<Outgoing>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a SYN to `target` from `source` (the address the kernel will send from: it is in
    /// the IPv4 checksum) and waits for the answer, without a limit: the caller bounds the wait
    /// and drops the future, which forgets the SYN. Must run on a Tokio runtime.
    ///
    /// SYNs go out in batches: the first probe of a round schedules a flush task that yields
    /// once, so that it runs after the other checks that the same timer tick woke and sends
    /// all of their SYNs with one `sendmmsg`. A burst also lets the receiving side take the
    /// answers in one interrupt and one wake-up rather than one per check.
    pub async fn probe(
        &'static self,
        source: IpAddr,
        target: SocketAddr,
    ) -> Result<Answer, ProbeError> {
        let seq = self
            .secret
            .hash_one(self.count.fetch_add(1, Ordering::Relaxed)) as u32;
        let key = (target.ip(), target.port(), seq);
        let (sender, receiver) = oneshot::channel();
        self.pending().insert(key, Waiter::One(sender));
        let waiting = Waiting { prober: self, key };
        let segment = syn(source, target, self.port(), seq);
        self.outbox().push(Outgoing { key, segment });
        if !self.flush_scheduled.swap(true, Ordering::AcqRel) {
            // Should the task never run (its runtime shutting down; the prober serves every
            // runtime of the process), the guard clears the flag so that the next probe, on
            // another runtime, schedules a flush that sends what is waiting.
            let guard = FlushScheduled(self);
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                guard.0.flush();
            });
        }
        let outcome = receiver.await.map_err(|_| ProbeError::Stopped)?;
        // Whoever completed the channel (the receiver, or a flush that could not send) took
        // the entry out: nothing is left to forget, and the lock need not be taken again.
        waiting.disarm();
        outcome.map_err(|errno| ProbeError::Send(io::Error::from_raw_os_error(errno)))
    }

    /// Sends every SYN in the outbox; a SYN that cannot be sent fails its probe at once.
    fn flush(&self) {
        // Cleared before the outbox is taken: a SYN queued after the take schedules a new flush.
        self.flush_scheduled.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *self.outbox());
        let failed = self.socket.send(&batch);
        if failed.is_empty() {
            return;
        }
        let mut pending = self.pending();
        for (index, errno) in failed {
            match pending.remove(&batch[index].key) {
                Some(Waiter::One(waiter)) => {
                    let _ = waiter.send(Err(errno));
                }
                // Only `probe` queues in the outbox.
                Some(Waiter::Batch { .. }) | None => {}
            }
        }
    }

    /// Sends a SYN to each `(token, source, target)` of `probes` at once (one `sendmmsg` per
    /// [`BATCH`]), each answer to be left in `sink` with its token. The keys of the SYNs, in
    /// order, to [`Prober::forget`] those that get no answer; the probes whose SYN could not be
    /// sent, by index, with their error (those are forgotten already).
    pub fn send_batch(
        &self,
        sink: &Arc<BatchSink>,
        probes: &[(u64, IpAddr, SocketAddr)],
        keys: &mut Vec<Key>,
    ) -> Vec<(usize, ProbeError)> {
        let outgoing: Vec<Outgoing> = probes
            .iter()
            .map(|&(_, source, target)| {
                let seq = self
                    .secret
                    .hash_one(self.count.fetch_add(1, Ordering::Relaxed))
                    as u32;
                Outgoing {
                    key: (target.ip(), target.port(), seq),
                    segment: syn(source, target, self.port(), seq),
                }
            })
            .collect();
        {
            let mut pending = self.pending();
            for (o, &(token, _, _)) in outgoing.iter().zip(probes) {
                pending.insert(
                    o.key,
                    Waiter::Batch {
                        sink: sink.clone(),
                        token,
                    },
                );
            }
        }
        keys.extend(outgoing.iter().map(|o| o.key));
        let failed = self.socket.send(&outgoing);
        if failed.is_empty() {
            return Vec::new();
        }
        let mut pending = self.pending();
        failed
            .into_iter()
            .map(|(index, errno)| {
                pending.remove(&outgoing[index].key);
                (index, ProbeError::Send(io::Error::from_raw_os_error(errno)))
            })
            .collect()
    }

    /// Forgets the SYNs of `keys` (their probes timed out or were dropped).
    pub fn forget(&self, keys: impl IntoIterator<Item = Key>) {
        let mut pending = self.pending();
        for key in keys {
            pending.remove(&key);
        }
    }

    /// The receiving thread: answers in, waiting probes woken.
    fn receive(&self) {
        let mut buffers = ReceiveBuffers::default();
        let mut woken: Vec<Arc<BatchSink>> = Vec::new();
        loop {
            let answers = match self.socket.receive(&mut buffers) {
                Ok(answers) => answers,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("half-open prober: receiving: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            if answers.is_empty() {
                continue;
            }
            let at = Instant::now();
            let mut pending = self.pending();
            for (key, answer) in answers {
                match pending.remove(&key) {
                    Some(Waiter::One(waiter)) => {
                        let _ = waiter.send(Ok(answer));
                    }
                    Some(Waiter::Batch { sink, token }) => {
                        sink.answers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((token, answer, at));
                        // Once per sink and read: the owner takes all that is there.
                        if !woken.iter().any(|w| Arc::ptr_eq(w, &sink)) {
                            woken.push(sink);
                        }
                    }
                    None => {}
                }
            }
            drop(pending);
            for sink in woken.drain(..) {
                sink.notify.notify_one();
            }
        }
    }
}

/// Held by a scheduled flush task; clears the flag when the task ends, run or not.
struct FlushScheduled(&'static Prober);

impl Drop for FlushScheduled {
    fn drop(&mut self) {
        self.0.flush_scheduled.store(false, Ordering::Release);
    }
}

/// Forgets a SYN whose probe ended (answered, failed, or dropped on timeout).
struct Waiting<'a> {
    prober: &'a Prober,
    key: Key,
}

impl Waiting<'_> {
    /// The probe ended with its entry already gone.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.prober.pending().remove(&self.key);
    }
}

/// The address the kernel sends from to reach `target` (a UDP "connect" picks the route and
/// sends nothing).
pub fn source_for(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// A SYN from `source`:`port` to `target`, with its checksum (`source` is the address the
/// kernel sends from, which [`source_for`] gives).
pub fn syn(source: IpAddr, target: SocketAddr, port: u16, seq: u32) -> [u8; SYN_LEN] {
    let mut s = [0_u8; SYN_LEN];
    s.copy_from_slice(&tcp_segment(source, target, port, seq, SYN));
    s
}

/// A TCP segment with `flags` from `source`:`port` to `target`, its checksum over the
/// pseudo-header of either family. A SYN carries the MSS option ([`SYN_LEN`] bytes in all); a
/// reset carries nothing.
pub(super) fn tcp_segment(
    source: IpAddr,
    target: SocketAddr,
    port: u16,
    seq: u32,
    flags: u8,
) -> Vec<u8> {
    let syn = flags & SYN != 0;
    let mut s = vec![0_u8; if syn { SYN_LEN } else { 20 }];
    s[0..2].copy_from_slice(&port.to_be_bytes());
    s[2..4].copy_from_slice(&target.port().to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    // Acknowledgment 0; data offset in words; the flags.
    s[12] = if syn { 6 << 4 } else { 5 << 4 };
    s[13] = flags;
    if syn {
        s[14..16].copy_from_slice(&WINDOW.to_be_bytes());
        // Checksum [16..18] and urgent pointer [18..20] zero; then the MSS option.
        s[20] = 2;
        s[21] = 4;
        s[22..24].copy_from_slice(&MSS.to_be_bytes());
    }
    let length = u32::try_from(s.len()).unwrap_or(u32::MAX);
    let check = match (source, target.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let length = u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes();
            checksum(&[&from.octets(), &to.octets(), &[0, IPPROTO_TCP], &length, &s])
        }
        (from, to) => checksum(&[
            &v6_octets(from),
            &v6_octets(to),
            &length.to_be_bytes(),
            &[0, 0, 0, IPPROTO_TCP],
            &s,
        ]),
    };
    s[16..18].copy_from_slice(&check.to_be_bytes());
    s
}

/// An address as IPv6 octets (IPv4-mapped for IPv4).
pub(super) fn v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The Internet checksum (RFC 1071) of the parts, each of even length but the last.
pub(super) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u32::from);
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (as a raw socket receives it: from the IP header on) that answers a SYN from
/// `port`: the key of the SYN it answers, and how.
pub fn parse_answer_v4(packet: &[u8], port: u16) -> Option<(Key, Answer)> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    // A fragment (offset or more-fragments) is not an answer to a SYN.
    let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x3fff;
    if header < 20 || fragment != 0 || *packet.get(9)? != IPPROTO_TCP {
        return None;
    }
    let from: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let from = Ipv4Addr::from(from);
    parse_segment(packet.get(header..)?, IpAddr::V4(from), port)
}

/// The same for IPv6, whose raw sockets receive from the TCP header on, the source apart.
pub fn parse_answer_v6(segment: &[u8], from: Ipv6Addr, port: u16) -> Option<(Key, Answer)> {
    parse_segment(segment, IpAddr::V6(from), port)
}

fn parse_segment(tcp: &[u8], from: IpAddr, port: u16) -> Option<(Key, Answer)> {
    let field = |at: usize| Some(u16::from_be_bytes([*tcp.get(at)?, *tcp.get(at + 1)?]));
    let source_port = field(0)?;
    if field(2)? != port {
        return None;
    }
    let ack = u32::from_be_bytes(tcp.get(8..12)?.try_into().ok()?);
    let flags = *tcp.get(13)?;
    // Both answers acknowledge the SYN: ack = its sequence + 1 (RFC 9293 3.5.2 for the reset).
    let answer = match flags & (SYN | ACK | RST | FIN) {
        f if f == SYN | ACK => Answer::Open,
        f if f & RST != 0 && f & ACK != 0 => Answer::Refused,
        _ => return None,
    };
    Some(((from, source_port, ack.wrapping_sub(1)), answer))
}

/// Where a socket's packets start, for [`answer_filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// At the IPv4 header (IPv4 raw sockets, and packet sockets of IPv4).
    Ipv4,
    /// At the TCP header (IPv6 raw sockets).
    Ipv6Segment,
    /// At the IPv6 header (packet sockets of IPv6); a TCP header right after it.
    Ipv6Packet,
}

/// A classic BPF program that lets through only TCP segments to `port` with SYN and ACK, or
/// with RST: everything else the host receives never wakes the receiver.
pub(super) fn answer_filter(port: u16, layout: Layout) -> Vec<SockFilter> {
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_B_IND: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_IND) as u16;
    const LDX_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = SockFilter::new;
    let port = u32::from(port);
    let mut program = Vec::new();
    let (load_h, load_b, tcp) = match layout {
        Layout::Ipv6Segment => (LD_H_ABS, LD_B_ABS, 0),
        Layout::Ipv6Packet => {
            // Next header TCP (no extension headers: answers to a SYN carry none).
            program.push(op(LD_B_ABS, 0, 0, 6));
            program.push(op(JEQ, 0, 7, u32::from(IPPROTO_TCP))); // -> drop
            (LD_H_ABS, LD_B_ABS, 40)
        }
        Layout::Ipv4 => {
            // Not a first fragment's tail: fragment offset must be zero. Then X = IP header
            // length.
            program.push(op(LD_H_ABS, 0, 0, 6));
            program.push(op(JSET, 8, 0, 0x1fff)); // -> drop
            program.push(op(LDX_MSH, 0, 0, 0));
            (LD_H_IND, LD_B_IND, 0)
        }
    };
    program.extend([
        op(load_h, 0, 0, tcp + 2),                             // destination port
        op(JEQ, 0, 5, port),                                   // not ours -> drop
        op(load_b, 0, 0, tcp + 13),                            // flags
        op(JSET, 2, 0, u32::from(RST)),                        // reset -> accept
        op(AND, 0, 0, u32::from(SYN | ACK)),                   //
        op(JEQ, 0, 1, u32::from(SYN | ACK)),                   // not SYN-ACK -> drop
        op(RET, 0, 0, u32::try_from(ANSWER_CAP).unwrap_or(0)), // accept (the head only)
        op(RET, 0, 0, 0),                                      // drop
    ]);
    program
}

/// A TCP socket bound to a free port on every address of its family (never listening), and the
/// port: no connection of the host can take the port while the socket is held.
pub(super) fn reserve_port(v6: bool) -> io::Result<(Socket, u16)> {
    let (domain, any): (Domain, SocketAddr) = if v6 {
        (Domain::IPV6, (Ipv6Addr::UNSPECIFIED, 0).into())
    } else {
        (Domain::IPV4, (Ipv4Addr::UNSPECIFIED, 0).into())
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if v6 {
        socket.set_only_v6(true)?;
    }
    socket.bind(&any.into())?;
    let port = socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("the reserved port's socket has no port"))?;
    Ok((socket, port))
}

/// Sends up to [`BATCH`] SYNs (see [`ProbeSocket::send`]) with as few `sendmmsg` calls as the
/// kernel allows; the ones that could not be sent, by index, with their errno.
fn send_batch(socket: &Socket, batch: &[Outgoing]) -> Vec<(usize, i32)> {
    // A raw socket's destination has port 0 (for IPv6 the field would be the protocol).
    let addresses: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|o| Some(SockaddrStorage::from(SocketAddr::new(o.key.0, 0))))
        .collect();
    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|o| [IoSlice::new(&o.segment)]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    let no_control: [ControlMessage<'_>; 0] = [];
    let mut failed = Vec::new();
    let mut next = 0;
    while next < batch.len() {
        let sent = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices[next..],
            &addresses[next..],
            no_control,
            MsgFlags::MSG_DONTWAIT,
        )
        .map(Iterator::count);
        match sent {
            Ok(sent) if sent > 0 => next += sent,
            // Not an error, but nothing sent: the first is counted as failed, not retried forever.
            Ok(_) => {
                failed.push((next, nix::errno::Errno::EIO as i32));
                next += 1;
            }
            Err(nix::errno::Errno::EINTR) => {}
            // The first message of the rest failed (a sendmmsg that sent some reports the error
            // of the next one on the next call): its probe fails, the others are tried again.
            Err(errno) => {
                failed.push((next, errno as i32));
                next += 1;
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(flags: u8, source_port: u16, dest_port: u16, ack: u32) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 9, 10, 0, 0, 1,
        ];
        let mut tcp = [0_u8; 20];
        tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&dest_port.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        ip.extend_from_slice(&tcp);
        ip
    }

    #[test]
    fn a_syn_has_the_ports_sequence_flags_mss_and_a_valid_checksum() {
        let target: SocketAddr = "10.0.0.9:8080".parse().unwrap();
        let source = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let s = syn(source, target, 40000, 0xdead_beef);
        assert_eq!(&s[0..4], &[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(&s[4..8], &0xdead_beef_u32.to_be_bytes());
        assert_eq!(s[12], 0x60);
        assert_eq!(s[13], SYN);
        assert_eq!(&s[20..24], &[2, 4, 0x05, 0xb4]);
        // A segment with its checksum in place sums to zero (the checksum of it is 0).
        assert_eq!(
            checksum(&[
                &[10, 0, 0, 1],
                &[10, 0, 0, 9],
                &[0, IPPROTO_TCP],
                &[0, 24],
                &s
            ]),
            0
        );
    }

    #[test]
    fn an_ipv6_syn_carries_its_checksum_over_the_ipv6_pseudo_header() {
        let target: SocketAddr = "[fd00::9]:80".parse().unwrap();
        let source: IpAddr = "fd00::1".parse().unwrap();
        let s = syn(source, target, 40000, 1);
        assert_ne!(&s[16..18], &[0, 0]);
        assert_eq!(
            checksum(&[
                &v6_octets(source),
                &v6_octets(target.ip()),
                &[0, 0, 0, 24],
                &[0, 0, 0, IPPROTO_TCP],
                &s
            ]),
            0
        );
    }

    #[test]
    fn a_syn_ack_or_a_reset_to_the_probe_port_answers_the_syn_it_acknowledges() {
        let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(
            parse_answer_v4(&answer(SYN | ACK, 80, 40000, 101), 40000),
            Some(((from, 80, 100), Answer::Open))
        );
        assert_eq!(
            parse_answer_v4(&answer(RST | ACK, 80, 40000, 0), 40000),
            Some(((from, 80, u32::MAX), Answer::Refused))
        );
    }

    #[test]
    fn anything_else_is_no_answer() {
        // Another port, a bare ACK, a SYN, a reset without ACK, a SYN-ACK with FIN.
        assert_eq!(
            parse_answer_v4(&answer(SYN | ACK, 80, 40001, 1), 40000),
            None
        );
        assert_eq!(parse_answer_v4(&answer(ACK, 80, 40000, 1), 40000), None);
        assert_eq!(parse_answer_v4(&answer(SYN, 80, 40000, 1), 40000), None);
        assert_eq!(parse_answer_v4(&answer(RST, 80, 40000, 1), 40000), None);
        assert_eq!(
            parse_answer_v4(&answer(SYN | ACK | FIN, 80, 40000, 1), 40000),
            None
        );
        // Truncated, not IPv4, a fragment, not TCP.
        let good = answer(SYN | ACK, 80, 40000, 1);
        for cut in 0..good.len() - 6 {
            assert_eq!(parse_answer_v4(&good[..cut], 40000), None, "cut at {cut}");
        }
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(parse_answer_v4(&v6, 40000), None);
        let mut fragment = good.clone();
        fragment[7] = 1;
        assert_eq!(parse_answer_v4(&fragment, 40000), None);
        let mut udp = good;
        udp[9] = 17;
        assert_eq!(parse_answer_v4(&udp, 40000), None);
    }

    #[test]
    #[ignore = "needs root (a raw socket)"]
    fn a_flush_lost_with_its_runtime_does_not_stall_the_next_runtimes_probes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let target = listener.local_addr().expect("address");
        let prober = Prober::for_target(target.ip()).expect("prober");
        let source = source_for(target).expect("source");
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        // The probe queues its SYN and schedules the flush, which never runs: the runtime ends.
        let first = runtime();
        first.block_on(async {
            use std::future::Future as _;
            let mut probe = std::pin::pin!(prober.probe(source, target));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(probe.as_mut().poll(&mut context).is_pending());
        });
        drop(first);
        let answer = runtime().block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                prober.probe(source, target),
            )
            .await
        });
        assert_eq!(
            answer.expect("answered in time").expect("sent"),
            Answer::Open
        );
    }

    #[test]
    fn an_ipv6_answer_is_read_from_the_tcp_header() {
        let packet = answer(SYN | ACK, 443, 40000, 8);
        let from: Ipv6Addr = "fd00::9".parse().unwrap();
        assert_eq!(
            parse_answer_v6(&packet[20..], from, 40000),
            Some(((IpAddr::V6(from), 443, 7), Answer::Open))
        );
    }
}
