//! Opening an image by its root: fetch the index, check it hashes to the pinned root, check the
//! signature when trusted keys are given, then decode.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;

use crate::error::{Error, Result};
use crate::format::Index;
use crate::hash::Hash;
use crate::sign;
use crate::store::{Object, Store};

pub struct Image {
    pub root: Hash,
    pub index: Index,
    pub signature: Option<Vec<u8>>,
}

/// Trust policy for opening images.
#[derive(Clone, Default)]
pub struct Trust {
    /// If non-empty, the image must carry a valid signature by one of these keys.
    pub keys: Vec<VerifyingKey>,
}

pub fn open_image(sources: &[Arc<dyn Store>], root: &Hash, trust: &Trust) -> Result<Image> {
    let mut last_error = None;
    for source in sources {
        let bytes = match source.get(Object::Index(*root)) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let actual = Hash::of(&bytes);
        if actual != *root {
            // A store serving the wrong index is an attack or corruption; try another store.
            tracing::warn!(store = %source.describe(), %actual, "index does not match its root");
            last_error = Some(Error::RootMismatch {
                expected: *root,
                actual,
            });
            continue;
        }
        let signature = source.get(Object::Signature(*root)).ok().flatten();
        sign::require_trusted(root, signature.as_deref(), &trust.keys)?;
        let index = Index::parse(bytes)?;
        return Ok(Image {
            root: *root,
            index,
            signature,
        });
    }
    Err(last_error.unwrap_or(Error::ImageNotFound(*root)))
}
