//! The name registry of gateway workloads: which contract serves each host on the gateways.
//!
//! A gateway workload's host is claimed when its spec passes (with the rest of the spec's
//! reservations, all or nothing) and freed when an update drops it or the contract ends, so a
//! name lives exactly as long as the contract serving it. A name under a gateway domain is
//! unique per domain; a deployer's own FQDN is unique per node (see
//! [`zos_primitives::spec::gateway_host_key`]). Names are billed per hour through the
//! contract's required resources (`gateway_hosts`).

use super::*;
use frame_support::{pallet_prelude::ConstU32, weights::Weight};
use zos_primitives::spec::{
    gateway_host_is_name, gateway_host_key, GatewayHost, SpecError, MAX_WORKLOADS,
};

/// The host keys a contract holds, in spec order.
pub type GatewayHostKeys = BoundedVec<[u8; 32], ConstU32<MAX_WORKLOADS>>;

impl<T: Config> Pallet<T> {
    /// The keys of the hosts `spec`'s gateway workloads serve on `node`.
    pub(crate) fn gateway_host_keys(
        node: NodeId,
        spec: &DeploymentSpec,
    ) -> Result<GatewayHostKeys, DispatchError> {
        let mut keys = GatewayHostKeys::new();
        let mut domain = None;
        for gateway in spec.workloads.iter().filter_map(|w| w.as_gateway()) {
            let domain = domain.get_or_insert_with(|| T::Grid::node_gateway_domain(node));
            let key = match gateway_host_key(node, &gateway.host, domain.as_deref()) {
                Some(key) => key,
                None if domain.is_none() && matches!(gateway.host, GatewayHost::Name(_)) => {
                    return Err(Error::<T>::NodeHasNoGatewayDomain.into())
                }
                // `<name>.<domain>` longer than a DNS name may be.
                None => return Err(Error::<T>::InvalidSpec(SpecError::InvalidGatewayName).into()),
            };
            // Two gateways of one spec spelling one host (a name and the FQDN it makes).
            ensure!(
                !keys.contains(&key),
                Error::<T>::InvalidSpec(SpecError::DuplicateGatewayHost)
            );
            if keys.try_push(key).is_err() {
                defensive!("a spec has more gateways than workloads");
            }
        }
        Ok(keys)
    }

    /// Fails with `GatewayHostTaken` if another contract serves one of `spec`'s hosts on
    /// `node`: checked when a spec is proposed, so signers do not approve a spec that cannot
    /// pass (the claim itself happens when it passes).
    pub(crate) fn ensure_gateway_hosts_free(
        contract_id: ContractId,
        node: NodeId,
        spec: &DeploymentSpec,
    ) -> DispatchResult {
        for key in Self::gateway_host_keys(node, spec)? {
            if let Some(holder) = GatewayHosts::<T>::get(key) {
                ensure!(holder == contract_id, Error::<T>::GatewayHostTaken);
            }
        }
        Ok(())
    }

    /// Claims the hosts of the contract's new spec and frees those it no longer serves.
    pub(crate) fn claim_gateway_hosts(
        contract_id: ContractId,
        node: NodeId,
        spec: &DeploymentSpec,
    ) -> DispatchResult {
        let new = Self::gateway_host_keys(node, spec)?;
        let old = ContractGatewayHosts::<T>::get(contract_id).unwrap_or_default();
        for key in old.iter().filter(|k| !new.contains(k)) {
            GatewayHosts::<T>::remove(key);
        }
        for key in new.iter().filter(|k| !old.contains(k)) {
            if let Some(holder) = GatewayHosts::<T>::get(key) {
                ensure!(holder == contract_id, Error::<T>::GatewayHostTaken);
            }
            GatewayHosts::<T>::insert(key, contract_id);
        }
        if new.is_empty() {
            ContractGatewayHosts::<T>::remove(contract_id);
        } else {
            ContractGatewayHosts::<T>::insert(contract_id, new);
        }
        Ok(())
    }

    /// Frees every host the contract holds.
    pub(crate) fn release_gateway_hosts(contract_id: ContractId) {
        for key in ContractGatewayHosts::<T>::take(contract_id).unwrap_or_default() {
            if GatewayHosts::<T>::get(key) == Some(contract_id) {
                GatewayHosts::<T>::remove(key);
            }
        }
    }

    /// Frees the FQDNs of the gateway workloads the node reports failed. A failed workload
    /// serves nothing, and an FQDN held on a node whose check it fails (its DNS points
    /// elsewhere) would keep the domain's owner from that node for as long as the contract
    /// lives. Names under the node's domain stay held: the node can always serve them.
    pub(crate) fn release_failed_fqdns(
        contract_id: ContractId,
        node: NodeId,
        spec: &DeploymentSpec,
        reports: &WorkloadReports,
    ) {
        let Some(mut held) = ContractGatewayHosts::<T>::get(contract_id) else {
            return;
        };
        let mut domain = None;
        for (workload, report) in spec.workloads.iter().zip(reports.iter()) {
            let (Some(gateway), WorkloadResult::Error(_)) = (workload.as_gateway(), &report.result)
            else {
                continue;
            };
            let domain = domain.get_or_insert_with(|| T::Grid::node_gateway_domain(node));
            if gateway_host_is_name(&gateway.host, domain.as_deref()) {
                continue;
            }
            let Some(key) = gateway_host_key(node, &gateway.host, domain.as_deref()) else {
                continue;
            };
            if !held.contains(&key) {
                continue;
            }
            held.retain(|k| *k != key);
            if GatewayHosts::<T>::get(key) == Some(contract_id) {
                GatewayHosts::<T>::remove(key);
            }
            Self::deposit_event(Event::GatewayFqdnFreed {
                contract: contract_id,
                workload: workload.name.clone(),
            });
        }
        if held.is_empty() {
            ContractGatewayHosts::<T>::remove(contract_id);
        } else {
            ContractGatewayHosts::<T>::insert(contract_id, held);
        }
    }

    /// What claiming or freeing a spec's hosts may cost beyond the benchmarked calls: every
    /// host read and written, plus the contract's list.
    pub fn gateway_hosts_weight() -> Weight {
        let hosts = u64::from(MAX_WORKLOADS).saturating_mul(2);
        T::DbWeight::get().reads_writes(hosts.saturating_add(2), hosts.saturating_add(1))
    }
}
