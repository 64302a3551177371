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
}

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
    type Block = Block;
}

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

impl pallet_grid::Config for Test {
    type GovernanceOrigin = EnsureRoot<u64>;
    type MaxIpsPerFarm = ConstU32<MAX_IPS>;
    type MinNodeCapacity = MinCapacity;
    type CruOvercommit = ConstU32<OVERCOMMIT>;
    type HeartbeatTimeoutMs = frame_support::traits::ConstU64<TIMEOUT_MS>;
    type MinHeartbeatIntervalMs = frame_support::traits::ConstU64<MIN_INTERVAL_MS>;
    type Time = Timestamp;
    type WeightInfo = ();
}

pub fn new_test_ext() -> sp_io::TestExternalities {
    let storage = frame_system::GenesisConfig::<Test>::default()
        .build_storage()
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
