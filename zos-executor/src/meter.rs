//! Metering: per contract, the seconds its workloads were really up, cut into windows aligned to
//! the report interval. Windows are contiguous (each starts where the previous ended), so the
//! chain can check that nothing is billed twice or skipped. Time the executor itself was down
//! (a sampling gap longer than `max_gap`) never counts as uptime.

use crate::{chain::ConsumptionReport, drivers::CardReading, store::MeterState};
use zos_primitives::ContractId;

#[derive(Clone, Copy, Debug)]
pub struct Meter {
    /// Window length and alignment, seconds (<= the chain's maximum window).
    pub interval: u64,
    /// Longest gap between two samples still counted as continuous uptime, seconds.
    pub max_gap: u64,
    /// Most public traffic (in plus out) the chain accepts per second of a window; more moves
    /// on to the next windows (traffic counted during an executor outage lands in one sample).
    pub max_traffic_per_sec: u64,
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
}

impl Meter {
    /// Traffic (in, out) since the last readings, and the new baselines in `st`. A card whose
    /// counters are below its baseline was re-made (they start from zero): all of it is new.
    /// A card that could not be read keeps its baseline and adds nothing this time; a card
    /// that is gone loses it (a card made again later counts from zero).
    fn new_traffic(st: &mut MeterState, traffic: &[(Vec<u8>, CardReading)]) -> (u64, u64) {
        let since = |now: u64, seen: u64| if now >= seen { now - seen } else { now };
        let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
        let mut seen = Vec::with_capacity(traffic.len());
        for (card, reading) in traffic {
            let before = st
                .seen
                .iter()
                .find(|(c, _, _)| c == card)
                .map(|(_, i, o)| (*i, *o));
            match *reading {
                CardReading::Counted {
                    bytes_in: now_in,
                    bytes_out: now_out,
                } => {
                    if st.baselines_known {
                        let (was_in, was_out) = before.unwrap_or((0, 0));
                        bytes_in = bytes_in.saturating_add(since(now_in, was_in));
                        bytes_out = bytes_out.saturating_add(since(now_out, was_out));
                    }
                    seen.push((card.clone(), now_in, now_out));
                }
                CardReading::Unreadable => {
                    if let Some((was_in, was_out)) = before {
                        seen.push((card.clone(), was_in, was_out));
                    }
                }
                CardReading::Absent => {}
            }
        }
        st.seen = seen;
        st.baselines_known = true;
        (bytes_in, bytes_out)
    }

    /// End of the window that starts at `start`: the next multiple of the interval.
    pub fn window_end(&self, start: u64) -> u64 {
        let interval = self.interval.max(1);
        (start / interval)
            .saturating_add(1)
            .saturating_mul(interval)
    }

    /// A meter for a contract first seen up at `now`.
    pub fn start(&self, now: u64) -> MeterState {
        MeterState {
            window_start: now,
            last_sample: now,
            // The contract's cards were made for it: everything they counted is its traffic.
            baselines_known: true,
            ..Default::default()
        }
    }

    /// Accounts the time since the last sample and the public traffic since then (`traffic`:
    /// each public card's cumulative counters as read now), and closes every window that
    /// ended by `now`. New traffic goes to the oldest window still open before this sample;
    /// what exceeds the chain's cap for a window moves on to the next ones.
    pub fn sample(
        &self,
        contract: ContractId,
        mut st: MeterState,
        now: u64,
        up: bool,
        traffic: &[(Vec<u8>, CardReading)],
    ) -> (MeterState, Vec<ConsumptionReport>) {
        let (bytes_in, bytes_out) = Self::new_traffic(&mut st, traffic);
        st.bytes_in = st.bytes_in.saturating_add(bytes_in);
        st.bytes_out = st.bytes_out.saturating_add(bytes_out);
        let counted = if up && now.saturating_sub(st.last_sample) <= self.max_gap {
            (st.last_sample, now)
        } else {
            (now, now)
        };
        let mut reports = Vec::new();
        loop {
            let end = self.window_end(st.window_start);
            st.up_seconds = st
                .up_seconds
                .saturating_add(overlap(counted, (st.window_start, end)));
            if now < end {
                break;
            }
            let length = end - st.window_start;
            let fits = length.saturating_mul(self.max_traffic_per_sec);
            let bytes_in = st.bytes_in.min(fits);
            let bytes_out = st.bytes_out.min(fits - bytes_in);
            reports.push(ConsumptionReport {
                contract,
                window_start: st.window_start,
                window_end: end,
                uptime_seconds: st.up_seconds.min(length),
                public_bytes_in: bytes_in,
                public_bytes_out: bytes_out,
            });
            st = MeterState {
                window_start: end,
                up_seconds: 0,
                bytes_in: st.bytes_in - bytes_in,
                bytes_out: st.bytes_out - bytes_out,
                ..st
            };
        }
        st.last_sample = now;
        (st, reports)
    }
}

/// The report interval to meter with: `wanted` rounded up to a multiple of the chain's minimum
/// window (a window shorter than that must end on its grid), and no longer than the longest
/// window the chain accepts.
pub fn aligned_interval(wanted: u64, min_window: u64, max_window: u64) -> u64 {
    let grid = min_window.max(1);
    let longest = (max_window / grid).max(1).saturating_mul(grid);
    wanted
        .max(1)
        .div_ceil(grid)
        .saturating_mul(grid)
        .min(longest)
}

/// The open window of a contract that is being removed, cut at `now`: the contract's final
/// window (`None` when nothing of it elapsed). The chain accepts a final window shorter than the
/// interval and ending anywhere up to the contract's end time.
pub fn final_window(contract: ContractId, st: &MeterState, now: u64) -> Option<ConsumptionReport> {
    let length = now.checked_sub(st.window_start).filter(|l| *l > 0)?;
    Some(ConsumptionReport {
        contract,
        window_start: st.window_start,
        window_end: now,
        uptime_seconds: st.up_seconds.min(length),
        public_bytes_in: st.bytes_in,
        public_bytes_out: st.bytes_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Meter = Meter {
        interval: 60,
        max_gap: 15,
        max_traffic_per_sec: u64::MAX,
    };

    #[test]
    fn the_interval_is_a_multiple_of_the_chains_minimum_window() {
        assert_eq!(aligned_interval(10, 10, 3600), 10);
        assert_eq!(aligned_interval(15, 10, 3600), 20);
        assert_eq!(aligned_interval(1, 10, 3600), 10);
        assert_eq!(aligned_interval(7, 1, 3600), 7);
        assert_eq!(aligned_interval(5000, 10, 3600), 3600);
        assert_eq!(aligned_interval(5000, 7, 3600), 3598);
    }

    #[test]
    fn windows_are_aligned_contiguous_and_count_only_uptime() {
        let mut st = M.start(1_000); // first window [1000, 1020)
        let mut all = Vec::new();
        for (now, up) in [
            (1_010, true),
            (1_020, true),
            (1_030, false),
            (1_040, true),
            (1_080, true),
        ] {
            let (next, reports) = M.sample(7, st, now, up, &[]);
            st = next;
            all.extend(reports);
        }
        // [1000,1020): up 20; [1020,1080): 1020-1030 down, 1030-1040 up, 1040-1080 gap of 40 > max_gap.
        assert_eq!(all.len(), 2);
        assert_eq!(
            (
                all[0].window_start,
                all[0].window_end,
                all[0].uptime_seconds
            ),
            (1_000, 1_020, 20)
        );
        assert_eq!(
            (
                all[1].window_start,
                all[1].window_end,
                all[1].uptime_seconds
            ),
            (1_020, 1_080, 10)
        );
        assert_eq!(st.window_start, 1_080);
    }

    #[test]
    fn uptime_straddling_a_window_end_is_split() {
        let st = M.start(1_195);
        let (st, r) = M.sample(1, st, 1_205, true, &[]);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].window_end, r[0].uptime_seconds), (1_200, 5));
        assert_eq!((st.window_start, st.up_seconds), (1_200, 5));
    }

    #[test]
    fn a_long_executor_outage_yields_zero_uptime_windows_not_charges() {
        let st = M.start(0);
        let (st, r) = M.sample(1, st, 600, true, &[]);
        assert_eq!(r.len(), 10);
        assert!(r
            .iter()
            .all(|w| w.uptime_seconds == 0 && w.window_end - w.window_start == 60));
        assert!(r.windows(2).all(|p| p[0].window_end == p[1].window_start));
        assert_eq!(st.window_start, 600);
    }

    fn counted(card: &str, bytes_in: u64, bytes_out: u64) -> Vec<(Vec<u8>, CardReading)> {
        vec![(
            card.as_bytes().to_vec(),
            CardReading::Counted {
                bytes_in,
                bytes_out,
            },
        )]
    }

    fn billed(r: &[ConsumptionReport]) -> (u64, u64) {
        (r[0].public_bytes_in, r[0].public_bytes_out)
    }

    #[test]
    fn traffic_is_billed_once_across_restarted_unreadable_and_vanished_cards() {
        let st = M.start(1_000); // windows end at 1020, 1080, 1140, ...
        let (st, r) = M.sample(1, st, 1_010, true, &counted("a", 100, 1_000));
        assert!(r.is_empty());
        let (st, r) = M.sample(1, st, 1_020, true, &counted("a", 150, 1_500));
        assert_eq!(billed(&r), (150, 1_500));
        // Unreadable for a while (an nft hiccup, an executor restart): nothing counted twice.
        let unreadable = vec![(b"a".to_vec(), CardReading::Unreadable)];
        let (st, _) = M.sample(1, st, 1_030, true, &unreadable);
        let (st, _) = M.sample(1, st, 1_040, true, &counted("a", 170, 1_600));
        // The card was re-made: its counters start again from zero.
        let (st, r) = M.sample(1, st, 1_080, true, &counted("a", 40, 60));
        assert_eq!(billed(&r), (20 + 40, 100 + 60));
        // Gone, then made again: its new counters are all new traffic.
        let (st, _) = M.sample(1, st, 1_090, true, &[(b"a".to_vec(), CardReading::Absent)]);
        let (st, r) = M.sample(1, st, 1_140, true, &counted("a", 500, 5));
        assert_eq!(billed(&r), (500, 5));
        // Two cards: one re-made does not bill the other's history again.
        let mut two = counted("a", 600, 10);
        two.extend(counted("b", 1_000, 1_000));
        let (st, _) = M.sample(1, st, 1_150, true, &two);
        let mut two = counted("a", 5, 0);
        two.extend(counted("b", 1_010, 1_000));
        let (_, r) = M.sample(1, st, 1_200, true, &two);
        assert_eq!(billed(&r), (100 + 1_000 + 5 + 10, 5 + 1_000));
    }

    #[test]
    fn a_meter_from_before_traffic_metering_bills_only_traffic_after_it() {
        let legacy = MeterState {
            window_start: 1_000,
            last_sample: 1_000,
            ..Default::default()
        };
        let (st, _) = M.sample(1, legacy, 1_010, true, &counted("a", 9_000, 9_000));
        let (_, r) = M.sample(1, st, 1_020, true, &counted("a", 9_100, 9_050));
        assert_eq!(billed(&r), (100, 50));
    }

    #[test]
    fn traffic_above_what_a_window_carries_moves_to_the_next_windows() {
        let capped = Meter {
            max_traffic_per_sec: 10,
            ..M
        };
        let st = capped.start(1_000); // [1000,1020) carries 200 bytes, then 600 per window
                                      // An outage: 900 bytes in and 100 out seen at once, three windows closing.
        let (st, r) = capped.sample(1, st, 1_150, true, &counted("a", 900, 100));
        let carried: Vec<(u64, u64)> = r
            .iter()
            .map(|w| (w.public_bytes_in, w.public_bytes_out))
            .collect();
        assert_eq!(carried, vec![(200, 0), (600, 0), (100, 100)]);
        assert_eq!((st.bytes_in, st.bytes_out), (0, 0));
        assert!(r.iter().all(
            |w| w.public_bytes_in + w.public_bytes_out <= 10 * (w.window_end - w.window_start)
        ));
    }
}
