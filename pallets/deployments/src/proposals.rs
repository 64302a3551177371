//! The proposal machinery: opening a proposal (the proposer's approval included), the
//! threshold, carrying out or closing a proposal, and the expiry queue behind the TTL.

use super::*;

impl<T: Config> Pallet<T> {
    /// Sum of the approving signers' weights (cannot overflow: checked at creation).
    pub(crate) fn approved_weight(contract: &Contract<T>, proposal: &Proposal<T>) -> u32 {
        contract
            .signers
            .iter()
            .filter(|s| proposal.approvals.contains(&s.account))
            .fold(0u32, |acc, s| acc.saturating_add(s.weight))
    }

    /// Threshold reached and every required signer approved.
    pub fn passes(contract: &Contract<T>, proposal: &Proposal<T>) -> bool {
        Self::approved_weight(contract, proposal) >= contract.threshold
            && contract
                .signers
                .iter()
                .filter(|s| s.required)
                .all(|s| proposal.approvals.contains(&s.account))
    }

    pub(crate) fn never_activated(contract_id: ContractId) -> Result<bool, DispatchError> {
        Ok(Contracts::<T>::get(contract_id)
            .ok_or(Error::<T>::ContractNotFound)?
            .active
            .is_none())
    }

    /// Stores a proposal approved by its proposer, and passes it at once if that is enough.
    pub(crate) fn open_proposal(
        contract_id: ContractId,
        contract: Contract<T>,
        proposer: T::AccountId,
        action: ProposalAction,
        hash: SpecHash,
        deposit: BalanceOf<T>,
    ) -> DispatchResult {
        let expires_at = Self::schedule_expiry(contract_id);
        let kind = match &action {
            ProposalAction::Deploy(spec) => ProposalKind::Deploy {
                version: spec.version,
            },
            ProposalAction::Cancel => ProposalKind::Cancel,
        };
        let mut approvals = BoundedVec::new();
        approvals
            .try_push(proposer.clone())
            .map_err(|_| Error::<T>::ApprovalsFull)?;
        let proposal = Proposal::<T> {
            action,
            hash,
            proposer: proposer.clone(),
            approvals,
            expires_at,
            deposit,
        };
        Self::deposit_event(Event::ProposalCreated {
            contract: contract_id,
            proposer,
            hash,
            kind,
            expires_at,
        });
        if Self::passes(&contract, &proposal) {
            Self::execute(contract_id, contract, proposal)
        } else {
            Proposals::<T>::insert(contract_id, proposal);
            Ok(())
        }
    }

    /// Queues the expiry of a proposal opened now, `ProposalTtl` blocks later (or later still
    /// when many are due at once); returns the due block.
    pub(crate) fn schedule_expiry(contract_id: ContractId) -> BlockNumberFor<T> {
        let due = frame_system::Pallet::<T>::block_number().saturating_add(T::ProposalTtl::get());
        Self::push_expiry(due, contract_id);
        due
    }

    /// `who` is one of the contract's signers.
    pub(crate) fn ensure_signer(contract: &Contract<T>, who: &T::AccountId) -> DispatchResult {
        ensure!(
            contract.signers.iter().any(|s| &s.account == who),
            Error::<T>::NotASigner
        );
        Ok(())
    }

    /// A proposal whose expiry block has begun is over, even while a backlog in the expiry
    /// queue has not removed it yet.
    pub(crate) fn ensure_not_overdue(proposal: &Proposal<T>) -> DispatchResult {
        ensure!(
            proposal.expires_at > frame_system::Pallet::<T>::block_number(),
            Error::<T>::ProposalOverdue
        );
        Ok(())
    }

    /// Expires the contract's pending proposal now if its time ran out, so that a backlog in
    /// the expiry queue never blocks a new proposal. Only for activated contracts (an expired
    /// creation ends the contract, which the queue does).
    pub(crate) fn expire_overdue_proposal(contract_id: ContractId) -> DispatchResult {
        let Some(proposal) = Proposals::<T>::get(contract_id) else {
            return Ok(());
        };
        if Self::ensure_not_overdue(&proposal).is_ok() || Self::never_activated(contract_id)? {
            return Ok(());
        }
        // What the queue would do when it reaches the entry (which it then skips).
        Self::expire(contract_id, proposal.expires_at);
        Ok(())
    }

    /// Appends an expiry to the queue; callers keep it in due order.
    pub(crate) fn push_expiry(due: BlockNumberFor<T>, contract_id: ContractId) {
        ExpiryQueueEnds::<T>::mutate(|(_, tail)| {
            ExpiryQueue::<T>::insert(*tail, (due, contract_id));
            *tail = tail.saturating_add(1);
        });
    }

    /// Removes a proposal that did not pass and releases its part of the deposit.
    pub(crate) fn close_proposal(
        contract_id: ContractId,
        mut contract: Contract<T>,
        proposal: &Proposal<T>,
    ) -> DispatchResult {
        // Its queued expiry is skipped when reached.
        Proposals::<T>::remove(contract_id);
        if !proposal.deposit.is_zero() {
            T::Currency::release(
                &HoldReason::ContractDeposit.into(),
                &contract.owner,
                proposal.deposit,
                Precision::BestEffort,
            )?;
            contract.deposit = contract.deposit.saturating_sub(proposal.deposit);
            Contracts::<T>::insert(contract_id, contract);
        }
        Ok(())
    }

    /// Carries out a proposal that passed.
    pub(crate) fn execute(
        contract_id: ContractId,
        contract: Contract<T>,
        proposal: Proposal<T>,
    ) -> DispatchResult {
        Proposals::<T>::remove(contract_id);
        match proposal.action {
            ProposalAction::Cancel => Self::do_cancel(contract_id, CancelCause::Signers),
            ProposalAction::Deploy(spec) => {
                Self::apply_spec(contract_id, contract, spec, proposal.hash)
            }
        }
    }

    /// Drops a proposal whose time (`due`) ran out; a contract whose creation expired ends.
    /// Nothing happens when the contract's proposal is not the one queued for `due`.
    pub(crate) fn expire(contract_id: ContractId, due: BlockNumberFor<T>) {
        let Some(proposal) = Proposals::<T>::get(contract_id) else {
            return;
        };
        if proposal.expires_at != due {
            return;
        }
        let result = frame_support::storage::with_storage_layer(|| -> DispatchResult {
            let contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
            Self::close_proposal(contract_id, contract, &proposal)?;
            Self::deposit_event(Event::ProposalExpired {
                contract: contract_id,
                hash: proposal.hash,
            });
            if Self::never_activated(contract_id)? {
                Self::do_cancel(contract_id, CancelCause::Expired)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            log::error!(target: "runtime::deployments", "expiring proposal of contract {contract_id} failed: {e:?}");
        }
    }
}
