//! `canaryd rules import-flagger FILE...`: Flagger `MetricTemplate` documents and the `Canary`
//! that references them, as one canaryd rule file (shared pieces in [`super::import`]).
//!
//! What maps:
//! - each metric of the Canary's `analysis.metrics`: a `templateRef` to a MetricTemplate with
//!   the `prometheus` provider (its `query`), or the built-in `request-success-rate` /
//!   `request-duration`, which become canaryd's own pack metrics (`error-rate` over
//!   `http_requests_total`, the p99 of `http_request_duration_seconds`);
//! - the template variables: `{{ target }}`, `{{ service }}`, `{{ ingress }}` and
//!   `{{ namespace }}` select the workload and become `{{selector}}`; `{{ interval }}` the
//!   analysis window (`{{window}}`); `{{ variables.NAME }}` the Canary's `templateVariables`
//!   (or `--value NAME=TEXT`);
//! - `thresholdRange.min` / `max` → bounds; the upgrade of [`super::import`] (ratios and
//!   quantiles → the sequential judge against the baseline, else `judge: threshold`);
//! - `analysis.threshold` (failed checks before rollback) → `threshold.failure_limit`.
//!
//! A MetricTemplate without a Canary is imported without bounds (a ratio or quantile is then
//! judged against the baseline only). Left out, and listed: other providers (datadog,
//! cloudwatch, newrelic, graphite, influxdb, stackdriver, dynatrace, keptn, splunk, ...), the
//! analysis `interval` / `maxWeight` / `stepWeight` / `iterations` (the canary spec's
//! `strategy`), `webhooks`, `alerts`, the provider's address and secret.

use super::import::{
    self, DROP, Document, DraftSet, Foreign, Import, ImportError, Options, SCOPE, VarUse, WINDOW,
    rule_name, unique,
};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The workload variables of Flagger's templates.
const WORKLOAD: [&str; 4] = ["target", "service", "ingress", "namespace"];

/// canaryd's pack metric for Flagger's built-in `request-success-rate` (percent of non-5xx).
const SUCCESS_RATE: &str = "sum(rate(http_requests_total{v=\"__canaryd_scope__\",code!~\"5..\"}[1m])) / sum(rate(http_requests_total{v=\"__canaryd_scope__\"}[1m])) * 100";
/// canaryd's pack metric for Flagger's built-in `request-duration` (p99 in milliseconds).
const DURATION: &str = "histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{v=\"__canaryd_scope__\"}[1m])) by (le)) * 1000";

/// Converts the MetricTemplates and Canaries of YAML files (`(file name, text)`).
pub fn import(files: &[(String, String)], opts: &Options) -> Result<Import, ImportError> {
    let mut docs = Vec::new();
    for (file, text) in files {
        docs.extend(import::documents(text, file)?);
    }
    let shown = files
        .iter()
        .map(|(f, _)| f.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut set = DraftSet::default();
    let mut templates: BTreeMap<String, &Document> = BTreeMap::new();
    let mut canaries = Vec::new();
    for doc in &docs {
        match classify(doc, &mut set)? {
            Some("MetricTemplate") => {
                let name = doc.value["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                templates.insert(name, doc);
            }
            Some(_) => canaries.push(doc),
            None => {}
        }
    }
    let mut foreign = Vec::new();
    let mut used = BTreeSet::new();
    let names: Vec<String> = if canaries.is_empty() {
        for doc in templates.values() {
            let label = doc.value["metadata"]["name"].as_str().unwrap_or("metric");
            let entry = Value::Null;
            let ctx = Ctx {
                doc,
                entry: &entry,
                field: "spec.query".into(),
            };
            if let Some(f) = templated(&ctx, label, opts, &mut set, &mut used)? {
                foreign.push(f);
            }
        }
        set.left_out
            .push("no Canary in the input: the metrics have no thresholdRange".into());
        templates.keys().cloned().collect()
    } else {
        for canary in &canaries {
            from_canary(canary, &templates, opts, &mut set, &mut foreign, &mut used)?;
        }
        canaries
            .iter()
            .map(|c| {
                c.value["metadata"]["name"]
                    .as_str()
                    .unwrap_or("canary")
                    .to_string()
            })
            .collect()
    };
    if foreign.is_empty() {
        return Err(ImportError::Nothing {
            document: shown,
            notes: std::mem::take(&mut set.left_out),
        });
    }
    let what = if canaries.is_empty() {
        "MetricTemplate"
    } else {
        "Canary"
    };
    set.name = rule_name(&names.join("-"));
    set.origin = format!(
        "Imported from Flagger {what} {} by `canaryd rules import-flagger`.",
        names.join(", ")
    );
    set.description = format!("Imported from Flagger {what} {}", names.join(", "));
    import::judge_all(&mut set, foreign, opts);
    set.finish()
}

/// `Some(kind)` for MetricTemplate and Canary; other Flagger or Kubernetes documents are
/// skipped with a note; an unknown Flagger kind or a document without `kind` is an error.
fn classify(doc: &Document, set: &mut DraftSet) -> Result<Option<&'static str>, ImportError> {
    let Some(kind) = doc.value["kind"].as_str() else {
        return Err(field(
            doc,
            "kind",
            "missing: expected MetricTemplate or Canary".into(),
        ));
    };
    match kind {
        "MetricTemplate" => return Ok(Some("MetricTemplate")),
        "Canary" => return Ok(Some("Canary")),
        _ => {}
    }
    let api = doc.value["apiVersion"].as_str().unwrap_or("");
    if api.starts_with("flagger.app/") && kind != "AlertProvider" {
        return Err(field(
            doc,
            "kind",
            format!("unknown kind {kind:?}: expected MetricTemplate or Canary"),
        ));
    }
    set.left_out.push(format!(
        "{}: not a MetricTemplate or Canary; skipped",
        doc.name()
    ));
    Ok(None)
}

fn field(doc: &Document, field: &str, message: String) -> ImportError {
    ImportError::Field {
        document: doc.name(),
        field: field.into(),
        message,
    }
}

/// A metric being read: the template's document, the Canary's entry for it.
struct Ctx<'a> {
    doc: &'a Document,
    entry: &'a Value,
    field: String,
}

/// The Canary's metrics, and its analysis settings.
fn from_canary(
    canary: &Document,
    templates: &BTreeMap<String, &Document>,
    opts: &Options,
    set: &mut DraftSet,
    foreign: &mut Vec<Foreign>,
    used: &mut BTreeSet<String>,
) -> Result<(), ImportError> {
    let analysis = &canary.value["spec"]["analysis"];
    let analysis = if analysis.is_null() {
        &canary.value["spec"]["canaryAnalysis"]
    } else {
        analysis
    };
    let metrics = analysis["metrics"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    for (i, entry) in metrics.iter().enumerate() {
        let label = entry["name"].as_str().unwrap_or("unnamed").to_string();
        let at = format!("spec.analysis.metrics[{i}]");
        let Some(tref) = entry["templateRef"]["name"].as_str() else {
            if let Some(f) = builtin(canary, entry, &label, &at, set, used)? {
                foreign.push(f);
            }
            continue;
        };
        let Some(doc) = templates.get(tref) else {
            set.left_out.push(format!("metric {label:?}: MetricTemplate {tref:?} is not in the input; not imported (pass its file too)"));
            set.skipped += 1;
            continue;
        };
        let ctx = Ctx {
            doc,
            entry,
            field: "spec.query".into(),
        };
        let Some(mut f) = templated(&ctx, &label, opts, set, used)? else {
            continue;
        };
        (f.min, f.max, f.bound_text) = range(canary, entry, &at)?;
        foreign.push(f);
    }
    analysis_settings(canary, analysis, set)
}

/// `thresholdRange` as bounds, with how it was written.
fn range(
    canary: &Document,
    entry: &Value,
    at: &str,
) -> Result<(Option<f64>, Option<f64>, String), ImportError> {
    let r = &entry["thresholdRange"];
    let read = |k: &str| match &r[k] {
        Value::Null => Ok(None),
        v => v.as_f64().map(Some).ok_or_else(|| {
            field(
                canary,
                &format!("{at}.thresholdRange.{k}"),
                format!("expected a number, got {v:?}"),
            )
        }),
    };
    let (min, max) = (read("min")?, read("max")?);
    let text = match (min, max) {
        (None, None) => String::new(),
        _ => format!(
            "thresholdRange {}{}",
            min.map(|v| format!("min {}", import::num(v)))
                .unwrap_or_default(),
            max.map(|v| format!(
                "{}max {}",
                if min.is_some() { ", " } else { "" },
                import::num(v)
            ))
            .unwrap_or_default()
        ),
    };
    Ok((min, max, text))
}

/// A built-in metric as canaryd's pack metric.
fn builtin(
    canary: &Document,
    entry: &Value,
    label: &str,
    at: &str,
    set: &mut DraftSet,
    used: &mut BTreeSet<String>,
) -> Result<Option<Foreign>, ImportError> {
    let (query, name) = match label {
        "request-success-rate" => (SUCCESS_RATE, "error-rate"),
        "request-duration" => (DURATION, "latency-p99"),
        _ => {
            set.left_out.push(format!(
                "metric {label:?}: neither a templateRef nor a built-in metric; not imported"
            ));
            set.skipped += 1;
            return Ok(None);
        }
    };
    let converted = import::convert(query).map_err(|e| field(canary, at, e))?;
    let (min, max, text) = range(canary, entry, at)?;
    set.converted.push(format!(
        "metric {label:?}: Flagger's built-in → canaryd's pack metric `{name}` (http_requests_total / http_request_duration_seconds, as in rules/http-service.yaml); adjust the metric names to your service's"
    ));
    Ok(Some(Foreign {
        name: unique(name, used),
        label: label.to_string(),
        converted,
        min,
        max,
        bound_text: text,
    }))
}

/// A MetricTemplate's query, converted.
fn templated(
    ctx: &Ctx<'_>,
    label: &str,
    opts: &Options,
    set: &mut DraftSet,
    used: &mut BTreeSet<String>,
) -> Result<Option<Foreign>, ImportError> {
    let spec = &ctx.doc.value["spec"];
    let provider = spec["provider"]["type"].as_str().unwrap_or("prometheus");
    if provider != "prometheus" {
        set.left_out.push(format!("metric {label:?}: not imported: the {provider} provider of {} (canaryd reads Prometheus only)", ctx.doc.name()));
        set.skipped += 1;
        return Ok(None);
    }
    let Some(query) = spec["query"].as_str() else {
        return Err(field(ctx.doc, &ctx.field, "missing".into()));
    };
    for k in ["address", "secretRef", "insecureSkipVerify"] {
        if !spec["provider"][k].is_null() {
            set.left_out.push(format!("metric {label:?}: provider.{k}: not carried over (canaryd.toml's Prometheus settings are used)"));
        }
    }
    let promql = variables(query, ctx.entry, label, opts, set);
    let converted = import::convert(&promql).map_err(|e| field(ctx.doc, &ctx.field, e))?;
    import::placement_notes(label, &converted, &mut set.left_out);
    Ok(Some(Foreign {
        name: unique(&rule_name(label), used),
        label: label.to_string(),
        converted,
        min: None,
        max: None,
        bound_text: String::new(),
    }))
}

/// Substitutes Flagger's template variables.
fn variables(
    query: &str,
    entry: &Value,
    label: &str,
    opts: &Options,
    set: &mut DraftSet,
) -> String {
    let given = &entry["templateVariables"];
    let mut notes = Vec::new();
    let out = import::replace_placeholders(query, "", &mut |name| {
        if WORKLOAD.contains(&name) {
            return Some(SCOPE.to_string());
        }
        if name == "interval" {
            return Some(WINDOW.to_string());
        }
        let var = name.strip_prefix("variables.")?;
        match (given[var].as_str(), opts.vars.0.get(var)) {
            (_, Some(VarUse::Value(v))) => Some(v.clone()),
            (_, Some(VarUse::Arm(_))) => Some(SCOPE.to_string()),
            (Some(v), None) => Some(v.to_string()),
            (None, None) => {
                notes.push(format!("metric {label:?}: {{{{ variables.{var} }}}} has no value: matchers using it were dropped (give it with --value {var}=TEXT)"));
                Some(DROP.to_string())
            }
        }
    });
    set.left_out.append(&mut notes);
    out
}

/// The analysis' own settings: `threshold` maps, the rest is listed.
fn analysis_settings(
    canary: &Document,
    analysis: &Value,
    set: &mut DraftSet,
) -> Result<(), ImportError> {
    if let Some(t) = import::count_field(&analysis["threshold"], &|s| s.to_string())
        .map_err(|e| field(canary, "spec.analysis.threshold", e))?
    {
        let t = t.max(1);
        set.threshold.push(format!("failure_limit: {t}"));
        set.converted.push(format!("analysis.threshold {t} (failed checks before rollback) → `threshold.failure_limit: {t}` (used by `judge: threshold`)"));
    }
    for (k, what) in [
        ("interval", "the canary spec's `strategy.interval`"),
        ("maxWeight", "the canary spec's `strategy.steps`"),
        ("stepWeight", "the canary spec's `strategy.steps`"),
        ("stepWeights", "the canary spec's `strategy.steps`"),
        (
            "iterations",
            "the canary spec's `strategy` (steps and interval)",
        ),
        ("webhooks", "canaryd's hooks in the canary spec"),
        ("alerts", "canaryd's notifications"),
        ("match", "the router's configuration"),
        ("mirror", "not supported"),
    ] {
        if !analysis[k].is_null() {
            set.left_out
                .push(format!("analysis.{k}: not a rule; see {what}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: not-found-percentage
spec:
  provider:
    type: prometheus
    address: http://prometheus.istio-system:9090
  query: |
    100 - sum(
        rate(istio_requests_total{reporter="destination", destination_workload_namespace="{{ namespace }}", destination_workload="{{ target }}", response_code!="404"}[{{ interval }}])
    ) / sum(
        rate(istio_requests_total{reporter="destination", destination_workload_namespace="{{ namespace }}", destination_workload="{{ target }}"}[{{ interval }}])
    ) * 100
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
spec:
  analysis:
    interval: 1m
    threshold: 5
    metrics:
    - name: request-success-rate
      thresholdRange:
        min: 99
      interval: 1m
    - name: "404s percentage"
      templateRef:
        name: not-found-percentage
      thresholdRange:
        max: 5
      interval: 1m
"#;

    #[test]
    fn a_canary_with_a_template_and_a_builtin_is_upgraded() {
        let i = import(&[("c.yaml".into(), INPUT.into())], &Options::default()).unwrap();
        let set = super::super::parse_rule_set("t", &i.yaml).unwrap();
        assert_eq!(set.judge, super::super::JudgeKind::Sequential, "{}", i.yaml);
        assert_eq!(set.metrics[0].name, "error-rate");
        assert_eq!(set.metrics[0].max, Some(0.01));
        // 100 - non-404% ≤ 5 → 404s at most 5%.
        assert_eq!(set.metrics[1].max, Some(0.05));
        assert!(i.yaml.contains("response_code=\"404\""), "{}", i.yaml);
        assert_eq!(set.threshold.failure_limit, 5);
    }

    #[test]
    fn other_providers_and_kinds_are_named() {
        let dd = INPUT.replace("type: prometheus", "type: datadog");
        let i = import(&[("c.yaml".into(), dd)], &Options::default()).unwrap();
        assert!(i.notes.iter().any(|n| n.contains("the datadog provider")));
        let e = import(
            &[(
                "k.yaml".into(),
                "apiVersion: flagger.app/v1beta1\nkind: Nope\n".into(),
            )],
            &Options::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("k.yaml#1 Nope ?: kind: unknown kind"),
            "{e}"
        );
    }
}
