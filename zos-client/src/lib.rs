//! The typed client of the Zero-OS grid chain, shared by the executor, the `zos` CLI and the
//! tests: subxt code generated from the committed runtime metadata (`metadata/`, refreshed by
//! `scripts/refresh-metadata.sh`), reads at the finalized block, signed submissions that come
//! back with the runtime's error names, the calls a node sends, and the node identity file.

pub mod chain;
pub mod identity;
