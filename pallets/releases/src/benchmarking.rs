//! Benchmarks of every extrinsic.

use super::*;
use frame_benchmarking::v2::*;
use frame_support::traits::EnsureOrigin;
use frame_system::pallet_prelude::BlockNumberFor;
use zos_primitives::releases::{NodeRelease, PilotFarms, ReleaseVersion, Runmode, MAX_PILOT_FARMS};

/// The worst case: a full list of pilot farms (every pair compared for duplicates).
fn release<T: Config>(patch: u32) -> NodeRelease<BlockNumberFor<T>> {
    NodeRelease {
        version: ReleaseVersion {
            major: 1,
            minor: 0,
            patch,
        },
        manifest_blake3: [7; 32],
        safe_to_upgrade: true,
        pilot_farms: PilotFarms::truncate_from((0..MAX_PILOT_FARMS).collect()),
        general_from: 10u32.into(),
    }
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn authorize_runtime_upgrade() -> Result<(), BenchmarkError> {
        let origin =
            T::ReleaseOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let code_hash = T::Hash::default();

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, code_hash);

        assert!(frame_system::Pallet::<T>::authorized_upgrade().is_some());
        Ok(())
    }

    #[benchmark]
    fn set_node_release() -> Result<(), BenchmarkError> {
        let origin =
            T::ReleaseOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        // A current release to compare with.
        NodeReleases::<T>::insert(Runmode::Main, release::<T>(0));

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, Runmode::Main, release::<T>(1));

        assert_eq!(
            NodeReleases::<T>::get(Runmode::Main).map(|r| r.version.patch),
            Some(1)
        );
        Ok(())
    }

    #[benchmark]
    fn halt_node_release() -> Result<(), BenchmarkError> {
        let origin =
            T::ReleaseOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        NodeReleases::<T>::insert(Runmode::Main, release::<T>(0));

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, Runmode::Main);

        assert_eq!(
            NodeReleases::<T>::get(Runmode::Main).map(|r| r.safe_to_upgrade),
            Some(false)
        );
        Ok(())
    }

    impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
