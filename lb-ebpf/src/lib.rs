//! Empty library target: `lb-userspace` names this crate as a build dependency so that cargo
//! rebuilds the userspace crate (whose build script compiles the programs) when the programs change.
#![no_std]
