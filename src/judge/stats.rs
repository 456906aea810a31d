//! Statistics for the Kayenta-compatible judge: the two-sample Mann–Whitney (Wilcoxon rank-sum)
//! test with the normal approximation, its confidence interval for a location shift, the
//! Hodges–Lehmann estimate, and outlier fences.
//!
//! The formulas are R's `wilcox.test(x, y, exact = FALSE, correct = TRUE, conf.int = TRUE)`,
//! which Kayenta's `MannWhitney` ports: tie-corrected variance, continuity correction of ½
//! towards zero. statrs' exact Mann–Whitney p-value is not used (it returns `1 − p` when the
//! first sample is not the larger one, see COMPONENTS.md §5); only its normal distribution is.

use statrs::distribution::{ContinuousCDF, Normal};

/// A two-sample Mann–Whitney test of `x` against `y` (normal approximation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// The U statistic of `x` (R's `W`): pairs with `x > y`, ties counting one half.
    pub u: f64,
    /// Standard deviation of U under the null, tie-corrected (0 when every value is tied).
    pub sigma: f64,
    /// p-value for "x is shifted up against y".
    pub p_greater: f64,
    /// p-value for "x is shifted down against y".
    pub p_less: f64,
    /// Two-sided p-value.
    pub p_two_sided: f64,
}

/// The standard normal distribution.
fn normal() -> Normal {
    Normal::standard()
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The rank sum of `x − d` in the combined sample `(x − d) ∪ y` (midranks for ties) and the
/// tie term `Σ (t³ − t)` over groups of tied values. Both inputs sorted ascending.
fn rank_sum(x: &[f64], d: f64, y: &[f64]) -> (f64, f64) {
    let (mut i, mut j, mut pos) = (0, 0, 0.0);
    let (mut sum, mut ties) = (0.0, 0.0);
    while i < x.len() || j < y.len() {
        let v = match (x.get(i), y.get(j)) {
            (Some(a), Some(b)) => (a - d).min(*b),
            (Some(a), None) => a - d,
            (None, Some(b)) => *b,
            (None, None) => unreachable!(),
        };
        let (mut a, mut b) = (0.0, 0.0);
        while i < x.len() && x[i] - d == v {
            i += 1;
            a += 1.0;
        }
        while j < y.len() && y[j] == v {
            j += 1;
            b += 1.0;
        }
        let t: f64 = a + b;
        sum += a * (pos + (t + 1.0) / 2.0);
        ties += t * t * t - t;
        pos += t;
    }
    (sum, ties)
}

/// The tie-corrected standard deviation of U.
fn sigma(n1: f64, n2: f64, ties: f64) -> f64 {
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    var.max(0.0).sqrt()
}

/// The two-sided continuity correction: `cc` towards zero (R's `sign(z) * 0.5`).
fn toward_zero(dz: f64, cc: f64) -> f64 {
    if dz > 0.0 {
        cc
    } else if dz < 0.0 {
        -cc
    } else {
        0.0
    }
}

/// The Mann–Whitney test of `x` against `y` with the normal approximation, the tie correction
/// and, when `correct`, the continuity correction (R: `exact = FALSE`). `None` when a sample is
/// empty. When every value is tied the p-values are 1.
pub fn mann_whitney(x: &[f64], y: &[f64], correct: bool) -> Option<MannWhitney> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let (rs, ties) = rank_sum(&sorted(x), 0.0, &sorted(y));
    let u = rs - n1 * (n1 + 1.0) / 2.0;
    let s = sigma(n1, n2, ties);
    if s <= 0.0 {
        return Some(MannWhitney {
            u,
            sigma: 0.0,
            p_greater: 1.0,
            p_less: 1.0,
            p_two_sided: 1.0,
        });
    }
    let dz = u - n1 * n2 / 2.0;
    let cc = if correct { 0.5 } else { 0.0 };
    let nd = normal();
    let p_greater = nd.sf((dz - cc) / s);
    let p_less = nd.cdf((dz + cc) / s);
    let z = (dz - toward_zero(dz, cc)) / s;
    let p_two_sided = (2.0 * nd.cdf(z).min(nd.sf(z))).min(1.0);
    Some(MannWhitney {
        u,
        sigma: s,
        p_greater,
        p_less,
        p_two_sided,
    })
}

/// All pairwise differences `x_i − y_j`, sorted ascending.
pub fn pairwise_differences(x: &[f64], y: &[f64]) -> Vec<f64> {
    let mut d: Vec<f64> = x
        .iter()
        .flat_map(|a| y.iter().map(move |b| a - b))
        .collect();
    d.sort_by(f64::total_cmp);
    d
}

/// The median of sorted values (the mean of the middle two for an even count).
pub fn median_sorted(v: &[f64]) -> Option<f64> {
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The Hodges–Lehmann estimate of the shift of `x` against `y`: the median of the pairwise
/// differences `x_i − y_j`.
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> Option<f64> {
    median_sorted(&pairwise_differences(x, y))
}

/// A shift's confidence interval with the Hodges–Lehmann estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShiftInterval {
    /// Lower bound of the shift `x − y`.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// Median of the pairwise differences.
    pub hodges_lehmann: f64,
}

/// The two-sided confidence interval at `confidence` for the location shift of `x` against `y`,
/// found as R's `wilcox.test(conf.int = TRUE, exact = FALSE)` does by inverting the test: the
/// shifts `d` whose test of `x − d` against `y` does not reject.
///
/// The test statistic is a step function of `d` that only moves at the pairwise differences,
/// and between two of them the tie correction only sees ties within each sample, so the
/// roots R's `uniroot` converges to are exactly pairwise differences: each bound is the first
/// sorted difference after which the standardised statistic drops to the normal quantile. Like
/// R, a bound that no difference reaches (tiny samples) is the smallest or largest difference.
pub fn shift_interval(
    x: &[f64],
    y: &[f64],
    confidence: f64,
    correct: bool,
) -> Option<ShiftInterval> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let diffs = pairwise_differences(x, y);
    let hodges_lehmann = median_sorted(&diffs)?;
    let within = |v: &[f64]| rank_sum(&sorted(v), 0.0, &[]).1;
    let s = sigma(n1, n2, within(x) + within(y));
    // Just above the k-th distinct difference: U = number of differences above it.
    let mut steps: Vec<(f64, f64)> = Vec::new();
    for (i, &d) in diffs.iter().enumerate() {
        if i + 1 == diffs.len() || diffs[i + 1] != d {
            steps.push((d, (diffs.len() - i - 1) as f64));
        }
    }
    let cc = if correct { 0.5 } else { 0.0 };
    let f = |u: f64, zq: f64| {
        let dz = u - n1 * n2 / 2.0;
        if s > 0.0 {
            (dz - toward_zero(dz, cc)) / s - zq
        } else {
            -zq
        }
    };
    let root = |zq: f64| {
        let k = steps.partition_point(|&(_, u)| f(u, zq) > 0.0);
        steps[k.min(steps.len() - 1)].0
    };
    let zq = normal().inverse_cdf(1.0 - (1.0 - confidence) / 2.0);
    Some(ShiftInterval {
        lower: root(zq),
        upper: root(-zq),
        hodges_lehmann,
    })
}

/// The arithmetic mean (`None` for no values).
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The `p`-th percentile (0–100) of sorted values, estimated like Apache Commons Math's
/// `Percentile` (which Kayenta uses): position `p·(n+1)/100`, linear between neighbours.
pub fn percentile_sorted(v: &[f64], p: f64) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let pos = p * (n as f64 + 1.0) / 100.0;
    if pos < 1.0 {
        return Some(v[0]);
    }
    if pos >= n as f64 {
        return Some(v[n - 1]);
    }
    let i = pos.floor() as usize;
    Some(v[i - 1] + (pos - pos.floor()) * (v[i] - v[i - 1]))
}

/// Removes values outside Tukey's fences `[Q1 − k·IQR, Q3 + k·IQR]`.
pub fn remove_outliers(values: &[f64], k: f64) -> Vec<f64> {
    let s = sorted(values);
    let (Some(q1), Some(q3)) = (percentile_sorted(&s, 25.0), percentile_sorted(&s, 75.0)) else {
        return s;
    };
    let (lo, hi) = (q1 - k * (q3 - q1), q3 + k * (q3 - q1));
    values
        .iter()
        .copied()
        .filter(|v| *v >= lo && *v <= hi)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Midranks of `v` (1-based).
    fn midranks(v: &[f64]) -> Vec<f64> {
        v.iter()
            .map(|a| {
                let below = v.iter().filter(|b| *b < a).count() as f64;
                let equal = v.iter().filter(|b| *b == a).count() as f64;
                below + (equal + 1.0) / 2.0
            })
            .collect()
    }

    /// The exact permutation distribution of 2·U, by enumerating every way to pick `x`'s
    /// positions among the pooled values (conditional on ties, like a permutation test).
    fn exact_distribution(x: &[f64], y: &[f64]) -> BTreeMap<i64, u64> {
        let pooled: Vec<f64> = x.iter().chain(y).copied().collect();
        let ranks = midranks(&pooled);
        let n1 = x.len();
        let offset = (n1 * (n1 + 1)) as f64 / 2.0;
        let mut counts = BTreeMap::new();
        fn walk(
            ranks: &[f64],
            start: usize,
            left: usize,
            sum: f64,
            offset: f64,
            out: &mut BTreeMap<i64, u64>,
        ) {
            if left == 0 {
                *out.entry((2.0 * (sum - offset)).round() as i64)
                    .or_insert(0) += 1;
                return;
            }
            for i in start..=ranks.len() - left {
                walk(ranks, i + 1, left - 1, sum + ranks[i], offset, out);
            }
        }
        walk(&ranks, 0, n1, 0.0, offset, &mut counts);
        counts
    }

    /// Exact (greater, less, two-sided) p-values by brute force.
    fn exact_p(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
        let dist = exact_distribution(x, y);
        let u2 = (2.0 * mann_whitney(x, y, true).unwrap().u).round() as i64;
        let total: u64 = dist.values().sum();
        let ge: u64 = dist.range(u2..).map(|(_, c)| c).sum();
        let le: u64 = dist.range(..=u2).map(|(_, c)| c).sum();
        let (g, l) = (ge as f64 / total as f64, le as f64 / total as f64);
        (g, l, (2.0 * g.min(l)).min(1.0))
    }

    const RX: [f64; 10] = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46];
    const RY: [f64; 5] = [1.15, 0.88, 0.90, 0.74, 1.21];

    #[test]
    fn matches_r_wilcox_test_documented_example() {
        // R: wilcox.test(x, y, alternative = "g") -> W = 35, p-value = 0.1272 (exact).
        let no_cc = mann_whitney(&RX, &RY, false).unwrap();
        assert_eq!(no_cc.u, 35.0);
        let (g, _, _) = exact_p(&RX, &RY);
        assert!(close(g, 0.1272, 5e-5), "exact greater {g}");
        // exact = FALSE, correct = FALSE: greater 0.1103, two-sided 0.2207.
        assert!(close(no_cc.p_greater, 0.1103, 5e-5), "{no_cc:?}");
        assert!(close(no_cc.p_two_sided, 0.2207, 5e-5), "{no_cc:?}");
        // exact = FALSE, correct = TRUE: greater 0.1223, two-sided 0.2446.
        let cc = mann_whitney(&RX, &RY, true).unwrap();
        assert!(close(cc.p_greater, 0.1223, 5e-5), "{cc:?}");
        assert!(close(cc.p_two_sided, 0.2446, 5e-5), "{cc:?}");
        // "less" with correction: Φ((35 − 25 + 0.5)/σ), σ² = 10·5·16/12.
        assert!(close(cc.p_less, 0.9008, 5e-5), "{cc:?}");
    }

    #[test]
    fn matches_r_with_ties_and_continuity_correction() {
        // Published R output, "Wilcoxon rank sum test with continuity correction".
        let x = [1.0, 5.0, 9.0, 24.0, 56.0, 21.0, 3.0, 7.0, 21.0, 4.0];
        let y = [
            12.0, 15.0, 5.0, 9.0, 9.0, 14.0, 56.0, 22.0, 3.0, 7.0, 32.0, 5.0,
        ];
        let t = mann_whitney(&x, &y, true).unwrap();
        assert_eq!(t.u, 51.5);
        assert!(close(t.p_two_sided, 0.5966, 5e-5), "{t:?}");
        let y2 = [1233.0, 4356.0, 987.0, 39999.0, 1111.0, 200000.0];
        let t2 = mann_whitney(&x, &y2, true).unwrap();
        assert_eq!(t2.u, 0.0);
        assert!(close(t2.p_two_sided, 0.001364, 5e-7), "{t2:?}");
    }

    #[test]
    fn statrs_bug_cases_are_right_here() {
        // (x, y, exact greater, exact less, exact two-sided) from COMPONENTS.md §5.
        type Case<'a> = (&'a [f64], &'a [f64], f64, f64, f64);
        let cases: [Case; 4] = [
            (&[5.0, 6.0, 7.0], &[1.0, 2.0, 3.0], 0.05, 1.0, 0.1),
            (&[5.0, 6.0, 7.0], &[1.0, 2.0, 6.5], 0.2, 0.9, 0.4),
            (
                &[20.0, 11.0, 17.0, 12.0],
                &[19.0, 22.0, 16.0, 29.0, 24.0],
                0.968,
                0.0556,
                0.111,
            ),
            (
                &[19.0, 22.0, 16.0, 29.0, 24.0],
                &[20.0, 11.0, 17.0, 12.0],
                0.0556,
                0.968,
                0.111,
            ),
        ];
        for (x, y, g, l, t) in cases {
            let (eg, el, et) = exact_p(x, y);
            assert!(close(eg, g, 5e-4) && close(el, l, 5e-4) && close(et, t, 5e-4));
            // The normal approximation points the same way, within 0.03 of exact here.
            let n = mann_whitney(x, y, true).unwrap();
            assert!(close(n.p_greater, eg, 0.03), "{x:?} {y:?}: {n:?} vs {eg}");
            assert!(close(n.p_less, el, 0.03), "{x:?} {y:?}: {n:?} vs {el}");
        }
        // 7 vs 7, every canary value above every baseline value: exact 1/3432.
        let c: Vec<f64> = (0..7).map(|i| 0.30 + 0.01 * i as f64).collect();
        let b: Vec<f64> = (0..7).map(|i| 0.20 + 0.01 * i as f64).collect();
        let (eg, _, _) = exact_p(&c, &b);
        assert!(close(eg, 1.0 / 3432.0, 1e-12));
        let n = mann_whitney(&c, &b, true).unwrap();
        assert!(n.p_greater < 0.002 && n.p_greater > eg, "{n:?}");
    }

    #[test]
    fn normal_approximation_is_close_to_exact_for_ten_per_arm() {
        // Stated tolerance: 0.005 one-sided, 0.01 two-sided, for n1 = n2 = 10 without ties.
        let mut rng = StdRng::seed_from_u64(7);
        for shift in [0.0, 0.5, 1.0, 1.5] {
            let x: Vec<f64> = (0..10).map(|_| rng.random::<f64>() + shift).collect();
            let y: Vec<f64> = (0..10).map(|_| rng.random::<f64>() * 1.5).collect();
            let (eg, el, et) = exact_p(&x, &y);
            let n = mann_whitney(&x, &y, true).unwrap();
            assert!(close(n.p_greater, eg, 0.005), "{shift}: {n:?} vs {eg}");
            assert!(close(n.p_less, el, 0.005), "{shift}: {n:?} vs {el}");
            assert!(close(n.p_two_sided, et, 0.01), "{shift}: {n:?} vs {et}");
        }
    }

    #[test]
    fn hodges_lehmann_is_the_median_of_pairwise_differences() {
        // Differences of [1, 2, 3] − [0, 5]: 1, −4, 2, −3, 3, −2 → median (−2 + 1)/2.
        assert_eq!(hodges_lehmann(&[1.0, 2.0, 3.0], &[0.0, 5.0]), Some(-0.5));
        assert_eq!(hodges_lehmann(&[10.0], &[1.0, 2.0, 4.0]), Some(8.0));
        assert_eq!(hodges_lehmann(&[], &[1.0]), None);
    }

    /// R's `wdiff` root found by bisection on a continuous shift, as an independent check.
    fn r_root(x: &[f64], y: &[f64], zq: f64) -> f64 {
        let (xs, ys) = (sorted(x), sorted(y));
        let (n1, n2) = (x.len() as f64, y.len() as f64);
        let wdiff = |d: f64| {
            let (rs, ties) = rank_sum(&xs, d, &ys);
            let dz = rs - n1 * (n1 + 1.0) / 2.0 - n1 * n2 / 2.0;
            (dz - toward_zero(dz, 0.5)) / sigma(n1, n2, ties) - zq
        };
        let (mut lo, mut hi) = (xs[0] - ys[ys.len() - 1], xs[xs.len() - 1] - ys[0]);
        if wdiff(lo) <= 0.0 {
            return lo;
        }
        if wdiff(hi) >= 0.0 {
            return hi;
        }
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if wdiff(mid) > 0.0 { lo = mid } else { hi = mid }
        }
        (lo + hi) / 2.0
    }

    #[test]
    fn interval_matches_r_inversion_by_bisection() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![
            (RX.to_vec(), RY.to_vec()),
            // Ties, within and across samples.
            (
                vec![1.0, 5.0, 9.0, 24.0, 56.0, 21.0, 3.0, 7.0, 21.0, 4.0],
                vec![
                    12.0, 15.0, 5.0, 9.0, 9.0, 14.0, 56.0, 22.0, 3.0, 7.0, 32.0, 5.0,
                ],
            ),
        ];
        for _ in 0..5 {
            let x = (0..15).map(|_| rng.random::<f64>() + 0.3).collect();
            let y = (0..12).map(|_| rng.random::<f64>()).collect();
            samples.push((x, y));
        }
        for conf in [0.95, 0.98] {
            let z = normal().inverse_cdf(1.0 - (1.0 - conf) / 2.0);
            for (x, y) in &samples {
                let ci = shift_interval(x, y, conf, true).unwrap();
                assert!(close(ci.lower, r_root(x, y, z), 1e-9), "{ci:?}");
                assert!(close(ci.upper, r_root(x, y, -z), 1e-9), "{ci:?}");
                assert!(ci.lower <= ci.hodges_lehmann && ci.hodges_lehmann <= ci.upper);
            }
        }
    }

    #[test]
    fn interval_and_test_agree_and_a_strong_shift_excludes_zero() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut rejections = 0;
        for i in 0..200 {
            let shift = (i % 4) as f64 * 0.2;
            let x: Vec<f64> = (0..12).map(|_| rng.random::<f64>() + shift).collect();
            let y: Vec<f64> = (0..12).map(|_| rng.random::<f64>()).collect();
            let p = mann_whitney(&x, &y, true).unwrap().p_two_sided;
            let ci = shift_interval(&x, &y, 0.98, true).unwrap();
            let excludes_zero = ci.lower > 0.0 || ci.upper < 0.0;
            assert_eq!(p < 0.02, excludes_zero, "p {p}, {ci:?}");
            rejections += usize::from(excludes_zero);
        }
        assert!(rejections > 50, "{rejections}");
        let x: Vec<f64> = (0..20).map(|i| 10.0 + i as f64 * 0.1).collect();
        let y: Vec<f64> = (0..20).map(|i| 1.0 + i as f64 * 0.1).collect();
        let ci = shift_interval(&x, &y, 0.98, true).unwrap();
        assert!(ci.lower > 8.0 && ci.upper < 10.0, "{ci:?}");
        assert_eq!(ci.hodges_lehmann, 9.0);
    }

    #[test]
    fn all_tied_values_do_not_reject() {
        let t = mann_whitney(&[1.0, 1.0], &[1.0, 1.0, 1.0], true).unwrap();
        assert_eq!((t.sigma, t.p_two_sided), (0.0, 1.0));
        let ci = shift_interval(&[2.0, 2.0], &[1.0, 1.0], 0.98, true).unwrap();
        assert_eq!((ci.lower, ci.upper, ci.hodges_lehmann), (1.0, 1.0, 1.0));
    }

    #[test]
    fn percentiles_and_outliers() {
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        // Commons Math: position p(n+1)/100 → 25th at 2.5, 75th at 7.5.
        assert_eq!(percentile_sorted(&v, 25.0), Some(2.5));
        assert_eq!(percentile_sorted(&v, 75.0), Some(7.5));
        assert_eq!(percentile_sorted(&v, 1.0), Some(1.0));
        let mut with_outlier = v.clone();
        with_outlier.push(100.0);
        // Q1 2.75, Q3 8.25, IQR 5.5: fences at −13.75 and 24.75 with k = 3.
        assert_eq!(remove_outliers(&with_outlier, 3.0), v);
        assert_eq!(remove_outliers(&v, 3.0), v);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
    }
}
