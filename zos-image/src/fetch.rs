//! Verified chunk fetching from several stores, with retries, a disk cache and a small memory
//! cache. Every byte that leaves this module has been checked against its BLAKE3 name.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::cache::ChunkCache;
use crate::chunk::{decode_object, max_stored_len};
use crate::error::{Error, Result};
use crate::format::ChunkInfo;
use crate::hash::Hash;
use crate::store::{Object, Store};

const ATTEMPTS_PER_SOURCE: u32 = 2;
const MEMORY_CACHE_BYTES: usize = 64 << 20;

type Slot = Arc<(Mutex<Option<Result<Arc<Vec<u8>>, String>>>, Condvar)>;

#[derive(Default)]
struct MemoryCache {
    map: HashMap<Hash, Arc<Vec<u8>>>,
    order: VecDeque<Hash>,
    bytes: usize,
}

impl MemoryCache {
    fn get(&self, hash: &Hash) -> Option<Arc<Vec<u8>>> {
        self.map.get(hash).cloned()
    }

    /// FIFO is enough here: the kernel page cache sits in front of it and absorbs re-reads.
    fn insert(&mut self, hash: Hash, data: Arc<Vec<u8>>) {
        if self.map.contains_key(&hash) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(hash, data);
        self.order.push_back(hash);
        while self.bytes > MEMORY_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

/// Counters for benchmarks and `mount` statistics.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub fetched_chunks: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub cache_hits: AtomicU64,
    pub rejected: AtomicU64,
}

pub struct Fetcher {
    sources: Vec<Arc<dyn Store>>,
    cache: Option<ChunkCache>,
    memory: Mutex<MemoryCache>,
    in_flight: Mutex<HashMap<Hash, Slot>>,
    pub stats: FetchStats,
}

impl Fetcher {
    pub fn new(sources: Vec<Arc<dyn Store>>, cache: Option<ChunkCache>) -> Fetcher {
        Fetcher {
            sources,
            cache,
            memory: Mutex::new(MemoryCache::default()),
            in_flight: Mutex::new(HashMap::new()),
            stats: FetchStats::default(),
        }
    }

    pub fn cache(&self) -> Option<&ChunkCache> {
        self.cache.as_ref()
    }

    pub fn is_cached(&self, hash: &Hash) -> bool {
        self.memory
            .lock()
            .map(|m| m.map.contains_key(hash))
            .unwrap_or(false)
            || self.cache.as_ref().is_some_and(|c| c.contains(hash))
    }

    /// The verified plaintext of a chunk. Concurrent requests for the same chunk share one fetch.
    pub fn get(&self, info: &ChunkInfo) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = self.memory.lock().ok().and_then(|m| m.get(&info.hash)) {
            return Ok(data);
        }
        let (slot, leader) = {
            let mut inflight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&info.hash) {
                Some(slot) => (slot.clone(), false),
                None => {
                    let slot: Slot = Arc::new((Mutex::new(None), Condvar::new()));
                    inflight.insert(info.hash, slot.clone());
                    (slot, true)
                }
            }
        };
        if !leader {
            let (lock, cv) = &*slot;
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            while state.is_none() {
                state = cv.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            return match state.as_ref() {
                Some(Ok(data)) => Ok(data.clone()),
                _ => self.load(info), // the leader failed; try on our own rather than fail twice
            };
        }
        let result = self.load(info);
        {
            let (lock, cv) = &*slot;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(result.as_ref().map(Arc::clone).map_err(|e| e.to_string()));
            cv.notify_all();
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.hash);
        result
    }

    fn load(&self, info: &ChunkInfo) -> Result<Arc<Vec<u8>>> {
        if let Some(cache) = &self.cache {
            if let Some(data) = cache.get(&info.hash, info.raw_len) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                let data = Arc::new(data);
                self.remember(info.hash, &data);
                return Ok(data);
            }
        }
        let (object, plain) = self.fetch_object(info)?;
        let data = Arc::new(plain);
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.put(&info.hash, &object) {
                // Serving still works without the disk cache; only warm starts get slower.
                tracing::warn!(chunk = %info.hash, error = %e, "could not write chunk to cache");
            }
        }
        self.remember(info.hash, &data);
        Ok(data)
    }

    fn remember(&self, hash: Hash, data: &Arc<Vec<u8>>) {
        if let Ok(mut m) = self.memory.lock() {
            m.insert(hash, data.clone());
        }
    }

    /// The verified plaintext of a chunk, from the sources only (no cache involved).
    pub fn fetch_remote(&self, info: &ChunkInfo) -> Result<Vec<u8>> {
        self.fetch_object(info).map(|(_, plain)| plain)
    }

    /// Try every source (starting at one chosen by the hash, to spread load), each a couple of
    /// times; a corrupt object counts as a failure of that source and the next one is asked.
    /// Returns the object as stored and its verified plaintext.
    fn fetch_object(&self, info: &ChunkInfo) -> Result<(Vec<u8>, Vec<u8>)> {
        if self.sources.is_empty() {
            return Err(Error::ChunkMissing(info.hash));
        }
        let n = self.sources.len();
        let start = info.hash.0[0] as usize % n;
        let mut last_corrupt: Option<Error> = None;
        let mut last_error: Option<Error> = None;
        for attempt in 0..ATTEMPTS_PER_SOURCE {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50 << attempt));
            }
            for k in 0..n {
                let source = &self.sources[(start + k) % n];
                match source.get_at_most(Object::Chunk(info.hash), max_stored_len(info.raw_len)) {
                    Ok(Some(object)) => {
                        match decode_object(&info.hash, &object, Some(info.raw_len)) {
                            Ok(plain) => {
                                self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
                                self.stats
                                    .fetched_bytes
                                    .fetch_add(object.len() as u64, Ordering::Relaxed);
                                return Ok((object, plain));
                            }
                            Err(e) => {
                                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(store = %source.describe(), error = %e, "rejected chunk");
                                last_corrupt = Some(e);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(store = %source.describe(), error = %e, "chunk fetch failed");
                        last_error = Some(e);
                    }
                }
            }
            if last_error.is_none() && last_corrupt.is_none() {
                break; // every source answered "not found": retrying will not help
            }
        }
        Err(last_corrupt
            .or(last_error)
            .unwrap_or(Error::ChunkMissing(info.hash)))
    }
}
