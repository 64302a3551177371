//! Health-check workloads: a probe of one VM of the spec that its node runs every interval.
//! After `retries` failures in a row the node reports the check `Unhealthy` on chain, with the
//! probe's last answer as the reason, and restarts the VM if the check says so; the contract
//! stays deployed. A passing probe reports it healthy again.
//!
//! A check is a workload of its own, naming its VM, rather than a field of the VM: specs
//! already on chain keep their encoding and hash, so adding checks needed no storage
//! migration and re-creates no running VM.

use super::*;

/// Bytes of a command probe.
pub const MAX_HEALTH_COMMAND_LEN: u32 = 256;
/// Bytes of an HTTP probe's path.
pub const MAX_HTTP_PATH_LEN: u32 = 128;
/// Shortest interval between probes.
pub const MIN_HEALTH_INTERVAL_SECS: u16 = 5;
/// Longest interval between probes.
pub const MAX_HEALTH_INTERVAL_SECS: u16 = 3600;
/// Longest a probe may take (the guest's agent allows no more).
pub const MAX_HEALTH_TIMEOUT_SECS: u16 = 60;
/// Most failures in a row a check may wait for.
pub const MAX_HEALTH_RETRIES: u8 = 20;
/// Longest start period.
pub const MAX_HEALTH_START_PERIOD_SECS: u16 = 3600;

bounded_text!(
    /// A shell command run in the VM (`/bin/sh -c`, in the workload's root with its
    /// environment); exit status 0 is healthy.
    HealthCommand,
    MAX_HEALTH_COMMAND_LEN
);
bounded_text!(
    /// The path an HTTP probe asks for, e.g. `/healthz`.
    HttpPath,
    MAX_HTTP_PATH_LEN
);

/// What a health check asks of its VM. Ports are the guest's own (probed on its loopback from
/// inside the guest), so a check works whether or not the VM has a network.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case", deny_unknown_fields))]
pub enum HealthProbe {
    /// Healthy when the command exits with status 0 within the timeout.
    Command(HealthCommand),
    /// Healthy when a TCP connection to this port is accepted within the timeout.
    Tcp(u16),
    /// Healthy when `GET path` on this port answers with a 2xx or 3xx status within the timeout.
    Http { port: u16, path: HttpPath },
}

/// What the node does once a check finds its VM unhealthy (it reports it in both cases).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case"))]
pub enum OnUnhealthy {
    /// Restart the VM (its disks and volumes stay), then probe again after the start period.
    #[default]
    Restart,
    /// Only report it; the VM keeps running as it is.
    Report,
}

/// A health check of one VM of the spec.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct HealthCheckSpec {
    /// The VM workload probed.
    pub vm: WorkloadName,
    pub probe: HealthProbe,
    /// Seconds between probes: `MIN_HEALTH_INTERVAL_SECS..=MAX_HEALTH_INTERVAL_SECS`.
    #[cfg_attr(feature = "std", serde(default = "defaults::interval_secs"))]
    pub interval_secs: u16,
    /// Seconds a probe may take: at least 1, at most the interval and
    /// `MAX_HEALTH_TIMEOUT_SECS`.
    #[cfg_attr(feature = "std", serde(default = "defaults::timeout_secs"))]
    pub timeout_secs: u16,
    /// Failures in a row that make the VM unhealthy: `1..=MAX_HEALTH_RETRIES`.
    #[cfg_attr(feature = "std", serde(default = "defaults::retries"))]
    pub retries: u8,
    /// Seconds after the VM (re)starts during which failures do not count (it is booting).
    #[cfg_attr(feature = "std", serde(default = "defaults::start_period_secs"))]
    pub start_period_secs: u16,
    #[cfg_attr(feature = "std", serde(default))]
    pub on_unhealthy: OnUnhealthy,
}

#[cfg(feature = "std")]
mod defaults {
    pub fn interval_secs() -> u16 {
        30
    }
    pub fn timeout_secs() -> u16 {
        5
    }
    pub fn retries() -> u8 {
        3
    }
    pub fn start_period_secs() -> u16 {
        120
    }
}

impl HealthCheckSpec {
    /// The rules of one check within its spec.
    pub(super) fn check(&self, spec: &DeploymentSpec) -> Result<(), SpecError> {
        use SpecError::*;
        let target = spec.workload(&self.vm).ok_or(UnknownHealthCheckTarget)?;
        ensure(target.as_vm().is_some(), HealthCheckTargetNotAVm)?;
        ensure(
            (MIN_HEALTH_INTERVAL_SECS..=MAX_HEALTH_INTERVAL_SECS).contains(&self.interval_secs)
                && (1..=self.interval_secs.min(MAX_HEALTH_TIMEOUT_SECS))
                    .contains(&self.timeout_secs)
                && (1..=MAX_HEALTH_RETRIES).contains(&self.retries)
                && self.start_period_secs <= MAX_HEALTH_START_PERIOD_SECS,
            HealthTimingOutOfRange,
        )?;
        let probe_ok = match &self.probe {
            HealthProbe::Command(command) => {
                !command.is_empty()
                    && is_text(command.as_bytes())
                    && !command.as_bytes().iter().all(u8::is_ascii_whitespace)
            }
            HealthProbe::Tcp(port) => *port != 0,
            HealthProbe::Http { port, path } => {
                *port != 0
                    && path.as_bytes().first() == Some(&b'/')
                    && path.as_bytes().iter().all(u8::is_ascii_graphic)
            }
        };
        ensure(probe_ok, InvalidHealthProbe)
    }
}
