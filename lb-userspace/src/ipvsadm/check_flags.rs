//! The health-check options on xlbadm's command line (`--check …`, `--rise`, `--quorum`, …):
//! xlb's own, next to ipvsadm's, taken by `-A`/`-E` (a service's default check and its failure
//! settings) and `-a`/`-e` (one real server's check), and printed back by `-S`.
//!
//! Each flag is spelled once, in [`CHECK_FLAGS`] or [`SERVICE_FLAGS`], together with the field it
//! sets and how that field prints back; the settings themselves ([`CheckOptions`],
//! [`ServiceHealth`]) are plain data that the configuration file and the daemon use without
//! flags. Values that only flags carry as text (ports, counts, the quorum, the check address) are
//! parsed here; the others parse with their types' `FromStr`.

use std::net::IpAddr;

use thiserror::Error;

use crate::state::health::{
    format_duration, parse_duration, CheckKind, CheckOptions, ConfigError, ServiceHealth,
    DEFAULT_QUORUM,
};

/// Why a health-check flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlagError {
    /// A flag that is not a health-check flag (or, on a real server, a service's).
    #[error("unknown health-check option {flag}")]
    Unknown {
        /// The flag as given.
        flag: String,
    },
    /// A flag that needs a value, given without one.
    #[error("{flag} needs a value")]
    MissingValue {
        /// The flag.
        flag: &'static str,
    },
    /// A value that its setting refuses.
    #[error(transparent)]
    Value(#[from] ConfigError),
}

/// A flag's value as `-S` prints it: `None` = not set (or the default), `Some(None)` = a switch
/// that is on, `Some(Some(v))` = a value.
type Shown = Option<Option<String>>;

/// One health-check flag of the settings `S`: its syntax, what it sets, and how it prints back.
pub struct Flag<S: 'static> {
    /// The long option, with its dashes.
    pub name: &'static str,
    /// The value's placeholder in a usage line; `None` for a switch.
    pub value: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
    /// Parses the value (`""` for a switch) into the field; leaves `S` as it was on error.
    set: fn(&mut S, &str) -> Result<(), ConfigError>,
    /// The field's value as this flag prints it.
    show: fn(&S) -> Shown,
}

fn shown(value: Option<impl ToString>) -> Shown {
    value.map(|v| Some(v.to_string()))
}

fn switch(on: Option<bool>) -> Shown {
    (on == Some(true)).then_some(None)
}

fn duration(d: Option<std::time::Duration>) -> Shown {
    d.map(|d| Some(format_duration(d)))
}

/// The check flags, accepted on a service (the default for its real servers) and on a real
/// server, in the order `-S` prints them.
pub const CHECK_FLAGS: &[Flag<CheckOptions>] = &[
    Flag {
        name: "--check",
        value: Some("tcp|tcp-half-open|http|https|send-expect|exec|none"),
        help: "what to check (tcp when only other check options are given)",
        set: |o, v| {
            o.kind = Some(v.parse::<CheckKind>()?);
            Ok(())
        },
        show: |o| shown(o.kind),
    },
    Flag {
        name: "--check-address",
        value: Some("IP"),
        help: "check this address rather than the real server's",
        set: |o, v| {
            o.addr = Some(parse_addr(v)?);
            Ok(())
        },
        show: |o| shown(o.addr),
    },
    Flag {
        name: "--check-port",
        value: Some("PORT"),
        help: "check this port rather than the real server's",
        set: |o, v| {
            o.port = Some(parse_port(v)?);
            Ok(())
        },
        show: |o| shown(o.port),
    },
    Flag {
        name: "--check-path",
        value: Some("PATH"),
        help: "http(s): the path to GET (default /)",
        set: |o, v| {
            o.path = Some(v.to_owned());
            Ok(())
        },
        show: |o| shown(o.path.as_ref()),
    },
    Flag {
        name: "--check-host",
        value: Some("HOST"),
        help: "http(s): the Host header and TLS server name",
        set: |o, v| {
            o.host = Some(v.to_owned());
            Ok(())
        },
        show: |o| shown(o.host.as_ref()),
    },
    Flag {
        name: "--check-status",
        value: Some("CODES"),
        help: "http(s): good status codes, like 200, 200-299 or 200,301 (default 200-399)",
        set: |o, v| {
            o.status = Some(v.parse()?);
            Ok(())
        },
        show: |o| shown(o.status.as_ref()),
    },
    Flag {
        name: "--check-expect",
        value: Some("TEXT"),
        help: "http(s): text the body must contain; send-expect: text the reply must contain; ~REGEX for a regular expression",
        set: |o, v| {
            o.expect = Some(v.parse()?);
            Ok(())
        },
        show: |o| shown(o.expect.as_ref()),
    },
    Flag {
        name: "--check-send",
        value: Some("TEXT"),
        help: "send-expect: what to send, with \\r \\n \\t \\0 \\\\ \\xHH escapes",
        set: |o, v| {
            o.send = Some(v.parse()?);
            Ok(())
        },
        show: |o| shown(o.send.as_ref()),
    },
    Flag {
        name: "--check-command",
        value: Some("CMD"),
        help: "exec: the command (a program and its arguments; see --check-shell); exit 0 is up",
        set: |o, v| {
            o.command = Some(v.to_owned());
            Ok(())
        },
        show: |o| shown(o.command.as_ref()),
    },
    Flag {
        name: "--check-dynamic-weight",
        value: None,
        help: "exec: exit 2..255 is up with weight exit-2 (keepalived's misc_dynamic)",
        set: |o, _| {
            o.dynamic_weight = Some(true);
            Ok(())
        },
        show: |o| switch(o.dynamic_weight),
    },
    Flag {
        name: "--check-shell",
        value: None,
        help: "exec: run --check-command by sh -c (pipes, expansions) rather than directly",
        set: |o, _| {
            o.shell = Some(true);
            Ok(())
        },
        show: |o| switch(o.shell),
    },
    Flag {
        name: "--check-insecure",
        value: None,
        help: "https: do not verify the certificate (self-signed backends)",
        set: |o, _| {
            o.insecure = Some(true);
            Ok(())
        },
        show: |o| switch(o.insecure),
    },
    Flag {
        name: "--check-via-vip",
        value: None,
        help: "tcp, tcp-half-open: a SYN to VIP:PORT through the forwarding path (to the server's MAC, or in its tunnel), answered from the VIP",
        set: |o, _| {
            o.via_vip = Some(true);
            Ok(())
        },
        show: |o| switch(o.via_vip),
    },
    Flag {
        name: "--check-interval",
        value: Some("DURATION"),
        help: "time between checks, like 500ms, 2s, 1m (default 2s)",
        set: |o, v| {
            o.interval = Some(parse_duration(v)?);
            Ok(())
        },
        show: |o| duration(o.interval),
    },
    Flag {
        name: "--check-timeout",
        value: Some("DURATION"),
        help: "time a check may take, at most the interval (default 1s, or the interval if shorter)",
        set: |o, v| {
            o.timeout = Some(parse_duration(v)?);
            Ok(())
        },
        show: |o| duration(o.timeout),
    },
    Flag {
        name: "--rise",
        value: Some("N"),
        help: "good checks in a row that bring a server back (default 2)",
        set: |o, v| {
            o.rise = Some(parse_count("rise", v)?);
            Ok(())
        },
        show: |o| shown(o.rise),
    },
    Flag {
        name: "--fall",
        value: Some("N"),
        help: "failed checks in a row that take a server out (default 3)",
        set: |o, v| {
            o.fall = Some(parse_count("fall", v)?);
            Ok(())
        },
        show: |o| shown(o.fall),
    },
    Flag {
        name: "--slow-start",
        value: Some("DURATION"),
        help: "ramp a returning server's weight up over this time",
        set: |o, v| {
            o.slow_start = Some(parse_duration(v)?);
            Ok(())
        },
        show: |o| duration(o.slow_start),
    },
    Flag {
        name: "--check-start",
        value: Some("first|up|down"),
        help: "state before the first result (default: the first result decides)",
        set: |o, v| {
            o.start = Some(v.parse()?);
            Ok(())
        },
        show: |o| shown(o.start),
    },
];

/// The flags that only a service takes, in the order `-S` prints them (before its check flags).
pub const SERVICE_FLAGS: &[Flag<ServiceHealth>] = &[
    Flag {
        name: "--inhibit-on-failure",
        value: None,
        help: "give failed servers weight 0 rather than removing them",
        set: |h, _| {
            h.inhibit_on_failure = true;
            Ok(())
        },
        show: |h| h.inhibit_on_failure.then_some(None),
    },
    Flag {
        name: "--quorum",
        value: Some("WEIGHT"),
        help: "the live weight below which the sorry server takes over (default 1)",
        set: |h, v| {
            h.quorum = parse_quorum(v)?;
            Ok(())
        },
        show: |h| shown((h.quorum != DEFAULT_QUORUM).then_some(h.quorum)),
    },
    Flag {
        name: "--sorry-server",
        value: Some("RIP[:PORT]"),
        help: "the server that takes new flows while the quorum is lost",
        set: |h, v| {
            h.sorry_server = Some(v.parse()?);
            Ok(())
        },
        show: |h| shown(h.sorry_server.as_ref()),
    },
    Flag {
        name: "--check-notify",
        value: Some("CMD"),
        help: "run CMD SERVICE REAL STATE on every health change of a real server",
        set: |h, v| {
            if v.trim().is_empty() {
                return Err(ConfigError::MissingCommand {
                    what: "--check-notify",
                });
            }
            h.notify = Some(v.to_owned());
            Ok(())
        },
        show: |h| shown(h.notify.as_ref()),
    },
    Flag {
        name: "--check-notify-shell",
        value: None,
        help: "run --check-notify by sh -c (with the arguments as $1 $2 $3) rather than directly",
        set: |h, _| {
            h.notify_shell = true;
            Ok(())
        },
        show: |h| h.notify_shell.then_some(None),
    },
];

/// The name and value placeholder of every health-check flag, check flags first.
pub fn syntax() -> impl Iterator<Item = (&'static str, Option<&'static str>)> {
    let check = CHECK_FLAGS.iter().map(|f| (f.name, f.value));
    check.chain(SERVICE_FLAGS.iter().map(|f| (f.name, f.value)))
}

/// Whether `name` is one of [`SERVICE_FLAGS`], which a real server does not take.
pub fn is_service_flag(name: &str) -> bool {
    SERVICE_FLAGS.iter().any(|f| f.name == name)
}

/// Health settings that flags read into and print from.
pub trait HealthFlags {
    /// Applies one flag with its value (`None` for a switch), parsing the value; on error the
    /// settings are unchanged.
    fn set_flag(&mut self, name: &str, value: Option<&str>) -> Result<(), FlagError>;

    /// The flags that give these settings, in table order, each with its value (`None` for a
    /// switch); defaults are left out, and [`HealthFlags::set_flag`] reads them back to the same
    /// settings. Quoting values for a shell is the caller's business.
    fn flags(&self) -> Vec<(&'static str, Option<String>)>;
}

impl HealthFlags for CheckOptions {
    fn set_flag(&mut self, name: &str, value: Option<&str>) -> Result<(), FlagError> {
        let flag = find(CHECK_FLAGS, name).ok_or_else(|| FlagError::Unknown {
            flag: name.to_owned(),
        })?;
        apply(flag, self, value)
    }

    fn flags(&self) -> Vec<(&'static str, Option<String>)> {
        printed(CHECK_FLAGS, self)
    }
}

impl HealthFlags for ServiceHealth {
    /// A check flag sets the service's default check.
    fn set_flag(&mut self, name: &str, value: Option<&str>) -> Result<(), FlagError> {
        match find(SERVICE_FLAGS, name) {
            Some(flag) => apply(flag, self, value),
            None => self.check.set_flag(name, value),
        }
    }

    /// Service flags, then the default check's.
    fn flags(&self) -> Vec<(&'static str, Option<String>)> {
        let mut flags = printed(SERVICE_FLAGS, self);
        flags.extend(self.check.flags());
        flags
    }
}

fn find<S>(flags: &'static [Flag<S>], name: &str) -> Option<&'static Flag<S>> {
    flags.iter().find(|f| f.name == name)
}

fn apply<S>(flag: &Flag<S>, settings: &mut S, value: Option<&str>) -> Result<(), FlagError> {
    let v = match (flag.value, value) {
        (Some(_), Some(v)) => v,
        (Some(_), None) => return Err(FlagError::MissingValue { flag: flag.name }),
        (None, _) => "",
    };
    Ok((flag.set)(settings, v)?)
}

fn printed<S>(flags: &[Flag<S>], settings: &S) -> Vec<(&'static str, Option<String>)> {
    flags
        .iter()
        .filter_map(|f| (f.show)(settings).map(|v| (f.name, v)))
        .collect()
}

/// Parses `--check-port`: 1..=65535.
fn parse_port(s: &str) -> Result<u16, ConfigError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::BadNumber {
            what: "port",
            value: s.to_owned(),
            expected: "a number 1..65535",
        }),
    }
}

/// Parses `--rise` or `--fall` (`what` names which): at least 1.
fn parse_count(what: &'static str, s: &str) -> Result<u32, ConfigError> {
    match s.parse::<u32>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(ConfigError::BadNumber {
            what,
            value: s.to_owned(),
            expected: "a whole number of checks, at least 1",
        }),
    }
}

/// Parses `--quorum`: a total weight, 0 meaning that the quorum is never lost.
fn parse_quorum(s: &str) -> Result<u32, ConfigError> {
    s.parse::<u32>().map_err(|_| ConfigError::BadNumber {
        what: "quorum",
        value: s.to_owned(),
        expected: "a total weight, 0 or more",
    })
}

/// Parses `--check-address`: a numeric IPv4 or IPv6 address.
fn parse_addr(s: &str) -> Result<IpAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError::BadNumber {
        what: "address",
        value: s.to_owned(),
        expected: "a numeric IPv4 or IPv6 address",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{health::CheckSpec, Protocol, ServiceAddr};

    fn options(flags: &[(&str, Option<&str>)]) -> CheckOptions {
        let mut options = CheckOptions::default();
        for (name, value) in flags {
            options
                .set_flag(name, *value)
                .unwrap_or_else(|e| panic!("{name} {value:?}: {e}"));
        }
        options
    }

    fn service(addr: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: addr.parse().expect("test address"),
            port,
        }
    }

    #[test]
    fn rise_or_fall_of_zero_is_refused() {
        let mut options = CheckOptions::default();
        assert!(options.set_flag("--rise", Some("0")).is_err());
        assert!(options.set_flag("--fall", Some("0")).is_err());
        assert_eq!(options, CheckOptions::default());
    }

    #[test]
    fn options_build_into_the_spec_their_flags_describe() {
        let spec: Option<CheckSpec> =
            options(&[("--check", Some("http")), ("--check-path", Some("/x"))])
                .build()
                .expect("valid");
        assert!(spec.is_some());
        let err = options(&[("--check", Some("tcp")), ("--check-path", Some("/x"))])
            .build()
            .expect_err("a path on a TCP check");
        assert_eq!(
            err.to_string(),
            "--check-path does not apply to --check tcp"
        );
    }

    #[test]
    fn counts_and_ports_must_be_at_least_one() {
        assert_eq!(parse_count("rise", "2"), Ok(2));
        assert_eq!(
            parse_count("rise", "0").expect_err("zero").to_string(),
            "invalid rise '0': expected a whole number of checks, at least 1"
        );
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_quorum("0"), Ok(0));
    }

    #[test]
    fn the_help_lists_every_kind() {
        let check = CHECK_FLAGS.iter().find(|f| f.name == "--check");
        assert_eq!(
            check.and_then(|f| f.value),
            Some(CheckKind::names().as_str())
        );
    }

    #[test]
    fn unknown_flags_kinds_and_missing_values_are_refused() {
        let mut options = CheckOptions::default();
        assert_eq!(
            options
                .set_flag("--check", Some("ping"))
                .expect_err("unknown kind")
                .to_string(),
            "unknown check 'ping' (expected one of: tcp|tcp-half-open|http|https|send-expect|exec|none)"
        );
        assert!(matches!(
            options.set_flag("--check-bogus", Some("x")),
            Err(FlagError::Unknown { .. })
        ));
        assert_eq!(
            options.set_flag("--check-path", None),
            Err(FlagError::MissingValue {
                flag: "--check-path"
            })
        );
        assert_eq!(options, CheckOptions::default());
    }

    #[test]
    fn options_print_as_flags_that_read_back_the_same() {
        let flags: &[(&str, Option<&str>)] = &[
            ("--check", Some("https")),
            ("--check-port", Some("8443")),
            ("--check-path", Some("/status")),
            ("--check-host", Some("www.example.com")),
            ("--check-status", Some("200,301-302")),
            ("--check-expect", Some("~^ok")),
            ("--check-insecure", None),
            ("--check-interval", Some("500ms")),
            ("--check-timeout", Some("200ms")),
            ("--rise", Some("1")),
            ("--fall", Some("5")),
            ("--slow-start", Some("30s")),
            ("--check-start", Some("down")),
        ];
        let written = options(flags);
        let printed = written.flags();
        let expected: Vec<(&str, Option<String>)> = flags
            .iter()
            .map(|(n, v)| (*n, v.map(str::to_owned)))
            .collect();
        assert_eq!(printed, expected);
        let mut read_back = CheckOptions::default();
        for (name, value) in &printed {
            read_back
                .set_flag(name, value.as_deref())
                .expect("reads back");
        }
        assert_eq!(read_back, written);
        written.build().expect("valid").expect("a check");
    }

    #[test]
    fn the_check_through_the_forwarding_path_prints_back_as_its_switch() {
        let flags: &[(&str, Option<&str>)] = &[
            ("--check", Some("tcp-half-open")),
            ("--check-port", Some("8080")),
            ("--check-via-vip", None),
        ];
        let written = options(flags);
        assert_eq!(written.via_vip, Some(true));
        let printed = written.flags();
        assert_eq!(
            printed,
            vec![
                ("--check", Some("tcp-half-open".to_owned())),
                ("--check-port", Some("8080".to_owned())),
                ("--check-via-vip", None),
            ]
        );
        assert!(written.build().expect("valid").expect("a check").via_vip);
    }

    #[test]
    fn service_flags_set_the_service_and_its_default_check() {
        let mut health = ServiceHealth::default();
        for (name, value) in [
            ("--inhibit-on-failure", None),
            ("--quorum", Some("3")),
            ("--sorry-server", Some("10.0.0.9:80")),
            ("--check-notify", Some("logger -t xlb")),
            ("--check", Some("tcp")),
        ] {
            health.set_flag(name, value).expect("service flag");
        }
        assert!(health.inhibit_on_failure);
        assert_eq!(health.quorum, 3);
        assert_eq!(health.check.kind, Some(CheckKind::Tcp));
        health.validate(&service("10.0.0.1", 80)).expect("valid");
        let mut read_back = ServiceHealth::default();
        for (name, value) in health.flags() {
            read_back
                .set_flag(name, value.as_deref())
                .expect("reads back");
        }
        assert_eq!(read_back, health);
    }
}
