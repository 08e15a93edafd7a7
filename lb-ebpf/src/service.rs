//! Virtual-service lookup: (VIP, port, proto), then the VIP's "all ports" service.
//!
//! Most traffic on a balancer's interface is for no VIP, and a packet for a service needs only its
//! service entry, so the exact VIP map is asked only when an answer depends on it: the VIP filter
//! (one bit per address hash) clears almost every other packet at the cost of an array read, and a
//! verdict that is only right for a VIP (a drop, a pass counted as for a VIP) is confirmed with
//! [`confirm_vip`] first.

use lb_common::{
    hash::{service_cache_slot, vip_filter_slot},
    service::ServiceCacheSlot,
    FlowKey, GlobalStat, Service, ServiceKey,
};

use crate::{
    maps::{SERVICES, SERVICE_CACHE, SERVICE_GENERATION, VIP_ADDRS, VIP_FILTER},
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

/// The service this flow is for: this CPU's copy of its entry while no service changed since it
/// was taken (no hash lookup: an array read, inlined by the verifier, and the key compared), else
/// the exact service's entry or the VIP's "all ports" service's, copied into the cache.
///
/// A copy is good while the services' generation is the one it was taken under: userspace adds
/// one to the generation after each write of [`SERVICES`], so a copy read before a write is
/// refused once the write is done, as a hash lookup would have found the new entry. (Read in
/// the other order: a packet that reads the old generation and then the new entry caches the
/// new entry under the old generation, which the bump then refuses.) That the generation is
/// read before the entry relies on loads staying in order, which x86 (TSO) guarantees; where
/// they may not, userspace leaves the generation at 0, which turns the cache off. Saves each new
/// flow's service lookup about 20 ns here (19-23 measured) (a helper call, a hash and a key compare).
#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<Service> {
    let key = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    let generation = SERVICE_GENERATION.get(0).copied().unwrap_or(0);
    let slot = SERVICE_CACHE.get_ptr_mut(service_cache_slot(&key))?;
    // SAFETY: this CPU's slot, read and written by this CPU only, for this program run.
    let slot = unsafe { &mut *slot };
    if generation == 0 || slot.generation != generation || slot.key != key {
        // SAFETY: as in is_vip.
        let found = unsafe {
            match SERVICES.get(&key) {
                Some(svc) => *svc,
                None => *SERVICES.get(&key.all_ports())?,
            }
        };
        // Kept also when the cache is off (generation 0, which no copy is taken under): the
        // service is then read from the slot on one path, which the verifier walks once.
        *slot = ServiceCacheSlot {
            key,
            _pad: 0,
            generation,
            service: found,
        };
    }
    Some(slot.service)
}
