//! A running node follows the release the chain sets: the new release's services replace the
//! old ones one at a time, each watched while it settles; the first that exits puts every old
//! service back (an automatic rollback). Guests are not services: they keep running (their
//! shims are core-0's children) and the new executor adopts them.

use std::{
    process::ExitStatus,
    sync::mpsc,
    time::{Duration, Instant},
};

use zos_release::{BootParams, ReleaseManifest, VerifyingKey, Version};

use crate::{chain, release, say, supervisor::Supervisor};

/// How a switch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Switch {
    /// Every service of the new release runs.
    Done,
    /// A new service exited while settling: the old release runs again.
    RolledBack(String),
}

/// Replaces `current`'s services by `next`'s (a paused supervisor) in `next`'s order: the old
/// service of the same name is stopped, the new one started and watched for `settle`. Old
/// services the new release lacks are stopped at the end. Children that belong to neither
/// go to `other` (the PID-1 reaping goes on during the switch).
pub fn switch(
    current: &mut Supervisor,
    next: &mut Supervisor,
    settle: Duration,
    stop_grace: Duration,
    mut other: impl FnMut(u32, ExitStatus),
) -> Switch {
    let old_names = current.names();
    let roll_back = |current: &mut Supervisor, next: &mut Supervisor, reason: String| {
        next.stop_all(stop_grace);
        for old in &old_names {
            current.start(old, Instant::now());
        }
        Switch::RolledBack(reason)
    };
    let mut switched: Vec<(String, u32)> = Vec::new();
    for name in next.names() {
        current.stop(&name, stop_grace);
        next.start(&name, Instant::now());
        let Some(started) = next.pid_of(&name) else {
            return roll_back(current, next, format!("service {name} did not start"));
        };
        switched.push((name.clone(), started));
        let deadline = Instant::now() + settle;
        while Instant::now() < deadline {
            let Some((pid, status)) = reap_one() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            // Any new service that ends while the switch goes on fails it, not only the one
            // settling now.
            if let Some((failed, _)) = switched.iter().find(|(_, p)| *p == pid) {
                let reason = format!(
                    "service {failed} {} while settling ({} s each)",
                    crate::supervisor::describe(status),
                    settle.as_secs()
                );
                next.exited(pid, status, Instant::now());
                return roll_back(current, next, reason);
            }
            if !next.exited(pid, status, Instant::now())
                && !current.exited(pid, status, Instant::now())
            {
                other(pid, status);
            }
        }
    }
    for old in old_names {
        current.stop(&old, stop_grace);
    }
    Switch::Done
}

/// Any ended child, without blocking.
pub fn reap_one() -> Option<(u32, ExitStatus)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: waitpid on any child without blocking.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then(|| (pid as u32, ExitStatus::from_raw(status)))
}

/// Asks the chain every `interval` for this runmode's release; a newer one that applies to
/// this node's farm is fetched, verified (release key, runmode, no downgrade, the chain's
/// manifest hash) and sent. Each version is offered once: a release that was rolled back
/// is not tried again; the council sets a newer one.
///
/// A release that could not even be tried (its OS image did not mount) is sent back on the
/// returned sender with the version still running, and is offered again.
pub fn follow(
    params: BootParams,
    key: VerifyingKey,
    running: Version,
    interval: Duration,
) -> (mpsc::Receiver<ReleaseManifest>, mpsc::Sender<Version>) {
    let (tx, rx) = mpsc::channel();
    let (retry_tx, retry_rx) = mpsc::channel::<Version>();
    std::thread::spawn(move || {
        let mut offered = running;
        loop {
            std::thread::sleep(interval);
            while let Ok(still_running) = retry_rx.try_recv() {
                offered = still_running;
            }
            let r = match chain::finalized_release(&params.chain, params.runmode) {
                Ok((block, Some(r))) if r.applies_to(params.farm, block) => r,
                // Not for this node yet, or the chain is unreachable: ask again later.
                _ => continue,
            };
            if r.version <= offered {
                continue;
            }
            match release::fetch_verified(
                &params,
                &key,
                Some(offered),
                Some((r.version, r.manifest_blake3)),
            ) {
                Ok((manifest, _)) => {
                    offered = manifest.version;
                    say!(
                        "the chain set release {} for {}: verified, switching",
                        manifest.version,
                        params.runmode
                    );
                    if tx.send(manifest).is_err() {
                        return;
                    }
                }
                Err(e) => say!(
                    "the chain set release {}, not taken yet: {e}; asking again in {} s",
                    r.version,
                    interval.as_secs()
                ),
            }
        }
    });
    (rx, retry_tx)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::supervisor::{Ring, RING_LINES};

    fn sup(services: &[(&str, &str)]) -> Supervisor {
        let ring = Arc::new(Mutex::new(Ring::new(RING_LINES)));
        Supervisor::new(
            services
                .iter()
                .map(|(n, script)| {
                    (
                        n.to_string(),
                        vec!["/bin/sh".into(), "-c".into(), script.to_string()],
                    )
                })
                .collect(),
            ring,
        )
    }

    fn running(s: &Supervisor, name: &str) -> bool {
        s.pid_of(name)
            .is_some_and(|pid| unsafe { libc::kill(pid as i32, 0) } == 0)
    }

    #[test]
    fn a_release_switch_goes_one_by_one_and_rolls_back_when_a_service_fails() {
        // waitpid(-1) reaps any child of this test process: the tests that do so run alone.
        let _alone = crate::supervisor::tests::SERIAL.lock().unwrap();
        let mut current = sup(&[("a", "exec sleep 1000"), ("b", "exec sleep 1000")]);
        current.start_due(Instant::now());
        let (old_a, old_b) = (current.pid_of("a").unwrap(), current.pid_of("b").unwrap());

        // v3: `a` comes up, `b` exits at once: everything goes back to the old services.
        let mut broken = sup(&[("a", "exec sleep 1000"), ("b", "exit 7")]).paused();
        let mut strays = Vec::new();
        let outcome = switch(
            &mut current,
            &mut broken,
            Duration::from_secs(1),
            Duration::from_secs(2),
            |pid, _| strays.push(pid),
        );
        assert_eq!(
            outcome,
            Switch::RolledBack("service b exited with 7 while settling (1 s each)".into())
        );
        assert!(!running(&broken, "a") && !running(&broken, "b"));
        assert!(running(&current, "a") && running(&current, "b"));
        // Both old services were stopped in turn and run again as new processes.
        assert_ne!(current.pid_of("a"), Some(old_a));
        assert_ne!(current.pid_of("b"), Some(old_b));

        // A release whose program is missing: rolled back at once.
        let mut missing_slots = Supervisor::new(
            vec![("a".into(), vec!["/nonexistent/program".into()])],
            Arc::new(Mutex::new(Ring::new(RING_LINES))),
        )
        .paused();
        let outcome = switch(
            &mut current,
            &mut missing_slots,
            Duration::from_secs(1),
            Duration::from_secs(2),
            |pid, _| strays.push(pid),
        );
        assert_eq!(
            outcome,
            Switch::RolledBack("service a did not start".into())
        );
        assert!(running(&current, "a") && running(&current, "b"));

        // v2: both come up; the old ones are gone, and a service v2 lacks is stopped too.
        let mut good = sup(&[("a", "exec sleep 1000")]).paused();
        let outcome = switch(
            &mut current,
            &mut good,
            Duration::from_millis(500),
            Duration::from_secs(2),
            |pid, _| strays.push(pid),
        );
        assert_eq!(outcome, Switch::Done);
        assert!(running(&good, "a"));
        assert_eq!(current.pid_of("a"), None);
        assert_eq!(current.pid_of("b"), None);
        good.stop_all(Duration::from_secs(2));
        assert!(strays.is_empty(), "{strays:?}");
    }
}
