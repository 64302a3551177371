//! Node OS releases as governance sets them, one per runmode; booted nodes follow them.
//!
//! The chain holds only what decides *which* release runs where: its version, the BLAKE3 of
//! its signed manifest, and the rollout. The manifest itself is served by the boot service and
//! must also carry the release key's signature, so a node trusts neither alone.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{pallet_prelude::ConstU32, BoundedVec};
use scale_info::TypeInfo;

use crate::FarmId;

/// At most this many pilot farms take a release before everyone else.
pub const MAX_PILOT_FARMS: u32 = 16;

/// Which network a node serves; each runmode follows its own release.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "lowercase"))]
pub enum Runmode {
    #[codec(index = 0)]
    Dev,
    #[codec(index = 1)]
    Test,
    #[codec(index = 2)]
    Main,
}

/// `major.minor.patch`; the derived order (field by field) is the release order.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct ReleaseVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// The farms that take a release first.
pub type PilotFarms = BoundedVec<FarmId, ConstU32<MAX_PILOT_FARMS>>;

/// A runmode's current node OS release.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeRelease<BlockNumber> {
    pub version: ReleaseVersion,
    /// BLAKE3 of the release's `manifest.json`, exactly as signed and served.
    pub manifest_blake3: [u8; 32],
    /// Whether nodes may switch to it; governance clears it to halt a rollout.
    pub safe_to_upgrade: bool,
    /// Nodes of these farms switch at once...
    pub pilot_farms: PilotFarms,
    /// ...and every other node from this block on.
    pub general_from: BlockNumber,
}

impl<BlockNumber: PartialOrd> NodeRelease<BlockNumber> {
    /// Whether a node of `farm` should run this release at block `now`.
    pub fn applies_to(&self, farm: FarmId, now: BlockNumber) -> bool {
        self.safe_to_upgrade && (self.pilot_farms.contains(&farm) || now >= self.general_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pilot_farms_go_first_and_a_halt_stops_everyone() {
        let mut r = NodeRelease {
            version: ReleaseVersion {
                major: 1,
                minor: 2,
                patch: 0,
            },
            manifest_blake3: [0; 32],
            safe_to_upgrade: true,
            pilot_farms: PilotFarms::truncate_from(alloc::vec![7]),
            general_from: 100u32,
        };
        assert!(r.applies_to(7, 10));
        assert!(!r.applies_to(8, 99));
        assert!(r.applies_to(8, 100));
        r.safe_to_upgrade = false;
        assert!(!r.applies_to(7, 1000));
        assert!(
            ReleaseVersion {
                major: 1,
                minor: 10,
                patch: 0
            } > ReleaseVersion {
                major: 1,
                minor: 9,
                patch: 9
            }
        );
    }

    #[test]
    fn the_encoding_is_the_one_nodes_decode() {
        // core-0 decodes this layout by hand: pin it.
        let r = NodeRelease {
            version: ReleaseVersion {
                major: 1,
                minor: 2,
                patch: 3,
            },
            manifest_blake3: [0xab; 32],
            safe_to_upgrade: true,
            pilot_farms: PilotFarms::truncate_from(alloc::vec![7, 9]),
            general_from: 0x0102_0304u32,
        };
        let mut want = alloc::vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0];
        want.extend([0xab; 32]);
        want.extend([1, 8, 7, 0, 0, 0, 9, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(r.encode(), want);
        assert_eq!(Runmode::Main.encode(), [2]);
    }
}
