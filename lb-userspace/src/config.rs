//! The configuration file (`/etc/xlb/xlb.toml`): the desired state in TOML, checked by the same
//! rules as xlbadm's commands, so that a file is accepted exactly when the same settings typed
//! as commands would be.

use std::net::SocketAddr;

use thiserror::Error;

use crate::state::{Change, DesiredState, StateError};

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// Not TOML, or not the shape of a desired state (unknown key, bad address, ...).
    #[error("{message}")]
    Syntax {
        /// The parser's message, with the line and column.
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

/// Parses and checks a configuration.
pub fn parse(text: &str) -> Result<DesiredState, ConfigFileError> {
    let state: DesiredState = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
        message: e.to_string(),
    })?;
    // Rebuilt through the same operations as xlbadm's commands.
    let mut checked = DesiredState::default();
    for service in &state.services {
        checked
            .apply(&Change::AddService {
                service: service.addr,
                scheduler: service.scheduler,
                persistence: service.persistence,
                health: service.health.clone(),
            })
            .map_err(|source| ConfigFileError::Service {
                service: service.addr.to_string(),
                source,
            })?;
        for real in &service.reals {
            let addr = SocketAddr::new(real.addr, real.port);
            checked
                .apply(&Change::AddReal {
                    service: service.addr,
                    real: *real,
                    check: service.real_checks.get(&addr).cloned().unwrap_or_default(),
                })
                .map_err(|source| ConfigFileError::Real {
                    service: service.addr.to_string(),
                    real: addr,
                    source,
                })?;
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(state) => panic!("accepted: {state:?}"),
            Err(e) => e.to_string(),
        }
    }

    const SERVICE: &str = "[[services]]\nscheduler = \"mh\"\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n";

    #[test]
    fn bad_lines_are_refused_with_a_clear_message() {
        assert!(error("[[services]]\nscheduler = \"wlc\"\n").contains("wlc"));
        assert!(error(&SERVICE.replace("10.0.0.1", "10.0.0.300")).contains("line"));
        assert!(error(&format!("{SERVICE}colour = \"blue\"\n")).contains("colour"));
        let real = "[[services.reals]]\naddr = \"10.0.0.2\"\nport = 81\nforwarding = \"direct_route\"\nweight = 1\nupper_threshold = 0\nlower_threshold = 0\n";
        let message = error(&format!("{SERVICE}{real}"));
        assert!(
            message.contains("10.0.0.2:81") && message.contains("port"),
            "{message}"
        );
        let check = "[services.health.check]\nkind = \"exec\"\n";
        let message = error(&format!("{SERVICE}{check}"));
        assert!(message.contains("command"), "{message}");
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
