//! What other pallets call: billing ([`ContractsForBilling`]) and the grid, whose node and
//! address removals end contracts ([`zos_primitives::contracts::EndContracts`]).

use super::*;

impl<T: Config> ContractsForBilling<T::AccountId, BlockNumberFor<T>> for Pallet<T> {
    fn contract_billing_info(
        contract: ContractId,
    ) -> Option<BillingInfo<T::AccountId, BlockNumberFor<T>>> {
        Contracts::<T>::get(contract).and_then(|c| Self::billing_info(&c))
    }

    fn set_grace_period(contract_id: ContractId, in_grace: bool) -> DispatchResult {
        let mut contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
        let active = contract.active.ok_or(Error::<T>::NotActivated)?;
        let is_in_grace = contract.state == ContractState::GracePeriod;
        if in_grace == is_in_grace {
            return Ok(());
        }
        contract.state = if in_grace {
            ContractState::GracePeriod
        } else {
            Self::reported_state(contract_id, active.version)
        };
        Contracts::<T>::insert(contract_id, contract);
        Self::deposit_event(if in_grace {
            Event::GracePeriodStarted {
                contract: contract_id,
            }
        } else {
            Event::GracePeriodEnded {
                contract: contract_id,
            }
        });
        Ok(())
    }

    fn cancel_out_of_funds(contract: ContractId) -> DispatchResult {
        frame_support::storage::with_storage_layer(|| {
            Self::do_cancel(contract, CancelCause::OutOfFunds)
        })
    }
}

impl<T: Config> zos_primitives::contracts::EndContracts for Pallet<T> {
    fn end_contracts_on_node(node: NodeId, max: u32) -> zos_primitives::contracts::EndedOnNode {
        let ids: Vec<ContractId> = ContractsByNode::<T>::iter_key_prefix(node)
            .take(max as usize)
            .collect();
        let mut outcome = zos_primitives::contracts::EndedOnNode {
            attempted: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        for id in ids {
            let result = frame_support::storage::with_storage_layer(|| {
                Self::do_cancel(id, CancelCause::NodeRemoved)
            });
            if let Err(e) = result {
                outcome.failed = true;
                log::error!(target: "runtime::deployments", "ending contract {id} of leaving node {node} failed: {e:?}");
            }
        }
        outcome.more = ContractsByNode::<T>::iter_key_prefix(node).next().is_some();
        outcome
    }

    fn end_contract_holding_ip(contract: ContractId) -> DispatchResult {
        frame_support::storage::with_storage_layer(|| {
            Self::do_cancel(contract, CancelCause::PublicIpRemoved)
        })
    }

    fn end_contract_weight() -> frame_support::weights::Weight {
        // A cancel proposal that passes at once ends the contract the same way, and approving
        // one does: the larger of the two, at their worst cases.
        T::WeightInfo::approve()
            .max(T::WeightInfo::propose_cancel())
            .saturating_add(Pallet::<T>::gateway_hosts_weight())
            .saturating_add(T::OnContractEnded::on_contract_ended_weight())
    }
}
