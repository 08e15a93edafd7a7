//! The checks themselves, the only health code that touches sockets and processes: a TCP
//! connect, an HTTP/1.0 GET (over TLS for HTTPS), a send/expect exchange, and a command. Each is
//! bounded by its timeout and says why it failed.
//!
//! TCP-based checks close with a reset (zero linger), as HAProxy's do, so that thousands of
//! checks a second leave no TIME_WAIT sockets behind. Responses are read up to
//! [`RESPONSE_CAP`]: an expected body text must be within that much of the response.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use regex::bytes::Regex;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{
    half_open::{self, Answer, Prober},
    process::{run_program, run_shell, Outcome},
    via_vip::{self, Delivery, Path, ViaProber},
};
use crate::state::{
    health::{format_duration, Check, CheckSpec, ConfigError, Expect, HttpCheck, StatusRanges},
    Forwarding,
};

/// How much of an HTTP response or a send/expect reply is read at most.
pub const RESPONSE_CAP: usize = 64 * 1024;

/// What one check found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the target passed.
    pub ok: bool,
    /// How long the check took, to its verdict.
    #[serde(with = "crate::state::health::duration_text")]
    pub latency: Duration,
    /// Why it failed.
    pub reason: Option<String>,
    /// The weight it asks for (exec checks with dynamic weight only).
    pub weight: Option<u32>,
}

/// A check prepared to run against one target, again and again: patterns compiled, request
/// written, TLS set up.
pub struct Probe {
    target: SocketAddr,
    timeout: Duration,
    kind: ProbeKind,
}

/// Why a check failed, as shown to the operator.
type Reason = String;

enum ProbeKind {
    Tcp,
    TcpHalfOpen {
        /// The namespace's prober for the target's family, or why there is none.
        prober: Result<&'static Prober, Reason>,
        /// The address SYNs to the target leave from, once known; forgotten when a check
        /// fails, in case the route changed.
        source: Mutex<Option<IpAddr>>,
    },
    /// `--check-via-vip`: a SYN to VIP:port through the real server's forwarding path.
    ViaVip {
        /// The namespace's prober for the VIP's family, or why there is none.
        prober: Result<&'static ViaProber, Reason>,
        /// Direct routing or the tunnel.
        delivery: Delivery,
        /// The real server's address (whose next hop the probe goes to).
        real: IpAddr,
        /// The next hop and source, once known; forgotten when a check fails, in case the
        /// route or the neighbour changed.
        path: Mutex<Option<Path>>,
    },
    Http {
        request: Vec<u8>,
        /// The connector (or why there is none) and the server name, for HTTPS.
        tls: Option<(Result<TlsConnector, Reason>, ServerName<'static>)>,
        status: StatusRanges,
        body: Option<(Regex, Expect)>,
    },
    SendExpect {
        send: Vec<u8>,
        expect: Option<(Regex, Expect)>,
    },
    Exec {
        command: String,
        dynamic_weight: bool,
        shell: bool,
    },
}

impl Probe {
    /// Prepares `spec` for the real server at `real` (the check's address and port default to
    /// the real server's), as a direct-routing real server of a service at its own address.
    pub fn new(spec: &CheckSpec, real: SocketAddr) -> Result<Self, ConfigError> {
        Self::for_real(spec, real, real.ip(), Forwarding::DirectRoute)
    }

    /// Prepares `spec` for the real server at `real`, reached by `forwarding`, of the service
    /// whose VIP is `vip`: a check through the forwarding path (`--check-via-vip`) goes to the
    /// VIP the way the data path sends clients' packets.
    pub fn for_real(
        spec: &CheckSpec,
        real: SocketAddr,
        vip: IpAddr,
        forwarding: Forwarding,
    ) -> Result<Self, ConfigError> {
        spec.validate()?;
        if spec.via_vip && vip.is_ipv6() != real.is_ipv6() {
            return Err(ConfigError::ViaVipFamilyMismatch);
        }
        let target = spec.target_via(real, vip);
        let compiled = |expect: &Option<Expect>| -> Result<Option<(Regex, Expect)>, ConfigError> {
            expect
                .as_ref()
                .map(|e| Ok((e.matcher()?, e.clone())))
                .transpose()
        };
        let kind = match &spec.check {
            Check::Tcp | Check::TcpHalfOpen if spec.via_vip => ProbeKind::ViaVip {
                prober: ViaProber::for_family(vip).map_err(|e| e.to_string()),
                delivery: Delivery::new(forwarding, real.ip()),
                real: real.ip(),
                path: Mutex::new(None),
            },
            Check::Tcp => ProbeKind::Tcp,
            Check::TcpHalfOpen => ProbeKind::TcpHalfOpen {
                prober: Prober::for_target(target.ip()).map_err(|e| e.to_string()),
                source: Mutex::new(None),
            },
            Check::Http(http) => ProbeKind::Http {
                request: http_request(http, target, 80),
                tls: None,
                status: http.status.clone(),
                body: compiled(&http.expect)?,
            },
            Check::Https { http, verify } => ProbeKind::Http {
                request: http_request(http, target, 443),
                tls: Some((tls_connector(*verify), server_name(http, target))),
                status: http.status.clone(),
                body: compiled(&http.expect)?,
            },
            Check::SendExpect { send, expect } => ProbeKind::SendExpect {
                send: send.as_ref().map(|s| s.bytes()).unwrap_or_default(),
                expect: compiled(expect)?,
            },
            Check::Exec {
                command,
                dynamic_weight,
                shell,
            } => ProbeKind::Exec {
                command: command.clone(),
                dynamic_weight: *dynamic_weight,
                shell: *shell,
            },
        };
        Ok(Probe {
            target,
            timeout: spec.timing.timeout,
            kind,
        })
    }

    /// The address and port it checks.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Runs the check once, within its timeout.
    pub async fn run(&self) -> CheckResult {
        let started = Instant::now();
        let verdict = match &self.kind {
            // The command has its own timeout, which also kills it.
            ProbeKind::Exec {
                command,
                dynamic_weight,
                shell,
            } => self.exec(command, *dynamic_weight, *shell).await,
            ProbeKind::TcpHalfOpen { prober, source } => {
                let verdict = tokio::time::timeout(self.timeout, self.half_open(prober))
                    .await
                    .unwrap_or_else(|_| Err(self.timed_out()));
                if verdict.is_err() {
                    *source.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                verdict
            }
            ProbeKind::ViaVip {
                prober,
                delivery,
                real,
                path,
            } => {
                let verdict = tokio::time::timeout(
                    self.timeout,
                    self.via_vip(prober, *delivery, *real, path),
                )
                .await
                .unwrap_or_else(|_| Err(via_vip::silence_reason(self.target, *delivery, *real)));
                if verdict.is_err() {
                    *path.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                verdict
            }
            // Boxed: the connection checks' state (TLS and all) is large, and a half-open
            // check, which runs ten thousand times a second, should not carry or move it.
            _ => tokio::time::timeout(self.timeout, Box::pin(self.network()))
                .await
                .unwrap_or_else(|_| Err(self.timed_out())),
        };
        check_result(verdict, started.elapsed())
    }

    fn timed_out(&self) -> Reason {
        format!("timed out after {}", format_duration(self.timeout))
    }

    /// For the engine's batched half-open checks ([`super::engine`]): the prober of a plain
    /// half-open check (not through the forwarding path) whose prober could be made; `None`
    /// for every other check, which [`Probe::run`] runs.
    pub(super) fn half_open_prober(&self) -> Option<&'static Prober> {
        match &self.kind {
            ProbeKind::TcpHalfOpen {
                prober: Ok(prober), ..
            } => Some(prober),
            _ => None,
        }
    }

    /// The check's timeout.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A half-open check's source address, as [`Probe::run`] finds it: the one known, or the
    /// one the route to the target gives now (then kept).
    pub(super) fn half_open_source(&self) -> Result<IpAddr, Reason> {
        let ProbeKind::TcpHalfOpen { source, .. } = &self.kind else {
            return Err("not a half-open check".to_owned());
        };
        let known = *source.lock().unwrap_or_else(|p| p.into_inner());
        match known {
            Some(from) => Ok(from),
            None => {
                let from = half_open::source_for(self.target)
                    .map_err(|e| format!("no route to {}: {e}", self.target.ip()))?;
                *source.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                Ok(from)
            }
        }
    }

    /// The result of a half-open check run by the engine's batch: its verdict as
    /// [`Probe::run`] gives it (`None` is silence until the timeout), the source forgotten on
    /// failure as there.
    pub(super) fn half_open_result(
        &self,
        outcome: Option<Result<Answer, half_open::ProbeError>>,
        latency: Duration,
    ) -> CheckResult {
        let verdict = match outcome {
            None => Err(self.timed_out()),
            Some(outcome) => half_open_verdict(outcome),
        };
        if verdict.is_err() {
            if let ProbeKind::TcpHalfOpen { source, .. } = &self.kind {
                *source.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        check_result(verdict, latency)
    }

    /// A half-open check that failed before its SYN left (no route), as [`Probe::run`] says it.
    pub(super) fn failed(&self, reason: Reason, latency: Duration) -> CheckResult {
        check_result(Err(reason), latency)
    }

    async fn half_open(
        &self,
        prober: &Result<&'static Prober, Reason>,
    ) -> Result<Option<u32>, Reason> {
        let prober = prober.as_ref().map_err(Clone::clone)?;
        let from = self.half_open_source()?;
        half_open_verdict(prober.probe(from, self.target).await)
    }

    async fn via_vip(
        &self,
        prober: &Result<&'static ViaProber, Reason>,
        delivery: Delivery,
        real: IpAddr,
        path: &Mutex<Option<Path>>,
    ) -> Result<Option<u32>, Reason> {
        let prober = prober.as_ref().map_err(Clone::clone)?;
        let known = *path.lock().unwrap_or_else(|p| p.into_inner());
        let route = match known {
            Some(route) => route,
            None => {
                let route = Path::resolve(real)?;
                *path.lock().unwrap_or_else(|p| p.into_inner()) = Some(route);
                route
            }
        };
        if route.source == self.target.ip() {
            return Err(via_vip::source_is_vip_reason(self.target.ip(), real));
        }
        match prober.probe(route, delivery, self.target).await {
            Ok(Answer::Open) => Ok(None),
            Ok(Answer::Refused) => Err(via_vip::reset_reason(self.target)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn network(&self) -> Result<Option<u32>, Reason> {
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // Close with a reset: a check leaves no TIME_WAIT behind.
        let _ = stream.set_zero_linger();
        match &self.kind {
            ProbeKind::Tcp
            | ProbeKind::TcpHalfOpen { .. }
            | ProbeKind::ViaVip { .. }
            | ProbeKind::Exec { .. } => Ok(None),
            ProbeKind::Http {
                request,
                tls: None,
                status,
                body,
            } => {
                let response = exchange(stream, request, body.is_some()).await?;
                judge_http(&response, status, body.as_ref())
            }
            ProbeKind::Http {
                request,
                tls: Some((connector, name)),
                status,
                body,
            } => {
                let connector = connector.as_ref().map_err(|e| format!("TLS setup: {e}"))?;
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                let response = exchange(stream, request, body.is_some()).await?;
                judge_http(&response, status, body.as_ref())
            }
            ProbeKind::SendExpect { send, expect } => {
                send_expect(stream, send, expect.as_ref()).await
            }
        }
    }

    async fn exec(
        &self,
        command: &str,
        dynamic_weight: bool,
        shell: bool,
    ) -> Result<Option<u32>, Reason> {
        let env = [
            ("XLB_CHECK_ADDR", self.target.ip().to_string()),
            ("XLB_CHECK_PORT", self.target.port().to_string()),
        ];
        let outcome = if shell {
            run_shell("xlb-check", command, &[], &env, self.timeout)
                .await
                .map_err(|e| format!("cannot run sh: {e}"))?
        } else {
            run_program(command, &[], &env, self.timeout)
                .await
                .map_err(|e| format!("cannot run `{command}`: {e}"))?
        };
        match outcome {
            Outcome::Exited { code: 0, .. } => Ok(None),
            Outcome::Exited { code, .. } if dynamic_weight && (2..=255).contains(&code) => {
                Ok(u32::try_from(code - 2).ok())
            }
            Outcome::Exited {
                code,
                stderr: Some(line),
            } => Err(format!("exit {code}: {line}")),
            Outcome::Exited { code, stderr: None } => Err(format!("exit {code}")),
            Outcome::Signalled => Err("killed by a signal".to_owned()),
            Outcome::TimedOut => Err(self.timed_out()),
        }
    }
}

/// A check's result from its verdict.
fn check_result(verdict: Result<Option<u32>, Reason>, latency: Duration) -> CheckResult {
    match verdict {
        Ok(weight) => CheckResult {
            ok: true,
            latency,
            reason: None,
            weight,
        },
        Err(reason) => CheckResult {
            ok: false,
            latency,
            reason: Some(reason),
            weight: None,
        },
    }
}

/// A half-open check's verdict from its prober's answer.
fn half_open_verdict(
    outcome: Result<Answer, half_open::ProbeError>,
) -> Result<Option<u32>, Reason> {
    match outcome {
        Ok(Answer::Open) => Ok(None),
        Ok(Answer::Refused) => Err("connect: refused (reset)".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn http_request(http: &HttpCheck, target: SocketAddr, default_port: u16) -> Vec<u8> {
    let host = match &http.host {
        Some(host) => host.clone(),
        None if target.port() == default_port => match target {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        },
        None => target.to_string(),
    };
    format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: xlb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path
    )
    .into_bytes()
}

fn server_name(http: &HttpCheck, target: SocketAddr) -> ServerName<'static> {
    http.host
        .as_ref()
        .and_then(|h| ServerName::try_from(h.clone()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()))
}

/// Sends the request and reads the response: all of it (up to the cap) when the body matters,
/// else only up to the end of the status line.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    whole: bool,
) -> Result<Vec<u8>, Reason> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    stream.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    while response.len() < RESPONSE_CAP {
        if read_some(&mut stream, &mut response).await? == 0 {
            break;
        }
        if !whole && response.contains(&b'\n') {
            break;
        }
    }
    if response.is_empty() {
        return Err("connection closed without a response".to_owned());
    }
    Ok(response)
}

/// Reads what comes next into `buf`, up to the cap; 0 at the end. A TLS peer that closes
/// without close_notify (many HTTP/1.0 servers do) ends the response like a TCP close.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, Reason> {
    let room = RESPONSE_CAP.saturating_sub(buf.len());
    buf.reserve(room.min(16 * 1024));
    match stream.take(room as u64).read_buf(buf).await {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(0),
        Err(e) => Err(format!("receive: {e}")),
    }
}

fn judge_http(
    response: &[u8],
    status: &StatusRanges,
    body: Option<&(Regex, Expect)>,
) -> Result<Option<u32>, Reason> {
    let line_end = response
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(response.len());
    let line = &response[..line_end];
    let code = std::str::from_utf8(line)
        .ok()
        .and_then(status_code)
        .ok_or_else(|| format!("not an HTTP response: \"{}\"", snippet(line)))?;
    if !status.contains(code) {
        return Err(format!("status {code}, expected {status}"));
    }
    if let Some((regex, expect)) = body {
        let body = header_end(response).map_or(&[][..], |at| &response[at..]);
        if !regex.is_match(body) {
            let within = if response.len() >= RESPONSE_CAP {
                " in its first 64 KiB"
            } else {
                ""
            };
            return Err(format!("body does not {}{within}", describe(expect)));
        }
    }
    Ok(None)
}

/// The code of a status line, `HTTP/1.1 200 OK`.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    code.parse().ok()
}

fn header_end(response: &[u8]) -> Option<usize> {
    let find = |needle: &[u8]| {
        response
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|at| at + needle.len())
    };
    find(b"\r\n\r\n").or_else(|| find(b"\n\n"))
}

fn describe(expect: &Expect) -> String {
    if expect.is_regex() {
        format!("match {expect}")
    } else {
        format!("contain '{expect}'")
    }
}

/// The start of what a peer said, printable, for a failure reason.
fn snippet(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shown = bytes.len().min(SHOWN);
    let mut text = bytes[..shown].escape_ascii().to_string();
    if bytes.len() > SHOWN {
        text.push_str("...");
    }
    text
}

async fn send_expect(
    mut stream: TcpStream,
    send: &[u8],
    expect: Option<&(Regex, Expect)>,
) -> Result<Option<u32>, Reason> {
    if !send.is_empty() {
        stream
            .write_all(send)
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let Some((regex, expect)) = expect else {
        return Ok(None);
    };
    let mut reply = Vec::new();
    loop {
        let n = read_some(&mut stream, &mut reply).await?;
        if regex.is_match(&reply) {
            return Ok(None);
        }
        if n == 0 || reply.len() >= RESPONSE_CAP {
            return Err(format!(
                "reply does not {}: \"{}\"",
                describe(expect),
                snippet(&reply)
            ));
        }
    }
}

/// The TLS client for HTTPS checks, built once: against the system's CA store, or accepting any
/// certificate.
fn tls_connector(verify: bool) -> Result<TlsConnector, Reason> {
    static VERIFYING: OnceLock<Result<TlsConnector, Reason>> = OnceLock::new();
    static TRUSTING: OnceLock<Result<TlsConnector, Reason>> = OnceLock::new();
    let cell = if verify { &VERIFYING } else { &TRUSTING };
    cell.get_or_init(|| build_tls_connector(verify)).clone()
}

fn build_tls_connector(verify: bool) -> Result<TlsConnector, Reason> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if verify {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "loading the system's CA certificates for HTTPS checks");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "CA certificates for HTTPS checks");
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A verifier that takes any certificate (`--check-insecure`, for self-signed backends) but
/// still checks that the server holds its key, so the handshake stays a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use serde_json::{json, Value};

    use crate::state::health::CheckOptions;

    const REAL: &str = "127.0.0.1";

    /// The check that `options` describe, written as the configuration file's keys.
    fn spec(options: Value) -> CheckSpec {
        let options: CheckOptions =
            serde_json::from_value(options.clone()).unwrap_or_else(|e| panic!("{options}: {e}"));
        options.build().expect("valid options").expect("a check")
    }

    async fn run(options: Value, target: SocketAddr) -> CheckResult {
        let probe = Probe::new(&spec(options), target).expect("probe");
        tokio::time::timeout(Duration::from_secs(10), probe.run())
            .await
            .expect("a check ends within its timeout")
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind((REAL, 0)).await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        (listener, addr)
    }

    /// An address where nothing listens: a port that was just ours.
    async fn closed_port() -> SocketAddr {
        listener().await.1
    }

    /// Reads one HTTP request head from `stream`.
    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> String {
        let mut request = Vec::new();
        while header_end(&request).is_none() && request.len() < 8192 {
            let mut byte = [0u8; 512];
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&byte[..n]),
            }
        }
        String::from_utf8_lossy(&request).into_owned()
    }

    /// An HTTP server that answers every request with `response` after `delay`, and reports the
    /// requests it got.
    async fn http_server(
        response: &'static str,
        delay: Duration,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (listener, addr) = listener().await;
        let (requests, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let requests = requests.clone();
                tokio::spawn(async move {
                    let _ = requests.send(read_request(&mut stream).await);
                    tokio::time::sleep(delay).await;
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (addr, seen)
    }

    const OK_PAGE: &str = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nstatus: all good\n";

    #[tokio::test]
    async fn a_tcp_check_passes_on_an_open_port_and_fails_on_a_closed_one() {
        let (listener, open) = listener().await;
        let result = run(json!({"kind": "tcp"}), open).await;
        assert!(result.ok, "{result:?}");
        assert_eq!(result.reason, None);
        drop(listener);
        let result = run(json!({"kind": "tcp"}), closed_port().await).await;
        assert!(!result.ok);
        let reason = result.reason.expect("a reason");
        assert!(reason.starts_with("connect: "), "{reason}");
    }

    #[tokio::test]
    #[ignore = "needs root (a raw socket)"]
    async fn a_half_open_check_passes_on_a_listening_port_and_fails_on_a_closed_one() {
        let (listener, open) = listener().await;
        let result = run(json!({"kind": "tcp-half-open"}), open).await;
        assert!(result.ok, "{result:?}");
        // The server never saw a connection: the kernel reset the half-open one.
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the listener accepted {accepted:?}");
        drop(listener);
        let result = run(json!({"kind": "tcp-half-open"}), closed_port().await).await;
        assert!(!result.ok);
        assert_eq!(result.reason.as_deref(), Some("connect: refused (reset)"));
    }

    #[tokio::test]
    #[ignore = "needs root (a raw socket)"]
    async fn a_half_open_check_works_over_ipv6_and_many_at_once() {
        let listener = TcpListener::bind("[::1]:0").await.expect("listener");
        let open = listener.local_addr().expect("address");
        let probe =
            Arc::new(Probe::new(&spec(json!({"kind": "tcp-half-open"})), open).expect("probe"));
        let checks: Vec<_> = (0..200)
            .map(|_| {
                let probe = probe.clone();
                tokio::spawn(async move { probe.run().await })
            })
            .collect();
        for check in checks {
            let result = check.await.expect("check");
            assert!(result.ok, "{result:?}");
        }
    }

    #[tokio::test]
    async fn a_check_port_overrides_the_real_servers_port() {
        let (_listener, open) = listener().await;
        let port = open.port().to_string();
        let closed_real = closed_port().await;
        let options = json!({"kind": "tcp", "port": port.parse::<u16>().expect("a port")});
        let probe = Probe::new(&spec(options), closed_real).expect("probe");
        assert_eq!(probe.target(), open);
        assert!(probe.run().await.ok);
    }

    #[tokio::test]
    async fn an_http_check_sends_a_get_with_a_host_header_and_takes_a_200() {
        let (addr, mut requests) = http_server(OK_PAGE, Duration::ZERO).await;
        let result = run(
            json!({"kind": "http", "path": "/healthz", "host": "www.example.com"}),
            addr,
        )
        .await;
        assert!(result.ok, "{result:?}");
        let request = requests.recv().await.expect("a request");
        assert!(
            request.starts_with("GET /healthz HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nHost: www.example.com\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_http_check_without_a_host_sends_the_checked_address() {
        let (addr, mut requests) = http_server(OK_PAGE, Duration::ZERO).await;
        assert!(run(json!({"kind": "http"}), addr).await.ok);
        let request = requests.recv().await.expect("a request");
        assert!(
            request.contains(&format!("\r\nHost: {addr}\r\n")),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_http_check_looks_for_its_keyword_in_the_body() {
        let (addr, _requests) = http_server(OK_PAGE, Duration::ZERO).await;
        let found = run(json!({"kind": "http", "expect": "all good"}), addr).await;
        assert!(found.ok, "{found:?}");
        let regex = run(json!({"kind": "http", "expect": "~^status: \\w+"}), addr).await;
        assert!(regex.ok, "{regex:?}");
        let missing = run(json!({"kind": "http", "expect": "Content-Type"}), addr).await;
        assert!(!missing.ok, "a header is not the body");
        assert_eq!(
            missing.reason.as_deref(),
            Some("body does not contain 'Content-Type'")
        );
    }

    #[tokio::test]
    async fn an_http_500_is_a_failure() {
        let (addr, _requests) = http_server(
            "HTTP/1.0 500 Internal Server Error\r\n\r\noops",
            Duration::ZERO,
        )
        .await;
        let result = run(json!({"kind": "http"}), addr).await;
        assert!(!result.ok);
        assert_eq!(
            result.reason.as_deref(),
            Some("status 500, expected 200-399")
        );
        let accepted = run(json!({"kind": "http", "status": "200,500"}), addr).await;
        assert!(accepted.ok, "500 is good when listed");
    }

    #[tokio::test]
    async fn a_server_that_is_not_http_fails_with_what_it_said() {
        let (addr, _requests) = http_server("SSH-2.0-OpenSSH_9.2\r\n", Duration::ZERO).await;
        let result = run(json!({"kind": "http"}), addr).await;
        assert_eq!(
            result.reason.as_deref(),
            Some("not an HTTP response: \"SSH-2.0-OpenSSH_9.2\\r\"")
        );
    }

    #[tokio::test]
    async fn a_server_slower_than_the_timeout_fails_in_time() {
        let (addr, _requests) = http_server(OK_PAGE, Duration::from_secs(3)).await;
        let result = run(
            json!({"kind": "http", "timeout": "200ms", "interval": "1s"}),
            addr,
        )
        .await;
        assert!(!result.ok);
        assert_eq!(result.reason.as_deref(), Some("timed out after 200ms"));
        assert!(
            result.latency < Duration::from_secs(1),
            "{:?}",
            result.latency
        );
    }

    /// An HTTPS server with a self-signed certificate for 127.0.0.1 and localhost.
    async fn https_server() -> SocketAddr {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![REAL.to_owned(), "localhost".to_owned()])
                .expect("self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    read_request(&mut tls).await;
                    let _ = tls.write_all(OK_PAGE.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_https_check_refuses_a_self_signed_certificate_unless_verification_is_off() {
        let addr = https_server().await;
        let verified = run(json!({"kind": "https"}), addr).await;
        assert!(!verified.ok);
        let reason = verified.reason.expect("a reason");
        assert!(
            reason.starts_with("TLS handshake: ") && reason.contains("certificate"),
            "{reason}"
        );
        let insecure = run(
            json!({"kind": "https", "insecure": true, "expect": "all good"}),
            addr,
        )
        .await;
        assert!(insecure.ok, "{insecure:?}");
    }

    /// A line server: answers `PING` with `+PONG` and anything else with `-ERR`.
    async fn ping_server() -> SocketAddr {
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while !line.ends_with(b"\n") && line.len() < 1024 {
                        match stream.read(&mut byte).await {
                            Ok(1) => line.push(byte[0]),
                            _ => return,
                        }
                    }
                    let reply: &[u8] = if line == b"PING\r\n" {
                        b"+PONG\r\n"
                    } else {
                        b"-ERR unknown\r\n"
                    };
                    let _ = stream.write_all(reply).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_send_expect_check_passes_when_the_reply_matches() {
        let addr = ping_server().await;
        let text = run(
            json!({"kind": "send-expect", "send": r"PING\r\n", "expect": "+PONG"}),
            addr,
        )
        .await;
        assert!(text.ok, "{text:?}");
        let regex = run(
            json!({"kind": "send-expect", "send": r"PING\r\n", "expect": r"~^\+PO.G\r\n$"}),
            addr,
        )
        .await;
        assert!(regex.ok, "{regex:?}");
    }

    #[tokio::test]
    async fn a_send_expect_check_fails_when_the_reply_differs() {
        let addr = ping_server().await;
        let result = run(
            json!({"kind": "send-expect", "send": r"HELLO\r\n", "expect": "+PONG"}),
            addr,
        )
        .await;
        assert!(!result.ok);
        assert_eq!(
            result.reason.as_deref(),
            Some("reply does not contain '+PONG': \"-ERR unknown\\r\\n\"")
        );
    }

    #[tokio::test]
    async fn an_exec_check_is_up_on_exit_zero_and_down_otherwise() {
        let real: SocketAddr = "127.0.0.1:80".parse().expect("address");
        let exec = |command: &'static str| json!({"kind": "exec", "command": command});
        let shell =
            |command: &'static str| json!({"kind": "exec", "command": command, "shell": true});
        let up = run(exec("true"), real).await;
        assert_eq!((up.ok, up.weight), (true, None));
        let down = run(exec("false"), real).await;
        assert_eq!((down.ok, down.reason.as_deref()), (false, Some("exit 1")));
        let said = run(shell("echo 'disk full' >&2; exit 7"), real).await;
        assert_eq!(said.reason.as_deref(), Some("exit 7: disk full"));
        let env = run(
            shell(r#"test "$XLB_CHECK_ADDR:$XLB_CHECK_PORT" = 127.0.0.1:80"#),
            real,
        )
        .await;
        assert!(env.ok, "the command knows what it checks: {env:?}");
        // Without a shell, the words are the program's arguments as written.
        let words = run(exec("test 'a b' = 'a b'"), real).await;
        assert!(words.ok, "{words:?}");
        let missing = run(exec("/nonexistent/probe --deep"), real).await;
        assert_eq!(
            (missing.ok, missing.reason.as_deref()),
            (
                false,
                Some("cannot run `/nonexistent/probe --deep`: No such file or directory (os error 2)")
            )
        );
    }

    #[tokio::test]
    async fn an_exec_check_with_dynamic_weight_takes_its_weight_from_the_exit_code() {
        let real: SocketAddr = "127.0.0.1:80".parse().expect("address");
        let dynamic = |command: &'static str| json!({"kind": "exec", "command": command, "dynamic_weight": true, "shell": true});
        let seven = run(dynamic("exit 7"), real).await;
        assert_eq!((seven.ok, seven.weight), (true, Some(5)));
        let two = run(dynamic("exit 2"), real).await;
        assert_eq!((two.ok, two.weight), (true, Some(0)), "exit 2 is quiescent");
        let zero = run(dynamic("exit 0"), real).await;
        assert_eq!((zero.ok, zero.weight), (true, None));
        let one = run(dynamic("exit 1"), real).await;
        assert!(!one.ok);
    }

    #[tokio::test]
    async fn an_exec_check_past_its_timeout_fails_in_time() {
        let real: SocketAddr = "127.0.0.1:80".parse().expect("address");
        let result = run(
            json!({"kind": "exec", "command": "sleep 10", "timeout": "200ms"}),
            real,
        )
        .await;
        assert_eq!(result.reason.as_deref(), Some("timed out after 200ms"));
        assert!(
            result.latency < Duration::from_secs(2),
            "{:?}",
            result.latency
        );
    }
}
