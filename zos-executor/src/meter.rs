//! Metering: per contract, the seconds its workloads were really up, cut into windows aligned to
//! the report interval. Windows are contiguous (each starts where the previous ended), so the
//! chain can check that nothing is billed twice or skipped. Time the executor itself was down
//! (a sampling gap longer than `max_gap`) never counts as uptime.

use crate::{chain::ConsumptionReport, store::MeterState};
use zos_primitives::ContractId;

#[derive(Clone, Copy, Debug)]
pub struct Meter {
    /// Window length and alignment, seconds (<= the chain's maximum window).
    pub interval: u64,
    /// Longest gap between two samples still counted as continuous uptime, seconds.
    pub max_gap: u64,
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
}

impl Meter {
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
            ..Default::default()
        }
    }

    /// Accounts the time since the last sample and the public traffic since then (`traffic`:
    /// the node's cumulative counters, bytes in and out), and closes every window that ended
    /// by `now`. Traffic goes to the window open at the sample.
    pub fn sample(
        &self,
        contract: ContractId,
        mut st: MeterState,
        now: u64,
        up: bool,
        traffic: (u64, u64),
    ) -> (MeterState, Vec<ConsumptionReport>) {
        // A counter below what was seen restarted (a re-created card): all of it is new.
        let since = |now: u64, seen: u64| if now >= seen { now - seen } else { now };
        st.bytes_in = st.bytes_in.saturating_add(since(traffic.0, st.seen_in));
        st.bytes_out = st.bytes_out.saturating_add(since(traffic.1, st.seen_out));
        (st.seen_in, st.seen_out) = traffic;
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
            reports.push(ConsumptionReport {
                contract,
                window_start: st.window_start,
                window_end: end,
                uptime_seconds: st.up_seconds.min(end - st.window_start),
                public_bytes_in: st.bytes_in,
                public_bytes_out: st.bytes_out,
            });
            st = MeterState {
                window_start: end,
                up_seconds: 0,
                bytes_in: 0,
                bytes_out: 0,
                ..st
            };
        }
        st.last_sample = now;
        (st, reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Meter = Meter {
        interval: 60,
        max_gap: 15,
    };

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
            let (next, reports) = M.sample(7, st, now, up, (0, 0));
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
        let (st, r) = M.sample(1, st, 1_205, true, (0, 0));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].window_end, r[0].uptime_seconds), (1_200, 5));
        assert_eq!((st.window_start, st.up_seconds), (1_200, 5));
    }

    #[test]
    fn a_long_executor_outage_yields_zero_uptime_windows_not_charges() {
        let st = M.start(0);
        let (st, r) = M.sample(1, st, 600, true, (0, 0));
        assert_eq!(r.len(), 10);
        assert!(r
            .iter()
            .all(|w| w.uptime_seconds == 0 && w.window_end - w.window_start == 60));
        assert!(r.windows(2).all(|p| p[0].window_end == p[1].window_start));
        assert_eq!(st.window_start, 600);
    }

    #[test]
    fn traffic_is_billed_once_in_the_window_it_was_seen_even_across_counter_restarts() {
        let st = M.start(1_000); // windows end at 1020, 1080, ...
        let (st, r) = M.sample(1, st, 1_010, true, (100, 1_000));
        assert!(r.is_empty());
        let (st, r) = M.sample(1, st, 1_020, true, (150, 1_500));
        assert_eq!((r[0].public_bytes_in, r[0].public_bytes_out), (150, 1_500));
        // The card was re-created: its counters start again from zero.
        let (st, _) = M.sample(1, st, 1_030, true, (40, 60));
        let (_, r) = M.sample(1, st, 1_080, true, (50, 70));
        assert_eq!((r[0].public_bytes_in, r[0].public_bytes_out), (50, 70));
    }
}
