//! The threshold judge (`judge: threshold`): Flagger/Argo Rollouts semantics.
//!
//! Each interval every metric's canary value alone is checked against the rule's `min`/`max`
//! (ratio: bad/total; histogram: the rule's `quantile`, else p99, from the buckets, in seconds;
//! gauge: the value). The baseline is shown for context and never compared.
//!
//! - An interval with any scored metric out of bounds is a failed check. Failed checks add up
//!   over the analysis (they are not reset by passing intervals, as in Flagger and Argo); when
//!   they reach `threshold.failure_limit` the canary is rolled back. Below the limit the
//!   interval continues (Argo keeps going until the limit; nothing is promoted by this judge).
//! - Query errors and timeouts are not failed checks: an interval with one is an errored
//!   interval. `threshold.consecutive_error_limit` errored intervals in a row roll the canary
//!   back (Argo's `consecutiveErrorLimit`; a limit of 0 acts as 1); fewer make the interval
//!   inconclusive. An interval whose scored metrics were all measured resets the count.
//! - No data (no events, no quantile, NaN) is neither pass nor fail: the interval is
//!   inconclusive and changes neither count.
//! - After `threshold.min_passes` fully passing intervals the metrics report `Pass`, before
//!   that `Continue`. The judge never returns Promote: promotion comes at the end of the steps
//!   or `max_duration`.
//!
//! Dry-run metrics are checked and reported, never counted.

use super::{
    Decision, Evidence, IntervalData, MetricStatus, MetricVerdict, Outcome, Sample, Verdict,
    fmt_num, histogram,
};
use crate::rules::{MetricKind, MetricRule, RuleSet};
use serde::{Deserialize, Serialize};

/// The quantile checked for histograms without `quantile` in the rule.
pub const DEFAULT_QUANTILE: f64 = 0.99;

/// The threshold judge's state: its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    /// Intervals seen.
    pub intervals: u32,
    /// Intervals with a scored metric out of bounds, over the whole analysis.
    pub failed_checks: u32,
    /// Errored intervals in a row (query errors, timeouts).
    pub consecutive_errors: u32,
    /// Intervals in which every scored metric was within bounds.
    pub passes: u32,
}

impl State {
    /// The initial state for a rule set.
    pub fn new(_rules: &RuleSet) -> Self {
        State::default()
    }
}

/// What checking one metric in one interval gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Within bounds.
    Pass,
    /// Out of bounds.
    Fail,
    /// No value to check.
    NoData,
    /// The query failed or timed out.
    Error,
}

/// The canary's value to check, with the count of events behind it; `Err` for wrong-shaped
/// data, `Ok(None)` when there is nothing to check.
fn canary_value(rule: &MetricRule, sample: &Sample) -> Result<Option<(f64, f64)>, ()> {
    match (&rule.kind, sample) {
        (MetricKind::Ratio { .. }, Sample::Counts { bad, total }) => {
            Ok((*total > 0.0).then(|| (bad / total, *total)))
        }
        (MetricKind::Histogram { quantile, .. }, Sample::Buckets { buckets }) => {
            let q = histogram::quantile(buckets, quantile.unwrap_or(DEFAULT_QUANTILE));
            Ok(q.map(|v| (v, histogram::total(buckets))))
        }
        (MetricKind::Gauge { .. }, Sample::Gauge { value }) => {
            Ok(value.is_finite().then_some((*value, 1.0)))
        }
        _ => Err(()),
    }
}

/// The unit of a metric's checked value.
fn unit(rule: &MetricRule) -> String {
    match &rule.kind {
        MetricKind::Ratio { .. } => "bad ratio".into(),
        MetricKind::Histogram { quantile, .. } => {
            let q = quantile.unwrap_or(DEFAULT_QUANTILE);
            format!("p{} seconds", (100.0 * q * 1000.0).round() / 1000.0)
        }
        MetricKind::Gauge { .. } => "value".into(),
    }
}

/// Checks a value against `[min, max]`; returns the check and the bound it was held to.
pub fn check(value: f64, min: Option<f64>, max: Option<f64>) -> (Check, Option<f64>) {
    match (min, max) {
        (_, Some(hi)) if value > hi => (Check::Fail, Some(hi)),
        (Some(lo), _) if value < lo => (Check::Fail, Some(lo)),
        (lo, hi) => (Check::Pass, hi.or(lo)),
    }
}

fn bounds(rule: &MetricRule) -> String {
    format!(
        "[{}, {}]",
        rule.min.map_or("-∞".into(), fmt_num),
        rule.max.map_or("∞".into(), fmt_num)
    )
}

fn judge_metric(rule: &MetricRule, outcome: Option<&Outcome>) -> (Check, MetricVerdict) {
    let name = &rule.name;
    let mut v = MetricVerdict {
        name: name.clone(),
        status: MetricStatus::Error,
        canary: None,
        baseline: None,
        unit: unit(rule),
        estimate: None,
        lower: None,
        upper: None,
        margin: None,
        evidence: Evidence {
            kind: "threshold".into(),
            ..Evidence::default()
        },
        reason: String::new(),
        critical: rule.critical,
        dry_run: rule.dry_run,
    };
    let (check_result, reason) = match outcome {
        None => (Check::Error, format!("{name}: no observation was made")),
        Some(Outcome::QueryError { message }) => {
            (Check::Error, format!("{name}: query error: {message}"))
        }
        Some(Outcome::Timeout) => (Check::Error, format!("{name}: query timed out")),
        Some(Outcome::NoData { arm }) => (
            Check::NoData,
            format!("{name}: no data for the {arm} (is it receiving traffic?)"),
        ),
        Some(Outcome::Data { canary, baseline }) => match canary_value(rule, &canary.pooled) {
            Err(()) => (
                Check::Error,
                format!(
                    "{name}: the query returned data of the wrong shape for kind {}",
                    rule.kind.name()
                ),
            ),
            Ok(None) => (
                Check::NoData,
                format!("{name}: nothing to check for the canary this interval"),
            ),
            Ok(Some((value, events))) => {
                v.canary = Some(value);
                v.baseline = canary_value(rule, &baseline.pooled)
                    .ok()
                    .flatten()
                    .map(|b| b.0);
                let (c, bound) = check(value, rule.min, rule.max);
                v.evidence.value = Some(value);
                v.evidence.threshold = bound;
                v.evidence.samples = (events, 0.0);
                let shown = format!("canary {} {}", fmt_num(value), v.unit);
                let reason = match (c, bound) {
                    (Check::Fail, Some(b)) if rule.max == Some(b) && value > b => {
                        format!("{name}: {shown} is above the max {}", fmt_num(b))
                    }
                    (Check::Fail, Some(b)) => {
                        format!("{name}: {shown} is below the min {}", fmt_num(b))
                    }
                    _ => format!("{name}: {shown} is within {}", bounds(rule)),
                };
                (c, reason)
            }
        },
    };
    v.status = match check_result {
        Check::Pass => MetricStatus::Continue,
        Check::Fail => MetricStatus::Fail,
        Check::NoData => MetricStatus::NoData,
        Check::Error => MetricStatus::Error,
    };
    v.reason = reason;
    (check_result, v)
}

/// Advances the judge by one interval.
pub fn update(rules: &RuleSet, mut state: State, data: &IntervalData) -> (State, Verdict) {
    let opts = &rules.threshold;
    state.intervals += 1;
    let mut checks = Vec::with_capacity(rules.metrics.len());
    for rule in &rules.metrics {
        let outcome = data
            .observations
            .iter()
            .find(|o| o.metric == rule.name)
            .map(|o| &o.outcome);
        checks.push(judge_metric(rule, outcome));
    }
    let acted: Vec<&(Check, MetricVerdict)> = checks.iter().filter(|(_, v)| !v.dry_run).collect();
    let reasons_for = |want: Check| -> Vec<String> {
        acted
            .iter()
            .filter(|(c, _)| *c == want)
            .map(|(_, v)| v.reason.clone())
            .collect()
    };
    let (failed, errored, missing) = (
        reasons_for(Check::Fail),
        reasons_for(Check::Error),
        reasons_for(Check::NoData),
    );
    if !failed.is_empty() {
        state.failed_checks += 1;
    }
    if !errored.is_empty() {
        state.consecutive_errors += 1;
    } else if missing.is_empty() {
        state.consecutive_errors = 0;
    }
    let all_pass = failed.is_empty() && errored.is_empty() && missing.is_empty();
    if all_pass && !acted.is_empty() {
        state.passes += 1;
    }
    let error_limit = opts.consecutive_error_limit.max(1);
    let (decision, reasons) = if !failed.is_empty() && state.failed_checks >= opts.failure_limit {
        let mut r = vec![format!(
            "{} failed checks reached the failure limit {}",
            state.failed_checks, opts.failure_limit
        )];
        r.extend(failed);
        (Decision::Rollback, r)
    } else if state.consecutive_errors >= error_limit {
        let mut r = vec![format!(
            "query errors in {} consecutive intervals reached the limit {}",
            state.consecutive_errors, error_limit
        )];
        r.extend(errored);
        (Decision::Rollback, r)
    } else if !failed.is_empty() {
        let mut r = vec![format!(
            "failed check {} of {} allowed before rollback",
            state.failed_checks, opts.failure_limit
        )];
        r.extend(failed);
        r.extend(errored);
        r.extend(missing);
        (Decision::Continue, r)
    } else if !errored.is_empty() || !missing.is_empty() {
        let mut r = errored;
        r.extend(missing);
        if state.consecutive_errors > 0 {
            r.push(format!(
                "errored intervals in a row: {} of {}",
                state.consecutive_errors, error_limit
            ));
        }
        (Decision::Inconclusive, r)
    } else {
        (
            Decision::Continue,
            vec![format!(
                "every check passed ({} passing intervals, {} needed; {} of {} failed checks so far)",
                state.passes, opts.min_passes, state.failed_checks, opts.failure_limit
            )],
        )
    };
    let passed_enough = state.passes >= opts.min_passes;
    let metrics: Vec<MetricVerdict> = checks
        .into_iter()
        .map(|(c, mut v)| {
            if c == Check::Pass && passed_enough {
                v.status = MetricStatus::Pass;
            }
            v
        })
        .collect();
    (
        state,
        Verdict {
            decision,
            metrics,
            reasons,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Arm, ArmSample, JudgeState, Observation, update as judge_update};
    use crate::rules::parse_rule_set;

    fn rules() -> RuleSet {
        parse_rule_set(
            "t.yaml",
            r#"
name: t
judge: threshold
threshold:
  failure_limit: 2
  consecutive_error_limit: 2
  min_passes: 2
metrics:
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(x{ {{selector}}, code="500" }[{{window}}]))'
    total: 'sum(increase(x{ {{selector}} }[{{window}}]))'
    max: 0.01
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(h_bucket{ {{selector}} }[{{window}}]))'
    max: 0.5
  - name: cpu
    kind: gauge
    query: 'sum(rate(cpu{ {{selector}} }[{{window}}]))'
    min: 0.1
    max: 2
"#,
        )
        .unwrap()
    }

    /// p99 = `p99` exactly; p50 = `p99 / 2`.
    fn hist(p99: f64) -> Sample {
        Sample::Buckets {
            buckets: vec![
                (p99 / 2.0, 50.0),
                (p99, 99.0),
                (p99 * 2.0, 100.0),
                (f64::INFINITY, 100.0),
            ],
        }
    }

    /// Canary error ratio, p99 and CPU; the baseline is far worse and must not matter.
    fn data(err: f64, p99: f64, cpu: f64) -> IntervalData {
        let obs = |metric: &str, c: Sample, b: Sample| Observation {
            metric: metric.into(),
            outcome: Outcome::Data {
                canary: ArmSample::pooled(c),
                baseline: ArmSample::pooled(b),
            },
        };
        let counts = |r: f64| Sample::Counts {
            bad: 1000.0 * r,
            total: 1000.0,
        };
        IntervalData {
            index: 1,
            canary_share: None,
            observations: vec![
                obs("error-rate", counts(err), counts(0.5)),
                obs("latency", hist(p99), hist(9.0)),
                obs(
                    "cpu",
                    Sample::Gauge { value: cpu },
                    Sample::Gauge { value: 50.0 },
                ),
            ],
        }
    }

    fn ok() -> IntervalData {
        data(0.001, 0.2, 1.0)
    }

    fn with(mut d: IntervalData, metric: usize, outcome: Outcome) -> IntervalData {
        d.observations[metric].outcome = outcome;
        d
    }

    fn run(rules: &RuleSet, seq: &[IntervalData]) -> (JudgeState, Vec<Verdict>) {
        let mut state = JudgeState::new(rules);
        let mut out = Vec::new();
        for d in seq {
            let (s, v) = judge_update(rules, state, d);
            state = s;
            out.push(v);
        }
        (state, out)
    }

    fn decisions(v: &[Verdict]) -> Vec<Decision> {
        v.iter().map(|v| v.decision).collect()
    }

    #[test]
    fn bounds_checks() {
        assert_eq!(check(0.5, None, Some(0.5)), (Check::Pass, Some(0.5)));
        assert_eq!(check(0.51, None, Some(0.5)), (Check::Fail, Some(0.5)));
        assert_eq!(check(0.05, Some(0.1), Some(2.0)), (Check::Fail, Some(0.1)));
        assert_eq!(check(1.0, Some(0.1), None), (Check::Pass, Some(0.1)));
    }

    #[test]
    fn failed_checks_add_up_to_the_failure_limit() {
        let rules = rules();
        let slow = data(0.001, 0.6, 1.0);
        let (state, v) = run(&rules, &[ok(), slow.clone(), ok(), slow]);
        use Decision::*;
        assert_eq!(decisions(&v), vec![Continue, Continue, Continue, Rollback]);
        assert!(
            v[1].reasons[0].starts_with("failed check 1 of 2"),
            "{:?}",
            v[1].reasons
        );
        assert_eq!(
            v[3].reasons,
            vec![
                "2 failed checks reached the failure limit 2".to_string(),
                "latency: canary 0.600 p99 seconds is above the max 0.500".to_string(),
            ]
        );
        assert_eq!(v[3].metrics[1].status, MetricStatus::Fail);
        assert_eq!(v[3].metrics[1].evidence.kind, "threshold");
        assert_eq!(v[3].metrics[1].evidence.threshold, Some(0.5));
        // The baseline is shown, never compared.
        assert_eq!(v[0].metrics[1].baseline, Some(9.0));
        let JudgeState::Threshold(s) = state else {
            panic!("{state:?}")
        };
        assert_eq!((s.failed_checks, s.passes), (2, 2));
        // A value below `min` fails too.
        let (_, v) = run(&rules, &[data(0.001, 0.2, 0.05)]);
        assert!(v[0].reasons[1].contains("cpu: canary 0.0500 value is below the min 0.100"));
    }

    #[test]
    fn consecutive_errors_roll_back_and_reset() {
        let rules = rules();
        let err = with(
            ok(),
            0,
            Outcome::QueryError {
                message: "boom".into(),
            },
        );
        let timeout = with(ok(), 2, Outcome::Timeout);
        use Decision::*;
        let (_, v) = run(&rules, &[err.clone(), ok(), timeout.clone(), ok()]);
        assert_eq!(
            decisions(&v),
            vec![Inconclusive, Continue, Inconclusive, Continue]
        );
        assert_eq!(v[0].reasons[0], "error-rate: query error: boom");
        let (_, v) = run(&rules, &[err, timeout]);
        assert_eq!(decisions(&v), vec![Inconclusive, Rollback]);
        assert_eq!(
            v[1].reasons,
            vec![
                "query errors in 2 consecutive intervals reached the limit 2".to_string(),
                "cpu: query timed out".to_string()
            ]
        );
    }

    #[test]
    fn no_data_is_neither_pass_nor_fail() {
        let rules = rules();
        let err = with(ok(), 0, Outcome::Timeout);
        let none = with(ok(), 1, Outcome::NoData { arm: Arm::Canary });
        let empty = data(0.0, 0.2, f64::NAN);
        let idle = with(
            data(0.0, 0.2, 1.0),
            0,
            Outcome::Data {
                canary: ArmSample::pooled(Sample::Counts {
                    bad: 0.0,
                    total: 0.0,
                }),
                baseline: ArmSample::pooled(Sample::Counts {
                    bad: 0.0,
                    total: 9.0,
                }),
            },
        );
        use Decision::*;
        // No data neither resets the error streak nor adds to it.
        let (state, v) = run(&rules, &[err.clone(), none, empty, idle, err]);
        assert_eq!(
            decisions(&v),
            vec![
                Inconclusive,
                Inconclusive,
                Inconclusive,
                Inconclusive,
                Rollback
            ]
        );
        assert_eq!(v[1].metrics[1].status, MetricStatus::NoData);
        assert_eq!(v[3].metrics[0].status, MetricStatus::NoData);
        assert!(
            v[3].reasons[0].starts_with("error-rate: nothing to check"),
            "{:?}",
            v[3].reasons
        );
        let JudgeState::Threshold(s) = state else {
            panic!("{state:?}")
        };
        assert_eq!((s.failed_checks, s.passes, s.consecutive_errors), (0, 0, 2));
    }

    #[test]
    fn metrics_pass_after_min_passes_and_never_promote() {
        let rules = rules();
        let (_, v) = run(&rules, &[ok(), ok(), ok()]);
        assert!(v.iter().all(|v| v.decision == Decision::Continue));
        assert_eq!(v[0].metrics[0].status, MetricStatus::Continue);
        assert_eq!(v[1].metrics[0].status, MetricStatus::Pass);
        assert!(v[1].reasons[0].starts_with("every check passed (2 passing intervals, 2 needed"));
        // The rule's quantile replaces p99: p50 is 0.3 here, within 0.5; p99 (0.6) is not.
        let mut rules = rules;
        if let MetricKind::Histogram { quantile, .. } = &mut rules.metrics[1].kind {
            *quantile = Some(0.5);
        }
        let (_, v) = run(&rules, &[data(0.001, 0.6, 1.0)]);
        assert_eq!(v[0].metrics[1].canary, Some(0.3));
        assert_eq!(v[0].metrics[1].unit, "p50 seconds");
        assert_eq!(v[0].decision, Decision::Continue);
    }

    #[test]
    fn dry_run_metrics_are_not_counted() {
        let mut rules = rules();
        rules.metrics[0].dry_run = true;
        let bad = data(0.2, 0.2, 1.0);
        let (_, v) = run(&rules, &[bad.clone(), bad]);
        assert_eq!(v[1].metrics[0].status, MetricStatus::Fail);
        assert_eq!(decisions(&v), vec![Decision::Continue, Decision::Continue]);
    }

    #[test]
    fn state_round_trips_through_json() {
        let rules = rules();
        let (state, _) = run(
            &rules,
            &[ok(), data(0.5, 0.2, 1.0), with(ok(), 2, Outcome::Timeout)],
        );
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            json,
            r#"{"judge":"threshold","intervals":3,"failed_checks":1,"consecutive_errors":1,"passes":1}"#
        );
        let back: JudgeState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}
