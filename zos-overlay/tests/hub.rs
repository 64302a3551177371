//! The distributed hub with real participants on loopback and a real hub over HTTP: an image
//! that only one peer holds arrives whole, signature checked, while the hub is unreachable; a
//! peer that serves wrong bytes is refused and never asked again.

mod common;

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use common::{dial_address, participant};
use zos_image::{
    hub,
    image::Trust,
    pack::{pack_dir, PackOptions},
    sign,
    store::{open_store, DirStore, Object, Store},
    transfer::copy_image,
};
use zos_overlay::objects::PeerStore;

/// The image's large file: enough chunks (about 300 KB each) for a throughput figure.
const IMAGE_BYTES: usize = 64 << 20;

/// Deterministic, incompressible bytes (BLAKE3's extendable output).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_only_one_peer_holds_arrives_with_the_hub_stopped_and_a_liar_is_ignored() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = tmp.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };

    // A signed image of several chunks, on a real hub.
    let src = dir("src");
    std::fs::write(src.join("big"), bytes(IMAGE_BYTES, 1)).unwrap();
    std::fs::write(src.join("small"), b"hello from a peer").unwrap();
    let key = sign::generate().unwrap();
    let hub_dir = dir("hub");
    let hub_store: Arc<dyn Store> = Arc::new(DirStore::open(&hub_dir).unwrap());
    let root = pack_dir(&src, hub_store, Some(&key), &PackOptions::default())
        .unwrap()
        .root;
    let hub_url = format!(
        "http://{}",
        hub::spawn_background(
            "127.0.0.1:0".parse().unwrap(),
            DirStore::open(&hub_dir).unwrap(),
            "token-0123456789abcdef".into()
        )
        .unwrap()
    );
    let chunks = DirStore::open(&hub_dir).unwrap().list_chunks().unwrap();
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let trust = Trust {
        keys: vec![key.verifying_key()],
    };

    // C lies: it announces the image's first chunk and serves other bytes under its name.
    let liar_store = DirStore::open(dir("c")).unwrap();
    liar_store
        .put(
            Object::Chunk(chunks[0]),
            &zos_image::chunk::encode_object(b"not it"),
        )
        .unwrap();
    let a_store = Arc::new(DirStore::open(dir("a")).unwrap());
    let b_store = Arc::new(DirStore::open(dir("b")).unwrap());
    let a = participant(vec![], Some(a_store.clone())).await;
    let a_addr = dial_address(&a).await;
    let b = participant(vec![a_addr.clone()], Some(b_store.clone())).await;
    let _c = participant(vec![a_addr], Some(Arc::new(liar_store))).await;

    let runtime = tokio::runtime::Handle::current();
    // B's hub is stopped (nothing listens there): only peers can help it.
    let b_peers = Arc::new(PeerStore::new(
        (*b_store).clone(),
        b.objects(),
        vec![open_store("http://127.0.0.1:1", None).unwrap()],
        trust.keys.clone(),
        runtime.clone(),
    ));
    let a_peers = Arc::new(PeerStore::new(
        (*a_store).clone(),
        a.objects(),
        vec![open_store(&hub_url, None).unwrap()],
        trust.keys.clone(),
        runtime.clone(),
    ));

    // Only the liar has the first chunk: B refuses its bytes and has nothing.
    let first = chunks[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let store = b_peers.clone();
        let got = blocking(move || store.get(Object::Chunk(first))).await;
        assert!(
            matches!(got, Ok(None)),
            "wrong bytes were accepted: {got:?}"
        );
        if b_peers.stats.rejected_from_peers.load(Ordering::Relaxed) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the liar's announcement never reached B"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(b_peers.distrusted(), vec![_c.peer_id]);

    // A fetches the image from the hub, keeps it and announces it.
    let sink_a = DirStore::open(dir("sink-a")).unwrap();
    let (store, t) = (a_peers.clone(), trust.clone());
    let report = blocking(move || {
        let sources: Vec<Arc<dyn Store>> = vec![store];
        copy_image(&sources, &sink_a, &root, &t, false)
    })
    .await
    .unwrap();
    assert_eq!(report.chunks as usize, chunks.len());
    assert_eq!(a_peers.stats.from_peers.load(Ordering::Relaxed), 0);
    assert!(a_peers.stats.from_hubs.load(Ordering::Relaxed) >= chunks.len() as u64);

    // B gets all of it from A, the hub still unreachable: index, signature (checked against
    // the trusted key) and every chunk, each checked against its name.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (store, t) = (b_peers.clone(), trust.clone());
        let sink_b = DirStore::open(dir("sink-b")).unwrap();
        match blocking(move || {
            let sources: Vec<Arc<dyn Store>> = vec![store];
            copy_image(&sources, &sink_b, &root, &t, false)
        })
        .await
        {
            Ok(report) => break report,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("B never got the image from A: {e}"),
        }
    };
    assert_eq!(report.chunks as usize, chunks.len());
    let stats = &b_peers.stats;
    assert_eq!(stats.from_hubs.load(Ordering::Relaxed), 0);
    assert!(stats.from_peers.load(Ordering::Relaxed) >= chunks.len() as u64 + 2);
    assert_eq!(
        stats.rejected_from_peers.load(Ordering::Relaxed),
        1,
        "the liar is never asked again"
    );
    let sink_b = DirStore::open(tmp.path().join("sink-b")).unwrap();
    assert_eq!(sink_b.list_chunks().unwrap(), chunks);

    // Throughput of the sources, through the same client path, three rounds alternating: a
    // newcomer copies the image through its PeerStore from peers (A and B hold it; its hub
    // unreachable), another through its PeerStore from the hub (no peers to ask). Both keep
    // what they fetch, as a node does; a plain copy from the hub (nothing kept) is printed too.
    let timed = |sources: Vec<Arc<dyn Store>>, sink: String| {
        let (t, sink) = (trust.clone(), DirStore::open(dir(&sink)).unwrap());
        async move {
            blocking(move || {
                let start = Instant::now();
                copy_image(&sources, &sink, &root, &t, false).map(|_| start.elapsed())
            })
            .await
        }
    };
    let (mut from_peers, mut from_hub, mut plain_hub) = (vec![], vec![], vec![]);
    for round in 0..3 {
        let d = participant(vec![dial_address(&a).await], None).await;
        let d_peers = Arc::new(PeerStore::new(
            DirStore::open(dir(&format!("d{round}"))).unwrap(),
            d.objects(),
            vec![open_store("http://127.0.0.1:1", None).unwrap()],
            trust.keys.clone(),
            runtime.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        from_peers.push(loop {
            match timed(vec![d_peers.clone()], format!("sink-d{round}")).await {
                Ok(took) => break took,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("the newcomer never got the image from peers: {e}"),
            }
        });
        assert_eq!(d_peers.stats.from_hubs.load(Ordering::Relaxed), 0);

        let e = participant(vec![], None).await;
        let e_hub = Arc::new(PeerStore::new(
            DirStore::open(dir(&format!("e{round}"))).unwrap(),
            e.objects(),
            vec![open_store(&hub_url, None).unwrap()],
            trust.keys.clone(),
            runtime.clone(),
        ));
        from_hub.push(
            timed(vec![e_hub.clone()], format!("sink-e{round}"))
                .await
                .unwrap(),
        );
        assert_eq!(e_hub.stats.from_peers.load(Ordering::Relaxed), 0);
        assert!(e_hub.stats.from_hubs.load(Ordering::Relaxed) >= chunks.len() as u64);
        let hub_only = vec![open_store(&hub_url, None).unwrap()];
        plain_hub.push(timed(hub_only, format!("sink-plain{round}")).await.unwrap());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (from_peers, from_hub, plain_hub) =
        (median(from_peers), median(from_hub), median(plain_hub));
    let mib = (IMAGE_BYTES >> 20) as f64;
    let rate = |took: Duration| mib / took.as_secs_f64();
    eprintln!(
        "{mib} MiB image in {} chunks, kept by the newcomer (median of 3): from peers {:.0} ms ({:.0} MiB/s), from the hub {:.0} ms ({:.0} MiB/s): peers at {:.0}% of the hub; plain copy from the hub (nothing kept) {:.0} ms ({:.0} MiB/s)",
        chunks.len(),
        from_peers.as_secs_f64() * 1e3,
        rate(from_peers),
        from_hub.as_secs_f64() * 1e3,
        rate(from_hub),
        100.0 * from_hub.as_secs_f64() / from_peers.as_secs_f64(),
        plain_hub.as_secs_f64() * 1e3,
        rate(plain_hub),
    );
}
