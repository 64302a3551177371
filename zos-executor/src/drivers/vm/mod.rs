//! VM driver: a `Vm` workload becomes a guest (zos-vm) booting the spec's image in container
//! mode, run by a per-VM shim process (crate::shim) so that it outlives the executor.
//!
//! Install: the spec is mapped onto a zos-vm configuration ([`spec`]; anything the node cannot
//! run is refused for good before anything is fetched), the VM's taps are attached, and a shim
//! is started. The shim fetches the image index from `image.source` (an `http(s)://` hub, or a
//! directory store the node's policy allows), refuses one that does not hash to
//! `image.root_hash`, mounts it read-only with zos-image's verifying FUSE mount at
//! `<contract dir>/vms/<name>/rootfs` and boots the guest over it (virtio-fs, tmpfs overlay of
//! `rootfs_mib`), with the spec's `Disk` mounts as virtio-blk devices and its env, entrypoint
//! and SSH keys in zos-vm's configuration channel.
//!
//! A VM is a service: when its entrypoint exits the guest is started again with backoff, like a
//! crash. Crashes are counted in `zos_executor_vm_crashes`; while a guest waits to restart,
//! `inspect` reports it `Broken` with the last error, and a crash-looping guest fails its
//! contract.
//!
//! After an executor restart (or upgrade) the driver adopts each guest whose shim still runs
//! and was installed from the same workload and public card: the guest keeps running. A shim
//! that does not answer is killed, with any hypervisor it left, and the guest is started anew.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};
use zos_net::NetError;
use zos_primitives::{spec::Workload, ContractId};
use zos_vm::{Accel, GuestAssets, Hypervisor, NicConfig, Qemu, VmState};

use super::{
    network::NodeNetworks, CardReading, Driver, DriverError, DriverResult, Observed, Usage,
    WorkloadCtx,
};
use crate::{
    metrics::Metrics,
    shim::{
        self,
        client::{ShimClient, SpawnError},
        ShimConfig,
    },
};

pub mod image;
mod install;
pub mod probes;
pub mod spec;

pub use image::ImageSourcePolicy;
use image::{classify_missing, detach_dead_mount, ImageMissing};
pub use spec::vm_dir;
use spec::{name_str, public_card, rootfs_dir, vm_spec};

/// How long a shim may take to fetch the image index, mount it and start the guest.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a shim whose process lives may leave status requests unanswered before its guest
/// is taken for hung and re-created: a slow answer alone must not cost a tenant its guest.
const SHIM_SILENCE_TOLERATED: Duration = Duration::from_secs(120);
/// The longest clean shutdown a health restart waits for (well within the tolerated silence).
const RESTART_GRACE_MAX: Duration = Duration::from_secs(30);

/// Settings of the VM driver.
#[derive(Clone, Debug, Default)]
pub struct VmDriverConfig {
    /// Guest kernel and initramfs cache; `None`: `$ZOS_GUEST_CACHE`, else
    /// `${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest`.
    pub guest_cache: Option<PathBuf>,
    /// The guest kernel's tree hash (hex BLAKE3) this node boots, else the one first used.
    pub kernel_pin: Option<String>,
    /// Where images may come from.
    pub image_sources: ImageSourcePolicy,
    /// How long a guest gets to shut down cleanly (ACPI power-down) before a hard stop.
    pub stop_grace: Duration,
    /// Gives each VM's hypervisor its own uid/gid; `None`: QEMU runs as `nobody`.
    pub vm_users: Option<zos_vm::UserRegistry>,
    /// Each VM's disk bandwidth and IOPS (`io.max`); `None`: unlimited.
    pub io_limit: Option<zos_vm::cgroup::IoLimit>,
}

/// Whether this host can run VM workloads: QEMU on PATH and FUSE for image mounts.
pub fn host_support() -> Result<(), String> {
    let qemu = std::env::var_os("ZOS_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    let qemu = PathBuf::from(qemu);
    let found = if qemu.components().count() > 1 {
        qemu.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(&qemu).is_file()))
            .unwrap_or(false)
    };
    if !found {
        return Err(format!("{} is not on PATH", qemu.display()));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing (image mounts need FUSE)".into());
    }
    Ok(())
}

type Key = (ContractId, Vec<u8>);

/// What a shim is told to hand back: the workload and public card it was installed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Label {
    workload: Workload,
    /// The public card as resolved at install: a public address the chain reassigned (an
    /// update of the contract) or a changed node subnet means a new guest, never a card that
    /// keeps an address another contract now holds.
    public_nic: Option<NicConfig>,
    /// The overlay address as resolved at install: another node key means another address.
    #[serde(default)]
    overlay_address: Option<std::net::Ipv6Addr>,
}

/// What the driver keeps for one installed VM.
struct Installed {
    /// What it was installed from: anything else means re-create.
    label: Label,
    shim: ShimClient,
    /// The shim's crash count when last looked at (for the crash metric).
    crashes_seen: u32,
    /// Since when its live shim has not answered a status request (a loaded host, a guest's
    /// QMP stalled under emulation): within [`SHIM_SILENCE_TOLERATED`] that is not a fault.
    silent_since: Option<std::time::Instant>,
}

pub struct VmDriver {
    config: VmDriverConfig,
    metrics: Arc<Metrics>,
    /// The guest assets and the accelerator, prepared on first use.
    hypervisor: tokio::sync::OnceCell<Arc<Qemu>>,
    /// One slot per workload so calls on different VMs do not wait for each other.
    slots: StdMutex<HashMap<Key, Arc<Mutex<Option<Installed>>>>>,
    /// When each workload's image was first found missing from its hub.
    image_missing_since: StdMutex<HashMap<Key, std::time::Instant>>,
    /// Private networks for the VMs' cards; `None`: cards are refused.
    networks: Option<Arc<NodeNetworks>>,
    /// The program run as `<binary> vm-shim <dir>`: this executor's own binary.
    shim_binary: PathBuf,
    /// Opens sealed environment values; `None`: they are refused.
    box_secret: Option<zeroize::Zeroizing<[u8; 32]>>,
}

/// Whether the shim of `inst` has been silent longer than tolerated (its silence starts now
/// if it was answering until this request).
fn silent_too_long(inst: &mut Installed) -> bool {
    inst.silent_since
        .get_or_insert_with(std::time::Instant::now)
        .elapsed()
        > SHIM_SILENCE_TOLERATED
}

fn transient(e: anyhow::Error) -> DriverError {
    DriverError::Transient(e)
}

/// Tells a running guest about disk files grown since it last looked (the disk driver grows
/// them in place on update; QEMU's `block_resize` makes the guest see the new capacity).
async fn propagate_disk_growth(
    shim: &ShimClient,
    disks: &[(String, PathBuf, u64)],
) -> DriverResult<()> {
    for (id, path, known) in disks {
        let Ok(meta) = tokio::fs::metadata(path).await else {
            continue;
        };
        if meta.len() > *known {
            shim.resize_disk(id, meta.len())
                .await
                .map_err(|e| transient(e.context(format!("telling the guest disk {id} grew"))))?;
            info!(dir = %shim.dir().display(), disk = %id, from = *known, to = meta.len(), "disk grown in place");
        }
    }
    Ok(())
}

impl VmDriver {
    pub fn new(config: VmDriverConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            hypervisor: tokio::sync::OnceCell::new(),
            slots: StdMutex::new(HashMap::new()),
            image_missing_since: StdMutex::new(HashMap::new()),
            networks: None,
            shim_binary: std::env::current_exe().unwrap_or_else(|_| "zos-executor".into()),
            box_secret: None,
        }
    }

    /// Lets the driver open environment values sealed to this node.
    pub fn with_box_secret(mut self, secret: [u8; 32]) -> Self {
        self.box_secret = Some(zeroize::Zeroizing::new(secret));
        self
    }

    /// The registry of VM users, when this process may hand them out (only root can make
    /// QEMU drop to another uid).
    fn own_users(&self) -> Option<zos_vm::UserRegistry> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        self.config.vm_users.clone().filter(|_| root)
    }

    /// Gives VMs network cards on these private networks.
    pub fn with_networks(mut self, networks: Arc<NodeNetworks>) -> Self {
        self.networks = Some(networks);
        self
    }

    /// The public card `w` should have now, if any.
    fn public_nic(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<Option<NicConfig>> {
        match &self.networks {
            Some(networks) => public_card(ctx, w, vm_spec(w)?, networks),
            None => Ok(None),
        }
    }

    /// The overlay address `w` should have now, if it asks for one.
    fn overlay_address(
        &self,
        ctx: &WorkloadCtx,
        w: &Workload,
    ) -> DriverResult<Option<std::net::Ipv6Addr>> {
        let overlay = self.networks.as_ref().and_then(|n| n.overlay.as_ref());
        match (vm_spec(w)?.overlay, overlay) {
            (true, Some(overlay)) => Ok(Some(spec::overlay_address(overlay, ctx.contract, w))),
            _ => Ok(None),
        }
    }

    /// Puts a tap per network attachment of `w` on its network's bridge (before the guest starts,
    /// so its first packet has somewhere to go).
    async fn attach_taps(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        let vm = vm_spec(w)?;
        let Some(networks) = &self.networks else {
            return Ok(());
        };
        for a in vm.networks.iter() {
            let (tap, _) =
                networks
                    .naming
                    .card(ctx.contract, w.name.as_bytes(), a.network.as_bytes());
            let net = networks
                .naming
                .network_id(ctx.contract, a.network.as_bytes());
            networks.attach_tap(&net, &tap, None).await.map_err(|e| {
                if let Some(NetError::UnknownNetwork(_)) = e.downcast_ref::<NetError>() {
                    // The network workload installs first; retry until it exists.
                    transient(e.context(format!(
                        "network '{}' is not up yet",
                        String::from_utf8_lossy(a.network.as_bytes())
                    )))
                } else {
                    transient(e)
                }
            })?;
        }
        if let (Some(card), Some(overlay)) = (
            spec::overlay_card(ctx, w, vm, networks)?,
            networks.overlay.as_ref(),
        ) {
            let (tap, _) = networks.overlay_card(ctx.contract, w.name.as_bytes());
            let address = card
                .address6
                .map(|(ip, _)| ip)
                .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            networks
                .attach_overlay_tap(&overlay.netns, &tap, card.mac, address, None)
                .await
                .map_err(|e| transient(e.context("attaching the overlay card")))?;
        }
        if let (Some(card), Some(bridge)) = (
            public_card(ctx, w, vm, networks)?,
            networks.public_bridge.as_deref(),
        ) {
            let (tap, _) = networks.public_card(ctx.contract, w.name.as_bytes());
            let rules = zos_net::public::PublicCard {
                mac: card.mac,
                ipv4: card.address.map(|(ip, _)| ip),
                ipv6: card.address6.map(|(ip, _)| ip),
            };
            networks
                .attach_public_tap(bridge, &tap, &rules, None)
                .await
                .map_err(|e| match e.downcast_ref::<NetError>() {
                    Some(NetError::NoPublicBridge(_)) => DriverError::permanent(e.to_string()),
                    _ => transient(e),
                })?;
        }
        Ok(())
    }

    /// Deletes the taps of `w` (fine when gone).
    async fn remove_taps(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        let (Some(networks), Ok(vm)) = (&self.networks, vm_spec(w)) else {
            return Ok(());
        };
        for a in vm.networks.iter() {
            let (tap, _) =
                networks
                    .naming
                    .card(ctx.contract, w.name.as_bytes(), a.network.as_bytes());
            networks.remove_tap(&tap).await.map_err(transient)?;
        }
        if vm.public_ip.is_some() {
            let (tap, _) = networks.public_card(ctx.contract, w.name.as_bytes());
            networks
                .detach_public(&networks.tap_name(&tap))
                .await
                .map_err(transient)?;
        }
        if let (true, Some(overlay)) = (vm.overlay, networks.overlay.as_ref()) {
            let (tap, _) = networks.overlay_card(ctx.contract, w.name.as_bytes());
            let address = spec::overlay_address(overlay, ctx.contract, w);
            networks
                .detach_overlay_tap(&overlay.netns, &networks.tap_name(&tap), address)
                .await
                .map_err(transient)?;
        }
        Ok(())
    }

    fn slot(&self, ctx: &WorkloadCtx, w: &Workload) -> Arc<Mutex<Option<Installed>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((ctx.contract, w.name.as_bytes().to_vec()))
            .or_default()
            .clone()
    }

    fn forget(&self, ctx: &WorkloadCtx, w: &Workload) {
        let key = (ctx.contract, w.name.as_bytes().to_vec());
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.image_missing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Restarts an installed VM's guest in place (same image, disks and cards). Holds the
    /// VM's slot: no update, pause or repair runs across it.
    pub async fn restart(&self, ctx: &WorkloadCtx, w: &Workload) -> anyhow::Result<()> {
        let slot = self.slot(ctx, w);
        let mut slot = slot.lock().await;
        if slot.is_none() {
            *slot = self.adopt(ctx, w).await;
        }
        let inst = slot
            .as_ref()
            .ok_or_else(|| anyhow!("VM {} is not installed", name_str(w)))?;
        if inst.label.workload != *w {
            bail!("the installed VM was made from another spec");
        }
        // Shorter than the silence the driver tolerates from a shim: a long grace must not
        // get the VM declared dead in the middle of its restart.
        let grace = self.config.stop_grace.min(RESTART_GRACE_MAX);
        inst.shim
            .restart(grace)
            .await
            .context("restarting the guest")
    }

    /// The shim of an installed (or adoptable) VM.
    async fn installed_shim(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<ShimClient> {
        let slot = self.slot(ctx, w);
        let mut slot = slot.lock().await;
        if slot.is_none() {
            *slot = self.adopt(ctx, w).await;
        }
        slot.as_ref()
            .map(|inst| inst.shim.clone())
            .ok_or_else(|| transient(anyhow!("VM {} is not installed", name_str(w))))
    }

    /// QEMU with the guest assets (kernel fetch, initramfs build) and the accelerator (KVM
    /// probe), prepared on first use: they take a while and nodes without VMs never need them.
    /// Guests always run on QEMU; cloud-hypervisor stays a zos-vm backend the executor does not
    /// choose (it is not tested with real guests here).
    async fn hypervisor(&self) -> DriverResult<(Arc<Qemu>, GuestAssets, Accel)> {
        let qemu = self
            .hypervisor
            .get_or_try_init(|| async {
                let cache = self.config.guest_cache.clone();
                let pin = self.config.kernel_pin.clone();
                let assets = tokio::task::spawn_blocking(move || {
                    GuestAssets::prepare_pinned(cache.as_deref(), pin.as_deref())
                })
                .await
                .map_err(|e| transient(e.into()))?
                .context("preparing the guest kernel and initramfs")
                .map_err(transient)?;
                info!(kernel = %assets.kernel_version, kernel_blake3 = %assets.kernel_blake3, "guest assets ready");
                let mut opts = zos_vm::QemuOptions::new(assets);
                opts.accel = zos_vm::AccelChoice::from_env().map_err(transient)?;
                Ok::<_, DriverError>(Arc::new(Qemu::new(opts)))
            })
            .await?
            .clone();
        let accel = qemu.accel().await.map_err(transient)?;
        let assets = qemu.options().assets.clone();
        Ok((qemu, assets, accel))
    }
}

/// The VM's directory as an absolute path (shims and QEMU get it on their command lines).
fn absolute_vm_dir(ctx: &WorkloadCtx, w: &Workload) -> DriverResult<PathBuf> {
    std::path::absolute(vm_dir(ctx, w))
        .with_context(|| format!("resolving {}", vm_dir(ctx, w).display()))
        .map_err(transient)
}

/// Creates `dir`, readable by its owner (root) only: not by the VM's own user either, which
/// QEMU drops to only after it has opened the VM's files.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Writes `bytes` to `path` readable by its owner only, creating `dir` (0700) first.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    create_private_dir(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, bytes)?;
    Ok(())
}

#[async_trait]
impl Driver for VmDriver {
    fn kind(&self) -> &'static str {
        "vm"
    }

    async fn install(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let slot = self.slot(ctx, workload);
        let mut slot = slot.lock().await;
        let key = (ctx.contract, workload.name.as_bytes().to_vec());
        match self.install_locked(ctx, workload, &mut slot).await {
            Err(DriverError::Transient(e)) if e.is::<ImageMissing>() => {
                let since = *self
                    .image_missing_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key)
                    .or_insert_with(std::time::Instant::now);
                Err(classify_missing(e, since.elapsed()))
            }
            other => {
                self.image_missing_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                other
            }
        }
    }

    /// Any change of the VM itself needs a new guest (its configuration is read at boot):
    /// stop, re-create, start. Grown disks are separate workloads (grown in place by the disk
    /// driver); a running guest is told their new size by the next `inspect`.
    async fn update(&self, ctx: &WorkloadCtx, old: &Workload, new: &Workload) -> DriverResult<()> {
        let slot = self.slot(ctx, new);
        let mut slot = slot.lock().await;
        if old != new {
            self.teardown(ctx, old, &mut slot).await?;
        }
        self.install_locked(ctx, new, &mut slot).await
    }

    async fn remove(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let slot = self.slot(ctx, workload);
        let mut guard = slot.lock().await;
        self.teardown(ctx, workload, &mut guard).await?;
        drop(guard);
        self.forget(ctx, workload);
        Ok(())
    }

    async fn pause(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let shim = self.installed_shim(ctx, workload).await?;
        shim.pause()
            .await
            .map_err(|e| transient(e.context("pausing the guest")))
    }

    async fn resume(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let shim = self.installed_shim(ctx, workload).await?;
        shim.resume()
            .await
            .map_err(|e| transient(e.context("resuming the guest")))
    }

    async fn inspect(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Observed> {
        let slot = self.slot(ctx, workload);
        let mut slot = slot.lock().await;
        if slot.is_none() {
            *slot = self.adopt(ctx, workload).await;
        }
        let Some(inst) = slot.as_mut() else {
            return Ok(Observed::Missing);
        };
        if inst.label.workload != *workload {
            return Ok(Observed::Broken(
                "the installed VM was made from another spec".into(),
            ));
        }
        // Only a context that knows the contract's public addresses can tell (an uptime
        // check does not carry them): then a public card that differs means re-create.
        if let Ok(card) = self.public_nic(ctx, workload) {
            if card != inst.label.public_nic {
                return Ok(Observed::Broken(
                    "the VM's public address changed (reassigned by the chain)".into(),
                ));
            }
        }
        if self.overlay_address(ctx, workload).ok() != Some(inst.label.overlay_address) {
            return Ok(Observed::Broken(
                "the VM's overlay address changed (the node's overlay key changed)".into(),
            ));
        }
        let status = match inst.shim.status().await {
            Ok(status) => {
                inst.silent_since = None;
                status
            }
            Err(e) if inst.shim.running_pid().is_some() && !silent_too_long(inst) => {
                // Presumed running as last seen, without retries that would hold up the pass.
                warn!(workload = %name_str(workload), contract = ctx.contract, error = %format!("{e:#}"), "the VM's shim is slow to answer; asked again next pass");
                return Ok(Observed::Running);
            }
            Err(e) => {
                // Gone or hung: the next install cleans up and starts the guest anew.
                warn!(workload = %name_str(workload), contract = ctx.contract, error = %format!("{e:#}"), "the VM's shim does not answer");
                *slot = None;
                return Ok(Observed::Broken(format!(
                    "the VM's shim does not answer: {e:#}"
                )));
            }
        };
        let new_crashes = status.crashes.saturating_sub(inst.crashes_seen);
        if new_crashes > 0 {
            self.metrics.vm_crashes.inc_by(u64::from(new_crashes));
            warn!(workload = %name_str(workload), contract = ctx.contract, crashes = status.crashes, "guest crashed and was restarted");
        }
        inst.crashes_seen = status.crashes;
        if let Some(reason) = status.looping {
            // Restarting it again would hide the failure: the deployer needs to fix the spec.
            return Err(DriverError::Permanent(reason));
        }
        Ok(match status.state {
            VmState::Running => {
                propagate_disk_growth(&inst.shim, &status.disks).await?;
                Observed::Running
            }
            VmState::Paused => Observed::Paused,
            VmState::Restarting {
                last_error,
                restarts,
            } => Observed::Broken(format!(
                "guest failed ({restarts} restarts so far): {last_error}"
            )),
            VmState::Created => Observed::Broken("guest created but not started".into()),
            VmState::Stopped => Observed::Broken("guest is stopped".into()),
            VmState::PoweredOff => Observed::Broken("guest powered off".into()),
        })
    }

    async fn usage(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Usage> {
        let Ok(shim) = self.installed_shim(ctx, workload).await else {
            return Ok(Usage::default());
        };
        let u = shim
            .usage()
            .await
            .map_err(|e| transient(e.context("metering the guest")))?;
        // Disk files are metered by the disk driver (and public traffic by `public_traffic`);
        // counting them here too would bill twice.
        Ok(Usage {
            cpu_time_ms: u.cpu_time_ms,
            memory_bytes: u.memory_bytes,
            ..Default::default()
        })
    }

    async fn public_traffic(&self, ctx: &WorkloadCtx, w: &Workload) -> Vec<(Vec<u8>, CardReading)> {
        let (Some(networks), Ok(vm)) = (&self.networks, vm_spec(w)) else {
            return Vec::new();
        };
        if vm.public_ip.is_none() {
            return Vec::new();
        }
        let (tap, _) = networks.public_card(ctx.contract, w.name.as_bytes());
        let card = networks.tap_name(&tap);
        let reading = match networks.public_traffic_if_present(&card).await {
            Ok(Some(t)) => CardReading::Counted {
                bytes_in: t.bytes_in,
                bytes_out: t.bytes_out,
            },
            Ok(None) => CardReading::Absent,
            Err(e) => {
                warn!(card, error = %format!("{e:#}"), "reading a public card's counters failed");
                CardReading::Unreadable
            }
        };
        vec![(card.into_bytes(), reading)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{
        image::{image_stores, open_source, IMAGE_MISSING_GRACE},
        spec::{vm_name, MAX_VM_NAME},
    };

    fn vm_workload(name: &str) -> Workload {
        serde_json::from_str(&format!(
            r#"{{"name":"{name}","kind":{{"vm":{{"image":{{"root_hash":"{}","source":"/nonexistent-store"}},"vcpus":1,"memory_mib":256,"rootfs_mib":256,"mounts":[{{"workload":"data","path":"/data"}}]}}}}}}"#,
            "11".repeat(32)
        ))
        .unwrap()
    }

    #[test]
    fn vm_names_fit_zos_vm_limits() {
        let short = vm_name(7, &vm_workload("web"));
        assert_eq!(short, "c7-web");
        let long_name = "a".repeat(36);
        let long = vm_name(u64::MAX, &vm_workload(&long_name));
        assert!(long.len() <= MAX_VM_NAME, "{long}");
        assert_ne!(long, vm_name(u64::MAX - 1, &vm_workload(&long_name)));
    }

    #[test]
    fn missing_disk_and_bad_source_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let w = vm_workload("web");
        let ctx = WorkloadCtx {
            contract: 1,
            dir: dir.path().into(),
            capacity_dirs: Vec::new(),
            spec: Arc::new(
                serde_json::from_value(serde_json::json!({"version": 0, "workloads": [w]}))
                    .unwrap(),
            ),
            public_ips: vec![],
            node_ipv6: None,
            node_domain: None,
            node_addresses: vec![],
            owner: None,
        };
        match spec::vm_config(&ctx, &w, dir.path().join("rootfs"), None, None) {
            Err(DriverError::Permanent(reason)) => assert!(reason.contains("no disk"), "{reason}"),
            other => panic!(
                "expected a permanent error, got {:?}",
                other.map(|c| c.name)
            ),
        }
        std::fs::create_dir_all(dir.path().join("disks")).unwrap();
        std::fs::write(dir.path().join("disks/data.raw"), b"").unwrap();
        let cfg = spec::vm_config(&ctx, &w, dir.path().join("rootfs"), None, None).unwrap();
        assert_eq!(cfg.disks[0].id, "data");
        assert_eq!(cfg.disks[0].mount.as_deref(), Some("/data"));
        let anywhere = ImageSourcePolicy {
            allowed: vec!["/".into()],
            overlay_hub: None,
        };
        assert!(matches!(
            open_source("relative/store", &anywhere),
            Err(DriverError::Permanent(_))
        ));
        assert!(matches!(
            open_source("/nonexistent-store", &anywhere),
            Err(DriverError::Permanent(_))
        ));
    }

    /// A missing image (its hub answers 404) may just not be pushed yet: retried, and only
    /// permanent once it stayed missing for the grace period.
    #[test]
    fn a_missing_image_is_retried_for_a_while_then_fails() {
        let missing = || anyhow!(ImageMissing("image 11.. is not on http://hub".into()));
        assert!(matches!(
            classify_missing(missing(), Duration::from_secs(30)),
            DriverError::Transient(_)
        ));
        match classify_missing(missing(), IMAGE_MISSING_GRACE) {
            DriverError::Permanent(reason) => {
                assert!(
                    reason.contains("is not on") && reason.contains("still missing"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    /// Specs are untrusted: by default they may name hubs only, never a path on the node.
    #[test]
    fn image_sources_follow_the_node_policy() {
        let default = ImageSourcePolicy::default();
        assert!(default.check("https://hub.example/").is_ok());
        assert!(default.check("http://127.0.0.1:8420").is_ok());
        for refused in [
            "/",
            "/etc",
            "/var/lib/zos/contracts/7",
            "file:///etc",
            "ftp://x",
        ] {
            let reason = default.check(refused).unwrap_err();
            assert!(reason.contains("not an http(s) hub URL"), "{reason}");
        }
        // A directory store on the node would otherwise be readable by any spec.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::create_dir_all(dir.path().join("chunks")).unwrap();
        let path = dir.path().to_str().unwrap();
        assert!(matches!(
            open_source(path, &default),
            Err(DriverError::Permanent(reason)) if reason.contains("hub URL")
        ));
        let narrow = ImageSourcePolicy {
            allowed: vec!["https://hub.example/".into(), path.into()],
            overlay_hub: None,
        };
        assert!(narrow.check("https://hub.example/").is_ok());
        assert!(narrow.check("https://hub.example.evil/").is_err());
        assert!(narrow.check("http://127.0.0.1:8420").is_err());
        assert!(narrow.check(path).is_ok());
        assert!(narrow.check(&format!("{path}2")).is_err());
        assert!(narrow.check(&format!("{path}/../other")).is_err());
        assert!(narrow.check("https://hub.example/%2e%2e/x").is_err());
        assert!(narrow.check("https://hub.example/a\\..\\b").is_err());
        assert!(open_source(path, &narrow).is_ok());
    }

    /// The node's overlay hub is asked first, and never widens what a spec may name.
    #[test]
    fn the_overlay_hub_comes_before_the_spec_source() {
        let policy = ImageSourcePolicy {
            allowed: vec!["https://hub.example/".into()],
            overlay_hub: Some("http://127.0.0.1:7700".into()),
        };
        let stores = image_stores("https://hub.example/", &policy).unwrap();
        let described: Vec<String> = stores.iter().map(|s| s.describe()).collect();
        assert_eq!(described.len(), 2, "{described:?}");
        assert!(described[0].contains("127.0.0.1:7700"), "{described:?}");
        assert!(described[1].contains("hub.example"), "{described:?}");
        assert!(matches!(
            image_stores("https://other.example/", &policy),
            Err(DriverError::Permanent(_))
        ));
        let without = ImageSourcePolicy::default();
        assert_eq!(
            image_stores("https://hub.example/", &without)
                .unwrap()
                .len(),
            1
        );
    }
}
