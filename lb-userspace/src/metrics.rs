//! Metrics in Prometheus' text exposition format (0.0.4) and a live status page, served over a
//! small read-only HTTP/1.1 server (xlbd's `--metrics-listen`, loopback by default).
//!
//! - [`render`] turns what `xlbadm -L --stats` shows (a [`Listing`]), the data path's global
//!   counters and the health engine's counters into the exposition text; [`render_status`] turns
//!   the same into an HTML page. Both are pure.
//! - [`serve`] answers `GET /metrics`, `GET /` (and `HEAD` of both) on a TCP listener, one task
//!   per connection, one request per connection (`Connection: close`). The daemon's state is
//!   locked only while a [`Snapshot`] is taken, never while rendering or writing to a client, so
//!   that a slow scraper cannot hold up xlbadm or the health checks.
//!
//! Counters come straight from the maps and are never reset by this module; `xlbadm -Z` zeroes
//! them in the maps, which Prometheus sees as a counter reset.

use std::{fmt::Write as _, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use lb_common::GlobalStat;
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

use crate::{
    control::Shared,
    dataplane::DataplaneError,
    health::{engine::EngineStats, machine::Health},
    state::{Forwarding, Protocol},
    status::{Listing, RealListing, ServiceListing},
};

/// Where xlbd serves metrics unless told otherwise: loopback only, since the page shows the
/// whole configuration and there is no authentication.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9641";

/// The content type of the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing a response (and draining what the client still sends) may take: bounds the
/// life of a connection's task when the client stops reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon's numbers could not be read.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// A map could not be read.
    #[error("reading the data path's counters")]
    Dataplane(#[from] DataplaneError),
}

/// Everything one page shows, taken under the daemon's lock and rendered after it is released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Services and real servers with counters, connections, weights, rates and health.
    pub listing: Listing,
    /// Every global counter of the data path.
    pub globals: Vec<(GlobalStat, u64)>,
    /// The health engine's counters, when the daemon runs one.
    pub health: Option<EngineStats>,
}

impl Snapshot {
    /// Reads the listing and the counters from the daemon's state.
    pub fn of(shared: &mut Shared) -> Result<Self, MetricsError> {
        let listing = shared.runtime.listing(&shared.rates)?;
        let health = shared.runtime.health_stats();
        let globals = shared.runtime.dataplane().global_counters()?;
        Ok(Self {
            listing,
            globals,
            health,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its HELP and TYPE lines, then all its samples together (the format wants
/// a family's samples contiguous).
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &str, value: impl std::fmt::Display) {
        self.samples.push((labels.to_owned(), value.to_string()));
    }

    fn write(&self, out: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

/// A HELP text as the format wants it: backslash and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{name="value",...}`.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The `protocol` label of a service.
pub fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The `forwarding` label of a real server, named as `xlb-realserver --mode` names them.
pub fn forwarding_label(forwarding: Forwarding) -> &'static str {
    match forwarding {
        Forwarding::DirectRoute => "dr",
        Forwarding::Tunnel => "tun",
    }
}

/// `xlb_real_up`: 0 only when the health check says down. A server without a check and a
/// checked one before its first result both keep their configured weight and take traffic
/// (see [`crate::health::machine`]), so they count as up.
fn real_up(real: &RealListing) -> u8 {
    let down = Health::Down.to_string();
    u8::from(real.health.as_ref().is_none_or(|h| h.state != down))
}

fn sorted_services(listing: &Listing) -> Vec<&ServiceListing> {
    let mut services: Vec<&ServiceListing> = listing.services.iter().collect();
    services.sort_by_key(|s| s.addr);
    services
}

/// The exposition text (format 0.0.4) of the daemon's numbers: per service and per real server,
/// every data-path counter, the health engine's counters when there is an engine, and `xlb_up`.
pub fn render(
    listing: &Listing,
    globals: &[(GlobalStat, u64)],
    health: Option<&EngineStats>,
) -> String {
    use Kind::{Counter, Gauge};
    let mut up = Family::new(
        "xlb_up",
        Gauge,
        "1 when xlbd read its data path's counters for this scrape.",
    );
    let mut svc_conns = Family::new(
        "xlb_service_connections_total",
        Counter,
        "New connections (connection-table misses) the service scheduled to a real server.",
    );
    let mut svc_packets = Family::new(
        "xlb_service_packets_total",
        Counter,
        "Packets from clients forwarded for the service.",
    );
    let mut svc_bytes = Family::new(
        "xlb_service_bytes_total",
        Counter,
        "Bytes from clients forwarded for the service, counted from the Ethernet header.",
    );
    let mut real_conns = Family::new(
        "xlb_real_connections_total",
        Counter,
        "New connections scheduled to the real server.",
    );
    let mut real_packets = Family::new(
        "xlb_real_packets_total",
        Counter,
        "Packets from clients forwarded to the real server.",
    );
    let mut real_bytes = Family::new(
        "xlb_real_bytes_total",
        Counter,
        "Bytes from clients forwarded to the real server, counted from the Ethernet header.",
    );
    let mut real_weight = Family::new(
        "xlb_real_weight",
        Gauge,
        "The weight in force: the configured one, 0 while a health check holds the server out, \
         less during a slow start.",
    );
    let mut real_active = Family::new(
        "xlb_real_active_connections",
        Gauge,
        "Tracked connections in an established state (TCP, not idled out).",
    );
    let mut real_inactive = Family::new(
        "xlb_real_inactive_connections",
        Gauge,
        "Other tracked connections: closing TCP and UDP flows, not idled out.",
    );
    let mut real_up_family = Family::new(
        "xlb_real_up",
        Gauge,
        "1 up, 0 down by the health check. Servers without a check, and checked ones before \
         their first result (they keep their configured weight meanwhile), are 1.",
    );
    let mut real_latency = Family::new(
        "xlb_real_check_latency_seconds",
        Gauge,
        "How long the last health check of the real server took (checked servers with a result).",
    );
    let mut datapath = Family::new(
        "xlb_datapath_packets_total",
        Counter,
        "Packets by the data path's verdict and by the reason they were passed or dropped; \
         seen_*, icmp_* and conntrack_* count events alongside a verdict.",
    );

    up.add("", 1);
    for svc in sorted_services(listing) {
        let service = svc.addr.to_string();
        let protocol = protocol_label(svc.addr.protocol);
        let svc_labels = labels(&[("service", &service), ("protocol", protocol)]);
        svc_conns.add(&svc_labels, svc.stats.conns);
        svc_packets.add(&svc_labels, svc.stats.in_pkts);
        svc_bytes.add(&svc_labels, svc.stats.in_bytes);
        for real in &svc.reals {
            let addr = SocketAddr::new(real.addr, real.port).to_string();
            let l = labels(&[
                ("service", &service),
                ("protocol", protocol),
                ("real", &addr),
                ("forwarding", forwarding_label(real.forwarding)),
            ]);
            real_conns.add(&l, real.stats.conns);
            real_packets.add(&l, real.stats.in_pkts);
            real_bytes.add(&l, real.stats.in_bytes);
            real_weight.add(&l, real.weight);
            real_active.add(&l, real.active_conns);
            real_inactive.add(&l, real.inactive_conns);
            real_up_family.add(&l, real_up(real));
            if let Some(us) = real.health.as_ref().and_then(|h| h.latency_us) {
                real_latency.add(&l, us as f64 / 1e6);
            }
        }
    }
    for (stat, value) in globals {
        datapath.add(&labels(&[("reason", stat.name())]), value);
    }

    let mut families = vec![
        up,
        svc_conns,
        svc_packets,
        svc_bytes,
        real_conns,
        real_packets,
        real_bytes,
        real_weight,
        real_active,
        real_inactive,
        real_up_family,
        real_latency,
        datapath,
    ];
    if let Some(h) = health {
        let mut checks = Family::new(
            "xlb_health_checks_total",
            Counter,
            "Health checks done since xlbd started.",
        );
        checks.add("", h.checks);
        let mut failures = Family::new(
            "xlb_health_check_failures_total",
            Counter,
            "Health checks that failed since xlbd started.",
        );
        failures.add("", h.failures);
        let mut late = Family::new(
            "xlb_health_checks_late_total",
            Counter,
            "Health checks that started more than a tenth of their interval late.",
        );
        late.add("", h.late);
        families.extend([checks, failures, late]);
    }
    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Status page

/// Text made safe for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The status page: every service with its real servers (weight, health, connections, counters
/// and rates), the data path's non-zero drop counters and the health engine's counters. It
/// reloads itself every 5 seconds.
pub fn render_status(snapshot: &Snapshot) -> String {
    let e = escape_html;
    let mut out = String::from(concat!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n",
        "<meta http-equiv=\"refresh\" content=\"5\">\n<title>xlb status</title>\n",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}",
        "td,th{border:1px solid #aaa;padding:2px 6px;text-align:right}",
        "td.l,th.l{text-align:left}.down{background:#fcc}</style>\n",
        "</head><body>\n<h1>xlb</h1>\n",
    ));
    let services = sorted_services(&snapshot.listing);
    if services.is_empty() {
        out.push_str("<p>No virtual service.</p>\n");
    }
    for svc in services {
        let _ = writeln!(
            out,
            "<h2>{} {} ({})</h2>",
            e(&protocol_label(svc.addr.protocol).to_uppercase()),
            e(&svc.addr.to_string()),
            e(svc.scheduler.name()),
        );
        let _ = writeln!(
            out,
            "<p>{} connections, {} packets, {} bytes; {} conn/s, {} packets/s, {} bytes/s</p>",
            svc.stats.conns,
            svc.stats.in_pkts,
            svc.stats.in_bytes,
            svc.rates.cps,
            svc.rates.in_pps,
            svc.rates.in_bps,
        );
        if svc.reals.is_empty() {
            out.push_str("<p>No real server.</p>\n");
            continue;
        }
        out.push_str(concat!(
            "<table>\n<tr><th class=\"l\">real server</th><th class=\"l\">forwarding</th>",
            "<th>weight</th><th class=\"l\">health</th><th class=\"l\">check</th>",
            "<th>latency</th><th class=\"l\">last failure</th><th>active</th><th>inactive</th>",
            "<th>connections</th><th>packets</th><th>bytes</th><th>conn/s</th>",
            "<th>packets/s</th><th>bytes/s</th></tr>\n",
        ));
        for real in &svc.reals {
            let (state, check, latency, failure) = match &real.health {
                Some(h) => (
                    h.state.clone(),
                    h.check.clone(),
                    h.latency_us
                        .map(|us| format!("{:.1} ms", us as f64 / 1000.0))
                        .unwrap_or_default(),
                    h.last_failure.clone().unwrap_or_default(),
                ),
                None => (
                    "unchecked".to_owned(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            };
            let class = if real_up(real) == 0 {
                " class=\"down\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<tr{class}><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td>\
                 <td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                e(&SocketAddr::new(real.addr, real.port).to_string()),
                forwarding_label(real.forwarding),
                real.weight,
                e(&state),
                e(&check),
                e(&latency),
                e(&failure),
                real.active_conns,
                real.inactive_conns,
                real.stats.conns,
                real.stats.in_pkts,
                real.stats.in_bytes,
                real.rates.cps,
                real.rates.in_pps,
                real.rates.in_bps,
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h2>Data path drops</h2>\n");
    let drops: Vec<&(GlobalStat, u64)> = snapshot
        .globals
        .iter()
        .filter(|(stat, value)| stat.name().starts_with("drop_") && *value > 0)
        .collect();
    if drops.is_empty() {
        out.push_str("<p>No packet dropped.</p>\n");
    } else {
        out.push_str("<table>\n<tr><th class=\"l\">reason</th><th>packets</th></tr>\n");
        for (stat, value) in drops {
            let _ = writeln!(
                out,
                "<tr><td class=\"l\">{}</td><td>{value}</td></tr>",
                e(stat.name())
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(h) = &snapshot.health {
        let _ = writeln!(
            out,
            "<h2>Health checks</h2>\n<p>{} checks, {} failed, {} late</p>",
            h.checks, h.failures, h.late
        );
    }
    out.push_str("<p><a href=\"/metrics\">metrics</a></p>\n</body></html>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A request's method, as far as this server cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: GET without the body.
    Head,
    /// Anything else (answered 405).
    Other(String),
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its method.
    pub method: Method,
    /// The path of its target, without the query.
    pub path: String,
}

/// Why a request head was refused (400).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Longer than [`MAX_HEAD`].
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    TooLong,
    /// Not an HTTP/1.x request head.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// RFC 9110's `tchar`: what a method or a header name is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Where the head ends in `buf` (just after the empty line), if it is all there. A bare LF
/// ends lines too, as RFC 9112 lets a server accept.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

/// Parses a request head (the request line and headers, up to the empty line).
pub fn parse_request(head: &[u8]) -> Result<Request, RequestError> {
    if head.len() > MAX_HEAD {
        return Err(RequestError::TooLong);
    }
    let text = std::str::from_utf8(head).map_err(|_| RequestError::Malformed("not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines
        .next()
        .ok_or(RequestError::Malformed("no request line"))?;
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(RequestError::Malformed(
            "the request line is not METHOD TARGET VERSION",
        ));
    };
    if !is_token(method) {
        return Err(RequestError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(RequestError::Malformed("the target is not a path"));
    }
    let minor = version
        .strip_prefix("HTTP/1.")
        .filter(|m| m.len() == 1 && m.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(RequestError::Malformed("not HTTP/1.x"))?;
    let mut host = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return Err(RequestError::Malformed("folded header line"));
        }
        let (name, _value) = line
            .split_once(':')
            .ok_or(RequestError::Malformed("header line without a colon"))?;
        if !is_token(name) {
            return Err(RequestError::Malformed("bad header name"));
        }
        host |= name.eq_ignore_ascii_case("host");
    }
    // RFC 9112 3.2: an HTTP/1.1 request without Host gets a 400.
    if minor != "0" && !host {
        return Err(RequestError::Malformed("no Host header"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_owned()),
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_owned();
    Ok(Request { method, path })
}

enum ReadError {
    TooLong,
    Truncated,
    Io(std::io::Error),
}

/// Reads a request head; `None` when the client closed without sending anything.
async fn read_head(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(&buf) {
            if end > MAX_HEAD {
                return Err(ReadError::TooLong);
            }
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLong);
        }
        let n = stream.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    allow: bool,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: body.into(),
        }
    }

    /// The bytes to send; a HEAD response has the same headers (Content-Length included) and no
    /// body.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Serves the daemon's metrics and status page on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>) {
    serve_with(listener, move || {
        let shared = shared.clone();
        // The guard lives only inside this future: it is released before anything is rendered
        // or written.
        async move { Snapshot::of(&mut *shared.lock().await) }
    })
    .await
}

/// Connections served at once; more wait in the listen queue, so that a flood of idle
/// connections cannot pile up tasks (each holds its slot until its 5 s read timeout at most).
const MAX_CONNECTIONS: usize = 64;

/// Serves pages made from the snapshots `snapshot` takes (one per request), until the task is
/// dropped. Each connection is its own task, at most [`MAX_CONNECTIONS`] at once; one failing
/// never stops the server.
pub async fn serve_with<F, Fut>(listener: TcpListener, snapshot: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Snapshot, MetricsError>> + Send + 'static,
{
    let snapshot = Arc::new(snapshot);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                // Out of file descriptors (the usual cause) would otherwise spin this loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &*snapshot).await {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

async fn connection<F, Fut>(mut stream: TcpStream, snapshot: &F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Snapshot, MetricsError>>,
{
    let (response, head_only) =
        match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => (
                Response::text(408, "Request Timeout", "request timed out\n"),
                false,
            ),
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(ReadError::Io(e))) => return Err(e),
            Ok(Err(ReadError::TooLong)) => (
                Response::text(400, "Bad Request", format!("{}\n", RequestError::TooLong)),
                false,
            ),
            Ok(Err(ReadError::Truncated)) => (
                Response::text(400, "Bad Request", "the request head ended early\n"),
                false,
            ),
            Ok(Ok(Some(head))) => match parse_request(&head) {
                Err(e) => (Response::text(400, "Bad Request", format!("{e}\n")), false),
                Ok(request) => {
                    let head_only = request.method == Method::Head;
                    (respond(&request, snapshot).await, head_only)
                }
            },
        };
    let bytes = response.to_bytes(head_only);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Read what the client still sends (the rest of an oversized head) until it closes:
        // closing with unread data would send a reset, which can destroy the response before
        // the client reads it.
        let mut sink = [0u8; 2048];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn respond<F, Fut>(request: &Request, snapshot: &F) -> Response
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Snapshot, MetricsError>>,
{
    if let Method::Other(_) = request.method {
        let mut response = Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
        response.allow = true;
        return response;
    }
    let page = match request.path.as_str() {
        "/metrics" => Page::Metrics,
        "/" => Page::Status,
        _ => return Response::text(404, "Not Found", "not found: try / or /metrics\n"),
    };
    let snap = match snapshot().await {
        Ok(snap) => snap,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: no snapshot");
            return Response::text(500, "Internal Server Error", format!("{e}\n"));
        }
    };
    match page {
        Page::Metrics => Response {
            status: 200,
            reason: "OK",
            content_type: METRICS_CONTENT_TYPE,
            allow: false,
            body: render(&snap.listing, &snap.globals, snap.health.as_ref()),
        },
        Page::Status => Response {
            status: 200,
            reason: "OK",
            content_type: "text/html; charset=utf-8",
            allow: false,
            body: render_status(&snap),
        },
    }
}

enum Page {
    Metrics,
    Status,
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{
        state::{Scheduler, ServiceAddr},
        status::{Rates, RealHealth, Stats},
    };

    fn real(last: u8, weight: u32, health: Option<RealHealth>) -> RealListing {
        RealListing {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            port: 80,
            forwarding: Forwarding::DirectRoute,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: u32::from(last),
            inactive_conns: 1,
            persistent_conns: 0,
            stats: Stats {
                conns: 10 * u64::from(last),
                in_pkts: 100 * u64::from(last),
                out_pkts: 0,
                in_bytes: 6000 * u64::from(last),
                out_bytes: 0,
            },
            rates: Rates {
                cps: 1,
                in_pps: 2,
                out_pps: 0,
                in_bps: 3,
                out_bps: 0,
            },
            health,
        }
    }

    fn listing() -> Listing {
        Listing {
            services: vec![ServiceListing {
                addr: ServiceAddr {
                    protocol: Protocol::Tcp,
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    port: 80,
                },
                scheduler: Scheduler::default(),
                persistence: None,
                stats: Stats {
                    conns: 50,
                    in_pkts: 500,
                    out_pkts: 0,
                    in_bytes: 30000,
                    out_bytes: 0,
                },
                rates: Rates::default(),
                reals: vec![
                    real(
                        2,
                        3,
                        Some(RealHealth {
                            state: "up".into(),
                            check: "http 10.0.0.2:80".into(),
                            last_ok: Some(true),
                            latency_us: Some(1500),
                            last_failure: None,
                        }),
                    ),
                    real(
                        3,
                        0,
                        Some(RealHealth {
                            state: "down".into(),
                            check: "http 10.0.0.3:80".into(),
                            last_ok: Some(false),
                            latency_us: Some(250),
                            last_failure: Some("status 503 <\"oops\">".into()),
                        }),
                    ),
                ],
            }],
        }
    }

    fn globals() -> Vec<(GlobalStat, u64)> {
        GlobalStat::ALL
            .iter()
            .map(|&s| (s, if s == GlobalStat::DropNoReal { 7 } else { 0 }))
            .collect()
    }

    fn stats() -> EngineStats {
        EngineStats {
            checks: 40,
            failures: 4,
            max_lateness: Duration::ZERO,
            late: 1,
        }
    }

    #[test]
    fn one_service_with_two_reals_one_down() {
        let text = render(&listing(), &globals(), Some(&stats()));
        let svc = r#"service="10.0.0.1:80",protocol="tcp""#;
        let r2 = format!(r#"{svc},real="10.0.0.2:80",forwarding="dr""#);
        let r3 = format!(r#"{svc},real="10.0.0.3:80",forwarding="dr""#);
        let expected = [
            "xlb_up 1".to_owned(),
            format!("xlb_service_connections_total{{{svc}}} 50"),
            format!("xlb_service_packets_total{{{svc}}} 500"),
            format!("xlb_service_bytes_total{{{svc}}} 30000"),
            format!("xlb_real_connections_total{{{r2}}} 20"),
            format!("xlb_real_connections_total{{{r3}}} 30"),
            format!("xlb_real_packets_total{{{r2}}} 200"),
            format!("xlb_real_packets_total{{{r3}}} 300"),
            format!("xlb_real_bytes_total{{{r2}}} 12000"),
            format!("xlb_real_bytes_total{{{r3}}} 18000"),
            format!("xlb_real_weight{{{r2}}} 3"),
            format!("xlb_real_weight{{{r3}}} 0"),
            format!("xlb_real_active_connections{{{r2}}} 2"),
            format!("xlb_real_active_connections{{{r3}}} 3"),
            format!("xlb_real_inactive_connections{{{r2}}} 1"),
            format!("xlb_real_inactive_connections{{{r3}}} 1"),
            format!("xlb_real_up{{{r2}}} 1"),
            format!("xlb_real_up{{{r3}}} 0"),
            format!("xlb_real_check_latency_seconds{{{r2}}} 0.0015"),
            format!("xlb_real_check_latency_seconds{{{r3}}} 0.00025"),
            r#"xlb_datapath_packets_total{reason="drop_no_real"} 7"#.to_owned(),
            r#"xlb_datapath_packets_total{reason="verdict_tx"} 0"#.to_owned(),
            "xlb_health_checks_total 40".to_owned(),
            "xlb_health_check_failures_total 4".to_owned(),
            "xlb_health_checks_late_total 1".to_owned(),
        ];
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for line in &expected {
            assert!(
                samples.contains(&line.as_str()),
                "missing {line} in:\n{text}"
            );
        }
        // Families are contiguous and in this order.
        let names: Vec<&str> = samples
            .iter()
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
            .collect();
        let mut deduped = names.clone();
        deduped.dedup();
        let mut unique = deduped.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(deduped.len(), unique.len(), "a family is split:\n{text}");
        assert!(text.ends_with('\n'));
        assert!(text.contains(
            "# HELP xlb_service_bytes_total Bytes from clients forwarded for the service, counted \
             from the Ethernet header.\n# TYPE xlb_service_bytes_total counter\n"
        ));
        assert!(text.contains("# TYPE xlb_real_up gauge\n"));
    }

    #[test]
    fn help_and_type_once_per_family_and_before_its_samples() {
        let text = render(&listing(), &globals(), Some(&stats()));
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(seen.insert(name.to_owned()), "HELP twice for {name}");
                current = name;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(name, current, "TYPE not after its HELP");
                assert!(kind == "counter" || kind == "gauge");
                assert_eq!(
                    name.ends_with("_total"),
                    kind == "counter",
                    "{name} is a {kind}"
                );
            } else {
                assert!(
                    line.starts_with(current),
                    "{line} outside its family {current}"
                );
            }
        }
        assert!(text.matches("# TYPE ").count() == seen.len());
    }

    #[test]
    fn every_global_counter_is_exported_zeros_included() {
        let globals: Vec<(GlobalStat, u64)> = GlobalStat::ALL.iter().map(|&s| (s, 0)).collect();
        let text = render(&Listing::default(), &globals, None);
        for stat in GlobalStat::ALL {
            let line = format!("xlb_datapath_packets_total{{reason=\"{}\"}} 0", stat.name());
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
        assert_eq!(
            text.matches("xlb_datapath_packets_total{").count(),
            GlobalStat::ALL.len()
        );
        // No health engine: no health families.
        assert!(!text.contains("xlb_health_checks_total"));
        // No service: the families are still declared.
        assert!(text.contains("# TYPE xlb_real_packets_total counter\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("a\nb"), r"a\nb");
        assert_eq!(
            labels(&[("service", "x\"y"), ("protocol", "tcp")]),
            r#"{service="x\"y",protocol="tcp"}"#
        );
    }

    #[test]
    fn ipv6_services_and_tunnels_are_labelled_like_ipvsadm_prints_them() {
        let mut l = listing();
        l.services[0].addr.addr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        l.services[0].addr.protocol = Protocol::Udp;
        l.services[0].reals.truncate(1);
        l.services[0].reals[0].addr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        l.services[0].reals[0].forwarding = Forwarding::Tunnel;
        l.services[0].reals[0].health = None;
        let text = render(&l, &[], None);
        assert!(text.contains(
            "xlb_real_up{service=\"[fd00::1]:80\",protocol=\"udp\",real=\"[fd00::2]:80\",\
             forwarding=\"tun\"} 1\n"
        ));
        // An unchecked server has no latency.
        assert!(!text.contains("xlb_real_check_latency_seconds{"));
    }

    #[test]
    fn a_server_not_checked_yet_counts_as_up() {
        let mut l = listing();
        l.services[0].reals[1].health = Some(RealHealth {
            state: Health::Unknown.to_string(),
            check: "tcp 10.0.0.3:80".into(),
            last_ok: None,
            latency_us: None,
            last_failure: None,
        });
        assert_eq!(real_up(&l.services[0].reals[1]), 1);
    }

    #[test]
    fn the_status_page_shows_services_reals_and_drops_escaped() {
        let snap = Snapshot {
            listing: listing(),
            globals: globals(),
            health: Some(stats()),
        };
        let html = render_status(&snap);
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("TCP 10.0.0.1:80"));
        assert!(html.contains("10.0.0.2:80") && html.contains("10.0.0.3:80"));
        assert!(
            html.contains("status 503 &lt;&quot;oops&quot;&gt;"),
            "{html}"
        );
        assert!(!html.contains("<\"oops\">"));
        assert!(html.contains("<tr class=\"down\">"));
        assert!(html.contains("<td class=\"l\">drop_no_real</td><td>7</td>"));
        assert!(
            !html.contains("verdict_tx"),
            "only non-zero drops are listed"
        );
        assert!(html.contains("40 checks, 4 failed"));
    }

    #[test]
    fn request_heads() {
        let get = parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert_eq!(
            get,
            Ok(Request {
                method: Method::Get,
                path: "/metrics".into()
            })
        );
        let head = parse_request(b"HEAD /?x=1 HTTP/1.0\n\n");
        assert_eq!(
            head,
            Ok(Request {
                method: Method::Head,
                path: "/".into()
            })
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").map(|r| r.method),
            Ok(Method::Other("POST".into()))
        );
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(parse_request(long.as_bytes()), Err(RequestError::TooLong));
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestError::Malformed(_))),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_ends_at_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nHost: x\r\n"), None);
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .expect("read");
        String::from_utf8(answer).expect("UTF-8")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_round_trips() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = taken.clone();
        let server = tokio::spawn(serve_with(listener, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async {
                Ok(Snapshot {
                    listing: listing(),
                    globals: globals(),
                    health: Some(stats()),
                })
            }
        }));

        let metrics = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, body) = metrics.split_once("\r\n\r\n").expect("head and body");
        // Every header line with its CRLF.
        let head = format!("{head}\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Type: {METRICS_CONTENT_TYPE}\r\n")));
        assert!(head.contains("Connection: close\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(body, render(&listing(), &globals(), Some(&stats())));

        let page = exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(page.contains("10.0.0.1:80"));

        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (head, body) = head.split_once("\r\n\r\n").expect("head");
        let head = format!("{head}\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains(&format!(
            "Content-Length: {}\r\n",
            render(&listing(), &globals(), Some(&stats())).len()
        )));
        assert_eq!(body, "");

        let missing = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(post.contains("Allow: GET, HEAD\r\n"));

        let garbage = exchange(addr, b"hello\r\n\r\n").await;
        assert!(
            garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbage}"
        );

        let long = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD + 100)
        );
        let long = exchange(addr, long.as_bytes()).await;
        assert!(long.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{long}");

        // A client that connects and says nothing, then one that leaves half-way, do not stop
        // the server.
        let idle = TcpStream::connect(addr).await.expect("connect");
        drop(TcpStream::connect(addr).await.expect("connect"));
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET / HT").await.expect("send");
        drop(half);
        let again = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"));
        drop(idle);

        // Only the pages take a snapshot: 404, 405 and 400 do not touch the daemon's state.
        assert_eq!(taken.load(std::sync::atomic::Ordering::Relaxed), 4);
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_beyond_the_limit_wait_for_a_free_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve_with(listener, || async { Ok(Snapshot::default()) }));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Every slot is held by a silent client: the next request waits in the listen queue.
        let waiting = tokio::spawn(exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond the limit");
        // One idle client leaves: its slot serves the waiting request.
        drop(idle.pop());
        let answer = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("served once a slot was free")
            .expect("the request task");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        server.abort();
    }

    /// Waits out the real READ_TIMEOUT (tokio's paused clock needs a feature the crate does not
    /// enable).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_gets_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve_with(listener, || async { Ok(Snapshot::default()) }));
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\n").await.expect("send");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        server.abort();
    }
}
