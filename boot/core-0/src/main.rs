//! core-0: PID 1 of the node OS. See the library for each step.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use core_0::{
    chain,
    console::Backoff,
    dhcp, disk, netconf, os, release,
    release::ChainDecision,
    say,
    supervisor::{self, Ring, Supervisor},
    system, upgrade,
};
use zos_release::{manifest, BootParams};

/// The public half of the release key, put here by boot/build.sh.
const RELEASE_KEY: &str = "/etc/zos/release.pub";
/// The oldest release this initramfs accepts (optional), put here by boot/build.sh.
const MIN_RELEASE: &str = "/etc/zos/min-release";
/// Where the verified manifest is kept for the node's services.
const RUNNING_MANIFEST: &str = "/run/zos/release.json";
const LOG_SOCKET: &str = "/run/zos/core-0.sock";
/// The node's data directory (identity, executor state, workloads): the data disk, or memory.
const DATA_DIR: &str = "/var/lib/zos";

/// A problem only a different boot can fix: say it on the console, periodically, forever.
fn halt(reason: &str) -> ! {
    loop {
        say!("cannot continue: {reason}");
        for _ in 0..30 {
            // Still PID 1: orphans are reaped while waiting.
            while upgrade::reap_one().is_some() {}
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn network(backoff: &mut Backoff) -> dhcp::Lease {
    let mut attempt: u32 = 0;
    loop {
        let nics = netconf::nics();
        for nic in &nics {
            if let Err(e) = netconf::up(nic) {
                say!("{nic}: cannot bring it up: {e}");
            }
        }
        for nic in &nics {
            let Ok(mac) = netconf::mac(nic) else { continue };
            let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
                ^ attempt.wrapping_mul(0x9e37_79b9);
            match dhcp::negotiate(nic, mac, xid, Duration::from_secs(4)) {
                Ok(Some(lease)) => match netconf::apply(&lease) {
                    Ok(()) => return lease,
                    Err(e) => say!("{nic}: lease {} could not be applied: {e}", lease.address),
                },
                Ok(None) => {}
                Err(e) => say!("{nic}: DHCP failed: {e}"),
            }
        }
        attempt = attempt.wrapping_add(1);
        let wait = backoff.next_wait();
        say!(
            "no DHCP lease on {} ({}); retrying in {} s",
            if nics.is_empty() {
                "any NIC".into()
            } else {
                nics.join(", ")
            },
            if nics.is_empty() {
                "no NIC found"
            } else {
                "no answer"
            },
            wait.as_secs()
        );
        std::thread::sleep(wait);
    }
}

/// A lease on the first NIC that answers, asked for until one does, and said on the console.
fn obtain_lease() -> dhcp::Lease {
    let lease = network(&mut Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(30),
    ));
    say!(
        "{}: {}/{} via {} from DHCP server {}",
        lease.interface,
        lease.address,
        lease.prefix_len,
        lease
            .router
            .map(|r| r.to_string())
            .unwrap_or_else(|| "no router".into()),
        lease.server
    );
    lease
}

/// Keeps the node's lease for as long as it runs: extended before it ends; when a server
/// refuses it or it expires, the address is dropped and a new lease negotiated on any NIC.
fn keep_network(mut lease: dhcp::Lease) {
    loop {
        let lost = match netconf::mac(&lease.interface) {
            Ok(mac) => {
                let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]).rotate_left(16);
                let Some(keeper) = dhcp::Keeper::new(lease.clone(), mac, xid) else {
                    return; // A lease that never ends.
                };
                keep_until_lost(keeper, &lease)
            }
            Err(e) => format!("its hardware address cannot be read ({e})"),
        };
        say!(
            "{}: {lost}; dropping the address and asking for a new lease",
            lease.interface
        );
        if let Err(e) = netconf::clear(&lease.interface) {
            say!("{}: the address could not be dropped: {e}", lease.interface);
        }
        lease = obtain_lease();
    }
}

/// Extends a lease for as long as its servers do; returns why it was lost.
fn keep_until_lost(mut keeper: dhcp::Keeper, lease: &dhcp::Lease) -> String {
    loop {
        match keeper.next() {
            Ok(dhcp::Kept::Extended { server, secs }) => say!(
                "{}: lease of {} extended by {server} for {secs} s",
                lease.interface,
                lease.address
            ),
            Ok(dhcp::Kept::Lost(why)) => return why,
            Err(e) => {
                say!("{}: DHCP socket: {e}; trying again in 5 s", lease.interface);
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("core-0 is the node OS's first process (PID 1); it is not run by hand");
        std::process::exit(2);
    }
    // PID 1 must not exit (the kernel would panic): a bug is reported and the node waits.
    if let Err(panic) = std::panic::catch_unwind(run) {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        halt(&format!("core-0 failed: {what}"));
    }
}

fn run() {
    if let Err(e) = system::early_mounts() {
        say!("early mounts failed: {e}");
    }
    say!(
        "starting (Zero-OS node, core-0 {})",
        env!("CARGO_PKG_VERSION")
    );
    for (module, e) in system::load_modules(Path::new("/lib/modules")) {
        say!("module {module} not loaded: {e}");
    }
    if let Err(e) = system::loopback_up() {
        say!("lo: {e}");
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = BootParams::parse(&cmdline).unwrap_or_else(|e| halt(&e.to_string()));
    say!(
        "farm {} runmode {} chain {} hub {} boot service {}",
        params.farm,
        params.runmode,
        params.chain,
        params.hub,
        params.boot
    );
    let key = std::fs::read_to_string(RELEASE_KEY)
        .map_err(|e| format!("{RELEASE_KEY}: {e}"))
        .and_then(|t| manifest::parse_public_key(&t).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| halt(&format!("no release key in the initramfs: {e}")));
    let floor = match std::fs::read_to_string(MIN_RELEASE) {
        Ok(t) => Some(
            t.trim()
                .parse()
                .unwrap_or_else(|e| halt(&format!("{MIN_RELEASE}: {e}"))),
        ),
        Err(_) => None,
    };

    let lease = obtain_lease();
    std::thread::spawn(move || keep_network(lease));

    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    let manifest = loop {
        let decision = match chain::finalized_release(&params.chain, params.runmode) {
            Ok((block, Some(r))) if r.applies_to(params.farm, block) => {
                say!("the chain set release {} for {} (finalized block {block})", r.version, params.runmode);
                ChainDecision::Run(r.version, r.manifest_blake3)
            }
            Ok((block, Some(r))) => ChainDecision::Undecided(format!(
                "its release {} is not for farm {} now (halted, or for every farm from block {}; finalized: {block})",
                r.version, params.farm, r.general_from
            )),
            Ok((_, None)) => ChainDecision::Undecided(format!("it has set no release for {}", params.runmode)),
            Err(e) => ChainDecision::Undecided(format!("the chain cannot be asked ({e})")),
        };
        let decided = match release::choose(&params, &decision) {
            Ok(Some(chosen)) => Some(chosen),
            Ok(None) => {
                if let ChainDecision::Undecided(why) = &decision {
                    say!(
                        "{why}: running the boot service's current signed release ({} only)",
                        params.runmode
                    );
                }
                None
            }
            Err(wait_reason) => {
                let wait = backoff.next_wait();
                say!("{wait_reason}; asking again in {} s", wait.as_secs());
                std::thread::sleep(wait);
                continue;
            }
        };
        match release::fetch_verified(&params, &key, floor, decided) {
            Ok((manifest, server_time)) => {
                if let Some(t) = server_time {
                    match system::sync_clock(t, Duration::from_secs(120)) {
                        Ok(Some(skew)) => {
                            say!("clock was {skew} s off the boot service's; set to its time")
                        }
                        Ok(None) => {}
                        Err(e) => say!("clock is off the boot service's and could not be set: {e}"),
                    }
                }
                break manifest;
            }
            Err(e) => {
                let wait = backoff.next_wait();
                say!(
                    "release manifest {}: {e}; retrying in {} s",
                    release::manifest_url(&params, decided.map(|(v, _)| v)),
                    wait.as_secs()
                );
                std::thread::sleep(wait);
            }
        }
    };
    say!(
        "release {} for {} verified: OS image {}, {} artefacts, {} services",
        manifest.version,
        manifest.runmode,
        manifest.image_root,
        manifest.artifacts.len(),
        manifest.services.len()
    );
    let _ = std::fs::create_dir_all("/run/zos");
    if let Err(e) = std::fs::write(RUNNING_MANIFEST, manifest.to_bytes()) {
        say!("{RUNNING_MANIFEST}: {e}");
    }

    let ring = Arc::new(Mutex::new(Ring::new(supervisor::RING_LINES)));
    if let Err(e) = supervisor::serve_ring(ring.clone(), Path::new(LOG_SOCKET)) {
        say!("{LOG_SOCKET}: {e}");
    }

    // The data disk first when it is already the node's: the OS image's chunk cache survives
    // reboots there. A blank disk is formatted with the OS image's mkfs, once it is mounted.
    let disks = disk::disks(Path::new("/sys/block"));
    let (data, data_disk) = DataDisk::find(&disks);
    let paths = os::OsPaths::for_release(
        &manifest.version.to_string(),
        &data.cache_dir(),
        matches!(data, DataDisk::Node),
    );
    // No service runs yet: whatever ended while the OS image came up is no one's.
    let (mount_pid, _) = bring_up_os(&manifest, &params, &paths, &ring);
    // From here on (release switches) the cache is on the disk once it is formatted.
    let data = data.finish(&paths.root);
    let cache = (data.cache_dir(), matches!(data, DataDisk::Node));
    // Under the data directory, so the services' root sees them through its bind.
    mount_capacity(&disks, data_disk.as_deref(), &paths.root);
    if let Err(e) = os::bind_data(&paths.root, Path::new(DATA_DIR)) {
        say!("the data directory is not in the OS root: {e}");
    }

    let mut running = Running {
        sup: Supervisor::new(services_of(&manifest, &params), ring.clone())
            .in_root(paths.root.clone()),
        manifest,
        paths,
        mount_pid,
        retired: Vec::new(),
    };
    let mut release_checked = Instant::now();
    let (offers, retry) = upgrade::follow(
        params.clone(),
        key,
        running.manifest.version,
        FOLLOW_INTERVAL,
    );
    // PID 1's loop: start what is due, reap every child (orphans included), switch releases.
    loop {
        if let Ok(next) = offers.try_recv() {
            if let Err(not_tried) = switch_release(&mut running, next, &params, &cache, &ring) {
                let _ = retry.send(not_tried);
            }
        }
        running.sup.start_due(Instant::now());
        if release_checked.elapsed() >= RELEASE_CHECK_INTERVAL {
            running.release_unused();
            release_checked = Instant::now();
        }
        if let Some((pid, status)) = upgrade::reap_one() {
            running.reaped(pid, status, &params, &ring);
            continue;
        }
        let idle = running
            .sup
            .next_due()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        std::thread::sleep(idle.clamp(Duration::from_millis(10), Duration::from_millis(200)));
    }
}

/// How often a running node asks the chain for its release.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(6);
/// How long each new service must keep running during a switch.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a stopped service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The release this node runs.
struct Running {
    manifest: manifest::ReleaseManifest,
    paths: os::OsPaths,
    mount_pid: u32,
    sup: Supervisor,
    /// Earlier releases' OS images, mounted while anything still runs from them.
    retired: Vec<Retired>,
}

/// An earlier release's OS image: guests its executor started run its programs until they end.
struct Retired {
    version: zos_release::Version,
    paths: os::OsPaths,
    mount_pid: u32,
    /// Its filesystems, read while it was mounted ([`os::image_devices`]).
    devices: Vec<u64>,
    /// Unmounted and its mount process told to end: its writable layer goes once it has.
    released: bool,
}

/// How often retired OS images are checked for processes still using them.
const RELEASE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl Running {
    /// Unmounts the retired OS images nothing runs from any more, and ends their mount
    /// processes: each held its own FUSE mount, cache handle and writable layer.
    fn release_unused(&mut self) {
        for r in self.retired.iter_mut().filter(|r| !r.released) {
            if os::in_use(Path::new("/proc"), &r.paths.root, &r.devices) {
                continue;
            }
            os::detach(&r.paths);
            // SAFETY: SIGTERM to the retired image's mount process, a child of ours not reaped
            // yet (`reaped` drops the entry when it is, and frees its writable layer).
            unsafe { libc::kill(r.mount_pid as libc::pid_t, libc::SIGTERM) };
            r.released = true;
            say!(
                "released the OS image of release {} (nothing runs from it)",
                r.version
            );
        }
    }

    /// A child ended: a service (restarted by its supervisor), the OS image's mount process
    /// (mounted again), a retired image's mount process (forgotten), or an orphan.
    fn reaped(
        &mut self,
        pid: u32,
        status: std::process::ExitStatus,
        params: &BootParams,
        ring: &supervisor::SharedRing,
    ) {
        if let Some(i) = self.retired.iter().position(|r| r.mount_pid == pid) {
            let gone = self.retired.remove(i);
            os::detach(&gone.paths);
            // A layer is freed only when nothing used the image any more; one whose mount
            // process died under a guest stays for that guest's files.
            if !gone.released {
                return;
            }
            match os::discard_layer(&gone.paths) {
                Ok(()) => say!("freed the writable layer of release {}", gone.version),
                Err(e) => say!("the writable layer of release {} stays: {e}", gone.version),
            }
            return;
        }
        if pid != self.mount_pid {
            self.sup.exited(pid, status, Instant::now());
            return;
        }
        // The filesystem the services run from is gone: mount it again; the services fail on
        // the dead root and are restarted into the new one.
        say!(
            "the OS image's mount process {}; mounting it again",
            supervisor::describe(status)
        );
        // The services stop first: none may keep writing into the old layer while the new
        // mount reuses it.
        self.sup.stop_all(STOP_GRACE);
        os::detach(&self.paths);
        let (mount_pid, ended) = bring_up_os(&self.manifest, params, &self.paths, ring);
        self.mount_pid = mount_pid;
        // Reaped while the image was down (a retired image's mount process, an orphan): handed
        // on before anything new starts, so no new child can be taken for one of them.
        for (pid, status) in ended {
            self.reaped(pid, status, params, ring);
        }
        if let Err(e) = os::bind_data(&self.paths.root, Path::new(DATA_DIR)) {
            say!("the data directory is not in the OS root: {e}");
        }
        for name in self.sup.names() {
            self.sup.start(&name, Instant::now());
        }
    }
}

fn services_of(
    manifest: &manifest::ReleaseManifest,
    params: &BootParams,
) -> Vec<(String, Vec<String>)> {
    manifest
        .services
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.exec
                    .iter()
                    .map(|a| release::expand(a, params, manifest.version))
                    .collect(),
            )
        })
        .collect()
}

/// Switches to the release the chain set: its OS image mounted beside the running one, then
/// its services in place of the old ones one by one; any that does not stay up brings the old
/// release back. The old OS image stays mounted while guests started from it run its programs.
/// A release whose image does not mount is not tried: `Err` carries the running version.
fn switch_release(
    running: &mut Running,
    next: manifest::ReleaseManifest,
    params: &BootParams,
    cache: &(PathBuf, bool),
    ring: &supervisor::SharedRing,
) -> Result<(), zos_release::Version> {
    let started = Instant::now();
    let (from, to) = (running.manifest.version, next.version);
    let paths = os::OsPaths::for_release(&to.to_string(), &cache.0, cache.1);
    let mount_pid = match os::mount(
        &next.image_root,
        &params.hub,
        &paths,
        ring,
        Duration::from_secs(120),
    ) {
        Ok(pid) => pid,
        Err(e) => {
            say!(
                "release {to}: its OS image {} does not mount ({e}); release {from} keeps running",
                next.image_root
            );
            os::detach(&paths);
            return Err(from);
        }
    };
    if let Err(e) =
        os::bind_system(&paths.root).and_then(|()| os::bind_data(&paths.root, Path::new(DATA_DIR)))
    {
        say!("release {to}: its OS root is incomplete: {e}");
    }
    let mut next_sup = Supervisor::new(services_of(&next, params), ring.clone())
        .in_root(paths.root.clone())
        .paused();
    let mut strays = Vec::new();
    match upgrade::switch(
        &mut running.sup,
        &mut next_sup,
        SETTLE,
        STOP_GRACE,
        |pid, status| strays.push((pid, status)),
    ) {
        upgrade::Switch::Done => {
            say!(
                "switched from release {from} to {to} in {:.1} s (services restarted one by one)",
                started.elapsed().as_secs_f64()
            );
            if let Err(e) = std::fs::write(RUNNING_MANIFEST, next.to_bytes()) {
                say!("{RUNNING_MANIFEST}: {e}");
            }
            let retired = std::mem::take(&mut running.retired);
            let old = std::mem::replace(
                running,
                Running {
                    manifest: next,
                    paths,
                    mount_pid,
                    sup: next_sup,
                    retired,
                },
            );
            running.retired.push(Retired {
                version: from,
                devices: os::image_devices(&old.paths),
                paths: old.paths,
                mount_pid: old.mount_pid,
                released: false,
            });
        }
        upgrade::Switch::RolledBack(reason) => {
            say!("ROLLED BACK release {to}: {reason}; release {from} runs again");
            // Retired like a release switched away from: a guest its executor started while
            // settling may run from it; it is released (and its layer freed) once none does.
            running.retired.push(Retired {
                version: to,
                devices: os::image_devices(&paths),
                paths,
                mount_pid,
                released: false,
            });
        }
    }
    for (pid, status) in strays {
        running.reaped(pid, status, params, ring);
    }
    Ok(())
}

/// Mounts the release's OS image (retrying with backoff: the hub may be down) and binds the
/// machine's filesystems into it. Returns the mount process's pid.
///
/// PID 1 keeps reaping while it waits between attempts (a hub may be down for long): the
/// children that ended meanwhile are returned with the mount process's pid, for their owners.
fn bring_up_os(
    manifest: &manifest::ReleaseManifest,
    params: &BootParams,
    paths: &os::OsPaths,
    ring: &supervisor::SharedRing,
) -> (u32, Vec<(u32, std::process::ExitStatus)>) {
    let mut ended = Vec::new();
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    loop {
        let started = Instant::now();
        match os::mount(
            &manifest.image_root,
            &params.hub,
            paths,
            ring,
            Duration::from_secs(120),
        ) {
            Ok(pid) => {
                say!(
                    "OS image {} mounted lazily at {} in {} ms (chunks from {}, verified by BLAKE3)",
                    manifest.image_root,
                    paths.root.display(),
                    started.elapsed().as_millis(),
                    params.hub
                );
                if let Err(e) = os::bind_system(&paths.root) {
                    say!("the OS root is incomplete: {e}");
                }
                return (pid, ended);
            }
            Err(e) => {
                let wait = backoff.next_wait();
                say!(
                    "OS image {} from {}: {e}; retrying in {} s",
                    manifest.image_root,
                    params.hub,
                    wait.as_secs()
                );
                os::detach(paths);
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    match upgrade::reap_one() {
                        Some(child) => ended.push(child),
                        None => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            }
        }
    }
}

/// Formats `device` ext4 labelled `label` with the OS image's mkfs (run inside `root`).
fn format_ext4(device: &Path, label: &str, root: &Path) -> Result<(), String> {
    let mut mkfs = std::process::Command::new("/usr/sbin/mkfs.ext4");
    mkfs.args(["-q", "-L", label, "-m", "0"])
        .arg(device)
        .stdin(std::process::Stdio::null());
    supervisor::in_root(&mut mkfs, root);
    match mkfs.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "mkfs.ext4 {}: {}",
            supervisor::describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("mkfs.ext4: {e}")),
    }
}

/// Gives every disk but the data disk to workloads: a capacity filesystem is mounted under
/// `<data>/capacity/<its UUID>`; a blank disk is formatted as one first (with the OS image's
/// mkfs, inside `root`); anything else is left untouched.
fn mount_capacity(disks: &[String], data_disk: Option<&str>, root: &Path) {
    for name in disks.iter().filter(|n| Some(n.as_str()) != data_disk) {
        let device = disk::device(name);
        let contents = disk::read_head(&device).map(|h| disk::classify(&h));
        let uuid = match contents {
            Ok(disk::DiskContents::Capacity(uuid)) => uuid,
            Ok(disk::DiskContents::Blank) => {
                // Read again right before writing: nothing but a blank disk is formatted.
                if !disk::still_blank(&device).unwrap_or(false) {
                    say!(
                        "{} is blank at its start but not at its end (a backup partition table or RAID superblock?) and is left untouched",
                        device.display()
                    );
                    continue;
                }
                let formatted = format_ext4(&device, disk::CAPACITY_LABEL, root).and_then(|()| {
                    match disk::read_head(&device).map(|h| disk::classify(&h)) {
                        Ok(disk::DiskContents::Capacity(uuid)) => Ok(uuid),
                        other => Err(format!("after mkfs it reads as {other:?}")),
                    }
                });
                match formatted {
                    Ok(uuid) => {
                        say!(
                            "{}: blank disk formatted as workload capacity",
                            device.display()
                        );
                        uuid
                    }
                    Err(e) => {
                        say!("{}: formatting failed ({e}); not used", device.display());
                        continue;
                    }
                }
            }
            Ok(disk::DiskContents::NodeData) => {
                say!(
                    "{} holds another node data filesystem and is left untouched",
                    device.display()
                );
                continue;
            }
            Ok(disk::DiskContents::Foreign(what)) => {
                say!(
                    "{} holds {what} and is left untouched (wipe its first MiB to give it to workloads)",
                    device.display()
                );
                continue;
            }
            Err(e) => {
                say!("{}: unreadable ({e}); not used", device.display());
                continue;
            }
        };
        let target = Path::new(DATA_DIR).join("capacity").join(&uuid);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if os::is_mount_point(&mounts, &target) {
            say!(
                "{}: another disk with filesystem {uuid} is mounted already (a cloned disk?); left untouched",
                device.display()
            );
            continue;
        }
        match std::fs::create_dir_all(&target).and_then(|()| disk::mount_data(&device, &target)) {
            Ok(()) => {
                say!(
                    "{}: workload capacity mounted at {} ({} MiB)",
                    device.display(),
                    target.display(),
                    disk::size_bytes(&device).unwrap_or(0) >> 20
                );
            }
            Err(e) => say!("{}: capacity disk not mounted: {e}", device.display()),
        }
    }
}

/// The node's data disk, as found at boot.
enum DataDisk {
    /// Already a node data disk: mounted.
    Node,
    /// Blank: formatted once the OS image (with mkfs) is mounted.
    Blank(PathBuf),
    /// None usable: the data lives in memory.
    Memory,
}

impl DataDisk {
    /// The node data disk wherever it is among `disks` (a disk added later may sort before
    /// it), else the first disk; returns its name too when it holds the data.
    fn find(disks: &[String]) -> (Self, Option<String>) {
        let heads: Vec<(String, std::io::Result<Vec<u8>>)> = disks
            .iter()
            .map(|name| (name.clone(), disk::read_head(&disk::device(name))))
            .collect();
        let chosen = heads
            .iter()
            .find(|(_, head)| {
                head.as_ref()
                    .is_ok_and(|h| disk::classify(h) == disk::DiskContents::NodeData)
            })
            .or(heads.first());
        let Some((name, head)) = chosen else {
            say!("no disk: the node identity lives in memory and is made anew at every boot");
            return (Self::in_memory(), None);
        };
        let data = Self::of(name, head);
        // A disk that is not used for the data (a capacity disk first, say) stays a candidate
        // for capacity.
        let used = matches!(data, Self::Node | Self::Blank(_));
        (data, used.then(|| name.clone()))
    }

    fn of(name: &str, head: &std::io::Result<Vec<u8>>) -> Self {
        let device = disk::device(name);
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                say!(
                    "{}: unreadable ({e}); the node identity lives in memory",
                    device.display()
                );
                return Self::in_memory();
            }
        };
        match disk::classify(head) {
            disk::DiskContents::NodeData => match disk::mount_data(&device, Path::new(DATA_DIR)) {
                Ok(()) => {
                    say!(
                        "{}: node data disk mounted; the node keeps its identity",
                        device.display()
                    );
                    Self::Node
                }
                Err(e) => {
                    say!("{}: the node data disk does not mount ({e}); the node identity lives in memory", device.display());
                    Self::in_memory()
                }
            },
            disk::DiskContents::Blank => match disk::tail_is_blank(&device) {
                Ok(true) => Self::Blank(device),
                _ => {
                    say!(
                        "{} is blank at its start but not at its end (a backup partition table or RAID superblock?) and is left untouched; the node identity lives in memory",
                        device.display()
                    );
                    Self::in_memory()
                }
            },
            disk::DiskContents::Foreign(what) => {
                say!(
                    "{} holds {what} and is left untouched (wipe its first MiB to give it to the node); the node identity lives in memory",
                    device.display()
                );
                Self::in_memory()
            }
            disk::DiskContents::Capacity(_) => {
                say!(
                    "{} is a workload capacity disk, not the node's data disk; the node identity lives in memory",
                    device.display()
                );
                Self::in_memory()
            }
        }
    }

    fn in_memory() -> Self {
        if let Err(e) = disk::mount_memory(Path::new(DATA_DIR)) {
            say!("{DATA_DIR}: {e}");
        }
        Self::Memory
    }

    /// Where the OS image's chunks are cached: on the data disk, else in memory.
    fn cache_dir(&self) -> PathBuf {
        match self {
            Self::Node => Path::new(DATA_DIR).join("cache/os-image"),
            _ => PathBuf::from("/run/zos/cache/os-image"),
        }
    }

    /// Formats a blank disk with the OS image's mkfs (run inside `root`) and mounts it.
    fn finish(self, root: &Path) -> Self {
        let Self::Blank(device) = self else {
            return self;
        };
        // Read again right before writing: nothing but a blank disk is ever formatted.
        if !disk::still_blank(&device).unwrap_or(false) {
            say!(
                "{} is no longer blank and is left untouched; the node identity lives in memory",
                device.display()
            );
            return Self::in_memory();
        }
        let made = format_ext4(&device, disk::LABEL, root).and_then(|()| {
            disk::mount_data(&device, Path::new(DATA_DIR)).map_err(|e| e.to_string())
        });
        match made {
            Ok(()) => {
                say!(
                    "{}: blank disk formatted as the node data disk ({}); the node identity is kept there",
                    device.display(),
                    disk::LABEL
                );
                Self::Node
            }
            Err(e) => {
                say!(
                    "{}: formatting failed ({e}); the node identity lives in memory",
                    device.display()
                );
                Self::in_memory()
            }
        }
    }
}
