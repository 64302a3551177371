//! Health-check workloads: each check probes its VM every interval (through the guest's
//! agent, see [`GuestProbes`]). `retries` failures in a row outside the start period make the
//! check unhealthy: the engine reports it on chain with the probe's answer, and the check
//! restarts the VM if its policy says so (backing off between restarts). A passing probe makes
//! it healthy again.
//!
//! The state lives in memory: after an executor restart every check starts healthy, in its
//! start period, and the engine reports whatever it finds next.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use std::time::Instant;
use tokio::sync::Notify;
use tracing::{info, warn};
use zos_primitives::{
    spec::{HealthCheckSpec, HealthProbe, OnUnhealthy, Workload, WorkloadKind},
    ContractId,
};

use super::{Driver, DriverError, DriverResult, Observed, Usage, WorkloadCtx};

/// The wait, in seconds, between an unhealthy VM's first restart and its second; it doubles
/// with each restart while the VM stays unhealthy, up to [`MAX_RESTART_BACKOFF`].
const FIRST_RESTART_BACKOFF: u32 = 30;
const MAX_RESTART_BACKOFF: u32 = 600;
/// Characters of a probe's answer kept in the reason reported on chain.
const MAX_REASON_CHARS: usize = 200;

/// Changes whenever a VM (re)starts.
pub type BootMarker = (u64, i64, i64);

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Healthy,
    /// The service failed the probe: why (public: it goes on chain).
    Unhealthy(String),
    /// Nothing to judge the service by (the guest's agent cannot run this probe): not counted.
    Inconclusive(String),
}

/// What health checks need of the VMs: the edge to the guests' agents and to the hypervisor.
#[async_trait]
pub trait GuestProbes: Send + Sync {
    /// Runs `probe` in the VM.
    async fn probe(
        &self,
        ctx: &WorkloadCtx,
        vm: &Workload,
        probe: &HealthProbe,
        timeout: Duration,
    ) -> ProbeOutcome;
    /// Restarts the VM's guest (its disks and volumes stay).
    async fn restart(&self, ctx: &WorkloadCtx, vm: &Workload) -> anyhow::Result<()>;
    /// A marker of the VM's current boot; `None` when it does not run.
    fn boot_marker(&self, ctx: &WorkloadCtx, vm: &Workload) -> Option<BootMarker>;
}

type Key = (ContractId, Vec<u8>);

/// One registered check.
struct Check {
    ctx: WorkloadCtx,
    vm: Workload,
    spec: HealthCheckSpec,
    /// Bumped when the check is replaced: a probe of an older one is ignored.
    generation: u64,
    paused: bool,
    /// Failures before this instant do not count (the VM is starting).
    counting_from: Instant,
    next_probe: Instant,
    probing: bool,
    failures: u32,
    /// Why the check is unhealthy, as reported; `None` while healthy.
    unhealthy: Option<String>,
    /// Restarts in this unhealthy episode.
    restarts: u32,
    next_restart: Instant,
    boot: Option<BootMarker>,
    /// Whether a probe has seen the VM (its first boot marker is not a reboot).
    observed: bool,
}

impl Check {
    /// A new boot of the VM (started, restarted, re-created): its start period begins.
    fn booted(&mut self, now: Instant, second: Duration) {
        self.counting_from = now + second * self.spec.start_period_secs.into();
        self.failures = 0;
    }
}

struct Monitor {
    probes: Arc<dyn GuestProbes>,
    checks: Mutex<HashMap<Key, Check>>,
    /// Woken when a check turns unhealthy or healthy: the engine reports it.
    changed: Arc<Notify>,
    /// Verdicts an earlier run of the executor reported, taken up by the next install (an
    /// executor restart does not announce a recovery that did not happen).
    recalled: Mutex<HashMap<Key, String>>,
    generations: std::sync::atomic::AtomicU64,
    /// What the specs' seconds last: one second, except in tests.
    second: Duration,
}

/// The driver of `health_check` workloads.
pub struct HealthDriver {
    monitor: Arc<Monitor>,
}

impl HealthDriver {
    /// Starts the monitor (on the current tokio runtime); `changed` is notified on every
    /// change of health.
    pub fn start(probes: Arc<dyn GuestProbes>, changed: Arc<Notify>) -> Self {
        Self::start_scaled(probes, changed, Duration::from_secs(1))
    }

    /// [`Self::start`] with `second` standing for one second of the specs' timings.
    fn start_scaled(probes: Arc<dyn GuestProbes>, changed: Arc<Notify>, second: Duration) -> Self {
        let monitor = Arc::new(Monitor {
            probes,
            checks: Mutex::default(),
            changed,
            recalled: Mutex::default(),
            generations: Default::default(),
            second,
        });
        tokio::spawn(monitor.clone().run());
        Self { monitor }
    }
}

fn key(ctx: &WorkloadCtx, w: &Workload) -> Key {
    (ctx.contract, w.name.as_bytes().to_vec())
}

fn check_spec(w: &Workload) -> DriverResult<&HealthCheckSpec> {
    match &w.kind {
        WorkloadKind::HealthCheck(check) => Ok(check),
        _ => Err(DriverError::permanent("not a health check workload")),
    }
}

fn cut(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}...", &reason[..at]),
        None => reason.to_string(),
    }
}

/// Seconds to wait after restart number `restarts + 1` before the next one.
fn restart_backoff_secs(restarts: u32) -> u32 {
    FIRST_RESTART_BACKOFF
        .saturating_mul(1u32 << restarts.min(10))
        .min(MAX_RESTART_BACKOFF)
}

impl Monitor {
    fn checks(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Check>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>) {
        // Checks are looked at twice per (spec) second.
        let mut tick = tokio::time::interval(self.second / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let due: Vec<(Key, u64, WorkloadCtx, Workload, HealthCheckSpec)> = self
                .checks()
                .iter_mut()
                .filter(|(_, c)| !c.paused && !c.probing && now >= c.next_probe)
                .map(|(k, c)| {
                    c.probing = true;
                    (
                        k.clone(),
                        c.generation,
                        c.ctx.clone(),
                        c.vm.clone(),
                        c.spec.clone(),
                    )
                })
                .collect();
            for (key, generation, ctx, vm, spec) in due {
                let monitor = self.clone();
                tokio::spawn(async move {
                    let boot = monitor.probes.boot_marker(&ctx, &vm);
                    let timeout = monitor.second * spec.timeout_secs.into();
                    // The agent's acknowledgement may take its own while on a busy guest.
                    let result = match tokio::time::timeout(
                        timeout + crate::access::agent::ACK_TIMEOUT,
                        monitor.probes.probe(&ctx, &vm, &spec.probe, timeout),
                    )
                    .await
                    {
                        Ok(result) => result,
                        Err(_) => ProbeOutcome::Unhealthy(format!(
                            "no answer within {} s",
                            spec.timeout_secs
                        )),
                    };
                    monitor.apply(&key, generation, boot, result);
                });
            }
        }
    }

    /// Takes in one probe's result.
    fn apply(&self, key: &Key, generation: u64, boot: Option<BootMarker>, result: ProbeOutcome) {
        let now = Instant::now();
        let mut restart = None;
        let mut changed = false;
        {
            let mut checks = self.checks();
            let Some(c) = checks.get_mut(key).filter(|c| c.generation == generation) else {
                return;
            };
            c.probing = false;
            c.next_probe = now + self.second * c.spec.interval_secs.into();
            if c.paused {
                // Started before the pause: a frozen guest tells nothing.
                return;
            }
            // A new boot since the last probe (a crash, an update, a restart, a repair): its
            // start period begins. Not the first sighting: the install started one.
            let rebooted = match (&c.boot, &boot) {
                (Some(before), Some(this)) => before != this,
                (None, Some(_)) => c.observed,
                _ => false,
            };
            c.observed = true;
            c.boot = boot;
            if rebooted {
                c.booted(now, self.second);
            }
            let name = String::from_utf8_lossy(&key.1).into_owned();
            let result = match (boot, result) {
                // The VM does not run: its own driver reports and repairs that.
                (None, _) => ProbeOutcome::Inconclusive("the VM does not run".into()),
                (_, result) => result,
            };
            match result {
                ProbeOutcome::Inconclusive(why) => {
                    tracing::debug!(contract = key.0, check = %name, %why, "health probe inconclusive")
                }
                ProbeOutcome::Healthy => {
                    c.failures = 0;
                    if c.unhealthy.take().is_some() {
                        info!(contract = key.0, check = %name, "health check passes again");
                        c.restarts = 0;
                        changed = true;
                    }
                }
                ProbeOutcome::Unhealthy(_) if now < c.counting_from => {}
                ProbeOutcome::Unhealthy(why) => {
                    c.failures = c.failures.saturating_add(1);
                    tracing::debug!(contract = key.0, check = %name, failures = c.failures, %why, "health probe failed");
                    if c.failures >= u32::from(c.spec.retries) {
                        if c.unhealthy.is_none() {
                            let reason = cut(&format!(
                                "{} probes failed in a row; last: {why}",
                                c.failures
                            ));
                            warn!(contract = key.0, check = %name, %reason, "health check unhealthy");
                            c.unhealthy = Some(reason);
                            changed = true;
                            c.next_restart = now;
                        }
                        if c.spec.on_unhealthy == OnUnhealthy::Restart && now >= c.next_restart {
                            c.restarts = c.restarts.saturating_add(1);
                            c.next_restart =
                                now + self.second * restart_backoff_secs(c.restarts - 1);
                            c.booted(now, self.second);
                            restart = Some((c.ctx.clone(), c.vm.clone(), c.restarts));
                        }
                    }
                }
            }
        }
        if changed {
            self.changed.notify_one();
        }
        if let Some((ctx, vm, restarts)) = restart {
            let probes = self.probes.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let vm_name = String::from_utf8_lossy(vm.name.as_bytes()).into_owned();
                match probes.restart(&ctx, &vm).await {
                    Ok(()) => {
                        info!(contract = key.0, vm = %vm_name, restarts, "unhealthy VM restarted")
                    }
                    Err(e) => {
                        warn!(contract = key.0, vm = %vm_name, error = %format!("{e:#}"), "restarting an unhealthy VM failed")
                    }
                }
            });
        }
    }
}

#[async_trait]
impl Driver for HealthDriver {
    fn kind(&self) -> &'static str {
        "health_check"
    }

    async fn recall(&self, ctx: &WorkloadCtx, workload: &Workload, unhealthy: &str) {
        self.monitor
            .recalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key(ctx, workload), unhealthy.to_string());
    }

    async fn install(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let spec = check_spec(workload)?.clone();
        let vm = ctx
            .spec
            .workload(&spec.vm)
            .filter(|w| w.as_vm().is_some())
            .cloned()
            .ok_or_else(|| DriverError::permanent("the checked VM is not in the spec"))?;
        let mut checks = self.monitor.checks();
        let key = key(ctx, workload);
        if let Some(c) = checks
            .get_mut(&key)
            .filter(|c| c.spec == spec && c.vm == vm)
        {
            c.ctx = ctx.clone();
            return Ok(());
        }
        let now = Instant::now();
        let generation = self
            .monitor
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut check = Check {
            ctx: ctx.clone(),
            vm,
            generation,
            paused: false,
            counting_from: now,
            next_probe: now + self.monitor.second * spec.interval_secs.into(),
            probing: false,
            failures: 0,
            unhealthy: None,
            restarts: 0,
            next_restart: now,
            boot: None,
            observed: false,
            spec,
        };
        check.booted(now, self.monitor.second);
        // Unhealthy as last reported until a probe says otherwise; a restart, if the policy
        // wants one, only after the first backoff.
        if let Some(reason) = self
            .monitor
            .recalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
        {
            check.unhealthy = Some(reason);
            check.restarts = 1;
            check.next_restart = now + self.monitor.second * FIRST_RESTART_BACKOFF;
        }
        checks.insert(key, check);
        Ok(())
    }

    async fn update(&self, ctx: &WorkloadCtx, _old: &Workload, new: &Workload) -> DriverResult<()> {
        self.install(ctx, new).await
    }

    async fn remove(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        self.monitor.checks().remove(&key(ctx, workload));
        Ok(())
    }

    async fn pause(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        if let Some(c) = self.monitor.checks().get_mut(&key(ctx, workload)) {
            c.paused = true;
            c.failures = 0;
        }
        Ok(())
    }

    async fn resume(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        if let Some(c) = self.monitor.checks().get_mut(&key(ctx, workload)) {
            if c.paused {
                c.paused = false;
                c.booted(Instant::now(), self.monitor.second);
            }
        }
        Ok(())
    }

    async fn inspect(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Observed> {
        let spec = check_spec(workload)?;
        Ok(match self.monitor.checks().get(&key(ctx, workload)) {
            None => Observed::Missing,
            // Installed from another spec: install again.
            Some(c) if c.spec != *spec => Observed::Broken("the check changed".into()),
            Some(c) if c.paused => Observed::Paused,
            Some(c) => match &c.unhealthy {
                Some(reason) => Observed::Unhealthy(reason.clone()),
                None => Observed::Running,
            },
        })
    }

    async fn usage(&self, _ctx: &WorkloadCtx, _workload: &Workload) -> DriverResult<Usage> {
        Ok(Usage::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use zos_primitives::spec::{DeploymentSpec, HttpPath, WorkloadName};

    /// A VM whose probe answers as `healthy` says, counting probes and restarts.
    #[derive(Default)]
    struct FakeGuest {
        healthy: std::sync::atomic::AtomicBool,
        probes: AtomicU32,
        restarts: AtomicU32,
        boot: AtomicU32,
    }

    #[async_trait]
    impl GuestProbes for FakeGuest {
        async fn probe(
            &self,
            _ctx: &WorkloadCtx,
            _vm: &Workload,
            _probe: &HealthProbe,
            _timeout: Duration,
        ) -> ProbeOutcome {
            self.probes.fetch_add(1, Ordering::SeqCst);
            if self.healthy.load(Ordering::SeqCst) {
                ProbeOutcome::Healthy
            } else {
                ProbeOutcome::Unhealthy("connection refused".into())
            }
        }
        async fn restart(&self, _ctx: &WorkloadCtx, _vm: &Workload) -> anyhow::Result<()> {
            self.restarts.fetch_add(1, Ordering::SeqCst);
            self.boot.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn boot_marker(&self, _ctx: &WorkloadCtx, _vm: &Workload) -> Option<BootMarker> {
            Some((self.boot.load(Ordering::SeqCst).into(), 0, 0))
        }
    }

    fn name(s: &str) -> WorkloadName {
        WorkloadName::try_from(s).unwrap()
    }

    fn setup(on_unhealthy: OnUnhealthy) -> (WorkloadCtx, Workload) {
        let vm: Workload = serde_json::from_value(serde_json::json!({
            "name": "web",
            "kind": {"vm": {"image": {"root_hash": format!("0x{}", "01".repeat(32)), "source": "http://hub"},
                     "vcpus": 1, "memory_mib": 256, "rootfs_mib": 256}}
        }))
        .unwrap();
        let check = Workload {
            name: name("web-health"),
            kind: WorkloadKind::HealthCheck(HealthCheckSpec {
                vm: name("web"),
                probe: HealthProbe::Http {
                    port: 80,
                    path: HttpPath::try_from("/").unwrap(),
                },
                interval_secs: 10,
                timeout_secs: 2,
                retries: 3,
                start_period_secs: 60,
                on_unhealthy,
            }),
        };
        let spec = DeploymentSpec {
            version: 0,
            workloads: vec![vm, check.clone()].try_into().unwrap(),
            metadata: Default::default(),
        };
        assert_eq!(spec.validate(), Ok(()));
        let ctx = WorkloadCtx {
            contract: 7,
            dir: "/nonexistent".into(),
            capacity_dirs: Vec::new(),
            spec: Arc::new(spec),
            public_ips: vec![],
            node_ipv6: None,
            node_domain: None,
            node_addresses: vec![],
            owner: None,
        };
        (ctx, check)
    }

    /// What a spec second lasts in these tests.
    const SECOND: Duration = Duration::from_millis(20);

    async fn sleep(secs: u32) {
        tokio::time::sleep(SECOND * secs).await;
    }

    /// Waits (at most `secs` spec seconds) until the check is observed as `want` says.
    async fn until(
        driver: &HealthDriver,
        ctx: &WorkloadCtx,
        check: &Workload,
        secs: u32,
        want: impl Fn(&Observed) -> bool,
    ) -> Observed {
        let deadline = Instant::now() + SECOND * secs;
        loop {
            let seen = driver.inspect(ctx, check).await.unwrap();
            if want(&seen) {
                return seen;
            }
            assert!(Instant::now() < deadline, "still {seen:?}");
            tokio::time::sleep(SECOND / 4).await;
        }
    }

    #[tokio::test]
    async fn failures_after_the_start_period_make_it_unhealthy_and_restart_the_vm() {
        let guest = Arc::new(FakeGuest::default());
        let changed = Arc::new(Notify::new());
        let driver = HealthDriver::start_scaled(guest.clone(), changed.clone(), SECOND);
        let (ctx, check) = setup(OnUnhealthy::Restart);
        assert_eq!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Missing
        );
        driver.install(&ctx, &check).await.unwrap();
        // Failing through the start period (60 s) counts nothing.
        sleep(45).await;
        assert!(guest.probes.load(Ordering::SeqCst) >= 2);
        assert_eq!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Running
        );
        assert_eq!(guest.restarts.load(Ordering::SeqCst), 0);
        // Three failures in a row after it: unhealthy, announced, and the VM restarted.
        let Observed::Unhealthy(reason) = until(&driver, &ctx, &check, 300, |o| {
            matches!(o, Observed::Unhealthy(_))
        })
        .await
        else {
            unreachable!()
        };
        assert!(
            reason.contains("3 probes failed in a row; last: connection refused"),
            "{reason}"
        );
        assert!(tokio::time::timeout(SECOND, changed.notified())
            .await
            .is_ok());
        tokio::time::sleep(SECOND).await;
        assert_eq!(guest.restarts.load(Ordering::SeqCst), 1);
        // Still failing after the restart's start period: restarted again, backing off (at
        // least 90 s apart here: the start period and three probes), and still unhealthy.
        let first = Instant::now();
        sleep(400).await;
        let restarts = guest.restarts.load(Ordering::SeqCst);
        assert!((2..=5).contains(&restarts), "{restarts} restarts");
        assert!(first.elapsed() >= SECOND * 90 * (restarts - 1));
        assert!(matches!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Unhealthy(_)
        ));
        // One passing probe: healthy again, announced.
        guest.healthy.store(true, Ordering::SeqCst);
        until(&driver, &ctx, &check, 60, |o| *o == Observed::Running).await;
        assert!(tokio::time::timeout(SECOND, changed.notified())
            .await
            .is_ok());
        driver.remove(&ctx, &check).await.unwrap();
        assert_eq!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Missing
        );
    }

    #[tokio::test]
    async fn a_verdict_recalled_after_an_executor_restart_stands_until_a_probe_passes() {
        let guest = Arc::new(FakeGuest::default());
        let driver = HealthDriver::start_scaled(guest.clone(), Arc::new(Notify::new()), SECOND);
        let (ctx, check) = setup(OnUnhealthy::Restart);
        driver
            .recall(&ctx, &check, "3 probes failed in a row")
            .await;
        driver.install(&ctx, &check).await.unwrap();
        assert_eq!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Unhealthy("3 probes failed in a row".into())
        );
        // No restart at once: the earlier run's restart counts.
        sleep(20).await;
        assert_eq!(guest.restarts.load(Ordering::SeqCst), 0);
        guest.healthy.store(true, Ordering::SeqCst);
        until(&driver, &ctx, &check, 60, |o| *o == Observed::Running).await;
    }

    #[tokio::test]
    async fn a_report_only_check_never_restarts_and_a_paused_one_never_probes() {
        let guest = Arc::new(FakeGuest::default());
        let driver = HealthDriver::start_scaled(guest.clone(), Arc::new(Notify::new()), SECOND);
        let (ctx, check) = setup(OnUnhealthy::Report);
        driver.install(&ctx, &check).await.unwrap();
        until(&driver, &ctx, &check, 300, |o| {
            matches!(o, Observed::Unhealthy(_))
        })
        .await;
        sleep(100).await;
        assert_eq!(guest.restarts.load(Ordering::SeqCst), 0);
        driver.pause(&ctx, &check).await.unwrap();
        assert_eq!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Paused
        );
        // A probe started before the pause may still end.
        sleep(5).await;
        let probes = guest.probes.load(Ordering::SeqCst);
        sleep(60).await;
        assert_eq!(guest.probes.load(Ordering::SeqCst), probes);
        // Resumed: a new start period, and its verdict stands until a probe passes.
        driver.resume(&ctx, &check).await.unwrap();
        assert!(matches!(
            driver.inspect(&ctx, &check).await.unwrap(),
            Observed::Unhealthy(_)
        ));
        guest.healthy.store(true, Ordering::SeqCst);
        until(&driver, &ctx, &check, 60, |o| *o == Observed::Running).await;
    }
}
