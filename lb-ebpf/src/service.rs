//! Virtual-service lookup: (VIP, port, proto), then the VIP's "all ports" service.
//!
//! Most traffic on a balancer's interface is for no VIP, and a packet for a service needs only its
//! service entry, so the exact VIP map is asked only when an answer depends on it: the VIP filter
//! (one bit per address hash) clears almost every other packet at the cost of an array read, and a
//! verdict that is only right for a VIP (a drop, a pass counted as for a VIP) is confirmed with
//! [`confirm_vip`] first.

use lb_common::{hash::vip_filter_slot, FlowKey, GlobalStat, Service, ServiceKey};

use crate::{
    maps::{SERVICES, VIP_ADDRS, VIP_FILTER},
    verdict::Verdict,
};

/// Whether the address may be a VIP: `false` proves it is not one.
#[inline(always)]
pub fn maybe_vip(addr: &[u32; 4], family: u8) -> bool {
    let (word, bit) = vip_filter_slot(addr, family);
    VIP_FILTER.get(word).is_some_and(|w| *w & bit != 0)
}

/// `verdict` for a packet whose destination passed [`maybe_vip`], when its destination is a VIP;
/// otherwise the packet is passed untouched as for no VIP.
#[inline(always)]
pub fn confirm_vip(addr: &[u32; 4], family: u8, verdict: Verdict) -> Verdict {
    let vip = ServiceKey {
        addr: *addr,
        port: 0,
        proto: 0,
        family,
    };
    if is_vip(&vip) {
        verdict
    } else {
        Verdict::pass(GlobalStat::PassNotVip)
    }
}

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
