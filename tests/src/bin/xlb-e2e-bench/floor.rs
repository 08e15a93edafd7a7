//! The floor of "through a balancer to one real server": an XDP program on the balancer's eth0
//! that sends the client's IPv4 packets for [`FLOOR_VIP`] to the first real server by writing
//! fixed MAC addresses (the real server's as destination, the balancer's as source) and returning
//! XDP_TX. No lookup, no state, no counters: what any XDP forwarder on that veth pays (the veth's
//! XDP receive path, the frame sent back out of it, the peer's pass-all program), and the least
//! direct routing through a balancer can cost here. Everything else (ARP for the VIP among it)
//! goes on to the kernel.
//!
//! The program is seventeen instructions, loaded with `bpf(BPF_PROG_LOAD)` and attached in native mode
//! by a BPF link (`bpf(BPF_LINK_CREATE)`), as aya loads programs only from an object file; it is
//! detached when the link's descriptor is closed, so nothing outlives the bench.

use std::{
    net::Ipv4Addr,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use lb_userspace::dataplane::Dataplane;

use crate::{
    lab::{Lab, FLOOR_VIP},
    xlb::peer_pass_all,
};

/// One eBPF instruction as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// Destination register in the low four bits, source register in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const LDX_H: u8 = 0x69; // BPF_LDX | BPF_MEM | BPF_H
const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const ST_H: u8 = 0x6a; // BPF_ST | BPF_MEM | BPF_H
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const JGT_X: u8 = 0x2d; // BPF_JMP | BPF_JGT | BPF_X
const JNE32_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;

/// The program: packets of IPv4 to `vip` get `dst` and `src` as their MAC addresses and go back
/// out (XDP_TX); all else passes.
fn program(vip: Ipv4Addr, dst: [u8; 6], src: [u8; 6]) -> Vec<Insn> {
    // Words as they sit in the frame (loads and stores use the CPU's byte order both ways).
    let w32 = i32::from_ne_bytes;
    let w16 = |b: [u8; 2]| i32::from(u16::from_ne_bytes(b));
    // The XDP_PASS exit is instruction 15; a jump's offset counts from the next instruction.
    const PASS: i16 = 15;
    let to_pass = |at: i16| PASS - at - 1;
    // Registers: r1 the context, r2 the frame's start, r3 its end, r4 and r5 scratch.
    vec![
        insn(LDX_W, 2, 1, 0, 0),                            // 0: r2 = ctx->data
        insn(LDX_W, 3, 1, 4, 0),                            // 1: r3 = ctx->data_end
        insn(MOV64_X, 4, 2, 0, 0),                          // 2: r4 = r2
        insn(ADD64_K, 4, 0, 0, 14 + 20),                    // 3: r4 += Ethernet + IPv4
        insn(JGT_X, 4, 3, to_pass(4), 0),                   // 4: too short: pass
        insn(LDX_H, 5, 2, 12, 0),                           // 5: r5 = EtherType
        insn(JNE32_K, 5, 0, to_pass(6), w16([0x08, 0x00])), // 6: not IPv4: pass
        insn(LDX_W, 5, 2, 14 + 16, 0),                      // 7: r5 = IPv4 destination
        insn(JNE32_K, 5, 0, to_pass(8), w32(vip.octets())), // 8: not the VIP: pass
        insn(ST_W, 2, 0, 0, w32([dst[0], dst[1], dst[2], dst[3]])), // 9: destination MAC
        insn(ST_H, 2, 0, 4, w16([dst[4], dst[5]])),         // 10
        insn(ST_H, 2, 0, 6, w16([src[0], src[1]])),         // 11: source MAC
        insn(ST_W, 2, 0, 8, w32([src[2], src[3], src[4], src[5]])), // 12
        insn(MOV64_K, 0, 0, 0, XDP_TX),                     // 13
        insn(EXIT, 0, 0, 0, 0),                             // 14
        insn(MOV64_K, 0, 0, 0, XDP_PASS),                   // 15 (PASS)
        insn(EXIT, 0, 0, 0, 0),                             // 16
    ]
}

/// `bpf(2)`, on an attribute block of the command's layout.
fn bpf<T>(cmd: libc::c_long, attr: &T, what: &str) -> anyhow::Result<OwnedFd> {
    // SAFETY: attr points to a live, fully initialised attribute block of its size; the kernel
    // reads only that many bytes (and takes the rest of `union bpf_attr` as zero).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_owned());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The leading fields of `union bpf_attr` for BPF_LINK_CREATE.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The forwarder attached to the balancer's eth0, and the peer's pass-all program; dropping it
/// detaches both.
pub struct Floor {
    _link: OwnedFd,
    _prog: OwnedFd,
    _peer: Dataplane,
}

impl Floor {
    /// Loads the forwarder for the first real server's MAC address and attaches it in native
    /// mode to the balancer's eth0.
    pub fn start(lab: &Lab) -> anyhow::Result<Self> {
        let peer = peer_pass_all(lab)?;
        let real = lab.reals[0].mac("eth0");
        let balancer = lab.balancer.mac("eth0");
        let insns = program(FLOOR_VIP, real, balancer);
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"e2e_floor");
        let mut log = vec![0u8; 4096];
        let load = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_XDP,
        };
        let prog = bpf(BPF_PROG_LOAD, &load, "loading the floor's forwarder").map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            e.context(format!(
                "the verifier said: {}",
                text.trim_end_matches('\0').trim()
            ))
        })?;
        let ifindex = lab.balancer.ifindex("eth0");
        let link = lab.balancer.enter(|| {
            bpf(
                BPF_LINK_CREATE,
                &LinkCreate {
                    prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
                    target_ifindex: ifindex,
                    attach_type: BPF_XDP,
                    flags: XDP_FLAGS_DRV_MODE,
                },
                "attaching the floor's forwarder to the balancer's eth0 in native mode",
            )
        })?;
        Ok(Self {
            _link: link,
            _prog: prog,
            _peer: peer,
        })
    }
}
