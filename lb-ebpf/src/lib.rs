//! What xlb's two XDP programs share: reading packets (bounds-checked pointers, the Ethernet
//! frame with its optional VLAN tag, protocol numbers) and the panic handler. The balancer is
//! `main.rs`, the real-server decapsulator `decap.rs`.
//!
//! `lb-userspace` also names this crate as a build dependency, so that cargo rebuilds the
//! userspace crate (whose build script compiles the programs) when the programs change; for the
//! host the library is empty.
#![no_std]

#[cfg(target_arch = "bpf")]
pub mod packet;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}
