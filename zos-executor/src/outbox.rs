//! The consumption-report outbox: closed metering windows waiting to be settled on chain.
//!
//! Exactly once, across crashes: a batch leaves the outbox only after it is finalized, so a
//! crash between finality and removal leaves windows the chain already settled. Before sending
//! after a start, a failure or a rejection, the outbox is aligned with the chain's finalized
//! `billed_until` of each contract: settled windows are dropped, the first unsettled one is
//! made to start exactly where billing stands, and windows of contracts the chain no longer
//! bills are dropped. Transactions a killed process left in the pool are waited for (or for
//! their mortality to run out) before anything is sent, so they cannot overlap a new batch.
//! Nothing is sent that the chain would reject for its window, and each rejection would cost
//! the node a fee.

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use codec::Decode;
use tracing::{info, warn};
use zos_primitives::ContractId;

use crate::{
    chain::{calls, runtime::billing::events::ReportRejected, ConsumptionReport, TxError},
    follower::unix_ms,
    service::{Executor, TX_TIMEOUT},
};

/// Reports per `report_consumption` extrinsic (the runtime accepts up to 256).
const REPORT_BATCH: usize = 128;

/// How long transactions of an earlier process may stay pending before reports go out anyway:
/// the executor signs mortal transactions valid for 64 blocks, about 6.4 minutes at 6 s blocks.
const EARLIER_TX_PATIENCE: Duration = Duration::from_secs(400);

/// An outbox key: (contract, window start as first closed).
pub type OutboxKey = (ContractId, u64);

/// What the chain says about one contract's billing, as the alignment needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billing {
    /// The chain does not bill this contract (it ended, or never existed): reports would be
    /// rejected as `UnknownContract`.
    Unknown,
    /// Billed until this unix second (`None`: no window accepted yet).
    BilledUntil(Option<u64>),
}

/// The result of aligning the outbox with the chain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Aligned {
    /// Reports to send, oldest first per contract, with the outbox keys they replace.
    pub send: Vec<(Vec<OutboxKey>, ConsumptionReport)>,
    /// Keys whose windows are settled already or can never be: removed without sending.
    pub drop: Vec<OutboxKey>,
}

/// Aligns outbox entries with the chain's billing state per contract (pure, for testing).
/// A window is dropped when the chain billed past its end; the first one left starts exactly
/// at `billed_until` (a crash can leave a window that overlaps the chain's last one, or a gap
/// after a rejected window), each further one where the previous ends; an uptime longer than
/// its (shortened) window is cut to it.
pub fn align(
    entries: Vec<(OutboxKey, ConsumptionReport)>,
    billing: impl Fn(ContractId) -> Billing,
) -> Aligned {
    let mut by_contract: BTreeMap<ContractId, Vec<(OutboxKey, ConsumptionReport)>> =
        BTreeMap::new();
    for (key, report) in entries {
        by_contract.entry(key.0).or_default().push((key, report));
    }
    let mut out = Aligned::default();
    for (contract, mut windows) in by_contract {
        windows.sort_by_key(|(_, r)| r.window_start);
        let mut next_start = match billing(contract) {
            Billing::Unknown => {
                out.drop.extend(windows.into_iter().map(|(k, _)| k));
                continue;
            }
            Billing::BilledUntil(until) => until,
        };
        for (key, mut report) in windows {
            if let Some(start) = next_start {
                if report.window_end <= start {
                    out.drop.push(key);
                    continue;
                }
                report.window_start = start;
                report.uptime_seconds = report
                    .uptime_seconds
                    .min(report.window_end - report.window_start);
            }
            next_start = Some(report.window_end);
            out.send.push((vec![key], report));
        }
    }
    out
}

/// Outbox state kept by the running executor.
#[derive(Debug)]
pub struct OutboxState {
    /// Align with the chain before the next send (set at start, after any failure or rejection).
    pub(crate) must_align: std::sync::atomic::AtomicBool,
    /// Transactions of an earlier process pending at start: wait until the chain's finalized
    /// nonce of the node account reaches this, or the deadline passes.
    pub(crate) earlier_pending: std::sync::Mutex<Option<(u64, Instant)>>,
}

impl Default for OutboxState {
    fn default() -> Self {
        Self {
            must_align: true.into(),
            earlier_pending: Default::default(),
        }
    }
}

impl Executor {
    /// Notes transactions a previous process of this node left pending (in the pool or in
    /// blocks not yet finalized), so reports wait for them.
    pub(crate) async fn note_earlier_transactions(&self) -> Result<()> {
        let (finalized, next) = self
            .chain
            .account_nonces(&self.identity.account_id())
            .await?;
        if next > finalized {
            info!(
                pending = next - finalized,
                "transactions of an earlier run are still pending: consumption reports wait for them"
            );
            *self
                .outbox
                .earlier_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()) =
                Some((next, Instant::now() + EARLIER_TX_PATIENCE));
        }
        Ok(())
    }

    /// Whether transactions of an earlier process may still land.
    async fn waiting_for_earlier_transactions(&self) -> Result<bool> {
        let pending = *self
            .outbox
            .earlier_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some((target, deadline)) = pending else {
            return Ok(false);
        };
        let (finalized, _) = self
            .chain
            .account_nonces(&self.identity.account_id())
            .await?;
        if finalized >= target || Instant::now() >= deadline {
            *self
                .outbox
                .earlier_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            self.outbox.must_align.store(true, Ordering::SeqCst);
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends the outbox, oldest windows first, in batches; a batch leaves the outbox only once
    /// it is in a finalized block.
    pub async fn flush_outbox(&self) -> Result<()> {
        if self.waiting_for_earlier_transactions().await? {
            return Ok(());
        }
        let mut entries = Vec::new();
        for (key, bytes) in self.store.outbox()? {
            entries.push((key, ConsumptionReport::decode(&mut &bytes[..])?));
        }
        if entries.is_empty() {
            return Ok(());
        }
        let aligned = if self.outbox.must_align.load(Ordering::SeqCst) {
            let aligned = self.align_with_chain(entries).await?;
            if !aligned.drop.is_empty() {
                info!(
                    windows = aligned.drop.len(),
                    "dropping reports the chain already settled (or no longer bills)"
                );
                self.store.remove_from_outbox(&aligned.drop)?;
            }
            self.outbox.must_align.store(false, Ordering::SeqCst);
            aligned
        } else {
            Aligned {
                send: entries.into_iter().map(|(k, r)| (vec![k], r)).collect(),
                drop: Vec::new(),
            }
        };
        for chunk in aligned.send.chunks(REPORT_BATCH) {
            let reports: Vec<ConsumptionReport> = chunk.iter().map(|(_, r)| r.clone()).collect();
            let call = calls::report_consumption(&reports)?;
            match self
                .chain
                .submit(&call, &self.identity.account, TX_TIMEOUT)
                .await
            {
                Ok(events) => {
                    self.metrics.sent("consumption");
                    for rejected in events.find::<ReportRejected>() {
                        let rejected = rejected?;
                        warn!(contract = rejected.contract, reason = ?rejected.reason, "consumption report rejected; realigning with the chain");
                        self.metrics.failed("consumption_window");
                        self.outbox.must_align.store(true, Ordering::SeqCst);
                        self.resync_meter(rejected.contract).await?;
                    }
                    let keys: Vec<OutboxKey> =
                        chunk.iter().flat_map(|(k, _)| k.iter().copied()).collect();
                    self.store.remove_from_outbox(&keys)?;
                }
                Err(e) => {
                    // A timed-out batch may still land: wait until it did or expired, then look
                    // at the chain before resending.
                    self.outbox.must_align.store(true, Ordering::SeqCst);
                    if let Err(e) = self.note_earlier_transactions().await {
                        warn!(error = %format!("{e:#}"), "could not check for pending transactions");
                    }
                    self.metrics.failed("consumption");
                    match e {
                        TxError::Dispatch(e) => bail!("report_consumption refused: {e}"),
                        TxError::Transient(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads each contract's billing state at the finalized block and aligns the entries.
    async fn align_with_chain(
        &self,
        entries: Vec<(OutboxKey, ConsumptionReport)>,
    ) -> Result<Aligned> {
        let mut billing = BTreeMap::new();
        for ((contract, _), _) in &entries {
            if billing.contains_key(contract) {
                continue;
            }
            let state = match self.chain.billing_status(*contract).await? {
                None => Billing::Unknown,
                Some(status) => Billing::BilledUntil(status.billed_until),
            };
            billing.insert(*contract, state);
        }
        Ok(align(entries, |c| {
            billing.get(&c).copied().unwrap_or(Billing::Unknown)
        }))
    }

    /// After a rejected window, the open window continues from where the chain says billing
    /// stands; the uptime measured in it so far is kept (cut to the window), never zeroed.
    async fn resync_meter(&self, contract: ContractId) -> Result<()> {
        let now = unix_ms() / 1000;
        let Some(start) = self.chain.billed_until(contract).await? else {
            return Ok(());
        };
        if let Some(mut st) = self.store.meter(contract)? {
            // Later windows already in the outbox are realigned before sending; the open one
            // starts after them.
            let closed_after = self
                .store
                .outbox()?
                .into_iter()
                .filter(|((c, _), _)| *c == contract)
                .filter_map(|(_, bytes)| ConsumptionReport::decode(&mut &bytes[..]).ok())
                .map(|r| r.window_end)
                .max();
            let start = closed_after.unwrap_or(start).min(now);
            if st.window_start != start {
                st.window_start = start;
                st.up_seconds = st.up_seconds.min(now.saturating_sub(start));
                self.store.put_meter(contract, &st)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        contract: ContractId,
        start: u64,
        end: u64,
        up: u64,
    ) -> (OutboxKey, ConsumptionReport) {
        (
            (contract, start),
            ConsumptionReport {
                contract,
                window_start: start,
                window_end: end,
                uptime_seconds: up,
                public_bytes_in: 0,
                public_bytes_out: 0,
            },
        )
    }

    #[test]
    fn settled_windows_are_dropped_and_the_rest_start_where_billing_stands() {
        let entries = vec![
            report(1, 100, 110, 10),
            report(1, 110, 120, 10),
            report(1, 120, 130, 10),
            report(2, 50, 60, 5),
            report(3, 10, 20, 10),
        ];
        let aligned = align(entries, |c| match c {
            // A batch with 100..120 was finalized just before a crash.
            1 => Billing::BilledUntil(Some(120)),
            // Nothing settled yet: sent as is.
            2 => Billing::BilledUntil(None),
            // Cancelled meanwhile: the chain would reject every window.
            _ => Billing::Unknown,
        });
        assert_eq!(aligned.drop, vec![(1, 100), (1, 110), (3, 10)]);
        let sent: Vec<_> = aligned
            .send
            .iter()
            .map(|(k, r)| (k[0], r.window_start, r.window_end, r.uptime_seconds))
            .collect();
        assert_eq!(sent, vec![((1, 120), 120, 130, 10), ((2, 50), 50, 60, 5)]);
    }

    #[test]
    fn an_overlap_or_a_gap_is_closed_and_uptime_stays_within_the_window() {
        // The chain is at 115 (a window the outbox no longer has), the outbox at 110..120..130.
        let aligned = align(
            vec![report(7, 110, 120, 10), report(7, 120, 130, 9)],
            |_| Billing::BilledUntil(Some(115)),
        );
        assert!(aligned.drop.is_empty());
        let first = &aligned.send[0].1;
        assert_eq!(
            (first.window_start, first.window_end, first.uptime_seconds),
            (115, 120, 5)
        );
        assert_eq!(aligned.send[1].1.window_start, 120);
        // A gap (a rejected window was never settled): the next window reaches back to it.
        let aligned = align(vec![report(7, 130, 140, 10)], |_| {
            Billing::BilledUntil(Some(120))
        });
        let r = &aligned.send[0].1;
        assert_eq!(
            (r.window_start, r.window_end, r.uptime_seconds),
            (120, 140, 10)
        );
        // Windows stay contiguous among themselves after a jump.
        let aligned = align(
            vec![report(7, 100, 110, 10), report(7, 130, 140, 10)],
            |_| Billing::BilledUntil(None),
        );
        assert_eq!(aligned.send[1].1.window_start, 110);
    }
}
