//! Pallets whose benchmarks the runtime exposes to `benchmark pallet`.
frame_benchmarking::define_benchmarks!(
    [frame_system, SystemBench::<Runtime>]
    [pallet_balances, Balances]
    [pallet_timestamp, Timestamp]
    [pallet_sudo, Sudo]
    [pallet_utility, Utility]
    [pallet_grid, Grid]
    [pallet_deployments, Deployments]
    [pallet_billing, Billing]
    [pallet_releases, Releases]
);

/// Sets up farms, nodes and contracts through the real grid and deployments pallets for the
/// benchmarks of pallets that only reach them through traits.
pub struct GridSetup;

mod setup {
    use super::GridSetup;
    use crate::{AccountId, Balances, Deployments, Grid, Runtime, UNIT};
    use alloc::{boxed::Box, vec};
    use frame_support::traits::fungible::Mutate;
    use frame_system::RawOrigin;
    use zos_primitives::{
        spec::{
            DeploymentSpec, ImageRef, ImageSource, PublicIpSpec, RequiredResources, VmSpec,
            Workload, WorkloadKind, WorkloadName,
        },
        ContractId, NodeId, PricingPolicyId, Resources, GIB, MIB,
    };

    fn account(seed: u32) -> AccountId {
        frame_benchmarking::account("grid-setup", seed, 0)
    }

    fn fund(who: &AccountId) {
        let _ = Balances::mint_into(who, 1_000_000 * UNIT);
    }

    /// A node with room for any benchmark contract.
    fn big_node(farm_owner: AccountId, node_account: AccountId, ips: u32) -> NodeId {
        fund(&farm_owner);
        fund(&node_account);
        let capacity = Resources::new(1024, 4096 * GIB, 65_536 * GIB, 65_536 * GIB);
        pallet_grid::Pallet::<Runtime>::setup_online_node(farm_owner, node_account, capacity, ips)
            .map(|(_, node)| node)
            .expect("benchmark setup: node registration")
    }

    fn name(s: &[u8]) -> WorkloadName {
        WorkloadName::try_from(s).expect("short name")
    }

    /// A spec requiring `required`: one VM for compute and disk, one public IP per IPv4.
    fn spec_for(required: &RequiredResources) -> DeploymentSpec {
        let vm = VmSpec {
            image: ImageRef {
                root_hash: [1; 32],
                source: ImageSource::try_from(&b"bench"[..]).expect("short"),
            },
            vcpus: required.resources.cru.max(1) as u32,
            memory_mib: (required.resources.mru / MIB).max(256),
            rootfs_mib: (required.resources.sru / MIB).max(256),
            mounts: Default::default(),
            env: Default::default(),
            entrypoint: Default::default(),
            ssh_keys: Default::default(),
            networks: Default::default(),
            public_ip: (required.public_ipv4 > 0).then(|| name(b"ip")),
            overlay: false,
        };
        let mut workloads = vec![Workload {
            name: name(b"vm"),
            kind: WorkloadKind::Vm(vm),
        }];
        if required.public_ipv4 > 0 {
            workloads.push(Workload {
                name: name(b"ip"),
                kind: WorkloadKind::PublicIp(PublicIpSpec {
                    v4: true,
                    v6: false,
                }),
            });
        }
        DeploymentSpec {
            version: 0,
            workloads: frame_support::BoundedVec::truncate_from(workloads),
            metadata: Default::default(),
        }
    }

    impl pallet_deployments::BenchmarkHelper<AccountId> for GridSetup {
        fn online_node(capacity: Resources, ips: u32) -> (NodeId, AccountId) {
            let (owner, node_account) = (account(1), account(2));
            fund(&owner);
            fund(&node_account);
            let (_, node) = pallet_grid::Pallet::<Runtime>::setup_online_node(
                owner,
                node_account.clone(),
                capacity,
                ips,
            )
            .expect("benchmark setup: node registration");
            (node, node_account)
        }
    }

    impl pallet_billing::BenchmarkHelper<AccountId> for GridSetup {
        fn create_node(
            farm_owner: &AccountId,
            node_account: &AccountId,
            policy: PricingPolicyId,
        ) -> NodeId {
            // One public IP per contract of the largest report batch.
            let node = big_node(farm_owner.clone(), node_account.clone(), 256);
            let farm = pallet_grid::Nodes::<Runtime>::get(node)
                .map(|n| n.farm_id)
                .expect("node exists");
            Grid::set_farm_pricing_policy(RawOrigin::Root.into(), farm, policy)
                .expect("policy set");
            node
        }

        fn create_contract(
            owner: &AccountId,
            node: NodeId,
            required: &RequiredResources,
        ) -> ContractId {
            fund(owner);
            let id = pallet_deployments::NextContractId::<Runtime>::get();
            let signers =
                frame_support::BoundedVec::truncate_from(vec![pallet_deployments::types::Signer {
                    account: owner.clone(),
                    weight: 1,
                    required: true,
                }]);
            // The owner alone reaches the threshold: the contract activates on creation.
            Deployments::create(
                RawOrigin::Signed(owner.clone()).into(),
                node,
                Box::new(spec_for(required)),
                signers,
                1,
            )
            .expect("benchmark setup: contract creation");
            id
        }

        fn set_time_ms(now_ms: u64) {
            pallet_timestamp::Now::<Runtime>::put(now_ms);
        }
    }
}
