//! A participant's overlay identity: an ed25519 key (its libp2p identity too), kept in a file
//! only its owner reads. The key decides the participant's /64; a peer's /64 is read from its
//! peer id, which embeds its public key.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{bail, Context, Result};
/// A participant's key pair, as [`load_or_create`] gives it (ed25519).
pub use libp2p::identity::Keypair;
use libp2p::{identity::PublicKey, PeerId};

use crate::address::NodeSubnet;

/// The key at `path`, created (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = Keypair::from_protobuf_encoding(&bytes)
                .with_context(|| format!("{} is not an overlay key", path.display()))?;
            if key.public().try_into_ed25519().is_err() {
                bail!("{} is not an ed25519 key", path.display());
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&key.to_protobuf_encoding()?)
                .and_then(|_| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The /64 owned by an ed25519 public key; none for other key types.
pub fn subnet_of_key(public: &PublicKey) -> Option<NodeSubnet> {
    let ed = public.clone().try_into_ed25519().ok()?;
    Some(NodeSubnet::of_key(&ed.to_bytes()))
}

/// The /64 of the peer with this id: ed25519 peer ids carry their public key inline.
pub fn subnet_of_peer(peer: &PeerId) -> Option<NodeSubnet> {
    public_key_of_peer(peer).as_ref().and_then(subnet_of_key)
}

/// The public key embedded in an (identity-multihash) peer id.
pub fn public_key_of_peer(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // 0x00 is the identity multihash: the digest is the protobuf-encoded key itself.
    if hash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(hash.digest()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_gives_the_same_subnet_as_its_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/overlay.key");
        let key = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(key.public(), again.public());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let peer = key.public().to_peer_id();
        assert_eq!(subnet_of_peer(&peer), subnet_of_key(&key.public()));
        assert!(subnet_of_peer(&peer).is_some());
        assert_ne!(
            subnet_of_peer(&Keypair::generate_ed25519().public().to_peer_id()),
            subnet_of_peer(&peer)
        );
    }

    #[test]
    fn a_garbage_key_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.key");
        std::fs::write(&path, b"not a key").unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("is not an overlay key"),
            "{err:#}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
    }
}
