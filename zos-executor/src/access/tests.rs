//! The endpoint over real loopback connections, with a fixed table of contracts.
use super::logs::{parse_query, LogsQuery};
use super::*;
use tokio::io::AsyncReadExt;

#[test]
fn queries_parse_and_unknown_parameters_are_refused() {
    assert_eq!(
        parse_query(Some("workload=web&lines=20&follow=1")).unwrap(),
        LogsQuery {
            workload: Some("web".into()),
            lines: Some(20),
            follow: true
        }
    );
    assert_eq!(parse_query(None).unwrap(), LogsQuery::default());
    assert!(parse_query(Some("lines=x")).is_err());
    assert!(parse_query(Some("path=../../etc")).is_err());
}

#[test]
fn last_lines_keeps_the_end() {
    let text = "a\nb\nc\n";
    assert_eq!(last_lines(text, None), text);
    assert_eq!(last_lines(text, Some(2)), "b\nc\n");
    assert_eq!(last_lines(text, Some(3)), text);
    assert_eq!(last_lines(text, Some(9)), text);
    assert_eq!(last_lines(text, Some(0)), "");
    assert_eq!(last_lines("a\nb", Some(1)), "b");
}

struct Directory(HashMap<ContractId, (NodeId, Vec<[u8; 32]>)>);

#[async_trait::async_trait]
impl ContractDirectory for Directory {
    async fn node_and_signers(
        &self,
        contract: ContractId,
    ) -> Result<Option<(NodeId, Vec<[u8; 32]>)>> {
        Ok(self.0.get(&contract).cloned())
    }
}

/// An HTTP/1.1 GET over a fresh connection: status and body (read to the end, or for
/// `read_for` only).
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
    read_for: Option<Duration>,
) -> (u16, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    match read_for {
        None => {
            stream.read_to_end(&mut buf).await.unwrap();
        }
        Some(span) => {
            let _ = tokio::time::timeout(span, stream.read_to_end(&mut buf)).await;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    let (head, mut rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, rest.to_string());
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    (status, body)
}

fn signed(key: &subxt_signer::sr25519::Keypair, path: &str) -> String {
    access::authorization(key, "GET", path, unix_now())
}

#[tokio::test]
async fn only_a_signer_of_a_contract_on_this_node_reads_its_console_once_per_signature() {
    use subxt_signer::sr25519::dev;
    let tmp = tempfile::tempdir().unwrap();
    let contracts = tmp.path().join("contracts");
    for (contract, vm) in [(1, "web"), (2, "a"), (2, "b"), (6, "w")] {
        let dir = contracts.join(format!("{contract}/vms/{vm}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console.log"), format!("boot of {vm}\nready\n")).unwrap();
    }
    // A console replaced by a link to a host file (by a tenant's process sharing the VM's
    // directory) is not followed.
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    std::fs::create_dir_all(contracts.join("5/vms/x")).unwrap();
    std::os::unix::fs::symlink(&secret, contracts.join("5/vms/x/console.log")).unwrap();
    std::fs::create_dir_all(contracts.join("5/vms/y")).unwrap();
    std::fs::hard_link(&secret, contracts.join("5/vms/y/console.log")).unwrap();
    std::os::unix::fs::symlink(contracts.join("1/vms/web"), contracts.join("5/vms/z")).unwrap();
    let alice = dev::alice().public_key().0;
    let directory = Directory(HashMap::from([
        (5, (5, vec![alice])),
        (6, (5, vec![dev::charlie().public_key().0])),
        (1, (5, vec![alice])),
        (2, (5, vec![alice])),
        (3, (6, vec![alice])),
    ]));
    let access = Arc::new(Access::new(Arc::new(directory), 5, contracts.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = access.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let path = "/v1/contracts/1/logs";
    let header = signed(&dev::alice(), path);
    assert_eq!(
        get(addr, path, Some(&header), None).await,
        (200, "boot of web\nready\n".into())
    );
    let (status, body) = get(addr, path, Some(&header), None).await;
    assert_eq!((status, body.contains("replayed")), (401, true), "{body}");
    let (status, body) = get(addr, path, None, None).await;
    assert_eq!(
        (status, body.contains("no Authorization")),
        (401, true),
        "{body}"
    );
    let (status, body) = get(addr, path, Some(&signed(&dev::bob(), path)), None).await;
    assert_eq!(
        (status, body.contains("not a signer")),
        (403, true),
        "{body}"
    );
    // Signed for another path: the signature does not carry over.
    let other = "/v1/contracts/1/logs?lines=1";
    let (status, body) = get(addr, other, Some(&header), None).await;
    assert_eq!((status, body.contains("signature")), (401, true), "{body}");
    assert_eq!(
        get(addr, other, Some(&signed(&dev::alice(), other)), None).await,
        (200, "ready\n".into())
    );
    for linked in ["x", "y"] {
        let path = format!("/v1/contracts/5/logs?workload={linked}");
        assert_eq!(
            get(addr, &path, Some(&signed(&dev::alice(), &path)), None).await,
            (200, String::new()),
            "{linked}"
        );
    }
    for (path, want, says) in [
        ("/v1/contracts/3/logs", 404, "runs on node 6"),
        ("/v1/contracts/4/logs", 404, "does not exist"),
        ("/v1/contracts/2/logs", 400, "several VMs (a, b)"),
        ("/v1/contracts/2/logs?workload=c", 404, "no VM named \"c\""),
        ("/v1/contracts/2/logs?workload=..", 400, "workload names"),
        ("/v1/contracts/5/logs?workload=z", 404, "no VM named \"z\""),
    ] {
        let (status, body) = get(addr, path, Some(&signed(&dev::alice(), path)), None).await;
        assert_eq!(
            (status, body.contains(says)),
            (want, true),
            "{path}: {body}"
        );
    }

    // Following: what the guest prints later arrives on the open request, across a
    // rotation of the log (its last lines before the rename included).
    let follow = "/v1/contracts/2/logs?workload=b&follow=1&lines=0";
    let header = signed(&dev::alice(), follow);
    let log = contracts.join("2/vms/b/console.log");
    let writer = tokio::spawn(async move {
        use std::io::Write as _;
        let append = |text: &str| {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        append("later line\n");
        tokio::time::sleep(Duration::from_millis(600)).await;
        append("end of the old file\n");
        std::fs::rename(&log, zos_vm::console::RotatingLog::rotated_path(&log)).unwrap();
        std::fs::write(&log, "after rotation\n").unwrap();
    });
    let (status, body) = get(addr, follow, Some(&header), Some(Duration::from_secs(3))).await;
    writer.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "later line\nend of the old file\nafter rotation\n")
    );
    // A follower that went away gives its slot back (the server notices the closed
    // connection even while the console is quiet).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        access.following.lock().unwrap().is_empty(),
        "a closed follow stream still holds its slot"
    );
    // One signer follows at most a few consoles at once.
    let mut open = Vec::new();
    for _ in 0..MAX_FOLLOWERS_PER_SIGNER {
        let path = "/v1/contracts/6/logs?follow=1";
        let header = signed(&dev::charlie(), path);
        open.push(tokio::spawn(async move {
            get(addr, path, Some(&header), Some(Duration::from_secs(3))).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = "/v1/contracts/6/logs?follow=1";
    let (status, body) = get(addr, path, Some(&signed(&dev::charlie(), path)), None).await;
    assert_eq!(
        (status, body.contains("follows 4 consoles")),
        (429, true),
        "{body}"
    );
    for task in open {
        assert_eq!(task.await.unwrap().0, 200);
    }
}

#[test]
fn workload_names_cannot_leave_the_contract_directory() {
    assert!(is_workload_name("web-1_a"));
    for bad in ["", "..", "../x", "a/b", "Web", &"a".repeat(37)] {
        assert!(!is_workload_name(bad), "{bad}");
    }
}

/// The explorer reads consoles from a page of another origin: the preflight is answered and
/// every answer, a refusal too, may be read by any origin.
#[tokio::test]
async fn a_web_page_of_any_origin_may_ask() {
    use tokio::io::AsyncWriteExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let access = Arc::new(Access::new(
        Arc::new(Directory(HashMap::new())),
        1,
        tmp.path().into(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, access.router()).await });
    let raw = |request: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).to_ascii_lowercase()
    };
    let preflight = raw("OPTIONS /v1/contracts/1/logs HTTP/1.1\r\nHost: node\r\nOrigin: http://explorer\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n").await;
    for needle in [
        " 204 ",
        "access-control-allow-origin: *",
        "access-control-allow-headers: authorization",
        "access-control-allow-methods: get",
    ] {
        assert!(preflight.contains(needle), "{needle} in {preflight}");
    }
    let refused = raw("GET /v1/contracts/1/logs HTTP/1.1\r\nHost: node\r\nOrigin: http://explorer\r\nConnection: close\r\n\r\n").await;
    assert!(
        refused.contains(" 401 ") && refused.contains("access-control-allow-origin: *"),
        "{refused}"
    );
}

#[test]
fn the_guest_agent_port_has_one_name() {
    assert_eq!(zos_vm::AGENT_PORT_NAME, zos_guest_agent::PORT_NAME);
}

/// Agent sessions through the endpoint, with a stand-in agent on the VM's agent socket: the
/// upgrade, the relay both ways over one link, refusals, and a deployer who goes away.
#[tokio::test]
async fn agent_sessions_are_relayed_for_signers_only() {
    use subxt_signer::sr25519::dev;
    use tokio::io::AsyncWriteExt as _;
    use zos_guest_agent::{Frame, Kind, Request};
    let tmp = tempfile::tempdir().unwrap();
    let contracts = tmp.path().join("contracts");
    for vm in ["1/vms/web", "2/vms/silent"] {
        std::fs::create_dir_all(contracts.join(vm)).unwrap();
    }
    // The stand-in agent: acknowledges an exec with its pid, echoes input, exits 7 on
    // end of input; reports the signals it gets.
    let listener = tokio::net::UnixListener::bind(contracts.join("1/vms/web/agent.sock")).unwrap();
    let (signals_tx, mut signals) = tokio::sync::mpsc::unbounded_channel::<(u32, i32)>();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut r, w) = stream.into_split();
        let w = Arc::new(tokio::sync::Mutex::new(w));
        while let Ok(Some(f)) = agent::read_frame(&mut r).await {
            let reply = match f.kind {
                Kind::Open => Frame::new(f.session, Kind::Reply, br#"{"pid":42}"#.to_vec()),
                Kind::Stdin => Frame::new(f.session, Kind::Stdout, f.payload),
                Kind::StdinEof => Frame::exit(f.session, 7),
                Kind::Signal => {
                    let _ = signals_tx.send((f.session, f.int().unwrap()));
                    continue;
                }
                _ => continue,
            };
            agent::write_frame(&mut *w.lock().await, &reply)
                .await
                .unwrap();
        }
    });
    let alice = dev::alice().public_key().0;
    let directory = Directory(HashMap::from([
        (1, (5, vec![alice])),
        (2, (5, vec![alice])),
    ]));
    let access = Arc::new(Access::new(Arc::new(directory), 5, contracts.clone()));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let router = access.clone().router();
    tokio::spawn(async move { axum::serve(tcp, router).await });

    let path_of = |contract: u32, request: &Request| {
        format!(
            "/v1/contracts/{contract}/agent?request={}",
            hex::encode(serde_json::to_vec(request).unwrap())
        )
    };
    let cat = Request::Exec(zos_guest_agent::Exec {
        argv: vec!["cat".into()],
        tty: false,
        rows: 0,
        cols: 0,
        detach: false,
        quiet: false,
    });
    // Opens a session: the status, and the stream when upgraded.
    let open = |path: String, key: subxt_signer::sr25519::Keypair, upgrade: bool| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = signed(&key, &path);
        let upgrade = if upgrade {
            "Connection: Upgrade\r\nUpgrade: zos-agent/1\r\n"
        } else {
            ""
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: node\r\nAuthorization: {auth}\r\n{upgrade}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        (text[9..12].parse::<u16>().unwrap(), text, stream)
    };

    let (status, head, mut one) = open(path_of(1, &cat), dev::alice(), true).await;
    assert_eq!(status, 101, "{head}");
    let ack = agent::read_frame(&mut one).await.unwrap().unwrap();
    assert_eq!(
        (ack.kind, ack.payload.as_slice()),
        (Kind::Reply, &br#"{"pid":42}"#[..])
    );
    // A second session shares the link; each gets its own frames.
    let (status, _, mut two) = open(path_of(1, &cat), dev::alice(), true).await;
    assert_eq!(status, 101);
    agent::read_frame(&mut two).await.unwrap().unwrap();
    agent::write_frame(&mut one, &Frame::new(0, Kind::Stdin, b"to one".to_vec()))
        .await
        .unwrap();
    agent::write_frame(&mut two, &Frame::new(0, Kind::Stdin, b"to two".to_vec()))
        .await
        .unwrap();
    let echoed = agent::read_frame(&mut two).await.unwrap().unwrap();
    assert_eq!(
        (echoed.session, echoed.payload.as_slice()),
        (0, &b"to two"[..])
    );
    let echoed = agent::read_frame(&mut one).await.unwrap().unwrap();
    assert_eq!(echoed.payload, b"to one");
    agent::write_frame(&mut one, &Frame::new(0, Kind::StdinEof, vec![]))
        .await
        .unwrap();
    let exit = agent::read_frame(&mut one).await.unwrap().unwrap();
    assert_eq!((exit.kind, exit.int()), (Kind::Exit, Some(7)));
    // The deployer of the second session goes away: its process is killed.
    drop(two);
    let (_, signal) = tokio::time::timeout(Duration::from_secs(5), signals.recv())
        .await
        .expect("no kill for the abandoned session")
        .unwrap();
    assert_eq!(signal, libc::SIGKILL);

    // A request signed before the endpoint started (one captured before a node restart)
    // cannot be replayed after it, though its nonce is forgotten.
    let path = path_of(1, &cat);
    let before = access::authorization(&dev::alice(), "GET", &path, unix_now() - 30);
    let (status, body) = get(addr, &path, Some(&before), None).await;
    assert_eq!(
        (status, body.contains("sign it again")),
        (401, true),
        "{body}"
    );

    // Refusals: no upgrade, a stranger, a bad request, a VM without an agent.
    let (status, head, _) = open(path_of(1, &cat), dev::alice(), false).await;
    assert_eq!(status, 426, "{head}");
    let (status, _, _) = open(path_of(1, &cat), dev::bob(), true).await;
    assert_eq!(status, 403);
    let empty = Request::Exec(zos_guest_agent::Exec {
        argv: vec![],
        tty: false,
        rows: 0,
        cols: 0,
        detach: false,
        quiet: false,
    });
    let (status, _, _) = open(path_of(1, &empty), dev::alice(), true).await;
    assert_eq!(status, 400);
    let (status, head, _) = open(path_of(2, &Request::Ps), dev::alice(), true).await;
    assert_eq!(status, 502, "{head}");
}
