//! BPF_PROG_TEST_RUN fixtures: a description, a packet in, the expected verdict and packet out.

use aya::programs::{TestRun as _, TestRunOptions, Xdp};

/// XDP verdicts, as the program returns them.
pub mod action {
    /// XDP_ABORTED.
    pub const ABORTED: u32 = 0;
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;
    /// XDP_REDIRECT.
    pub const REDIRECT: u32 = 4;
}

/// The name of a verdict, for failure messages.
pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        action::DROP => "XDP_DROP",
        action::PASS => "XDP_PASS",
        action::TX => "XDP_TX",
        action::REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// What came out of one run.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict.
    pub action: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// Runs `program` once on `packet` as if it arrived on `ingress_ifindex` (an interface of the
/// calling thread's network namespace; 0 for the namespace's loopback).
pub fn run(program: &Xdp, packet: &[u8], ingress_ifindex: u32) -> Outcome {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    // The kernel wants data_end to be the packet's length when a context is given.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; packet.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e} ({e:?})"));
    out.truncate(result.data_size_out as usize);
    Outcome {
        action: result.return_value,
        packet: out,
    }
}

/// Hex dump for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
