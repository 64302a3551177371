//! Virtual machines for the Zero-OS executor.
//!
//! - [`Hypervisor`] / [`Instance`]: a backend launches one process per guest and controls it.
//!   [`Qemu`] (QMP over a unix socket; KVM when a probe guest boots, else TCG) and
//!   [`CloudHypervisor`] (REST over a unix socket; only with KVM, compile-tested only).
//! - [`GuestAssets`]: the project's guest kernel (Debian cloud kernel) and busybox initramfs,
//!   fetched/built by `scripts/fetch-kernel.sh` and `scripts/build-initramfs.sh` (embedded in the
//!   binary).
//! - [`VmConfig`]: vCPUs, memory, boot mode (container over virtio-fs, full disk, initramfs),
//!   disks, NICs and the guest configuration carried by the config channel (a cpio appendix
//!   to the initramfs, see [`config`]).
//! - [`Vm`]: lifecycle (create/start/stop/pause/resume/delete), supervision with restarts and
//!   backoff reported as [`VmEvent`]s, console log rotation, metering and cgroup v2 limits.
//! - [`UserRegistry`]: one unprivileged uid/gid per VM for its hypervisor.
//!
//! See README.md for how the executor's VM driver maps a `VmSpec` onto these.

pub mod cgroup;
pub mod cloud_hypervisor;
pub mod config;
pub mod console;
mod cpio;
pub mod guest;
pub mod hypervisor;
pub mod metering;
pub mod qemu;
pub mod users;
pub mod vm;

use std::sync::Arc;

pub use cloud_hypervisor::CloudHypervisor;
pub use config::{
    BootMode, DiskAttachment, GuestConfig, NicConfig, SharedDir, VmConfig, WritableLayer,
};
pub use guest::GuestAssets;
pub use hypervisor::{Accel, ExitInfo, ExitKind, Hypervisor, Instance, RunState, VmLayout};
pub use metering::VmUsage;
pub use qemu::{AccelChoice, Qemu, QemuOptions, RunAs, AGENT_PORT_NAME};
pub use users::{IdRange, UserRegistry, VmUser};
pub use vm::{RestartPolicy, Vm, VmEvent, VmOptions, VmState};

/// The backend for this host: cloud-hypervisor when its binary is on PATH and a KVM probe
/// guest boots, else QEMU (with KVM when the probe boots, else TCG).
pub async fn select_hypervisor(opts: QemuOptions) -> Arc<dyn Hypervisor> {
    let qemu = Qemu::new(opts);
    if let Some(bin) = cloud_hypervisor::find_binary() {
        if qemu.accel().await.ok() == Some(Accel::Kvm) {
            let o = qemu.options();
            tracing::info!(binary = %bin.display(), "using cloud-hypervisor");
            return Arc::new(CloudHypervisor::new(
                bin,
                o.virtiofsd_binary.clone(),
                o.assets.clone(),
            ));
        }
        tracing::info!("cloud-hypervisor found but KVM does not work: using QEMU with TCG");
    }
    Arc::new(qemu)
}
