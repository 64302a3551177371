//! Deadline queues: grace expiry and the end of an ended contract's final-report period,
//! handled in `on_initialize`.
//!
//! Each [`DeadlineKind`] has a FIFO queue whose deadlines are a fixed number of blocks after the
//! block that queued them, so a queue is in due order by construction and only its head is ever
//! looked at. `on_initialize` handles at most [`Config::MaxDeadlinesPerBlock`] due deadlines per
//! queue; the rest fall through to the next blocks. Nobody can fill a queue so that other
//! contracts' deadlines are refused: a flood only delays deadlines by (queued / per block)
//! blocks, and every entry costs its maker a fee-paying contract end or an unpaid charge.

use super::*;

impl<T: Config> Pallet<T> {
    /// Queues a deadline `after` blocks from now for `contract`.
    pub(crate) fn queue_deadline(
        kind: DeadlineKind,
        contract: ContractId,
        after: BlockNumberFor<T>,
    ) {
        let now = frame_system::Pallet::<T>::block_number();
        Self::push_deadline(
            kind,
            Deadline {
                due: now.saturating_add(after),
                contract,
                queued_at: now,
            },
        );
    }

    /// Appends `deadline` to its queue. Callers keep the queue in due order.
    pub(crate) fn push_deadline(kind: DeadlineKind, deadline: Deadline<BlockNumberFor<T>>) {
        DeadlineQueueEnds::<T>::mutate(kind, |(_, tail)| {
            Deadlines::<T>::insert(kind, *tail, deadline);
            *tail = tail.saturating_add(1);
        });
    }

    /// Handles the due deadlines of every queue, at most [`Config::MaxDeadlinesPerBlock`] each.
    pub(crate) fn handle_deadlines(now: BlockNumberFor<T>) -> Weight {
        let db = T::DbWeight::get();
        let max = T::MaxDeadlinesPerBlock::get();
        let mut weight = Weight::zero();
        for kind in DeadlineKind::ALL {
            let (first, tail) = DeadlineQueueEnds::<T>::get(kind);
            let mut head = first;
            weight.saturating_accrue(db.reads(1));
            let mut handled = 0u32;
            while head < tail && handled < max {
                weight.saturating_accrue(db.reads(1));
                let Some(deadline) = Deadlines::<T>::get(kind, head) else {
                    defensive!("a queued deadline is missing");
                    head = head.saturating_add(1);
                    continue;
                };
                if deadline.due > now {
                    break;
                }
                Deadlines::<T>::remove(kind, head);
                head = head.saturating_add(1);
                handled = handled.saturating_add(1);
                weight.saturating_accrue(match kind {
                    DeadlineKind::GraceExpiry => {
                        Self::grace_deadline(&deadline, now);
                        T::WeightInfo::grace_expiry()
                    }
                    DeadlineKind::FinalReport => {
                        Self::final_report_deadline(&deadline, now);
                        T::WeightInfo::final_report_deadline()
                    }
                });
            }
            if head != first {
                // Only the head: handling may have queued more (a retried grace expiry).
                DeadlineQueueEnds::<T>::mutate(kind, |ends| ends.0 = head);
                weight.saturating_accrue(db.writes(1));
            }
        }
        weight
    }

    /// Cancels the contract if it is still in the grace period that queued the deadline.
    fn grace_deadline(deadline: &Deadline<BlockNumberFor<T>>, now: BlockNumberFor<T>) {
        if GraceSince::<T>::get(deadline.contract) != Some(deadline.queued_at) {
            // Paid meanwhile (and maybe in grace again since: that grace has its own deadline).
            return;
        }
        if !Self::expire_grace(deadline.contract) {
            // Retried a grace period from now (not from the old due block, which may be long
            // past): every deadline in the queue was queued at or before `now`, so it stays in
            // due order.
            Self::push_deadline(
                DeadlineKind::GraceExpiry,
                Deadline {
                    due: now.saturating_add(T::GracePeriodBlocks::get()),
                    ..deadline.clone()
                },
            );
        }
    }

    /// The node did not report the final window in time: charges the unreported time at the
    /// uptime ratio of the last accepted window, then closes the contract's billing.
    fn final_report_deadline(deadline: &Deadline<BlockNumberFor<T>>, now: BlockNumberFor<T>) {
        let contract = deadline.contract;
        let Some(ended) = EndedContracts::<T>::get(contract) else {
            return;
        };
        Self::estimate_final_window(contract, ended, now);
        Self::close(contract);
    }

    /// Charges an ended contract's unreported time, from its last accepted window to its end,
    /// at that window's uptime ratio ([`Event::FinalWindowEstimated`]).
    ///
    /// Only when the last window ended at most [`Config::MaxWindowSecs`] before the end, that is
    /// when the node was reporting regularly up to the end; a node that had gone silent earlier,
    /// or never reported, gets nothing charged for the silence.
    pub(crate) fn estimate_final_window(
        contract: ContractId,
        ended: EndedContract<T::AccountId, BlockNumberFor<T>>,
        now: BlockNumberFor<T>,
    ) {
        let Some(billing) = ContractBillings::<T>::get(contract) else {
            return;
        };
        let start = billing.billed_until();
        let last = &billing.last_report;
        let last_length = last.window_end.saturating_sub(last.window_start);
        let length = ended.ended_at.saturating_sub(start);
        if length == 0 || length > T::MaxWindowSecs::get() || last_length == 0 {
            return;
        }
        let uptime = u128::from(length)
            .saturating_mul(u128::from(last.uptime_seconds.min(last_length)))
            / u128::from(last_length);
        let report = ConsumptionReport {
            contract,
            window_start: start,
            window_end: ended.ended_at,
            uptime_seconds: u64::try_from(uptime).unwrap_or(length),
            public_bytes_in: 0,
            public_bytes_out: 0,
        };
        let payer = Payer {
            owner: ended.owner,
            node: ended.node,
            required: ended.required,
            activated_at: ended.activated_at,
            ended_at: Some(ended.ended_at),
        };
        match Self::charge_and_settle(&report, &payer, billing.debt, now) {
            Ok(()) => Self::deposit_event(Event::FinalWindowEstimated {
                contract,
                window_start: report.window_start,
                window_end: report.window_end,
                uptime_seconds: report.uptime_seconds,
            }),
            // The farm or its policy is gone: nothing can be charged.
            Err(reason) => Self::deposit_event(Event::ReportRejected { contract, reason }),
        }
    }
}
