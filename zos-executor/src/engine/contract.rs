//! One contract brought to its spec (install, update, failure handling, the result to
//! report) or removed.

use super::*;

impl Engine {
    pub(super) async fn reconcile_contract(&self, want: &NodeContract) -> Result<ContractOutcome> {
        let ctx = self.ctx(want.contract, &want.spec, &want.public_ips);
        let serving = !matches!(want.state, ContractState::GracePeriod);
        let mut local = self.store.contract(want.contract)?;

        // A spec this node cannot run fails as a whole, before anything is touched.
        let rejection = want
            .spec
            .validate()
            .map_err(|e| format!("invalid spec: {e:?}"))
            .and_then(|()| self.check_secrets(&want.spec));
        if let Err(reason) = rejection {
            // Said once per spec version; later passes find the same version recorded.
            if local
                .as_ref()
                .is_some_and(|l| l.spec_hash == want.spec_hash)
            {
                debug!(%reason, "contract cannot be deployed (known)");
            } else {
                warn!(%reason, "contract cannot be deployed");
            }
            // An update that cannot run ends what the previous version ran (its record is
            // replaced below, so nothing would stop it later); data stays.
            if let Some(old) = local.as_ref().filter(|l| l.spec_hash != want.spec_hash) {
                match self.remove_all_but_data(&ctx, &old.spec).await {
                    Ok(()) => {}
                    Err(DriverError::Transient(_)) => return Ok(ContractOutcome::Pending),
                    Err(DriverError::Permanent(reason)) => {
                        warn!(%reason, "stopping the previous version failed permanently")
                    }
                }
            }
            let outcomes = want
                .spec
                .workloads
                .iter()
                .map(|w| {
                    (
                        w.name.as_bytes().to_vec(),
                        WorkloadOutcome::Failed(reason.clone()),
                    )
                })
                .collect();
            return self.finish(want, local.as_ref(), outcomes, serving).await;
        }

        // Which workloads of the previously deployed spec are gone or changed.
        let previous: HashMap<Vec<u8>, Workload> = match &local {
            Some(l) if l.spec_hash != want.spec_hash => l
                .spec
                .workloads
                .iter()
                .map(|w| (w.name.as_bytes().to_vec(), w.clone()))
                .collect(),
            _ => HashMap::new(),
        };
        let known_outcomes: HashMap<Vec<u8>, WorkloadOutcome> = match &local {
            Some(l) if l.spec_hash == want.spec_hash => l.outcomes.iter().cloned().collect(),
            _ => HashMap::new(),
        };

        // Removal of workloads dropped by an update: reverse dependency order.
        if let Some(old) = local.as_ref().filter(|l| l.spec_hash != want.spec_hash) {
            let mut dropped: Vec<&Workload> = ordered(&old.spec)
                .into_iter()
                .filter(|w| {
                    want.spec
                        .workload(&w.name)
                        .is_none_or(|n| kind_name(n) != kind_name(w))
                })
                .collect();
            dropped.reverse();
            for w in dropped {
                let driver = match self.driver(w) {
                    Ok(d) => d,
                    Err(_) => continue, // never installed
                };
                match self.with_retries("remove", || driver.remove(&ctx, w)).await {
                    Ok(()) => {}
                    Err(DriverError::Transient(_)) => return Ok(ContractOutcome::Pending),
                    Err(DriverError::Permanent(reason)) => {
                        warn!(%reason, "removing a dropped workload failed")
                    }
                }
            }
        }

        // Intent before side effects: a crash from here on leaves a record to clean up by.
        if local.as_ref().map(|l| l.spec_hash) != Some(want.spec_hash) {
            self.store.put_intent(want.contract, &want.spec)?;
        }
        create_private_dir(&ctx.dir).await?;
        let mut outcomes = Vec::new();
        let mut pending = false;
        for w in ordered(&want.spec) {
            let name = w.name.as_bytes().to_vec();
            // A permanent failure of this exact spec is not retried: the chain already knows.
            if let Some(WorkloadOutcome::Failed(reason)) = known_outcomes.get(&name) {
                outcomes.push((name, WorkloadOutcome::Failed(reason.clone())));
                continue;
            }
            let outcome = self
                .converge_workload(
                    &ctx,
                    previous.get(&name),
                    known_outcomes.get(&name),
                    w,
                    serving,
                )
                .await;
            match outcome {
                Ok(None) => {
                    outcomes.push((name, WorkloadOutcome::Ok));
                    failpoint("install-midway");
                }
                Ok(Some(unhealthy)) => outcomes.push((name, WorkloadOutcome::Unhealthy(unhealthy))),
                Err(DriverError::Permanent(reason)) => {
                    warn!(workload = %String::from_utf8_lossy(&name), %reason, "workload failed");
                    outcomes.push((name, WorkloadOutcome::Failed(reason)));
                }
                Err(DriverError::Transient(e)) => {
                    warn!(workload = %String::from_utf8_lossy(&name), error = %format!("{e:#}"), "still failing, retried next pass");
                    pending = true;
                }
            }
        }
        if pending {
            // Keep the old local record (if any): the next pass redoes what is missing.
            if let Some(l) = local.as_mut() {
                if l.spec_hash == want.spec_hash {
                    l.serving = serving;
                    self.store.put_contract(l)?;
                }
            }
            return Ok(ContractOutcome::Pending);
        }
        // Once per failure: a later pass of the same failed spec finds it in the known outcomes.
        let failure_known = known_outcomes
            .values()
            .any(|o| matches!(o, WorkloadOutcome::Failed(_)));
        if failure_known {
            // Nothing to stop: done when the failure was first seen.
        } else if let Err(e) = self
            .stop_rest_of_failed(&ctx, &want.spec, &mut outcomes)
            .await
        {
            warn!(error = %format!("{e:#}"), "stopping the rest of a failed contract; retried next pass");
            return Ok(ContractOutcome::Pending);
        }
        self.finish(want, local.as_ref(), outcomes, serving).await
    }

    /// Partial failure has one meaning: the contract failed. Its other workloads must not keep
    /// running (a contract with a failed workload is never billed uptime), so everything but
    /// data is removed, the running ones reported as stopped (a failed one may still be
    /// running too, e.g. a crash-looping guest); data stays for an update that fixes the spec.
    pub(super) async fn stop_rest_of_failed(
        &self,
        ctx: &WorkloadCtx,
        spec: &DeploymentSpec,
        outcomes: &mut [(Vec<u8>, WorkloadOutcome)],
    ) -> Result<(), DriverError> {
        let Some(failed) = outcomes.iter().find_map(|(name, o)| match o {
            WorkloadOutcome::Failed(_) => Some(String::from_utf8_lossy(name).into_owned()),
            WorkloadOutcome::Ok | WorkloadOutcome::Unhealthy(_) => None,
        }) else {
            return Ok(());
        };
        info!(%failed, "a workload of the contract failed: stopping the others");
        self.remove_all_but_data(ctx, spec).await?;
        for (name, outcome) in outcomes.iter_mut() {
            let is_data = spec
                .workloads
                .iter()
                .find(|w| w.name.as_bytes() == name.as_slice())
                .is_some_and(is_data);
            if !matches!(outcome, WorkloadOutcome::Failed(_)) && !is_data {
                *outcome = WorkloadOutcome::Failed(format!(
                    "stopped: workload '{failed}' of this contract failed"
                ));
            }
        }
        Ok(())
    }

    /// Removes every workload of `spec` except data (disks, volumes), in reverse dependency
    /// order. Removing what is not installed is a no-op for every driver.
    pub(super) async fn remove_all_but_data(
        &self,
        ctx: &WorkloadCtx,
        spec: &DeploymentSpec,
    ) -> Result<(), DriverError> {
        let mut list: Vec<&Workload> = ordered(spec).into_iter().filter(|w| !is_data(w)).collect();
        list.reverse();
        for w in list {
            let Ok(driver) = self.driver(w) else { continue };
            self.with_retries("remove", || driver.remove(ctx, w))
                .await?;
        }
        Ok(())
    }

    /// Brings one workload to the spec: install, update, repair, pause or resume as needed.
    pub(super) async fn converge_workload(
        &self,
        ctx: &WorkloadCtx,
        previous: Option<&Workload>,
        known: Option<&WorkloadOutcome>,
        w: &Workload,
        serving: bool,
    ) -> Result<Option<String>, DriverError> {
        let driver = self.driver(w)?;
        match previous {
            Some(old) if old != w && kind_name(old) == kind_name(w) => {
                self.with_retries("update", || driver.update(ctx, old, w))
                    .await?;
            }
            _ => {}
        }
        let observed = self
            .with_retries("inspect", || driver.inspect(ctx, w))
            .await?;
        match observed {
            Observed::Missing => {
                if let Some(WorkloadOutcome::Unhealthy(reason)) = known {
                    driver.recall(ctx, w, reason).await;
                }
                info!(workload = %String::from_utf8_lossy(w.name.as_bytes()), kind = kind_name(w), "installing");
                self.with_retries("install", || driver.install(ctx, w))
                    .await?;
            }
            Observed::Broken(reason) => {
                warn!(workload = %String::from_utf8_lossy(w.name.as_bytes()), %reason, "repairing");
                self.with_retries("install", || driver.install(ctx, w))
                    .await?;
            }
            Observed::Running | Observed::Paused | Observed::Unhealthy(_) => {}
        }
        let observed = self
            .with_retries("inspect", || driver.inspect(ctx, w))
            .await?;
        match (serving, observed) {
            (false, Observed::Running | Observed::Unhealthy(_)) => {
                self.with_retries("pause", || driver.pause(ctx, w)).await?
            }
            (true, Observed::Paused) => {
                self.with_retries("resume", || driver.resume(ctx, w))
                    .await?
            }
            (true, Observed::Unhealthy(reason)) => return Ok(Some(reason)),
            _ => {}
        }
        Ok(None)
    }

    /// Stores the new local record; returns the result when it must be (re)reported.
    pub(super) async fn finish(
        &self,
        want: &NodeContract,
        previous: Option<&LocalContract>,
        outcomes: Vec<(Vec<u8>, WorkloadOutcome)>,
        serving: bool,
    ) -> Result<ContractOutcome> {
        let record = LocalContract {
            contract: want.contract,
            spec: want.spec.clone(),
            spec_hash: want.spec_hash,
            outcomes: outcomes.clone(),
            serving,
        };
        if previous != Some(&record) {
            self.store.finish_install(&record)?;
        }
        let result = DeploymentResult {
            contract: want.contract,
            version: want.spec.version,
            outcomes,
        };
        // Report while the chain does not reflect this version's result yet.
        let chain_has_it = match &want.state {
            ContractState::Deployed => result.all_ok() && self.health_known(want, &result),
            ContractState::Failed(_) => !result.all_ok(),
            ContractState::GracePeriod => true,
            _ => false,
        };
        Ok(ContractOutcome::Reconciled(
            (!chain_has_it).then_some(result),
        ))
    }

    pub(super) async fn remove_contract(&self, gone: &LocalContract) -> Result<ContractOutcome> {
        let ctx = self.ctx(gone.contract, &gone.spec, &[]);
        let mut list = ordered(&gone.spec);
        list.reverse();
        for w in list {
            let Ok(driver) = self.driver(w) else { continue };
            match self.with_retries("remove", || driver.remove(&ctx, w)).await {
                Ok(()) => failpoint("remove-midway"),
                Err(DriverError::Transient(_)) => return Ok(ContractOutcome::Pending),
                Err(DriverError::Permanent(reason)) => {
                    warn!(%reason, "removal failed permanently; forgetting it")
                }
            }
        }
        // A volume left mounted (an orphan directory, a removal cut short) is unmounted first:
        // the removal must not walk into it, nor leave its mount behind.
        let dir = ctx.dir.clone();
        let unmounted =
            tokio::task::spawn_blocking(move || crate::drivers::volume::unmount_all_below(&dir))
                .await;
        if let Err(e) = unmounted.map_err(anyhow::Error::from).and_then(|r| r) {
            warn!(error = %format!("{e:#}"), dir = %ctx.dir.display(), "could not unmount below the contract directory");
            return Ok(ContractOutcome::Pending);
        }
        // The contract's files on capacity disks before its directory: a removal cut short in
        // between is retried while the directory (and so the contract) is still known.
        for dir in &ctx.capacity_dirs {
            if let Err(e) = tokio::fs::remove_dir_all(dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(error = %e, dir = %dir.display(), "could not remove the contract's directory on a capacity disk");
                    return Ok(ContractOutcome::Pending);
                }
            }
        }
        if let Err(e) = tokio::fs::remove_dir_all(&ctx.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(error = %e, dir = %ctx.dir.display(), "could not remove the contract directory");
                return Ok(ContractOutcome::Pending);
            }
        }
        self.store
            .remove_contract(gone.contract, crate::follower::unix_ms() / 1000)?;
        info!("contract removed");
        Ok(ContractOutcome::Removed)
    }
}
