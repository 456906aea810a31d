//! Checks `dashboards/canaryd.json` against canaryd's self-metrics.
//!
//! The dashboard must be valid JSON, every query must be valid PromQL (after substituting
//! Grafana variables), every `canaryd_*` series it selects must be exported (see
//! `canaryd::telemetry::METRIC_NAMES`), and every exported metric must be on some panel.

use canaryd::telemetry::{METRIC_NAMES, metrics};
use promql_parser::label::{METRIC_NAME, MatchOp, Matcher};
use promql_parser::parser::{self, Expr};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/canaryd.json");

/// The Grafana uid of every panel and target: the datasource template variable.
const DATASOURCE_REF: &str = "${datasource}";

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboards/canaryd.json is readable");
    serde_json::from_str(&text).expect("dashboards/canaryd.json is valid JSON")
}

/// Every panel, rows included, at any depth (`panels` of collapsed rows, legacy `rows`).
fn all_panels(value: &Value) -> Vec<&Value> {
    fn walk<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        for key in ["panels", "rows"] {
            for child in value
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(child);
                walk(child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

fn title(panel: &Value) -> &str {
    panel
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("<untitled>")
}

fn targets(panel: &Value) -> impl Iterator<Item = &Value> {
    panel
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Each panel's title with the PromQL expressions of its targets.
fn panel_exprs(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    all_panels(dashboard)
        .into_iter()
        .map(|p| {
            let exprs = targets(p)
                .filter_map(|t| t.get("expr").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            (title(p).to_owned(), exprs)
        })
        .filter(|(_, exprs): &(String, Vec<String>)| !exprs.is_empty())
        .collect()
}

fn template_vars(dashboard: &Value) -> Vec<&Value> {
    dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

fn template_var_names(dashboard: &Value) -> BTreeSet<String> {
    template_vars(dashboard)
        .into_iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// A plausible value for a Grafana variable, or `None` if it is neither a built-in we know
/// nor one of the dashboard's template variables.
fn variable_value(name: &str, defined: &BTreeSet<String>) -> Option<&'static str> {
    match name {
        "__rate_interval" | "__interval" | "__range" => Some("5m"),
        "__range_s" => Some("300"),
        "__interval_ms" | "__range_ms" => Some("300000"),
        _ if !defined.contains(name) => None,
        "datasource" => Some("prometheus"),
        _ => Some("canaryd"),
    }
}

/// Replaces Grafana variables (`$name`, `${name}`, `${name:format}`, `[[name]]`) with
/// plausible values. A `$` not followed by a variable name (e.g. a regex anchor) is kept.
fn substitute(expr: &str, defined: &BTreeSet<String>) -> Result<String, String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let (name, consumed) = if let Some(inner) = rest.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {expr:?}"))?;
            let name = inner[..end].split(':').next().unwrap_or_default();
            (name, 2 + end + 1)
        } else if let Some(inner) = rest.strip_prefix("[[") {
            let end = inner
                .find("]]")
                .ok_or_else(|| format!("unterminated [[ in {expr:?}"))?;
            let name = inner[..end].split(':').next().unwrap_or_default();
            (name, 2 + end + 2)
        } else if let Some(inner) = rest.strip_prefix('$') {
            let len = inner.find(|c| !is_ident(c)).unwrap_or(inner.len());
            if inner[..len].bytes().all(|b| b.is_ascii_digit()) {
                // `$1` is a regex group reference (label_replace), not a variable.
                out.push('$');
                rest = inner;
                continue;
            }
            (&inner[..len], 1 + len)
        } else {
            // A lone `[`: a range, not a variable.
            out.push('[');
            rest = &rest[1..];
            continue;
        };
        if name.is_empty() {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
            continue;
        }
        let value = variable_value(name, defined)
            .ok_or_else(|| format!("undefined Grafana variable ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse(expr: &str, defined: &BTreeSet<String>) -> Result<Expr, String> {
    let promql = substitute(expr, defined)?;
    parser::parse(&promql).map_err(|e| format!("{expr:?} (as {promql:?}) is not PromQL: {e}"))
}

/// The metric name a selector picks: its name, or an `__name__="…"` matcher. A regex or
/// negative `__name__` matcher cannot be checked, so it is an error.
fn selector_name(vs: &parser::VectorSelector) -> Result<Option<String>, String> {
    if let Some(name) = &vs.name {
        return Ok(Some(name.clone()));
    }
    let all: Vec<&Matcher> = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
        .filter(|m| m.name == METRIC_NAME)
        .collect();
    match all.as_slice() {
        [] => Ok(None),
        [m] if matches!(m.op, MatchOp::Equal) => Ok(Some(m.value.clone())),
        _ => Err(format!("selector {vs} picks metric names by pattern")),
    }
}

/// Walks the AST: calls `visit` on every selector with whether it is the direct argument of
/// a counter function (`rate`, `irate`, `increase`).
fn visit_selectors(
    expr: &Expr,
    in_counter_fn: bool,
    visit: &mut dyn FnMut(&parser::VectorSelector, bool, bool) -> Result<(), String>,
) -> Result<(), String> {
    match expr {
        Expr::Aggregate(a) => {
            visit_selectors(&a.expr, false, visit)?;
            if let Some(param) = &a.param {
                visit_selectors(param, false, visit)?;
            }
            Ok(())
        }
        Expr::Unary(u) => visit_selectors(&u.expr, false, visit),
        Expr::Binary(b) => {
            visit_selectors(&b.lhs, false, visit)?;
            visit_selectors(&b.rhs, false, visit)
        }
        Expr::Paren(p) => visit_selectors(&p.expr, false, visit),
        Expr::Subquery(s) => visit_selectors(&s.expr, false, visit),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        // A bare vector selector is never a counter function's argument (they take ranges).
        Expr::VectorSelector(vs) => visit(vs, false, false),
        Expr::MatrixSelector(ms) => visit(&ms.vs, true, in_counter_fn),
        Expr::Call(call) => {
            let counter_fn = matches!(call.func.name, "rate" | "irate" | "increase");
            call.args
                .args
                .iter()
                .try_for_each(|arg| visit_selectors(arg, counter_fn, visit))
        }
        Expr::Extension(ext) => ext
            .expr
            .children()
            .iter()
            .try_for_each(|child| visit_selectors(child, false, visit)),
    }
}

/// Every metric name selected anywhere in the expression.
fn metric_names(expr: &Expr) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    visit_selectors(expr, false, &mut |vs, _, _| {
        names.extend(selector_name(vs)?);
        Ok(())
    })?;
    Ok(names)
}

/// Family name → type (`counter`, `gauge`, `histogram`, …), from the rendered `/metrics`.
fn exported_types() -> BTreeMap<String, String> {
    // Families without series are not rendered; the router ones get theirs per router.
    metrics().register_router("dashboard-test");
    metrics()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The `METRIC_NAMES` entry a series belongs to, and whether the series is a counter (a
/// `_total` counter or a histogram's `_bucket`/`_sum`/`_count`).
fn resolve(series: &str, types: &BTreeMap<String, String>) -> Option<(&'static str, bool)> {
    if let Some(&name) = METRIC_NAMES.iter().find(|&&n| n == series) {
        let counter = series
            .strip_suffix("_total")
            .is_some_and(|family| types.get(family).is_some_and(|t| t == "counter"));
        return Some((name, counter));
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        let &name = METRIC_NAMES.iter().find(|&&n| n == base)?;
        (types.get(base)? == "histogram").then_some((name, true))
    })
}

#[test]
fn dashboard_has_title_uid_schema_and_datasource_variable() {
    let d = dashboard();
    let title = d.get("title").and_then(Value::as_str).unwrap_or_default();
    assert!(!title.trim().is_empty(), "dashboard has no title");
    let uid = d.get("uid").and_then(Value::as_str).unwrap_or_default();
    assert!(
        !uid.is_empty() && uid.len() <= 40,
        "dashboard uid {uid:?} must be 1-40 characters"
    );
    assert_eq!(d.get("schemaVersion").and_then(Value::as_u64), Some(39));
    let vars = template_vars(&d);
    assert!(
        vars.iter().any(|v| {
            let field = |key: &str| v.get(key).and_then(Value::as_str);
            field("name") == Some("datasource")
                && field("type") == Some("datasource")
                && field("query") == Some("prometheus")
        }),
        "no Prometheus `datasource` template variable in {vars:#?}"
    );
}

#[test]
fn every_query_panel_uses_the_datasource_variable() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for panel in all_panels(&d) {
        if let Some(id) = panel.get("id").and_then(Value::as_u64) {
            assert!(ids.insert(id), "panel id {id} is used twice");
        }
        if targets(panel).next().is_none() {
            continue;
        }
        let uid = panel.pointer("/datasource/uid").and_then(Value::as_str);
        assert_eq!(uid, Some(DATASOURCE_REF), "panel {:?}", title(panel));
        let mut ref_ids = BTreeSet::new();
        for target in targets(panel) {
            if let Some(ds) = target.get("datasource") {
                assert_eq!(
                    ds.get("uid").and_then(Value::as_str),
                    Some(DATASOURCE_REF),
                    "a target of panel {:?}",
                    title(panel)
                );
            }
            let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("");
            assert!(
                !ref_id.is_empty() && ref_ids.insert(ref_id),
                "panel {:?}: refId {ref_id:?} missing or repeated",
                title(panel)
            );
        }
    }
}

#[test]
fn every_expression_is_promql() {
    let d = dashboard();
    let defined = template_var_names(&d);
    let panels = panel_exprs(&d);
    assert!(!panels.is_empty(), "the dashboard has no queries");
    let errors: Vec<String> = panels
        .iter()
        .flat_map(|(title, exprs)| exprs.iter().map(move |e| (title, e)))
        .filter_map(|(title, e)| {
            parse(e, &defined)
                .err()
                .map(|err| format!("{title}: {err}"))
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn every_canaryd_series_is_exported_and_counters_are_rated() {
    let d = dashboard();
    let defined = template_var_names(&d);
    let types = exported_types();
    for (family, kind) in &types {
        if kind == "histogram" {
            assert!(
                METRIC_NAMES.contains(&family.as_str()),
                "histogram {family} is exported but not in METRIC_NAMES"
            );
        }
    }
    let mut problems = Vec::new();
    for (title, exprs) in panel_exprs(&d) {
        for text in exprs {
            let expr = match parse(&text, &defined) {
                Ok(expr) => expr,
                Err(e) => {
                    problems.push(format!("{title}: {e}"));
                    continue;
                }
            };
            let result = visit_selectors(&expr, false, &mut |vs, _range, in_counter_fn| {
                let Some(name) = selector_name(vs)? else {
                    return Err(format!("selector {vs} has no metric name"));
                };
                if !name.starts_with("canaryd_") {
                    return Ok(());
                }
                match resolve(&name, &types) {
                    None => Err(format!("{name} is not exported by canaryd")),
                    Some((_, true)) if !in_counter_fn => Err(format!(
                        "{name} is a counter: use it through rate/irate/increase over a range"
                    )),
                    Some(_) => Ok(()),
                }
            });
            if let Err(e) = result {
                problems.push(format!("{title}: {text}: {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_exported_metric_is_on_a_panel() {
    let d = dashboard();
    let defined = template_var_names(&d);
    let types = exported_types();
    let mut used = BTreeSet::new();
    for (title, exprs) in panel_exprs(&d) {
        for text in exprs {
            let expr = parse(&text, &defined).unwrap_or_else(|e| panic!("{title}: {e}"));
            let names = metric_names(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
            used.extend(
                names
                    .iter()
                    .filter_map(|n| resolve(n, &types))
                    .map(|(m, _)| m),
            );
        }
    }
    let missing: Vec<&str> = METRIC_NAMES
        .iter()
        .copied()
        .filter(|n| !used.contains(n))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn label_values_variables_use_exported_metrics() {
    let d = dashboard();
    let defined = template_var_names(&d);
    let types = exported_types();
    for var in template_vars(&d) {
        let query = var
            .get("definition")
            .or_else(|| var.pointer("/query/query"))
            .or_else(|| var.get("query"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        else {
            continue;
        };
        let Some((selector, _label)) = args.rsplit_once(',') else {
            continue; // label_values(label): no metric.
        };
        let expr = parse(selector.trim(), &defined).unwrap_or_else(|e| panic!("{query}: {e}"));
        for name in metric_names(&expr).unwrap_or_else(|e| panic!("{query}: {e}")) {
            if name.starts_with("canaryd_") {
                assert!(
                    resolve(&name, &types).is_some(),
                    "{query}: {name} is not exported"
                );
            }
        }
    }
}

// The helpers themselves.

#[test]
fn the_visitor_finds_names_in_every_kind_of_node() {
    let none = BTreeSet::new();
    let expr = parse(
        r#"-sum by (a) (rate(a_total[5m])) + on (x) group_left (y) b
           / scalar(max_over_time(c[1h:1m])) + {__name__="d"} + (e offset 5m)
           + label_replace(f, "dst", "$1", "src", "(.*)") + topk(3, g) > bool 1"#,
        &none,
    )
    .unwrap();
    let names = metric_names(&expr).unwrap();
    let expected = ["a_total", "b", "c", "d", "e", "f", "g"];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect());

    let regex = parse(r#"{__name__=~"canaryd_.+"}"#, &none).unwrap();
    assert!(metric_names(&regex).is_err());
}

#[test]
fn counters_must_be_rated() {
    let none = BTreeSet::new();
    let types = exported_types();
    let check = |text: &str| {
        let expr = parse(text, &none).unwrap();
        visit_selectors(&expr, false, &mut |vs, _, in_counter_fn| {
            let name = selector_name(vs)?.unwrap_or_default();
            match resolve(&name, &types) {
                Some((_, true)) if !in_counter_fn => Err(name),
                _ => Ok(()),
            }
        })
    };
    assert!(check("sum(rate(canaryd_decisions_total[5m]))").is_ok());
    assert!(check("sum(canaryd_decisions_total)").is_err());
    assert!(check("max_over_time(canaryd_router_errors_total[5m])").is_err());
    assert!(check("canaryd_query_duration_seconds_count").is_err());
    assert!(check("canaryd_canaries").is_ok());
}

#[test]
fn resolve_strips_histogram_suffixes_only_for_histograms() {
    let types = exported_types();
    let r = |s: &str| resolve(s, &types).map(|(name, _)| name);
    assert_eq!(
        r("canaryd_analysis_duration_seconds_bucket"),
        Some("canaryd_analysis_duration_seconds")
    );
    assert_eq!(
        r("canaryd_decisions_total"),
        Some("canaryd_decisions_total")
    );
    assert_eq!(r("canaryd_canaries_count"), None);
    assert_eq!(r("canaryd_decisions"), None);
    assert_eq!(r("canaryd_nonexistent"), None);
}

#[test]
fn substitution_handles_grafana_variable_forms() {
    let defined: BTreeSet<String> = ["job".to_string(), "datasource".to_string()].into();
    assert_eq!(
        substitute(
            r#"rate(x{job=~"$job", a=~"${job:regex}", b="[[job]]", c=~"z$"}[$__rate_interval])"#,
            &defined
        )
        .unwrap(),
        r#"rate(x{job=~"canaryd", a=~"canaryd", b="canaryd", c=~"z$"}[5m])"#
    );
    assert_eq!(
        substitute("increase(x[${__range}])", &defined).unwrap(),
        "increase(x[5m])"
    );
    assert_eq!(
        substitute(r#"label_replace(x, "d", "$1", "s", "(.*)")"#, &defined).unwrap(),
        r#"label_replace(x, "d", "$1", "s", "(.*)")"#
    );
    assert!(substitute(r#"x{a="$undefined"}"#, &defined).is_err());
}

#[test]
fn panels_are_found_inside_collapsed_rows() {
    let d = serde_json::json!({
        "panels": [
            {"type": "row", "collapsed": true, "panels": [
                {"title": "inner", "targets": [{"refId": "A", "expr": "up"}]}
            ]},
            {"title": "outer", "targets": [{"refId": "A", "expr": "up"}]}
        ]
    });
    let titles: Vec<String> = panel_exprs(&d).into_iter().map(|(t, _)| t).collect();
    assert_eq!(titles, ["inner", "outer"]);
}
