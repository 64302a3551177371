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

/// Debian's pebble-challtestsrv as the CA's DNS on free ports, every name at 127.0.0.1:
/// (process, DNS port, management port).
fn start_test_dns() -> (Killed, u16, u16) {
    let (dns_port, dns_admin) = (free_port(), free_port());
    let process = Killed(
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
    (process, dns_port, dns_admin)
}

/// Debian's pebble on free loopback ports, with its own HTTPS certificate from a test CA,
/// validating HTTP-01 on `http_port` and asking the name server on `dns_port`.
struct Pebble {
    _process: Killed,
    files: std::path::PathBuf,
    acme_port: u16,
    issuer_root: std::path::PathBuf,
}

impl Pebble {
    fn start(files: &std::path::Path, http_port: u16, dns_port: u16) -> Self {
        let server_ca = TestCa::new("pebble server CA");
        let (chain, key) = server_ca.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(files.join("server-ca.pem"), server_ca.pem()).unwrap();
        std::fs::write(files.join("pebble-cert.pem"), chain).unwrap();
        std::fs::write(files.join("pebble-key.pem"), key).unwrap();
        let (acme_port, acme_admin) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{acme_admin}"),
            "certificate": files.join("pebble-cert.pem"),
            "privateKey": files.join("pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": 600,
        }});
        std::fs::write(files.join("pebble.json"), config.to_string()).unwrap();
        let process = Killed(
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
        // The root that signs what pebble issues.
        let root = curl(&[
            "--cacert",
            files.join("server-ca.pem").to_str().unwrap(),
            &format!("https://127.0.0.1:{acme_admin}/roots/0"),
        ]);
        let issuer_root = files.join("issuer-root.pem");
        std::fs::write(&issuer_root, root).unwrap();
        Self {
            _process: process,
            files: files.to_path_buf(),
            acme_port,
            issuer_root,
        }
    }

    fn settings(&self) -> AcmeSettings {
        let mut settings = AcmeSettings::new(format!("https://127.0.0.1:{}/dir", self.acme_port));
        settings.server_root = Some(self.files.join("server-ca.pem"));
        settings
    }

    /// GET `path` on `host` through the gateway, verifying its certificate against pebble's
    /// issuing root.
    fn fetch_through(&self, gw: &TestGateway, host: &str, path: &str) -> String {
        let port = gw.https.port();
        curl(&[
            "--cacert",
            self.issuer_root.to_str().unwrap(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}{path}"),
        ])
    }
}

fn require_tools() {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_issued_by_acme_served_and_renewed() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    require_tools();
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
    let (_dns, dns_port, dns_admin) = start_test_dns();
    curl(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{dns_admin}/add-a"),
        "-d",
        r#"{"host":"elsewhere.gw.example.com.","addresses":["127.0.0.2"]}"#,
    ]);

    // The CA, validating HTTP-01 on the gateway's plain HTTP port.
    let files = dir.path();
    let pebble = Pebble::start(files, gw.http.port(), dns_port);

    let mut settings = pebble.settings();
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
    let fetch = || pebble.fetch_through(&gw, "app.gw.example.com", "/hello");
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

/// The gateway domain's own name server answers the CA: one wildcard certificate, proved over
/// DNS-01, serves every name under the domain, names added later included, without another
/// order; a name two labels down gets its own certificate over HTTP-01, resolved by the same
/// name server; the challenge's TXT record is gone once the order is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_domain_gets_one_wildcard_certificate_over_dns01() {
    use hickory_resolver::{
        config::{NameServerConfigGroup, ResolverConfig, ResolverOpts},
        TokioAsyncResolver,
    };
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let net = BackendNet::new("wc", 3);
    spawn_http_backend(net.listen(8080), "web");
    let gw = start_gateway(&dir.path().join("certs"), vec![]).await;
    let zone = zos_gateway::Zone::new(vec!["127.0.0.1".parse().unwrap()]);
    zone.set_domain("gw.example.test");
    let dns = zos_gateway::zone::serve(zone.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let files = dir.path();
    let pebble = Pebble::start(files, gw.http.port(), dns.port());

    let hosts = [
        "app.gw.example.test",
        "two.gw.example.test",
        "deep.a.gw.example.test",
    ];
    let refused = gw.routes.replace(
        hosts
            .iter()
            .map(|host| route(host, &net, 8080, TlsMode::Terminate))
            .collect(),
    );
    assert!(refused.is_empty());
    let mut settings = pebble.settings();
    settings.renew_before = Duration::from_secs(60); // 10-minute certificates: not due again
    let manager = CertManager::new(
        settings,
        files,
        gw.certs.clone(),
        gw.routes.clone(),
        gw.challenges.clone(),
    )
    .with_dns01(zone.clone());
    let started = Instant::now();
    let mut outcomes = manager.renew_due().await;
    eprintln!("first round in {:?}: {outcomes:?}", started.elapsed());
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        vec![
            ("*.gw.example.test".to_string(), Renewal::Issued),
            ("deep.a.gw.example.test".to_string(), Renewal::Issued),
        ]
    );
    for host in hosts {
        let page = pebble.fetch_through(&gw, host, "/hi");
        assert!(
            page.starts_with(&format!("web GET /hi host={host}")),
            "{page}"
        );
    }
    // A name added later is served by the wildcard at once: no order.
    let mut later: Vec<_> = hosts
        .iter()
        .map(|host| route(host, &net, 8080, TlsMode::Terminate))
        .collect();
    later.push(route(
        "later.gw.example.test",
        &net,
        8080,
        TlsMode::Terminate,
    ));
    assert!(gw.routes.replace(later).is_empty());
    assert_eq!(manager.renew_due().await, vec![]);
    assert!(pebble
        .fetch_through(&gw, "later.gw.example.test", "/")
        .starts_with("web GET / host=later.gw.example.test"));

    // Over real DNS: names in the zone are the gateway, the proof is gone, others refused.
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    let servers = NameServerConfigGroup::from_ips_clear(&[dns.ip()], dns.port(), true);
    let resolver =
        TokioAsyncResolver::tokio(ResolverConfig::from_parts(None, vec![], servers), options);
    let found = resolver
        .ipv4_lookup("anything.gw.example.test.")
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![std::net::Ipv4Addr::LOCALHOST]
    );
    assert!(resolver
        .txt_lookup("_acme-challenge.gw.example.test.")
        .await
        .is_err());
    assert!(resolver.ipv4_lookup("example.org.").await.is_err());
    let stored = std::fs::metadata(files.join("certs/_wildcard.gw.example.test/key.pem")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&stored) & 0o077, 0);
}

/// A wildcard that cannot be proved (the CA's DNS is not the node's name server: the domain is
/// not delegated) does not leave the names under it without certificates: they get their own
/// over HTTP-01 while the wildcard backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_fall_back_to_their_own_certificates_while_the_wildcard_fails() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let net = BackendNet::new("fb", 4);
    spawn_http_backend(net.listen(8080), "web");
    let gw = start_gateway(&dir.path().join("certs"), vec![]).await;
    let zone = zos_gateway::Zone::new(vec!["127.0.0.1".parse().unwrap()]);
    zone.set_domain("gw.example.test");
    // The CA asks pebble's own DNS (every name at 127.0.0.1, no TXT of ours).
    let (_dns, dns_port, _) = start_test_dns();
    let files = dir.path();
    let pebble = Pebble::start(files, gw.http.port(), dns_port);
    assert!(gw
        .routes
        .replace(vec![route(
            "app.gw.example.test",
            &net,
            8080,
            TlsMode::Terminate
        )])
        .is_empty());
    let mut settings = pebble.settings();
    settings.renew_before = Duration::from_secs(60);
    let manager = CertManager::new(
        settings,
        files,
        gw.certs.clone(),
        gw.routes.clone(),
        gw.challenges.clone(),
    )
    .with_dns01(zone);
    let first = manager.renew_due().await;
    assert!(
        matches!(first.as_slice(), [(name, Renewal::Failed(_))] if name == "*.gw.example.test"),
        "{first:?}"
    );
    let mut second = manager.renew_due().await;
    second.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        second,
        vec![
            ("*.gw.example.test".to_string(), Renewal::BackingOff),
            ("app.gw.example.test".to_string(), Renewal::Issued),
        ]
    );
    assert!(pebble
        .fetch_through(&gw, "app.gw.example.test", "/")
        .starts_with("web GET / host=app.gw.example.test"));
}
