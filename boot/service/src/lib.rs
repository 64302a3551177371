//! The node OS's boot service and release publisher.
//!
//! - [`publish`] writes a signed release manifest for a runmode into a boot directory.
//! - [`router`] serves that directory to booting nodes: `/ipxe/<runmode>/<farm>` (the iPXE
//!   script that boots the node with its farm's command line), `/kernel`, `/initramfs` and
//!   `/release/<runmode>/manifest.{json,sig}`.
//! - [`prune`] removes old releases and the OS image objects only they need.

pub mod prune;
pub mod publish;
pub mod serve;

pub use publish::{publish, ReleaseInput};
pub use serve::{ipxe_script, router, spawn_background, BootConfig};
