//! `canaryd rules import-argo FILE`: Argo Rollouts `AnalysisTemplate` /
//! `ClusterAnalysisTemplate` documents (multi-document YAML) as one canaryd rule file (shared
//! pieces in [`super::import`]).
//!
//! What maps:
//! - each metric with the `prometheus` provider: its query. Template arguments
//!   (`{{args.NAME}}`): `--arg NAME=LABEL` makes the matchers using it the arm selector
//!   (`{{selector}}`; the arms carry `LABEL`), `--value NAME=TEXT` substitutes a text; an
//!   argument with a `value` uses it; one without (the usual `service-name`, passed by the
//!   Rollout) is taken to select the workload, with a note. `valueFrom.podTemplateHashValue`
//!   (canary vs stable) is the arm selector too;
//! - `successCondition` / `failureCondition` of the usual forms (`result[0] >= 0.95`,
//!   `result < 0.01`, `len(result) == 0 || result[0] <= 0.5`, `isNaN(result[0])`,
//!   `default(result[0], 0) >= 0.9`, `asFloat(result) > 2`, `&&` / `||` of those) → `min` /
//!   `max`; `len(result) == 0` and `isNaN` alternatives need nothing (no data is neither pass
//!   nor fail in canaryd);
//! - the upgrade of [`super::import`]: ratios and quantiles with an upper bound → the
//!   sequential judge against the baseline, else `judge: threshold` on the old bounds;
//! - `failureLimit` (fails after more than N) → `threshold.failure_limit: N+1`,
//!   `consecutiveErrorLimit` (likewise) → `threshold.consecutive_error_limit: N+1`, `count` →
//!   `threshold.min_passes`, the strictest across metrics; `dryRun` → `dry_run: true`.
//!
//! What does not, and is listed: other providers (web, job, datadog, newRelic, wavefront,
//! kayenta, cloudWatch, graphite, influxdb, skywalking, plugin), `interval` (per canary in
//! canaryd: the spec's `strategy.interval`), `inconclusiveLimit` (nearest: the spec's
//! `strategy.failure_limit`), `initialDelay`, `measurementRetention`, the provider's address,
//! headers, timeout and authentication (canaryd.toml's Prometheus is used).

use super::import::{
    self, DROP, Document, DraftSet, Foreign, Import, ImportError, Options, SCOPE, VarUse,
    rule_name, unique,
};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

const KINDS: [&str; 2] = ["AnalysisTemplate", "ClusterAnalysisTemplate"];
const PROVIDERS: [&str; 12] = [
    "web",
    "job",
    "datadog",
    "newRelic",
    "wavefront",
    "kayenta",
    "cloudWatch",
    "graphite",
    "influxdb",
    "skywalking",
    "plugin",
    "prometheus",
];

/// Converts the analysis templates of a YAML file; `file` names it in errors.
pub fn import(text: &str, file: &str, opts: &Options) -> Result<Import, ImportError> {
    let docs = import::documents(text, file)?;
    let mut set = DraftSet::default();
    let mut names = Vec::new();
    let mut foreign = Vec::new();
    let mut limits = Limits::default();
    let mut dry_run = BTreeSet::new();
    let mut used = BTreeSet::new();
    for doc in &docs {
        if !is_template(doc, &mut set)? {
            continue;
        }
        names.push(
            doc.value["metadata"]["name"]
                .as_str()
                .unwrap_or("analysis")
                .to_string(),
        );
        let args = Args::new(doc, opts, &mut set)?;
        dry_run.extend(dry_run_names(&doc.value["spec"]["dryRun"]));
        let metrics = doc.value["spec"]["metrics"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for (i, m) in metrics.iter().enumerate() {
            let ctx = Ctx {
                doc,
                index: i,
                args: &args,
            };
            if let Some(f) = metric(&ctx, m, &mut set, &mut limits, &mut used)? {
                foreign.push(f);
            }
        }
    }
    if names.is_empty() {
        return Err(ImportError::Nothing {
            document: file.into(),
            notes: vec!["no AnalysisTemplate or ClusterAnalysisTemplate in the file".into()],
        });
    }
    if foreign.is_empty() {
        return Err(ImportError::Nothing {
            document: file.into(),
            notes: std::mem::take(&mut set.left_out),
        });
    }
    set.name = rule_name(&names.join("-"));
    set.origin = format!(
        "Imported from Argo Rollouts {} {} by `canaryd rules import-argo`.",
        if names.len() == 1 {
            "AnalysisTemplate"
        } else {
            "AnalysisTemplates"
        },
        names.join(", ")
    );
    set.description = format!("Imported from Argo Rollouts analysis {}", names.join(", "));
    import::judge_all(&mut set, foreign, opts);
    for m in set.metrics.iter_mut() {
        m.dry_run = dry_run.iter().any(|d| d == ".*" || *d == m.name);
    }
    if !dry_run.is_empty() {
        set.converted
            .push(format!("dryRun {:?} → `dry_run: true`", dry_run));
    }
    limits.write(&mut set);
    set.finish()
}

/// Whether the document is an analysis template; other Argo and Kubernetes documents are
/// skipped with a note, an unknown Argo kind or a document without `kind` is an error.
fn is_template(doc: &Document, set: &mut DraftSet) -> Result<bool, ImportError> {
    let Some(kind) = doc.value["kind"].as_str() else {
        return Err(field(
            doc,
            "kind",
            "missing: expected AnalysisTemplate or ClusterAnalysisTemplate".into(),
        ));
    };
    if KINDS.contains(&kind) {
        return Ok(true);
    }
    let api = doc.value["apiVersion"].as_str().unwrap_or("");
    if api.starts_with("argoproj.io/") && !matches!(kind, "Rollout" | "Experiment" | "AnalysisRun")
    {
        return Err(field(
            doc,
            "kind",
            format!("unknown kind {kind:?}: expected AnalysisTemplate or ClusterAnalysisTemplate"),
        ));
    }
    if !api.starts_with("argoproj.io/") && api.contains("argoproj") {
        return Err(field(doc, "apiVersion", format!("unknown API {api:?}")));
    }
    set.left_out
        .push(format!("{}: not an analysis template; skipped", doc.name()));
    Ok(false)
}

fn field(doc: &Document, field: &str, message: String) -> ImportError {
    ImportError::Field {
        document: doc.name(),
        field: field.into(),
        message,
    }
}

/// Where a metric is, for messages.
struct Ctx<'a> {
    doc: &'a Document,
    index: usize,
    args: &'a Args,
}

impl Ctx<'_> {
    fn error(&self, name: &str, message: String) -> ImportError {
        field(
            self.doc,
            &format!("spec.metrics[{}].{name}", self.index),
            message,
        )
    }
}

/// The template's arguments and what each stands for.
struct Args(BTreeMap<String, VarUse>);

impl Args {
    fn new(doc: &Document, opts: &Options, set: &mut DraftSet) -> Result<Args, ImportError> {
        let mut map = BTreeMap::new();
        let list = doc.value["spec"]["args"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for (i, a) in list.iter().enumerate() {
            let Some(name) = a["name"].as_str() else {
                return Err(field(
                    doc,
                    &format!("spec.args[{i}].name"),
                    "missing".into(),
                ));
            };
            let use_ = match (
                opts.vars.0.get(name),
                scalar_text(&a["value"]),
                &a["valueFrom"],
            ) {
                (Some(u), _, _) => u.clone(),
                (None, _, from) if from["podTemplateHashValue"].is_string() => {
                    set.converted.push(format!(
                        "arg {name:?} (podTemplateHashValue: canary vs stable) → {{{{selector}}}}"
                    ));
                    VarUse::Arm("rollouts_pod_template_hash".into())
                }
                (None, Some(v), _) => VarUse::Value(v),
                (None, None, from) if !from.is_null() => {
                    set.left_out.push(format!("arg {name:?}: valueFrom is not read; matchers using it were dropped (give it with --value {name}=TEXT)"));
                    VarUse::Value(DROP.into())
                }
                (None, None, _) => {
                    set.converted.push(format!("arg {name:?} (no value: passed by the Rollout) taken to select the workload → {{{{selector}}}}; if it does not, map it with --value {name}=TEXT"));
                    VarUse::Arm(name.replace('-', "_"))
                }
            };
            if let VarUse::Arm(l) = &use_
                && opts.vars.0.contains_key(name)
            {
                set.converted.push(format!(
                    "arg {name:?} → {{{{selector}}}} (the arms carry label `{l}`)"
                ));
            }
            map.insert(name.to_string(), use_);
        }
        Ok(Args(map))
    }

    /// The text with `{{args.NAME}}` replaced: workload arguments by [`SCOPE`], others by
    /// their value; unknown ones are an error.
    fn resolve(&self, text: &str) -> Result<String, String> {
        let mut unknown = None;
        let out = import::replace_placeholders(text, "args.", &mut |name| match self.0.get(name) {
            Some(VarUse::Arm(_)) => Some(SCOPE.to_string()),
            Some(VarUse::Value(v)) => Some(v.clone()),
            None => {
                unknown.get_or_insert_with(|| name.to_string());
                None
            }
        });
        match unknown {
            Some(n) => Err(format!("{{{{args.{n}}}}} is not declared in spec.args")),
            None => Ok(out),
        }
    }
}

fn dry_run_names(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|l| {
            l.iter()
                .filter_map(|d| d["metricName"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One metric: its converted query and bounds, or a note why not.
fn metric(
    ctx: &Ctx<'_>,
    m: &Value,
    set: &mut DraftSet,
    limits: &mut Limits,
    used: &mut BTreeSet<String>,
) -> Result<Option<Foreign>, ImportError> {
    let label = m["name"].as_str().unwrap_or("unnamed").to_string();
    let provider = m["provider"]
        .as_mapping()
        .and_then(|p| p.iter().next())
        .and_then(|(k, _)| k.as_str());
    let Some(query) = m["provider"]["prometheus"]["query"].as_str() else {
        let what = match provider {
            Some(p) if PROVIDERS.contains(&p) && p != "prometheus" => format!("the {p} provider"),
            Some(p) => format!("provider {p:?}"),
            None => "no provider".into(),
        };
        set.left_out.push(format!(
            "metric {label:?}: not imported: {what} (canaryd reads Prometheus only)"
        ));
        set.skipped += 1;
        return Ok(None);
    };
    let promql = ctx
        .args
        .resolve(query)
        .map_err(|e| ctx.error("provider.prometheus.query", e))?;
    let converted =
        import::convert(&promql).map_err(|e| ctx.error("provider.prometheus.query", e))?;
    import::placement_notes(&label, &converted, &mut set.left_out);
    let (min, max, text) = bounds(ctx, m, &label, set)?;
    limits.add(ctx, m, &label)?;
    for (k, what) in [
        (
            "interval",
            "canaryd's interval is per canary: set the spec's `strategy.interval`",
        ),
        (
            "initialDelay",
            "not carried over: canaryd's first interval starts with the first step",
        ),
        (
            "inconclusiveLimit",
            "not carried over: the nearest is the spec's `strategy.failure_limit` (consecutive intervals without a usable analysis before the fail-safe)",
        ),
    ] {
        if let Some(v) = scalar_text(&m[k]) {
            set.left_out
                .push(format!("metric {label:?}: {k} {v}: {what}"));
        }
    }
    let p = &m["provider"]["prometheus"];
    for k in [
        "address",
        "timeout",
        "insecure",
        "headers",
        "authentication",
        "rangeQuery",
    ] {
        if !p[k].is_null() {
            set.left_out.push(format!("metric {label:?}: provider.prometheus.{k}: not carried over (canaryd.toml's Prometheus settings are used)"));
        }
    }
    Ok(Some(Foreign {
        name: unique(&rule_name(&label), used),
        label,
        converted,
        min,
        max,
        bound_text: text,
    }))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `min`/`max` from the conditions, with how they were written.
fn bounds(
    ctx: &Ctx<'_>,
    m: &Value,
    label: &str,
    set: &mut DraftSet,
) -> Result<(Option<f64>, Option<f64>, String), ImportError> {
    let mut min = None;
    let mut max = None;
    let mut texts = Vec::new();
    for (key, success) in [("successCondition", true), ("failureCondition", false)] {
        let Some(cond) = m[key].as_str() else {
            continue;
        };
        let resolved = ctx.args.resolve(cond).map_err(|e| ctx.error(key, e))?;
        let c = condition(&resolved, success).map_err(|e| ctx.error(key, e))?;
        for note in c.notes {
            set.converted
                .push(format!("metric {label:?}: {key}: {note}"));
        }
        min = tighter(min, c.min, f64::max);
        max = tighter(max, c.max, f64::min);
        texts.push(format!("{key} `{}`", cond.trim()));
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(ctx.error(
            "successCondition",
            format!("the conditions leave nothing passing (min {lo} > max {hi})"),
        ));
    }
    Ok((min, max, texts.join(" and ")))
}

fn tighter(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(pick(x, y)),
        (x, y) => x.or(y),
    }
}

/// Bounds of the passing region a condition describes.
#[derive(Debug, Default, PartialEq)]
struct Condition {
    min: Option<f64>,
    max: Option<f64>,
    notes: Vec<String>,
}

/// Parses an Argo condition; `success` says whether it describes passing or failing values.
fn condition(text: &str, success: bool) -> Result<Condition, String> {
    let mut out = Condition::default();
    let alternatives: Vec<&str> = split_top(text, "||");
    let mut comparisons: Vec<Vec<(String, f64)>> = Vec::new();
    for alt in alternatives {
        let mut group = Vec::new();
        for atom in split_top(alt, "&&") {
            let atom = strip_parens(atom.trim());
            if let Some(note) = no_data_atom(atom) {
                out.notes.push(note);
                continue;
            }
            group.push(comparison(atom)?);
        }
        if !group.is_empty() {
            comparisons.push(group);
        }
    }
    // Passing region: success is one AND-group; failure is an OR of single comparisons whose
    // complement is an AND-group.
    let pass: Vec<(String, f64)> = match (success, comparisons.len()) {
        (_, 0) => return Err(format!("{text:?} compares no result with a number")),
        (true, 1) => comparisons.remove(0),
        (true, _) => {
            return Err(format!(
                "{text:?}: alternatives of comparisons cannot be bounds (min/max)"
            ));
        }
        (false, _) if comparisons.iter().all(|g| g.len() == 1) => comparisons
            .into_iter()
            .map(|mut g| {
                let (op, v) = g.remove(0);
                (negate(&op), v)
            })
            .collect(),
        (false, _) => {
            return Err(format!(
                "{text:?}: a failure region of combined comparisons cannot be bounds (min/max)"
            ));
        }
    };
    for (op, v) in pass {
        match op.as_str() {
            ">=" | ">" => out.min = tighter(out.min, Some(v), f64::max),
            "<=" | "<" => out.max = tighter(out.max, Some(v), f64::min),
            "==" => {
                out.min = tighter(out.min, Some(v), f64::max);
                out.max = tighter(out.max, Some(v), f64::min);
            }
            _ => return Err(format!("{text:?}: `!=` cannot be a bound")),
        }
        if op == ">" || op == "<" {
            out.notes
                .push(format!("strict `{op}` became an inclusive bound"));
        }
    }
    Ok(out)
}

fn negate(op: &str) -> String {
    match op {
        ">=" => "<",
        ">" => "<=",
        "<=" => ">",
        "<" => ">=",
        "==" => "!=",
        _ => "==",
    }
    .to_string()
}

/// `len(result) == 0`, `isNaN(result[0])` and the like: passing without data needs nothing.
fn no_data_atom(atom: &str) -> Option<String> {
    let compact: String = atom.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.starts_with("len(result)==0") || compact.starts_with("len(result)<1") {
        return Some("`len(result) == 0`: no data is neither pass nor fail in canaryd".into());
    }
    if compact.starts_with("isNaN(") || compact.starts_with("isInf(") {
        return Some(format!(
            "`{atom}`: a NaN result is no data in canaryd, neither pass nor fail"
        ));
    }
    None
}

/// `VALUE op NUMBER` or `NUMBER op VALUE`, normalised to `(op, NUMBER)` on the value.
fn comparison(atom: &str) -> Result<(String, f64), String> {
    let atom = atom.trim();
    let (body, every) = match atom
        .strip_prefix("all(result,")
        .or(atom.strip_prefix("all(result ,"))
    {
        Some(rest) => (
            rest.trim()
                .trim_end_matches(')')
                .trim()
                .trim_start_matches('{')
                .trim_end_matches('}')
                .trim(),
            true,
        ),
        None => (atom, false),
    };
    for op in [">=", "<=", "==", "!=", ">", "<"] {
        if let Some(i) = body.find(op) {
            let (lhs, rhs) = (body[..i].trim(), body[i + op.len()..].trim());
            let value = |s: &str| is_value(s) || (every && s == "#");
            return match (
                value(lhs),
                rhs.parse::<f64>(),
                lhs.parse::<f64>(),
                value(rhs),
            ) {
                (true, Ok(n), _, _) => Ok((op.to_string(), n)),
                (_, _, Ok(n), true) => Ok((mirror(op).to_string(), n)),
                _ => Err(format!(
                    "cannot read `{atom}` as a comparison of the result with a number"
                )),
            };
        }
    }
    Err(format!(
        "cannot read `{atom}` (expected e.g. `result[0] >= 0.95`)"
    ))
}

fn mirror(op: &str) -> &str {
    match op {
        ">=" => "<=",
        "<=" => ">=",
        ">" => "<",
        "<" => ">",
        o => o,
    }
}

/// `result`, `result[0]`, `asFloat(result[0])`, `default(result[0], 0)`, ...
fn is_value(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = ["asFloat(", "asInt(", "float(", "int("]
        .iter()
        .find_map(|f| s.strip_prefix(f).and_then(|r| r.strip_suffix(')')))
        .unwrap_or(&s);
    let inner = match inner
        .strip_prefix("default(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(args) => args.split(',').next().unwrap_or(""),
        None => inner,
    };
    matches!(inner, "result" | "result[0]")
}

/// `(a)` → `a`, when the outer parentheses enclose everything.
fn strip_parens(s: &str) -> &str {
    let t = s.trim();
    if !(t.starts_with('(') && t.ends_with(')')) {
        return t;
    }
    let mut depth = 0i32;
    for (i, c) in t.char_indices() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth == 0 && i + 1 < t.len() {
            return t;
        }
    }
    strip_parens(&t[1..t.len() - 1])
}

/// Splits at `sep` outside parentheses.
fn split_top<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        match bytes[i] {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ => {}
        }
        if depth == 0 && s[i..].starts_with(sep) {
            out.push(&s[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

/// The threshold judge's options from the metrics' limits: the strictest.
#[derive(Default)]
struct Limits {
    failure: Option<i64>,
    errors: Option<i64>,
    passes: Option<i64>,
    lines: Vec<String>,
}

impl Limits {
    fn add(&mut self, ctx: &Ctx<'_>, m: &Value, label: &str) -> Result<(), ImportError> {
        let read = |k: &str| {
            let resolve = |s: &str| ctx.args.resolve(s).unwrap_or_else(|_| s.to_string());
            import::count_field(&m[k], &resolve).map_err(|e| ctx.error(k, e))
        };
        match read("failureLimit")?.unwrap_or(0) {
            f if f < 0 => self.lines.push(format!(
                "metric {label:?}: failureLimit {f} (no limit): canaryd's threshold judge always has one; left at its default"
            )),
            f => {
                self.failure = min_some(self.failure, f + 1);
                self.lines.push(format!("metric {label:?}: failureLimit {f} (fails after more than {f} failed measurements) → `failure_limit: {}`", f + 1));
            }
        }
        if let Some(e) = read("consecutiveErrorLimit")?.filter(|e| *e >= 0) {
            self.errors = min_some(self.errors, e + 1);
            self.lines.push(format!("metric {label:?}: consecutiveErrorLimit {e} (fails after more than {e} errors in a row) → `consecutive_error_limit: {}`", e + 1));
        }
        if let Some(c) = read("count")?.filter(|c| *c > 0) {
            self.passes = Some(self.passes.map_or(c, |p| p.max(c)));
            self.lines.push(format!("metric {label:?}: count {c} → `min_passes: {c}` (canaryd promotes at the end of the canary's steps)"));
        }
        if let Some(c) = read("consecutiveSuccessLimit")?.filter(|c| *c > 0) {
            self.lines.push(format!("metric {label:?}: consecutiveSuccessLimit {c}: canaryd counts passing intervals, not consecutive ones: also `min_passes`"));
            self.passes = Some(self.passes.map_or(c, |p| p.max(c)));
        }
        Ok(())
    }

    fn write(self, set: &mut DraftSet) {
        set.converted.extend(self.lines);
        if let Some(f) = self.failure {
            set.threshold.push(format!("failure_limit: {f}"));
        }
        if let Some(e) = self.errors {
            set.threshold.push(format!("consecutive_error_limit: {e}"));
        }
        if let Some(p) = self.passes {
            set.threshold.push(format!("min_passes: {p}"));
        }
        if !set.threshold.is_empty() && set.judge != Some(super::JudgeKind::Threshold) {
            set.converted.push("the `threshold:` limits apply when the rule set is switched to `judge: threshold`; the sequential judge bounds false rollbacks itself".into());
        }
    }
}

fn min_some(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_conditions_become_bounds() {
        let c = condition("result[0] >= 0.95", true).unwrap();
        assert_eq!((c.min, c.max), (Some(0.95), None));
        let c = condition("len(result) == 0 || result[0] <= 0.5", true).unwrap();
        assert_eq!((c.min, c.max), (None, Some(0.5)));
        assert_eq!(c.notes.len(), 1);
        let c = condition("result < 0.01", true).unwrap();
        assert_eq!(c.max, Some(0.01));
        let c = condition("isNaN(result[0]) || result[0] >= 0.9", true).unwrap();
        assert_eq!(c.min, Some(0.9));
        let c = condition("result[0] > 2 || result[0] < 0.5", false).unwrap();
        assert_eq!((c.min, c.max), (Some(0.5), Some(2.0)));
        let c = condition(
            "default(result[0], 0) >= 0.9 && asFloat(result[0]) <= 1",
            true,
        )
        .unwrap();
        assert_eq!((c.min, c.max), (Some(0.9), Some(1.0)));
        let c = condition("all(result, {# <= 0.5})", true).unwrap();
        assert_eq!(c.max, Some(0.5));
        assert!(condition("result[0] > 1 || result[0] < 0", true).is_err());
        assert!(condition("result.foo ~= bar", true).is_err());
    }

    const TEMPLATE: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: success-rate
spec:
  args:
  - name: service-name
  metrics:
  - name: success-rate
    interval: 5m
    successCondition: result[0] >= 0.95
    failureLimit: 3
    provider:
      prometheus:
        address: http://prometheus.example.com:9090
        query: |
          sum(irate(istio_requests_total{reporter="source",destination_service=~"{{args.service-name}}",response_code!~"5.*"}[5m])) /
          sum(irate(istio_requests_total{reporter="source",destination_service=~"{{args.service-name}}"}[5m]))
"#;

    #[test]
    fn a_success_rate_template_is_upgraded_to_a_ratio() {
        let i = import(TEMPLATE, "t.yaml", &Options::default()).unwrap();
        let set = super::super::parse_rule_set("t", &i.yaml).unwrap();
        assert_eq!(set.judge, super::super::JudgeKind::Sequential);
        assert_eq!(set.metrics[0].max, Some(0.05));
        assert_eq!(set.threshold.failure_limit, 4);
        assert!(i.yaml.contains("response_code=~\"5.*\""), "{}", i.yaml);
    }

    #[test]
    fn bad_input_names_the_document_and_the_field() {
        let e = import(
            &TEMPLATE.replace(">= 0.95", "~= 0.95"),
            "t.yaml",
            &Options::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "t.yaml#1 AnalysisTemplate success-rate: spec.metrics[0].successCondition:"
            ),
            "{e}"
        );
        let e = import(
            "kind: Foo\napiVersion: argoproj.io/v1alpha1\n",
            "f.yaml",
            &Options::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("f.yaml#1 Foo ?: kind: unknown kind"),
            "{e}"
        );
        let e = import("a: [", "g.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().starts_with("g.yaml#1: not YAML"), "{e}");
        let web = TEMPLATE.replace("prometheus:\n        address", "web:\n        address");
        let e = import(&web, "w.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().contains("the web provider"), "{e}");
    }
}
