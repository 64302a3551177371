//! Real overlay participants (libp2p swarms on loopback TCP) without TUN devices: packets
//! find their way to a peer discovered through the DHT, and a hostile peer speaking the packet
//! protocol cannot get a spoofed, misdirected or malformed packet delivered.

use std::{
    net::Ipv6Addr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

mod common;

use common::{dial_address, participant, participant_on};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use zos_overlay::{
    identity::subnet_of_key, overlay::PACKET_PROTOCOL, packet::frame, NodeSubnet, Overlay,
};

/// A valid IPv6 packet (an ICMPv6 echo request's shape) with `payload`.
fn packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 58;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// Sends `payload` from `from` to `to` until it arrives (the first packets to an unknown
/// /64 only start its lookup), within `secs`.
async fn deliver(from: &Overlay, to: &mut Overlay, payload: &[u8], secs: u64) -> Vec<u8> {
    let sent = packet(from.address(), to.address(), payload);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        from.to_overlay.send(sent.clone()).await.unwrap();
        if let Ok(Some(got)) =
            tokio::time::timeout(Duration::from_millis(500), to.from_overlay.recv()).await
        {
            return got;
        }
    }
    panic!(
        "no packet from {} to {} within {secs} s; sender: {}; receiver: {}",
        from.address(),
        to.address(),
        from.stats.summary(),
        to.stats.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_reach_a_peer_found_through_the_dht_and_come_back() {
    let a = participant(vec![], None).await;
    let a_addr = dial_address(&a).await;
    let mut b = participant(vec![a_addr.clone()], None).await;
    let mut c = participant(vec![a_addr], None).await;
    assert_ne!(b.subnet, c.subnet);

    // B knows only A; C's /64 is found through A's DHT, then B connects to C directly.
    let got = deliver(&b, &mut c, b"hello c", 60).await;
    assert_eq!(got, packet(b.address(), c.address(), b"hello c"));
    let got = deliver(&c, &mut b, b"hello b", 30).await;
    assert_eq!(got, packet(c.address(), b.address(), b"hello b"));
    assert!(
        c.connected.borrow().contains(&b.peer_id),
        "B and C talk directly, not through A"
    );

    // A burst keeps its order on the one stream per peer (late copies of the greetings,
    // resent until one arrived, are drained first).
    tokio::time::sleep(Duration::from_millis(300)).await;
    while c.from_overlay.try_recv().is_ok() {}
    for i in 0..200u32 {
        b.to_overlay
            .send(packet(b.address(), c.address(), &i.to_be_bytes()))
            .await
            .unwrap();
    }
    let mut last = None;
    let mut n = 0;
    while n < 200 {
        let p = tokio::time::timeout(Duration::from_secs(10), c.from_overlay.recv())
            .await
            .expect("the burst arrives")
            .unwrap();
        let i = u32::from_be_bytes(p[40..44].try_into().unwrap());
        if let Some(last) = last {
            assert!(i > last, "{i} after {last}");
        }
        last = Some(i);
        n += 1;
    }

    // A participant does not send what is not from its own /64.
    let before = b.stats.dropped_foreign_source.load(Ordering::Relaxed);
    b.to_overlay
        .send(packet(c.address(), c.address(), b"forged"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats.dropped_foreign_source.load(Ordering::Relaxed) == before {
        assert!(
            Instant::now() < deadline,
            "the forged packet was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.stats.dropped_foreign_source.load(Ordering::Relaxed),
        before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_cross_a_quic_connection() {
    let mut a = participant_on("/ip4/127.0.0.1/udp/0/quic-v1", vec![], None).await;
    let a_addr = dial_address(&a).await;
    assert!(a_addr.to_string().contains("/quic-v1/"), "{a_addr}");
    let mut b = participant_on("/ip4/127.0.0.1/udp/0/quic-v1", vec![a_addr], None).await;
    let got = deliver(&b, &mut a, b"over quic", 30).await;
    assert_eq!(got, packet(b.address(), a.address(), b"over quic"));
    let got = deliver(&a, &mut b, b"and back", 30).await;
    assert_eq!(got, packet(a.address(), b.address(), b"and back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_spoof_misdirect_or_break_framing() {
    let mut victim = participant(vec![], None).await;
    let victim_addr = dial_address(&victim).await;
    let bystander = NodeSubnet::of_key(&[9; 32]);

    // The attacker: a plain libp2p swarm speaking the packet protocol by hand.
    let key = Keypair::generate_ed25519();
    let own = subnet_of_key(&key.public()).unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(victim_addr).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });

    let mut stream = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match control.open_stream(victim.peer_id, PACKET_PROTOCOL).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("opening: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no packet stream to the victim: {e}"),
            }
        }
    };
    let to_victim = victim.address();
    let mut bytes = Vec::new();
    // Spoofed: another participant's source.
    bytes.extend(frame(&packet(bystander.host(), to_victim, b"spoofed")));
    // Misdirected: for someone else (the victim would have to forward it).
    bytes.extend(frame(&packet(own.host(), bystander.host(), b"elsewhere")));
    // Outside the overlay.
    bytes.extend(frame(&packet(
        own.host(),
        "2001:db8::1".parse().unwrap(),
        b"out",
    )));
    // Malformed: IPv4, and a header length that lies.
    let mut v4 = packet(own.host(), to_victim, b"v4");
    v4[0] = 0x45;
    bytes.extend(frame(&v4));
    let mut lying = packet(own.host(), to_victim, b"lying");
    lying[5] = 200;
    bytes.extend(frame(&lying));
    // The one honest packet.
    let honest = packet(own.host(), to_victim, b"honest");
    bytes.extend(frame(&honest));
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();

    let got = tokio::time::timeout(Duration::from_secs(10), victim.from_overlay.recv())
        .await
        .expect("the honest packet arrives")
        .unwrap();
    assert_eq!(got, honest);
    let stats = &victim.stats;
    assert_eq!(
        stats.dropped_spoofed.load(Ordering::Relaxed),
        1,
        "{}",
        stats.summary()
    );
    assert_eq!(
        stats.dropped_not_ours.load(Ordering::Relaxed),
        2,
        "{}",
        stats.summary()
    );
    assert_eq!(
        stats.dropped_malformed.load(Ordering::Relaxed),
        2,
        "{}",
        stats.summary()
    );
    assert_eq!(stats.received.load(Ordering::Relaxed), 1);

    // An empty frame breaks the framing: the stream is dropped, nothing more is read from it.
    let mut broken = 0u16.to_be_bytes().to_vec();
    broken.extend(frame(&packet(own.host(), to_victim, b"after")));
    stream.write_all(&broken).await.unwrap();
    stream.flush().await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(2), victim.from_overlay.recv()).await;
    assert!(after.is_err(), "nothing is delivered after a broken frame");
    assert_eq!(
        stats.dropped_malformed.load(Ordering::Relaxed),
        3,
        "{}",
        stats.summary()
    );
    driver.abort();
}
