//! Keeping the kernel's neighbour entries of real servers resolved.
//!
//! The data path takes each next hop's MAC from the kernel's neighbour table and drops (counting
//! `drop_no_neighbour`) while there is none, so every real server's next hop gets a *managed*
//! neighbour entry (Linux >= 5.16): the kernel resolves it at once and keeps it resolved, without
//! waiting for traffic of its own to the server.

use std::{net::IpAddr, process::Command};

use thiserror::Error;

/// Why a neighbour entry could not be set up.
#[derive(Debug, Error)]
pub enum NeighbourError {
    /// `ip` could not be run.
    #[error("running `ip {args}`")]
    Spawn {
        /// Its arguments.
        args: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// The kernel has no route to the server.
    #[error("no route to {addr}: {detail}")]
    NoRoute {
        /// The server.
        addr: IpAddr,
        /// What `ip route get` said.
        detail: String,
    },
}

fn ip(args: &[&str]) -> Result<String, NeighbourError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NeighbourError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NeighbourError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The next hop towards `addr` (the address itself when on-link) and the device it is reached on.
pub fn next_hop(addr: IpAddr) -> Result<(IpAddr, String), NeighbourError> {
    let addr_s = addr.to_string();
    let json = ip(&["-j", "route", "get", &addr_s])?;
    let routes: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| NeighbourError::NoRoute {
            addr,
            detail: e.to_string(),
        })?;
    let route = routes.get(0).ok_or_else(|| NeighbourError::NoRoute {
        addr,
        detail: json.clone(),
    })?;
    let dev = route["dev"]
        .as_str()
        .ok_or_else(|| NeighbourError::NoRoute {
            addr,
            detail: json.clone(),
        })?;
    let gateway = route["gateway"]
        .as_str()
        .and_then(|g| g.parse::<IpAddr>().ok())
        .unwrap_or(addr);
    Ok((gateway, dev.to_owned()))
}

/// Makes the kernel resolve the next hop towards `addr` now and keep it resolved. Runs in the
/// calling thread's network namespace.
pub fn keep_resolved(addr: IpAddr) -> Result<(), NeighbourError> {
    let (hop, dev) = next_hop(addr)?;
    if hop.is_loopback() || dev == "lo" {
        return Ok(());
    }
    let hop = hop.to_string();
    ip(&["neigh", "replace", &hop, "dev", &dev, "managed"])?;
    tracing::debug!(%addr, next_hop = %hop, %dev, "managed neighbour entry in place");
    Ok(())
}
