//! Hub end to end on loopback: push with a token, refusals, pull with signature check, lazy
//! mount straight from the hub.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use zos_image::chunk::encode_object;
use zos_image::error::Error;
use zos_image::fetch::Fetcher;
use zos_image::hub;
use zos_image::image::{open_image, Trust};
use zos_image::pack::{pack_dir, PackOptions};
use zos_image::store::{DirStore, HttpStore, Object, Store};
use zos_image::{sign, transfer, unpack, verify, Hash};

const TOKEN: &str = "test-token-0123456789abcdef";

fn start_hub(dir: &std::path::Path) -> String {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = hub::spawn_background(addr, DirStore::open(dir).unwrap(), TOKEN.into()).unwrap();
    assert!(bound.ip().is_loopback());
    format!("http://{bound}")
}

#[test]
fn hub_end_to_end_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let key = sign::generate().unwrap();
    let local: Arc<dyn Store> = Arc::new(DirStore::open(tmp.path().join("local")).unwrap());
    let root = pack_dir(&src, local.clone(), Some(&key), &PackOptions::default())
        .unwrap()
        .root;
    let url = start_hub(&tmp.path().join("hub"));

    // Without the token nothing can be uploaded.
    let anonymous = HttpStore::new(&url, None);
    let err = transfer::copy_image(
        std::slice::from_ref(&local),
        &anonymous,
        &root,
        &Trust::default(),
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let wrong = HttpStore::new(&url, Some("wrong-token-0123456789".into()));
    assert!(wrong
        .put(Object::Chunk(Hash::of(b"x")), &encode_object(b"x"))
        .is_err());

    // With the token: everything arrives; a second push uploads nothing.
    let hub_store = HttpStore::new(&url, Some(TOKEN.into()));
    let first = transfer::copy_image(
        std::slice::from_ref(&local),
        &hub_store,
        &root,
        &Trust::default(),
        false,
    )
    .unwrap();
    assert_eq!(first.copied_chunks, first.chunks);
    let again = transfer::copy_image(
        std::slice::from_ref(&local),
        &hub_store,
        &root,
        &Trust::default(),
        false,
    )
    .unwrap();
    assert_eq!(again.copied_chunks, 0);

    // The hub checks content against names even for token holders.
    let lie = hub_store.put(
        Object::Chunk(Hash::of(b"claimed")),
        &encode_object(b"actual"),
    );
    assert!(matches!(lie, Err(Error::Store { .. })), "{lie:?}");
    assert!(hub_store
        .put(Object::Index(Hash::of(b"zz")), b"not an index")
        .is_err());

    // Pull with signature enforcement, then verify the local copy.
    let remote: Vec<Arc<dyn Store>> = vec![Arc::new(HttpStore::new(&url, None))];
    let trust = Trust {
        keys: vec![key.verifying_key()],
    };
    let pulled_dir = tmp.path().join("pulled");
    let pulled = DirStore::open(&pulled_dir).unwrap();
    transfer::copy_image(&remote, &pulled, &root, &trust, false).unwrap();
    let pulled_sources: Vec<Arc<dyn Store>> = vec![Arc::new(DirStore::open(&pulled_dir).unwrap())];
    let report = verify::verify_image(&pulled_sources, &root, &trust, false).unwrap();
    assert!(report.signed);
    let other = sign::generate().unwrap();
    assert!(open_image(
        &remote,
        &root,
        &Trust {
            keys: vec![other.verifying_key()]
        }
    )
    .is_err());

    // Unpack straight from the hub: byte-identical tree.
    let image = open_image(&remote, &root, &trust).unwrap();
    let out = tmp.path().join("out");
    unpack::unpack(
        &image.index,
        &Fetcher::new(remote.clone(), None),
        &out,
        false,
    )
    .unwrap();
    assert_same_tree(&src, &out);

    // An unreachable replica first, the hub second: fetches fall through to the hub.
    let dead: Arc<dyn Store> = Arc::new(HttpStore::new("http://127.0.0.1:9", None));
    let fetcher = Fetcher::new(vec![dead, remote[0].clone()], None);
    let info = image.index.chunk(0).unwrap();
    assert_eq!(Hash::of(&fetcher.fetch_remote(&info).unwrap()), info.hash);

    // CLI pull from the hub.
    let cli_dest = tmp.path().join("cli-pulled");
    let out = std::process::Command::new(bin())
        .args(["pull", &root.to_string(), "--store", &url, "--to"])
        .arg(&cli_dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read(cli_dest.join(format!("images/{root}.idx"))).is_ok());
}

#[test]
fn lazy_mount_from_hub_fetches_only_what_is_read() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small"), b"tiny").unwrap();
    fs::write(src.join("large"), random_bytes(20 << 20, 3)).unwrap();
    let hub_dir = tmp.path().join("hub");
    let hub_store: Arc<dyn Store> = Arc::new(DirStore::open(&hub_dir).unwrap());
    let root = pack_dir(&src, hub_store, None, &PackOptions::default())
        .unwrap()
        .root;
    let url = start_hub(&hub_dir);
    let remote: Vec<Arc<dyn Store>> = vec![Arc::new(HttpStore::new(&url, None))];
    let image = open_image(&remote, &root, &Trust::default()).unwrap();
    let fetcher = Arc::new(Fetcher::new(remote, None));
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let opts = zos_image::mount::MountOptions {
        readahead_chunks: 0,
        ..Default::default()
    };
    let handle = zos_image::mount::mount(image.index, fetcher.clone(), &mnt, &opts).unwrap();
    assert_eq!(fs::read(mnt.join("small")).unwrap(), b"tiny");
    let fetched = fetcher
        .stats
        .fetched_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fetched < 1 << 20,
        "reading a 4-byte file fetched {fetched} bytes"
    );
    assert_eq!(fs::metadata(mnt.join("large")).unwrap().len(), 20 << 20);
    handle.unmount().unwrap();
}
