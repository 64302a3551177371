//! Overlay participants on loopback TCP, for the in-process tests.
#![allow(dead_code)]

use std::sync::Arc;

use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr};
use zos_image::store::DirStore;
use zos_overlay::{Config, Overlay};

/// A participant with a fresh key on loopback TCP, joining through `bootstrap`, serving
/// `objects`.
pub async fn participant(bootstrap: Vec<Multiaddr>, objects: Option<Arc<DirStore>>) -> Overlay {
    participant_on("/ip4/127.0.0.1/tcp/0", bootstrap, objects).await
}

/// The same, listening on `listen`.
pub async fn participant_on(
    listen: &str,
    bootstrap: Vec<Multiaddr>,
    objects: Option<Arc<DirStore>>,
) -> Overlay {
    Overlay::start(Config {
        keypair: Keypair::generate_ed25519(),
        listen: vec![listen.parse().unwrap()],
        bootstrap,
        client: false,
        relays: vec![],
        relay_server: false,
        objects,
    })
    .await
    .unwrap()
}

/// The participant's dialable address, `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
pub async fn dial_address(overlay: &Overlay) -> Multiaddr {
    let mut listening = overlay.listening.clone();
    let addrs = listening.wait_for(|a| !a.is_empty()).await.unwrap().clone();
    addrs[0].clone().with(Protocol::P2p(overlay.peer_id))
}
