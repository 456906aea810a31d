//! The quantile-margin test for histograms (`quantile: 0.99`): is the canary's p-quantile more
//! than `1 + margin` times the baseline's?
//!
//! For a bucket edge `x`, the count `k` of observations `≤ x` among `n` is binomial with
//! `q = F(x)`. "The p-quantile is above `x`" is `F(x) < p`; we get anytime-valid evidence for it
//! by rejecting `H0: F(x) ≥ p` with a mixture over alternatives `q < p` (a uniform prior on
//! `[0, p]`, closed form with the regularised incomplete beta function):
//! `M = B(k+1, n−k+1) · I_p(k+1, n−k+1) / (p^(k+1) (1−p)^(n−k))`.
//! Under any `q ≥ p` each factor has mean ≤ 1, so `M` is an e-process (Howard & Ramdas,
//! "Sequential estimation of quantiles"). The evidence is monotone in the edge, so the bounds
//! need no union bound over edges:
//! - lower bound of a quantile: the largest edge where "`F(x) ≥ p`" is rejected;
//! - upper bound: the smallest edge where "`F(x) ≤ p`" is rejected (the mirror test).
//!
//! A rollback needs `L_canary > (1 + margin) · U_baseline`; "within the margin" needs
//! `U_canary < (1 + margin) · L_baseline`. Each of the four bounds is at level α/4.

use super::histogram;
use serde::{Deserialize, Serialize};
use statrs::function::beta::{beta_reg, ln_beta};

/// Cumulative counts of one arm over the analysis, per bucket edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ArmCounts {
    /// Finite bucket edges, ascending.
    pub edges: Vec<f64>,
    /// Observations at or below each edge, summed over intervals.
    pub below: Vec<f64>,
    /// All observations.
    pub total: f64,
}

impl ArmCounts {
    /// Adds one interval's cumulative buckets. Edges are fixed by the first interval; later
    /// intervals are read at those edges.
    pub fn add(&mut self, buckets: &[(f64, f64)]) {
        if self.edges.is_empty() {
            self.edges = buckets
                .iter()
                .map(|b| b.0)
                .filter(|e| e.is_finite())
                .collect();
            self.below = vec![0.0; self.edges.len()];
        }
        let n = histogram::total(buckets);
        for (edge, below) in self.edges.iter().zip(self.below.iter_mut()) {
            *below += histogram::count_le(buckets, *edge).min(n).round();
        }
        self.total += n.round();
    }

    /// The point estimate of the `p`-quantile.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let mut buckets: Vec<(f64, f64)> = self
            .edges
            .iter()
            .copied()
            .zip(self.below.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, self.total));
        histogram::quantile(&buckets, p)
    }

    /// Lower confidence bound of the `p`-quantile at level `alpha` (None: not above the first
    /// edge).
    pub fn lower(&self, p: f64, alpha: f64) -> Option<f64> {
        let level = (1.0 / alpha).ln();
        // Rejections happen for small edges; find the largest rejected edge.
        self.edges
            .iter()
            .zip(&self.below)
            .rev()
            .find(|(_, k)| log_e_below(**k, self.total, p) >= level)
            .map(|(e, _)| *e)
    }

    /// Upper confidence bound of the `p`-quantile at level `alpha` (None: unbounded).
    pub fn upper(&self, p: f64, alpha: f64) -> Option<f64> {
        let level = (1.0 / alpha).ln();
        self.edges
            .iter()
            .zip(&self.below)
            .find(|(_, k)| log_e_below(self.total - **k, self.total, 1.0 - p) >= level)
            .map(|(e, _)| *e)
    }
}

/// Log e-value against `H0: q ≥ p` from `k` successes in `n` (uniform mixture on `q < p`).
pub fn log_e_below(k: f64, n: f64, p: f64) -> f64 {
    if n <= 0.0 || !(p > 0.0 && p < 1.0) {
        return 0.0;
    }
    let k = k.clamp(0.0, n);
    let (a, b) = (k + 1.0, n - k + 1.0);
    let tail = beta_reg(a, b, p);
    if tail <= 0.0 {
        return f64::NEG_INFINITY;
    }
    ln_beta(a, b) + tail.ln() - (k + 1.0) * p.ln() - (n - k) * (1.0 - p).ln()
}

/// The quantile-margin test's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct QuantileTest {
    /// The quantile compared.
    pub p: f64,
    /// `1 + margin`.
    pub ratio: f64,
    /// The canary's counts.
    pub canary: ArmCounts,
    /// The baseline's counts.
    pub baseline: ArmCounts,
    /// Whether a rollback condition has ever held (decisions are final).
    pub rejected: bool,
}

/// What the quantile test says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantileSummary {
    /// Point estimates (canary, baseline).
    pub quantiles: (Option<f64>, Option<f64>),
    /// Canary/baseline ratio of the point estimates.
    pub estimate: Option<f64>,
    /// Lower bound of the ratio: `L_canary / U_baseline`.
    pub lower: Option<f64>,
    /// Upper bound of the ratio: `U_canary / L_baseline`.
    pub upper: Option<f64>,
    /// A regression beyond the margin.
    pub rejects: bool,
    /// Confidently within the margin.
    pub within: bool,
}

impl QuantileTest {
    /// A fresh test of the `p`-quantile with `max_increase` as a fraction.
    pub fn new(p: f64, max_increase: f64) -> Self {
        QuantileTest {
            p,
            ratio: 1.0 + max_increase,
            ..Default::default()
        }
    }

    /// Adds one interval.
    pub fn update(&mut self, canary: &[(f64, f64)], baseline: &[(f64, f64)], alpha: f64) {
        self.canary.add(canary);
        self.baseline.add(baseline);
        let s = self.summary(alpha);
        self.rejected |= s.rejects;
    }

    /// Bounds and decisions at level `alpha` (split over the four bounds).
    pub fn summary(&self, alpha: f64) -> QuantileSummary {
        let a = alpha / 4.0;
        let (p, r) = (self.p, self.ratio);
        let lc = self.canary.lower(p, a);
        let uc = self.canary.upper(p, a);
        let lb = self.baseline.lower(p, a);
        let ub = self.baseline.upper(p, a);
        let qc = self.canary.quantile(p);
        let qb = self.baseline.quantile(p);
        let rejects = matches!((lc, ub), (Some(l), Some(u)) if l > r * u);
        let within = matches!((uc, lb), (Some(u), Some(l)) if u < r * l);
        QuantileSummary {
            quantiles: (qc, qb),
            estimate: qc.zip(qb).filter(|(_, b)| *b > 0.0).map(|(c, b)| c / b),
            lower: lc.zip(ub).map(|(l, u)| l / u),
            upper: uc.zip(lb).map(|(u, l)| u / l),
            rejects: rejects || self.rejected,
            within,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lognormal_buckets(n: f64, median: f64) -> Vec<(f64, f64)> {
        use statrs::distribution::{ContinuousCDF, Normal};
        let norm = Normal::standard();
        let mut out = Vec::new();
        let mut e = 0.005;
        while e < 20.0 {
            let z = (f64::ln(e) - median.ln()) / 0.5;
            out.push((e, (n * norm.cdf(z)).round()));
            e *= 1.05;
        }
        out.push((f64::INFINITY, n));
        out
    }

    #[test]
    fn e_value_is_small_under_the_null_and_large_against_it() {
        // 990 of 1000 at or below x: F(x) = 0.99 is the null's boundary for p = 0.99.
        assert!(log_e_below(990.0, 1000.0, 0.99) < 1.0);
        // 900 of 1000 below x: clearly F(x) < 0.99.
        assert!(log_e_below(900.0, 1000.0, 0.99) > 10.0);
    }

    #[test]
    fn bounds_bracket_the_true_quantile() {
        let mut arm = ArmCounts::default();
        for _ in 0..5 {
            arm.add(&lognormal_buckets(2000.0, 0.1));
        }
        let truth = 0.1 * (2.326f64 * 0.5).exp();
        let (lo, hi) = (
            arm.lower(0.99, 0.01).unwrap(),
            arm.upper(0.99, 0.01).unwrap(),
        );
        assert!(lo < truth && truth < hi, "{lo} < {truth} < {hi}");
        assert!(hi / lo < 1.5, "{lo}..{hi}");
    }

    #[test]
    fn doubling_the_p99_is_a_regression_and_equal_arms_are_within() {
        let mut bad = QuantileTest::new(0.99, 0.5);
        let mut good = QuantileTest::new(0.99, 0.5);
        for _ in 0..5 {
            bad.update(
                &lognormal_buckets(3000.0, 0.2),
                &lognormal_buckets(3000.0, 0.1),
                0.05,
            );
            good.update(
                &lognormal_buckets(3000.0, 0.1),
                &lognormal_buckets(3000.0, 0.1),
                0.05,
            );
        }
        let s = bad.summary(0.05);
        assert!(s.rejects, "{s:?}");
        assert!((s.estimate.unwrap() - 2.0).abs() < 0.15);
        let s = good.summary(0.05);
        assert!(!s.rejects && s.within, "{s:?}");
    }
}
