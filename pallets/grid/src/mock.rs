//! Test runtime: System, Timestamp (the chain clock) and the grid pallet.

use crate as pallet_grid;
use frame_support::{derive_impl, parameter_types, traits::ConstU32};
use frame_system::EnsureRoot;
use sp_runtime::BuildStorage;
use zos_primitives::{Resources, GIB};

type Block = frame_system::mocking::MockBlock<Test>;

#[frame_support::runtime]
mod runtime {
    #[runtime::runtime]
    #[runtime::derive(
        RuntimeCall,
        RuntimeEvent,
        RuntimeError,
        RuntimeOrigin,
        RuntimeFreezeReason,
        RuntimeHoldReason,
        RuntimeSlashReason,
        RuntimeLockId,
        RuntimeTask,
        RuntimeViewFunction
    )]
    pub struct Test;

    #[runtime::pallet_index(0)]
    pub type System = frame_system;
    #[runtime::pallet_index(1)]
    pub type Timestamp = pallet_timestamp;
    #[runtime::pallet_index(2)]
    pub type Grid = pallet_grid;
    #[runtime::pallet_index(3)]
    pub type Balances = pallet_balances;
}

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountData = pallet_balances::AccountData<u64>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type AccountStore = System;
}

pub const FARM_DEPOSIT: u64 = 1_000;
pub const FARM_IP_DEPOSIT: u64 = 100;
pub const NODE_DEPOSIT: u64 = 300;
/// Balance of accounts 1..=20 at the start of each test.
pub const ENDOWMENT: u64 = 1_000_000;

#[derive_impl(pallet_timestamp::config_preludes::TestDefaultConfig)]
impl pallet_timestamp::Config for Test {}

pub const MAX_IPS: u32 = 8;
pub const TIMEOUT_MS: u64 = 10 * 60 * 1000;
pub const MIN_INTERVAL_MS: u64 = 60 * 1000;
pub const OVERCOMMIT: u32 = 4;
/// Chain time at the start of each test: any plausible "now", far from zero.
pub const START_MS: u64 = 1_700_000_000_000;

parameter_types! {
    pub const MinCapacity: Resources = Resources::new(1, GIB, 10 * GIB, 0);
}

pub const NOTICE_BLOCKS: u64 = 20;
pub const MAX_ENDED_PER_BLOCK: u32 = 3;
pub const DEAD_AFTER_BLOCKS: u64 = 100;

/// A double of the deployments pallet: contracts on nodes, ended through the real grid ledger.
pub struct MockContracts;

thread_local! {
    /// Contracts by id: node, reserved resources.
    pub static CONTRACTS: core::cell::RefCell<std::collections::BTreeMap<zos_primitives::ContractId, (zos_primitives::NodeId, Resources)>> =
        Default::default();
}

/// Records the `(node, account)` of each removed node, as billing would drop its entries.
pub struct RecordRemovedNodes;

impl zos_primitives::contracts::OnNodeRemoved<u64> for RecordRemovedNodes {
    fn on_node_removed(node: zos_primitives::NodeId, account: &u64) {
        REMOVED_NODES.with(|r| r.borrow_mut().push((node, *account)));
    }
    fn on_node_removed_weight() -> frame_support::weights::Weight {
        frame_support::weights::Weight::zero()
    }
}

thread_local! {
    /// What [`RecordRemovedNodes`] was told.
    pub static REMOVED_NODES: core::cell::RefCell<Vec<(zos_primitives::NodeId, u64)>> =
        Default::default();
    /// Contracts whose ending fails (a deployments pallet that cannot cancel them).
    pub static UNENDABLE: core::cell::RefCell<std::collections::BTreeSet<zos_primitives::ContractId>> =
        Default::default();
}

/// Places a contract on `node`: reserves `resources`, takes `ips` farm IPs, counts it active.
pub fn add_contract(
    id: zos_primitives::ContractId,
    node: zos_primitives::NodeId,
    resources: Resources,
    ips: u32,
) {
    use zos_primitives::GridCapacity;
    Grid::reserve(node, &resources).expect("fits");
    Grid::assign_public_ips(node, id, ips).expect("free IPs");
    Grid::contract_started(node).expect("counted");
    CONTRACTS.with(|c| c.borrow_mut().insert(id, (node, resources)));
}

/// Contracts still placed on `node`.
pub fn contracts_on(node: zos_primitives::NodeId) -> usize {
    CONTRACTS.with(|c| c.borrow().values().filter(|(n, _)| *n == node).count())
}

fn end(id: zos_primitives::ContractId) -> sp_runtime::DispatchResult {
    use zos_primitives::GridCapacity;
    let (node, resources) = CONTRACTS
        .with(|c| c.borrow_mut().remove(&id))
        .ok_or(sp_runtime::DispatchError::Other("no contract"))?;
    Grid::release(node, &resources)?;
    Grid::release_public_ips(node, id)?;
    Grid::contract_ended(node)
}

impl zos_primitives::contracts::EndContracts for MockContracts {
    fn end_contracts_on_node(
        node: zos_primitives::NodeId,
        max: u32,
    ) -> zos_primitives::contracts::EndedOnNode {
        let ids: Vec<_> = CONTRACTS.with(|c| {
            c.borrow()
                .iter()
                .filter(|(_, (n, _))| *n == node)
                .map(|(id, _)| *id)
                .take(max as usize)
                .collect()
        });
        let mut failed = false;
        for id in &ids {
            if UNENDABLE.with(|u| u.borrow().contains(id)) {
                failed = true;
                continue;
            }
            end(*id).expect("ends");
        }
        zos_primitives::contracts::EndedOnNode {
            attempted: ids.len() as u32,
            failed,
            more: contracts_on(node) > 0,
        }
    }
    fn end_contract_holding_ip(contract: zos_primitives::ContractId) -> sp_runtime::DispatchResult {
        end(contract)
    }
    fn end_contract_weight() -> frame_support::weights::Weight {
        frame_support::weights::Weight::from_parts(1_000_000, 0)
    }
}

impl pallet_grid::Config for Test {
    type GovernanceOrigin = EnsureRoot<u64>;
    type MaxIpsPerFarm = ConstU32<MAX_IPS>;
    type MinNodeCapacity = MinCapacity;
    type CruOvercommit = ConstU32<OVERCOMMIT>;
    type HeartbeatTimeoutMs = frame_support::traits::ConstU64<TIMEOUT_MS>;
    type MinHeartbeatIntervalMs = frame_support::traits::ConstU64<MIN_INTERVAL_MS>;
    type Time = Timestamp;
    type Contracts = MockContracts;
    type OnNodeRemoved = RecordRemovedNodes;
    type NodeRemovalNoticeBlocks = frame_support::traits::ConstU64<NOTICE_BLOCKS>;
    type MaxContractsEndedPerBlock = ConstU32<MAX_ENDED_PER_BLOCK>;
    type DeadNodeAfterBlocks = frame_support::traits::ConstU64<DEAD_AFTER_BLOCKS>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Currency = Balances;
    type FarmDeposit = frame_support::traits::ConstU64<FARM_DEPOSIT>;
    type FarmIpDeposit = frame_support::traits::ConstU64<FARM_IP_DEPOSIT>;
    type NodeDeposit = frame_support::traits::ConstU64<NODE_DEPOSIT>;
    type WeightInfo = ();
}

pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default()
        .build_storage()
        .unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: (1..=20).map(|a| (a, ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    ext.execute_with(|| {
        // Events are only collected from block 1 on.
        System::set_block_number(1);
        pallet_timestamp::Now::<Test>::put(START_MS);
    });
    ext
}

/// Runs `test` in a fresh externality and checks every storage invariant afterwards.
pub fn run_test(test: impl FnOnce()) {
    CONTRACTS.with(|c| c.borrow_mut().clear());
    UNENDABLE.with(|u| u.borrow_mut().clear());
    REMOVED_NODES.with(|r| r.borrow_mut().clear());
    new_test_ext().execute_with(|| {
        test();
        Grid::do_try_state().expect("storage invariants hold");
    })
}

/// Moves the chain clock forward by `ms` and the block number by one.
pub fn advance_ms(ms: u64) {
    System::set_block_number(System::block_number() + 1);
    pallet_timestamp::Now::<Test>::mutate(|now| *now += ms);
}

/// Runs a storage migration as the runtime does; with the try-runtime feature, through its
/// pre- and post-upgrade checks.
pub fn upgrade<M: frame_support::traits::OnRuntimeUpgrade>() {
    #[cfg(feature = "try-runtime")]
    M::try_on_runtime_upgrade(true).expect("the migration's try-runtime checks");
    #[cfg(not(feature = "try-runtime"))]
    M::on_runtime_upgrade();
}
