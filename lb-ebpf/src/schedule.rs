//! Choosing a real server for a new flow: the slot of the flow's hash in the service's live
//! Maglev table.

use lb_common::{
    hash::{flow_hash, source_hash},
    limits::MAGLEV_TABLE_SIZE,
    service::SERVICE_F_SOURCE_HASH,
    FlowKey, Service,
};

use crate::maps::MAGLEV;

/// The real-server id for this flow, or `None` when the service has no server available.
#[inline(always)]
pub fn choose(svc: &Service, flow: &FlowKey) -> Option<u32> {
    let hash = if svc.flags & SERVICE_F_SOURCE_HASH != 0 {
        source_hash(flow)
    } else {
        flow_hash(flow)
    };
    let slot = svc.live_table_base() + hash % MAGLEV_TABLE_SIZE;
    let real = *MAGLEV.get(slot)?;
    // Slot value 0 means "no server": the table of a service without any.
    (real != 0).then_some(real)
}
