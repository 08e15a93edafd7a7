//! What to check on a real server, how often, and what a service does about failures: the
//! typed health settings of the desired state, their configuration-file form, the text form of
//! each value, and the validation of the whole (pure). The flags that set them on xlbadm's
//! command line are [`crate::ipvsadm::check_flags`]'s.
//!
//! Options come in two layers. [`CheckOptions`] is what the user wrote, every field optional, on a
//! service (the default for its real servers) and on a real server (overriding the service's
//! default field by field); [`CheckOptions::build`] fills in the defaults and validates the result
//! into a [`CheckSpec`], which is what the checker runs. Store the options (so that `-S` can print
//! them back) and build the spec when the targets are computed.
//!
//! Value syntax, in flags and in the configuration file alike:
//! - durations: a whole number and a unit, `500ms`, `2s`, `1m` (also `us`, `ns`, `h`); a bare
//!   number is seconds;
//! - status codes: a code (`200`), a range (`200-299`) or a list of them (`200,301-302`);
//! - an expectation: the text the HTTP body (or the send/expect reply) must contain; a value
//!   starting with `~` is a regular expression instead (`~^OK\b`). To look for a text that itself
//!   starts with `~`, write it as a regular expression: `~~text` (a `~` is no special character
//!   in a regular expression);
//! - the text to send: the bytes, with the escapes `\r`, `\n`, `\t`, `\0`, `\\` and `\xHH`;
//! - a sorry server: `RIP` or `RIP:PORT` (`[RIP6]:PORT` for IPv6).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use regex::bytes::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Forwarding, ServiceAddr};

/// How long between two checks of a target without `--check-interval` (HAProxy's `inter`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// How long a check may take without `--check-timeout`, or the interval when that is shorter, so
/// that the default never makes a valid interval fail (HAProxy's check timeout is `inter` too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many good checks in a row bring a failed server back without `--rise` (HAProxy's).
pub const DEFAULT_RISE: u32 = 2;

/// How many failed checks in a row take a server out without `--fall` (HAProxy's).
pub const DEFAULT_FALL: u32 = 3;

/// The path an HTTP check asks for without `--check-path`.
pub const DEFAULT_HTTP_PATH: &str = "/";

/// The smallest live weight a service needs without `--quorum`: one, so that a sorry server stands
/// in when no real server is left (keepalived's default).
pub const DEFAULT_QUORUM: u32 = 1;

/// The largest pattern a `~` expectation may compile to, so that a typo cannot eat the daemon's
/// memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a check or service configuration was refused. Each message names what is wrong and, where
/// it helps, what would be right; callers prefix the flag when they parse one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `--check` with a kind that does not exist.
    #[error("unknown check '{name}' (expected one of: {})", CheckKind::names())]
    UnknownKind {
        /// The kind as given.
        name: String,
    },
    /// `--check-start` with a value that does not exist.
    #[error("unknown start state '{value}' (expected first, up or down)")]
    UnknownStart {
        /// The value as given.
        value: String,
    },
    /// A duration that does not parse.
    #[error(
        "invalid duration '{value}': expected a whole number and a unit, like 500ms, 2s or 1m"
    )]
    BadDuration {
        /// The value as given.
        value: String,
    },
    /// A number that does not parse or is out of its range.
    #[error("invalid {what} '{value}': expected {expected}")]
    BadNumber {
        /// What the number is (port, rise, fall, quorum).
        what: &'static str,
        /// The value as given.
        value: String,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// `--check-status` that does not parse.
    #[error("invalid status '{value}': {reason} (expected a code, a range or a list, like 200, 200-299 or 200,301)")]
    BadStatus {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--check-expect` with nothing to look for.
    #[error("empty expectation: --check-expect needs a text, or ~ and a regular expression")]
    EmptyExpect,
    /// `--check-expect ~...` whose regular expression does not compile.
    #[error("invalid regular expression '{pattern}': {reason}")]
    BadRegex {
        /// The pattern, without its `~`.
        pattern: String,
        /// The regex crate's message.
        reason: String,
    },
    /// `--check-send` with a malformed escape.
    #[error("invalid send text '{value}': {reason}")]
    BadEscape {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--check-path` that is not an absolute path, or holds spaces or line breaks.
    #[error("invalid check path '{path}': it must start with / and hold no spaces or line breaks")]
    BadPath {
        /// The path as given.
        path: String,
    },
    /// `--check-host` that is empty or holds spaces or line breaks, or (for HTTPS) is not a
    /// name or address that a certificate can be checked against.
    #[error("invalid check host '{host}': {reason}")]
    BadHost {
        /// The host as given.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--sorry-server` that is not `RIP` or `RIP:PORT`.
    #[error("invalid sorry server '{value}': expected an address, optionally with a port (10.0.0.9, 10.0.0.9:80, [2001:db8::9]:80)")]
    BadSorryServer {
        /// The value as given.
        value: String,
    },
    /// A zero interval or timeout.
    #[error("the check {what} must be longer than zero")]
    ZeroDuration {
        /// `interval` or `timeout`.
        what: &'static str,
    },
    /// A timeout longer than the interval: the target's checks would fall behind their schedule.
    /// One equal to it is accepted (as HAProxy and keepalived do): a target's checks run one
    /// after another, so they never overlap.
    #[error("the check timeout ({}) must not be longer than the interval ({})", format_duration(*timeout), format_duration(*interval))]
    TimeoutAboveInterval {
        /// The timeout.
        timeout: Duration,
        /// The interval.
        interval: Duration,
    },
    /// An exec check without `--check-command`, or a notify hook that is empty.
    #[error("{what} needs a command")]
    MissingCommand {
        /// What needs it.
        what: &'static str,
    },
    /// A command that cannot run without a shell, without the flag that asks for one.
    #[error(transparent)]
    NotRunnable(Box<NotRunnable>),
    /// A send/expect check that neither sends nor expects anything (that is a TCP check).
    #[error("--check send-expect needs --check-send, --check-expect or both")]
    EmptySendExpect,
    /// An option that the check kind does not use, such as `--check-path` with `--check tcp`.
    #[error("{flag} does not apply to --check {kind}")]
    NotForKind {
        /// The flag.
        flag: &'static str,
        /// The check kind.
        kind: CheckKind,
    },
    /// A sorry server on another port than its service: direct routing and tunneling cannot
    /// change the port.
    #[error("sorry server port {sorry_port} differs from the service port {service_port}: direct routing and tunneling cannot change the port")]
    SorryPortMismatch {
        /// The service's port.
        service_port: u16,
        /// The sorry server's port.
        sorry_port: u16,
    },
    /// A sorry server of the other address family than its service, with direct routing.
    #[error("a sorry server of another address family than the service needs tunneling")]
    SorryFamilyMismatch,
    /// `--check-via-vip` with `--check-address`: the check goes to the VIP, through the real
    /// server's forwarding path, so there is no other address to check.
    #[error("--check-address does not apply with --check-via-vip: the check goes to the VIP through the real server's forwarding path")]
    ViaVipWithAddress,
    /// `--check-via-vip` on a real server of another address family than its VIP: the probe's
    /// answer comes from the VIP to an address of the balancer in the VIP's family, which a
    /// tunnel across families does not give.
    #[error("--check-via-vip needs the real server in the VIP's address family")]
    ViaVipFamilyMismatch,
}

/// What a check does (`--check`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// No check: the server is always taken as up.
    None,
    /// A TCP connection is accepted.
    Tcp,
    /// A SYN gets a SYN-ACK (the handshake is not completed: the kernel resets it).
    TcpHalfOpen,
    /// An HTTP/1.0 GET answers with an expected status (and body).
    Http,
    /// The same over TLS.
    Https,
    /// Bytes sent over TCP get a reply that contains the expected text.
    SendExpect,
    /// A command exits with 0.
    Exec,
}

impl CheckKind {
    /// Every kind, in the order that `--help` and error messages list them.
    pub const ALL: &'static [CheckKind] = &[
        CheckKind::Tcp,
        CheckKind::TcpHalfOpen,
        CheckKind::Http,
        CheckKind::Https,
        CheckKind::SendExpect,
        CheckKind::Exec,
        CheckKind::None,
    ];

    /// The name `--check` takes.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::TcpHalfOpen => "tcp-half-open",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::SendExpect => "send-expect",
            CheckKind::Exec => "exec",
        }
    }

    /// The names separated by `|`, as a usage line lists them.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join("|")
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CheckKind {
    type Err = ConfigError;

    /// Parses `--check`'s value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| ConfigError::UnknownKind { name: s.to_owned() })
    }
}

/// Where a target starts before its checks have said anything (`--check-start`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum StartState {
    /// Unknown (and taking traffic, as a server without checks) until the first result, which
    /// alone decides up or down.
    #[default]
    First,
    /// Up: `fall` failures take it out, as if it had been up for long.
    Up,
    /// Down: it takes no traffic until `rise` good checks (keepalived's `alpha`).
    Down,
}

impl FromStr for StartState {
    type Err = ConfigError;

    /// Parses `--check-start`'s value: `first`, `up` or `down`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "first" => Ok(StartState::First),
            "up" => Ok(StartState::Up),
            "down" => Ok(StartState::Down),
            _ => Err(ConfigError::UnknownStart {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for StartState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StartState::First => "first",
            StartState::Up => "up",
            StartState::Down => "down",
        })
    }
}

/// The HTTP status codes that count as a good answer (`--check-status`), as inclusive ranges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// Whether `code` is one of them.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl Default for StatusRanges {
    /// 200-399: any success or redirect, as HAProxy's `httpchk` takes it.
    fn default() -> Self {
        StatusRanges(vec![(200, 399)])
    }
}

impl FromStr for StatusRanges {
    type Err = ConfigError;

    /// Parses `200`, `200-299` or a comma-separated list of them; codes are 100..=599.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ConfigError::BadStatus {
            value: s.to_owned(),
            reason,
        };
        let code = |text: &str| -> Result<u16, ConfigError> {
            match text.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(bad(format!(
                    "'{}' is not a status code 100..599",
                    text.trim()
                ))),
            }
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if range.0 > range.1 {
                return Err(bad(format!("{}-{} is an empty range", range.0, range.1)));
            }
            ranges.push(range);
        }
        Ok(StatusRanges(ranges))
    }
}

impl fmt::Display for StatusRanges {
    /// As `--check-status` takes it: `200-299,301`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for StatusRanges {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StatusRanges> for String {
    fn from(s: StatusRanges) -> Self {
        s.to_string()
    }
}

/// What an HTTP body or a send/expect reply must contain (`--check-expect`): a text, or with a
/// leading `~` a regular expression. Kept as written, so that it prints back the same.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct Expect(String);

impl Expect {
    /// Whether it is a regular expression (written with a leading `~`).
    pub fn is_regex(&self) -> bool {
        self.0.starts_with('~')
    }

    /// The matcher: the regular expression, or the text escaped into one (which the regex crate
    /// turns into a plain substring search).
    pub fn matcher(&self) -> Result<Regex, ConfigError> {
        let pattern = match self.0.strip_prefix('~') {
            Some(pattern) => pattern.to_owned(),
            None => regex::escape(&self.0),
        };
        RegexBuilder::new(&pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| ConfigError::BadRegex {
                pattern: self.0.trim_start_matches('~').to_owned(),
                reason: e.to_string(),
            })
    }
}

impl FromStr for Expect {
    type Err = ConfigError;

    /// Parses `--check-expect`'s value, compiling a `~` expression to refuse a bad one now.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s == "~" {
            return Err(ConfigError::EmptyExpect);
        }
        let expect = Expect(s.to_owned());
        expect.matcher()?;
        Ok(expect)
    }
}

impl fmt::Display for Expect {
    /// As written: `OK`, `~^OK\b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Expect {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Expect> for String {
    fn from(e: Expect) -> Self {
        e.0
    }
}

/// What a send/expect check sends (`--check-send`), kept with its escapes as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct SendText(String);

impl SendText {
    /// The bytes to send, escapes decoded.
    pub fn bytes(&self) -> Vec<u8> {
        // Validated when parsed, so decoding cannot fail here; an empty send is the fallback
        // that keeps this total.
        unescape(&self.0).unwrap_or_default()
    }
}

impl FromStr for SendText {
    type Err = ConfigError;

    /// Parses `--check-send`'s value: text with `\r`, `\n`, `\t`, `\0`, `\\` and `\xHH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        unescape(s).map_err(|reason| ConfigError::BadEscape {
            value: s.to_owned(),
            reason,
        })?;
        Ok(SendText(s.to_owned()))
    }
}

impl fmt::Display for SendText {
    /// As written, escapes included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SendText {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SendText> for String {
    fn from(s: SendText) -> Self {
        s.0
    }
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let digits: Option<Vec<u8>> = hex.into_iter().collect();
                let value = digits
                    .and_then(|d| std::str::from_utf8(&d).ok().map(str::to_owned))
                    .and_then(|d| u8::from_str_radix(&d, 16).ok())
                    .ok_or("\\x needs two hexadecimal digits")?;
                out.push(value);
            }
            Some(other) => return Err(format!("unknown escape \\{}", char::from(other))),
            None => return Err("a lone \\ at the end".to_owned()),
        }
    }
    Ok(out)
}

/// The server that takes a service's new flows while it has lost its quorum (`--sorry-server`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SorryServer {
    /// Its address.
    pub addr: IpAddr,
    /// Its port, if given; it must then be the service's (DR and TUN keep the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How packets reach it; `--sorry-server` gives direct routing, the config file may say
    /// `tunnel`.
    #[serde(default = "direct_route")]
    pub forwarding: Forwarding,
}

fn direct_route() -> Forwarding {
    Forwarding::DirectRoute
}

impl FromStr for SorryServer {
    type Err = ConfigError;

    /// Parses `RIP`, `RIP:PORT` or `[RIP6]:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, port) = match (s.parse::<IpAddr>(), s.parse::<SocketAddr>()) {
            (Ok(addr), _) => (addr, None),
            (_, Ok(sa)) if sa.port() != 0 => (sa.ip(), Some(sa.port())),
            _ => {
                return Err(ConfigError::BadSorryServer {
                    value: s.to_owned(),
                })
            }
        };
        Ok(SorryServer {
            addr,
            port,
            forwarding: Forwarding::DirectRoute,
        })
    }
}

impl fmt::Display for SorryServer {
    /// As `--sorry-server` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.addr, port).fmt(f),
            None => self.addr.fmt(f),
        }
    }
}

/// Parses a duration: a whole number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`), or a bare
/// number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration {
        value: s.to_owned(),
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let per_unit = match unit {
        "ns" => Duration::from_nanos(1),
        "us" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "" | "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    u32::try_from(n)
        .ok()
        .and_then(|n| per_unit.checked_mul(n))
        .ok_or_else(bad)
}

/// Prints a duration in the largest unit that holds it exactly, as [`parse_duration`] reads it
/// back: `2s`, `500ms`, `1m`, `1500us`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (size, unit) = UNITS
        .iter()
        .copied()
        .find(|(size, _)| nanos.is_multiple_of(*size))
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / size)
}

/// The timing of a target's checks and of its state machine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timing {
    /// From one check's start to the next.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// How long one check may take; at most the interval.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Good checks in a row that bring a down server up.
    pub rise: u32,
    /// Failed checks in a row that take an up server down.
    pub fall: u32,
    /// Over how long a server that comes back ramps up to its weight; zero is at once.
    #[serde(with = "duration_text")]
    pub slow_start: Duration,
    /// Its state before the first result.
    pub start: StartState,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            slow_start: Duration::ZERO,
            start: StartState::First,
        }
    }
}

/// An HTTP or HTTPS check's request and what a good answer is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// The path to GET.
    pub path: String,
    /// The Host header (and the TLS server name); the checked address when unset.
    pub host: Option<String>,
    /// The status codes that are good.
    pub status: StatusRanges,
    /// What the body must contain, if anything.
    pub expect: Option<Expect>,
}

/// A check, with the parameters of its kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Check {
    /// A TCP connection is accepted.
    Tcp,
    /// A SYN is answered with a SYN-ACK (sent from a raw socket; needs CAP_NET_RAW).
    TcpHalfOpen,
    /// An HTTP/1.0 GET.
    Http(HttpCheck),
    /// An HTTP/1.0 GET over TLS.
    Https {
        /// The request and the expected answer.
        #[serde(flatten)]
        http: HttpCheck,
        /// Whether the certificate must be valid for the host (against the system's CAs);
        /// off for self-signed backends.
        verify: bool,
    },
    /// Bytes sent over TCP and a reply expected.
    SendExpect {
        /// What to send first, if anything.
        send: Option<SendText>,
        /// What the reply must contain, if anything.
        expect: Option<Expect>,
    },
    /// A command: exit 0 is up.
    Exec {
        /// The command line.
        command: String,
        /// keepalived's `misc_dynamic`: exit 2..=255 is up too, with weight exit - 2 (so 2 is
        /// quiescent, weight 0); exit 0 keeps the configured weight, exit 1 is down.
        dynamic_weight: bool,
        /// Run by `sh -c` (`--check-shell`); otherwise as a program and its arguments.
        shell: bool,
    },
}

impl Check {
    /// Its kind.
    pub fn kind(&self) -> CheckKind {
        match self {
            Check::Tcp => CheckKind::Tcp,
            Check::TcpHalfOpen => CheckKind::TcpHalfOpen,
            Check::Http(_) => CheckKind::Http,
            Check::Https { .. } => CheckKind::Https,
            Check::SendExpect { .. } => CheckKind::SendExpect,
            Check::Exec { .. } => CheckKind::Exec,
        }
    }
}

/// Everything needed to check one real server: what, where and when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    /// What to check.
    pub check: Check,
    /// The address to check, if not the real server's.
    pub addr: Option<IpAddr>,
    /// The port to check, if not the real server's.
    pub port: Option<u16>,
    /// `--check-via-vip`: the check (`tcp` or `tcp-half-open`) is a SYN to the VIP sent the way
    /// the data path forwards clients' packets to this real server (to its MAC, or inside the
    /// tunnel), answered by the real server from the VIP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_vip: bool,
    /// How often, how long, and how many results make a change.
    pub timing: Timing,
}

impl CheckSpec {
    /// A check with the default timing, on the real server's own address and port.
    pub fn new(check: Check) -> Self {
        CheckSpec {
            check,
            addr: None,
            port: None,
            via_vip: false,
            timing: Timing::default(),
        }
    }

    /// Where to check a real server at `real`: its own address and port unless overridden.
    /// A check through the forwarding path goes to the VIP instead ([`CheckSpec::target_via`]).
    pub fn target(&self, real: SocketAddr) -> SocketAddr {
        SocketAddr::new(
            self.addr.unwrap_or(real.ip()),
            self.port.unwrap_or(real.port()),
        )
    }

    /// Where a check of the real server at `real` of the service at `vip` goes: the VIP and the
    /// check's port (else the real server's) with `--check-via-vip`, else [`CheckSpec::target`].
    pub fn target_via(&self, real: SocketAddr, vip: IpAddr) -> SocketAddr {
        if self.via_vip {
            SocketAddr::new(vip, self.port.unwrap_or(real.port()))
        } else {
            self.target(real)
        }
    }

    /// Checks that the spec can run: the timing is sane, the kind has what it needs, and its
    /// patterns and names are valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.timing;
        if t.interval.is_zero() {
            return Err(ConfigError::ZeroDuration { what: "interval" });
        }
        if t.timeout.is_zero() {
            return Err(ConfigError::ZeroDuration { what: "timeout" });
        }
        if t.timeout > t.interval {
            return Err(ConfigError::TimeoutAboveInterval {
                timeout: t.timeout,
                interval: t.interval,
            });
        }
        for (what, n) in [("rise", t.rise), ("fall", t.fall)] {
            if n == 0 {
                return Err(ConfigError::BadNumber {
                    what,
                    value: "0".to_owned(),
                    expected: "a whole number of checks, at least 1",
                });
            }
        }
        if self.port == Some(0) {
            return Err(ConfigError::BadNumber {
                what: "port",
                value: "0".to_owned(),
                expected: "a number 1..65535",
            });
        }
        if self.via_vip {
            if !matches!(self.check, Check::Tcp | Check::TcpHalfOpen) {
                return Err(ConfigError::NotForKind {
                    flag: "--check-via-vip",
                    kind: self.check.kind(),
                });
            }
            if self.addr.is_some() {
                return Err(ConfigError::ViaVipWithAddress);
            }
        }
        match &self.check {
            Check::Tcp | Check::TcpHalfOpen => Ok(()),
            Check::Http(http) => validate_http(http, false),
            Check::Https { http, verify } => validate_http(http, *verify),
            Check::SendExpect { send, expect } => {
                if send.is_none() && expect.is_none() {
                    return Err(ConfigError::EmptySendExpect);
                }
                expect.as_ref().map(Expect::matcher).transpose()?;
                Ok(())
            }
            Check::Exec { command, shell, .. } => {
                if command.trim().is_empty() {
                    Err(ConfigError::MissingCommand {
                        what: "--check exec",
                    })
                } else {
                    runnable(command, *shell, "--check-command", "--check-shell")
                }
            }
        }
    }
}

/// A command that cannot run without a shell, without the flag that asks for one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{flag} `{command}` {source}: run it with sh -c by adding {shell_flag}, or name a program \
     and its arguments"
)]
pub struct NotRunnable {
    /// The flag of the command.
    pub flag: &'static str,
    /// The command.
    pub command: String,
    /// The flag that asks for `sh -c`.
    pub shell_flag: &'static str,
    /// Why it needs a shell.
    pub source: super::command::WordsError,
}

/// Whether `command` can be run as it will be: with `sh -c`, or split into a program and its
/// arguments.
fn runnable(
    command: &str,
    shell: bool,
    flag: &'static str,
    shell_flag: &'static str,
) -> Result<(), ConfigError> {
    if shell {
        return Ok(());
    }
    super::command::words(command).map(drop).map_err(|source| {
        ConfigError::NotRunnable(Box::new(NotRunnable {
            flag,
            command: command.to_owned(),
            shell_flag,
            source,
        }))
    })
}

fn validate_http(http: &HttpCheck, verify: bool) -> Result<(), ConfigError> {
    let clean = |s: &str| !s.is_empty() && !s.contains(|c: char| c.is_whitespace());
    if !http.path.starts_with('/') || !clean(&http.path) {
        return Err(ConfigError::BadPath {
            path: http.path.clone(),
        });
    }
    if let Some(host) = &http.host {
        if !clean(host) {
            return Err(ConfigError::BadHost {
                host: host.clone(),
                reason: "it must not be empty or hold spaces or line breaks",
            });
        }
        if verify && rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
            return Err(ConfigError::BadHost {
                host: host.clone(),
                reason: "a verified HTTPS check needs a DNS name or an address, without a port",
            });
        }
    }
    http.expect.as_ref().map(Expect::matcher).transpose()?;
    Ok(())
}

/// The check options as written, every one optional: on a service, the default for its real
/// servers; on a real server, what it overrides. See [`CheckOptions::build`] for the rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(default, deny_unknown_fields)]
pub struct CheckOptions {
    /// `--check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckKind>,
    /// `--check-address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// `--check-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `--check-path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `--check-host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `--check-status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRanges>,
    /// `--check-expect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// `--check-send`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<SendText>,
    /// `--check-command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `--check-dynamic-weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_weight: Option<bool>,
    /// `--check-shell`: `Some(true)` runs the command by `sh -c`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    /// `--check-insecure`: `Some(true)` turns certificate verification off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// `--check-via-vip`: `Some(true)` sends the check through the forwarding path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_vip: Option<bool>,
    /// `--check-interval`.
    #[serde(skip_serializing_if = "Option::is_none", with = "option_duration_text")]
    pub interval: Option<Duration>,
    /// `--check-timeout`.
    #[serde(skip_serializing_if = "Option::is_none", with = "option_duration_text")]
    pub timeout: Option<Duration>,
    /// `--rise`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// `--fall`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// `--slow-start`.
    #[serde(skip_serializing_if = "Option::is_none", with = "option_duration_text")]
    pub slow_start: Option<Duration>,
    /// `--check-start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StartState>,
}

impl CheckOptions {
    /// These options over `base` (a real server's over its service's): each field set here wins.
    /// When this sets another kind than `base`, `base`'s options of its own kind are dropped, so
    /// that a real server can say `--check tcp` under a service whose default is an HTTP check
    /// with a path.
    pub fn over(&self, base: &CheckOptions) -> CheckOptions {
        let mut base = base.clone();
        if self.kind.is_some() && self.kind != base.kind {
            base = CheckOptions {
                kind: None,
                path: None,
                host: None,
                status: None,
                expect: None,
                send: None,
                command: None,
                dynamic_weight: None,
                shell: None,
                insecure: None,
                via_vip: None,
                ..base
            };
        }
        CheckOptions {
            kind: self.kind.or(base.kind),
            addr: self.addr.or(base.addr),
            port: self.port.or(base.port),
            path: self.path.clone().or(base.path),
            host: self.host.clone().or(base.host),
            status: self.status.clone().or(base.status),
            expect: self.expect.clone().or(base.expect),
            send: self.send.clone().or(base.send),
            command: self.command.clone().or(base.command),
            dynamic_weight: self.dynamic_weight.or(base.dynamic_weight),
            shell: self.shell.or(base.shell),
            insecure: self.insecure.or(base.insecure),
            via_vip: self.via_vip.or(base.via_vip),
            interval: self.interval.or(base.interval),
            timeout: self.timeout.or(base.timeout),
            rise: self.rise.or(base.rise),
            fall: self.fall.or(base.fall),
            slow_start: self.slow_start.or(base.slow_start),
            start: self.start.or(base.start),
        }
    }

    /// Marks a command that only a shell can run as `--check-shell`, when these options were
    /// saved by an older xlbd, which ran every command by `sh -c`; whether it did.
    pub fn keep_older_shell(&mut self) -> bool {
        let needs_shell = self
            .command
            .as_deref()
            .is_some_and(|c| super::command::words(c).is_err());
        let mark = needs_shell && self.shell.is_none();
        if mark {
            self.shell = Some(true);
        }
        mark
    }

    /// The spec these options describe, defaults filled in and validated; `None` for no check.
    ///
    /// The kind is `--check`'s, or `tcp` when only other check options are given, or none when
    /// nothing is. An option that the kind does not use is refused rather than ignored, and so
    /// is an exec check without a command; an HTTP check without a path asks for `/`.
    pub fn build(&self) -> Result<Option<CheckSpec>, ConfigError> {
        let kind = match self.kind {
            Some(kind) => kind,
            None if *self == CheckOptions::default() => return Ok(None),
            None => CheckKind::Tcp,
        };
        self.refuse_foreign_options(kind)?;
        let http = || HttpCheck {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned()),
            host: self.host.clone(),
            status: self.status.clone().unwrap_or_default(),
            expect: self.expect.clone(),
        };
        let check = match kind {
            CheckKind::None => return Ok(None),
            CheckKind::Tcp => Check::Tcp,
            CheckKind::TcpHalfOpen => Check::TcpHalfOpen,
            CheckKind::Http => Check::Http(http()),
            CheckKind::Https => Check::Https {
                http: http(),
                verify: self.insecure != Some(true),
            },
            CheckKind::SendExpect => Check::SendExpect {
                send: self.send.clone(),
                expect: self.expect.clone(),
            },
            CheckKind::Exec => Check::Exec {
                command: self.command.clone().ok_or(ConfigError::MissingCommand {
                    what: "--check exec",
                })?,
                dynamic_weight: self.dynamic_weight == Some(true),
                shell: self.shell == Some(true),
            },
        };
        let defaults = Timing::default();
        let interval = self.interval.unwrap_or(defaults.interval);
        let spec = CheckSpec {
            check,
            addr: self.addr,
            port: self.port,
            via_vip: self.via_vip == Some(true),
            timing: Timing {
                interval,
                timeout: self.timeout.unwrap_or(defaults.timeout.min(interval)),
                rise: self.rise.unwrap_or(defaults.rise),
                fall: self.fall.unwrap_or(defaults.fall),
                slow_start: self.slow_start.unwrap_or(defaults.slow_start),
                start: self.start.unwrap_or(defaults.start),
            },
        };
        spec.validate()?;
        Ok(Some(spec))
    }

    fn refuse_foreign_options(&self, kind: CheckKind) -> Result<(), ConfigError> {
        use CheckKind::{Exec, Http, Https, SendExpect, Tcp, TcpHalfOpen};
        let uses: [(&'static str, bool, &[CheckKind]); 11] = [
            ("--check-path", self.path.is_some(), &[Http, Https]),
            ("--check-host", self.host.is_some(), &[Http, Https]),
            ("--check-status", self.status.is_some(), &[Http, Https]),
            (
                "--check-expect",
                self.expect.is_some(),
                &[Http, Https, SendExpect],
            ),
            ("--check-send", self.send.is_some(), &[SendExpect]),
            ("--check-command", self.command.is_some(), &[Exec]),
            (
                "--check-dynamic-weight",
                self.dynamic_weight.is_some(),
                &[Exec],
            ),
            ("--check-shell", self.shell.is_some(), &[Exec]),
            ("--check-insecure", self.insecure.is_some(), &[Https]),
            (
                "--check-via-vip",
                self.via_vip.is_some(),
                &[Tcp, TcpHalfOpen],
            ),
            (
                "--check-address, --check-port or a timing option",
                self.addr.is_some()
                    || self.port.is_some()
                    || self.interval.is_some()
                    || self.timeout.is_some()
                    || self.rise.is_some()
                    || self.fall.is_some()
                    || self.slow_start.is_some()
                    || self.start.is_some(),
                &[Tcp, TcpHalfOpen, Http, Https, SendExpect, Exec],
            ),
        ];
        match uses
            .into_iter()
            .find(|(_, set, kinds)| *set && !kinds.contains(&kind))
        {
            Some((flag, ..)) => Err(ConfigError::NotForKind { flag, kind }),
            None => Ok(()),
        }
    }
}

/// A service's health settings: the default check of its real servers and what it does when
/// they fail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceHealth {
    /// The check options of real servers that say nothing else (their own options override
    /// these field by field).
    pub check: CheckOptions,
    /// `--inhibit-on-failure`: a failed server stays in the table with weight 0 (no new flows,
    /// and it keeps its place in the Maglev permutation) rather than leaving it.
    pub inhibit_on_failure: bool,
    /// `--quorum`: when the live weight falls below this, the sorry server (if any) takes every
    /// new flow; 0 never loses the quorum.
    pub quorum: u32,
    /// `--sorry-server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<SorryServer>,
    /// `--check-notify`: a command run on every health change of one of the service's real
    /// servers, with the service, the server and the new state appended as arguments and also
    /// in the environment (`XLB_SERVICE`, `XLB_REAL`, `XLB_STATE`, `XLB_PREVIOUS_STATE`,
    /// `XLB_REASON`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// `--check-notify-shell`: the notify hook runs by `sh -c` (with the arguments as `$1`…)
    /// rather than as a program and its arguments.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub notify_shell: bool,
}

impl Default for ServiceHealth {
    fn default() -> Self {
        ServiceHealth {
            check: CheckOptions::default(),
            inhibit_on_failure: false,
            quorum: DEFAULT_QUORUM,
            sorry_server: None,
            notify: None,
            notify_shell: false,
        }
    }
}

impl ServiceHealth {
    /// Checks the settings against the service: the sorry server's port and family, the notify
    /// command, and the default check (which must be complete, since real servers without
    /// options of their own use it as it is).
    pub fn validate(&self, service: &ServiceAddr) -> Result<(), ConfigError> {
        if let Some(sorry) = &self.sorry_server {
            if let Some(port) = sorry.port.filter(|&p| p != service.port) {
                return Err(ConfigError::SorryPortMismatch {
                    service_port: service.port,
                    sorry_port: port,
                });
            }
            if sorry.forwarding == Forwarding::DirectRoute
                && sorry.addr.is_ipv6() != service.addr.is_ipv6()
            {
                return Err(ConfigError::SorryFamilyMismatch);
            }
        }
        match self.notify.as_deref() {
            Some(notify) if notify.trim().is_empty() => {
                return Err(ConfigError::MissingCommand {
                    what: "--check-notify",
                });
            }
            Some(notify) => runnable(
                notify,
                self.notify_shell,
                "--check-notify",
                "--check-notify-shell",
            )?,
            None if self.notify_shell => {
                return Err(ConfigError::MissingCommand {
                    what: "--check-notify-shell",
                });
            }
            None => {}
        }
        self.check.build().map(drop)
    }

    /// [`CheckOptions::keep_older_shell`] for the default check and the notify hook (as
    /// `--check-notify-shell`); whether anything changed.
    pub fn keep_older_shell(&mut self) -> bool {
        let notify = self
            .notify
            .as_deref()
            .is_some_and(|c| super::command::words(c).is_err())
            && !self.notify_shell;
        self.notify_shell |= notify;
        self.check.keep_older_shell() | notify
    }

    /// The spec for a real server with options `real` (empty for none): its options over the
    /// service's default, built; `None` when it is not checked.
    pub fn spec_for(&self, real: &CheckOptions) -> Result<Option<CheckSpec>, ConfigError> {
        real.over(&self.check).build()
    }
}

/// Serde for a `Duration` as [`format_duration`] text (`"2s"`).
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an `Option<Duration>` as [`format_duration`] text.
mod option_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::state::Protocol;

    /// Options written as the configuration file's keys.
    fn options(keys: Value) -> CheckOptions {
        serde_json::from_value(keys.clone()).unwrap_or_else(|e| panic!("{keys}: {e}"))
    }

    fn service(addr: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: addr.parse().expect("test address"),
            port,
        }
    }

    #[test]
    fn durations_take_a_unit_and_a_bare_number_is_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        for bad in ["", "s", "2x", "1.5s", "-1s", "2 s", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit_and_read_back_the_same() {
        for (d, text) in [
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_micros(1234), "1234us"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn status_takes_a_code_a_range_or_a_list() {
        let one: StatusRanges = "200".parse().expect("a code");
        assert!(one.contains(200) && !one.contains(201));
        let range: StatusRanges = "200-299".parse().expect("a range");
        assert!(range.contains(204) && !range.contains(301));
        let list: StatusRanges = "200,301-302".parse().expect("a list");
        assert!(list.contains(302) && !list.contains(300));
        assert_eq!(list.to_string(), "200,301-302");
        assert!(StatusRanges::default().contains(302));
        assert!(!StatusRanges::default().contains(404));
    }

    #[test]
    fn bad_statuses_are_refused_with_the_reason() {
        let err = "299-200".parse::<StatusRanges>().expect_err("empty range");
        assert_eq!(
            err.to_string(),
            "invalid status '299-200': 299-200 is an empty range (expected a code, a range or a list, like 200, 200-299 or 200,301)"
        );
        for bad in ["", "abc", "99", "600", "200-", "200,,301"] {
            assert!(bad.parse::<StatusRanges>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_expectation_starting_with_a_tilde_is_a_regular_expression() {
        let text: Expect = "a.c".parse().expect("text");
        assert!(!text.is_regex());
        let m = text.matcher().expect("matcher");
        assert!(m.is_match(b"xa.cx") && !m.is_match(b"abc"));
        let regex: Expect = "~a.c".parse().expect("regex");
        assert!(regex.is_regex());
        assert!(regex.matcher().expect("matcher").is_match(b"abc"));
        let tilde: Expect = "~~ok".parse().expect("a literal tilde");
        assert!(tilde.matcher().expect("matcher").is_match(b"is ~ok"));
    }

    #[test]
    fn a_bad_regular_expression_or_an_empty_expectation_is_refused() {
        assert!(matches!(
            "~(".parse::<Expect>(),
            Err(ConfigError::BadRegex { pattern, .. }) if pattern == "("
        ));
        assert_eq!("".parse::<Expect>(), Err(ConfigError::EmptyExpect));
        assert_eq!("~".parse::<Expect>(), Err(ConfigError::EmptyExpect));
    }

    #[test]
    fn send_text_decodes_its_escapes() {
        let send: SendText = r"PING\r\n\x00\t\\".parse().expect("send text");
        assert_eq!(send.bytes(), b"PING\r\n\0\t\\");
        assert_eq!(send.to_string(), r"PING\r\n\x00\t\\");
        for bad in [r"\q", r"\x4", r"\xzz", "end\\"] {
            assert!(bad.parse::<SendText>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_sorry_server_is_an_address_with_an_optional_port() {
        let bare: SorryServer = "10.0.0.9".parse().expect("bare");
        assert_eq!(
            (bare.addr.to_string(), bare.port),
            ("10.0.0.9".into(), None)
        );
        let with_port: SorryServer = "10.0.0.9:80".parse().expect("with port");
        assert_eq!(with_port.port, Some(80));
        let v6: SorryServer = "[2001:db8::9]:80".parse().expect("v6");
        assert_eq!(v6.to_string(), "[2001:db8::9]:80");
        assert!("2001:db8::9".parse::<SorryServer>().is_ok());
        for bad in ["", "host", "10.0.0.9:0", "10.0.0.9:x"] {
            assert!(bad.parse::<SorryServer>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_options_means_no_check_and_timing_alone_means_tcp() {
        assert_eq!(CheckOptions::default().build(), Ok(None));
        let spec = options(json!({"interval": "5s"}))
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(spec.check, Check::Tcp);
        assert_eq!(spec.timing.interval, Duration::from_secs(5));
        assert_eq!(
            options(json!({"kind": "none"})).build(),
            Ok(None),
            "--check none turns checks off"
        );
    }

    #[test]
    fn defaults_are_haproxys_timing() {
        let spec = options(json!({"kind": "tcp"}))
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(spec.timing, Timing::default());
        assert_eq!(
            (
                spec.timing.interval,
                spec.timing.timeout,
                spec.timing.rise,
                spec.timing.fall
            ),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
    }

    #[test]
    fn an_http_check_without_a_path_asks_for_the_root() {
        let spec = options(json!({"kind": "http"}))
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(
            spec.check,
            Check::Http(HttpCheck {
                path: "/".into(),
                host: None,
                status: StatusRanges::default(),
                expect: None,
            })
        );
    }

    #[test]
    fn an_https_check_verifies_unless_told_otherwise() {
        let verify = |keys: Value| match options(keys).build() {
            Ok(Some(CheckSpec {
                check: Check::Https { verify, .. },
                ..
            })) => verify,
            other => panic!("expected an https check, got {other:?}"),
        };
        assert!(verify(json!({"kind": "https"})));
        assert!(!verify(json!({"kind": "https", "insecure": true})));
    }

    #[test]
    fn a_timeout_longer_than_the_interval_is_refused() {
        let err = options(json!({"interval": "1s", "timeout": "1500ms"}))
            .build()
            .expect_err("timeout > interval");
        assert_eq!(
            err.to_string(),
            "the check timeout (1500ms) must not be longer than the interval (1s)"
        );
    }

    #[test]
    fn a_timeout_equal_to_the_interval_is_accepted() {
        let spec = options(json!({"interval": "1s", "timeout": "1s"}))
            .build()
            .expect("timeout == interval, as HAProxy and keepalived accept")
            .expect("a check");
        assert_eq!(spec.timing.timeout, Duration::from_secs(1));
    }

    #[test]
    fn the_default_timeout_never_makes_a_short_interval_fail() {
        for (interval, timeout) in [("1s", 1000), ("500ms", 500), ("10ms", 10), ("5s", 1000)] {
            let spec = options(json!({"kind": "tcp", "interval": interval}))
                .build()
                .unwrap_or_else(|e| panic!("--check-interval {interval}: {e}"))
                .expect("a check");
            assert_eq!(
                spec.timing.timeout,
                Duration::from_millis(timeout),
                "--check-interval {interval}"
            );
        }
    }

    #[test]
    fn rise_or_fall_of_zero_is_refused() {
        let spec = CheckSpec {
            timing: Timing {
                fall: 0,
                ..Timing::default()
            },
            ..CheckSpec::new(Check::Tcp)
        };
        assert!(matches!(
            spec.validate(),
            Err(ConfigError::BadNumber { what: "fall", .. })
        ));
    }

    #[test]
    fn an_exec_check_without_a_command_is_refused() {
        let err = options(json!({"kind": "exec"}))
            .build()
            .expect_err("no command");
        assert_eq!(err.to_string(), "--check exec needs a command");
    }

    #[test]
    fn a_command_that_needs_a_shell_is_refused_unless_the_shell_is_asked_for() {
        let err = options(json!({"kind": "exec", "command": "curl -sf http://x/ | grep ok"}))
            .build()
            .expect_err("needs sh");
        assert_eq!(
            err.to_string(),
            "--check-command `curl -sf http://x/ | grep ok` uses a pipe (|), which only a shell \
             understands: run it with sh -c by adding --check-shell, or name a program and its \
             arguments"
        );
        let spec = options(
            json!({"kind": "exec", "command": "curl -sf http://x/ | grep ok", "shell": true}),
        )
        .build()
        .expect("with sh")
        .expect("a check");
        assert!(matches!(spec.check, Check::Exec { shell: true, .. }));
        assert!(matches!(
            options(json!({"kind": "tcp", "shell": true})).build(),
            Err(ConfigError::NotForKind { .. })
        ));
        let notify = |notify: &str, shell: bool| ServiceHealth {
            notify: Some(notify.to_owned()),
            notify_shell: shell,
            ..ServiceHealth::default()
        };
        let svc = service("10.0.0.1", 80);
        assert_eq!(notify("logger -t 'xlb $x'", false).validate(&svc), Ok(()));
        assert_eq!(
            notify("logger -t xlb $HOST", false)
                .validate(&svc)
                .expect_err("needs sh")
                .to_string(),
            "--check-notify `logger -t xlb $HOST` uses an expansion ($), which only a shell \
             understands: run it with sh -c by adding --check-notify-shell, or name a program and \
             its arguments"
        );
        assert_eq!(notify("logger -t xlb $HOST", true).validate(&svc), Ok(()));
    }

    #[test]
    fn a_send_expect_check_needs_something_to_send_or_expect() {
        assert_eq!(
            options(json!({"kind": "send-expect"})).build(),
            Err(ConfigError::EmptySendExpect)
        );
        assert!(options(json!({"kind": "send-expect", "send": r"PING\r\n"}))
            .build()
            .is_ok());
    }

    #[test]
    fn an_option_that_the_kind_does_not_use_is_refused() {
        let err = options(json!({"kind": "tcp", "path": "/x"}))
            .build()
            .expect_err("a path on a tcp check");
        assert_eq!(
            err.to_string(),
            "--check-path does not apply to --check tcp"
        );
        assert!(options(json!({"kind": "none", "port": 81}))
            .build()
            .is_err());
        let err = options(json!({"kind": "tcp-half-open", "send": "x"}))
            .build()
            .expect_err("send on a half-open check");
        assert_eq!(
            err.to_string(),
            "--check-send does not apply to --check tcp-half-open"
        );
        let spec = options(json!({"kind": "tcp-half-open", "port": 8080, "fall": 5}))
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(
            (spec.check, spec.port, spec.timing.fall),
            (Check::TcpHalfOpen, Some(8080), 5)
        );
    }

    #[test]
    fn a_check_through_the_forwarding_path_is_a_tcp_check_to_the_vip() {
        let spec = options(json!({"via_vip": true, "port": 8080}))
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!((spec.check.clone(), spec.via_vip), (Check::Tcp, true));
        let real: SocketAddr = "10.0.0.11:80".parse().expect("real");
        let vip: IpAddr = "10.0.0.100".parse().expect("vip");
        assert_eq!(
            spec.target_via(real, vip),
            "10.0.0.100:8080".parse().expect("target")
        );
        let plain = options(json!({"kind": "tcp"}))
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(
            plain.target_via(real, vip),
            real,
            "without it, the real server's own"
        );
        assert!(options(json!({"kind": "tcp-half-open", "via_vip": true}))
            .build()
            .is_ok());
        let err = options(json!({"kind": "http", "via_vip": true}))
            .build()
            .expect_err("an HTTP check through the forwarding path");
        assert_eq!(
            err.to_string(),
            "--check-via-vip does not apply to --check http"
        );
        let err = options(json!({"via_vip": true, "addr": "10.0.0.12"}))
            .build()
            .expect_err("another address");
        assert_eq!(err, ConfigError::ViaVipWithAddress);
    }

    #[test]
    fn bad_paths_and_hosts_are_refused() {
        for (key, value) in [
            ("path", "health"),
            ("path", "/a b"),
            ("host", "a\r\nX-Injected: 1"),
        ] {
            let built = options(json!({"kind": "http", key: value})).build();
            assert!(built.is_err(), "{key} {value:?} should be refused");
        }
        let https = options(json!({"kind": "https", "host": "example.com:8443"})).build();
        assert!(matches!(https, Err(ConfigError::BadHost { .. })));
    }

    #[test]
    fn a_real_servers_options_override_its_services_field_by_field() {
        let service = options(json!({"kind": "http", "path": "/health", "interval": "5s"}));
        let real = options(json!({"port": 8080}));
        let spec = real
            .over(&service)
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(spec.port, Some(8080));
        assert_eq!(spec.timing.interval, Duration::from_secs(5));
        assert!(matches!(spec.check, Check::Http(HttpCheck { ref path, .. }) if path == "/health"));
    }

    #[test]
    fn another_kind_on_a_real_server_drops_the_services_options_of_its_kind() {
        let service = options(json!({"kind": "http", "path": "/health", "interval": "5s"}));
        let real = options(json!({"kind": "tcp"}));
        let spec = real
            .over(&service)
            .build()
            .expect("valid")
            .expect("a check");
        assert_eq!(spec.check, Check::Tcp);
        assert_eq!(spec.timing.interval, Duration::from_secs(5));
    }

    #[test]
    fn check_options_serialize_with_durations_as_text() {
        let written = options(
            json!({"kind": "exec", "command": "/usr/local/bin/ok --quiet", "dynamic_weight": true, "interval": "10s"}),
        );
        let json = serde_json::to_value(&written).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "exec",
                "command": "/usr/local/bin/ok --quiet",
                "dynamic_weight": true,
                "interval": "10s",
            })
        );
        let back: CheckOptions = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, written);
        let spec = written.build().expect("valid").expect("a check");
        let spec_json = serde_json::to_string(&spec).expect("serialize spec");
        let spec_back: CheckSpec = serde_json::from_str(&spec_json).expect("deserialize spec");
        assert_eq!(spec_back, spec);
        let https = options(json!({"kind": "https", "expect": "~ok", "insecure": true}))
            .build()
            .expect("valid")
            .expect("a check");
        let https_json = serde_json::to_value(&https).expect("serialize https");
        assert_eq!(https_json["check"]["kind"], "https");
        assert_eq!(https_json["check"]["verify"], false);
        assert_eq!(https_json["check"]["status"], "200-399");
        let https_back: CheckSpec = serde_json::from_value(https_json).expect("deserialize https");
        assert_eq!(https_back, https);
    }

    #[test]
    fn a_sorry_server_on_another_port_or_family_is_refused() {
        let with = |sorry: &str| ServiceHealth {
            sorry_server: Some(sorry.parse().expect("sorry server")),
            ..ServiceHealth::default()
        };
        assert_eq!(
            with("10.0.0.9:81").validate(&service("10.0.0.1", 80)),
            Err(ConfigError::SorryPortMismatch {
                service_port: 80,
                sorry_port: 81
            })
        );
        assert_eq!(
            with("2001:db8::9").validate(&service("10.0.0.1", 80)),
            Err(ConfigError::SorryFamilyMismatch)
        );
        let tunneled = ServiceHealth {
            sorry_server: Some(SorryServer {
                forwarding: Forwarding::Tunnel,
                ..with("2001:db8::9").sorry_server.expect("set")
            }),
            ..ServiceHealth::default()
        };
        assert_eq!(tunneled.validate(&service("10.0.0.1", 80)), Ok(()));
    }

    #[test]
    fn a_services_default_check_must_be_complete_on_its_own() {
        let health = ServiceHealth {
            check: options(json!({"kind": "exec"})),
            ..ServiceHealth::default()
        };
        assert!(health.validate(&service("10.0.0.1", 80)).is_err());
        let real = options(json!({"command": "true"}));
        assert!(health.spec_for(&real).expect("valid").is_some());
    }
}
