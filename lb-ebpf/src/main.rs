//! xlb's XDP balancer: forwards each flow for a virtual service to one real server.
//!
//! Per packet, in this order (see ../shared/DESIGN.md): parse ([`parse`]), find the connection
//! ([`conntrack`]; a known flow needs nothing else; a TCP flow past nothing but its SYN is kept
//! apart, in the embryonic table, until the client's next packet), else find the service ([`service`]) and
//! choose a real server by its scheduler ([`schedule`]), forward by direct routing or tunneling ([`forward`]) or answer "too big"
//! ([`icmp`]), count ([`stats`]). Every packet that is not for a
//! service is passed to the kernel untouched; every packet that is passed or dropped instead of
//! forwarded is counted by reason ([`verdict`]).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// One instruction LLVM's BPF target will not emit: a 32-bit store at an offset of 2 modulo 4
// (forward.rs, `store_word`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Map keys are passed to the map helpers by reference, as the kernel takes them: by value they
// would be copied onto the 512-byte BPF stack first (a flow key is 40 bytes).
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod l2;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod next_hop;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod schedule;
#[cfg(target_arch = "bpf")]
mod service;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod store;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod program {
    use core::mem::{size_of, MaybeUninit};

    use aya_ebpf::{bindings::xdp_md, macros::xdp, programs::XdpContext};

    use lb_common::{
        config::{DebugEvent, EVENT_INSERT_FAILED, EVENT_NEW_FLOW, EVENT_NONE},
        maps::TAIL_CALL_BALANCER_VLAN,
        CpuGlobals, FlowKey, Service,
    };

    use crate::{
        conntrack, events, forward, maps,
        parse::{self, Packet},
        schedule, service, stats,
        verdict::Verdict,
    };

    /// The balancer's entry point, for frames without a VLAN tag (it hands tagged ones to
    /// [`xlb_vlan`]).
    #[xdp]
    pub fn xlb_balancer(ctx: XdpContext) -> u32 {
        run::<false>(&ctx)
    }

    /// The balancer for frames with a VLAN tag: the same code, with the IP header at 18.
    #[xdp]
    pub fn xlb_vlan(ctx: XdpContext) -> u32 {
        run::<true>(&ctx)
    }

    /// Decide, count the verdict, return it (through the debug-event program when events are on).
    #[inline(always)]
    fn run<const TAGGED: bool>(ctx: &XdpContext) -> u32 {
        let mut note = DebugEvent::default();
        let mut conntrack_hit = false;
        // This CPU's counters and clock, looked up once for the packet's time and its counting:
        // by `balance` once the packet is parsed (not before, so that the pointer need not live
        // across the parsing function's call), here for a packet it gave up on before.
        let mut globals = None;
        let verdict = balance::<TAGGED>(ctx, &mut globals, &mut note, &mut conntrack_hit);
        stats::count_verdict(globals.or_else(stats::globals), &verdict, conntrack_hit);
        // A known flow forwarded has nothing to tell: it skips even the switch's load.
        let eventful = !verdict.is_forwarded() || note.kind != EVENT_NONE;
        if eventful && maps::debug_events() {
            events::hand_over(ctx, &verdict, note);
        }
        verdict.action()
    }

    /// The verdict for one packet; `note` gets what a debug event would say about a new flow,
    /// `conntrack_hit` whether the connection table knew the flow (counted with the verdict).
    #[inline(always)]
    fn balance<const TAGGED: bool>(
        ctx: &XdpContext,
        globals: &mut Option<*mut CpuGlobals>,
        note: &mut DebugEvent,
        conntrack_hit: &mut bool,
    ) -> Verdict {
        let mut parsed = PacketSlot(MaybeUninit::uninit());
        let slot = parsed.0.as_mut_ptr();
        // The common frame inline, the rest by the global parsing function (which needs the
        // slot zeroed). The verifier then walks what follows once for each way (the inline
        // parser's IPv4 and IPv6 packets, with the constants it wrote, and the global function's,
        // whose bytes it knows nothing of): about 30,400 processed instructions, where passing
        // the inline parser's packet through a global function that did nothing, so that it
        // walked it once, cost about 19,800 and a known flow's packet 2-3 ns more (the call).
        let common = if TAGGED {
            parse::PARSE_UNSURE
        } else {
            // SAFETY: a pointer to this frame's slot.
            unsafe { parse::parse_common(ctx, slot) }
        };
        let code = if common != parse::PARSE_UNSURE {
            common
        } else {
            parsed.zero();
            // SAFETY: this program's context and a pointer to this frame's slot.
            unsafe {
                if TAGGED {
                    xlb_parse_vlan(ctx.ctx, slot)
                } else {
                    xlb_parse(ctx.ctx, slot)
                }
            }
        };
        if code != parse::PARSED {
            if code == parse::PARSE_TAGGED {
                // SAFETY: the context is this program's; the tail call does not return on
                // success.
                unsafe { maps::TAIL_CALLS.tail_call(ctx, TAIL_CALL_BALANCER_VLAN) };
                // Only when the tagged program is missing from its slot: the kernel gets the
                // frame as it is.
                return Verdict::pass(lb_common::GlobalStat::PassNotIp);
            }
            return Verdict::from_code(code);
        }
        // SAFETY: parsing wrote the packet.
        let packet = unsafe { parsed.0.assume_init_ref() };
        // Index 0 of a per-CPU array is always there; the verifier learns here that the pointer is
        // not null, and walks the rest of the program once (not once for each case).
        let Some(cpu) = stats::globals() else {
            return Verdict::drop(lb_common::GlobalStat::DropNoRoute);
        };
        *globals = Some(cpu);
        let now = conntrack::now(cpu);
        // What a new flow's choice writes once the flow is forwarded (see schedule::Pending), as
        // xlb_choose packed it with the server's id.
        let mut choice = 0;
        // The embryonic table only when the connection table does not know the flow: a known
        // flow costs one lookup. An embryonic flow's packet is settled there (promoted by the
        // handshake's ACK, forgotten on a RST) and then forwarded as a known flow's. A SYN asks
        // for its service first: a settled service's SYN skips the embryonic table (its flow's
        // first SYN, if this is a retransmission, went where the table sends this one; see
        // SERVICE_F_SETTLED; its claim of the flow, xlb_new_flow, still tells it from a new
        // connection), and a SYN for no service has no embryonic flow to find (an entry
        // outlives its service only to be refused by its epoch).
        let mut svc = None;
        let syn = packet.syn();
        // A SYN whose flow the connection filter proves absent skips the table's lookup too.
        let looked_up = if syn && !conntrack::may_be_known(&packet.flow) {
            None
        } else {
            conntrack::lookup(packet, now)
        };
        let known = match looked_up {
            Some(known) => Some(known),
            None => {
                if syn {
                    svc = service::lookup(&packet.flow);
                }
                let skip =
                    syn && svc.is_none_or(|s| s.flags & lb_common::service::SERVICE_F_SETTLED != 0);
                if skip {
                    None
                } else {
                    conntrack::lookup_embryonic(packet, now)
                }
            }
        };
        let (service, real_id, real, flow_label, new_flow) = match known {
            Some(known) => (
                known.service,
                known.real_id,
                known.real,
                known.flow_label,
                false,
            ),
            None => {
                if !syn {
                    svc = service::lookup(&packet.flow);
                }
                let Some(svc) = svc else {
                    return service::confirm_vip(
                        &packet.flow.dst,
                        packet.flow.family,
                        Verdict::pass(lb_common::GlobalStat::PassNoService),
                    );
                };
                // SAFETY: pointers to this frame's values.
                choice = unsafe { xlb_choose(&svc, &packet.flow, now) };
                let real_id = choice as u32;
                if real_id == 0 {
                    return Verdict::drop(lb_common::GlobalStat::DropNoReal);
                }
                let Some(real) = maps::real(real_id) else {
                    return Verdict::drop(lb_common::GlobalStat::DropNoReal);
                };
                // IPv6: worked out once, remembered with the connection for its later packets.
                let flow_label = if packet.flow.family == lb_common::FAMILY_V6 {
                    lb_common::hash::flow_hash(&packet.flow) & 0x000f_ffff
                } else {
                    0
                };
                (svc.id, real_id, real, flow_label, true)
            }
        };
        let verdict = forward::forward::<TAGGED>(ctx, packet, real_id, real, flow_label, now);
        if packet.ip_options {
            stats::count(lb_common::GlobalStat::SeenIpOptions);
        }
        // Counted once forward() is back: when the next hop had to be looked up, the balancer ran
        // again on the packet (see next_hop.rs), and only that run gets here.
        let mut again = false;
        if verdict.is_forwarded() {
            if packet.icmp_error {
                stats::count(lb_common::GlobalStat::SeenIcmpErrorForwarded);
            } else if new_flow {
                // SAFETY: a pointer to this frame's flow.
                let remembered = unsafe {
                    xlb_new_flow(
                        &packet.flow,
                        choice,
                        u64::from(service) | u64::from(real.service_epoch) << 32,
                        u64::from(flow_label)
                            | u64::from(syn) << NEW_FLOW_SYN
                            | u64::from(packet.closing) << NEW_FLOW_CLOSING,
                        now,
                    )
                };
                // A retransmitted SYN (of a settled service, which skipped the embryonic lookup)
                // is the embryonic flow's packet, as if the lookup had found it.
                again = remembered == conntrack::Remembered::Again as u32;
                note.kind = if remembered == conntrack::Remembered::Inserted as u32 {
                    EVENT_NEW_FLOW
                } else if again {
                    EVENT_NONE
                } else {
                    EVENT_INSERT_FAILED
                };
                note.service = service;
                note.real = real_id;
                note.sport = packet.flow.sport;
            }
            stats::count_forwarded(
                real_id,
                u64::from(packet.len),
                new_flow && !packet.icmp_error && !again,
            );
        }
        *conntrack_hit = !new_flow || again;
        verdict
    }

    /// Where the parsing functions write the packet: zeroed first, as a global function may be
    /// given only memory whose every byte was written (unless the loader has CAP_PERFMON).
    #[repr(C, align(8))]
    struct PacketSlot(MaybeUninit<Packet>);

    impl PacketSlot {
        /// Zeroes the slot in place, by 8-byte stores: LLVM would make zeroing the whole a call
        /// of `memset`, which writes a byte at a time (34 ns more per packet).
        #[inline(always)]
        fn zero(&mut self) {
            let words = (&raw mut *self).cast::<u64>();
            for i in 0..size_of::<Self>() / 8 {
                // SAFETY: within the slot, which is aligned to 8 bytes and a multiple of 8 long.
                unsafe { words.add(i).write_volatile(0) };
            }
        }
    }

    /// The scheduler's choice of a real server for a new flow ([`schedule::choose`]) as a global
    /// function of the program (exported, never inlined), which the verifier checks once, on its
    /// own, from its arguments' types; the balancer then goes on after it from one state whatever
    /// way the choice went, where every way out of the scheduler's walks past overloaded servers
    /// would otherwise make the verifier walk the rest of the program once more (89,599 processed
    /// instructions for the balancer with the choice inlined). Returns the server's id (0 for
    /// none) and what [`schedule::commit`] is to write, packed ([`unpack_choice`]): a global
    /// function may be given only memory whose every byte was written, which a
    /// [`schedule::Pending`] with its padding is not.
    ///
    /// # Safety
    /// Each pointer is null or valid for reads of its type for the call.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub unsafe extern "C" fn xlb_choose(
        svc: *const Service,
        flow: *const FlowKey,
        now: u64,
    ) -> u64 {
        // SAFETY: the caller's promise.
        let (Some(svc), Some(flow)) = (unsafe { svc.as_ref() }, unsafe { flow.as_ref() }) else {
            return 0;
        };
        let mut pending = schedule::Pending::new();
        let real = schedule::choose(svc, flow, now, &mut pending).unwrap_or(0);
        u64::from(real)
            | u64::from(pending.turn) << CHOICE_TURN
            | u64::from(pending.remember) << CHOICE_REMEMBER
            | u64::from(pending.count) << CHOICE_COUNT
            | u64::from(pending.advance) << CHOICE_ADVANCE
    }

    /// Bits of [`xlb_choose`]'s answer above the server's id: whether the choice took a
    /// round-robin turn, remembers a persistent client, counts a connection, and the round-robin
    /// position that follows (a slot of a table: 17 bits).
    const CHOICE_TURN: u32 = 32;
    const CHOICE_REMEMBER: u32 = 33;
    const CHOICE_COUNT: u32 = 34;
    const CHOICE_ADVANCE: u32 = 40;

    /// The pending writes of an answer of [`xlb_choose`].
    #[inline(always)]
    fn unpack_choice(choice: u64) -> schedule::Pending {
        let mut pending = schedule::Pending::new();
        pending.turn = choice >> CHOICE_TURN & 1 != 0;
        pending.remember = choice >> CHOICE_REMEMBER & 1 != 0;
        pending.count = choice >> CHOICE_COUNT & 1 != 0;
        pending.advance = (choice >> CHOICE_ADVANCE) as u32;
        pending
    }

    /// What a new flow forwarded writes: the flow in its table ([`conntrack::remember`]), then,
    /// unless it was there already (a retransmitted SYN), what its choice changes
    /// ([`schedule::commit`]). Returns a [`conntrack::Remembered`].
    ///
    /// A global function of the program (exported, never inlined), which the verifier checks
    /// once, from its arguments' types: the balancer then goes on after it from one state,
    /// however the writes went, and its frame (the entries written) is not the balancer's, whose
    /// stack adds up with the parsing function's against the verifier's 512 bytes (312 bytes
    /// with these writes inline, 280 without).
    /// Arguments packed as scalars: `choice` is [`xlb_choose`]'s answer (the server's id and
    /// the pending writes), `ids` the service's id and (above bit 32) the epoch its server
    /// carries, `label` the IPv6 flow label with the packet's SYN and closing bits
    /// ([`NEW_FLOW_SYN`], [`NEW_FLOW_CLOSING`]).
    ///
    /// # Safety
    /// `flow` is null or valid for reads of a flow key for the call.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub unsafe extern "C" fn xlb_new_flow(
        flow: *const FlowKey,
        choice: u64,
        ids: u64,
        label: u64,
        now: u64,
    ) -> u32 {
        // SAFETY: the caller's promise.
        let Some(flow) = (unsafe { flow.as_ref() }) else {
            return conntrack::Remembered::Failed as u32;
        };
        let (service, real) = (ids as u32, choice as u32);
        let syn = label >> NEW_FLOW_SYN & 1 != 0;
        let mut pending = unpack_choice(choice);
        // A SYN's flow is embryonic: its server counts it as active once it is promoted (IPVS
        // counts a SYN_RECV connection as inactive), not now.
        let count_later = pending.count & syn;
        pending.count &= !syn;
        let remembered = conntrack::remember(
            flow,
            syn,
            label >> NEW_FLOW_CLOSING & 1 != 0,
            service,
            real,
            (ids >> 32) as u32,
            label as u32 & 0x000f_ffff,
            count_later,
            now,
        );
        if remembered != conntrack::Remembered::Again {
            schedule::commit(service, flow, real, now, &pending);
        }
        remembered as u32
    }

    /// Bits of [`xlb_new_flow`]'s `label` above the flow label's 20: the packet is a SYN
    /// without ACK; it has FIN or RST.
    const NEW_FLOW_SYN: u32 = 20;
    const NEW_FLOW_CLOSING: u32 = 21;

    /// Parses a frame without a VLAN tag into `packet` (see [`parse::parse_into`]): a global
    /// function of the program (exported, never inlined), checked once by the verifier.
    ///
    /// # Safety
    /// `ctx` is the program's context; `packet` is null or valid for writes.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub unsafe extern "C" fn xlb_parse(ctx: *mut xdp_md, packet: *mut Packet) -> u32 {
        // SAFETY: the caller's promise.
        unsafe { parse::parse_into::<false>(ctx, packet) }
    }

    /// [`xlb_parse`] for frames with a VLAN tag.
    ///
    /// # Safety
    /// As for [`xlb_parse`].
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub unsafe extern "C" fn xlb_parse_vlan(ctx: *mut xdp_md, packet: *mut Packet) -> u32 {
        // SAFETY: the caller's promise.
        unsafe { parse::parse_into::<true>(ctx, packet) }
    }
}

// The panic handler is the library's (lb_ebpf), shared with the decapsulator.
#[cfg(target_arch = "bpf")]
use lb_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
