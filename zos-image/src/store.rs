//! Stores hold indexes, signatures and chunk objects, all content addressed.
//!
//! Layout shared by the directory store and the hub's URL space:
//! `chunks/<first 2 hex>/<hash>`, `images/<root>.idx`, `images/<root>.sig`.
//! Nothing read from a store is trusted: callers verify hashes and signatures.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

/// The kinds of objects a store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Chunk(Hash),
    Index(Hash),
    Signature(Hash),
}

impl Object {
    /// Relative path / URL path of the object.
    pub fn rel_path(&self) -> String {
        match self {
            Object::Chunk(h) => {
                let hex = h.to_hex();
                format!("chunks/{}/{}", &hex[..2], hex)
            }
            Object::Index(h) => format!("images/{h}.idx"),
            Object::Signature(h) => format!("images/{h}.sig"),
        }
    }

    /// The largest stored form any object of this kind may have. A store refuses to hand over
    /// more (an index is the largest a hub accepts; a chunk is one compressed maximal chunk).
    pub fn max_len(&self) -> u64 {
        match self {
            Object::Chunk(_) => crate::chunk::max_stored_len(crate::format::MAX_CHUNK_LEN),
            Object::Index(_) => MAX_INDEX_LEN,
            Object::Signature(_) => MAX_SIGNATURE_LEN,
        }
    }
}

/// Largest index a hub accepts and a client downloads.
pub const MAX_INDEX_LEN: u64 = 512 << 20;
/// Largest signature file (a few hundred bytes in practice).
pub const MAX_SIGNATURE_LEN: u64 = 64 << 10;

pub trait Store: Send + Sync {
    /// Human readable location for logs and errors.
    fn describe(&self) -> String;
    /// The object, refused with [`Error::ObjectTooLarge`] as soon as it proves longer than
    /// `max_len` bytes (never read whole first): stores are untrusted.
    fn get_at_most(&self, object: Object, max_len: u64) -> Result<Option<Vec<u8>>>;
    /// The object, bounded by the largest size its kind may have.
    fn get(&self, object: Object) -> Result<Option<Vec<u8>>> {
        self.get_at_most(object, object.max_len())
    }
    /// Size of a stored object, or None when absent.
    fn size(&self, object: Object) -> Result<Option<u64>>;
    fn has(&self, object: Object) -> Result<bool> {
        Ok(self.size(object)?.is_some())
    }
    fn put(&self, object: Object, bytes: &[u8]) -> Result<()>;
}

/// Open a store from a CLI spec: an `http(s)://` URL is a hub, anything else a directory.
pub fn open_store(spec: &str, token: Option<String>) -> Result<Arc<dyn Store>> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        Ok(Arc::new(HttpStore::new(spec, token)))
    } else {
        Ok(Arc::new(DirStore::open(spec)?))
    }
}

#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` so that readers only ever see the complete file: write a unique
/// temporary file in the same directory, then rename it over the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::InvalidInput(format!("{path:?} has no parent")))?;
    fs::create_dir_all(dir).at(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.at(path)
}

impl DirStore {
    pub fn open(root: impl AsRef<Path>) -> Result<DirStore> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(root.join("chunks")).at(&root)?;
        fs::create_dir_all(root.join("images")).at(&root)?;
        Ok(DirStore { root })
    }

    pub fn path_of(&self, object: Object) -> PathBuf {
        self.root.join(object.rel_path())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every chunk hash present (used by `verify --all` style maintenance and tests).
    pub fn list_chunks(&self) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        let dir = self.root.join("chunks");
        for shard in fs::read_dir(&dir).at(&dir)? {
            let shard = shard.at(&dir)?.path();
            for entry in fs::read_dir(&shard).at(&shard)? {
                let entry = entry.at(&shard)?;
                if let Some(h) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Store for DirStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get_at_most(&self, object: Object, max_len: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(object);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        read_at_most(file, max_len, &self.describe(), object)
            .map(Some)
            .map_err(|e| match e {
                ReadError::Io(source) => Error::Io { path, source },
                ReadError::TooLarge(e) => e,
            })
    }

    fn size(&self, object: Object) -> Result<Option<u64>> {
        let path = self.path_of(object);
        match fs::metadata(&path) {
            Ok(md) => Ok(Some(md.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path, source: e }),
        }
    }

    fn put(&self, object: Object, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path_of(object), bytes)
    }
}

/// Connections kept open to one hub: more than the fetch threads of a mount or an unpack.
const MAX_PARALLEL_REQUESTS: usize = 64;

/// A hub reached over HTTP. GETs are anonymous; PUTs carry a bearer token.
pub struct HttpStore {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Longest a single request to a hub may take, body included: a hub that hangs or trickles
/// bytes cannot hold a fetch thread longer than this.
pub const HUB_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl HttpStore {
    pub fn new(base: &str, token: Option<String>) -> HttpStore {
        Self::with_timeout(base, token, HUB_REQUEST_TIMEOUT)
    }

    /// A hub client whose requests each end after `timeout` (connecting, waiting and reading).
    pub fn with_timeout(base: &str, token: Option<String>, timeout: Duration) -> HttpStore {
        // Mounts and unpacks fetch with many threads at once; keep their connections alive
        // instead of opening one per chunk (ureq keeps a single idle one per host by default).
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .max_idle_connections_per_host(MAX_PARALLEL_REQUESTS)
            .build();
        HttpStore {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    fn url(&self, object: Object) -> String {
        format!("{}/v1/{}", self.base, object.rel_path())
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Store {
            store: self.base.clone(),
            message: message.into(),
        }
    }
}

enum ReadError {
    Io(std::io::Error),
    TooLarge(Error),
}

/// Reads `reader` to its end, stopping with `ObjectTooLarge` as soon as more than `max_len`
/// bytes arrive: memory use is bounded by the limit whatever the other side sends.
fn read_at_most(
    reader: impl Read,
    max_len: u64,
    store: &str,
    object: Object,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    reader
        .take(max_len.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(ReadError::Io)?;
    if body.len() as u64 > max_len {
        return Err(ReadError::TooLarge(Error::ObjectTooLarge {
            store: store.to_string(),
            object: object.rel_path(),
            limit: max_len,
        }));
    }
    Ok(body)
}

impl Store for HttpStore {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn get_at_most(&self, object: Object, max_len: u64) -> Result<Option<Vec<u8>>> {
        match self.agent.get(&self.url(object)).call() {
            Ok(resp) => {
                // A declared length over the limit is refused before reading any of the body.
                let declared = resp
                    .header("content-length")
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|len| len > max_len) {
                    return Err(Error::ObjectTooLarge {
                        store: self.base.clone(),
                        object: object.rel_path(),
                        limit: max_len,
                    });
                }
                read_at_most(resp.into_reader(), max_len, &self.base, object)
                    .map_err(|e| match e {
                        ReadError::Io(e) => self.err(format!("reading {}: {e}", object.rel_path())),
                        ReadError::TooLarge(e) => e,
                    })
                    .map(Some)
            }
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(code, _)) => {
                Err(self.err(format!("GET {} returned HTTP {code}", object.rel_path())))
            }
            Err(e) => Err(self.err(format!("GET {}: {e}", object.rel_path()))),
        }
    }

    fn size(&self, object: Object) -> Result<Option<u64>> {
        match self.agent.head(&self.url(object)).call() {
            Ok(resp) => Ok(Some(
                resp.header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(self.err(format!("HEAD {}: {e}", object.rel_path()))),
        }
    }

    fn put(&self, object: Object, bytes: &[u8]) -> Result<()> {
        let mut req = self.agent.put(&self.url(object));
        if let Some(token) = &self.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        match req.send_bytes(bytes) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(401, _)) => {
                Err(self.err("PUT refused: missing or wrong token (HTTP 401)"))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                Err(self.err(format!(
                    "PUT {} returned HTTP {code}: {body}",
                    object.rel_path()
                )))
            }
            Err(e) => Err(self.err(format!("PUT {}: {e}", object.rel_path()))),
        }
    }
}
