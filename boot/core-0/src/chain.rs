//! The release the chain set for this node's runmode, read from the finalized state over the
//! node's JSON-RPC (HTTP POST on the RPC port, the same endpoint as `ws://`).
//!
//! The RPC endpoint is not trusted beyond this choice: whatever it answers, core-0 still runs
//! only a manifest the release key signed, never older than its floor. The chain decides which
//! of the signed releases a node runs, and when.

use serde_json::{json, Value};
use sp_crypto_hashing::{twox_128, twox_64};
use zos_release::{Runmode, Version};

/// The runtime's `NodeRelease` as core-0 needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRelease {
    pub version: Version,
    pub manifest_blake3: [u8; 32],
    pub safe_to_upgrade: bool,
    pub pilot_farms: Vec<u32>,
    pub general_from: u32,
}

impl ChainRelease {
    /// Whether a node of `farm` runs this release at finalized block `now` (the runtime's
    /// `NodeRelease::applies_to`).
    pub fn applies_to(&self, farm: u32, now: u32) -> bool {
        self.safe_to_upgrade && (self.pilot_farms.contains(&farm) || now >= self.general_from)
    }
}

fn runmode_index(r: Runmode) -> u8 {
    match r {
        Runmode::Dev => 0,
        Runmode::Test => 1,
        Runmode::Main => 2,
    }
}

/// `Releases::NodeReleases(runmode)`'s storage key (`Twox64Concat`).
pub fn storage_key(runmode: Runmode) -> Vec<u8> {
    let index = [runmode_index(runmode)];
    let mut key = twox_128(b"Releases").to_vec();
    key.extend_from_slice(&twox_128(b"NodeReleases"));
    key.extend_from_slice(&twox_64(&index));
    key.extend_from_slice(&index);
    key
}

/// Decodes the SCALE value of a `NodeRelease<u32>`; `None` for anything malformed.
pub fn decode(bytes: &[u8]) -> Option<ChainRelease> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let version = Version::new(u32_at(take(4)?), u32_at(take(4)?), u32_at(take(4)?));
    let manifest_blake3: [u8; 32] = take(32)?.try_into().ok()?;
    let safe_to_upgrade = match take(1)?[0] {
        0 => false,
        1 => true,
        _ => return None,
    };
    // Compact length, single-byte mode: the runtime bounds the list to 16.
    let len = take(1)?[0];
    if len & 0b11 != 0 || len >> 2 > 16 {
        return None;
    }
    let mut pilot_farms = Vec::new();
    for _ in 0..len >> 2 {
        pilot_farms.push(u32_at(take(4)?));
    }
    let general_from = u32_at(take(4)?);
    if !rest.is_empty() {
        return None;
    }
    Some(ChainRelease {
        version,
        manifest_blake3,
        safe_to_upgrade,
        pilot_farms,
        general_from,
    })
}

fn http_url(chain: &str) -> String {
    if let Some(rest) = chain.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = chain.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        chain.to_string()
    }
}

fn call(url: &str, method: &str, params: Value) -> Result<Value, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let text = agent
        .post(url)
        .set("content-type", "application/json")
        .send_string(&body.to_string())
        .map_err(|e| format!("{method} at {url}: {e}"))?
        .into_string()
        .map_err(|e| format!("{method} at {url}: {e}"))?;
    let reply: Value =
        serde_json::from_str(&text).map_err(|e| format!("{method} at {url}: {e}"))?;
    if let Some(err) = reply.get("error") {
        return Err(format!("{method} at {url}: {err}"));
    }
    reply
        .get("result")
        .cloned()
        .ok_or_else(|| format!("{method} at {url}: no result"))
}

fn hex_bytes(v: &Value) -> Option<Vec<u8>> {
    hex::decode(v.as_str()?.strip_prefix("0x")?).ok()
}

/// The finalized block number and the runmode's release there (`None`: the chain has not set
/// one for this runmode).
pub fn finalized_release(
    chain: &str,
    runmode: Runmode,
) -> Result<(u32, Option<ChainRelease>), String> {
    let url = http_url(chain);
    let head = call(&url, "chain_getFinalizedHead", json!([]))?;
    let header = call(&url, "chain_getHeader", json!([head]))?;
    let number = header
        .get("number")
        .and_then(Value::as_str)
        .and_then(|n| u32::from_str_radix(n.trim_start_matches("0x"), 16).ok())
        .ok_or("chain_getHeader: no block number")?;
    let key = format!("0x{}", hex::encode(storage_key(runmode)));
    let value = call(&url, "state_getStorage", json!([key, head]))?;
    if value.is_null() {
        return Ok((number, None));
    }
    let bytes = hex_bytes(&value).ok_or("state_getStorage: not hex")?;
    let release = decode(&bytes)
        .ok_or("the chain's node release does not decode (a runtime this core-0 does not know?)")?;
    Ok((number, Some(release)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(farms: &[u32]) -> Vec<u8> {
        let mut v = vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0];
        v.extend([0xab; 32]);
        v.push(1);
        v.push((farms.len() as u8) << 2);
        for f in farms {
            v.extend(f.to_le_bytes());
        }
        v.extend(0x0102_0304u32.to_le_bytes());
        v
    }

    #[test]
    fn the_runtime_encoding_decodes() {
        // The same bytes primitives' `the_encoding_is_the_one_nodes_decode` pins.
        let r = decode(&encoded(&[7, 9])).unwrap();
        assert_eq!(r.version, Version::new(1, 2, 3));
        assert_eq!(r.manifest_blake3, [0xab; 32]);
        assert_eq!(r.pilot_farms, [7, 9]);
        assert_eq!(r.general_from, 0x0102_0304);
        assert!(r.applies_to(7, 0) && !r.applies_to(8, 0) && r.applies_to(8, 0x0102_0304));
    }

    #[test]
    fn malformed_values_are_refused() {
        let good = encoded(&[7]);
        for n in 0..good.len() {
            assert_eq!(decode(&good[..n]), None, "truncated at {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long), None);
        let mut bad_bool = good.clone();
        bad_bool[44] = 2;
        assert_eq!(decode(&bad_bool), None);
        let too_many = encoded(&(0..17).collect::<Vec<u32>>());
        assert_eq!(decode(&too_many), None);
        assert!(decode(&encoded(&(0..16).collect::<Vec<u32>>())).is_some());
    }

    #[test]
    fn storage_keys_follow_the_runtime_layout() {
        let key = storage_key(Runmode::Test);
        assert_eq!(key.len(), 16 + 16 + 8 + 1);
        assert_eq!(&key[..16], &twox_128(b"Releases"));
        assert_eq!(key[40], 1);
        assert_eq!(http_url("ws://10.0.2.2:9944"), "http://10.0.2.2:9944");
        assert_eq!(http_url("wss://rpc.example"), "https://rpc.example");
    }
}
