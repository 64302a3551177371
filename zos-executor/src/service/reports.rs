//! Deployment results to the chain (one reporter task per contract, never holding up
//! reconciliation) and consumption metering for the outbox.

use super::*;

impl Executor {
    /// Hands a deployment result to a reporter task: waiting for finality never holds up
    /// reconciliation. A result already on its way is not queued twice; one that fails is
    /// queued again by a later pass (the engine reports until the chain reflects it).
    pub(super) fn queue_deployment_report(
        self: &Arc<Self>,
        spec: zos_primitives::spec::DeploymentSpec,
        result: DeploymentResult,
    ) {
        // One report per contract at a time, so an older result can never land after a newer
        // one; a newer result waits for the next pass.
        let key = result.contract;
        if !self
            .reports_in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = this.report_slots.acquire().await;
            this.report_deployment(&spec, &result).await;
            this.reports_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            // The next pass re-queues a newer result, if any.
            this.wake.notify_one();
        });
    }

    /// report_deployment, once per distinct result (remembered in the store).
    pub(super) async fn report_deployment(
        &self,
        spec: &zos_primitives::spec::DeploymentSpec,
        result: &DeploymentResult,
    ) {
        let key = (result.version, &result.outcomes).encode();
        if self
            .store
            .deploy_report(result.contract)
            .ok()
            .flatten()
            .as_deref()
            == Some(key.as_slice())
        {
            self.engine.note_reported(result);
            return;
        }
        // The pallet wants one entry per workload in spec order.
        let outcomes: Vec<(Vec<u8>, ReportedOutcome)> = spec
            .workloads
            .iter()
            .map(|w| {
                let name = w.name.as_bytes().to_vec();
                let outcome = match result
                    .outcomes
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, o)| o)
                {
                    Some(WorkloadOutcome::Ok) => ReportedOutcome::Ok,
                    Some(WorkloadOutcome::Failed(reason)) => {
                        ReportedOutcome::Failed(reason.clone())
                    }
                    Some(WorkloadOutcome::Unhealthy(reason)) => {
                        ReportedOutcome::Unhealthy(reason.clone())
                    }
                    None => ReportedOutcome::Failed("not deployed".into()),
                };
                (name, outcome)
            })
            .collect();
        let call = match calls::report_deployment(result.contract, result.version, &outcomes) {
            Ok(call) => call,
            Err(e) => {
                return error!(contract = result.contract, error = %format!("{e:#}"), "cannot build report")
            }
        };
        match retry("report_deployment", || {
            self.chain.submit(&call, &self.identity.account, TX_TIMEOUT)
        })
        .await
        {
            Ok(_) => {
                info!(
                    contract = result.contract,
                    version = result.version,
                    ok = result.all_ok(),
                    unhealthy = result.unhealthy().len(),
                    "deployment reported"
                );
                self.engine.note_reported(result);
                self.metrics.sent("deployment");
                let _ = self.store.put_deploy_report(result.contract, &key);
            }
            Err(e) => {
                self.metrics.failed("deployment");
                warn!(contract = result.contract, error = %e, "report_deployment failed; the next pass retries");
            }
        }
    }

    pub(super) fn meter(&self) -> Meter {
        let interval = crate::meter::aligned_interval(
            self.config.report_interval.as_secs(),
            self.chain.min_window_secs(),
            self.chain.max_window_secs(),
        );
        Meter {
            interval,
            max_gap: (interval / 2).max(15),
            max_traffic_per_sec: self.chain.max_traffic_bytes_per_sec(),
        }
    }

    pub(super) fn sample_every(&self) -> Duration {
        Duration::from_secs((self.meter().interval / 6).clamp(1, 10))
    }

    /// Samples uptime on a steady beat: a sample late by more than the meter's `max_gap`
    /// counts the time before it as down, so nothing that waits on the chain runs here.
    pub(super) async fn metering_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.sample_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sample_all().await {
                warn!(error = %format!("{e:#}"), "metering failed");
            }
        }
    }

    /// Sends closed windows; a batch waits for finality (several blocks) on its own beat.
    pub(super) async fn reporting_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.sample_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.flush_outbox().await {
                warn!(error = %format!("{e:#}"), "sending consumption reports failed; kept for retry");
            }
        }
    }

    /// Samples every contract's uptime; the whole pass is one store write, off the runtime.
    pub(super) async fn sample_all(&self) -> Result<()> {
        let _meter_states = self.meter_states.lock().await;
        let meter = self.meter();
        let now = unix_ms() / 1000;
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
            store
                .contracts()?
                .into_iter()
                .map(|c| Ok((store.meter(c.contract)?, c)))
                .collect()
        })
        .await??;
        let mut samples = Vec::with_capacity(local.len());
        for (state, local) in local {
            let up = local.serving && self.engine.is_up(&local).await;
            let state = match state {
                Some(state) => state,
                None if up => meter.start(now),
                None => continue,
            };
            let traffic = self.engine.public_traffic(&local).await;
            let (next, reports) = meter.sample(local.contract, state, now, up, &traffic);
            samples.push(MeterSample {
                contract: local.contract,
                meter: next,
                closed: reports
                    .iter()
                    .map(|r| (r.window_start, r.encode()))
                    .collect(),
            });
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.record_samples(&samples)).await?
    }
}
