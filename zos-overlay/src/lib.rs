//! The overlay network (the Mycelium role): every participant (node, VM, deployer laptop) is
//! reachable at an IPv6 address derived from a public key, end to end encrypted.
//!
//! - [`address`]: how keys, contracts and workloads map to addresses in
//!   [`address::OVERLAY_PREFIX`];
//! - [`packet`]: how packets are framed on a peer link, and the check that a peer only sends
//!   from the addresses its key owns;
//! - [`identity`]: the participant's key file and the /64 a peer id owns;
//! - [`overlay`]: the participant itself, a libp2p swarm carrying packets between peers;
//! - [`objects`]: the distributed hub, image objects fetched from peers before hubs;
//! - [`tun`]: the TUN device that connects it to the kernel's IPv6 stack.

pub mod address;
pub mod identity;
pub mod objects;
pub mod overlay;
pub mod packet;
pub mod tun;

pub use address::{NodeSubnet, OVERLAY_PREFIX, OVERLAY_PREFIX_LEN};
pub use overlay::{Config, Overlay, Stats};
pub use packet::{FrameError, PacketError};
