//! zos-image: signed, deduplicated, lazily fetched and verified filesystem images.
//!
//! An image is an index (see [`format`]) plus content-addressed chunks in a store. The image
//! root is BLAKE3 of the index bytes; pinning the root pins every byte of the tree, because the
//! index names every chunk by its hash and every chunk is verified before use.

pub mod cache;
pub mod chunk;
pub mod error;
pub mod fetch;
pub mod format;
pub mod gc;
pub mod hash;
pub mod hub;
pub mod image;
pub mod mount;
pub mod oci;
pub mod overlay;
pub mod pack;
pub mod progress;
pub mod sign;
pub mod store;
pub mod transfer;
pub mod unpack;
pub mod verify;

pub use error::{Error, FormatError, Result, SignatureError};
pub use format::Index;
pub use hash::Hash;
