//! Test runtime: System, Timestamp, Balances, the grid pallet (the real `GridCapacity`) and
//! the deployments pallet.

use crate as pallet_deployments;
use frame_support::{
    derive_impl, parameter_types,
    traits::{ConstU32, ConstU64, Hooks},
};
use frame_system::EnsureRoot;
use sp_runtime::BuildStorage;
use zos_primitives::{NodeId, Resources, GIB};

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
    pub type Balances = pallet_balances;
    #[runtime::pallet_index(3)]
    pub type Grid = pallet_grid;
    #[runtime::pallet_index(4)]
    pub type Deployments = pallet_deployments;
}

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountData = pallet_balances::AccountData<u64>;
}

#[derive_impl(pallet_timestamp::config_preludes::TestDefaultConfig)]
impl pallet_timestamp::Config for Test {}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type AccountStore = System;
}

/// Chain time of every test; the clock never moves, so nodes stay online.
pub const START_MS: u64 = 1_700_000_000_000;
pub const MAX_FARM_IPS: u32 = 16;

parameter_types! {
    pub const MinCapacity: Resources = Resources::new(1, GIB, 10 * GIB, 0);
}

impl pallet_grid::Config for Test {
    type GovernanceOrigin = EnsureRoot<u64>;
    type MaxIpsPerFarm = ConstU32<MAX_FARM_IPS>;
    type MinNodeCapacity = MinCapacity;
    type CruOvercommit = ConstU32<1>;
    type HeartbeatTimeoutMs = ConstU64<{ 10 * 60 * 1000 }>;
    type MinHeartbeatIntervalMs = ConstU64<{ 60 * 1000 }>;
    type Time = Timestamp;
    type Contracts = Deployments;
    type OnNodeRemoved = ();
    type NodeRemovalNoticeBlocks = ConstU64<NOTICE_BLOCKS>;
    type MaxContractsEndedPerBlock = ConstU32<MAX_ENDED_PER_BLOCK>;
    type DeadNodeAfterBlocks = ConstU64<1_000>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Currency = Balances;
    type FarmDeposit = ConstU64<1_000>;
    type FarmIpDeposit = ConstU64<100>;
    type NodeDeposit = ConstU64<300>;
    type WeightInfo = ();
}

pub const NOTICE_BLOCKS: u64 = 20;
pub const MAX_ENDED_PER_BLOCK: u32 = 3;
pub const TTL: u64 = 10;
pub const MAX_EXPIRIES: u32 = 4;
pub const MAX_SIGNERS: u32 = 8;
pub const DEPOSIT_BASE: u64 = 100;
pub const DEPOSIT_PER_BYTE: u64 = 1;
pub const ENDOWMENT: u64 = 1_000_000_000;

/// Creates grid nodes for benchmarks through the grid pallet's own paths.
#[cfg(feature = "runtime-benchmarks")]
pub struct GridHelper;

/// Farm owner account of every node the helpers create.
pub const FARMER: u64 = 500;

pub fn online_node(capacity: Resources, ips: u32) -> (NodeId, u64) {
    let account = 1_000 + u64::from(pallet_grid::NextNodeId::<Test>::get());
    let (_, node) = Grid::setup_online_node(FARMER, account, capacity, ips).expect("node set up");
    (node, account)
}

#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper<u64> for GridHelper {
    fn online_node(capacity: Resources, ips: u32) -> (NodeId, u64) {
        online_node(capacity, ips)
    }
}

impl pallet_deployments::Config for Test {
    type RuntimeHoldReason = RuntimeHoldReason;
    type Currency = Balances;
    type Grid = Grid;
    type OnContractEnded = ();
    type OnResourcesChanged = ();
    type MaxSigners = ConstU32<MAX_SIGNERS>;
    type ProposalTtl = ConstU64<TTL>;
    type MaxExpiriesPerBlock = ConstU32<MAX_EXPIRIES>;
    type DepositBase = ConstU64<DEPOSIT_BASE>;
    type DepositPerByte = ConstU64<DEPOSIT_PER_BYTE>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = GridHelper;
    type WeightInfo = ();
}

pub fn new_test_ext() -> sp_io::TestExternalities {
    let mut storage = frame_system::GenesisConfig::<Test>::default()
        .build_storage()
        .unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: (1..=20).chain([FARMER]).map(|a| (a, ENDOWMENT)).collect(),
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    ext.execute_with(|| {
        System::set_block_number(1);
        pallet_timestamp::Now::<Test>::put(START_MS);
    });
    ext
}

/// Every invariant of both pallets, plus: what this pallet says it reserved on each node is
/// exactly what the grid has reserved there (nothing else reserves in this runtime).
pub fn check_invariants() {
    Deployments::do_try_state().expect("deployments invariants hold");
    Grid::do_try_state().expect("grid invariants hold");
    for (id, node) in pallet_grid::Nodes::<Test>::iter() {
        assert_eq!(
            crate::NodeReserved::<Test>::get(id),
            node.reserved,
            "grid reservation of node {id} differs from the contracts'"
        );
        let active = crate::Contracts::<Test>::iter_values()
            .filter(|c| c.node == id && c.active.is_some())
            .count() as u32;
        assert_eq!(
            node.active_contracts, active,
            "active contract count of node {id}"
        );
    }
}

/// Runs `test` in a fresh externality and checks every storage invariant afterwards.
pub fn run_test(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        test();
        check_invariants();
    })
}

/// Moves to block `n`, running `on_initialize` for each block on the way.
pub fn run_to_block(n: u64) {
    while System::block_number() < n {
        let next = System::block_number() + 1;
        System::set_block_number(next);
        Grid::on_initialize(next);
        Deployments::on_initialize(next);
    }
}

/// Runs a storage migration as the runtime does; with the try-runtime feature, through its
/// pre- and post-upgrade checks.
pub fn upgrade<M: frame_support::traits::OnRuntimeUpgrade>() {
    #[cfg(feature = "try-runtime")]
    M::try_on_runtime_upgrade(true).expect("the migration's try-runtime checks");
    #[cfg(not(feature = "try-runtime"))]
    M::on_runtime_upgrade();
}
