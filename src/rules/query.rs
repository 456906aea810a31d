//! Static checks of a metric's PromQL templates, before any canary runs them.
//!
//! A template is rendered twice with a probe selector in place of `{{selector}}`: once with a
//! plain value (`canaryd_arm="canary"`) and once with a hostile one (`v2"} or vector(1) #`).
//! Both must parse, and in the hostile rendering the probe must come out as an equality
//! matcher inside a vector selector's braces, once per `{{selector}}`, with its value intact:
//! that proves `{{selector}}` sits where label matchers go and no label value can change the
//! query. The parsed query is then summarised ([`QueryInfo`]: its selectors, whether each is
//! scoped to the arm, its ranges, its top-level grouping) for the checks and lints that
//! compare templates.

use super::template::{Selector, Template};
use promql_parser::label::MatchOp;
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, LabelModifier, VectorSelector};
use std::collections::BTreeSet;
use std::time::Duration;

/// The label the probe selector uses.
pub const PROBE_LABEL: &str = "canaryd_arm";
/// A label value that would change the query if it were not escaped in place.
pub const HOSTILE_VALUE: &str = "v2\"} or vector(1) #";
const PLAIN_VALUE: &str = "canary";
/// The window the probe rendering uses.
pub const PROBE_WINDOW: &str = "60s";
/// Longest template accepted.
const MAX_TEMPLATE_CHARS: usize = 10_000;
/// Deepest bracket nesting accepted (the parser recurses).
const MAX_NESTING: usize = 64;

/// One vector selector of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectorInfo {
    /// The metric name, if written.
    pub name: Option<String>,
    /// Its matchers as `name op "value"`, the probe left out.
    pub matchers: BTreeSet<String>,
    /// Whether `{{selector}}` is among its matchers.
    pub scoped: bool,
    /// The range of a range selector (`[60s]`).
    pub range: Option<Duration>,
}

impl SelectorInfo {
    /// `name{matchers}` for messages.
    pub fn describe(&self) -> String {
        let m: Vec<&str> = self.matchers.iter().map(String::as_str).collect();
        format!("{}{{{}}}", self.name.as_deref().unwrap_or(""), m.join(", "))
    }
}

/// The top-level aggregation's grouping.
#[derive(Clone, Debug, PartialEq)]
pub enum Grouping {
    /// The query is not an aggregation at the top.
    NotAggregated,
    /// `sum(...)`: every label aggregated away.
    All,
    /// `sum by (a, b)`.
    By(BTreeSet<String>),
    /// `sum without (a)`.
    Without(BTreeSet<String>),
}

impl Grouping {
    /// Whether a label survives the top-level aggregation.
    pub fn keeps(&self, label: &str) -> bool {
        match self {
            Grouping::NotAggregated => true,
            Grouping::All => false,
            Grouping::By(l) => l.contains(label),
            Grouping::Without(l) => !l.contains(label),
        }
    }
}

/// What a template's query looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryInfo {
    /// Every vector selector, in order.
    pub selectors: Vec<SelectorInfo>,
    /// The top-level grouping.
    pub grouping: Grouping,
    /// Whether the template uses `{{window}}`.
    pub uses_window: bool,
}

/// A template that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryProblem {
    /// Character offset in the template.
    pub offset: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

fn problem(offset: usize, message: impl Into<String>) -> QueryProblem {
    QueryProblem {
        offset,
        message: message.into(),
    }
}

fn probe(value: &str) -> Selector {
    let pair = [(PROBE_LABEL.to_string(), value.to_string())];
    Selector::new(pair.iter().map(|(k, v)| (k, v))).expect("valid probe label")
}

/// Parses PromQL; a panic inside the parser is reported as an error, not propagated.
pub fn parse(query: &str) -> Result<Expr, String> {
    std::panic::catch_unwind(|| promql_parser::parser::parse(query))
        .unwrap_or_else(|_| Err("the PromQL parser failed on this query".into()))
}

/// Whether byte `at` of PromQL text is inside a string literal (`"..."`, `'...'`, `` `...` ``).
pub(crate) fn inside_string(text: &str, at: usize) -> bool {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text[..at].chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(q) if c == '\\' && q != '`' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => {}
        }
    }
    quote.is_some()
}

/// Whether byte `at` of PromQL text is inside a `#` comment.
fn inside_comment(text: &str, at: usize) -> bool {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..at];
    line.char_indices()
        .any(|(i, c)| c == '#' && !inside_string(line, i))
}

fn nesting(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Checks a template and summarises its query.
pub fn analyse(template: &Template) -> Result<QueryInfo, QueryProblem> {
    let text = &template.0;
    if text.chars().count() > MAX_TEMPLATE_CHARS {
        return Err(problem(
            0,
            format!("template longer than {MAX_TEMPLATE_CHARS} characters"),
        ));
    }
    if nesting(text) > MAX_NESTING {
        return Err(problem(
            0,
            format!("brackets nested deeper than {MAX_NESTING} levels"),
        ));
    }
    template
        .check_at()
        .map_err(|(at, e)| problem(at, e.to_string()))?;
    let first_selector = text.find("{{").map_or(0, |b| text[..b].chars().count());
    let misplaced = || {
        problem(
            first_selector,
            "{{selector}} is not where label matchers go: it must sit inside a selector's \
             braces, e.g. `metric{ {{selector}}, code=\"500\" }`, so that a label value with \
             quotes (like `v2\"} or vector(1) #`) stays a value and cannot change the query",
        )
    };
    if let Some(at) = template
        .offsets("selector")
        .into_iter()
        .find(|at| inside_string(text, *at) || inside_comment(text, *at))
    {
        return Err(QueryProblem {
            offset: text[..at].chars().count(),
            ..misplaced()
        });
    }
    let render = |value: &str| {
        template
            .render(&probe(value), PROBE_WINDOW)
            .map_err(|e| problem(0, e.to_string()))
    };
    let plain = render(PLAIN_VALUE)?;
    let plain_expr = parse(&plain).map_err(|e| {
        problem(
            0,
            format!(
                "the rendered query does not parse as PromQL: {}; rendered: {plain}",
                e.trim()
            ),
        )
    })?;
    let hostile = render(HOSTILE_VALUE)?;
    let expr = parse(&hostile).map_err(|_| misplaced())?;
    let mut selectors = Vec::new();
    let mut probes = Probes::default();
    walk(&expr, &mut selectors, &mut probes);
    if probes.exact != template.uses("selector") || probes.altered > 0 {
        return Err(misplaced());
    }
    match plain_expr.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        other => {
            return Err(problem(
                0,
                format!(
                    "the query returns a {other}; it must return an instant vector (wrap a range \
                     selector in a function such as increase(...[{{{{window}}}}]))"
                ),
            ));
        }
    }
    Ok(QueryInfo {
        selectors,
        grouping: grouping(&expr),
        uses_window: template.uses("window") > 0,
    })
}

/// Probe matchers found: intact ones, and ones whose value or operator changed.
#[derive(Default)]
struct Probes {
    exact: usize,
    altered: usize,
}

fn walk(e: &Expr, out: &mut Vec<SelectorInfo>, probes: &mut Probes) {
    match e {
        Expr::Aggregate(a) => {
            walk(&a.expr, out, probes);
            if let Some(p) = &a.param {
                walk(p, out, probes);
            }
        }
        Expr::Unary(u) => walk(&u.expr, out, probes),
        Expr::Binary(b) => {
            walk(&b.lhs, out, probes);
            walk(&b.rhs, out, probes);
        }
        Expr::Paren(p) => walk(&p.expr, out, probes),
        Expr::Subquery(s) => walk(&s.expr, out, probes),
        Expr::VectorSelector(v) => out.push(selector_info(v, None, probes)),
        Expr::MatrixSelector(m) => out.push(selector_info(&m.vs, Some(m.range), probes)),
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, out, probes);
            }
        }
        Expr::StringLiteral(s) if s.val.contains(PROBE_LABEL) => probes.altered += 1,
        _ => {}
    }
}

fn selector_info(v: &VectorSelector, range: Option<Duration>, probes: &mut Probes) -> SelectorInfo {
    let mut matchers = BTreeSet::new();
    let mut scoped = false;
    let all = v
        .matchers
        .matchers
        .iter()
        .chain(v.matchers.or_matchers.iter().flatten());
    for m in all {
        if m.name == PROBE_LABEL {
            if matches!(m.op, MatchOp::Equal) && m.value == HOSTILE_VALUE {
                probes.exact += 1;
                scoped = true;
            } else {
                probes.altered += 1;
            }
            continue;
        }
        if m.value.contains(PROBE_LABEL) {
            probes.altered += 1;
        }
        matchers.insert(format!("{}{}{:?}", m.name, m.op, m.value));
    }
    SelectorInfo {
        name: v.name.clone(),
        matchers,
        scoped,
        range,
    }
}

fn grouping(e: &Expr) -> Grouping {
    match e {
        Expr::Paren(p) => grouping(&p.expr),
        Expr::Aggregate(a) => match &a.modifier {
            None => Grouping::All,
            Some(LabelModifier::Include(l)) if l.labels.is_empty() => Grouping::All,
            Some(LabelModifier::Include(l)) => Grouping::By(l.labels.iter().cloned().collect()),
            Some(LabelModifier::Exclude(l)) => {
                Grouping::Without(l.labels.iter().cloned().collect())
            }
        },
        _ => Grouping::NotAggregated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template(s.into())
    }

    #[test]
    fn a_good_template_is_summarised() {
        let info = analyse(&t(
            r#"sum by (le) (increase(h_bucket{ {{selector}}, code="200" }[{{window}}]))"#,
        ))
        .unwrap();
        assert_eq!(info.selectors.len(), 1);
        let s = &info.selectors[0];
        assert!(s.scoped);
        assert_eq!(s.name.as_deref(), Some("h_bucket"));
        assert_eq!(s.range, Some(Duration::from_secs(60)));
        assert_eq!(s.matchers.iter().collect::<Vec<_>>(), vec!["code=\"200\""]);
        assert!(info.grouping.keeps("le"));
        assert!(!info.grouping.keeps("instance"));
        assert!(info.uses_window);
    }

    #[test]
    fn selector_inside_a_string_is_refused() {
        for bad in [
            r#"sum(x{ code="{{selector}}" })"#,
            r#"sum(x{ code=~"5..|{{selector}}" })"#,
            r#"label_replace(x{ {{selector}} }, "a", "{{selector}}", "b", ".*")"#,
        ] {
            let p = analyse(&t(bad)).unwrap_err();
            assert!(
                p.message.contains("is not where label matchers go"),
                "{bad}: {}",
                p.message
            );
        }
    }

    #[test]
    fn unparsable_and_range_results_are_refused() {
        let p = analyse(&t("sum(rate(x{ {{selector}} }[{{window}}])")).unwrap_err();
        assert!(
            p.message.contains("does not parse as PromQL"),
            "{}",
            p.message
        );
        let p = analyse(&t("x{ {{selector}} }[{{window}}]")).unwrap_err();
        assert!(p.message.contains("returns a matrix"), "{}", p.message);
        let p = analyse(&t("x{ {{selector}} }[{{windw}}]")).unwrap_err();
        assert_eq!(p.offset, 18);
    }

    #[test]
    fn unscoped_selectors_are_visible() {
        let info = analyse(&t(
            "sum(rate(a{ {{selector}} }[{{window}}])) / sum(rate(b[{{window}}]))",
        ))
        .unwrap();
        assert_eq!(
            info.selectors.iter().map(|s| s.scoped).collect::<Vec<_>>(),
            vec![true, false]
        );
    }
}
