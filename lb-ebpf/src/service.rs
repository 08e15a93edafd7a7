//! Virtual-service lookup: (VIP, port, proto), then the VIP's "all ports" service.

use lb_common::{FlowKey, Service, ServiceKey};

use crate::maps::{SERVICES, VIP_ADDRS};

/// Whether the address in `vip` (a key with port and proto zero) is a VIP.
#[inline(always)]
pub fn is_vip(vip: &ServiceKey) -> bool {
    // SAFETY: the value is copied out at once; userspace only ever replaces whole values.
    unsafe { VIP_ADDRS.get(vip).is_some() }
}

/// The service this flow is for.
#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<Service> {
    let key = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: as in is_vip.
    unsafe {
        if let Some(svc) = SERVICES.get(&key) {
            return Some(*svc);
        }
        SERVICES.get(&key.all_ports()).copied()
    }
}
