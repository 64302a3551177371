//! Real guests under QEMU (TCG unless ZOS_VM_ACCEL says otherwise). The guest kernel is
//! fetched from Debian and the initramfs built on first use; a test fails (never skips) when
//! they cannot be obtained.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use tokio::sync::broadcast;
use zos_vm::{
    AccelChoice, BootMode, DiskAttachment, GuestAssets, GuestConfig, Hypervisor, Qemu, QemuOptions,
    RestartPolicy, RunState, SharedDir, Vm, VmConfig, VmEvent, VmOptions, VmState, WritableLayer,
};

const MIB: u64 = 1 << 20;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "zos_vm=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn assets() -> GuestAssets {
    static ASSETS: OnceLock<GuestAssets> = OnceLock::new();
    ASSETS
        .get_or_init(|| {
            GuestAssets::prepare(None).unwrap_or_else(|e| {
                panic!("the guest kernel/initramfs could not be obtained (needs apt access to Debian and busybox-static): {e:#}")
            })
        })
        .clone()
}

fn qemu() -> Arc<Qemu> {
    let mut o = QemuOptions::new(assets());
    o.accel = match AccelChoice::from_env().unwrap() {
        AccelChoice::Auto => AccelChoice::Tcg,
        other => other,
    };
    Arc::new(Qemu::new(o))
}

fn opts() -> VmOptions {
    VmOptions {
        restart: RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            ..Default::default()
        },
        console_max_bytes: 256 * 1024,
        // The project's init has no ACPI power-button handler.
        stop_grace: Duration::ZERO,
        sample_every: Duration::from_secs(1),
        ..Default::default()
    }
}

fn sparse_disk(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

fn base_config(name: &str) -> VmConfig {
    VmConfig {
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        boot: BootMode::Initramfs,
        disks: vec![],
        shares: vec![],
        nics: vec![],
        netns: None,
        guest: GuestConfig::default(),
    }
}

async fn next_event(
    rx: &mut broadcast::Receiver<VmEvent>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&VmEvent) -> bool,
) -> VmEvent {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) if pred(&ev) => return ev,
            Ok(Ok(ev)) => eprintln!("event (skipped): {ev:?}"),
            Ok(Err(e)) => panic!("event channel: {e}"),
            Err(_) => panic!("no {what} event within {timeout:?}"),
        }
    }
}

/// Boots `cfg` in `dir` and waits (at most `secs`) for the guest to power itself off;
/// returns the VM (to delete) and its console.
async fn run_to_poweroff(dir: PathBuf, cfg: VmConfig, secs: u64) -> (Vm, String) {
    let vm = Vm::create(qemu(), dir, cfg, opts()).await.unwrap();
    let mut ev = vm.events();
    vm.start().await.unwrap();
    next_event(&mut ev, Duration::from_secs(secs), "PoweredOff", |e| {
        matches!(e, VmEvent::PoweredOff { .. })
    })
    .await;
    let console = vm.console_text();
    (vm, console)
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_writes_marker_to_disk_and_powers_off() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("data.raw");
    sparse_disk(&disk, 16 * MIB);
    let mut cfg = base_config("marker-vm");
    cfg.disks = vec![DiskAttachment {
        id: "data".into(),
        path: disk.clone(),
        mount: None,
        read_only: false,
    }];
    // The only disk is /dev/vda; the marker carries the hostname set through the config channel.
    cfg.guest.entrypoint =
        r#"sh -c 'echo "ZOS-DISK-MARKER $(hostname)" > /dev/vda && sync'"#.into();
    let vm = Vm::create(qemu(), tmp.path().join("vm"), cfg, opts())
        .await
        .unwrap();
    let mut ev = vm.events();
    vm.start().await.unwrap();
    next_event(&mut ev, Duration::from_secs(120), "PoweredOff", |e| {
        matches!(e, VmEvent::PoweredOff { .. })
    })
    .await;
    assert_eq!(vm.state().await, VmState::PoweredOff);
    let console = vm.console_text();
    assert!(console.contains("ZOS-GUEST-EXIT 0"), "console:\n{console}");
    let head = std::fs::read(&disk).unwrap();
    let text = String::from_utf8_lossy(&head[..64]);
    assert!(
        text.starts_with("ZOS-DISK-MARKER marker-vm\n"),
        "disk starts with {text:?}"
    );
    vm.delete().await.unwrap();
    assert!(
        disk.exists(),
        "delete must leave the disk driver's file alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_resize_and_restart_after_kill() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("data.raw");
    sparse_disk(&disk, 8 * MIB);
    let mut cfg = base_config("long-vm");
    cfg.disks = vec![DiskAttachment {
        id: "data".into(),
        path: disk.clone(),
        mount: None,
        read_only: false,
    }];
    cfg.guest.entrypoint =
        r#"sh -c 'echo data > /dev/vda; sync; i=0; while :; do i=$((i+1)); echo "tick $i sectors=$(cat /sys/block/vda/size)"; sleep 1; done'"#.into();
    let vm = Vm::create(qemu(), tmp.path().join("vm"), cfg, opts())
        .await
        .unwrap();
    let mut ev = vm.events();
    vm.start().await.unwrap();
    vm.wait_console("sectors=16384", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(vm.run_state().await.unwrap(), RunState::Running);
    // Least privilege: started as root, QEMU runs as nobody with a seccomp filter.
    let pid = vm.pid().await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
            "{uid_line}"
        );
    }
    let seccomp = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    assert!(seccomp.ends_with('2'), "no seccomp filter: {seccomp}");

    // Pause: QMP says paused and the guest's clock-driven output stops.
    vm.pause().await.unwrap();
    assert_eq!(vm.run_state().await.unwrap(), RunState::Paused);
    assert_eq!(vm.state().await, VmState::Paused);
    let frozen = vm.console_text().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        vm.console_text().len(),
        frozen,
        "a paused guest kept writing to its console"
    );
    vm.resume().await.unwrap();
    assert_eq!(vm.run_state().await.unwrap(), RunState::Running);
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm.console_text().len() == frozen {
        assert!(Instant::now() < deadline, "no console output after resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Grow the disk in place: the guest sees the new capacity.
    vm.resize_disk("data", 16 * MIB).await.unwrap();
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 * MIB);
    vm.wait_console("sectors=32768", Duration::from_secs(30))
        .await
        .unwrap();
    let err = vm.resize_disk("data", 4 * MIB).await.unwrap_err();
    assert!(format!("{err:#}").contains("shrinking"), "{err:#}");

    let usage = vm.usage().await.unwrap();
    assert!(
        usage.cpu_time_ms > 0 && usage.memory_bytes > 16 * MIB,
        "{usage:?}"
    );
    assert!(usage.disk_bytes > 0, "{usage:?}");

    // kill -9 the hypervisor: the supervisor reports the crash and starts it again.
    let old_pid = vm.pid().await.unwrap();
    assert!(unsafe { libc::kill(old_pid as i32, libc::SIGKILL) } == 0);
    let crash = next_event(&mut ev, Duration::from_secs(30), "Crashed", |e| {
        matches!(e, VmEvent::Crashed { .. })
    })
    .await;
    match &crash {
        VmEvent::Crashed {
            reason, restarts, ..
        } => {
            assert!(reason.contains("signal 9"), "{reason}");
            assert_eq!(*restarts, 1);
        }
        _ => unreachable!(),
    }
    let started = next_event(&mut ev, Duration::from_secs(30), "Started", |e| {
        matches!(e, VmEvent::Started { .. })
    })
    .await;
    let VmEvent::Started {
        pid: new_pid,
        restarts,
        ..
    } = started
    else {
        unreachable!()
    };
    assert_ne!(new_pid, old_pid);
    assert_eq!(restarts, 1);
    assert!(!is_alive(old_pid));
    assert_eq!(vm.state().await, VmState::Running);
    // The restarted guest runs again (its console continues in the same log).
    let before = vm.console_text().matches("tick 1 ").count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while vm.console_text().matches("tick 1 ").count() == before {
        assert!(
            Instant::now() < deadline,
            "restarted guest did not run its entrypoint"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = vm.usage().await.unwrap();
    assert!(
        after.cpu_time_ms >= usage.cpu_time_ms,
        "CPU time must survive restarts: {after:?} < {usage:?}"
    );

    let dir = vm.dir().to_path_buf();
    vm.stop().await.unwrap();
    assert_eq!(vm.state().await, VmState::Stopped);
    assert!(!is_alive(new_pid));
    next_event(&mut ev, Duration::from_secs(10), "Stopped", |e| {
        matches!(e, VmEvent::Stopped { .. })
    })
    .await;
    vm.delete().await.unwrap();
    assert!(!dir.exists());
}

fn busybox_rootfs(dir: &Path) {
    let bb = which("busybox").expect("busybox on PATH (busybox-static)");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy(&bb, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "hostname", "ls", "test", "mount"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/image-release"), "zos test image 1\n").unwrap();
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_mode_runs_entrypoint_with_env_from_config_channel() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let data = tmp.path().join("data.raw");
    sparse_disk(&data, 32 * MIB);
    let mut cfg = base_config("container-vm");
    cfg.boot = BootMode::Container {
        rootfs_dir: rootfs.clone(),
        writable: WritableLayer::Tmpfs { size_mib: 64 },
    };
    cfg.disks = vec![DiskAttachment {
        id: "vol1".into(),
        path: data.clone(),
        mount: Some("/data".into()),
        read_only: false,
    }];
    // A host directory shared read-write (the executor's volumes).
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "put there by the host\n").unwrap();
    cfg.shares = vec![SharedDir {
        tag: "vol0".into(),
        dir: shared.clone(),
        mount: "/shared".into(),
    }];
    cfg.guest = GuestConfig {
        hostname: "web-1".into(),
        env: vec![("GREETING".into(), "hello from the spec".into()), ("MODE".into(), "a $b 'c'".into())],
        entrypoint: r#"/bin/sh -c 'echo "ENV GREETING=$GREETING MODE=$MODE"; echo "ARGS $0 $1"; echo "HOST $(hostname)"; cat /etc/image-release; echo written > /data/f && cat /data/f; echo x > /etc/new && echo "overlay writable"; cat /root/.ssh/authorized_keys; cat /shared/from-host; echo from-the-guest > /shared/from-guest' first "second word""#.into(),
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyOnly test@zos".into()],
    };
    let (vm, console) = run_to_poweroff(tmp.path().join("vm"), cfg, 180).await;
    for needle in [
        "ENV GREETING=hello from the spec MODE=a $b 'c'",
        "ARGS first second word",
        "HOST web-1",
        "zos test image 1",
        "written",
        "overlay writable",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyOnly test@zos",
        "put there by the host",
        "ZOS-GUEST-EXIT 0",
    ] {
        assert!(
            console.contains(needle),
            "missing {needle:?} in console:\n{console}"
        );
    }
    // The image directory is the read-only lower layer: guest writes do not reach it.
    assert!(!rootfs.join("etc/new").exists());
    vm.delete().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest")).unwrap_or_default(),
        "from-the-guest\n",
        "the guest's write did not reach the shared directory"
    );

    // Another guest (a restart, an update) finds it there.
    let mut cfg = base_config("container-vm-2");
    cfg.boot = BootMode::Container {
        rootfs_dir: rootfs.clone(),
        writable: WritableLayer::Tmpfs { size_mib: 64 },
    };
    cfg.shares = vec![SharedDir {
        tag: "vol0".into(),
        dir: shared.clone(),
        mount: "/srv/kept".into(),
    }];
    cfg.guest.entrypoint = "cat /srv/kept/from-guest".into();
    let (vm, console) = run_to_poweroff(tmp.path().join("vm2"), cfg, 180).await;
    assert!(
        console.contains("from-the-guest") && console.contains("ZOS-GUEST-EXIT 0"),
        "the next guest does not read the shared file:\n{console}"
    );
    vm.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_image_boots_from_its_root_filesystem() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    busybox_rootfs(&tree);
    std::fs::write(tree.join("etc/image-release"), "full disk image 7\n").unwrap();
    let image = tmp.path().join("root.raw");
    let mke2fs = ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("mke2fs"))
        .expect("mke2fs (e2fsprogs) is needed to build the test disk image");
    let out = std::process::Command::new(mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("64M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cfg = base_config("disk-vm");
    cfg.disks = vec![DiskAttachment {
        id: "root".into(),
        path: image.clone(),
        mount: None,
        read_only: false,
    }];
    cfg.boot = BootMode::Disk {
        root_disk: "root".into(),
    };
    cfg.guest.entrypoint =
        r#"/bin/sh -c 'cat /etc/image-release; echo persisted > /etc/written-by-guest'"#.into();
    let (vm, console) = run_to_poweroff(tmp.path().join("vm"), cfg, 120).await;
    assert!(
        console.contains("full disk image 7") && console.contains("ZOS-GUEST-EXIT 0"),
        "console:\n{console}"
    );
    vm.delete().await.unwrap();
    // The write landed in the image's ext4 filesystem.
    let bytes = std::fs::read(&image).unwrap();
    assert!(
        bytes.windows(10).any(|w| w == b"persisted\n"),
        "guest write not found in the disk image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_probe_decides_accel() {
    init_tracing();
    let mut o = QemuOptions::new(assets());
    o.accel = AccelChoice::Auto;
    o.probe_timeout = Duration::from_secs(10);
    let q = Qemu::new(o);
    let probe = q.probe_kvm().await;
    let accel = q.accel().await.unwrap();
    eprintln!("KVM probe: {probe:?}; accel chosen: {accel}");
    assert_eq!(accel == zos_vm::Accel::Kvm, probe.is_ok());
}

/// Measurements for README.md: `cargo test ... -- --ignored measure --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_boot_and_overhead() {
    init_tracing();
    let hv = qemu();
    let accel = hv.accel().await.unwrap();
    let mut boots = Vec::new();
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    for i in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = base_config(&format!("measure-{i}"));
        cfg.guest.entrypoint = "sleep 3600".into();
        let t0 = Instant::now();
        let vm = Vm::create(hv.clone(), tmp.path().join("vm"), cfg, opts())
            .await
            .unwrap();
        vm.start().await.unwrap();
        let started = t0.elapsed();
        vm.wait_console("ZOS-GUEST-INIT", Duration::from_secs(120))
            .await
            .unwrap();
        let to_init = t0.elapsed();
        vm.wait_console("ZOS-GUEST-READY", Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let u = vm.usage().await.unwrap();
        eprintln!(
            "run {i}: start() {started:?}, to /init {to_init:?}, rss {} MiB",
            u.memory_bytes / MIB
        );
        starts.push(started);
        boots.push(to_init);
        rss.push(u.memory_bytes);
        vm.delete().await.unwrap();
    }
    boots.sort();
    starts.sort();
    rss.sort();
    eprintln!(
        "accel {accel}: median boot to /init {:?} (min {:?}, max {:?}); median install->running {:?}; median RSS {} MiB (256 MiB guest)",
        boots[2], boots[0], boots[4], starts[2], rss[2] / MIB
    );
}

/// The uid/gid fields of `/proc/<pid>/status` (real, effective, saved, filesystem).
fn process_ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// Runs `args` as `uid` (gid equal, no supplementary groups) and says whether it succeeded.
fn as_user(uid: u32, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guest_runs_as_its_own_user() {
    init_tracing();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "dropping QEMU to a VM's own user needs root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let registry = zos_vm::UserRegistry::new(
        tmp.path().join("registry"),
        zos_vm::IdRange::parse("1900000000-1900000099").unwrap(),
    );
    let mut vms = Vec::new();
    for name in ["user-a", "user-b"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let user = registry.claim(&dir).unwrap();
        let mut o = QemuOptions::new(assets());
        o.accel = AccelChoice::Tcg;
        o.run_as = Some(zos_vm::RunAs::Ids(user));
        let mut cfg = base_config(name);
        cfg.guest.entrypoint = r#"sh -c 'echo ZOS-USER-UP; sleep 600'"#.into();
        let vm = Vm::create(Arc::new(Qemu::new(o)), &dir, cfg, opts())
            .await
            .unwrap();
        vm.start().await.unwrap();
        vms.push((vm, user, dir));
    }
    let mut pids = Vec::new();
    for (vm, user, _) in &vms {
        vm.wait_console("ZOS-USER-UP", Duration::from_secs(120))
            .await
            .unwrap();
        let pid = vm.pid().await.unwrap();
        let (uids, gids) = process_ids(pid);
        assert!(uids.iter().all(|u| *u == user.uid), "{uids:?} vs {user:?}");
        assert!(gids.iter().all(|g| *g == user.gid), "{gids:?} vs {user:?}");
        pids.push(pid);
    }
    let (a, b) = (vms[0].1, vms[1].1);
    assert_ne!(a.uid, b.uid);
    // A process with A's ids (what a guest breaking out into its QEMU would be) may signal A's
    // QEMU but not B's, and cannot read B's console.
    let (own, err) = as_user(a.uid, &["kill", "-0", &pids[0].to_string()]);
    assert!(own, "cannot signal its own QEMU: {err}");
    let (other, err) = as_user(a.uid, &["kill", "-0", &pids[1].to_string()]);
    assert!(!other, "signalled the other VM's QEMU");
    assert!(err.contains("not permitted"), "{err}");
    // Each QEMU lives in a jail: the system's /usr, its own directory but not the other VM's,
    // no host configuration, few mounts, and a /proc that hides other users' processes.
    let jail_of = |pid: u32, path: &Path| {
        PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap())
    };
    assert!(jail_of(pids[0], &vms[0].2.join("control.sock")).exists());
    assert!(jail_of(pids[0], Path::new("/usr/bin")).is_dir());
    assert!(
        !jail_of(pids[0], &vms[1].2).exists(),
        "A's jail shows B's directory"
    );
    assert!(!jail_of(pids[0], Path::new("/etc/passwd")).exists());
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", pids[0])).unwrap();
    assert!(mounts.lines().count() < 20, "{mounts}");
    let (uid_a, pid_a) = (a.uid.to_string(), pids[0].to_string());
    let listed = std::process::Command::new("nsenter")
        .args(["-t", &pid_a, "-m", "-r", "--", "/usr/bin/setpriv"])
        .args([&format!("--reuid={uid_a}"), &format!("--regid={uid_a}")])
        .args(["--clear-groups", "/usr/bin/ls", "/proc"])
        .output()
        .expect("nsenter (util-linux)");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let visible: Vec<&str> = listed
        .split_whitespace()
        .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    // Only `ls` itself: QEMU is not dumpable after dropping its privileges, so even its own
    // user cannot inspect it, and every other process is hidden.
    assert!(
        !visible.contains(&pids[1].to_string().as_str()) && visible.len() == 1,
        "A's /proc shows other processes: {visible:?}"
    );
    let b_console = vms[1].2.join("console.log");
    let (read, err) = as_user(a.uid, &["cat", b_console.to_str().unwrap()]);
    assert!(!read, "read the other VM's console");
    assert!(err.contains("Permission denied"), "{err}");
    for (vm, _, dir) in vms {
        vm.delete().await.unwrap();
        registry.release(&dir).unwrap();
    }
}

#[test]
fn the_real_guest_kernel_is_checked_against_its_pin() {
    let a = assets();
    assert_eq!(a.kernel_blake3.len(), 64, "{a:?}");
    let kernel_dir = a.kernel.parent().unwrap();
    assert_eq!(
        zos_vm::guest::kernel_tree_hash(kernel_dir).unwrap(),
        a.kernel_blake3
    );
    let pinned = GuestAssets::prepare_pinned(None, Some(&a.kernel_blake3)).unwrap();
    assert_eq!(pinned.kernel_blake3, a.kernel_blake3);
    let wrong = "f".repeat(64);
    let err = format!(
        "{:#}",
        GuestAssets::prepare_pinned(None, Some(&wrong)).unwrap_err()
    );
    assert!(
        err.contains(&wrong) && err.contains(&a.kernel_blake3),
        "{err}"
    );
}
