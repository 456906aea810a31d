//! From a rule file's text to a validated [`RuleSet`], with every error and warning placed.
//!
//! Stages, each reporting all it finds before the next runs:
//! 1. syntax: the YAML parses (one document) and is indexed for positions ([`super::yaml`]);
//! 2. structure: fields decode, unknown fields and wrong types included ([`super::raw`]);
//! 3. meaning: names, ranges, margins, fields that do not apply to a metric's kind;
//! 4. queries: every template renders and parses, with `{{selector}}` where matchers go
//!    ([`super::query`]);
//! 5. lints: warnings that do not stop a rule set from loading ([`super::lint`]).

use super::lint;
use super::query::{self, Grouping, QueryInfo};
use super::raw::{self, Amount, RawKind, RawMetric, RawRuleSet};
use super::report::{Checked, Report};
use super::yaml::{self, Mark, Seg};
use super::{DEFAULT_ALPHA, Direction, JudgeKind, MetricKind, MetricRule, RuleSet, Template};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Largest rule file accepted.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

pub use super::report::Analysis;

fn key(k: &str) -> Seg {
    Seg::Key(k.into())
}

/// Parses, validates and lints one rule file.
pub fn analyse(file: &str, content: &str) -> Analysis {
    let mut report = Report::new(file);
    let start = Mark { line: 1, column: 1 };
    if content.len() > MAX_FILE_BYTES {
        report.error(
            start,
            &[],
            None,
            format!(
                "file is larger than {} KiB; a rule file is a few dozen lines",
                MAX_FILE_BYTES / 1024
            ),
        );
        return report.finish(None);
    }
    match yaml::index(content) {
        Ok(p) => report.positions = p,
        Err(e) => {
            report.error(e.mark, &[], None, e.message);
            return report.finish(None);
        }
    }
    let value: Value = match serde_yaml::from_str(content) {
        Ok(v) => v,
        Err(e) => {
            let at = e.location().map_or(start, |l| Mark {
                line: l.line(),
                column: l.column(),
            });
            let message = e.to_string();
            let message = match message.find(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            report.error(at, &[], None, format!("YAML: {message}"));
            return report.finish(None);
        }
    };
    let Value::Mapping(mut top) = value else {
        let what = match value {
            Value::Null => "the file is empty",
            _ => "the file is not a mapping",
        };
        report.error(
            start,
            &[],
            None,
            format!("{what}: expected a rule set (`name`, `judge`, `metrics`)"),
        );
        return report.finish(None);
    };
    // Metrics are decoded one by one: take them out of the set.
    let items = match top.get("metrics") {
        Some(Value::Sequence(items)) => {
            let items = items.clone();
            top.insert(Value::from("metrics"), Value::Sequence(Vec::new()));
            Some(items)
        }
        _ => None,
    };
    let decoded = raw::decode::<RawRuleSet>(Value::Mapping(top));
    for p in decoded.problems {
        report.problem(&[], p, None);
    }
    let Some(set) = decoded.value else {
        return report.finish(None);
    };
    let metrics: Vec<Option<(RawMetric, BTreeSet<String>)>> = items
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let label = item
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{}", i + 1));
            let d = raw::decode::<RawMetric>(item);
            let prefix = [key("metrics"), Seg::Index(i)];
            for p in d.problems {
                report.problem(&prefix, p, Some(&label));
            }
            d.value.map(|m| (m, d.failed))
        })
        .collect();
    let rule_set = validate(&mut report, set, &decoded.failed, metrics);
    report.finish(rule_set)
}

fn validate(
    report: &mut Report<'_>,
    raw: RawRuleSet,
    failed: &BTreeSet<String>,
    metrics: Vec<Option<(RawMetric, BTreeSet<String>)>>,
) -> Option<RuleSet> {
    let errors_before = report.errors.len();
    let name = raw.name.clone().unwrap_or_default();
    let alpha = raw.alpha.unwrap_or(DEFAULT_ALPHA);
    check_set_fields(report, &raw, failed, metrics.is_empty());
    let checked = validate_metrics(report, metrics, raw.judge);
    // Lints only speak about files that load: on a broken file they are noise.
    if report.errors.len() > errors_before || !report.errors.is_empty() {
        return None;
    }
    let set = RuleSet {
        name,
        judge: raw.judge,
        alpha,
        description: raw.description,
        metrics: checked.iter().map(|c| c.rule.clone()).collect(),
        mann_whitney: raw.mann_whitney,
        threshold: raw.threshold,
    };
    lint::run(report, &set, &checked);
    Some(set)
}

/// The rule set's own fields: name, alpha, the metrics list, the judges' options.
fn check_set_fields(
    report: &mut Report<'_>,
    raw: &RawRuleSet,
    failed: &BTreeSet<String>,
    no_metrics: bool,
) {
    match &raw.name {
        None if !failed.contains("name") => report.error(
            Mark { line: 1, column: 1 },
            &[],
            None,
            "missing field `name` (the name canary specs refer to, e.g. `name: http-service`)"
                .into(),
        ),
        Some(n) if !is_rule_name(n) => report.error(
            report.positions.value(&[key("name")]),
            &[key("name")],
            None,
            format!("name {n:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'"),
        ),
        _ => {}
    }
    let alpha = raw.alpha.unwrap_or(DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha < 0.5) {
        report.error(
            report.positions.value(&[key("alpha")]),
            &[key("alpha")],
            None,
            format!("alpha must be in (0, 0.5), got {alpha}"),
        );
    }
    match &raw.metrics {
        None if !failed.contains("metrics") => report.error(
            Mark { line: 1, column: 1 },
            &[],
            None,
            "missing field `metrics` (a list of metrics to judge)".into(),
        ),
        Some(_) if no_metrics => report.error(
            report.positions.value(&[key("metrics")]),
            &[key("metrics")],
            None,
            "a rule set needs at least one metric".into(),
        ),
        _ => {}
    }
    let mw = &raw.mann_whitney;
    let mw_path = |f: &str| vec![key("mann_whitney"), key(f)];
    if !(mw.confidence > 0.5 && mw.confidence < 1.0) {
        let p = mw_path("confidence");
        report.error(
            report.positions.value(&p),
            &p,
            None,
            format!(
                "mann_whitney.confidence must be in (0.5, 1), got {}",
                mw.confidence
            ),
        );
    }
    if mw.marginal_threshold > mw.pass_threshold {
        let p = mw_path("marginal_threshold");
        report.error(
            report.positions.value(&p),
            &p,
            None,
            format!(
                "mann_whitney.marginal_threshold ({}) must not exceed pass_threshold ({})",
                mw.marginal_threshold, mw.pass_threshold
            ),
        );
    }
    for (group, w) in &mw.group_weights {
        if !(*w >= 0.0 && w.is_finite()) {
            let p = vec![key("mann_whitney"), key("group_weights"), key(group)];
            report.error(
                report.positions.value(&p),
                &p,
                None,
                format!("group weight must be >= 0, got {w}"),
            );
        }
    }
    if raw.threshold.failure_limit == 0 {
        let p = vec![key("threshold"), key("failure_limit")];
        report.error(
            report.positions.value(&p),
            &p,
            None,
            "threshold.failure_limit must be at least 1".into(),
        );
    }
}

/// Each decoded metric, with duplicate names reported.
fn validate_metrics(
    report: &mut Report<'_>,
    metrics: Vec<Option<(RawMetric, BTreeSet<String>)>>,
    judge: JudgeKind,
) -> Vec<Checked> {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut checked = Vec::new();
    for (i, m) in metrics.into_iter().enumerate() {
        let Some((m, failed)) = m else { continue };
        if let Some(n) = &m.name
            && let Some(first) = names.insert(n.clone(), i)
        {
            let p = vec![key("metrics"), Seg::Index(i), key("name")];
            report.error(
                report.positions.value(&p),
                &p,
                Some(n),
                format!(
                    "duplicate metric name (first used by metric #{})",
                    first + 1
                ),
            );
        }
        if let Some(c) = validate_metric(report, i, m, &failed, judge) {
            checked.push(c);
        }
    }
    checked
}

/// Where a metric's problems are reported.
struct MetricScope<'r, 'a> {
    report: &'r mut Report<'a>,
    index: usize,
    name: String,
    errors: usize,
}

impl MetricScope<'_, '_> {
    fn path(&self, field: &str) -> Vec<Seg> {
        let mut p = vec![key("metrics"), Seg::Index(self.index)];
        if !field.is_empty() {
            p.push(key(field));
        }
        p
    }

    /// An error about a field's value.
    fn value(&mut self, field: &str, message: String) {
        let p = self.path(field);
        let at = self.report.positions.value(&p);
        self.report.error(at, &p, Some(&self.name), message);
        self.errors += 1;
    }

    /// An error about a field being there.
    fn key(&mut self, field: &str, message: String) {
        let p = self.path(field);
        let at = self.report.positions.key(&p);
        self.report.error(at, &p, Some(&self.name), message);
        self.errors += 1;
    }

    /// An error about the metric as a whole (e.g. a missing field).
    fn item(&mut self, message: String) {
        let p = self.path("");
        let at = self.report.positions.value(&p);
        self.report.error(at, &p, Some(&self.name), message);
        self.errors += 1;
    }

    /// An error inside a template, at the character `offset` of its value when it can be placed.
    fn template(&mut self, field: &str, offset: usize, message: String) {
        let p = self.path(field);
        let at = match self.report.positions.get(&p) {
            Some(span) => span.at_offset(offset),
            None => self.report.positions.value(&p),
        };
        self.report.error(at, &p, Some(&self.name), message);
        self.errors += 1;
    }
}

/// What a metric kind needs and allows.
fn kind_fields(kind: RawKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        RawKind::Ratio => (&["bad", "total"], &[]),
        RawKind::Histogram => (
            &["buckets"],
            &[
                "threshold",
                "threshold_quantile",
                "quantile",
                "bucket_growth",
            ],
        ),
        RawKind::Gauge => (&["query"], &["slope"]),
    }
}

const TEMPLATE_HELP: [(&str, &str); 4] = [
    ("bad", "PromQL counting bad events in the window"),
    ("total", "PromQL counting all events in the window"),
    (
        "buckets",
        "PromQL of `_bucket` counts in the window, by `le`",
    ),
    ("query", "PromQL of the gauge's value"),
];

fn validate_metric(
    report: &mut Report<'_>,
    index: usize,
    m: RawMetric,
    failed: &BTreeSet<String>,
    judge: JudgeKind,
) -> Option<Checked> {
    let mut s = MetricScope {
        report,
        index,
        name: m.name.clone().unwrap_or_else(|| format!("#{}", index + 1)),
        errors: 0,
    };
    match &m.name {
        None if !failed.contains("name") => s.item("missing field `name`".into()),
        Some(n) if !is_rule_name(n) => s.value(
            "name",
            format!("name {n:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'"),
        ),
        _ => {}
    }
    let Some(kind) = m.kind else {
        if !failed.contains("kind") {
            s.item("missing field `kind` (ratio, histogram or gauge)".into());
        }
        return None;
    };
    let queries = check_templates(&mut s, kind, &m, failed);
    check_ranges(&mut s, &m);
    let max_increase = m.max_increase.map(|f| f.0);
    check_margin(&mut s, max_increase, &m, failed, judge);
    if s.errors > 0 {
        return None;
    }
    Some(Checked {
        index,
        rule: build_metric(kind, m, max_increase)?,
        queries,
    })
}

/// The templates: only the kind's fields present, each required one there, each rendering to
/// PromQL that parses; a histogram's keeps `le`. Returns the summaries of those that parse.
fn check_templates(
    s: &mut MetricScope<'_, '_>,
    kind: RawKind,
    m: &RawMetric,
    failed: &BTreeSet<String>,
) -> Vec<(&'static str, QueryInfo)> {
    let templates: [(&'static str, &Option<Template>); 4] = [
        ("bad", &m.bad),
        ("total", &m.total),
        ("buckets", &m.buckets),
        ("query", &m.query),
    ];
    let optional: [(&str, bool); 6] = [
        ("threshold", m.threshold.is_some()),
        ("threshold_quantile", m.threshold_quantile.is_some()),
        ("quantile", m.quantile.is_some()),
        ("bucket_growth", m.bucket_growth.is_some()),
        ("slope", m.slope.is_some()),
        ("", false),
    ];
    let (needs, allows) = kind_fields(kind);
    let present = templates
        .iter()
        .map(|(f, t)| (*f, t.is_some()))
        .chain(optional);
    for (field, is_present) in present {
        if is_present && !needs.contains(&field) && !allows.contains(&field) {
            s.key(
                field,
                format!(
                    "field `{field}` does not apply to kind {}; kind {} uses {}",
                    kind.name(),
                    kind.name(),
                    needs
                        .iter()
                        .chain(allows)
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    let mut queries = Vec::new();
    for (field, template) in templates {
        if !needs.contains(&field) {
            continue;
        }
        let help = TEMPLATE_HELP
            .iter()
            .find(|(f, _)| *f == field)
            .map_or("", |(_, h)| h);
        match template {
            None if !failed.contains(field) => {
                s.item(format!("kind {} needs `{field}` ({help})", kind.name()));
            }
            None => {}
            Some(t) => match query::analyse(t) {
                Ok(info) => queries.push((field, info)),
                Err(p) => s.template(field, p.offset, format!("{field}: {}", p.message)),
            },
        }
    }
    check_keeps_le(s, kind, &queries);
    queries
}

/// A histogram's bucket query keeps the `le` label.
fn check_keeps_le(s: &mut MetricScope<'_, '_>, kind: RawKind, queries: &[(&str, QueryInfo)]) {
    if kind == RawKind::Histogram
        && let Some((_, info)) = queries.iter().find(|(f, _)| *f == "buckets")
        && !info.grouping.keeps("le")
    {
        let how = match &info.grouping {
            Grouping::All => "`sum(...)` aggregates it away".to_string(),
            Grouping::By(l) => format!(
                "`by ({})` drops it",
                l.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            _ => "the aggregation drops it".to_string(),
        };
        s.value(
            "buckets",
            format!(
                "buckets: the query must keep the `le` label ({how}); use e.g. `sum by (le) (increase(x_bucket{{ {{{{selector}}}} }}[{{{{window}}}}]))`"
            ),
        );
    }
}

/// The validated metric from its decoded fields.
fn build_metric(kind: RawKind, m: RawMetric, max_increase: Option<f64>) -> Option<MetricRule> {
    let kind = match kind {
        RawKind::Ratio => MetricKind::Ratio {
            bad: m.bad?,
            total: m.total?,
        },
        RawKind::Histogram => MetricKind::Histogram {
            buckets: m.buckets?,
            threshold: m.threshold.map(|s| s.0),
            threshold_quantile: m.threshold_quantile.unwrap_or(0.95),
            quantile: m.quantile,
            bucket_growth: m.bucket_growth,
        },
        RawKind::Gauge => MetricKind::Gauge {
            query: m.query?,
            slope: m.slope.map(|s| s.0),
        },
    };
    Some(MetricRule {
        name: m.name?,
        kind,
        direction: m.direction,
        max_increase,
        min: m.min.map(|a| a.0),
        max: m.max.map(|a| a.0),
        critical: m.critical,
        weight: m.weight.unwrap_or(1.0),
        group: m.group,
        dry_run: m.dry_run,
    })
}

/// Numeric options with a valid range.
fn check_ranges(s: &mut MetricScope<'_, '_>, m: &RawMetric) {
    let in_unit = |v: f64| v > 0.0 && v < 1.0;
    if let Some(q) = m.quantile
        && !in_unit(q)
    {
        s.value("quantile", format!("quantile must be in (0, 1), got {q}"));
    }
    if let Some(q) = m.threshold_quantile
        && !in_unit(q)
    {
        s.value(
            "threshold_quantile",
            format!("threshold_quantile must be in (0, 1), got {q}"),
        );
    }
    if let Some(t) = m.threshold
        && !(t.0 > 0.0 && t.0.is_finite())
    {
        s.value(
            "threshold",
            format!("threshold must be > 0 seconds, got {}", t.0),
        );
    }
    if let Some(sl) = m.slope
        && !(sl.0 > 0.0 && sl.0.is_finite())
    {
        s.value("slope", format!("slope must be > 0, got {}", sl.0));
    }
    if let Some(g) = m.bucket_growth
        && !(g > 1.0 && g.is_finite())
    {
        s.value(
            "bucket_growth",
            format!("bucket_growth is the ratio between neighbouring bucket edges and must be > 1, got {g}"),
        );
    }
    if let (Some(Amount(lo)), Some(Amount(hi))) = (m.min, m.max)
        && lo > hi
    {
        s.value("min", format!("min ({lo}) is above max ({hi})"));
    }
    let weight = m.weight.unwrap_or(1.0);
    if !(weight >= 0.0 && weight.is_finite()) {
        s.value("weight", format!("weight must be >= 0, got {weight}"));
    }
}

/// The relative margin: required (except for the threshold judge) and possible.
fn check_margin(
    s: &mut MetricScope<'_, '_>,
    max_increase: Option<f64>,
    m: &RawMetric,
    failed: &BTreeSet<String>,
    judge: JudgeKind,
) {
    match max_increase {
        // Kayenta's default effect size (allowedIncrease 1.0) is "any increase": 0% is allowed
        // for the Kayenta-compatible judge.
        Some(v) if judge == JudgeKind::MannWhitney && !(v >= 0.0 && v.is_finite()) => {
            s.value(
                "max_increase",
                format!("max_increase must be >= 0, got {v}"),
            );
        }
        Some(v) if judge != JudgeKind::MannWhitney && !(v > 0.0 && v.is_finite()) => {
            s.value("max_increase", format!("max_increase must be > 0, got {v}"));
        }
        Some(v) if m.direction == Direction::Decrease && v >= 1.0 => {
            s.value(
                "max_increase",
                format!(
                    "with direction: decrease, max_increase is the tolerated drop and must be below 100%, got {}%",
                    crate::judge::fmt_num(v * 100.0)
                ),
            );
        }
        None if judge != JudgeKind::Threshold && !failed.contains("max_increase") => {
            s.item("max_increase is required (e.g. `max_increase: 50%`)".into());
        }
        _ => {}
    }
    // A bound that failed to decode was already reported: do not also call it missing.
    let bound_failed = failed.contains("min") || failed.contains("max");
    if judge == JudgeKind::Threshold && m.min.is_none() && m.max.is_none() && !bound_failed {
        s.item("the threshold judge needs `min` or `max`".into());
    }
}

pub(crate) fn is_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
