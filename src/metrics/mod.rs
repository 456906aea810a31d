//! Metric sources, and turning their answers into the judge's observations.
//!
//! A [`MetricSource`] runs PromQL. [`observe`] renders a rule set's templates for both arms,
//! runs them over the same evaluation times, and shapes the results into
//! [`Observation`]s, keeping "no data", "query error" and "timeout" apart.

mod prometheus;

pub use prometheus::{PrometheusAuth, PrometheusSource};

use crate::observation::{Arm, ArmSample, Observation, Outcome, Sample};
use crate::rules::{MetricKind, MetricRule, RuleSet, Selector, Template};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use std::collections::BTreeMap;
use std::time::Duration;

/// One time series from a query: its labels and `(unix seconds, value)` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Samples in time order.
    pub samples: Vec<(f64, f64)>,
}

/// Why a query produced no answer. "No data" is not an error: it is an empty result.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The source did not answer in time.
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
    /// The source answered with an error (e.g. a PromQL error).
    #[error("{0}")]
    Query(String),
    /// The source could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// A source of metrics.
///
/// Implementations MUST keep a successful empty answer (`Ok(vec![])`) apart from errors, and
/// MUST report a timeout as [`QueryError::Timeout`].
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// Evaluates `query` at `start`, `start + step`, ... up to `end`.
    async fn query_range(
        &self,
        query: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Result<Vec<Series>, QueryError>;

    /// Evaluates `query` at one instant.
    async fn query(&self, query: &str, at: DateTime<Utc>) -> Result<Vec<Series>, QueryError> {
        self.query_range(query, at, at, Duration::from_secs(1))
            .await
    }

    /// Whether the source answers at all.
    async fn is_online(&self) -> Result<(), QueryError>;
}

/// The label matchers of both arms.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmSelectors {
    /// The canary's matchers.
    pub canary: Selector,
    /// The baseline's matchers.
    pub baseline: Selector,
}

impl ArmSelectors {
    fn get(&self, arm: Arm) -> &Selector {
        match arm {
            Arm::Canary => &self.canary,
            Arm::Baseline => &self.baseline,
        }
    }
}

/// A rendered query of one metric for one arm.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedQuery {
    /// The metric.
    pub metric: String,
    /// The template field (`bad`, `total`, `buckets`, `query`).
    pub field: &'static str,
    /// The arm.
    pub arm: Arm,
    /// The PromQL.
    pub promql: String,
}

/// Renders every query of a rule set for both arms; each must parse as PromQL.
pub fn render_all(
    rules: &RuleSet,
    arms: &ArmSelectors,
    window: &str,
) -> Result<Vec<RenderedQuery>, String> {
    let mut out = Vec::new();
    for metric in &rules.metrics {
        for (field, template) in metric.kind.templates() {
            for arm in [Arm::Canary, Arm::Baseline] {
                let promql = render(template, arms.get(arm), window)
                    .map_err(|e| format!("metric {:?} {field} ({arm}): {e}", metric.name))?;
                out.push(RenderedQuery {
                    metric: metric.name.clone(),
                    field,
                    arm,
                    promql,
                });
            }
        }
    }
    Ok(out)
}

fn render(template: &Template, selector: &Selector, window: &str) -> Result<String, String> {
    let promql = template
        .render(selector, window)
        .map_err(|e| e.to_string())?;
    crate::rules::template::parse_promql(&promql)
        .map_err(|e| format!("rendered query does not parse: {e}: {promql}"))?;
    Ok(promql)
}

/// Observes every metric of `rules` at each time in `times`, each over the `window` before it.
/// Returns one list of observations per time, in the rule set's metric order.
pub async fn observe(
    source: &dyn MetricSource,
    rules: &RuleSet,
    arms: &ArmSelectors,
    times: &[DateTime<Utc>],
    window: Duration,
) -> Vec<Vec<Observation>> {
    observe_shifted(source, rules, arms, times, times, window).await
}

/// Like [`observe`], with the baseline evaluated at its own times (`baseline_times[i]` pairs
/// with `times[i]`): the post-promotion bake compares the new version now with the old version
/// before the release.
pub async fn observe_shifted(
    source: &dyn MetricSource,
    rules: &RuleSet,
    arms: &ArmSelectors,
    times: &[DateTime<Utc>],
    baseline_times: &[DateTime<Utc>],
    window: Duration,
) -> Vec<Vec<Observation>> {
    let window_text = crate::time::promql_duration(window);
    let futures = rules.metrics.iter().map(|m| {
        observe_metric(
            source,
            m,
            arms,
            (times, baseline_times),
            window,
            &window_text,
        )
    });
    let per_metric: Vec<Vec<Observation>> = join_all(futures).await;
    (0..times.len())
        .map(|t| per_metric.iter().map(|obs| obs[t].clone()).collect())
        .collect()
}

type Answer = Result<Vec<Series>, QueryError>;

async fn observe_metric(
    source: &dyn MetricSource,
    metric: &MetricRule,
    arms: &ArmSelectors,
    (times, baseline_times): (&[DateTime<Utc>], &[DateTime<Utc>]),
    window: Duration,
    window_text: &str,
) -> Vec<Observation> {
    let span = |ts: &[DateTime<Utc>]| ts.first().copied().zip(ts.last().copied());
    let (Some(canary_span), Some(baseline_span)) = (span(times), span(baseline_times)) else {
        return Vec::new();
    };
    let templates = metric.kind.templates();
    let mut queries = Vec::new();
    for (_, template) in &templates {
        for arm in [Arm::Canary, Arm::Baseline] {
            let (start, end) = match arm {
                Arm::Canary => canary_span,
                Arm::Baseline => baseline_span,
            };
            queries.push((render(template, arms.get(arm), window_text), start, end));
        }
    }
    let answers: Vec<Answer> = join_all(queries.into_iter().map(|(q, start, end)| async move {
        match q {
            Ok(promql) => source.query_range(&promql, start, end, window).await,
            Err(e) => Err(QueryError::Query(e)),
        }
    }))
    .await;
    times
        .iter()
        .zip(baseline_times)
        .map(|(t, b)| Observation {
            metric: metric.name.clone(),
            outcome: shape(
                &metric.kind,
                &answers,
                (t.timestamp() as f64, b.timestamp() as f64),
            ),
        })
        .collect()
}

/// Shapes the answers (per template field: canary, baseline) at the arms' times into an outcome.
fn shape(kind: &MetricKind, answers: &[Answer], (t_canary, t_baseline): (f64, f64)) -> Outcome {
    for a in answers {
        match a {
            Err(QueryError::Timeout(_)) => return Outcome::Timeout,
            Err(e) => {
                return Outcome::QueryError {
                    message: e.to_string(),
                };
            }
            Ok(_) => {}
        }
    }
    // Answers alternate canary, baseline per template field.
    let at = |i: usize| -> Vec<(BTreeMap<String, String>, f64)> {
        let t = if i.is_multiple_of(2) {
            t_canary
        } else {
            t_baseline
        };
        answers[i]
            .as_ref()
            .map(|series| values_at(series, t))
            .unwrap_or_default()
    };
    let arms = match kind {
        MetricKind::Ratio { .. } => {
            // Bad-event counters often have no series until the first bad event: with `total`
            // present, an empty `bad` means zero.
            let canary = ratio_arm(&at(0), &at(2));
            let baseline = ratio_arm(&at(1), &at(3));
            (canary, baseline)
        }
        MetricKind::Histogram { .. } => (buckets_arm(&at(0)), buckets_arm(&at(1))),
        MetricKind::Gauge { .. } => (gauge_arm(&at(0)), gauge_arm(&at(1))),
    };
    match arms {
        (None, _) => Outcome::NoData { arm: Arm::Canary },
        (_, None) => Outcome::NoData { arm: Arm::Baseline },
        (Some(canary), Some(baseline)) => Outcome::Data { canary, baseline },
    }
}

/// The value of each series at time `t` (within half a second), skipping NaN.
fn values_at(series: &[Series], t: f64) -> Vec<(BTreeMap<String, String>, f64)> {
    series
        .iter()
        .filter_map(|s| {
            s.samples
                .iter()
                .find(|(ts, _)| (ts - t).abs() < 0.5)
                .filter(|(_, v)| !v.is_nan())
                .map(|&(_, v)| (s.labels.clone(), v))
        })
        .collect()
}

fn instance_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get("instance").map(String::as_str)
}

fn ratio_arm(
    bad: &[(BTreeMap<String, String>, f64)],
    total: &[(BTreeMap<String, String>, f64)],
) -> Option<ArmSample> {
    if total.is_empty() {
        return None;
    }
    let sum = |xs: &[(BTreeMap<String, String>, f64)], inst: Option<&str>| -> f64 {
        xs.iter()
            .filter(|(l, _)| inst.is_none() || instance_of(l) == inst)
            .map(|(_, v)| v)
            .sum()
    };
    let pooled = Sample::Counts {
        bad: sum(bad, None),
        total: sum(total, None),
    };
    let mut instances: Vec<(String, Sample)> = Vec::new();
    for (labels, _) in total {
        if let Some(inst) = instance_of(labels)
            && !instances.iter().any(|(n, _)| n == inst)
        {
            instances.push((
                inst.to_string(),
                Sample::Counts {
                    bad: sum(bad, Some(inst)),
                    total: sum(total, Some(inst)),
                },
            ));
        }
    }
    Some(ArmSample { pooled, instances })
}

fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        t => t.parse().ok(),
    }
}

fn buckets_arm(values: &[(BTreeMap<String, String>, f64)]) -> Option<ArmSample> {
    let mut by_instance: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    let mut pooled: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    let key = |le: f64| {
        if le.is_infinite() {
            u64::MAX
        } else {
            le.to_bits()
        }
    };
    for (labels, v) in values {
        let Some(le) = labels.get("le").and_then(|t| parse_le(t)) else {
            continue;
        };
        pooled.entry(key(le)).or_insert((le, 0.0)).1 += v;
        if let Some(inst) = instance_of(labels) {
            by_instance
                .entry(inst.to_string())
                .or_default()
                .entry(key(le))
                .or_insert((le, 0.0))
                .1 += v;
        }
    }
    if pooled.is_empty() {
        return None;
    }
    let sorted = |m: BTreeMap<u64, (f64, f64)>| {
        let mut b: Vec<(f64, f64)> = m.into_values().collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        Sample::Buckets { buckets: b }
    };
    let instances = if by_instance.len() >= 2 {
        by_instance
            .into_iter()
            .map(|(name, m)| (name, sorted(m)))
            .collect()
    } else {
        Vec::new()
    };
    Some(ArmSample {
        pooled: sorted(pooled),
        instances,
    })
}

fn gauge_arm(values: &[(BTreeMap<String, String>, f64)]) -> Option<ArmSample> {
    if values.is_empty() {
        return None;
    }
    // Several series (e.g. kept per instance) pool as their mean: a per-instance figure.
    let mean = values.iter().map(|(_, v)| v).sum::<f64>() / values.len() as f64;
    let instances = if values.len() >= 2 {
        values
            .iter()
            .filter_map(|(l, v)| {
                instance_of(l).map(|i| (i.to_string(), Sample::Gauge { value: *v }))
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(ArmSample {
        pooled: Sample::Gauge { value: mean },
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_rule_set;
    use std::sync::Mutex;

    /// Answers from a table keyed by query text; records what was asked.
    struct Table {
        answers: Vec<(&'static str, Answer)>,
        asked: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl MetricSource for Table {
        async fn query_range(
            &self,
            query: &str,
            _start: DateTime<Utc>,
            _end: DateTime<Utc>,
            _step: Duration,
        ) -> Result<Vec<Series>, QueryError> {
            self.asked.lock().unwrap().push(query.to_string());
            self.answers
                .iter()
                .find(|(needle, _)| query.contains(needle))
                .map(|(_, a)| a.clone())
                .unwrap_or(Ok(vec![]))
        }
        async fn is_online(&self) -> Result<(), QueryError> {
            Ok(())
        }
    }

    fn series(labels: &[(&str, &str)], t: f64, v: f64) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            samples: vec![(t, v)],
        }
    }

    fn arms() -> ArmSelectors {
        let l = |v: &str| {
            let pairs = [("version".to_string(), v.to_string())];
            Selector::new(pairs.iter().map(|(k, v)| (k, v))).unwrap()
        };
        ArmSelectors {
            canary: l("v2"),
            baseline: l("v1"),
        }
    }

    #[tokio::test]
    async fn shapes_ratios_and_treats_missing_bad_series_as_zero() {
        let rules = parse_rule_set(
            "t.yaml",
            r#"
name: t
metrics:
  - name: errors
    kind: ratio
    bad: 'sum(increase(req{ {{selector}}, code="500" }[{{window}}]))'
    total: 'sum(increase(req{ {{selector}} }[{{window}}]))'
    max_increase: 50%
"#,
        )
        .unwrap();
        let t = 1_700_000_000.0;
        let source = Table {
            answers: vec![
                (r#"version="v2", code="500""#, Ok(vec![series(&[], t, 5.0)])),
                (r#"version="v1", code="500""#, Ok(vec![])),
                (r#"req{ version="v2" }"#, Ok(vec![series(&[], t, 100.0)])),
                (r#"req{ version="v1" }"#, Ok(vec![series(&[], t, 900.0)])),
            ],
            asked: Mutex::new(vec![]),
        };
        let when = DateTime::from_timestamp(t as i64, 0).unwrap();
        let obs = observe(&source, &rules, &arms(), &[when], Duration::from_secs(60)).await;
        assert_eq!(
            source.asked.lock().unwrap()[0],
            r#"sum(increase(req{ version="v2", code="500" }[60s]))"#
        );
        assert_eq!(
            obs[0][0].outcome,
            Outcome::Data {
                canary: ArmSample::pooled(Sample::Counts {
                    bad: 5.0,
                    total: 100.0
                }),
                baseline: ArmSample::pooled(Sample::Counts {
                    bad: 0.0,
                    total: 900.0
                }),
            }
        );
    }

    #[tokio::test]
    async fn keeps_no_data_errors_and_timeouts_apart() {
        let rules = parse_rule_set(
            "t.yaml",
            r#"
name: t
metrics:
  - name: cpu
    kind: gauge
    query: 'sum(cpu{ {{selector}} })'
    max_increase: 50%
"#,
        )
        .unwrap();
        let when = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let run = |answers: Vec<(&'static str, Answer)>| {
            let rules = rules.clone();
            async move {
                let source = Table {
                    answers,
                    asked: Mutex::new(vec![]),
                };
                observe(&source, &rules, &arms(), &[when], Duration::from_secs(60)).await[0][0]
                    .outcome
                    .clone()
            }
        };
        let t = 1_700_000_000.0;
        assert_eq!(
            run(vec![("v1", Ok(vec![series(&[], t, 1.0)]))]).await,
            Outcome::NoData { arm: Arm::Canary }
        );
        assert_eq!(
            run(vec![(
                "v2",
                Err(QueryError::Timeout(Duration::from_secs(5)))
            )])
            .await,
            Outcome::Timeout
        );
        assert!(matches!(
            run(vec![("v2", Err(QueryError::Unreachable("refused".into())))]).await,
            Outcome::QueryError { .. }
        ));
    }

    #[test]
    fn buckets_pool_instances() {
        let t = 10.0;
        let values = values_at(
            &[
                series(&[("le", "0.1"), ("instance", "a")], t, 5.0),
                series(&[("le", "+Inf"), ("instance", "a")], t, 10.0),
                series(&[("le", "0.1"), ("instance", "b")], t, 1.0),
                series(&[("le", "+Inf"), ("instance", "b")], t, 4.0),
            ],
            t,
        );
        let arm = buckets_arm(&values).unwrap();
        assert_eq!(
            arm.pooled,
            Sample::Buckets {
                buckets: vec![(0.1, 6.0), (f64::INFINITY, 14.0)]
            }
        );
        assert_eq!(arm.instances.len(), 2);
    }
}
