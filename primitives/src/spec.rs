//! Deployment specifications: what a contract asks a node to run.
//!
//! A [`DeploymentSpec`] is stored on chain exactly as the signers approved it, so every
//! collection is bounded and every rule a node relies on is checked by [`DeploymentSpec::validate`]
//! before the chain accepts it. Its identity is [`DeploymentSpec::hash`], blake2-256 over the
//! SCALE encoding: canonical, unambiguous and computable by any party from the same file.
//!
//! With `std`, specs (de)serialize with serde under readable names, so deployers can keep them as
//! JSON or TOML files: names and paths are strings, hashes and ciphertext are hex, addresses are
//! dotted quads (`"10.20.1.2"`), subnets CIDR strings (`"10.20.1.0/24"`), endpoints
//! `"host:port"`. Unknown fields are refused, so a typo cannot silently drop a setting.
//!
//! Everything in a spec is public, environment values included; a secret goes in as a value
//! sealed to the node ([`SEALED_ENV_PREFIX`], `sealing::seal_env_value`).

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{pallet_prelude::ConstU32, BoundedVec, PalletError};
use scale_info::TypeInfo;

use crate::{Ipv4Cidr, Resources, MIB};

// ---- Bounds. They cap the worst-case encoded size of a spec (see `MaxEncodedLen`), which the
// ---- pallet's weights and deposits are computed for. Raising one is a storage migration.

/// Workloads in one spec.
pub const MAX_WORKLOADS: u32 = 32;
/// Bytes of a workload name (`[a-z0-9_-]`, at least one).
pub const MAX_WORKLOAD_NAME_LEN: u32 = 36;
/// Bytes of free-form UTF-8 metadata (a description, labels) kept with the spec.
pub const MAX_METADATA_LEN: u32 = 1024;
/// Bytes of the location a VM image index is fetched from (URL or similar, printable ASCII).
pub const MAX_IMAGE_SOURCE_LEN: u32 = 256;
/// Disks and volumes attached to one VM.
pub const MAX_MOUNTS: u32 = 8;
/// Bytes of a mount point (absolute path in the VM).
pub const MAX_MOUNT_PATH_LEN: u32 = 128;
/// Environment variables of one VM.
pub const MAX_ENV_VARS: u32 = 16;
/// Bytes of an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub const MAX_ENV_KEY_LEN: u32 = 64;
/// Bytes of an environment variable value (UTF-8).
pub const MAX_ENV_VALUE_LEN: u32 = 256;
/// Bytes of a VM entrypoint command line (UTF-8, may be empty: the image's default).
pub const MAX_ENTRYPOINT_LEN: u32 = 256;
/// SSH public keys installed in one VM.
pub const MAX_SSH_KEYS: u32 = 4;
/// Bytes of one SSH public key line (room for RSA-4096 in OpenSSH format).
pub const MAX_SSH_KEY_LEN: u32 = 800;
/// Private networks one VM is attached to.
pub const MAX_NETWORK_ATTACHMENTS: u32 = 4;
/// WireGuard peers of one network workload.
pub const MAX_PEERS: u32 = 32;
/// Allowed-IP subnets of one WireGuard peer.
pub const MAX_ALLOWED_IPS: u32 = 8;
/// Public IPv4 addresses one spec may ask for (the farm's pool is small and shared).
pub const MAX_PUBLIC_IPV4: u32 = 8;
/// Bytes a sealed box adds to its plaintext: the ephemeral x25519 public key (32) plus the
/// Poly1305 tag (16).
pub const SEALED_BOX_OVERHEAD: u32 = 48;
/// Bytes of a WireGuard private key.
pub const WIREGUARD_KEY_LEN: u32 = 32;
/// Bytes of a WireGuard private key sealed to a node: the only length a network accepts.
pub const SEALED_WIREGUARD_KEY_LEN: u32 = WIREGUARD_KEY_LEN + SEALED_BOX_OVERHEAD;

// ---- Size limits, checked by `validate`. All sizes in a spec are MiB.

pub const MIN_VCPUS: u32 = 1;
pub const MAX_VCPUS: u32 = 64;
pub const MIN_VM_MEMORY_MIB: u64 = 256;
/// 512 GiB.
pub const MAX_VM_MEMORY_MIB: u64 = 512 * 1024;
pub const MIN_ROOTFS_MIB: u64 = 256;
/// 1 TiB.
pub const MAX_ROOTFS_MIB: u64 = 1024 * 1024;
pub const MIN_DISK_MIB: u64 = 1;
/// 16 TiB, for disks and volumes alike.
pub const MAX_DISK_MIB: u64 = 16 * 1024 * 1024;

/// Identity of a spec: blake2-256 of its SCALE encoding.
pub type SpecHash = [u8; 32];

/// A byte string too long for its bounded type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TooLong;

/// Bounded byte-string newtypes that serialize as plain strings (they must hold UTF-8 to be
/// serialized; `validate` requires it where it matters). SCALE-encoded exactly as the inner
/// `BoundedVec`.
macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(
            Clone,
            PartialEq,
            Eq,
            Default,
            Encode,
            Decode,
            DecodeWithMemTracking,
            MaxEncodedLen,
            TypeInfo,
            Debug,
        )]
        pub struct $name(pub BoundedVec<u8, ConstU32<{ $max }>>);

        impl $name {
            /// Most bytes this type holds.
            pub const MAX_LEN: u32 = $max;

            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            pub fn len(&self) -> usize {
                self.0.len()
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl TryFrom<Vec<u8>> for $name {
            type Error = TooLong;
            fn try_from(bytes: Vec<u8>) -> Result<Self, TooLong> {
                BoundedVec::try_from(bytes).map($name).map_err(|_| TooLong)
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = TooLong;
            fn try_from(bytes: &[u8]) -> Result<Self, TooLong> {
                Self::try_from(bytes.to_vec())
            }
        }

        impl TryFrom<&str> for $name {
            type Error = TooLong;
            fn try_from(text: &str) -> Result<Self, TooLong> {
                Self::try_from(text.as_bytes())
            }
        }

        #[cfg(feature = "std")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match core::str::from_utf8(&self.0) {
                    Ok(text) => s.serialize_str(text),
                    Err(_) => Err(serde::ser::Error::custom(concat!(
                        stringify!($name),
                        " is not UTF-8"
                    ))),
                }
            }
        }

        #[cfg(feature = "std")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::string::String as serde::Deserialize>::deserialize(d)?;
                Self::try_from(text.as_str()).map_err(|_| {
                    serde::de::Error::custom(std::format!(
                        "{} is longer than {} bytes",
                        stringify!($name),
                        $max
                    ))
                })
            }
        }
    };
}

bounded_text!(
    /// Name of a workload, unique in its spec: 1-36 bytes of `[a-z0-9_-]`.
    WorkloadName,
    MAX_WORKLOAD_NAME_LEN
);
bounded_text!(
    /// Free-form UTF-8 description kept with the spec.
    Metadata,
    MAX_METADATA_LEN
);
bounded_text!(
    /// Where the executor fetches a VM image index from; printable ASCII.
    ImageSource,
    MAX_IMAGE_SOURCE_LEN
);
bounded_text!(
    /// Absolute path in the VM a disk or volume is mounted at.
    MountPath,
    MAX_MOUNT_PATH_LEN
);
bounded_text!(
    /// Environment variable name.
    EnvKey,
    MAX_ENV_KEY_LEN
);
bounded_text!(
    /// Environment variable value (UTF-8). Public on chain, unless sealed to the node: a value
    /// of the form [`SEALED_ENV_PREFIX`]`<base64>` is a sealed box only the node can open (see
    /// `sealing::seal_env_value`), bound to the contract's owner and the variable's name.
    EnvValue,
    MAX_ENV_VALUE_LEN
);

/// How a sealed environment value starts; base64 (standard alphabet, padded) follows.
pub const SEALED_ENV_PREFIX: &str = "zos-sealed:v1:";
/// Bytes binding a sealed environment value to its owner and variable (inside the box).
pub const SEALED_ENV_TAG_LEN: usize = 16;
/// Longest secret a sealed environment value holds: what base64 fits in an `EnvValue` after
/// the prefix, less the sealed box and the binding tag.
pub const MAX_SEALED_ENV_SECRET_LEN: usize =
    (MAX_ENV_VALUE_LEN as usize - SEALED_ENV_PREFIX.len()) / 4 * 3
        - SEALED_BOX_OVERHEAD as usize
        - SEALED_ENV_TAG_LEN;

/// Whether `value` is meant as a sealed environment value (it starts with the prefix).
pub fn is_sealed_env_value(value: &[u8]) -> bool {
    value.starts_with(SEALED_ENV_PREFIX.as_bytes())
}

/// The shape of a sealed value's base64: padded, of the standard alphabet, long enough for a
/// sealed box holding a tag. Opening it is the node's business.
fn is_well_formed_sealed_env_value(value: &[u8]) -> bool {
    let Some(b64) = value.get(SEALED_ENV_PREFIX.len()..) else {
        return false;
    };
    let padding = b64.iter().rev().take_while(|c| **c == b'=').count();
    let body = &b64[..b64.len() - padding];
    b64.len() % 4 == 0
        && padding <= 2
        && body
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        && (b64.len() / 4 * 3).saturating_sub(padding)
            >= SEALED_BOX_OVERHEAD as usize + SEALED_ENV_TAG_LEN
}
bounded_text!(
    /// Command line the VM starts with; empty for the image's default.
    Entrypoint,
    MAX_ENTRYPOINT_LEN
);
bounded_text!(
    /// One OpenSSH public key line, e.g. `ssh-ed25519 AAAA... user@host`.
    SshKey,
    MAX_SSH_KEY_LEN
);

mod gateway;
pub use gateway::*;
mod health;
pub use health::*;
pub mod v3;

/// A secret sealed to a node's x25519 key (a crypto_box sealed box). The chain stores only this
/// ciphertext; only the node holding the matching secret key can open it.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Default,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
pub struct SealedSecret(pub BoundedVec<u8, ConstU32<SEALED_WIREGUARD_KEY_LEN>>);

#[cfg(feature = "std")]
impl serde::Serialize for SealedSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_text::hex::serialize(&self.0, s)
    }
}

#[cfg(feature = "std")]
impl<'de> serde::Deserialize<'de> for SealedSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_text::hex::deserialize_vec(d)?;
        BoundedVec::try_from(bytes)
            .map(SealedSecret)
            .map_err(|_| serde::de::Error::custom("sealed secret is too long"))
    }
}

/// The deployment a contract runs: a versioned set of named workloads.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct DeploymentSpec {
    /// 0 for a new contract; each accepted update is exactly the previous version plus one.
    pub version: u32,
    pub workloads: BoundedVec<Workload, ConstU32<MAX_WORKLOADS>>,
    #[cfg_attr(feature = "std", serde(default))]
    pub metadata: Metadata,
}

/// One named unit of a deployment.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct Workload {
    pub name: WorkloadName,
    pub kind: WorkloadKind,
}

#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case"))]
pub enum WorkloadKind {
    /// A virtual machine.
    Vm(VmSpec),
    /// A raw block device, attached to one VM.
    Disk(DiskSpec),
    /// A filesystem, shareable between the spec's VMs.
    Volume(VolumeSpec),
    /// A private WireGuard network.
    Network(NetworkSpec),
    /// A public address for one VM.
    PublicIp(PublicIpSpec),
    /// A host name on a gateway node proxied to backends (see [`GatewaySpec`]).
    Gateway(GatewaySpec),
    /// A probe of one VM of the spec, reported on chain (see [`HealthCheckSpec`]).
    HealthCheck(HealthCheckSpec),
}

/// The image a VM boots: the root hash of its content-addressed index, and where to get it.
/// The executor refuses an index whose hash differs, whatever the source serves.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct ImageRef {
    #[cfg_attr(feature = "std", serde(with = "serde_text::hex32"))]
    pub root_hash: [u8; 32],
    pub source: ImageSource,
}

/// A disk or volume of the same spec, mounted in a VM.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct Mount {
    /// Name of a `Disk` or `Volume` workload.
    pub workload: WorkloadName,
    pub path: MountPath,
}

#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct EnvVar {
    pub key: EnvKey,
    pub value: EnvValue,
}

/// A VM's address in one of the spec's private networks.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct NetworkAttachment {
    /// Name of a `Network` workload.
    pub network: WorkloadName,
    /// A host address in that network's subnet on this node.
    #[cfg_attr(feature = "std", serde(with = "serde_text::ipv4"))]
    pub ip: [u8; 4],
}

#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct VmSpec {
    pub image: ImageRef,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Writable root filesystem size.
    pub rootfs_mib: u64,
    #[cfg_attr(feature = "std", serde(default))]
    pub mounts: BoundedVec<Mount, ConstU32<MAX_MOUNTS>>,
    #[cfg_attr(feature = "std", serde(default))]
    pub env: BoundedVec<EnvVar, ConstU32<MAX_ENV_VARS>>,
    #[cfg_attr(feature = "std", serde(default))]
    pub entrypoint: Entrypoint,
    #[cfg_attr(feature = "std", serde(default))]
    pub ssh_keys: BoundedVec<SshKey, ConstU32<MAX_SSH_KEYS>>,
    #[cfg_attr(feature = "std", serde(default))]
    pub networks: BoundedVec<NetworkAttachment, ConstU32<MAX_NETWORK_ATTACHMENTS>>,
    /// Name of a `PublicIp` workload this VM (alone) uses.
    #[cfg_attr(feature = "std", serde(default))]
    pub public_ip: Option<WorkloadName>,
    /// A card on the node's overlay network: an address in the node's overlay /64, derived
    /// from the contract and the workload name, reachable from every overlay participant.
    #[cfg_attr(feature = "std", serde(default))]
    pub overlay: bool,
}

#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct DiskSpec {
    pub size_mib: u64,
}

#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct VolumeSpec {
    pub size_mib: u64,
}

/// An IP address and a port: where a WireGuard peer is reached, what a gateway forwards to.
/// Written `"203.0.113.7:51820"` or `"[2001:db8::7]:443"` in spec files.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
pub enum SocketAddress {
    V4 { ip: [u8; 4], port: u16 },
    V6 { ip: [u8; 16], port: u16 },
}

/// Where a WireGuard peer is reached.
pub type PeerEndpoint = SocketAddress;

impl SocketAddress {
    pub fn port(&self) -> u16 {
        match self {
            SocketAddress::V4 { port, .. } | SocketAddress::V6 { port, .. } => *port,
        }
    }

    #[cfg(feature = "std")]
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        match *self {
            SocketAddress::V4 { ip, port } => (std::net::Ipv4Addr::from(ip), port).into(),
            SocketAddress::V6 { ip, port } => (std::net::Ipv6Addr::from(ip), port).into(),
        }
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for SocketAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.socket_addr())
    }
}

#[cfg(feature = "std")]
impl<'de> serde::Deserialize<'de> for SocketAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::string::String as serde::Deserialize>::deserialize(d)?;
        let addr: std::net::SocketAddr = text
            .parse()
            .map_err(|_| serde::de::Error::custom(std::format!("`{text}` is not address:port")))?;
        Ok(match addr {
            std::net::SocketAddr::V4(a) => SocketAddress::V4 {
                ip: a.ip().octets(),
                port: a.port(),
            },
            std::net::SocketAddr::V6(a) => SocketAddress::V6 {
                ip: a.ip().octets(),
                port: a.port(),
            },
        })
    }
}

#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct WireguardPeer {
    /// The peer's WireGuard (x25519) public key.
    #[cfg_attr(feature = "std", serde(with = "serde_text::hex32"))]
    pub public_key: [u8; 32],
    /// `None` for a peer that only connects to us (behind NAT).
    #[cfg_attr(feature = "std", serde(default))]
    pub endpoint: Option<PeerEndpoint>,
    #[cfg_attr(feature = "std", serde(with = "serde_text::cidr4_list"))]
    pub allowed_ips: BoundedVec<Ipv4Cidr, ConstU32<MAX_ALLOWED_IPS>>,
}

/// A private network: a /16 shared by all its nodes, of which this node serves one /24.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct NetworkSpec {
    /// A private (RFC 1918) /16 with the host bits clear.
    #[cfg_attr(feature = "std", serde(with = "serde_text::cidr4"))]
    pub ip_range: Ipv4Cidr,
    /// This node's /24 inside `ip_range`; `.1` is the node's gateway address.
    #[cfg_attr(feature = "std", serde(with = "serde_text::cidr4"))]
    pub subnet: Ipv4Cidr,
    pub listen_port: u16,
    #[cfg_attr(feature = "std", serde(default))]
    pub peers: BoundedVec<WireguardPeer, ConstU32<MAX_PEERS>>,
    /// The node's WireGuard private key for this network, sealed to the node's box key.
    pub private_key: SealedSecret,
    /// VMs on this network may open connections to the internet through the node (masqueraded
    /// behind the node's address; nothing can dial in). Off unless asked for; a node whose
    /// farmer forbids it fails the contract with that reason.
    #[cfg_attr(feature = "std", serde(default))]
    pub outbound_internet: bool,
}

/// A public address for one VM, taken from the node's farm pool (IPv4) or the node (IPv6).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct PublicIpSpec {
    #[cfg_attr(feature = "std", serde(default))]
    pub v4: bool,
    #[cfg_attr(feature = "std", serde(default))]
    pub v6: bool,
}

/// What a spec needs from its node: compute resources plus public IPv4 addresses.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct RequiredResources {
    pub resources: Resources,
    pub public_ipv4: u32,
    /// Host names served by the node's gateway (gateway workloads).
    #[cfg_attr(feature = "std", serde(default))]
    pub gateway_hosts: u32,
}

/// [`RequiredResources`] as stored before gateway workloads existed, for the storage
/// migrations of the pallets that keep it.
#[derive(Clone, Copy, PartialEq, Eq, Default, Encode, Decode, MaxEncodedLen, TypeInfo, Debug)]
pub struct RequiredResourcesBeforeGateways {
    pub resources: Resources,
    pub public_ipv4: u32,
}

impl From<RequiredResourcesBeforeGateways> for RequiredResources {
    fn from(old: RequiredResourcesBeforeGateways) -> Self {
        RequiredResources {
            resources: old.resources,
            public_ipv4: old.public_ipv4,
            gateway_hosts: 0,
        }
    }
}

/// The first rule a spec breaks. One variant per rule, so a deployer (and the chain's error)
/// says exactly what to fix.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    PalletError,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub enum SpecError {
    /// A spec needs at least one workload.
    NoWorkloads,
    /// Metadata must be UTF-8.
    MetadataNotUtf8,
    /// A workload name must be 1-36 bytes of `[a-z0-9_-]`.
    InvalidWorkloadName,
    /// Two workloads have the same name.
    DuplicateWorkloadName,
    /// The image root hash is all zeros.
    ImageHashZero,
    /// The image source must be non-empty printable ASCII without spaces.
    InvalidImageSource,
    /// vCPUs must be within `MIN_VCPUS..=MAX_VCPUS`.
    VcpusOutOfRange,
    /// VM memory must be within `MIN_VM_MEMORY_MIB..=MAX_VM_MEMORY_MIB`.
    MemoryOutOfRange,
    /// Root filesystem size must be within `MIN_ROOTFS_MIB..=MAX_ROOTFS_MIB`.
    RootfsOutOfRange,
    /// Disk size must be within `MIN_DISK_MIB..=MAX_DISK_MIB`.
    DiskSizeOutOfRange,
    /// Volume size must be within `MIN_DISK_MIB..=MAX_DISK_MIB`.
    VolumeSizeOutOfRange,
    /// A mount names no workload of the spec.
    UnknownMountTarget,
    /// A mount names a workload that is neither a disk nor a volume.
    MountTargetNotDiskOrVolume,
    /// A mount point must be an absolute path of `[A-Za-z0-9._/-]` without `..` or `//`, not `/`.
    InvalidMountPath,
    /// One VM mounts two things at the same path.
    DuplicateMountPath,
    /// One VM mounts the same disk or volume twice.
    DuplicateMountTarget,
    /// A disk (a raw block device) is attached to more than one VM.
    DiskAttachedTwice,
    /// An environment variable name must match `[A-Za-z_][A-Za-z0-9_]*`.
    InvalidEnvKey,
    /// One VM sets the same environment variable twice.
    DuplicateEnvKey,
    /// An environment value or the entrypoint is not UTF-8, or contains a NUL byte.
    InvalidText,
    /// An SSH key must be one printable line starting with `ssh-` or `ecdsa-`.
    InvalidSshKey,
    /// A network attachment names no workload of the spec.
    UnknownNetwork,
    /// A network attachment names a workload that is not a network.
    NotANetwork,
    /// One VM is attached to the same network twice.
    DuplicateNetworkAttachment,
    /// A VM's address is outside the network's subnet on this node.
    IpOutsideSubnet,
    /// A VM's address is the subnet's network, gateway (`.1`) or broadcast address.
    ReservedIp,
    /// Two VMs have the same address in one network.
    DuplicateIp,
    /// A VM's public IP names no workload of the spec.
    UnknownPublicIp,
    /// A VM's public IP names a workload that is not a public IP.
    NotAPublicIp,
    /// A public IP workload is used by more than one VM.
    PublicIpUsedTwice,
    /// A public IP workload must ask for IPv4, IPv6 or both.
    PublicIpWithoutFamily,
    /// More than `MAX_PUBLIC_IPV4` public IPv4 addresses requested.
    TooManyPublicIpv4,
    /// A network's range must be a private (RFC 1918) /16.
    InvalidIpRange,
    /// A subnet or range has host bits set (it must be written as its network address).
    CidrHostBitsSet,
    /// A network's subnet must be a /24.
    SubnetNotSlash24,
    /// A network's subnet is not inside its range.
    SubnetOutsideRange,
    /// A network's listen port must not be 0.
    ListenPortZero,
    /// A peer's public key is all zeros.
    PeerKeyZero,
    /// Two peers of one network have the same public key.
    DuplicatePeer,
    /// A peer needs at least one allowed-IP subnet, each with a prefix of at most 32.
    InvalidAllowedIps,
    /// A peer endpoint's port must not be 0.
    InvalidPeerEndpoint,
    /// A network's sealed private key must be exactly `SEALED_WIREGUARD_KEY_LEN` bytes.
    SealedKeyWrongLength,
    /// Two peers of one network have overlapping allowed IPs (WireGuard would silently send
    /// that part to only one of them).
    OverlappingAllowedIps,
    /// A peer's allowed IPs lie inside this node's own subnet (the peer could pose as local VMs).
    AllowedIpsInsideOwnSubnet,
    /// Two networks of one spec have overlapping ranges (a VM on both could not route both).
    OverlappingNetworks,
    /// A gateway name must be one DNS label: 1-63 bytes of `[a-z0-9-]`, no hyphen at either end.
    InvalidGatewayName,
    /// A gateway FQDN must be a lowercase DNS name of at least two labels, at most 253 bytes.
    InvalidGatewayFqdn,
    /// A gateway needs at least one backend.
    NoGatewayBackends,
    /// A gateway backend has port 0, or (without a network) is not a public address: loopback,
    /// private, link-local and similar addresses are refused.
    GatewayBackendNotAllowed,
    /// A gateway backend is outside the range of the network the gateway names (or is IPv6).
    GatewayBackendOutsideNetwork,
    /// Two gateways of one spec serve the same host.
    DuplicateGatewayHost,
    /// A health check names no workload of the spec.
    UnknownHealthCheckTarget,
    /// A health check names a workload that is not a VM.
    HealthCheckTargetNotAVm,
    /// One VM has two health checks.
    DuplicateHealthCheck,
    /// A health check's interval must be 5-3600 s, its timeout 1 s to the interval (at most
    /// 60 s), its retries 1-20 and its start period at most 3600 s.
    HealthTimingOutOfRange,
    /// A health probe needs a non-zero port, a non-blank UTF-8 command, or an HTTP path of
    /// printable ASCII starting with `/`.
    InvalidHealthProbe,
    /// An environment value starting with `zos-sealed:v1:` must continue with the padded
    /// base64 of a sealed box (see `zos seal-env`).
    InvalidSealedEnvValue,
}

fn is_valid_name(name: &WorkloadName) -> bool {
    !name.is_empty()
        && name
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn is_valid_mount_path(path: &MountPath) -> bool {
    let p = path.as_bytes();
    p.len() > 1
        && p.first() == Some(&b'/')
        && p.last() != Some(&b'/')
        && p.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/'))
        && p.split(|c| *c == b'/')
            .skip(1)
            .all(|seg| !seg.is_empty() && seg != b"." && seg != b"..")
}

fn is_valid_env_key(key: &EnvKey) -> bool {
    let k = key.as_bytes();
    match k.first() {
        Some(first) if first.is_ascii_alphabetic() || *first == b'_' => {
            k.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        }
        _ => false,
    }
}

fn is_text(bytes: &[u8]) -> bool {
    core::str::from_utf8(bytes).is_ok() && !bytes.contains(&0)
}

fn is_valid_ssh_key(key: &SshKey) -> bool {
    let k = key.as_bytes();
    (k.starts_with(b"ssh-") || k.starts_with(b"ecdsa-") || k.starts_with(b"sk-"))
        && k.iter().all(|c| c.is_ascii_graphic() || *c == b' ')
}

fn host_bits_clear(cidr: &Ipv4Cidr) -> bool {
    cidr.prefix_len <= 32 && cidr.network() == cidr.ip
}

fn is_private_v4(ip: [u8; 4]) -> bool {
    matches!(ip, [10, ..])
        || matches!(ip, [172, b, ..] if (16..=31).contains(&b))
        || matches!(ip, [192, 168, ..])
}

fn mib_to_bytes(mib: u64) -> u64 {
    mib.saturating_mul(MIB)
}

impl Workload {
    pub fn as_vm(&self) -> Option<&VmSpec> {
        match &self.kind {
            WorkloadKind::Vm(vm) => Some(vm),
            _ => None,
        }
    }

    pub fn as_network(&self) -> Option<&NetworkSpec> {
        match &self.kind {
            WorkloadKind::Network(net) => Some(net),
            _ => None,
        }
    }

    pub fn as_gateway(&self) -> Option<&GatewaySpec> {
        match &self.kind {
            WorkloadKind::Gateway(gateway) => Some(gateway),
            _ => None,
        }
    }

    pub fn as_health_check(&self) -> Option<&HealthCheckSpec> {
        match &self.kind {
            WorkloadKind::HealthCheck(check) => Some(check),
            _ => None,
        }
    }

    /// True for a public IP workload asking for an IPv4 address.
    pub fn needs_public_ipv4(&self) -> bool {
        matches!(&self.kind, WorkloadKind::PublicIp(p) if p.v4)
    }
}

impl DeploymentSpec {
    /// The workload called `name`.
    pub fn workload(&self, name: &WorkloadName) -> Option<&Workload> {
        self.workloads.iter().find(|w| &w.name == name)
    }

    /// Names of the public IP workloads that need an IPv4 address, in spec order. The chain
    /// assigns one farm address to each.
    pub fn public_ipv4_workloads(&self) -> impl Iterator<Item = &WorkloadName> {
        self.workloads
            .iter()
            .filter(|w| w.needs_public_ipv4())
            .map(|w| &w.name)
    }

    /// blake2-256 of the SCALE encoding: the identity signers approve.
    pub fn hash(&self) -> SpecHash {
        sp_crypto_hashing::blake2_256(&self.encode())
    }

    /// The resources the spec reserves on its node, and the public IPv4 addresses it takes.
    ///
    /// The single place where workloads turn into capacity: the chain reserves and bills
    /// exactly this and the executor enforces it as limits. A VM counts its vCPUs (cru), memory
    /// (mru) and root filesystem (sru); a disk or volume its size (sru); a network or health check
    /// nothing; a public IP with IPv4 one address; a gateway one host name. Nothing uses HDD (hru) yet.
    ///
    /// Arithmetic saturates; for a spec that passes [`Self::validate`] it never reaches the
    /// bound (at most `MAX_WORKLOADS` x 16 TiB of storage).
    pub fn required_resources(&self) -> RequiredResources {
        let mut r = Resources::zero();
        let mut public_ipv4: u32 = 0;
        let mut gateway_hosts: u32 = 0;
        for w in self.workloads.iter() {
            match &w.kind {
                WorkloadKind::Vm(vm) => {
                    r.cru = r.cru.saturating_add(u64::from(vm.vcpus));
                    r.mru = r.mru.saturating_add(mib_to_bytes(vm.memory_mib));
                    r.sru = r.sru.saturating_add(mib_to_bytes(vm.rootfs_mib));
                }
                WorkloadKind::Disk(d) => r.sru = r.sru.saturating_add(mib_to_bytes(d.size_mib)),
                WorkloadKind::Volume(v) => r.sru = r.sru.saturating_add(mib_to_bytes(v.size_mib)),
                WorkloadKind::Network(_) | WorkloadKind::HealthCheck(_) => {}
                WorkloadKind::PublicIp(p) => {
                    if p.v4 {
                        public_ipv4 = public_ipv4.saturating_add(1);
                    }
                }
                WorkloadKind::Gateway(_) => gateway_hosts = gateway_hosts.saturating_add(1),
            }
        }
        RequiredResources {
            resources: r,
            public_ipv4,
            gateway_hosts,
        }
    }

    /// Checks every rule; returns the first one broken.
    pub fn validate(&self) -> Result<(), SpecError> {
        use SpecError::*;
        ensure(!self.workloads.is_empty(), NoWorkloads)?;
        ensure(
            core::str::from_utf8(self.metadata.as_bytes()).is_ok(),
            MetadataNotUtf8,
        )?;
        for (i, w) in self.workloads.iter().enumerate() {
            ensure(is_valid_name(&w.name), InvalidWorkloadName)?;
            ensure(
                !self
                    .workloads
                    .iter()
                    .take(i)
                    .any(|other| other.name == w.name),
                DuplicateWorkloadName,
            )?;
        }
        let mut public_ipv4: u32 = 0;
        for w in self.workloads.iter() {
            match &w.kind {
                WorkloadKind::Vm(vm) => self.check_vm(vm)?,
                WorkloadKind::Disk(d) => ensure(
                    (MIN_DISK_MIB..=MAX_DISK_MIB).contains(&d.size_mib),
                    DiskSizeOutOfRange,
                )?,
                WorkloadKind::Volume(v) => ensure(
                    (MIN_DISK_MIB..=MAX_DISK_MIB).contains(&v.size_mib),
                    VolumeSizeOutOfRange,
                )?,
                WorkloadKind::Network(net) => check_network(net)?,
                WorkloadKind::PublicIp(p) => {
                    ensure(p.v4 || p.v6, PublicIpWithoutFamily)?;
                    if p.v4 {
                        public_ipv4 = public_ipv4.saturating_add(1);
                    }
                }
                WorkloadKind::Gateway(g) => g.check(self)?,
                WorkloadKind::HealthCheck(h) => h.check(self)?,
            }
        }
        let checks: Vec<&HealthCheckSpec> = self
            .workloads
            .iter()
            .filter_map(Workload::as_health_check)
            .collect();
        for (i, h) in checks.iter().enumerate() {
            ensure(
                !checks.iter().take(i).any(|o| o.vm == h.vm),
                DuplicateHealthCheck,
            )?;
        }
        let gateways: Vec<&GatewaySpec> = self
            .workloads
            .iter()
            .filter_map(Workload::as_gateway)
            .collect();
        for (i, g) in gateways.iter().enumerate() {
            ensure(
                !gateways.iter().take(i).any(|o| o.host == g.host),
                DuplicateGatewayHost,
            )?;
        }
        ensure(public_ipv4 <= MAX_PUBLIC_IPV4, TooManyPublicIpv4)?;
        let networks: Vec<&NetworkSpec> = self
            .workloads
            .iter()
            .filter_map(Workload::as_network)
            .collect();
        for (i, net) in networks.iter().enumerate() {
            ensure(
                !networks
                    .iter()
                    .take(i)
                    .any(|o| o.ip_range.overlaps(&net.ip_range)),
                OverlappingNetworks,
            )?;
        }
        self.check_cross_vm_rules()
    }

    fn check_vm(&self, vm: &VmSpec) -> Result<(), SpecError> {
        use SpecError::*;
        ensure(vm.image.root_hash != [0u8; 32], ImageHashZero)?;
        let source = vm.image.source.as_bytes();
        ensure(
            !source.is_empty() && source.iter().all(u8::is_ascii_graphic),
            InvalidImageSource,
        )?;
        ensure((MIN_VCPUS..=MAX_VCPUS).contains(&vm.vcpus), VcpusOutOfRange)?;
        ensure(
            (MIN_VM_MEMORY_MIB..=MAX_VM_MEMORY_MIB).contains(&vm.memory_mib),
            MemoryOutOfRange,
        )?;
        ensure(
            (MIN_ROOTFS_MIB..=MAX_ROOTFS_MIB).contains(&vm.rootfs_mib),
            RootfsOutOfRange,
        )?;

        for (i, m) in vm.mounts.iter().enumerate() {
            let target = self.workload(&m.workload).ok_or(UnknownMountTarget)?;
            ensure(
                matches!(target.kind, WorkloadKind::Disk(_) | WorkloadKind::Volume(_)),
                MountTargetNotDiskOrVolume,
            )?;
            ensure(is_valid_mount_path(&m.path), InvalidMountPath)?;
            let earlier = || vm.mounts.iter().take(i);
            ensure(!earlier().any(|o| o.path == m.path), DuplicateMountPath)?;
            ensure(
                !earlier().any(|o| o.workload == m.workload),
                DuplicateMountTarget,
            )?;
        }
        for (i, e) in vm.env.iter().enumerate() {
            ensure(is_valid_env_key(&e.key), InvalidEnvKey)?;
            ensure(
                !vm.env.iter().take(i).any(|o| o.key == e.key),
                DuplicateEnvKey,
            )?;
            ensure(is_text(e.value.as_bytes()), InvalidText)?;
            ensure(
                !is_sealed_env_value(e.value.as_bytes())
                    || is_well_formed_sealed_env_value(e.value.as_bytes()),
                InvalidSealedEnvValue,
            )?;
        }
        ensure(is_text(vm.entrypoint.as_bytes()), InvalidText)?;
        ensure(vm.ssh_keys.iter().all(is_valid_ssh_key), InvalidSshKey)?;

        for (i, a) in vm.networks.iter().enumerate() {
            let target = self.workload(&a.network).ok_or(UnknownNetwork)?;
            let net = target.as_network().ok_or(NotANetwork)?;
            ensure(
                !vm.networks.iter().take(i).any(|o| o.network == a.network),
                DuplicateNetworkAttachment,
            )?;
            ensure(net.subnet.contains(a.ip), IpOutsideSubnet)?;
            let host = a.ip[3];
            ensure(
                a.ip != net.subnet.network() && a.ip != net.subnet.broadcast() && host != 1,
                ReservedIp,
            )?;
        }
        if let Some(name) = &vm.public_ip {
            let target = self.workload(name).ok_or(UnknownPublicIp)?;
            ensure(
                matches!(target.kind, WorkloadKind::PublicIp(_)),
                NotAPublicIp,
            )?;
        }
        Ok(())
    }

    /// Rules spanning several VMs: exclusive disks and public IPs, unique addresses.
    fn check_cross_vm_rules(&self) -> Result<(), SpecError> {
        use SpecError::*;
        let vms: Vec<&VmSpec> = self.workloads.iter().filter_map(Workload::as_vm).collect();
        for (i, vm) in vms.iter().enumerate() {
            let earlier = || vms.iter().take(i);
            for m in vm.mounts.iter() {
                let is_disk = self
                    .workload(&m.workload)
                    .map(|w| matches!(w.kind, WorkloadKind::Disk(_)))
                    .unwrap_or(false);
                if is_disk {
                    ensure(
                        !earlier().any(|o| o.mounts.iter().any(|om| om.workload == m.workload)),
                        DiskAttachedTwice,
                    )?;
                }
            }
            if let Some(ip) = &vm.public_ip {
                ensure(
                    !earlier().any(|o| o.public_ip.as_ref() == Some(ip)),
                    PublicIpUsedTwice,
                )?;
            }
            for a in vm.networks.iter() {
                ensure(
                    !earlier().any(|o| {
                        o.networks
                            .iter()
                            .any(|oa| oa.network == a.network && oa.ip == a.ip)
                    }),
                    DuplicateIp,
                )?;
            }
        }
        Ok(())
    }
}

fn check_network(net: &NetworkSpec) -> Result<(), SpecError> {
    use SpecError::*;
    ensure(
        net.ip_range.prefix_len == 16 && is_private_v4(net.ip_range.ip),
        InvalidIpRange,
    )?;
    ensure(host_bits_clear(&net.ip_range), CidrHostBitsSet)?;
    ensure(net.subnet.prefix_len == 24, SubnetNotSlash24)?;
    ensure(host_bits_clear(&net.subnet), CidrHostBitsSet)?;
    ensure(net.ip_range.contains(net.subnet.ip), SubnetOutsideRange)?;
    ensure(net.listen_port != 0, ListenPortZero)?;
    for (i, peer) in net.peers.iter().enumerate() {
        ensure(peer.public_key != [0u8; 32], PeerKeyZero)?;
        ensure(
            !net.peers
                .iter()
                .take(i)
                .any(|o| o.public_key == peer.public_key),
            DuplicatePeer,
        )?;
        ensure(
            !peer.allowed_ips.is_empty() && peer.allowed_ips.iter().all(|c| c.prefix_len <= 32),
            InvalidAllowedIps,
        )?;
        if let Some(endpoint) = &peer.endpoint {
            ensure(endpoint.port() != 0, InvalidPeerEndpoint)?;
        }
        ensure(
            !peer
                .allowed_ips
                .iter()
                .any(|c| net.subnet.overlaps(c) && c.prefix_len >= net.subnet.prefix_len),
            AllowedIpsInsideOwnSubnet,
        )?;
    }
    // All peers' allowed IPs pairwise disjoint, in O(n log n) (a spec holds up to
    // MAX_PEERS * MAX_ALLOWED_IPS of them per network): sorted by first address, a subnet
    // overlaps an earlier one exactly when it starts at or before the furthest end seen so far.
    let mut spans: Vec<(u32, u32)> = net
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter())
        .map(|c| {
            (
                u32::from_be_bytes(c.network()),
                u32::from_be_bytes(c.broadcast()),
            )
        })
        .collect();
    spans.sort_unstable();
    let mut furthest: Option<u32> = None;
    for (start, end) in spans {
        ensure(furthest.is_none_or(|f| start > f), OverlappingAllowedIps)?;
        furthest = Some(furthest.map_or(end, |f| f.max(end)));
    }
    ensure(
        net.private_key.0.len() as u32 == SEALED_WIREGUARD_KEY_LEN,
        SealedKeyWrongLength,
    )
}

fn ensure(condition: bool, error: SpecError) -> Result<(), SpecError> {
    if condition {
        Ok(())
    } else {
        Err(error)
    }
}

/// serde helpers for the readable file format.
#[cfg(feature = "std")]
mod serde_text {
    use super::*;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use std::string::String;

    pub mod hex {
        use super::*;

        pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&std::format!("0x{}", ::hex::encode(bytes)))
        }

        pub fn deserialize_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            let text = String::deserialize(d)?;
            let digits = text.strip_prefix("0x").unwrap_or(&text);
            ::hex::decode(digits).map_err(D::Error::custom)
        }
    }

    pub mod hex32 {
        use super::*;

        pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            hex::serialize(bytes, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            let bytes = hex::deserialize_vec(d)?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| D::Error::custom("expected 32 bytes of hex"))
        }
    }

    pub mod ipv4 {
        use super::*;

        pub fn serialize<S: Serializer>(ip: &[u8; 4], s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&std::net::Ipv4Addr::from(*ip))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 4], D::Error> {
            let text = String::deserialize(d)?;
            text.parse::<std::net::Ipv4Addr>()
                .map(|a| a.octets())
                .map_err(D::Error::custom)
        }
    }

    fn cidr_to_string(c: &Ipv4Cidr) -> String {
        std::format!("{}/{}", std::net::Ipv4Addr::from(c.ip), c.prefix_len)
    }

    fn parse_cidr(text: &str) -> Result<Ipv4Cidr, String> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| std::format!("`{text}` is not address/prefix"))?;
        let ip = ip
            .parse::<std::net::Ipv4Addr>()
            .map_err(|e| e.to_string())?
            .octets();
        let prefix_len = prefix.parse::<u8>().map_err(|e| e.to_string())?;
        if prefix_len > 32 {
            return Err(std::format!("prefix /{prefix_len} is longer than 32"));
        }
        Ok(Ipv4Cidr { ip, prefix_len })
    }

    pub mod cidr4 {
        use super::*;

        pub fn serialize<S: Serializer>(c: &Ipv4Cidr, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&cidr_to_string(c))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Cidr, D::Error> {
            parse_cidr(&String::deserialize(d)?).map_err(D::Error::custom)
        }
    }

    pub mod cidr4_list {
        use super::*;
        use serde::ser::SerializeSeq;

        pub fn serialize<S: Serializer>(
            list: &BoundedVec<Ipv4Cidr, ConstU32<MAX_ALLOWED_IPS>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(list.len()))?;
            for c in list.iter() {
                seq.serialize_element(&cidr_to_string(c))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<BoundedVec<Ipv4Cidr, ConstU32<MAX_ALLOWED_IPS>>, D::Error> {
            let texts = Vec::<String>::deserialize(d)?;
            let list = texts
                .iter()
                .map(|t| parse_cidr(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(D::Error::custom)?;
            BoundedVec::try_from(list).map_err(|_| {
                D::Error::custom(std::format!("more than {MAX_ALLOWED_IPS} allowed IPs"))
            })
        }
    }
}

#[cfg(test)]
mod tests;
