//! A node's endpoint in the overlay network (`zos-overlay`), as it publishes it on chain.
//!
//! An overlay participant is identified by an ed25519 public key; the /64 it owns in the
//! overlay is derived from that key off chain, so deployers can compute the overlay addresses
//! of VMs on a node from the key alone. The listen addresses let others bootstrap into the
//! overlay through the node. They are libp2p multiaddrs in text form (such as
//! `/ip4/198.51.100.1/tcp/9651` or `/ip4/198.51.100.1/udp/9651/quic-v1`); the chain checks
//! only their shape ([`OverlayEndpoint::validate`]), not that they parse or are reachable.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{pallet_prelude::ConstU32, BoundedVec, PalletError};
use scale_info::TypeInfo;

/// Most listen addresses one endpoint lists.
pub const MAX_OVERLAY_ADDRESSES: u32 = 4;
/// Longest listen address, in bytes of multiaddr text (room for a `/p2p/<peer id>` suffix).
pub const MAX_OVERLAY_ADDRESS_LEN: u32 = 96;

/// A libp2p multiaddr in text form, e.g. `/ip4/198.51.100.1/tcp/9651`: printable ASCII
/// starting with `/`.
pub type OverlayAddress = BoundedVec<u8, ConstU32<MAX_OVERLAY_ADDRESS_LEN>>;

/// A node's overlay identity and the addresses its overlay daemon listens on.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct OverlayEndpoint {
    /// The node's ed25519 overlay public key; its overlay /64 is derived from it.
    pub key: [u8; 32],
    /// Where the node accepts overlay connections (multiaddr text), distinct; may be empty
    /// for a node others cannot dial.
    pub addresses: BoundedVec<OverlayAddress, ConstU32<MAX_OVERLAY_ADDRESSES>>,
}

/// What a node's overlay key signs (ed25519) to show that the node holds it, so no node can
/// publish another participant's key as its own: this tag, then the node account's SCALE
/// encoding. A proof made for one node's account fits no other.
pub const OVERLAY_KEY_PROOF_TAG: &[u8] = b"zos-grid/overlay-key-of-node-account/v1:";

/// An ed25519 signature by an endpoint's key over [`overlay_key_proof_message`].
pub type OverlayKeyProof = [u8; 64];

/// The bytes a node's overlay key signs for the node account `account` (SCALE-encoded).
pub fn overlay_key_proof_message(account: &[u8]) -> alloc::vec::Vec<u8> {
    let mut message = alloc::vec::Vec::with_capacity(OVERLAY_KEY_PROOF_TAG.len() + account.len());
    message.extend_from_slice(OVERLAY_KEY_PROOF_TAG);
    message.extend_from_slice(account);
    message
}

/// Why an overlay listen address was refused.
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
    PalletError,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub enum OverlayAddressError {
    /// An address is empty.
    Empty,
    /// An address does not start with `/`, as multiaddr text does.
    NotAMultiaddr,
    /// An address has a byte that is not printable ASCII (`!` to `~`; no spaces).
    NotPrintable,
    /// The same address is listed twice.
    Duplicate,
}

impl OverlayEndpoint {
    /// Checks every listen address: non-empty printable ASCII starting with `/`, none listed
    /// twice. The key is not checked: any 32 bytes name some participant's /64.
    pub fn validate(&self) -> Result<(), OverlayAddressError> {
        for (i, address) in self.addresses.iter().enumerate() {
            validate_overlay_address(address)?;
            if self
                .addresses
                .iter()
                .take(i)
                .any(|earlier| earlier == address)
            {
                return Err(OverlayAddressError::Duplicate);
            }
        }
        Ok(())
    }
}

/// Checks the shape of one listen address: non-empty printable ASCII starting with `/`.
pub fn validate_overlay_address(address: &[u8]) -> Result<(), OverlayAddressError> {
    let first = address.first().ok_or(OverlayAddressError::Empty)?;
    if !address.iter().all(u8::is_ascii_graphic) {
        return Err(OverlayAddressError::NotPrintable);
    }
    if *first != b'/' {
        return Err(OverlayAddressError::NotAMultiaddr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn endpoint(addresses: &[&[u8]]) -> OverlayEndpoint {
        OverlayEndpoint {
            key: [7; 32],
            addresses: BoundedVec::truncate_from(
                addresses
                    .iter()
                    .map(|a| OverlayAddress::truncate_from(a.to_vec()))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    #[test]
    fn validation() {
        use OverlayAddressError::*;
        let cases: &[(&[&[u8]], Result<(), OverlayAddressError>)] = &[
            (&[], Ok(())),
            (
                &[
                    b"/ip4/198.51.100.1/tcp/9651",
                    b"/ip4/198.51.100.1/udp/9651/quic-v1",
                ],
                Ok(()),
            ),
            (&[b""], Err(Empty)),
            (&[b"ip4/198.51.100.1/tcp/9651"], Err(NotAMultiaddr)),
            (&[b"/ip4/198.51.100.1 /tcp/9651"], Err(NotPrintable)),
            (&[b"/ip4/\x00"], Err(NotPrintable)),
            (&[b"/dns/\xc3\xa9.example/tcp/1"], Err(NotPrintable)),
            (&[b"/a", b"/b", b"/a"], Err(Duplicate)),
        ];
        for (addresses, expected) in cases {
            assert_eq!(endpoint(addresses).validate(), *expected, "{addresses:?}");
        }
    }

    #[test]
    fn max_encoded_len_covers_the_worst_case() {
        let long = [b'/'; MAX_OVERLAY_ADDRESS_LEN as usize];
        let full = endpoint(&[&long, &long, &long, &long]);
        assert_eq!(full.addresses.len() as u32, MAX_OVERLAY_ADDRESSES);
        assert!(full.encode().len() <= OverlayEndpoint::max_encoded_len());
    }
}
