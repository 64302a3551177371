//! Signing keys and account names as a user types them.
//!
//! A key (`--key`) is one of:
//! - a dev name: `//Alice`, `alice`, `//Bob//stash`;
//! - a secret URI: a BIP-39 mnemonic, optionally with derivation (`"<words>//hard/soft"`), or a
//!   `0x`-prefixed 32-byte hex seed;
//! - a file holding either the executor's identity JSON (`{"account_seed": ..., ...}`), a raw
//!   32-byte seed in hex, or a mnemonic / secret URI on one line.
//!
//! An account (`--signer`, `--owner`, `transfer`) is an SS58 address or a dev name.

use std::{path::Path, str::FromStr};

use subxt::utils::AccountId32;
use subxt_signer::{sr25519::Keypair, SecretUri};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "{0:?} is not a dev name (//Alice), a mnemonic, a secret URI, a 0x seed or a key file"
    )]
    Unrecognised(String),
    #[error("invalid secret: {0}")]
    Invalid(String),
    #[error("{0:?} is neither an SS58 address nor a dev name (//Alice, bob)")]
    UnknownAccount(String),
}

/// The well-known development accounts, by the lowercase name `alice` or `//Alice`.
const DEV_NAMES: [&str; 6] = ["alice", "bob", "charlie", "dave", "eve", "ferdie"];

/// `alice` or `//Alice` -> `//Alice`; anything else -> `None`.
fn dev_uri(text: &str) -> Option<String> {
    let name = text.strip_prefix("//").unwrap_or(text);
    let (first, rest) = match name.split_once("//") {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if !DEV_NAMES.contains(&first.to_ascii_lowercase().as_str()) {
        return None;
    }
    let mut cap = first.to_ascii_lowercase();
    cap[..1].make_ascii_uppercase();
    Some(match rest {
        Some(rest) => format!("//{cap}//{rest}"),
        None => format!("//{cap}"),
    })
}

fn from_seed_hex(text: &str) -> Result<Keypair, KeyError> {
    let bytes = Zeroizing::new(
        hex::decode(text.trim().trim_start_matches("0x"))
            .map_err(|e| KeyError::Invalid(format!("seed is not hex: {e}")))?,
    );
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Invalid(format!("a seed is 32 bytes, found {}", bytes.len())))?;
    Keypair::from_secret_key(seed).map_err(|e| KeyError::Invalid(format!("{e:?}")))
}

fn is_seed_hex(text: &str) -> bool {
    let t = text.trim().trim_start_matches("0x");
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

fn from_uri(text: &str) -> Result<Keypair, KeyError> {
    let uri = SecretUri::from_str(text.trim()).map_err(|e| KeyError::Invalid(e.to_string()))?;
    Keypair::from_uri(&uri).map_err(|e| KeyError::Invalid(e.to_string()))
}

fn from_file(path: &Path) -> Result<Keypair, KeyError> {
    let file_err = |reason: String| KeyError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?);
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| file_err(format!("not valid JSON: {e}")))?;
        let seed = value
            .get("account_seed")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                file_err("JSON without an \"account_seed\" (not an executor identity file)".into())
            })?;
        return from_seed_hex(seed).map_err(|e| file_err(e.to_string()));
    }
    if is_seed_hex(trimmed) {
        return from_seed_hex(trimmed).map_err(|e| file_err(e.to_string()));
    }
    from_uri(trimmed).map_err(|e| file_err(e.to_string()))
}

/// Parses `--key`.
pub fn parse_key(text: &str) -> Result<Keypair, KeyError> {
    if let Some(uri) = dev_uri(text) {
        return from_uri(&uri);
    }
    let path = Path::new(text);
    if path.is_file() {
        return from_file(path);
    }
    if is_seed_hex(text) {
        return from_seed_hex(text);
    }
    // A secret URI needs a phrase (several words) or a derivation.
    if text.contains(' ') || text.starts_with("//") || text.starts_with("0x") {
        return from_uri(text);
    }
    Err(KeyError::Unrecognised(text.to_string()))
}

/// Parses an account: SS58 address or dev name.
pub fn parse_account(text: &str) -> Result<AccountId32, KeyError> {
    if let Some(uri) = dev_uri(text) {
        return Ok(from_uri(&uri)?.public_key().to_account_id());
    }
    AccountId32::from_str(text).map_err(|_| KeyError::UnknownAccount(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use subxt_signer::sr25519::dev;

    #[test]
    fn dev_names_in_both_spellings() {
        let alice = dev::alice().public_key().to_account_id();
        assert_eq!(
            parse_key("//Alice").unwrap().public_key().to_account_id(),
            alice
        );
        assert_eq!(
            parse_key("alice").unwrap().public_key().to_account_id(),
            alice
        );
        assert_eq!(parse_account("Alice").unwrap(), alice);
        assert_eq!(
            parse_account("//Bob").unwrap(),
            dev::bob().public_key().to_account_id()
        );
        assert_ne!(parse_account("//Alice//stash").unwrap(), alice);
    }

    #[test]
    fn ss58_addresses_and_garbage() {
        let bob = dev::bob().public_key().to_account_id();
        assert_eq!(parse_account(&bob.to_string()).unwrap(), bob);
        assert!(matches!(
            parse_account("nobody"),
            Err(KeyError::UnknownAccount(_))
        ));
        assert!(matches!(
            parse_key("nobody"),
            Err(KeyError::Unrecognised(_))
        ));
        assert!(parse_key("0x1234").is_err());
    }

    #[test]
    fn mnemonic_and_seed() {
        let phrase = subxt_signer::DEV_PHRASE;
        let from_phrase = parse_key(phrase).unwrap().public_key().to_account_id();
        let alice = parse_key(&format!("{phrase}//Alice"))
            .unwrap()
            .public_key()
            .to_account_id();
        assert_eq!(alice, dev::alice().public_key().to_account_id());
        assert_ne!(from_phrase, alice);
        let seed = format!("0x{}", "11".repeat(32));
        assert_eq!(
            parse_key(&seed).unwrap().public_key().to_account_id(),
            Keypair::from_secret_key([0x11; 32])
                .unwrap()
                .public_key()
                .to_account_id()
        );
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity.json");
        std::fs::write(
            &identity,
            format!(
                r#"{{"account_seed":"{}","box_secret":"{}"}}"#,
                "22".repeat(32),
                "33".repeat(32)
            ),
        )
        .unwrap();
        let expected = Keypair::from_secret_key([0x22; 32])
            .unwrap()
            .public_key()
            .to_account_id();
        assert_eq!(
            parse_key(identity.to_str().unwrap())
                .unwrap()
                .public_key()
                .to_account_id(),
            expected
        );

        let raw = dir.path().join("seed");
        std::fs::write(&raw, format!("{}\n", "22".repeat(32))).unwrap();
        assert_eq!(
            parse_key(raw.to_str().unwrap())
                .unwrap()
                .public_key()
                .to_account_id(),
            expected
        );

        let phrase = dir.path().join("phrase");
        std::fs::write(&phrase, format!("{}//Alice\n", subxt_signer::DEV_PHRASE)).unwrap();
        assert_eq!(
            parse_key(phrase.to_str().unwrap())
                .unwrap()
                .public_key()
                .to_account_id(),
            dev::alice().public_key().to_account_id()
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        assert!(matches!(
            parse_key(bad.to_str().unwrap()),
            Err(KeyError::File { .. })
        ));
    }
}
