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
//!   chain-wide, like a pool address.
//! - The farm owner can evict a node (`remove_node`; the node can leave the same way): a node
//!   without contracts goes at once, one with contracts takes no new contracts or updates
//!   (`NodeLeaving`) and, after [`Config::NodeRemovalNoticeBlocks`], its contracts end (cause
//!   `NodeRemoved`, capacity, IPs and deposits released) and it is removed. Governance can
//!   force the removal of a node (no notice), of an emptied farm, and of a pool address (the
//!   contract holding it ends). See the `removal` module for the bounded queue behind it.
//! - The capacity ledger (`reserved` per node) and the IP assignments are changed only through
//!   [`zos_primitives::GridCapacity`], implemented by this pallet for the deployments and
//!   billing pallets. Memory and disks are never overcommitted; CPU by a constant factor.
//!
//! Every index (name, account, farm membership, IP ownership, node counts) is kept in step with
//! the items it points at; `try_state` checks all of them.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
mod removal;
#[cfg(test)]
mod tests;
pub mod types;
pub mod weights;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

use alloc::vec::Vec;
use frame_support::{
    dispatch::DispatchResult,
    ensure,
    traits::{Get, UnixTime},
};
use sp_runtime::DispatchError;
use zos_primitives::{
    contracts::EndContracts, validate_public_ipv4_in, validate_public_ipv6_in, ContractId, FarmId,
    GridCapacity, NodeId, NodeStatus, PricingPolicyId, PublicIpv4Config, Resources,
};

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::pallet_prelude::*;
    use frame_system::pallet_prelude::*;
    use zos_primitives::{IpError, DEFAULT_PRICING_POLICY};

    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

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
        type WeightInfo: WeightInfo;
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
        /// Governance removed a farm; its nodes had been removed before.
        FarmForceRemoved { farm_id: FarmId, ips_released: u32 },
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
        #[pallet::weight(T::WeightInfo::create_farm())]
        pub fn create_farm(origin: OriginFor<T>, name: FarmName) -> DispatchResult {
            let owner = ensure_signed(origin)?;
            let key = Self::name_key(&name)?;
            ensure!(
                !FarmIdByName::<T>::contains_key(&key),
                Error::<T>::FarmNameTaken
            );
            let farm_id = NextFarmId::<T>::get();
            let next = farm_id.checked_add(1).ok_or(Error::<T>::FarmIdsExhausted)?;

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
        #[pallet::weight(T::WeightInfo::remove_farm(T::MaxIpsPerFarm::get()))]
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
            Ok(Some(T::WeightInfo::remove_farm(ips_released)).into())
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
        #[pallet::weight(T::WeightInfo::add_farm_ip(T::MaxIpsPerFarm::get()))]
        pub fn add_farm_ip(
            origin: OriginFor<T>,
            farm_id: FarmId,
            ip: PublicIpv4Config,
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let mut farm = Self::owned_farm(farm_id, &who)?;
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
            IpOwner::<T>::insert(ip.ip.ip, IpHolder::Farm(farm_id));
            Farms::<T>::insert(farm_id, farm);
            Self::deposit_event(Event::FarmIpAdded {
                farm_id,
                owner: who,
                ip,
            });
            Ok(Some(T::WeightInfo::add_farm_ip(before)).into())
        }

        /// Removes a free address from the farm's pool.
        #[pallet::call_index(6)]
        #[pallet::weight(T::WeightInfo::remove_farm_ip(T::MaxIpsPerFarm::get()))]
        pub fn remove_farm_ip(
            origin: OriginFor<T>,
            farm_id: FarmId,
            ip: [u8; 4],
        ) -> DispatchResultWithPostInfo {
            let who = ensure_signed(origin)?;
            let mut farm = Self::owned_farm(farm_id, &who)?;
            let before = farm.public_ips.len() as u32;
            let (index, entry) = farm
                .public_ips
                .iter()
                .enumerate()
                .find(|(_, e)| e.config.ip.ip == ip)
                .map(|(i, e)| (i, *e))
                .ok_or(Error::<T>::IpNotInFarm)?;
            ensure!(entry.assigned.is_none(), Error::<T>::IpAssigned);
            farm.public_ips.remove(index);
            IpOwner::<T>::remove(ip);
            Farms::<T>::insert(farm_id, farm);
            Self::deposit_event(Event::FarmIpRemoved {
                farm_id,
                owner: who,
                ip,
            });
            Ok(Some(T::WeightInfo::remove_farm_ip(before)).into())
        }

        /// Registers the signer as a node of `farm_id`. The signer is the executor's account,
        /// which the farm owner must have authorized (`authorize_node`); the authorization is
        /// used up.
        #[pallet::call_index(7)]
        #[pallet::weight(T::WeightInfo::register_node())]
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
            let ipv4 = Self::config_ipv4(public_config.as_ref());
            if let Some(ip) = ipv4 {
                ensure!(
                    !IpOwner::<T>::contains_key(ip),
                    Error::<T>::IpAlreadyRegistered
                );
            }
            let node_id = NextNodeId::<T>::get();
            let next = node_id.checked_add(1).ok_or(Error::<T>::NodeIdsExhausted)?;

            Nodes::<T>::insert(
                node_id,
                Node {
                    id: node_id,
                    farm_id,
                    account: account.clone(),
                    capacity,
                    reserved: Resources::zero(),
                    box_key,
                    location,
                    public_config,
                    executor_version,
                    power_target: Power::Up,
                    power_state: Power::Up,
                    active_contracts: 0,
                    assigned_ips: 0,
                    last_heartbeat: None,
                    online_since_ms: 0,
                    uptime_seconds: 0,
                    registered_at: frame_system::Pallet::<T>::block_number(),
                },
            );
            NodeIdByAccount::<T>::insert(&account, node_id);
            NodesByFarm::<T>::insert(farm_id, node_id, ());
            // Bounded by the number of node ids, which is a u32 too.
            FarmNodeCount::<T>::mutate(farm_id, |n| *n = n.saturating_add(1));
            if let Some(ip) = ipv4 {
                IpOwner::<T>::insert(ip, IpHolder::Node(node_id));
            }
            NextNodeId::<T>::put(next);
            Self::deposit_event(Event::NodeRegistered {
                node_id,
                farm_id,
                account,
            });
            Ok(())
        }

        /// Replaces the signer's node description. Capacity may shrink only down to what is
        /// reserved.
        #[pallet::call_index(8)]
        #[pallet::weight(T::WeightInfo::update_node())]
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
            Self::move_node_ipv4(node_id, &node, public_config.as_ref())?;
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
            .saturating_add(T::DbWeight::get().reads_writes(2, 3)))]
        pub fn remove_node(origin: OriginFor<T>, node_id: NodeId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            if who != node.account {
                let farm = Farms::<T>::get(node.farm_id).ok_or(Error::<T>::FarmNotFound)?;
                ensure!(farm.owner == who, Error::<T>::NotNodeOrFarmOwner);
            }
            ensure!(
                node.active_contracts == 0 || !NodeRemovals::<T>::contains_key(node_id),
                Error::<T>::NodeRemovalPending
            );
            Self::remove_or_schedule(node_id, node, RemovalKind::Notice, Some(who))
        }

        /// Proof of liveness from the node. Free when accepted; rate-limited.
        #[pallet::call_index(10)]
        #[pallet::weight(T::WeightInfo::heartbeat())]
        pub fn heartbeat(origin: OriginFor<T>) -> DispatchResultWithPostInfo {
            let account = ensure_signed(origin)?;
            let node_id = NodeIdByAccount::<T>::get(&account).ok_or(Error::<T>::NotANode)?;
            let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            let now = Self::now_ms();
            let continuous = match node.last_heartbeat {
                Some(last) => {
                    let gap = now.saturating_sub(last.timestamp_ms);
                    ensure!(
                        gap >= T::MinHeartbeatIntervalMs::get(),
                        Error::<T>::HeartbeatTooSoon
                    );
                    gap <= T::HeartbeatTimeoutMs::get()
                }
                None => false,
            };
            if !continuous {
                node.online_since_ms = now;
            }
            // Derived from the run's start rather than summed per beat: no rounding drift.
            node.uptime_seconds = now.saturating_sub(node.online_since_ms) / 1000;
            node.last_heartbeat = Some(Heartbeat {
                block: frame_system::Pallet::<T>::block_number(),
                timestamp_ms: now,
            });
            let uptime_seconds = node.uptime_seconds;
            Nodes::<T>::insert(node_id, node);
            Self::deposit_event(Event::NodeHeartbeat {
                node_id,
                account,
                timestamp_ms: now,
                uptime_seconds,
            });
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
        /// Validated exactly as in `register_node` and `update_node`, and the node's IPv4
        /// address stays unique chain-wide: it may not be held by a farm pool or another node.
        #[pallet::call_index(13)]
        #[pallet::weight(T::WeightInfo::set_node_public_config())]
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
            Self::move_node_ipv4(node_id, &node, public_config.as_ref())?;
            node.public_config = public_config;
            let farm_id = node.farm_id;
            Nodes::<T>::insert(node_id, node);
            Self::deposit_event(Event::NodePublicConfigSet { node_id, farm_id });
            Ok(())
        }

        /// The farm owner consents to `account` (a node's executor account) registering a node
        /// into `farm_id`. Authorizing again keeps one authorization.
        #[pallet::call_index(14)]
        #[pallet::weight(T::WeightInfo::authorize_node())]
        pub fn authorize_node(
            origin: OriginFor<T>,
            farm_id: FarmId,
            account: T::AccountId,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::owned_farm(farm_id, &who)?;
            ensure!(
                !NodeIdByAccount::<T>::contains_key(&account),
                Error::<T>::AccountAlreadyHasNode
            );
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
        #[pallet::weight(T::WeightInfo::revoke_node_authorization())]
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
            Self::deposit_event(Event::NodeAuthorizationRevoked { farm_id, account });
            Ok(())
        }

        /// Governance removes a node without notice: at once if it runs no contracts, else in
        /// the next blocks, ending its contracts first (a pending notice is cut short).
        #[pallet::call_index(16)]
        #[pallet::weight(T::WeightInfo::force_remove_node())]
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
        #[pallet::weight(T::WeightInfo::force_remove_node())]
        pub fn remove_dead_node(origin: OriginFor<T>, node_id: NodeId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
            let silent_since = node
                .last_heartbeat
                .map(|hb| hb.block)
                .unwrap_or(node.registered_at);
            let now = frame_system::Pallet::<T>::block_number();
            ensure!(
                now >= sp_runtime::Saturating::saturating_add(
                    silent_since,
                    T::DeadNodeAfterBlocks::get()
                ),
                Error::<T>::NodeNotDead
            );
            // Only contracts are freed this way: an idle node (powered down, say) is its
            // farm's business.
            ensure!(
                node.active_contracts > 0,
                Error::<T>::DeadNodeHasNoContracts
            );
            ensure!(
                NodeRemovals::<T>::get(node_id).map(|r| r.kind) != Some(RemovalKind::Forced),
                Error::<T>::NodeRemovalPending
            );
            Self::remove_or_schedule(node_id, node, RemovalKind::Forced, Some(who))
        }

        /// Governance removes a farm whose nodes are gone (force-remove them first), with its
        /// address pool and unused node authorizations. With more authorizations than one call
        /// clears, the call clears that many and leaves the farm: call it again.
        #[pallet::call_index(17)]
        #[pallet::weight(T::WeightInfo::force_remove_farm(T::MaxIpsPerFarm::get()))]
        pub fn force_remove_farm(
            origin: OriginFor<T>,
            farm_id: FarmId,
        ) -> DispatchResultWithPostInfo {
            T::GovernanceOrigin::ensure_origin(origin)?;
            let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
            ensure!(
                FarmNodeCount::<T>::get(farm_id) == 0,
                Error::<T>::FarmHasNodes
            );
            // Without nodes no address is assigned (a try_state invariant).
            // Counted by hand (one more than the limit tells whether any are left), so the
            // bound holds whatever is in the storage overlay.
            let accounts: Vec<T::AccountId> = NodeAuthorizations::<T>::iter_key_prefix(farm_id)
                .take(MAX_AUTHORIZATIONS_FORCE_REMOVED as usize + 1)
                .collect();
            let more = accounts.len() > MAX_AUTHORIZATIONS_FORCE_REMOVED as usize;
            for account in accounts
                .iter()
                .take(MAX_AUTHORIZATIONS_FORCE_REMOVED as usize)
            {
                NodeAuthorizations::<T>::remove(farm_id, account);
            }
            if more {
                Self::deposit_event(Event::FarmNodeAuthorizationsCleared {
                    farm_id,
                    cleared: MAX_AUTHORIZATIONS_FORCE_REMOVED,
                });
                return Ok(Some(T::WeightInfo::force_remove_farm(0)).into());
            }
            let ips_released = Self::remove_farm_entries(farm_id, &farm);
            Self::deposit_event(Event::FarmForceRemoved {
                farm_id,
                ips_released,
            });
            Ok(Some(T::WeightInfo::force_remove_farm(ips_released)).into())
        }

        /// Governance removes an address from a farm's pool (one the farm had no right to, say).
        /// A contract holding it ends.
        #[pallet::call_index(18)]
        #[pallet::weight(T::WeightInfo::force_remove_farm_ip(T::MaxIpsPerFarm::get())
            .saturating_add(T::Contracts::end_contract_weight()))]
        pub fn force_remove_farm_ip(
            origin: OriginFor<T>,
            farm_id: FarmId,
            ip: [u8; 4],
        ) -> DispatchResult {
            T::GovernanceOrigin::ensure_origin(origin)?;
            let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
            let entry = farm
                .public_ips
                .iter()
                .find(|e| e.config.ip.ip == ip)
                .copied()
                .ok_or(Error::<T>::IpNotInFarm)?;
            let contract = entry.assigned.map(|a| a.contract);
            if let Some(contract) = contract {
                // Releases the contract's addresses, this one among them.
                T::Contracts::end_contract_holding_ip(contract)?;
            }
            let mut farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
            farm.public_ips.retain(|e| e.config.ip.ip != ip);
            IpOwner::<T>::remove(ip);
            Farms::<T>::insert(farm_id, farm);
            Self::deposit_event(Event::FarmIpForceRemoved {
                farm_id,
                ip,
                contract,
            });
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

impl<T: Config> Pallet<T> {
    fn now_ms() -> u64 {
        u64::try_from(T::Time::now().as_millis()).unwrap_or(u64::MAX)
    }

    fn lowercase(name: &FarmName) -> FarmName {
        // Same length as the input, so nothing is ever truncated.
        FarmName::truncate_from(name.iter().map(u8::to_ascii_lowercase).collect())
    }

    /// Validates a farm name and returns its index key.
    fn name_key(name: &FarmName) -> Result<FarmName, Error<T>> {
        ensure!(
            name.len() as u32 >= MIN_FARM_NAME_LEN,
            Error::<T>::FarmNameTooShort
        );
        ensure!(
            name.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'),
            Error::<T>::FarmNameInvalidCharacter
        );
        Ok(Self::lowercase(name))
    }

    /// Removes a farm without nodes and every index entry pointing at it; returns how many
    /// pool addresses were released.
    fn remove_farm_entries(farm_id: FarmId, farm: &Farm<T>) -> u32 {
        for entry in farm.public_ips.iter() {
            IpOwner::<T>::remove(entry.config.ip.ip);
        }
        FarmIdByName::<T>::remove(Self::lowercase(&farm.name));
        FarmNodeCount::<T>::remove(farm_id);
        Farms::<T>::remove(farm_id);
        farm.public_ips.len() as u32
    }

    fn owned_farm(farm_id: FarmId, who: &T::AccountId) -> Result<Farm<T>, Error<T>> {
        let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
        ensure!(&farm.owner == who, Error::<T>::NotFarmOwner);
        Ok(farm)
    }

    fn check_node_fields(
        box_key: &BoxKey,
        location: &Location,
        public_config: Option<&PublicConfig>,
        executor_version: &ExecutorVersion,
    ) -> DispatchResult {
        // The all-zero point is a low-order x25519 key: sealing to it protects nothing.
        ensure!(box_key.iter().any(|b| *b != 0), Error::<T>::InvalidBoxKey);
        ensure!(
            (-MAX_LATITUDE..=MAX_LATITUDE).contains(&location.latitude)
                && (-MAX_LONGITUDE..=MAX_LONGITUDE).contains(&location.longitude),
            Error::<T>::InvalidCoordinates
        );
        ensure!(
            core::str::from_utf8(&location.city).is_ok()
                && core::str::from_utf8(&location.country).is_ok(),
            Error::<T>::InvalidLocationName
        );
        ensure!(
            !executor_version.is_empty() && executor_version.iter().all(|c| c.is_ascii_graphic()),
            Error::<T>::InvalidExecutorVersion
        );
        if let Some(config) = public_config {
            Self::check_public_config(config)?;
        }
        Ok(())
    }

    /// Validates a node's public configuration: usable public IPv4 and IPv6 addresses and a
    /// valid DNS name. Whether the IPv4 address is free is checked by `move_node_ipv4`.
    fn check_public_config(config: &PublicConfig) -> DispatchResult {
        if let Some(v4) = &config.ipv4 {
            validate_public_ipv4_in(v4, DocumentationIpsArePublic::<T>::get())
                .map_err(Error::<T>::InvalidPublicIpv4)?;
        }
        if let Some(v6) = &config.ipv6 {
            validate_public_ipv6_in(v6, DocumentationIpsArePublic::<T>::get())
                .map_err(Error::<T>::InvalidPublicIpv6)?;
        }
        if let Some(domain) = &config.domain {
            ensure!(is_valid_domain(domain), Error::<T>::InvalidDomain);
        }
        Ok(())
    }

    /// Moves the IP index entry of node `node_id` (stored as `node`) from its current IPv4
    /// address to the one in `public_config`. Keeping the same address is not a conflict; a
    /// new address held by a farm pool or another node is refused, with nothing changed.
    fn move_node_ipv4(
        node_id: NodeId,
        node: &Node<T>,
        public_config: Option<&PublicConfig>,
    ) -> DispatchResult {
        let old_ip = Self::node_ipv4(node);
        let new_ip = Self::config_ipv4(public_config);
        if old_ip == new_ip {
            return Ok(());
        }
        if let Some(ip) = new_ip {
            ensure!(
                !IpOwner::<T>::contains_key(ip),
                Error::<T>::IpAlreadyRegistered
            );
        }
        if let Some(ip) = old_ip {
            IpOwner::<T>::remove(ip);
        }
        if let Some(ip) = new_ip {
            IpOwner::<T>::insert(ip, IpHolder::Node(node_id));
        }
        Ok(())
    }

    fn config_ipv4(public_config: Option<&PublicConfig>) -> Option<[u8; 4]> {
        public_config.and_then(|c| c.ipv4).map(|c| c.ip.ip)
    }

    fn node_ipv4(node: &Node<T>) -> Option<[u8; 4]> {
        Self::config_ipv4(node.public_config.as_ref())
    }

    fn free_of(node: &Node<T>) -> Resources {
        node.capacity
            .with_cru_overcommit(T::CruOvercommit::get())
            .saturating_sub(&node.reserved)
    }

    fn status_of(node: &Node<T>) -> NodeStatus {
        match node.last_heartbeat {
            Some(hb)
                if Self::now_ms().saturating_sub(hb.timestamp_ms)
                    <= T::HeartbeatTimeoutMs::get() =>
            {
                NodeStatus::Online
            }
            _ => NodeStatus::Offline,
        }
    }
}

/// RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens.
fn is_valid_domain(domain: &[u8]) -> bool {
    !domain.is_empty()
        && domain.split(|c| *c == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
        })
}

impl<T: Config> GridCapacity<T::AccountId> for Pallet<T> {
    fn node_account(node: NodeId) -> Option<T::AccountId> {
        Nodes::<T>::get(node).map(|n| n.account)
    }

    fn node_farm(node: NodeId) -> Option<FarmId> {
        Nodes::<T>::get(node).map(|n| n.farm_id)
    }

    fn farm_owner(farm: FarmId) -> Option<T::AccountId> {
        Farms::<T>::get(farm).map(|f| f.owner)
    }

    fn farm_pricing_policy(farm: FarmId) -> Option<PricingPolicyId> {
        Farms::<T>::get(farm).map(|f| f.pricing_policy)
    }

    fn node_is_online(node: NodeId) -> bool {
        Self::node_status(node) == Some(NodeStatus::Online)
    }

    fn node_is_leaving(node: NodeId) -> bool {
        NodeRemovals::<T>::contains_key(node)
    }

    fn node_accepts_workloads(node_id: NodeId) -> Result<(), DispatchError> {
        let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        ensure!(
            !NodeRemovals::<T>::contains_key(node_id),
            Error::<T>::NodeLeaving
        );
        ensure!(
            Self::status_of(&node) == NodeStatus::Online,
            Error::<T>::NodeOffline
        );
        ensure!(
            node.power_target == Power::Up,
            Error::<T>::NodePowerTargetDown
        );
        ensure!(node.power_state == Power::Up, Error::<T>::NodePoweredDown);
        Ok(())
    }

    fn free_capacity(node: NodeId) -> Option<Resources> {
        Pallet::<T>::free_capacity(node)
    }

    fn reserve(node_id: NodeId, resources: &Resources) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let reserved = node
            .reserved
            .checked_add(resources)
            .ok_or(Error::<T>::CapacityOverflow)?;
        ensure!(
            reserved.fits_in(&node.capacity, T::CruOvercommit::get()),
            Error::<T>::InsufficientCapacity
        );
        node.reserved = reserved;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::CapacityReserved {
            node_id,
            resources: *resources,
            reserved,
        });
        Ok(())
    }

    fn release(node_id: NodeId, resources: &Resources) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let reserved = node
            .reserved
            .checked_sub(resources)
            .ok_or(Error::<T>::ReleaseExceedsReserved)?;
        node.reserved = reserved;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::CapacityReleased {
            node_id,
            resources: *resources,
            reserved,
        });
        Ok(())
    }

    fn assign_public_ips(
        node_id: NodeId,
        contract: ContractId,
        count: u32,
    ) -> Result<Vec<PublicIpv4Config>, DispatchError> {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let farm_id = node.farm_id;
        let mut farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
        let free: Vec<usize> = farm
            .public_ips
            .iter()
            .enumerate()
            .filter(|(_, e)| e.assigned.is_none())
            .map(|(i, _)| i)
            .take(count as usize)
            .collect();
        ensure!(free.len() as u32 == count, Error::<T>::NotEnoughFreeIps);
        node.assigned_ips = node
            .assigned_ips
            .checked_add(count)
            .ok_or(Error::<T>::CounterOverflow)?;

        let mut configs = Vec::with_capacity(free.len());
        for i in free {
            if let Some(entry) = farm.public_ips.get_mut(i) {
                entry.assigned = Some(IpAssignment {
                    contract,
                    node: node_id,
                });
                configs.push(entry.config);
            }
        }
        Farms::<T>::insert(farm_id, farm);
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::PublicIpsAssigned {
            farm_id,
            node_id,
            contract_id: contract,
            ips: configs.iter().map(|c| c.ip.ip).collect(),
        });
        Ok(configs)
    }

    fn release_public_ips(node_id: NodeId, contract: ContractId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let farm_id = node.farm_id;
        let mut farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
        let holder = Some(IpAssignment {
            contract,
            node: node_id,
        });
        let mut ips = Vec::new();
        for entry in farm.public_ips.iter_mut().filter(|e| e.assigned == holder) {
            entry.assigned = None;
            ips.push(entry.config.ip.ip);
        }
        if ips.is_empty() {
            return Ok(());
        }
        // The counter equals the number of entries held by the node (a try_state invariant).
        node.assigned_ips = node.assigned_ips.saturating_sub(ips.len() as u32);
        Farms::<T>::insert(farm_id, farm);
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::PublicIpsReleased {
            farm_id,
            node_id,
            contract_id: contract,
            ips,
        });
        Ok(())
    }

    fn contract_started(node_id: NodeId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        node.active_contracts = node
            .active_contracts
            .checked_add(1)
            .ok_or(Error::<T>::CounterOverflow)?;
        let active_contracts = node.active_contracts;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::NodeContractStarted {
            node_id,
            active_contracts,
        });
        Ok(())
    }

    fn contract_ended(node_id: NodeId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        node.active_contracts = node
            .active_contracts
            .checked_sub(1)
            .ok_or(Error::<T>::NoActiveContracts)?;
        let active_contracts = node.active_contracts;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::NodeContractEnded {
            node_id,
            active_contracts,
        });
        Ok(())
    }
}

#[cfg(any(feature = "try-runtime", feature = "std"))]
impl<T: Config> Pallet<T> {
    /// Checks every invariant of the pallet's storage; used by `try_state` and after each test.
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use alloc::collections::btree_map::BTreeMap;
        let overcommit = T::CruOvercommit::get();
        let next_farm = NextFarmId::<T>::get();
        let next_node = NextNodeId::<T>::get();
        // Addresses the items claim, to compare with the IP index afterwards.
        let mut claimed_ips: BTreeMap<[u8; 4], IpHolder> = BTreeMap::new();
        // Farm IPs assigned per node, to compare with each node's counter.
        let mut ips_per_node: BTreeMap<NodeId, u32> = BTreeMap::new();

        for (farm_id, farm) in Farms::<T>::iter() {
            ensure!(farm.id == farm_id, "farm stored under another id");
            ensure!(farm_id < next_farm, "farm id not below NextFarmId");
            Self::name_key(&farm.name).map_err(|_| "stored farm name is invalid")?;
            ensure!(
                FarmIdByName::<T>::get(Self::lowercase(&farm.name)) == Some(farm_id),
                "farm name index does not point at the farm"
            );
            let members = NodesByFarm::<T>::iter_key_prefix(farm_id).count() as u32;
            ensure!(
                FarmNodeCount::<T>::contains_key(farm_id)
                    && FarmNodeCount::<T>::get(farm_id) == members,
                "farm node count differs from its members"
            );
            for entry in farm.public_ips.iter() {
                validate_public_ipv4_in(&entry.config, DocumentationIpsArePublic::<T>::get())
                    .map_err(|_| "stored farm IP is invalid")?;
                ensure!(
                    claimed_ips
                        .insert(entry.config.ip.ip, IpHolder::Farm(farm_id))
                        .is_none(),
                    "IP listed twice"
                );
                if let Some(assignment) = entry.assigned {
                    // The holder is a live node of this farm that has the IP in its counter.
                    let node =
                        Nodes::<T>::get(assignment.node).ok_or("IP assigned to a missing node")?;
                    ensure!(
                        node.farm_id == farm_id,
                        "IP assigned to a node of another farm"
                    );
                    let n = ips_per_node.entry(assignment.node).or_insert(0);
                    *n = n.saturating_add(1);
                }
            }
        }
        for (key, farm_id) in FarmIdByName::<T>::iter() {
            let farm = Farms::<T>::get(farm_id).ok_or("name index points at a missing farm")?;
            ensure!(
                Self::lowercase(&farm.name) == key,
                "name index key is not the farm's name"
            );
        }
        for (farm_id, _) in FarmNodeCount::<T>::iter() {
            ensure!(
                Farms::<T>::contains_key(farm_id),
                "node count kept for a missing farm"
            );
        }

        for (node_id, node) in Nodes::<T>::iter() {
            ensure!(node.id == node_id, "node stored under another id");
            ensure!(node_id < next_node, "node id not below NextNodeId");
            ensure!(
                Farms::<T>::contains_key(node.farm_id),
                "node of a missing farm"
            );
            ensure!(
                NodesByFarm::<T>::contains_key(node.farm_id, node_id),
                "node missing from its farm's index"
            );
            ensure!(
                NodeIdByAccount::<T>::get(&node.account) == Some(node_id),
                "account index does not point at the node"
            );
            ensure!(
                node.reserved.fits_in(&node.capacity, overcommit),
                "reserved above capacity"
            );
            ensure!(
                ips_per_node.get(&node_id).copied().unwrap_or(0) == node.assigned_ips,
                "node IP counter differs from the farm's assignments"
            );
            if let Some(ip) = Self::node_ipv4(&node) {
                ensure!(
                    claimed_ips.insert(ip, IpHolder::Node(node_id)).is_none(),
                    "IP held twice"
                );
            }
        }
        for (account, node_id) in NodeIdByAccount::<T>::iter() {
            let node = Nodes::<T>::get(node_id).ok_or("account index points at a missing node")?;
            ensure!(
                node.account == account,
                "account index key is not the node's account"
            );
        }
        for (farm_id, node_id, ()) in NodesByFarm::<T>::iter() {
            let node = Nodes::<T>::get(node_id).ok_or("farm index points at a missing node")?;
            ensure!(
                node.farm_id == farm_id,
                "farm index puts the node in another farm"
            );
        }

        Self::removals_try_state()?;
        for (farm_id, _) in NodeAuthorizations::<T>::iter_keys() {
            ensure!(
                Farms::<T>::contains_key(farm_id),
                "a node authorization outlived its farm"
            );
        }

        ensure!(
            IpOwner::<T>::iter().count() == claimed_ips.len(),
            "IP index size differs from the IPs held"
        );
        for (ip, holder) in claimed_ips {
            ensure!(
                IpOwner::<T>::get(ip) == Some(holder),
                "IP index does not point at the holder"
            );
        }
        Ok(())
    }
}

#[cfg(any(feature = "std", feature = "runtime-benchmarks"))]
impl<T: Config> Pallet<T> {
    /// A valid public IPv4 address in 45.0.0.0/8 derived from `seed`, for tests and benchmarks.
    /// Distinct seeds below 2^24 - 3 give distinct addresses.
    pub fn test_ip(seed: u32) -> PublicIpv4Config {
        // Hosts 2 ..= 2^24 - 2: never the network, the gateway (.0.0.1) or the broadcast.
        let host = 2 + seed % ((1 << 24) - 3);
        let ip = (45u32 << 24 | host).to_be_bytes();
        PublicIpv4Config {
            ip: zos_primitives::Ipv4Cidr { ip, prefix_len: 8 },
            gateway: [45, 0, 0, 1],
        }
    }

    /// Creates a farm with `ip_count` public IPs and an online node in it, through the same
    /// paths as the extrinsics. For other pallets' tests and benchmarks, which need a node to
    /// place contracts on.
    pub fn setup_online_node(
        farm_owner: T::AccountId,
        node_account: T::AccountId,
        capacity: Resources,
        ip_count: u32,
    ) -> Result<(FarmId, NodeId), DispatchError> {
        use frame_system::RawOrigin;
        let farm_id = NextFarmId::<T>::get();
        let mut name = b"farm-".to_vec();
        name.extend_from_slice(alloc::format!("{farm_id}").as_bytes());
        Self::create_farm(
            RawOrigin::Signed(farm_owner.clone()).into(),
            FarmName::truncate_from(name),
        )?;
        for i in 0..ip_count {
            let seed = farm_id.wrapping_mul(4096).wrapping_add(i);
            Self::add_farm_ip(
                RawOrigin::Signed(farm_owner.clone()).into(),
                farm_id,
                Self::test_ip(seed),
            )
            .map_err(|e| e.error)?;
        }
        Self::authorize_node(
            RawOrigin::Signed(farm_owner.clone()).into(),
            farm_id,
            node_account.clone(),
        )?;
        Self::register_node(
            RawOrigin::Signed(node_account.clone()).into(),
            farm_id,
            capacity,
            [7u8; 32],
            Location::default(),
            None,
            ExecutorVersion::truncate_from(b"v0.1.0".to_vec()),
        )?;
        let node_id = NodeIdByAccount::<T>::get(&node_account).ok_or(Error::<T>::NotANode)?;
        Self::heartbeat(RawOrigin::Signed(node_account).into()).map_err(|e| e.error)?;
        Ok((farm_id, node_id))
    }
}
