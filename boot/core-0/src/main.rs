//! core-0: PID 1 of the node OS. See the library for each step.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use core_0::{
    chain,
    console::Backoff,
    dhcp, netconf, release,
    release::ChainDecision,
    say,
    supervisor::{self, Ring, Supervisor},
    system,
};
use zos_release::{manifest, BootParams};

/// The public half of the release key, put here by boot/build.sh.
const RELEASE_KEY: &str = "/etc/zos/release.pub";
/// The oldest release this initramfs accepts (optional), put here by boot/build.sh.
const MIN_RELEASE: &str = "/etc/zos/min-release";
/// Where the verified manifest is kept for the node's services.
const RUNNING_MANIFEST: &str = "/run/zos/release.json";
const LOG_SOCKET: &str = "/run/zos/core-0.sock";
/// Where the OS image is mounted; services name their programs under it with `{os}`.
const OS_ROOT: &str = "/os";

/// A problem only a different boot can fix: say it on the console, periodically, forever.
fn halt(reason: &str) -> ! {
    loop {
        say!("cannot continue: {reason}");
        for _ in 0..30 {
            // Still PID 1: orphans are reaped while waiting.
            let mut status = 0;
            // SAFETY: waitpid on any child without blocking.
            while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
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
    let services = manifest
        .services
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.exec
                    .iter()
                    .map(|a| release::expand(a, &params, OS_ROOT))
                    .collect(),
            )
        })
        .collect();
    let mut sup = Supervisor::new(services, ring);
    // PID 1's loop: start what is due, reap every child (orphans included).
    loop {
        sup.start_due(Instant::now());
        let mut status = 0;
        // SAFETY: waitpid on any child without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            use std::os::unix::process::ExitStatusExt;
            sup.exited(
                pid as u32,
                std::process::ExitStatus::from_raw(status),
                Instant::now(),
            );
            continue;
        }
        let idle = sup
            .next_due()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        std::thread::sleep(idle.clamp(Duration::from_millis(10), Duration::from_millis(200)));
    }
}
