//! Every shipped rule pack judges resources per request or per instance, from interval means:
//! a gauge that is an arm's *total* (`sum(rate(process_cpu_seconds_total[..]))`) follows the
//! traffic split (a canary at 10% uses a tenth of the baseline's CPU however wasteful it is),
//! and a gauge read at one instant is a raw point, not the interval's mean.

use canaryd::metrics::{ArmSelectors, render_all};
use canaryd::rules::{MetricKind, Selector, parse_rule_set};
use promql_parser::parser::Expr;

/// Why a gauge query breaks the rule, if it does.
fn problems(expr: &Expr) -> Vec<String> {
    let mut out = Vec::new();
    let mut top = expr;
    while let Expr::Paren(p) = top {
        top = &p.expr;
    }
    if let Expr::Aggregate(a) = top {
        let op = a.op.to_string().to_lowercase();
        if op == "sum" || op == "count" {
            out.push(format!(
                "the arm's {op}: a total follows the traffic split; divide by requests or use avg"
            ));
        }
    }
    instant_points(expr, &mut out);
    out
}

/// Vector selectors outside a range function: raw points instead of interval means.
fn instant_points(expr: &Expr, out: &mut Vec<String>) {
    match expr {
        Expr::VectorSelector(vs) => out.push(format!(
            "{} is read at one instant; use avg_over_time(..[{{{{window}}}}]) or rate",
            vs.name.as_deref().unwrap_or("a selector")
        )),
        Expr::MatrixSelector(_) => {}
        Expr::Aggregate(a) => instant_points(&a.expr, out),
        Expr::Unary(u) => instant_points(&u.expr, out),
        Expr::Binary(b) => {
            instant_points(&b.lhs, out);
            instant_points(&b.rhs, out);
        }
        Expr::Paren(p) => instant_points(&p.expr, out),
        Expr::Subquery(s) => instant_points(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| instant_points(a, out)),
        _ => {}
    }
}

fn selector(arm: &str) -> Selector {
    let pairs = [("version".to_string(), arm.to_string())];
    Selector::new(pairs.iter().map(|(k, v)| (k, v))).unwrap()
}

#[test]
fn shipped_gauges_are_per_request_or_per_instance_interval_means() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let arms = ArmSelectors {
        canary: selector("canary"),
        baseline: selector("baseline"),
    };
    let mut checked = 0;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let rules = parse_rule_set(&path.display().to_string(), &text).unwrap();
        let queries = render_all(&rules, &arms, "1m").unwrap();
        for m in rules
            .metrics
            .iter()
            .filter(|m| matches!(m.kind, MetricKind::Gauge { .. }))
        {
            let q = queries
                .iter()
                .find(|q| q.metric == m.name && q.field == "query")
                .unwrap();
            let expr = promql_parser::parser::parse(&q.promql).unwrap();
            for p in problems(&expr) {
                found.push(format!("{}: {}: {p}", path.display(), m.name));
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} gauges found");
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_catches_totals_and_points() {
    let bad =
        promql_parser::parser::parse("sum(rate(process_cpu_seconds_total{a=\"b\"}[1m]))").unwrap();
    assert_eq!(problems(&bad).len(), 1, "{:?}", problems(&bad));
    let point = promql_parser::parser::parse("avg(process_resident_memory_bytes)").unwrap();
    assert_eq!(problems(&point).len(), 1, "{:?}", problems(&point));
    let good = promql_parser::parser::parse(
        "sum(rate(process_cpu_seconds_total[1m])) / sum(rate(http_requests_total[1m]))",
    )
    .unwrap();
    assert!(problems(&good).is_empty(), "{:?}", problems(&good));
}
