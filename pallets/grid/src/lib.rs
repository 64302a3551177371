//! # Grid pallet
//!
//! Farms, the nodes that boot in them, and the ledger other pallets use to place work on nodes.
//!
//! - A farm has an owner, a unique name (case-insensitive), a certification and a pricing policy
//!   (both set by governance), and a pool of validated public IPv4 addresses.
//! - A node registers itself with the account its executor signs with, declares its capacity,
//!   and proves liveness with fee-free heartbeats. It joins a farm only with the farm owner's
//!   consent: the owner first authorizes the node's account (`authorize_node`, revocable until
//!   used), and registering uses the authorization up. Nobody can squat a farm, its node count
//!   or its IP pool with nodes of their own. Online/Offline is derived from the time of
//!   the last heartbeat, and the current uninterrupted uptime is stored.
//! - The farm owner declares how each of its nodes reaches the public network (IPv4, the IPv6
//!   prefix its VMs get addresses from, the domain for gateways); the node's executor gives
//!   VMs IPv6 addresses from the declared subnet. A node's own IPv4 address is unique
//!   chain-wide, like a pool address, and so is its own IPv6 address.
//! - A node publishes its overlay-network endpoint (`set_node_overlay`): its overlay key, from
//!   which deployers derive the overlay addresses of its VMs, and the multiaddrs others
//!   bootstrap into the overlay through, with the key's signature over the node's account as
//!   proof that the node holds the key. It goes with the node.
//! - The farm owner can evict a node (`remove_node`; the node can leave the same way): a node
//!   without contracts goes at once, one with contracts takes no new contracts or updates
//!   (`NodeLeaving`) and, after [`Config::NodeRemovalNoticeBlocks`], its contracts end (cause
//!   `NodeRemoved`, capacity, IPs and deposits released) and it is removed. Governance can
//!   force the removal of a node (no notice), of a farm with its nodes (the farm is frozen
//!   meanwhile: no new nodes, authorizations, addresses, names or contracts), and of a pool
//!   address (the contract holding it ends). See the `removal` module for the bounded queue
//!   behind it.
//! - The capacity ledger (`reserved` per node) and the IP assignments are changed only through
//!   [`zos_primitives::GridCapacity`], implemented by this pallet for the deployments and
//!   billing pallets. Memory and disks are never overcommitted; CPU by a constant factor.
//!
//! - Storage costs a deposit (see the `deposits` module), held from the farm owner and returned
//!   on removal: [`Config::FarmDeposit`] per farm, [`Config::FarmIpDeposit`] per pool address,
//!   [`Config::NodeDeposit`] per node authorization, kept for the node it becomes (the node's
//!   indexes, addresses, overlay endpoint, pending removal and billing's per-node entries), so
//!   squatting names, addresses or node slots costs, and a new node needs no funds of its own.
//!
//! Every index (name, account, farm membership, IP ownership, node counts) is kept in step with
//! the items it points at; `try_state` checks all of them.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
mod capacity;
mod checks;
mod deposits;
pub mod domains;
pub mod migrations;
#[cfg(test)]
mod mock;
mod nodes;
mod removal;
#[cfg(any(feature = "std", feature = "runtime-benchmarks"))]
mod setup;
#[cfg(test)]
mod tests;
#[cfg(any(feature = "try-runtime", feature = "std"))]
mod try_state;
pub mod types;
pub mod weights;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

use alloc::vec::Vec;
use frame_support::{
    dispatch::DispatchResult,
    ensure,
    traits::{fungible, Get, UnixTime},
};
use sp_runtime::DispatchError;
use zos_primitives::{
    contracts::{EndContracts, OnNodeRemoved},
    overlay_key_proof_message, validate_public_ipv4_in, validate_public_ipv6_in, ContractId,
    FarmId, GridCapacity, NodeId, NodeStatus, OverlayEndpoint, OverlayKeyProof, PricingPolicyId,
    PublicIpv4Config, Resources,
};

/// Balance of the currency deposits are held in.
pub type BalanceOf<T> =
    <<T as Config>::Currency as fungible::Inspect<<T as frame_system::Config>::AccountId>>::Balance;

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::pallet_prelude::*;
    use frame_system::pallet_prelude::*;
    use zos_primitives::{IpError, OverlayAddressError, DEFAULT_PRICING_POLICY};

    const STORAGE_VERSION: StorageVersion = StorageVersion::new(3);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// Sets farm certification and pricing policy.
        type GovernanceOrigin: EnsureOrigin<Self::RuntimeOrigin>;
        /// Size of a farm's public IPv4 pool.
        #[pallet::constant]
        type MaxIpsPerFarm: Get<u32>;
        /// Every component of a registered node's capacity must be at least this.
        #[pallet::constant]
        type MinNodeCapacity: Get<Resources>;
        /// How many times its logical cores a node's CPU may be reserved (1 = no overcommit).
        #[pallet::constant]
        type CruOvercommit: Get<u32>;
        /// A node whose last heartbeat is older than this is Offline, and its uptime restarts.
        #[pallet::constant]
        type HeartbeatTimeoutMs: Get<u64>;
        /// Heartbeats are free, so they are rate-limited: a sooner one fails (and pays).
        #[pallet::constant]
        type MinHeartbeatIntervalMs: Get<u64>;
        /// Chain time; the timestamp pallet in the runtime.
        type Time: UnixTime;
        /// Ends the contracts of a node or a farm IP that leaves the grid (the deployments
        /// pallet).
        type Contracts: EndContracts;
        /// Told when a node is removed (billing drops its per-node entries).
        type OnNodeRemoved: OnNodeRemoved<Self::AccountId>;
        /// Blocks between a farm owner's (or a node's) request to remove a node that still
        /// runs contracts and the end of those contracts: the deployers' notice.
        #[pallet::constant]
        type NodeRemovalNoticeBlocks: Get<BlockNumberFor<Self>>;
        /// Most contracts of leaving nodes ended in one block's `on_initialize`; the rest wait
        /// for the next blocks. Bounds the mandatory weight of every block.
        #[pallet::constant]
        type MaxContractsEndedPerBlock: Get<u32>;
        /// A node silent this many blocks (no heartbeat, or none since registering) is dead:
        /// anyone may have it removed, ending its contracts (which are not charged while it is
        /// silent) and releasing their capacity and IPs.
        #[pallet::constant]
        type DeadNodeAfterBlocks: Get<BlockNumberFor<Self>>;
        type RuntimeHoldReason: From<HoldReason>;
        /// Holds the storage deposits (see the `deposits` module).
        type Currency: fungible::MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
            + fungible::Mutate<Self::AccountId>;
        /// Held from the owner for each farm (its name is unique, so squatting names costs).
        #[pallet::constant]
        type FarmDeposit: Get<BalanceOf<Self>>;
        /// Held from the farm owner for each address of the farm's pool.
        #[pallet::constant]
        type FarmIpDeposit: Get<BalanceOf<Self>>;
        /// Held from the farm owner for each node authorization, and then for the node it
        /// registers, until the node is removed.
        #[pallet::constant]
        type NodeDeposit: Get<BalanceOf<Self>>;
        type WeightInfo: WeightInfo;
    }

    /// Why this pallet holds funds.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// Deposit of a farm.
        FarmDeposit,
        /// Deposit of an address in a farm's pool.
        FarmIpDeposit,
        /// Deposit of a node authorization, then of the node.
        NodeDeposit,
    }

    #[pallet::type_value]
    pub fn FirstId() -> u32 {
        1
    }

    #[pallet::storage]
    pub type Farms<T: Config> = StorageMap<_, Twox64Concat, FarmId, Farm<T>, OptionQuery>;

    /// On a test network: the documentation address ranges (RFC 5737, RFC 3849) count as public, so
    /// tests and local grids never put real addresses in farm pools. Set at genesis only.
    #[pallet::storage]
    pub type DocumentationIpsArePublic<T: Config> = StorageValue<_, bool, ValueQuery>;

    #[pallet::genesis_config]
    #[derive(frame_support::DefaultNoBound)]
    pub struct GenesisConfig<T: Config> {
        /// See [`DocumentationIpsArePublic`]; false unless a test network's preset sets it.
        pub documentation_ips_are_public: bool,
        #[serde(skip)]
        pub _config: core::marker::PhantomData<T>,
    }

    #[pallet::genesis_build]
    impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
        fn build(&self) {
            DocumentationIpsArePublic::<T>::put(self.documentation_ips_are_public);
        }
    }

    /// Lowercase farm name -> farm, for case-insensitive uniqueness.
    #[pallet::storage]
    pub type FarmIdByName<T: Config> =
        StorageMap<_, Blake2_128Concat, FarmName, FarmId, OptionQuery>;

    /// Id the next farm gets; ids start at 1 and are never reused.
    #[pallet::storage]
    pub type NextFarmId<T: Config> = StorageValue<_, FarmId, ValueQuery, FirstId>;

    /// Number of nodes in each existing farm (an entry exists for every farm).
    #[pallet::storage]
    pub type FarmNodeCount<T: Config> = StorageMap<_, Twox64Concat, FarmId, u32, ValueQuery>;

    #[pallet::storage]
    pub type Nodes<T: Config> = StorageMap<_, Twox64Concat, NodeId, Node<T>, OptionQuery>;

    /// Node accounts a farm owner authorized to register into the farm, with the block of the
    /// authorization; used up by `register_node`. Grows only through the farm owner's
    /// fee-paying calls.
    #[pallet::storage]
    pub type NodeAuthorizations<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        FarmId,
        Blake2_128Concat,
        T::AccountId,
        BlockNumberFor<T>,
        OptionQuery,
    >;

    /// The node an account runs; one node per account.
    #[pallet::storage]
    pub type NodeIdByAccount<T: Config> =
        StorageMap<_, Blake2_128Concat, T::AccountId, NodeId, OptionQuery>;

    /// Farm membership, iterable by farm without scanning all nodes.
    #[pallet::storage]
    pub type NodesByFarm<T: Config> =
        StorageDoubleMap<_, Twox64Concat, FarmId, Twox64Concat, NodeId, (), OptionQuery>;

    /// Id the next node gets; ids start at 1 and are never reused.
    #[pallet::storage]
    pub type NextNodeId<T: Config> = StorageValue<_, NodeId, ValueQuery, FirstId>;

    /// Who holds each public IPv4 address, so an address is registered once chain-wide.
    #[pallet::storage]
    pub type IpOwner<T: Config> = StorageMap<_, Blake2_128Concat, [u8; 4], IpHolder, OptionQuery>;

    /// The node whose own public IPv6 address this is, so an address is registered once
    /// chain-wide, like a node's IPv4 address (two nodes answering for one address break
    /// each other's routing). Several nodes may share a subnet (one farm LAN).
    #[pallet::storage]
    pub type Ipv6Owner<T: Config> = StorageMap<_, Blake2_128Concat, [u8; 16], NodeId, OptionQuery>;

    /// The overlay-network endpoint each node published (`set_node_overlay`): its overlay key,
    /// from which deployers derive the overlay addresses of the node's VMs, and the multiaddrs
    /// others bootstrap into the overlay through. One bounded entry per node at most (see
    /// [`OverlayEndpoint`]); its storage is covered by the node's deposit, which the farm owner
    /// holds for the node. Removed with the node.
    #[pallet::storage]
    pub type NodeOverlays<T: Config> =
        StorageMap<_, Twox64Concat, NodeId, OverlayEndpoint, OptionQuery>;

    /// The farm whose nodes declare each gateway domain (lowercase), and how many of them do:
    /// a domain, its parents and its subdomains belong to one farm (see the `domains` module).
    #[pallet::storage]
    pub type GatewayDomainFarm<T: Config> =
        StorageMap<_, Blake2_128Concat, Domain, (FarmId, u32), OptionQuery>;

    /// Per parent domain (lowercase) and farm: how many gateway domains that farm's nodes
    /// declare below it, so a domain whose subdomain another farm declared is refused.
    #[pallet::storage]
    pub type GatewayDomainsBelow<T: Config> =
        StorageDoubleMap<_, Blake2_128Concat, Domain, Twox64Concat, FarmId, u32, ValueQuery>;

    /// Deposits held for farms, pool addresses, node authorizations and nodes, with who gets
    /// each back. See the `deposits` module.
    #[pallet::storage]
    pub type Deposits<T: Config> = StorageMap<
        _,
        Blake2_128Concat,
        DepositItem<T::AccountId>,
        HeldDeposit<T::AccountId, BalanceOf<T>>,
        OptionQuery,
    >;

    /// Nodes leaving the grid: they take no new contracts, and when the removal is due their
    /// contracts end and they are removed. One entry per node at most.
    #[pallet::storage]
    pub type NodeRemovals<T: Config> =
        StorageMap<_, Twox64Concat, NodeId, NodeRemoval<T>, OptionQuery>;

    /// Removal queues by kind and sequence number: `(node, due)`, in due order. An entry whose
    /// node has no removal with that kind and due any more (removed at once, or forced since)
    /// is skipped.
    #[pallet::storage]
    pub type NodeRemovalQueue<T: Config> = StorageDoubleMap<
        _,
        Twox64Concat,
        RemovalKind,
        Twox64Concat,
        u64,
        (NodeId, BlockNumberFor<T>),
        OptionQuery,
    >;

    /// Farms governance is removing (`force_remove_farm`), with the block it began: frozen
    /// until they are gone (a freeze is not lifted). A frozen farm takes no new node,
    /// authorization, address or name, and its nodes no new contracts or updates, so the
    /// farmer cannot outrun the removal.
    #[pallet::storage]
    pub type FarmsUnderRemoval<T: Config> =
        StorageMap<_, Twox64Concat, FarmId, BlockNumberFor<T>, OptionQuery>;

    /// `(head, tail)` of each removal queue: entries `head..tail` are waiting.
    #[pallet::storage]
    pub type NodeRemovalQueueEnds<T: Config> =
        StorageMap<_, Twox64Concat, RemovalKind, (u64, u64), ValueQuery>;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        FarmCreated {
            farm_id: FarmId,
            owner: T::AccountId,
            name: FarmName,
        },
        FarmRenamed {
            farm_id: FarmId,
            owner: T::AccountId,
            name: FarmName,
        },
        /// The farm and its whole (unassigned) IP pool are gone.
        FarmRemoved {
            farm_id: FarmId,
            owner: T::AccountId,
            ips_released: u32,
        },
        FarmCertificationSet {
            farm_id: FarmId,
            certification: FarmCertification,
        },
        FarmPricingPolicySet {
            farm_id: FarmId,
            pricing_policy: PricingPolicyId,
        },
        FarmIpAdded {
            farm_id: FarmId,
            owner: T::AccountId,
            ip: PublicIpv4Config,
        },
        FarmIpRemoved {
            farm_id: FarmId,
            owner: T::AccountId,
            ip: [u8; 4],
        },
        NodeRegistered {
            node_id: NodeId,
            farm_id: FarmId,
            account: T::AccountId,
        },
        /// The farm owner authorized `account` to register a node into the farm.
        NodeAuthorized {
            farm_id: FarmId,
            account: T::AccountId,
        },
        /// The farm owner withdrew an authorization before it was used.
        NodeAuthorizationRevoked {
            farm_id: FarmId,
            account: T::AccountId,
        },
        NodeUpdated {
            node_id: NodeId,
            farm_id: FarmId,
            account: T::AccountId,
        },
        /// The node left the grid. `removed_by` is the farm owner or the node that asked, or
        /// whoever found it dead; `None` when governance forced it.
        NodeRemoved {
            node_id: NodeId,
            farm_id: FarmId,
            account: T::AccountId,
            removed_by: Option<T::AccountId>,
        },
        /// The node still runs contracts: it takes no new ones, and at block `due` its
        /// contracts end and it is removed. `requested_by` is `None` for governance.
        NodeRemovalScheduled {
            node_id: NodeId,
            farm_id: FarmId,
            due: BlockNumberFor<T>,
            requested_by: Option<T::AccountId>,
        },
        /// A contract of the leaving node could not be ended: its removal was dropped and the
        /// node takes work again (see the runtime log).
        NodeRemovalFailed { node_id: NodeId },
        /// Governance removed a farm, with its address pool and authorizations.
        FarmForceRemoved { farm_id: FarmId, ips_released: u32 },
        /// Governance began removing a farm: it is frozen (see [`FarmsUnderRemoval`]).
        FarmFrozen { farm_id: FarmId },
        /// `force_remove_farm` removed `removed` of the farm's nodes at once (no contracts) and
        /// scheduled the forced removal of `scheduled` (their contracts end in the next
        /// blocks); the farm goes with a later `force_remove_farm`, once its nodes are gone.
        FarmNodesForceRemoved {
            farm_id: FarmId,
            removed: u32,
            scheduled: u32,
        },
        /// Governance cleared `cleared` of the farm's unused node authorizations; more are
        /// left, so the farm stays until the next `force_remove_farm`.
        FarmNodeAuthorizationsCleared { farm_id: FarmId, cleared: u32 },
        /// Governance removed an address from a farm's pool; `contract`, if any, held it and
        /// was ended.
        FarmIpForceRemoved {
            farm_id: FarmId,
            ip: [u8; 4],
            contract: Option<ContractId>,
        },
        NodeHeartbeat {
            node_id: NodeId,
            account: T::AccountId,
            timestamp_ms: u64,
            uptime_seconds: u64,
        },
        PowerTargetSet {
            node_id: NodeId,
            farm_id: FarmId,
            by: T::AccountId,
            target: Power,
        },
        PowerStateSet {
            node_id: NodeId,
            account: T::AccountId,
            state: Power,
        },
        /// `reserved` is the node's total afterwards.
        CapacityReserved {
            node_id: NodeId,
            resources: Resources,
            reserved: Resources,
        },
        CapacityReleased {
            node_id: NodeId,
            resources: Resources,
            reserved: Resources,
        },
        PublicIpsAssigned {
            farm_id: FarmId,
            node_id: NodeId,
            contract_id: ContractId,
            ips: Vec<[u8; 4]>,
        },
        PublicIpsReleased {
            farm_id: FarmId,
            node_id: NodeId,
            contract_id: ContractId,
            ips: Vec<[u8; 4]>,
        },
        NodeContractStarted {
            node_id: NodeId,
            active_contracts: u32,
        },
        NodeContractEnded {
            node_id: NodeId,
            active_contracts: u32,
        },
        /// The farm owner set (or cleared) the node's public configuration.
        NodePublicConfigSet { node_id: NodeId, farm_id: FarmId },
        /// A removal with notice was withdrawn: the node takes work again.
        NodeRemovalCancelled {
            node_id: NodeId,
            cancelled_by: T::AccountId,
        },
        /// The node published its overlay endpoint (`Some`, replacing any earlier one) or
        /// withdrew it (`None`).
        NodeOverlaySet {
            node_id: NodeId,
            endpoint: Option<OverlayEndpoint>,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// A farm name needs at least 3 characters.
        FarmNameTooShort,
        /// A farm name may only contain A-Z, a-z, 0-9, `_` and `-`.
        FarmNameInvalidCharacter,
        /// Another farm has this name (compared case-insensitively).
        FarmNameTaken,
        FarmNotFound,
        /// The farm owner has not authorized this account to register a node into the farm
        /// (`authorize_node`), or the authorization was revoked.
        NodeNotAuthorized,
        /// Only the farm's owner may do this.
        NotFarmOwner,
        /// Remove the farm's nodes first.
        FarmHasNodes,
        /// Some of the farm's IPs are assigned to contracts.
        FarmHasAssignedIps,
        /// All farm ids are used.
        FarmIdsExhausted,
        /// The farm's public IP pool is full (`MaxIpsPerFarm`).
        TooManyFarmIps,
        /// The IPv4 address is already registered by a farm or node.
        IpAlreadyRegistered,
        /// The farm has no such IP in its pool.
        IpNotInFarm,
        /// The IP is assigned to a contract and cannot be removed.
        IpAssigned,
        /// The public IPv4 configuration is unusable; the field says why.
        InvalidPublicIpv4(IpError),
        /// The public IPv6 configuration is unusable; the field says why.
        InvalidPublicIpv6(IpError),
        /// The domain is not a valid DNS name.
        InvalidDomain,
        /// Another farm's node declares this gateway domain, a parent or a subdomain of it: a
        /// domain's names belong to one farm.
        GatewayDomainOfAnotherFarm,
        /// A gateway domain has 3 to 8 labels (`gw.example.com` has 3): no farm takes a
        /// top-level domain or a registrable domain's parent, and the domain index stays
        /// bounded.
        GatewayDomainLabelCount,
        NodeNotFound,
        /// The signer has not registered a node.
        NotANode,
        /// The signer already runs a node; one node per account.
        AccountAlreadyHasNode,
        /// All node ids are used.
        NodeIdsExhausted,
        /// A capacity component is below `MinNodeCapacity`.
        CapacityBelowMinimum,
        /// The new capacity would be smaller than what is already reserved.
        CapacityBelowReserved,
        /// The all-zero x25519 key is not a usable public key.
        InvalidBoxKey,
        /// Latitude or longitude is outside its range.
        InvalidCoordinates,
        /// City or country is not UTF-8.
        InvalidLocationName,
        /// The executor version must be non-empty printable ASCII.
        InvalidExecutorVersion,
        /// Only the node itself or its farm's owner may remove it.
        NotNodeOrFarmOwner,
        /// The node runs contracts: it cannot be powered down (or removed before they end).
        NodeHasActiveContracts,
        /// Contracts on the node hold farm IPs: it cannot be removed before they end.
        NodeHasAssignedIps,
        /// Less than `MinHeartbeatIntervalMs` passed since the last heartbeat.
        HeartbeatTooSoon,
        /// No heartbeat within `HeartbeatTimeoutMs`.
        NodeOffline,
        /// The farmer set the node's power target to Down.
        NodePowerTargetDown,
        /// The node reports it is powered down.
        NodePoweredDown,
        /// The reservation would overflow the reserved counters.
        CapacityOverflow,
        /// The reservation does not fit in the node's free capacity.
        InsufficientCapacity,
        /// Releasing more than the node has reserved.
        ReleaseExceedsReserved,
        /// The node's farm has fewer free public IPs than requested.
        NotEnoughFreeIps,
        /// The node's contract or IP counter would overflow.
        CounterOverflow,
        /// A contract ended on a node with no active contracts.
        NoActiveContracts,
        /// The farm has node authorizations nobody used: revoke them first.
        FarmHasNodeAuthorizations,
        /// The node is leaving the grid: it takes no new contracts.
        NodeLeaving,
        /// The node's removal is scheduled already (governance may still force it).
        NodeRemovalPending,
        /// The node heartbeated within `DeadNodeAfterBlocks`: it is not dead.
        NodeNotDead,
        /// A dead node without contracts holds nothing of anyone else: only its farm owner
        /// removes it.
        DeadNodeHasNoContracts,
        /// The node's public IPv6 address is already another node's.
        Ipv6AlreadyRegistered,
        /// The signer cannot pay the deposit this item holds (free balance too low).
        InsufficientBalanceForDeposit,
        /// The node has no pending removal to withdraw.
        NoNodeRemoval,
        /// A removal forced by governance or asked for a dead node cannot be withdrawn.
        NodeRemovalForced,
        /// The node may withdraw only a removal it asked for; its farm owner's stands.
        RemovalRequestedByFarmOwner,
        /// The removal is due: its contracts are being ended and it cannot be withdrawn.
        NodeRemovalUnderWay,
        /// Governance is removing the farm: it takes no new nodes, authorizations, addresses or
        /// names, and its nodes no new contracts.
        FarmBeingRemoved,
        /// An overlay listen address is unusable (empty, not multiaddr text starting with `/`,
        /// not printable ASCII, or listed twice); the field says which.
        InvalidOverlayAddress(OverlayAddressError),
        /// The proof that the node holds the overlay key is wrong: it must be the key's ed25519
        /// signature over `OVERLAY_KEY_PROOF_TAG` and the node account's encoding.
        OverlayKeyNotProven,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        /// Ends the contracts of leaving nodes whose removal is due, and removes the nodes.
        fn on_initialize(now: BlockNumberFor<T>) -> Weight {
            Self::handle_removals(now)
        }

        fn integrity_test() {
            assert!(
                T::MaxContractsEndedPerBlock::get() > 0,
                "leaving nodes would never be removed"
            );
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Creates a farm owned by the signer.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::create_farm().saturating_add(deposits::deposits_weight::<T>(1)))]
        pub fn create_farm(origin: OriginFor<T>, name: FarmName) -> DispatchResult {
            let owner = ensure_signed(origin)?;
            let key = Self::name_key(&name)?;
            ensure!(
                !FarmIdByName::<T>::contains_key(&key),
                Error::<T>::FarmNameTaken
            );
            let farm_id = NextFarmId::<T>::get();
            let next = farm_id.checked_add(1).ok_or(Error::<T>::FarmIdsExhausted)?;
            Self::hold_deposit(DepositItem::Farm(farm_id), &owner, T::FarmDeposit::get())?;

            Farms::<T>::insert(
                farm_id,
                Farm {
                    id: farm_id,
                    owner: owner.clone(),
                    name: name.clone(),
                    certification: FarmCertification::NotCertified,
                    pricing_policy: DEFAULT_PRICING_POLICY,
                    public_ips: BoundedVec::new(),
                },
            );
            FarmIdByName::<T>::insert(key, farm_id);
            FarmNodeCount::<T>::insert(farm_id, 0);
            NextFarmId::<T>::put(next);
            Self::deposit_event(Event::FarmCreated {
                farm_id,
                owner,
                name,
            });
            Ok(())
        }

        /// Renames a farm; changing only the letter case of its own name is allowed.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::rename_farm())]
        pub fn rename_farm(
            origin: OriginFor<T>,
            farm_id: FarmId,
            name: FarmName,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut farm = Self::owned_farm(farm_id, &who)?;
            Self::ensure_farm_not_frozen(farm_id)?;
            let key = Self::name_key(&name)?;
            if let Some(holder) = FarmIdByName::<T>::get(&key) {
                ensure!(holder == farm_id, Error::<T>::FarmNameTaken);
            }
            FarmIdByName::<T>::remove(Self::lowercase(&farm.name));
            FarmIdByName::<T>::insert(key, farm_id);
            farm.name = name.clone();
            Farms::<T>::insert(farm_id, farm);
            Self::deposit_event(Event::FarmRenamed {
                farm_id,
                owner: who,
                name,
            });
            Ok(())
        }

        /// Removes an empty farm: no nodes and no assigned IPs. Its IP pool is released.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::remove_farm(T::MaxIpsPerFarm::get())
            .saturating_add(deposits::deposits_weight::<T>(T::MaxIpsPerFarm::get().saturating_add(1)))
            // A farm governance froze goes out of `FarmsUnderRemoval` too.
            .saturating_add(T::DbWeight::get().writes(1)))]
        pub fn remove_farm(origin: OriginFor<T>, farm_id: FarmId) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let farm = Self::owned_farm(farm_id, &who)?;
            ensure!(
                FarmNodeCount::<T>::get(farm_id) == 0,
                Error::<T>::FarmHasNodes
            );
            ensure!(
                farm.public_ips.iter().all(|e| e.assigned.is_none()),
                Error::<T>::FarmHasAssignedIps
            );
            // One read: the owner revokes what they granted (each revocation is bounded),
            // rather than this call clearing an unbounded prefix.
            ensure!(
                NodeAuthorizations::<T>::iter_prefix(farm_id)
                    .next()
                    .is_none(),
                Error::<T>::FarmHasNodeAuthorizations
            );
            let ips_released = Self::remove_farm_entries(farm_id, &farm);
            Self::deposit_event(Event::FarmRemoved {
                farm_id,
                owner: who,
                ips_released,
            });
            Ok(Some(
                T::WeightInfo::remove_farm(ips_released)
                    .saturating_add(deposits::deposits_weight::<T>(
                        ips_released.saturating_add(1),
                    ))
                    .saturating_add(T::DbWeight::get().writes(1)),
            )
            .into())
        }

        /// Governance (the council) sets a farm's certification.
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::set_farm_certification())]
        pub fn set_farm_certification(
            origin: OriginFor<T>,
            farm_id: FarmId,
            certification: FarmCertification,
        ) -> DispatchResult {
            T::GovernanceOrigin::ensure_origin(origin)?;
            Farms::<T>::try_mutate(farm_id, |farm| -> DispatchResult {
                let farm = farm.as_mut().ok_or(Error::<T>::FarmNotFound)?;
                farm.certification = certification;
                Ok(())
            })?;
            Self::deposit_event(Event::FarmCertificationSet {
                farm_id,
                certification,
            });
            Ok(())
        }

        /// Governance (the council) sets the pricing policy the farm's contracts are billed by.
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::set_farm_pricing_policy())]
        pub fn set_farm_pricing_policy(
            origin: OriginFor<T>,
            farm_id: FarmId,
            pricing_policy: PricingPolicyId,
        ) -> DispatchResult {
            T::GovernanceOrigin::ensure_origin(origin)?;
            Farms::<T>::try_mutate(farm_id, |farm| -> DispatchResult {
                let farm = farm.as_mut().ok_or(Error::<T>::FarmNotFound)?;
                farm.pricing_policy = pricing_policy;
                Ok(())
            })?;
            Self::deposit_event(Event::FarmPricingPolicySet {
                farm_id,
                pricing_policy,
            });
            Ok(())
        }

        /// Adds a validated public IPv4 address to the farm's pool.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::add_farm_ip(T::MaxIpsPerFarm::get()).saturating_add(deposits::deposits_weight::<T>(1)))]
        pub fn add_farm_ip(
            origin: OriginFor<T>,
            farm_id: FarmId,
            ip: PublicIpv4Config,
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let mut farm = Self::owned_farm(farm_id, &who)?;
            Self::ensure_farm_not_frozen(farm_id)?;
            validate_public_ipv4_in(&ip, DocumentationIpsArePublic::<T>::get())
                .map_err(Error::<T>::InvalidPublicIpv4)?;
            ensure!(
                !IpOwner::<T>::contains_key(ip.ip.ip),
                Error::<T>::IpAlreadyRegistered
            );
            let before = farm.public_ips.len() as u32;
            farm.public_ips
                .try_push(PublicIpEntry {
                    config: ip,
                    assigned: None,
                })
                .map_err(|_| Error::<T>::TooManyFarmIps)?;
            Self::hold_deposit(DepositItem::FarmIp(ip.ip.ip), &who, T::FarmIpDeposit::get())?;
            IpOwner::<T>::insert(ip.ip.ip, IpHolder::Farm(farm_id));
            Farms::<T>::insert(farm_id, farm);
            Self::deposit_event(Event::FarmIpAdded {
                farm_id,
                owner: who,
                ip,
            });
            Ok(Some(
                T::WeightInfo::add_farm_ip(before)
                    .saturating_add(deposits::deposits_weight::<T>(1)),
            )
            .into())
        }

        /// Removes a free address from the farm's pool.
        #[pallet::call_index(6)]
        #[pallet::weight(T::WeightInfo::remove_farm_ip(T::MaxIpsPerFarm::get()).saturating_add(deposits::deposits_weight::<T>(1)))]
        pub fn remove_farm_ip(
            origin: OriginFor<T>,
            farm_id: FarmId,
            ip: [u8; 4],
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let farm = Self::owned_farm(farm_id, &who)?;
            let before = farm.public_ips.len() as u32;
            let entry = Self::pool_entry(&farm, ip)?;
            ensure!(entry.assigned.is_none(), Error::<T>::IpAssigned);
            Self::drop_pool_ip(farm_id, farm, ip);
            Self::deposit_event(Event::FarmIpRemoved {
                farm_id,
                owner: who,
                ip,
            });
            Ok(Some(
                T::WeightInfo::remove_farm_ip(before)
                    .saturating_add(deposits::deposits_weight::<T>(1)),
            )
            .into())
        }

        /// Registers the signer as a node of `farm_id`. The signer is the executor's account,
        /// which the farm owner must have authorized (`authorize_node`); the authorization is
        /// used up.
        #[pallet::call_index(7)]
        #[pallet::weight(T::WeightInfo::register_node()
            .saturating_add(deposits::deposits_weight::<T>(1))
            .saturating_add(Pallet::<T>::domain_index_weight()))]
        pub fn register_node(
            origin: OriginFor<T>,
            farm_id: FarmId,
            capacity: Resources,
            box_key: BoxKey,
            location: Location,
            public_config: Option<PublicConfig>,
            executor_version: ExecutorVersion,
        ) -> DispatchResult {
            let account = ensure_signed(origin)?;
            ensure!(
                !NodeIdByAccount::<T>::contains_key(&account),
                Error::<T>::AccountAlreadyHasNode
            );
            ensure!(Farms::<T>::contains_key(farm_id), Error::<T>::FarmNotFound);
            Self::ensure_farm_not_frozen(farm_id)?;
            ensure!(
                NodeAuthorizations::<T>::take(farm_id, &account).is_some(),
                Error::<T>::NodeNotAuthorized
            );
            ensure!(
                capacity.all_at_least(&T::MinNodeCapacity::get()),
                Error::<T>::CapacityBelowMinimum
            );
            Self::check_node_fields(
                &box_key,
                &location,
                public_config.as_ref(),
                &executor_version,
            )?;
            Self::insert_node(
                farm_id,
                account,
                capacity,
                box_key,
                location,
                public_config,
                executor_version,
            )
        }

        /// Replaces the signer's node description. Capacity may shrink only down to what is
        /// reserved.
        #[pallet::call_index(8)]
        #[pallet::weight(T::WeightInfo::update_node()
            .saturating_add(Pallet::<T>::domain_index_weight())
            .saturating_add(T::DbWeight::get().reads_writes(1, 2)))]
        pub fn update_node(
            origin: OriginFor<T>,
            capacity: Resources,
            location: Location,
            public_config: Option<PublicConfig>,
            executor_version: ExecutorVersion,
            box_key: BoxKey,
        ) -> DispatchResult {
            let account = ensure_signed(origin)?;
            let node_id = NodeIdByAccount::<T>::get(&account).ok_or(Error::<T>::NotANode)?;
            let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            ensure!(
                capacity.all_at_least(&T::MinNodeCapacity::get()),
                Error::<T>::CapacityBelowMinimum
            );
            ensure!(
                node.reserved.fits_in(&capacity, T::CruOvercommit::get()),
                Error::<T>::CapacityBelowReserved
            );
            Self::check_node_fields(
                &box_key,
                &location,
                public_config.as_ref(),
                &executor_version,
            )?;
            Self::move_node_ips(
                node_id,
                node.farm_id,
                node.public_config.as_ref(),
                public_config.as_ref(),
            )?;
            node.capacity = capacity;
            node.location = location;
            node.public_config = public_config;
            node.executor_version = executor_version;
            node.box_key = box_key;
            let farm_id = node.farm_id;
            Nodes::<T>::insert(node_id, node);
            Self::deposit_event(Event::NodeUpdated {
                node_id,
                farm_id,
                account,
            });
            Ok(())
        }

        /// Removes a node. Signed by the node itself or by the owner of its farm (who so
        /// evicts a node it no longer wants). A node without contracts is removed at once; one
        /// that still runs contracts stops taking new ones, and after
        /// [`Config::NodeRemovalNoticeBlocks`] its contracts end (their capacity, IPs and
        /// deposits released) and it is removed.
        #[pallet::call_index(9)]
        #[pallet::weight(T::WeightInfo::remove_node()
            .saturating_add(Pallet::<T>::domain_index_weight())
            .saturating_add(T::DbWeight::get().reads_writes(2, 4))
            .saturating_add(deposits::deposits_weight::<T>(1))
            .saturating_add(T::OnNodeRemoved::on_node_removed_weight()))]
        pub fn remove_node(origin: OriginFor<T>, node_id: NodeId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            Self::ensure_node_or_farm_owner(&node, &who)?;
            ensure!(
                node.active_contracts == 0 || !NodeRemovals::<T>::contains_key(node_id),
                Error::<T>::NodeRemovalPending
            );
            Self::remove_or_schedule(node_id, node, RemovalKind::Notice, Some(who))
        }

        /// Withdraws a removal with notice (`remove_node`) before it is due: the node takes new
        /// contracts again. Signed by the farm owner (any notice) or by the node (one it asked
        /// for itself). Forced removals stay.
        #[pallet::call_index(20)]
        #[pallet::weight(T::WeightInfo::cancel_node_removal())]
        pub fn cancel_node_removal(origin: OriginFor<T>, node_id: NodeId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::withdraw_removal(node_id, who)
        }

        /// Proof of liveness from the node. Free when accepted; rate-limited.
        #[pallet::call_index(10)]
        #[pallet::weight(T::WeightInfo::heartbeat())]
        pub fn heartbeat(origin: OriginFor<T>) -> DispatchResultWithPostInfo {
            let account = ensure_signed(origin)?;
            let node_id = NodeIdByAccount::<T>::get(&account).ok_or(Error::<T>::NotANode)?;
            Self::record_heartbeat(node_id, account)?;
            Ok(Pays::No.into())
        }

        /// The farm owner asks a node to power up or down (Down only if it runs no contracts).
        #[pallet::call_index(11)]
        #[pallet::weight(T::WeightInfo::set_power_target())]
        pub fn set_power_target(
            origin: OriginFor<T>,
            node_id: NodeId,
            target: Power,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            Self::owned_farm(node.farm_id, &who)?;
            if target == Power::Down {
                ensure!(
                    node.active_contracts == 0,
                    Error::<T>::NodeHasActiveContracts
                );
            }
            node.power_target = target;
            let farm_id = node.farm_id;
            Nodes::<T>::insert(node_id, node);
            Self::deposit_event(Event::PowerTargetSet {
                node_id,
                farm_id,
                by: who,
                target,
            });
            Ok(())
        }

        /// The node reports its power state (Down only if it runs no contracts).
        #[pallet::call_index(12)]
        #[pallet::weight(T::WeightInfo::set_power_state())]
        pub fn set_power_state(origin: OriginFor<T>, state: Power) -> DispatchResult {
            let account = ensure_signed(origin)?;
            let node_id = NodeIdByAccount::<T>::get(&account).ok_or(Error::<T>::NotANode)?;
            let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            if state == Power::Down {
                ensure!(
                    node.active_contracts == 0,
                    Error::<T>::NodeHasActiveContracts
                );
            }
            node.power_state = state;
            Nodes::<T>::insert(node_id, node);
            Self::deposit_event(Event::PowerStateSet {
                node_id,
                account,
                state,
            });
            Ok(())
        }

        /// The farm owner declares how the node reaches the public network; `None` clears the
        /// declaration: the node's own IPv4 address and gateway, the IPv6 subnet (and gateway)
        /// from which the node's executor gives its VMs their public IPv6 addresses (a /64 or
        /// wider), and the domain under which it serves gateway workloads.
        ///
        /// Validated exactly as in `register_node` and `update_node`, and the node's own
        /// addresses stay unique chain-wide: its IPv4 address may not be held by a farm pool or
        /// another node, its IPv6 address not by another node.
        #[pallet::call_index(13)]
        #[pallet::weight(T::WeightInfo::set_node_public_config()
            .saturating_add(Pallet::<T>::domain_index_weight())
            .saturating_add(T::DbWeight::get().reads_writes(1, 2)))]
        pub fn set_node_public_config(
            origin: OriginFor<T>,
            node_id: NodeId,
            public_config: Option<PublicConfig>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            Self::owned_farm(node.farm_id, &who)?;
            if let Some(config) = &public_config {
                Self::check_public_config(config)?;
            }
            Self::move_node_ips(
                node_id,
                node.farm_id,
                node.public_config.as_ref(),
                public_config.as_ref(),
            )?;
            node.public_config = public_config;
            let farm_id = node.farm_id;
            Nodes::<T>::insert(node_id, node);
            Self::deposit_event(Event::NodePublicConfigSet { node_id, farm_id });
            Ok(())
        }

        /// The farm owner consents to `account` (a node's executor account) registering a node
        /// into `farm_id`. Authorizing again keeps one authorization.
        #[pallet::call_index(14)]
        #[pallet::weight(T::WeightInfo::authorize_node().saturating_add(deposits::deposits_weight::<T>(1)))]
        pub fn authorize_node(
            origin: OriginFor<T>,
            farm_id: FarmId,
            account: T::AccountId,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::owned_farm(farm_id, &who)?;
            Self::ensure_farm_not_frozen(farm_id)?;
            ensure!(
                !NodeIdByAccount::<T>::contains_key(&account),
                Error::<T>::AccountAlreadyHasNode
            );
            let item = DepositItem::NodeAuthorization(farm_id, account.clone());
            if !Deposits::<T>::contains_key(&item) {
                Self::hold_deposit(item, &who, T::NodeDeposit::get())?;
            }
            NodeAuthorizations::<T>::insert(
                farm_id,
                &account,
                frame_system::Pallet::<T>::block_number(),
            );
            Self::deposit_event(Event::NodeAuthorized { farm_id, account });
            Ok(())
        }

        /// The farm owner withdraws an authorization that was not used yet.
        #[pallet::call_index(15)]
        #[pallet::weight(T::WeightInfo::revoke_node_authorization().saturating_add(deposits::deposits_weight::<T>(1)))]
        pub fn revoke_node_authorization(
            origin: OriginFor<T>,
            farm_id: FarmId,
            account: T::AccountId,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::owned_farm(farm_id, &who)?;
            ensure!(
                NodeAuthorizations::<T>::take(farm_id, &account).is_some(),
                Error::<T>::NodeNotAuthorized
            );
            Self::release_deposit(DepositItem::NodeAuthorization(farm_id, account.clone()));
            Self::deposit_event(Event::NodeAuthorizationRevoked { farm_id, account });
            Ok(())
        }

        /// Governance removes a node without notice: at once if it runs no contracts, else in
        /// the next blocks, ending its contracts first (a pending notice is cut short).
        #[pallet::call_index(16)]
        #[pallet::weight(removal::forced_node_removal_weight::<T>())]
        pub fn force_remove_node(origin: OriginFor<T>, node_id: NodeId) -> DispatchResult {
            T::GovernanceOrigin::ensure_origin(origin)?;
            let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            if node.active_contracts > 0
                && NodeRemovals::<T>::get(node_id).map(|r| r.kind) == Some(RemovalKind::Forced)
            {
                // Already under way: keep its place in the queue.
                return Ok(());
            }
            // A removal waiting for its notice is replaced; its queue entry is skipped.
            Self::remove_or_schedule(node_id, node, RemovalKind::Forced, None)
        }

        /// Anyone removes a dead node (silent for [`Config::DeadNodeAfterBlocks`]) that still
        /// holds contracts: in the next blocks its contracts end (their deployers get their
        /// deposits back, the farm its IPs) and the node is removed.
        #[pallet::call_index(19)]
        #[pallet::weight(removal::forced_node_removal_weight::<T>())]
        pub fn remove_dead_node(origin: OriginFor<T>, node_id: NodeId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::remove_dead(node_id, who)
        }

        /// Governance removes a farm with its nodes, address pool and unused node
        /// authorizations. The first call freezes the farm (see [`FarmsUnderRemoval`]) and
        /// removes its nodes: at once those without contracts, the others after their
        /// contracts end in the next blocks (forced removal). Each call handles at most
        /// [`MAX_NODES_FORCE_REMOVED`] nodes and [`MAX_AUTHORIZATIONS_FORCE_REMOVED`]
        /// authorizations; the call that finds neither left removes the farm. Call it again
        /// until [`Event::FarmForceRemoved`].
        #[pallet::call_index(17)]
        #[pallet::weight(removal::force_remove_farm_weight::<T>())]
        pub fn force_remove_farm(
            origin: OriginFor<T>,
            farm_id: FarmId,
        ) -> DispatchResultWithPostInfo {
            T::GovernanceOrigin::ensure_origin(origin)?;
            let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
            Self::force_remove_farm_step(farm_id, farm)
        }

        /// Governance removes an address from a farm's pool (one the farm had no right to, say).
        /// A contract holding it ends.
        #[pallet::call_index(18)]
        #[pallet::weight(T::WeightInfo::force_remove_farm_ip(T::MaxIpsPerFarm::get())
            .saturating_add(deposits::deposits_weight::<T>(1))
            .saturating_add(T::Contracts::end_contract_weight()))]
        pub fn force_remove_farm_ip(
            origin: OriginFor<T>,
            farm_id: FarmId,
            ip: [u8; 4],
        ) -> DispatchResult {
            T::GovernanceOrigin::ensure_origin(origin)?;
            let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
            let contract = Self::pool_entry(&farm, ip)?.assigned.map(|a| a.contract);
            if let Some(contract) = contract {
                // Releases the contract's addresses, this one among them.
                T::Contracts::end_contract_holding_ip(contract)?;
            }
            let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
            Self::drop_pool_ip(farm_id, farm, ip);
            Self::deposit_event(Event::FarmIpForceRemoved {
                farm_id,
                ip,
                contract,
            });
            Ok(())
        }

        /// The node publishes its overlay-network endpoint (`Some`, replacing any earlier one)
        /// or withdraws it (`None`): its overlay public key, from which deployers derive the
        /// overlay addresses of its VMs, and the multiaddrs (text, such as
        /// `/ip4/198.51.100.1/tcp/9651`) through which others bootstrap into the overlay.
        /// Signed by the node's own account. Each address must be non-empty printable ASCII
        /// starting with `/`, and none may be listed twice. With the endpoint comes the key's
        /// proof: its ed25519 signature over `overlay_key_proof_message(node account)`, so a
        /// node cannot publish another participant's key (and the addresses derived from it).
        #[pallet::call_index(21)]
        #[pallet::weight(T::WeightInfo::set_node_overlay())]
        pub fn set_node_overlay(
            origin: OriginFor<T>,
            endpoint: Option<(OverlayEndpoint, OverlayKeyProof)>,
        ) -> DispatchResult {
            let account = ensure_signed(origin)?;
            let node_id = NodeIdByAccount::<T>::get(&account).ok_or(Error::<T>::NotANode)?;
            ensure!(Nodes::<T>::contains_key(node_id), Error::<T>::NodeNotFound);
            let endpoint = match endpoint {
                Some((endpoint, proof)) => {
                    endpoint
                        .validate()
                        .map_err(Error::<T>::InvalidOverlayAddress)?;
                    let message = overlay_key_proof_message(&account.encode());
                    ensure!(
                        sp_io::crypto::ed25519_verify(
                            &sp_core::ed25519::Signature::from_raw(proof),
                            &message,
                            &sp_core::ed25519::Public::from_raw(endpoint.key),
                        ),
                        Error::<T>::OverlayKeyNotProven
                    );
                    NodeOverlays::<T>::insert(node_id, &endpoint);
                    Some(endpoint)
                }
                None => {
                    NodeOverlays::<T>::remove(node_id);
                    None
                }
            };
            Self::deposit_event(Event::NodeOverlaySet { node_id, endpoint });
            Ok(())
        }
    }

    #[pallet::view_functions]
    impl<T: Config> Pallet<T> {
        /// The node registered by `account`.
        pub fn node_by_account(account: T::AccountId) -> Option<NodeId> {
            NodeIdByAccount::<T>::get(account)
        }

        /// The farm's node ids, ascending.
        pub fn nodes_of_farm(farm_id: FarmId) -> Vec<NodeId> {
            let mut ids: Vec<NodeId> = NodesByFarm::<T>::iter_key_prefix(farm_id).collect();
            ids.sort_unstable();
            ids
        }

        /// Capacity still reservable on the node (CPU including overcommit).
        pub fn free_capacity(node_id: NodeId) -> Option<Resources> {
            Nodes::<T>::get(node_id).map(|n| Self::free_of(&n))
        }

        /// The farm's public IPs not assigned to a contract.
        pub fn free_public_ips(farm_id: FarmId) -> Vec<PublicIpv4Config> {
            Farms::<T>::get(farm_id)
                .map(|f| {
                    f.public_ips
                        .iter()
                        .filter(|e| e.assigned.is_none())
                        .map(|e| e.config)
                        .collect()
                })
                .unwrap_or_default()
        }

        /// Online if the last heartbeat is within `HeartbeatTimeoutMs`; `None` if no such node.
        pub fn node_status(node_id: NodeId) -> Option<NodeStatus> {
            Nodes::<T>::get(node_id).map(|n| Self::status_of(&n))
        }

        /// The farm called `name`, compared case-insensitively.
        pub fn farm_by_name(name: Vec<u8>) -> Option<FarmId> {
            let key = FarmName::try_from(name).ok()?;
            FarmIdByName::<T>::get(Self::lowercase(&key))
        }
    }
}
