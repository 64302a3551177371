//! Types stored or passed by the billing pallet.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::traits::tokens::Balance as BalanceT;
use scale_info::TypeInfo;
use sp_runtime::Perbill;
use zos_primitives::{
    spec::RequiredResources,
    units::{self, MILLI},
    ContractId, NodeId,
};

/// Prices of a farm's capacity and how each payment is split.
///
/// Prices are in the smallest balance unit: per whole CU, SU, IPv4 address or gateway host held
/// for one hour, and per GiB (2^30 bytes) of public traffic. The three shares must add up to exactly 100%.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
    frame_support::Serialize,
    frame_support::Deserialize,
)]
#[serde(crate = "frame_support::__private::serde")]
pub struct PricingPolicy<Balance> {
    pub cu_hour: Balance,
    pub su_hour: Balance,
    pub ipv4_hour: Balance,
    pub traffic_gib: Balance,
    /// Per host name (gateway workload) served by a gateway node.
    pub gateway_host_hour: Balance,
    /// Paid to the owner of the farm of the contract's node.
    pub farm_owner_share: Perbill,
    /// Paid to the treasury account, which also receives every rounding remainder.
    pub treasury_share: Perbill,
    /// Removed from the total issuance.
    pub burn_share: Perbill,
}

impl<Balance> PricingPolicy<Balance> {
    /// The same policy with every price converted by `f`.
    pub fn map_prices<B>(&self, f: impl Fn(Balance) -> B) -> PricingPolicy<B>
    where
        Balance: Copy,
    {
        PricingPolicy {
            cu_hour: f(self.cu_hour),
            su_hour: f(self.su_hour),
            ipv4_hour: f(self.ipv4_hour),
            traffic_gib: f(self.traffic_gib),
            gateway_host_hour: f(self.gateway_host_hour),
            farm_owner_share: self.farm_owner_share,
            treasury_share: self.treasury_share,
            burn_share: self.burn_share,
        }
    }
}

impl<Balance: BalanceT> PricingPolicy<Balance> {
    /// True if the shares add up to exactly 100%.
    pub fn shares_are_complete(&self) -> bool {
        let parts = [self.farm_owner_share, self.treasury_share, self.burn_share];
        let total = parts.iter().fold(0u64, |acc, p| {
            acc.saturating_add(u64::from(p.deconstruct()))
        });
        total == u64::from(Perbill::one().deconstruct())
    }

    /// Splits `amount` into `(farm owner, treasury, burn)`. The farm owner and burn parts are
    /// rounded down; the treasury gets the rest, so the three always add up to `amount`.
    pub fn split(&self, amount: Balance) -> Payout<Balance> {
        let farm_owner = self.farm_owner_share.mul_floor(amount);
        let burn = self.burn_share.mul_floor(amount);
        // farm_owner + burn <= amount because both round down and their shares are <= 100%;
        // saturating anyway so a malformed policy cannot underflow.
        let treasury = amount.saturating_sub(farm_owner).saturating_sub(burn);
        Payout {
            farm_owner,
            treasury,
            burn,
        }
    }

    /// What `report` costs for a contract holding `required`, in the smallest balance unit:
    /// `(CU x cu_hour + SU x su_hour + IPv4 x ipv4_hour + hosts x gateway_host_hour) x uptime
    /// / 1 h + traffic / GiB x traffic_gib`. Every term rounds down (see [`zos_primitives::units`]); the sum saturates
    /// at the largest balance, which no account can hold, so the excess only becomes debt.
    pub fn charge(&self, required: &RequiredResources, report: &ConsumptionReport) -> Balance {
        let price = |b: Balance| -> u128 { b.saturated_into_u128() };
        let uptime = report.uptime_seconds;
        let cu = units::price_for(
            units::cu_milli(&required.resources),
            uptime,
            price(self.cu_hour),
        );
        let su = units::price_for(
            units::su_milli(&required.resources),
            uptime,
            price(self.su_hour),
        );
        let ipv4 = units::price_for(
            u128::from(required.public_ipv4).saturating_mul(MILLI),
            uptime,
            price(self.ipv4_hour),
        );
        let hosts = units::price_for(
            u128::from(required.gateway_hosts).saturating_mul(MILLI),
            uptime,
            price(self.gateway_host_hour),
        );
        let bytes =
            u128::from(report.public_bytes_in).saturating_add(u128::from(report.public_bytes_out));
        let traffic = units::traffic_price(bytes, price(self.traffic_gib));
        let total = cu
            .saturating_add(su)
            .saturating_add(ipv4)
            .saturating_add(hosts)
            .saturating_add(traffic);
        sp_runtime::traits::UniqueSaturatedFrom::unique_saturated_from(total)
    }
}

/// `Balance -> u128` without a panic path (every FRAME balance type fits, but the trait only
/// promises a saturating conversion).
trait SaturatedIntoU128 {
    fn saturated_into_u128(self) -> u128;
}

impl<B: BalanceT> SaturatedIntoU128 for B {
    fn saturated_into_u128(self) -> u128 {
        sp_runtime::traits::UniqueSaturatedInto::<u128>::unique_saturated_into(self)
    }
}

/// How a collected amount was distributed.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Payout<Balance> {
    pub farm_owner: Balance,
    pub treasury: Balance,
    pub burn: Balance,
}

/// Consumption of one contract over one window, as its node measured it.
///
/// Times are unix seconds of the chain clock (the timestamp pallet). The window is half-open,
/// `[window_start, window_end)`.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct ConsumptionReport {
    pub contract: ContractId,
    pub window_start: u64,
    pub window_end: u64,
    /// Seconds of the window during which the contract's workloads were up and served.
    pub uptime_seconds: u64,
    pub public_bytes_in: u64,
    pub public_bytes_out: u64,
}

/// The rule a rejected report broke.
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
pub enum RejectReason {
    /// No activated contract has this id.
    UnknownContract,
    /// The contract is not placed on the node whose account signed the batch.
    NotContractNode,
    /// `window_end` must be after `window_start`.
    EmptyWindow,
    /// The window is longer than `MaxWindowSecs`.
    WindowTooLong,
    /// `window_end` is later than chain time plus `MaxClockDriftSecs`.
    WindowInFuture,
    /// `uptime_seconds` is longer than the window.
    UptimeExceedsWindow,
    /// The first window of a contract starts before its activation.
    StartsBeforeActivation,
    /// The window starts after the end of the last accepted one: the gap must be reported.
    WindowGap,
    /// The window starts before the end of the last accepted one.
    WindowOverlap,
    /// The node's farm or its owner is unknown.
    FarmUnknown,
    /// The farm's pricing policy does not exist.
    NoPricingPolicy,
    /// The window's public traffic is more than `MaxTrafficBytesPerSec` times its length.
    TrafficAboveCapacity,
    /// The contract ended: its final window must end at or before the end time.
    AfterContractEnd,
    /// The window is shorter than `MinWindowSecs` and does not end on a multiple of it (nor
    /// at the end of an ended contract).
    WindowTooShort,
}

/// What billing keeps per contract from its first accepted report until the contract ends.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct ContractBilling<Balance> {
    pub node: NodeId,
    /// The last accepted report; a byte-identical resend of it is a no-op. Its `window_end` is
    /// the time the contract is billed until, and the next window must start there.
    pub last_report: ConsumptionReport,
    /// Charged and not yet collected.
    pub debt: Balance,
}

impl<Balance> ContractBilling<Balance> {
    pub fn billed_until(&self) -> u64 {
        self.last_report.window_end
    }
}

/// A contract that ended while part of its time was not billed yet: its node may still report
/// the final window, up to `ended_at`, until the contract's [`DeadlineKind::FinalReport`]
/// deadline.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct EndedContract<AccountId, BlockNumber> {
    /// Pays for the final window.
    pub owner: AccountId,
    /// The node that ran it: the only one that may report its final window.
    pub node: NodeId,
    /// What the contract held when it ended (and is charged for).
    pub required: RequiredResources,
    /// Block of the contract's first activation.
    pub activated_at: BlockNumber,
    /// Chain time the contract ended at, unix seconds: the end of its final window.
    pub ended_at: u64,
}

/// The queues of [`crate::Deadlines`]. Each queue's deadlines are a fixed number of blocks after
/// the event that queued them, so each queue is in due order by construction.
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
    PartialOrd,
    Ord,
)]
pub enum DeadlineKind {
    /// A grace period runs out: the contract is cancelled if still in that grace period.
    GraceExpiry,
    /// The time to report an ended contract's final window runs out: billing estimates it (see
    /// the pallet documentation) and closes the contract's billing state.
    FinalReport,
}

impl DeadlineKind {
    /// Every queue, in the order `on_initialize` handles them.
    pub const ALL: [DeadlineKind; 2] = [DeadlineKind::GraceExpiry, DeadlineKind::FinalReport];
}

/// One queued deadline.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct Deadline<BlockNumber> {
    /// First block whose `on_initialize` handles it.
    pub due: BlockNumber,
    /// The contract the deadline is for.
    pub contract: ContractId,
    /// The block the deadline was queued at (a grace period's start): a deadline whose grace
    /// period ended and a later one started is recognised as out of date and skipped.
    pub queued_at: BlockNumber,
}

/// Running totals of everything billing moved, for audits and `try_state`.
///
/// Invariants (all sums exact unless a counter saturated, which needs more than `u128::MAX`):
/// - `charged == collected + debt + written_off`
/// - `collected == to_farm_owners + to_treasury + burned`
/// - `debt` is the sum of the debts of all contracts.
/// - The total issuance fell by exactly `burned` through billing.
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
pub struct Totals<Balance> {
    /// Every charge computed from an accepted report.
    pub charged: Balance,
    /// Taken from contract owners.
    pub collected: Balance,
    pub to_farm_owners: Balance,
    pub to_treasury: Balance,
    pub burned: Balance,
    /// Charged, not collected, contract still alive.
    pub debt: Balance,
    /// Debt of contracts that ended before paying it.
    pub written_off: Balance,
}

impl<Balance: BalanceT> Totals<Balance> {
    pub fn is_consistent(&self) -> bool {
        let accounted = self
            .collected
            .saturating_add(self.debt)
            .saturating_add(self.written_off);
        let paid = self
            .to_farm_owners
            .saturating_add(self.to_treasury)
            .saturating_add(self.burned);
        accounted == self.charged && paid == self.collected
    }
}

/// Most resource changes kept per contract between two accepted windows; a further change
/// merges the two oldest, charging the larger of their resources over both spans (never less
/// than was held).
pub const MAX_RESOURCE_CHANGES: u32 = 8;

/// What a contract held until `at` (unix seconds of the chain clock), when an approved update
/// changed it.
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
pub struct ResourceChange {
    pub at: u64,
    pub before: zos_primitives::spec::RequiredResources,
}
