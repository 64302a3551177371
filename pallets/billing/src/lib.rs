//! # Billing pallet
//!
//! Charges contract owners for exactly what their workloads consumed, as the node running them
//! reports it, and pays farm owners, the treasury and the burn in the same call. Nothing runs
//! per contract or per hour: there is no offchain worker and no timer.
//!
//! ## Pricing
//!
//! Governance ([`Config::GovernanceOrigin`]) sets [`PricingPolicy`]s: prices per CU-hour,
//! SU-hour, IPv4-hour and per GiB of public traffic, and the split of each payment between the
//! farm owner, the treasury and the burn (Perbill, exactly 100% in total). Farms reference a
//! policy ([`GridCapacity::farm_pricing_policy`]); the genesis config installs policy 0, the one
//! new farms start with. CU and SU come from [`zos_primitives::units`].
//!
//! ## Reports
//!
//! A node's account signs [`Pallet::report_consumption`] with up to
//! [`Config::MaxReportsPerBatch`] [`ConsumptionReport`]s. Windows are in unix **seconds** of
//! the chain clock, half-open. A report is accepted when:
//! - the contract is activated and placed on the signer's node;
//! - `window_start < window_end`, the window is at most [`Config::MaxWindowSecs`] long and ends
//!   no later than chain time plus [`Config::MaxClockDriftSecs`];
//! - the window is at least [`Config::MinWindowSecs`] long, or ends on a multiple of it (the
//!   report interval's grid, so a contract's first window may be short), or is the final window
//!   of an ended contract (ending at the end time). A contract so has at most two windows per
//!   `MinWindowSecs`, however a node cuts them;
//! - `uptime_seconds` is at most the window length, and the public traffic at most
//!   [`Config::MaxTrafficBytesPerSec`] times it;
//! - the window starts exactly where the previous accepted one ended (no gap, no overlap), or,
//!   for the first report, not before the activation of the contract (see
//!   [`Pallet::activation_floor`]);
//! - the node's farm, its owner and its pricing policy exist.
//!
//! A report breaking a rule emits [`Event::ReportRejected`] with the [`RejectReason`] and the
//! rest of the batch goes on. Re-sending the last accepted report of a contract changes nothing
//! (a safe retry). Because each window starts at the previous end, the billed-until time of a
//! contract only moves forward.
//!
//! Fees: a batch is free (`Pays::No`) when it had no rejected report and at least one newly
//! accepted one, and its reports fit in the node's free quota: [`Config::FreeReportsPerPeriod`]
//! per [`Config::FreeReportPeriodBlocks`] (counted in [`FreeReportsUsed`]). A batch with a rejected
//! report pays, and so does a batch made only of resends: an honest node retries a batch only
//! when it did not see it land, so that fee is rare, while free rejections or free resends
//! would let a node fill blocks for nothing. The quota bounds what a node can put in blocks
//! for free whatever it reports.
//!
//! ## Settlement
//!
//! `charge = (CU x cu_hour + SU x su_hour + IPv4 x ipv4_hour + gateway hosts x
//! gateway_host_hour) x uptime / 1 h + traffic / GiB x traffic_gib`, every term rounded down. An update approved inside a window changes what the
//! contract holds at once: the window is charged span by span at what was held in each, the
//! uptime shared by the spans' lengths (see the `resource_changes` module). A running contract whose node does not report (a
//! stale contract, see [`Pallet::stale_contracts`]) accrues nothing. The one charge without a
//! report is an ended contract's final window that its node did not send within
//! [`Config::FinalReportBlocks`], or could not send because the contract ended with its node's
//! removal (estimated at once): it is estimated at the last accepted window's uptime ratio,
//! and only when that window ended at most [`Config::MaxWindowSecs`] before the end.
//!
//! The charge plus any earlier debt is taken at once from the owner's free balance. Billing
//! never reaps the owner: it keeps the existential deposit and respects holds and freezes
//! (`Preservation::Preserve`, `Fortitude::Polite`). The amount taken is split by the farm's
//! policy: the farm owner and burn parts round down, the treasury gets the remainder, so no
//! unit is lost. A payout that cannot be deposited (a new account below the existential deposit)
//! goes to the treasury; if even the treasury cannot take it, it is burned and counted as
//! burned. The runtime should endow the treasury account at genesis.
//!
//! ## Grace period
//!
//! What the owner cannot pay becomes the contract's debt and the contract enters the grace
//! period ([`ContractsForBilling::set_grace_period`], [`Event::GracePeriodStarted`]): the
//! executor stops serving but keeps data, and keeps reporting (with zero uptime). The first
//! report after a top-up collects the debt and returns the contract to its previous state
//! ([`Event::ContractResumed`]). After [`Config::GracePeriodBlocks`] without full settlement, a
//! deadline handled in `on_initialize` cancels it with
//! [`ContractsForBilling::cancel_out_of_funds`], which releases its capacity and IPs. Deadlines
//! live in FIFO queues (see the `deadlines` module): handled in every block, full or not, at
//! most [`Config::MaxDeadlinesPerBlock`] per queue and block, the rest in the next blocks.
//!
//! ## The final window
//!
//! Every second of a contract is billed, including the last ones: when a contract ends with
//! time after its last accepted window (or after its activation, if none), billing keeps it in
//! [`EndedContracts`] ([`Event::AwaitingFinalReport`]) and its node may report the remaining
//! windows up to the end time, the last one shorter than usual, within
//! [`Config::FinalReportBlocks`]. The window ending exactly at the end time closes the
//! contract's billing at once. If the node does not report in time, billing charges the
//! unreported time at the uptime ratio of the last accepted window
//! ([`Event::FinalWindowEstimated`]), but only when that window ended at most
//! [`Config::MaxWindowSecs`] before the end (the node was reporting until then); a node that
//! was already silent gets nothing charged for the silence. A contract ended by its node's
//! removal (`CancelCause::NodeRemoved`) is estimated the same way at once, since its node
//! leaves with it and cannot report. A contract cancelled for lack of
//! funds closes at once: in grace the node serves nothing. An ended contract is never in grace;
//! its remaining debt is written off (counted in [`Totals::written_off`]) when it closes.
//!
//! ## Arithmetic
//!
//! Charges use the 256-bit intermediate `a * b / c` of `sp_runtime` and saturate at the largest
//! balance (such an amount cannot be collected and only becomes debt). Every other sum or
//! difference is saturating; the totals could only saturate past `u128::MAX`.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
mod deadlines;
pub mod migrations;
#[cfg(test)]
mod mock;
mod resource_changes;
#[cfg(test)]
mod tests;
pub mod types;
pub mod weights;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

use alloc::vec::Vec;
use frame_support::{
    defensive,
    traits::{
        fungible::{self, Balanced, Inspect},
        tokens::{imbalance::Imbalance, Fortitude, Precision, Preservation},
        Get, UnixTime,
    },
    weights::Weight,
};
use frame_system::pallet_prelude::BlockNumberFor;
use sp_runtime::{
    traits::{Saturating, UniqueSaturatedFrom, UniqueSaturatedInto, Zero},
    Perbill, SaturatedConversion,
};
use zos_primitives::{
    billing::ContractBillingStatus,
    contracts::{BillingInfo, CancelCause, ContractsForBilling, OnContractEnded, OnNodeRemoved},
    ContractId, GridCapacity, NodeId, PricingPolicyId,
};

/// The balance type of [`Config::Currency`].
pub type BalanceOf<T> =
    <<T as Config>::Currency as fungible::Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// Sets up farms, nodes and contracts in the runtime's grid and deployments pallets, which this
/// pallet only reaches through read/act traits.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper<AccountId> {
    /// Registers a farm owned by `farm_owner` with pricing policy `policy`, and in it a node
    /// signing with `node_account`. Returns the node.
    fn create_node(
        farm_owner: &AccountId,
        node_account: &AccountId,
        policy: PricingPolicyId,
    ) -> NodeId;
    /// Creates a contract of `owner` on `node` reserving `required`, activated now.
    fn create_contract(
        owner: &AccountId,
        node: NodeId,
        required: &zos_primitives::spec::RequiredResources,
    ) -> ContractId;
    /// Sets the chain clock.
    fn set_time_ms(now_ms: u64);
}

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::{
        dispatch::{DispatchResultWithPostInfo, Pays, PostDispatchInfo},
        pallet_prelude::*,
    };
    use frame_system::pallet_prelude::*;

    /// 2: grace expiry moved from the `on_idle` sweep (and its `GraceCursor`) to the deadline
    /// queues; see [`crate::migrations`].
    pub const STORAGE_VERSION: StorageVersion = StorageVersion::new(3);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// The currency contracts are paid in.
        type Currency: fungible::Inspect<Self::AccountId>
            + fungible::Mutate<Self::AccountId>
            + fungible::Balanced<Self::AccountId>;
        /// Sets pricing policies.
        type GovernanceOrigin: EnsureOrigin<Self::RuntimeOrigin>;
        /// Nodes, farms, their owners and pricing policies.
        type Grid: GridCapacity<Self::AccountId>;
        /// The contracts being billed.
        type Contracts: ContractsForBilling<Self::AccountId, BlockNumberFor<Self>>;
        /// Chain time; the timestamp pallet in the runtime.
        type Time: UnixTime;
        /// Receives the treasury share of every payment and all rounding remainders.
        type TreasuryAccount: Get<Self::AccountId>;
        /// Reports in one `report_consumption` call.
        #[pallet::constant]
        type MaxReportsPerBatch: Get<u32>;
        /// Longest window one report may cover, seconds.
        #[pallet::constant]
        type MaxWindowSecs: Get<u64>;
        /// Shortest window one report may cover, seconds, unless it ends on a multiple of this
        /// (or is an ended contract's final window). Report intervals are multiples of it.
        #[pallet::constant]
        type MinWindowSecs: Get<u64>;
        /// Reports a node account may send fee-free per period; a batch that does not fit in
        /// what is left pays the normal fee (and uses none of the quota).
        #[pallet::constant]
        type FreeReportsPerPeriod: Get<u32>;
        /// Length of the free-report period, blocks.
        #[pallet::constant]
        type FreeReportPeriodBlocks: Get<BlockNumberFor<Self>>;
        /// Most public traffic (bytes in plus out) a node may report per second of a window: what
        /// a node's uplink could carry at most. A report above it is rejected, so a node cannot
        /// bill a contract for traffic that never fit through a wire.
        #[pallet::constant]
        type MaxTrafficBytesPerSec: Get<u64>;
        /// How far past chain time a window may end, seconds: node clocks and block times differ.
        #[pallet::constant]
        type MaxClockDriftSecs: Get<u64>;
        /// Target block time, milliseconds; used to date a contract's activation block.
        #[pallet::constant]
        type BlockTimeMs: Get<u64>;
        /// Blocks a contract may stay in grace before it is cancelled.
        #[pallet::constant]
        type GracePeriodBlocks: Get<BlockNumberFor<Self>>;
        /// Blocks after a contract ends during which its node may report the final window (up
        /// to the end time). After them billing estimates what was not reported and closes.
        #[pallet::constant]
        type FinalReportBlocks: Get<BlockNumberFor<Self>>;
        /// Most deadlines of each queue handled in one block's `on_initialize`; later ones fall
        /// through to the next blocks. Bounds the mandatory weight of every block.
        #[pallet::constant]
        type MaxDeadlinesPerBlock: Get<u32>;
        /// A contract whose last accepted window ended longer ago than this, in seconds, is
        /// stale.
        #[pallet::constant]
        type StaleAfterSecs: Get<u64>;
        type WeightInfo: WeightInfo;
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper<Self::AccountId>;
    }

    /// Pricing policies by id; farms reference one.
    #[pallet::storage]
    pub type PricingPolicies<T: Config> =
        StorageMap<_, Twox64Concat, PricingPolicyId, PricingPolicy<BalanceOf<T>>, OptionQuery>;

    /// Billing state of every contract with at least one accepted report.
    #[pallet::storage]
    pub type ContractBillings<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, ContractBilling<BalanceOf<T>>, OptionQuery>;

    /// Contracts in the grace period, with the block it started at. Exactly the contracts with
    /// a debt.
    #[pallet::storage]
    pub type GraceSince<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, BlockNumberFor<T>, OptionQuery>;

    /// Resources a contract held before each approved update not yet covered by an accepted
    /// window, oldest first: a window spanning a change is charged pro rata (see the
    /// `resource_changes` module). Bounded by [`MAX_RESOURCE_CHANGES`] per contract, removed
    /// when the contract's billing closes; covered by the contract's deposit.
    #[pallet::storage]
    pub type ResourceChanges<T: Config> = StorageMap<
        _,
        Twox64Concat,
        ContractId,
        BoundedVec<ResourceChange, ConstU32<MAX_RESOURCE_CHANGES>>,
        OptionQuery,
    >;

    /// Contracts that ended with time not billed yet, until their node reports the final
    /// window or the final-report deadline passes. Bounded by the contracts that ended in the
    /// last [`Config::FinalReportBlocks`] blocks; each held a deployment deposit.
    #[pallet::storage]
    pub type EndedContracts<T: Config> = StorageMap<
        _,
        Twox64Concat,
        ContractId,
        EndedContract<T::AccountId, BlockNumberFor<T>>,
        OptionQuery,
    >;

    /// Fee-free reports each node account sent: `(period, used)`, the period being the block
    /// number divided by [`Config::FreeReportPeriodBlocks`]. One entry per node account that
    /// sent a free batch (only a node's account gets one: the batch must settle a report of a
    /// contract on its node), removed with the node ([`OnNodeRemoved`]; entries of nodes
    /// removed before spec version 108 stay, a few bytes each).
    #[pallet::storage]
    pub type FreeReportsUsed<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, (BlockNumberFor<T>, u32), OptionQuery>;

    /// Deadline queues by kind and sequence number, handled in `on_initialize` in due order
    /// (see [`DeadlineKind`]).
    #[pallet::storage]
    pub type Deadlines<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        DeadlineKind,
        Twox64Concat,
        u64,
        Deadline<BlockNumberFor<T>>,
        OptionQuery,
    >;

    /// `(head, tail)` of each deadline queue: sequence numbers `head..tail` are queued.
    #[pallet::storage]
    pub type DeadlineQueueEnds<T: Config> =
        StorageMap<_, Twox64Concat, DeadlineKind, (u64, u64), ValueQuery>;

    /// Running totals of everything billed; see [`Totals`] for how they add up.
    #[pallet::storage]
    pub type LedgerTotals<T: Config> = StorageValue<_, Totals<BalanceOf<T>>, ValueQuery>;

    #[pallet::genesis_config]
    pub struct GenesisConfig<T: Config> {
        /// Policies installed at genesis; prices in the smallest balance unit.
        pub policies: Vec<(PricingPolicyId, PricingPolicy<u128>)>,
        #[serde(skip)]
        pub _config: core::marker::PhantomData<T>,
    }

    impl<T: Config> Default for GenesisConfig<T> {
        /// The development policy as policy 0, so a dev chain bills out of the box.
        fn default() -> Self {
            Self {
                policies: alloc::vec![(
                    zos_primitives::DEFAULT_PRICING_POLICY,
                    dev_pricing_policy()
                )],
                _config: Default::default(),
            }
        }
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            for (id, policy) in &self.policies {
                // A broken genesis must not start a chain.
                assert!(
                    policy.shares_are_complete(),
                    "pricing policy {id}: the shares must add up to 100%"
                );
                PricingPolicies::<T>::insert(
                    id,
                    policy.map_prices(BalanceOf::<T>::unique_saturated_from),
                );
            }
        }
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// Governance created or replaced a pricing policy.
        PricingPolicySet {
            policy_id: PricingPolicyId,
            policy: PricingPolicy<BalanceOf<T>>,
        },
        /// A report was accepted and settled. `charged` is its price, `collected` what was
        /// taken from the owner (it may include earlier debt), `debt` what is owed afterwards.
        ReportSettled {
            contract: ContractId,
            owner: T::AccountId,
            window_start: u64,
            window_end: u64,
            charged: BalanceOf<T>,
            collected: BalanceOf<T>,
            farm_owner: T::AccountId,
            to_farm_owner: BalanceOf<T>,
            to_treasury: BalanceOf<T>,
            burned: BalanceOf<T>,
            debt: BalanceOf<T>,
        },
        /// A report broke `reason`; it changed nothing. The rest of its batch was processed.
        ReportRejected {
            contract: ContractId,
            reason: RejectReason,
        },
        /// The owner could not pay; the node must stop serving the contract and keep its data.
        GracePeriodStarted {
            contract: ContractId,
            owner: T::AccountId,
            debt: BalanceOf<T>,
        },
        /// The debt is paid; the contract is back in its previous state.
        ContractResumed {
            contract: ContractId,
            owner: T::AccountId,
        },
        /// The grace period ran out: the contract was cancelled for lack of funds.
        GracePeriodExpired {
            contract: ContractId,
            debt: BalanceOf<T>,
        },
        /// Cancelling a contract whose grace period ran out failed; it is retried after another
        /// grace period.
        GraceExpiryFailed {
            contract: ContractId,
            error: DispatchError,
        },
        /// A contract ended with time not billed yet: its node may report the final window, up
        /// to `ended_at` (unix seconds), until block `report_by`.
        AwaitingFinalReport {
            contract: ContractId,
            ended_at: u64,
            report_by: BlockNumberFor<T>,
        },
        /// The node did not report an ended contract's final window in time, or could not
        /// because the contract ended with its node's removal: billing charged it at the uptime
        /// ratio of the last accepted window (see the pallet documentation).
        FinalWindowEstimated {
            contract: ContractId,
            window_start: u64,
            window_end: u64,
            uptime_seconds: u64,
        },
        /// A contract ended and its billing state was removed; its debt was written off.
        BillingClosed {
            contract: ContractId,
            debt_written_off: BalanceOf<T>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// A batch needs at least one report.
        EmptyBatch,
        /// The farm owner, treasury and burn shares must add up to exactly 100%.
        SharesNotComplete,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        /// Handles due deadlines: in every block, full or not (`on_idle` never runs in a full
        /// block, so an attacker filling blocks could otherwise keep unpaid contracts alive).
        fn on_initialize(now: BlockNumberFor<T>) -> Weight {
            Self::handle_deadlines(now)
        }

        fn integrity_test() {
            assert!(
                T::MaxDeadlinesPerBlock::get() > 0,
                "deadlines would never be handled"
            );
            let (min, max) = (T::MinWindowSecs::get(), T::MaxWindowSecs::get());
            assert!(
                min > 0 && min <= max && max % min == 0,
                "the longest window must be a whole number of minimum windows"
            );
            assert!(
                !T::FreeReportPeriodBlocks::get().is_zero(),
                "the free-report period must be at least a block"
            );
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Reports what contracts on the signer's node consumed, and settles each accepted
        /// report at once. See the pallet documentation for the rules and the fee.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::report_consumption(reports.len().saturated_into())
            .saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
        pub fn report_consumption(
            origin: OriginFor<T>,
            reports: BoundedVec<ConsumptionReport, T::MaxReportsPerBatch>,
        ) -> DispatchResultWithPostInfo {
            let signer = ensure_signed(origin)?;
            ensure!(!reports.is_empty(), Error::<T>::EmptyBatch);
            let now_ms = Self::now_ms();
            let now_block = frame_system::Pallet::<T>::block_number();
            let mut rejected = false;
            let mut accepted_new = false;
            for report in reports.iter() {
                match Self::process_report(&signer, report, now_ms, now_block) {
                    Ok(ReportOutcome::Settled) => accepted_new = true,
                    Ok(ReportOutcome::Resend) => {}
                    Err(reason) => {
                        rejected = true;
                        Self::deposit_event(Event::ReportRejected {
                            contract: report.contract,
                            reason,
                        });
                    }
                }
            }
            let pays_fee = if accepted_new
                && !rejected
                && Self::use_free_reports(&signer, reports.len(), now_block)
            {
                Pays::No
            } else {
                Pays::Yes
            };
            Ok(PostDispatchInfo {
                actual_weight: None,
                pays_fee,
            })
        }

        /// Creates or replaces pricing policy `policy_id`. Farms referencing it are billed by the
        /// new prices from their next report on.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::set_pricing_policy())]
        pub fn set_pricing_policy(
            origin: OriginFor<T>,
            policy_id: PricingPolicyId,
            policy: PricingPolicy<BalanceOf<T>>,
        ) -> DispatchResult {
            T::GovernanceOrigin::ensure_origin(origin)?;
            ensure!(policy.shares_are_complete(), Error::<T>::SharesNotComplete);
            PricingPolicies::<T>::insert(policy_id, policy.clone());
            Self::deposit_event(Event::PricingPolicySet { policy_id, policy });
            Ok(())
        }
    }
}

/// The development pricing policy (12-decimal currency): 0.1 per CU-hour, 0.01 per SU-hour,
/// 0.05 per IPv4-hour, 0.01 per GiB of traffic, 0.01 per gateway host-hour; 70% farm owner, 20%
/// treasury, 10% burned.
pub fn dev_pricing_policy() -> PricingPolicy<u128> {
    const UNIT: u128 = 1_000_000_000_000;
    PricingPolicy {
        cu_hour: UNIT / 10,
        su_hour: UNIT / 100,
        ipv4_hour: UNIT / 20,
        traffic_gib: UNIT / 100,
        gateway_host_hour: UNIT / 100,
        farm_owner_share: Perbill::from_percent(70),
        treasury_share: Perbill::from_percent(20),
        burn_share: Perbill::from_percent(10),
    }
}

/// What happened to an accepted report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReportOutcome {
    /// New window, charged and settled.
    Settled,
    /// Identical to the last accepted report of the contract: nothing done.
    Resend,
}

impl<T: Config> Pallet<T> {
    /// Counts `count` fee-free reports of `node_account`; false (nothing counted) when they do
    /// not fit in what is left of its quota for this period.
    fn use_free_reports(
        node_account: &T::AccountId,
        count: usize,
        now_block: BlockNumberFor<T>,
    ) -> bool {
        let period_blocks = T::FreeReportPeriodBlocks::get().max(sp_runtime::traits::One::one());
        let period = now_block / period_blocks;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        FreeReportsUsed::<T>::mutate(node_account, |entry| {
            let used = match *entry {
                Some((p, used)) if p == period => used,
                _ => 0,
            };
            match used.checked_add(count) {
                Some(total) if total <= T::FreeReportsPerPeriod::get() => {
                    *entry = Some((period, total));
                    true
                }
                _ => false,
            }
        })
    }

    /// Chain time in milliseconds.
    fn now_ms() -> u64 {
        u64::try_from(T::Time::now().as_millis()).unwrap_or(u64::MAX)
    }

    /// The earliest second a contract's first window may start at.
    ///
    /// The chain does not keep the time of past blocks, so the activation time is estimated as
    /// `now - (blocks since activation) x BlockTimeMs`. Blocks are never faster than the target
    /// time, so the estimate is never before the real activation; `MaxClockDriftSecs` of slack
    /// absorbs the node's clock offset. After missed slots the estimate is late, and so the
    /// earliest accepted start: a node then starts its first window at the time it deployed,
    /// which is later than activation anyway.
    pub fn activation_floor(
        activated_at: BlockNumberFor<T>,
        now_ms: u64,
        now_block: BlockNumberFor<T>,
    ) -> u64 {
        let blocks: u64 = now_block
            .saturating_sub(activated_at)
            .unique_saturated_into();
        let estimate_ms = now_ms.saturating_sub(blocks.saturating_mul(T::BlockTimeMs::get()));
        (estimate_ms / 1000).saturating_sub(T::MaxClockDriftSecs::get())
    }

    /// Checks one report and settles it. Every check comes before the first write, so a
    /// rejected report changes nothing.
    fn process_report(
        signer: &T::AccountId,
        report: &ConsumptionReport,
        now_ms: u64,
        now_block: BlockNumberFor<T>,
    ) -> Result<ReportOutcome, RejectReason> {
        use RejectReason::*;
        let payer = Self::payer(report.contract).ok_or(UnknownContract)?;
        if T::Grid::node_account(payer.node).as_ref() != Some(signer) {
            return Err(NotContractNode);
        }
        let previous = ContractBillings::<T>::get(report.contract);
        if previous.as_ref().is_some_and(|b| b.last_report == *report) {
            return Ok(ReportOutcome::Resend);
        }

        let length = report
            .window_end
            .checked_sub(report.window_start)
            .filter(|length| *length > 0)
            .ok_or(EmptyWindow)?;
        check(length <= T::MaxWindowSecs::get(), WindowTooLong)?;
        let latest_end = (now_ms / 1000).saturating_add(T::MaxClockDriftSecs::get());
        check(report.window_end <= latest_end, WindowInFuture)?;
        if let Some(ended_at) = payer.ended_at {
            check(report.window_end <= ended_at, AfterContractEnd)?;
        }
        let min_window = T::MinWindowSecs::get().max(1);
        check(
            length >= min_window
                || report.window_end % min_window == 0
                || payer.ended_at == Some(report.window_end),
            WindowTooShort,
        )?;
        check(report.uptime_seconds <= length, UptimeExceedsWindow)?;
        let traffic =
            u128::from(report.public_bytes_in).saturating_add(report.public_bytes_out.into());
        let carried = u128::from(length).saturating_mul(T::MaxTrafficBytesPerSec::get().into());
        check(traffic <= carried, TrafficAboveCapacity)?;
        match &previous {
            Some(billing) => match report.window_start.cmp(&billing.billed_until()) {
                core::cmp::Ordering::Less => return Err(WindowOverlap),
                core::cmp::Ordering::Greater => return Err(WindowGap),
                core::cmp::Ordering::Equal => {}
            },
            None => check(
                report.window_start
                    >= Self::activation_floor(payer.activated_at, now_ms, now_block),
                StartsBeforeActivation,
            )?,
        }

        let debt_before = previous.map(|b| b.debt).unwrap_or_else(Zero::zero);
        Self::charge_and_settle(report, &payer, debt_before, now_block)?;
        if payer.ended_at == Some(report.window_end) {
            // The final window: nothing of the contract is left to bill.
            Self::close(report.contract);
        }
        Ok(ReportOutcome::Settled)
    }

    /// Who pays for `contract` and what it holds: a live activated contract, or one that ended
    /// and whose final window is still open.
    fn payer(contract: ContractId) -> Option<Payer<T::AccountId, BlockNumberFor<T>>> {
        match T::Contracts::contract_billing_info(contract) {
            Some(info) => Some(Payer {
                owner: info.owner,
                node: info.node,
                required: info.required,
                activated_at: info.activated_at,
                ended_at: None,
            }),
            None => EndedContracts::<T>::get(contract).map(|ended| Payer {
                owner: ended.owner,
                node: ended.node,
                required: ended.required,
                activated_at: ended.activated_at,
                ended_at: Some(ended.ended_at),
            }),
        }
    }

    /// Prices a checked report by the farm's policy and settles it. Fails (before any write)
    /// when the node's farm, its owner or its policy is gone.
    fn charge_and_settle(
        report: &ConsumptionReport,
        payer: &Payer<T::AccountId, BlockNumberFor<T>>,
        debt_before: BalanceOf<T>,
        now_block: BlockNumberFor<T>,
    ) -> Result<(), RejectReason> {
        use RejectReason::*;
        let farm = T::Grid::node_farm(payer.node).ok_or(FarmUnknown)?;
        let farm_owner = T::Grid::farm_owner(farm).ok_or(FarmUnknown)?;
        let policy = T::Grid::farm_pricing_policy(farm)
            .and_then(PricingPolicies::<T>::get)
            .ok_or(NoPricingPolicy)?;
        let charge = Self::charge_window(&policy, &payer.required, report);
        Self::settle(
            report,
            payer,
            &farm_owner,
            &policy,
            charge,
            debt_before,
            now_block,
        );
        Ok(())
    }

    /// Collects `charge` plus the earlier debt, pays out, records the new billing state and
    /// moves a live contract into or out of grace (an ended one keeps its debt until it is
    /// closed, which writes it off).
    fn settle(
        report: &ConsumptionReport,
        payer: &Payer<T::AccountId, BlockNumberFor<T>>,
        farm_owner: &T::AccountId,
        policy: &PricingPolicy<BalanceOf<T>>,
        charge: BalanceOf<T>,
        debt_before: BalanceOf<T>,
        now_block: BlockNumberFor<T>,
    ) {
        let contract = report.contract;
        let due = debt_before.saturating_add(charge);
        let payout = Self::collect(&payer.owner, farm_owner, policy, due);
        let collected = payout
            .farm_owner
            .saturating_add(payout.treasury)
            .saturating_add(payout.burn);
        let debt = due.saturating_sub(collected);

        LedgerTotals::<T>::mutate(|t| {
            t.charged = t.charged.saturating_add(charge);
            t.collected = t.collected.saturating_add(collected);
            t.to_farm_owners = t.to_farm_owners.saturating_add(payout.farm_owner);
            t.to_treasury = t.to_treasury.saturating_add(payout.treasury);
            t.burned = t.burned.saturating_add(payout.burn);
            t.debt = t.debt.saturating_sub(debt_before).saturating_add(debt);
        });
        ContractBillings::<T>::insert(
            contract,
            ContractBilling {
                node: payer.node,
                last_report: report.clone(),
                debt,
            },
        );
        Self::forget_changes_until(contract, report.window_end);
        Self::deposit_event(Event::ReportSettled {
            contract,
            owner: payer.owner.clone(),
            window_start: report.window_start,
            window_end: report.window_end,
            charged: charge,
            collected,
            farm_owner: farm_owner.clone(),
            to_farm_owner: payout.farm_owner,
            to_treasury: payout.treasury,
            burned: payout.burn,
            debt,
        });

        if payer.ended_at.is_some() {
            return;
        }
        if !debt.is_zero() {
            if !GraceSince::<T>::contains_key(contract) {
                GraceSince::<T>::insert(contract, now_block);
                Self::queue_deadline(
                    DeadlineKind::GraceExpiry,
                    contract,
                    T::GracePeriodBlocks::get(),
                );
                if let Err(e) = T::Contracts::set_grace_period(contract, true) {
                    // The debt stands and the grace deadline cancels the contract if it stays unpaid.
                    log::error!(target: LOG_TARGET, "contract {contract}: entering grace failed: {e:?}");
                }
                Self::deposit_event(Event::GracePeriodStarted {
                    contract,
                    owner: payer.owner.clone(),
                    debt,
                });
            }
        } else if GraceSince::<T>::take(contract).is_some() {
            if let Err(e) = T::Contracts::set_grace_period(contract, false) {
                log::error!(target: LOG_TARGET, "contract {contract}: leaving grace failed: {e:?}");
            }
            Self::deposit_event(Event::ContractResumed {
                contract,
                owner: payer.owner.clone(),
            });
        }
    }

    /// Takes up to `due` from `owner` (keeping it alive) and distributes it by `policy`.
    /// Returns what went where; the parts add up to the amount taken.
    fn collect(
        owner: &T::AccountId,
        farm_owner: &T::AccountId,
        policy: &PricingPolicy<BalanceOf<T>>,
        due: BalanceOf<T>,
    ) -> Payout<BalanceOf<T>> {
        let nothing = Payout {
            farm_owner: Zero::zero(),
            treasury: Zero::zero(),
            burn: Zero::zero(),
        };
        if due.is_zero() {
            return nothing;
        }
        let available =
            T::Currency::reducible_balance(owner, Preservation::Preserve, Fortitude::Polite);
        let take = due.min(available);
        if take.is_zero() {
            return nothing;
        }
        let issuance_before = T::Currency::total_issuance();
        let credit = match T::Currency::withdraw(
            owner,
            take,
            Precision::Exact,
            Preservation::Preserve,
            Fortitude::Polite,
        ) {
            Ok(credit) => credit,
            Err(e) => {
                // `take` is at most the reducible balance, so this cannot happen.
                defensive!("withdrawing the reducible balance failed", e);
                return nothing;
            }
        };

        let planned = policy.split(take);
        let (burn_credit, rest) = credit.split(planned.burn);
        let (farm_credit, treasury_credit) = rest.split(planned.farm_owner);
        let mut payout = Payout {
            farm_owner: planned.farm_owner,
            treasury: Zero::zero(),
            burn: planned.burn,
        };
        let treasury_credit = match T::Currency::resolve(farm_owner, farm_credit) {
            Ok(()) => treasury_credit,
            Err(unpaid) => {
                payout.farm_owner = Zero::zero();
                treasury_credit.merge(unpaid)
            }
        };
        let to_treasury = treasury_credit.peek();
        match T::Currency::resolve(&T::TreasuryAccount::get(), treasury_credit) {
            Ok(()) => payout.treasury = to_treasury,
            Err(unpaid) => {
                // Dropping a credit burns it; counted as burned, so nothing goes unaccounted.
                payout.burn = payout.burn.saturating_add(unpaid.peek());
                drop(unpaid);
            }
        }
        drop(burn_credit);

        // Per-call invariant: billing changes the total issuance by exactly what it burned.
        let issuance_after = T::Currency::total_issuance();
        if issuance_before.saturating_sub(issuance_after) != payout.burn {
            defensive!("billing changed the total issuance by more than it burned");
        }
        payout
    }

    /// Cancels a contract whose grace period ran out. False if cancelling failed and the
    /// contract is still there (to be retried).
    fn expire_grace(contract: ContractId) -> bool {
        let debt = ContractBillings::<T>::get(contract)
            .map(|b| b.debt)
            .unwrap_or_else(Zero::zero);
        match T::Contracts::cancel_out_of_funds(contract) {
            Ok(()) => {
                Self::deposit_event(Event::GracePeriodExpired { contract, debt });
                // Normally done already through `OnContractEnded`; idempotent.
                Self::close(contract);
                true
            }
            Err(error) => {
                if T::Contracts::contract_billing_info(contract).is_none() {
                    // Already gone without telling billing.
                    Self::close(contract);
                    true
                } else {
                    Self::deposit_event(Event::GraceExpiryFailed { contract, error });
                    false
                }
            }
        }
    }

    /// Removes the billing state of an ended contract, writing off its debt.
    pub(crate) fn close(contract: ContractId) {
        GraceSince::<T>::remove(contract);
        ResourceChanges::<T>::remove(contract);
        EndedContracts::<T>::remove(contract);
        if let Some(billing) = ContractBillings::<T>::take(contract) {
            let debt = billing.debt;
            if !debt.is_zero() {
                LedgerTotals::<T>::mutate(|t| {
                    t.debt = t.debt.saturating_sub(debt);
                    t.written_off = t.written_off.saturating_add(debt);
                });
            }
            Self::deposit_event(Event::BillingClosed {
                contract,
                debt_written_off: debt,
            });
        }
    }

    /// Billing state of an activated contract (for the runtime API).
    pub fn contract_billing(
        contract: ContractId,
    ) -> Option<ContractBillingStatus<BalanceOf<T>, BlockNumberFor<T>>> {
        let billing = ContractBillings::<T>::get(contract);
        let payer = Self::payer(contract);
        let now_ms = Self::now_ms();
        let (node, last_activity) = match (&billing, &payer) {
            (Some(b), _) => (b.node, b.billed_until()),
            (None, Some(p)) => (
                p.node,
                Self::activation_floor(
                    p.activated_at,
                    now_ms,
                    frame_system::Pallet::<T>::block_number(),
                )
                .saturating_add(T::MaxClockDriftSecs::get()),
            ),
            (None, None) => return None,
        };
        Some(ContractBillingStatus {
            contract,
            node,
            billed_until: billing.as_ref().map(|b| b.billed_until()),
            debt: billing.map(|b| b.debt).unwrap_or_else(Zero::zero),
            grace_since: GraceSince::<T>::get(contract),
            stale: Self::is_stale(last_activity, now_ms),
            ended_at: payer.and_then(|p| p.ended_at),
        })
    }

    /// `(contract, node, billed_until)` of every contract with an accepted report whose last
    /// window ended more than [`Config::StaleAfterSecs`] ago, by ascending id. Reads the whole
    /// map: for the runtime API and tests, never for a dispatchable.
    pub fn stale_contracts() -> Vec<(ContractId, NodeId, u64)> {
        let now_ms = Self::now_ms();
        let mut stale: Vec<_> = ContractBillings::<T>::iter()
            .filter(|(_, b)| Self::is_stale(b.billed_until(), now_ms))
            .map(|(id, b)| (id, b.node, b.billed_until()))
            .collect();
        stale.sort_unstable_by_key(|(id, _, _)| *id);
        stale
    }

    fn is_stale(last_activity_secs: u64, now_ms: u64) -> bool {
        (now_ms / 1000).saturating_sub(last_activity_secs) > T::StaleAfterSecs::get()
    }

    /// Checks the storage invariants:
    /// - the totals add up (see [`Totals`]) and their debt is the sum of the contracts' debts;
    /// - a live contract is in grace exactly when it has a debt, and has billing state then;
    ///   the contracts pallet agrees that it is in grace (across pallets);
    /// - an ended contract is not in grace, is unknown to the contracts pallet, is billed at
    ///   most up to its end and has a final-report deadline queued;
    /// - each grace period has its expiry deadline queued, and each queue holds exactly the
    ///   sequence numbers between its head and tail;
    /// - each contract's last report is its own, non-empty and not beyond chain time plus
    ///   drift (billed-until only moves forward: each accepted window starts at the previous
    ///   end and is non-empty, which is checked at acceptance);
    /// - every stored policy's shares add up to 100%.
    ///
    /// That billing changes the total issuance by exactly what it burns is checked on every
    /// payment (other pallets change the issuance too, so it cannot be checked here).
    #[cfg(any(feature = "try-runtime", test))]
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use frame_support::ensure;
        let totals = LedgerTotals::<T>::get();
        ensure!(totals.is_consistent(), "billing totals do not add up");
        let latest_end = (Self::now_ms() / 1000).saturating_add(T::MaxClockDriftSecs::get());
        let mut debt = BalanceOf::<T>::zero();
        for (id, billing) in ContractBillings::<T>::iter() {
            debt = debt.saturating_add(billing.debt);
            let report = &billing.last_report;
            ensure!(
                report.contract == id,
                "billing state holds another contract's report"
            );
            ensure!(
                report.window_start < report.window_end,
                "empty window accepted"
            );
            ensure!(
                billing.billed_until() <= latest_end,
                "billed beyond chain time"
            );
            match EndedContracts::<T>::get(id) {
                Some(ended) => ensure!(
                    billing.billed_until() <= ended.ended_at,
                    "an ended contract billed beyond its end"
                ),
                None => ensure!(
                    billing.debt.is_zero() != GraceSince::<T>::contains_key(id),
                    "a contract is in grace exactly when it has a debt"
                ),
            }
        }
        ensure!(
            debt == totals.debt,
            "total debt is not the sum of contract debts"
        );
        Self::resource_changes_try_state()?;
        let mut queued = alloc::collections::BTreeSet::new();
        for kind in DeadlineKind::ALL {
            let (head, tail) = DeadlineQueueEnds::<T>::get(kind);
            ensure!(head <= tail, "a deadline queue's head is past its tail");
            let mut count = 0u64;
            for (seq, deadline) in Deadlines::<T>::iter_prefix(kind) {
                ensure!(
                    (head..tail).contains(&seq),
                    "a deadline outside its queue's range"
                );
                count = count.saturating_add(1);
                let queued_at = match kind {
                    // A final-report deadline is found by contract alone.
                    DeadlineKind::FinalReport => Zero::zero(),
                    DeadlineKind::GraceExpiry => deadline.queued_at,
                };
                queued.insert((kind, deadline.contract, queued_at));
            }
            ensure!(count == tail - head, "a deadline queue has holes");
        }
        for (id, since) in GraceSince::<T>::iter() {
            ensure!(
                ContractBillings::<T>::contains_key(id),
                "contract in grace without billing state"
            );
            ensure!(
                queued.contains(&(DeadlineKind::GraceExpiry, id, since)),
                "a grace period without its expiry deadline"
            );
            ensure!(
                T::Contracts::contract_billing_info(id).is_some_and(
                    |info| info.state == zos_primitives::contracts::ContractState::GracePeriod
                ),
                "billing holds a contract in grace that the contracts pallet does not"
            );
        }
        for (id, _) in EndedContracts::<T>::iter() {
            ensure!(
                !GraceSince::<T>::contains_key(id),
                "an ended contract in grace"
            );
            ensure!(
                T::Contracts::contract_billing_info(id).is_none(),
                "an ended contract still known to the contracts pallet"
            );
            ensure!(
                queued.contains(&(DeadlineKind::FinalReport, id, Zero::zero())),
                "an ended contract without its final-report deadline"
            );
        }
        for (_, policy) in PricingPolicies::<T>::iter() {
            ensure!(
                policy.shares_are_complete(),
                "pricing policy shares do not add up to 100%"
            );
        }
        Ok(())
    }
}

impl<T: Config> OnNodeRemoved<T::AccountId> for Pallet<T> {
    /// Drops the node account's free-report count: the account reports no more.
    fn on_node_removed(_node: NodeId, account: &T::AccountId) {
        FreeReportsUsed::<T>::remove(account);
    }

    fn on_node_removed_weight() -> Weight {
        T::DbWeight::get().writes(1)
    }
}

impl<T: Config> OnContractEnded<T::AccountId, BlockNumberFor<T>> for Pallet<T> {
    /// Closes the contract's billing state, or, when time since the last accepted window (or
    /// since activation) is not billed yet, keeps it open for the final window; see the pallet
    /// documentation.
    fn on_contract_ended(
        contract: ContractId,
        cause: CancelCause,
        info: Option<BillingInfo<T::AccountId, BlockNumberFor<T>>>,
    ) {
        let Some(info) = info else {
            // Never activated: nothing was consumed.
            return Self::close(contract);
        };
        if cause == CancelCause::OutOfFunds || GraceSince::<T>::contains_key(contract) {
            // It ended in (or after) its grace period, in which the node serves nothing:
            // everything before the grace period was billed when it started.
            return Self::close(contract);
        }
        let now_ms = Self::now_ms();
        let now_block = frame_system::Pallet::<T>::block_number();
        let ended_at = now_ms / 1000;
        let billed_until = ContractBillings::<T>::get(contract)
            .map(|b| b.billed_until())
            .unwrap_or_else(|| Self::activation_floor(info.activated_at, now_ms, now_block));
        if billed_until >= ended_at {
            return Self::close(contract);
        }
        let ended = EndedContract {
            owner: info.owner,
            node: info.node,
            required: info.required,
            activated_at: info.activated_at,
            ended_at,
        };
        if cause == CancelCause::NodeRemoved {
            // Its node leaves the grid with it (in this block or the next few) and can no
            // longer report: the final window is estimated now, while the node's farm is
            // known, as for a node that does not report in time.
            Self::estimate_final_window(contract, ended, now_block);
            return Self::close(contract);
        }
        EndedContracts::<T>::insert(contract, ended);
        let after = T::FinalReportBlocks::get();
        Self::queue_deadline(DeadlineKind::FinalReport, contract, after);
        Self::deposit_event(Event::AwaitingFinalReport {
            contract,
            ended_at,
            report_by: now_block.saturating_add(after),
        });
    }

    fn on_contract_ended_weight() -> Weight {
        T::WeightInfo::final_report_deadline()
    }
}

const LOG_TARGET: &str = "runtime::billing";

/// Who pays for a contract being billed and what it holds.
struct Payer<AccountId, BlockNumber> {
    owner: AccountId,
    node: NodeId,
    required: zos_primitives::spec::RequiredResources,
    activated_at: BlockNumber,
    /// Set for a contract that ended: its windows may not end later.
    ended_at: Option<u64>,
}

fn check(condition: bool, reason: RejectReason) -> Result<(), RejectReason> {
    if condition {
        Ok(())
    } else {
        Err(reason)
    }
}
