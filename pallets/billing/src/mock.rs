//! Test runtime: System, Timestamp (the chain clock), Balances and the billing pallet, with
//! in-memory doubles of the grid (`GridCapacity`) and deployments (`ContractsForBilling`).

use crate as pallet_billing;
use alloc::collections::BTreeMap;
use core::cell::RefCell;
use frame_support::{
    derive_impl, parameter_types,
    traits::{ConstU128, ConstU32, ConstU64},
};
use frame_system::EnsureRoot;
use sp_runtime::{BuildStorage, DispatchError, DispatchResult, Perbill};
use zos_primitives::{
    contracts::{BillingInfo, CancelCause, ContractState, ContractsForBilling, OnContractEnded},
    spec::RequiredResources,
    ContractId, FarmId, GridCapacity, NodeId, PricingPolicyId, PublicIpv4Config, Resources,
};

pub type AccountId = u64;
pub type Balance = u128;
pub type BlockNumber = u64;
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
    pub type Billing = pallet_billing;
}

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
    type AccountData = pallet_balances::AccountData<Balance>;
}

#[derive_impl(pallet_timestamp::config_preludes::TestDefaultConfig)]
impl pallet_timestamp::Config for Test {}

pub const ED: Balance = 10;

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
    type Balance = Balance;
    type ExistentialDeposit = ConstU128<ED>;
    type AccountStore = System;
}

pub const MAX_BATCH: u32 = 16;
pub const MAX_WINDOW: u64 = 3_600;
pub const MIN_WINDOW: u64 = 10;
pub const FREE_REPORTS: u32 = 20;
pub const FREE_REPORT_PERIOD: BlockNumber = 100;
/// 10 Gbit/s.
pub const MAX_TRAFFIC_PER_SEC: u64 = 1_250_000_000;
pub const DRIFT: u64 = 60;
pub const BLOCK_MS: u64 = 6_000;
pub const GRACE_BLOCKS: BlockNumber = 100;
pub const STALE_AFTER: u64 = 7_200;
pub const FINAL_REPORT_BLOCKS: BlockNumber = 50;
pub const MAX_DEADLINES_PER_BLOCK: u32 = 2;
/// Chain time at the start of each test: any plausible "now", far from zero.
pub const START_MS: u64 = 1_700_000_000_000;
pub const START: u64 = START_MS / 1000;

pub const TREASURY: AccountId = 99;
pub const OWNER: AccountId = 1;
pub const POOR: AccountId = 2;
pub const NODE_ACCOUNT: AccountId = 10;
pub const OTHER_NODE_ACCOUNT: AccountId = 11;
pub const FARMER: AccountId = 20;
pub const OTHER_FARMER: AccountId = 21;
pub const NODE: NodeId = 1;
pub const OTHER_NODE: NodeId = 2;
pub const FARM: FarmId = 1;
pub const OTHER_FARM: FarmId = 2;
pub const OWNER_FUNDS: Balance = 1_000_000_000_000_000;

parameter_types! {
    pub const Treasury: AccountId = TREASURY;
}

impl pallet_billing::Config for Test {
    type Currency = Balances;
    type GovernanceOrigin = EnsureRoot<AccountId>;
    type Grid = MockGrid;
    type Contracts = MockContracts;
    type Time = Timestamp;
    type TreasuryAccount = Treasury;
    type MaxReportsPerBatch = ConstU32<MAX_BATCH>;
    type MaxWindowSecs = ConstU64<MAX_WINDOW>;
    type MinWindowSecs = ConstU64<MIN_WINDOW>;
    type FreeReportsPerPeriod = ConstU32<FREE_REPORTS>;
    type FreeReportPeriodBlocks = ConstU64<FREE_REPORT_PERIOD>;
    type MaxTrafficBytesPerSec = ConstU64<MAX_TRAFFIC_PER_SEC>;
    type MaxClockDriftSecs = ConstU64<DRIFT>;
    type BlockTimeMs = ConstU64<BLOCK_MS>;
    type GracePeriodBlocks = ConstU64<GRACE_BLOCKS>;
    type FinalReportBlocks = ConstU64<FINAL_REPORT_BLOCKS>;
    type MaxDeadlinesPerBlock = ConstU32<MAX_DEADLINES_PER_BLOCK>;
    type StaleAfterSecs = ConstU64<STALE_AFTER>;
    type WeightInfo = ();
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = MockHelper;
}

/// A node of the grid double.
#[derive(Clone, Debug)]
pub struct MockNode {
    pub account: AccountId,
    pub farm: FarmId,
    pub reserved: Resources,
}

/// A contract of the deployments double.
#[derive(Clone, Debug)]
pub struct MockContract {
    pub info: BillingInfo<AccountId, BlockNumber>,
    /// The state before the grace period, restored when it ends.
    pub before_grace: Option<ContractState>,
}

#[derive(Default)]
pub struct World {
    pub nodes: BTreeMap<NodeId, MockNode>,
    pub farms: BTreeMap<FarmId, (AccountId, PricingPolicyId)>,
    pub ips: BTreeMap<ContractId, (NodeId, u32)>,
    pub contracts: BTreeMap<ContractId, MockContract>,
    pub cancelled: Vec<ContractId>,
    pub next_contract: ContractId,
    /// Makes `cancel_out_of_funds` fail (a contracts pallet that cannot cancel right now).
    pub refuse_cancel: bool,
}

thread_local! {
    pub static WORLD: RefCell<World> = RefCell::new(World::default());
}

pub fn with_world<R>(f: impl FnOnce(&mut World) -> R) -> R {
    WORLD.with(|w| f(&mut w.borrow_mut()))
}

pub struct MockGrid;

impl GridCapacity<AccountId> for MockGrid {
    fn node_account(node: NodeId) -> Option<AccountId> {
        with_world(|w| w.nodes.get(&node).map(|n| n.account))
    }
    fn node_farm(node: NodeId) -> Option<FarmId> {
        with_world(|w| w.nodes.get(&node).map(|n| n.farm))
    }
    fn farm_owner(farm: FarmId) -> Option<AccountId> {
        with_world(|w| w.farms.get(&farm).map(|f| f.0))
    }
    fn farm_pricing_policy(farm: FarmId) -> Option<PricingPolicyId> {
        with_world(|w| w.farms.get(&farm).map(|f| f.1))
    }
    fn node_is_online(node: NodeId) -> bool {
        with_world(|w| w.nodes.contains_key(&node))
    }
    fn node_is_leaving(_node: NodeId) -> bool {
        false
    }
    fn node_accepts_workloads(_node: NodeId) -> Result<(), DispatchError> {
        Ok(())
    }
    fn free_capacity(_node: NodeId) -> Option<Resources> {
        None
    }
    fn reserve(node: NodeId, resources: &Resources) -> DispatchResult {
        with_world(|w| {
            let n = w
                .nodes
                .get_mut(&node)
                .ok_or(DispatchError::Other("no node"))?;
            n.reserved = n
                .reserved
                .checked_add(resources)
                .ok_or(DispatchError::Other("overflow"))?;
            Ok(())
        })
    }
    fn release(node: NodeId, resources: &Resources) -> DispatchResult {
        with_world(|w| {
            let n = w
                .nodes
                .get_mut(&node)
                .ok_or(DispatchError::Other("no node"))?;
            n.reserved = n
                .reserved
                .checked_sub(resources)
                .ok_or(DispatchError::Other("underflow"))?;
            Ok(())
        })
    }
    fn node_gateway_domain(_node: NodeId) -> Option<Vec<u8>> {
        None
    }
    fn assign_public_ips(
        node: NodeId,
        contract: ContractId,
        count: u32,
    ) -> Result<Vec<PublicIpv4Config>, DispatchError> {
        with_world(|w| w.ips.insert(contract, (node, count)));
        Ok(Vec::new())
    }
    fn release_public_ips(_node: NodeId, contract: ContractId) -> DispatchResult {
        with_world(|w| w.ips.remove(&contract));
        Ok(())
    }
    fn contract_started(_node: NodeId) -> DispatchResult {
        Ok(())
    }
    fn contract_ended(_node: NodeId) -> DispatchResult {
        Ok(())
    }
    fn node_ledger(_node: NodeId) -> Option<zos_primitives::NodeLedger> {
        None
    }
    fn assigned_public_ips(_node: NodeId, _contract: ContractId) -> Vec<[u8; 4]> {
        Vec::new()
    }
}

pub struct MockContracts;

impl ContractsForBilling<AccountId, BlockNumber> for MockContracts {
    fn contract_billing_info(contract: ContractId) -> Option<BillingInfo<AccountId, BlockNumber>> {
        with_world(|w| w.contracts.get(&contract).map(|c| c.info.clone()))
    }
    fn set_grace_period(contract: ContractId, in_grace: bool) -> DispatchResult {
        with_world(|w| {
            let c = w
                .contracts
                .get_mut(&contract)
                .ok_or(DispatchError::Other("no contract"))?;
            match (in_grace, c.before_grace.take()) {
                (true, None) => {
                    c.before_grace = Some(c.info.state.clone());
                    c.info.state = ContractState::GracePeriod;
                }
                (true, Some(before)) => c.before_grace = Some(before),
                (false, Some(before)) => c.info.state = before,
                (false, None) => {}
            }
            Ok(())
        })
    }
    fn cancel_out_of_funds(contract: ContractId) -> DispatchResult {
        if with_world(|w| w.refuse_cancel) {
            return Err(DispatchError::Other("cancel refused"));
        }
        let info = with_world(|w| w.contracts.remove(&contract))
            .ok_or(DispatchError::Other("no contract"))?
            .info;
        // Benchmark contracts never reserved; tests check the release through `reserved`.
        let _ = MockGrid::release(info.node, &info.required.resources);
        MockGrid::release_public_ips(info.node, contract)?;
        with_world(|w| w.cancelled.push(contract));
        <Billing as OnContractEnded<_, _>>::on_contract_ended(
            contract,
            CancelCause::OutOfFunds,
            Some(info),
        );
        Ok(())
    }
}

pub fn add_farm(farm: FarmId, owner: AccountId, policy: PricingPolicyId) {
    with_world(|w| w.farms.insert(farm, (owner, policy)));
}

pub fn add_node(node: NodeId, account: AccountId, farm: FarmId) {
    with_world(|w| {
        w.nodes.insert(
            node,
            MockNode {
                account,
                farm,
                reserved: Resources::zero(),
            },
        )
    });
}

/// Creates a contract activated at the current block, reserving its resources and IPs.
pub fn add_contract(owner: AccountId, node: NodeId, required: RequiredResources) -> ContractId {
    MockGrid::reserve(node, &required.resources).expect("the node exists and has room");
    insert_contract(owner, node, required)
}

/// Creates a contract without touching the capacity ledger.
fn insert_contract(owner: AccountId, node: NodeId, required: RequiredResources) -> ContractId {
    let id = with_world(|w| {
        w.next_contract += 1;
        w.next_contract
    });
    MockGrid::assign_public_ips(node, id, required.public_ipv4).expect("infallible");
    let info = BillingInfo {
        owner,
        node,
        required,
        state: ContractState::Deployed,
        activated_at: System::block_number(),
    };
    with_world(|w| {
        w.contracts.insert(
            id,
            MockContract {
                info,
                before_grace: None,
            },
        )
    });
    id
}

/// Ends a contract as the deployments pallet does: removed, capacity and IPs released, billing
/// told with the contract's last billing data.
pub fn end_contract(contract: ContractId, cause: CancelCause) {
    let info = with_world(|w| w.contracts.remove(&contract))
        .expect("the contract exists")
        .info;
    let _ = MockGrid::release(info.node, &info.required.resources);
    MockGrid::release_public_ips(info.node, contract).expect("infallible");
    <Billing as OnContractEnded<_, _>>::on_contract_ended(contract, cause, Some(info));
}

/// Moves block by block (6 s each), running billing's `on_initialize` in each.
pub fn run_blocks(blocks: BlockNumber) {
    for _ in 0..blocks {
        advance_secs(BLOCK_MS / 1000);
        <Billing as frame_support::traits::Hooks<BlockNumber>>::on_initialize(
            System::block_number(),
        );
    }
}

pub fn contract_state(contract: ContractId) -> Option<ContractState> {
    with_world(|w| w.contracts.get(&contract).map(|c| c.info.state.clone()))
}

pub fn reserved(node: NodeId) -> Resources {
    with_world(|w| w.nodes.get(&node).map(|n| n.reserved).unwrap_or_default())
}

/// A policy with round numbers: 3600 per CU-hour (1 per CU-second), 360 per SU-hour, 7200 per
/// IPv4-hour, 1000 per GiB, 1800 per gateway host-hour; 70/20/10.
pub fn test_policy() -> pallet_billing::PricingPolicy<Balance> {
    pallet_billing::PricingPolicy {
        cu_hour: 3_600,
        su_hour: 360,
        ipv4_hour: 7_200,
        traffic_gib: 1_000,
        gateway_host_hour: 1_800,
        farm_owner_share: Perbill::from_percent(70),
        treasury_share: Perbill::from_percent(20),
        burn_share: Perbill::from_percent(10),
    }
}

pub fn new_test_ext() -> sp_io::TestExternalities {
    WORLD.with(|w| *w.borrow_mut() = World::default());
    let mut storage = frame_system::GenesisConfig::<Test>::default()
        .build_storage()
        .unwrap();
    pallet_balances::GenesisConfig::<Test> {
        balances: vec![
            (OWNER, OWNER_FUNDS),
            (POOR, 1_000),
            (TREASURY, ED),
            (FARMER, ED),
        ],
        ..Default::default()
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    pallet_billing::GenesisConfig::<Test> {
        policies: vec![(0, crate::dev_pricing_policy()), (1, test_policy())],
        _config: Default::default(),
    }
    .assimilate_storage(&mut storage)
    .unwrap();
    let mut ext = sp_io::TestExternalities::new(storage);
    ext.execute_with(|| {
        // Events are only collected from block 1 on.
        System::set_block_number(1);
        pallet_timestamp::Now::<Test>::put(START_MS);
        add_farm(FARM, FARMER, 1);
        add_farm(OTHER_FARM, OTHER_FARMER, 1);
        add_node(NODE, NODE_ACCOUNT, FARM);
        add_node(OTHER_NODE, OTHER_NODE_ACCOUNT, OTHER_FARM);
    });
    ext
}

/// Runs `test` in a fresh externality, then checks every storage invariant and that billing
/// changed the total issuance by exactly what it burned (nothing else mints or burns here).
pub fn run_test(test: impl FnOnce()) {
    new_test_ext().execute_with(|| {
        let issuance = Balances::total_issuance();
        test();
        Billing::do_try_state().expect("storage invariants hold");
        let burned = pallet_billing::LedgerTotals::<Test>::get().burned;
        assert_eq!(
            Balances::total_issuance(),
            issuance - burned,
            "issuance changed only by burns"
        );
    })
}

/// Moves the chain clock forward by `secs` and the block number by `secs / 6`.
pub fn advance_secs(secs: u64) {
    System::set_block_number(System::block_number() + secs * 1000 / BLOCK_MS);
    pallet_timestamp::Now::<Test>::mutate(|now| *now += secs * 1000);
}

pub fn advance_blocks(blocks: BlockNumber) {
    advance_secs(blocks * BLOCK_MS / 1000);
}

#[cfg(feature = "runtime-benchmarks")]
pub struct MockHelper;

#[cfg(feature = "runtime-benchmarks")]
impl pallet_billing::BenchmarkHelper<AccountId> for MockHelper {
    fn create_node(
        farm_owner: &AccountId,
        node_account: &AccountId,
        policy: PricingPolicyId,
    ) -> NodeId {
        let (farm, node) = with_world(|w| {
            let farm = w.farms.keys().last().copied().unwrap_or(0) + 1;
            let node = w.nodes.keys().last().copied().unwrap_or(0) + 1;
            (farm, node)
        });
        add_farm(farm, *farm_owner, policy);
        add_node(node, *node_account, farm);
        node
    }
    fn create_contract(
        owner: &AccountId,
        node: NodeId,
        required: &RequiredResources,
    ) -> ContractId {
        insert_contract(*owner, node, *required)
    }
    fn set_time_ms(now_ms: u64) {
        pallet_timestamp::Now::<Test>::put(now_ms);
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
