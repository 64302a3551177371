//! The real executor binary, a real chain node and a real guest: a 2-of-2 contract with a Vm
//! (a busybox image packed with zos-image, served by a loopback hub) and a Disk mounted at
//! /data boots a guest whose console shows the spec's env and entrypoint output (and whose
//! environment holds a secret sealed to the node, which neither the chain nor the node's log
//! shows); the chain
//! shows Deployed; a disk grown by a spec update is seen by the running guest; an image whose index does not hash to the pinned root is refused for good;
//! a signer of the contract reads the guest's console from the node (`zos logs`, whole, last
//! lines, followed) and a stranger's key is refused; a failing health check is reported
//! unhealthy on chain (the contract stays deployed), restarts its VM and is reported healthy
//! once it passes again;
//! the guest outlives executor restarts (kill -9 and SIGTERM): same QEMU, same mount, its tick
//! count goes on, the restarted executor adopts it and reports continue in contiguous windows;
//! an update without the VM shuts its guest down cleanly (the ext4 data disk is clean and has
//! the last writes); cancelling leaves nothing behind.
//!
//! Needs QEMU, /dev/fuse, root (FUSE mount with allow_other, virtiofsd) and busybox-static; the
//! guest kernel comes from zos-vm's cache (fetched once by its scripts).

mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use common::{
    busybox_rootfs, cancel, contract_of, create_approved_contract, funded_identity,
    registered_node, reported_health, settled_reports, setup_farm, state_of, which,
    workspace_binary, Executor, ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{client, ChainNode, NodeOptions};
use subxt_signer::sr25519::dev;
use zos_executor::chain::{convert, runtime};
use zos_image::store::{DirStore, Object, Store};
use zos_primitives::{contracts::ContractState, spec::DeploymentSpec};

const GREETING: &str = "hello from the chain";
/// Sealed to the node in the spec: the chain never sees it, the guest does.
const SECRET: &str = "sealed-for-this-node-only";

const POLLING: Polling = Polling::every(Duration::from_millis(250));

/// Stopped with SIGINT on drop so its guests and image mounts go down with it.
const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_vm=info",
    // No KVM probe: the development machines' /dev/kvm cannot run nested guests.
    env: &[("ZOS_VM_ACCEL", "tcg")],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 80,
};

/// Run by the guest: proves the disk, fills its 32 MiB volume past the end, then leaves a
/// note on it.
const VOLUME_CHECK: &str = "echo disk-ok >/data/marker && cat /data/marker
dd if=/dev/zero of=/shared/fill bs=1M count=48 2>/tmp/dd.err
grep -q 'No space left' /tmp/dd.err && echo VOLUME-FULL
rm -f /shared/fill
echo written-by-the-guest >>/shared/note
";

fn vm_spec(
    root: &str,
    source: &str,
    version: u32,
    disk_mib: u64,
    sealed_token: &str,
) -> Result<DeploymentSpec> {
    // Prints the env and proves the image and the disk, then every second a tick count (to
    // see that the guest keeps running) and the disk's size as the guest sees it (to see an
    // in-place growth). /bin/vol: a write past the volume's 32 MiB is refused, a note stays.
    let entrypoint = "/bin/sh -c 'echo \"GREETING=$GREETING\"; cat /etc/image-release; \
                      sh /bin/vol; \
                      echo ENTRYPOINT-DONE; i=0; \
                      while :; do i=$((i+1)); echo $i>>/data/ticks; \
                      echo \"TICK $i VDA-SECTORS $(cat /sys/block/vda/size)\"; sleep 1; done'";
    let spec = serde_json::json!({
        "version": version,
        "workloads": [
            { "name": "data", "kind": { "disk": { "size_mib": disk_mib } } },
            { "name": "shared", "kind": { "volume": { "size_mib": 32 } } },
            { "name": "web", "kind": { "vm": {
                "image": { "root_hash": root, "source": source },
                "vcpus": 1,
                "memory_mib": 256,
                "rootfs_mib": 256,
                "mounts": [
                    { "workload": "data", "path": "/data" },
                    { "workload": "shared", "path": "/shared" },
                ],
                "env": [
                    { "key": "GREETING", "value": GREETING },
                    { "key": "API_TOKEN", "value": sealed_token },
                ],
                "entrypoint": entrypoint,
            } } },
            // Sick while /data/sick exists (the disk keeps it across the restart it causes). The
    // start period covers a boot under emulation.
            { "name": "web-health", "kind": { "health_check": {
                "vm": "web",
                "probe": { "command": "test ! -e /data/sick" },
                "interval_secs": 5,
                "timeout_secs": 5,
                "retries": 2,
                "start_period_secs": 45,
                "on_unhealthy": "restart",
            } } },
        ],
    });
    let spec: DeploymentSpec = serde_json::from_value(spec)?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("test spec invalid: {e:?}"))?;
    Ok(spec)
}

/// Alice proposes `spec` as the contract's update and Bob approves it.
async fn update_approved(
    api: &node_harness::client::Client,
    contract: u64,
    spec: &DeploymentSpec,
) -> Result<()> {
    let propose = runtime::tx()
        .deployments()
        .propose_update(contract, convert(spec)?);
    client::submit(api, &propose, &dev::alice()).await?;
    let approve = runtime::tx().deployments().approve(contract, spec.hash());
    client::submit(api, &approve, &dev::bob()).await?;
    Ok(())
}

/// The contract without its VM: the disk and the volume alone.
fn data_only_spec(version: u32, disk_mib: u64) -> Result<DeploymentSpec> {
    let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
        "version": version,
        "workloads": [
            { "name": "data", "kind": { "disk": { "size_mib": disk_mib } } },
            { "name": "shared", "kind": { "volume": { "size_mib": 32 } } },
        ],
    }))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("test spec invalid: {e:?}"))?;
    Ok(spec)
}

/// Runs an e2fsprogs tool on a disk image: (success, stdout and stderr).
fn e2fs(tool: &str, args: &[&str], image: &Path) -> Result<(bool, String)> {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(image)
        .output()
        .with_context(|| format!("running {tool} (e2fsprogs)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn is_alive(pid: i32) -> bool {
    // A zombie is gone for our purposes (its parent may not have reaped it yet).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The guest's last printed tick count (0 before the first).
fn last_tick(console: &Path) -> u64 {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "TICK")
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// How often the guest's entrypoint started (a restarted guest prints this again).
fn boots(console: &Path) -> usize {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .matches("ENTRYPOINT-DONE")
        .count()
}

/// The executor's default registry of VM users (zos_vm::UserRegistry::DEFAULT_DIR).
const VM_USER_REGISTRY: &str = "/var/lib/zos-grid/vm-users";

/// The uid QEMU (`pid`) runs as: one of the default range, with gid equal, and claimed in the
/// registry for this VM's directory; no other VM shares it.
fn own_user_of(pid: i32, vm_dir: &Path) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (uids, gids) = (ids("Uid:"), ids("Gid:"));
    let uid = uids.first().copied().unwrap_or(0);
    ensure!(
        (1_000_000_000..=1_000_065_535).contains(&uid)
            && uids.iter().all(|u| *u == uid)
            && gids.iter().all(|g| *g == uid),
        "QEMU does not run as a VM user of its own: uids {uids:?}, gids {gids:?}"
    );
    let holder = std::fs::read(Path::new(VM_USER_REGISTRY).join(uid.to_string()))?;
    let dir = std::path::absolute(vm_dir)?;
    ensure!(
        holder == dir.as_os_str().as_encoded_bytes(),
        "user {uid} is claimed by {:?}, not {}",
        String::from_utf8_lossy(&holder),
        dir.display()
    );
    Ok(uid)
}

fn read_pid(vm_dir: &Path) -> Result<i32> {
    Ok(std::fs::read_to_string(vm_dir.join("hypervisor.pid"))?
        .trim()
        .parse()?)
}

/// Unmounts (detached) whatever is still mounted below a directory when the test ends, pass
/// or fail: volumes are loop mounts that outlive the executor.
struct UnmountBelow(PathBuf);

impl Drop for UnmountBelow {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(needle.as_str()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = std::process::Command::new("umount")
                .args(["-l", point])
                .status();
        }
    }
}

fn mounted(path: &Path) -> bool {
    let needle = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(needle.as_ref()))
}

#[tokio::test(flavor = "multi_thread")]
async fn executor_boots_a_vm_from_an_approved_contract_and_removes_it_on_cancel() -> Result<()> {
    ensure!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is needed for the image mount"
    );
    ensure!(
        which("qemu-system-x86_64").is_some(),
        "qemu-system-x86_64 is needed"
    );
    let tmp = tempfile::tempdir()?;

    // The image: packed into a directory store, served by a hub on a loopback port.
    let rootfs = tmp.path().join("image-tree");
    busybox_rootfs(
        &rootfs,
        &["dd", "rm", "tty", "grep", "touch"],
        &[
            ("etc/image-release", "vm e2e image\n"),
            ("bin/vol", VOLUME_CHECK),
        ],
    )?;
    let store = Arc::new(DirStore::open(tmp.path().join("hub-store"))?);
    let packed = zos_image::pack::pack_dir(&rootfs, store.clone(), None, &Default::default())?;
    let root = packed.root.to_hex();
    let hub = zos_image::hub::spawn_background(
        "127.0.0.1:0".parse()?,
        DirStore::open(tmp.path().join("hub-store"))?,
        "unused".into(),
    )?;
    let source = format!("http://{hub}");

    let chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"vm-e2e-farm").await?;
    let data_dir = tmp.path().join("executor");
    std::fs::create_dir_all(&data_dir)?;
    let _unmount = UnmountBelow(data_dir.clone());
    let account = funded_identity(&grid.api, grid.farm, &data_dir).await?;
    // The node serves its contracts' signers their consoles on a loopback port.
    let access_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut executor = Executor::spawn_with_env(
        &data_dir,
        &chain.ws_url(),
        grid.farm,
        EXECUTOR,
        vec![("ZOS_ACCESS_ADDR".into(), access_addr.to_string())],
    )?;
    let node = registered_node(&grid.api, &account, POLLING).await?;

    // ---- a VM + disk contract
    // A secret sealed to the node for Alice's contracts (`zos seal-env`, from stdin).
    let sealed_token = {
        use std::io::Write as _;
        let mut child = std::process::Command::new(workspace_binary("zos")?)
            .args([
                "--url",
                &chain.ws_url(),
                "--key",
                "//Alice",
                "--json",
                "seal-env",
            ])
            .args(["--node", &node.to_string(), "API_TOKEN"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{SECRET}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "zos seal-env: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        said["value"]
            .as_str()
            .context("zos seal-env printed no value")?
            .to_string()
    };
    ensure!(
        sealed_token.starts_with("zos-sealed:v1:") && !sealed_token.contains(SECRET),
        "not sealed: {sealed_token}"
    );
    let spec = vm_spec(&root, &source, 0, 64, &sealed_token)?;
    let contract = create_approved_contract(&grid.api, node, &spec).await?;
    let activated = Instant::now();
    let vm_dir = data_dir
        .join("contracts")
        .join(contract.to_string())
        .join("vms/web");
    let console = vm_dir.join("console.log");
    // Both watched together so each time is measured from activation.
    let (mut to_deployed, mut to_entrypoint) = (None, None);
    let deadline = activated + Duration::from_secs(300);
    let text = loop {
        if to_deployed.is_none() {
            match state_of(&grid.api, node, contract).await? {
                Some(ContractState::Deployed) => to_deployed = Some(activated.elapsed()),
                Some(ContractState::Failed(reason)) => {
                    bail!("contract failed: {reason:?}\n{}", executor.log_tail())
                }
                _ => {}
            }
        }
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if to_entrypoint.is_none() && text.contains("ENTRYPOINT-DONE") {
            to_entrypoint = Some(activated.elapsed());
        }
        if to_deployed.is_some() && to_entrypoint.is_some() {
            break text;
        }
        ensure!(
            Instant::now() < deadline,
            "no Deployed ({to_deployed:?}) or no entrypoint output ({to_entrypoint:?}); console:\n{text}\n{}",
            executor.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (to_deployed, to_entrypoint) = (
        to_deployed.unwrap_or_default(),
        to_entrypoint.unwrap_or_default(),
    );
    for needle in [
        format!("GREETING={GREETING}"),
        "vm e2e image".into(),
        "disk-ok".into(),
        "VOLUME-FULL".into(),
    ] {
        ensure!(
            text.contains(&needle),
            "missing {needle:?} on the console:\n{text}"
        );
    }
    ensure!(
        mounted(&vm_dir.join("rootfs")),
        "the image is not mounted at the VM's rootfs"
    );
    let pid: i32 = std::fs::read_to_string(vm_dir.join("hypervisor.pid"))?
        .trim()
        .parse()?;
    ensure!(is_alive(pid), "QEMU (pid {pid}) is not running");
    let vm_uid = own_user_of(pid, &vm_dir)?;
    // Jailed: the image's FUSE mount (and any other tenant's) is not in QEMU's namespace.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    ensure!(
        !mounts.contains("fuse") && mounts.lines().count() < 20,
        "QEMU's mount namespace holds more than its jail:\n{mounts}"
    );
    eprintln!("activation (finalized) -> Deployed on chain: {to_deployed:?}; -> entrypoint output on the console: {to_entrypoint:?}");

    POLLING
        .until(
            "the guest seeing its 64 MiB disk",
            Duration::from_secs(30),
            || async {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                Ok(text
                    .contains(&format!("VDA-SECTORS {}", 64 * 2048))
                    .then_some(()))
            },
        )
        .await?;

    // ---- logs: a signer reads the console from the node (whole, last lines, followed);
    // anyone else is refused
    let node_url = format!("http://{access_addr}");
    let ws = chain.ws_url();
    let zos_logs = |key: &str, extra: &[&str]| -> Result<std::process::Output> {
        let contract = contract.to_string();
        let mut args = vec![
            "--url",
            ws.as_str(),
            "--key",
            key,
            "logs",
            contract.as_str(),
        ];
        args.extend(["--node-url", node_url.as_str()]);
        args.extend(extra);
        Ok(std::process::Command::new(workspace_binary("zos")?)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()?)
    };
    let out = zos_logs("//Bob", &[])?;
    let shown = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && shown.contains("ENTRYPOINT-DONE") && shown.contains(GREETING),
        "zos logs as a signer: {shown}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        executor.log_tail()
    );
    let out = zos_logs("//Bob", &["--lines", "1"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 1,
        "zos logs --lines 1: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = zos_logs("//Dave", &[])?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("not a signer") && out.stdout.is_empty(),
        "zos logs as a stranger: {said}"
    );
    // Followed (none of the console before it): a tick the guest prints later arrives.
    let tick_before = last_tick(&console);
    let mut follow = std::process::Command::new(workspace_binary("zos")?)
        .args(["--url", ws.as_str(), "--key", "//Alice", "logs"])
        .args([
            contract.to_string().as_str(),
            "--follow",
            "--lines",
            "0",
            "--node-url",
            node_url.as_str(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let followed = {
        let stdout = follow.stdout.take().context("follow stdout")?;
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|l| {
                    l.split_whitespace()
                        .skip_while(|w| *w != "TICK")
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n > tick_before)
                })
        })
    };
    let seen = tokio::time::timeout(Duration::from_secs(60), followed).await;
    let _ = follow.kill();
    let _ = follow.wait();
    ensure!(
        matches!(seen, Ok(Ok(Some(_)))),
        "zos logs --follow showed no tick after {tick_before}: {seen:?}"
    );
    let log = std::fs::read_to_string(data_dir.join("executor.log"))?;
    ensure!(
        log.matches("console read by a signer").count() >= 3,
        "the node's log does not record who read the console"
    );

    // ---- sessions with the guest's agent: commands (exit codes, stdin, stderr), a shell on a
    // terminal, a background process found with ps and ended with kill; strangers refused
    let zos_session = |key: &str, args: &[&str], input: &str| -> Result<std::process::Output> {
        use std::io::Write as _;
        let contract = contract.to_string();
        let (command, rest) = args.split_first().context("a session command")?;
        let mut child = std::process::Command::new(workspace_binary("zos")?)
            .args([
                "--url",
                ws.as_str(),
                "--key",
                key,
                command,
                contract.as_str(),
            ])
            .args(["--node-url", node_url.as_str()])
            .args(rest)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input.as_bytes())?;
        drop(stdin);
        Ok(child.wait_with_output()?)
    };
    let shown = |o: &std::process::Output| {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let sessions_from = Instant::now();
    let out = zos_session("//Bob", &["exec", "--", "cat", "/etc/image-release"], "")?;
    ensure!(
        out.status.code() == Some(0) && String::from_utf8_lossy(&out.stdout) == "vm e2e image\n",
        "zos exec cat: {}\n{}",
        shown(&out),
        executor.log_tail()
    );
    let out = zos_session(
        "//Bob",
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; echo to-stderr >&2; exit 3",
        ],
        "",
    )?;
    ensure!(
        out.status.code() == Some(3)
            && String::from_utf8_lossy(&out.stdout).contains(GREETING)
            && String::from_utf8_lossy(&out.stderr).contains("to-stderr")
            && !String::from_utf8_lossy(&out.stdout).contains("to-stderr"),
        "zos exec with an exit code, the VM's env and stderr: {}",
        shown(&out)
    );
    // The sealed secret is in the guest's environment, opened by the node; neither the chain
    // nor the node's log shows it.
    let out = zos_session(
        "//Bob",
        &["exec", "--", "sh", "-c", "echo \"token=$API_TOKEN\""],
        "",
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == format!("token={SECRET}\n"),
        "the guest's sealed variable: {}",
        shown(&out)
    );
    let on_chain = contract_of(&grid.api, node, contract)
        .await?
        .context("contract on chain")?;
    ensure!(
        !format!("{:?}", on_chain.spec).contains(SECRET)
            && !serde_json::to_string(&on_chain.spec)?.contains(SECRET),
        "the secret is readable on chain"
    );
    let out = zos_session("//Alice", &["exec", "--", "cat"], "piped input\n")?;
    ensure!(
        out.status.code() == Some(0) && String::from_utf8_lossy(&out.stdout) == "piped input\n",
        "zos exec with stdin: {}",
        shown(&out)
    );
    let out = zos_session("//Alice", &["shell"], "tty; echo $((6*7)); exit 4\n")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.code() == Some(4)
            && text.lines().any(|l| l.trim() == "42")
            && text.contains("/dev/pts/"),
        "zos shell on a terminal: {}",
        shown(&out)
    );
    let out = zos_session("//Alice", &["exec", "--detach", "--", "sleep", "600"], "")?;
    let started = String::from_utf8_lossy(&out.stdout).into_owned();
    let sleep_pid: i32 = started
        .trim()
        .strip_prefix("started pid ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("zos exec --detach: {}", shown(&out)))?;
    let out = zos_session("//Bob", &["ps"], "")?;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |pid: i32| {
        listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str()))
            .map(str::to_string)
    };
    ensure!(
        out.status.code() == Some(0) && row(sleep_pid).is_some_and(|r| r.ends_with("sleep 600")),
        "zos ps does not show the background sleep (pid {sleep_pid}): {}",
        shown(&out)
    );
    let out = zos_session(
        "//Bob",
        &["kill", &sleep_pid.to_string(), "--signal", "KILL"],
        "",
    )?;
    ensure!(out.status.code() == Some(0), "zos kill: {}", shown(&out));
    POLLING
        .until(
            "the killed process gone from ps",
            Duration::from_secs(20),
            || async {
                let out = zos_session("//Bob", &["ps"], "")?;
                let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                Ok((out.status.success()
                    && !listed.lines().any(|l| {
                        l.split_whitespace().next() == Some(sleep_pid.to_string().as_str())
                    }))
                .then_some(()))
            },
        )
        .await?;
    let out = zos_session("//Dave", &["exec", "--", "true"], "")?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a signer"),
        "zos exec as a stranger: {}",
        shown(&out)
    );
    let log = std::fs::read_to_string(data_dir.join("executor.log"))?;
    ensure!(!log.contains(SECRET), "the node logged the sealed secret");
    ensure!(
        log.matches("agent session opened by a signer").count() >= 8
            && log.contains(r#"argv: ["sleep", "600"]"#),
        "the node's log does not record the sessions (who, what)"
    );
    eprintln!(
        "agent sessions (exec, stdin, shell on a pty, detach, ps, kill, refusal): {:?}",
        sessions_from.elapsed()
    );

    // ---- update: the disk grows 64 -> 128 MiB in place; the running guest sees it, no reboot
    let grown = vm_spec(&root, &source, 1, 128, &sealed_token)?;
    update_approved(&grid.api, contract, &grown).await?;
    let updated = Instant::now();
    POLLING
        .until("version 1 Deployed", Duration::from_secs(120), || async {
            let c = contract_of(&grid.api, node, contract).await?;
            Ok(
                c.filter(|c| c.spec.version == 1 && c.state == ContractState::Deployed)
                    .map(|_| ()),
            )
        })
        .await?;
    POLLING
        .until(
            "the guest seeing the grown disk",
            Duration::from_secs(60),
            || async {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                Ok(text
                    .contains(&format!("VDA-SECTORS {}", 128 * 2048))
                    .then_some(()))
            },
        )
        .await
        .with_context(|| executor.log_tail())?;
    let now_pid: i32 = std::fs::read_to_string(vm_dir.join("hypervisor.pid"))?
        .trim()
        .parse()?;
    ensure!(
        now_pid == pid && is_alive(pid),
        "the guest was restarted for a disk growth"
    );
    eprintln!(
        "update (finalized) -> version 1 Deployed and the guest sees 128 MiB: {:?}",
        updated.elapsed()
    );

    // ---- health: the check's command fails while /data/sick exists. Two failures make it
    // unhealthy: reported on chain with the reason, the contract stays deployed, the VM is
    // restarted (a new boot, same disk). Once the file is gone the check passes and the chain
    // hears it has recovered.
    let health_from = Instant::now();
    let boots_before = boots(&console);
    ensure!(
        reported_health(&grid.api, contract, "web-health").await? == Some(None),
        "the health check is not reported healthy before it is made sick"
    );
    let out = zos_session("//Alice", &["exec", "--", "touch", "/data/sick"], "")?;
    ensure!(
        out.status.code() == Some(0),
        "zos exec touch: {}",
        shown(&out)
    );
    let reason = POLLING
        .until(
            "the health check reported unhealthy",
            Duration::from_secs(120),
            || async {
                Ok(reported_health(&grid.api, contract, "web-health")
                    .await?
                    .flatten())
            },
        )
        .await
        .with_context(|| executor.log_tail())?;
    let unhealthy_after = health_from.elapsed();
    ensure!(
        reason.contains("2 probes failed in a row") && reason.contains("exited with 1"),
        "unexpected unhealthy reason: {reason}"
    );
    ensure!(
        state_of(&grid.api, node, contract).await? == Some(ContractState::Deployed),
        "an unhealthy check took the contract out of Deployed"
    );
    POLLING
        .until(
            "the unhealthy VM restarted",
            Duration::from_secs(120),
            || async { Ok((boots(&console) > boots_before).then_some(())) },
        )
        .await
        .with_context(|| executor.log_tail())?;
    let restarted_after = health_from.elapsed();
    let pid = read_pid(&vm_dir)?;
    // The agent answers again once the new boot is up.
    let healed = POLLING
        .until(
            "the sick marker removed in the restarted guest",
            Duration::from_secs(120),
            || async {
                let out = zos_session("//Alice", &["exec", "--", "rm", "-f", "/data/sick"], "")?;
                Ok((out.status.code() == Some(0)).then_some(Instant::now()))
            },
        )
        .await?;
    POLLING
        .until(
            "the health check reported healthy again",
            Duration::from_secs(120),
            || async {
                Ok(
                    (reported_health(&grid.api, contract, "web-health").await? == Some(None))
                        .then_some(()),
                )
            },
        )
        .await
        .with_context(|| executor.log_tail())?;
    ensure!(
        state_of(&grid.api, node, contract).await? == Some(ContractState::Deployed),
        "the contract left Deployed during the health episode"
    );
    eprintln!(
        "health: sick -> unhealthy on chain {unhealthy_after:?}, -> VM restarted {restarted_after:?}; healed -> healthy on chain {:?} (reason: {reason})",
        healed.elapsed()
    );

    // ---- executor restarts (kill -9, then SIGTERM as on an upgrade): the guest keeps running
    // in its shim, the new executor adopts it; metering goes on in contiguous windows.
    let restarts_from = grid.api.at_current_block().await?.block_number();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let first_stop = unix_now();
    for how in ["kill -9", "SIGTERM"] {
        let ticks_before = last_tick(&console);
        let boots_before = boots(&console);
        if how == "kill -9" {
            executor.kill9();
        } else {
            executor.terminate()?;
        }
        let down = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(is_alive(pid), "the guest died with the executor ({how})");
        executor.start()?;
        POLLING
            .until(
                "the restarted executor adopting the guest",
                Duration::from_secs(90),
                || async {
                    let log = std::fs::read_to_string(data_dir.join("executor.log"))?;
                    let adopted = log.matches("adopted a running guest").count();
                    Ok((adopted >= if how == "kill -9" { 1 } else { 2 }).then_some(()))
                },
            )
            .await
            .with_context(|| executor.log_tail())?;
        let adopted_after = down.elapsed();
        POLLING
            .until("the guest ticking on", Duration::from_secs(30), || async {
                Ok((last_tick(&console) >= ticks_before + 5).then_some(()))
            })
            .await?;
        ensure!(
            is_alive(pid) && read_pid(&vm_dir)? == pid,
            "the guest was restarted by the executor restart ({how})"
        );
        ensure!(
            boots(&console) == boots_before,
            "the guest booted again after the executor restart ({how})"
        );
        ensure!(
            mounted(&vm_dir.join("rootfs")),
            "the image mount went away with the executor ({how})"
        );
        ensure!(
            state_of(&grid.api, node, contract).await? == Some(ContractState::Deployed),
            "the contract left Deployed after the executor restart ({how})"
        );
        eprintln!("executor {how}: guest kept running (ticks {ticks_before} -> {}), adopted {adopted_after:?} after the stop", last_tick(&console));
    }
    // Reports keep flowing after the restarts, in contiguous windows, and the time across
    // them is billed as up (at most one window short).
    let restarted = unix_now();
    let reports = POLLING
        .until(
            "reports settled for the windows after the restarts",
            Duration::from_secs(120),
            || async {
                let r = settled_reports(&grid.api, restarts_from, contract).await?;
                Ok(r.iter()
                    .any(|r| r.window_end >= restarted + 12)
                    .then_some(r))
            },
        )
        .await
        .with_context(|| executor.log_tail())?;
    for pair in reports.windows(2) {
        ensure!(
            pair[1].window_start == pair[0].window_end,
            "a gap in the report windows across executor restarts: {reports:?}"
        );
    }
    let across: Vec<_> = reports
        .iter()
        .filter(|r| r.window_end > first_stop)
        .collect();
    let (span, up): (u64, u64) = across.iter().fold((0, 0), |(s, u), r| {
        (s + r.window_end - r.window_start, u + r.uptime_seconds)
    });
    eprintln!(
        "reports across the restarts: {} windows, {up} s up of {span} s",
        across.len()
    );
    ensure!(
        up + 6 >= span,
        "uptime lost across executor restarts ({up} s of {span} s): {reports:?}"
    );

    // ---- an image whose index does not hash to the pinned root is refused for good
    let fake_root = zos_image::Hash::of(b"not the index");
    let index = store
        .get(Object::Index(packed.root))?
        .context("packed index")?;
    store.put(Object::Index(fake_root), &index)?;
    let bad = vm_spec(&fake_root.to_hex(), &source, 0, 64, &sealed_token)?;
    let bad_contract = create_approved_contract(&grid.api, node, &bad).await?;
    let reason = POLLING
        .until(
            "the tampered image's contract Failed",
            Duration::from_secs(120),
            || async {
                Ok(match state_of(&grid.api, node, bad_contract).await? {
                    Some(ContractState::Failed(f)) => {
                        Some(String::from_utf8_lossy(&f.reason).into_owned())
                    }
                    _ => None,
                })
            },
        )
        .await?;
    eprintln!("tampered image refused: {reason}");
    ensure!(
        reason.contains("refused: index content hashes to"),
        "unexpected failure reason: {reason}"
    );

    // ---- the VM leaves the contract (an update to the disk alone) while its guest writes to
    // the disk every second: a clean shutdown (power button, entrypoint ended, disk
    // unmounted), not a power cut. The disk is ext4, clean, and holds the last writes.
    let ticks_seen = last_tick(&console);
    let boots_seen = boots(&console);
    let data_only = data_only_spec(2, 128)?;
    update_approved(&grid.api, contract, &data_only).await?;
    let removed = Instant::now();
    POLLING
        .until(
            "version 2 Deployed and the VM gone",
            Duration::from_secs(120),
            || async {
                let c = contract_of(&grid.api, node, contract).await?;
                Ok(c.filter(|c| {
                    c.spec.version == 2 && c.state == ContractState::Deployed && !vm_dir.exists()
                })
                .map(|_| ()))
            },
        )
        .await
        .with_context(|| executor.log_tail())?;
    ensure!(
        !is_alive(pid),
        "QEMU still runs after its VM left the contract"
    );
    ensure!(
        !Path::new(VM_USER_REGISTRY)
            .join(vm_uid.to_string())
            .exists(),
        "the removed VM still holds its user {vm_uid}"
    );
    eprintln!(
        "update without the VM (finalized) -> guest shut down and removed: {:?}",
        removed.elapsed()
    );
    let disk = data_dir
        .join("contracts")
        .join(contract.to_string())
        .join("disks/data.raw");
    let (_, header) = e2fs("dumpe2fs", &["-h"], &disk)?;
    ensure!(
        header.contains("has_journal") && !header.contains("needs_recovery"),
        "the data disk is not a journaling filesystem shut down cleanly:\n{header}"
    );
    ensure!(
        header.lines().any(|l| l.starts_with("Filesystem state:")
            && l.trim_end().ends_with("clean")
            && !l.contains("not clean")),
        "the data disk was not unmounted cleanly:\n{header}"
    );
    let (clean, report) = e2fs("e2fsck", &["-fn"], &disk)?;
    ensure!(clean, "e2fsck finds errors on the data disk:\n{report}");
    let (_, ticks) = e2fs("debugfs", &["-R", "cat /ticks"], &disk)?;
    let last_written: u64 = ticks
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .last()
        .unwrap_or(0);
    ensure!(
        last_written >= ticks_seen,
        "writes before the shutdown are missing: the disk's last tick is {last_written}, the console showed {ticks_seen}"
    );
    eprintln!("clean shutdown: ext4 clean, e2fsck without errors, last tick {last_written} on disk (console {ticks_seen})");
    // The volume outlives its VM: still mounted on the node, holding what the guest wrote.
    let volume = data_dir
        .join("contracts")
        .join(contract.to_string())
        .join("volumes/shared");
    ensure!(mounted(&volume), "the volume was unmounted with its VM");
    // One note per boot (the health check restarted the guest once).
    let note = std::fs::read_to_string(volume.join("note")).unwrap_or_default();
    ensure!(
        note == "written-by-the-guest\n".repeat(boots_seen) && boots_seen == 2,
        "the volume does not hold the guest's notes of its {boots_seen} boots: {note:?}"
    );

    // ---- cancel: QEMU stopped, image unmounted, VM directory removed
    cancel(&grid.api, contract, POLLING).await?;
    let cancelled = Instant::now();
    POLLING
        .until(
            "the VM directory removed",
            Duration::from_secs(90),
            || async { Ok((!vm_dir.exists()).then_some(())) },
        )
        .await?;
    POLLING
        .until("QEMU gone", Duration::from_secs(30), || async {
            Ok((!is_alive(pid)).then_some(()))
        })
        .await?;
    ensure!(
        !mounted(&vm_dir.join("rootfs")),
        "the image is still mounted"
    );
    POLLING
        .until(
            "the volume unmounted and removed",
            Duration::from_secs(60),
            || async { Ok((!mounted(&volume) && !volume.exists()).then_some(())) },
        )
        .await?;
    eprintln!(
        "cancel (finalized) -> QEMU gone and VM removed: {:?}",
        cancelled.elapsed()
    );

    // ---- SIGTERM, as service managers stop daemons: a clean exit, not death by the signal
    let status = executor.terminate()?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "executor on SIGTERM: {status:?}"
    );
    Ok(())
}
