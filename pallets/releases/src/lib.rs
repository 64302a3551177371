//! # Releases pallet
//!
//! The software releases the grid runs, under governance.
//!
//! **Node OS releases.** [`Config::ReleaseOrigin`] sets each runmode's current node release
//! ([`NodeReleases`]): its version, the BLAKE3 of its signed manifest, and the rollout (pilot
//! farms at once, every node from a block on, or halted). Versions only go up: a rollback is
//! published as a new version of the old payload, so a node's downgrade rule never has to give
//! way. Booted nodes (core-0) read the finalized value and run the manifest only when its
//! hash matches and the release key signed it.
//!
//! **The chain's own runtime.** A runtime upgrade is authorized by [`Config::ReleaseOrigin`] (the council, by two thirds, in
//! the runtime) with the hash of the new code; anyone then applies it with
//! `system.apply_authorized_upgrade(code)`, which checks the code against the hash and its
//! spec version against the running one. Without sudo (every preset but development) this is
//! the only way to upgrade the chain.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod weights;

pub use pallet::*;
pub use weights::WeightInfo;

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::pallet_prelude::*;
    use frame_system::pallet_prelude::*;
    use zos_primitives::releases::{NodeRelease, ReleaseVersion, Runmode};

    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// Authorizes releases: the council in the runtime.
        type ReleaseOrigin: EnsureOrigin<Self::RuntimeOrigin>;
        type WeightInfo: WeightInfo;
    }

    /// Each runmode's current node OS release.
    #[pallet::storage]
    pub type NodeReleases<T: Config> =
        StorageMap<_, Twox64Concat, Runmode, NodeRelease<BlockNumberFor<T>>, OptionQuery>;

    #[pallet::error]
    pub enum Error<T> {
        /// A node release must have a higher version than the runmode's current one; roll back
        /// by publishing the previous payload under a new version.
        VersionNotNewer,
        /// A pilot farm is listed twice.
        DuplicatePilotFarm,
        /// The runmode has no node release to halt.
        NoNodeRelease,
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// Governance authorized the runtime whose code hashes to `code_hash`; anyone may now
        /// apply it with `system.apply_authorized_upgrade`.
        RuntimeUpgradeAuthorized { code_hash: T::Hash },
        /// Governance set the runmode's node OS release.
        NodeReleaseSet {
            runmode: Runmode,
            version: ReleaseVersion,
            manifest_blake3: [u8; 32],
            safe_to_upgrade: bool,
        },
        /// Governance halted the rollout of the runmode's node release: no node switches to it.
        NodeReleaseHalted {
            runmode: Runmode,
            version: ReleaseVersion,
        },
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            for (_, release) in NodeReleases::<T>::iter() {
                let farms = &release.pilot_farms;
                ensure!(
                    farms
                        .iter()
                        .enumerate()
                        .all(|(i, f)| !farms[..i].contains(f)),
                    "a node release lists a pilot farm twice"
                );
            }
            Ok(())
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Authorizes the runtime upgrade to the code hashing to `code_hash` (replacing any
        /// earlier authorization). The upgrade must raise the spec version.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::authorize_runtime_upgrade())]
        pub fn authorize_runtime_upgrade(
            origin: OriginFor<T>,
            code_hash: T::Hash,
        ) -> DispatchResult {
            T::ReleaseOrigin::ensure_origin(origin)?;
            frame_system::Pallet::<T>::do_authorize_upgrade(code_hash, true);
            Self::deposit_event(Event::RuntimeUpgradeAuthorized { code_hash });
            Ok(())
        }

        /// Sets `runmode`'s node OS release: nodes of the pilot farms switch to it once it is
        /// finalized, every other node from `release.general_from` on, none while
        /// `release.safe_to_upgrade` is false. The version must be higher than the current one.
        #[pallet::call_index(1)]
        #[pallet::weight(T::WeightInfo::set_node_release())]
        pub fn set_node_release(
            origin: OriginFor<T>,
            runmode: Runmode,
            release: NodeRelease<BlockNumberFor<T>>,
        ) -> DispatchResult {
            T::ReleaseOrigin::ensure_origin(origin)?;
            if let Some(current) = NodeReleases::<T>::get(runmode) {
                ensure!(
                    release.version > current.version,
                    Error::<T>::VersionNotNewer
                );
            }
            let farms = &release.pilot_farms;
            for (i, farm) in farms.iter().enumerate() {
                ensure!(!farms[..i].contains(farm), Error::<T>::DuplicatePilotFarm);
            }
            Self::deposit_event(Event::NodeReleaseSet {
                runmode,
                version: release.version,
                manifest_blake3: release.manifest_blake3,
                safe_to_upgrade: release.safe_to_upgrade,
            });
            NodeReleases::<T>::insert(runmode, release);
            Ok(())
        }

        /// Halts the rollout of `runmode`'s node release: nodes that have not switched keep
        /// what they run. Set a newer release to go on.
        #[pallet::call_index(2)]
        #[pallet::weight(T::WeightInfo::halt_node_release())]
        pub fn halt_node_release(origin: OriginFor<T>, runmode: Runmode) -> DispatchResult {
            T::ReleaseOrigin::ensure_origin(origin)?;
            let version = NodeReleases::<T>::try_mutate(runmode, |r| {
                let r = r.as_mut().ok_or(Error::<T>::NoNodeRelease)?;
                r.safe_to_upgrade = false;
                Ok::<_, Error<T>>(r.version)
            })?;
            Self::deposit_event(Event::NodeReleaseHalted { runmode, version });
            Ok(())
        }
    }
}
