use super::*;
use crate::GIB;
use alloc::vec;

fn name(s: &str) -> WorkloadName {
    WorkloadName::try_from(s).unwrap()
}

fn bounded<T, const N: u32>(items: Vec<T>) -> BoundedVec<T, ConstU32<N>> {
    BoundedVec::try_from(items).ok().unwrap()
}

fn cidr(ip: [u8; 4], prefix_len: u8) -> Ipv4Cidr {
    Ipv4Cidr { ip, prefix_len }
}

fn vm(networks: Vec<NetworkAttachment>, mounts: Vec<Mount>, public_ip: Option<&str>) -> VmSpec {
    VmSpec {
        image: ImageRef {
            root_hash: [7u8; 32],
            source: ImageSource::try_from("https://images.example/ubuntu-24.04").unwrap(),
        },
        vcpus: 2,
        memory_mib: 2048,
        rootfs_mib: 10 * 1024,
        mounts: bounded(mounts),
        env: bounded(vec![EnvVar {
            key: EnvKey::try_from("RUST_LOG").unwrap(),
            value: EnvValue::try_from("info").unwrap(),
        }]),
        entrypoint: Entrypoint::try_from("/sbin/init").unwrap(),
        ssh_keys: bounded(vec![
            SshKey::try_from("ssh-ed25519 AAAAC3Nza user@host").unwrap()
        ]),
        networks: bounded(networks),
        public_ip: public_ip.map(name),
        overlay: false,
    }
}

fn network() -> NetworkSpec {
    NetworkSpec {
        ip_range: cidr([10, 20, 0, 0], 16),
        subnet: cidr([10, 20, 3, 0], 24),
        listen_port: 51820,
        peers: bounded(vec![WireguardPeer {
            public_key: [9u8; 32],
            endpoint: Some(PeerEndpoint::V4 {
                ip: [185, 1, 2, 3],
                port: 51820,
            }),
            allowed_ips: bounded(vec![cidr([10, 20, 4, 0], 24)]),
        }]),
        private_key: SealedSecret(bounded(vec![1u8; SEALED_WIREGUARD_KEY_LEN as usize])),
        outbound_internet: false,
    }
}

fn attach(ip: [u8; 4]) -> NetworkAttachment {
    NetworkAttachment {
        network: name("net"),
        ip,
    }
}

fn mount(target: &str, path: &str) -> Mount {
    Mount {
        workload: name(target),
        path: MountPath::try_from(path).unwrap(),
    }
}

/// A spec using every kind: two VMs sharing a volume and a network, one with a disk and a
/// public IP.
pub(crate) fn valid_spec() -> DeploymentSpec {
    let workloads = vec![
        Workload {
            name: name("net"),
            kind: WorkloadKind::Network(network()),
        },
        Workload {
            name: name("data"),
            kind: WorkloadKind::Disk(DiskSpec {
                size_mib: 50 * 1024,
            }),
        },
        Workload {
            name: name("shared"),
            kind: WorkloadKind::Volume(VolumeSpec { size_mib: 1024 }),
        },
        Workload {
            name: name("ip"),
            kind: WorkloadKind::PublicIp(PublicIpSpec { v4: true, v6: true }),
        },
        Workload {
            name: name("web"),
            kind: WorkloadKind::Vm(vm(
                vec![attach([10, 20, 3, 2])],
                vec![mount("data", "/var/lib/data"), mount("shared", "/shared")],
                Some("ip"),
            )),
        },
        Workload {
            name: name("worker_1"),
            kind: WorkloadKind::Vm(vm(
                vec![attach([10, 20, 3, 3])],
                vec![mount("shared", "/shared")],
                None,
            )),
        },
        Workload {
            name: name("web-health"),
            kind: WorkloadKind::HealthCheck(health_check()),
        },
    ];
    DeploymentSpec {
        version: 0,
        workloads: bounded(workloads),
        metadata: Metadata::try_from("web + worker").unwrap(),
    }
}

/// An HTTP check of the web VM.
fn health_check() -> HealthCheckSpec {
    HealthCheckSpec {
        vm: name("web"),
        probe: HealthProbe::Http {
            port: 80,
            path: HttpPath::try_from("/healthz").unwrap(),
        },
        interval_secs: 10,
        timeout_secs: 2,
        retries: 3,
        start_period_secs: 60,
        on_unhealthy: OnUnhealthy::Restart,
    }
}

fn with_health(spec: &mut DeploymentSpec, f: impl FnOnce(&mut HealthCheckSpec)) {
    with_workload(spec, "web-health", |k| match k {
        WorkloadKind::HealthCheck(h) => f(h),
        _ => panic!("not a health check"),
    })
}

/// A gateway `myapp` under the node's domain to the web VM in `net`.
fn gateway() -> GatewaySpec {
    GatewaySpec {
        host: GatewayHost::Name(GatewayName::try_from("myapp").unwrap()),
        network: Some(name("net")),
        backends: bounded(vec![GatewayBackend::V4 {
            ip: [10, 20, 3, 2],
            port: 80,
        }]),
        tls_passthrough: false,
    }
}

/// Adds `gateway()` changed by `f` as workload `site`.
fn with_gateway(spec: &mut DeploymentSpec, f: impl FnOnce(&mut GatewaySpec)) {
    let mut g = gateway();
    f(&mut g);
    spec.workloads
        .try_push(Workload {
            name: name("site"),
            kind: WorkloadKind::Gateway(g),
        })
        .unwrap();
}

fn with_workload(spec: &mut DeploymentSpec, workload: &str, f: impl FnOnce(&mut WorkloadKind)) {
    let w = spec
        .workloads
        .iter_mut()
        .find(|w| w.name == name(workload))
        .unwrap();
    f(&mut w.kind)
}

fn with_vm(spec: &mut DeploymentSpec, workload: &str, f: impl FnOnce(&mut VmSpec)) {
    with_workload(spec, workload, |k| match k {
        WorkloadKind::Vm(vm) => f(vm),
        _ => panic!("not a vm"),
    })
}

fn with_net(spec: &mut DeploymentSpec, f: impl FnOnce(&mut NetworkSpec)) {
    with_workload(spec, "net", |k| match k {
        WorkloadKind::Network(n) => f(n),
        _ => panic!("not a network"),
    })
}

#[test]
fn valid_spec_passes() {
    assert_eq!(valid_spec().validate(), Ok(()));
}

#[test]
fn invalid_specs_are_each_rejected_with_their_own_error() {
    use SpecError::*;
    type Mutation = fn(&mut DeploymentSpec);
    let table: &[(SpecError, Mutation)] = &[
        (NoWorkloads, |s| s.workloads = Default::default()),
        (MetadataNotUtf8, |s| {
            s.metadata = Metadata::try_from(&[0xffu8, 0xfe][..]).unwrap()
        }),
        (InvalidWorkloadName, |s| s.workloads[0].name = name("Net")),
        (InvalidWorkloadName, |s| s.workloads[0].name = name("")),
        (DuplicateWorkloadName, |s| {
            s.workloads[1].name = name("shared")
        }),
        (ImageHashZero, |s| {
            with_vm(s, "web", |v| v.image.root_hash = [0; 32])
        }),
        (InvalidImageSource, |s| {
            with_vm(s, "web", |v| {
                v.image.source = ImageSource::try_from("a b").unwrap()
            })
        }),
        (VcpusOutOfRange, |s| with_vm(s, "web", |v| v.vcpus = 0)),
        (VcpusOutOfRange, |s| {
            with_vm(s, "web", |v| v.vcpus = MAX_VCPUS + 1)
        }),
        (MemoryOutOfRange, |s| {
            with_vm(s, "web", |v| v.memory_mib = MIN_VM_MEMORY_MIB - 1)
        }),
        (RootfsOutOfRange, |s| {
            with_vm(s, "web", |v| v.rootfs_mib = MAX_ROOTFS_MIB + 1)
        }),
        (DiskSizeOutOfRange, |s| {
            with_workload(s, "data", |k| {
                *k = WorkloadKind::Disk(DiskSpec { size_mib: 0 })
            })
        }),
        (VolumeSizeOutOfRange, |s| {
            with_workload(s, "shared", |k| {
                *k = WorkloadKind::Volume(VolumeSpec {
                    size_mib: MAX_DISK_MIB + 1,
                })
            })
        }),
        (UnknownMountTarget, |s| {
            with_vm(s, "web", |v| v.mounts[0].workload = name("nope"))
        }),
        (MountTargetNotDiskOrVolume, |s| {
            with_vm(s, "web", |v| v.mounts[0].workload = name("net"))
        }),
        (InvalidMountPath, |s| {
            with_vm(s, "web", |v| {
                v.mounts[0].path = MountPath::try_from("relative").unwrap()
            })
        }),
        (InvalidMountPath, |s| {
            with_vm(s, "web", |v| {
                v.mounts[0].path = MountPath::try_from("/a/../etc").unwrap()
            })
        }),
        (DuplicateMountPath, |s| {
            with_vm(s, "web", |v| v.mounts[1].path = v.mounts[0].path.clone())
        }),
        (DuplicateMountTarget, |s| {
            with_vm(s, "web", |v| v.mounts[1].workload = name("data"))
        }),
        (DiskAttachedTwice, |s| {
            with_vm(s, "worker_1", |v| {
                v.mounts.try_push(mount("data", "/d")).unwrap()
            })
        }),
        (InvalidEnvKey, |s| {
            with_vm(s, "web", |v| v.env[0].key = EnvKey::try_from("1X").unwrap())
        }),
        (DuplicateEnvKey, |s| {
            with_vm(s, "web", |v| {
                let dup = v.env[0].clone();
                v.env.try_push(dup).unwrap()
            })
        }),
        (InvalidText, |s| {
            with_vm(s, "web", |v| {
                v.entrypoint = Entrypoint::try_from("a\0b").unwrap()
            })
        }),
        (InvalidSshKey, |s| {
            with_vm(s, "web", |v| {
                v.ssh_keys[0] = SshKey::try_from("hello").unwrap()
            })
        }),
        (UnknownNetwork, |s| {
            with_vm(s, "web", |v| v.networks[0].network = name("other"))
        }),
        (NotANetwork, |s| {
            with_vm(s, "web", |v| v.networks[0].network = name("data"))
        }),
        (DuplicateNetworkAttachment, |s| {
            with_vm(s, "web", |v| {
                v.networks.try_push(attach([10, 20, 3, 9])).unwrap()
            })
        }),
        (IpOutsideSubnet, |s| {
            with_vm(s, "web", |v| v.networks[0].ip = [10, 20, 4, 2])
        }),
        (ReservedIp, |s| {
            with_vm(s, "web", |v| v.networks[0].ip = [10, 20, 3, 1])
        }),
        (ReservedIp, |s| {
            with_vm(s, "web", |v| v.networks[0].ip = [10, 20, 3, 255])
        }),
        (DuplicateIp, |s| {
            with_vm(s, "worker_1", |v| v.networks[0].ip = [10, 20, 3, 2])
        }),
        (UnknownPublicIp, |s| {
            with_vm(s, "web", |v| v.public_ip = Some(name("none")))
        }),
        (NotAPublicIp, |s| {
            with_vm(s, "web", |v| v.public_ip = Some(name("shared")))
        }),
        (PublicIpUsedTwice, |s| {
            with_vm(s, "worker_1", |v| v.public_ip = Some(name("ip")))
        }),
        (PublicIpWithoutFamily, |s| {
            with_workload(s, "ip", |k| {
                *k = WorkloadKind::PublicIp(PublicIpSpec {
                    v4: false,
                    v6: false,
                })
            })
        }),
        (TooManyPublicIpv4, |s| {
            for i in 0..MAX_PUBLIC_IPV4 {
                s.workloads
                    .try_push(Workload {
                        name: name(&std::format!("ip{i}")),
                        kind: WorkloadKind::PublicIp(PublicIpSpec {
                            v4: true,
                            v6: false,
                        }),
                    })
                    .unwrap();
            }
        }),
        (InvalidIpRange, |s| {
            with_net(s, |n| n.ip_range = cidr([8, 8, 0, 0], 16))
        }),
        (InvalidIpRange, |s| {
            with_net(s, |n| n.ip_range = cidr([10, 0, 0, 0], 8))
        }),
        (CidrHostBitsSet, |s| {
            with_net(s, |n| n.subnet = cidr([10, 20, 3, 7], 24))
        }),
        (SubnetNotSlash24, |s| {
            with_net(s, |n| n.subnet = cidr([10, 20, 0, 0], 23))
        }),
        (SubnetOutsideRange, |s| {
            with_net(s, |n| n.subnet = cidr([10, 21, 3, 0], 24))
        }),
        (ListenPortZero, |s| with_net(s, |n| n.listen_port = 0)),
        (PeerKeyZero, |s| {
            with_net(s, |n| n.peers[0].public_key = [0; 32])
        }),
        (DuplicatePeer, |s| {
            with_net(s, |n| {
                let dup = n.peers[0].clone();
                n.peers.try_push(dup).unwrap()
            })
        }),
        (InvalidAllowedIps, |s| {
            with_net(s, |n| n.peers[0].allowed_ips = Default::default())
        }),
        (InvalidPeerEndpoint, |s| {
            with_net(s, |n| {
                n.peers[0].endpoint = Some(PeerEndpoint::V6 {
                    ip: [0; 16],
                    port: 0,
                })
            })
        }),
        (SealedKeyWrongLength, |s| {
            with_net(s, |n| n.private_key = SealedSecret(bounded(vec![1u8; 32])))
        }),
        (OverlappingAllowedIps, |s| {
            with_net(s, |n| {
                let mut other = n.peers[0].clone();
                other.public_key = [8; 32];
                other.allowed_ips = bounded(vec![cidr([10, 20, 4, 128], 25)]);
                n.peers.try_push(other).unwrap()
            })
        }),
        (OverlappingAllowedIps, |s| {
            with_net(s, |n| {
                n.peers[0].allowed_ips =
                    bounded(vec![cidr([10, 20, 4, 0], 24), cidr([10, 20, 4, 9], 32)])
            })
        }),
        (AllowedIpsInsideOwnSubnet, |s| {
            with_net(s, |n| {
                n.peers[0].allowed_ips = bounded(vec![cidr([10, 20, 3, 7], 32)])
            })
        }),
        (AllowedIpsInsideOwnSubnet, |s| {
            with_net(s, |n| {
                n.peers[0].allowed_ips = bounded(vec![cidr([10, 20, 3, 0], 24)])
            })
        }),
        (OverlappingNetworks, |s| {
            let mut second = network();
            second.subnet = cidr([10, 20, 9, 0], 24);
            s.workloads
                .try_push(Workload {
                    name: name("net2"),
                    kind: WorkloadKind::Network(second),
                })
                .unwrap();
        }),
        (InvalidGatewayName, |s| {
            with_gateway(s, |g| {
                g.host = GatewayHost::Name(GatewayName::try_from("My-App").unwrap())
            })
        }),
        (InvalidGatewayName, |s| {
            with_gateway(s, |g| {
                g.host = GatewayHost::Name(GatewayName::try_from("a.b").unwrap())
            })
        }),
        (InvalidGatewayFqdn, |s| {
            with_gateway(s, |g| {
                g.host = GatewayHost::Fqdn(Fqdn::try_from("localhost").unwrap())
            })
        }),
        (InvalidGatewayFqdn, |s| {
            with_gateway(s, |g| {
                g.host = GatewayHost::Fqdn(Fqdn::try_from("-x.example.org").unwrap())
            })
        }),
        (NoGatewayBackends, |s| {
            with_gateway(s, |g| g.backends = Default::default())
        }),
        (GatewayBackendNotAllowed, |s| {
            with_gateway(s, |g| {
                g.network = None;
                g.backends = bounded(vec![GatewayBackend::V4 {
                    ip: [127, 0, 0, 1],
                    port: 80,
                }]);
            })
        }),
        (GatewayBackendNotAllowed, |s| {
            with_gateway(s, |g| {
                g.network = None;
                let mut mapped = [0u8; 16];
                mapped[10..12].copy_from_slice(&[0xff, 0xff]);
                mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
                g.backends = bounded(vec![GatewayBackend::V6 {
                    ip: mapped,
                    port: 80,
                }]);
            })
        }),
        (GatewayBackendNotAllowed, |s| {
            with_gateway(s, |g| {
                g.network = None;
                g.backends = bounded(vec![GatewayBackend::V4 {
                    ip: [10, 20, 3, 2],
                    port: 80,
                }]);
            })
        }),
        (GatewayBackendNotAllowed, |s| {
            with_gateway(s, |g| {
                g.backends = bounded(vec![GatewayBackend::V4 {
                    ip: [10, 20, 3, 2],
                    port: 0,
                }])
            })
        }),
        (GatewayBackendOutsideNetwork, |s| {
            with_gateway(s, |g| {
                g.backends = bounded(vec![GatewayBackend::V4 {
                    ip: [10, 21, 3, 2],
                    port: 80,
                }])
            })
        }),
        (UnknownNetwork, |s| {
            with_gateway(s, |g| g.network = Some(name("nonet")))
        }),
        (NotANetwork, |s| {
            with_gateway(s, |g| g.network = Some(name("data")))
        }),
        (DuplicateGatewayHost, |s| {
            with_gateway(s, |_| {});
            let mut again = gateway();
            again.backends = bounded(vec![GatewayBackend::V4 {
                ip: [10, 20, 3, 3],
                port: 80,
            }]);
            s.workloads
                .try_push(Workload {
                    name: name("site2"),
                    kind: WorkloadKind::Gateway(again),
                })
                .unwrap();
        }),
        (InvalidSealedEnvValue, |s| {
            with_vm(s, "web", |v| {
                v.env[0].value = EnvValue::try_from("zos-sealed:v1:not base64").unwrap()
            })
        }),
        (InvalidSealedEnvValue, |s| {
            // Base64, but too short to hold a sealed box.
            with_vm(s, "web", |v| {
                v.env[0].value = EnvValue::try_from("zos-sealed:v1:AAAA").unwrap()
            })
        }),
        (UnknownHealthCheckTarget, |s| {
            with_health(s, |h| h.vm = name("nobody"))
        }),
        (HealthCheckTargetNotAVm, |s| {
            with_health(s, |h| h.vm = name("data"))
        }),
        (DuplicateHealthCheck, |s| {
            s.workloads
                .try_push(Workload {
                    name: name("web-health-2"),
                    kind: WorkloadKind::HealthCheck(HealthCheckSpec {
                        probe: HealthProbe::Tcp(22),
                        ..health_check()
                    }),
                })
                .unwrap();
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| h.interval_secs = 4)
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| h.timeout_secs = 11)
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| h.timeout_secs = 0)
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| {
                h.interval_secs = 600;
                h.timeout_secs = 61
            })
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| h.retries = 0)
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| h.retries = 21)
        }),
        (HealthTimingOutOfRange, |s| {
            with_health(s, |h| h.start_period_secs = 3601)
        }),
        (InvalidHealthProbe, |s| {
            with_health(s, |h| h.probe = HealthProbe::Tcp(0))
        }),
        (InvalidHealthProbe, |s| {
            with_health(s, |h| {
                h.probe = HealthProbe::Http {
                    port: 80,
                    path: HttpPath::try_from("healthz").unwrap(),
                }
            })
        }),
        (InvalidHealthProbe, |s| {
            with_health(s, |h| {
                h.probe = HealthProbe::Http {
                    port: 80,
                    path: HttpPath::try_from("/a b").unwrap(),
                }
            })
        }),
        (InvalidHealthProbe, |s| {
            with_health(s, |h| {
                h.probe = HealthProbe::Command(HealthCommand::try_from("  ").unwrap())
            })
        }),
        (InvalidHealthProbe, |s| {
            with_health(s, |h| {
                h.probe = HealthProbe::Command(HealthCommand::try_from(&b"true\0"[..]).unwrap())
            })
        }),
    ];
    assert!(table.len() >= 15);
    let mut distinct = std::collections::BTreeSet::new();
    for (i, &(expected, mutate)) in table.iter().enumerate() {
        let mut spec = valid_spec();
        mutate(&mut spec);
        assert_eq!(spec.validate(), Err(expected), "case {i} ({expected:?})");
        distinct.insert(std::format!("{expected:?}"));
    }
    // Every rule of the error enum has a case.
    assert_eq!(distinct.len(), 57);
}

#[test]
fn a_sealed_env_value_passes_the_chains_shape_check() {
    let (_, node_public) = crate::sealing::generate_box_keypair();
    let sealed =
        crate::sealing::seal_env_value(&node_public, &[7; 32], b"TOKEN", b"s3cret").unwrap();
    let mut spec = valid_spec();
    with_vm(&mut spec, "web", |v| {
        v.env[0].value = EnvValue::try_from(sealed.as_str()).unwrap()
    });
    assert_eq!(spec.validate(), Ok(()));
}

#[test]
fn required_resources_sums_each_kind() {
    let r = valid_spec().required_resources();
    assert_eq!(
        r,
        RequiredResources {
            resources: Resources {
                cru: 4,
                mru: 4 * GIB,
                sru: 2 * 10 * GIB + 50 * GIB + GIB,
                hru: 0,
            },
            public_ipv4: 1,
            gateway_hosts: 0,
        }
    );
    let mut v6_only = valid_spec();
    with_workload(&mut v6_only, "ip", |k| {
        *k = WorkloadKind::PublicIp(PublicIpSpec {
            v4: false,
            v6: true,
        })
    });
    assert_eq!(v6_only.required_resources().public_ipv4, 0);
}

#[test]
fn hash_is_blake2_of_scale_and_changes_with_any_field() {
    let spec = valid_spec();
    assert_eq!(spec.hash(), sp_crypto_hashing::blake2_256(&spec.encode()));
    // Kinds added later come last: the specs stored before keep their encoding and hash.
    assert_eq!(
        WorkloadKind::HealthCheck(health_check()).encode()[0],
        6,
        "a new kind must not renumber the existing ones"
    );
    let mut other = spec.clone();
    other.version = 1;
    assert_ne!(spec.hash(), other.hash());
    let mut other = spec.clone();
    with_vm(&mut other, "web", |v| v.memory_mib += 1);
    assert_ne!(spec.hash(), other.hash());
    // Field boundaries are unambiguous: moving a byte between adjacent strings changes the hash.
    let mut a = spec.clone();
    let mut b = spec.clone();
    with_vm(&mut a, "web", |v| {
        v.env[0].key = EnvKey::try_from("AB").unwrap();
        v.env[0].value = EnvValue::try_from("C").unwrap();
    });
    with_vm(&mut b, "web", |v| {
        v.env[0].key = EnvKey::try_from("A").unwrap();
        v.env[0].value = EnvValue::try_from("BC").unwrap();
    });
    assert_ne!(a.hash(), b.hash());
}

#[test]
fn json_and_toml_round_trip_with_readable_fields() {
    let spec = valid_spec();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    assert!(json.contains("\"ip_range\": \"10.20.0.0/16\""), "{json}");
    assert!(json.contains("\"ip\": \"10.20.3.2\""));
    assert!(json.contains("\"endpoint\": \"185.1.2.3:51820\""));
    assert!(json.contains(&std::format!("\"root_hash\": \"0x{}\"", "07".repeat(32))));
    assert!(json.contains("\"name\": \"worker_1\""));
    let back: DeploymentSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    assert_eq!(back.hash(), spec.hash());

    let text = toml::to_string(&spec).unwrap();
    let back: DeploymentSpec = toml::from_str(&text).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn a_hand_written_json_file_parses_and_unknown_fields_are_refused() {
    let json = r#"{
        "version": 0,
        "workloads": [
            {"name": "disk", "kind": {"disk": {"size_mib": 1024}}},
            {"name": "vm", "kind": {"vm": {
                "image": {"root_hash": "0x0101010101010101010101010101010101010101010101010101010101010101",
                          "source": "https://images.example/alpine"},
                "vcpus": 1, "memory_mib": 512, "rootfs_mib": 1024,
                "mounts": [{"workload": "disk", "path": "/data"}]
            }}}
        ]
    }"#;
    let spec: DeploymentSpec = serde_json::from_str(json).unwrap();
    assert_eq!(spec.validate(), Ok(()));
    assert_eq!(spec.required_resources().resources.sru, 2 * GIB);

    // A health check written with only what it needs takes the documented defaults.
    let check: Workload = toml::from_str(
        r#"
        name = "vm-health"
        kind.health_check = { vm = "vm", probe = { http = { port = 8080, path = "/healthz" } } }
        "#,
    )
    .unwrap();
    let Some(h) = check.as_health_check() else {
        panic!("not a health check: {check:?}")
    };
    assert_eq!(
        (
            h.interval_secs,
            h.timeout_secs,
            h.retries,
            h.start_period_secs,
            h.on_unhealthy
        ),
        (30, 5, 3, 120, OnUnhealthy::Restart)
    );
    let command: HealthProbe =
        toml::from_str::<toml::Value>(r#"probe = { command = "pgrep nginx" }"#).unwrap()["probe"]
            .clone()
            .try_into()
            .unwrap();
    assert_eq!(
        command,
        HealthProbe::Command(HealthCommand::try_from("pgrep nginx").unwrap())
    );
    let mut with_check = spec.clone();
    with_check.workloads.try_push(check).unwrap();
    assert_eq!(with_check.validate(), Ok(()));
    assert_eq!(with_check.required_resources(), spec.required_resources());

    let typo = json.replace("\"vcpus\"", "\"vcpu\"");
    assert!(serde_json::from_str::<DeploymentSpec>(&typo).is_err());
    let too_long = json.replace("\"disk\"", &std::format!("\"{}\"", "d".repeat(37)));
    assert!(serde_json::from_str::<DeploymentSpec>(&too_long).is_err());
}

#[test]
fn worst_case_encoded_size_is_bounded() {
    // The pallet's weights and deposits are sized for this; keep it in view when raising a bound.
    let max = DeploymentSpec::max_encoded_len();
    assert!(max < 400 * 1024, "max encoded spec size {max}");
    // Resources of the largest valid spec cannot saturate.
    let max_sru = u64::from(MAX_WORKLOADS) * MAX_DISK_MIB * MIB;
    assert!(max_sru < u64::MAX / 2);
}

#[test]
fn a_peer_may_hold_the_whole_range_around_the_own_subnet() {
    // A hidden node reaches everything through its access node, whose allowed IPs are the range.
    let mut spec = valid_spec();
    with_net(&mut spec, |n| {
        n.peers[0].allowed_ips = bounded(vec![cidr([10, 20, 0, 0], 16), cidr([100, 64, 20, 2], 32)])
    });
    assert_eq!(spec.validate(), Ok(()));
    // Disjoint ranges in one spec are fine.
    let mut second = network();
    second.ip_range = cidr([10, 21, 0, 0], 16);
    second.subnet = cidr([10, 21, 3, 0], 24);
    spec.workloads
        .try_push(Workload {
            name: name("net2"),
            kind: WorkloadKind::Network(second),
        })
        .unwrap();
    assert_eq!(spec.validate(), Ok(()));
}

#[test]
fn subnets_overlap_when_they_share_an_address() {
    assert!(cidr([10, 0, 0, 0], 8).overlaps(&cidr([10, 1, 2, 0], 24)));
    assert!(cidr([10, 1, 2, 0], 24).overlaps(&cidr([10, 0, 0, 0], 8)));
    assert!(cidr([10, 1, 2, 3], 32).overlaps(&cidr([10, 1, 2, 3], 32)));
    assert!(!cidr([10, 1, 2, 0], 24).overlaps(&cidr([10, 1, 3, 0], 24)));
    assert!(cidr([0, 0, 0, 0], 0).overlaps(&cidr([192, 0, 2, 1], 32)));
}

#[test]
fn gateways_are_valid_counted_and_keyed_by_domain_or_node() {
    let mut spec = valid_spec();
    with_gateway(&mut spec, |_| {});
    let mut public = gateway();
    public.host = GatewayHost::Fqdn(Fqdn::try_from("shop.example.org").unwrap());
    public.network = None;
    public.tls_passthrough = true;
    public.backends = bounded(vec![
        GatewayBackend::V4 {
            ip: [198, 51, 100, 20],
            port: 443,
        },
        GatewayBackend::V6 {
            ip: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            port: 443,
        },
    ]);
    spec.workloads
        .try_push(Workload {
            name: name("shop"),
            kind: WorkloadKind::Gateway(public),
        })
        .unwrap();
    assert_eq!(spec.validate(), Ok(()));
    assert_eq!(spec.required_resources().gateway_hosts, 2);

    let name_host = GatewayHost::Name(GatewayName::try_from("myapp").unwrap());
    let fqdn_host = GatewayHost::Fqdn(Fqdn::try_from("shop.example.org").unwrap());
    let domain: &[u8] = b"GW.Example.com";
    assert_eq!(
        gateway_full_host(&name_host, Some(domain)).unwrap(),
        b"myapp.gw.example.com".to_vec()
    );
    // A name: one key per domain, whichever node; none without a domain.
    assert_eq!(
        gateway_host_key(1, &name_host, Some(domain)),
        gateway_host_key(2, &name_host, Some(b"gw.example.com"))
    );
    assert_eq!(gateway_host_key(1, &name_host, None), None);
    // An FQDN: one key per node.
    assert_ne!(
        gateway_host_key(1, &fqdn_host, None),
        gateway_host_key(2, &fqdn_host, None)
    );
    assert!(gateway_host_key(1, &fqdn_host, None).is_some());
    // An FQDN spelling a name under the node's domain is that name: it cannot take it over.
    let spelled = GatewayHost::Fqdn(Fqdn::try_from("myapp.gw.example.com").unwrap());
    assert_eq!(
        gateway_host_key(7, &spelled, Some(domain)),
        gateway_host_key(1, &name_host, Some(domain))
    );
    // A name whose full host would exceed a DNS name's 253 bytes has no key.
    let long_domain = [
        b"a".repeat(60),
        b"b".repeat(60),
        b"c".repeat(60),
        b"d".repeat(60),
    ]
    .join(&b'.');
    let long_name = GatewayHost::Name(GatewayName::try_from("x".repeat(20).as_str()).unwrap());
    assert_eq!(gateway_host_key(1, &long_name, Some(&long_domain)), None);
}

#[test]
fn gateway_specs_read_from_json() {
    let json = r#"{"version": 0, "workloads": [
        {"name": "net", "kind": {"network": {"ip_range": "10.20.0.0/16", "subnet": "10.20.3.0/24",
            "listen_port": 51820, "private_key": "0x00"}}},
        {"name": "site", "kind": {"gateway": {"host": {"name": "myapp"}, "network": "net",
            "backends": ["10.20.3.2:8080"]}}},
        {"name": "shop", "kind": {"gateway": {"host": {"fqdn": "shop.example.org"},
            "backends": ["[2001:db8::7]:443"], "tls_passthrough": true}}}
    ]}"#;
    let spec: DeploymentSpec = serde_json::from_str(json).unwrap();
    let site = spec.workloads[1].as_gateway().unwrap();
    assert_eq!(
        site.backends[0],
        GatewayBackend::V4 {
            ip: [10, 20, 3, 2],
            port: 8080
        }
    );
    assert!(!site.tls_passthrough);
    let shop = spec.workloads[2].as_gateway().unwrap();
    assert_eq!(
        shop.backends[0].socket_addr().to_string(),
        "[2001:db8::7]:443"
    );
    let back: DeploymentSpec =
        serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    assert!(
        serde_json::from_str::<DeploymentSpec>(&json.replace("10.20.3.2:8080", "10.20.3.2"))
            .is_err()
    );
}
