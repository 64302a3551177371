//! Verified chunk fetching from several stores, with retries, a disk cache and a small memory
//! cache. Every byte that leaves this module has been checked against its BLAKE3 name.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cache::ChunkCache;
use crate::chunk::{decode_object, max_stored_len};
use crate::error::{Error, Result};
use crate::format::ChunkInfo;
use crate::hash::Hash;
use crate::store::{Object, Store};

const ATTEMPTS_PER_SOURCE: u32 = 2;
/// A source that failed (an error, a timeout, wrong bytes) is asked after the others for this
/// long: a hub that is down or blackholes costs one failure, not one per chunk.
const SOURCE_BACKOFF: Duration = Duration::from_secs(30);
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
    /// Per source: until when it is asked last (see [`SOURCE_BACKOFF`]).
    failed_until: Vec<Mutex<Option<Instant>>>,
    cache: Option<ChunkCache>,
    memory: Mutex<MemoryCache>,
    in_flight: Mutex<HashMap<Hash, Slot>>,
    pub stats: FetchStats,
}

impl Fetcher {
    pub fn new(sources: Vec<Arc<dyn Store>>, cache: Option<ChunkCache>) -> Fetcher {
        Fetcher {
            failed_until: sources.iter().map(|_| Mutex::new(None)).collect(),
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

    /// The sources in the order to ask them for `hash`: starting at one chosen by the hash (to
    /// spread load), the ones that failed recently last.
    fn source_order(&self, hash: &Hash) -> Vec<usize> {
        let n = self.sources.len();
        let start = hash.0[0] as usize % n;
        let now = Instant::now();
        let (healthy, failing): (Vec<usize>, Vec<usize>) =
            (0..n).map(|k| (start + k) % n).partition(|&i| {
                let until = *self.failed_until[i]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                until.is_none_or(|t| t <= now)
            });
        healthy.into_iter().chain(failing).collect()
    }

    fn mark_source(&self, source: usize, failed: bool) {
        let mut until = self.failed_until[source]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *until = failed.then(|| Instant::now() + SOURCE_BACKOFF);
    }

    /// Try every source (healthy ones first, see [`Self::source_order`]), each a couple of
    /// times; a corrupt object counts as a failure of that source and the next one is asked.
    /// Returns the object as stored and its verified plaintext.
    fn fetch_object(&self, info: &ChunkInfo) -> Result<(Vec<u8>, Vec<u8>)> {
        if self.sources.is_empty() {
            return Err(Error::ChunkMissing(info.hash));
        }
        let order = self.source_order(&info.hash);
        let mut last_corrupt: Option<Error> = None;
        let mut last_error: Option<Error> = None;
        for attempt in 0..ATTEMPTS_PER_SOURCE {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50 << attempt));
            }
            for &i in &order {
                let source = &self.sources[i];
                match source.get_at_most(Object::Chunk(info.hash), max_stored_len(info.raw_len)) {
                    Ok(Some(object)) => {
                        match decode_object(&info.hash, &object, Some(info.raw_len)) {
                            Ok(plain) => {
                                self.mark_source(i, false);
                                self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
                                self.stats
                                    .fetched_bytes
                                    .fetch_add(object.len() as u64, Ordering::Relaxed);
                                return Ok((object, plain));
                            }
                            Err(e) => {
                                self.mark_source(i, true);
                                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(store = %source.describe(), error = %e, "rejected chunk");
                                last_corrupt = Some(e);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.mark_source(i, true);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::chunk::encode_object;
    use crate::store::DirStore;

    /// A hub that is down: every request fails (as a timeout would, only at once).
    #[derive(Default)]
    struct DownHub {
        asked: AtomicUsize,
    }

    impl Store for DownHub {
        fn describe(&self) -> String {
            "a hub that is down".into()
        }
        fn get_at_most(&self, _: Object, _: u64) -> Result<Option<Vec<u8>>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            Err(Error::InvalidInput("timed out".into()))
        }
        fn size(&self, _: Object) -> Result<Option<u64>> {
            Ok(None)
        }
        fn put(&self, _: Object, _: &[u8]) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_source_is_asked_after_the_others_until_its_backoff_ends() {
        let dir = tempfile::tempdir().unwrap();
        let good = DirStore::open(dir.path()).unwrap();
        let chunks: Vec<ChunkInfo> = (0..32u32)
            .map(|i| {
                let plain = format!("chunk number {i}").into_bytes();
                let hash = Hash::of(&plain);
                good.put(Object::Chunk(hash), &encode_object(&plain))
                    .unwrap();
                ChunkInfo {
                    hash,
                    raw_len: plain.len() as u32,
                }
            })
            .collect();
        let down = Arc::new(DownHub::default());
        let fetcher = Fetcher::new(vec![down.clone(), Arc::new(good)], None);
        for info in &chunks {
            fetcher.fetch_remote(info).unwrap();
        }
        // About half the chunks would start at the down hub by their hash; only the first
        // of them pays for it.
        assert!(chunks.iter().filter(|c| c.hash.0[0] % 2 == 0).count() > 4);
        assert_eq!(down.asked.load(Ordering::Relaxed), 1);

        // Once the back-off has passed, it is asked first again for its share.
        *fetcher.failed_until[0].lock().unwrap() = Some(Instant::now());
        let first = chunks.iter().find(|c| c.hash.0[0] % 2 == 0).unwrap();
        fetcher.fetch_remote(first).unwrap();
        assert_eq!(down.asked.load(Ordering::Relaxed), 2);
    }
}
