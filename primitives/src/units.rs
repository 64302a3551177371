//! Compute units (CU) and storage units (SU): the quantities billing prices per hour.
//!
//! With memory and disks measured in GiB (2^30 bytes):
//!
//! ```text
//! CU = min(max(mru/4, cru/2), max(mru/8, cru), max(mru/2, cru/4))
//! SU = hru/1200 + sru/200
//! ```
//!
//! Both are returned in milli-units (`1 CU == 1_000`) as `u128`, computed in integer arithmetic
//! only.
//!
//! Rounding: each result is the exact value rounded down to a whole milli-unit, never more.
//! For CU every candidate term is rounded down once and the min/max of rounded terms equals the
//! rounded min/max (rounding down is monotone). SU is computed as one fraction,
//! `(hru + 6 * sru) * 1000 / (1200 * GiB)`, so the two terms are not rounded separately. A
//! workload smaller than one milli-unit therefore counts as zero; in favour of the payer.
//!
//! Overflow: inputs are `u64`, so every intermediate product is below 2^77 and fits `u128`; the
//! functions are total (no panics, no saturation needed).

use crate::{Resources, GIB};

/// Milli-units per unit.
pub const MILLI: u128 = 1_000;

/// Seconds per hour: prices are per unit-hour.
pub const SECONDS_PER_HOUR: u128 = 3_600;

/// `bytes / (divisor GiB)` in milli-units, rounded down.
const fn gib_milli(bytes: u64, divisor: u128) -> u128 {
    // bytes < 2^64, MILLI < 2^10: the product is below 2^74.
    (bytes as u128 * MILLI) / (divisor * GIB as u128)
}

/// Compute units of `r`, in milli-CU, rounded down.
pub fn cu_milli(r: &Resources) -> u128 {
    let cru = u128::from(r.cru);
    // cru < 2^64: `cru * 1000` is below 2^74.
    let cru_half = cru * MILLI / 2;
    let cru_whole = cru * MILLI;
    let cru_quarter = cru * MILLI / 4;
    let mru_quarter = gib_milli(r.mru, 4);
    let mru_eighth = gib_milli(r.mru, 8);
    let mru_half = gib_milli(r.mru, 2);
    mru_quarter
        .max(cru_half)
        .min(mru_eighth.max(cru_whole))
        .min(mru_half.max(cru_quarter))
}

/// Storage units of `r`, in milli-SU, rounded down.
pub fn su_milli(r: &Resources) -> u128 {
    // hru + 6 * sru < 7 * 2^64 < 2^67; times 1000 stays below 2^77.
    let weighted = u128::from(r.hru) + 6 * u128::from(r.sru);
    weighted * MILLI / (1_200 * GIB as u128)
}

/// Price of `milli_units` held for `seconds`, at `price_per_unit_hour`: rounded down, saturating
/// at `u128::MAX` if the exact value does not fit.
pub fn price_for(milli_units: u128, seconds: u64, price_per_unit_hour: u128) -> u128 {
    let unit_seconds = milli_units.saturating_mul(u128::from(seconds));
    sp_runtime::helpers_128bit::multiply_by_rational_with_rounding(
        unit_seconds,
        price_per_unit_hour,
        MILLI * SECONDS_PER_HOUR,
        sp_runtime::Rounding::Down,
    )
    .unwrap_or(u128::MAX)
}

/// Price of `bytes` of traffic at `price_per_gib`: rounded down, saturating at `u128::MAX`.
pub fn traffic_price(bytes: u128, price_per_gib: u128) -> u128 {
    sp_runtime::helpers_128bit::multiply_by_rational_with_rounding(
        bytes,
        price_per_gib,
        u128::from(GIB),
        sp_runtime::Rounding::Down,
    )
    .unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cu(cru: u64, mru_gib: u64) -> u128 {
        cu_milli(&Resources::new(cru, mru_gib * GIB, 0, 0))
    }

    #[test]
    fn cu_matches_the_formula_on_whole_values() {
        // min(max(m/4, c/2), max(m/8, c), max(m/2, c/4))
        assert_eq!(cu(0, 0), 0);
        assert_eq!(cu(1, 4), 1_000); // min(1, 1, 2)
        assert_eq!(cu(2, 4), 1_000); // min(1, 2, 2)
        assert_eq!(cu(4, 8), 2_000); // min(2, 4, 4)
        assert_eq!(cu(1, 16), 2_000); // min(4, 2, 8)
    }

    #[test]
    fn cu_takes_the_smallest_candidate() {
        // cru 1, 16 GiB: max(4, .5) = 4, max(2, 1) = 2, max(8, .25) = 8 -> 2.
        assert_eq!(cu_milli(&Resources::new(1, 16 * GIB, 0, 0)), 2_000);
        // cru 8, 1 GiB: max(.25, 4) = 4, max(.125, 8) = 8, max(.5, 2) = 2 -> 2.
        assert_eq!(cu_milli(&Resources::new(8, GIB, 0, 0)), 2_000);
        // CPU only: min(c/2, c, c/4) = c/4.
        assert_eq!(cu_milli(&Resources::new(3, 0, 0, 0)), 750);
        // Memory only: min(m/4, m/8, m/2) = m/8.
        assert_eq!(cu_milli(&Resources::new(0, 3 * GIB, 0, 0)), 375);
    }

    #[test]
    fn units_round_down_to_a_milli_unit() {
        // 1 byte of memory is far below a milli-CU.
        assert_eq!(cu_milli(&Resources::new(0, 1, 0, 0)), 0);
        // 1 GiB - 1 byte, alone: m/8 = 0.1249.. -> 124.
        assert_eq!(cu_milli(&Resources::new(0, GIB - 1, 0, 0)), 124);
        // 1 CPU alone: 1/4 -> 250 exactly.
        assert_eq!(cu_milli(&Resources::new(1, 0, 0, 0)), 250);
        // SSD: 1 GiB / 200 = 0.005 -> 5; HDD: 1 GiB / 1200 = 0.000833 -> 0.
        assert_eq!(su_milli(&Resources::new(0, 0, GIB, 0)), 5);
        assert_eq!(su_milli(&Resources::new(0, 0, 0, GIB)), 0);
        // The terms are not rounded separately: 1 GiB HDD + 1 GiB SSD = 0.005833 -> 5.
        assert_eq!(su_milli(&Resources::new(0, 0, GIB, GIB)), 5);
        // 600 GiB HDD + 100 GiB SSD = 0.5 + 0.5 = 1 SU exactly.
        assert_eq!(su_milli(&Resources::new(0, 0, 100 * GIB, 600 * GIB)), 1_000);
        assert_eq!(
            su_milli(&Resources::new(0, 0, 200 * GIB, 1_200 * GIB)),
            2_000
        );
    }

    #[test]
    fn units_at_the_largest_capacities_do_not_overflow() {
        let max = Resources::new(u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        let m = u128::from(u64::MAX);
        let g = u128::from(GIB);
        // CPU terms dominate memory ones (in GiB, u64::MAX bytes is only 2^34).
        assert_eq!(
            cu_milli(&max),
            (m * 1000 / 2).min(m * 1000).min(m * 1000 / 4)
        );
        assert_eq!(su_milli(&max), 7 * m * 1000 / (1200 * g));
        let mem = Resources::new(0, u64::MAX, 0, 0);
        assert_eq!(cu_milli(&mem), m * 1000 / (8 * g));
    }

    #[test]
    fn prices_round_down_and_saturate() {
        // 1 CU for one hour at 3600 per CU-hour.
        assert_eq!(price_for(1_000, 3_600, 3_600), 3_600);
        // One second of 1 CU at 3600 per hour = 1.
        assert_eq!(price_for(1_000, 1, 3_600), 1);
        // One second of 0.999 CU = 0.999 -> 0.
        assert_eq!(price_for(999, 1, 3_600), 0);
        assert_eq!(price_for(0, u64::MAX, u128::MAX), 0);
        assert_eq!(price_for(u128::MAX, 0, u128::MAX), 0);
        assert_eq!(price_for(u128::MAX, u64::MAX, u128::MAX), u128::MAX);
        // Large but representable: no intermediate overflow.
        assert_eq!(price_for(MILLI * SECONDS_PER_HOUR, 1, u128::MAX), u128::MAX);
        assert_eq!(traffic_price(u128::from(GIB), 7), 7);
        assert_eq!(traffic_price(u128::from(GIB) - 1, 7), 6);
        assert_eq!(traffic_price(u128::MAX, u128::MAX), u128::MAX);
        assert_eq!(traffic_price(2 * u128::from(u64::MAX), 0), 0);
    }
}
