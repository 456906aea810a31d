//! The count test: is the canary's rate of bad events more than `θ0` times the baseline's?
//!
//! Per interval, with bad counts `E_c`, `E_b` and canary traffic share `ρ`, conditionally on
//! `E = E_c + E_b` the canary's count is `Binomial(E, π(θ))`, `π(θ) = ρθ / (ρθ + 1 − ρ)`, where
//! `θ` is the canary/baseline rate ratio. A load change shared by both arms cancels exactly.
//!
//! **Counts as Prometheus returns them.** Real bad events come in clumps (a retry storm, a bad
//! batch), and `increase()` extrapolates to the window's edges (a count `k` seen over half the
//! window is reported as `2k`). Both make a window's count vary more than its mean: a dispersion
//! `φ = variance / mean > 1`. The test is a quasi-likelihood: each interval's log-likelihood is
//! divided by `φ_t ≥ 1`, estimated ([`Dispersion`]) from the baseline's interval-to-interval
//! variation, both arms' instance-to-instance variation (when the query keeps `instance`) and a
//! conservative prior. For independent events any `φ ≥ 1` keeps the e-process valid (Jensen);
//! for clumps it is valid when no clump is larger than `φ` and approximately when `φ` is the
//! variance/mean ratio. On top, what one interval can add to the rollback evidence is capped
//! at [`CAP_BASE`] + [`CAP_PER_EVENT`] nats per bad event (of both arms, after dividing by `φ`):
//! a burst is few events, a regression many, so a single burst cannot roll a healthy canary
//! back while a clear regression is still caught in one interval. The cap depends on the
//! interval's total only, so it keeps validity (`E[min(X, c)] ≤ E[X]`).
//!
//! We keep the log-likelihood of every `θ` on a log-spaced grid *centred on θ0* (θ0 is a grid
//! point). From it:
//! - the rollback e-process for `H0: θ ≤ θ0` is the uniform mixture over the grid points
//!   `θ0·[1.30, 9.5]` of the likelihood ratio against `θ0` (JUDGE.md; Lindon & Malek 2022);
//!   mixing only over alternatives above `θ0` keeps it valid for the whole composite null; it is
//!   kept twice: uncapped (for the confidence sequence) and capped (the decision);
//! - the mirror e-process for `H0: θ ≥ θ0`: evidence that the canary is *within* the margin;
//! - a confidence sequence at level `α` from the same (uncapped) tests at every grid point: the
//!   lower bound is the largest `θ'` at which "`θ ≤ θ'`" is rejected, the upper bound the
//!   smallest at which "`θ ≥ θ'`" is. Because `θ0` is a grid point and the capped e-value is
//!   never above the uncapped one, a rollback's lower bound is always at or beyond the margin
//!   and a promotion's upper bound always inside it: the interval shown is the test's.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Grid points per doubling of θ.
const PER_OCTAVE: i32 = 8;
/// Octaves on each side of θ0: the grid spans θ0/256 .. 256·θ0.
const OCTAVES: i32 = 8;
/// Number of grid points.
pub const GRID_LEN: usize = (2 * OCTAVES * PER_OCTAVE + 1) as usize;
/// The index of θ0.
const CENTER: usize = (OCTAVES * PER_OCTAVE) as usize;
/// Alternatives of a test at grid point `k`: `k + ALT_FROM ..= k + ALT_TO` (×1.30 .. ×9.5).
const ALT_FROM: usize = 3;
const ALT_TO: usize = 26;
/// Number of alternatives on each side.
const ALTS: usize = ALT_TO - ALT_FROM + 1;

/// What one interval may add to the capped rollback evidence: this many nats ...
pub const CAP_BASE: f64 = 2.0;
/// ... plus this many per (dispersion-scaled) bad event of the interval.
pub const CAP_PER_EVENT: f64 = 0.05;

/// `2^(j/8)` for `j` in `-64..=64`: the grid's ratios to θ0.
fn ratios() -> &'static [f64; GRID_LEN] {
    static R: OnceLock<[f64; GRID_LEN]> = OnceLock::new();
    R.get_or_init(|| {
        let mut g = [0.0; GRID_LEN];
        for (j, v) in g.iter_mut().enumerate() {
            *v = 2f64.powf((j as i32 - CENTER as i32) as f64 / PER_OCTAVE as f64);
        }
        g
    })
}

fn up(k: usize) -> std::ops::Range<usize> {
    (k + ALT_FROM).min(GRID_LEN)..(k + ALT_TO + 1).min(GRID_LEN)
}

fn down(k: usize) -> std::ops::Range<usize> {
    k.saturating_sub(ALT_TO)..k.saturating_sub(ALT_FROM - 1).min(k)
}

fn log_pi(theta: f64, rho: f64) -> (f64, f64) {
    // ln π and ln(1 − π), computed without cancellation.
    let a = rho * theta;
    let b = 1.0 - rho;
    let denom = (a + b).ln();
    (a.ln() - denom, b.ln() - denom)
}

fn log_lik(theta: f64, rho: f64, bad_c: f64, bad_b: f64) -> f64 {
    let (lp, lq) = log_pi(theta, rho);
    let mut ll = 0.0;
    if bad_c > 0.0 {
        ll += bad_c * lp;
    }
    if bad_b > 0.0 {
        ll += bad_b * lq;
    }
    ll
}

/// Log of the mean of `exp(x_i)`; `-inf` for no values.
pub fn log_mean_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + (x - max).exp(), n + 1));
    max + (sum / n as f64).ln()
}

/// Prior dispersion and its weight (pseudo degrees of freedom).
const PRIOR_PHI: f64 = 2.5;
const PRIOR_DF: f64 = 4.0;
/// Non-integer counts mean `increase()` extrapolated: the dispersion is at least this.
const EXTRAPOLATED_PHI: f64 = 1.5;
/// Largest dispersion used (beyond it a metric is no count at all).
const MAX_PHI: f64 = 100.0;

/// The dispersion estimate of a count metric: the larger of two Pearson-type estimates, each
/// shrunk towards a conservative prior: both arms' successive differences (trimmed, so a
/// regression that starts does not count), and the baseline's counts from interval to interval
/// (its error rate should be steady) pooled with each arm's instances within an interval
/// (they share the arm's rate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Dispersion {
    /// Pearson χ² of instances within arms, summed over intervals.
    inst_chi2: f64,
    /// Its degrees of freedom.
    inst_df: f64,
    /// Baseline: Σ E²/N, Σ E, Σ N over intervals with traffic, and their number.
    sum_e2_n: f64,
    sum_e: f64,
    sum_n: f64,
    intervals: u32,
    /// Counts were not whole numbers (extrapolated by `increase()`).
    extrapolated: bool,
    /// Per arm (canary, baseline): the previous interval's (bad, total) and the running
    /// (bad, total), for successive differences.
    prev: [(f64, f64); 2],
    running: [(f64, f64); 2],
    /// Normalised squared successive differences of both arms (the latest [`MAX_DIFFS`]).
    diffs: Vec<f64>,
}

/// Successive differences kept.
const MAX_DIFFS: usize = 64;
/// Mean of a χ²₁ variable below its 75% quantile (1.32), over its mean: the trimmed mean's
/// bias (`P(χ²₃ < 1.32) / 0.75`).
const TRIMMED_CHI2_MEAN: f64 = 0.368;

impl Dispersion {
    /// Adds one interval's normalised squared successive difference of an arm:
    /// `(E_t − r·E_{t−1})² / (p̂·N_t·(1 + r))`, `r = N_t / N_{t−1}`, which is about 1 for
    /// independent events and about `φ` for dispersed ones; a level shift (a regression that
    /// starts) makes one large value, which the trimmed mean leaves out.
    fn add_difference(&mut self, arm: usize, (bad, total): (f64, f64)) {
        let run = &mut self.running[arm];
        run.0 += bad;
        run.1 += total;
        let (prev_bad, prev_total) = std::mem::replace(&mut self.prev[arm], (bad, total));
        let p = run.0 / run.1;
        if prev_total <= 0.0 || total <= 0.0 || p <= 0.0 {
            return;
        }
        let r = total / prev_total;
        let z = (bad - r * prev_bad).powi(2) / (p * total * (1.0 + r));
        if self.diffs.len() >= MAX_DIFFS {
            self.diffs.remove(0);
        }
        self.diffs.push(z);
    }

    /// The arms' successive differences: the sum of the smallest three quarters (corrected
    /// for the trimming) and their number. A regression that starts is one large difference,
    /// which the trimming leaves out.
    fn differences(&self) -> (f64, f64) {
        let mut z = self.diffs.clone();
        z.sort_by(f64::total_cmp);
        let kept = z.len() - z.len() / 4;
        let sum: f64 = z[..kept].iter().sum::<f64>() / TRIMMED_CHI2_MEAN;
        (sum, kept as f64)
    }

    /// Adds one interval: both arms' pooled counts and per-instance counts.
    fn add(&mut self, pooled: [(f64, f64); 2], arms: [&[(f64, f64)]; 2], raw: [f64; 2]) {
        let (bad_b, total_b) = pooled[1];
        self.add_difference(0, pooled[0]);
        self.add_difference(1, pooled[1]);
        if raw.iter().any(|v| (v - v.round()).abs() > 1e-6) {
            self.extrapolated = true;
        }
        if total_b > 0.0 {
            self.sum_e2_n += bad_b * bad_b / total_b;
            self.sum_e += bad_b;
            self.sum_n += total_b;
            self.intervals += 1;
        }
        for inst in arms {
            let (e, n) = inst.iter().fold((0.0, 0.0), |(e, n), c| (e + c.0, n + c.1));
            let used: Vec<&(f64, f64)> = inst.iter().filter(|c| c.1 > 0.0).collect();
            if e <= 0.0 || n <= 0.0 || used.len() < 2 {
                continue;
            }
            let p = e / n;
            self.inst_chi2 += used
                .iter()
                .map(|c| (c.0 - p * c.1).powi(2) / (p * c.1))
                .sum::<f64>();
            self.inst_df += (used.len() - 1) as f64;
        }
    }

    /// The dispersion to use now (≥ 1).
    pub fn phi(&self) -> f64 {
        // Two estimates, each shrunk towards the prior; the larger counts. Successive
        // differences see both arms' bursts at once; the baseline's steadiness and the
        // instances only count once they have data.
        let (diff_chi2, diff_df) = self.differences();
        let from_differences = (PRIOR_PHI * PRIOR_DF + diff_chi2) / (PRIOR_DF + diff_df);
        let (mut chi2, mut df) = (self.inst_chi2, self.inst_df);
        if self.intervals >= 2 && self.sum_e > 0.0 {
            let p = self.sum_e / self.sum_n;
            chi2 += (self.sum_e2_n / p - self.sum_e).max(0.0);
            df += (self.intervals - 1) as f64;
        }
        let pooled = if df > 0.0 {
            (PRIOR_PHI * PRIOR_DF + chi2) / (PRIOR_DF + df)
        } else {
            0.0
        };
        let floor = if self.extrapolated {
            EXTRAPOLATED_PHI
        } else {
            1.0
        };
        from_differences.max(pooled).clamp(floor, MAX_PHI)
    }
}

/// The count test's state for one metric (pooled over instances).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountTest {
    /// The margin: θ above this is a regression.
    pub theta0: f64,
    /// Log-likelihood (dispersion-scaled) at each grid point `θ0·2^((k−64)/8)`.
    ll: Vec<f64>,
    /// Capped log-likelihood ratios against θ0: the alternatives above, then below.
    capped: Vec<f64>,
    /// Running maximum of the capped log e-value (for the anytime p-value).
    pub max_log_e: f64,
    /// The capped log e-value before the latest interval (is the evidence rising?).
    #[serde(default)]
    pub prev_log_e: f64,
    /// Bad events seen, canary.
    pub bad_c: f64,
    /// Bad events seen, baseline.
    pub bad_b: f64,
    /// All events seen, canary.
    pub total_c: f64,
    /// All events seen, baseline.
    pub total_b: f64,
    /// Sum of ρ(1−ρ) weighted by (dispersion-scaled) bad events, for the information estimate.
    info: f64,
    /// The dispersion estimate.
    #[serde(default)]
    pub dispersion: Dispersion,
    /// The dispersion used in the latest interval.
    #[serde(default = "one")]
    pub phi: f64,
}

fn one() -> f64 {
    1.0
}

/// What the count test says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountSummary {
    /// Log of the rollback e-value (capped: the decision's).
    pub log_e: f64,
    /// Maximum-likelihood estimate of θ (None without bad events).
    pub estimate: Option<f64>,
    /// Lower bound of the confidence sequence (None: unbounded below on the grid).
    pub lower: Option<f64>,
    /// Upper bound (None: unbounded above on the grid).
    pub upper: Option<f64>,
}

/// One interval's counts for the count test.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts<'a> {
    /// Canary (bad, total), pooled.
    pub canary: (f64, f64),
    /// Baseline (bad, total), pooled.
    pub baseline: (f64, f64),
    /// Canary per instance (bad, total); empty without instance detail.
    pub canary_instances: &'a [(f64, f64)],
    /// Baseline per instance.
    pub baseline_instances: &'a [(f64, f64)],
    /// The canary's traffic share; taken from the totals when None.
    pub share: Option<f64>,
}

impl CountTest {
    /// A fresh test with margin `theta0` (e.g. 1.5 for `max_increase: 50%`).
    pub fn new(theta0: f64) -> Self {
        CountTest {
            theta0,
            ll: vec![0.0; GRID_LEN],
            capped: vec![0.0; 2 * ALTS],
            max_log_e: 0.0,
            prev_log_e: 0.0,
            bad_c: 0.0,
            bad_b: 0.0,
            total_c: 0.0,
            total_b: 0.0,
            info: 0.0,
            dispersion: Dispersion::default(),
            phi: 1.0,
        }
    }

    /// The grid's θ at index `k`.
    fn theta(&self, k: usize) -> f64 {
        self.theta0 * ratios()[k]
    }

    /// Adds one interval of pooled counts (no instance detail).
    pub fn update(
        &mut self,
        bad_c: f64,
        total_c: f64,
        bad_b: f64,
        total_b: f64,
        share: Option<f64>,
    ) {
        self.add(Counts {
            canary: (bad_c, total_c),
            baseline: (bad_b, total_b),
            share,
            ..Counts::default()
        });
    }

    /// Adds one interval. Intervals where either arm had no traffic carry no information.
    pub fn add(&mut self, c: Counts<'_>) {
        let clean = |(bad, total): (f64, f64)| {
            let bad = if bad.is_finite() { bad.max(0.0) } else { 0.0 };
            let total = if total.is_finite() { total } else { 0.0 };
            (bad, total.max(bad))
        };
        let ((bad_c, total_c), (bad_b, total_b)) = (clean(c.canary), clean(c.baseline));
        self.prev_log_e = self.log_e_value();
        self.total_c += total_c;
        self.total_b += total_b;
        self.bad_c += bad_c;
        self.bad_b += bad_b;
        let rho = c.share.unwrap_or_else(|| total_c / (total_c + total_b));
        if !(rho > 0.0 && rho < 1.0) || bad_c + bad_b == 0.0 {
            return;
        }
        self.dispersion.add(
            [(bad_c, total_c), (bad_b, total_b)],
            [c.canary_instances, c.baseline_instances],
            [bad_c, bad_b],
        );
        self.phi = self.dispersion.phi();
        let (bad_c, bad_b) = (bad_c / self.phi, bad_b / self.phi);
        self.info += (bad_c + bad_b) * rho * (1.0 - rho);
        let lik: Vec<f64> = (0..GRID_LEN)
            .map(|k| log_lik(self.theta(k), rho, bad_c, bad_b))
            .collect();
        for (ll, l) in self.ll.iter_mut().zip(&lik) {
            *ll += l;
        }
        let cap = CAP_BASE + CAP_PER_EVENT * (bad_c + bad_b);
        let l0 = lik[CENTER];
        let alts = up(CENTER).chain(down(CENTER));
        for (acc, k) in self.capped.iter_mut().zip(alts) {
            *acc += (lik[k] - l0).min(cap);
        }
        self.max_log_e = self.max_log_e.max(self.log_e_value());
    }

    /// Log of the rollback e-value (capped mixture likelihood ratio against θ0): the decision.
    pub fn log_e_value(&self) -> f64 {
        log_mean_exp(self.capped[..ALTS].iter().copied())
    }

    /// Log of the e-value that the canary is within the margin (`H0: θ ≥ θ0` rejected), capped.
    pub fn log_e_within(&self) -> f64 {
        log_mean_exp(self.capped[ALTS..].iter().copied())
    }

    /// Whether the rollback evidence grew in the latest interval (and points at a regression).
    pub fn evidence_rising(&self) -> bool {
        let now = self.log_e_value();
        now > 0.0 && now > self.prev_log_e + 1e-9
    }

    /// Uncapped log e-values of "θ ≤ grid[k]" (up) and "θ ≥ grid[k]" (down) at grid point `k`.
    fn log_e_at(&self, k: usize) -> (f64, f64) {
        let at = self.ll[k];
        (
            log_mean_exp(self.ll[up(k)].iter().map(|l| l - at)),
            log_mean_exp(self.ll[down(k)].iter().map(|l| l - at)),
        )
    }

    /// The estimate and the confidence sequence at level `alpha`.
    pub fn summary(&self, alpha: f64) -> CountSummary {
        let log_e = self.log_e_value();
        if self.bad_c + self.bad_b == 0.0 || self.info == 0.0 {
            return CountSummary {
                log_e,
                estimate: None,
                lower: None,
                upper: None,
            };
        }
        let best = self
            .ll
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("grid is not empty");
        let level = (1.0 / alpha).ln();
        // The largest grid point below the estimate that "θ ≤ θ'" rejects, and the smallest
        // above it that "θ ≥ θ'" rejects.
        let lower = (0..=best)
            .rev()
            .find(|&k| self.log_e_at(k).0 >= level)
            .map(|k| self.theta(k));
        let upper = (best..GRID_LEN)
            .find(|&k| self.log_e_at(k).1 >= level)
            .map(|k| self.theta(k));
        CountSummary {
            log_e,
            estimate: Some(self.theta0 * refine_peak(&self.ll, best)),
            lower,
            upper,
        }
    }

    /// About how many more bad events (both arms) it takes before the canary could be shown
    /// within the margin if the arms are truly equal; 0 when that should already have happened.
    pub fn bad_events_needed(&self, alpha: f64, share: f64) -> f64 {
        let c = (1.0 / alpha).ln() + (ALTS as f64).ln();
        let per_event = (share * (1.0 - share)).max(1e-6);
        let needed = 2.0 * c / (per_event * self.theta0.ln().powi(2));
        (needed - self.info / per_event).max(0.0) * self.phi
    }
}

/// The peak of the log-likelihood as a ratio to θ0, refined by a parabola through its
/// neighbours (in log θ).
fn refine_peak(ll: &[f64], best: usize) -> f64 {
    let g = ratios();
    if best == 0 || best + 1 == ll.len() {
        return g[best];
    }
    let (a, b, c) = (ll[best - 1], ll[best], ll[best + 1]);
    let denom = a - 2.0 * b + c;
    let offset = if denom < 0.0 {
        0.5 * (a - c) / denom
    } else {
        0.0
    };
    let step = 1.0 / PER_OCTAVE as f64;
    2f64.powf(g[best].log2() + offset.clamp(-0.5, 0.5) * step)
}

/// Log e-value of "θ > theta0" from cumulative totals alone (one binomial comparison, the
/// traffic share taken from the totals). Cruder than [`CountTest`], which conditions interval by
/// interval; used where only a yes/no gate is needed.
pub fn log_e_from_totals(bad_c: f64, total_c: f64, bad_b: f64, total_b: f64, theta0: f64) -> f64 {
    let rho = total_c / (total_c + total_b);
    if !(rho > 0.0 && rho < 1.0) || bad_c + bad_b == 0.0 {
        return 0.0;
    }
    let l0 = log_lik(theta0, rho, bad_c, bad_b);
    log_mean_exp(up(CENTER).map(|k| log_lik(theta0 * ratios()[k], rho, bad_c, bad_b) - l0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn binomial(rng: &mut StdRng, n: u64, p: f64) -> f64 {
        (0..n).filter(|_| rng.random::<f64>() < p).count() as f64
    }

    #[test]
    fn grid_is_centred_on_the_margin() {
        let t = CountTest::new(1.5);
        assert_eq!(t.theta(CENTER), 1.5);
        assert!((t.theta(0) - 1.5 / 256.0).abs() < 1e-12);
        assert!((t.theta(GRID_LEN - 1) - 1.5 * 256.0).abs() < 1e-9);
        let alt = up(CENTER);
        assert_eq!(alt.len(), ALTS);
        assert!(t.theta(alt.start) > 1.25 * 1.5 && t.theta(alt.end - 1) < 10.0 * 1.5);
        assert_eq!(down(CENTER).len(), ALTS);
        assert!(down(1).is_empty() && up(GRID_LEN - 2).is_empty());
    }

    #[test]
    fn no_events_no_evidence() {
        let mut t = CountTest::new(1.5);
        t.update(0.0, 100.0, 0.0, 100.0, None);
        assert_eq!(t.log_e_value(), 0.0);
        let s = t.summary(0.05);
        assert_eq!(s.estimate, None);
    }

    #[test]
    fn a_clear_regression_rejects_and_the_interval_covers_it() {
        let mut t = CountTest::new(1.5);
        // canary 10% errors vs baseline 1%, equal traffic.
        for _ in 0..3 {
            t.update(30.0, 300.0, 3.0, 300.0, None);
        }
        let s = t.summary(0.05 / 3.0);
        assert!(s.log_e > (3.0f64 / 0.05).ln(), "log e {}", s.log_e);
        let est = s.estimate.unwrap();
        assert!((est - 10.0).abs() < 1.0, "estimate {est}");
        // The interval agrees with the rollback: its lower bound clears the margin.
        assert!(s.lower.unwrap() > 1.5 && s.lower.unwrap() < 10.0, "{s:?}");
        assert!(s.upper.is_none_or(|u| u > 10.0));
    }

    #[test]
    fn estimate_accounts_for_the_traffic_share() {
        let mut t = CountTest::new(1.5);
        // 10% canary share; equal error rates (1%): counts 10 vs 90.
        t.update(10.0, 1000.0, 90.0, 9000.0, None);
        let est = t.summary(0.05).estimate.unwrap();
        assert!((est - 1.0).abs() < 0.05, "estimate {est}");
    }

    #[test]
    fn equal_arms_reject_rarely_however_often_we_look() {
        // 300 A/A runs of 40 looks each, 2% errors at 200 requests per arm per look.
        let mut rng = StdRng::seed_from_u64(7);
        let alpha: f64 = 0.05;
        let mut rejections = 0;
        for _ in 0..300 {
            let mut t = CountTest::new(1.0 + 1e-9);
            for _ in 0..40 {
                let c = binomial(&mut rng, 200, 0.02);
                let b = binomial(&mut rng, 200, 0.02);
                t.update(c, 200.0, b, 200.0, None);
                if t.log_e_value() >= (1.0 / alpha).ln() {
                    rejections += 1;
                    break;
                }
            }
        }
        // Ville: at most 5% even at θ0 = 1 (the boundary of the null).
        assert!(rejections <= 15, "{rejections} of 300 rejected");
    }

    #[test]
    fn information_estimate() {
        let t = CountTest::new(1.5);
        let needed = t.bad_events_needed(0.05, 0.5);
        // 2 (ln(1/0.05) + ln 25) / (0.25 ln(1.5)^2) ≈ 300
        assert!((needed - 300.0).abs() < 10.0, "{needed}");
    }

    #[test]
    fn equal_arms_become_confidently_within_the_margin() {
        let mut t = CountTest::new(1.5);
        for _ in 0..10 {
            t.update(100.0, 10_000.0, 100.0, 10_000.0, None);
        }
        assert!(t.log_e_within() > (1.0f64 / 0.05).ln());
        let s = t.summary(0.05);
        assert!(s.upper.unwrap() < 1.5 && s.lower.unwrap() < 1.0, "{s:?}");
    }

    #[test]
    fn the_interval_shown_is_the_tests() {
        // Whatever the data: a rollback's lower bound is at or beyond the margin, a promotion's
        // upper bound at or inside it.
        let mut rng = StdRng::seed_from_u64(11);
        let level = (1.0f64 / 0.05).ln();
        let (mut rollbacks, mut promotions) = (0, 0);
        for run in 0..400 {
            let mut t = CountTest::new(1.5);
            let p_c = 0.01 * (0.3 + 3.0 * rng.random::<f64>());
            for _ in 0..(1 + run % 6) {
                let c = binomial(&mut rng, 500, p_c);
                let b = binomial(&mut rng, 500, 0.01);
                t.update(c, 500.0, b, 500.0, None);
            }
            let s = t.summary(0.05);
            if t.log_e_value() >= level {
                rollbacks += 1;
                assert!(s.lower.is_some_and(|l| l >= 1.5), "{s:?}");
            }
            if t.log_e_within() >= level {
                promotions += 1;
                assert!(s.upper.is_some_and(|u| u <= 1.5), "{s:?}");
            }
        }
        assert!(rollbacks > 5 && promotions > 5, "{rollbacks} {promotions}");
        // The review's case: 11 vs 0 errors at equal traffic.
        let mut t = CountTest::new(1.5);
        t.update(11.0, 1000.0, 0.0, 1000.0, None);
        let s = t.summary(0.05);
        if t.log_e_value() >= level {
            assert!(s.lower.unwrap() >= 1.5, "{s:?}");
        }
    }

    /// Poisson-distributed number of clumps of `size` events.
    fn clumped(rng: &mut StdRng, mean_events: f64, size: f64) -> f64 {
        let lambda = mean_events / size;
        let (limit, mut k, mut p) = ((-lambda).exp(), 0.0, rng.random::<f64>());
        while p > limit {
            k += 1.0;
            p *= rng.random::<f64>();
        }
        k * size
    }

    fn clumped_aa_rejections(size: f64, runs: usize) -> usize {
        // A/A, errors in clumps of `size`, 6 errors per interval per arm on average (0.1% of
        // 100 req/s), 20 looks at α = 5% with a ×1.5 margin.
        let mut rng = StdRng::seed_from_u64(size as u64);
        let level = (1.0f64 / 0.05).ln();
        (0..runs)
            .filter(|_| {
                let mut t = CountTest::new(1.5);
                (0..20).any(|_| {
                    let c = clumped(&mut rng, 6.0, size);
                    let b = clumped(&mut rng, 6.0, size);
                    t.update(c, 6000.0, b, 6000.0, None);
                    t.log_e_value() >= level
                })
            })
            .count()
    }

    #[test]
    fn clumped_errors_do_not_roll_back_equal_arms() {
        // Before the dispersion estimate and the cap: 11% with clumps of 5, 26% with 10.
        // Now: about 0.1%, 2% and 13%. Clumps of 10 at 0.6 clumps per interval are mostly one
        // clump or none: the first intervals cannot tell a clump from a regression. NOT within
        // α yet for clumps that large and that sparse (the review measured 26% before).
        for (size, most) in [(2.0, 50), (5.0, 50), (10.0, 150)] {
            let r = clumped_aa_rejections(size, 1000);
            assert!(
                r <= most,
                "clumps of {size}: {r} of 1000 A/A runs rolled back"
            );
        }
    }

    #[test]
    fn dispersion_is_estimated_from_the_baseline_and_instances() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut t = CountTest::new(1.5);
        for _ in 0..20 {
            let c = clumped(&mut rng, 60.0, 10.0);
            let b = clumped(&mut rng, 60.0, 10.0);
            t.update(c, 60_000.0, b, 60_000.0, None);
        }
        // (The baseline's twenty counts happen to vary less than clumps of 10 usually do.)
        assert!(t.phi > 2.5, "clumps of 10: φ {}", t.phi);
        let mut t = CountTest::new(1.5);
        for _ in 0..20 {
            let c = binomial(&mut rng, 20_000, 0.003);
            let b = binomial(&mut rng, 20_000, 0.003);
            t.update(c, 20_000.0, b, 20_000.0, None);
        }
        assert!(t.phi < 1.8, "independent errors: φ {}", t.phi);
        // Instances: one instance of each arm takes a burst.
        let mut t = CountTest::new(1.5);
        t.add(Counts {
            canary: (40.0, 3000.0),
            baseline: (4.0, 3000.0),
            canary_instances: &[(36.0, 1000.0), (2.0, 1000.0), (2.0, 1000.0)],
            baseline_instances: &[(2.0, 1000.0), (1.0, 1000.0), (1.0, 1000.0)],
            share: None,
        });
        assert!(t.phi > 5.0, "a burst on one instance: φ {}", t.phi);
    }

    #[test]
    fn extrapolated_counts_are_not_taken_at_face_value() {
        // `increase()` with 30 s scrapes over a 1 m window doubles what it saw: counts are
        // 2·Poisson. A/A at the margin's boundary must still reject at most α.
        let mut rng = StdRng::seed_from_u64(8);
        let level = (1.0f64 / 0.05).ln();
        let mut rejections = 0;
        for _ in 0..1000 {
            let mut t = CountTest::new(1.0 + 1e-9);
            for _ in 0..20 {
                // Half the interval seen, scaled ×2 (plus the fraction Prometheus adds).
                let c = 2.04 * binomial(&mut rng, 1000, 0.01);
                let b = 2.04 * binomial(&mut rng, 1000, 0.01);
                t.update(c, 2040.0, b, 2040.0, None);
                if t.log_e_value() >= level {
                    rejections += 1;
                    break;
                }
            }
        }
        assert!(rejections <= 50, "{rejections} of 1000");
    }

    #[test]
    fn one_interval_of_a_clear_regression_is_enough() {
        // The cap grows with the interval's events: a real regression is many events.
        let mut t = CountTest::new(1.5);
        t.update(300.0, 6000.0, 60.0, 6000.0, None);
        assert!(t.log_e_value() > (100.0f64).ln(), "{}", t.log_e_value());
        // A burst is few: 20 vs 0 stays under the threshold in one interval.
        let mut t = CountTest::new(1.5);
        t.update(20.0, 6000.0, 0.0, 6000.0, None);
        assert!(t.log_e_value() < (60.0f64).ln(), "{}", t.log_e_value());
        assert!(t.evidence_rising());
    }

    #[test]
    fn totals_test_sees_a_clear_difference_only() {
        assert!(log_e_from_totals(40.0, 1000.0, 4.0, 1000.0, 1.0) > 5.0);
        assert!(log_e_from_totals(10.0, 1000.0, 10.0, 1000.0, 1.0) < 0.0);
        assert_eq!(log_e_from_totals(0.0, 1000.0, 0.0, 1000.0, 1.0), 0.0);
    }
}
