//! The control API between `xlbadm` and `xlbd`: one JSON request per line on a Unix socket, one
//! JSON response per line. The socket is root-only (mode 0600) and the daemon also checks each
//! peer's uid (SO_PEERCRED).

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

use crate::{
    config,
    datapath::DataPath,
    dataplane::Dataplane,
    errors::error_chain,
    runtime::{RateEstimator, Runtime},
    state::{Change, DesiredState, ServiceAddr, VirtualService},
    status::{ConnectionListing, Listing},
};

/// The default control socket.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";

/// A request to the daemon.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per command line or request: boxing the change would only add noise"
)]
pub enum Request {
    /// Apply one change (`-A -E -D -a -e -d -C`).
    Change(Change),
    /// Apply the changes of `-R` input (parsed by xlbadm), in order, all or none.
    Changes {
        /// The changes, each with the line of the input it came from.
        changes: Vec<NumberedChange>,
    },
    /// `-R` input as text, as xlbadm sent it before it parsed `-R` itself: refused with a
    /// sentence that says so (the daemon parses no ipvsadm syntax).
    Restore {
        /// The rules.
        rules: String,
    },
    /// Read the configuration file again and take the running state to it (`xlbadm --reload`,
    /// as SIGHUP does): the file whole or, when it is refused, nothing.
    Reload,
    /// The desired state (for `-S`).
    State,
    /// The listing with counters (for `-L`).
    List,
    /// The listing of one service (for `-L -t|-u|-f ADDR`): a listing with that service alone,
    /// or with none when there is no such service. An xlbd older than this request answers it
    /// with "malformed request: unknown variant": xlbadm then asks for [`Request::List`].
    ListService {
        /// The service.
        service: ServiceAddr,
    },
    /// The connection table (for `-L -c`).
    Connections,
    /// Zero the counters of one service or of all (`-Z`).
    Zero {
        /// The service, or all.
        service: Option<ServiceAddr>,
    },
    /// Forget every tracked connection.
    FlushConnections,
    /// Switch the data path's debug events on or off.
    DebugEvents {
        /// On or off.
        on: bool,
    },
}

/// One change of `-R` input, with its line (1-based), named when the change is refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NumberedChange {
    /// The line of the input.
    pub line: usize,
    /// The change.
    pub change: Change,
}

/// The daemon's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// The configuration file was reloaded.
    Reloaded {
        /// What changed, in a sentence.
        summary: String,
    },
    /// The desired state.
    State(DesiredState),
    /// The listing.
    Listing(Listing),
    /// The connection table.
    Connections(Vec<ConnectionListing>),
    /// Refused; nothing changed.
    Error {
        /// What to print.
        message: String,
        /// The exit code xlbadm should return (ipvsadm's: 255 for a refused operation).
        exit_code: i32,
    },
}

/// How the daemon's answer to a request it cannot read begins.
const MALFORMED: &str = "malformed request: ";

impl Response {
    /// Whether this is an xlbd's refusal of a request it does not know: one newer than that
    /// xlbd (an upgrade installed, the old daemon still running), which the caller may ask
    /// again in an older form.
    pub fn is_unknown_request(&self) -> bool {
        matches!(self, Response::Error { message, .. }
            if message.strip_prefix(MALFORMED).is_some_and(|e| e.starts_with("unknown variant")))
    }

    fn error(message: impl std::fmt::Display) -> Self {
        Self::Error {
            message: message.to_string(),
            exit_code: 255,
        }
    }

    /// A refusal whose message carries every cause, down to the kernel's.
    fn refused(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::error(error_chain(error))
    }
}

/// What the server shares between connections.
pub struct Shared<D = Dataplane> {
    /// The daemon's state and data path.
    pub runtime: Runtime<D>,
    /// Rates from the periodic counter samples.
    pub rates: RateEstimator,
    /// The configuration file that [`Request::Reload`] (and SIGHUP) reads.
    pub config: PathBuf,
}

/// Handles one request.
pub fn handle<D: DataPath>(shared: &mut Shared<D>, request: Request) -> Response {
    let runtime = &mut shared.runtime;
    match request {
        Request::Change(change) => {
            if let Err(e) = change.validate() {
                return Response::error(e);
            }
            let mut new = runtime.desired().clone();
            if let Err(e) = new.apply(&change) {
                return Response::error(e);
            }
            match runtime.change_to(new) {
                Ok(()) => Response::Ok,
                Err(e) => Response::refused(&e),
            }
        }
        Request::Changes { changes } => {
            let mut new = runtime.desired().clone();
            for NumberedChange { line, change } in &changes {
                if let Err(e) = change.validate().and_then(|()| new.apply(change)) {
                    return Response::error(format!("line {line}: {e}"));
                }
            }
            match runtime.change_to(new) {
                Ok(()) => Response::Ok,
                Err(e) => Response::refused(&e),
            }
        }
        Request::Restore { .. } => Response::error(
            "this xlbadm is older than xlbd: it sends -R input as text, which xlbd no longer \
             parses; use the xlbadm installed with this xlbd",
        ),
        Request::Reload => reload(runtime, &shared.config),
        Request::State => Response::State(runtime.desired().clone()),
        Request::List => match runtime.listing(&shared.rates) {
            Ok(listing) => Response::Listing(listing),
            Err(e) => Response::refused(&e),
        },
        Request::ListService { service } => match runtime.listing_of(&shared.rates, &service) {
            Ok(listing) => Response::Listing(listing),
            Err(e) => Response::refused(&e),
        },
        Request::Connections => match runtime.connections() {
            Ok(conns) => Response::Connections(conns),
            Err(e) => Response::refused(&e),
        },
        Request::Zero { service } => {
            if let Some(s) = &service {
                if runtime.desired().service(s).is_none() {
                    return Response::error("No such service");
                }
            }
            match runtime.zero(service.as_ref()) {
                Ok(()) => Response::Ok,
                Err(e) => Response::refused(&e),
            }
        }
        Request::FlushConnections => match runtime.flush_connections() {
            Ok(_) => Response::Ok,
            Err(e) => Response::refused(&e),
        },
        Request::DebugEvents { on } => match runtime.dataplane().set_debug_events(on) {
            Ok(()) => Response::Ok,
            Err(e) => Response::refused(&e),
        },
    }
}

/// Takes the running state to what the configuration file says, in one transaction; logs the
/// outcome, and answers it.
fn reload<D: DataPath>(runtime: &mut Runtime<D>, file: &Path) -> Response {
    let refused = |message: String| {
        tracing::error!(config = %file.display(), "reload refused, nothing changed: {message}");
        Response::error(format!("reload refused, nothing changed: {message}"))
    };
    let new = match config::load(file) {
        Ok(Some(new)) => new,
        Ok(None) => {
            return refused(format!(
                "there is no configuration file {} to reload",
                file.display()
            ))
        }
        Err(e) => return refused(error_chain(&e)),
    };
    let summary = summary(runtime.desired(), &new);
    match runtime.change_to(new) {
        Ok(()) => {
            tracing::info!(config = %file.display(), "reloaded: {summary}");
            Response::Reloaded { summary }
        }
        Err(e) => refused(error_chain(&e)),
    }
}

/// What a change from `old` to `new` does, in a sentence: "1 service added, 2 real servers
/// changed", or "no change".
pub fn summary(old: &DesiredState, new: &DesiredState) -> String {
    let mut services = [0usize; 3];
    let mut reals = [0usize; 3];
    let count = |counts: &mut [usize; 3], was: bool, is: bool, same: bool| match (was, is) {
        (false, true) => counts[0] += 1,
        (true, false) => counts[1] += 1,
        (true, true) if !same => counts[2] += 1,
        _ => {}
    };
    let mut addrs: Vec<ServiceAddr> = old.services.iter().map(|s| s.addr).collect();
    addrs.extend(new.services.iter().map(|s| s.addr));
    addrs.sort();
    addrs.dedup();
    let (old_services, new_services) = (old.services_by_addr(), new.services_by_addr());
    for addr in addrs {
        let (was, is) = (
            old_services.get(&addr).copied(),
            new_services.get(&addr).copied(),
        );
        let settings = |s: &VirtualService| (s.scheduler, s.persistence, s.health.clone());
        count(
            &mut services,
            was.is_some(),
            is.is_some(),
            was.map(settings) == is.map(settings),
        );
        let mut keys: Vec<(IpAddr, u16)> = was
            .into_iter()
            .chain(is)
            .flat_map(|s| s.reals.iter().map(|r| (r.addr, r.port)))
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            // A real server with its own check options.
            let find = |service: Option<&VirtualService>| {
                let service = service?;
                let real = service.reals.iter().find(|r| (r.addr, r.port) == key)?;
                let check = service
                    .real_checks
                    .get(&SocketAddr::new(key.0, key.1))
                    .cloned();
                Some((*real, check))
            };
            let (a, b) = (find(was), find(is));
            count(&mut reals, a.is_some(), b.is_some(), a == b);
        }
    }
    let mut parts = Vec::new();
    for (counts, one, many) in [
        (services, "service", "services"),
        (reals, "real server", "real servers"),
    ] {
        for (n, what) in counts.iter().zip(["added", "removed", "changed"]) {
            if *n > 0 {
                parts.push(format!("{n} {} {what}", if *n == 1 { one } else { many }));
            }
        }
    }
    if old.timeouts != new.timeouts {
        let t = new.timeouts;
        parts.push(format!(
            "connection timeouts (tcp tcpfin udp) now {} {} {}",
            t.tcp_secs, t.tcpfin_secs, t.udp_secs
        ));
    }
    if parts.is_empty() {
        "no change".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Binds the control socket: removes a stale one, creates the directory, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests until the listener fails; each connection may send several requests.
pub async fn serve<D: DataPath + 'static>(listener: UnixListener, shared: Arc<Mutex<Shared<D>>>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, shared).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn connection<D: DataPath>(
    stream: UnixStream,
    shared: Arc<Mutex<Shared<D>>>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = if uid != 0 {
            Response::error("permission denied: only root may control xlbd")
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    tracing::debug!(?request, "control request");
                    let change = matches!(
                        request,
                        Request::Change(_) | Request::Changes { .. } | Request::Reload
                    );
                    let (response, next_hops) = {
                        let mut shared = shared.lock().await;
                        let response = handle(&mut shared, request);
                        (response, shared.runtime.next_hops().cloned())
                    };
                    // A change answers once the next hops of the servers it added are resolved
                    // (as when the change made the entries itself), waited for without the lock.
                    if let Some(next_hops) = next_hops.filter(|_| change) {
                        next_hops.wait().await;
                    }
                    response
                }
                Err(e) => Response::error(format!("{MALFORMED}{e}")),
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// Client side: sends one request and reads the response (blocking; for xlbadm).
pub fn call(socket: &Path, request: &Request) -> Result<Response, CallError> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ) {
            CallError::NotRunning {
                socket: socket.to_path_buf(),
            }
        } else if source.kind() == std::io::ErrorKind::PermissionDenied {
            CallError::NotPermitted {
                socket: socket.to_path_buf(),
            }
        } else {
            CallError::Io {
                socket: socket.to_path_buf(),
                source,
            }
        }
    })?;
    let io = |source| CallError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_vec(request).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| io(std::io::Error::other(e)))
}

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket.
    #[error("xlbd is not running (no daemon at {})", socket.display())]
    NotRunning {
        /// The socket.
        socket: PathBuf,
    },
    /// The socket refused this user (it is root's, mode 0600).
    #[error(
        "permission denied: only root may control xlbd (its socket {} is root's)",
        socket.display()
    )]
    NotPermitted {
        /// The socket.
        socket: PathBuf,
    },
    /// The exchange failed.
    #[error("talking to xlbd at {}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_request_this_xlbd_does_not_know_is_told_apart_from_other_errors() {
        // What an xlbd without `list_service` answers it (it reads requests into its own enum).
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "snake_case")]
        enum OlderRequest {
            List,
            State,
        }
        let sent = serde_json::to_string(&super::Request::ListService {
            service: crate::state::ServiceAddr {
                protocol: crate::state::Protocol::Tcp,
                addr: [10, 0, 0, 1].into(),
                port: 80,
            },
        })
        .expect("serialized");
        let refusal = serde_json::from_str::<OlderRequest>(&sent).expect_err("unknown to it");
        let answer = super::Response::error(format!("{}{refusal}", super::MALFORMED));
        assert!(answer.is_unknown_request(), "{answer:?}");
        for other in [
            super::Response::error("No such service"),
            super::Response::error(format!("{}expected value at line 1", super::MALFORMED)),
            super::Response::Ok,
        ] {
            assert!(!other.is_unknown_request(), "{other:?}");
        }
        // And this xlbd reads it.
        assert!(matches!(
            serde_json::from_str::<super::Request>(&sent),
            Ok(super::Request::ListService { .. })
        ));
    }

    fn state(text: &str) -> DesiredState {
        crate::config::parse(Path::new("xlb.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    const SERVICE: &str =
        "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"10.0.0.1\"\nport = 80\n";

    fn real(addr: &str, weight: u32) -> String {
        format!("[[services.reals]]\naddr = \"{addr}\"\nport = 80\nweight = {weight}\n")
    }

    #[test]
    fn a_reloads_summary_says_when_the_connection_timeouts_changed() {
        let old = state(SERVICE);
        let new = state(&format!("{SERVICE}[timeouts]\nudp_secs = 30\n"));
        assert_eq!(
            summary(&old, &new),
            "connection timeouts (tcp tcpfin udp) now 900 120 30"
        );
    }

    #[test]
    fn a_reloads_summary_counts_what_was_added_removed_and_changed() {
        let old = state(&format!(
            "{SERVICE}{}{}",
            real("10.0.0.11", 1),
            real("10.0.0.12", 1)
        ));
        assert_eq!(summary(&old, &old), "no change");
        let new = state(&format!(
            "{SERVICE}{}{}{}",
            real("10.0.0.11", 3),
            real("10.0.0.13", 1),
            SERVICE.replace("10.0.0.1\"", "10.0.0.2\"")
        ));
        assert_eq!(
            summary(&old, &new),
            "1 service added, 1 real server added, 1 real server removed, 1 real server changed"
        );
        assert_eq!(
            summary(&new, &DesiredState::default()),
            "2 services removed, 2 real servers removed"
        );
    }
}
