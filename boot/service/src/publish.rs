//! Writing a signed release: `<dir>/release/<runmode>/manifest.json` and `manifest.sig`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use zos_release::{manifest, Artifact, ReleaseManifest, Runmode, Service, SigningKey, Version};

/// What a release is made of.
pub struct ReleaseInput {
    pub runmode: Runmode,
    pub version: Version,
    pub image_root: String,
    /// Artefact name and the file to hash.
    pub artifacts: Vec<(String, PathBuf)>,
    pub services: Vec<Service>,
}

/// The manifest for `input`, with each artefact hashed; validated as a node would.
pub fn build(input: &ReleaseInput) -> Result<ReleaseManifest> {
    let mut artifacts = BTreeMap::new();
    for (name, path) in &input.artifacts {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading artefact {name} at {}", path.display()))?;
        let a = Artifact {
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            size: bytes.len() as u64,
        };
        if artifacts.insert(name.clone(), a).is_some() {
            bail!("artefact {name} is given twice");
        }
    }
    let m = ReleaseManifest {
        format: manifest::FORMAT,
        runmode: input.runmode,
        version: input.version,
        image_root: input.image_root.to_ascii_lowercase(),
        artifacts,
        services: input.services.clone(),
    };
    m.validate()?;
    Ok(m)
}

/// The directory of a runmode's current release under a boot directory.
pub fn release_dir(boot_dir: &Path, runmode: Runmode) -> PathBuf {
    boot_dir.join("release").join(runmode.as_str())
}

/// Writes a manifest and its signature into `dir`, each file replaced atomically; the
/// signature last, so a node reading in between sees a mismatch and retries rather than a
/// wrong release. `None` removes the signature (an unsigned release, for tests).
pub fn write_release(dir: &Path, manifest_json: &[u8], signature: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = vec![("manifest.json", manifest_json)];
    match signature {
        Some(sig) => files.push(("manifest.sig", sig.as_bytes())),
        None => match std::fs::remove_file(dir.join("manifest.sig")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context("removing manifest.sig")
            }
            _ => {}
        },
    }
    for (name, data) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("publishing {name}"))?;
    }
    Ok(())
}

/// Signs and publishes `input`: under its version (what nodes fetch when the chain chose it)
/// and as the runmode's current release (what `dev` nodes run without the chain's choice).
pub fn publish(boot_dir: &Path, input: &ReleaseInput, key: &SigningKey) -> Result<ReleaseManifest> {
    let m = build(input)?;
    let bytes = m.to_bytes();
    let sig = manifest::sign(&bytes, key);
    let current = release_dir(boot_dir, input.runmode);
    write_release(&current.join(m.version.to_string()), &bytes, Some(&sig))?;
    write_release(&current, &bytes, Some(&sig))?;
    Ok(m)
}
