//! Configuration of each pallet in the runtime.

use frame_support::{
    derive_impl,
    dispatch::DispatchClass,
    parameter_types,
    traits::{ConstBool, ConstU128, ConstU32, ConstU64, ConstU8, VariantCountOf},
    weights::{
        constants::{ParityDbWeight, WEIGHT_REF_TIME_PER_SECOND},
        IdentityFee, Weight,
    },
};
use frame_system::limits::{BlockLength, BlockWeights};
use frame_system::EnsureRoot;
use pallet_transaction_payment::{ConstFeeMultiplier, FungibleAdapter, Multiplier};
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_runtime::{
    traits::{AccountIdConversion, One},
    Perbill,
};
use sp_version::RuntimeVersion;
use zos_primitives::{Resources, GIB, MIB};

use super::{
    AccountId, Aura, Balance, Balances, Billing, Block, BlockNumber, Council, Deployments, Grid,
    Hash, Nonce, OriginCaller, PalletInfo, Runtime, RuntimeCall, RuntimeEvent, RuntimeFreezeReason,
    RuntimeHoldReason, RuntimeOrigin, RuntimeTask, System, Timestamp, DAYS, EXISTENTIAL_DEPOSIT,
    HOURS, MILLI_SECS_PER_BLOCK, MILLI_UNIT, MINUTES, SLOT_DURATION, SS58_PREFIX, UNIT, VERSION,
};

/// Share of a block that ordinary (non-operational) extrinsics may fill.
const NORMAL_DISPATCH_RATIO: Perbill = Perbill::from_percent(75);

parameter_types! {
    pub const BlockHashCount: BlockNumber = 2400;
    pub const Version: RuntimeVersion = VERSION;
    /// Two seconds of compute per block: a third of the 6 s slot.
    pub RuntimeBlockWeights: BlockWeights = BlockWeights::with_sensible_defaults(
        Weight::from_parts(2u64 * WEIGHT_REF_TIME_PER_SECOND, u64::MAX),
        NORMAL_DISPATCH_RATIO,
    );
    /// 5 MiB blocks; ordinary extrinsics may fill the normal share of it.
    pub RuntimeBlockLength: BlockLength = BlockLength::builder()
        .max_length(5 * 1024 * 1024)
        .modify_max_length_for_class(DispatchClass::Normal, |max| *max = NORMAL_DISPATCH_RATIO * *max)
        .build();
    pub const SS58Prefix: u16 = SS58_PREFIX;
}

#[derive_impl(frame_system::config_preludes::SolochainDefaultConfig)]
impl frame_system::Config for Runtime {
    type Block = Block;
    type BlockWeights = RuntimeBlockWeights;
    type BlockLength = RuntimeBlockLength;
    type AccountId = AccountId;
    type Nonce = Nonce;
    type Hash = Hash;
    type BlockHashCount = BlockHashCount;
    // The node runs ParityDB only.
    type DbWeight = ParityDbWeight;
    type Version = Version;
    type AccountData = pallet_balances::AccountData<Balance>;
    type SS58Prefix = SS58Prefix;
    type MaxConsumers = ConstU32<16>;
}

impl pallet_aura::Config for Runtime {
    type AuthorityId = AuraId;
    type DisabledValidators = ();
    type MaxAuthorities = ConstU32<32>;
    type AllowMultipleBlocksPerSlot = ConstBool<false>;
    type SlotDuration = pallet_aura::MinimumPeriodTimesTwo<Runtime>;
}

impl pallet_grandpa::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type WeightInfo = ();
    type MaxAuthorities = ConstU32<32>;
    type MaxNominators = ConstU32<0>;
    type MaxSetIdSessionEntries = ConstU64<0>;
    type KeyOwnerProof = sp_core::Void;
    type EquivocationReportSystem = ();
}

impl pallet_timestamp::Config for Runtime {
    type Moment = u64;
    type OnTimestampSet = Aura;
    type MinimumPeriod = ConstU64<{ SLOT_DURATION / 2 }>;
    type WeightInfo = ();
}

impl pallet_balances::Config for Runtime {
    type MaxLocks = ConstU32<50>;
    type MaxReserves = ();
    type ReserveIdentifier = [u8; 8];
    type Balance = Balance;
    type RuntimeEvent = RuntimeEvent;
    type DustRemoval = ();
    type ExistentialDeposit = ConstU128<EXISTENTIAL_DEPOSIT>;
    type AccountStore = System;
    type WeightInfo = pallet_balances::weights::SubstrateWeight<Runtime>;
    type FreezeIdentifier = RuntimeFreezeReason;
    type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type RuntimeFreezeReason = RuntimeFreezeReason;
    type DoneSlashHandler = ();
}

parameter_types! {
    pub FeeMultiplier: Multiplier = Multiplier::one();
}

impl pallet_transaction_payment::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type OnChargeTransaction = FungibleAdapter<Balances, ()>;
    type OperationalFeeMultiplier = ConstU8<5>;
    type WeightToFee = IdentityFee<Balance>;
    type LengthToFee = IdentityFee<Balance>;
    type FeeMultiplierUpdate = ConstFeeMultiplier<FeeMultiplier>;
    type WeightInfo = pallet_transaction_payment::weights::SubstrateWeight<Runtime>;
}

impl pallet_sudo::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeCall = RuntimeCall;
    type WeightInfo = pallet_sudo::weights::SubstrateWeight<Runtime>;
}

/// The council: motions pass by a majority of its members, membership changes by two thirds.
pub type CouncilCollective = pallet_collective::Instance1;

/// Root (sudo, on a development chain) or more than half of the council.
pub type RootOrCouncilMajority = frame_support::traits::EitherOfDiverse<
    EnsureRoot<AccountId>,
    pallet_collective::EnsureProportionMoreThan<AccountId, CouncilCollective, 1, 2>,
>;

/// Root (sudo, on a development chain) or at least two thirds of the council.
pub type RootOrCouncilTwoThirds = frame_support::traits::EitherOfDiverse<
    EnsureRoot<AccountId>,
    pallet_collective::EnsureProportionAtLeast<AccountId, CouncilCollective, 2, 3>,
>;

parameter_types! {
    /// A motion not decided within three days can be closed as disapproved.
    pub const CouncilMotionDuration: BlockNumber = 3 * DAYS;
    /// A motion may use at most half a block.
    pub MaxCouncilProposalWeight: Weight =
        Perbill::from_percent(50) * RuntimeBlockWeights::get().max_block;
}

impl pallet_collective::Config<CouncilCollective> for Runtime {
    type RuntimeOrigin = RuntimeOrigin;
    type Proposal = RuntimeCall;
    type RuntimeEvent = RuntimeEvent;
    type MotionDuration = CouncilMotionDuration;
    type MaxProposals = ConstU32<100>;
    type MaxMembers = ConstU32<32>;
    /// Members who do not vote count as voting with the prime member.
    type DefaultVote = pallet_collective::PrimeDefaultVote;
    type WeightInfo = pallet_collective::weights::SubstrateWeight<Runtime>;
    /// Membership goes through `CouncilMembership`; root may reset it (development only).
    type SetMembersOrigin = EnsureRoot<AccountId>;
    type MaxProposalWeight = MaxCouncilProposalWeight;
    type DisapproveOrigin = RootOrCouncilTwoThirds;
    type KillOrigin = RootOrCouncilTwoThirds;
    /// Only members propose, and there are at most 100 open motions: no deposit.
    type Consideration = ();
}

impl pallet_membership::Config<pallet_membership::Instance1> for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type AddOrigin = RootOrCouncilTwoThirds;
    type RemoveOrigin = RootOrCouncilTwoThirds;
    type SwapOrigin = RootOrCouncilTwoThirds;
    type ResetOrigin = RootOrCouncilTwoThirds;
    type PrimeOrigin = RootOrCouncilTwoThirds;
    type MembershipInitialized = Council;
    type MembershipChanged = Council;
    type MaxMembers = ConstU32<32>;
    type WeightInfo = pallet_membership::weights::SubstrateWeight<Runtime>;
}

impl pallet_releases::Config for Runtime {
    /// A runtime upgrade needs two thirds of the council (or sudo on a development chain).
    type ReleaseOrigin = RootOrCouncilTwoThirds;
    type WeightInfo = crate::weights::pallet_releases::WeightInfo<Runtime>;
}

impl pallet_utility::Config for Runtime {
    type RuntimeEvent = RuntimeEvent;
    type RuntimeCall = RuntimeCall;
    type PalletsOrigin = OriginCaller;
    type WeightInfo = pallet_utility::weights::SubstrateWeight<Runtime>;
}

parameter_types! {
    /// Smallest node the grid accepts: small on purpose, so test VMs can join a dev chain.
    pub const MinNodeCapacity: Resources = Resources::new(1, 256 * MIB, GIB, 0);
}

parameter_types! {
    /// Farm names are unique: squatting one costs ten tokens (returned on removal).
    pub const FarmDeposit: Balance = 10 * UNIT;
    /// Each address of a farm's pool, with its index entry.
    pub const FarmIpDeposit: Balance = UNIT;
    /// Each node authorization and the node it becomes, paid by the farm owner, so a new
    /// node needs no funds to join.
    pub const NodeDeposit: Balance = UNIT;
}

impl pallet_grid::Config for Runtime {
    type GovernanceOrigin = RootOrCouncilMajority;
    type MaxIpsPerFarm = ConstU32<256>;
    type MinNodeCapacity = MinNodeCapacity;
    /// Logical cores may be sold twice; memory and disks never.
    type CruOvercommit = ConstU32<2>;
    /// Executors beat every minute: five missed beats make a node Offline.
    type HeartbeatTimeoutMs = ConstU64<{ 5 * 60 * 1000 }>;
    type MinHeartbeatIntervalMs = ConstU64<{ 10 * 1000 }>;
    type Time = Timestamp;
    type Contracts = Deployments;
    type OnNodeRemoved = Billing;
    /// Deployers of a node being removed get a day to move their workloads.
    type NodeRemovalNoticeBlocks = ConstU32<DAYS>;
    /// 16 contract cancellations a block stay a small, fixed part of every block.
    type MaxContractsEndedPerBlock = ConstU32<16>;
    /// A node silent for three days is dead: anyone may have it removed.
    type DeadNodeAfterBlocks = ConstU32<{ 3 * DAYS }>;
    type RuntimeHoldReason = RuntimeHoldReason;
    type Currency = Balances;
    type FarmDeposit = FarmDeposit;
    type FarmIpDeposit = FarmIpDeposit;
    type NodeDeposit = NodeDeposit;
    type WeightInfo = crate::weights::pallet_grid::WeightInfo<Runtime>;
}

parameter_types! {
    /// Holding a spec on chain costs a base plus a price per encoded byte, returned on removal:
    /// the largest accepted spec (~160 KB) holds ~161 tokens.
    pub const ContractDepositBase: Balance = UNIT;
    pub const ContractDepositPerByte: Balance = MILLI_UNIT;
}

impl pallet_deployments::Config for Runtime {
    type RuntimeHoldReason = RuntimeHoldReason;
    type Currency = Balances;
    type Grid = Grid;
    type OnContractEnded = Billing;
    type OnResourcesChanged = Billing;
    type MaxSigners = ConstU32<16>;
    /// A proposal not approved within a day expires.
    type ProposalTtl = ConstU32<DAYS>;
    type MaxExpiriesPerBlock = ConstU32<64>;
    type DepositBase = ContractDepositBase;
    type DepositPerByte = ContractDepositPerByte;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = crate::benchmarks::GridSetup;
    type WeightInfo = crate::weights::pallet_deployments::WeightInfo<Runtime>;
}

parameter_types! {
    /// Receives the treasury share of every payment and the rounding dust.
    pub TreasuryAccount: AccountId =
        frame_support::PalletId(*b"zos/trsy").into_account_truncating();
}

impl pallet_billing::Config for Runtime {
    type Currency = Balances;
    type GovernanceOrigin = RootOrCouncilMajority;
    type Grid = Grid;
    type Contracts = Deployments;
    type Time = Timestamp;
    type TreasuryAccount = TreasuryAccount;
    type MaxReportsPerBatch = ConstU32<256>;
    /// A window covers at most an hour of consumption.
    type MaxWindowSecs = ConstU64<3600>;
    /// Windows are at least 10 s long or end on the 10 s grid: report intervals are
    /// multiples of 10 s, so a contract has at most two windows per 10 s.
    type MinWindowSecs = ConstU64<10>;
    /// 3,600 fee-free reports an hour per node: 10 contracts reported every 10 s, or 300 every
    /// 5 minutes. A node with more contracts pays fees for the rest (at 5-minute windows a
    /// fraction of what the windows earn), and a node cannot fill blocks for free.
    type FreeReportsPerPeriod = ConstU32<3_600>;
    type FreeReportPeriodBlocks = ConstU32<HOURS>;
    /// 100 Gbit/s: above any node's uplink today.
    type MaxTrafficBytesPerSec = ConstU64<12_500_000_000>;
    /// Reports may end at most a minute after chain time (node clocks drift).
    type MaxClockDriftSecs = ConstU64<60>;
    type BlockTimeMs = ConstU64<MILLI_SECS_PER_BLOCK>;
    /// Unpaid contracts keep their data for a day, then are cancelled.
    type GracePeriodBlocks = ConstU32<DAYS>;
    /// A node has ten minutes after a contract ends to report its final window.
    type FinalReportBlocks = ConstU32<{ 10 * MINUTES }>;
    /// Deadlines of each kind handled per block: 32 grace expiries (each a contract
    /// cancellation) stay a small, fixed part of every block.
    type MaxDeadlinesPerBlock = ConstU32<32>;
    /// A node silent for two hours makes its contracts stale.
    type StaleAfterSecs = ConstU64<{ 2 * 3600 }>;
    type WeightInfo = crate::weights::pallet_billing::WeightInfo<Runtime>;
    #[cfg(feature = "runtime-benchmarks")]
    type BenchmarkHelper = crate::benchmarks::GridSetup;
}
