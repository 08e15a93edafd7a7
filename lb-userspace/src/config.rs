//! The configuration file (`/etc/xlb/xlb.toml`): the desired state in TOML, checked by the same
//! rules as xlbadm's commands, so that a file is accepted exactly when the same settings typed
//! as commands would be.

use std::{
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::state::{Change, DesiredState, StateError};

/// Why a part of a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// Not TOML, or not the shape of a desired state (unknown key, bad address, ...).
    #[error("{message}")]
    Syntax {
        /// The parser's message, without its location (the [`Mistake`] holds that).
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

/// Parses and checks the configuration `text`, read from `file` (named in the errors).
pub fn parse(file: &Path, text: &str) -> Result<DesiredState, Refused> {
    let fields = Fields::of(text);
    let at = |offset: usize, field: Option<String>, error| Mistake {
        location: locate(file, text, offset, field),
        error,
    };
    let state: DesiredState = toml::from_str(text).map_err(|e| {
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
    // Rebuilt through the same operations as xlbadm's commands.
    let mut checked = DesiredState::default();
    for (i, service) in state.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let added = checked.apply(&Change::AddService {
            service: service.addr,
            scheduler: service.scheduler,
            sched_flags: service.sched_flags,
            persistence: service.persistence,
            health: service.health.clone(),
        });
        if let Err(source) = added {
            let (offset, field) = fields.find(&format!("{path}.{}", service_field(&source)));
            mistakes.push(at(
                offset,
                Some(field),
                ConfigFileError::Service {
                    service: service.addr.to_string(),
                    source,
                },
            ));
            continue;
        }
        for (j, real) in service.reals.iter().enumerate() {
            let addr = SocketAddr::new(real.addr, real.port);
            let own_check = service.real_checks.get(&addr);
            let added = checked.apply(&Change::AddReal {
                service: service.addr,
                real: *real,
                check: own_check.cloned().unwrap_or_default(),
            });
            if let Err(source) = added {
                let field = match (&source, own_check) {
                    (StateError::Check { .. }, Some(_)) => {
                        format!("{path}.real_checks.{}", key(&addr.to_string()))
                    }
                    (StateError::Check { .. }, None) => format!("{path}.health.check"),
                    _ => format!("{path}.reals[{j}].{}", real_field(&source)),
                };
                let (offset, field) = fields.find(&field);
                mistakes.push(at(
                    offset,
                    Some(field),
                    ConfigFileError::Real {
                        service: service.addr.to_string(),
                        real: addr,
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
        StateError::IllegalUpperThreshold { .. } | StateError::ThresholdsUnsupported => {
            "upper_threshold"
        }
        StateError::IllegalLowerThreshold { .. } => "lower_threshold",
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
    }

    #[test]
    fn a_malformed_file_is_refused_at_its_line_and_field() {
        assert_eq!(
            error("[[services]]\nscheduler = \"wlc\"\n"),
            "xlb.toml:2:13: services[0].scheduler: xlb does not implement the 'wlc' scheduler: it balances by active connection counts, which xlb's data path does not keep (xlb supports: rr|wrr|sh|dh|mh)"
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
            "xlb.toml:1:1: services[0]: missing field `addr`"
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
