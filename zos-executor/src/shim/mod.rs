//! The per-VM shim: the process that holds one guest's image mount and supervises its
//! hypervisor, so that guests outlive the executor (the containerd-shim model).
//!
//! The executor binary runs itself as `zos-executor vm-shim <vm dir>` in a session of its own,
//! with the guest's configuration in `<vm dir>/shim.json` (0600). The shim mounts the image,
//! starts the guest under zos-vm's supervisor (restarts with backoff), records its pid in
//! `shim.pid`, serves requests on `shim.sock` (0600, one JSON request and one JSON reply per
//! connection) and writes one [`Startup`] line on its standard output when the guest runs or
//! cannot. Its log goes to `shim.log`.
//!
//! An executor that stops, crashes or is replaced by a newer version leaves the shims running;
//! the next one adopts each guest whose shim answers with the label it was installed with,
//! instead of starting it again. A shim ends only on request ([`Request::Shutdown`]: guest
//! stopped, image unmounted, directory removed) or on SIGTERM/SIGINT (guest stopped, image
//! unmounted, files kept).

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zos_vm::{Accel, GuestAssets, VmConfig, VmState, VmUsage};

use crate::drivers::vm::ImageSourcePolicy;

/// The first argument that makes the executor binary run as a shim.
pub const SHIM_ARG: &str = "vm-shim";

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("shim.sock")
}

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("shim.json")
}

pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("shim.pid")
}

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("shim.log")
}

/// Everything a shim needs to run one guest, written by the executor before it starts the shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub vm: VmConfig,
    /// Where the image comes from (checked again against `image_policy`) and its root hash (hex).
    pub image_source: String,
    pub image_root: String,
    pub image_policy: ImageSourcePolicy,
    /// The guest kernel and initramfs the executor prepared.
    pub assets: GuestAssets,
    /// The accelerator the executor's probe chose (the shim never probes).
    pub accel: Accel,
    /// Seconds the guest gets to shut down cleanly (ACPI power-down) before a hard stop.
    #[serde(default = "default_stop_grace_secs")]
    pub stop_grace_secs: u64,
    /// Opaque to the shim: what the executor installed, handed back in [`Status`] so that an
    /// executor adopting the guest can tell whether it still matches the spec.
    pub label: String,
    /// The VM's own uid/gid for its hypervisor; `None` (or a shim config written before they
    /// existed): `nobody`.
    #[serde(default)]
    pub vm_user: Option<zos_vm::VmUser>,
    /// The VM's disk bandwidth and IOPS (`io.max`); `None`: unlimited.
    #[serde(default)]
    pub io_limit: Option<zos_vm::cgroup::IoLimit>,
}

fn default_stop_grace_secs() -> u64 {
    10
}

/// A request to a shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Usage,
    Pause,
    Resume,
    /// Tell the guest that a disk file grew to `bytes`.
    ResizeDisk {
        id: String,
        bytes: u64,
    },
    /// Stop the guest, unmount the image, remove the VM directory, exit.
    Shutdown,
    /// Stop the guest (within the grace period) and start it again, on the same image and
    /// disks: a failing health check's remedy.
    Restart,
}

/// What a shim says about its guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub label: String,
    pub state: VmState,
    pub hypervisor_pid: Option<u32>,
    /// Crashes since the shim started.
    pub crashes: u32,
    /// Why the guest counts as crash-looping, if it does.
    pub looping: Option<String>,
    /// Each disk's size as the guest knows it: (id, file, bytes).
    pub disks: Vec<(String, PathBuf, u64)>,
}

/// A shim's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Usage(VmUsage),
    Done,
    Failed(String),
}

/// The one line a shim prints on its standard output once it knows how its start went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Startup {
    Ready,
    Failed {
        /// The spec can never run (a refused image, a configuration QEMU rejects).
        permanent: bool,
        /// The image's hub does not have it (yet).
        image_missing: bool,
        reason: String,
    },
}
