//! `core-0`, the first process of a booted node: it brings the machine up from nothing but its
//! initramfs and kernel command line, trusts only a release manifest signed by the key built
//! into the initramfs, and keeps the release's services running.
//!
//! The pieces are a library so that the protocol and supervision logic is tested on the host;
//! `main.rs` only orders them.

pub mod chain;
pub mod console;
pub mod dhcp;
pub mod disk;
pub mod netconf;
pub mod os;
pub mod release;
pub mod supervisor;
pub mod system;
pub mod upgrade;
