//! `xlbadm`'s command line, parsed as ipvsadm 1.31 parses its own (ipvsadm.c `parse_options`,
//! `process_options` and its `commands_v_options` table), with ipvsadm's error messages and exit
//! codes.
//!
//! What is the same: the verbs and options with their short and long spellings, combined short
//! options (`-Ln`, `-At 10.0.0.1:80`, `-w5`), `--opt=value`, `-p` with an optional timeout, the
//! table of which options each command requires, allows or refuses, ipvsadm's defaults (weight 1,
//! direct routing, per-host persistence), and no arguments at all meaning `-L`.
//!
//! What differs, on purpose:
//! - the default scheduler is `mh` (Maglev); ipvsadm's is `wlc`; the schedulers xlb lacks
//!   (`lblc`, `lblcr`, `twos`) are refused by name; `-y` above `-x`
//!   is refused here (IPVS refuses it when the rule reaches the kernel);
//! - `-m` (NAT), firewall marks, SCTP, sync daemons, one-packet scheduling and persistence
//!   engines are refused with a message that names the feature;
//! - `-b` takes `sh-fallback`, `sh-port` (with `-s sh`), `mh-fallback`, `mh-port` (with `-s mh`)
//!   and their generic names `flag-1`, `flag-2`; `flag-3` means nothing to xlb and is refused;
//! - host names are not resolved (that would be I/O): addresses are numeric, ports numeric or one
//!   of a few well-known names (http, https, ssh, domain, smtp, ftp);
//! - the verb may come anywhere on the line, not only first, and `--socket PATH` is accepted
//!   anywhere to name the daemon's control socket;
//! - `-M` without `-p` is refused (ipvsadm silently ignores it), and so is a real-server port that
//!   differs from the service's with `-g`/`-i` (ipvsadm silently replaces it);
//! - netmasks are read after the whole line, so `-M` may come before `-t`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    check_flags::{self, is_service_flag, HealthFlags, CHECK_FLAGS, SERVICE_FLAGS},
    ports,
};
use crate::state::{
    health::{CheckOptions, ServiceHealth},
    timeouts::MAX_CONNECTION_TIMEOUT_SECS,
    Change, Forwarding, Netmask, Persistence, Protocol, RealServer, SchedFlags, Scheduler,
    ServiceAddr, StateError, UnknownScheduler, DEFAULT_PERSISTENCE_TIMEOUT_SECS, DEFAULT_WEIGHT,
    MAX_PERSISTENCE_TIMEOUT_SECS, MAX_THRESHOLD, MAX_WEIGHT,
};

/// A parsed command line: what to do, and where the daemon listens if the line says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The command.
    pub command: Command,
    /// `--socket PATH`: the daemon's control socket, if not the default.
    pub socket: Option<PathBuf>,
}

/// What `xlbadm` was asked to do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per command line or request: boxing the change would only add noise"
)]
pub enum Command {
    /// `-A -E -D -a -e -d -C`: change the desired state.
    Change(Change),
    /// `-L`, `-l`, or no arguments: print the table.
    List(ListOptions),
    /// `-Z`: zero the counters of one service or of all.
    Zero {
        /// The service, or all of them.
        service: Option<ServiceAddr>,
    },
    /// `-S`: print the table as `-R` input. Always numeric: `-n` is accepted and changes nothing,
    /// because xlbadm's restore does not resolve names.
    Save,
    /// `-R`: read `-S` lines from stdin and apply them.
    Restore,
    /// `--reload` (xlb's own): xlbd reads its configuration file again.
    Reload,
    /// `-h`: print the usage.
    Help,
    /// `-v`: print the version.
    Version,
}

/// How `-L` should print the table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListOptions {
    /// `-t`/`-u`: only this service (and no "IP Virtual Server" header line, as in ipvsadm).
    pub service: Option<ServiceAddr>,
    /// `-n`: addresses and ports as numbers rather than names.
    pub numeric: bool,
    /// `-c`: the connection table rather than the services.
    pub connections: bool,
    /// `--stats`: packet and byte counters.
    pub stats: bool,
    /// `--rate`: per-second rates.
    pub rate: bool,
    /// `--thresholds`: upper and lower connection thresholds.
    pub thresholds: bool,
    /// `--persistent-conn`: persistent connection counts.
    pub persistent_conn: bool,
    /// `--exact`: counters in full rather than in K, M, G.
    pub exact: bool,
    /// Sorted as ipvsadm sorts (the default; `--nosort` turns it off).
    pub sort: bool,
    /// `--health`: the health-check listing (state, check, last result, latency, reason).
    #[serde(default)]
    pub health: bool,
    /// `--timeout`: the connection table's timeouts (`Timeout (tcp tcpfin udp): ...`) alone.
    #[serde(default)]
    pub timeout: bool,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            service: None,
            numeric: false,
            connections: false,
            stats: false,
            rate: false,
            thresholds: false,
            persistent_conn: false,
            exact: false,
            sort: true,
            health: false,
            timeout: false,
        }
    }
}

/// Why a command line was refused. Display strings are ipvsadm's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Options but no verb.
    #[error("no command specified; try `xlbadm -h' or `xlbadm --help' for more information")]
    NoCommand,
    /// An option that neither ipvsadm nor xlbadm has.
    #[error("{option}: unknown option")]
    UnknownOption {
        /// The option as spelled.
        option: String,
    },
    /// An option that needs a value came last.
    #[error("{option}: missing argument")]
    MissingArgument {
        /// The option as spelled.
        option: String,
    },
    /// `--flag=value` for an option that takes no value.
    #[error("{option}: option does not take an argument")]
    UnexpectedValue {
        /// The option as spelled.
        option: String,
    },
    /// A word that is not an option nor an option's value.
    #[error("unexpected argument {argument}")]
    UnexpectedArgument {
        /// The word.
        argument: String,
    },
    /// Two verbs, such as `-A -a`.
    #[error("multiple commands specified")]
    MultipleCommands,
    /// The same option twice, or two of one kind such as `-g -i`.
    #[error("multiple '{option}' options specified")]
    MultipleOptions {
        /// ipvsadm's name of the option.
        option: &'static str,
    },
    /// An option that the command does not take, such as `-r` with `-A`.
    #[error("Illegal '{option}' option with the '{command}' command")]
    IllegalOption {
        /// ipvsadm's name of the option.
        option: &'static str,
        /// ipvsadm's name of the command.
        command: &'static str,
    },
    /// An option that the command needs, such as `-t` with `-A`.
    #[error("You need to supply the '{option}' option for the '{command}' command")]
    MissingOption {
        /// ipvsadm's name of the option.
        option: &'static str,
        /// ipvsadm's name of the command.
        command: &'static str,
    },
    /// Two options of which the command takes only one, such as `-L -c -t`.
    #[error(
        "The option '{option}' conflicts with the '{other}' option in the '{command}' command"
    )]
    ConflictingOptions {
        /// ipvsadm's name of the later option.
        option: &'static str,
        /// ipvsadm's name of the earlier option.
        other: &'static str,
        /// ipvsadm's name of the command.
        command: &'static str,
    },
    /// `-L -c` with `--stats`, `--rate` or `--thresholds`.
    #[error("options conflicts in the list command")]
    ListConflict,
    /// `-t`/`-u` with something that is not an address and port.
    #[error("illegal virtual server address[:port] specified: `{value}': {reason}")]
    IllegalServiceAddress {
        /// The value given.
        value: String,
        /// What is wrong with it.
        #[source]
        reason: AddressError,
    },
    /// `-r` with something that is not an address and optional port.
    #[error("illegal real server address[:port] specified: `{value}': {reason}")]
    IllegalRealServerAddress {
        /// The value given.
        value: String,
        /// What is wrong with it.
        #[source]
        reason: AddressError,
    },
    /// `-s` with a scheduler xlb does not have.
    #[error(transparent)]
    UnknownScheduler(#[from] UnknownScheduler),
    /// `-b` with a flag xlb does not know, or one of another scheduler than `-s`'s.
    #[error("illegal scheduler flag `{flag}' for the {scheduler} scheduler: {scheduler} takes {allowed}")]
    IllegalSchedFlag {
        /// The flag as given.
        flag: String,
        /// The service's scheduler.
        scheduler: &'static str,
        /// The flags it takes, in words.
        allowed: &'static str,
    },
    /// `-p` with a timeout outside 1..=31 days.
    #[error("invalid timeout value `{value}' specified")]
    InvalidTimeout {
        /// The value given.
        value: String,
    },
    /// `--set` with fewer than three values.
    #[error(
        "--set option requires 3 timeout values (tcp tcpfin udp, in seconds; 0 keeps a value)"
    )]
    SetNeedsThreeTimeouts,
    /// `--set` with a value that is not a number of seconds within 0..=31 days.
    #[error("invalid timeout value `{value}' specified: the {which} timeout is a number of seconds from 0 (keep the current one) to {max}", max = MAX_CONNECTION_TIMEOUT_SECS)]
    InvalidConnectionTimeout {
        /// `tcp`, `tcpfin` or `udp`.
        which: &'static str,
        /// The value given.
        value: String,
    },
    /// `-M` that is not a dotted IPv4 mask, for an IPv4 service.
    #[error("illegal virtual server persistent mask specified")]
    IllegalNetmask {
        /// The value given.
        value: String,
    },
    /// `-M` that is not a prefix length 1..=128, for an IPv6 service.
    #[error("illegal ipv6 netmask specified")]
    IllegalIpv6Netmask {
        /// The value given.
        value: String,
    },
    /// `-M` without `-p`: ipvsadm would silently ignore the mask.
    #[error("the 'netmask' option needs the 'persistent' option (-p)")]
    NetmaskWithoutPersistence,
    /// `-w` outside 0..=65535.
    #[error("illegal weight specified")]
    IllegalWeight {
        /// The value given.
        value: String,
    },
    /// `-x` that is not a number 0..=2147483647.
    #[error("illegal u_threshold specified")]
    IllegalUpperThreshold {
        /// The value given.
        value: String,
    },
    /// `-y` that is not a number 0..=2147483647.
    #[error("illegal l_threshold specified")]
    IllegalLowerThreshold {
        /// The value given.
        value: String,
    },
    /// `-m`: the balancer never sees replies, so it cannot un-NAT them.
    #[error("xlb does not support masquerading (NAT); use -g or -i")]
    Masquerading,
    /// `--tun-type` other than `ipip` (ipvsadm 1.31 also has gue and gre).
    #[error("illegal tunnel type `{value}' specified; xlb supports only ipip")]
    IllegalTunnelType {
        /// The value given.
        value: String,
    },
    /// `--tun-type` without `-i`.
    #[error("Tunnel options conflict with forward method")]
    TunnelOptionWithoutTunnel,
    /// An ipvsadm option for a feature xlb does not have.
    #[error("xlb does not support {feature} ({option})")]
    Unsupported {
        /// The option as spelled.
        option: String,
        /// The feature, in words.
        feature: &'static str,
    },
    /// A health-check option with a bad value, on the wrong command, or not holding together.
    #[error("{message}")]
    Check {
        /// What is wrong.
        message: String,
    },
    /// A well-formed command that the desired state would refuse whatever it holds, such as a
    /// port-0 service without persistence.
    #[error(transparent)]
    Invalid(#[from] StateError),
}

impl ParseError {
    /// The exit status ipvsadm uses for the same mistake: 255 where it points to `ipvsadm -h` or
    /// prints a popt error (no command, unknown option, missing value), 2 for everything it rejects
    /// with `fail(2, ...)` (bad values and combinations).
    pub fn exit_code(&self) -> i32 {
        match self {
            ParseError::NoCommand
            | ParseError::UnknownOption { .. }
            | ParseError::MissingArgument { .. }
            | ParseError::UnexpectedValue { .. } => 255,
            _ => 2,
        }
    }
}

/// What is wrong with an address[:port].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    /// Not a numeric address: xlbadm does not look names up.
    #[error("not a numeric IP address (host names are not resolved)")]
    NotNumeric,
    /// Only a port, or nothing.
    #[error("an address is needed")]
    NoAddress,
    /// `[addr]` not followed by `:port`, or not an IPv6 address inside.
    #[error("an address in brackets must be IPv6 and be followed by :port")]
    Brackets,
    /// A port that is neither a number 0..=65535 nor a known name.
    #[error(
        "the port must be a number from 0 to 65535 or one of {}",
        ports::names()
    )]
    Port,
}

/// Parses the arguments after the program name.
///
/// Health-check options (`--check ...`, `--rise`, `--quorum`, ..., see
/// [`CHECK_FLAGS`] and [`SERVICE_FLAGS`]) are
/// xlb's own: they are taken out first and attached to the `-A`/`-E` (service default) or
/// `-a`/`-e` (one real server) command; `--health` goes with `-L`.
pub fn parse(args: &[String]) -> Result<Invocation, ParseError> {
    let (rest, flags, health_listing) = split_health_flags(args)?;
    let mut invocation = parse_ipvsadm(&rest)?;
    let misplaced = |what: &str| ParseError::Check {
        message: format!("{what} go with -A/-E (the service's default) or -a/-e (one real server)"),
    };
    let bad = |e: String| ParseError::Check { message: e };
    match &mut invocation.command {
        Command::Change(Change::AddService {
            service, health, ..
        })
        | Command::Change(Change::EditService {
            service, health, ..
        }) => {
            for (name, value) in &flags {
                health
                    .set_flag(name, value.as_deref())
                    .map_err(|e| bad(e.to_string()))?;
            }
            health.validate(service).map_err(|e| bad(e.to_string()))?;
            health
                .spec_for(&CheckOptions::default())
                .map_err(|e| bad(e.to_string()))?;
        }
        Command::Change(Change::AddReal { check, .. })
        | Command::Change(Change::EditReal { check, .. }) => {
            for (name, value) in &flags {
                if is_service_flag(name) {
                    return Err(ParseError::Check {
                        message: format!("{name} is a service option: it goes with -A/-E"),
                    });
                }
                check
                    .set_flag(name, value.as_deref())
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        Command::List(options) => {
            if !flags.is_empty() {
                return Err(misplaced("health-check options"));
            }
            options.health = health_listing;
        }
        _ if !flags.is_empty() => return Err(misplaced("health-check options")),
        _ => {}
    }
    if health_listing && !matches!(invocation.command, Command::List(_)) {
        return Err(ParseError::Check {
            message: "--health goes with -L".to_owned(),
        });
    }
    Ok(invocation)
}

/// A health-check option and its value, as given.
type HealthFlag = (&'static str, Option<String>);

/// Separates xlb's health-check options (and `--health`) from ipvsadm's.
fn split_health_flags(args: &[String]) -> Result<(Vec<String>, Vec<HealthFlag>, bool), ParseError> {
    let mut rest = Vec::with_capacity(args.len());
    let mut flags = Vec::new();
    let mut health_listing = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--health" {
            health_listing = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some((flag, placeholder)) = check_flags::syntax().find(|(f, _)| *f == name) else {
            rest.push(arg.clone());
            continue;
        };
        let value = match (placeholder, inline) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ParseError::Check {
                    message: format!("{flag} takes no value"),
                })
            }
            (Some(_), Some(v)) => Some(v),
            (Some(_), None) => {
                let v = args.get(i).cloned().ok_or_else(|| ParseError::Check {
                    message: format!("{flag} needs a value"),
                })?;
                i += 1;
                Some(v)
            }
        };
        flags.push((flag, value));
    }
    Ok((rest, flags, health_listing))
}

/// Parses ipvsadm's own syntax.
fn parse_ipvsadm(args: &[String]) -> Result<Invocation, ParseError> {
    let mut line = Line::default();
    let mut tokens = Tokens {
        args,
        next: 0,
        cluster: None,
        words_only: false,
    };
    while let Some(token) = tokens.next_token()? {
        match token {
            Token::Positional(word) => {
                line.anything = true;
                line.words.push(word.to_owned());
            }
            Token::Option {
                flag: Flag::Help, ..
            } => return Ok(line.finish_with(Command::Help)),
            Token::Option {
                flag: Flag::Version,
                ..
            } => return Ok(line.finish_with(Command::Version)),
            Token::Option {
                flag,
                spelled,
                value,
            } => line.take(flag, spelled, value)?,
        }
    }
    line.finish()
}

/// The usage text for `-h`, in ipvsadm's layout, listing only what xlbadm supports.
pub fn usage(program: &str) -> String {
    format!(
        "Usage:
  {p} -A|E -t|u service-address [-s scheduler] [-b sched-flags] [-p [timeout]] [-M netmask]
  {p} -D -t|u service-address
  {p} -C
  {p} -R
  {p} -S [-n]
  {p} --reload
  {p} -a|e -t|u service-address -r server-address [options]
  {p} -d -t|u service-address -r server-address
  {p} -L|l [-t|u service-address] [options]
  {p} -Z [-t|u service-address]
  {p} --set tcp tcpfin udp
  {p} -h

Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options
  --delete-service  -D        delete virtual service
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin
  --save            -S        save rules to stdout
  --reload                    xlbd reads its configuration file again (as SIGHUP)
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options
  --delete-server   -d        delete real server
  --list            -L|-l     list the table
  --zero            -Z        zero counters in a service or all services
  --set tcp tcpfin udp        set connection timeout values (seconds; 0 keeps a value)
  --help            -h        display this help message
  --version         -v        display the version

Options:
  --tcp-service  -t service-address   service-address is address[:port]
  --udp-service  -u service-address   service-address is address[:port]
  --scheduler    -s scheduler         one of {scheds},
                                      the default scheduler is {default}.
  --sched-flags  -b flags             scheduler flags (comma-separated): sh-fallback, sh-port
                                      with sh; mh-fallback, mh-port with mh
  --persistent   -p [timeout]         persistent service (default timeout {timeout} s)
  --netmask      -M netmask           persistent granularity mask
  --real-server  -r server-address    server-address is address[:port]
  --gatewaying   -g                   gatewaying (direct routing) (default)
  --ipip         -i                   ipip encapsulation (tunneling)
  --tun-type      ipip                tunnel type (only ipip)
  --weight       -w weight            capacity of real server
  --u-threshold  -x uthreshold        upper threshold of connections
  --l-threshold  -y lthreshold        lower threshold of connections
  --connection   -c                   output of current connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --stats                             output of statistics information
  --rate                              output of rate information
  --exact                             expand numbers (display exact values)
  --thresholds                        output of thresholds information
  --persistent-conn                   output of persistent connection info
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --numeric      -n                   numeric output of addresses and ports
  --socket       path                 the xlbd control socket
",
        p = program,
        scheds = Scheduler::supported_names(),
        default = Scheduler::default().name(),
        timeout = DEFAULT_PERSISTENCE_TIMEOUT_SECS,
    ) + &health_usage()
}

/// The health-check options, from their tables.
fn health_usage() -> String {
    fn row<S>(f: &check_flags::Flag<S>) -> String {
        let left = match f.value {
            Some(v) => format!("{} {v}", f.name),
            None => f.name.to_owned(),
        };
        format!("  {left:<36} {}\n", f.help)
    }
    let mut out = String::from(
        "\nHealth checks (xlb), with -A/-E for the service's default and -a/-e for one server:\n",
    );
    out.extend(CHECK_FLAGS.iter().map(row));
    out.push_str("Service options, with -A/-E:\n");
    out.extend(SERVICE_FLAGS.iter().map(row));
    out.push_str("  --health                             with -L: each server's check and state\n");
    out
}

/// The commands, with ipvsadm's names for them in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    AddService,
    EditService,
    DeleteService,
    Clear,
    List,
    AddServer,
    EditServer,
    DeleteServer,
    Restore,
    Reload,
    Save,
    Zero,
    SetTimeouts,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::AddService => "add-service",
            Verb::EditService => "edit-service",
            Verb::DeleteService => "delete-service",
            // ipvsadm calls -C "flush" in its messages.
            Verb::Clear => "flush",
            Verb::List => "list",
            Verb::AddServer => "add-server",
            Verb::EditServer => "edit-server",
            Verb::DeleteServer => "delete-server",
            Verb::Restore => "restore",
            Verb::Reload => "reload",
            Verb::Save => "save",
            Verb::Zero => "zero",
            Verb::SetTimeouts => "set",
        }
    }

    /// ipvsadm's `commands_v_options` row for the options xlbadm has, one character per entry of
    /// [`Opt::ALL`]: `+` required, `x` illegal, `1` at most one of the `1`s, space optional.
    fn rules(self) -> &'static [u8; Opt::COUNT] {
        //                                   n c svc s p M r fwd w x y tot st rt thr pc nosort ex tun b
        match self {
            Verb::AddService | Verb::EditService => b"xx+   xxxxxxxxxxxxx ",
            Verb::DeleteService => b"xx+xxxxxxxxxxxxxxxxx",
            Verb::Clear | Verb::Restore | Verb::Reload | Verb::SetTimeouts => {
                b"xxxxxxxxxxxxxxxxxxxx"
            }
            Verb::List => b" 11xxxxxxxx1      xx",
            Verb::AddServer | Verb::EditServer => b"xx+xxx+    xxxxxxx x",
            Verb::DeleteServer => b"xx+xxx+xxxxxxxxxxxxx",
            Verb::Save => b" xxxxxxxxxxxxxxxxxxx",
            Verb::Zero => b"xx xxxxxxxxxxxxxxxxx",
        }
    }
}

/// The options that ipvsadm checks against each command, in its table's column order (which
/// decides which of several faults is reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Numeric,
    Connection,
    Service,
    Scheduler,
    Persistent,
    Netmask,
    RealServer,
    Forward,
    Weight,
    UThreshold,
    LThreshold,
    Timeout,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
    NoSort,
    Exact,
    TunType,
    SchedFlags,
}

impl Opt {
    const COUNT: usize = 20;
    const ALL: [Opt; Opt::COUNT] = [
        Opt::Numeric,
        Opt::Connection,
        Opt::Service,
        Opt::Scheduler,
        Opt::Persistent,
        Opt::Netmask,
        Opt::RealServer,
        Opt::Forward,
        Opt::Weight,
        Opt::UThreshold,
        Opt::LThreshold,
        Opt::Timeout,
        Opt::Stats,
        Opt::Rate,
        Opt::Thresholds,
        Opt::PersistentConn,
        Opt::NoSort,
        Opt::Exact,
        Opt::TunType,
        Opt::SchedFlags,
    ];

    /// ipvsadm's `optnames`.
    fn name(self) -> &'static str {
        match self {
            Opt::Numeric => "numeric",
            Opt::Connection => "connection",
            Opt::Service => "service-address",
            Opt::Scheduler => "scheduler",
            Opt::Persistent => "persistent",
            Opt::Netmask => "netmask",
            Opt::RealServer => "real-server",
            Opt::Forward => "forwarding-method",
            Opt::Weight => "weight",
            Opt::UThreshold => "u-threshold",
            Opt::LThreshold => "l-threshold",
            Opt::Timeout => "timeout",
            Opt::Stats => "stats",
            Opt::Rate => "rate",
            Opt::Thresholds => "thresholds",
            Opt::PersistentConn => "persistent-conn",
            Opt::NoSort => "nosort",
            Opt::Exact => "exact",
            Opt::TunType => "tun-type",
            Opt::SchedFlags => "sched-flags",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// Every option spelling xlbadm recognizes, and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    Verb(Verb),
    Help,
    Version,
    Service(Protocol),
    Scheduler,
    Persistent,
    Netmask,
    RealServer,
    Forward(Forwarding),
    Masquerading,
    Weight,
    UThreshold,
    LThreshold,
    Numeric,
    Connection,
    Stats,
    Rate,
    Exact,
    Thresholds,
    PersistentConn,
    Timeout,
    Sort,
    NoSort,
    TunType,
    SchedFlags,
    Socket,
    /// An ipvsadm option for a feature xlb lacks, named in words.
    Unsupported(&'static str),
}

/// Whether an option takes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arg {
    No,
    Required,
    /// Only `-p`: the next word is its value only if it is a number.
    Optional,
}

struct Spec {
    short: Option<char>,
    long: Option<&'static str>,
    flag: Flag,
    arg: Arg,
}

const fn spec(short: Option<char>, long: Option<&'static str>, flag: Flag, arg: Arg) -> Spec {
    Spec {
        short,
        long,
        flag,
        arg,
    }
}

/// ipvsadm 1.31's option table (ipvsadm.c `options_table`), plus `--socket`.
const SPECS: &[Spec] = &[
    spec(
        Some('A'),
        Some("add-service"),
        Flag::Verb(Verb::AddService),
        Arg::No,
    ),
    spec(
        Some('E'),
        Some("edit-service"),
        Flag::Verb(Verb::EditService),
        Arg::No,
    ),
    spec(
        Some('D'),
        Some("delete-service"),
        Flag::Verb(Verb::DeleteService),
        Arg::No,
    ),
    spec(Some('C'), Some("clear"), Flag::Verb(Verb::Clear), Arg::No),
    spec(Some('L'), Some("list"), Flag::Verb(Verb::List), Arg::No),
    spec(Some('l'), None, Flag::Verb(Verb::List), Arg::No),
    spec(Some('Z'), Some("zero"), Flag::Verb(Verb::Zero), Arg::No),
    spec(
        Some('a'),
        Some("add-server"),
        Flag::Verb(Verb::AddServer),
        Arg::No,
    ),
    spec(
        Some('e'),
        Some("edit-server"),
        Flag::Verb(Verb::EditServer),
        Arg::No,
    ),
    spec(
        Some('d'),
        Some("delete-server"),
        Flag::Verb(Verb::DeleteServer),
        Arg::No,
    ),
    spec(
        Some('R'),
        Some("restore"),
        Flag::Verb(Verb::Restore),
        Arg::No,
    ),
    spec(Some('S'), Some("save"), Flag::Verb(Verb::Save), Arg::No),
    spec(None, Some("reload"), Flag::Verb(Verb::Reload), Arg::No),
    spec(Some('h'), Some("help"), Flag::Help, Arg::No),
    spec(Some('v'), Some("version"), Flag::Version, Arg::No),
    spec(
        Some('t'),
        Some("tcp-service"),
        Flag::Service(Protocol::Tcp),
        Arg::Required,
    ),
    spec(
        Some('u'),
        Some("udp-service"),
        Flag::Service(Protocol::Udp),
        Arg::Required,
    ),
    spec(Some('s'), Some("scheduler"), Flag::Scheduler, Arg::Required),
    spec(
        Some('p'),
        Some("persistent"),
        Flag::Persistent,
        Arg::Optional,
    ),
    spec(Some('M'), Some("netmask"), Flag::Netmask, Arg::Required),
    spec(
        Some('r'),
        Some("real-server"),
        Flag::RealServer,
        Arg::Required,
    ),
    spec(
        Some('g'),
        Some("gatewaying"),
        Flag::Forward(Forwarding::DirectRoute),
        Arg::No,
    ),
    spec(
        Some('i'),
        Some("ipip"),
        Flag::Forward(Forwarding::Tunnel),
        Arg::No,
    ),
    spec(Some('m'), Some("masquerading"), Flag::Masquerading, Arg::No),
    spec(Some('w'), Some("weight"), Flag::Weight, Arg::Required),
    spec(
        Some('x'),
        Some("u-threshold"),
        Flag::UThreshold,
        Arg::Required,
    ),
    spec(
        Some('y'),
        Some("l-threshold"),
        Flag::LThreshold,
        Arg::Required,
    ),
    spec(Some('n'), Some("numeric"), Flag::Numeric, Arg::No),
    spec(Some('c'), Some("connection"), Flag::Connection, Arg::No),
    spec(Some('X'), Some("exact"), Flag::Exact, Arg::No),
    spec(None, Some("stats"), Flag::Stats, Arg::No),
    spec(None, Some("rate"), Flag::Rate, Arg::No),
    spec(None, Some("thresholds"), Flag::Thresholds, Arg::No),
    spec(None, Some("persistent-conn"), Flag::PersistentConn, Arg::No),
    spec(None, Some("sort"), Flag::Sort, Arg::No),
    spec(None, Some("nosort"), Flag::NoSort, Arg::No),
    spec(None, Some("tun-type"), Flag::TunType, Arg::Required),
    spec(None, Some("socket"), Flag::Socket, Arg::Required),
    spec(
        Some('f'),
        Some("fwmark-service"),
        Flag::Unsupported("firewall-mark services"),
        Arg::No,
    ),
    spec(
        Some('6'),
        Some("ipv6"),
        Flag::Unsupported("firewall-mark services"),
        Arg::No,
    ),
    spec(
        None,
        Some("sctp-service"),
        Flag::Unsupported("SCTP services"),
        Arg::No,
    ),
    spec(
        Some('o'),
        Some("ops"),
        Flag::Unsupported("one-packet scheduling"),
        Arg::No,
    ),
    spec(
        None,
        Some("pe"),
        Flag::Unsupported("persistence engines"),
        Arg::No,
    ),
    spec(
        Some('b'),
        Some("sched-flags"),
        Flag::SchedFlags,
        Arg::Required,
    ),
    spec(None, Some("set"), Flag::Verb(Verb::SetTimeouts), Arg::No),
    spec(None, Some("timeout"), Flag::Timeout, Arg::No),
    spec(
        None,
        Some("start-daemon"),
        Flag::Unsupported("the IPVS sync daemon"),
        Arg::No,
    ),
    spec(
        None,
        Some("stop-daemon"),
        Flag::Unsupported("the IPVS sync daemon"),
        Arg::No,
    ),
    spec(
        None,
        Some("daemon"),
        Flag::Unsupported("the IPVS sync daemon"),
        Arg::No,
    ),
    spec(
        None,
        Some("mcast-interface"),
        Flag::Unsupported("the IPVS sync daemon"),
        Arg::No,
    ),
    spec(
        None,
        Some("syncid"),
        Flag::Unsupported("the IPVS sync daemon"),
        Arg::No,
    ),
    spec(
        None,
        Some("tun-port"),
        Flag::Unsupported("GUE and GRE tunnels"),
        Arg::No,
    ),
    spec(
        None,
        Some("tun-nocsum"),
        Flag::Unsupported("GUE and GRE tunnels"),
        Arg::No,
    ),
    spec(
        None,
        Some("tun-csum"),
        Flag::Unsupported("GUE and GRE tunnels"),
        Arg::No,
    ),
    spec(
        None,
        Some("tun-remcsum"),
        Flag::Unsupported("GUE and GRE tunnels"),
        Arg::No,
    ),
    spec(
        None,
        Some("tun-info"),
        Flag::Unsupported("GUE and GRE tunnels"),
        Arg::No,
    ),
];

enum Token<'a> {
    Option {
        flag: Flag,
        spelled: String,
        value: Option<&'a str>,
    },
    Positional(&'a str),
}

/// Splits arguments into options and words the way popt does: `--long`, `--long=value`,
/// `--long value`, clusters of short options where an option with a value takes the rest of the
/// cluster or else the next word, and `--` ending the options.
struct Tokens<'a> {
    args: &'a [String],
    next: usize,
    /// The rest of a short-option cluster being read, without its dash.
    cluster: Option<&'a str>,
    /// After `--`: every argument is a plain word.
    words_only: bool,
}

impl<'a> Tokens<'a> {
    fn next_token(&mut self) -> Result<Option<Token<'a>>, ParseError> {
        if let Some(cluster) = self.cluster.take() {
            return self.short(cluster).map(Some);
        }
        let Some(arg) = self.args.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        if self.words_only {
            return Ok(Some(Token::Positional(arg)));
        }
        if arg == "--" {
            self.words_only = true;
            return self.next_token();
        }
        if let Some(long) = arg.strip_prefix("--") {
            return self.long(long).map(Some);
        }
        match arg.strip_prefix('-') {
            // No option is a digit: `-1` is a (negative) number, for a message about the value
            // rather than an unknown option `-1`.
            Some(cluster) if cluster.starts_with(|c: char| c.is_ascii_digit()) => {
                Ok(Some(Token::Positional(arg)))
            }
            Some(cluster) if !cluster.is_empty() => self.short(cluster).map(Some),
            _ => Ok(Some(Token::Positional(arg))),
        }
    }

    fn long(&mut self, long: &'a str) -> Result<Token<'a>, ParseError> {
        let (name, inline) = match long.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (long, None),
        };
        let spelled = format!("--{name}");
        let Some(spec) = SPECS.iter().find(|s| s.long == Some(name)) else {
            return Err(ParseError::UnknownOption { option: spelled });
        };
        let value = match (spec.arg, inline) {
            (Arg::No, Some(_)) => return Err(ParseError::UnexpectedValue { option: spelled }),
            (Arg::No, None) => None,
            (_, Some(value)) => Some(value),
            (Arg::Required, None) => Some(self.next_word(&spelled)?),
            (Arg::Optional, None) => self.next_number(),
        };
        Ok(Token::Option {
            flag: spec.flag,
            spelled,
            value,
        })
    }

    fn short(&mut self, cluster: &'a str) -> Result<Token<'a>, ParseError> {
        let mut chars = cluster.chars();
        let Some(c) = chars.next() else {
            return Err(ParseError::UnknownOption {
                option: "-".to_owned(),
            });
        };
        let rest = chars.as_str();
        let spelled = format!("-{c}");
        let Some(spec) = SPECS.iter().find(|s| s.short == Some(c)) else {
            return Err(ParseError::UnknownOption { option: spelled });
        };
        let value = match spec.arg {
            Arg::No => {
                self.cluster = (!rest.is_empty()).then_some(rest);
                None
            }
            _ if !rest.is_empty() => Some(rest),
            Arg::Required => Some(self.next_word(&spelled)?),
            Arg::Optional => self.next_number(),
        };
        Ok(Token::Option {
            flag: spec.flag,
            spelled,
            value,
        })
    }

    fn next_word(&mut self, spelled: &str) -> Result<&'a str, ParseError> {
        let word = self
            .args
            .get(self.next)
            .ok_or_else(|| ParseError::MissingArgument {
                option: spelled.to_owned(),
            })?;
        self.next += 1;
        Ok(word)
    }

    fn next_number(&mut self) -> Option<&'a str> {
        let word = self.args.get(self.next).filter(|w| is_number(w))?;
        self.next += 1;
        Some(word)
    }
}

/// Everything read from the line so far.
#[derive(Default)]
struct Line {
    verb: Option<Verb>,
    /// [`Opt::bit`]s of the options given.
    given: u32,
    /// Whether anything but `--socket` was given: a line with nothing else lists, as ipvsadm
    /// with no arguments does.
    anything: bool,
    /// The words that are neither options nor their values: `--set`'s three timeouts, or a
    /// mistake.
    words: Vec<String>,
    socket: Option<PathBuf>,
    service: Option<ServiceAddr>,
    scheduler: Option<Scheduler>,
    sched_flags: Option<String>,
    timeout: Option<u32>,
    netmask: Option<String>,
    real: Option<(IpAddr, Option<u16>)>,
    forwarding: Option<Forwarding>,
    weight: Option<u32>,
    upper_threshold: Option<u32>,
    lower_threshold: Option<u32>,
}

impl Line {
    /// Takes one option, checking its value at once as ipvsadm does.
    fn take(&mut self, flag: Flag, spelled: String, value: Option<&str>) -> Result<(), ParseError> {
        if flag != Flag::Socket {
            self.anything = true;
        }
        // Tokens gives a value to every option whose Arg is Required; only -p's may be absent.
        let text = value.unwrap_or_default();
        match flag {
            Flag::Verb(verb) => {
                if self.verb.is_some() {
                    return Err(ParseError::MultipleCommands);
                }
                self.verb = Some(verb);
            }
            Flag::Service(protocol) => {
                self.mark(Opt::Service)?;
                let (addr, port) =
                    parse_addr_port(text).map_err(|reason| ParseError::IllegalServiceAddress {
                        value: text.to_owned(),
                        reason,
                    })?;
                self.service = Some(ServiceAddr {
                    protocol,
                    addr,
                    port: port.unwrap_or(0),
                });
            }
            Flag::Scheduler => {
                self.mark(Opt::Scheduler)?;
                self.scheduler = Some(Scheduler::from_name(text)?);
            }
            Flag::SchedFlags => {
                self.mark(Opt::SchedFlags)?;
                self.sched_flags = Some(text.to_owned());
            }
            Flag::Persistent => {
                self.mark(Opt::Persistent)?;
                let timeout = match value {
                    None => DEFAULT_PERSISTENCE_TIMEOUT_SECS,
                    Some(_) => {
                        number_in(text, 1, MAX_PERSISTENCE_TIMEOUT_SECS).ok_or_else(|| {
                            ParseError::InvalidTimeout {
                                value: text.to_owned(),
                            }
                        })?
                    }
                };
                self.timeout = Some(timeout);
            }
            Flag::Netmask => {
                self.mark(Opt::Netmask)?;
                self.netmask = Some(text.to_owned());
            }
            Flag::RealServer => {
                self.mark(Opt::RealServer)?;
                let real = parse_addr_port(text).map_err(|reason| {
                    ParseError::IllegalRealServerAddress {
                        value: text.to_owned(),
                        reason,
                    }
                })?;
                self.real = Some(real);
            }
            Flag::Forward(forwarding) => {
                self.mark(Opt::Forward)?;
                self.forwarding = Some(forwarding);
            }
            Flag::Masquerading => return Err(ParseError::Masquerading),
            Flag::Weight => {
                self.mark(Opt::Weight)?;
                let weight = number_in(text, 0, MAX_WEIGHT).ok_or(ParseError::IllegalWeight {
                    value: text.to_owned(),
                })?;
                self.weight = Some(weight);
            }
            Flag::UThreshold => {
                self.mark(Opt::UThreshold)?;
                let threshold =
                    number_in(text, 0, MAX_THRESHOLD).ok_or(ParseError::IllegalUpperThreshold {
                        value: text.to_owned(),
                    })?;
                self.upper_threshold = Some(threshold);
            }
            Flag::LThreshold => {
                self.mark(Opt::LThreshold)?;
                let threshold =
                    number_in(text, 0, MAX_THRESHOLD).ok_or(ParseError::IllegalLowerThreshold {
                        value: text.to_owned(),
                    })?;
                self.lower_threshold = Some(threshold);
            }
            Flag::TunType => {
                self.mark(Opt::TunType)?;
                if text != "ipip" {
                    return Err(ParseError::IllegalTunnelType {
                        value: text.to_owned(),
                    });
                }
            }
            Flag::Numeric => self.mark(Opt::Numeric)?,
            Flag::Connection => self.mark(Opt::Connection)?,
            Flag::Stats => self.mark(Opt::Stats)?,
            Flag::Rate => self.mark(Opt::Rate)?,
            Flag::Exact => self.mark(Opt::Exact)?,
            Flag::Thresholds => self.mark(Opt::Thresholds)?,
            Flag::PersistentConn => self.mark(Opt::PersistentConn)?,
            Flag::Timeout => self.mark(Opt::Timeout)?,
            Flag::NoSort => self.mark(Opt::NoSort)?,
            // ipvsadm: "does nothing, for backwards compatibility".
            Flag::Sort => {}
            Flag::Socket => {
                if self.socket.is_some() {
                    return Err(ParseError::MultipleOptions { option: "socket" });
                }
                self.socket = Some(PathBuf::from(text));
            }
            Flag::Unsupported(feature) => {
                return Err(ParseError::Unsupported {
                    option: spelled,
                    feature,
                })
            }
            // parse() answers these before they get here.
            Flag::Help | Flag::Version => {}
        }
        Ok(())
    }

    fn mark(&mut self, opt: Opt) -> Result<(), ParseError> {
        if self.given & opt.bit() != 0 {
            return Err(ParseError::MultipleOptions { option: opt.name() });
        }
        self.given |= opt.bit();
        Ok(())
    }

    fn has(&self, opt: Opt) -> bool {
        self.given & opt.bit() != 0
    }

    fn finish_with(self, command: Command) -> Invocation {
        Invocation {
            command,
            socket: self.socket,
        }
    }

    fn finish(self) -> Result<Invocation, ParseError> {
        let Some(verb) = self.verb else {
            if self.anything {
                return Err(ParseError::NoCommand);
            }
            return Ok(self.finish_with(Command::List(ListOptions::default())));
        };
        // --set takes its three timeouts as words (ipvsadm: poptGetArg after the options).
        let taken = if verb == Verb::SetTimeouts { 3 } else { 0 };
        if let Some(argument) = self.words.get(taken) {
            return Err(ParseError::UnexpectedArgument {
                argument: argument.clone(),
            });
        }
        self.check_combinations(verb)?;
        let command = self.command(verb)?;
        if let Command::Change(change) = &command {
            change.validate()?;
        }
        Ok(self.finish_with(command))
    }

    /// ipvsadm's `generic_opt_check` and the list command's extra rule.
    fn check_combinations(&self, verb: Verb) -> Result<(), ParseError> {
        let command = verb.name();
        let mut exclusive: Option<Opt> = None;
        for (opt, rule) in Opt::ALL.into_iter().zip(verb.rules()) {
            match (self.has(opt), rule) {
                (false, b'+') => {
                    return Err(ParseError::MissingOption {
                        option: opt.name(),
                        command,
                    })
                }
                (true, b'x') => {
                    return Err(ParseError::IllegalOption {
                        option: opt.name(),
                        command,
                    })
                }
                (true, b'1') => match exclusive {
                    Some(other) => {
                        return Err(ParseError::ConflictingOptions {
                            option: opt.name(),
                            other: other.name(),
                            command,
                        })
                    }
                    None => exclusive = Some(opt),
                },
                _ => {}
            }
        }
        if verb == Verb::List
            && self.has(Opt::Connection)
            && (self.has(Opt::Stats) || self.has(Opt::Rate) || self.has(Opt::Thresholds))
        {
            return Err(ParseError::ListConflict);
        }
        Ok(())
    }

    fn command(&self, verb: Verb) -> Result<Command, ParseError> {
        let service = || {
            self.service.ok_or(ParseError::MissingOption {
                option: Opt::Service.name(),
                command: verb.name(),
            })
        };
        let real_addr = || {
            let service = service()?;
            let (addr, port) = self.real.ok_or(ParseError::MissingOption {
                option: Opt::RealServer.name(),
                command: verb.name(),
            })?;
            // ipvsadm: "copy vport to dport if not specified".
            Ok::<_, ParseError>((service, addr, port.unwrap_or(service.port)))
        };
        let command = match verb {
            Verb::AddService | Verb::EditService => {
                let service = service()?;
                let scheduler = self.scheduler.unwrap_or_default();
                let sched_flags = self.sched_flags(scheduler)?;
                let persistence = self.persistence(service.addr)?;
                let health = ServiceHealth::default();
                Command::Change(if verb == Verb::AddService {
                    Change::AddService {
                        service,
                        scheduler,
                        sched_flags,
                        persistence,
                        health,
                    }
                } else {
                    Change::EditService {
                        service,
                        scheduler,
                        sched_flags,
                        persistence,
                        health,
                    }
                })
            }
            Verb::DeleteService => Command::Change(Change::DeleteService {
                service: service()?,
            }),
            Verb::Clear => Command::Change(Change::Clear),
            Verb::AddServer | Verb::EditServer => {
                let (service, addr, port) = real_addr()?;
                let forwarding = self.forwarding.unwrap_or(Forwarding::DirectRoute);
                if self.has(Opt::TunType) && forwarding != Forwarding::Tunnel {
                    return Err(ParseError::TunnelOptionWithoutTunnel);
                }
                let real = RealServer {
                    addr,
                    port,
                    forwarding,
                    weight: self.weight.unwrap_or(DEFAULT_WEIGHT),
                    upper_threshold: self.upper_threshold.unwrap_or(0),
                    lower_threshold: self.lower_threshold.unwrap_or(0),
                };
                let check = CheckOptions::default();
                Command::Change(if verb == Verb::AddServer {
                    Change::AddReal {
                        service,
                        real,
                        check,
                    }
                } else {
                    Change::EditReal {
                        service,
                        real,
                        check,
                    }
                })
            }
            Verb::DeleteServer => {
                let (service, addr, port) = real_addr()?;
                Command::Change(Change::DeleteReal {
                    service,
                    addr,
                    port,
                })
            }
            Verb::List => Command::List(ListOptions {
                service: self.service,
                numeric: self.has(Opt::Numeric),
                connections: self.has(Opt::Connection),
                stats: self.has(Opt::Stats),
                rate: self.has(Opt::Rate),
                thresholds: self.has(Opt::Thresholds),
                persistent_conn: self.has(Opt::PersistentConn),
                exact: self.has(Opt::Exact),
                sort: !self.has(Opt::NoSort),
                health: false,
                timeout: self.has(Opt::Timeout),
            }),
            Verb::Zero => Command::Zero {
                service: self.service,
            },
            Verb::Save => Command::Save,
            Verb::Restore => Command::Restore,
            Verb::Reload => Command::Reload,
            Verb::SetTimeouts => Command::Change(self.set_timeouts()?),
        };
        Ok(command)
    }

    /// `--set TCP TCPFIN UDP`: three numbers of seconds, 0 keeping the current value (ipvsadm's
    /// `parse_timeout(arg, 0, MAX_TIMEOUT)` for each).
    fn set_timeouts(&self) -> Result<Change, ParseError> {
        let [tcp, tcpfin, udp] = match self.words.as_slice() {
            [tcp, tcpfin, udp, ..] => [tcp, tcpfin, udp],
            _ => return Err(ParseError::SetNeedsThreeTimeouts),
        };
        let secs = |which: &'static str, text: &String| {
            number_in(text, 0, MAX_CONNECTION_TIMEOUT_SECS).ok_or_else(|| {
                ParseError::InvalidConnectionTimeout {
                    which,
                    value: text.clone(),
                }
            })
        };
        Ok(Change::SetTimeouts {
            tcp_secs: secs("tcp", tcp)?,
            tcpfin_secs: secs("tcpfin", tcpfin)?,
            udp_secs: secs("udp", udp)?,
        })
    }

    /// ipvsadm's `parse_sched_flags`: a comma-separated list of the scheduler's flags.
    fn sched_flags(&self, scheduler: Scheduler) -> Result<SchedFlags, ParseError> {
        let mut flags = SchedFlags::default();
        let Some(list) = &self.sched_flags else {
            return Ok(flags);
        };
        let (fallback, port) = scheduler.flag_names().unwrap_or(("flag-1", "flag-2"));
        for flag in list.split(',') {
            let illegal = || ParseError::IllegalSchedFlag {
                flag: flag.to_owned(),
                scheduler: scheduler.name(),
                allowed: match scheduler {
                    Scheduler::SourceHash => "sh-fallback and sh-port (flag-1, flag-2)",
                    Scheduler::Maglev => "mh-fallback and mh-port (flag-1, flag-2)",
                    _ => "no flags",
                },
            };
            if scheduler.flag_names().is_none() {
                return Err(illegal());
            }
            if flag == fallback || flag == "flag-1" {
                flags.fallback = true;
            } else if flag == port || flag == "flag-2" {
                flags.port = true;
            } else {
                return Err(illegal());
            }
        }
        Ok(flags)
    }

    fn persistence(&self, service: IpAddr) -> Result<Option<Persistence>, ParseError> {
        let Some(timeout_secs) = self.timeout else {
            return match self.netmask {
                Some(_) => Err(ParseError::NetmaskWithoutPersistence),
                None => Ok(None),
            };
        };
        let netmask = match (&self.netmask, service) {
            (None, _) => Netmask::host(service),
            (Some(mask), IpAddr::V4(_)) => {
                Netmask::V4(
                    mask.parse::<Ipv4Addr>()
                        .map_err(|_| ParseError::IllegalNetmask {
                            value: mask.clone(),
                        })?,
                )
            }
            (Some(mask), IpAddr::V6(_)) => Netmask::V6Prefix(
                number_in(mask, 1, 128)
                    .and_then(|prefix| u8::try_from(prefix).ok())
                    .ok_or_else(|| ParseError::IllegalIpv6Netmask {
                        value: mask.clone(),
                    })?,
            ),
        };
        Ok(Some(Persistence {
            timeout_secs,
            netmask,
        }))
    }
}

fn is_number(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
}

/// ipvsadm's `string_to_number`: a decimal number within `min..=max`.
fn number_in(text: &str, min: u32, max: u32) -> Option<u32> {
    if !is_number(text) {
        return None;
    }
    text.parse::<u32>().ok().filter(|n| (min..=max).contains(n))
}

/// ipvsadm's `parse_service`, without name lookups: `a.b.c.d[:port]`, `[v6]:port` or a bare IPv6
/// address. The port is `None` when absent.
fn parse_addr_port(text: &str) -> Result<(IpAddr, Option<u16>), AddressError> {
    // ipvsadm refuses a bare number (it would otherwise be taken for a host name).
    if text.is_empty() || is_number(text) {
        return Err(AddressError::NoAddress);
    }
    if let Some(bracketed) = text.strip_prefix('[') {
        let (addr, rest) = bracketed.split_once(']').ok_or(AddressError::Brackets)?;
        let port = rest.strip_prefix(':').ok_or(AddressError::Brackets)?;
        let addr = addr
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| AddressError::Brackets)?;
        return Ok((IpAddr::V6(addr), Some(parse_port(port)?)));
    }
    if let Ok(addr) = text.parse::<std::net::Ipv6Addr>() {
        return Ok((IpAddr::V6(addr), None));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (text, None),
    };
    if host.is_empty() {
        return Err(AddressError::NoAddress);
    }
    let addr = host
        .parse::<Ipv4Addr>()
        .map_err(|_| AddressError::NotNumeric)?;
    Ok((IpAddr::V4(addr), port))
}

fn parse_port(text: &str) -> Result<u16, AddressError> {
    number_in(text, 0, u32::from(u16::MAX))
        .and_then(|port| u16::try_from(port).ok())
        .or_else(|| ports::port_by_name(text))
        .ok_or(AddressError::Port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn ok(line: &str) -> Invocation {
        parse(&args(line)).unwrap_or_else(|e| panic!("`{line}` should parse, got: {e}"))
    }

    fn command(line: &str) -> Command {
        ok(line).command
    }

    fn err(line: &str) -> ParseError {
        match parse(&args(line)) {
            Ok(invocation) => panic!("`{line}` should fail, got {invocation:?}"),
            Err(e) => e,
        }
    }

    fn message(line: &str) -> String {
        err(line).to_string()
    }

    fn tcp(addr: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: addr.parse().expect("test address"),
            port,
        }
    }

    fn dr(addr: &str, port: u16) -> RealServer {
        RealServer {
            addr: addr.parse().expect("test address"),
            port,
            forwarding: Forwarding::DirectRoute,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    #[test]
    fn add_service_defaults_to_maglev_without_persistence() {
        assert_eq!(
            command("-A -t 10.0.0.1:80"),
            Command::Change(Change::AddService {
                service: tcp("10.0.0.1", 80),
                scheduler: Scheduler::Maglev,
                sched_flags: SchedFlags::default(),
                persistence: None,
                health: Default::default(),
            })
        );
    }

    #[test]
    fn long_options_mean_the_same_as_short_ones() {
        assert_eq!(
            command("--add-service --tcp-service 10.0.0.1:80 --scheduler mh"),
            command("-A -t 10.0.0.1:80 -s mh")
        );
        assert_eq!(
            command("--add-service --tcp-service=10.0.0.1:80"),
            command("-A -t 10.0.0.1:80")
        );
    }

    #[test]
    fn a_udp_service_is_another_protocol() {
        let Command::Change(Change::DeleteService { service }) = command("-D -u 10.0.0.1:53")
        else {
            panic!("expected a delete-service");
        };
        assert_eq!(service.protocol, Protocol::Udp);
    }

    #[test]
    fn service_names_stand_for_their_ports() {
        assert_eq!(command("-A -t 10.0.0.1:http"), command("-A -t 10.0.0.1:80"));
        assert_eq!(
            command("-A -t 10.0.0.1:https"),
            command("-A -t 10.0.0.1:443")
        );
        assert_eq!(
            command("-A -u 10.0.0.1:domain"),
            command("-A -u 10.0.0.1:53")
        );
    }

    #[test]
    fn ipv6_services_and_real_servers_take_brackets() {
        assert_eq!(
            command("-a -t [2001:db8::1]:80 -r [2001:db8::2]:80 -w 3"),
            Command::Change(Change::AddReal {
                service: tcp("2001:db8::1", 80),
                real: RealServer {
                    weight: 3,
                    ..dr("2001:db8::2", 80)
                },
                check: Default::default(),
            })
        );
    }

    #[test]
    fn an_ipv6_real_server_without_a_port_takes_the_services_port() {
        let Command::Change(Change::AddReal { real, .. }) =
            command("-a -t [2001:db8::1]:80 -r 2001:db8::2")
        else {
            panic!("expected an add-server");
        };
        assert_eq!(
            (real.addr, real.port),
            ("2001:db8::2".parse().expect("ip"), 80)
        );
    }

    #[test]
    fn a_missing_address_is_rejected() {
        assert_eq!(
            err("-A -t"),
            ParseError::MissingArgument {
                option: "-t".to_owned()
            }
        );
        assert_eq!(err("-A -t").exit_code(), 255);
        assert_eq!(
            message("-A -s mh"),
            "You need to supply the 'service-address' option for the 'add-service' command"
        );
        assert_eq!(err("-A -s mh").exit_code(), 2);
        assert_eq!(
            message("-A -t :80"),
            "illegal virtual server address[:port] specified: `:80': an address is needed"
        );
        assert_eq!(
            message("-a -t 10.0.0.1:80"),
            "You need to supply the 'real-server' option for the 'add-server' command"
        );
    }

    #[test]
    fn ports_outside_0_to_65535_or_made_of_letters_are_rejected() {
        for bad in [
            "10.0.0.1:65536",
            "10.0.0.1:99999999999",
            "10.0.0.1:abc",
            "10.0.0.1:",
            "10.0.0.1:-1",
        ] {
            let e = err(&format!("-A -t {bad}"));
            assert_eq!(
                e,
                ParseError::IllegalServiceAddress {
                    value: bad.to_owned(),
                    reason: AddressError::Port
                },
                "{bad}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        assert_eq!(
            message("-A -t 10.0.0.1:abc"),
            "illegal virtual server address[:port] specified: `10.0.0.1:abc': \
             the port must be a number from 0 to 65535 or one of ftp, ssh, smtp, domain, http, https"
        );
        assert!(message("-a -t 10.0.0.1:80 -r 10.0.0.2:http2")
            .starts_with("illegal real server address[:port]"));
    }

    #[test]
    fn port_zero_is_only_for_a_persistent_service() {
        assert_eq!(
            message("-A -t 10.0.0.1:0"),
            "Zero port specified for non-persistent service"
        );
        assert_eq!(
            message("-A -t 10.0.0.1"),
            "Zero port specified for non-persistent service"
        );
        assert_eq!(err("-A -t 10.0.0.1:0").exit_code(), 2);
        let Command::Change(Change::AddService {
            service,
            persistence,
            ..
        }) = command("-A -t 10.0.0.1 -p")
        else {
            panic!("expected an add-service");
        };
        assert_eq!((service.port, persistence.is_some()), (0, true));
    }

    #[test]
    fn host_names_are_not_resolved() {
        assert_eq!(
            message("-A -t www.example.com:80"),
            "illegal virtual server address[:port] specified: `www.example.com:80': \
             not a numeric IP address (host names are not resolved)"
        );
        assert_eq!(err("-A -t 80").exit_code(), 2);
        assert!(matches!(
            err("-A -t [10.0.0.1]:80"),
            ParseError::IllegalServiceAddress {
                reason: AddressError::Brackets,
                ..
            }
        ));
        assert!(matches!(
            err("-A -t [2001:db8::1]"),
            ParseError::IllegalServiceAddress {
                reason: AddressError::Brackets,
                ..
            }
        ));
    }

    #[test]
    fn an_unknown_scheduler_is_rejected_naming_the_supported_ones() {
        let e = err("-A -t 10.0.0.1:80 -s lblc");
        assert_eq!(
            e.to_string(),
            "xlb does not implement the 'lblc' scheduler yet (xlb supports: \
             rr|wrr|lc|wlc|sed|nq|fo|ovf|sh|dh|mh)"
        );
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            message("-A -t 10.0.0.1:80 -s fastest"),
            "Scheduler not found: 'fastest' (xlb supports: rr|wrr|lc|wlc|sed|nq|fo|ovf|sh|dh|mh)"
        );
    }

    #[test]
    fn every_scheduler_parses_by_its_ipvsadm_name() {
        for (name, scheduler) in [
            ("rr", Scheduler::RoundRobin),
            ("wrr", Scheduler::WeightedRoundRobin),
            ("lc", Scheduler::LeastConnection),
            ("wlc", Scheduler::WeightedLeastConnection),
            ("sed", Scheduler::ShortestExpectedDelay),
            ("nq", Scheduler::NeverQueue),
            ("fo", Scheduler::WeightedFailover),
            ("ovf", Scheduler::Overflow),
            ("sh", Scheduler::SourceHash),
            ("dh", Scheduler::DestinationHash),
            ("mh", Scheduler::Maglev),
        ] {
            let Command::Change(Change::AddService { scheduler: got, .. }) =
                command(&format!("-A -t 10.0.0.1:80 -s {name}"))
            else {
                panic!("-A parses to AddService");
            };
            assert_eq!(got, scheduler, "-s {name}");
        }
    }

    #[test]
    fn scheduler_flags_parse_by_their_names_for_sh_and_mh() {
        let flags = |line: &str| match command(line) {
            Command::Change(Change::AddService { sched_flags, .. }) => sched_flags,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            flags("-A -t 10.0.0.1:80 -s sh -b sh-fallback,sh-port"),
            SchedFlags {
                fallback: true,
                port: true
            }
        );
        // -b may come before -s, and the generic names work too.
        assert_eq!(
            flags("-A -t 10.0.0.1:80 --sched-flags flag-2 -s sh"),
            SchedFlags {
                fallback: false,
                port: true
            }
        );
        assert!(flags("-A -t 10.0.0.1:80 -s mh -b mh-port").port);
        assert_eq!(
            message("-A -t 10.0.0.1:80 -s rr -b sh-port"),
            "illegal scheduler flag `sh-port' for the rr scheduler: rr takes no flags"
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 -s sh -b mh-port"),
            "illegal scheduler flag `mh-port' for the sh scheduler: sh takes sh-fallback and sh-port (flag-1, flag-2)"
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 -s sh -b flag-3"),
            "illegal scheduler flag `flag-3' for the sh scheduler: sh takes sh-fallback and sh-port (flag-1, flag-2)"
        );
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r 10.0.0.2 -b sh-port"),
            "Illegal 'sched-flags' option with the 'add-server' command"
        );
    }

    #[test]
    fn persistent_without_a_timeout_takes_ipvsadms_default() {
        let Command::Change(Change::AddService { persistence, .. }) =
            command("-A -t 10.0.0.1:80 -p")
        else {
            panic!("expected an add-service");
        };
        assert_eq!(
            persistence,
            Some(Persistence {
                timeout_secs: 360,
                netmask: Netmask::V4(Ipv4Addr::BROADCAST)
            })
        );
    }

    #[test]
    fn persistent_takes_the_next_word_as_timeout_only_if_it_is_a_number() {
        let timeout = |line: &str| match command(line) {
            Command::Change(Change::AddService { persistence, .. }) => {
                persistence.map(|p| p.timeout_secs)
            }
            other => panic!("expected an add-service, got {other:?}"),
        };
        assert_eq!(timeout("-A -t 10.0.0.1:80 -p 600"), Some(600));
        assert_eq!(timeout("-A -p 600 -t 10.0.0.1:80"), Some(600));
        assert_eq!(timeout("-A -t 10.0.0.1:80 -p600"), Some(600));
        assert_eq!(timeout("-A -t 10.0.0.1:80 --persistent=600"), Some(600));
        assert_eq!(timeout("-A -p -t 10.0.0.1:80"), Some(360));
        assert_eq!(
            message("-A -t 10.0.0.1:80 -p 0"),
            "invalid timeout value `0' specified"
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 -p 2678401"),
            "invalid timeout value `2678401' specified"
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 -pabc"),
            "invalid timeout value `abc' specified"
        );
        assert_eq!(
            err("-A -t 10.0.0.1:80 -p foo"),
            ParseError::UnexpectedArgument {
                argument: "foo".to_owned()
            }
        );
    }

    #[test]
    fn a_netmask_is_dotted_for_ipv4_and_a_prefix_for_ipv6() {
        let mask = |line: &str| match command(line) {
            Command::Change(Change::AddService { persistence, .. }) => {
                persistence.map(|p| p.netmask)
            }
            other => panic!("expected an add-service, got {other:?}"),
        };
        assert_eq!(
            mask("-A -t 10.0.0.1:80 -p 60 -M 255.255.255.0"),
            Some(Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            mask("-A -M 64 -t [2001:db8::1]:80 -p"),
            Some(Netmask::V6Prefix(64))
        );
        assert_eq!(
            mask("-A -t [2001:db8::1]:80 -p"),
            Some(Netmask::V6Prefix(128))
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 -p -M 24"),
            "illegal virtual server persistent mask specified"
        );
        assert_eq!(
            message("-A -t [2001:db8::1]:80 -p -M 129"),
            "illegal ipv6 netmask specified"
        );
        assert_eq!(
            err("-A -t 10.0.0.1:80 -M 255.255.255.0"),
            ParseError::NetmaskWithoutPersistence
        );
    }

    #[test]
    fn add_server_defaults_to_direct_routing_weight_1_and_the_services_port() {
        assert_eq!(
            command("-a -t 10.0.0.1:80 -r 10.0.0.2"),
            Command::Change(Change::AddReal {
                service: tcp("10.0.0.1", 80),
                real: dr("10.0.0.2", 80),
                check: Default::default(),
            })
        );
    }

    #[test]
    fn add_server_takes_tunneling_weight_and_thresholds() {
        assert_eq!(
            command("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -i -w 5 -x 0 -y 0 --tun-type ipip"),
            Command::Change(Change::AddReal {
                service: tcp("10.0.0.1", 80),
                real: RealServer {
                    forwarding: Forwarding::Tunnel,
                    weight: 5,
                    ..dr("10.0.0.2", 80)
                },
                check: Default::default(),
            })
        );
        assert_eq!(
            command("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -x 100 -y 50"),
            Command::Change(Change::AddReal {
                service: tcp("10.0.0.1", 80),
                real: RealServer {
                    upper_threshold: 100,
                    lower_threshold: 50,
                    ..dr("10.0.0.2", 80)
                },
                check: Default::default(),
            })
        );
        let e = err("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -x 10 -y 50");
        assert_eq!(
            e.to_string(),
            "the lower threshold (-y 50) is higher than the upper threshold (-x 10): a server would never take new connections again"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_real_server_port_other_than_the_services_is_rejected() {
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r 10.0.0.2:8080"),
            "real server port 8080 differs from the service port 80: direct routing and tunneling cannot change the port"
        );
    }

    #[test]
    fn an_ipv6_real_server_of_an_ipv4_service_is_rejected() {
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r [2001:db8::2]:80 -g"),
            "Different address family is allowed only for tunneling servers"
        );
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r [2001:db8::2]:80 -i"),
            "xlb does not tunnel across address families: the real server must have the service's family"
        );
    }

    #[test]
    fn health_check_options_attach_to_the_service_or_the_real_server() {
        let Command::Change(Change::AddService { health, .. }) =
            command("-A -t 10.0.0.1:80 --check http --check-path /health --fall 3 --quorum 2")
        else {
            panic!("not an add-service");
        };
        assert_eq!(health.quorum, 2);
        assert!(health.check != CheckOptions::default());
        let Command::Change(Change::AddReal { check, .. }) =
            command("-a -t 10.0.0.1:80 -r 10.0.0.2 --check tcp --check-port 8080")
        else {
            panic!("not an add-server");
        };
        assert_eq!(check.port, Some(8080));
        let Command::List(options) = command("-L -n --health") else {
            panic!("not a list");
        };
        assert!(options.health);
    }

    #[test]
    fn a_check_interval_without_a_timeout_is_accepted_however_short() {
        for line in [
            "-A -t 10.0.0.1:80 -s mh --check tcp --check-interval 1s",
            "-A -t 10.0.0.1:80 --check tcp --check-interval 500ms",
            "-A -t 10.0.0.1:80 --check tcp --check-interval 1s --check-timeout 1s",
        ] {
            if let Err(e) = parse(&args(line)) {
                panic!("{line}: {e}");
            }
        }
    }

    #[test]
    fn bad_or_misplaced_health_check_options_exit_2_with_a_message() {
        for line in [
            "-a -t 10.0.0.1:80 -r 10.0.0.2 --quorum 2",
            "-D -t 10.0.0.1:80 --check tcp",
            "-A -t 10.0.0.1:80 --check bogus",
            "-A -t 10.0.0.1:80 --check-interval 1s --check-timeout 2s",
            "-A -t 10.0.0.1:80 --check exec",
            "-A -t 10.0.0.1:80 --rise",
            "-A -t 10.0.0.1:80 --health",
        ] {
            let e = err(line);
            assert_eq!(e.exit_code(), 2, "{line}: {e}");
            assert!(!e.to_string().is_empty(), "{line}");
        }
    }

    #[test]
    fn weights_outside_0_to_65535_are_rejected() {
        for bad in ["-1", "65536", "abc", "1.5"] {
            let e = err(&format!("-a -t 10.0.0.1:80 -r 10.0.0.2 -w {bad}"));
            assert_eq!(
                e,
                ParseError::IllegalWeight {
                    value: bad.to_owned()
                }
            );
            assert_eq!(e.to_string(), "illegal weight specified");
            assert_eq!(e.exit_code(), 2);
        }
        assert!(parse(&args("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 0")).is_ok());
        assert!(parse(&args("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 65535")).is_ok());
    }

    #[test]
    fn thresholds_must_be_numbers() {
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r 10.0.0.2 -x many"),
            "illegal u_threshold specified"
        );
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r 10.0.0.2 -y 2147483648"),
            "illegal l_threshold specified"
        );
    }

    #[test]
    fn gatewaying_and_ipip_together_are_rejected() {
        let e = err("-a -t 10.0.0.1:80 -r 10.0.0.2 -g -i");
        assert_eq!(
            e.to_string(),
            "multiple 'forwarding-method' options specified"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn two_verbs_are_rejected() {
        let e = err("-A -a -t 10.0.0.1:80");
        assert_eq!(e.to_string(), "multiple commands specified");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(err("-L -S"), ParseError::MultipleCommands);
    }

    #[test]
    fn real_server_options_with_add_service_are_illegal() {
        let e = err("-A -t 10.0.0.1:80 -r 10.0.0.2");
        assert_eq!(
            e.to_string(),
            "Illegal 'real-server' option with the 'add-service' command"
        );
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            message("-A -t 10.0.0.1:80 -w 2"),
            "Illegal 'weight' option with the 'add-service' command"
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 -g"),
            "Illegal 'forwarding-method' option with the 'add-service' command"
        );
        assert_eq!(
            message("-C -n"),
            "Illegal 'numeric' option with the 'flush' command"
        );
        assert_eq!(
            message("-d -t 10.0.0.1:80 -r 10.0.0.2 -w 1"),
            "Illegal 'weight' option with the 'delete-server' command"
        );
    }

    #[test]
    fn masquerading_is_rejected_with_a_hint() {
        let e = err("-a -t 10.0.0.1:80 -r 10.0.0.2 -m");
        assert_eq!(
            e.to_string(),
            "xlb does not support masquerading (NAT); use -g or -i"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn ipvsadm_features_xlb_lacks_are_named() {
        assert_eq!(
            message("-A -f 1"),
            "xlb does not support firewall-mark services (-f)"
        );
        assert_eq!(
            message("--start-daemon master"),
            "xlb does not support the IPVS sync daemon (--start-daemon)"
        );
        assert_eq!(
            message("-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gue"),
            "illegal tunnel type `gue' specified; xlb supports only ipip"
        );
        assert_eq!(
            err("-a -t 10.0.0.1:80 -r 10.0.0.2 --tun-type ipip"),
            ParseError::TunnelOptionWithoutTunnel
        );
    }

    #[test]
    fn combined_short_options_work_as_in_getopt() {
        assert_eq!(
            command("-Ln"),
            Command::List(ListOptions {
                numeric: true,
                ..ListOptions::default()
            })
        );
        assert_eq!(command("-At 10.0.0.1:80"), command("-A -t 10.0.0.1:80"));
        assert_eq!(
            command("-at10.0.0.1:80 -r10.0.0.2 -w5"),
            command("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 5")
        );
        assert_eq!(command("-lnX"), command("-L -n --exact"));
    }

    #[test]
    fn list_takes_its_display_options() {
        assert_eq!(
            command("-L -n -t 10.0.0.1:80 --stats --rate --exact --nosort --sort"),
            Command::List(ListOptions {
                service: Some(tcp("10.0.0.1", 80)),
                numeric: true,
                stats: true,
                rate: true,
                exact: true,
                sort: false,
                ..ListOptions::default()
            })
        );
        assert_eq!(
            command("--list --thresholds --persistent-conn"),
            Command::List(ListOptions {
                thresholds: true,
                persistent_conn: true,
                ..ListOptions::default()
            })
        );
    }

    #[test]
    fn set_takes_three_timeouts_in_seconds_where_0_keeps_a_value() {
        assert_eq!(
            command("--set 900 0 5"),
            Command::Change(Change::SetTimeouts {
                tcp_secs: 900,
                tcpfin_secs: 0,
                udp_secs: 5
            })
        );
        assert_eq!(
            command("--set 1 1 2678400"),
            Command::Change(Change::SetTimeouts {
                tcp_secs: 1,
                tcpfin_secs: 1,
                udp_secs: 2_678_400
            })
        );
        assert_eq!(
            message("--set 900 120"),
            "--set option requires 3 timeout values (tcp tcpfin udp, in seconds; 0 keeps a value)"
        );
        assert_eq!(
            message("--set 900 abc 300"),
            "invalid timeout value `abc' specified: the tcpfin timeout is a number of seconds \
             from 0 (keep the current one) to 2678400"
        );
        assert_eq!(
            message("--set -1 120 300"),
            "invalid timeout value `-1' specified: the tcp timeout is a number of seconds from 0 \
             (keep the current one) to 2678400"
        );
        assert!(message("--set 900 120 2678401").contains("the udp timeout"));
        assert_eq!(message("--set 1 2 3 4"), "unexpected argument 4");
        assert_eq!(
            message("--set 1 2 3 -t 10.0.0.1:80"),
            "Illegal 'service-address' option with the 'set' command"
        );
        assert_eq!(err("--set 900 abc 300").exit_code(), 2);
    }

    #[test]
    fn list_timeout_asks_for_the_timeouts_alone() {
        assert_eq!(
            command("-L --timeout"),
            Command::List(ListOptions {
                timeout: true,
                ..ListOptions::default()
            })
        );
        assert_eq!(
            message("-L --timeout -c"),
            "The option 'timeout' conflicts with the 'connection' option in the 'list' command"
        );
        assert_eq!(
            message("-A -t 10.0.0.1:80 --timeout"),
            "Illegal 'timeout' option with the 'add-service' command"
        );
    }

    #[test]
    fn list_conflicts_are_ipvsadms() {
        assert_eq!(
            message("-L -c -t 10.0.0.1:80"),
            "The option 'service-address' conflicts with the 'connection' option in the 'list' command"
        );
        assert_eq!(
            message("-L -c --stats"),
            "options conflicts in the list command"
        );
        assert!(parse(&args("-L -c -n")).is_ok());
    }

    #[test]
    fn no_arguments_list_the_table() {
        assert_eq!(
            ok(""),
            Invocation {
                command: Command::List(ListOptions::default()),
                socket: None
            }
        );
        assert_eq!(
            ok("--socket /tmp/x.sock").command,
            Command::List(ListOptions::default())
        );
    }

    #[test]
    fn options_without_a_verb_are_rejected() {
        let e = err("-t 10.0.0.1:80");
        assert_eq!(e, ParseError::NoCommand);
        assert_eq!(e.exit_code(), 255);
        assert_eq!(err("hello"), ParseError::NoCommand);
    }

    #[test]
    fn the_socket_may_come_before_or_after_the_verb() {
        let before = ok("--socket /tmp/a.sock -L -n");
        let after = ok("-L -n --socket=/tmp/a.sock");
        assert_eq!(before.socket, Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(before, after);
        assert_eq!(
            err("--socket a --socket b -L").to_string(),
            "multiple 'socket' options specified"
        );
        assert_eq!(
            err("-L --socket"),
            ParseError::MissingArgument {
                option: "--socket".to_owned()
            }
        );
    }

    #[test]
    fn unknown_options_and_stray_words_are_rejected() {
        let e = err("-L --bogus");
        assert_eq!(e.to_string(), "--bogus: unknown option");
        assert_eq!(e.exit_code(), 255);
        assert_eq!(
            err("-Lq"),
            ParseError::UnknownOption {
                option: "-q".to_owned()
            }
        );
        assert_eq!(
            err("-L --numeric=yes"),
            ParseError::UnexpectedValue {
                option: "--numeric".to_owned()
            }
        );
        let stray = err("-L extra");
        assert_eq!(stray.to_string(), "unexpected argument extra");
        assert_eq!(stray.exit_code(), 2);
        assert_eq!(
            err("-L -- -n"),
            ParseError::UnexpectedArgument {
                argument: "-n".to_owned()
            }
        );
    }

    #[test]
    fn an_option_given_twice_is_rejected() {
        assert_eq!(
            message("-A -t 10.0.0.1:80 -u 10.0.0.1:53"),
            "multiple 'service-address' options specified"
        );
        assert_eq!(message("-L -n -n"), "multiple 'numeric' options specified");
    }

    #[test]
    fn edit_and_delete_commands_parse() {
        assert_eq!(
            command("-E -t 10.0.0.1:80 -p 60"),
            Command::Change(Change::EditService {
                service: tcp("10.0.0.1", 80),
                scheduler: Scheduler::Maglev,
                sched_flags: SchedFlags::default(),
                persistence: Some(Persistence {
                    timeout_secs: 60,
                    netmask: Netmask::V4(Ipv4Addr::BROADCAST)
                }),
                health: Default::default(),
            })
        );
        assert_eq!(
            command("-e -t 10.0.0.1:80 -r 10.0.0.2 -w 0"),
            Command::Change(Change::EditReal {
                service: tcp("10.0.0.1", 80),
                real: RealServer {
                    weight: 0,
                    ..dr("10.0.0.2", 80)
                },
                check: Default::default(),
            })
        );
        assert_eq!(
            command("-d -t 10.0.0.1:80 -r 10.0.0.2"),
            Command::Change(Change::DeleteReal {
                service: tcp("10.0.0.1", 80),
                addr: "10.0.0.2".parse().expect("ip"),
                port: 80
            })
        );
        assert_eq!(command("-C"), Command::Change(Change::Clear));
    }

    #[test]
    fn save_restore_zero_help_and_version_parse() {
        assert_eq!(command("-S -n"), Command::Save);
        assert_eq!(command("--restore"), Command::Restore);
        assert_eq!(command("--reload"), Command::Reload);
        assert_eq!(command("-Z"), Command::Zero { service: None });
        assert_eq!(
            command("-Z -t 10.0.0.1:80"),
            Command::Zero {
                service: Some(tcp("10.0.0.1", 80))
            }
        );
        assert_eq!(command("-h"), Command::Help);
        assert_eq!(command("-A -h"), Command::Help);
        assert_eq!(command("--version"), Command::Version);
        assert_eq!(
            message("-R -n"),
            "Illegal 'numeric' option with the 'restore' command"
        );
    }

    #[test]
    fn the_usage_names_every_verb_and_the_default_scheduler() {
        let text = usage("xlbadm");
        for verb in [
            "-A|E", "-D", "-C", "-R", "-S", "-a|e", "-d", "-L|l", "-Z", "-h",
        ] {
            assert!(
                text.contains(&format!("xlbadm {verb}")),
                "{verb} missing from:\n{text}"
            );
        }
        assert!(text.contains("the default scheduler is mh."));
        assert!(!text.contains("masquerading"));
    }
}
