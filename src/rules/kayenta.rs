//! `canaryd rules import-kayenta CONFIG.json`: a Kayenta canary config as a canaryd rule file,
//! saying what was converted and what could not be carried over (shared pieces in
//! [`super::import`]).
//!
//! What maps:
//! - each Prometheus metric's query: the inline PromQL (`customInlineTemplate`, or a `PromQL:`
//!   filter template), or Kayenta's default `avg(metricName{filters}) by (groupByFields)`.
//!   `${scope}` becomes `{{selector}}` wherever it stands: a whole matcher
//!   (`{job="a", ${scope}}`), a label value (`version="${scope}"`) or inside a regex
//!   (`pod=~"${scope}-.*"`): the matcher is replaced by the arm's matchers. Other variables:
//!   `--var NAME=LABEL` treats them like `${scope}` (the arms carry `LABEL`), `--value
//!   NAME=TEXT` substitutes a fixed text; unmapped ones have their matchers dropped (noted);
//! - with `--judge sequential`, a query that is a ratio of one counter (errors over requests)
//!   becomes a `ratio` metric; everything else a `gauge` compared as canary/baseline;
//! - `direction`, `effectSize.allowedIncrease` / `allowedDecrease` (as `max_increase`),
//!   `critical`, `groups` (the first), `classifier.groupWeights`, `scoreThresholds`,
//!   `nanStrategy` and `outliers` (rule-set-wide in canaryd, carried when the metrics agree);
//! - `direction: either` (Kayenta's default) becomes two metrics, one per direction, each with
//!   weight 0.5 so the group's score counts the pair as one metric;
//! - `effectSize.criticalIncrease` / `criticalDecrease`: a second metric `NAME-critical` with
//!   that margin and `critical: true` (beyond that effect the whole canary fails, as in
//!   Kayenta);
//! - `mustHaveData` on a critical metric: canaryd's mann_whitney judge already fails a critical
//!   metric without data; elsewhere it is listed as not carried over.
//!
//! What does not, and is listed: non-Prometheus queries (Stackdriver, Datadog, Atlas, ...),
//! `resourceType` scoping, `mustHaveData` on non-critical metrics or for the sequential judge,
//! `measure` other than `meanRatio`, second groups, disagreeing NaN or outlier strategies.

use super::import::{
    self, DROP, Draft, DraftKind, DraftSet, Import, ImportError, Judging, Options, SCOPE, Shape,
    VarUse, judge_word, quote, rule_name, unique,
};
use super::{JudgeKind, Template};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Converts a Kayenta canary config (JSON); `document` names it in errors.
pub fn import(config: &str, document: &str, opts: &Options) -> Result<Import, ImportError> {
    let format = |message: String| ImportError::Format {
        document: document.into(),
        expected: "a Kayenta canary config (JSON)",
        message,
    };
    let v: Value = serde_json::from_str(config).map_err(|e| format(e.to_string()))?;
    let metrics = v["metrics"]
        .as_array()
        .ok_or_else(|| format("no `metrics` list".into()))?;
    let config_name = v["name"].as_str().unwrap_or("kayenta-import");
    let judge = opts.judging.kind();
    let mut set = DraftSet {
        name: rule_name(config_name),
        origin: format!(
            "Imported from Kayenta canary config {config_name:?} by `canaryd rules import-kayenta`."
        ),
        judge: Some(judge),
        description: v["description"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("Imported from Kayenta canary config {config_name}")),
        ..DraftSet::default()
    };
    if let Some(j) = v["judge"]["name"].as_str()
        && !j.starts_with("NetflixACAJudge")
    {
        set.left_out.push(format!(
            "judge {j:?}: replaced by canaryd's {} judge",
            judge_word(judge)
        ));
    }
    let templates = v["templates"].as_object().cloned().unwrap_or_default();
    let mut strategies = Strategies::default();
    let mut used = BTreeSet::new();
    for m in metrics {
        metric(m, &templates, opts, &mut set, &mut strategies, &mut used);
    }
    if set.metrics.is_empty() {
        let mut notes = vec![format!(
            "none of the {} metrics has a Prometheus query canaryd can use",
            metrics.len()
        )];
        notes.append(&mut set.left_out);
        return Err(ImportError::Nothing {
            document: document.into(),
            notes,
        });
    }
    set_options(&v["classifier"], judge, &strategies, &mut set);
    set.finish()
}

/// NaN and outlier strategies seen across metrics.
#[derive(Default)]
struct Strategies {
    nan: BTreeSet<String>,
    outliers: BTreeSet<String>,
}

/// One Kayenta metric: its drafts, notes and strategies.
fn metric(
    m: &Value,
    templates: &serde_json::Map<String, Value>,
    opts: &Options,
    set: &mut DraftSet,
    strategies: &mut Strategies,
    used: &mut BTreeSet<String>,
) {
    let label = m["name"].as_str().unwrap_or("unnamed");
    let mut notes = Vec::new();
    let converted = promql_of(m, templates, opts, &mut notes).and_then(|q| import::convert(&q));
    let converted = match converted {
        Ok(c) if query_usable(&c.template) => c,
        Ok(_) => {
            set.left_out.push(format!(
                "metric {label:?}: not imported: the converted query is not usable"
            ));
            set.skipped += 1;
            return;
        }
        Err(why) => {
            set.left_out
                .push(format!("metric {label:?}: not imported: {why}"));
            set.skipped += 1;
            return;
        }
    };
    import::placement_notes(label, &converted, &mut notes);
    let canary = &m["analysisConfigurations"]["canary"];
    strategies.nan.insert(
        canary["nanStrategy"]
            .as_str()
            .unwrap_or("remove")
            .to_string(),
    );
    strategies
        .outliers
        .insert(match canary["outliers"]["strategy"].as_str() {
            Some("remove") => {
                import::num(canary["outliers"]["outlierFactor"].as_f64().unwrap_or(3.0))
            }
            _ => "keep".to_string(),
        });
    note_unsupported(label, canary, m, opts.judging, &mut notes);
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
    let base = Draft {
        critical: canary["critical"].as_bool().unwrap_or(false),
        group: groups.first().cloned(),
        ..Draft::default()
    };
    directions(label, &converted, canary, base, opts, set, used);
    // A variable mapped to the arms was converted, not left out.
    let (mapped, left_out): (Vec<String>, Vec<String>) = notes
        .into_iter()
        .partition(|n| n.contains(" → {{selector}}: "));
    set.converted.extend(mapped);
    set.left_out.extend(left_out);
}

fn query_usable(template: &str) -> bool {
    super::query::analyse(&Template(template.to_string())).is_ok()
}

/// The metric per direction, and its critical companions.
fn directions(
    label: &str,
    converted: &import::Converted,
    canary: &Value,
    base: Draft,
    opts: &Options,
    set: &mut DraftSet,
    used: &mut BTreeSet<String>,
) {
    let effect = &canary["effectSize"];
    let increase = effect["allowedIncrease"].as_f64().unwrap_or(1.0) - 1.0;
    let decrease = 1.0 - effect["allowedDecrease"].as_f64().unwrap_or(1.0);
    let wanted: Vec<(bool, f64)> = match canary["direction"].as_str().unwrap_or("either") {
        "increase" => vec![(false, increase)],
        "decrease" => vec![(true, decrease)],
        _ => vec![(false, increase), (true, decrease)],
    };
    let name = unique(&rule_name(label), used);
    let ratio = match (&converted.shape, opts.judging, wanted.as_slice()) {
        (Shape::Ratio(r), Judging::Sequential, [(false, _)]) => Some(r.clone()),
        _ => None,
    };
    let kind = match &ratio {
        Some(r) => DraftKind::Ratio {
            bad: r.bad.clone(),
            total: r.total.clone(),
        },
        None => DraftKind::Gauge {
            query: converted.template.clone(),
        },
    };
    set.converted.push(format!(
        "metric {label:?} → {} ({}){}",
        name,
        if ratio.is_some() {
            "a ratio of one counter: `ratio`, bad events over all in the window"
        } else {
            "its query as a `gauge`, canary over baseline"
        },
        if wanted.len() == 2 {
            format!("; direction either: two metrics ({name}, {name}-decrease), weight 0.5 each")
        } else {
            String::new()
        }
    ));
    for (decrease, margin) in &wanted {
        let margin = margin_for(opts.judging.kind(), *margin, *decrease, label, set);
        let metric_name = if wanted.len() == 2 && *decrease {
            unique(&format!("{name}-decrease"), used)
        } else {
            name.clone()
        };
        let critical = critical_margin(effect, *decrease);
        let draft = Draft {
            name: metric_name.clone(),
            kind: kind.clone(),
            decrease: *decrease,
            max_increase: Some(margin),
            weight: (wanted.len() == 2).then_some(0.5),
            critical: base.critical && critical.is_none(),
            ..base.clone()
        };
        set.metrics.push(draft.clone());
        if let Some(c) = critical.filter(|c| *c > margin) {
            let companion = unique(&format!("{metric_name}-critical"), used);
            let field = if *decrease {
                "criticalDecrease"
            } else {
                "criticalIncrease"
            };
            set.converted.push(format!(
                "metric {label:?}: effectSize.{field} → {companion}: the same query with a {}% margin and `critical: true`: beyond it the whole canary fails, as in Kayenta",
                import::num(c * 100.0)
            ));
            set.metrics.push(Draft {
                name: companion,
                max_increase: Some(c),
                critical: true,
                weight: None,
                ..draft
            });
        }
    }
}

/// The critical effect size as a margin, when given.
fn critical_margin(effect: &Value, decrease: bool) -> Option<f64> {
    if decrease {
        effect["criticalDecrease"]
            .as_f64()
            .map(|d| (1.0 - d).clamp(0.0, 0.99))
    } else {
        effect["criticalIncrease"]
            .as_f64()
            .map(|i| (i - 1.0).max(0.0))
    }
}

/// The rule-set-wide options: NaN, outliers, group weights, score thresholds.
fn set_options(classifier: &Value, judge: JudgeKind, s: &Strategies, set: &mut DraftSet) {
    let nan_as_zero = s.nan.len() == 1 && s.nan.contains("replace");
    if s.nan.len() > 1 {
        set.left_out.push("nanStrategy differs between metrics; canaryd has one setting per rule set: kept `remove`".into());
    }
    let outlier_factor = match (s.outliers.len(), s.outliers.iter().next()) {
        (1, Some(f)) if f != "keep" => f.parse::<f64>().ok(),
        (1, _) => None,
        _ => {
            set.left_out.push("outlier strategies differ between metrics; canaryd has one setting per rule set: outliers are kept".into());
            None
        }
    };
    let mut group_weights: BTreeMap<String, f64> = classifier["groupWeights"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, w)| w.as_f64().map(|w| (k.clone(), w)))
                .collect()
        })
        .unwrap_or_default();
    let used: BTreeSet<&str> = set
        .metrics
        .iter()
        .filter_map(|m| m.group.as_deref())
        .collect();
    let unused: Vec<String> = group_weights
        .keys()
        .filter(|g| !used.contains(g.as_str()))
        .cloned()
        .collect();
    for g in &unused {
        group_weights.remove(g);
        set.left_out.push(format!(
            "classifier.groupWeights {g:?}: no imported metric is in this group; its weight was dropped"
        ));
    }
    if judge != JudgeKind::MannWhitney {
        if !group_weights.is_empty() {
            set.left_out.push("classifier.groupWeights: used by the mann_whitney judge only; not carried for the sequential judge".into());
        }
        return;
    }
    let lines = &mut set.mann_whitney;
    if let Some(p) = classifier["scoreThresholds"]["pass"].as_f64() {
        lines.push(format!("pass_threshold: {p}"));
    }
    if let Some(m) = classifier["scoreThresholds"]["marginal"].as_f64() {
        lines.push(format!("marginal_threshold: {m}"));
    }
    if !group_weights.is_empty() {
        lines.push("group_weights:".into());
        for (g, w) in &group_weights {
            lines.push(format!("  {}: {w}", quote(g)));
        }
    }
    if let Some(f) = outlier_factor {
        lines.push(format!("outlier_iqr_factor: {f}"));
    }
    if nan_as_zero {
        lines.push("nan_as_zero: true".into());
    }
}

/// A margin the judge accepts: the sequential judge needs one above zero.
fn margin_for(
    judge: JudgeKind,
    margin: f64,
    decrease: bool,
    label: &str,
    set: &mut DraftSet,
) -> f64 {
    let m = if margin.is_finite() {
        margin.max(0.0)
    } else {
        0.0
    };
    let m = if decrease { m.min(0.99) } else { m };
    if judge != JudgeKind::MannWhitney && m <= 0.0 {
        let direction = if decrease { "decrease" } else { "increase" };
        set.left_out.push(format!(
            "metric {label:?}: Kayenta's effect size allows no {direction} at all; the {} judge needs a margin: set to 10%, adjust it",
            judge_word(judge)
        ));
        return 0.10;
    }
    m
}

fn note_unsupported(
    label: &str,
    canary: &Value,
    m: &Value,
    judging: Judging,
    notes: &mut Vec<String>,
) {
    let critical = canary["critical"].as_bool().unwrap_or(false);
    if canary["mustHaveData"].as_bool() == Some(true) {
        notes.push(if critical && judging == Judging::MannWhitney {
            format!("metric {label:?}: mustHaveData: nothing to write: canaryd's mann_whitney judge fails a critical metric without data")
        } else {
            format!("metric {label:?}: mustHaveData: not carried over: in canaryd no data is never evidence (a non-critical metric without data is left out of the score, and the sequential judge waits for data)")
        });
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

/// The metric's PromQL, with `${scope}` and the other variables substituted.
fn promql_of(
    m: &Value,
    templates: &serde_json::Map<String, Value>,
    opts: &Options,
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
        let kind = if kind.is_empty() {
            "non-Prometheus"
        } else {
            kind
        };
        return Err(format!(
            "a {kind} query ({what}); canaryd reads Prometheus only"
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
    let filter = filter.map(|f| substitute(&f, label, opts, notes));
    if let Some(f) = &filter
        && let Some(promql) = f.trim().strip_prefix("PromQL:")
    {
        return Ok(promql.trim().to_string());
    }
    default_query(q, filter)
}

/// Kayenta's own query when no PromQL is given: `avg(metric{filters}) by (fields)`.
fn default_query(q: &Value, filter: Option<String>) -> Result<String, String> {
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

/// Replaces Kayenta's template variables as the options say.
fn substitute(text: &str, label: &str, opts: &Options, notes: &mut Vec<String>) -> String {
    let mut out = text.to_string();
    let mut seen = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else { break };
        seen.insert(after[..end].to_string());
        rest = &after[end + 1..];
    }
    for var in seen {
        let pattern = format!("${{{var}}}");
        let with = match (var.as_str(), opts.vars.0.get(&var)) {
            (_, Some(VarUse::Value(v))) => v.clone(),
            (_, Some(VarUse::Arm(l))) => {
                notes.push(format!(
                    "metric {label:?}: ${{{var}}} → {{{{selector}}}}: the arms' selectors must carry label `{l}`"
                ));
                SCOPE.to_string()
            }
            ("scope", None) => SCOPE.to_string(),
            (_, None) => {
                notes.push(format!(
                    "metric {label:?}: template variable ${{{var}}}: matchers using it were dropped (map it with --var {var}=LABEL or --value {var}=TEXT)"
                ));
                DROP.to_string()
            }
        };
        out = import::substitute(&out, &pattern, &with);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_metric(query: &str, vars: &[(&str, VarUse)]) -> Result<Import, ImportError> {
        let config = serde_json::json!({
            "name": "t",
            "metrics": [{
                "name": "errors",
                "query": {"type": "prometheus", "customInlineTemplate": format!("PromQL:{query}")},
                "analysisConfigurations": {"canary": {"direction": "increase", "effectSize": {"allowedIncrease": 1.2, "criticalIncrease": 3.0}}}
            }]
        });
        let mut opts = Options {
            judging: Judging::Sequential,
            ..Options::default()
        };
        for (k, v) in vars {
            opts.vars.0.insert(k.to_string(), v.clone());
        }
        import(&config.to_string(), "t.json", &opts)
    }

    #[test]
    fn scope_as_a_whole_matcher_and_mapped_variables_become_the_selector() {
        let i = one_metric(
            "sum(rate(http_requests_total{job=\"my-app\", code=~\"[45]..\",${scope}}[1m])) / sum(rate(http_requests_total{job=\"my-app\",${scope}}[1m]))",
            &[],
        )
        .unwrap();
        assert!(
            i.yaml.contains("bad: 'sum(increase(http_requests_total{ {{selector}}, job=\"my-app\", code=~\"[45]..\" }[{{window}}]))'"),
            "{}",
            i.yaml
        );
        let i = one_metric(
            "avg(cpu{azure_pipelines_version='${location}', v=\"${scope}\"})",
            &[("location", VarUse::Arm("region".into()))],
        )
        .unwrap();
        assert!(
            i.yaml.contains("query: 'avg(cpu{ {{selector}} })'"),
            "{}",
            i.yaml
        );
        assert!(i.converted.iter().any(|n| n.contains("label `region`")));
    }

    #[test]
    fn critical_increase_becomes_a_critical_companion() {
        let i = one_metric("avg(cpu{v=\"${scope}\"})", &[]).unwrap();
        let set = super::super::parse_rule_set("t", &i.yaml).unwrap();
        assert_eq!(set.metrics.len(), 2);
        assert!(!set.metrics[0].critical);
        assert_eq!(set.metrics[1].name, "errors-critical");
        assert!(set.metrics[1].critical);
        assert_eq!(set.metrics[1].max_increase, Some(2.0));
    }

    #[test]
    fn not_json_is_a_clear_error() {
        let e = import("nope", "x.json", &Options::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("x.json: not a Kayenta canary config"),
            "{e}"
        );
    }
}
