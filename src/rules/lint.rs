//! Warnings about rule sets that load but probably do not do what their author meant.
//!
//! Each warning has a stable code (for CI filters and editors):
//! - `ratio-series`: a ratio's `bad` and `total` select different series (other metric names,
//!   or `total` filters on something `bad` does not), so `bad` is not a subset of `total`;
//! - `ratio-grouping`: `bad` and `total` keep different labels;
//! - `fixed-range`: a count (ratio or histogram) uses a fixed range instead of `{{window}}`, so
//!   consecutive intervals overlap and the count test sees the same events twice;
//! - `no-range`: a count query has no range selector at all (counter totals, not increases);
//! - `unscoped-selector`: a selector without `{{selector}}` reads the same series for both arms;
//! - `bucket-name`: a histogram's query reads no `_bucket` series;
//! - `bucket-resolution`: a quantile margin finer than the buckets can resolve (needs the
//!   `bucket_growth` hint; without it, small quantile margins get a note to add one);
//! - `no-critical`: no metric is critical;
//! - `all-dry-run`: every metric is dry-run, so the rule set can never roll back;
//! - `unknown-group`: `mann_whitney.group_weights` names a group no metric is in.

use super::query::{Grouping, QueryInfo, SelectorInfo};
use super::report::{Checked, Report};
use super::yaml::Seg;
use super::{MetricKind, RuleSet};
use crate::judge::fmt_num;
use std::collections::BTreeSet;

fn key(k: &str) -> Seg {
    Seg::Key(k.into())
}

/// Adds the warnings for a validated rule set.
pub(crate) fn run(report: &mut Report<'_>, set: &RuleSet, metrics: &[Checked]) {
    for m in metrics {
        let query = |field: &str| m.queries.iter().find(|(f, _)| *f == field).map(|(_, q)| q);
        let mut warn = |code: &'static str, field: &str, message: String| {
            let path = vec![key("metrics"), Seg::Index(m.index), key(field)];
            let at = report.positions.value(&path);
            report.warn(code, at, &path, Some(&m.rule.name), message);
        };
        for (field, q) in &m.queries {
            for s in q.selectors.iter().filter(|s| !s.scoped) {
                warn(
                    "unscoped-selector",
                    field,
                    format!(
                        "{field}: `{}` does not use {{{{selector}}}}, so canary and baseline read the same series",
                        s.describe()
                    ),
                );
            }
        }
        let counts: &[&str] = match &m.rule.kind {
            MetricKind::Ratio { .. } => &["bad", "total"],
            MetricKind::Histogram { .. } => &["buckets"],
            MetricKind::Gauge { .. } => &[],
        };
        for field in counts {
            let Some(q) = query(field) else { continue };
            let has_range = q.selectors.iter().any(|s| s.range.is_some());
            if !has_range {
                warn(
                    "no-range",
                    field,
                    format!(
                        "{field}: no range selector: counts must be events in the window (`increase(...[{{{{window}}}}])`), not counter totals"
                    ),
                );
            } else if !q.uses_window {
                warn(
                    "fixed-range",
                    field,
                    format!(
                        "{field}: uses a fixed range instead of {{{{window}}}}: consecutive intervals overlap and the same events are counted twice"
                    ),
                );
            }
        }
        match &m.rule.kind {
            MetricKind::Ratio { .. } => {
                if let (Some(bad), Some(total)) = (query("bad"), query("total")) {
                    for (code, message) in ratio_mismatch(bad, total) {
                        warn(code, "bad", message);
                    }
                }
            }
            MetricKind::Histogram {
                quantile,
                bucket_growth,
                ..
            } => {
                if let Some(q) = query("buckets")
                    && !q
                        .selectors
                        .iter()
                        .any(|s| s.name.as_deref().is_some_and(|n| n.ends_with("_bucket")))
                {
                    warn(
                        "bucket-name",
                        "buckets",
                        "buckets: the query reads no `_bucket` series; histogram buckets are the `<name>_bucket` counters".into(),
                    );
                }
                if let (Some(p), Some(m_inc)) = (quantile, m.rule.max_increase)
                    && let Some(message) = resolution(*p, m_inc, *bucket_growth)
                {
                    warn(
                        "bucket-resolution",
                        if bucket_growth.is_some() {
                            "bucket_growth"
                        } else {
                            "max_increase"
                        },
                        message,
                    );
                }
            }
            MetricKind::Gauge { .. } => {}
        }
    }
    set_lints(report, set);
}

fn set_lints(report: &mut Report<'_>, set: &RuleSet) {
    let metrics_path = vec![key("metrics")];
    let at = report.positions.key(&metrics_path);
    if !set.metrics.is_empty() && !set.metrics.iter().any(|m| m.critical) {
        report.warn(
            "no-critical",
            at,
            &metrics_path,
            None,
            "no metric is critical: mark the one a release must never get past (usually the error rate) with `critical: true`".into(),
        );
    }
    if !set.metrics.is_empty() && set.metrics.iter().all(|m| m.dry_run) {
        report.warn(
            "all-dry-run",
            at,
            &metrics_path,
            None,
            "every metric is dry_run: this rule set reports but can never roll a canary back"
                .into(),
        );
    }
    let groups: BTreeSet<&str> = set
        .metrics
        .iter()
        .map(|m| {
            m.group
                .as_deref()
                .unwrap_or(crate::judge::mann_whitney::DEFAULT_GROUP)
        })
        .collect();
    for group in set.mann_whitney.group_weights.keys() {
        if !groups.contains(group.as_str()) {
            let path = vec![key("mann_whitney"), key("group_weights"), key(group)];
            let at = report.positions.key(&path);
            report.warn(
                "unknown-group",
                at,
                &path,
                None,
                format!(
                    "group {group:?} has a weight but no metric is in it (groups: {})",
                    groups.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
}

/// Why `bad` may not be a subset of `total`.
fn ratio_mismatch(bad: &QueryInfo, total: &QueryInfo) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let names = |q: &QueryInfo| -> BTreeSet<String> {
        q.selectors.iter().filter_map(|s| s.name.clone()).collect()
    };
    let (bad_names, total_names) = (names(bad), names(total));
    if bad_names != total_names {
        out.push((
            "ratio-series",
            format!(
                "bad and total select different metrics ({} vs {}): bad events should be a subset of the events total counts, with one extra matcher",
                list(&bad_names),
                list(&total_names)
            ),
        ));
    } else {
        for t in &total.selectors {
            let covers =
                |b: &&SelectorInfo| b.name == t.name && b.matchers.is_superset(&t.matchers);
            if !bad.selectors.iter().any(|b| covers(&b)) {
                let missing: Vec<String> = bad
                    .selectors
                    .iter()
                    .filter(|b| b.name == t.name)
                    .flat_map(|b| t.matchers.difference(&b.matchers).cloned())
                    .collect();
                out.push((
                    "ratio-series",
                    format!(
                        "total filters on {} which bad does not: bad is then not a subset of total and the ratio can exceed 100%",
                        if missing.is_empty() {
                            format!("`{}`", t.describe())
                        } else {
                            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                        }
                    ),
                ));
            }
        }
    }
    let kept = |g: &Grouping| match g {
        Grouping::By(l) => Some(l.clone()),
        Grouping::All => Some(BTreeSet::new()),
        _ => None,
    };
    if let (Some(b), Some(t)) = (kept(&bad.grouping), kept(&total.grouping))
        && b != t
    {
        out.push((
            "ratio-grouping",
            format!(
                "bad keeps labels ({}) but total keeps ({}): the two are matched per series, so they must group alike",
                list(&b),
                list(&t)
            ),
        ));
    }
    out
}

/// A number without trailing zeros: `25`, `1.05`.
fn short(v: f64) -> String {
    let s = fmt_num(v);
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn list(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The bucket-resolution note for a quantile margin, if one is due.
///
/// Quantiles from buckets are only known to lie between two edges: comparing a lower bound of
/// the canary's quantile with an upper bound of the baseline's loses up to one bucket on each
/// side, so with edges growing ×g a shift is only resolved beyond about (1+m)·g² (JUDGE.md).
/// The warning fires when the buckets alone (g²) are coarser than the margin (1+m).
fn resolution(p: f64, margin: f64, growth: Option<f64>) -> Option<String> {
    let fmt_num = short;
    let label = format!("p{}", fmt_num(100.0 * p));
    let needed = (1.0 + margin).sqrt();
    match growth {
        Some(g) if g * g > 1.0 + margin => Some(format!(
            "a {label} margin of {}% is finer than buckets growing ×{} can resolve: quantiles are only known between edges, so the effective margin is about ×{} ({}%); use buckets growing by at most ×{} or a larger margin",
            fmt_num(100.0 * margin),
            fmt_num(g),
            fmt_num((1.0 + margin) * g * g),
            fmt_num(100.0 * ((1.0 + margin) * g * g - 1.0)),
            fmt_num(needed)
        )),
        Some(_) => None,
        None if margin <= 0.25 => Some(format!(
            "a {label} margin of {}% needs buckets growing by at most ×{} (Prometheus' default buckets grow ×2-2.5); add `bucket_growth: <factor>` so this can be checked",
            fmt_num(100.0 * margin),
            fmt_num(needed)
        )),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Template;
    use crate::rules::query::analyse;

    fn q(s: &str) -> QueryInfo {
        analyse(&Template(s.into())).unwrap()
    }

    #[test]
    fn ratio_subsets_pass_and_mismatches_warn() {
        let total = q("sum(increase(r{ {{selector}} }[{{window}}]))");
        let bad = q(r#"sum(increase(r{ {{selector}}, code=~"5.." }[{{window}}]))"#);
        assert!(ratio_mismatch(&bad, &total).is_empty());
        let other = q("sum(increase(errors_total{ {{selector}} }[{{window}}]))");
        assert_eq!(ratio_mismatch(&other, &total)[0].0, "ratio-series");
        let narrower = q(r#"sum(increase(r{ {{selector}}, path="/api" }[{{window}}]))"#);
        let m = ratio_mismatch(&bad, &narrower);
        assert!(m[0].1.contains(r#"`path="/api"`"#), "{m:?}");
        let by = q("sum by (instance) (increase(r{ {{selector}} }[{{window}}]))");
        assert_eq!(ratio_mismatch(&bad, &by)[0].0, "ratio-grouping");
    }

    #[test]
    fn resolution_needs_fine_buckets() {
        assert!(resolution(0.99, 0.10, Some(1.1)).is_some());
        assert!(resolution(0.99, 0.25, Some(1.1)).is_none());
        assert!(
            resolution(0.99, 0.5, Some(2.0))
                .unwrap()
                .contains("×6 (500%)")
        );
        assert!(
            resolution(0.99, 0.10, None)
                .unwrap()
                .contains("bucket_growth")
        );
        assert!(resolution(0.99, 0.5, None).is_none());
    }
}
