//! The node's identity: an sr25519 account key (signs every extrinsic the executor sends) and an
//! x25519 box key (opens secrets sealed to this node). Generated on first start into the data
//! directory, reused afterwards.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use subxt::utils::AccountId32;
use subxt_signer::sr25519::Keypair;
use zeroize::Zeroizing;

/// On-disk form. Hex so the file stays readable with standard tools.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// 32-byte sr25519 mini secret key.
    account_seed: String,
    /// 32-byte x25519 secret key.
    box_secret: String,
}

pub struct NodeIdentity {
    pub account: Keypair,
    box_secret: Zeroizing<[u8; 32]>,
    pub box_public: [u8; 32],
    pub path: PathBuf,
}

impl NodeIdentity {
    pub fn account_id(&self) -> AccountId32 {
        self.account.public_key().to_account_id()
    }

    pub fn box_secret(&self) -> &[u8; 32] {
        &self.box_secret
    }

    /// Loads the key file, or creates it (mode 0600) when it does not exist.
    /// Refuses a key file that group or others can read: the keys would be compromised.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::create(path)
        }
    }

    fn load(path: &Path) -> Result<Self> {
        let mode = fs::metadata(path)
            .with_context(|| format!("reading metadata of key file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "key file {} has mode {:o}: it must not be accessible by group or others \
                 (chmod 600 it after checking nobody copied it)",
                path.display(),
                mode & 0o777
            );
        }
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading key file {}", path.display()))?,
        );
        let file: KeyFile = serde_json::from_str(&text)
            .with_context(|| format!("key file {} is not valid JSON", path.display()))?;
        let seed = decode_key(&file.account_seed).context("account_seed")?;
        let box_secret = decode_key(&file.box_secret).context("box_secret")?;
        Self::from_parts(path, &seed, box_secret)
    }

    fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).context("reading the OS random number generator")?;
        let (box_secret, _) = zos_primitives::sealing::generate_box_keypair();
        let file = KeyFile {
            account_seed: hex::encode(seed.as_ref()),
            box_secret: hex::encode(box_secret.as_ref()),
        };
        let text = Zeroizing::new(serde_json::to_string_pretty(&file)?);
        // create_new + mode 0600: never overwrite a key, never expose it, even briefly.
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating key file {}", path.display()))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        tracing::info!(path = %path.display(), "generated a new node identity");
        Self::from_parts(path, &seed, box_secret)
    }

    fn from_parts(path: &Path, seed: &[u8; 32], box_secret: Zeroizing<[u8; 32]>) -> Result<Self> {
        let account = Keypair::from_secret_key(*seed)
            .map_err(|e| anyhow::anyhow!("invalid account seed: {e:?}"))?;
        let box_public = zos_primitives::sealing::box_public_key(&box_secret);
        Ok(Self {
            account,
            box_secret,
            box_public,
            path: path.to_owned(),
        })
    }
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(hex::decode(text.trim_start_matches("0x")).context("not hex")?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        bail!("expected 32 bytes, found {}", bytes.len());
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        let first = NodeIdentity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = NodeIdentity::load_or_create(&path).unwrap();
        assert_eq!(first.account_id(), again.account_id());
        assert_eq!(first.box_public, again.box_public);
    }

    #[test]
    fn refuses_a_key_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        NodeIdentity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeIdentity::load_or_create(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("must not be accessible"), "{err}");
    }

    #[test]
    fn rejects_a_corrupt_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(br#"{"account_seed":"zz","box_secret":"00"}"#)
            .unwrap();
        assert!(NodeIdentity::load_or_create(&path).is_err());
    }

    #[test]
    fn sealed_secrets_open_with_the_node_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::load_or_create(&dir.path().join("k.json")).unwrap();
        let sealed = zos_primitives::sealing::seal(&id.box_public, b"wg-private-key").unwrap();
        let opened = zos_primitives::sealing::open(id.box_secret(), &sealed).unwrap();
        assert_eq!(&opened[..], b"wg-private-key");
    }
}
