//! The boot service over real HTTP: scripts, artefacts, published releases, and bad requests.

use std::{path::Path, time::Duration};

use zos_boot::{publish, BootConfig, ReleaseInput};
use zos_release::{manifest, Runmode, Service, SigningKey};

fn serve(dir: &Path) -> String {
    let cfg = BootConfig {
        dir: dir.to_path_buf(),
        public_url: "http://boot.example:8088/".into(),
        chain: "wss://rpc.example".into(),
        hub: "https://hub.example".into(),
        kernel_args: "console=ttyS0".into(),
        hub_bytes_served: Default::default(),
    };
    let addr = zos_boot::spawn_background("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    format!("http://{addr}")
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let response = match ureq::get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    (status, body)
}

#[test]
fn the_boot_service_serves_a_farms_script_its_artefacts_and_the_signed_release() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kernel"), b"a kernel").unwrap();
    std::fs::write(dir.path().join("initramfs"), b"an initramfs").unwrap();
    let url = serve(dir.path());

    let (status, script) = get(&format!("{url}/ipxe/test/42"));
    assert_eq!(status, 200);
    let script = String::from_utf8(script).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let kernel_line = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        kernel_line.starts_with("kernel http://boot.example:8088/kernel initrd=initramfs "),
        "{kernel_line}"
    );
    // The command line core-0 will read describes exactly this farm.
    let params = zos_release::BootParams::parse(kernel_line).unwrap();
    assert_eq!((params.farm, params.runmode), (42, Runmode::Test));
    assert_eq!(params.boot, "http://boot.example:8088");
    assert!(script.contains("initrd --name initramfs http://boot.example:8088/initramfs\n"));

    assert_eq!(get(&format!("{url}/kernel")), (200, b"a kernel".to_vec()));
    // Nothing published yet.
    assert_eq!(get(&format!("{url}/release/test/manifest.json")).0, 404);

    let key = SigningKey::from_bytes(&[4; 32]);
    let input = ReleaseInput {
        runmode: Runmode::Test,
        version: "3.1.4".parse().unwrap(),
        image_root: "f".repeat(64),
        artifacts: vec![
            ("kernel".into(), dir.path().join("kernel")),
            ("initramfs".into(), dir.path().join("initramfs")),
        ],
        services: vec![Service {
            name: "executor".into(),
            exec: vec!["/usr/bin/zos-executor".into()],
        }],
    };
    publish(dir.path(), &input, &key).unwrap();
    let (_, json) = get(&format!("{url}/release/test/manifest.json"));
    let (_, sig) = get(&format!("{url}/release/test/manifest.sig"));
    let m = manifest::verify(&json, Some(&sig), &key.verifying_key(), Runmode::Test, None).unwrap();
    assert_eq!(m.version.to_string(), "3.1.4");
    m.check_artifact("kernel", b"a kernel").unwrap();
    // The same release under its version, for nodes the chain pointed at it.
    assert_eq!(
        get(&format!("{url}/release/test/3.1.4/manifest.json")).1,
        json
    );
    assert_eq!(
        get(&format!("{url}/release/test/3.1.4/manifest.sig")).1,
        sig
    );
    assert_eq!(
        get(&format!("{url}/release/test/3.1.5/manifest.json")).0,
        404
    );
    m.check_artifact("initramfs", b"an initramfs").unwrap();
    // Publishing refuses what a node would refuse.
    let mut bad = input;
    bad.image_root = "not a hash".into();
    assert!(publish(dir.path(), &bad, &key).is_err());
}

#[test]
fn bad_requests_get_clear_errors_and_no_files_outside_the_published_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.key"), b"never served").unwrap();
    let url = serve(dir.path());
    let (status, body) = get(&format!("{url}/ipxe/prod/1"));
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not one of dev, test, main"));
    for farm in ["x", "-1", "4294967296", "1%20console=tty0"] {
        assert_eq!(get(&format!("{url}/ipxe/dev/{farm}")).0, 400, "farm {farm}");
    }
    assert_eq!(get(&format!("{url}/release/dev/secret.key")).0, 404);
    assert_eq!(get(&format!("{url}/release/dev/1.0/manifest.json")).0, 400);
    assert_eq!(
        get(&format!("{url}/release/dev/..%2f..%2f/secret.key")).0,
        400
    );
    assert_eq!(
        get(&format!("{url}/release/dev/..%2f..%2fsecret.key")).0,
        404
    );
    assert_eq!(get(&format!("{url}/secret.key")).0, 404);
    assert_eq!(get(&format!("{url}/kernel")).0, 404);
}

#[test]
fn the_os_store_is_served_read_only_under_hub() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(zos_boot::serve::OS_STORE);
    let root = "ab".repeat(32);
    std::fs::create_dir_all(store.join("images")).unwrap();
    std::fs::create_dir_all(store.join("chunks")).unwrap();
    std::fs::write(
        store.join("images").join(format!("{root}.idx")),
        b"not really an index",
    )
    .unwrap();
    let url = serve(dir.path());
    let (status, body) = get(&format!("{url}/hub/v1/images/{root}.idx"));
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"not really an index"[..])
    );
    assert_eq!(
        get(&format!("{url}/hub/v1/images/{}.idx", "cd".repeat(32))).0,
        404
    );
    assert_eq!(get(&format!("{url}/hub/v1/images/..%2f..%2fkernel")).0, 404);
    // No uploads, whatever the token.
    let put = ureq::put(&format!("{url}/hub/v1/images/{}.idx", "cd".repeat(32)))
        .set("authorization", "Bearer ")
        .send_bytes(b"x");
    match put {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 405),
        other => panic!("an upload was not refused: {other:?}"),
    }
    assert!(!store
        .join("images")
        .join(format!("{}.idx", "cd".repeat(32)))
        .exists());
}

#[test]
fn pruning_keeps_the_current_and_newest_releases_whole_and_frees_the_rest() {
    use std::sync::Arc;
    use zos_image::store::{DirStore, Store};

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(DirStore::open(dir.path().join(zos_boot::serve::OS_STORE)).unwrap());
    // Each release's OS image: a file every release shares and one of its own.
    let shared: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let pack = |own: u8| {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("shared"), &shared).unwrap();
        let mine: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8 ^ own)
            .collect();
        std::fs::write(src.path().join("own"), mine).unwrap();
        let opts = zos_image::pack::PackOptions {
            threads: 1,
            show_progress: false,
        };
        zos_image::pack::pack_dir(src.path(), store.clone(), None, &opts)
            .unwrap()
            .root
    };
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut roots = Vec::new();
    let mut release = |runmode: Runmode, version: &str, own: u8| {
        let root = pack(own);
        let input = ReleaseInput {
            runmode,
            version: version.parse().unwrap(),
            image_root: root.to_string(),
            artifacts: vec![],
            services: vec![],
        };
        publish(dir.path(), &input, &key).unwrap();
        roots.push((runmode, version.to_string(), root));
    };
    for (i, v) in ["1.0.0", "1.0.1", "1.0.2", "1.0.3"].iter().enumerate() {
        release(Runmode::Test, v, i as u8 + 1);
    }
    release(Runmode::Dev, "0.9.0", 9);
    let store_dir = DirStore::open(dir.path().join(zos_boot::serve::OS_STORE)).unwrap();
    let chunks_before = store_dir.list_chunks().unwrap().len();

    // Keeping nothing is refused.
    assert!(zos_boot::prune::prune(dir.path(), 0, &[], Duration::ZERO).is_err());
    // 1.0.0 is what the chain set: kept whatever its age.
    let chain_set = [(Runmode::Test, "1.0.0".parse().unwrap())];
    let report = zos_boot::prune::prune(dir.path(), 2, &chain_set, Duration::ZERO).unwrap();
    let names = |l: &[(Runmode, zos_release::Version)]| {
        l.iter()
            .map(|(r, v)| format!("{} {v}", r.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&report.releases_removed), ["test 1.0.1"]);
    assert_eq!(
        names(&report.releases_kept),
        ["dev 0.9.0", "test 1.0.3", "test 1.0.2", "test 1.0.0"]
    );
    assert_eq!(report.store.images_removed, 1);
    assert!(report.store.chunks_removed > 0);
    assert_eq!(
        store_dir.list_chunks().unwrap().len(),
        chunks_before - report.store.chunks_removed
    );
    let release_dir = zos_boot::publish::release_dir(dir.path(), Runmode::Test);
    assert!(!release_dir.join("1.0.1").exists() && release_dir.join("1.0.2").exists());
    assert!(release_dir.join("manifest.json").exists());
    for (runmode, version, root) in &roots {
        let whole = zos_image::verify::verify_image(
            std::slice::from_ref(&store),
            root,
            &Default::default(),
            false,
        )
        .is_ok();
        let kept = *runmode == Runmode::Dev || version.as_str() != "1.0.1";
        assert_eq!(whole, kept, "{} {version}", runmode.as_str());
    }
    // A kept release whose image is not whole stops the prune before anything is removed.
    std::fs::remove_file(
        dir.path()
            .join(zos_boot::serve::OS_STORE)
            .join(format!("images/{}.idx", roots[4].2)),
    )
    .unwrap();
    assert!(zos_boot::prune::prune(dir.path(), 1, &[], Duration::ZERO).is_err());
    assert!(release_dir.join("1.0.2").exists());
}
