//! Benchmarks of every extrinsic.

use super::*;
use frame_benchmarking::v2::*;
use frame_support::traits::EnsureOrigin;

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

    impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
