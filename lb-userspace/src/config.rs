//! The configuration file (`/etc/xlb/xlb.toml`): the desired state in TOML, checked by the same
//! rules as xlbadm's commands, so that a file is accepted exactly when the same settings typed
//! as commands would be.
//!
//! The file's form: each `[[services]]` table names its service with `address = "VIP:PORT"`
//! (and `protocol = "udp"` when not TCP), and each `[[services.reals]]` its server with
//! `address = "RIP:PORT"` (or `"RIP"`, on the service's port), its own check in a `check` table
//! inside it. The first form is read too, and means the same: a `[services.addr]` table
//! (`protocol`, `addr`, `port`), a real server's `addr` and `port`, and its check in the
//! service's `[services.real_checks."RIP:PORT"]`.
//!
//! A `[timeouts]` table sets the connection table's idle timeouts in seconds (`tcp_secs`,
//! `tcpfin_secs`, `udp_secs`: `ipvsadm --set`); a key left out is IPVS's default.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use crate::state::{
    health::{CheckOptions, ServiceHealth},
    timeouts::{ConnectionTimeouts, MAX_CONNECTION_TIMEOUT_SECS},
    Change, DesiredState, Forwarding, Persistence, Protocol, RealServer, SchedFlags, Scheduler,
    ServiceAddr, StateError, DEFAULT_WEIGHT,
};

/// Why a part of a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// Not TOML, or not the shape of a desired state (unknown key, bad address, ...).
    #[error("{message}")]
    Syntax {
        /// The parser's message, without its location (the [`Mistake`] holds that).
        message: String,
    },
    /// Keys of the file's two forms that do not go together, or a key that is missing.
    #[error("{message}")]
    Form {
        /// What is wrong, and what to write instead.
        message: String,
    },
    /// A service refused by ipvsadm's rules.
    #[error("service {service}: {source}")]
    Service {
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: StateError,
    },
    /// A real server refused by ipvsadm's rules.
    #[error("real server {real} of service {service}: {source}")]
    Real {
        /// The service.
        service: String,
        /// The real server.
        real: SocketAddr,
        /// Why.
        #[source]
        source: StateError,
    },
}

/// Where a mistake is: `FILE:LINE:COLUMN`, and the field (`services[0].reals[1].weight`) when
/// the mistake is inside one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub file: PathBuf,
    /// Counted from 1.
    pub line: usize,
    /// Counted from 1, in characters.
    pub column: usize,
    /// The dotted path of the key, as the file spells it.
    pub field: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)?;
        match &self.field {
            Some(field) => write!(f, ": {field}"),
            None => Ok(()),
        }
    }
}

/// One mistake in a configuration file, and where it is.
#[derive(Debug, Error)]
#[error("{location}: {error}")]
pub struct Mistake {
    /// Where.
    pub location: Location,
    /// What.
    pub error: ConfigFileError,
}

/// Every mistake found in a configuration file, one a line. A file that is not TOML, or not the
/// shape of a desired state, stops at its first mistake; the services and real servers of a
/// well-formed file are all checked.
#[derive(Debug, Error)]
#[error("{}", .mistakes.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct Refused {
    /// In the order of the file.
    pub mistakes: Vec<Mistake>,
}

/// Why a configuration file could not be used.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file exists but could not be read.
    #[error("reading the configuration {}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read and refused: every mistake, with its line and field.
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Reads and checks the configuration file `file`: `None` when there is no such file.
pub fn load(file: &Path) -> Result<Option<DesiredState>, LoadError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Read {
                file: file.to_owned(),
                source,
            })
        }
    };
    Ok(Some(parse(file, &text)?))
}

/// The file as written, in either form (see the module's documentation).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    services: Vec<ServiceEntry>,
    timeouts: Option<TimeoutsEntry>,
}

/// The `[timeouts]` table: seconds, each key IPVS's default when left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsEntry {
    tcp_secs: Option<u32>,
    tcpfin_secs: Option<u32>,
    udp_secs: Option<u32>,
}

impl TimeoutsEntry {
    /// The timeouts, or the mistake of the first key that is out of range (a 0, which
    /// `ipvsadm --set` takes for "keep the current value", means nothing in a file).
    fn timeouts(&self) -> Result<ConnectionTimeouts, (String, ConfigFileError)> {
        let defaults = ConnectionTimeouts::default();
        let secs = |key: &str, value: Option<u32>, default: u32| match value {
            None => Ok(default),
            Some(secs) if (1..=MAX_CONNECTION_TIMEOUT_SECS).contains(&secs) => Ok(secs),
            Some(secs) => Err(form(
                format!("timeouts.{key}"),
                format!(
                    "{key} = {secs} is not a timeout: write a number of seconds from 1 to \
                     {MAX_CONNECTION_TIMEOUT_SECS} (31 days), or leave the key out for IPVS's \
                     default of {default}"
                ),
            )),
        };
        Ok(ConnectionTimeouts {
            tcp_secs: secs("tcp_secs", self.tcp_secs, defaults.tcp_secs)?,
            tcpfin_secs: secs("tcpfin_secs", self.tcpfin_secs, defaults.tcpfin_secs)?,
            udp_secs: secs("udp_secs", self.udp_secs, defaults.udp_secs)?,
        })
    }
}

/// A `[[services]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    /// `address = "VIP:PORT"`.
    address: Option<ServiceAddress>,
    /// With `address`: TCP unless it says UDP.
    protocol: Option<Protocol>,
    /// The first form: a `[services.addr]` table.
    addr: Option<AddrTable>,
    #[serde(default)]
    scheduler: Scheduler,
    #[serde(default)]
    sched_flags: SchedFlags,
    persistence: Option<Persistence>,
    #[serde(default)]
    health: ServiceHealth,
    /// The first form of the real servers' own checks.
    #[serde(default)]
    real_checks: BTreeMap<SocketAddr, CheckOptions>,
    #[serde(default)]
    reals: Vec<RealEntry>,
}

/// A `[[services.reals]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RealEntry {
    /// `address = "RIP:PORT"` or `"RIP"`.
    address: Option<RealAddress>,
    /// The first form: `addr` and `port`.
    addr: Option<RealAddr>,
    port: Option<u16>,
    #[serde(default)]
    forwarding: Forwarding,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    upper_threshold: u32,
    #[serde(default)]
    lower_threshold: u32,
    /// Its own check options, over the service's check.
    check: Option<CheckOptions>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// A service's `address`: an address and a port.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct ServiceAddress(SocketAddr);

impl TryFrom<String> for ServiceAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse().map(Self).map_err(|_| {
            format!(
                "'{text}' is not an address and a port: write \"10.0.0.100:80\" or \
                 \"[2001:db8::100]:80\""
            )
        })
    }
}

/// A real server's `address`: an address, with or without its port.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct RealAddress(IpAddr, Option<u16>);

impl TryFrom<String> for RealAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self(addr.ip(), Some(addr.port())));
        }
        text.parse().map(|ip| Self(ip, None)).map_err(|_| {
            format!(
                "'{text}' is not an address: write \"10.0.0.11:80\", \"10.0.0.11\" (on the \
                 service's port) or \"[2001:db8::11]:80\""
            )
        })
    }
}

/// The first form's real-server `addr`: the address alone.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct RealAddr(IpAddr);

impl TryFrom<String> for RealAddr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.parse::<SocketAddr>().is_ok() {
            return Err(format!(
                "addr is the address alone: write address = \"{text}\", or addr and port apart"
            ));
        }
        text.parse()
            .map(Self)
            .map_err(|_| "invalid IP address syntax".to_owned())
    }
}

/// The first form's `[services.addr]` table; a text there is taken for the new form's address
/// and refused with the key to write.
struct AddrTable(ServiceAddr);

impl<'de> Deserialize<'de> for AddrTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AddrTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of protocol, addr and port")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<AddrTable, E> {
                Err(E::custom(format!(
                    "a service's address and port are written address = \"{text}\" (or as a \
                     [services.addr] table of protocol, addr and port)"
                )))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AddrTable, A::Error> {
                ServiceAddr::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AddrTable)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A mistake of form at `field` (a dotted path), located at that field or its nearest
/// enclosing one.
fn form(field: String, message: String) -> (String, ConfigFileError) {
    (field, ConfigFileError::Form { message })
}

impl ServiceEntry {
    /// The service's address, from either form.
    fn service_addr(&self, path: &str) -> Result<ServiceAddr, (String, ConfigFileError)> {
        match (&self.address, &self.addr, self.protocol) {
            (Some(ServiceAddress(addr)), None, protocol) => Ok(ServiceAddr {
                protocol: protocol.unwrap_or(Protocol::Tcp),
                addr: addr.ip(),
                port: addr.port(),
            }),
            (None, Some(AddrTable(addr)), None) => Ok(*addr),
            (None, Some(_), Some(_)) => Err(form(
                format!("{path}.protocol"),
                "protocol goes with address = \"VIP:PORT\"; with a [services.addr] table it is \
                 that table's protocol"
                    .to_owned(),
            )),
            (Some(_), Some(_), _) => Err(form(
                format!("{path}.addr"),
                "the service's address is given twice: keep address = \"VIP:PORT\" or the \
                 [services.addr] table, not both"
                    .to_owned(),
            )),
            (None, None, _) => Err(form(
                path.to_owned(),
                "missing field `address` (address = \"VIP:PORT\")".to_owned(),
            )),
        }
    }
}

impl RealEntry {
    /// The real server, from either form, on `port` (the service's) unless it says otherwise,
    /// and whether it was written with `address`.
    fn server(
        &self,
        port: u16,
        path: &str,
    ) -> Result<(RealServer, bool), (String, ConfigFileError)> {
        let (addr, own_port, shorthand) = match (&self.address, &self.addr, self.port) {
            (Some(RealAddress(addr, own)), None, None) => (*addr, *own, true),
            (None, Some(RealAddr(addr)), own) => (*addr, own, false),
            (Some(_), _, _) => {
                let twice = if self.addr.is_some() { "addr" } else { "port" };
                return Err(form(
                    format!("{path}.{twice}"),
                    "the real server's address is given twice: keep address = \"RIP:PORT\" or \
                     addr and port, not both"
                        .to_owned(),
                ));
            }
            (None, None, _) => {
                return Err(form(
                    path.to_owned(),
                    "missing field `address` (address = \"RIP:PORT\")".to_owned(),
                ))
            }
        };
        let real = RealServer {
            addr,
            port: own_port.unwrap_or(port),
            forwarding: self.forwarding,
            weight: self.weight,
            upper_threshold: self.upper_threshold,
            lower_threshold: self.lower_threshold,
        };
        Ok((real, shorthand))
    }
}

/// Parses and checks the configuration `text`, read from `file` (named in the errors).
pub fn parse(file: &Path, text: &str) -> Result<DesiredState, Refused> {
    let fields = Fields::of(text);
    let at = |offset: usize, field: Option<String>, error| Mistake {
        location: locate(file, text, offset, field),
        error,
    };
    let parsed: File = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        Refused {
            mistakes: vec![at(
                offset,
                fields.containing(offset),
                ConfigFileError::Syntax {
                    message: e.message().trim_end().to_owned(),
                },
            )],
        }
    })?;
    let mut mistakes = Vec::new();
    let mut refuse = |(field, error): (String, ConfigFileError)| {
        let (offset, field) = fields.find(&field);
        mistakes.push(at(offset, Some(field), error));
    };
    // Rebuilt through the same operations as xlbadm's commands.
    let mut checked = DesiredState::default();
    if let Some(entry) = &parsed.timeouts {
        match entry.timeouts() {
            Ok(timeouts) => checked.timeouts = timeouts,
            Err(mistake) => refuse(mistake),
        }
    }
    for (i, service) in parsed.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let addr = match service.service_addr(&path) {
            Ok(addr) => addr,
            Err(mistake) => {
                refuse(mistake);
                continue;
            }
        };
        let added = checked.apply(&Change::AddService {
            service: addr,
            scheduler: service.scheduler,
            sched_flags: service.sched_flags,
            persistence: service.persistence,
            health: service.health.clone(),
        });
        if let Err(source) = added {
            let field = match service_field(&source) {
                "addr" | "addr.port" if service.address.is_some() => "address",
                field => field,
            };
            refuse((
                format!("{path}.{field}"),
                ConfigFileError::Service {
                    service: addr.to_string(),
                    source,
                },
            ));
            continue;
        }
        for (j, real) in service.reals.iter().enumerate() {
            let real_path = format!("{path}.reals[{j}]");
            let (server, shorthand) = match real.server(addr.port, &real_path) {
                Ok(server) => server,
                Err(mistake) => {
                    refuse(mistake);
                    continue;
                }
            };
            let real_addr = SocketAddr::new(server.addr, server.port);
            let listed = service.real_checks.get(&real_addr);
            let listed_path = || format!("{path}.real_checks.{}", key(&real_addr.to_string()));
            let own_check = match (&real.check, listed) {
                (Some(_), Some(_)) => {
                    refuse(form(
                        format!("{real_path}.check"),
                        format!(
                            "real server {real_addr} has a check here and another in \
                             {}: keep one",
                            listed_path()
                        ),
                    ));
                    continue;
                }
                (Some(check), None) => Some((check, format!("{real_path}.check"))),
                (None, Some(check)) => Some((check, listed_path())),
                (None, None) => None,
            };
            let added = checked.apply(&Change::AddReal {
                service: addr,
                real: server,
                check: own_check
                    .as_ref()
                    .map(|(check, _)| (*check).clone())
                    .unwrap_or_default(),
            });
            if let Err(source) = added {
                let field = match (&source, own_check) {
                    (StateError::Check { .. }, Some((_, own))) => own,
                    (StateError::Check { .. }, None) => format!("{path}.health.check"),
                    _ => match real_field(&source) {
                        "addr" | "port" if shorthand => format!("{real_path}.address"),
                        field => format!("{real_path}.{field}"),
                    },
                };
                refuse((
                    field,
                    ConfigFileError::Real {
                        service: addr.to_string(),
                        real: real_addr,
                        source,
                    },
                ));
            }
        }
    }
    if mistakes.is_empty() {
        Ok(checked)
    } else {
        Err(Refused { mistakes })
    }
}

/// The key of a service that a refusal of it is about.
fn service_field(error: &StateError) -> &'static str {
    match error {
        StateError::ZeroPortNotPersistent => "addr.port",
        StateError::InvalidTimeout { .. }
        | StateError::IllegalNetmask
        | StateError::IllegalIpv6Netmask => "persistence",
        StateError::Check { .. } => "health",
        StateError::SchedFlagsNotFor { .. } => "sched_flags",
        _ => "addr",
    }
}

/// The key of a real server that a refusal of it is about.
fn real_field(error: &StateError) -> &'static str {
    match error {
        StateError::IllegalWeight { .. } => "weight",
        StateError::IllegalUpperThreshold { .. } => "upper_threshold",
        StateError::IllegalLowerThreshold { .. } | StateError::LowerAboveUpper { .. } => {
            "lower_threshold"
        }
        StateError::PortMismatch { .. } => "port",
        StateError::TunnelAcrossFamilies => "forwarding",
        _ => "addr",
    }
}

/// `offset`'s line and column in `text`.
fn locate(file: &Path, text: &str, offset: usize, field: Option<String>) -> Location {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        file: file.to_owned(),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        field,
    }
}

/// A key as TOML spells it in a dotted path: bare when it can be, quoted otherwise.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Every key of a file with the bytes it covers (its name to the end of its value; a table's
/// header to its last line), by dotted path: what turns an error's offset into a field and a
/// field into a line. Empty for a file that is not TOML.
struct Fields(Vec<(String, Range<usize>)>);

impl Fields {
    fn of(text: &str) -> Self {
        let mut fields = Fields(Vec::new());
        if let Ok(doc) = toml_edit::ImDocument::parse(text) {
            fields.table(doc.as_table(), "");
        }
        fields
    }

    fn table(&mut self, table: &toml_edit::Table, prefix: &str) {
        for (name, item) in table.iter() {
            let path = join(prefix, name);
            let name_span = table.key(name).and_then(toml_edit::Key::span);
            self.add(&path, name_span, item.span());
            self.item(item, &path);
        }
    }

    fn item(&mut self, item: &toml_edit::Item, path: &str) {
        match item {
            toml_edit::Item::Table(table) => self.table(table, path),
            toml_edit::Item::ArrayOfTables(tables) => {
                for (i, table) in tables.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    self.add(&path, None, table.span());
                    self.table(table, &path);
                }
            }
            toml_edit::Item::Value(value) => self.value(value, path),
            toml_edit::Item::None => {}
        }
    }

    fn value(&mut self, value: &toml_edit::Value, path: &str) {
        match value {
            toml_edit::Value::InlineTable(table) => {
                for (name, value) in table.iter() {
                    let path = join(path, name);
                    let name_span = table.key(name).and_then(toml_edit::Key::span);
                    self.add(&path, name_span, value.span());
                    self.value(value, &path);
                }
            }
            toml_edit::Value::Array(array) => {
                for (i, value) in array.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    self.add(&path, None, value.span());
                    self.value(value, &path);
                }
            }
            _ => {}
        }
    }

    fn add(&mut self, path: &str, a: Option<Range<usize>>, b: Option<Range<usize>>) {
        let span = match (a, b) {
            (Some(a), Some(b)) => a.start.min(b.start)..a.end.max(b.end),
            (Some(span), None) | (None, Some(span)) => span,
            (None, None) => return,
        };
        self.0.push((path.to_owned(), span));
    }

    /// The innermost field that covers `offset`.
    fn containing(&self, offset: usize) -> Option<String> {
        self.0
            .iter()
            // Later entries are deeper: on a tie (`services` and its only `[[services]]`), the
            // deeper one is meant.
            .rev()
            .filter(|(_, span)| span.contains(&offset))
            .min_by_key(|(_, span)| span.len())
            .map(|(path, _)| path.clone())
    }

    /// Where `path` starts, or its nearest enclosing field that the file spells out (a default
    /// left out has no line of its own), and that field.
    fn find(&self, path: &str) -> (usize, String) {
        let mut path = path;
        loop {
            if let Some((found, span)) = self.0.iter().find(|(p, _)| p == path) {
                return (span.start, found.clone());
            }
            match path.rfind(['.', '[']) {
                Some(end) => path = &path[..end],
                None => return (0, path.to_owned()),
            }
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        key(name)
    } else {
        format!("{prefix}.{}", key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DesiredState, Refused> {
        super::parse(Path::new("xlb.toml"), text)
    }

    #[test]
    fn the_example_configuration_parses_with_its_health_checks() {
        let text = include_str!("../../examples/xlb.toml");
        let state = parse(text).unwrap_or_else(|e| panic!("examples/xlb.toml: {e}"));
        assert_eq!(state.services.len(), 1);
        let svc = &state.services[0];
        assert_eq!(svc.reals.len(), 2);
        assert_eq!(svc.health.quorum, 1);
        assert_eq!(svc.real_checks.len(), 1);
    }

    /// The example as the first form wrote it: the same settings.
    const FIRST_FORM_EXAMPLE: &str = r#"
[[services]]
scheduler = "mh"

[services.addr]
protocol = "tcp"
addr = "10.0.0.100"
port = 80

[services.health.check]
kind = "http"
path = "/"
expect = "OK"
interval = "2s"
timeout = "1s"
rise = 2
fall = 3

[services.health]
quorum = 1

[services.real_checks."10.0.0.12:80"]
kind = "tcp"
port = 8080

[[services.reals]]
addr = "10.0.0.11"
port = 80
forwarding = "direct_route"
weight = 1

[[services.reals]]
addr = "10.0.0.12"
port = 80
forwarding = "direct_route"
weight = 2
"#;

    #[test]
    fn the_example_reads_the_same_in_the_first_form() {
        let new = parse(include_str!("../../examples/xlb.toml")).expect("the example");
        let first = parse(FIRST_FORM_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new, first);
        // Either form per service and per real server, in one file.
        let mixed = "[[services]]\naddress = \"[2001:db8::1]:53\"\nprotocol = \"udp\"\n\
                     [[services.reals]]\naddress = \"2001:db8::11\"\n\
                     [[services.reals]]\naddr = \"2001:db8::12\"\nport = 53\nweight = 3\n\
                     [[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n\
                     [[services.reals]]\naddress = \"10.0.0.11:80\"\n";
        let state = parse(mixed).unwrap_or_else(|e| panic!("{e}"));
        let dns = &state.services[1];
        assert_eq!(dns.addr.to_string(), "[2001:db8::1]:53");
        assert_eq!(dns.addr.protocol, crate::state::Protocol::Udp);
        let reals: Vec<(String, u32)> = dns
            .reals
            .iter()
            .map(|r| (SocketAddr::new(r.addr, r.port).to_string(), r.weight))
            .collect();
        assert_eq!(
            reals,
            [
                ("[2001:db8::11]:53".to_owned(), 1),
                ("[2001:db8::12]:53".to_owned(), 3)
            ]
        );
        assert_eq!(state.services[0].reals.len(), 1);
    }

    const NEW_SERVICE: &str = "[[services]]\naddress = \"10.0.0.1:80\"\n";

    #[test]
    fn mistakes_of_the_address_form_are_named_with_their_line_and_field() {
        assert_eq!(
            error("[[services]]\naddress = \"10.0.0.1\"\n"),
            "xlb.toml:2:11: services[0].address: '10.0.0.1' is not an address and a port: write \
             \"10.0.0.100:80\" or \"[2001:db8::100]:80\""
        );
        assert_eq!(
            error(&format!(
                "{NEW_SERVICE}[[services.reals]]\naddress = \"10.0.0.x:80\"\n"
            )),
            "xlb.toml:4:11: services[0].reals[0].address: '10.0.0.x:80' is not an address: write \
             \"10.0.0.11:80\", \"10.0.0.11\" (on the service's port) or \"[2001:db8::11]:80\""
        );
        assert_eq!(
            error(&format!(
                "{NEW_SERVICE}[[services.reals]]\naddress = \"10.0.0.2:81\"\n"
            )),
            "xlb.toml:4:1: services[0].reals[0].address: real server 10.0.0.2:81 of service \
             10.0.0.1:80: real server port 81 differs from the service port 80: direct routing \
             and tunneling cannot change the port"
        );
        assert_eq!(
            error(&format!(
                "{NEW_SERVICE}[[services.reals]]\naddress = \"10.0.0.2\"\nweight = 70000\n"
            )),
            "xlb.toml:5:1: services[0].reals[0].weight: real server 10.0.0.2:80 of service \
             10.0.0.1:80: illegal weight specified"
        );
        assert_eq!(
            error(&SERVICE.replace("scheduler", "address = \"10.0.0.1:80\"\nscheduler")),
            "xlb.toml:4:1: services[0].addr: the service's address is given twice: keep address = \
             \"VIP:PORT\" or the [services.addr] table, not both"
        );
        assert_eq!(
            error(&SERVICE.replace("scheduler", "protocol = \"udp\"\nscheduler")),
            "xlb.toml:2:1: services[0].protocol: protocol goes with address = \"VIP:PORT\"; with a \
             [services.addr] table it is that table's protocol"
        );
        assert_eq!(
            error("[[services]]\naddr = \"10.0.0.1:80\"\n"),
            "xlb.toml:2:8: services[0].addr: a service's address and port are written address = \
             \"10.0.0.1:80\" (or as a [services.addr] table of protocol, addr and port)"
        );
        assert_eq!(
            error(&format!(
                "{NEW_SERVICE}[[services.reals]]\naddr = \"10.0.0.2:80\"\n"
            )),
            "xlb.toml:4:8: services[0].reals[0].addr: addr is the address alone: write address = \
             \"10.0.0.2:80\", or addr and port apart"
        );
        assert_eq!(
            error(&format!(
                "{NEW_SERVICE}[[services.reals]]\naddress = \"10.0.0.2:80\"\nport = 80\n"
            )),
            "xlb.toml:5:1: services[0].reals[0].port: the real server's address is given twice: \
             keep address = \"RIP:PORT\" or addr and port, not both"
        );
        assert_eq!(
            error(&format!("{NEW_SERVICE}[[services.reals]]\nweight = 2\n")),
            "xlb.toml:3:1: services[0].reals[0]: missing field `address` (address = \"RIP:PORT\")"
        );
    }

    #[test]
    fn a_real_servers_thresholds_are_read_and_a_lower_one_above_the_upper_one_is_named() {
        let text = format!(
            "{NEW_SERVICE}[[services.reals]]\naddress = \"10.0.0.2:80\"\nupper_threshold = 100\n\
             lower_threshold = 50\n"
        );
        let state = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let real = &state.services[0].reals[0];
        assert_eq!((real.upper_threshold, real.lower_threshold), (100, 50));
        assert_eq!(
            error(&text.replace("= 100", "= 10")),
            "xlb.toml:6:1: services[0].reals[0].lower_threshold: real server 10.0.0.2:80 of \
             service 10.0.0.1:80: the lower threshold (-y 50) is higher than the upper threshold \
             (-x 10): a server would never take new connections again"
        );
    }

    #[test]
    fn a_real_servers_check_in_its_table_is_named_when_refused_and_given_once() {
        let real = "[[services.reals]]\naddress = \"10.0.0.2:80\"\n\
                    [services.reals.check]\nkind = \"tcp\"\npath = \"/\"\n";
        let message = error(&format!("{NEW_SERVICE}{real}"));
        assert!(
            message
                .starts_with("xlb.toml:5:1: services[0].reals[0].check: real server 10.0.0.2:80"),
            "{message}"
        );
        assert!(message.contains("--check-path"), "{message}");
        let twice = format!(
            "{NEW_SERVICE}[services.real_checks.\"10.0.0.2:80\"]\nkind = \"tcp\"\n\
             [[services.reals]]\naddress = \"10.0.0.2:80\"\n[services.reals.check]\nkind = \"tcp\"\n"
        );
        assert_eq!(
            error(&twice),
            "xlb.toml:7:1: services[0].reals[0].check: real server 10.0.0.2:80 has a check here and \
             another in services[0].real_checks.\"10.0.0.2:80\": keep one"
        );
        let fine = format!(
            "{NEW_SERVICE}{}",
            real.replace("path = \"/\"\n", "port = 8080\n")
        );
        let state = parse(&fine).unwrap_or_else(|e| panic!("{e}"));
        let checks = &state.services[0].real_checks;
        let addr: SocketAddr = "10.0.0.2:80".parse().expect("address");
        assert_eq!(checks[&addr].port, Some(8080));
    }

    #[test]
    fn an_empty_file_or_one_with_only_comments_means_no_services() {
        for text in [
            "",
            "\n",
            "# nothing balanced yet\n\n# (see examples/xlb.toml)\n",
        ] {
            let state = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(state, DesiredState::default(), "{text:?}");
        }
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(state) => panic!("accepted: {state:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SERVICE: &str = "[[services]]\nscheduler = \"mh\"\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n";

    #[test]
    fn the_connection_timeouts_are_a_table_whose_keys_left_out_are_ipvss_defaults() {
        let state = parse("[timeouts]\nudp_secs = 10\n").expect("a valid file");
        assert_eq!(
            state.timeouts,
            ConnectionTimeouts {
                tcp_secs: 900,
                tcpfin_secs: 120,
                udp_secs: 10
            }
        );
        assert_eq!(
            parse("").expect("empty").timeouts,
            ConnectionTimeouts::default()
        );
        assert_eq!(
            error(&format!(
                "{SERVICE}\n[timeouts]\ntcp_secs = 60\ntcpfin_secs = 0\n"
            )),
            "xlb.toml:10:1: timeouts.tcpfin_secs: tcpfin_secs = 0 is not a timeout: write a \
             number of seconds from 1 to 2678400 (31 days), or leave the key out for IPVS's \
             default of 120"
        );
        assert!(
            error("[timeouts]\ntcp = 60\n").contains("unknown field `tcp`"),
            "{}",
            error("[timeouts]\ntcp = 60\n")
        );
    }

    #[test]
    fn the_scheduler_and_its_flags_are_keys_of_a_service() {
        let text = SERVICE.replace("\"mh\"", "\"sh\"\nsched_flags = { port = true }");
        let state = parse(&text).expect("a valid file");
        assert_eq!(
            state.services[0].scheduler,
            crate::state::Scheduler::SourceHash
        );
        assert!(state.services[0].sched_flags.port);
        let wrong = SERVICE.replace("\"mh\"", "\"rr\"\nsched_flags = { port = true }");
        assert!(error(&wrong).contains("the 'rr' scheduler takes no scheduler flags"));
        for scheduler in crate::state::Scheduler::ALL {
            let text = SERVICE.replace("\"mh\"", &format!("\"{}\"", scheduler.name()));
            let state = parse(&text).expect("a valid file");
            assert_eq!(state.services[0].scheduler, *scheduler);
        }
    }

    #[test]
    fn a_malformed_file_is_refused_at_its_line_and_field() {
        assert_eq!(
            error("[[services]]\nscheduler = \"lblc\"\n"),
            "xlb.toml:2:13: services[0].scheduler: xlb does not implement the 'lblc' scheduler yet \
             (xlb supports: rr|wrr|lc|wlc|sed|nq|fo|ovf|sh|dh|mh)"
        );
        assert_eq!(
            error(&SERVICE.replace("10.0.0.1", "10.0.0.300")),
            "xlb.toml:5:8: services[0].addr.addr: invalid IP address syntax"
        );
        assert_eq!(
            error(&format!("{SERVICE}colour = \"blue\"\n")),
            "xlb.toml:7:1: services[0].addr.colour: unknown field `colour`, expected one of `protocol`, `addr`, `port`"
        );
        assert_eq!(
            error("[[services]]\nscheduler = \"mh\"\n"),
            "xlb.toml:1:1: services[0]: missing field `address` (address = \"VIP:PORT\")"
        );
        let message = error("[[services]\n");
        assert!(message.starts_with("xlb.toml:1:"), "{message}");
    }

    #[test]
    fn a_refused_service_or_real_server_is_named_with_its_line_and_field() {
        let real = "[[services.reals]]\naddr = \"10.0.0.2\"\nport = 81\nforwarding = \"direct_route\"\nweight = 1\n";
        assert_eq!(
            error(&format!("{SERVICE}{real}")),
            "xlb.toml:9:1: services[0].reals[0].port: real server 10.0.0.2:81 of service 10.0.0.1:80: \
             real server port 81 differs from the service port 80: direct routing and tunneling cannot change the port"
        );
        let check = "[services.health.check]\nkind = \"exec\"\n";
        assert_eq!(
            error(&format!("{SERVICE}{check}")),
            "xlb.toml:7:11: services[0].health: service 10.0.0.1:80: --check exec needs a command"
        );
        let heavy = "[[services.reals]]\naddr = \"10.0.0.2\"\nport = 80\nweight = 70000\n";
        assert_eq!(
            error(&format!("{SERVICE}{heavy}")),
            "xlb.toml:10:1: services[0].reals[0].weight: real server 10.0.0.2:80 of service 10.0.0.1:80: illegal weight specified"
        );
    }

    #[test]
    fn every_refused_service_and_real_server_of_a_file_is_reported() {
        let bad_real = "[[services.reals]]\naddr = \"10.0.0.2\"\nport = 80\nweight = 70000\n";
        let text = format!(
            "{SERVICE}{bad_real}{}{bad_real}",
            SERVICE.replace("10.0.0.1", "10.0.0.9")
        );
        let message = error(&text);
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(
            lines[0].starts_with("xlb.toml:10:1: services[0].reals[0].weight: "),
            "{message}"
        );
        assert!(
            lines[1].starts_with("xlb.toml:20:1: services[1].reals[0].weight: "),
            "{message}"
        );
    }

    #[test]
    fn a_real_servers_own_check_is_named_when_it_is_refused() {
        let real = "[[services.reals]]\naddr = \"10.0.0.2\"\nport = 80\n";
        let check = "[services.real_checks.\"10.0.0.2:80\"]\nkind = \"tcp\"\npath = \"/\"\n";
        let message = error(&format!("{SERVICE}{real}{check}"));
        assert!(
            message.starts_with("xlb.toml:10:1: services[0].real_checks.\"10.0.0.2:80\": "),
            "{message}"
        );
        assert!(message.contains("--check-path"), "{message}");
    }

    #[test]
    fn a_check_interval_without_a_timeout_is_accepted_however_short() {
        let check = "[services.health.check]\nkind = \"tcp\"\ninterval = \"1s\"\n";
        if let Err(e) = parse(&format!("{SERVICE}{check}")) {
            panic!("{e}");
        }
    }

    #[test]
    fn a_check_through_the_forwarding_path_is_configured_by_via_vip() {
        let check = "[services.health.check]\nkind = \"tcp-half-open\"\nvia_vip = true\n";
        let state = parse(&format!("{SERVICE}{check}")).expect("valid");
        assert_eq!(state.services[0].health.check.via_vip, Some(true));
        let check = "[services.health.check]\nvia_vip = true\naddr = \"10.0.0.3\"\n";
        let message = error(&format!("{SERVICE}{check}"));
        assert!(
            message.contains("--check-address does not apply with --check-via-vip"),
            "{message}"
        );
    }

    #[test]
    fn a_half_open_check_is_configured_by_its_kind() {
        let check = "[services.health.check]\nkind = \"tcp-half-open\"\nport = 8080\n";
        let state = parse(&format!("{SERVICE}{check}")).expect("valid");
        let health = &state.services[0].health;
        assert_eq!(
            health.check.kind,
            Some(crate::state::health::CheckKind::TcpHalfOpen)
        );
        let check = "[services.health.check]\nkind = \"tcp-half-open\"\npath = \"/\"\n";
        let message = error(&format!("{SERVICE}{check}"));
        assert!(message.contains("--check-path"), "{message}");
    }
}
