//! `-S` output and `-R` input: the table as ipvsadm command lines, and back.
//!
//! `-S` prints what ipvsadm 1.31's `ipvsadm -S -n` prints (ipvsadm.c `print_service_entry` with
//! `FMT_RULE`), one `-A` line per service followed by its `-a` lines, sorted as ipvsadm sorts:
//!
//! ```text
//! -A -t 10.0.0.1:80 -s mh -p 360 -M 255.255.255.0
//! -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1
//! -a -t 10.0.0.1:80 -r 10.0.0.3:80 -i -w 2 --tun-type ipip
//! ```
//!
//! Two departures, both so that a save restores to the same state: it is always numeric (xlbadm
//! does not resolve names when restoring), and it appends `-x`/`-y` when a real server has
//! thresholds, which ipvsadm's save drops. `--tun-type ipip` is what ipvsadm 1.31 prints for every
//! `-i` server; older ipvsadm releases print `-i -w N` alone, and `-R` takes both.
//!
//! `-R` reads such lines (blank lines and `#` comments skipped, a leading `ipvsadm` or `xlbadm`
//! word dropped, as ipvsadm drops its own name) into changes ([`parse_restore`], in xlbadm), which
//! xlbd applies to a copy of the state. Unlike ipvsadm, which applies the lines one by one and
//! stops at the first failure, it is all-or-nothing: the caller gets the new state or the first
//! error and its line number ([`restore`] does both steps at once).

use thiserror::Error;

use super::{
    check_flags::HealthFlags,
    parse::{parse, Command, ParseError},
};
use crate::state::{Change, DesiredState, Forwarding, Netmask, Protocol, StateError};

/// Why `-R` input was refused, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {failure}")]
pub struct RestoreError {
    /// 1-based line number in the input.
    pub line: usize,
    /// What went wrong there (printed as part of this error, so not a `source`).
    pub failure: RestoreFailure,
}

/// What went wrong on one line of `-R` input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreFailure {
    /// The line is not a valid command.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The command does not apply to the state as the lines before left it.
    #[error(transparent)]
    State(#[from] StateError),
    /// A valid command that does not change the table, such as `-L`.
    #[error("the '{command}' command cannot be used in restore input")]
    NotAChange {
        /// ipvsadm's name of the command.
        command: &'static str,
    },
    /// `--socket` inside restore input, where it would mean nothing.
    #[error("--socket cannot be used in restore input")]
    Socket,
    /// Quotes that do not close.
    #[error("{message}")]
    Quoting {
        /// What is wrong.
        message: String,
    },
}

/// The `-S` text for `state`.
pub fn save(state: &DesiredState) -> String {
    let mut services: Vec<_> = state.services.iter().collect();
    services.sort_by_key(|s| s.addr);
    let mut out = String::new();
    for service in services {
        let name = format!(
            "{} {}",
            protocol_switch(service.addr.protocol),
            service.addr
        );
        out.push_str(&format!("-A {name} -s {}", service.scheduler.name()));
        if !service.sched_flags.is_empty() {
            out.push_str(&format!(
                " -b {}",
                service.sched_flags.names(service.scheduler)
            ));
        }
        if let Some(persistence) = &service.persistence {
            out.push_str(&format!(" -p {}", persistence.timeout_secs));
            if persistence.netmask != Netmask::host(service.addr.addr) {
                match persistence.netmask {
                    Netmask::V4(mask) => out.push_str(&format!(" -M {mask}")),
                    Netmask::V6Prefix(prefix) => out.push_str(&format!(" -M {prefix}")),
                }
            }
        }
        push_flags(&mut out, service.health.flags());
        out.push('\n');

        let mut reals: Vec<_> = service.reals.iter().collect();
        reals.sort_by_key(|r| (r.addr, r.port));
        for real in reals {
            let addr = std::net::SocketAddr::new(real.addr, real.port);
            let switch = match real.forwarding {
                Forwarding::DirectRoute => "-g",
                Forwarding::Tunnel => "-i",
            };
            out.push_str(&format!("-a {name} -r {addr} {switch} -w {}", real.weight));
            if real.forwarding == Forwarding::Tunnel {
                out.push_str(" --tun-type ipip");
            }
            if real.upper_threshold != 0 {
                out.push_str(&format!(" -x {}", real.upper_threshold));
            }
            if real.lower_threshold != 0 {
                out.push_str(&format!(" -y {}", real.lower_threshold));
            }
            if let Some(check) = service.real_checks.get(&addr) {
                push_flags(&mut out, check.flags());
            }
            out.push('\n');
        }
    }
    out
}

/// Applies `-R` input to a copy of `state`: the new state, or the first error and its line.
pub fn restore(state: &DesiredState, input: &str) -> Result<DesiredState, RestoreError> {
    let mut restored = state.clone();
    for (line, change) in parse_restore(input)? {
        restored.apply(&change).map_err(|e| RestoreError {
            line,
            failure: e.into(),
        })?;
    }
    Ok(restored)
}

/// Parses `-R` input into its changes, each with its line (1-based), without applying them:
/// what xlbadm sends to xlbd, which applies them all or none and names the line of a refusal.
pub fn parse_restore(input: &str) -> Result<Vec<(usize, Change)>, RestoreError> {
    let mut changes = Vec::new();
    for (index, raw) in input.lines().enumerate() {
        let at = |failure: RestoreFailure| RestoreError {
            line: index + 1,
            failure,
        };
        let mut words =
            shell_words(raw).map_err(|message| at(RestoreFailure::Quoting { message }))?;
        if words
            .first()
            .is_some_and(|w| w == "ipvsadm" || w == "xlbadm")
        {
            words.remove(0);
        }
        if words.is_empty() {
            continue;
        }
        let invocation = parse(&words).map_err(|e| at(e.into()))?;
        if invocation.socket.is_some() {
            return Err(at(RestoreFailure::Socket));
        }
        match invocation.command {
            Command::Change(change) => changes.push((index + 1, change)),
            other => {
                return Err(at(RestoreFailure::NotAChange {
                    command: command_name(&other),
                }))
            }
        }
    }
    Ok(changes)
}

/// Appends health-check options, quoting values as a shell would need them.
fn push_flags(out: &mut String, flags: Vec<(&'static str, Option<String>)>) {
    for (name, value) in flags {
        out.push(' ');
        out.push_str(name);
        if let Some(value) = value {
            out.push(' ');
            out.push_str(&quote(&value));
        }
    }
}

/// `value` as one shell word: as it is when it is plain, else in single quotes.
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+=,-~[]".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Splits a line into words as a POSIX shell would: blanks separate words, single quotes keep
/// everything, double quotes keep everything but `\"` and `\\`, a backslash outside quotes
/// escapes the next character, and `#` at the start of a word starts a comment.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if word.is_none() => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated double quote".to_owned()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\\' => {
                let escaped = chars
                    .next()
                    .ok_or_else(|| "a backslash at the end of the line".to_owned())?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

/// `-t` or `-u`, as a service is named in `-S` lines.
fn protocol_switch(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
    }
}

/// ipvsadm's name of a command that is not a change.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Change(_) => "change",
        Command::List(_) => "list",
        Command::Zero { .. } => "zero",
        Command::Save => "save",
        Command::Restore => "restore",
        Command::Reload => "reload",
        Command::Help => "help",
        Command::Version => "version",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::{Persistence, RealServer, Scheduler, ServiceAddr};

    fn service(protocol: Protocol, addr: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol,
            addr: addr.parse().expect("test address"),
            port,
        }
    }

    fn real(addr: &str, port: u16, forwarding: Forwarding, weight: u32) -> RealServer {
        RealServer {
            addr: addr.parse().expect("test address"),
            port,
            forwarding,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// Services and servers added out of order, with every kind of option.
    fn sample() -> DesiredState {
        let web = service(Protocol::Tcp, "10.0.0.1", 80);
        let tls = service(Protocol::Tcp, "10.0.0.1", 443);
        let dns6 = service(Protocol::Udp, "2001:db8::1", 53);
        let mut state = DesiredState::default();
        state
            .add_service(
                dns6,
                Scheduler::Maglev,
                Some(Persistence {
                    timeout_secs: 60,
                    netmask: Netmask::V6Prefix(64),
                }),
            )
            .expect("dns6");
        state
            .add_service(
                tls,
                Scheduler::Maglev,
                Some(Persistence {
                    timeout_secs: 360,
                    netmask: Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)),
                }),
            )
            .expect("tls");
        state
            .add_service(web, Scheduler::Maglev, None)
            .expect("web");
        state
            .add_real(&web, real("10.0.0.3", 80, Forwarding::Tunnel, 2))
            .expect("web 3");
        state
            .add_real(&web, real("10.0.0.2", 80, Forwarding::DirectRoute, 1))
            .expect("web 2");
        state
            .add_real(&tls, real("10.0.0.4", 443, Forwarding::DirectRoute, 0))
            .expect("tls 4");
        state
            .add_real(&dns6, real("2001:db8::2", 53, Forwarding::DirectRoute, 1))
            .expect("dns6 2");
        state
            .add_real(&dns6, real("2001:db8::7", 53, Forwarding::Tunnel, 1))
            .expect("dns6 tunnel");
        state
    }

    #[test]
    fn save_prints_what_ipvsadm_save_numeric_prints() {
        assert_eq!(
            save(&sample()),
            "-A -t 10.0.0.1:80 -s mh\n\
             -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n\
             -a -t 10.0.0.1:80 -r 10.0.0.3:80 -i -w 2 --tun-type ipip\n\
             -A -t 10.0.0.1:443 -s mh -p 360 -M 255.255.255.0\n\
             -a -t 10.0.0.1:443 -r 10.0.0.4:443 -g -w 0\n\
             -A -u [2001:db8::1]:53 -s mh -p 60 -M 64\n\
             -a -u [2001:db8::1]:53 -r [2001:db8::2]:53 -g -w 1\n\
             -a -u [2001:db8::1]:53 -r [2001:db8::7]:53 -i -w 1 --tun-type ipip\n"
        );
    }

    #[test]
    fn health_check_options_survive_a_save_and_restore_with_their_quoting() {
        let rules = "-A -t 10.0.0.1:80 -s mh --check http --check-path /health \
                     --check-expect 'Database connection OK' --check-interval 2s --rise 2 --fall 3 \
                     --inhibit-on-failure --quorum 2 --sorry-server 10.0.0.9:80 \
                     --check-notify 'logger -t xlb' --check-notify-shell\n\
                     -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n\
                     -a -t 10.0.0.1:80 -r 10.0.0.3:80 -g -w 1 --check send-expect \
                     --check-send 'GET / HTTP/1.0\\r\\n\\r\\n' --check-expect \"it's up\"\n\
                     -a -t 10.0.0.1:80 -r 10.0.0.4:80 -g -w 1 --check exec \
                     --check-command '/usr/local/bin/probe --deep # not a comment' --check-shell\n";
        let state = restore(&DesiredState::default(), rules).expect("restore");
        let svc = &state.services[0];
        assert!(svc.health.inhibit_on_failure);
        assert_eq!(svc.real_checks.len(), 2);
        let saved = save(&state);
        let again = restore(&DesiredState::default(), &saved).expect("restore the save");
        assert_eq!(again, state, "{saved}");
        assert!(saved.contains("'Database connection OK'"), "{saved}");
    }

    #[test]
    fn unterminated_quotes_are_reported_with_their_line() {
        let err = restore(
            &DesiredState::default(),
            "-A -t 10.0.0.1:80 --check-expect 'oops\n",
        )
        .expect_err("unterminated quote");
        assert_eq!(err.line, 1);
    }

    #[test]
    fn save_leaves_out_the_default_netmask_as_ipvsadm_does() {
        let mut state = DesiredState::default();
        let v4 = service(Protocol::Tcp, "10.0.0.1", 80);
        let v6 = service(Protocol::Tcp, "2001:db8::1", 80);
        state
            .add_service(
                v4,
                Scheduler::Maglev,
                Some(Persistence::default_for(v4.addr)),
            )
            .expect("v4");
        state
            .add_service(
                v6,
                Scheduler::Maglev,
                Some(Persistence::default_for(v6.addr)),
            )
            .expect("v6");
        assert_eq!(
            save(&state),
            "-A -t 10.0.0.1:80 -s mh -p 360\n-A -t [2001:db8::1]:80 -s mh -p 360\n"
        );
    }

    #[test]
    fn save_of_an_empty_table_is_empty() {
        assert_eq!(save(&DesiredState::default()), "");
    }

    #[test]
    fn save_then_restore_gives_the_same_state() {
        let original = sample();
        let restored = restore(&DesiredState::default(), &save(&original)).expect("restore");
        assert_eq!(restored, original);
    }

    #[test]
    fn saved_thresholds_survive_a_save_and_restore() {
        let text =
            "-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1 -x 100 -y 50\n";
        let restored = restore(&DesiredState::default(), text).expect("restore");
        let real = &restored.services[0].reals[0];
        assert_eq!((real.upper_threshold, real.lower_threshold), (100, 50));
        assert_eq!(save(&restored), text);
        let err = restore(
            &DesiredState::default(),
            "-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1 -x 10 -y 50\n",
        )
        .expect_err("-y above -x");
        assert_eq!(err.line, 2);
        assert!(
            err.to_string()
                .contains("the lower threshold (-y 50) is higher than the upper threshold (-x 10)"),
            "{err}"
        );
    }

    #[test]
    fn every_scheduler_its_flags_and_persistence_survive_a_save_and_restore() {
        let text = "-A -t 10.0.0.1:80 -s rr\n\
                    -A -t 10.0.0.2:80 -s wrr -p 300 -M 255.255.255.0\n\
                    -A -t 10.0.0.3:80 -s sh -b sh-fallback,sh-port\n\
                    -A -t 10.0.0.4:80 -s dh\n\
                    -A -t 10.0.0.5:0 -s mh -b mh-port -p 60\n\
                    -A -t 10.0.0.6:80 -s lc\n\
                    -A -t 10.0.0.7:80 -s wlc -p 60\n\
                    -A -t 10.0.0.8:80 -s sed\n\
                    -A -t 10.0.0.9:80 -s nq -p 60\n\
                    -A -t 10.0.0.10:80 -s fo\n\
                    -A -t 10.0.0.11:80 -s ovf\n\
                    -A -u [2001:db8::1]:53 -s sh -p 120 -M 64\n";
        let state = restore(&DesiredState::default(), text).expect("restore");
        assert_eq!(save(&state), text.replace("                    ", ""));
        assert_eq!(
            restore(&DesiredState::default(), &save(&state)).expect("restore again"),
            state
        );
    }

    #[test]
    fn a_rule_set_saved_by_ipvsadm_restores() {
        // As `ipvsadm -S -n` prints it (ipvsadm 1.31), with the program name and a comment.
        let text = "# saved by ipvsadm\n\
                    -A -t 10.0.0.100:80 -s wrr -p 300 -M 255.255.255.0\n\
                    -a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 3\n\
                    -a -t 10.0.0.100:80 -r 10.0.0.12:80 -i -w 1\n\
                    ipvsadm -A -u 10.0.0.100:53 -s rr\n\
                    -a -u 10.0.0.100:53 -r 10.0.0.13:53 -g -w 1 -x 0 -y 0\n";
        let state = restore(&DesiredState::default(), text).expect("restore");
        let web = &state.services[0];
        assert_eq!(web.scheduler, Scheduler::WeightedRoundRobin);
        let persistence = web.persistence.expect("persistent");
        assert_eq!(persistence.timeout_secs, 300);
        assert_eq!(
            persistence.netmask,
            Netmask::V4(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(web.reals.len(), 2);
        assert_eq!(state.services[1].scheduler, Scheduler::RoundRobin);
    }

    #[test]
    fn restore_skips_blank_lines_comments_and_the_program_name() {
        let input = "# saved by hand\n\
                     \n\
                     ipvsadm -A -t 10.0.0.1:80 -s mh   # the web service\n\
                     xlbadm -a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n\
                     \t-a -t 10.0.0.1:80 -r 10.0.0.3 -i -w 2\n";
        let restored = restore(&DesiredState::default(), input).expect("restore");
        let web = service(Protocol::Tcp, "10.0.0.1", 80);
        let reals = &restored.service(&web).expect("web").reals;
        assert_eq!(
            reals,
            &[
                real("10.0.0.2", 80, Forwarding::DirectRoute, 1),
                real("10.0.0.3", 80, Forwarding::Tunnel, 2)
            ]
        );
    }

    #[test]
    fn restore_input_parses_into_changes_with_their_lines_without_a_state() {
        let input = "# saved by hand\n\
                     \n\
                     -A -t 10.0.0.1:80 -s mh\n\
                     -a -t 10.0.0.9:80 -r 10.0.0.2:80 -g -w 1\n";
        let changes = parse_restore(input).expect("parse");
        let lines: Vec<usize> = changes.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [3, 4]);
        assert!(matches!(changes[1].1, Change::AddReal { .. }));
        // The missing service is the applier's to refuse, with the line.
        let err = restore(&DesiredState::default(), input).expect_err("no such service");
        assert_eq!(err.line, 4);
        let err = parse_restore("-A -t 10.0.0.1:80\n-L -n\n").expect_err("not a change");
        assert_eq!(
            err.to_string(),
            "line 2: the 'list' command cannot be used in restore input"
        );
    }

    #[test]
    fn restore_applies_on_top_of_the_current_state() {
        let current = sample();
        let restored = restore(&current, "-a -t 10.0.0.1:443 -r 10.0.0.5:443\n").expect("restore");
        let tls = service(Protocol::Tcp, "10.0.0.1", 443);
        assert_eq!(restored.service(&tls).expect("tls").reals.len(), 2);
        assert_eq!(
            restore(&current, "-C\n").expect("clear"),
            DesiredState::default()
        );
    }

    #[test]
    fn restore_is_all_or_nothing_and_names_the_failing_line() {
        let input = "-A -t 10.0.0.9:80\n\
                     -a -t 10.0.0.9:80 -r 10.0.0.2\n\
                     -A -t 10.0.0.1:80\n\
                     -a -t 10.0.0.9:80 -r 10.0.0.3\n";
        let err = restore(&sample(), input).expect_err("line 3 adds an existing service");
        assert_eq!(
            err,
            RestoreError {
                line: 3,
                failure: RestoreFailure::State(StateError::ServiceExists)
            }
        );
        assert_eq!(err.to_string(), "line 3: Service already exists");
    }

    #[test]
    fn restore_reports_bad_syntax_with_its_line() {
        let err =
            restore(&DesiredState::default(), "\n-A -t 10.0.0.1:80 -s lblc\n").expect_err("lblc");
        assert_eq!(err.line, 2);
        assert_eq!(
            err.to_string(),
            "line 2: xlb does not implement the 'lblc' scheduler yet (xlb supports: \
             rr|wrr|lc|wlc|sed|nq|fo|ovf|sh|dh|mh)"
        );
    }

    #[test]
    fn restore_refuses_commands_that_change_nothing() {
        let err = restore(&DesiredState::default(), "-L -n\n").expect_err("list");
        assert_eq!(
            err.to_string(),
            "line 1: the 'list' command cannot be used in restore input"
        );
        let err = restore(&DesiredState::default(), "-C --socket /tmp/x\n").expect_err("socket");
        assert_eq!(err.failure, RestoreFailure::Socket);
    }
}
