//! A guest under its shim: installed (its own user claimed, its shim configured and started),
//! adopted after an executor restart, or torn down with everything it left.

use super::*;

impl VmDriver {
    /// The guest of `w` as a shim left it running (after an executor restart), if one answers.
    pub(super) async fn adopt(&self, ctx: &WorkloadCtx, w: &Workload) -> Option<Installed> {
        let shim = ShimClient::new(absolute_vm_dir(ctx, w).ok()?);
        let status = shim.status().await.ok()?;
        let label: Label = serde_json::from_str(&status.label).ok()?;
        info!(workload = %name_str(w), contract = ctx.contract, pid = ?status.hypervisor_pid, state = ?status.state, "adopted a running guest");
        Some(Installed {
            label,
            shim,
            crashes_seen: status.crashes,
            silent_since: None,
        })
    }

    /// Stops the guest through its shim (which unmounts the image and removes the VM
    /// directory), or cleans up what a shim that no longer answers left; then the taps.
    pub(super) async fn teardown(
        &self,
        ctx: &WorkloadCtx,
        w: &Workload,
        slot: &mut Option<Installed>,
    ) -> DriverResult<()> {
        let dir = absolute_vm_dir(ctx, w)?;
        let shim = match slot.take() {
            Some(inst) => inst.shim,
            None => ShimClient::new(&dir),
        };
        match shim.shutdown(self.config.stop_grace).await {
            Ok(()) => {}
            Err(e) if shim.running_pid().is_some() && shim.status().await.is_ok() => {
                // It answers but could not stop the guest: keep everything, retry next time.
                return Err(transient(
                    e.context(format!("stopping the VM in {}", dir.display())),
                ));
            }
            Err(_) => {
                // No shim, or one that does not answer: whatever it left goes.
                shim.kill_unresponsive().await;
                if tokio::fs::try_exists(&dir).await.unwrap_or(true) {
                    match self.hypervisor().await {
                        Ok((qemu, _, _)) => {
                            if qemu
                                .kill_stale(&zos_vm::VmLayout::new(&dir))
                                .await
                                .map_err(transient)?
                            {
                                info!(dir = %dir.display(), "killed a guest left by a dead shim");
                            }
                        }
                        Err(e) => {
                            // Never report a removal while its guest may still run.
                            return Err(transient(anyhow!(
                                "cannot check for a guest left by a dead shim: {e}"
                            )));
                        }
                    }
                    let rootfs = rootfs_dir(ctx, w);
                    tokio::task::spawn_blocking(move || detach_dead_mount(&rootfs))
                        .await
                        .map_err(|e| transient(e.into()))?;
                }
            }
        }
        self.remove_taps(ctx, w).await?;
        if let Some(registry) = self.own_users() {
            // Nothing of the VM runs any more: its id may go to another VM.
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || registry.release(&dir))
                .await
                .map_err(|e| transient(e.into()))?
                .map_err(transient)?;
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(transient(
                anyhow::Error::new(e).context(format!("removing {}", dir.display())),
            )),
        }
    }

    pub(super) async fn install_locked(
        &self,
        ctx: &WorkloadCtx,
        w: &Workload,
        slot: &mut Option<Installed>,
    ) -> DriverResult<()> {
        if slot.is_none() {
            *slot = self.adopt(ctx, w).await;
        }
        let wanted = Label {
            workload: w.clone(),
            public_nic: self.public_nic(ctx, w)?,
            overlay_address: self.overlay_address(ctx, w)?,
        };
        if let Some(inst) = slot.as_ref() {
            if inst.label == wanted {
                // Its shim restarts a failed guest by itself.
                return Ok(());
            }
            info!(workload = %name_str(w), "installed VM differs from the spec: re-creating it");
            // Torn down as installed: taps of networks only the old spec had go too.
            let installed = inst.label.workload.clone();
            self.teardown(ctx, &installed, slot).await?;
        }
        let vm = vm_spec(w)?;
        let image_source = std::str::from_utf8(vm.image.source.as_bytes())
            .map_err(|_| DriverError::permanent("image source is not UTF-8"))?
            .to_string();
        self.config
            .image_sources
            .check(&image_source)
            .map_err(DriverError::Permanent)?;
        let dir = absolute_vm_dir(ctx, w)?;
        // Everything about the spec is checked before anything is fetched or started.
        let cfg = spec::vm_config(
            ctx,
            w,
            dir.join("rootfs"),
            self.networks.as_deref(),
            self.box_secret.as_deref(),
        )?;
        let (_, assets, accel) = self.hypervisor().await?;
        // A shim or guest left from an interrupted install goes first.
        self.teardown(ctx, w, &mut None).await?;
        self.attach_taps(ctx, w).await?;
        // The directory exists before its claim: a claim without its directory is stale.
        create_private_dir(&dir).map_err(transient)?;
        let vm_user = match self.own_users() {
            Some(registry) => {
                let dir = dir.clone();
                Some(
                    tokio::task::spawn_blocking(move || registry.claim(&dir))
                        .await
                        .map_err(|e| transient(e.into()))?
                        .context("claiming the VM's own user")
                        .map_err(transient)?,
                )
            }
            None => None,
        };
        let config = ShimConfig {
            vm_user,
            io_limit: self.config.io_limit,
            vm: cfg,
            image_source,
            image_root: zos_image::Hash(vm.image.root_hash).to_hex(),
            image_policy: self.config.image_sources.clone(),
            assets,
            accel,
            stop_grace_secs: self.config.stop_grace.as_secs(),
            label: serde_json::to_string(&wanted)
                .context("encoding the shim label")
                .map_err(transient)?,
        };
        write_private(
            &dir,
            &shim::config_path(&dir),
            &serde_json::to_vec(&config).map_err(|e| transient(e.into()))?,
        )
        .map_err(transient)?;
        let started = std::time::Instant::now();
        match shim::client::spawn(&self.shim_binary, &dir, SHIM_START_TIMEOUT).await {
            Ok(()) => {}
            Err(SpawnError::Refused {
                permanent,
                image_missing,
                reason,
            }) => {
                return Err(if permanent {
                    DriverError::Permanent(reason)
                } else if image_missing {
                    transient(anyhow!(ImageMissing(reason)))
                } else {
                    transient(anyhow!(reason))
                });
            }
            Err(SpawnError::Other(e)) => return Err(transient(e)),
        }
        info!(workload = %name_str(w), contract = ctx.contract, took = ?started.elapsed(), "VM installed");
        *slot = Some(Installed {
            label: wanted,
            shim: ShimClient::new(&dir),
            crashes_seen: 0,
            silent_since: None,
        });
        Ok(())
    }
}
