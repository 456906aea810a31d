//! The gauge test: CPU, memory, connections, disk, compared as a paired log-ratio.
//!
//! Per interval `y_t = ln(canary_t) − ln(baseline_t)`; pairing by interval cancels drift shared
//! by both arms. A normal-mixture e-process with a predictable plug-in variance (Howard,
//! Ramdas, McAuliffe, Sekhon 2021; Waudby-Smith et al. 2024) tests the mean against the margin:
//! for `H0: μ ≤ μ0`, `M = sqrt(ρ/(V+ρ)) · exp((S − t·μ0)₊² / (2(V+ρ)))` with `S` the running
//! sum and `V` the plug-in variance. The mixing variance `ρ` sets the noise scale where the test
//! is sharpest; CPU is noisy (5–10% per interval) and memory smooth (≤1%), so instead of one `ρ`
//! the e-process is the average over a grid of `ρ` from 1e-6 to 1 (an average of e-processes is
//! one). A rollback needs `M ≥ K/α`; the confidence bounds are the margins at which the one-sided
//! tests just reject. The first interval is a warm-up that seeds the plug-in mean, so one odd
//! first value cannot inflate the variance for the rest of the analysis.
//!
//! With a `slope`, the same test runs on the increments `y_t − y_{t−1}` against
//! `ln(1 + slope)`: a leak shows as a steady climb long before the level crosses its margin.

use super::count::log_mean_exp;
use serde::{Deserialize, Serialize};

/// Mixing variances (squared log units), averaged over.
const MIXTURE_RHOS: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
/// Variance floor per interval (0.3% noise): identical values must not look infinitely precise.
const VARIANCE_FLOOR: f64 = 1e-5;
/// Largest |log-ratio| accepted from one interval (a factor of 100).
const MAX_ABS_LOG_RATIO: f64 = 4.605;

/// Log of the ρ-mixture e-value for a sum exceeding its null by `excess` with variance `var`.
fn log_e(excess: f64, var: f64) -> f64 {
    let x = excess.max(0.0);
    log_mean_exp(
        MIXTURE_RHOS
            .iter()
            .map(|&rho| 0.5 * (rho / (var + rho)).ln() + x * x / (2.0 * (var + rho))),
    )
}

/// An e-process for the mean of a stream, in both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct MeanSequence {
    /// Values used.
    pub n: u32,
    sum: f64,
    var: f64,
    mean_prev: f64,
}

impl MeanSequence {
    /// Starts with a prior mean (the warm-up value) for the plug-in variance.
    pub fn seeded(mean: f64) -> Self {
        MeanSequence {
            mean_prev: mean,
            ..Default::default()
        }
    }

    /// Adds one value.
    pub fn push(&mut self, y: f64) {
        self.var += (y - self.mean_prev).powi(2).max(VARIANCE_FLOOR);
        self.sum += y;
        self.n += 1;
        self.mean_prev = self.sum / self.n as f64;
    }

    /// The running mean.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Log e-value against `H0: μ ≤ mu0` (evidence the mean is above `mu0`).
    pub fn log_e_value(&self, mu0: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        log_e(self.sum - self.n as f64 * mu0, self.var)
    }

    /// Log e-value against `H0: μ ≥ mu0` (evidence the mean is below `mu0`).
    pub fn log_e_below(&self, mu0: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        log_e(self.n as f64 * mu0 - self.sum, self.var)
    }

    /// One-sided bounds at level `alpha` each: `(lower, upper)` for the mean: the `μ0` at which
    /// each one-sided test just rejects.
    pub fn bounds(&self, alpha: f64) -> Option<(f64, f64)> {
        let mean = self.mean()?;
        let level = (1.0 / alpha).ln();
        let lower = crossing(|d| self.log_e_value(mean - d) >= level);
        let upper = crossing(|d| self.log_e_below(mean + d) >= level);
        Some((mean - lower, mean + upper))
    }
}

/// The smallest distance `d ≥ 0` with `rejects(d)`, for a monotone `rejects` (bisection).
fn crossing(rejects: impl Fn(f64) -> bool) -> f64 {
    let mut hi = 1e-3;
    while !rejects(hi) {
        hi *= 2.0;
        if hi > 1e6 {
            return f64::INFINITY;
        }
    }
    let mut lo = 0.0;
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if rejects(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The gauge test's state for one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GaugeTest {
    /// `ln(1 + max_increase)`.
    pub log_margin: f64,
    /// `ln(1 + slope)` when leak detection is on.
    pub log_slope: Option<f64>,
    /// The level sequence (None until warm-up is done).
    pub level: Option<MeanSequence>,
    /// The increments sequence.
    pub slope: Option<MeanSequence>,
    /// The previous log-ratio.
    pub last: Option<f64>,
    /// Running maximum of the log e-value.
    pub max_log_e: f64,
    /// The log-ratio of the canary's majority (its worst minority of instances left out), for
    /// the instance gate.
    #[serde(default)]
    pub majority: Option<MeanSequence>,
}

/// Evidence the majority needs for a gated rollback.
const GATE_LOG_THRESHOLD: f64 = std::f64::consts::LN_10;

/// What the gauge test says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaugeSummary {
    /// Log e-value against the margin (level, or slope if larger).
    pub log_e: f64,
    /// Estimated canary/baseline ratio.
    pub estimate: Option<f64>,
    /// Lower confidence bound of the ratio.
    pub lower: Option<f64>,
    /// Upper confidence bound of the ratio.
    pub upper: Option<f64>,
    /// The slope's estimate per interval (ratio), when leak detection is on.
    pub slope: Option<(f64, f64)>,
    /// The slope sequence rejects (a leak).
    pub slope_rejects: bool,
}

/// The paired log-ratio for one interval, or None when neither arm has a positive value.
pub fn log_ratio(canary: f64, baseline: f64) -> Option<f64> {
    if !(canary.is_finite() && baseline.is_finite()) {
        return None;
    }
    match (canary > 0.0, baseline > 0.0) {
        (false, false) => Some(0.0),
        (true, true) => Some(
            (canary / baseline)
                .ln()
                .clamp(-MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO),
        ),
        (true, false) => Some(MAX_ABS_LOG_RATIO),
        (false, true) => Some(-MAX_ABS_LOG_RATIO),
    }
}

impl GaugeTest {
    /// A fresh test: `max_increase` as a fraction, `slope` per interval as a fraction.
    pub fn new(max_increase: f64, slope: Option<f64>) -> Self {
        GaugeTest {
            log_margin: max_increase.ln_1p(),
            log_slope: slope.map(f64::ln_1p),
            level: None,
            slope: None,
            last: None,
            max_log_e: 0.0,
            majority: None,
        }
    }

    /// Adds the interval's log-ratio of the canary's majority (see [`GaugeTest::gate`]).
    pub fn update_majority(&mut self, y: f64) {
        match &mut self.majority {
            None => self.majority = Some(MeanSequence::seeded(y)),
            Some(m) => m.push(y),
        }
    }

    /// The instance gate: with per-instance data, a level rollback also needs the canary's
    /// majority to be beyond half the margin. None without instance data.
    pub fn gate(&self) -> Option<bool> {
        let m = self.majority.as_ref().filter(|m| m.n > 0)?;
        Some(m.log_e_value(self.log_margin / 2.0) >= GATE_LOG_THRESHOLD)
    }

    /// Whether the first (warm-up) value has been seen.
    pub fn warmed_up(&self) -> bool {
        self.level.is_some()
    }

    /// Adds one interval's log-ratio.
    pub fn update(&mut self, y: f64) {
        match &mut self.level {
            None => self.level = Some(MeanSequence::seeded(y)),
            Some(level) => level.push(y),
        }
        if self.log_slope.is_some()
            && let Some(last) = self.last
        {
            let d = y - last;
            match &mut self.slope {
                None => self.slope = Some(MeanSequence::seeded(d)),
                Some(s) => s.push(d),
            }
        }
        self.last = Some(y);
        let log_e = self.log_e();
        self.max_log_e = self.max_log_e.max(log_e);
    }

    /// The metric's e-value: the level's, or with leak detection the average of the level's
    /// and the slope's (an average of e-processes is one, so the metric keeps its α).
    fn log_e(&self) -> f64 {
        let level = self
            .level
            .as_ref()
            .map_or(0.0, |l| l.log_e_value(self.log_margin));
        match (&self.slope, self.log_slope) {
            (Some(s), Some(m)) => log_mean_exp([level, s.log_e_value(m)].into_iter()),
            (None, Some(_)) => log_mean_exp([level, 0.0].into_iter()),
            _ => level,
        }
    }

    /// The estimate and bounds at level `alpha`; with leak detection, the level and the slope
    /// each get half of it.
    pub fn summary(&self, alpha: f64) -> GaugeSummary {
        let alpha = if self.log_slope.is_some() {
            alpha / 2.0
        } else {
            alpha
        };
        let bounds = self.level.as_ref().and_then(|l| l.bounds(alpha));
        let slope_bounds = self.slope.as_ref().and_then(|s| s.bounds(alpha));
        GaugeSummary {
            log_e: self.log_e(),
            estimate: self.level.as_ref().and_then(|l| l.mean()).map(f64::exp),
            lower: bounds.map(|b| b.0.exp()),
            upper: bounds.map(|b| b.1.exp()),
            slope: self
                .slope
                .as_ref()
                .and_then(|s| s.mean().zip(slope_bounds.map(|b| b.0)))
                .map(|(m, lo)| (m.exp(), lo.exp())),
            slope_rejects: match (slope_bounds, self.log_slope) {
                (Some((lo, _)), Some(m)) => lo > m,
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut StdRng) -> f64 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn log_ratio_handles_zeros() {
        assert_eq!(log_ratio(0.0, 0.0), Some(0.0));
        assert!((log_ratio(2.0, 1.0).unwrap() - 2f64.ln()).abs() < 1e-12);
        assert_eq!(log_ratio(1.0, 0.0), Some(MAX_ABS_LOG_RATIO));
        assert_eq!(log_ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn doubling_is_caught_and_bounded() {
        let mut t = GaugeTest::new(0.5, None);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..12 {
            t.update(2f64.ln() + 0.05 * normal(&mut rng));
        }
        let s = t.summary(0.05 / 3.0);
        assert!(s.lower.unwrap() > 1.5, "{s:?}");
        assert!(s.log_e > (3.0f64 / 0.05).ln());
        assert!((s.estimate.unwrap() - 2.0).abs() < 0.1);
    }

    #[test]
    fn equal_arms_stay_within_the_margin() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut rejections = 0;
        for _ in 0..500 {
            let mut t = GaugeTest::new(0.5, None);
            for _ in 0..20 {
                t.update(0.1 * normal(&mut rng));
            }
            if t.max_log_e >= (1.0f64 / 0.05).ln() {
                rejections += 1;
            }
        }
        assert_eq!(rejections, 0);
    }

    #[test]
    fn a_leak_is_caught_by_the_slope() {
        let mut t = GaugeTest::new(1.0, Some(0.01));
        let mut rng = StdRng::seed_from_u64(3);
        for i in 0..15 {
            t.update(0.05 * i as f64 + 0.005 * normal(&mut rng));
        }
        let s = t.summary(0.05);
        assert!(s.slope_rejects, "{s:?}");
        let (slope, _) = s.slope.unwrap();
        assert!((slope - 0.05f64.exp()).abs() < 0.01);
    }
}
