//! The largest spec the chain accepts, for benchmarks and tests.
//!
//! Every bounded field is filled as far as the validation rules allow: 32 workloads (one
//! network with `MAX_PEERS` peers, `MAX_PUBLIC_IPV4` public IPs, `MAX_MOUNTS` shared volumes and
//! 15 VMs each with every list full and every string at its longest).

use alloc::{format, string::String, vec::Vec};
use frame_support::BoundedVec;
use zos_primitives::{spec::*, Ipv4Cidr};

fn padded(prefix: &str, index: u32, len: u32) -> String {
    let digits = format!("{index}");
    let fill = (len as usize).saturating_sub(prefix.len() + digits.len());
    let mut text = String::from(prefix);
    text.extend(core::iter::repeat('0').take(fill));
    text.push_str(&digits);
    text
}

fn name(prefix: &str, index: u32) -> WorkloadName {
    WorkloadName::try_from(padded(prefix, index, MAX_WORKLOAD_NAME_LEN).as_str())
        .unwrap_or_default()
}

fn full<T: Clone, S: frame_support::traits::Get<u32>>(items: Vec<T>) -> BoundedVec<T, S> {
    BoundedVec::truncate_from(items)
}

/// Number of VMs in [`spec`].
pub const VMS: u32 = MAX_WORKLOADS - 1 - MAX_PUBLIC_IPV4 - MAX_MOUNTS;

/// The worst-case spec at `version`. Consecutive versions differ in every VM's vCPUs and in
/// the names of the public IP workloads, so an update both reserves capacity and reassigns
/// every address.
pub fn spec(version: u32) -> DeploymentSpec {
    let parity = version % 2;
    let ip_prefix = if parity == 0 { "ipa" } else { "ipb" };
    let mut workloads: Vec<Workload> = Vec::new();

    let peers = (0..MAX_PEERS)
        .map(|p| WireguardPeer {
            public_key: [(p as u8).wrapping_add(1); 32],
            endpoint: Some(PeerEndpoint::V6 {
                ip: [0x20; 16],
                port: 51820,
            }),
            allowed_ips: full(
                // Distinct /32s, so the overlap rule compares every pair to the end.
                (0..MAX_ALLOWED_IPS)
                    .map(|a| {
                        let n = p.saturating_mul(MAX_ALLOWED_IPS).saturating_add(a);
                        Ipv4Cidr {
                            ip: [10, 20, 100u8.wrapping_add((n / 256) as u8), (n % 256) as u8],
                            prefix_len: 32,
                        }
                    })
                    .collect(),
            ),
        })
        .collect();
    workloads.push(Workload {
        name: name("net", 0),
        kind: WorkloadKind::Network(NetworkSpec {
            ip_range: Ipv4Cidr {
                ip: [10, 20, 0, 0],
                prefix_len: 16,
            },
            subnet: Ipv4Cidr {
                ip: [10, 20, 1, 0],
                prefix_len: 24,
            },
            listen_port: 51820,
            peers: full(peers),
            private_key: SealedSecret(full([0xab; SEALED_WIREGUARD_KEY_LEN as usize].to_vec())),
            outbound_internet: true,
        }),
    });
    for i in 0..MAX_PUBLIC_IPV4 {
        workloads.push(Workload {
            name: name(ip_prefix, i),
            kind: WorkloadKind::PublicIp(PublicIpSpec { v4: true, v6: true }),
        });
    }
    for i in 0..MAX_MOUNTS {
        workloads.push(Workload {
            name: name("vol", i),
            kind: WorkloadKind::Volume(VolumeSpec {
                size_mib: MIN_DISK_MIB,
            }),
        });
    }
    let text = |c: char, len: u32| -> String { core::iter::repeat(c).take(len as usize).collect() };
    for v in 0..VMS {
        let vm = VmSpec {
            image: ImageRef {
                root_hash: [0x11; 32],
                source: ImageSource::try_from(text('s', MAX_IMAGE_SOURCE_LEN).as_str())
                    .unwrap_or_default(),
            },
            vcpus: MIN_VCPUS + parity,
            memory_mib: MIN_VM_MEMORY_MIB,
            rootfs_mib: MIN_ROOTFS_MIB,
            mounts: full(
                (0..MAX_MOUNTS)
                    .map(|m| Mount {
                        workload: name("vol", m),
                        path: MountPath::try_from(padded("/m", m, MAX_MOUNT_PATH_LEN).as_str())
                            .unwrap_or_default(),
                    })
                    .collect(),
            ),
            env: full(
                (0..MAX_ENV_VARS)
                    .map(|e| EnvVar {
                        key: EnvKey::try_from(padded("K", e, MAX_ENV_KEY_LEN).as_str())
                            .unwrap_or_default(),
                        value: EnvValue::try_from(text('v', MAX_ENV_VALUE_LEN).as_str())
                            .unwrap_or_default(),
                    })
                    .collect(),
            ),
            entrypoint: Entrypoint::try_from(text('e', MAX_ENTRYPOINT_LEN).as_str())
                .unwrap_or_default(),
            ssh_keys: full(
                (0..MAX_SSH_KEYS)
                    .map(|k| {
                        let key = padded("ssh-ed25519 A", k, MAX_SSH_KEY_LEN);
                        SshKey::try_from(key.as_str()).unwrap_or_default()
                    })
                    .collect(),
            ),
            networks: full(
                [NetworkAttachment {
                    network: name("net", 0),
                    ip: [10, 20, 1, (v as u8).wrapping_add(2)],
                }]
                .to_vec(),
            ),
            public_ip: (v < MAX_PUBLIC_IPV4).then(|| name(ip_prefix, v)),
            overlay: false,
        };
        workloads.push(Workload {
            name: name("vm", v),
            kind: WorkloadKind::Vm(vm),
        });
    }
    DeploymentSpec {
        version,
        workloads: full(workloads),
        metadata: Metadata::try_from(text('m', MAX_METADATA_LEN).as_str()).unwrap_or_default(),
    }
}
