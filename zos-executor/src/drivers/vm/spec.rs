//! The pure mapping of a `Vm` workload (and its contract's networks and public IPs) onto a
//! zos-vm configuration: names, cards, disks, the guest's env and entrypoint. Nothing here
//! touches the host.

use std::{
    net::Ipv6Addr,
    path::{Path, PathBuf},
};

use zos_net::network::OVERLAY_GATEWAY;
use zos_overlay::address::{OVERLAY_PREFIX, OVERLAY_PREFIX_LEN};
use zos_primitives::{
    spec::{is_sealed_env_value, DiskSpec, VmSpec, Workload, WorkloadKind},
    ContractId,
};
use zos_vm::{
    BootMode, DiskAttachment, GuestConfig, NicConfig, SharedDir, VmConfig, WritableLayer,
};

use crate::drivers::{
    disk::disk_path,
    network::{NodeNetworks, NodeOverlay},
    volume::{is_mounted, volume_dir},
    DriverError, DriverResult, WorkloadCtx,
};

/// zos-vm's limit on VM names.
pub(super) const MAX_VM_NAME: usize = 48;

pub(super) fn name_str(w: &Workload) -> String {
    String::from_utf8_lossy(w.name.as_bytes()).into_owned()
}

pub(super) fn vm_spec(w: &Workload) -> DriverResult<&VmSpec> {
    match &w.kind {
        WorkloadKind::Vm(vm) => Ok(vm),
        _ => Err(DriverError::permanent("not a vm workload")),
    }
}

/// `<contract dir>/vms/<name>`: the VM's files (console log, sockets) and its image mount.
pub fn vm_dir(ctx: &WorkloadCtx, w: &Workload) -> PathBuf {
    ctx.dir.join("vms").join(name_str(w))
}

pub(super) fn rootfs_dir(ctx: &WorkloadCtx, w: &Workload) -> PathBuf {
    vm_dir(ctx, w).join("rootfs")
}

/// Unique on the node, `[a-z0-9_-]{1,48}`: `c<contract>-<workload>`, shortened with a hash
/// suffix when too long.
pub(super) fn vm_name(contract: ContractId, w: &Workload) -> String {
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
    if vm.networks.is_empty() && vm.public_ip.is_none() && !vm.overlay {
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
            routes6: vec![],
        });
    }
    cards.extend(overlay_card(ctx, w, vm, networks)?);
    Ok(cards)
}

/// The address VM `w` of `contract` has on the node's overlay.
pub fn overlay_address(overlay: &NodeOverlay, contract: ContractId, w: &Workload) -> Ipv6Addr {
    overlay.subnet.workload(contract, &name_str(w))
}

/// The overlay card of a VM that asks for one: its one address (a /128 in the node's overlay
/// /64) and the overlay prefix routed via the overlay namespace's `fe80::1`. It carries no
/// default route: the overlay is for reaching participants, not the internet.
pub(super) fn overlay_card(
    ctx: &WorkloadCtx,
    w: &Workload,
    vm: &VmSpec,
    networks: &NodeNetworks,
) -> DriverResult<Option<NicConfig>> {
    if !vm.overlay {
        return Ok(None);
    }
    let overlay = networks.overlay.as_ref().ok_or_else(|| {
        DriverError::permanent(
            "this node is not on the overlay network: VMs asking for an overlay address are refused",
        )
    })?;
    let (tap, mac) = networks.overlay_card(ctx.contract, w.name.as_bytes());
    Ok(Some(NicConfig {
        tap: networks.tap_name(&tap),
        mac,
        address: None,
        gateway: None,
        routes: vec![],
        address6: Some((overlay_address(overlay, ctx.contract, w), 128)),
        gateway6: None,
        routes6: vec![(OVERLAY_PREFIX, OVERLAY_PREFIX_LEN, OVERLAY_GATEWAY)],
    }))
}

/// The card on the farmer's public bridge of a VM that names a public IP: the farm IPv4 the
/// chain assigned and/or the IPv6 derived from the node's subnet, as the public IP asks.
pub(super) fn public_card(
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
        routes6: vec![],
    }))
}

/// The secret of a sealed environment value, opened with the node's box key for the
/// contract's owner. Only written to the VM's private configuration, never logged.
fn open_sealed_env(
    ctx: &WorkloadCtx,
    key: &str,
    value: &[u8],
    box_secret: Option<&[u8; 32]>,
) -> DriverResult<String> {
    let secret = box_secret.ok_or_else(|| {
        DriverError::permanent(format!(
            "env {key}: sealed values need the node's box key, which this node does not load"
        ))
    })?;
    let owner = ctx.owner.ok_or_else(|| {
        DriverError::Transient(anyhow::anyhow!(
            "env {key}: the contract's owner is not known yet (read from the chain)"
        ))
    })?;
    let plain = zos_primitives::sealing::open_env_value(secret, &owner, key.as_bytes(), value)
        .map_err(|e| {
            DriverError::permanent(format!(
                "env {key}: the sealed value cannot be opened on this node: {e}"
            ))
        })?;
    String::from_utf8(plain.to_vec())
        .map_err(|_| DriverError::permanent(format!("env {key}: the sealed secret is not UTF-8")))
}

/// The zos-vm configuration of `w`; errors are permanent (the spec cannot run here), except a
/// volume not mounted yet.
pub fn vm_config(
    ctx: &WorkloadCtx,
    w: &Workload,
    rootfs: PathBuf,
    networks: Option<&NodeNetworks>,
    box_secret: Option<&[u8; 32]>,
) -> DriverResult<VmConfig> {
    let vm = vm_spec(w)?;
    let nics = nics(ctx, w, vm, networks)?;
    let mut disks = Vec::new();
    let mut shares = Vec::new();
    for (i, m) in vm.mounts.iter().enumerate() {
        let mount = String::from_utf8_lossy(m.path.as_bytes()).into_owned();
        let target_name = String::from_utf8_lossy(m.workload.as_bytes()).into_owned();
        if let Some(
            target @ Workload {
                kind: WorkloadKind::Volume(_),
                ..
            },
        ) = ctx.spec.workload(&m.workload)
        {
            // Mounted by the volume driver before the VMs; never share the bare mount point
            // (what the guest wrote there would vanish under the volume once it is mounted).
            let dir = volume_dir(ctx, target);
            if !is_mounted(&dir).map_err(DriverError::Transient)? {
                return Err(DriverError::Transient(anyhow::anyhow!(
                    "volume {target_name} is not mounted yet"
                )));
            }
            shares.push(SharedDir {
                tag: format!("vol{i}"),
                dir,
                mount,
            });
            continue;
        }
        let target = Workload {
            name: m.workload.clone(),
            kind: WorkloadKind::Disk(DiskSpec { size_mib: 0 }),
        };
        if let Some(away) = super::super::disk::out_of_reach(ctx, &target) {
            return Err(away);
        }
        let path = disk_path(ctx, &target);
        if !path.is_file() {
            return Err(DriverError::permanent(format!(
                "mount {target_name}: no disk or volume of that name on this node"
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
            mount: Some(mount),
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
                let key = text(e.key.as_bytes(), "env key")?;
                let value = if is_sealed_env_value(e.value.as_bytes()) {
                    open_sealed_env(ctx, &key, e.value.as_bytes(), box_secret)?
                } else {
                    text(e.value.as_bytes(), "env value")?
                };
                Ok((key, value))
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
        shares,
        nics,
        guest,
        // The taps live in the node's underlay namespace: the hypervisor opens them there.
        netns: networks.and_then(|n| n.underlay().map(Path::to_path_buf)),
    };
    cfg.validate()
        .map_err(|e| DriverError::permanent(format!("VM configuration refused: {e:#}")))?;
    Ok(cfg)
}
