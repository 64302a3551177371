//! Health probes of VMs through their guest agents: a command runs in the workload like
//! `zos exec` (`/bin/sh -c`), a TCP or HTTP probe is made by the agent on the guest's
//! loopback. Restarts go through the VM's shim.

use std::{os::unix::fs::MetadataExt, sync::Arc, time::Duration};

use async_trait::async_trait;
use zos_guest_agent::{Exec, Kind, Probe, Request};
use zos_primitives::spec::{HealthProbe, Workload};

use super::{spec::vm_dir, VmDriver};
use crate::{
    access::agent::AgentLinks,
    drivers::{
        health::{BootMarker, GuestProbes, ProbeOutcome},
        WorkloadCtx,
    },
};

/// How an agent that does not know a request refuses it.
const UNKNOWN_REQUEST: &str = "the agent cannot read the request";

pub struct AgentProbes {
    agents: Arc<AgentLinks>,
    vms: Arc<VmDriver>,
}

impl AgentProbes {
    pub fn new(agents: Arc<AgentLinks>, vms: Arc<VmDriver>) -> Self {
        Self { agents, vms }
    }
}

fn agent_socket(ctx: &WorkloadCtx, vm: &Workload) -> std::path::PathBuf {
    zos_vm::VmLayout::new(&vm_dir(ctx, vm)).agent_socket()
}

/// The agent request for a probe.
pub fn request_for(probe: &HealthProbe, timeout: Duration) -> Result<Request, String> {
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    Ok(match probe {
        HealthProbe::Command(command) => {
            let command = std::str::from_utf8(command.as_bytes())
                .map_err(|_| "the probe's command is not UTF-8".to_string())?;
            Request::Exec(Exec {
                argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
                tty: false,
                rows: 0,
                cols: 0,
                detach: false,
                quiet: true,
            })
        }
        HealthProbe::Tcp(port) => Request::Probe(Probe {
            port: *port,
            http_path: None,
            timeout_ms,
        }),
        HealthProbe::Http { port, path } => Request::Probe(Probe {
            port: *port,
            http_path: Some(String::from_utf8_lossy(path.as_bytes()).into_owned()),
            timeout_ms,
        }),
    })
}

#[async_trait]
impl GuestProbes for AgentProbes {
    async fn probe(
        &self,
        ctx: &WorkloadCtx,
        vm: &Workload,
        probe: &HealthProbe,
        timeout: Duration,
    ) -> ProbeOutcome {
        let request = match request_for(probe, timeout) {
            Ok(request) => request,
            Err(why) => return ProbeOutcome::Unhealthy(why),
        };
        let payload = match serde_json::to_vec(&request) {
            Ok(payload) => payload,
            Err(e) => return ProbeOutcome::Inconclusive(e.to_string()),
        };
        let (mut session, first) = match self.agents.open(&agent_socket(ctx, vm), &payload).await {
            Ok(opened) => opened,
            // A guest that does not answer its agent port is as good as down.
            Err(e) => return ProbeOutcome::Unhealthy(format!("{e:#}")),
        };
        // Output is not kept: it could show the VM's (sealed) environment, and the reason
        // goes on chain.
        let mut frame = Some(first);
        let code = loop {
            let Some(f) = frame.take() else {
                match session.frames.recv().await {
                    Some(f) => frame = Some(f),
                    None => {
                        return ProbeOutcome::Unhealthy(
                            "the connection to the guest's agent closed".into(),
                        )
                    }
                }
                continue;
            };
            match f.kind {
                Kind::Exit => break f.int().unwrap_or(-1),
                Kind::Error => {
                    session.ended();
                    let why = String::from_utf8_lossy(&f.payload).into_owned();
                    if why.starts_with(UNKNOWN_REQUEST) {
                        return ProbeOutcome::Inconclusive(format!(
                            "the guest's agent predates this probe (a VM re-created by an update gets the current one): {why}"
                        ));
                    }
                    return ProbeOutcome::Unhealthy(why);
                }
                // The agent's verdict of a TCP or HTTP probe.
                Kind::Stdout if !matches!(probe, HealthProbe::Command(_)) => {
                    let why = String::from_utf8_lossy(&f.payload).into_owned();
                    session.ended();
                    return ProbeOutcome::Unhealthy(why);
                }
                _ => {}
            }
        };
        session.ended();
        match (code, probe) {
            (0, _) => ProbeOutcome::Healthy,
            (code, HealthProbe::Command(_)) => {
                ProbeOutcome::Unhealthy(format!("the command exited with {code}"))
            }
            (code, _) => ProbeOutcome::Unhealthy(format!("the probe ended with {code}")),
        }
    }

    async fn restart(&self, ctx: &WorkloadCtx, vm: &Workload) -> anyhow::Result<()> {
        self.vms.restart(ctx, vm).await
    }

    /// The agent socket is made anew by every hypervisor process the VM starts.
    fn boot_marker(&self, ctx: &WorkloadCtx, vm: &Workload) -> Option<BootMarker> {
        let meta = std::fs::metadata(agent_socket(ctx, vm)).ok()?;
        Some((meta.ino(), meta.mtime(), meta.mtime_nsec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_primitives::spec::{HealthCommand, HttpPath};

    #[test]
    fn probes_become_agent_requests_the_agent_accepts() {
        let timeout = Duration::from_secs(2);
        let command = request_for(
            &HealthProbe::Command(HealthCommand::try_from("pgrep -x nginx").unwrap()),
            timeout,
        )
        .unwrap();
        assert!(
            matches!(&command, Request::Exec(e) if e.argv == ["/bin/sh", "-c", "pgrep -x nginx"] && !e.tty && !e.detach && e.quiet)
        );
        let http = request_for(
            &HealthProbe::Http {
                port: 8080,
                path: HttpPath::try_from("/healthz").unwrap(),
            },
            timeout,
        )
        .unwrap();
        assert_eq!(
            http,
            Request::Probe(Probe {
                port: 8080,
                http_path: Some("/healthz".into()),
                timeout_ms: 2000
            })
        );
        for r in [
            command,
            http,
            request_for(&HealthProbe::Tcp(22), timeout).unwrap(),
        ] {
            assert_eq!(r.check(), Ok(()), "{r:?}");
        }
    }
}
