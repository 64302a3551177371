//! Deployer access to a node (logs, and later shells): each HTTP request carries an sr25519
//! signature of one of the contract's signers over the request itself, a time and a nonce.
//!
//! The `Authorization` header is
//! `Zos-Sr25519 signer=<hex public key>,time=<unix s>,nonce=<32 hex>,sig=<hex signature>`,
//! the signature over [`signed_message`]: a domain tag, the method, the path with its query,
//! the time and the nonce. Signing the path binds the signature to the contract, workload and
//! options asked for; the time bounds a replay to [`MAX_CLOCK_SKEW_SECS`] either way and the
//! node refuses a nonce it has seen within that span. A signature made by a browser extension
//! (`signRaw` wraps the bytes in `<Bytes>...</Bytes>`) is accepted as well.

use std::fmt::Write as _;

use subxt_signer::sr25519::{self, Keypair};

/// The header's scheme name.
pub const SCHEME: &str = "Zos-Sr25519";
/// How far a request's time may be from the node's clock, either way.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Longest `Authorization` header accepted (a valid one is about 300 bytes).
pub const MAX_HEADER_LEN: usize = 1024;
/// Default port of a node's access endpoint.
pub const DEFAULT_PORT: u16 = 9102;

/// A parsed `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub signer: [u8; 32],
    pub time: u64,
    pub nonce: [u8; 16],
    pub signature: [u8; 64],
}

/// Why a request's credentials are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no Authorization header: sign the request with a signer's key")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("the request's time is {0} s away from the node's clock (at most {MAX_CLOCK_SKEW_SECS} s): check the clock")]
    ClockSkew(u64),
    #[error("the signature does not match the request and signer")]
    BadSignature,
    #[error("this nonce was used already: a replayed request")]
    Replayed,
}

/// Whether `name` can be a workload's name (1-36 bytes of `[a-z0-9_-]`, as the chain checks):
/// a name from a request never leaves the contract's directory.
pub fn is_workload_name(name: &str) -> bool {
    (1..=36).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The bytes a signer signs for one request.
pub fn signed_message(method: &str, path_and_query: &str, time: u64, nonce: &[u8; 16]) -> Vec<u8> {
    format!(
        "zos-access-v1\n{method}\n{path_and_query}\n{time}\n{}",
        hex::encode(nonce)
    )
    .into_bytes()
}

/// The `Authorization` header value for a request, signed by `key` at `time` (unix s).
pub fn authorization(key: &Keypair, method: &str, path_and_query: &str, time: u64) -> String {
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).expect("the system's random source");
    authorization_with_nonce(key, method, path_and_query, time, nonce)
}

/// [`authorization`] with a given nonce.
pub fn authorization_with_nonce(
    key: &Keypair,
    method: &str,
    path_and_query: &str,
    time: u64,
    nonce: [u8; 16],
) -> String {
    let signature = key.sign(&signed_message(method, path_and_query, time, &nonce));
    let mut out = String::with_capacity(300);
    let _ = write!(
        out,
        "{SCHEME} signer={},time={time},nonce={},sig={}",
        hex::encode(key.public_key().0),
        hex::encode(nonce),
        hex::encode(signature.0)
    );
    out
}

/// Parses an `Authorization` header value (no check of the signature yet).
pub fn parse(header: &str) -> Result<Credentials, AuthError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(AuthError::Malformed("too long"));
    }
    let rest = header
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(AuthError::Malformed("not the Zos-Sr25519 scheme"))?;
    let (mut signer, mut time, mut nonce, mut signature) = (None, None, None, None);
    for field in rest.split(',') {
        let (key, value) = field
            .trim()
            .split_once('=')
            .ok_or(AuthError::Malformed("a field without '='"))?;
        match key {
            "signer" => signer = Some(hex_array::<32>(value, "signer is not 32 hex bytes")?),
            "time" => {
                time = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| AuthError::Malformed("time is not unix seconds"))?,
                )
            }
            "nonce" => nonce = Some(hex_array::<16>(value, "nonce is not 16 hex bytes")?),
            "sig" => signature = Some(hex_array::<64>(value, "sig is not 64 hex bytes")?),
            _ => return Err(AuthError::Malformed("unknown field")),
        }
    }
    Ok(Credentials {
        signer: signer.ok_or(AuthError::Malformed("no signer"))?,
        time: time.ok_or(AuthError::Malformed("no time"))?,
        nonce: nonce.ok_or(AuthError::Malformed("no nonce"))?,
        signature: signature.ok_or(AuthError::Malformed("no sig"))?,
    })
}

fn hex_array<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], AuthError> {
    let bytes =
        hex::decode(text.trim_start_matches("0x")).map_err(|_| AuthError::Malformed(what))?;
    bytes.try_into().map_err(|_| AuthError::Malformed(what))
}

impl Credentials {
    /// Checks the time against `now` and the signature against the request. The nonce is the
    /// caller's to check (it keeps the ones seen).
    pub fn verify(&self, method: &str, path_and_query: &str, now: u64) -> Result<(), AuthError> {
        let skew = now.abs_diff(self.time);
        if skew > MAX_CLOCK_SKEW_SECS {
            return Err(AuthError::ClockSkew(skew));
        }
        let message = signed_message(method, path_and_query, self.time, &self.nonce);
        let (signature, signer) = (
            sr25519::Signature(self.signature),
            sr25519::PublicKey(self.signer),
        );
        let mut wrapped = Vec::with_capacity(message.len() + 15);
        wrapped.extend_from_slice(b"<Bytes>");
        wrapped.extend_from_slice(&message);
        wrapped.extend_from_slice(b"</Bytes>");
        if sr25519::verify(&signature, &message, &signer)
            || sr25519::verify(&signature, &wrapped, &signer)
        {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use subxt_signer::sr25519::dev;

    const PATH: &str = "/v1/contracts/7/logs?workload=web";

    #[test]
    fn a_signed_request_verifies_and_names_its_signer() {
        let header = authorization(&dev::alice(), "GET", PATH, 1_000);
        let creds = parse(&header).unwrap();
        assert_eq!(creds.signer, dev::alice().public_key().0);
        assert_eq!(
            creds.verify("GET", PATH, 1_000 + MAX_CLOCK_SKEW_SECS),
            Ok(())
        );
    }

    #[test]
    fn another_path_method_time_or_signer_is_refused() {
        let header = authorization(&dev::alice(), "GET", PATH, 1_000);
        let creds = parse(&header).unwrap();
        let other = "/v1/contracts/8/logs?workload=web";
        assert_eq!(
            creds.verify("GET", other, 1_000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            creds.verify("POST", PATH, 1_000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            creds.verify("GET", PATH, 1_000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(AuthError::ClockSkew(MAX_CLOCK_SKEW_SECS + 1))
        );
        // Bob's key claimed for Alice's signature.
        let forged = header.replace(
            &hex::encode(dev::alice().public_key().0),
            &hex::encode(dev::bob().public_key().0),
        );
        assert_eq!(
            parse(&forged).unwrap().verify("GET", PATH, 1_000),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn a_browser_extension_signature_of_the_wrapped_bytes_is_accepted() {
        let nonce = [9u8; 16];
        let mut wrapped = b"<Bytes>".to_vec();
        wrapped.extend(signed_message("GET", PATH, 5, &nonce));
        wrapped.extend(b"</Bytes>");
        let creds = Credentials {
            signer: dev::bob().public_key().0,
            time: 5,
            nonce,
            signature: dev::bob().sign(&wrapped).0,
        };
        assert_eq!(creds.verify("GET", PATH, 5), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let good = authorization(&dev::alice(), "GET", PATH, 1);
        for (header, reason) in [
            ("Basic abc", "not the Zos-Sr25519 scheme"),
            ("Zos-Sr25519 signer=00", "signer is not 32 hex bytes"),
            (
                &good.replace("time=1", "time=x") as &str,
                "time is not unix seconds",
            ),
            (&good.replace(",sig=", ",sag="), "unknown field"),
            (&good[..good.find(",sig=").unwrap()], "no sig"),
        ] {
            assert_eq!(parse(header), Err(AuthError::Malformed(reason)), "{header}");
        }
        assert_eq!(
            parse(&"x".repeat(MAX_HEADER_LEN + 1)),
            Err(AuthError::Malformed("too long"))
        );
    }
}
