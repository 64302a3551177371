//! Certificates from a real ACME CA: Debian's `pebble` (the ACME test server) with
//! `pebble-challtestsrv` as its DNS, validating HTTP-01 against the gateway's plain HTTP
//! listener. A certificate is issued, served (curl verifies it against pebble's root), renewed
//! before expiry (pebble issues 10-minute certificates here) and kept across a restart; a name
//! whose DNS does not point at the gateway fails with the CA's reason and then backs off.
//! Needs root (namespaces) and pebble (scripts/setup-toolchain.sh installs it).

use std::{
    net::TcpListener as StdListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use zos_gateway::{AcmeSettings, CertManager, CertStore, Renewal, TlsMode};

mod support;
use support::*;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_issued_by_acme_served_and_renewed() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    for tool in ["pebble", "pebble-challtestsrv", "curl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: run scripts/setup-toolchain.sh"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let net = BackendNet::new("ac", 2);
    spawn_http_backend(net.listen(8080), "web");
    let gw = start_gateway(&dir.path().join("certs"), vec![]).await;
    let refused = gw.routes.replace(vec![
        route("app.gw.example.com", &net, 8080, TlsMode::Terminate),
        route("elsewhere.gw.example.com", &net, 8080, TlsMode::Terminate),
    ]);
    assert!(refused.is_empty());

    // The CA's DNS: every name at 127.0.0.1 (the gateway), one name elsewhere.
    let (dns_port, dns_admin) = (free_port(), free_port());
    let _dns = Killed(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_admin}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(dns_admin);
    curl(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{dns_admin}/add-a"),
        "-d",
        r#"{"host":"elsewhere.gw.example.com.","addresses":["127.0.0.2"]}"#,
    ]);

    // The CA, with its own HTTPS certificate from a test CA, validating HTTP-01 on the
    // gateway's plain HTTP port.
    let server_ca = TestCa::new("pebble server CA");
    let (chain, key) = server_ca.leaf(&["localhost", "127.0.0.1"]);
    let files = dir.path();
    std::fs::write(files.join("server-ca.pem"), server_ca.pem()).unwrap();
    std::fs::write(files.join("pebble-cert.pem"), chain).unwrap();
    std::fs::write(files.join("pebble-key.pem"), key).unwrap();
    let (acme_port, acme_admin) = (free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{acme_admin}"),
        "certificate": files.join("pebble-cert.pem"),
        "privateKey": files.join("pebble-key.pem"),
        "httpPort": gw.http.port(),
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": 600,
    }});
    std::fs::write(files.join("pebble.json"), config.to_string()).unwrap();
    let _ca = Killed(
        Command::new("pebble")
            .arg("-config")
            .arg(files.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(acme_port);
    wait_for_port(acme_admin);

    let mut settings = AcmeSettings::new(format!("https://127.0.0.1:{acme_port}/dir"));
    settings.server_root = Some(files.join("server-ca.pem"));
    settings.renew_before = Duration::from_secs(3600); // > 10 min: always due, to renew
    let manager = CertManager::new(
        settings,
        files,
        gw.certs.clone(),
        gw.routes.clone(),
        gw.challenges.clone(),
    );

    let started = Instant::now();
    let mut outcomes = manager.renew_due().await;
    eprintln!("first round in {:?}: {outcomes:?}", started.elapsed());
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(outcomes[0].0, "app.gw.example.com");
    assert_eq!(outcomes[0].1, Renewal::Issued);
    assert_eq!(outcomes[1].0, "elsewhere.gw.example.com");
    match &outcomes[1].1 {
        Renewal::Failed(reason) => assert!(reason.contains("127.0.0.2"), "{reason}"),
        other => panic!("a name pointing elsewhere was {other:?}"),
    }
    let first_expiry = gw.certs.not_after("app.gw.example.com").unwrap();

    // Served by the gateway and trusted through pebble's root.
    let root = curl(&[
        "--cacert",
        files.join("server-ca.pem").to_str().unwrap(),
        &format!("https://127.0.0.1:{acme_admin}/roots/0"),
    ]);
    std::fs::write(files.join("issuer-root.pem"), root).unwrap();
    let fetch = || {
        curl(&[
            "--cacert",
            files.join("issuer-root.pem").to_str().unwrap(),
            "--resolve",
            &format!("app.gw.example.com:{}:127.0.0.1", gw.https.port()),
            &format!("https://app.gw.example.com:{}/hello", gw.https.port()),
        ])
    };
    assert!(fetch().starts_with("web GET /hello host=app.gw.example.com"));

    // Due again (it expires within `renew_before`): renewed; the failed name waits its backoff.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut outcomes = manager.renew_due().await;
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        vec![
            ("app.gw.example.com".to_string(), Renewal::Issued),
            ("elsewhere.gw.example.com".to_string(), Renewal::BackingOff),
        ]
    );
    let renewed_expiry = gw.certs.not_after("app.gw.example.com").unwrap();
    assert!(
        renewed_expiry > first_expiry,
        "{renewed_expiry:?} after {first_expiry:?}"
    );
    assert!(fetch().starts_with("web GET /hello"));

    // Kept on disk, private: a restarted gateway serves it without a new order.
    let reopened = CertStore::open(&files.join("certs")).unwrap();
    assert_eq!(
        reopened.not_after("app.gw.example.com"),
        Some(renewed_expiry)
    );
    for file in ["certs/app.gw.example.com/key.pem", "acme-account.json"] {
        let mode =
            std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(files.join(file)).unwrap());
        assert_eq!(mode & 0o077, 0, "{file} is readable by others");
    }
}
