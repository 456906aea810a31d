//! The default judge: anytime-valid sequential tests, one e-process per metric.
//!
//! A metric rolls the canary back the first time its e-value reaches `1/α_i`, where the α_i
//! split the rule set's budget α (weighted Bonferroni: critical metrics count twice, dry-run
//! metrics not at all), so the chance of any false rollback stays below `α` however many
//! intervals are looked at. See `JUDGE.md` for the formulas and sources.
//!
//! - `ratio`: the count test ([`super::count`]) on bad events, with the counts' dispersion
//!   estimated (bursts, extrapolated `increase()`) and one interval's evidence capped.
//! - `histogram`: the count test on slow requests (slower than a threshold fixed before
//!   testing: the rule's SLO value, or the bucket edge at the baseline's `threshold_quantile`
//!   in a warm-up interval that is then excluded), both arms read at a bucket edge they share
//!   (a clear error instead of a verdict when their layouts have none near the threshold).
//! - `gauge`: the paired log-ratio t-mixture ([`super::gauge`]).
//!
//! Promotion: early when every metric is confidently within its margin (its confidence
//! sequence's upper bound inside it), no metric's evidence of a regression rose in the
//! latest interval, and at least [`State::min_intervals`] intervals have been judged.
//!
//! Instance gate: when the canary's data has two or more instances, a rollback also needs a
//! majority of canary instances to show the regression: leaving out the worst minority (by their
//! own rates), the rest pooled must still be clearly worse than the baseline (e-value ≥ 10
//! against "worse by at most half the margin"). Otherwise
//! the metric is reported as an instance anomaly. The gate only removes rollbacks, so the α
//! bound holds.

use super::count::{CountTest, Counts, log_e_from_totals};
use super::gauge::{GaugeTest, log_ratio};
use super::histogram;
use super::quantile::QuantileTest;
use super::{
    ArmSample, Decision, Evidence, IntervalData, MetricStatus, MetricVerdict, Outcome, Sample,
    Verdict, fmt_num,
};
use crate::rules::{Direction, MetricKind, MetricRule, RuleSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The sequential judge's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Intervals seen.
    pub intervals: u32,
    /// No promotion before this many intervals (0: none). The strategy's minimum analysis
    /// time, in intervals; set with [`State::with_min_intervals`].
    #[serde(default)]
    pub min_intervals: u32,
    /// Per metric, by name.
    pub metrics: BTreeMap<String, MetricState>,
}

/// One metric's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetricState {
    /// Count test on bad events or slow requests.
    Count {
        /// The slow-request threshold in seconds (histograms; None while warming up).
        threshold: Option<f64>,
        /// The pooled test.
        test: CountTest,
        /// Per canary instance: cumulative (bad, total), for the instance gate.
        instances: BTreeMap<String, (f64, f64)>,
    },
    /// Quantile-margin test (`quantile:` set on a histogram).
    Quantile {
        /// The test.
        test: QuantileTest,
    },
    /// Paired log-ratio test.
    Gauge {
        /// The test.
        test: GaugeTest,
    },
}

/// Most instances tracked per metric (state size stays bounded).
const MAX_INSTANCES: usize = 16;

impl State {
    /// The initial state for a rule set.
    pub fn new(rules: &RuleSet) -> Self {
        let metrics = rules
            .metrics
            .iter()
            .map(|m| (m.name.clone(), MetricState::new(m)))
            .collect();
        State {
            intervals: 0,
            min_intervals: 0,
            metrics,
        }
    }

    /// The same state, refusing promotion before `n` intervals.
    pub fn with_min_intervals(mut self, n: u32) -> Self {
        self.min_intervals = n;
        self
    }
}

impl MetricState {
    fn new(rule: &MetricRule) -> Self {
        let margin = rule.max_increase.unwrap_or(0.5);
        match &rule.kind {
            MetricKind::Ratio { .. } => MetricState::Count {
                threshold: None,
                test: CountTest::new(theta0(rule)),
                instances: BTreeMap::new(),
            },
            MetricKind::Histogram {
                quantile: Some(p), ..
            } => MetricState::Quantile {
                test: QuantileTest::new(*p, margin_of(rule)),
            },
            MetricKind::Histogram { threshold, .. } => MetricState::Count {
                threshold: *threshold,
                test: CountTest::new(theta0(rule)),
                instances: BTreeMap::new(),
            },
            MetricKind::Gauge { slope, .. } => MetricState::Gauge {
                test: GaugeTest::new(gauge_margin(rule.direction, margin), *slope),
            },
        }
    }
}

/// The rate-ratio margin θ0 of a count metric. With `direction: decrease` the arms swap, so a
/// drop of `m` becomes a ratio of `1/(1−m)`.
fn theta0(rule: &MetricRule) -> f64 {
    let m = rule.max_increase.unwrap_or(0.5);
    match rule.direction {
        Direction::Increase => 1.0 + m,
        Direction::Decrease => 1.0 / (1.0 - m),
    }
}

/// The relative margin as a fraction, mirrored for `direction: decrease`.
fn margin_of(rule: &MetricRule) -> f64 {
    theta0(rule) - 1.0
}

fn gauge_margin(direction: Direction, m: f64) -> f64 {
    match direction {
        Direction::Increase => m,
        Direction::Decrease => 1.0 / (1.0 - m) - 1.0,
    }
}

/// One metric's share of the rule set's budget.
struct Ctx {
    /// The metric's level: its share of α.
    alpha: f64,
    /// Rollback threshold on the log e-value: ln(1/level).
    log_threshold: f64,
    share: Option<f64>,
}

/// A metric's share of the false-rollback budget (weighted Bonferroni): critical metrics, the
/// ones a release must never get past, count twice; dry-run metrics take none.
fn budget_weight(rule: &MetricRule) -> f64 {
    match (rule.dry_run, rule.critical) {
        (true, _) => 0.0,
        (false, true) => 2.0,
        (false, false) => 1.0,
    }
}

/// Advances the judge by one interval.
pub fn update(rules: &RuleSet, mut state: State, data: &IntervalData) -> (State, Verdict) {
    let total_weight: f64 = rules.metrics.iter().map(budget_weight).sum();
    let ctx_for = |rule: &MetricRule| {
        // Dry-run metrics are judged at the level of an ordinary metric, for reporting.
        let w = budget_weight(rule).max(1.0) / total_weight.max(1.0);
        let alpha = rules.alpha * w;
        Ctx {
            alpha,
            log_threshold: (1.0 / alpha).ln(),
            share: data.canary_share,
        }
    };
    state.intervals += 1;
    let mut verdicts = Vec::with_capacity(rules.metrics.len());
    for rule in &rules.metrics {
        let metric_state = state
            .metrics
            .entry(rule.name.clone())
            .or_insert_with(|| MetricState::new(rule));
        let outcome = data
            .observations
            .iter()
            .find(|o| o.metric == rule.name)
            .map(|o| &o.outcome);
        verdicts.push(judge_metric(rule, metric_state, outcome, &ctx_for(rule)));
    }
    let mut verdict = decide(verdicts);
    if verdict.decision == Decision::Promote && state.intervals < state.min_intervals {
        verdict.decision = Decision::Continue;
        verdict.reasons = vec![format!(
            "every metric is confidently within its margin, but promotion waits for the minimum analysis time ({} of {} intervals)",
            state.intervals, state.min_intervals
        )];
    }
    (state, verdict)
}

/// Feeds baseline data from before the canary started: it fixes the slow-request thresholds of
/// histogram metrics (from the baseline's `threshold_quantile`) so no canary interval has to be
/// spent warming up. Nothing is tested.
pub fn warm_up(rules: &RuleSet, mut state: State, data: &IntervalData) -> State {
    for rule in &rules.metrics {
        let MetricKind::Histogram {
            threshold_quantile, ..
        } = &rule.kind
        else {
            continue;
        };
        let Some(MetricState::Count { threshold, .. }) = state.metrics.get_mut(&rule.name) else {
            continue;
        };
        if threshold.is_some() {
            continue;
        }
        let baseline = data.observations.iter().find_map(|o| match &o.outcome {
            Outcome::Data { canary, baseline } if o.metric == rule.name => {
                Some(match rule.direction {
                    Direction::Increase => baseline,
                    Direction::Decrease => canary,
                })
            }
            _ => None,
        });
        if let Some(b) = baseline.and_then(|b| buckets(&b.pooled))
            && histogram::total(b) >= 20.0
        {
            *threshold = histogram::edge_at_quantile(b, *threshold_quantile);
        }
    }
    state
}

/// Combines the metrics' statuses into the decision.
pub fn decide(metrics: Vec<MetricVerdict>) -> Verdict {
    let acted: Vec<&MetricVerdict> = metrics.iter().filter(|m| !m.dry_run).collect();
    let failing: Vec<String> = acted
        .iter()
        .filter(|m| m.status == MetricStatus::Fail)
        .map(|m| m.reason.clone())
        .collect();
    let missing: Vec<String> = acted
        .iter()
        .filter(|m| matches!(m.status, MetricStatus::NoData | MetricStatus::Error))
        .map(|m| m.reason.clone())
        .collect();
    let (decision, reasons) = if !failing.is_empty() {
        (Decision::Rollback, failing)
    } else if !missing.is_empty() {
        (Decision::Inconclusive, missing)
    } else if acted.iter().all(|m| m.status == MetricStatus::Pass) {
        (
            Decision::Promote,
            vec!["every metric is confidently within its margin".to_string()],
        )
    } else {
        let open = acted
            .iter()
            .filter(|m| m.status != MetricStatus::Pass)
            .map(|m| m.reason.clone())
            .collect();
        (Decision::Continue, open)
    };
    Verdict {
        decision,
        metrics,
        reasons,
    }
}

fn base_verdict(rule: &MetricRule, status: MetricStatus, reason: String) -> MetricVerdict {
    MetricVerdict {
        name: rule.name.clone(),
        status,
        canary: None,
        baseline: None,
        unit: String::new(),
        estimate: None,
        lower: None,
        upper: None,
        margin: None,
        evidence: Evidence::default(),
        reason,
        critical: rule.critical,
        dry_run: rule.dry_run,
    }
}

fn judge_metric(
    rule: &MetricRule,
    state: &mut MetricState,
    outcome: Option<&Outcome>,
    ctx: &Ctx,
) -> MetricVerdict {
    let (canary, baseline) = match outcome {
        None => {
            return base_verdict(
                rule,
                MetricStatus::Error,
                format!("{}: no observation was made", rule.name),
            );
        }
        Some(Outcome::NoData { arm }) => {
            return base_verdict(
                rule,
                MetricStatus::NoData,
                format!(
                    "{}: no data for the {arm} (is it receiving traffic?)",
                    rule.name
                ),
            );
        }
        Some(Outcome::QueryError { message }) => {
            return base_verdict(
                rule,
                MetricStatus::Error,
                format!("{}: query error: {message}", rule.name),
            );
        }
        Some(Outcome::Timeout) => {
            return base_verdict(
                rule,
                MetricStatus::Error,
                format!("{}: query timed out", rule.name),
            );
        }
        Some(Outcome::Data { canary, baseline }) => (canary, baseline),
    };
    // With `direction: decrease` the baseline plays the canary's part.
    let (worse, better) = match rule.direction {
        Direction::Increase => (canary, baseline),
        Direction::Decrease => (baseline, canary),
    };
    let share = ctx.share.map(|s| match rule.direction {
        Direction::Increase => s,
        Direction::Decrease => 1.0 - s,
    });
    let mut verdict = match (state, &rule.kind) {
        (
            MetricState::Count {
                threshold,
                test,
                instances,
            },
            MetricKind::Histogram {
                threshold_quantile, ..
            },
        ) => judge_slow(
            rule,
            SlowState {
                threshold,
                test,
                instances,
            },
            *threshold_quantile,
            (worse, better),
            share,
            ctx,
        ),
        (
            MetricState::Count {
                test, instances, ..
            },
            _,
        ) => judge_counts(rule, test, instances, (worse, better), share, ctx),
        (MetricState::Quantile { test }, _) => judge_quantile(rule, test, (worse, better), ctx),
        (MetricState::Gauge { test }, _) => judge_gauge(rule, test, (worse, better), ctx),
    };
    if rule.direction == Direction::Decrease {
        // Values are shown per arm as they are; the estimate stays "worse/better".
        std::mem::swap(&mut verdict.canary, &mut verdict.baseline);
    }
    verdict
}

fn counts(sample: &Sample) -> Option<(f64, f64)> {
    match sample {
        Sample::Counts { bad, total } => Some((*bad, *total)),
        _ => None,
    }
}

fn wrong_shape(rule: &MetricRule) -> MetricVerdict {
    base_verdict(
        rule,
        MetricStatus::Error,
        format!(
            "{}: the query returned data of the wrong shape for kind {}",
            rule.name,
            rule.kind.name()
        ),
    )
}

/// Per-instance `(bad, total)` of an arm, from counts (ratio metrics).
fn instance_counts(arm: &ArmSample) -> Vec<(String, f64, f64)> {
    arm.instances
        .iter()
        .filter_map(|(name, s)| counts(s).map(|(b, t)| (name.clone(), b, t)))
        .collect()
}

fn pairs(per_instance: &[(String, f64, f64)]) -> Vec<(f64, f64)> {
    per_instance.iter().map(|i| (i.1, i.2)).collect()
}

fn judge_counts(
    rule: &MetricRule,
    test: &mut CountTest,
    instances: &mut BTreeMap<String, (f64, f64)>,
    (worse, better): (&ArmSample, &ArmSample),
    share: Option<f64>,
    ctx: &Ctx,
) -> MetricVerdict {
    let (Some((bad_c, total_c)), Some((bad_b, total_b))) =
        (counts(&worse.pooled), counts(&better.pooled))
    else {
        return wrong_shape(rule);
    };
    let per_instance = instance_counts(worse);
    test.add(Counts {
        canary: (bad_c, total_c),
        baseline: (bad_b, total_b),
        canary_instances: &pairs(&per_instance),
        baseline_instances: &pairs(&instance_counts(better)),
        share,
    });
    update_instances(instances, &per_instance);
    let gate = gate(instances, (test.bad_b, test.total_b), test.theta0);
    let values = format!(
        "canary {} vs baseline {} bad",
        pct(ratio(bad_c, total_c)),
        pct(ratio(bad_b, total_b))
    );
    let mut v = count_verdict(rule, test, gate, ctx, share, &values);
    v.unit = "bad ratio".into();
    v.canary = ratio(bad_c, total_c);
    v.baseline = ratio(bad_b, total_b);
    v
}

/// Evidence a gated majority needs (against "not worse at all").
const GATE_LOG_THRESHOLD: f64 = std::f64::consts::LN_10;

/// Adds one interval's per-instance counts.
fn update_instances(
    counts: &mut BTreeMap<String, (f64, f64)>,
    per_instance: &[(String, f64, f64)],
) {
    for (name, bad, total) in per_instance {
        if !counts.contains_key(name) && counts.len() >= MAX_INSTANCES {
            continue;
        }
        let c = counts.entry(name.clone()).or_insert((0.0, 0.0));
        c.0 += bad.max(0.0).round();
        c.1 += total.max(0.0);
    }
}

/// The instance gate's finding.
struct Gate {
    /// The majority shows the regression: the rollback may go ahead.
    passes: bool,
    /// The worst minority left out.
    excluded: Vec<String>,
    /// Instances tracked.
    tracked: usize,
}

/// Leaves out the worst minority of canary instances and asks whether the rest, pooled, is
/// still clearly worse than the baseline: beyond half the margin (`√θ0` on the log scale), so
/// the small differences every host has do not count. None with fewer than two instances.
fn gate(
    counts: &BTreeMap<String, (f64, f64)>,
    (bad_b, total_b): (f64, f64),
    theta0: f64,
) -> Option<Gate> {
    if counts.len() < 2 {
        return None;
    }
    let mut ranked: Vec<(&String, f64, f64)> = counts.iter().map(|(n, c)| (n, c.0, c.1)).collect();
    let rate = |b: f64, t: f64| if t > 0.0 { b / t } else { 0.0 };
    ranked.sort_by(|a, b| rate(b.1, b.2).total_cmp(&rate(a.1, a.2)).then(a.0.cmp(b.0)));
    let out = (ranked.len() - 1) / 2;
    let (bad, total) = ranked[out..]
        .iter()
        .fold((0.0, 0.0), |(b, t), r| (b + r.1, t + r.2));
    let log_e = log_e_from_totals(bad, total, bad_b, total_b, theta0.sqrt());
    Some(Gate {
        passes: log_e >= GATE_LOG_THRESHOLD,
        excluded: ranked[..out].iter().map(|r| r.0.clone()).collect(),
        tracked: ranked.len(),
    })
}

fn ratio(bad: f64, total: f64) -> Option<f64> {
    (total > 0.0).then(|| bad / total)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{}%", fmt_num(100.0 * v)))
}

fn times(v: Option<f64>) -> String {
    match v {
        None => "∞".into(),
        // The top of the count test's grid: the baseline had (almost) no bad events.
        Some(v) if v >= 255.0 => "≥×256".into(),
        Some(v) => format!("×{}", fmt_num(v)),
    }
}

/// The effect with its confidence sequence: `×1.28 [×0.35, ×4.9]`.
fn effect(estimate: Option<f64>, lower: Option<f64>, upper: Option<f64>) -> String {
    format!(
        "{} [{}, {}]",
        times(estimate),
        lower.map_or("×0".into(), |l| times(Some(l))),
        times(upper)
    )
}

/// Status and evidence of a count test (shared by ratio and slow-request metrics).
/// `values` says what the arms showed ("canary 12% vs baseline 0.2% errors").
fn count_verdict(
    rule: &MetricRule,
    test: &CountTest,
    gate: Option<Gate>,
    ctx: &Ctx,
    share: Option<f64>,
    values: &str,
) -> MetricVerdict {
    let s = test.summary(ctx.alpha);
    let rejects = s.log_e >= ctx.log_threshold;
    let within = test.log_e_within() >= ctx.log_threshold;
    let evidence = Evidence {
        kind: "e_value".into(),
        value: Some(s.log_e.exp()),
        threshold: Some(ctx.log_threshold.exp()),
        p_value: Some((-test.max_log_e).exp().min(1.0)),
        samples: (test.total_c, test.total_b),
    };
    let margin = fmt_num(test.theta0);
    let effect = effect(s.estimate, s.lower, s.upper);
    let name = &rule.name;
    let (status, reason) = if rejects {
        let e = format!(
            "e-value {} ≥ {}",
            fmt_num(s.log_e.exp()),
            fmt_num(ctx.log_threshold.exp())
        );
        match gate {
            Some(g) if !g.passes => (
                MetricStatus::InstanceAnomaly,
                format!(
                    "{name}: {values}; the pooled canary is beyond the ×{margin} margin ({effect}, {e}) but without {} the other {} of {} canary instances are not clearly worse: an instance anomaly, not a rollback",
                    g.excluded.join(", "),
                    g.tracked - g.excluded.len(),
                    g.tracked
                ),
            ),
            _ => (
                MetricStatus::Fail,
                format!(
                    "{name}: {values}; canary/baseline {effect} is beyond the ×{margin} margin ({e})"
                ),
            ),
        }
    } else if within && test.evidence_rising() {
        (
            MetricStatus::Continue,
            format!(
                "{name}: {values}; within the ×{margin} margin ({effect}) but the evidence of a regression rose this interval: not promoting yet"
            ),
        )
    } else if within {
        (
            MetricStatus::Pass,
            format!("{name}: {values}; within the ×{margin} margin ({effect})"),
        )
    } else {
        let share = share.unwrap_or_else(|| {
            let t = test.total_c + test.total_b;
            if t > 0.0 { test.total_c / t } else { 0.5 }
        });
        let needed_events = test.bad_events_needed(ctx.alpha, share.clamp(0.01, 0.99));
        let rate = (test.bad_c + test.bad_b) / (test.total_c + test.total_b).max(1.0);
        let reason = if s.estimate.is_some_and(|e| e > test.theta0) {
            format!(
                "insufficient evidence for {name}: the canary looks worse ({effect}) but not yet beyond doubt ({values})"
            )
        } else if rate > 0.0 {
            format!(
                "insufficient evidence for {name}: about {} more requests needed to show it within the ×{margin} margin ({values}; {effect})",
                fmt_num((needed_events / rate).ceil())
            )
        } else {
            format!("insufficient evidence for {name}: no bad events in either arm yet ({values})")
        };
        let reason = if test.phi > 1.05 {
            format!(
                "{reason}; counts vary ×{} more than independent events would (bursts or extrapolated increase()), so they weigh less",
                fmt_num(test.phi)
            )
        } else {
            reason
        };
        (MetricStatus::Continue, reason)
    };
    MetricVerdict {
        estimate: s.estimate,
        lower: s.lower,
        upper: s.upper,
        margin: Some(test.theta0),
        evidence,
        ..base_verdict(rule, status, reason)
    }
}

struct SlowState<'a> {
    threshold: &'a mut Option<f64>,
    test: &'a mut CountTest,
    instances: &'a mut BTreeMap<String, (f64, f64)>,
}

fn buckets(sample: &Sample) -> Option<&[(f64, f64)]> {
    match sample {
        Sample::Buckets { buckets } => Some(buckets),
        _ => None,
    }
}

/// The warm-up verdict: fixes the slow-request threshold from the baseline.
fn slow_warm_up(
    rule: &MetricRule,
    threshold: &mut Option<f64>,
    better: &[(f64, f64)],
    (q, label): (f64, &str),
    quantiles: (Option<f64>, Option<f64>),
) -> MetricVerdict {
    match histogram::edge_at_quantile(better, q) {
        Some(edge) => {
            *threshold = Some(edge);
            MetricVerdict {
                canary: quantiles.0,
                baseline: quantiles.1,
                unit: format!("{label} seconds"),
                ..base_verdict(
                    rule,
                    MetricStatus::WarmingUp,
                    format!(
                        "{}: warm-up: slow-request threshold set to {}s (baseline {label} {}s); this interval is not tested",
                        rule.name,
                        fmt_num(edge),
                        quantiles.1.map_or("-".into(), fmt_num)
                    ),
                )
            }
        }
        None => base_verdict(
            rule,
            MetricStatus::NoData,
            format!(
                "{}: warm-up: the baseline served no requests yet",
                rule.name
            ),
        ),
    }
}

/// Slow and all requests per instance of an arm, above `x`.
fn instance_slow(arm: &ArmSample, x: f64) -> Vec<(String, f64, f64)> {
    arm.instances
        .iter()
        .filter_map(|(name, s)| {
            buckets(s).map(|b| {
                (
                    name.clone(),
                    histogram::count_above(b, x),
                    histogram::total(b),
                )
            })
        })
        .collect()
}

fn judge_slow(
    rule: &MetricRule,
    st: SlowState<'_>,
    threshold_quantile: f64,
    (worse, better): (&ArmSample, &ArmSample),
    share: Option<f64>,
    ctx: &Ctx,
) -> MetricVerdict {
    let (Some(bw), Some(bb)) = (buckets(&worse.pooled), buckets(&better.pooled)) else {
        return wrong_shape(rule);
    };
    let q = threshold_quantile;
    let label = format!("p{}", (100.0 * q * 1000.0).round() / 1000.0);
    let quantiles = (histogram::quantile(bw, q), histogram::quantile(bb, q));
    let Some(threshold) = *st.threshold else {
        // Warm-up: fix the threshold from the baseline before testing anything.
        return slow_warm_up(rule, st.threshold, bb, (q, &label), quantiles);
    };
    // Both arms are read at the same bucket edge, even when the new release changed its
    // bucket layout; without a common edge near the threshold there is no fair comparison.
    let x = match histogram::common_edge(bw, bb, threshold) {
        Ok(x) => x,
        Err(e) => {
            return base_verdict(rule, MetricStatus::Error, format!("{}: {e}", rule.name));
        }
    };
    let (slow_c, total_c) = (histogram::count_above(bw, x), histogram::total(bw));
    let (slow_b, total_b) = (histogram::count_above(bb, x), histogram::total(bb));
    let per_instance = instance_slow(worse, x);
    st.test.add(Counts {
        canary: (slow_c, total_c),
        baseline: (slow_b, total_b),
        canary_instances: &pairs(&per_instance),
        baseline_instances: &pairs(&instance_slow(better, x)),
        share,
    });
    update_instances(st.instances, &per_instance);
    let gate = gate(
        st.instances,
        (st.test.bad_b, st.test.total_b),
        st.test.theta0,
    );
    let moved = if (x - threshold).abs() > 1e-9 * threshold.abs() {
        format!(
            " (the arms' bucket layouts differ: compared at their common edge {}s instead of {}s)",
            fmt_num(x),
            fmt_num(threshold)
        )
    } else {
        String::new()
    };
    let values = format!(
        "canary {} vs baseline {} of requests slower than {}s{moved} ({label} {}s vs {}s)",
        pct(ratio(slow_c, total_c)),
        pct(ratio(slow_b, total_b)),
        fmt_num(x),
        quantiles.0.map_or("-".into(), fmt_num),
        quantiles.1.map_or("-".into(), fmt_num),
    );
    let mut v = count_verdict(rule, st.test, gate, ctx, share, &values);
    v.unit = format!("share slower than {}s", fmt_num(x));
    v.canary = ratio(slow_c, total_c);
    v.baseline = ratio(slow_b, total_b);
    v
}

fn judge_quantile(
    rule: &MetricRule,
    test: &mut QuantileTest,
    (worse, better): (&ArmSample, &ArmSample),
    ctx: &Ctx,
) -> MetricVerdict {
    let (Some(bw), Some(bb)) = (buckets(&worse.pooled), buckets(&better.pooled)) else {
        return wrong_shape(rule);
    };
    test.update(bw, bb, ctx.alpha);
    let s = test.summary(ctx.alpha);
    let label = format!("p{}", (100.0 * test.p * 1000.0).round() / 1000.0);
    let (c, b) = (
        histogram::quantile(bw, test.p),
        histogram::quantile(bb, test.p),
    );
    let values = format!(
        "canary {label} {}s vs baseline {}s",
        c.map_or("-".into(), fmt_num),
        b.map_or("-".into(), fmt_num)
    );
    let bounds = effect(s.estimate, s.lower, s.upper);
    let margin = fmt_num(test.ratio);
    let name = &rule.name;
    let (status, reason) = if s.rejects {
        (
            MetricStatus::Fail,
            format!(
                "{name}: {values}; canary/baseline {label} {bounds} is beyond the ×{margin} margin"
            ),
        )
    } else if s.within {
        (
            MetricStatus::Pass,
            format!("{name}: {values}; within the ×{margin} margin ({bounds})"),
        )
    } else {
        (
            MetricStatus::Continue,
            format!("insufficient evidence for {name}: more requests needed ({values}; {bounds})"),
        )
    };
    MetricVerdict {
        canary: c,
        baseline: b,
        unit: format!("{label} seconds"),
        estimate: s.estimate,
        lower: s.lower,
        upper: s.upper,
        margin: Some(test.ratio),
        evidence: Evidence {
            kind: "bounds".into(),
            value: s.lower,
            threshold: Some(test.ratio),
            p_value: None,
            samples: (test.canary.total, test.baseline.total),
        },
        ..base_verdict(rule, status, reason)
    }
}

/// The mean of a gauge over the canary's instances without the worst (highest) minority.
fn majority_value(instances: &[(String, Sample)]) -> Option<f64> {
    let mut values: Vec<f64> = instances
        .iter()
        .filter_map(|(_, s)| match s {
            Sample::Gauge { value } if value.is_finite() => Some(*value),
            _ => None,
        })
        .collect();
    if values.len() < 2 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let keep = values.len() - (values.len() - 1) / 2;
    Some(values[..keep].iter().sum::<f64>() / keep as f64)
}

fn judge_gauge(
    rule: &MetricRule,
    test: &mut GaugeTest,
    (worse, better): (&ArmSample, &ArmSample),
    ctx: &Ctx,
) -> MetricVerdict {
    let (Sample::Gauge { value: c }, Sample::Gauge { value: b }) = (&worse.pooled, &better.pooled)
    else {
        return wrong_shape(rule);
    };
    let y = match log_ratio(*c, *b) {
        Ok(y) => y,
        Err(e) => {
            // No ratio this interval (a baseline of 0, a negative value, NaN): not tested, never
            // a rollback; the analysis goes on.
            return MetricVerdict {
                canary: c.is_finite().then_some(*c),
                baseline: b.is_finite().then_some(*b),
                unit: "value".into(),
                ..base_verdict(
                    rule,
                    MetricStatus::Continue,
                    format!("{}: this interval is not tested: {e}", rule.name),
                )
            };
        }
    };
    test.update(y);
    if let Some(majority) = majority_value(&worse.instances)
        && let Ok(y) = log_ratio(majority, *b)
    {
        test.update_majority(y);
    }
    let s = test.summary(ctx.alpha);
    let level_alpha = test.level_alpha(ctx.alpha);
    let margin = test.log_margin.exp();
    let evidence = Evidence {
        kind: "e_value".into(),
        value: Some(s.log_e.exp()),
        threshold: Some(1.0 / level_alpha),
        p_value: Some((-test.max_log_e).exp().min(1.0)),
        samples: (test.level.n as f64, test.level.n as f64),
    };
    let values = format!("canary {} vs baseline {}", fmt_num(*c), fmt_num(*b));
    let (status, reason) = gauge_status(rule, test, &s, &values);
    MetricVerdict {
        canary: Some(*c),
        baseline: Some(*b),
        unit: "value".into(),
        estimate: s.estimate,
        lower: s.lower,
        upper: s.upper,
        margin: Some(margin),
        evidence,
        ..base_verdict(rule, status, reason)
    }
}

/// A gauge metric's status and reason from its test's summary.
fn gauge_status(
    rule: &MetricRule,
    test: &GaugeTest,
    s: &super::gauge::GaugeSummary,
    values: &str,
) -> (MetricStatus, String) {
    let name = &rule.name;
    let margin = fmt_num(test.log_margin.exp());
    let bounds = effect(s.estimate, s.lower, s.upper);
    if s.level_rejects && test.gate() == Some(false) {
        (
            MetricStatus::InstanceAnomaly,
            format!(
                "{name}: {values}; the canary is beyond the ×{margin} margin ({bounds}) but its majority of instances is not: an instance anomaly, not a rollback"
            ),
        )
    } else if s.level_rejects {
        (
            MetricStatus::Fail,
            format!("{name}: {values}; canary/baseline {bounds} is beyond the ×{margin} margin"),
        )
    } else if s.slope_rejects {
        let (slope, lo) = s.slope.unwrap_or((1.0, 1.0));
        (
            MetricStatus::Fail,
            format!(
                "{name}: {values}; canary/baseline grows {} per interval (at least {}), beyond the allowed {}: a leak",
                times(Some(slope)),
                times(Some(lo)),
                times(test.log_slope.map(f64::exp))
            ),
        )
    } else if test.level.n < 2 {
        (
            MetricStatus::Continue,
            format!(
                "insufficient evidence for {name}: one interval shows no noise level yet ({values})"
            ),
        )
    } else if s.level_within && !s.slope_within {
        (
            MetricStatus::Continue,
            format!(
                "insufficient evidence for {name}: the slope is not bounded yet ({values}; {bounds})"
            ),
        )
    } else if s.level_within && test.evidence_rising() {
        (
            MetricStatus::Continue,
            format!(
                "{name}: {values}; within the ×{margin} margin ({bounds}) but the evidence of a regression rose this interval: not promoting yet"
            ),
        )
    } else if s.level_within {
        (
            MetricStatus::Pass,
            format!("{name}: {values}; within the ×{margin} margin ({bounds})"),
        )
    } else {
        (
            MetricStatus::Continue,
            format!("insufficient evidence for {name}: more intervals needed ({values}; {bounds})"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{JudgeState, Observation, update as judge_update};
    use crate::rules::parse_rule_set;

    fn rules() -> RuleSet {
        parse_rule_set(
            "t.yaml",
            r#"
name: t
metrics:
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(x{ {{selector}}, code="500" }[{{window}}]))'
    total: 'sum(increase(x{ {{selector}} }[{{window}}]))'
    max_increase: 50%
    critical: true
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(h_bucket{ {{selector}} }[{{window}}]))'
    max_increase: 50%
  - name: cpu
    kind: gauge
    query: 'sum(rate(cpu{ {{selector}} }[{{window}}]))'
    max_increase: 50%
"#,
        )
        .unwrap()
    }

    fn hist(n: f64, slow_share: f64) -> Sample {
        Sample::Buckets {
            buckets: vec![
                (0.1, n * 0.5),
                (0.2, n * (1.0 - slow_share)),
                (0.4, n * (1.0 - slow_share / 4.0)),
                (f64::INFINITY, n),
            ],
        }
    }

    fn interval(index: u32, err_c: f64, slow_c: f64, cpu_c: f64) -> IntervalData {
        let arm = |s: Sample| ArmSample::pooled(s);
        let obs = |metric: &str, c: Sample, b: Sample| Observation {
            metric: metric.into(),
            outcome: Outcome::Data {
                canary: arm(c),
                baseline: arm(b),
            },
        };
        IntervalData {
            index,
            canary_share: None,
            observations: vec![
                obs(
                    "error-rate",
                    Sample::Counts {
                        bad: 1000.0 * err_c,
                        total: 1000.0,
                    },
                    Sample::Counts {
                        bad: 10.0,
                        total: 1000.0,
                    },
                ),
                obs("latency", hist(1000.0, slow_c), hist(1000.0, 0.05)),
                obs(
                    "cpu",
                    Sample::Gauge { value: cpu_c },
                    Sample::Gauge { value: 1.0 },
                ),
            ],
        }
    }

    #[test]
    fn a_faulty_canary_is_rolled_back_with_reasons() {
        let rules = rules();
        let mut state = JudgeState::new(&rules);
        let mut decisions = Vec::new();
        for i in 1..=3 {
            let (s, v) = judge_update(&rules, state, &interval(i, 0.10, 0.30, 1.0));
            state = s;
            decisions.push(v);
        }
        let last = decisions.last().unwrap();
        assert_eq!(last.decision, Decision::Rollback, "{:?}", last.reasons);
        assert!(
            last.reasons
                .iter()
                .any(|r| r.starts_with("error-rate: canary 10.0% vs baseline 1.00%")),
            "{:?}",
            last.reasons
        );
        // The first interval already rejects on errors; latency warms up first.
        assert_eq!(decisions[0].decision, Decision::Rollback);
        assert_eq!(decisions[0].metrics[1].status, MetricStatus::WarmingUp);
    }

    #[test]
    fn a_slow_canary_is_caught_after_warm_up() {
        let rules = rules();
        let mut state = JudgeState::new(&rules);
        let mut seen = Vec::new();
        for i in 1..=4 {
            let (s, v) = judge_update(&rules, state, &interval(i, 0.01, 0.30, 1.0));
            state = s;
            seen.push(v.metrics[1].status);
        }
        assert_eq!(seen[0], MetricStatus::WarmingUp);
        assert!(seen.contains(&MetricStatus::Fail), "{seen:?}");
    }

    #[test]
    fn missing_data_is_inconclusive_not_a_failure() {
        let rules = rules();
        let state = JudgeState::new(&rules);
        let mut data = interval(1, 0.01, 0.05, 1.0);
        data.observations[0].outcome = Outcome::QueryError {
            message: "connection refused".into(),
        };
        data.observations[1].outcome = Outcome::NoData {
            arm: super::super::Arm::Canary,
        };
        let (_, v) = judge_update(&rules, state, &data);
        assert_eq!(v.decision, Decision::Inconclusive);
        assert_eq!(v.metrics[0].status, MetricStatus::Error);
        assert_eq!(v.metrics[1].status, MetricStatus::NoData);
        assert!(v.reasons[0].contains("query error: connection refused"));
    }

    #[test]
    fn dry_run_metrics_never_act() {
        let mut rules = rules();
        rules.metrics[0].dry_run = true;
        let state = JudgeState::new(&rules);
        let (_, v) = judge_update(&rules, state, &interval(1, 0.5, 0.05, 1.0));
        assert_eq!(v.metrics[0].status, MetricStatus::Fail);
        assert_ne!(v.decision, Decision::Rollback);
    }

    #[test]
    fn state_round_trips_through_json() {
        let rules = rules();
        let (state, _) = judge_update(
            &rules,
            JudgeState::new(&rules),
            &interval(1, 0.01, 0.05, 1.0),
        );
        let json = serde_json::to_string(&state).unwrap();
        let back: JudgeState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}
