//! What a booting node trusts: a release manifest signed by the release key built into its
//! initramfs, never older than what it already runs, for the runmode its command line names.
//!
//! Kept small and free of I/O: `core-0` (the static PID 1) and the boot service both link it.

pub mod cmdline;
pub mod manifest;
pub mod version;

pub use cmdline::{BootParams, CmdlineError, Runmode};
/// The key types of release signing (ed25519), for the crates that sign and verify.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use manifest::{Artifact, ManifestError, ReleaseManifest, Service};
pub use version::Version;
