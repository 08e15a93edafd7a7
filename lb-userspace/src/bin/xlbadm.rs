//! xlbadm: ipvsadm's command line for xlb. Same verbs, flags, output and exit codes; it talks to
//! xlbd over the control socket (`--socket PATH`, or `XLB_SOCKET`, or /run/xlb/xlb.sock).

use std::{io::Read as _, net::IpAddr, path::PathBuf, process::ExitCode};

use lb_userspace::{
    control::{self, CallError, Request, Response, DEFAULT_SOCKET},
    ipvsadm::{
        format::{format_connections, format_listing},
        parse::{self, Command},
        save,
    },
    runtime::error_chain,
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
            let request = if options.connections {
                Request::Connections
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
            Request::Restore { rules }
        }
    };
    let response = match control::call(&socket, &request) {
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
            print!("{}", save::save(&state));
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

/// The host name of an address, as ipvsadm prints without `-n` (getnameinfo, NI_NAMEREQD).
fn reverse_lookup(addr: IpAddr) -> Option<String> {
    let (storage, len) = sockaddr(addr);
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: storage holds a valid sockaddr of `len` bytes; host is a writable buffer of the
    // size given.
    let rc = unsafe {
        libc::getnameinfo(
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string into host.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn sockaddr(addr: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
                    sin,
                )
            };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6,
                    sin6,
                )
            };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}
