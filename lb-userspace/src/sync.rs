//! Putting a desired state into the data path.
//!
//! This first version installs a whole desired state into freshly loaded maps: each service, its
//! real servers, and its Maglev table built from their identities (address and port) and
//! weights. Incremental diffs against running maps come with the control API.

use std::net::IpAddr;

use lb_common::{ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use thiserror::Error;

use crate::{
    dataplane::{Dataplane, DataplaneError},
    maglev, neighbour,
    state::{DesiredState, Forwarding, Protocol, RealServer, ServiceAddr, VirtualService},
};

/// Why a desired state could not be installed.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The data path refused a change.
    #[error("installing {what}")]
    Dataplane {
        /// The service or real server concerned.
        what: String,
        /// The error.
        #[source]
        source: Box<DataplaneError>,
    },
}

/// The data-path key of a service.
pub fn service_key(addr: &ServiceAddr) -> ServiceKey {
    let proto = match addr.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    match addr.addr {
        IpAddr::V4(v4) => ServiceKey::v4(u32::from(v4), addr.port, proto),
        IpAddr::V6(v6) => ServiceKey::v6(v6.octets(), addr.port, proto),
    }
}

/// The data-path entry of a real server.
pub fn real_entry(real: &RealServer) -> lb_common::RealServer {
    let forward = match real.forwarding {
        Forwarding::DirectRoute => lb_common::Forwarding::DirectRoute,
        Forwarding::Tunnel => lb_common::Forwarding::Tunnel,
    };
    let (addr, family) = match real.addr {
        IpAddr::V4(v4) => ([u32::from(v4).to_be(), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => (bytemuck::cast(v6.octets()), FAMILY_V6),
    };
    lb_common::RealServer {
        addr,
        family,
        forward: forward as u8,
        _pad: [0; 2],
    }
}

/// What makes a real server the same on every balancer: its address and port.
pub fn identity(real: &RealServer) -> Vec<u8> {
    let mut id = match real.addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    id.extend_from_slice(&real.port.to_be_bytes());
    id
}

/// Installs every service of `state` into the data path.
pub fn install(dp: &mut Dataplane, state: &DesiredState) -> Result<(), SyncError> {
    for service in &state.services {
        install_service(dp, service)?;
    }
    Ok(())
}

fn install_service(dp: &mut Dataplane, service: &VirtualService) -> Result<(), SyncError> {
    let what = || format!("service {}", service.addr);
    let key = service_key(&service.addr);
    let flags = if service.persistence.is_some() {
        lb_common::service::SERVICE_F_SOURCE_HASH
    } else {
        0
    };
    dp.upsert_service(key, flags)
        .map_err(|source| SyncError::Dataplane {
            what: what(),
            source: Box::new(source),
        })?;
    let mut ids = Vec::with_capacity(service.reals.len());
    for real in &service.reals {
        let id = dp
            .add_real(real_entry(real))
            .map_err(|source| SyncError::Dataplane {
                what: format!("real server {}:{}", real.addr, real.port),
                source: Box::new(source),
            })?;
        if let Err(e) = neighbour::keep_resolved(real.addr) {
            tracing::warn!(real = %real.addr, error = %e, "cannot keep the real server's next hop resolved");
        }
        ids.push(id);
    }
    let identities: Vec<Vec<u8>> = service.reals.iter().map(identity).collect();
    let backends: Vec<maglev::Backend<'_>> = service
        .reals
        .iter()
        .zip(&ids)
        .zip(&identities)
        .map(|((real, &id), identity)| maglev::Backend {
            identity,
            id,
            weight: real.weight,
        })
        .collect();
    dp.set_maglev_table(key, &maglev::build(&backends))
        .map_err(|source| SyncError::Dataplane {
            what: what(),
            source: Box::new(source),
        })?;
    tracing::info!(service = %service.addr, reals = service.reals.len(), "service installed");
    Ok(())
}
