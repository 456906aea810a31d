//! The count test: is the canary's rate of bad events more than `θ0` times the baseline's?
//!
//! Per interval, with bad counts `E_c`, `E_b` and canary traffic share `ρ`, conditionally on
//! `E = E_c + E_b` the canary's count is `Binomial(E, π(θ))`, `π(θ) = ρθ / (ρθ + 1 − ρ)`, where
//! `θ` is the canary/baseline rate ratio. A load change shared by both arms cancels exactly.
//!
//! We keep the log-likelihood of every `θ` on a fixed log-spaced grid. From it:
//! - the e-process for `H0: θ ≤ θ0` is the uniform mixture over grid points in
//!   `[1.25·θ0, 10·θ0]` of the likelihood ratio against `θ0` (JUDGE.md; Lindon & Malek 2022);
//!   mixing only over alternatives above `θ0` keeps it valid for the whole composite null;
//! - the mirror e-process for `H0: θ ≥ θ0` (alternatives in `[θ0/10, θ0/1.25]`): evidence that
//!   the canary is *within* the margin, which is what early promotion needs;
//! - a confidence sequence at level `α` from the same two tests run at every grid point:
//!   the lower bound is the largest `θ'` at which "`θ ≤ θ'`" is rejected, the upper bound the
//!   smallest `θ'` at which "`θ ≥ θ'`" is. So the canary is rolled back exactly when the lower
//!   bound clears the margin (up to the grid's 9% resolution), and the interval shown always
//!   agrees with the decision.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Grid points per doubling of θ.
const PER_OCTAVE: i32 = 8;
/// Octaves on each side of 1: the grid spans 1/256 .. 256.
const OCTAVES: i32 = 8;
/// Number of grid points.
pub const GRID_LEN: usize = (2 * OCTAVES * PER_OCTAVE + 1) as usize;

fn grid() -> &'static [f64; GRID_LEN] {
    static GRID: OnceLock<[f64; GRID_LEN]> = OnceLock::new();
    GRID.get_or_init(|| {
        let mut g = [0.0; GRID_LEN];
        for (j, v) in g.iter_mut().enumerate() {
            *v = 2f64.powf((j as i32 - OCTAVES * PER_OCTAVE) as f64 / PER_OCTAVE as f64);
        }
        g
    })
}

/// The alternatives the rollback e-process mixes over: `[1.25·θ0, 10·θ0]` on the grid. (JUDGE.md
/// suggests up to 20·θ0; effects beyond 10·θ0 are caught at once either way, and the narrower
/// range puts more prior weight where detection is hard.)
fn alternatives(theta0: f64) -> std::ops::Range<usize> {
    grid_range(1.25 * theta0, 10.0 * theta0)
}

/// The alternatives of the "within the margin" e-process: `[θ0/10, θ0/1.25]`.
fn alternatives_below(theta0: f64) -> std::ops::Range<usize> {
    grid_range(theta0 / 10.0, theta0 / 1.25)
}

fn grid_range(from: f64, to: f64) -> std::ops::Range<usize> {
    let g = grid();
    let lo = g.partition_point(|&t| t < from).min(GRID_LEN - 1);
    let hi = g.partition_point(|&t| t <= to);
    lo..hi.max(lo + 1).min(GRID_LEN)
}

fn log_pi(theta: f64, rho: f64) -> (f64, f64) {
    // ln π and ln(1 − π), computed without cancellation.
    let a = rho * theta;
    let b = 1.0 - rho;
    let denom = (a + b).ln();
    (a.ln() - denom, b.ln() - denom)
}

fn add_log_lik(ll: &mut f64, theta: f64, rho: f64, bad_c: f64, bad_b: f64) {
    let (lp, lq) = log_pi(theta, rho);
    if bad_c > 0.0 {
        *ll += bad_c * lp;
    }
    if bad_b > 0.0 {
        *ll += bad_b * lq;
    }
}

/// Log of the mean of `exp(x_i)`.
pub fn log_mean_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + (x - max).exp(), n + 1));
    max + (sum / n as f64).ln()
}

/// The count test's state for one metric (pooled over instances).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountTest {
    /// The margin: θ above this is a regression.
    pub theta0: f64,
    /// Log-likelihood at each grid point.
    ll: Vec<f64>,
    /// Log-likelihood at θ0.
    ll0: f64,
    /// Running maximum of the log e-value (for the anytime p-value).
    pub max_log_e: f64,
    /// Bad events seen, canary.
    pub bad_c: f64,
    /// Bad events seen, baseline.
    pub bad_b: f64,
    /// All events seen, canary.
    pub total_c: f64,
    /// All events seen, baseline.
    pub total_b: f64,
    /// Sum of ρ(1−ρ) weighted by bad events, for the information estimate.
    info: f64,
}

/// What the count test says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountSummary {
    /// Log of the rollback e-value.
    pub log_e: f64,
    /// Maximum-likelihood estimate of θ (None without bad events).
    pub estimate: Option<f64>,
    /// Lower bound of the confidence sequence (None: unbounded below on the grid).
    pub lower: Option<f64>,
    /// Upper bound (None: unbounded above on the grid).
    pub upper: Option<f64>,
}

impl CountTest {
    /// A fresh test with margin `theta0` (e.g. 1.5 for `max_increase: 50%`).
    pub fn new(theta0: f64) -> Self {
        CountTest {
            theta0,
            ll: vec![0.0; GRID_LEN],
            ll0: 0.0,
            max_log_e: 0.0,
            bad_c: 0.0,
            bad_b: 0.0,
            total_c: 0.0,
            total_b: 0.0,
            info: 0.0,
        }
    }

    /// Adds one interval. `share` is the canary's traffic share; when `None` it is taken from
    /// the totals. Intervals where either arm had no traffic carry no information and are skipped.
    pub fn update(
        &mut self,
        bad_c: f64,
        total_c: f64,
        bad_b: f64,
        total_b: f64,
        share: Option<f64>,
    ) {
        let (bad_c, bad_b) = (bad_c.max(0.0).round(), bad_b.max(0.0).round());
        let (total_c, total_b) = (total_c.max(bad_c), total_b.max(bad_b));
        self.total_c += total_c;
        self.total_b += total_b;
        self.bad_c += bad_c;
        self.bad_b += bad_b;
        let rho = share.unwrap_or_else(|| total_c / (total_c + total_b));
        if !(rho > 0.0 && rho < 1.0) || bad_c + bad_b == 0.0 {
            return;
        }
        self.info += (bad_c + bad_b) * rho * (1.0 - rho);
        for (ll, &theta) in self.ll.iter_mut().zip(grid().iter()) {
            add_log_lik(ll, theta, rho, bad_c, bad_b);
        }
        add_log_lik(&mut self.ll0, self.theta0, rho, bad_c, bad_b);
        self.max_log_e = self.max_log_e.max(self.log_e_value());
    }

    /// Log of the rollback e-value (the mixture likelihood ratio against θ0).
    pub fn log_e_value(&self) -> f64 {
        let alt = alternatives(self.theta0);
        log_mean_exp(self.ll[alt].iter().map(|l| l - self.ll0))
    }

    /// Log of the e-value that the canary is within the margin (`H0: θ ≥ θ0` rejected).
    pub fn log_e_within(&self) -> f64 {
        let alt = alternatives_below(self.theta0);
        log_mean_exp(self.ll[alt].iter().map(|l| l - self.ll0))
    }

    /// Log e-values of "θ ≤ grid[k]" (up) and "θ ≥ grid[k]" (down), at grid point `k`.
    fn log_e_at(&self, k: usize) -> (f64, f64) {
        let g = grid();
        let up = alternatives(g[k]);
        let down = alternatives_below(g[k]);
        let at = self.ll[k];
        (
            log_mean_exp(self.ll[up].iter().map(|l| l - at)),
            log_mean_exp(self.ll[down].iter().map(|l| l - at)),
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
        let g = grid();
        let best = self
            .ll
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("grid is not empty");
        let level = (1.0 / alpha).ln();
        // Walk out from the estimate to the first grid point each one-sided test rejects.
        let lower = (0..=best)
            .rev()
            .find(|&k| self.log_e_at(k).0 >= level)
            .map(|k| g[k]);
        let upper = (best..GRID_LEN)
            .find(|&k| self.log_e_at(k).1 >= level)
            .map(|k| g[k]);
        CountSummary {
            log_e,
            estimate: Some(refine_peak(&self.ll, best)),
            lower,
            upper,
        }
    }

    /// About how many more bad events (both arms) it takes before the canary could be shown
    /// within the margin if the arms are truly equal; 0 when that should already have happened.
    pub fn bad_events_needed(&self, alpha: f64, share: f64) -> f64 {
        let c = (1.0 / alpha).ln() + (alternatives_below(self.theta0).len() as f64).ln();
        let per_event = (share * (1.0 - share)).max(1e-6);
        let needed = 2.0 * c / (per_event * self.theta0.ln().powi(2));
        (needed - self.info / per_event).max(0.0)
    }
}

/// The peak of the log-likelihood, refined by a parabola through its neighbours (in log θ).
fn refine_peak(ll: &[f64], best: usize) -> f64 {
    let g = grid();
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
    let mut ll0 = 0.0;
    add_log_lik(&mut ll0, theta0, rho, bad_c, bad_b);
    let alt = alternatives(theta0);
    log_mean_exp(grid()[alt].iter().map(|&theta| {
        let mut ll = 0.0;
        add_log_lik(&mut ll, theta, rho, bad_c, bad_b);
        ll - ll0
    }))
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
    fn grid_spans_and_alternatives() {
        let g = grid();
        assert_eq!(g.len(), GRID_LEN);
        assert!((g[0] - 1.0 / 256.0).abs() < 1e-12);
        assert!((g[GRID_LEN - 1] - 256.0).abs() < 1e-9);
        let alt = alternatives(1.5);
        assert!(g[alt.start] >= 1.875 && g[alt.start - 1] < 1.875);
        assert!(g[alt.end - 1] <= 15.0 && g[alt.end] > 15.0);
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
    fn interval_agrees_with_the_test_at_the_margin() {
        // Whatever the data, rejecting at θ0 and a lower bound above θ0 go together.
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let mut t = CountTest::new(1.5);
            let p_c = 0.01 * (1.0 + 3.0 * rng.random::<f64>());
            for _ in 0..3 {
                let c = binomial(&mut rng, 500, p_c);
                let b = binomial(&mut rng, 500, 0.01);
                t.update(c, 500.0, b, 500.0, None);
            }
            let level = (1.0f64 / 0.05).ln();
            let s = t.summary(0.05);
            let rejects = t.log_e_value() >= level;
            let lower_clears = s.lower.is_some_and(|l| l >= 1.5 * 1.25);
            if lower_clears {
                assert!(rejects, "{s:?}");
            }
        }
    }

    #[test]
    fn totals_test_sees_a_clear_difference_only() {
        assert!(log_e_from_totals(40.0, 1000.0, 4.0, 1000.0, 1.0) > 5.0);
        assert!(log_e_from_totals(10.0, 1000.0, 10.0, 1000.0, 1.0) < 0.0);
        assert_eq!(log_e_from_totals(0.0, 1000.0, 0.0, 1000.0, 1.0), 0.0);
    }
}
