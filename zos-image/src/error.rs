//! Typed errors. Every way bad input can fail has its own variant so callers (and the CLI) can
//! say precisely what is wrong instead of panicking.

use std::path::PathBuf;

use crate::hash::Hash;

/// Why an index could not be decoded. The index is untrusted input until its hash has been
/// checked against a pinned root, and even then the decoder never trusts it blindly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("index is truncated: {0}")]
    Truncated(&'static str),
    #[error("not a zos-image index (bad magic bytes)")]
    BadMagic,
    #[error("unsupported index format version {0}")]
    UnsupportedVersion(u32),
    #[error("index length {actual} does not match the {expected} bytes its header describes")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("corrupt index: {0}")]
    Corrupt(String),
}

pub(crate) fn corrupt<T>(msg: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError::Corrupt(msg.into()))
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("image {0} is not signed, but a trusted key was required")]
    Missing(Hash),
    #[error("signature file is malformed: {0}")]
    Malformed(&'static str),
    #[error("signature does not match image root {0}")]
    Invalid(Hash),
    #[error("image is signed by {found}, which is not a trusted key")]
    UntrustedKey { found: String },
    #[error("key file is malformed: {0}")]
    BadKey(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("index content hashes to {actual}, not to the pinned root {expected}")]
    RootMismatch { expected: Hash, actual: Hash },
    #[error("image {0} was not found in any store")]
    ImageNotFound(Hash),
    #[error("chunk {0} is missing from every store")]
    ChunkMissing(Hash),
    #[error("chunk {hash} is corrupt ({reason})")]
    ChunkCorrupt { hash: Hash, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store {store}: {message}")]
    Store { store: String, message: String },
    #[error("store {store} sent more than the {limit} bytes {object} may have: refused")]
    ObjectTooLarge {
        store: String,
        object: String,
        limit: u64,
    },
    #[error("{0}")]
    InvalidInput(String),
    #[error(
        "verification failed: {missing} missing and {corrupt} corrupt chunks (first: {first})"
    )]
    VerifyFailed {
        missing: usize,
        corrupt: usize,
        first: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path to an io::Error: a bare "No such file or directory" is useless on the CLI.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}
