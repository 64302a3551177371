//! Import of container images: a `docker save` tarball or an OCI image layout (directory or
//! tarball). Layers are applied in order into a staging directory, honouring whiteouts
//! (`.wh.<name>` deletes a lower entry, `.wh..wh..opq` hides a directory's lower contents);
//! the result is then packed like any directory.

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}

/// Layer file paths (inside `layout`), bottom layer first.
fn layer_paths(layout: &Path) -> Result<Vec<PathBuf>> {
    let docker_manifest = layout.join("manifest.json");
    if docker_manifest.exists() {
        let text = fs::read(&docker_manifest).at(&docker_manifest)?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        let layers = v
            .get(0)
            .and_then(|m| m.get("Layers"))
            .and_then(|l| l.as_array())
            .ok_or_else(|| bad("manifest.json has no Layers list"))?;
        return layers
            .iter()
            .map(|l| {
                l.as_str()
                    .map(|s| safe_join(layout, s))
                    .ok_or_else(|| bad("layer entry is not a string"))?
            })
            .collect();
    }
    let index = layout.join("index.json");
    if !index.exists() {
        return Err(bad(
            "neither manifest.json (docker save) nor index.json (OCI layout) found",
        ));
    }
    let mut doc = read_json(&index)?;
    // An index may point at another index (multi-platform); follow the first manifest.
    for _ in 0..4 {
        if let Some(layers) = doc.get("layers").and_then(|l| l.as_array()) {
            return layers
                .iter()
                .map(|l| {
                    let digest = l
                        .get("digest")
                        .and_then(|d| d.as_str())
                        .ok_or_else(|| bad("layer without digest"))?;
                    blob_path(layout, digest)
                })
                .collect();
        }
        let digest = doc
            .get("manifests")
            .and_then(|m| m.get(0))
            .and_then(|m| m.get("digest"))
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("OCI index lists no manifests"))?
            .to_string();
        doc = read_json(&blob_path(layout, &digest)?)?;
    }
    Err(bad("OCI index nesting too deep"))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read(path).at(path)?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad(format!("bad digest {digest}")))?;
    if !algo.chars().all(|c| c.is_ascii_alphanumeric())
        || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(bad(format!("bad digest {digest}")));
    }
    Ok(layout.join("blobs").join(algo).join(hex))
}

/// Join an archive-relative path under `root`, refusing anything that escapes it.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(bad(format!("path {rel:?} escapes the image"))),
        }
    }
    Ok(out)
}

/// Open a layer, transparently decompressing gzip or zstd.
fn open_layer(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = fs::File::open(path).at(path)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).at(path)?;
    f.seek(SeekFrom::Start(0)).at(path)?;
    let f = BufReader::new(f);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(f).at(path)?)
    } else {
        Box::new(f)
    })
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).at(path),
        Ok(_) => fs::remove_file(path).at(path),
        Err(_) => Ok(()),
    }
}

fn entry_path(entry: &tar::Entry<'_, impl Read>) -> Result<String> {
    let p = entry
        .path()
        .map_err(|e| bad(format!("bad path in layer: {e}")))?;
    Ok(p.to_string_lossy().into_owned())
}

/// Apply one layer on top of `rootfs`. Directory mtimes from the layer headers are collected in
/// `dir_mtimes`: extracting later entries disturbs them, so they are restored at the end.
fn apply_layer(layer: &Path, rootfs: &Path, dir_mtimes: &mut HashMap<PathBuf, u64>) -> Result<()> {
    // Pass 1: whiteouts only affect lower layers, so collect and apply them before extracting.
    let mut whiteouts = Vec::new();
    let mut opaque = Vec::new();
    let mut archive = tar::Archive::new(open_layer(layer)?);
    for entry in archive.entries().at(layer)? {
        let entry = entry.at(layer)?;
        let path = entry_path(&entry)?;
        let p = Path::new(&path);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = p
            .parent()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE_MARKER {
            opaque.push(parent);
        } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            whiteouts.push(format!("{parent}/{target}"));
        }
    }
    for dir in &opaque {
        let dir = safe_join(rootfs, dir)?;
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                remove_any(&e.path())?;
            }
        }
    }
    for w in &whiteouts {
        remove_any(&safe_join(rootfs, w)?)?;
    }

    // Pass 2: extract everything else; an entry replaces whatever the lower layers had.
    let mut archive = tar::Archive::new(open_layer(layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().at(layer)? {
        let mut entry = entry.at(layer)?;
        let path = entry_path(&entry)?;
        let name = Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let dest = safe_join(rootfs, &path)?;
        let is_dir = entry.header().entry_type().is_dir();
        if is_dir {
            dir_mtimes.insert(dest.clone(), entry.header().mtime().unwrap_or(0));
        }
        if let Ok(md) = fs::symlink_metadata(&dest) {
            // Keep existing directories when the new entry is a directory too (their lower
            // contents stay visible); replace everything else.
            if !(is_dir && md.is_dir()) {
                remove_any(&dest)?;
            }
        }
        let unpacked = entry.unpack_in(rootfs).at(&dest)?;
        if !unpacked {
            return Err(bad(format!("layer entry {path:?} escapes the image")));
        }
    }
    Ok(())
}

/// Build the root filesystem of a container image at `rootfs` (which must not exist).
/// `input` is a `docker save` / OCI tarball or an OCI layout directory.
pub fn build_rootfs(input: &Path, rootfs: &Path, scratch: &Path) -> Result<()> {
    let layout = if input.is_dir() {
        input.to_path_buf()
    } else {
        let dir = scratch.join("layout");
        fs::create_dir_all(&dir).at(&dir)?;
        let f = fs::File::open(input).at(input)?;
        tar::Archive::new(BufReader::new(f))
            .unpack(&dir)
            .at(input)?;
        dir
    };
    fs::create_dir_all(rootfs).at(rootfs)?;
    let mut dir_mtimes = HashMap::new();
    for layer in layer_paths(&layout)? {
        apply_layer(&layer, rootfs, &mut dir_mtimes)?;
    }
    // Same image in, same tree out: every directory gets the mtime of its last header (or the
    // epoch when no layer had an entry for it), deepest first.
    let mut dirs = Vec::new();
    collect_dirs(rootfs, &mut dirs)?;
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        let secs = dir_mtimes.get(&dir).copied().unwrap_or(0);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        fs::File::open(&dir)
            .and_then(|f| f.set_modified(t))
            .at(&dir)?;
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_path_buf());
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if e.file_type().at(e.path())?.is_dir() {
            collect_dirs(&e.path(), out)?;
        }
    }
    Ok(())
}
