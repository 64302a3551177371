//! VM driver: a `Vm` workload becomes a supervised guest (zos-vm) booting the spec's image in
//! container mode.
//!
//! Install: the image index is fetched from `image.source` (an `http(s)://` hub or an absolute
//! path to a directory store) and must hash to `image.root_hash` (anything else is refused for
//! good). It is mounted read-only with zos-image's verifying FUSE mount at
//! `<contract dir>/vms/<name>/rootfs`, and the guest boots over it (virtio-fs, tmpfs overlay of
//! `rootfs_mib`), with the spec's `Disk` mounts attached as virtio-blk devices, its env,
//! entrypoint and SSH keys delivered through zos-vm's configuration channel.
//!
//! A VM is a service: when its entrypoint exits the guest is started again with backoff, like
//! a crash. Crashes are logged as warnings and counted in `zos_executor_vm_crashes`; while a
//! guest waits to restart, `inspect` reports it `Broken` with the last error.
//!
//! State kept per workload: the `Vm` handle, the image mount and an event forwarder. After an
//! executor restart nothing is kept: `inspect` says `Missing`, `install` mounts again (a dead
//! mount left by the old process is detached) and starts the guest (zos-vm kills a QEMU left by
//! the old process first).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use tokio::{sync::Mutex, task::JoinHandle};
use tracing::{info, warn};
use zos_image::{
    cache::ChunkCache,
    fetch::Fetcher,
    image::{open_image, Trust},
    mount::{MountHandle, MountOptions},
    store::{DirStore, HttpStore, Store},
};
use zos_net::NetError;
use zos_primitives::{
    spec::{DiskSpec, VmSpec, Workload, WorkloadKind},
    ContractId,
};
use zos_vm::{
    BootMode, DiskAttachment, GuestAssets, GuestConfig, Hypervisor, NicConfig, RestartPolicy, Vm,
    VmConfig, VmEvent, VmOptions, VmState, WritableLayer,
};

use super::{
    disk::disk_path, network::NodeNetworks, CardReading, Driver, DriverError, DriverResult,
    Observed, Usage, WorkloadCtx,
};
use crate::metrics::Metrics;

/// Chunk cache bound per VM (HTTP sources only; a directory store is local already).
const IMAGE_CACHE_BYTES: u64 = 1 << 30;
/// zos-vm's limit on VM names.
const MAX_VM_NAME: usize = 48;

/// Settings of the VM driver.
#[derive(Clone, Debug, Default)]
pub struct VmDriverConfig {
    /// Guest kernel and initramfs cache; `None`: `$ZOS_GUEST_CACHE`, else
    /// `${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest`.
    pub guest_cache: Option<PathBuf>,
    /// Where images may come from.
    pub image_sources: ImageSourcePolicy,
}

/// The node's policy on image sources named by specs. A spec is a stranger's input: by default
/// it may name any http(s) hub and nothing else (never a path on this host); a farmer can
/// narrow that to a list of allowed prefixes (`https://hub.example/`), which is also the only
/// way to let specs use a directory store on the node (`/srv/hub`).
#[derive(Clone, Debug, Default)]
pub struct ImageSourcePolicy {
    /// Allowed source prefixes; empty: any `http://` or `https://` URL.
    pub allowed: Vec<String>,
}

impl ImageSourcePolicy {
    /// Why `source` is refused, if it is.
    pub fn check(&self, source: &str) -> Result<(), String> {
        // Nothing that a URL parser or a path resolver could turn into another location.
        if source.contains("..")
            || source.contains('%')
            || source.contains('\\')
            || source.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "image source {source:?} contains '..', '%', a backslash or whitespace: refused"
            ));
        }
        let is_url = source.starts_with("http://") || source.starts_with("https://");
        if self.allowed.is_empty() {
            return if is_url {
                Ok(())
            } else {
                Err(format!(
                    "image source {source:?} is not an http(s) hub URL (this node takes images from hubs only)"
                ))
            };
        }
        let allowed = self.allowed.iter().any(|prefix| {
            // A prefix matches at a path boundary only: "/srv/hub" does not allow "/srv/hub2".
            source == prefix.trim_end_matches('/')
                || source.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || source[prefix.len()..].starts_with('/'))
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "image source {source:?} is not allowed by this node's policy (allowed: {})",
                self.allowed.join(", ")
            ))
        }
    }
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

/// How long a missing image (404 from its hub) is retried before the deployment fails: a
/// deployer may approve a contract before the image push has finished.
const IMAGE_MISSING_GRACE: Duration = Duration::from_secs(600);

/// The image's hub does not have it (yet).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ImageMissing(String);

/// Classifies a missing image by how long it has been missing: transient within the grace,
/// permanent after it.
fn classify_missing(error: anyhow::Error, missing_for: Duration) -> DriverError {
    if missing_for >= IMAGE_MISSING_GRACE {
        DriverError::permanent(format!(
            "{error:#} (still missing after {} s)",
            missing_for.as_secs()
        ))
    } else {
        DriverError::Transient(error)
    }
}

/// Crashes in a row, each soon after its start, that make a guest crash-looping: reported as
/// failed instead of restarted for ever while counted healthy.
const CRASH_LOOP_LIMIT: u32 = 5;
/// A guest that ran this long before crashing starts a new count (zos-vm's `stable_after`).
const STABLE_RUN: Duration = Duration::from_secs(600);

/// Consecutive crashes of one guest, from its events.
#[derive(Debug, Default)]
struct CrashCount {
    started: Option<std::time::Instant>,
    in_a_row: u32,
    last_reason: String,
}

impl CrashCount {
    fn started(&mut self, at: std::time::Instant) {
        self.started = Some(at);
    }

    fn crashed(&mut self, at: std::time::Instant, reason: &str) {
        let stable = self
            .started
            .is_some_and(|s| at.saturating_duration_since(s) >= STABLE_RUN);
        self.in_a_row = if stable { 1 } else { self.in_a_row + 1 };
        self.last_reason = reason.to_string();
    }

    /// Why the guest counts as crash-looping, if it does.
    fn looping(&self) -> Option<String> {
        (self.in_a_row >= CRASH_LOOP_LIMIT).then(|| {
            format!(
                "guest is crash-looping: {} crashes in a row, each within {} s of starting; last: {}",
                self.in_a_row,
                STABLE_RUN.as_secs(),
                self.last_reason
            )
        })
    }
}

/// What the driver keeps for one installed VM.
struct Installed {
    /// The workload as installed: a different one means re-create.
    workload: Workload,
    vm: Vm,
    mount: Option<MountHandle>,
    events: JoinHandle<()>,
    crashes: Arc<StdMutex<CrashCount>>,
    /// Size of each attached disk file as the guest knows it: (id, file, bytes).
    disk_sizes: Vec<(String, PathBuf, u64)>,
    /// The public card as resolved at install: a public address the chain reassigned (an
    /// update of the contract) or a changed node subnet means a new guest, never a card that
    /// keeps an address another contract now holds.
    public_nic: Option<NicConfig>,
}

pub struct VmDriver {
    config: VmDriverConfig,
    metrics: Arc<Metrics>,
    hypervisor: tokio::sync::OnceCell<Arc<dyn Hypervisor>>,
    /// One slot per workload so calls on different VMs do not wait for each other.
    slots: StdMutex<HashMap<Key, Arc<Mutex<Option<Installed>>>>>,
    /// When each workload's image was first found missing from its hub.
    image_missing_since: StdMutex<HashMap<Key, std::time::Instant>>,
    /// Private networks for the VMs' cards; `None`: cards are refused.
    networks: Option<Arc<NodeNetworks>>,
}

fn name_str(w: &Workload) -> String {
    String::from_utf8_lossy(w.name.as_bytes()).into_owned()
}

fn vm_spec(w: &Workload) -> DriverResult<&VmSpec> {
    match &w.kind {
        WorkloadKind::Vm(vm) => Ok(vm),
        _ => Err(DriverError::permanent("not a vm workload")),
    }
}

/// `<contract dir>/vms/<name>`: the VM's files (console log, sockets) and its image mount.
pub fn vm_dir(ctx: &WorkloadCtx, w: &Workload) -> PathBuf {
    ctx.dir.join("vms").join(name_str(w))
}

fn rootfs_dir(ctx: &WorkloadCtx, w: &Workload) -> PathBuf {
    vm_dir(ctx, w).join("rootfs")
}

/// Unique on the node, `[a-z0-9_-]{1,48}`: `c<contract>-<workload>`, shortened with a hash
/// suffix when too long.
fn vm_name(contract: ContractId, w: &Workload) -> String {
    let full = format!("c{contract}-{}", name_str(w));
    if full.len() <= MAX_VM_NAME {
        return full;
    }
    let tag = &zos_image::Hash::of(full.as_bytes()).to_hex()[..8];
    format!("{}-{tag}", &full[..MAX_VM_NAME - 9])
}

/// The VM's cards: a public card first when it names a public IP (carrying the default route
/// via the farm's gateway), then one per network attachment with an address in the node's /24
/// of that network and routes via the network's gateway `.1` for the network's range and its
/// peers' addresses outside it (laptops); without a public card the first of these carries
/// the default route instead.
fn nics(
    ctx: &WorkloadCtx,
    w: &Workload,
    vm: &VmSpec,
    networks: Option<&NodeNetworks>,
) -> DriverResult<Vec<NicConfig>> {
    if vm.networks.is_empty() && vm.public_ip.is_none() {
        return Ok(vec![]);
    }
    let networks = networks.ok_or_else(|| {
        DriverError::permanent("this node serves no networks: network cards are refused")
    })?;
    let mut cards = Vec::new();
    if let Some(public) = public_card(ctx, w, vm, networks)? {
        cards.push(public);
    }
    for a in vm.networks.iter() {
        let (tap, mac) =
            networks
                .naming
                .card(ctx.contract, w.name.as_bytes(), a.network.as_bytes());
        let [x, y, z, _] = a.ip;
        let gateway = std::net::Ipv4Addr::new(x, y, z, 1);
        let mut routes = Vec::new();
        if let Some(net) = ctx.spec.workload(&a.network).and_then(Workload::as_network) {
            let range = net.ip_range;
            routes.push((range.network().into(), range.prefix_len, gateway));
            for peer in net.peers.iter() {
                for allowed in peer.allowed_ips.iter() {
                    let outside = !range.overlaps(allowed) && !allowed.overlaps(&net.subnet);
                    let route = (allowed.network().into(), allowed.prefix_len, gateway);
                    if outside && !routes.contains(&route) {
                        routes.push(route);
                    }
                }
            }
        }
        let default_here = !cards.iter().any(|c| c.gateway.is_some());
        cards.push(NicConfig {
            tap: networks.tap_name(&tap),
            mac,
            address: Some((std::net::Ipv4Addr::from(a.ip), 24)),
            // Without a public IPv4, the private network carries the IPv4 default route.
            gateway: default_here.then_some(gateway),
            routes: if default_here { vec![] } else { routes },
            address6: None,
            gateway6: None,
        });
    }
    Ok(cards)
}

/// The card on the farmer's public bridge of a VM that names a public IP: the farm IPv4 the
/// chain assigned and/or the IPv6 derived from the node's subnet, as the public IP asks.
fn public_card(
    ctx: &WorkloadCtx,
    w: &Workload,
    vm: &VmSpec,
    networks: &NodeNetworks,
) -> DriverResult<Option<NicConfig>> {
    let Some(name) = &vm.public_ip else {
        return Ok(None);
    };
    let shown = String::from_utf8_lossy(name.as_bytes());
    let Some(WorkloadKind::PublicIp(wanted)) = ctx.spec.workload(name).map(|p| &p.kind) else {
        return Err(DriverError::permanent(format!(
            "public IP '{shown}': no public IP workload of that name"
        )));
    };
    let v4 = match wanted.v4 {
        true => Some(ctx.public_ipv4(name).ok_or_else(|| {
            DriverError::permanent(format!(
                "public IP '{shown}': the chain assigned it no farm IPv4"
            ))
        })?),
        false => None,
    };
    let v6 = match wanted.v6 {
        true => Some(ctx.public_ipv6(name).ok_or_else(|| {
            DriverError::permanent(format!(
                "public IP '{shown}': this node has no public IPv6 subnet (/64 or wider) to give addresses from"
            ))
        })?),
        false => None,
    };
    let (tap, mac) = networks.public_card(ctx.contract, w.name.as_bytes());
    Ok(Some(NicConfig {
        tap: networks.tap_name(&tap),
        mac,
        address: v4.map(|ip| (ip.ip.ip.into(), ip.ip.prefix_len)),
        gateway: v4.map(|ip| ip.gateway.into()),
        routes: vec![],
        address6: v6.map(|(ip, len, _)| (ip, len)),
        gateway6: v6.map(|(_, _, gw)| gw),
    }))
}

fn transient(e: anyhow::Error) -> DriverError {
    DriverError::Transient(e)
}

/// Detaches a FUSE mount whose server died with an earlier executor process (ENOTCONN).
fn detach_dead_mount(path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            warn!(path = %path.display(), "detaching a dead image mount left by an earlier run");
            if let Err(e) = zos_image::overlay::unmount_detach(path) {
                warn!(path = %path.display(), error = %e, "detaching the dead mount failed");
            }
        }
    }
}

/// The store named by `source`: a hub URL or an existing directory store, if the node's policy
/// allows it.
fn open_source(source: &str, policy: &ImageSourcePolicy) -> DriverResult<Arc<dyn Store>> {
    policy.check(source).map_err(DriverError::Permanent)?;
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Arc::new(HttpStore::new(source, None)));
    }
    let path = Path::new(source);
    if !path.is_absolute() {
        return Err(DriverError::permanent(format!(
            "image source {source:?} is neither an http(s) hub URL nor an absolute directory store path"
        )));
    }
    if !path.join("images").is_dir() || !path.join("chunks").is_dir() {
        return Err(DriverError::permanent(format!(
            "image source {source}: not a directory store on this node (no images/ and chunks/)"
        )));
    }
    let store = DirStore::open(path)
        .map_err(|e| transient(anyhow!(e).context(format!("opening store {source}"))))?;
    Ok(Arc::new(store))
}

/// Fetches and checks the index, then mounts it read-only at `mountpoint`. Blocking.
fn mount_image(
    vm: &VmSpec,
    mountpoint: &Path,
    cache_dir: &Path,
    policy: &ImageSourcePolicy,
) -> DriverResult<MountHandle> {
    use zos_image::Error as E;
    let source = std::str::from_utf8(vm.image.source.as_bytes())
        .map_err(|_| DriverError::permanent("image source is not UTF-8"))?;
    let root = zos_image::Hash(vm.image.root_hash);
    let store = open_source(source, policy)?;
    let remote = source.starts_with("http");
    let sources = vec![store];
    let image = open_image(&sources, &root, &Trust::default()).map_err(|e| match e {
        // Perhaps not pushed yet: retried for a while before the deployment fails.
        E::ImageNotFound(_) => transient(anyhow!(ImageMissing(format!(
            "image {root} is not on {source}"
        )))),
        E::RootMismatch { .. } | E::Format(_) | E::Signature(_) => {
            DriverError::permanent(format!("image from {source} refused: {e}"))
        }
        other => transient(
            anyhow!(other).context(format!("fetching the index of image {root} from {source}")),
        ),
    })?;
    let cache = if remote {
        let (cache, _) = ChunkCache::open(cache_dir, IMAGE_CACHE_BYTES)
            .map_err(|e| transient(anyhow!(e).context("opening the image chunk cache")))?;
        Some(cache)
    } else {
        None
    };
    let fetcher = Arc::new(Fetcher::new(sources, cache));
    detach_dead_mount(mountpoint);
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))
        .map_err(transient)?;
    let opts = MountOptions {
        threads: 2,
        prefetch_workers: 4,
        ..Default::default()
    };
    let handle = zos_image::mount::mount(image.index, fetcher, mountpoint, &opts).map_err(|e| {
        transient(anyhow!(e).context(format!("mounting image {root} at {}", mountpoint.display())))
    })?;
    if !zos_image::mount::wait_until_mounted(mountpoint, Duration::from_secs(10)) {
        return Err(transient(anyhow!(
            "image mount at {} did not appear",
            mountpoint.display()
        )));
    }
    Ok(handle)
}

fn disk_sizes(vm: &Vm) -> Vec<(String, PathBuf, u64)> {
    vm.config()
        .disks
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.path.clone(),
                std::fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

/// Tells a running guest about disk files grown since it last looked (the disk driver grows
/// them in place on update; QEMU's `block_resize` makes the guest see the new capacity).
async fn propagate_disk_growth(inst: &mut Installed) -> DriverResult<()> {
    for (id, path, known) in inst.disk_sizes.iter_mut() {
        let Ok(meta) = tokio::fs::metadata(&*path).await else {
            continue;
        };
        if meta.len() > *known {
            inst.vm
                .resize_disk(id, meta.len())
                .await
                .map_err(|e| transient(e.context(format!("telling the guest disk {id} grew"))))?;
            info!(vm = %inst.vm.name(), disk = %id, from = *known, to = meta.len(), "disk grown in place");
            *known = meta.len();
        }
    }
    Ok(())
}

/// Unmounts off the async runtime (FUSE teardown blocks).
async fn unmount(handle: MountHandle) -> DriverResult<()> {
    tokio::task::spawn_blocking(move || handle.unmount())
        .await
        .map_err(|e| transient(e.into()))?
        .map_err(|e| transient(anyhow!(e).context("unmounting the image")))
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
        }
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

    /// The hypervisor, prepared on first use: guest assets (kernel fetch, initramfs build) and
    /// the backend choice (KVM probe) take a while and are not needed by nodes without VMs.
    async fn hypervisor(&self) -> DriverResult<Arc<dyn Hypervisor>> {
        self.hypervisor
            .get_or_try_init(|| async {
                let cache = self.config.guest_cache.clone();
                let assets =
                    tokio::task::spawn_blocking(move || GuestAssets::prepare(cache.as_deref()))
                        .await
                        .map_err(|e| transient(e.into()))?
                        .context("preparing the guest kernel and initramfs")
                        .map_err(transient)?;
                info!(kernel = %assets.kernel_version, "guest assets ready");
                let mut opts = zos_vm::QemuOptions::new(assets);
                opts.accel = zos_vm::AccelChoice::from_env().map_err(transient)?;
                Ok::<_, DriverError>(zos_vm::select_hypervisor(opts).await)
            })
            .await
            .cloned()
    }

    fn vm_options() -> VmOptions {
        VmOptions {
            restart: RestartPolicy {
                restart_on_poweroff: true,
                ..Default::default()
            },
            // The project's guest init has no ACPI handler: waiting for a power-down is useless.
            stop_grace: Duration::ZERO,
            ..Default::default()
        }
    }

    /// The zos-vm configuration of `w`; errors are permanent (the spec cannot run here).
    fn vm_config(
        ctx: &WorkloadCtx,
        w: &Workload,
        rootfs: PathBuf,
        networks: Option<&NodeNetworks>,
    ) -> DriverResult<VmConfig> {
        let vm = vm_spec(w)?;
        let nics = nics(ctx, w, vm, networks)?;
        let mut disks = Vec::new();
        for (i, m) in vm.mounts.iter().enumerate() {
            let target = Workload {
                name: m.workload.clone(),
                kind: WorkloadKind::Disk(DiskSpec { size_mib: 0 }),
            };
            let path = disk_path(ctx, &target);
            let target_name = name_str(&target);
            if !path.is_file() {
                return Err(DriverError::permanent(format!(
                    "mount {target_name}: no disk of that name on this node (only disks can be mounted; volumes are not supported yet)"
                )));
            }
            // The guest finds a disk by its virtio serial (at most 20 bytes).
            let id = if target_name.len() <= zos_vm::config::MAX_DISK_ID_LEN {
                target_name
            } else {
                format!("d{i}")
            };
            disks.push(DiskAttachment {
                id,
                path,
                mount: Some(String::from_utf8_lossy(m.path.as_bytes()).into_owned()),
                read_only: false,
            });
        }
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec())
                .map_err(|_| DriverError::permanent(format!("{what} is not UTF-8")))
        };
        let guest = GuestConfig {
            hostname: name_str(w).replace('_', "-"),
            env: vm
                .env
                .iter()
                .map(|e| {
                    Ok((
                        text(e.key.as_bytes(), "env key")?,
                        text(e.value.as_bytes(), "env value")?,
                    ))
                })
                .collect::<DriverResult<_>>()?,
            entrypoint: text(vm.entrypoint.as_bytes(), "entrypoint")?,
            ssh_keys: vm
                .ssh_keys
                .iter()
                .map(|k| text(k.as_bytes(), "ssh key"))
                .collect::<DriverResult<_>>()?,
        };
        let cfg = VmConfig {
            name: vm_name(ctx.contract, w),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            boot: BootMode::Container {
                rootfs_dir: rootfs,
                writable: WritableLayer::Tmpfs {
                    size_mib: vm.rootfs_mib,
                },
            },
            disks,
            nics,
            guest,
            // The taps live in the node's underlay namespace: the hypervisor opens them there.
            netns: networks.and_then(|n| n.underlay().map(Path::to_path_buf)),
        };
        cfg.validate()
            .map_err(|e| DriverError::permanent(format!("VM configuration refused: {e:#}")))?;
        Ok(cfg)
    }

    fn forward_events(
        &self,
        vm: &Vm,
        workload: String,
        contract: ContractId,
        crashes: Arc<StdMutex<CrashCount>>,
    ) -> JoinHandle<()> {
        let mut rx = vm.events();
        let metrics = self.metrics.clone();
        let count = move |f: &dyn Fn(&mut CrashCount)| {
            f(&mut crashes.lock().unwrap_or_else(|e| e.into_inner()))
        };
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(VmEvent::Crashed {
                        reason,
                        restarts,
                        restart_in,
                        ..
                    }) => {
                        metrics.vm_crashes.inc();
                        count(&|c| c.crashed(std::time::Instant::now(), &reason));
                        warn!(contract, %workload, %reason, restarts, ?restart_in, "guest crashed; restarting it");
                    }
                    Ok(VmEvent::RestartFailed {
                        error, retry_in, ..
                    }) => {
                        warn!(contract, %workload, %error, ?retry_in, "guest restart failed");
                    }
                    Ok(VmEvent::Started {
                        pid,
                        accel,
                        restarts,
                        ..
                    }) => {
                        count(&|c| c.started(std::time::Instant::now()));
                        info!(contract, %workload, pid, %accel, restarts, "guest started");
                    }
                    Ok(other) => tracing::debug!(contract, %workload, event = ?other, "vm event"),
                    Err(RecvError::Lagged(n)) => {
                        warn!(contract, %workload, missed = n, "vm events lagged")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }

    /// Stops the guest, unmounts its image and removes its directory.
    async fn teardown(
        &self,
        ctx: &WorkloadCtx,
        w: &Workload,
        slot: &mut Option<Installed>,
    ) -> DriverResult<()> {
        let dir = vm_dir(ctx, w);
        if let Some(inst) = slot.take() {
            inst.events.abort();
            if let Err(e) = inst.vm.stop().await {
                // Keep everything so the next call retries.
                let err = e.context(format!("stopping VM {}", inst.vm.name()));
                *slot = Some(Installed {
                    events: self.forward_events(
                        &inst.vm,
                        name_str(w),
                        ctx.contract,
                        inst.crashes.clone(),
                    ),
                    ..inst
                });
                return Err(transient(err));
            }
            if let Some(mount) = inst.mount {
                unmount(mount).await?;
            }
            inst.vm
                .delete()
                .await
                .map_err(|e| transient(e.context("deleting the VM")))?;
        } else if tokio::fs::try_exists(&dir).await.unwrap_or(true) {
            // Left by an earlier executor process: its QEMU may still run, its mount is dead.
            match self.hypervisor().await {
                Ok(hv) => {
                    if hv
                        .kill_stale(&zos_vm::VmLayout::new(&dir))
                        .await
                        .map_err(transient)?
                    {
                        info!(dir = %dir.display(), "killed a guest left by an earlier run");
                    }
                }
                Err(e) => warn!(error = %e, "cannot check for a guest left by an earlier run"),
            }
            let rootfs = rootfs_dir(ctx, w);
            tokio::task::spawn_blocking(move || detach_dead_mount(&rootfs))
                .await
                .map_err(|e| transient(e.into()))?;
        }
        self.remove_taps(ctx, w).await?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(transient(
                anyhow::Error::new(e).context(format!("removing {}", dir.display())),
            )),
        }
    }

    async fn install_locked(
        &self,
        ctx: &WorkloadCtx,
        w: &Workload,
        slot: &mut Option<Installed>,
    ) -> DriverResult<()> {
        if let Some(inst) = slot.as_ref() {
            let public_now = self.public_nic(ctx, w)?;
            if inst.workload == *w && inst.public_nic == public_now {
                return match inst.vm.state().await {
                    VmState::Running | VmState::Paused | VmState::Restarting { .. } => Ok(()),
                    _ => inst
                        .vm
                        .start()
                        .await
                        .map_err(|e| transient(e.context("starting the guest again"))),
                };
            }
            info!(workload = %name_str(w), "installed VM differs from the spec: re-creating it");
            self.teardown(ctx, w, slot).await?;
        }
        let vm_spec = vm_spec(w)?.clone();
        let dir = std::path::absolute(vm_dir(ctx, w))
            .with_context(|| format!("resolving {}", vm_dir(ctx, w).display()))
            .map_err(transient)?;
        let rootfs = dir.join("rootfs");
        // Everything about the spec is checked before anything is fetched or mounted.
        let cfg = Self::vm_config(ctx, w, rootfs.clone(), self.networks.as_deref())?;
        let hv = self.hypervisor().await?;
        self.attach_taps(ctx, w).await?;
        let started = std::time::Instant::now();
        let cache_dir = dir.join("image-cache");
        let mount = {
            let rootfs = rootfs.clone();
            let policy = self.config.image_sources.clone();
            tokio::task::spawn_blocking(move || mount_image(&vm_spec, &rootfs, &cache_dir, &policy))
                .await
                .map_err(|e| transient(e.into()))??
        };
        let mounted = started.elapsed();
        let vm = match Vm::create(hv, &dir, cfg, Self::vm_options()).await {
            Ok(vm) => vm,
            Err(e) => {
                unmount(mount).await?;
                return Err(transient(e.context("creating the VM")));
            }
        };
        let crashes = Arc::new(StdMutex::new(CrashCount::default()));
        let events = self.forward_events(&vm, name_str(w), ctx.contract, crashes.clone());
        if let Err(e) = vm.start().await {
            events.abort();
            unmount(mount).await?;
            return Err(transient(e.context("starting the guest")));
        }
        info!(workload = %name_str(w), vm = %vm.name(), ?mounted, total = ?started.elapsed(), "VM installed");
        let disk_sizes = disk_sizes(&vm);
        let public_nic = self.public_nic(ctx, w)?;
        *slot = Some(Installed {
            public_nic,
            workload: w.clone(),
            vm,
            mount: Some(mount),
            events,
            crashes,
            disk_sizes,
        });
        Ok(())
    }
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
        let slot = self.slot(ctx, workload);
        let slot = slot.lock().await;
        let inst = slot
            .as_ref()
            .ok_or_else(|| transient(anyhow!("VM {} is not installed", name_str(workload))))?;
        if inst.vm.state().await == VmState::Paused {
            return Ok(());
        }
        inst.vm
            .pause()
            .await
            .map_err(|e| transient(e.context("pausing the guest")))
    }

    async fn resume(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let slot = self.slot(ctx, workload);
        let slot = slot.lock().await;
        let inst = slot
            .as_ref()
            .ok_or_else(|| transient(anyhow!("VM {} is not installed", name_str(workload))))?;
        if inst.vm.state().await != VmState::Paused {
            return Ok(());
        }
        inst.vm
            .resume()
            .await
            .map_err(|e| transient(e.context("resuming the guest")))
    }

    async fn inspect(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Observed> {
        let slot = self.slot(ctx, workload);
        let mut slot = slot.lock().await;
        let Some(inst) = slot.as_mut() else {
            return Ok(Observed::Missing);
        };
        if inst.workload != *workload {
            return Ok(Observed::Broken(
                "the installed VM was made from another spec".into(),
            ));
        }
        // Only a context that knows the contract's public addresses can tell (an uptime
        // check does not carry them): then a public card that differs means re-create.
        if let Ok(card) = self.public_nic(ctx, workload) {
            if card != inst.public_nic {
                return Ok(Observed::Broken(
                    "the VM's public address changed (reassigned by the chain)".into(),
                ));
            }
        }
        let looping = inst
            .crashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .looping();
        if let Some(reason) = looping {
            // Restarting it again would hide the failure: the deployer needs to fix the spec.
            return Err(DriverError::Permanent(reason));
        }
        Ok(match inst.vm.state().await {
            VmState::Running => {
                propagate_disk_growth(inst).await?;
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
        let slot = self.slot(ctx, workload);
        let slot = slot.lock().await;
        let Some(inst) = slot.as_ref() else {
            return Ok(Usage::default());
        };
        let u = inst
            .vm
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
            spec: Arc::new(
                serde_json::from_value(serde_json::json!({"version": 0, "workloads": [w]}))
                    .unwrap(),
            ),
            public_ips: vec![],
            node_ipv6: None,
        };
        match VmDriver::vm_config(&ctx, &w, dir.path().join("rootfs"), None) {
            Err(DriverError::Permanent(reason)) => assert!(reason.contains("no disk"), "{reason}"),
            other => panic!(
                "expected a permanent error, got {:?}",
                other.map(|c| c.name)
            ),
        }
        std::fs::create_dir_all(dir.path().join("disks")).unwrap();
        std::fs::write(dir.path().join("disks/data.raw"), b"").unwrap();
        let cfg = VmDriver::vm_config(&ctx, &w, dir.path().join("rootfs"), None).unwrap();
        assert_eq!(cfg.disks[0].id, "data");
        assert_eq!(cfg.disks[0].mount.as_deref(), Some("/data"));
        let anywhere = ImageSourcePolicy {
            allowed: vec!["/".into()],
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

    /// A guest that keeps crashing soon after it starts is crash-looping after five crashes in
    /// a row; one that ran for a stable while starts a new count.
    #[test]
    fn crash_loops_are_recognised() {
        let t0 = std::time::Instant::now();
        let mut c = CrashCount::default();
        for i in 0..CRASH_LOOP_LIMIT {
            assert!(c.looping().is_none(), "after {i} crashes");
            let start = t0 + Duration::from_secs(u64::from(i) * 10);
            c.started(start);
            c.crashed(start + Duration::from_secs(3), "entrypoint exited with 1");
        }
        let reason = c.looping().expect("crash-looping");
        assert!(
            reason.contains("5 crashes in a row") && reason.contains("exited with 1"),
            "{reason}"
        );
        // A long stable run resets the count.
        let later = t0 + Duration::from_secs(1_000);
        c.started(later);
        c.crashed(later + STABLE_RUN, "oom");
        assert_eq!(c.in_a_row, 1);
        assert!(c.looping().is_none());
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
}
