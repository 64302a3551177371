//! The distributed hub: image objects (chunks, indexes, signatures) fetched from overlay peers
//! before hubs. A participant announces what its store holds with Kademlia provider records
//! and answers `/zos-overlay/objects/2` streams from it; [`PeerStore`] asks the providers of
//! an object one by one, checks what each sends against the object's name (a chunk must hash
//! to its name, an index to its root) and stops asking a peer that sent wrong bytes, then falls
//! back to the configured hubs. Whatever it fetched it keeps and announces in turn.

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{kad, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use zos_image::{
    store::{DirStore, Object, Store},
    Hash,
};

/// The stream protocol for objects: a request is a 33-byte name; the answer a presence byte,
/// then (when present) the object's length as a little-endian u32 and its bytes.
pub const OBJECT_PROTOCOL: StreamProtocol = StreamProtocol::new("/zos-overlay/objects/2");
/// The largest object a peer is asked for: indexes above it come from hubs only.
pub const MAX_PEER_OBJECT: u64 = 16 << 20;
/// Providers asked for one object at most.
pub(crate) const MAX_PROVIDERS_ASKED: usize = 4;
/// How long a whole peer fetch may take before the hubs are asked.
const PEER_FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Objects announced from the store at startup at most.
pub const MAX_ANNOUNCED_AT_START: usize = 10_000;
/// How long one object request may take once its peer is reachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer may take to send the name it asks for.
const NAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Store reads for peers at once, at most; requests beyond it are answered "none" (a peer
/// cannot queue reads of 16 MiB objects without bound).
const MAX_OBJECT_READS: usize = 8;
/// Requests one peer may have in progress; streams beyond it are dropped unanswered.
const MAX_REQUESTS_PER_PEER: usize = 8;

const KIND_CHUNK: u8 = 0;
const KIND_INDEX: u8 = 1;
const KIND_SIGNATURE: u8 = 2;

/// An object's name on the wire: its kind and hash.
pub fn encode_name(object: Object) -> [u8; 33] {
    let (kind, hash) = match object {
        Object::Chunk(h) => (KIND_CHUNK, h),
        Object::Index(h) => (KIND_INDEX, h),
        Object::Signature(h) => (KIND_SIGNATURE, h),
    };
    let mut name = [0u8; 33];
    name[0] = kind;
    name[1..].copy_from_slice(&hash.0);
    name
}

/// The object a wire name stands for.
pub fn decode_name(name: &[u8]) -> Option<Object> {
    let hash = Hash(name.get(1..33)?.try_into().ok()?);
    match *name.first()? {
        KIND_CHUNK => Some(Object::Chunk(hash)),
        KIND_INDEX => Some(Object::Index(hash)),
        KIND_SIGNATURE => Some(Object::Signature(hash)),
        _ => None,
    }
    .filter(|_| name.len() == 33)
}

/// The Kademlia key under which providers of `object` are announced.
pub fn provider_key(object: Object) -> kad::RecordKey {
    let mut key = b"/zos-overlay/object/".to_vec();
    key.extend_from_slice(&encode_name(object));
    kad::RecordKey::new(&key)
}

/// The most bytes a peer may send for `object`.
pub fn peer_limit(object: Object) -> u64 {
    object.max_len().min(MAX_PEER_OBJECT)
}

/// What a peer answered to an object request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The bytes it sent, still to be checked against the name.
    Bytes(Vec<u8>),
    /// It has no such object, is busy, or could not be reached in time.
    Nothing,
    /// It announced more bytes than the object may have, or broke the format: it lies.
    Broken,
}

/// Writes the answer to a request: `object`'s bytes, or that there are none.
async fn write_answer<S: AsyncWrite + Unpin>(io: &mut S, object: Option<&[u8]>) -> io::Result<()> {
    match object {
        None => io.write_all(&[0]).await?,
        Some(bytes) => {
            let len = u32::try_from(bytes.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "object too large"))?;
            let mut head = [1u8; 5];
            head[1..].copy_from_slice(&len.to_le_bytes());
            io.write_all(&head).await?;
            io.write_all(bytes).await?;
        }
    }
    io.close().await
}

/// Reads the answer to a request, at most `limit` bytes of object: the length comes first, so
/// an oversized answer is refused before anything is allocated for it.
async fn read_answer<S: AsyncRead + Unpin>(io: &mut S, limit: u64) -> io::Result<Answer> {
    let mut present = [0u8; 1];
    io.read_exact(&mut present).await?;
    match present[0] {
        0 => return Ok(Answer::Nothing),
        1 => {}
        _ => return Ok(Answer::Broken),
    }
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len);
    if u64::from(len) > limit {
        return Ok(Answer::Broken);
    }
    let mut bytes = vec![0u8; len as usize];
    io.read_exact(&mut bytes).await?;
    Ok(Answer::Bytes(bytes))
}

/// Answers peers' object requests from `store`, each on its own task, until the swarm ends.
pub(crate) async fn serve_objects(
    mut incoming: libp2p_stream::IncomingStreams,
    store: Arc<DirStore>,
) {
    use futures::StreamExt;
    let reads = Arc::new(tokio::sync::Semaphore::new(MAX_OBJECT_READS));
    let in_progress: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        let Some(slot) = PeerSlot::take(&in_progress, peer) else {
            tracing::debug!(%peer, "too many object requests at once; one dropped");
            continue;
        };
        let (store, reads) = (store.clone(), reads.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = answer(stream, store, reads).await {
                tracing::debug!(%peer, "answering an object request: {e}");
            }
        });
    }
}

/// One of a peer's [`MAX_REQUESTS_PER_PEER`] requests in progress, given back on drop.
struct PeerSlot {
    peer: PeerId,
    in_progress: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PeerSlot {
    fn take(in_progress: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<Self> {
        let mut counts = in_progress.lock().unwrap();
        let count = counts.entry(peer).or_default();
        if *count >= MAX_REQUESTS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(Self {
            peer,
            in_progress: in_progress.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.in_progress.lock().unwrap();
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

async fn answer(
    mut stream: libp2p::Stream,
    store: Arc<DirStore>,
    reads: Arc<tokio::sync::Semaphore>,
) -> io::Result<()> {
    let mut name = [0u8; 33];
    within(NAME_TIMEOUT, stream.read_exact(&mut name)).await?;
    let object =
        decode_name(&name).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad name"))?;
    let bytes = match reads.try_acquire_owned() {
        Ok(permit) => tokio::task::spawn_blocking(move || {
            let _permit = permit;
            store.get_at_most(object, peer_limit(object)).ok().flatten()
        })
        .await
        .ok()
        .flatten(),
        Err(_) => None,
    };
    within(REQUEST_TIMEOUT, write_answer(&mut stream, bytes.as_deref())).await
}

/// `io` unless it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// What the object exchange asks of the swarm.
pub(crate) enum ObjectCommand {
    /// The peers announcing `object`.
    Providers(Object, oneshot::Sender<Vec<PeerId>>),
    /// Answers once `peer` is connected or being dialed (dropped when it cannot be found).
    Reach(PeerId, oneshot::Sender<()>),
    /// Announce that this participant holds `object`.
    Announce(Object),
}

/// A handle on the overlay's object exchange.
#[derive(Clone)]
pub struct ObjectClient {
    pub(crate) commands: mpsc::Sender<ObjectCommand>,
    /// Object streams are opened here, off the swarm's event loop.
    pub(crate) control: libp2p_stream::Control,
    /// The peers with an open connection: asked without a trip through the event loop.
    pub(crate) connected: tokio::sync::watch::Receiver<Vec<PeerId>>,
}

impl ObjectClient {
    async fn providers(&self, object: Object) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(ObjectCommand::Providers(object, tx))
            .await
            .is_err()
        {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// Asks `peer` for `object`, accepting at most `limit` bytes.
    async fn request(&self, peer: PeerId, object: Object, limit: u64) -> Answer {
        if !self.connected.borrow().contains(&peer) {
            let (tx, rx) = oneshot::channel();
            let asked = self.commands.send(ObjectCommand::Reach(peer, tx)).await;
            if asked.is_err() || rx.await.is_err() {
                return Answer::Nothing;
            }
        }
        let mut control = self.control.clone();
        let exchange = async {
            let mut stream = control
                .open_stream(peer, OBJECT_PROTOCOL)
                .await
                .map_err(io::Error::other)?;
            stream.write_all(&encode_name(object)).await?;
            stream.close().await?;
            read_answer(&mut stream, limit).await
        };
        within(REQUEST_TIMEOUT, exchange).await.unwrap_or_else(|e| {
            tracing::debug!(%peer, object = object.rel_path(), "object request: {e}");
            Answer::Nothing
        })
    }

    /// Announces that this participant holds `object`.
    pub async fn announce(&self, object: Object) {
        let _ = self.commands.send(ObjectCommand::Announce(object)).await;
    }
}

/// Where a [`PeerStore`]'s objects came from, and what it refused.
#[derive(Debug, Default)]
pub struct PeerStoreStats {
    pub from_store: AtomicU64,
    pub from_peers: AtomicU64,
    pub from_hubs: AtomicU64,
    /// Objects from peers that did not match their name.
    pub rejected_from_peers: AtomicU64,
}

/// Whether `bytes` from a peer may stand for `object`: within `limit`, matching the object's
/// name (a chunk its hash, an index its root) and, for a signature, made by a `trusted` key
/// (any key can sign any root: a signature by another key would make the image unusable once
/// kept). Without trusted keys no signature is taken from peers.
pub fn acceptable_from_peer(
    object: Object,
    bytes: &[u8],
    limit: u64,
    trusted: &[ed25519_dalek::VerifyingKey],
) -> bool {
    if bytes.len() as u64 > limit || zos_image::hub::validate_object(object, bytes).is_err() {
        return false;
    }
    match object {
        Object::Signature(root) => {
            !trusted.is_empty()
                && zos_image::sign::require_trusted(&root, Some(bytes), trusted).is_ok()
        }
        _ => true,
    }
}

/// The peers a [`PeerStore`] asks first, in turn.
#[derive(Debug, Default)]
struct Holders {
    peers: Vec<PeerId>,
    turn: usize,
}

impl Holders {
    /// Enough for every holder of an image in a farm to take its share; a lookup refills it.
    const MAX: usize = 8;

    /// The peer whose turn it is.
    fn next(&mut self) -> Option<PeerId> {
        if self.peers.is_empty() {
            return None;
        }
        let peer = self.peers[self.turn % self.peers.len()];
        self.turn = self.turn.wrapping_add(1);
        Some(peer)
    }

    fn add(&mut self, peer: PeerId) {
        if self.peers.contains(&peer) {
            return;
        }
        if self.peers.len() == Self::MAX {
            self.peers.remove(0);
        }
        self.peers.push(peer);
    }

    fn remove(&mut self, peer: PeerId) {
        self.peers.retain(|p| *p != peer);
    }
}

/// A [`Store`]: the local store, then overlay peers, then the hubs. Its calls block: use it
/// from a blocking thread (never from async code), as the hub routes and the image tools do.
pub struct PeerStore {
    local: DirStore,
    client: ObjectClient,
    upstream: Vec<Arc<dyn Store>>,
    /// The keys whose signatures are taken from peers.
    trusted: Vec<ed25519_dalek::VerifyingKey>,
    runtime: tokio::runtime::Handle,
    /// Peers that sent wrong bytes: never asked again.
    distrusted: Mutex<HashSet<PeerId>>,
    /// Peers that served an object of late, asked in turn before any DHT lookup: the chunks of
    /// an image usually come from peers that hold the whole image, and taking them in turn
    /// spreads one image's chunks over those peers.
    holders: Mutex<Holders>,
    pub stats: Arc<PeerStoreStats>,
}

impl PeerStore {
    pub fn new(
        local: DirStore,
        client: ObjectClient,
        upstream: Vec<Arc<dyn Store>>,
        trusted: Vec<ed25519_dalek::VerifyingKey>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            local,
            client,
            upstream,
            trusted,
            runtime,
            distrusted: Mutex::default(),
            holders: Mutex::default(),
            stats: Arc::default(),
        }
    }

    /// The peers no longer asked.
    pub fn distrusted(&self) -> Vec<PeerId> {
        self.distrusted.lock().unwrap().iter().copied().collect()
    }

    fn from_peers(&self, object: Object, max_len: u64) -> Option<Vec<u8>> {
        if matches!(object, Object::Signature(_)) && self.trusted.is_empty() {
            return None;
        }
        let limit = peer_limit(object).min(max_len);
        self.runtime.block_on(async {
            tokio::time::timeout(PEER_FETCH_TIMEOUT, async {
                let first = self.holders.lock().unwrap().next();
                if let Some(peer) = first {
                    if let Some(bytes) = self.ask(peer, object, limit).await {
                        return Some(bytes);
                    }
                    // Busy, or without this object: asked again once a lookup names it.
                    self.holders.lock().unwrap().remove(peer);
                }
                let providers = self.client.providers(object).await;
                let mut asked = 0;
                for peer in providers {
                    if Some(peer) == first {
                        continue;
                    }
                    if asked == MAX_PROVIDERS_ASKED {
                        break;
                    }
                    if self.distrusted.lock().unwrap().contains(&peer) {
                        continue;
                    }
                    asked += 1;
                    if let Some(bytes) = self.ask(peer, object, limit).await {
                        // Only a peer that served: one that merely announces (or stalls) never
                        // takes a turn.
                        self.holders.lock().unwrap().add(peer);
                        return Some(bytes);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
        })
    }

    /// `object` from `peer` if it has it and its bytes match the name; a peer that sends wrong
    /// bytes is never asked again.
    async fn ask(&self, peer: PeerId, object: Object, limit: u64) -> Option<Vec<u8>> {
        if self.distrusted.lock().unwrap().contains(&peer) {
            return None;
        }
        let fault = match self.client.request(peer, object, limit).await {
            Answer::Nothing => return None,
            Answer::Bytes(bytes) if acceptable_from_peer(object, &bytes, limit, &self.trusted) => {
                return Some(bytes)
            }
            Answer::Bytes(_) => "sent bytes that do not match the object",
            Answer::Broken => "sent a malformed answer (unknown presence byte or over the limit)",
        };
        tracing::warn!(%peer, object = object.rel_path(), "a peer {fault}; no longer asked");
        self.stats
            .rejected_from_peers
            .fetch_add(1, Ordering::Relaxed);
        self.distrusted.lock().unwrap().insert(peer);
        self.holders.lock().unwrap().remove(peer);
        None
    }

    fn from_hubs(&self, object: Object, max_len: u64) -> Option<Vec<u8>> {
        for hub in &self.upstream {
            match hub.get_at_most(object, max_len) {
                Ok(Some(bytes)) if zos_image::hub::validate_object(object, &bytes).is_ok() => {
                    return Some(bytes)
                }
                Ok(Some(_)) => {
                    tracing::warn!(hub = %hub.describe(), object = object.rel_path(), "a hub sent wrong bytes")
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(hub = %hub.describe(), "{e}"),
            }
        }
        None
    }

    /// Keeps a fetched object and announces it.
    fn keep(&self, object: Object, bytes: &[u8]) {
        if let Err(e) = self.local.put(object, bytes) {
            tracing::warn!("keeping {}: {e}", object.rel_path());
            return;
        }
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.announce(object).await });
    }
}

impl Store for PeerStore {
    fn describe(&self) -> String {
        let hubs: Vec<String> = self.upstream.iter().map(|h| h.describe()).collect();
        format!(
            "{}, overlay peers, then {}",
            self.local.describe(),
            hubs.join(", ")
        )
    }

    fn get_at_most(&self, object: Object, max_len: u64) -> zos_image::Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.local.get_at_most(object, max_len)? {
            self.stats.from_store.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(bytes));
        }
        if let Some(bytes) = self.from_peers(object, max_len) {
            self.stats.from_peers.fetch_add(1, Ordering::Relaxed);
            self.keep(object, &bytes);
            return Ok(Some(bytes));
        }
        if let Some(bytes) = self.from_hubs(object, max_len) {
            self.stats.from_hubs.fetch_add(1, Ordering::Relaxed);
            self.keep(object, &bytes);
            return Ok(Some(bytes));
        }
        Ok(None)
    }

    fn size(&self, object: Object) -> zos_image::Result<Option<u64>> {
        self.local.size(object)
    }

    fn put(&self, object: Object, bytes: &[u8]) -> zos_image::Result<()> {
        zos_image::hub::validate_object(object, bytes).map_err(|message| {
            zos_image::Error::Store {
                store: self.describe(),
                message,
            }
        })?;
        self.keep(object, bytes);
        Ok(())
    }
}

/// Every object in `store`: chunks, then image indexes and signatures.
pub fn stored_objects(store: &DirStore) -> Vec<Object> {
    let mut objects: Vec<Object> = store
        .list_chunks()
        .unwrap_or_default()
        .into_iter()
        .map(Object::Chunk)
        .collect();
    if let Ok(entries) = std::fs::read_dir(store.root().join("images")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(root) = name.strip_suffix(".idx").and_then(|r| r.parse().ok()) {
                objects.push(Object::Index(root));
            } else if let Some(root) = name.strip_suffix(".sig").and_then(|r| r.parse().ok()) {
                objects.push(Object::Signature(root));
            }
        }
    }
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_take_turns_and_the_oldest_makes_room() {
        let mut holders = Holders::default();
        assert_eq!(holders.next(), None);
        let peers: Vec<PeerId> = (0..=Holders::MAX).map(|_| PeerId::random()).collect();
        holders.add(peers[0]);
        holders.add(peers[1]);
        holders.add(peers[0]);
        let turns: Vec<_> = (0..4).map(|_| holders.next().unwrap()).collect();
        assert_eq!(turns, [peers[0], peers[1], peers[0], peers[1]]);
        holders.remove(peers[0]);
        assert_eq!(holders.next(), Some(peers[1]));
        assert_eq!(holders.next(), Some(peers[1]));
        for &peer in &peers {
            holders.add(peer);
        }
        // One past the limit: the first added (peers[1]) went.
        assert_eq!(holders.peers.len(), Holders::MAX);
        assert!(!holders.peers.contains(&peers[1]));
        assert!(holders.peers.contains(&peers[Holders::MAX]));
    }

    #[test]
    fn a_signature_from_a_peer_counts_only_by_a_trusted_key() {
        let root = Hash([5; 32]);
        let ours = zos_image::sign::generate().unwrap();
        let theirs = zos_image::sign::generate().unwrap();
        let trusted = [ours.verifying_key()];
        let object = Object::Signature(root);
        let good = zos_image::sign::sign(&root, &ours);
        let forged = zos_image::sign::sign(&root, &theirs);
        assert!(acceptable_from_peer(
            object,
            &good,
            MAX_PEER_OBJECT,
            &trusted
        ));
        assert!(!acceptable_from_peer(
            object,
            &forged,
            MAX_PEER_OBJECT,
            &trusted
        ));
        assert!(!acceptable_from_peer(object, &good, MAX_PEER_OBJECT, &[]));
        assert!(!acceptable_from_peer(object, &good, 10, &trusted));
        // A chunk must hash to its name.
        let chunk = zos_image::chunk::encode_object(b"data");
        let name = Object::Chunk(Hash::of(b"data"));
        assert!(acceptable_from_peer(name, &chunk, MAX_PEER_OBJECT, &[]));
        assert!(!acceptable_from_peer(
            Object::Chunk(root),
            &chunk,
            MAX_PEER_OBJECT,
            &[]
        ));
    }

    #[tokio::test]
    async fn answers_round_trip_and_an_oversized_or_garbled_one_is_refused_before_reading() {
        use futures::io::Cursor;
        let mut wire = Cursor::new(Vec::new());
        write_answer(&mut wire, Some(b"chunk bytes")).await.unwrap();
        let sent = wire.into_inner();
        assert_eq!(sent.len(), 1 + 4 + 11);
        let answer = read_answer(&mut Cursor::new(sent.clone()), 11)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Bytes(b"chunk bytes".to_vec()));
        // One byte over the asker's limit: refused from the length alone.
        let answer = read_answer(&mut Cursor::new(sent[..5].to_vec()), 10)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Broken);
        // A length claiming 4 GiB with nothing behind it allocates nothing and is refused.
        let huge = [1, 0xff, 0xff, 0xff, 0xff];
        let answer = read_answer(&mut Cursor::new(huge.to_vec()), MAX_PEER_OBJECT)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Broken);
        // An unknown presence byte, a truncated object, and "none".
        let answer = read_answer(&mut Cursor::new(vec![7]), MAX_PEER_OBJECT)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Broken);
        assert!(read_answer(&mut Cursor::new(sent[..9].to_vec()), 11)
            .await
            .is_err());
        let mut wire = Cursor::new(Vec::new());
        write_answer(&mut wire, None).await.unwrap();
        let answer = read_answer(&mut Cursor::new(wire.into_inner()), 11)
            .await
            .unwrap();
        assert_eq!(answer, Answer::Nothing);
    }

    #[test]
    fn names_round_trip_and_garbage_is_refused() {
        let h = Hash([7; 32]);
        for object in [Object::Chunk(h), Object::Index(h), Object::Signature(h)] {
            assert_eq!(decode_name(&encode_name(object)), Some(object));
        }
        let mut bad = encode_name(Object::Chunk(h));
        bad[0] = 9;
        assert_eq!(decode_name(&bad), None);
        assert_eq!(decode_name(&[0; 10]), None);
        assert_eq!(decode_name(&[0; 34]), None);
        assert_ne!(
            provider_key(Object::Chunk(h)),
            provider_key(Object::Index(h))
        );
        assert_eq!(peer_limit(Object::Index(h)), MAX_PEER_OBJECT);
        assert!(peer_limit(Object::Chunk(h)) < MAX_PEER_OBJECT);
    }
}
