//! `canaryd backtest`: replays a past window from Prometheus through the judge, interval by
//! interval, as the daemon would have judged a canary over it. No daemon, no traffic change.
//!
//! The window `[start, end]` is cut into `n = ⌊(end − start) / interval⌋` intervals; interval
//! `i` covers `(start + (i−1)·interval, start + i·interval]`. As in the daemon, the interval
//! before `start` warms the judge up on the baseline (fixing histogram thresholds) and is not
//! judged. All intervals are fetched at once: one range query per template and arm over the
//! whole window, with the interval as the step ([`crate::metrics::observe`]).
//!
//! The [`Replay`] (also used by `rules test`) stops at the first decisive verdict, like the
//! daemon at its last analysis step:
//! - `rollback` or `promote` from the judge: that is the decision, at that interval (no
//!   early promotion before [`DEFAULT_MIN_INTERVALS`] intervals, the minimum analysis time);
//! - `failure_limit` consecutive inconclusive intervals (no data, query errors): the
//!   decision is `inconclusive`, ended by the fail-safe (the daemon would return traffic to
//!   the baseline and fail the canary; in a backtest a gap in the data is not the canary's
//!   fault);
//! - the window ends first: the window plays `max_duration`. If the last interval found no
//!   regression (`continue`), the decision is `promote` with `decided_at_interval: null`, as
//!   the daemon promotes at `max_duration`; if it was inconclusive, `inconclusive`.

use crate::judge::{
    self, Decision, Evidence, IntervalData, JudgeState, MetricStatus, MetricVerdict, Verdict,
    fmt_num,
};
use crate::metrics::{self, ArmSelectors, MetricSource};
use crate::rules::{RuleSet, RuleSource};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// The daemon's default number of consecutive unusable intervals before the fail-safe.
pub const DEFAULT_FAILURE_LIMIT: u32 = 5;
/// No early promotion before this many intervals in a backtest: the minimum analysis time
/// (10 intervals, e.g. 10 minutes at 1 m), so a regression that starts late in the window is
/// still seen.
pub const DEFAULT_MIN_INTERVALS: u32 = 10;
/// Most evaluation times per range query (Prometheus refuses more than 11,000 points).
const MAX_POINTS_PER_QUERY: usize = 10_000;

/// How a replay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The judge decided (rollback or promote).
    Verdict,
    /// Too many consecutive inconclusive intervals.
    FailSafe,
    /// The window ended without a decision (it plays `max_duration`).
    WindowEnd,
    /// There was nothing to replay.
    NoIntervals,
}

/// The outcome of a replay.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conclusion {
    /// `promote`, `rollback` or `inconclusive`.
    pub decision: Decision,
    /// The 1-based interval that decided, or None when the window ended first.
    pub decided_at_interval: Option<u32>,
    /// How it ended.
    pub ended_by: EndedBy,
    /// Why, one line each.
    pub reasons: Vec<String>,
}

/// One replayed interval.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalReport {
    /// 1-based.
    pub index: u32,
    /// The window it covers, when replayed from real time.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The judge's verdict.
    pub verdict: Verdict,
    /// Judged after the decision (`--full`): shown, not acted on.
    pub after_decision: bool,
}

/// Runs the judge over intervals and decides as the daemon would (see the module doc).
pub struct Replay<'r> {
    rules: &'r RuleSet,
    state: Option<JudgeState>,
    failure_limit: u32,
    streak: u32,
    full: bool,
    intervals: Vec<IntervalReport>,
    decided: Option<Conclusion>,
    judge_time: Duration,
}

impl<'r> Replay<'r> {
    /// A replay of `rules`; with `full`, intervals after the decision are judged too.
    pub fn new(rules: &'r RuleSet, failure_limit: u32, full: bool) -> Self {
        Replay {
            rules,
            state: Some(JudgeState::new(rules)),
            failure_limit: failure_limit.max(1),
            streak: 0,
            full,
            intervals: Vec::new(),
            decided: None,
            judge_time: Duration::ZERO,
        }
    }

    /// The same replay, refusing early promotion before `n` intervals.
    pub fn with_min_intervals(mut self, n: u32) -> Self {
        self.state = self.state.map(|s| s.with_min_intervals(n));
        self
    }

    /// Feeds the baseline's interval before the canary (no verdict).
    pub fn warm_up(&mut self, data: &IntervalData) {
        let started = Instant::now();
        let state = self.state.take().expect("state is always put back");
        self.state = Some(judge::warm_up(self.rules, state, data));
        self.judge_time += started.elapsed();
    }

    /// Whether more intervals should be judged.
    pub fn wants_more(&self) -> bool {
        self.decided.is_none() || self.full
    }

    /// Judges one interval.
    pub fn step(&mut self, data: &IntervalData, window: Option<(DateTime<Utc>, DateTime<Utc>)>) {
        let started = Instant::now();
        let state = self.state.take().expect("state is always put back");
        let (state, verdict) = judge::update(self.rules, state, data);
        self.state = Some(state);
        self.judge_time += started.elapsed();
        let after_decision = self.decided.is_some();
        if !after_decision {
            self.decide(data.index, &verdict);
        }
        self.intervals.push(IntervalReport {
            index: data.index,
            window,
            verdict,
            after_decision,
        });
    }

    fn decide(&mut self, index: u32, verdict: &Verdict) {
        match verdict.decision {
            Decision::Rollback | Decision::Promote => {
                self.decided = Some(Conclusion {
                    decision: verdict.decision,
                    decided_at_interval: Some(index),
                    ended_by: EndedBy::Verdict,
                    reasons: verdict.reasons.clone(),
                });
            }
            Decision::Inconclusive => {
                self.streak += 1;
                if self.streak >= self.failure_limit {
                    let mut reasons = vec![format!(
                        "no usable analysis for {} consecutive intervals: the daemon's fail-safe would end the canary here",
                        self.streak
                    )];
                    reasons.extend(verdict.reasons.iter().cloned());
                    self.decided = Some(Conclusion {
                        decision: Decision::Inconclusive,
                        decided_at_interval: Some(index),
                        ended_by: EndedBy::FailSafe,
                        reasons,
                    });
                }
            }
            Decision::Continue => self.streak = 0,
        }
    }

    /// Time spent in the judge.
    pub fn judge_time(&self) -> Duration {
        self.judge_time
    }

    /// The intervals and the conclusion.
    pub fn finish(self) -> (Vec<IntervalReport>, Conclusion) {
        let conclusion = self.decided.clone().unwrap_or_else(|| self.window_end());
        (self.intervals, conclusion)
    }

    fn window_end(&self) -> Conclusion {
        let Some(last) = self.intervals.last() else {
            return Conclusion {
                decision: Decision::Inconclusive,
                decided_at_interval: None,
                ended_by: EndedBy::NoIntervals,
                reasons: vec!["no interval to judge".into()],
            };
        };
        let n = self.intervals.len();
        match last.verdict.decision {
            Decision::Inconclusive => Conclusion {
                decision: Decision::Inconclusive,
                decided_at_interval: None,
                ended_by: EndedBy::WindowEnd,
                reasons: last.verdict.reasons.clone(),
            },
            _ => {
                let mut reasons = vec![format!(
                    "the window ended after {n} interval(s) without a regression: promoted as at max_duration"
                )];
                reasons.extend(last.verdict.reasons.iter().cloned());
                Conclusion {
                    decision: Decision::Promote,
                    decided_at_interval: None,
                    ended_by: EndedBy::WindowEnd,
                    reasons,
                }
            }
        }
    }
}

/// What to replay.
pub struct BacktestOptions<'a> {
    /// The rule set and its source (name, path, version).
    pub rules: (&'a RuleSource, &'a RuleSet),
    /// Both arms' label matchers.
    pub selectors: ArmSelectors,
    /// Start of the window.
    pub start: DateTime<Utc>,
    /// End of the window.
    pub end: DateTime<Utc>,
    /// The analysis interval (and query window).
    pub interval: Duration,
    /// Consecutive inconclusive intervals before the fail-safe.
    pub failure_limit: u32,
    /// Judge every interval, also after the decision.
    pub full: bool,
}

/// Why a backtest could not run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The window or interval makes no sense.
    #[error("invalid window: {0}")]
    Window(String),
    /// The rule set's queries cannot be rendered for these labels.
    #[error("cannot render the queries: {0}")]
    Render(String),
    /// The metric source is unreachable.
    #[error("metric source: {0}")]
    Source(#[from] metrics::QueryError),
}

/// Where the time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Timing {
    /// Range queries issued.
    pub queries: usize,
    /// Wall-clock seconds fetching the data: the queries (run concurrently) and shaping their
    /// answers into observations.
    pub query_seconds: f64,
    /// Seconds the queries took, added up over all of them (they overlap in time).
    pub prometheus_seconds: f64,
    /// Seconds spent in the judge.
    pub judge_seconds: f64,
}

/// Counts the time a source spends answering.
struct Timed<'a> {
    inner: &'a dyn MetricSource,
    spent: std::sync::Mutex<Duration>,
}

#[async_trait::async_trait]
impl MetricSource for Timed<'_> {
    async fn query_range(
        &self,
        query: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Result<Vec<metrics::Series>, metrics::QueryError> {
        let started = Instant::now();
        let answer = self.inner.query_range(query, start, end, step).await;
        *self.spent.lock().unwrap_or_else(|p| p.into_inner()) += started.elapsed();
        answer
    }

    async fn is_online(&self) -> Result<(), metrics::QueryError> {
        self.inner.is_online().await
    }
}

/// A finished backtest.
#[derive(Clone, Debug)]
pub struct Backtest {
    /// The rule set's name.
    pub rules: String,
    /// Its path.
    pub path: String,
    /// Its version.
    pub version: String,
    /// Its judge.
    pub judge: crate::rules::JudgeKind,
    /// The canary's and the baseline's matchers, rendered.
    pub selectors: (String, String),
    /// The window.
    pub start: DateTime<Utc>,
    /// The window's end.
    pub end: DateTime<Utc>,
    /// The interval.
    pub interval: Duration,
    /// Every replayed interval.
    pub intervals: Vec<IntervalReport>,
    /// The decision.
    pub conclusion: Conclusion,
    /// Where the time went.
    pub timing: Timing,
}

/// The evaluation times: the warm-up time `start`, then the end of each interval.
pub fn evaluation_times(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    interval: Duration,
) -> Result<Vec<DateTime<Utc>>, BacktestError> {
    if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
        return Err(BacktestError::Window(
            "the interval must be whole seconds, at least 1s".into(),
        ));
    }
    if end <= start {
        return Err(BacktestError::Window(format!(
            "end {end} is not after start {start}"
        )));
    }
    let step = chrono::Duration::from_std(interval)
        .map_err(|_| BacktestError::Window("interval too large".into()))?;
    let n = (end - start).num_seconds() / step.num_seconds();
    if n < 1 {
        return Err(BacktestError::Window(format!(
            "the window {start} .. {end} is shorter than one interval ({})",
            crate::time::format_duration(interval)
        )));
    }
    if n > 1_000_000 {
        return Err(BacktestError::Window(format!(
            "{n} intervals is too many; use a longer interval"
        )));
    }
    Ok((0..=n).map(|i| start + step * i as i32).collect())
}

/// Replays the window (see the module doc).
pub async fn run(
    source: &dyn MetricSource,
    opts: &BacktestOptions<'_>,
) -> Result<Backtest, BacktestError> {
    let (rule_source, rules) = opts.rules;
    let times = evaluation_times(opts.start, opts.end, opts.interval)?;
    metrics::render_all(
        rules,
        &opts.selectors,
        &crate::time::promql_duration(opts.interval),
    )
    .map_err(BacktestError::Render)?;
    source.is_online().await?;
    let queries_per_call: usize = rules
        .metrics
        .iter()
        .map(|m| 2 * m.kind.templates().len())
        .sum();
    let mut timing = Timing::default();
    let timed = Timed {
        inner: source,
        spent: std::sync::Mutex::new(Duration::ZERO),
    };
    let mut replay =
        Replay::new(rules, opts.failure_limit, opts.full).with_min_intervals(DEFAULT_MIN_INTERVALS);
    let step = chrono::Duration::from_std(opts.interval).expect("checked");
    let mut first = true;
    for chunk in times.chunks(MAX_POINTS_PER_QUERY) {
        if !replay.wants_more() {
            break;
        }
        let started = Instant::now();
        let observed = metrics::observe(&timed, rules, &opts.selectors, chunk, opts.interval).await;
        timing.query_seconds += started.elapsed().as_secs_f64();
        timing.queries += queries_per_call;
        for (t, observations) in chunk.iter().zip(observed) {
            let index = ((*t - opts.start).num_seconds() / step.num_seconds()) as u32;
            let data = IntervalData {
                index,
                canary_share: None,
                observations,
            };
            if first {
                first = false;
                replay.warm_up(&data);
                continue;
            }
            if !replay.wants_more() {
                break;
            }
            replay.step(&data, Some((*t - step, *t)));
        }
    }
    timing.judge_seconds = replay.judge_time().as_secs_f64();
    timing.prometheus_seconds = timed
        .spent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_secs_f64();
    let (intervals, conclusion) = replay.finish();
    Ok(Backtest {
        rules: rules.name.clone(),
        path: rule_source.path.clone(),
        version: rule_source.hash.clone(),
        judge: rules.judge,
        selectors: (
            opts.selectors.canary.render(),
            opts.selectors.baseline.render(),
        ),
        start: opts.start,
        end: opts.end,
        interval: opts.interval,
        intervals,
        conclusion,
        timing,
    })
}

/// One metric's verdict as JSON: DESIGN.md's `name, verdict, estimate, lower, upper` and the
/// evidence, plus what a person needs to read it.
pub fn metric_json(m: &MetricVerdict) -> serde_json::Value {
    json!({
        "name": m.name,
        "verdict": m.status,
        "estimate": finite(m.estimate),
        "lower": finite(m.lower),
        "upper": finite(m.upper),
        "margin": finite(m.margin),
        "canary": finite(m.canary),
        "baseline": finite(m.baseline),
        "unit": m.unit,
        "evidence": {
            "kind": m.evidence.kind,
            "value": finite(m.evidence.value),
            "threshold": finite(m.evidence.threshold),
            "p_value": finite(m.evidence.p_value),
            "samples": [m.evidence.samples.0, m.evidence.samples.1],
        },
        "reason": m.reason,
        "critical": m.critical,
        "dry_run": m.dry_run,
    })
}

/// JSON has no infinity: an unbounded side is null.
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// One interval as JSON.
pub fn interval_json(i: &IntervalReport) -> serde_json::Value {
    json!({
        "index": i.index,
        "start": i.window.map(|w| w.0),
        "end": i.window.map(|w| w.1),
        "verdict": i.verdict.decision,
        "after_decision": i.after_decision,
        "metrics": i.verdict.metrics.iter().map(metric_json).collect::<Vec<_>>(),
        "reasons": i.verdict.reasons,
    })
}

impl Backtest {
    /// The JSON document of DESIGN.md.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "rules": {"name": self.rules, "path": self.path, "version": self.version, "judge": self.judge},
            "canary": self.selectors.0,
            "baseline": self.selectors.1,
            "start": self.start,
            "end": self.end,
            "interval": crate::time::format_duration(self.interval),
            "decision": self.conclusion.decision,
            "decided_at_interval": self.conclusion.decided_at_interval,
            "ended_by": self.conclusion.ended_by,
            "reasons": self.conclusion.reasons,
            "intervals": self.intervals.iter().map(interval_json).collect::<Vec<_>>(),
            "timing": self.timing,
        })
    }

    /// The human-readable table and decision.
    pub fn text(&self) -> String {
        let mut out = format!(
            "backtest of rule set {} ({}, {}) with the {} judge\nwindow {} .. {}, interval {}, {} interval(s) replayed\ncanary   {{{}}}\nbaseline {{{}}}\n\n",
            self.rules,
            self.path,
            short_hash(&self.version),
            serde_json::to_value(self.judge)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            self.start.to_rfc3339(),
            self.end.to_rfc3339(),
            crate::time::format_duration(self.interval),
            self.intervals.len(),
            self.selectors.0,
            self.selectors.1,
        );
        out.push_str(&table(&self.intervals));
        out.push('\n');
        out.push_str(&conclusion_text(&self.conclusion, &self.intervals));
        out.push_str(&format!(
            "time: {} range queries fetched in {:.3}s ({:.3}s of query time added up), judge {:.3}s\n",
            self.timing.queries,
            self.timing.query_seconds,
            self.timing.prometheus_seconds,
            self.timing.judge_seconds
        ));
        out
    }
}

fn short_hash(h: &str) -> &str {
    &h[..h.len().min(19)]
}

/// The decision in words.
pub fn conclusion_text(c: &Conclusion, intervals: &[IntervalReport]) -> String {
    let when = match c.decided_at_interval {
        Some(i) => {
            let end = intervals
                .iter()
                .find(|r| r.index == i)
                .and_then(|r| r.window)
                .map(|w| format!(" ({})", w.1.to_rfc3339()))
                .unwrap_or_default();
            format!(" at interval {i}{end}")
        }
        None => String::new(),
    };
    let by = match c.ended_by {
        EndedBy::Verdict => "",
        EndedBy::FailSafe => ", by the fail-safe",
        EndedBy::WindowEnd => ", at the end of the window",
        EndedBy::NoIntervals => "",
    };
    let mut out = format!("decision: {}{when}{by}\n", c.decision);
    for r in &c.reasons {
        out.push_str(&format!("  - {r}\n"));
    }
    out
}

/// A metric's value as people read it.
fn value(m: &MetricVerdict, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if m.unit.contains("ratio") || m.unit.contains("share") => {
            format!("{}%", fmt_num(100.0 * v))
        }
        Some(v) if m.unit.contains("seconds") => format!("{}s", fmt_num(v)),
        Some(v) => fmt_num(v),
    }
}

fn effect(m: &MetricVerdict) -> String {
    let x = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("×{}", fmt_num(v)),
        Some(_) => "∞".into(),
        None => "-".into(),
    };
    match m.estimate {
        None => "-".into(),
        Some(_) => format!(
            "{} [{}, {}]",
            x(m.estimate),
            x(m.lower.or(Some(0.0))),
            x(m.upper)
        ),
    }
}

/// The evidence in a few characters: `e=12.3/60`, `p=0.02`, `score 80`.
pub fn evidence_text(e: &Evidence) -> String {
    let n = |v: Option<f64>| match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1e6 => format!("{v:.1e}"),
        Some(v) => fmt_num(v),
    };
    match e.kind.as_str() {
        "" => "-".into(),
        "e_value" => format!("e={}/{}", n(e.value), n(e.threshold)),
        "p_value" => format!("p={}", n(e.value)),
        "bounds" => format!("L={} vs {}", n(e.value), n(e.threshold)),
        other => match e.threshold {
            Some(_) => format!("{other}={} vs {}", n(e.value), n(e.threshold)),
            None => format!("{other}={}", n(e.value)),
        },
    }
}

fn status(m: &MetricVerdict) -> String {
    let s = match m.status {
        MetricStatus::Fail => "FAIL".to_string(),
        other => other.to_string(),
    };
    if m.dry_run {
        format!("{s} (dry-run)")
    } else {
        s
    }
}

/// The interval table: one row per metric, the interval's columns on its first row.
pub fn table(intervals: &[IntervalReport]) -> String {
    let header = [
        "#",
        "end",
        "verdict",
        "metric",
        "status",
        "canary",
        "baseline",
        "effect [interval]",
        "margin",
        "evidence",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for i in intervals {
        for (k, m) in i.verdict.metrics.iter().enumerate() {
            let first = k == 0;
            let mut verdict = i.verdict.decision.to_string();
            if i.after_decision {
                verdict.push_str(" (after)");
            }
            rows.push(vec![
                if first {
                    i.index.to_string()
                } else {
                    String::new()
                },
                if first {
                    i.window
                        .map(|w| w.1.format("%H:%M:%S").to_string())
                        .unwrap_or_default()
                } else {
                    String::new()
                },
                if first { verdict } else { String::new() },
                m.name.clone(),
                status(m),
                value(m, m.canary),
                value(m, m.baseline),
                effect(m),
                m.margin.map_or("-".into(), |v| format!("×{}", fmt_num(v))),
                evidence_text(&m.evidence),
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{ArmSample, Observation, Outcome, Sample};
    use crate::rules::parse_rule_set;

    fn rules() -> RuleSet {
        parse_rule_set(
            "t.yaml",
            "name: t\nmetrics:\n  - name: errors\n    kind: ratio\n    bad: 'sum(increase(r{ {{selector}}, code=\"500\" }[{{window}}]))'\n    total: 'sum(increase(r{ {{selector}} }[{{window}}]))'\n    max_increase: 50%\n    critical: true\n",
        )
        .unwrap()
    }

    fn data(index: u32, bad_c: f64, outcome: Option<Outcome>) -> IntervalData {
        let counts = |bad: f64| {
            ArmSample::pooled(Sample::Counts {
                bad,
                total: 10000.0,
            })
        };
        IntervalData {
            index,
            canary_share: None,
            observations: vec![Observation {
                metric: "errors".into(),
                outcome: outcome.unwrap_or(Outcome::Data {
                    canary: counts(bad_c),
                    baseline: counts(10.0),
                }),
            }],
        }
    }

    #[test]
    fn a_regression_decides_and_stops() {
        let rules = rules();
        let mut r = Replay::new(&rules, 5, false);
        let mut n = 0;
        while r.wants_more() && n < 10 {
            n += 1;
            r.step(&data(n, 100.0, None), None);
        }
        let (intervals, c) = r.finish();
        assert_eq!(c.decision, Decision::Rollback);
        assert_eq!(c.decided_at_interval, Some(intervals.len() as u32));
        assert_eq!(c.ended_by, EndedBy::Verdict);
    }

    #[test]
    fn the_window_end_promotes_and_gaps_are_inconclusive() {
        let rules = rules();
        let mut r = Replay::new(&rules, 5, false);
        r.step(&data(1, 10.0, None), None);
        let (_, c) = r.finish();
        assert_eq!(c.decision, Decision::Promote);
        assert_eq!(c.decided_at_interval, None);
        assert_eq!(c.ended_by, EndedBy::WindowEnd);
        let mut r = Replay::new(&rules, 3, false);
        for i in 1..=4 {
            r.step(&data(i, 0.0, Some(Outcome::Timeout)), None);
        }
        let (intervals, c) = r.finish();
        assert_eq!(intervals.len(), 4);
        assert_eq!(
            (c.decision, c.decided_at_interval, c.ended_by),
            (Decision::Inconclusive, Some(3), EndedBy::FailSafe)
        );
    }

    #[test]
    fn times_tile_the_window() {
        let s = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let t = evaluation_times(
            s,
            s + chrono::Duration::seconds(185),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!((t[3] - s).num_seconds(), 180);
        assert!(evaluation_times(s, s, Duration::from_secs(60)).is_err());
        assert!(
            evaluation_times(
                s,
                s + chrono::Duration::seconds(30),
                Duration::from_secs(60)
            )
            .is_err()
        );
    }
}
