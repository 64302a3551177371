//! The consumption-report outbox: closed metering windows waiting to be settled on chain.
//!
//! Exactly once, across crashes: a batch leaves the outbox only after it is finalized, so a
//! crash between finality and removal leaves windows the chain already settled. Before every
//! send the outbox is aligned with each contract's `billed_until` at the finalized block (never
//! at a block older than one the node already acted on): settled windows are dropped, the first
//! unsettled one starts exactly where billing stands (a gap longer than the chain's longest
//! window is filled with zero-uptime windows), and windows of contracts the chain no longer
//! bills are dropped. Transactions a killed process left pending are waited for (until
//! finalized, or until their 64-block mortality has surely run out) before anything is sent, so
//! they cannot overlap a new batch. A rejected window stays in the outbox and is realigned;
//! nothing is sent that the chain would reject for its window, and each rejection would cost
//! the node a fee.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use codec::Decode;
use tracing::{info, warn};
use zos_primitives::ContractId;

use crate::{
    chain::{calls, runtime::billing::events::ReportRejected, ConsumptionReport, TxError},
    engine::StaleChainView,
    follower::unix_ms,
    service::{Executor, TX_TIMEOUT},
};

/// Reports per `report_consumption` extrinsic (the runtime accepts up to 256).
const REPORT_BATCH: usize = 128;

/// Finalized blocks after which a pending transaction of an earlier process can no longer land:
/// the executor signs mortal transactions valid for 64 blocks from the block they name (at most
/// the finalized head when signed), plus a margin.
const EARLIER_TX_MORTALITY_BLOCKS: u64 = 64 + 8;

/// An outbox key: (contract, window start as first closed).
pub type OutboxKey = (ContractId, u64);

/// What the chain says about one contract's billing, as the alignment needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billing {
    /// The chain does not bill this contract (it ended and was settled, or never existed):
    /// reports would be rejected as `UnknownContract`.
    Unknown,
    /// Billed until `until` (unix seconds; `None`: no window accepted yet). `ended_at` is set
    /// for a contract that ended: windows may reach up to that time, not beyond.
    Billed {
        until: Option<u64>,
        ended_at: Option<u64>,
    },
}

/// What the chain accepts of a window (the billing pallet's constants).
#[derive(Clone, Copy, Debug)]
pub struct WindowLimits {
    /// Shortest window, seconds, unless it ends on a multiple of it or at the contract's end.
    pub min_window: u64,
    /// Longest window, seconds.
    pub max_window: u64,
    /// Most public traffic per second of a window.
    pub max_traffic_per_sec: u64,
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
/// after a rejected window), each further one where the previous ends; for an ended contract,
/// a window reaching past the end time is cut there (the final window) and later ones are
/// dropped; an uptime longer than its (shortened) window is cut to it, and so is traffic above
/// what the window may carry (`max_traffic_per_sec`, the chain's cap), so that no aligned
/// report can be refused for it. An ended contract's last window that stops short of the end
/// off the chain's grid (the final window, cut by a clock behind the chain's) is stretched to
/// the end, with no uptime added: otherwise the chain would refuse it as too short.
pub fn align(
    entries: Vec<(OutboxKey, ConsumptionReport)>,
    billing: impl Fn(ContractId) -> Billing,
    limits: &WindowLimits,
) -> Aligned {
    let max_window = limits.max_window.max(1);
    let min_window = limits.min_window.max(1);
    let max_traffic_per_sec = limits.max_traffic_per_sec;
    let mut by_contract: BTreeMap<ContractId, Vec<(OutboxKey, ConsumptionReport)>> =
        BTreeMap::new();
    for (key, report) in entries {
        by_contract.entry(key.0).or_default().push((key, report));
    }
    let mut out = Aligned::default();
    for (contract, mut windows) in by_contract {
        windows.sort_by_key(|(_, r)| r.window_start);
        let (mut next_start, ended_at) = match billing(contract) {
            Billing::Unknown => {
                out.drop.extend(windows.into_iter().map(|(k, _)| k));
                continue;
            }
            Billing::Billed { until, ended_at } => (until, ended_at),
        };
        let count = windows.len();
        for (index, (key, mut report)) in windows.into_iter().enumerate() {
            if let Some(end) = ended_at {
                if index + 1 == count
                    && report.window_end < end
                    && report.window_end % min_window != 0
                {
                    report.window_end = end;
                }
                if report.window_start >= end || next_start.is_some_and(|s| s >= end) {
                    out.drop.push(key);
                    continue;
                }
                if report.window_end > end {
                    // What the cut part carried is unknown: it keeps its share.
                    let whole = report.window_end - report.window_start;
                    let part = end - report.window_start;
                    report.uptime_seconds = share(report.uptime_seconds, part, whole).min(part);
                    report.public_bytes_in = share(report.public_bytes_in, part, whole);
                    report.public_bytes_out = share(report.public_bytes_out, part, whole);
                    report.window_end = end;
                }
            }
            if let Some(start) = next_start {
                if report.window_end <= start {
                    out.drop.push(key);
                    continue;
                }
                // A gap the chain would refuse as one window: zero-uptime windows fill it (the
                // node was not reporting then; nothing is charged for it).
                let mut start = start;
                while report.window_end - start > max_window && report.window_start > start {
                    let end = (start + max_window).min(report.window_start);
                    out.send.push((
                        Vec::new(),
                        ConsumptionReport {
                            contract,
                            window_start: start,
                            window_end: end,
                            uptime_seconds: 0,
                            public_bytes_in: 0,
                            public_bytes_out: 0,
                        },
                    ));
                    start = end;
                }
                report.window_start = start;
                report.uptime_seconds = report
                    .uptime_seconds
                    .min(report.window_end - report.window_start);
            }
            next_start = Some(report.window_end);
            // A window longer than the chain accepts (the executor was down across window
            // ends before the contract was removed) goes in pieces; the key leaves with the last.
            let pieces = split_long(report, max_window);
            let count = pieces.len();
            for (index, mut piece) in pieces.into_iter().enumerate() {
                let fits =
                    (piece.window_end - piece.window_start).saturating_mul(max_traffic_per_sec);
                piece.public_bytes_in = piece.public_bytes_in.min(fits);
                piece.public_bytes_out = piece.public_bytes_out.min(fits - piece.public_bytes_in);
                let keys = if index + 1 == count {
                    vec![key]
                } else {
                    Vec::new()
                };
                out.send.push((keys, piece));
            }
        }
    }
    out
}

/// `value` measured over `whole` seconds, scaled to `part` of them (rounded down).
fn share(value: u64, part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    (u128::from(value) * u128::from(part) / u128::from(whole)) as u64
}

/// `report` cut into consecutive windows of at most `max_window` seconds; uptime and traffic
/// are shared in proportion to length, and the pieces add up to the whole.
fn split_long(report: ConsumptionReport, max_window: u64) -> Vec<ConsumptionReport> {
    let whole = report.window_end - report.window_start;
    if whole <= max_window {
        return vec![report];
    }
    let mut pieces = Vec::new();
    let mut start = report.window_start;
    while start < report.window_end {
        let end = start.saturating_add(max_window).min(report.window_end);
        let (from, to) = (start - report.window_start, end - report.window_start);
        let part = |value: u64| share(value, to, whole) - share(value, from, whole);
        pieces.push(ConsumptionReport {
            window_start: start,
            window_end: end,
            uptime_seconds: part(report.uptime_seconds).min(end - start),
            public_bytes_in: part(report.public_bytes_in),
            public_bytes_out: part(report.public_bytes_out),
            ..report.clone()
        });
        start = end;
    }
    pieces
}

/// Outbox state kept by the running executor.
#[derive(Debug, Default)]
pub struct OutboxState {
    /// Transactions pending at start or after a failed send: wait until the node account's
    /// finalized nonce reaches `.0`, or the finalized head passes block `.1`.
    pub(crate) earlier_pending: std::sync::Mutex<Option<(u64, u64)>>,
}

impl Executor {
    /// Notes transactions sent earlier (by a previous process, or a send that timed out) that
    /// are still pending, in the pool or in blocks not yet finalized, so reports wait for them.
    pub(crate) async fn note_earlier_transactions(&self) -> Result<()> {
        let nonces = self
            .chain
            .account_nonces(&self.identity.account_id())
            .await?;
        if nonces.pending > nonces.finalized {
            info!(
                pending = nonces.pending - nonces.finalized,
                "transactions sent earlier are still pending: consumption reports wait for them"
            );
            *self
                .outbox
                .earlier_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((
                nonces.pending,
                nonces.at.saturating_add(EARLIER_TX_MORTALITY_BLOCKS),
            ));
        }
        Ok(())
    }

    /// Whether transactions sent earlier may still land.
    async fn waiting_for_earlier_transactions(&self) -> Result<bool> {
        let pending = *self
            .outbox
            .earlier_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some((target, expired_after)) = pending else {
            return Ok(false);
        };
        let nonces = self
            .chain
            .account_nonces(&self.identity.account_id())
            .await?;
        if nonces.finalized >= target || nonces.at > expired_after {
            *self
                .outbox
                .earlier_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends the outbox, oldest windows first, in batches, each aligned with the chain first; a
    /// window leaves the outbox once its batch is finalized and it was not rejected.
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
        let aligned = self.align_with_chain(entries).await?;
        if !aligned.drop.is_empty() {
            info!(
                windows = aligned.drop.len(),
                "dropping reports the chain already settled (or no longer bills)"
            );
            self.store.remove_from_outbox(&aligned.drop)?;
        }
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
                    let mut rejected_contracts = std::collections::BTreeSet::new();
                    for rejected in events.find::<ReportRejected>() {
                        let rejected = rejected?;
                        warn!(contract = rejected.contract, reason = ?rejected.reason, "consumption report rejected; realigning with the chain");
                        self.metrics.failed("consumption_window");
                        rejected_contracts.insert(rejected.contract);
                    }
                    // A rejected contract's windows stay (the next flush realigns them); the
                    // ones after a rejected window were refused as a gap anyway.
                    let keys: Vec<OutboxKey> = chunk
                        .iter()
                        .filter(|(_, r)| !rejected_contracts.contains(&r.contract))
                        .flat_map(|(k, _)| k.iter().copied())
                        .collect();
                    self.store.remove_from_outbox(&keys)?;
                    for contract in &rejected_contracts {
                        self.resync_meter(*contract).await?;
                    }
                    if !rejected_contracts.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    // A timed-out batch may still land: wait until it did or expired.
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

    /// Reads each contract's billing state at the finalized block and aligns the entries. A
    /// view older than one the node already acted on is refused: on a lagging node a live
    /// contract looks unknown, and its windows would be dropped.
    async fn align_with_chain(
        &self,
        entries: Vec<(OutboxKey, ConsumptionReport)>,
    ) -> Result<Aligned> {
        let acted_on = self.store.high_water()?.unwrap_or(0);
        let mut billing = BTreeMap::new();
        for ((contract, _), _) in &entries {
            if billing.contains_key(contract) {
                continue;
            }
            let (at, status) = self.chain.billing_status_numbered(*contract).await?;
            if at < acted_on {
                return Err(StaleChainView { seen: at, acted_on }.into());
            }
            let state = match status {
                None => Billing::Unknown,
                Some(status) => Billing::Billed {
                    until: status.billed_until,
                    ended_at: status.ended_at,
                },
            };
            billing.insert(*contract, state);
        }
        let limits = WindowLimits {
            min_window: self.chain.min_window_secs(),
            max_window: self.chain.max_window_secs(),
            max_traffic_per_sec: self.chain.max_traffic_bytes_per_sec(),
        };
        Ok(align(
            entries,
            |c| billing.get(&c).copied().unwrap_or(Billing::Unknown),
            &limits,
        ))
    }

    /// After a rejected window, the open window continues from where the chain says billing
    /// stands; the uptime measured in it so far is kept (cut to the window), never zeroed.
    async fn resync_meter(&self, contract: ContractId) -> Result<()> {
        let now = unix_ms() / 1000;
        let Some(start) = self.chain.billed_until(contract).await? else {
            return Ok(());
        };
        // Held for the store read and write only: a sample never waits on the chain.
        let _meter_states = self.meter_states.lock().await;
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

    /// `align` with no minimum window.
    fn align_t(
        entries: Vec<(OutboxKey, ConsumptionReport)>,
        billing: impl Fn(ContractId) -> Billing,
        max_window: u64,
        max_traffic_per_sec: u64,
    ) -> Aligned {
        let limits = WindowLimits {
            min_window: 1,
            max_window,
            max_traffic_per_sec,
        };
        align(entries, billing, &limits)
    }

    /// A live contract billed until `until`.
    fn billed(until: Option<u64>) -> Billing {
        Billing::Billed {
            until,
            ended_at: None,
        }
    }

    #[test]
    fn an_ended_contracts_windows_are_cut_at_its_end_and_later_ones_dropped() {
        // Billed until 300, ended at 390; the outbox has the regular window 300..600 (closed
        // after the end, before the removal was confirmed), a later one, and the final window
        // the removal wrote (600..610).
        let mut busy = report(5, 300, 600, 300);
        busy.1.public_bytes_in = 1_000;
        let aligned = align_t(
            vec![busy, report(5, 600, 605, 5), report(5, 605, 610, 5)],
            |_| Billing::Billed {
                until: Some(300),
                ended_at: Some(390),
            },
            3600,
            10,
        );
        assert_eq!(aligned.drop, vec![(5, 600), (5, 605)]);
        let r = &aligned.send[0].1;
        assert_eq!(
            (
                r.window_start,
                r.window_end,
                r.uptime_seconds,
                r.public_bytes_in
            ),
            (300, 390, 90, 300)
        );
        // Nothing reported yet, removed 10 s after a 90 s life: the final window starts at
        // the meter's start and ends at the end, with its share (90/100) of the 95 s up.
        let aligned = align_t(
            vec![report(6, 1_000, 1_100, 95)],
            |_| Billing::Billed {
                until: None,
                ended_at: Some(1_090),
            },
            3600,
            10,
        );
        let r = &aligned.send[0].1;
        assert_eq!(
            (r.window_start, r.window_end, r.uptime_seconds),
            (1_000, 1_090, 85)
        );
        // Already billed up to the end: everything is dropped.
        let aligned = align_t(
            vec![report(7, 390, 400, 10)],
            |_| Billing::Billed {
                until: Some(390),
                ended_at: Some(390),
            },
            3600,
            10,
        );
        assert!(aligned.send.is_empty());
        assert_eq!(aligned.drop, vec![(7, 390)]);
    }

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
        let aligned = align_t(
            entries,
            |c| match c {
                // A batch with 100..120 was finalized just before a crash.
                1 => billed(Some(120)),
                // Nothing settled yet: sent as is.
                2 => billed(None),
                // Cancelled meanwhile: the chain would reject every window.
                _ => Billing::Unknown,
            },
            3600,
            u64::MAX,
        );
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
        let aligned = align_t(
            vec![report(7, 110, 120, 10), report(7, 120, 130, 9)],
            |_| billed(Some(115)),
            3600,
            u64::MAX,
        );
        assert!(aligned.drop.is_empty());
        let first = &aligned.send[0].1;
        assert_eq!(
            (first.window_start, first.window_end, first.uptime_seconds),
            (115, 120, 5)
        );
        assert_eq!(aligned.send[1].1.window_start, 120);
        // A gap (a rejected window was never settled): the next window reaches back to it.
        let aligned = align_t(
            vec![report(7, 130, 140, 10)],
            |_| billed(Some(120)),
            3600,
            u64::MAX,
        );
        let r = &aligned.send[0].1;
        assert_eq!(
            (r.window_start, r.window_end, r.uptime_seconds),
            (120, 140, 10)
        );
        // Windows stay contiguous among themselves after a jump.
        let aligned = align_t(
            vec![report(7, 100, 110, 10), report(7, 130, 140, 10)],
            |_| billed(None),
            3600,
            u64::MAX,
        );
        assert_eq!(aligned.send[1].1.window_start, 110);
    }

    #[test]
    fn a_gap_longer_than_the_chain_allows_is_filled_with_zero_uptime_windows() {
        // Billed until 1000; the outbox resumes at 10_000 with a 300 s window; windows may be
        // at most 3600 s long.
        let aligned = align_t(
            vec![report(3, 10_000, 10_300, 300)],
            |_| billed(Some(1_000)),
            3_600,
            u64::MAX,
        );
        let spans: Vec<_> = aligned
            .send
            .iter()
            .map(|(k, r)| (k.len(), r.window_start, r.window_end, r.uptime_seconds))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 1_000, 4_600, 0),
                (0, 4_600, 8_200, 0),
                (1, 8_200, 10_300, 300),
            ]
        );
        assert!(aligned
            .send
            .iter()
            .all(|(_, r)| r.window_end - r.window_start <= 3_600));
    }

    #[test]
    fn a_final_window_longer_than_the_chain_allows_goes_in_pieces_that_add_up() {
        // The executor was down from 1000 and removed the contract at 9100: one open window of
        // 8100 s, 4050 s up, with 8100 bytes in. The chain accepts windows of at most 3600 s.
        let mut long = report(9, 1_000, 9_100, 4_050);
        long.1.public_bytes_in = 8_100;
        let aligned = align_t(vec![long], |_| billed(Some(1_000)), 3600, u64::MAX);
        let sent: Vec<_> = aligned
            .send
            .iter()
            .map(|(k, r)| (k.clone(), r.window_start, r.window_end, r.uptime_seconds))
            .collect();
        assert_eq!(
            sent,
            vec![
                (vec![], 1_000, 4_600, 1_800),
                (vec![], 4_600, 8_200, 1_800),
                (vec![(9, 1_000)], 8_200, 9_100, 450),
            ]
        );
        let bytes: u64 = aligned.send.iter().map(|(_, r)| r.public_bytes_in).sum();
        assert_eq!(bytes, 8_100);
    }

    #[test]
    fn a_final_window_cut_short_by_a_slow_clock_is_stretched_to_the_end() {
        let limits = WindowLimits {
            min_window: 10,
            max_window: 3600,
            max_traffic_per_sec: u64::MAX,
        };
        let ended = |_| Billing::Billed {
            until: Some(1_000),
            ended_at: Some(1_013),
        };
        // The executor's clock is 2 s behind: its final window ends at 1011, not 1013.
        let aligned = align(vec![report(4, 1_000, 1_011, 11)], ended, &limits);
        let r = &aligned.send[0].1;
        assert_eq!(
            (r.window_start, r.window_end, r.uptime_seconds),
            (1_000, 1_013, 11)
        );
        // A regular window on the grid is left alone: the final one may still follow.
        let aligned = align(vec![report(4, 1_000, 1_010, 10)], ended, &limits);
        assert_eq!(aligned.send[0].1.window_end, 1_010);
    }

    #[test]
    fn a_shortened_window_keeps_only_the_traffic_it_could_carry() {
        let (key, mut busy) = report(7, 110, 120, 10);
        (busy.public_bytes_in, busy.public_bytes_out) = (60, 50);
        // Cut to 115..120 by the chain's state: at 10 bytes/s it carries 50 bytes.
        let aligned = align_t(vec![(key, busy)], |_| billed(Some(115)), 3600, 10);
        let r = &aligned.send[0].1;
        assert_eq!((r.public_bytes_in, r.public_bytes_out), (50, 0));
    }
}
