//! The release manifest: which node OS a runmode runs, signed by the release key.
//!
//! Served as two files, `manifest.json` and `manifest.sig` (the ed25519 signature, 128 hex
//! digits). The signature covers the exact bytes of `manifest.json` after a domain prefix, and
//! is checked before those bytes are parsed: nothing unauthenticated reaches the JSON parser.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{cmdline::Runmode, version::Version};

/// The only manifest format this code reads.
pub const FORMAT: u32 = 1;
/// Manifests are a few KiB; anything bigger is refused unread.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Services core-0 supervises, at most.
pub const MAX_SERVICES: usize = 32;
const DOMAIN: &[u8] = b"zos-release manifest v1\0";

/// A node OS release for one runmode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// [`FORMAT`].
    pub format: u32,
    pub runmode: Runmode,
    pub version: Version,
    /// Root hash (64 hex digits) of the OS payload image: mounted lazily and verified by
    /// zos-image, chunk by chunk.
    pub image_root: String,
    /// Boot artefacts (`kernel`, `initramfs`, ...) by name, each with its BLAKE3 and size.
    #[serde(default)]
    pub artifacts: BTreeMap<String, Artifact>,
    /// What core-0 starts from the OS image, in this order, and keeps running.
    #[serde(default)]
    pub services: Vec<Service>,
}

/// One boot artefact of a release.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub blake3: String,
    pub size: u64,
}

/// A long-running program of the node OS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// The program (an absolute path in the OS image: services run with the mounted image as
    /// their root) and its arguments. `{farm}`, `{chain}`, `{hub}` and `{runmode}` are
    /// replaced from the boot parameters, `{version}` by this release's version.
    pub exec: Vec<String>,
}

/// Why a manifest is not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the release manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    #[error("the release manifest is not signed (no manifest.sig)")]
    Unsigned,
    #[error("manifest.sig is not an ed25519 signature in 128 hex digits")]
    MalformedSignature,
    #[error("the release manifest's signature does not verify with this node's release key: it was tampered with or signed by another key")]
    BadSignature,
    #[error("the signed release manifest does not parse: {0}")]
    Malformed(String),
    #[error("the release manifest has format {0}; this node reads format {FORMAT}")]
    UnsupportedFormat(u32),
    #[error("the release manifest is for runmode {got}, this node runs {want}")]
    WrongRunmode { want: Runmode, got: Runmode },
    #[error("the release manifest offers {offered}, older than {running} which this node already trusts: a downgrade is refused")]
    Downgrade { running: Version, offered: Version },
    #[error("the release manifest is invalid: {0}")]
    Invalid(String),
    #[error("artefact `{name}` has BLAKE3 {found} and {size} bytes; the manifest says {want}")]
    ArtifactMismatch {
        name: String,
        want: String,
        found: String,
        size: u64,
    },
    #[error("the release manifest lists no artefact `{0}`")]
    NoSuchArtifact(String),
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + manifest.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(manifest);
    m
}

impl ReleaseManifest {
    /// The manifest's canonical bytes: what is published as `manifest.json` and signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }

    /// Checks the shape a node relies on: hashes, names, service commands.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if self.format != FORMAT {
            return Err(ManifestError::UnsupportedFormat(self.format));
        }
        if !is_hex64(&self.image_root) {
            return invalid("image_root is not 64 lowercase hex digits".into());
        }
        for (name, a) in &self.artifacts {
            if !is_name(name) {
                return invalid(format!(
                    "artefact name `{}` is not [a-z0-9._-]{{1,64}}",
                    name.chars().take(64).collect::<String>()
                ));
            }
            if !is_hex64(&a.blake3) {
                return invalid(format!(
                    "artefact `{name}`: blake3 is not 64 lowercase hex digits"
                ));
            }
        }
        if self.services.len() > MAX_SERVICES {
            return invalid(format!(
                "{} services, at most {MAX_SERVICES}",
                self.services.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.services {
            if !is_name(&s.name) || !seen.insert(s.name.as_str()) {
                return invalid(format!(
                    "service name `{}` is not a unique [a-z0-9._-]{{1,64}}",
                    s.name.chars().take(64).collect::<String>()
                ));
            }
            match s.exec.first() {
                Some(p) if p.starts_with('/') && !p.split('/').any(|c| c == "..") => {}
                _ => {
                    return invalid(format!(
                        "service `{}`: exec must start with an absolute program path",
                        s.name
                    ))
                }
            }
            if s.exec.len() > 64 || s.exec.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
                return invalid(format!(
                    "service `{}`: at most 64 arguments of 4096 bytes, no NUL",
                    s.name
                ));
            }
        }
        Ok(())
    }

    /// Checks an artefact's bytes against the manifest.
    pub fn check_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), ManifestError> {
        let want = self
            .artifacts
            .get(name)
            .ok_or_else(|| ManifestError::NoSuchArtifact(name.into()))?;
        let found = blake3::hash(bytes).to_hex().to_string();
        if found != want.blake3 || bytes.len() as u64 != want.size {
            return Err(ManifestError::ArtifactMismatch {
                name: name.into(),
                want: want.blake3.clone(),
                found,
                size: bytes.len() as u64,
            });
        }
        Ok(())
    }
}

/// Signs `manifest_json` (the exact bytes to publish); returns `manifest.sig`'s text.
pub fn sign(manifest_json: &[u8], key: &SigningKey) -> String {
    let sig = key.sign(&message(manifest_json));
    let mut text = hex::encode(sig.to_bytes());
    text.push('\n');
    text
}

/// Verifies and reads a manifest as a node must before running it: size, then the signature
/// over the exact bytes, then the contents; the runmode must be the node's and the version at
/// least `floor` (the newest release the node already trusts).
pub fn verify(
    manifest_json: &[u8],
    signature: Option<&[u8]>,
    release_key: &VerifyingKey,
    runmode: Runmode,
    floor: Option<Version>,
) -> Result<ReleaseManifest, ManifestError> {
    if manifest_json.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(manifest_json.len()));
    }
    let signature = signature.ok_or(ManifestError::Unsigned)?;
    let text = std::str::from_utf8(signature).map_err(|_| ManifestError::MalformedSignature)?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(text.trim(), &mut sig).map_err(|_| ManifestError::MalformedSignature)?;
    release_key
        .verify_strict(&message(manifest_json), &Signature::from_bytes(&sig))
        .map_err(|_| ManifestError::BadSignature)?;
    let manifest: ReleaseManifest = serde_json::from_slice(manifest_json)
        .map_err(|e| ManifestError::Malformed(e.to_string()))?;
    manifest.validate()?;
    if manifest.runmode != runmode {
        return Err(ManifestError::WrongRunmode {
            want: runmode,
            got: manifest.runmode,
        });
    }
    if let Some(running) = floor {
        if manifest.version < running {
            return Err(ManifestError::Downgrade {
                running,
                offered: manifest.version,
            });
        }
    }
    Ok(manifest)
}

/// Reads a public release key: 64 hex digits (the format of zos-image's `.pub` files).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, ManifestError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .ok()
        .and_then(|_| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or_else(|| {
            ManifestError::Invalid(
                "the release key is not an ed25519 public key in 64 hex digits".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest(version: &str) -> ReleaseManifest {
        let kernel = b"kernel bytes";
        ReleaseManifest {
            format: FORMAT,
            runmode: Runmode::Dev,
            version: version.parse().unwrap(),
            image_root: "ab".repeat(32),
            artifacts: BTreeMap::from([(
                "kernel".to_string(),
                Artifact {
                    blake3: blake3::hash(kernel).to_hex().to_string(),
                    size: kernel.len() as u64,
                },
            )]),
            services: vec![
                Service {
                    name: "executor".into(),
                    exec: vec!["/usr/bin/zos-executor".into(), "--farm={farm}".into()],
                },
                Service {
                    name: "console".into(),
                    exec: vec!["/bin/sh".into()],
                },
            ],
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_its_artifacts_are_checked() {
        let m = manifest("1.2.0");
        let bytes = m.to_bytes();
        let sig = sign(&bytes, &key(1));
        let got = verify(
            &bytes,
            Some(sig.as_bytes()),
            &key(1).verifying_key(),
            Runmode::Dev,
            Some("1.2.0".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(got, m);
        got.check_artifact("kernel", b"kernel bytes").unwrap();
        assert!(matches!(
            got.check_artifact("kernel", b"kernel bytez"),
            Err(ManifestError::ArtifactMismatch { .. })
        ));
        assert_eq!(
            got.check_artifact("initramfs", b""),
            Err(ManifestError::NoSuchArtifact("initramfs".into()))
        );
    }

    #[test]
    fn unsigned_tampered_foreign_and_downgraded_manifests_are_refused() {
        let pk = key(1).verifying_key();
        let bytes = manifest("2.0.0").to_bytes();
        let sig = sign(&bytes, &key(1));
        let check = |b: &[u8], s: Option<&str>, floor: Option<&str>| {
            verify(
                b,
                s.map(str::as_bytes),
                &pk,
                Runmode::Dev,
                floor.map(|f| f.parse().unwrap()),
            )
        };
        assert_eq!(check(&bytes, None, None), Err(ManifestError::Unsigned));
        assert_eq!(
            check(&bytes, Some("zz"), None),
            Err(ManifestError::MalformedSignature)
        );
        let tampered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("2.0.0", "9.0.0");
        assert_eq!(
            check(tampered.as_bytes(), Some(&sig), None),
            Err(ManifestError::BadSignature)
        );
        let foreign = sign(&bytes, &key(2));
        assert_eq!(
            check(&bytes, Some(&foreign), None),
            Err(ManifestError::BadSignature)
        );
        assert_eq!(
            check(&bytes, Some(&sig), Some("2.0.1")),
            Err(ManifestError::Downgrade {
                running: "2.0.1".parse().unwrap(),
                offered: "2.0.0".parse().unwrap()
            })
        );
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            check(&big, Some(&sig), None),
            Err(ManifestError::TooLarge(MAX_MANIFEST_BYTES + 1))
        );
        let r = verify(&bytes, Some(sig.as_bytes()), &pk, Runmode::Main, None);
        assert_eq!(
            r,
            Err(ManifestError::WrongRunmode {
                want: Runmode::Main,
                got: Runmode::Dev
            })
        );
    }

    #[test]
    fn signed_but_invalid_manifests_are_refused() {
        let pk = key(1).verifying_key();
        let mut cases: Vec<(ReleaseManifest, &str)> = Vec::new();
        let mut m = manifest("1.0.0");
        m.image_root = "AB".repeat(32);
        cases.push((m, "image_root"));
        let mut m = manifest("1.0.0");
        m.services.push(m.services[0].clone());
        cases.push((m, "unique"));
        let mut m = manifest("1.0.0");
        m.services[0].exec = vec!["bin/sh".into()];
        cases.push((m, "absolute"));
        let mut m = manifest("1.0.0");
        m.services[0].exec = vec!["/os/../bin/sh".into()];
        cases.push((m, "absolute"));
        let mut m = manifest("1.0.0");
        m.services[0].exec = vec!["{chain}/sh".into()];
        cases.push((m, "absolute"));
        let mut m = manifest("1.0.0");
        m.artifacts
            .insert("../x".into(), m.artifacts["kernel"].clone());
        cases.push((m, "artefact name"));
        for (m, want) in cases {
            let bytes = m.to_bytes();
            let err = verify(
                &bytes,
                Some(sign(&bytes, &key(1)).as_bytes()),
                &pk,
                Runmode::Dev,
                None,
            )
            .unwrap_err();
            assert!(
                matches!(&err, ManifestError::Invalid(s) if s.contains(want)),
                "{err}"
            );
        }
        let mut m = manifest("1.0.0");
        m.format = 2;
        let bytes = m.to_bytes();
        let err = verify(
            &bytes,
            Some(sign(&bytes, &key(1)).as_bytes()),
            &pk,
            Runmode::Dev,
            None,
        )
        .unwrap_err();
        assert_eq!(err, ManifestError::UnsupportedFormat(2));
        let extra = b"{\"format\":1,\"unknown\":1}";
        let err = verify(
            extra,
            Some(sign(extra, &key(1)).as_bytes()),
            &pk,
            Runmode::Dev,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, ManifestError::Malformed(_)), "{err}");
    }
}
