//! The judge: observations of one interval in, a verdict with its evidence out.
//!
//! Pure: no I/O, no clock. Live analysis, `canaryd backtest`, rule unit tests and the benchmark
//! run the same code through [`update`]. The state is serialisable, so a canary's judge resumes
//! after a restart exactly where it was.

pub mod count;
pub mod gauge;
pub mod histogram;
pub mod mann_whitney;
pub mod quantile;
pub mod sequential;
pub mod stats;
pub mod threshold;

pub use crate::observation::{Arm, ArmSample, Observation, Outcome, Sample};
use crate::rules::{JudgeKind, RuleSet};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Everything the judge sees for one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalData {
    /// 1-based interval number within the analysis.
    pub index: u32,
    /// The canary's traffic share from the router (0..1), when known.
    pub canary_share: Option<f64>,
    /// One observation per metric of the rule set.
    pub observations: Vec<Observation>,
}

/// The judge's decision for the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// No regression found yet; keep going.
    Continue,
    /// Confidently not worse than the baseline: promote.
    Promote,
    /// A regression beyond the margin: roll back.
    Rollback,
    /// Not enough usable data this interval (no data, query errors): hold.
    Inconclusive,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Continue => "continue",
            Decision::Promote => "promote",
            Decision::Rollback => "rollback",
            Decision::Inconclusive => "inconclusive",
        })
    }
}

/// One metric's status after an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricStatus {
    /// Confidently within the margin.
    Pass,
    /// No regression shown, not yet confidently within the margin.
    Continue,
    /// A regression beyond the margin.
    Fail,
    /// An effect visible on a minority of canary instances only (reported, not acted on).
    InstanceAnomaly,
    /// Warming up (e.g. choosing the slow-request threshold from the baseline).
    WarmingUp,
    /// The query returned no data.
    NoData,
    /// The query failed or timed out.
    Error,
}

impl fmt::Display for MetricStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricStatus::Pass => "pass",
            MetricStatus::Continue => "continue",
            MetricStatus::Fail => "FAIL",
            MetricStatus::InstanceAnomaly => "instance-anomaly",
            MetricStatus::WarmingUp => "warming-up",
            MetricStatus::NoData => "no-data",
            MetricStatus::Error => "error",
        })
    }
}

/// The statistic behind a metric's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Evidence {
    /// What `value` is: `e_value`, `p_value`, `score`, `bounds`.
    pub kind: String,
    /// Its value (for an e-value: the rollback threshold is `threshold`).
    pub value: Option<f64>,
    /// The threshold the value is compared with.
    pub threshold: Option<f64>,
    /// Anytime-valid p-value, where the judge has one.
    pub p_value: Option<f64>,
    /// Counts or samples used so far, canary then baseline.
    pub samples: (f64, f64),
}

/// One metric's verdict with its evidence: what the API, the CLI and notifications show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    /// The metric.
    pub name: String,
    /// Its status.
    pub status: MetricStatus,
    /// The canary's value this interval (error rate, slow share, quantile, gauge value).
    pub canary: Option<f64>,
    /// The baseline's value this interval.
    pub baseline: Option<f64>,
    /// What `canary`/`baseline` measure (`error ratio`, `share slower than 0.25s`, ...).
    pub unit: String,
    /// The effect estimate (canary/baseline ratio) over the analysis so far.
    pub estimate: Option<f64>,
    /// Lower bound of the effect's confidence interval/sequence.
    pub lower: Option<f64>,
    /// Upper bound of the effect's confidence interval/sequence.
    pub upper: Option<f64>,
    /// The margin the effect is compared with (e.g. 1.5).
    pub margin: Option<f64>,
    /// The statistic.
    pub evidence: Evidence,
    /// One line a person can read.
    pub reason: String,
    /// Critical metric.
    pub critical: bool,
    /// Dry-run metric: reported, never acted on.
    pub dry_run: bool,
}

/// The judge's verdict for one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// Per metric.
    pub metrics: Vec<MetricVerdict>,
    /// Why, one line each (failing metrics for a rollback, gaps for inconclusive).
    pub reasons: Vec<String>,
}

/// The judge's state between intervals, by judge kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "judge", rename_all = "snake_case")]
pub enum JudgeState {
    /// State of the sequential judge.
    Sequential(sequential::State),
    /// State of the Kayenta-compatible Mann–Whitney judge.
    MannWhitney(mann_whitney::State),
    /// State of the threshold judge.
    Threshold(threshold::State),
}

impl JudgeState {
    /// The initial state for a rule set.
    pub fn new(rules: &RuleSet) -> Self {
        match rules.judge {
            JudgeKind::Sequential => JudgeState::Sequential(sequential::State::new(rules)),
            JudgeKind::MannWhitney => JudgeState::MannWhitney(mann_whitney::State::new(rules)),
            JudgeKind::Threshold => JudgeState::Threshold(threshold::State::new(rules)),
        }
    }

    /// The same state, refusing to promote before `n` intervals (the strategy's minimum
    /// analysis time in intervals). Only the sequential judge promotes early; the others never
    /// promote on their own, so they are unchanged.
    pub fn with_min_intervals(self, n: u32) -> Self {
        match self {
            JudgeState::Sequential(s) => JudgeState::Sequential(s.with_min_intervals(n)),
            other => other,
        }
    }
}

/// Advances the judge by one interval. The state's kind picks the judge (it was made by
/// [`JudgeState::new`] from the same pinned rule set).
pub fn update(rules: &RuleSet, state: JudgeState, data: &IntervalData) -> (JudgeState, Verdict) {
    match state {
        JudgeState::Sequential(s) => {
            let (s, v) = sequential::update(rules, s, data);
            (JudgeState::Sequential(s), v)
        }
        JudgeState::MannWhitney(s) => {
            let (s, v) = mann_whitney::update(rules, s, data);
            (JudgeState::MannWhitney(s), v)
        }
        JudgeState::Threshold(s) => {
            let (s, v) = threshold::update(rules, s, data);
            (JudgeState::Threshold(s), v)
        }
    }
}

/// Feeds the judge the baseline's data from the interval before the canary started (the
/// canary's side may be empty). The sequential judge fixes its slow-request thresholds from it;
/// the other judges need no warm-up. Nothing is tested, so it yields no verdict.
pub fn warm_up(rules: &RuleSet, state: JudgeState, data: &IntervalData) -> JudgeState {
    match state {
        JudgeState::Sequential(s) => JudgeState::Sequential(sequential::warm_up(rules, s, data)),
        other => other,
    }
}

/// Formats a number for people: 3 significant digits, no exponent for everyday magnitudes, and
/// scientific notation from a million up (an e-value of 4.28e45, not 46 digits).
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        let digits = (2 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.digits$}")
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_num;

    #[test]
    fn numbers_read_well_from_tiny_to_huge() {
        assert_eq!(fmt_num(4.280_213_6e45), "4.28e45");
        assert_eq!(fmt_num(1_234_567.0), "1.23e6");
        assert_eq!(fmt_num(8316.4), "8316");
        assert_eq!(fmt_num(60.0), "60.0");
        assert_eq!(fmt_num(1.5), "1.50");
        assert_eq!(fmt_num(0.0123), "0.0123");
        assert_eq!(fmt_num(0.000_012_3), "1.23e-5");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-2.5e7), "-2.50e7");
        assert_eq!(fmt_num(f64::NAN), "NaN");
        assert_eq!(fmt_num(f64::INFINITY), "inf");
    }
}
