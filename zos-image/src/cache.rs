//! Local, size-bounded, content-addressed cache of verified chunks.
//!
//! Entries are the chunk objects exactly as stores hold them (codec byte + payload, usually
//! zstd), which keeps several times more chunks in the same space than plaintext would and
//! costs less to write. Crash safety comes from two rules: entries only appear under their
//! final name by rename of a fully written temporary file, and every entry is decoded and
//! re-hashed when it is read. A process killed
//! mid-write therefore leaves at most a stray temporary file (removed on the next open), and a
//! file damaged any other way is detected, deleted and fetched again instead of being served.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use crate::chunk::decode_object;
use crate::error::{IoContext, Result};
use crate::hash::Hash;
use crate::store::write_atomic;

struct Lru {
    /// hash -> (size, last use tick)
    entries: HashMap<Hash, (u64, u64)>,
    by_tick: BTreeMap<u64, Hash>,
    total: u64,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, hash: Hash, size: u64) {
        self.tick += 1;
        if let Some((_, old)) = self.entries.insert(hash, (size, self.tick)) {
            self.by_tick.remove(&old);
        } else {
            self.total += size;
        }
        self.by_tick.insert(self.tick, hash);
    }

    fn remove(&mut self, hash: &Hash) {
        if let Some((size, tick)) = self.entries.remove(hash) {
            self.by_tick.remove(&tick);
            self.total -= size;
        }
    }
}

pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    lru: Mutex<Lru>,
}

/// Outcome of opening a cache directory (reported by the mount at startup).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheScan {
    pub entries: u64,
    pub bytes: u64,
    pub removed_temp_files: u64,
    pub removed_invalid: u64,
}

impl ChunkCache {
    /// Open (or create) a cache. Leftover temporary files from a crashed writer are removed and
    /// the LRU order is seeded from modification times.
    pub fn open(dir: impl AsRef<Path>, capacity: u64) -> Result<(ChunkCache, CacheScan)> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).at(&dir)?;
        let mut scan = CacheScan::default();
        let mut found: Vec<(u128, Hash, u64)> = Vec::new();
        for shard in fs::read_dir(&dir).at(&dir)? {
            let shard = shard.at(&dir)?;
            let shard_path = shard.path();
            if !shard.file_type().at(&shard_path)?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard_path).at(&shard_path)? {
                let entry = entry.at(&shard_path)?;
                let path = entry.path();
                let name = entry.file_name();
                let parsed: Option<Hash> = name.to_str().and_then(|s| s.parse().ok());
                let meta = entry.metadata().at(&path)?;
                match parsed {
                    Some(hash) if meta.is_file() && meta.len() > 0 => {
                        let mtime = meta
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_nanos());
                        found.push((mtime, hash, meta.len()));
                    }
                    _ => {
                        let is_temp = name.to_string_lossy().ends_with(".tmp");
                        let _ = fs::remove_file(&path);
                        if is_temp {
                            scan.removed_temp_files += 1;
                        } else {
                            scan.removed_invalid += 1;
                        }
                    }
                }
            }
        }
        found.sort();
        let mut lru = Lru {
            entries: HashMap::new(),
            by_tick: BTreeMap::new(),
            total: 0,
            tick: 0,
        };
        for (_, hash, size) in found {
            lru.touch(hash, size);
        }
        scan.entries = lru.entries.len() as u64;
        scan.bytes = lru.total;
        let cache = ChunkCache {
            dir,
            capacity,
            lru: Mutex::new(lru),
        };
        cache.evict();
        Ok((cache, scan))
    }

    fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The verified plaintext of a cached chunk of `raw_len` bytes, or None. An entry that
    /// fails to decode or verify is deleted.
    pub fn get(&self, hash: &Hash, raw_len: u32) -> Option<Vec<u8>> {
        let path = self.path_of(hash);
        let object = fs::read(&path).ok()?;
        match decode_object(hash, &object, Some(raw_len)) {
            Ok(plain) => {
                self.lock().touch(*hash, object.len() as u64);
                Some(plain)
            }
            Err(e) => {
                tracing::warn!(chunk = %hash, path = %path.display(), error = %e, "cached chunk failed verification; discarding");
                let _ = fs::remove_file(&path);
                self.lock().remove(hash);
                None
            }
        }
    }

    /// Insert a chunk object (as a store holds it). Callers must have decoded and verified it
    /// against `hash` already.
    pub fn put(&self, hash: &Hash, object: &[u8]) -> Result<()> {
        write_atomic(&self.path_of(hash), object)?;
        self.lock().touch(*hash, object.len() as u64);
        self.evict();
        Ok(())
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.lock().entries.contains_key(hash)
    }

    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic elsewhere must not make the cache unusable; the state is always consistent
        // between statements.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn evict(&self) {
        let mut lru = self.lock();
        while lru.total > self.capacity {
            let Some((_, hash)) = lru.by_tick.iter().next().map(|(t, h)| (*t, *h)) else {
                break;
            };
            let _ = fs::remove_file(self.path_of(&hash));
            lru.remove(&hash);
        }
    }
}
