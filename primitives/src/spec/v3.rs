//! The layouts version 3 of the deployments pallet stored (before VMs had an overlay card),
//! with their upgrades to the current ones: for the pallet's storage migration and for
//! executors reading what they stored earlier.

use alloc::vec::Vec;
use codec::{Decode, Encode};
use frame_support::{pallet_prelude::ConstU32, BoundedVec};

use super::{
    DeploymentSpec, DiskSpec, Entrypoint, EnvVar, GatewaySpec, HealthCheckSpec, ImageRef, Metadata,
    Mount, NetworkAttachment, NetworkSpec, PublicIpSpec, SpecHash, SshKey, VmSpec, VolumeSpec,
    Workload, WorkloadKind, WorkloadName, MAX_ENV_VARS, MAX_MOUNTS, MAX_NETWORK_ATTACHMENTS,
    MAX_SSH_KEYS, MAX_WORKLOADS,
};

/// What version 3 stored for a VM: [`VmSpec`](super::VmSpec) before the overlay card.
#[derive(Debug, Encode, Decode)]
pub struct VmSpecV3 {
    pub image: ImageRef,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub rootfs_mib: u64,
    pub mounts: BoundedVec<Mount, ConstU32<MAX_MOUNTS>>,
    pub env: BoundedVec<EnvVar, ConstU32<MAX_ENV_VARS>>,
    pub entrypoint: Entrypoint,
    pub ssh_keys: BoundedVec<SshKey, ConstU32<MAX_SSH_KEYS>>,
    pub networks: BoundedVec<NetworkAttachment, ConstU32<MAX_NETWORK_ATTACHMENTS>>,
    pub public_ip: Option<WorkloadName>,
}

impl VmSpecV3 {
    /// The same VM, without an overlay card (version 3 had none).
    pub fn upgrade(self) -> VmSpec {
        VmSpec {
            image: self.image,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            rootfs_mib: self.rootfs_mib,
            mounts: self.mounts,
            env: self.env,
            entrypoint: self.entrypoint,
            ssh_keys: self.ssh_keys,
            networks: self.networks,
            public_ip: self.public_ip,
            overlay: false,
        }
    }
}

/// What version 3 stored for a workload's kind: [`WorkloadKind`](super::WorkloadKind) with the old VM layout. The
/// variants keep their order, hence their SCALE indices.
#[derive(Debug, Encode, Decode)]
pub enum WorkloadKindV3 {
    Vm(VmSpecV3),
    Disk(DiskSpec),
    Volume(VolumeSpec),
    Network(NetworkSpec),
    PublicIp(PublicIpSpec),
    Gateway(GatewaySpec),
    HealthCheck(HealthCheckSpec),
}

impl WorkloadKindV3 {
    /// The same workload kind in the current layout.
    pub fn upgrade(self) -> WorkloadKind {
        match self {
            Self::Vm(vm) => WorkloadKind::Vm(vm.upgrade()),
            Self::Disk(disk) => WorkloadKind::Disk(disk),
            Self::Volume(volume) => WorkloadKind::Volume(volume),
            Self::Network(network) => WorkloadKind::Network(network),
            Self::PublicIp(ip) => WorkloadKind::PublicIp(ip),
            Self::Gateway(gateway) => WorkloadKind::Gateway(gateway),
            Self::HealthCheck(check) => WorkloadKind::HealthCheck(check),
        }
    }
}

/// What version 3 stored for a workload: [`Workload`](super::Workload) with the old VM layout.
#[derive(Debug, Encode, Decode)]
pub struct WorkloadV3 {
    pub name: WorkloadName,
    pub kind: WorkloadKindV3,
}

impl WorkloadV3 {
    /// The same workload in the current layout.
    pub fn upgrade(self) -> Workload {
        Workload {
            name: self.name,
            kind: self.kind.upgrade(),
        }
    }
}

/// What version 3 stored as a spec: [`DeploymentSpec`](super::DeploymentSpec) with the old VM layout.
#[derive(Debug, Encode, Decode)]
pub struct DeploymentSpecV3 {
    pub version: u32,
    pub workloads: BoundedVec<WorkloadV3, ConstU32<MAX_WORKLOADS>>,
    pub metadata: Metadata,
}

impl DeploymentSpecV3 {
    /// `spec` as version 3 would have stored it (VMs without the overlay flag): what tests
    /// of the upgrades start from.
    pub fn downgraded(spec: &DeploymentSpec) -> Self {
        let workloads = spec.workloads.iter().cloned().map(|w| WorkloadV3 {
            name: w.name,
            kind: match w.kind {
                WorkloadKind::Vm(vm) => WorkloadKindV3::Vm(VmSpecV3 {
                    image: vm.image,
                    vcpus: vm.vcpus,
                    memory_mib: vm.memory_mib,
                    rootfs_mib: vm.rootfs_mib,
                    mounts: vm.mounts,
                    env: vm.env,
                    entrypoint: vm.entrypoint,
                    ssh_keys: vm.ssh_keys,
                    networks: vm.networks,
                    public_ip: vm.public_ip,
                }),
                WorkloadKind::Disk(d) => WorkloadKindV3::Disk(d),
                WorkloadKind::Volume(v) => WorkloadKindV3::Volume(v),
                WorkloadKind::Network(n) => WorkloadKindV3::Network(n),
                WorkloadKind::PublicIp(p) => WorkloadKindV3::PublicIp(p),
                WorkloadKind::Gateway(g) => WorkloadKindV3::Gateway(g),
                WorkloadKind::HealthCheck(h) => WorkloadKindV3::HealthCheck(h),
            },
        });
        DeploymentSpecV3 {
            version: spec.version,
            // Same bound on both sides: nothing is truncated.
            workloads: BoundedVec::truncate_from(workloads.collect()),
            metadata: spec.metadata.clone(),
        }
    }

    /// The hash the chain knew this spec by in version 3.
    pub fn hash(&self) -> SpecHash {
        sp_crypto_hashing::blake2_256(&self.encode())
    }

    /// The same spec in the current layout: it runs the same workloads, but its encoding, hence
    /// its hash and size, differ.
    pub fn upgrade(self) -> DeploymentSpec {
        DeploymentSpec {
            version: self.version,
            // Same bound on both sides: nothing is truncated.
            workloads: BoundedVec::truncate_from(
                self.workloads
                    .into_iter()
                    .map(WorkloadV3::upgrade)
                    .collect::<Vec<_>>(),
            ),
            metadata: self.metadata,
        }
    }
}
