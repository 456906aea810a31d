//! `canaryd rules import-kayenta CONFIG.json`: a Kayenta canary config as a canaryd rule file,
//! with a list of what could not be carried over.
//!
//! What maps:
//! - each Prometheus metric becomes a `gauge` whose query is Kayenta's: the inline PromQL
//!   (`customInlineTemplate`, or a `PromQL:` filter template), or Kayenta's default
//!   `avg(metricName{filters}) by (groupByFields)`. Matchers on `${scope}` / `${location}` are
//!   replaced by `{{selector}}` (canaryd's arms are label sets, not server-group names), found
//!   through the parsed query, not by text;
//! - `direction`, `effectSize.allowedIncrease` / `allowedDecrease` (as `max_increase`),
//!   `critical`, `groups` (the first), `classifier.groupWeights`, `scoreThresholds`,
//!   `nanStrategy` and `outliers` (rule-set-wide in canaryd, carried when the metrics agree);
//! - `direction: either` (Kayenta's default) becomes two metrics, one per direction, each with
//!   weight 0.5 so the group's score counts the pair as one metric.
//!
//! What does not, and is listed: non-Prometheus queries (Stackdriver, Datadog, Atlas, ...),
//! `resourceType` scoping, other template variables, `mustHaveData`, `criticalIncrease` /
//! `criticalDecrease`, `measure` other than `meanRatio`, second groups, disagreeing NaN or
//! outlier strategies.

use super::query::{self, PROBE_LABEL};
use super::{JudgeKind, Template, analyse};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, VectorSelector};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// An imported rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    /// The rule file (YAML, with the notes as comments at the top).
    pub yaml: String,
    /// The rule set's name.
    pub name: String,
    /// What could not be carried over, one line each.
    pub notes: Vec<String>,
    /// Metrics written.
    pub metrics: usize,
    /// Kayenta metrics left out.
    pub skipped: usize,
}

const SCOPE: &str = "__kayenta_scope__";
const MARK: &str = "__canaryd_selector__";

/// One metric of the output.
struct Out {
    name: String,
    query: String,
    direction: &'static str,
    max_increase: f64,
    critical: bool,
    weight: Option<f64>,
    group: Option<String>,
}

/// Converts a Kayenta canary config (JSON) for the given judge.
pub fn import(config: &str, judge: JudgeKind) -> Result<Import, String> {
    let v: Value =
        serde_json::from_str(config).map_err(|e| format!("not a Kayenta canary config: {e}"))?;
    let metrics = v["metrics"]
        .as_array()
        .ok_or("not a Kayenta canary config: no `metrics` list")?;
    let mut notes = Vec::new();
    let config_name = v["name"].as_str().unwrap_or("kayenta-import");
    let name = rule_name(config_name);
    if let Some(j) = v["judge"]["name"].as_str()
        && !j.starts_with("NetflixACAJudge")
    {
        notes.push(format!(
            "judge {j:?}: replaced by canaryd's {} judge",
            judge_word(judge)
        ));
    }
    let templates = v["templates"].as_object().cloned().unwrap_or_default();
    let mut out: Vec<Out> = Vec::new();
    let mut skipped = 0;
    let mut nan = BTreeSet::new();
    let mut outliers = BTreeSet::new();
    let mut used = BTreeSet::new();
    for m in metrics {
        let label = m["name"].as_str().unwrap_or("unnamed");
        let before = notes.len();
        let promql = match promql_of(m, &templates, &mut notes) {
            Ok(q) => q,
            Err(why) => {
                notes.push(format!("metric {label:?}: not imported: {why}"));
                skipped += 1;
                continue;
            }
        };
        let query = match scope_to_selector(&promql) {
            Ok((q, scoped_all)) => {
                if scoped_all {
                    notes.push(format!(
                        "metric {label:?}: the query has no `${{scope}}` matcher; {{{{selector}}}} was added to every selector"
                    ));
                }
                q
            }
            Err(why) => {
                notes.truncate(before);
                notes.push(format!("metric {label:?}: not imported: {why}"));
                skipped += 1;
                continue;
            }
        };
        if let Err(p) = query::analyse(&Template(query.clone())) {
            notes.truncate(before);
            notes.push(format!(
                "metric {label:?}: not imported: the converted query is not usable: {}",
                p.message
            ));
            skipped += 1;
            continue;
        }
        let canary = &m["analysisConfigurations"]["canary"];
        nan.insert(
            canary["nanStrategy"]
                .as_str()
                .unwrap_or("remove")
                .to_string(),
        );
        let outlier = match canary["outliers"]["strategy"].as_str() {
            Some("remove") => format!(
                "{}",
                canary["outliers"]["outlierFactor"].as_f64().unwrap_or(3.0)
            ),
            _ => "keep".to_string(),
        };
        outliers.insert(outlier);
        note_unsupported(label, canary, m, &mut notes);
        let groups: Vec<String> = m["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if groups.len() > 1 {
            notes.push(format!(
                "metric {label:?}: groups {groups:?}: canaryd has one group per metric; kept {:?}",
                groups[0]
            ));
        }
        let critical = canary["critical"].as_bool().unwrap_or(false);
        let effect = &canary["effectSize"];
        let increase = effect["allowedIncrease"].as_f64().unwrap_or(1.0) - 1.0;
        let decrease = 1.0 - effect["allowedDecrease"].as_f64().unwrap_or(1.0);
        let directions: Vec<(&'static str, f64)> =
            match canary["direction"].as_str().unwrap_or("either") {
                "increase" => vec![("increase", increase)],
                "decrease" => vec![("decrease", decrease)],
                _ => vec![("increase", increase), ("decrease", decrease)],
            };
        let base = unique(&rule_name(label), &mut used);
        for (direction, margin) in &directions {
            let margin = margin_for(judge, *margin, label, direction, &mut notes);
            let metric_name = if directions.len() == 2 && *direction == "decrease" {
                unique(&format!("{base}-decrease"), &mut used)
            } else {
                base.clone()
            };
            out.push(Out {
                name: metric_name,
                query: query.clone(),
                direction,
                max_increase: margin,
                critical,
                weight: (directions.len() == 2).then_some(0.5),
                group: groups.first().cloned(),
            });
        }
        if directions.len() == 2 {
            notes.push(format!(
                "metric {label:?}: direction either: written as two metrics ({base}, {base}-decrease), weight 0.5 each"
            ));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "nothing to import: none of the {} metrics has a Prometheus query canaryd can use\n{}",
            metrics.len(),
            notes.join("\n")
        ));
    }
    let nan_as_zero = nan.len() == 1 && nan.contains("replace");
    if nan.len() > 1 {
        notes.push("nanStrategy differs between metrics; canaryd has one setting per rule set: kept `remove`".into());
    }
    let outlier_factor = match (outliers.len(), outliers.iter().next()) {
        (1, Some(f)) if f != "keep" => f.parse::<f64>().ok(),
        (1, _) => None,
        _ => {
            notes.push("outlier strategies differ between metrics; canaryd has one setting per rule set: outliers are kept".into());
            None
        }
    };
    let classifier = &v["classifier"];
    let group_weights: BTreeMap<String, f64> = classifier["groupWeights"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, w)| w.as_f64().map(|w| (k.clone(), w)))
                .collect()
        })
        .unwrap_or_default();
    if judge != JudgeKind::MannWhitney && !group_weights.is_empty() {
        notes.push("classifier.groupWeights: used by the mann_whitney judge only; not carried for the sequential judge".into());
    }
    let mut yaml = String::new();
    let _ = writeln!(
        yaml,
        "# Imported from Kayenta canary config {config_name:?} by `canaryd rules import-kayenta`."
    );
    if notes.is_empty() {
        let _ = writeln!(yaml, "# Everything was carried over.");
    } else {
        let _ = writeln!(yaml, "# Not carried over (review before use):");
        for n in &notes {
            let _ = writeln!(yaml, "#   - {}", n.replace('\n', " "));
        }
    }
    let _ = writeln!(yaml, "name: {name}");
    let _ = writeln!(yaml, "judge: {}", judge_word(judge));
    let description = v["description"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("Imported from Kayenta canary config {config_name}"));
    let _ = writeln!(yaml, "description: {}", quote(&description));
    if judge == JudgeKind::MannWhitney {
        let _ = writeln!(yaml, "mann_whitney:");
        if let Some(p) = classifier["scoreThresholds"]["pass"].as_f64() {
            let _ = writeln!(yaml, "  pass_threshold: {p}");
        }
        if let Some(m) = classifier["scoreThresholds"]["marginal"].as_f64() {
            let _ = writeln!(yaml, "  marginal_threshold: {m}");
        }
        if !group_weights.is_empty() {
            let _ = writeln!(yaml, "  group_weights:");
            for (g, w) in &group_weights {
                let _ = writeln!(yaml, "    {}: {w}", quote(g));
            }
        }
        if let Some(f) = outlier_factor {
            let _ = writeln!(yaml, "  outlier_iqr_factor: {f}");
        }
        if nan_as_zero {
            let _ = writeln!(yaml, "  nan_as_zero: true");
        }
    }
    let _ = writeln!(yaml, "metrics:");
    for o in &out {
        let _ = writeln!(yaml, "  - name: {}", o.name);
        let _ = writeln!(yaml, "    kind: gauge");
        let _ = writeln!(yaml, "    query: {}", quote(&o.query));
        if o.direction != "increase" {
            let _ = writeln!(yaml, "    direction: {}", o.direction);
        }
        let _ = writeln!(
            yaml,
            "    max_increase: {}%",
            (o.max_increase * 100.0 * 1e4).round() / 1e4
        );
        if o.critical {
            let _ = writeln!(yaml, "    critical: true");
        }
        if let Some(w) = o.weight {
            let _ = writeln!(yaml, "    weight: {w}");
        }
        if let Some(g) = &o.group {
            let _ = writeln!(yaml, "    group: {}", quote(g));
        }
    }
    let analysis = analyse(&format!("{name}.yaml"), &yaml);
    if !analysis.errors.is_empty() {
        let errors: Vec<String> = analysis.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "the converted rule file does not validate (please report this):\n{}\n{yaml}",
            errors.join("\n")
        ));
    }
    Ok(Import {
        yaml,
        name,
        notes,
        metrics: out.len(),
        skipped,
    })
}

fn judge_word(judge: JudgeKind) -> &'static str {
    match judge {
        JudgeKind::Sequential => "sequential",
        JudgeKind::MannWhitney => "mann_whitney",
        JudgeKind::Threshold => "threshold",
    }
}

/// A margin the judge accepts: the sequential judge needs one above zero.
fn margin_for(
    judge: JudgeKind,
    margin: f64,
    label: &str,
    direction: &str,
    notes: &mut Vec<String>,
) -> f64 {
    let m = if margin.is_finite() {
        margin.max(0.0)
    } else {
        0.0
    };
    let m = if direction == "decrease" {
        m.min(0.99)
    } else {
        m
    };
    if judge != JudgeKind::MannWhitney && m <= 0.0 {
        notes.push(format!(
            "metric {label:?}: Kayenta's effect size allows no {direction} at all; the {} judge needs a margin: set to 10%, adjust it",
            judge_word(judge)
        ));
        return 0.10;
    }
    m
}

fn note_unsupported(label: &str, canary: &Value, m: &Value, notes: &mut Vec<String>) {
    if canary["mustHaveData"].as_bool() == Some(true) {
        notes.push(format!(
            "metric {label:?}: mustHaveData: not supported (no data is never evidence in canaryd; a critical metric without data still fails the mann_whitney score)"
        ));
    }
    for k in ["criticalIncrease", "criticalDecrease"] {
        if canary["effectSize"][k].is_number() {
            notes.push(format!("metric {label:?}: effectSize.{k}: not supported"));
        }
    }
    if let Some(measure) = canary["effectSize"]["measure"].as_str()
        && measure != "meanRatio"
    {
        notes.push(format!(
            "metric {label:?}: effectSize.measure {measure:?}: canaryd's margins are mean ratios"
        ));
    }
    if let Some(scope) = m["scopeName"].as_str()
        && scope != "default"
    {
        notes.push(format!(
            "metric {label:?}: scopeName {scope:?}: canaryd has one canary and one baseline scope"
        ));
    }
}

/// The metric's PromQL, with `${scope}` and friends still in it.
fn promql_of(
    m: &Value,
    templates: &serde_json::Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    let q = &m["query"];
    let kind = q["type"]
        .as_str()
        .or(q["serviceType"].as_str())
        .unwrap_or("");
    if kind != "prometheus" {
        let what = q["metricType"]
            .as_str()
            .or(q["q"].as_str())
            .or(q["customInlineTemplate"].as_str())
            .or(q["metricName"].as_str())
            .unwrap_or("");
        return Err(format!(
            "a {} query ({what}); canaryd reads Prometheus only",
            if kind.is_empty() {
                "non-Prometheus"
            } else {
                kind
            }
        ));
    }
    let label = m["name"].as_str().unwrap_or("unnamed");
    if let Some(t) = q["resourceType"].as_str()
        && !t.is_empty()
    {
        notes.push(format!(
            "metric {label:?}: resourceType {t:?}: its scope filters are replaced by {{{{selector}}}}"
        ));
    }
    let filter = match (
        q["customInlineTemplate"].as_str(),
        q["customFilterTemplate"].as_str(),
        q["customFilter"].as_str(),
    ) {
        (Some(inline), _, _) if !inline.trim().is_empty() => Some(inline.to_string()),
        (_, Some(name), _) if !name.is_empty() => Some(
            templates
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("filter template {name:?} is not in `templates`"))?
                .to_string(),
        ),
        (_, _, Some(f)) if !f.is_empty() => Some(f.to_string()),
        _ => None,
    };
    let filter = filter.map(|f| substitute(&f, label, notes));
    if let Some(f) = &filter
        && let Some(promql) = f.trim().strip_prefix("PromQL:")
    {
        return Ok(promql.trim().to_string());
    }
    let metric = q["metricName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("no metricName and no PromQL template")?;
    let mut matchers: Vec<String> = filter
        .map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(bindings) = q["labelBindings"].as_array() {
        matchers.extend(
            bindings
                .iter()
                .filter_map(|b| b.as_str().map(str::to_string)),
        );
    }
    let mut promql = format!("avg({metric}{{{}}})", matchers.join(","));
    if let Some(by) = q["groupByFields"].as_array()
        && !by.is_empty()
    {
        let fields: Vec<&str> = by.iter().filter_map(Value::as_str).collect();
        promql.push_str(&format!(" by ({})", fields.join(",")));
    }
    Ok(promql)
}

/// Replaces Kayenta's template variables: scope-like ones by a placeholder whose matchers are
/// then dropped; others are noted.
fn substitute(text: &str, label: &str, notes: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let var = &after[..end];
        if var != "scope" {
            notes.push(format!(
                "metric {label:?}: template variable ${{{var}}}: canaryd scopes the arms by labels only; matchers using it were dropped"
            ));
        }
        out.push_str(SCOPE);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Drops matchers on substituted variables and puts `{{selector}}` where they were. Returns
/// the template and whether no selector had such a matcher (then every selector gets one).
fn scope_to_selector(promql: &str) -> Result<(String, bool), String> {
    let mut expr =
        query::parse(promql).map_err(|e| format!("the query does not parse: {}", e.trim()))?;
    let mut scoped = 0;
    visit_selectors(&mut expr, &mut |vs: &mut VectorSelector| {
        let before = vs.matchers.matchers.len();
        vs.matchers.matchers.retain(|m| !m.value.contains(SCOPE));
        if vs.matchers.matchers.len() < before {
            vs.matchers
                .matchers
                .push(Matcher::new(MatchOp::Equal, PROBE_LABEL, MARK));
            scoped += 1;
        }
    });
    let all = scoped == 0;
    if all {
        visit_selectors(&mut expr, &mut |vs: &mut VectorSelector| {
            vs.matchers
                .matchers
                .push(Matcher::new(MatchOp::Equal, PROBE_LABEL, MARK));
        });
    }
    let printed = expr.to_string();
    let marker = format!("{PROBE_LABEL}=\"{MARK}\"");
    if !printed.contains(&marker) {
        return Err("could not place {{selector}} in the query".into());
    }
    Ok((printed.replace(&marker, " {{selector}} "), all))
}

fn visit_selectors(e: &mut Expr, f: &mut dyn FnMut(&mut VectorSelector)) {
    match e {
        Expr::Aggregate(a) => {
            visit_selectors(&mut a.expr, f);
            if let Some(p) = a.param.as_mut() {
                visit_selectors(p, f);
            }
        }
        Expr::Unary(u) => visit_selectors(&mut u.expr, f),
        Expr::Binary(b) => {
            visit_selectors(&mut b.lhs, f);
            visit_selectors(&mut b.rhs, f);
        }
        Expr::Paren(p) => visit_selectors(&mut p.expr, f),
        Expr::Subquery(s) => visit_selectors(&mut s.expr, f),
        Expr::VectorSelector(v) => f(v),
        Expr::MatrixSelector(m) => f(&mut m.vs),
        Expr::Call(c) => {
            for a in c.args.args.iter_mut() {
                visit_selectors(a, f);
            }
        }
        _ => {}
    }
}

/// A rule-set or metric name from free text.
fn rule_name(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-').chars().take(56).collect::<String>();
    if s.is_empty() { "imported".into() } else { s }
}

fn unique(name: &str, used: &mut BTreeSet<String>) -> String {
    let mut candidate = name.to_string();
    let mut n = 2;
    while used.contains(&candidate) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    used.insert(candidate.clone());
    candidate
}

/// A YAML single-quoted scalar.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''").replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matchers_become_the_selector() {
        let (q, all) = scope_to_selector(&format!(
            "sum(rate(http_requests_total{{app=\"{SCOPE}\",code=~\"5..\"}}[1m])) / sum(rate(http_requests_total{{app=\"{SCOPE}\"}}[1m]))"
        ))
        .unwrap();
        assert!(!all);
        assert_eq!(
            q,
            "sum(rate(http_requests_total{ {{selector}} ,code=~\"5..\"}[1m])) / sum(rate(http_requests_total{ {{selector}} }[1m]))"
        );
        assert!(query::analyse(&Template(q)).is_ok());
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(rule_name("My Canary Config!"), "my-canary-config");
        let mut used = BTreeSet::new();
        assert_eq!(unique("a", &mut used), "a");
        assert_eq!(unique("a", &mut used), "a-2");
    }
}
