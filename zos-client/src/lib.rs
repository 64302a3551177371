//! The typed client of the Zero-OS grid chain, shared by the executor, the `zos` CLI and the
//! tests: subxt code generated from the committed runtime metadata (`metadata/`, refreshed by
//! `scripts/refresh-metadata.sh`), reads at the finalized block, signed submissions that come
//! back with the runtime's error names, the calls a node sends, the node identity file, and the
//! signed requests of deployers to a node's access endpoint.

pub mod access;
pub mod chain;
pub mod identity;
