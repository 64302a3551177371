//! Sealing secrets to a node (feature `sealing`, std only).
//!
//! A deployer seals a secret (e.g. a network's WireGuard private key) to the node's x25519 box
//! key, registered on chain with the node; only the node's executor, holding the secret key,
//! can open it. The construction is libsodium's sealed box as implemented by the `crypto_box`
//! crate: an ephemeral x25519 key pair, XSalsa20-Poly1305 under the shared key, the ephemeral
//! public key prepended (nonce derived with BLAKE2b from both public keys). Nothing here is a
//! new construction; the chain only ever sees the ciphertext.

use alloc::vec::Vec;
use crypto_box::{aead::OsRng, PublicKey, SecretKey};
use zeroize::Zeroizing;

use crate::spec::{
    SealedSecret, MAX_SEALED_ENV_SECRET_LEN, SEALED_BOX_OVERHEAD, SEALED_ENV_PREFIX,
    SEALED_ENV_TAG_LEN, SEALED_WIREGUARD_KEY_LEN, WIREGUARD_KEY_LEN,
};

/// Why sealing or opening failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SealError {
    /// The all-zero key is a low-order point: anything sealed to it is readable by anyone.
    InvalidPublicKey,
    /// The ciphertext is shorter than the sealed-box overhead, or longer than its bound.
    WrongLength,
    /// Encryption failed (the system random number generator is unavailable).
    SealFailed,
    /// Not sealed to this key, or tampered with.
    OpenFailed,
    /// A sealed environment value made for another owner or another variable (copied from
    /// someone else's spec, say).
    WrongBinding,
    /// A sealed environment value that is not `zos-sealed:v1:` and base64.
    NotSealedEnv,
    /// A secret longer than a sealed environment value holds.
    SecretTooLong,
}

impl core::fmt::Display for SealError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let text = match self {
            SealError::InvalidPublicKey => "the recipient public key is all zeros",
            SealError::WrongLength => "sealed data has the wrong length",
            SealError::SealFailed => "sealing failed",
            SealError::OpenFailed => "not sealed to this key, or tampered with",
            SealError::WrongBinding => "sealed for another contract owner or another variable name",
            SealError::NotSealedEnv => "not a sealed value (zos-sealed:v1: and base64)",
            SealError::SecretTooLong => "the secret is too long for a sealed environment value",
        };
        f.write_str(text)
    }
}

impl std::error::Error for SealError {}

/// A fresh x25519 key pair from the OS random number generator: `(secret, public)`.
/// The executor generates this once and registers the public half as its box key.
pub fn generate_box_keypair() -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let secret = SecretKey::generate(&mut OsRng);
    let public = *secret.public_key().as_bytes();
    (Zeroizing::new(secret.to_bytes()), public)
}

/// The public box key belonging to `secret`.
pub fn box_public_key(secret: &[u8; 32]) -> [u8; 32] {
    *SecretKey::from(*secret).public_key().as_bytes()
}

/// Seals `plaintext` to the holder of `recipient`'s secret key. The result is
/// `plaintext.len() + SEALED_BOX_OVERHEAD` bytes and differs on every call.
pub fn seal(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    if recipient == &[0u8; 32] {
        return Err(SealError::InvalidPublicKey);
    }
    PublicKey::from(*recipient)
        .seal(&mut OsRng, plaintext)
        .map_err(|_| SealError::SealFailed)
}

/// Opens a sealed box with the recipient's secret key.
pub fn open(secret: &[u8; 32], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < SEALED_BOX_OVERHEAD as usize {
        return Err(SealError::WrongLength);
    }
    SecretKey::from(*secret)
        .unseal(sealed)
        .map(Zeroizing::new)
        .map_err(|_| SealError::OpenFailed)
}

/// Seals a WireGuard private key to a node, in the form a network workload stores it.
pub fn seal_wireguard_key(
    node_box_key: &[u8; 32],
    wireguard_key: &[u8; 32],
) -> Result<SealedSecret, SealError> {
    let sealed = seal(node_box_key, wireguard_key)?;
    sealed
        .try_into()
        .map(SealedSecret)
        .map_err(|_| SealError::WrongLength)
}

/// Opens a network's sealed WireGuard private key with the node's secret box key.
pub fn open_wireguard_key(
    node_secret: &[u8; 32],
    sealed: &SealedSecret,
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    if sealed.0.len() as u32 != SEALED_WIREGUARD_KEY_LEN {
        return Err(SealError::WrongLength);
    }
    let plain = open(node_secret, &sealed.0)?;
    let key: [u8; WIREGUARD_KEY_LEN as usize] = plain
        .as_slice()
        .try_into()
        .map_err(|_| SealError::WrongLength)?;
    Ok(Zeroizing::new(key))
}

/// What binds a sealed environment value to the contract owner and the variable: only a
/// contract of that owner gets the secret, under that name.
fn env_binding(owner: &[u8; 32], key: &[u8]) -> [u8; SEALED_ENV_TAG_LEN] {
    let mut input = Vec::with_capacity(8 + 32 + key.len());
    input.extend_from_slice(b"zos/env\0");
    input.extend_from_slice(owner);
    input.extend_from_slice(key);
    sp_crypto_hashing::blake2_128(&input)
}

/// Seals `secret` as the value of environment variable `key` for contracts owned by `owner`
/// on the node with box key `node_box_key`: the text to put in the spec.
pub fn seal_env_value(
    node_box_key: &[u8; 32],
    owner: &[u8; 32],
    key: &[u8],
    secret: &[u8],
) -> Result<alloc::string::String, SealError> {
    use base64::Engine as _;
    if secret.len() > MAX_SEALED_ENV_SECRET_LEN {
        return Err(SealError::SecretTooLong);
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(SEALED_ENV_TAG_LEN + secret.len()));
    plain.extend_from_slice(&env_binding(owner, key));
    plain.extend_from_slice(secret);
    let sealed = seal(node_box_key, &plain)?;
    Ok(alloc::format!(
        "{SEALED_ENV_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(sealed)
    ))
}

/// Opens a sealed environment value of variable `key` in a contract owned by `owner`.
pub fn open_env_value(
    node_secret: &[u8; 32],
    owner: &[u8; 32],
    key: &[u8],
    value: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    use base64::Engine as _;
    let b64 = value
        .strip_prefix(SEALED_ENV_PREFIX.as_bytes())
        .ok_or(SealError::NotSealedEnv)?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SealError::NotSealedEnv)?;
    let plain = open(node_secret, &sealed)?;
    let (tag, secret) = plain
        .split_at_checked(SEALED_ENV_TAG_LEN)
        .ok_or(SealError::WrongLength)?;
    if tag != env_binding(owner, key) {
        return Err(SealError::WrongBinding);
    }
    Ok(Zeroizing::new(secret.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_env_values_open_only_for_their_owner_and_variable() {
        use crate::spec::{EnvValue, MAX_ENV_VALUE_LEN};
        let (node_secret, node_public) = generate_box_keypair();
        let (owner, other) = ([1u8; 32], [2u8; 32]);
        let secret = b"postgres://app:hunter2@db/app";
        let text = seal_env_value(&node_public, &owner, b"DATABASE_URL", secret).unwrap();
        assert!(text.starts_with(SEALED_ENV_PREFIX) && !text.contains("hunter2"));
        let open = |owner: &[u8; 32], key: &[u8], value: &[u8]| {
            open_env_value(&node_secret, owner, key, value).map(|s| s.to_vec())
        };
        assert_eq!(
            open(&owner, b"DATABASE_URL", text.as_bytes()),
            Ok(secret.to_vec())
        );
        // Copied into another owner's spec, or under another name: refused.
        assert_eq!(
            open(&other, b"DATABASE_URL", text.as_bytes()),
            Err(SealError::WrongBinding)
        );
        assert_eq!(
            open(&owner, b"PRINTED", text.as_bytes()),
            Err(SealError::WrongBinding)
        );
        let (stranger, _) = generate_box_keypair();
        assert_eq!(
            open_env_value(&stranger, &owner, b"DATABASE_URL", text.as_bytes()),
            Err(SealError::OpenFailed)
        );
        assert_eq!(
            open(&owner, b"DATABASE_URL", b"zos-sealed:v1:not base64!"),
            Err(SealError::NotSealedEnv)
        );
        assert_eq!(open(&owner, b"X", b"plain"), Err(SealError::NotSealedEnv));
        // The longest secret fits an `EnvValue` and passes the chain's shape check; one byte
        // more is refused.
        let longest = std::vec![b'x'; MAX_SEALED_ENV_SECRET_LEN];
        let text = seal_env_value(&node_public, &owner, b"K", &longest).unwrap();
        assert!(text.len() <= MAX_ENV_VALUE_LEN as usize, "{}", text.len());
        assert!(EnvValue::try_from(text.as_str()).is_ok());
        assert_eq!(open(&owner, b"K", text.as_bytes()), Ok(longest.clone()));
        assert_eq!(
            seal_env_value(
                &node_public,
                &owner,
                b"K",
                &[longest, std::vec![b'x']].concat()
            ),
            Err(SealError::SecretTooLong)
        );
    }

    #[test]
    fn sealed_secret_opens_only_with_the_node_key() {
        let (node_secret, node_public) = generate_box_keypair();
        assert_eq!(box_public_key(&node_secret), node_public);
        let secret = b"a secret only the node may read";

        let sealed = seal(&node_public, secret).unwrap();
        assert_eq!(sealed.len(), secret.len() + SEALED_BOX_OVERHEAD as usize);
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret),
            "plaintext leaked"
        );
        assert_eq!(open(&node_secret, &sealed).unwrap().as_slice(), secret);
        // Randomised: the same secret seals differently each time.
        assert_ne!(seal(&node_public, secret).unwrap(), sealed);

        let (other_secret, _) = generate_box_keypair();
        assert_eq!(open(&other_secret, &sealed), Err(SealError::OpenFailed));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&node_secret, &tampered), Err(SealError::OpenFailed));
        assert_eq!(
            open(&node_secret, &sealed[..47]),
            Err(SealError::WrongLength)
        );
        assert_eq!(seal(&[0u8; 32], secret), Err(SealError::InvalidPublicKey));
    }

    #[test]
    fn wireguard_key_round_trip_fits_the_spec_field() {
        let (node_secret, node_public) = generate_box_keypair();
        let wg_key = [42u8; 32];
        let sealed = seal_wireguard_key(&node_public, &wg_key).unwrap();
        assert_eq!(sealed.0.len() as u32, SEALED_WIREGUARD_KEY_LEN);
        assert_eq!(*open_wireguard_key(&node_secret, &sealed).unwrap(), wg_key);
        let short = SealedSecret(sealed.0[..40].to_vec().try_into().unwrap());
        assert_eq!(
            open_wireguard_key(&node_secret, &short),
            Err(SealError::WrongLength)
        );
    }
}
