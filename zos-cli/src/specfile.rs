//! Spec files (TOML or JSON), signer lists and small value parsers.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
};

use anyhow::{anyhow, bail, Context, Result};
use subxt::utils::AccountId32;
use zos_primitives::{
    spec::{DeploymentSpec, ImageSource, WorkloadKind},
    Ipv4Cidr, Ipv6Cidr,
};

use crate::{keys::parse_account, ImageOverride};

/// Parses a spec: JSON for `.json` files, TOML otherwise (JSON tried too when TOML fails on a
/// file without extension).
pub fn parse_spec(text: &str, path: &Path) -> Result<DeploymentSpec> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "json" => serde_json::from_str(text).context("not a valid JSON spec"),
        "toml" => toml::from_str(text).map_err(|e| anyhow!("not a valid TOML spec: {e}")),
        _ => toml::from_str(text).or_else(|toml_err| {
            serde_json::from_str(text)
                .map_err(|_| anyhow!("neither a valid TOML nor JSON spec: {toml_err}"))
        }),
    }
}

/// Reads, overrides the image where asked, and validates as the chain does.
pub fn load_spec(path: &Path, image: &ImageOverride) -> Result<DeploymentSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec = parse_spec(&text, path).with_context(|| format!("spec {}", path.display()))?;
    apply_image_override(&mut spec, image)?;
    spec.validate()
        .map_err(|e| anyhow!("spec {} breaks a rule: {e:?}", path.display()))?;
    Ok(spec)
}

pub fn apply_image_override(spec: &mut DeploymentSpec, image: &ImageOverride) -> Result<()> {
    let root = image
        .image_root
        .as_deref()
        .map(parse_hash)
        .transpose()
        .context("--image-root")?;
    let source = image
        .image_source
        .as_deref()
        .map(|s| ImageSource::try_from(s).map_err(|_| anyhow!("--image-source is too long")))
        .transpose()?;
    for w in spec.workloads.iter_mut() {
        if let WorkloadKind::Vm(vm) = &mut w.kind {
            if let Some(root) = root {
                vm.image.root_hash = root;
            }
            if let Some(source) = &source {
                vm.image.source = source.clone();
            }
        }
    }
    Ok(())
}

/// 32 bytes, hex, with or without 0x.
pub fn parse_hash(text: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text.trim().trim_start_matches("0x"))
        .map_err(|e| anyhow!("{text:?} is not hex: {e}"))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("a hash is 32 bytes, {text:?} has {}", bytes.len()))
}

/// One `--signer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerArg {
    pub account: AccountId32,
    pub weight: u32,
    pub required: bool,
}

impl FromStr for SignerArg {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        // An SS58 address has no ':'; dev names neither.
        let mut parts = text.split(':');
        let account = parts
            .next()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| anyhow!("signer {text:?}: no account"))?;
        let weight = match parts.next() {
            Some(w) => w
                .parse::<u32>()
                .map_err(|_| anyhow!("signer {text:?}: weight {w:?} is not a number"))?,
            None => 1,
        };
        let required = match parts.next() {
            None => false,
            Some("required" | "req" | "r") => true,
            Some(other) => bail!("signer {text:?}: {other:?} should be \"required\" or nothing"),
        };
        if parts.next().is_some() {
            bail!("signer {text:?}: expected ACCOUNT:WEIGHT[:required]");
        }
        Ok(Self {
            account: parse_account(account)?,
            weight,
            required,
        })
    }
}

/// `a.b.c.d/n`.
pub fn parse_cidr(text: &str) -> Result<Ipv4Cidr> {
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("{text:?} is not a CIDR (a.b.c.d/n)"))?;
    let ip = Ipv4Addr::from_str(ip).map_err(|_| anyhow!("{ip:?} is not an IPv4 address"))?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|n| *n <= 32)
        .ok_or_else(|| anyhow!("{len:?} is not a prefix length 0-32"))?;
    Ok(Ipv4Cidr {
        ip: ip.octets(),
        prefix_len,
    })
}

pub fn parse_ipv4(text: &str) -> Result<[u8; 4]> {
    Ok(Ipv4Addr::from_str(text)
        .map_err(|_| anyhow!("{text:?} is not an IPv4 address"))?
        .octets())
}

/// `x:y::z/n`.
pub fn parse_cidr6(text: &str) -> Result<Ipv6Cidr> {
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("{text:?} is not an IPv6 CIDR (e.g. 2001:db8:1::2/64)"))?;
    let ip = Ipv6Addr::from_str(ip).map_err(|_| anyhow!("{ip:?} is not an IPv6 address"))?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|n| *n <= 128)
        .ok_or_else(|| anyhow!("{len:?} is not a prefix length 0-128"))?;
    Ok(Ipv6Cidr {
        ip: ip.octets(),
        prefix_len,
    })
}

pub fn parse_ipv6(text: &str) -> Result<[u8; 16]> {
    Ok(Ipv6Addr::from_str(text)
        .map_err(|_| anyhow!("{text:?} is not an IPv6 address"))?
        .octets())
}

/// Decimal ZGT (12 decimals) -> planck.
pub fn parse_amount(text: &str) -> Result<u128> {
    const DECIMALS: usize = 12;
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let bad = || anyhow!("{text:?} is not an amount (e.g. 10 or 0.25)");
    if int.is_empty() && frac.is_empty() || frac.len() > DECIMALS {
        return Err(bad());
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<DECIMALS$}").parse().map_err(|_| bad())?
    };
    int.checked_mul(10u128.pow(DECIMALS as u32))
        .and_then(|v| v.checked_add(frac_val))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_specs_parse_and_pass_the_chains_rules() {
        for (name, text) in [
            ("vm.toml", include_str!("../../examples/vm.toml")),
            ("network.toml", include_str!("../../examples/network.toml")),
            (
                "public-ip.toml",
                include_str!("../../examples/public-ip.toml"),
            ),
            ("gateway.toml", include_str!("../../examples/gateway.toml")),
            (
                "health-check.toml",
                include_str!("../../examples/health-check.toml"),
            ),
        ] {
            let spec =
                parse_spec(text, Path::new(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            spec.validate()
                .unwrap_or_else(|e| panic!("{name} breaks a rule: {e:?}"));
        }
    }

    use super::*;
    use subxt_signer::sr25519::dev;

    #[test]
    fn signers_parse() {
        let s: SignerArg = "//Alice:2:required".parse().unwrap();
        assert_eq!(
            s,
            SignerArg {
                account: dev::alice().public_key().to_account_id(),
                weight: 2,
                required: true
            }
        );
        let s: SignerArg = "bob:1".parse().unwrap();
        assert!(!s.required);
        let addr = dev::bob().public_key().to_account_id().to_string();
        assert_eq!(format!("{addr}:3").parse::<SignerArg>().unwrap().weight, 3);
        assert!("alice:x".parse::<SignerArg>().is_err());
        assert!("alice:1:maybe".parse::<SignerArg>().is_err());
        assert!("nobody:1".parse::<SignerArg>().is_err());
        assert!(":1".parse::<SignerArg>().is_err());
    }

    #[test]
    fn values_parse() {
        assert_eq!(
            parse_cidr("198.51.100.10/24").unwrap(),
            Ipv4Cidr {
                ip: [198, 51, 100, 10],
                prefix_len: 24
            }
        );
        assert!(parse_cidr("198.51.100.10").is_err());
        assert!(parse_cidr("198.51.100.10/33").is_err());
        assert_eq!(
            parse_cidr6("2001:db8:1::2/64").unwrap(),
            Ipv6Cidr {
                ip: [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                prefix_len: 64
            }
        );
        assert!(parse_cidr6("2001:db8:1::2").is_err());
        assert!(parse_cidr6("2001:db8:1::2/129").is_err());
        assert!(parse_cidr6("198.51.100.10/24").is_err());
        assert_eq!(
            parse_ipv6("fe80::1").unwrap(),
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert!(parse_ipv6("198.51.100.1").is_err());
        assert!(parse_ipv6("fe80::1/64").is_err());
        assert_eq!(parse_amount("1").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_amount("0.5").unwrap(), 500_000_000_000);
        assert_eq!(parse_amount(".000000000001").unwrap(), 1);
        assert!(parse_amount("1.0000000000001").is_err());
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("").is_err());
        assert!(parse_hash("00").is_err());
        assert_eq!(
            parse_hash(&format!("0x{}", "ab".repeat(32))).unwrap(),
            [0xab; 32]
        );
    }
}
