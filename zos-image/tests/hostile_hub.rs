//! A hub is untrusted. A loopback "hub" that lies about sizes, streams without end, hangs or
//! serves garbage must cost a client bounded memory and bounded time, and must never stop it
//! from getting the right bytes from an honest store.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_image::chunk::{encode_chunk, max_stored_len};
use zos_image::error::Error;
use zos_image::fetch::Fetcher;
use zos_image::store::{DirStore, HttpStore, Object, Store};

/// How the hostile hub answers every GET.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Declares a 10 GB body, then streams zeros for as long as the client reads.
    HugeDeclared,
    /// Declares no length and streams zeros until the client goes away.
    Endless,
    /// Reads the request and never answers.
    Hang,
    /// Answers with this many random bytes (of a plausible length, wrong content).
    Garbage(usize),
}

struct HostileHub {
    url: String,
    /// Body bytes the hub managed to write before the client stopped reading.
    written: Arc<AtomicU64>,
}

fn start_hostile_hub(behaviour: Behaviour) -> HostileHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let counter = counter.clone();
            std::thread::spawn(move || serve(stream, behaviour, &counter));
        }
    });
    HostileHub { url, written }
}

fn serve(mut stream: TcpStream, behaviour: Behaviour, written: &AtomicU64) {
    // Consume the request head.
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" {
            break;
        }
        line.clear();
    }
    let zeros = vec![0u8; 64 << 10];
    let stream_forever = |stream: &mut TcpStream| {
        // Bounded so a broken client cannot make the test itself run forever.
        for _ in 0..(1 << 16) {
            if stream.write_all(&zeros).is_err() {
                return;
            }
            written.fetch_add(zeros.len() as u64, Ordering::Relaxed);
        }
    };
    match behaviour {
        Behaviour::HugeDeclared => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n");
            stream_forever(&mut stream);
        }
        Behaviour::Endless => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            stream_forever(&mut stream);
        }
        Behaviour::Hang => std::thread::sleep(Duration::from_secs(120)),
        Behaviour::Garbage(len) => {
            let body: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    }
}

fn chunk_of(len: usize) -> zos_image::chunk::EncodedChunk {
    let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
    encode_chunk(&plain)
}

#[test]
fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let hub = start_hostile_hub(Behaviour::HugeDeclared);
    let chunk = chunk_of(4096);
    let store = HttpStore::new(&hub.url, None);
    let limit = max_stored_len(chunk.info.raw_len);
    match store.get_at_most(Object::Chunk(chunk.info.hash), limit) {
        Err(Error::ObjectTooLarge { limit: l, .. }) => assert_eq!(l, limit),
        other => panic!("expected ObjectTooLarge, got {other:?}"),
    }
}

#[test]
fn an_endless_body_is_cut_at_the_limit() {
    let hub = start_hostile_hub(Behaviour::Endless);
    let chunk = chunk_of(4096);
    let store = HttpStore::new(&hub.url, None);
    let started = Instant::now();
    match store.get_at_most(
        Object::Chunk(chunk.info.hash),
        max_stored_len(chunk.info.raw_len),
    ) {
        Err(Error::ObjectTooLarge { .. }) => {}
        other => panic!("expected ObjectTooLarge, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // Also for an index: bounded by the limit, not by what is sent (the hub would stream
    // 4 GiB); the hub could push little more than the limit plus socket buffers.
    let limit = 8 << 20;
    match store.get_at_most(Object::Index(chunk.info.hash), limit) {
        Err(Error::ObjectTooLarge { limit: l, .. }) => assert_eq!(l, limit),
        other => panic!("expected ObjectTooLarge, got {other:?}"),
    }
    let written = hub.written.load(Ordering::Relaxed);
    assert!(written < limit + (64 << 20), "{written} bytes");
    // Every kind has such a bound by default.
    assert_eq!(
        Object::Index(chunk.info.hash).max_len(),
        zos_image::store::MAX_INDEX_LEN
    );
    assert_eq!(
        Object::Chunk(chunk.info.hash).max_len(),
        1 + u64::from(zos_image::format::MAX_CHUNK_LEN)
    );
}

#[test]
fn a_hub_that_hangs_holds_a_fetch_only_until_the_request_timeout() {
    let hub = start_hostile_hub(Behaviour::Hang);
    let chunk = chunk_of(4096);
    let store = HttpStore::with_timeout(&hub.url, None, Duration::from_secs(2));
    let started = Instant::now();
    let result = store.get(Object::Chunk(chunk.info.hash));
    assert!(result.is_err(), "a hanging hub produced {result:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "held for {took:?}");
}

#[test]
fn garbage_from_one_hub_is_rejected_and_the_honest_store_serves_the_chunk() {
    let chunk = chunk_of(8192);
    let hub = start_hostile_hub(Behaviour::Garbage(chunk.object.len()));
    let dir = tempfile::tempdir().unwrap();
    let honest = DirStore::open(dir.path()).unwrap();
    honest
        .put(Object::Chunk(chunk.info.hash), &chunk.object)
        .unwrap();
    // The fetcher starts at the source chosen by the hash's first byte: make that the hostile one.
    let hostile: Arc<dyn Store> = Arc::new(HttpStore::new(&hub.url, None));
    let honest: Arc<dyn Store> = Arc::new(honest);
    let sources = if chunk.info.hash.0[0] % 2 == 0 {
        vec![hostile, honest]
    } else {
        vec![honest, hostile]
    };
    let fetcher = Fetcher::new(sources, None);
    let plain = fetcher.get(&chunk.info).unwrap();
    assert_eq!(zos_image::Hash::of(&plain), chunk.info.hash);
    assert!(fetcher.stats.rejected.load(Ordering::Relaxed) >= 1);

    // Alone, the hostile hub yields a typed corruption error, never bytes.
    let lone = Fetcher::new(vec![Arc::new(HttpStore::new(&hub.url, None))], None);
    match lone.get(&chunk.info) {
        Err(Error::ChunkCorrupt { hash, .. }) => assert_eq!(hash, chunk.info.hash),
        other => panic!("expected ChunkCorrupt, got {other:?}"),
    }
}
