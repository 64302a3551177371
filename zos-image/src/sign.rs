//! ed25519 signatures over an image root.
//!
//! A signature file is `magic (8) | public key (32) | signature (64)`; the signed message is a
//! domain-separation prefix followed by the 32-byte root, so a signature can never be replayed
//! as a signature over anything else.

use std::io::Read;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{Error, IoContext, Result, SignatureError};
use crate::hash::Hash;

const SIG_MAGIC: [u8; 8] = *b"ZOSSIG01";
const DOMAIN: &[u8] = b"zos-image root signature v1\0";
pub const SIG_FILE_LEN: usize = 8 + 32 + 64;

fn message(root: &Hash) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&root.0);
    m
}

pub fn sign(root: &Hash, key: &SigningKey) -> Vec<u8> {
    let sig = key.sign(&message(root));
    let mut out = Vec::with_capacity(SIG_FILE_LEN);
    out.extend_from_slice(&SIG_MAGIC);
    out.extend_from_slice(key.verifying_key().as_bytes());
    out.extend_from_slice(&sig.to_bytes());
    out
}

/// Check a signature file against `root`; returns the signer's key.
pub fn verify(root: &Hash, sig_file: &[u8]) -> Result<VerifyingKey, SignatureError> {
    if sig_file.len() != SIG_FILE_LEN {
        return Err(SignatureError::Malformed("wrong length"));
    }
    if sig_file[..8] != SIG_MAGIC {
        return Err(SignatureError::Malformed("bad magic"));
    }
    let key_bytes: [u8; 32] = sig_file[8..40]
        .try_into()
        .map_err(|_| SignatureError::Malformed("key"))?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| SignatureError::Malformed("public key is not a valid curve point"))?;
    let sig_bytes: [u8; 64] = sig_file[40..]
        .try_into()
        .map_err(|_| SignatureError::Malformed("signature"))?;
    let sig = Signature::from_bytes(&sig_bytes);
    key.verify_strict(&message(root), &sig)
        .map_err(|_| SignatureError::Invalid(*root))?;
    Ok(key)
}

/// Require that `sig_file` is a valid signature over `root` by one of `trusted`.
pub fn require_trusted(
    root: &Hash,
    sig_file: Option<&[u8]>,
    trusted: &[VerifyingKey],
) -> Result<(), SignatureError> {
    if trusted.is_empty() {
        return Ok(());
    }
    let sig_file = sig_file.ok_or(SignatureError::Missing(*root))?;
    let signer = verify(root, sig_file)?;
    if trusted.iter().any(|k| k == &signer) {
        Ok(())
    } else {
        Err(SignatureError::UntrustedKey {
            found: hex::encode(signer.as_bytes()),
        })
    }
}

/// Generate a key pair from the OS random source.
pub fn generate() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .at("/dev/urandom")?;
    Ok(SigningKey::from_bytes(&seed))
}

fn read_hex_32(path: &Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
        Error::from(SignatureError::BadKey(format!(
            "{}: expected 64 hex digits",
            path.display()
        )))
    })?;
    Ok(out)
}

/// Secret keys are stored as the 32-byte seed in hex; public keys as 32 bytes in hex.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_hex_32(path)?))
}

/// Accepts a path to a `.pub` file or the 64 hex digits themselves.
pub fn load_verifying_key(spec: &str) -> Result<VerifyingKey> {
    let mut bytes = [0u8; 32];
    let bytes = if spec.len() == 64 && hex::decode_to_slice(spec, &mut bytes).is_ok() {
        bytes
    } else {
        read_hex_32(Path::new(spec))?
    };
    VerifyingKey::from_bytes(&bytes).map_err(|_| {
        SignatureError::BadKey(format!("{spec}: not a valid ed25519 public key")).into()
    })
}
