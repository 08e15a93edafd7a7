//! xlbadm: ipvsadm's command line for xlb. Same verbs, flags, output and exit codes; it talks to
//! xlbd over the control socket (`--socket PATH`, or `XLB_SOCKET`, or /run/xlb/xlb.sock).

use std::{io::Read as _, net::IpAddr, path::PathBuf, process::ExitCode};

use lb_userspace::{
    control::{self, CallError, NumberedChange, Request, Response, DEFAULT_SOCKET},
    errors::error_chain,
    ipvsadm::{
        format::{format_connections, format_listing, format_timeouts},
        parse::{self, Command},
        save,
    },
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match parse::parse(&args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("{e}");
            return exit(e.exit_code());
        }
    };
    let socket = invocation
        .socket
        .or_else(|| std::env::var_os("XLB_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let mut list_options = None;
    let request = match invocation.command {
        Command::Help => {
            print!("{}", parse::usage("xlbadm"));
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("xlbadm {} (ipvsadm-compatible)", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Change(change) => Request::Change(change),
        Command::Zero { service } => Request::Zero { service },
        Command::Save => Request::State,
        Command::Reload => Request::Reload,
        Command::List(options) => {
            // The timeouts are part of the desired state.
            let request = if options.timeout {
                Request::State
            } else if options.connections {
                Request::Connections
            } else if let Some(service) = options.service {
                Request::ListService { service }
            } else {
                Request::List
            };
            list_options = Some(options);
            request
        }
        Command::Restore => {
            let mut rules = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut rules) {
                eprintln!("reading the rules from stdin: {e}");
                return exit(1);
            }
            match save::parse_restore(&rules) {
                Ok(changes) => Request::Changes {
                    changes: changes
                        .into_iter()
                        .map(|(line, change)| NumberedChange { line, change })
                        .collect(),
                },
                Err(e) => {
                    eprintln!("{e}");
                    return exit(255);
                }
            }
        }
    };
    let response = match control::call(&socket, &request).and_then(|response| {
        // An xlbd older than the request for one service's listing: the whole listing, which
        // the formatting filters, as it did before.
        if matches!(request, Request::ListService { .. }) && response.is_unknown_request() {
            control::call(&socket, &Request::List)
        } else {
            Ok(response)
        }
    }) {
        Ok(r) => r,
        Err(e @ CallError::NotRunning { .. }) => {
            eprintln!("{e}");
            return exit(1);
        }
        Err(e) => {
            eprintln!("{}", error_chain(&e));
            return exit(1);
        }
    };
    match response {
        Response::Error { message, exit_code } => {
            eprintln!("{message}");
            exit(exit_code)
        }
        Response::Ok => ExitCode::SUCCESS,
        Response::Reloaded { summary } => {
            println!("reloaded: {summary}");
            ExitCode::SUCCESS
        }
        Response::State(state) => {
            if list_options.is_some_and(|o| o.timeout) {
                print!("{}", format_timeouts(&state.timeouts));
            } else {
                print!("{}", save::save(&state));
            }
            ExitCode::SUCCESS
        }
        Response::Connections(conns) => {
            let Some(options) = list_options else {
                eprintln!("xlbd sent a connection table that was not asked for");
                return exit(1);
            };
            print!("{}", format_connections(&conns, &options, reverse_lookup));
            ExitCode::SUCCESS
        }
        Response::Listing(listing) => {
            let Some(options) = list_options else {
                eprintln!("xlbd sent a listing that was not asked for");
                return exit(1);
            };
            match format_listing(&listing, &options, reverse_lookup) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    exit(255)
                }
            }
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// The host name of an address, as ipvsadm prints without `-n` (getnameinfo with NI_NAMEREQD:
/// no name, no answer).
fn reverse_lookup(addr: IpAddr) -> Option<String> {
    dns_lookup::lookup_addr(&addr).ok()
}
