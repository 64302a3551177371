//! The overlay network (the Mycelium role): every participant (node, VM, deployer laptop) is
//! reachable at an IPv6 address derived from a public key, end to end encrypted, through NAT.
//!
//! This crate holds the parts that do not depend on the transport: [`address`] (how keys,
//! contracts and workloads map to addresses in [`address::OVERLAY_PREFIX`]) and [`packet`]
//! (how packets are framed on a peer link, and the check that a peer only sends from the
//! addresses its key owns).

pub mod address;
pub mod packet;

pub use address::{NodeSubnet, OVERLAY_PREFIX, OVERLAY_PREFIX_LEN};
pub use packet::{FrameError, PacketError};
