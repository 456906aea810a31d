//! What the importers (`rules import-kayenta`, `import-argo`, `import-flagger`) share: the
//! error type, the variable mapping, turning a foreign PromQL query into a canaryd template
//! (workload variables → `{{selector}}`, the analysis interval → `{{window}}`), recognising
//! the shapes worth upgrading (a ratio of one counter, a histogram quantile), turning an old
//! absolute bound into canaryd's fields, and writing the rule file with its comment block.
//!
//! The upgrade: a recognised ratio becomes a `ratio` metric (bad events over all events in
//! the window) judged by the sequential judge against the baseline, with a relative margin
//! (`--margin`, 50% unless given); the old absolute bound stays as `min`/`max`, which the
//! threshold judge uses when the rule set is switched to it. A margin cannot be derived from
//! the bound alone: a bound `b` on the canary equals a margin of `b/B - 1` at a baseline level
//! `B`, which only the running system knows; the header says so.

use super::query::{self, PROBE_LABEL};
use super::{JudgeKind, analyse};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, LabelModifier, VectorSelector};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is not the format the importer reads.
    #[error("{document}: not {expected}: {message}")]
    Format {
        /// Which document (file, `file#2`).
        document: String,
        /// What was expected (`YAML`, `a Kayenta canary config`).
        expected: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A field that cannot be imported as written.
    #[error("{document}: {field}: {message}")]
    Field {
        /// Which document (`file#2 AnalysisTemplate success-rate`).
        document: String,
        /// The field's path (`spec.metrics[0].successCondition`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Nothing in the input could be imported.
    #[error("{document}: nothing to import:\n  - {}", notes.join("\n  - "))]
    Nothing {
        /// The input.
        document: String,
        /// Why each candidate was left out.
        notes: Vec<String>,
    },
    /// A `--var`/`--arg`/`--value` flag is malformed.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The importer produced a rule file that does not validate: a bug.
    #[error("the converted rule file does not validate (please report this):\n{errors}\n{yaml}")]
    Invalid {
        /// The validation errors.
        errors: String,
        /// The rule file.
        yaml: String,
    },
}

/// An imported rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    /// The rule file (YAML, with the comment block at the top).
    pub yaml: String,
    /// The rule set's name.
    pub name: String,
    /// What was converted and how, one line each.
    pub converted: Vec<String>,
    /// What was not carried over, one line each.
    pub notes: Vec<String>,
    /// Metrics written.
    pub metrics: usize,
    /// Source metrics left out.
    pub skipped: usize,
}

/// How imported metrics are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judging {
    /// Upgrade recognised shapes to the sequential judge against the baseline (the default);
    /// when some metric is not recognised, the whole set keeps the old thresholds.
    Sequential,
    /// Keep the old absolute bounds: the threshold judge on the canary alone.
    Threshold,
    /// Kayenta's Mann–Whitney classification (Kayenta only).
    MannWhitney,
}

impl Judging {
    /// The judge's name in rule files.
    pub fn kind(self) -> JudgeKind {
        match self {
            Judging::Sequential => JudgeKind::Sequential,
            Judging::Threshold => JudgeKind::Threshold,
            Judging::MannWhitney => JudgeKind::MannWhitney,
        }
    }
}

/// Options every importer takes.
#[derive(Clone, Debug)]
pub struct Options {
    /// How to judge.
    pub judging: Judging,
    /// The relative margin of upgraded metrics (0.5 = 50%).
    pub margin: f64,
    /// Variables mapped by flags.
    pub vars: Vars,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            judging: Judging::Sequential,
            margin: DEFAULT_MARGIN,
            vars: Vars::default(),
        }
    }
}

/// The relative margin of an upgraded metric unless `--margin` says otherwise.
pub const DEFAULT_MARGIN: f64 = 0.5;

/// What a template variable of the foreign tool stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VarUse {
    /// It selects the workload: its matchers become `{{selector}}` (the arms must carry this
    /// label).
    Arm(String),
    /// A fixed text, the same for both arms.
    Value(String),
}

/// Variables mapped by `--var`/`--arg` (to an arm label) and `--value` (to a fixed text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars(pub BTreeMap<String, VarUse>);

impl Vars {
    /// Adds `NAME=LABEL` flags (arm labels) and `NAME=TEXT` flags (fixed values).
    pub fn from_flags(
        arm_flag: &'static str,
        arms: &[String],
        values: &[String],
    ) -> Result<Vars, ImportError> {
        let mut map = BTreeMap::new();
        for (flag, list, arm) in [(arm_flag, arms, true), ("value", values, false)] {
            for pair in list {
                let Some((name, target)) = pair.split_once('=') else {
                    return Err(ImportError::Flag {
                        flag,
                        message: format!("expected NAME=VALUE, got {pair:?}"),
                    });
                };
                let name = name.trim().to_string();
                let target = target.trim().to_string();
                if arm && !super::template::is_label_name(&target) {
                    return Err(ImportError::Flag {
                        flag,
                        message: format!("{target:?} is not a label name"),
                    });
                }
                let use_ = if arm {
                    VarUse::Arm(target)
                } else {
                    VarUse::Value(target)
                };
                map.insert(name, use_);
            }
        }
        Ok(Vars(map))
    }
}

// ---------------------------------------------------------------------------------------------
// Queries

/// Put in place of a workload variable inside a label value; the matcher is then replaced by
/// `{{selector}}`.
pub(crate) const SCOPE: &str = "__canaryd_scope__";
/// Put in place of a variable nobody mapped; its matchers are dropped.
pub(crate) const DROP: &str = "__canaryd_dropped__";
/// The range put in place of the analysis-interval variable, replaced by `{{window}}`.
pub(crate) const WINDOW: &str = "17h17m17s";
const MARK: &str = "__canaryd_selector__";
/// The label of a matcher written in place of a variable that stood as a whole matcher.
const VAR_LABEL: &str = "__canaryd_var__";

/// Replaces a variable written as a whole matcher (`{job="a", ${scope}}`) by a matcher the
/// parser accepts, and elsewhere by `with`: a text substitution of `pattern`.
pub(crate) fn substitute(text: &str, pattern: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(pattern) {
        let before = out.clone() + &rest[..i];
        let after = &rest[i + pattern.len()..];
        let opens = before.trim_end().ends_with(['{', ',']);
        let closes = after.trim_start().starts_with([',', '}']);
        let outside_string = !super::query::inside_string(&before, before.len());
        let marker = with == SCOPE || with == DROP;
        out.push_str(&rest[..i]);
        if opens && closes && outside_string && marker {
            let _ = write!(out, "{VAR_LABEL}=\"{with}\"");
        } else {
            out.push_str(with);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A foreign query as a canaryd template, with its shape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Converted {
    /// The template: `{{selector}}` where the workload was selected, ranges as written
    /// (`{{window}}` where the interval variable was).
    pub template: String,
    /// Whether no matcher selected the workload, so `{{selector}}` was added to every selector.
    pub scoped_everywhere: bool,
    /// Matchers dropped because they used a variable nobody mapped.
    pub dropped: usize,
    /// What the query computes, when recognised.
    pub shape: Shape,
}

/// A recognised query shape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Shape {
    /// `part / total` of one counter (optionally `* 100`, or `100 - … * 100`).
    Ratio(Ratio),
    /// `histogram_quantile(q, sum by (le) (rate(x_bucket[…])))`, optionally scaled.
    Quantile {
        /// The quantile.
        q: f64,
        /// `sum by (le) (increase(x_bucket{ {{selector}} … }[{{window}}]))`.
        buckets: String,
        /// The factor from seconds to the query's unit (1000 for milliseconds).
        scale: f64,
        /// The range the original query used.
        range: String,
    },
    /// Anything else.
    Other,
}

/// A ratio of one counter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ratio {
    /// `sum(increase(x{ {{selector}}, bad… }[{{window}}]))`.
    pub bad: String,
    /// `sum(increase(x{ {{selector}} }[{{window}}]))`.
    pub total: String,
    /// Whether the query's numerator counts good events (`code!~"5.."`).
    pub part_is_good: bool,
    /// The query's value is `scale * part/total` …
    pub scale: f64,
    /// … or `scale * (1 - part/total)` (`100 - x * 100`).
    pub complement: bool,
    /// The range the original query used.
    pub range: String,
}

impl Ratio {
    /// Whether the query's value grows with the share of bad events.
    fn grows_with_errors(&self) -> bool {
        self.part_is_good == self.complement
    }

    /// Old bounds on the query's value as bounds on the share of bad events.
    pub fn error_bounds(&self, min: Option<f64>, max: Option<f64>) -> (Option<f64>, Option<f64>) {
        let to_share = |v: f64| {
            let r = v / self.scale;
            if self.grows_with_errors() { r } else { 1.0 - r }
        };
        let round = |v: f64| (v * 1e9).round() / 1e9;
        if self.grows_with_errors() {
            (min.map(to_share).map(round), max.map(to_share).map(round))
        } else {
            (max.map(to_share).map(round), min.map(to_share).map(round))
        }
    }
}

/// Converts a query whose variables were substituted (workload → [`SCOPE`], unmapped →
/// [`DROP`], interval → [`WINDOW`]).
pub(crate) fn convert(promql: &str) -> Result<Converted, String> {
    let mut expr =
        query::parse(promql).map_err(|e| format!("the query does not parse: {}", e.trim()))?;
    let mut scoped = 0;
    let mut dropped = 0;
    visit_selectors(&mut expr, &mut |vs: &mut VectorSelector| {
        let all = &mut vs.matchers.matchers;
        let before = all.len();
        all.retain(|m| !m.value.contains(DROP));
        dropped += before - all.len();
        let before = all.len();
        all.retain(|m| !m.value.contains(SCOPE));
        if all.len() < before {
            vs.matchers
                .matchers
                .push(Matcher::new(MatchOp::Equal, PROBE_LABEL, MARK));
            scoped += 1;
        }
    });
    let scoped_everywhere = scoped == 0;
    if scoped_everywhere {
        visit_selectors(&mut expr, &mut |vs: &mut VectorSelector| {
            vs.matchers
                .matchers
                .push(Matcher::new(MatchOp::Equal, PROBE_LABEL, MARK));
        });
    }
    let printed = expr.to_string();
    let marker = format!("{PROBE_LABEL}=\"{MARK}\"");
    if !printed.contains(&marker) {
        return Err("could not place {{selector}} in the query (it selects no series)".into());
    }
    let template = printed
        .replace(&marker, " {{selector}} ")
        .replace(&format!("[{WINDOW}]"), "[{{window}}]");
    let shape = shape(&expr);
    Ok(Converted {
        template,
        scoped_everywhere,
        dropped,
        shape,
    })
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

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        _ => e,
    }
}

fn number(e: &Expr) -> Option<f64> {
    match unparen(e) {
        Expr::NumberLiteral(n) => Some(n.val),
        _ => None,
    }
}

/// `x * k` or `k * x`: `(x, k)`.
fn scaled(e: &Expr) -> Option<(&Expr, f64)> {
    match unparen(e) {
        Expr::Binary(b) if b.op.to_string() == "*" => match (number(&b.lhs), number(&b.rhs)) {
            (None, Some(k)) => Some((b.lhs.as_ref(), k)),
            (Some(k), None) => Some((b.rhs.as_ref(), k)),
            _ => None,
        },
        _ => None,
    }
}

fn shape(e: &Expr) -> Shape {
    let (inner, scale, complement) = match unparen(e) {
        Expr::Binary(b) if b.op.to_string() == "-" && number(&b.lhs).is_some() => {
            let k = number(&b.lhs).unwrap_or(0.0);
            match scaled(&b.rhs) {
                Some((x, s)) if s == k => (x, s, true),
                _ if k == 1.0 => (b.rhs.as_ref(), 1.0, true),
                _ => return Shape::Other,
            }
        }
        _ => match scaled(e) {
            Some((x, s)) => (x, s, false),
            None => (e, 1.0, false),
        },
    };
    if let Some(q) = quantile(inner, scale) {
        return if complement { Shape::Other } else { q };
    }
    match ratio(inner) {
        Some(mut r) => {
            r.scale = scale;
            r.complement = complement;
            Shape::Ratio(r)
        }
        None => Shape::Other,
    }
}

/// `sum(rate(x{…}[r]))` (also `irate`, `increase`; `sum by ()`): the selector and range.
fn summed_counter(e: &Expr) -> Option<(&VectorSelector, String)> {
    let Expr::Aggregate(a) = unparen(e) else {
        return None;
    };
    let grouped = match &a.modifier {
        None => false,
        Some(LabelModifier::Include(l)) => !l.labels.is_empty(),
        Some(LabelModifier::Exclude(_)) => true,
    };
    if a.op.to_string() != "sum" || grouped {
        return None;
    }
    counter_range(&a.expr)
}

fn counter_range(e: &Expr) -> Option<(&VectorSelector, String)> {
    let Expr::Call(c) = unparen(e) else {
        return None;
    };
    if !matches!(c.func.name, "rate" | "irate" | "increase") || c.args.args.len() != 1 {
        return None;
    }
    match unparen(&c.args.args[0]) {
        Expr::MatrixSelector(m) if m.vs.matchers.or_matchers.is_empty() => {
            let range = Expr::MatrixSelector(m.clone()).to_string();
            let range = range[range.rfind('[')?..].replace(WINDOW, "interval");
            Some((&m.vs, range))
        }
        _ => None,
    }
}

/// The selector's own matchers, without the probe, as text.
fn matchers(vs: &VectorSelector) -> Vec<String> {
    vs.matchers
        .matchers
        .iter()
        .filter(|m| m.name != PROBE_LABEL && m.name != "__name__")
        .map(|m| m.to_string())
        .collect()
}

fn count_query(name: &str, matchers: &[String]) -> String {
    let mut inner = String::from(" {{selector}}");
    for m in matchers {
        let _ = write!(inner, ", {m}");
    }
    format!("sum(increase({name}{{{inner} }}[{{{{window}}}}]))")
}

fn ratio(e: &Expr) -> Option<Ratio> {
    let Expr::Binary(b) = unparen(e) else {
        return None;
    };
    if b.op.to_string() != "/" {
        return None;
    }
    let (part, range) = summed_counter(&b.lhs)?;
    let (total, _) = summed_counter(&b.rhs)?;
    let name = part.name.clone()?;
    if total.name.as_deref() != Some(name.as_str()) {
        return None;
    }
    let part_m = matchers(part);
    let total_m = matchers(total);
    if !total_m.iter().all(|m| part_m.contains(m)) {
        return None;
    }
    let extra: Vec<&Matcher> = part
        .matchers
        .matchers
        .iter()
        .filter(|m| m.name != PROBE_LABEL && !total_m.contains(&m.to_string()))
        .collect();
    let [only] = extra.as_slice() else {
        return None;
    };
    let good = looks_good(only)?;
    let bad_matcher = if good { flip(only) } else { (*only).clone() };
    let mut bad_m = total_m.clone();
    bad_m.push(bad_matcher.to_string());
    Some(Ratio {
        bad: count_query(&name, &bad_m),
        total: count_query(&name, &total_m),
        part_is_good: good,
        scale: 1.0,
        complement: false,
        range,
    })
}

/// Whether a matcher that picks the ratio's numerator selects good events (`Some(true)`),
/// bad ones (`Some(false)`), or cannot tell.
fn looks_good(m: &Matcher) -> Option<bool> {
    let v = m.value.to_ascii_lowercase();
    let errorish = v.starts_with('5')
        || v.starts_with("[45]")
        || v.starts_with("4")
        || v.contains("error")
        || v.contains("fail")
        || v == "false";
    let okish = v.starts_with('2')
        || v.starts_with("[23]")
        || v.contains("success")
        || v == "ok"
        || v == "true";
    let selects = match (errorish, okish) {
        (true, false) => false,
        (false, true) => true,
        _ => return None,
    };
    match m.op {
        MatchOp::Equal | MatchOp::Re(_) => Some(selects),
        MatchOp::NotEqual | MatchOp::NotRe(_) => Some(!selects),
    }
}

fn flip(m: &Matcher) -> Matcher {
    let op = match &m.op {
        MatchOp::Equal => MatchOp::NotEqual,
        MatchOp::NotEqual => MatchOp::Equal,
        MatchOp::Re(r) => MatchOp::NotRe(r.clone()),
        MatchOp::NotRe(r) => MatchOp::Re(r.clone()),
    };
    Matcher {
        op,
        name: m.name.clone(),
        value: m.value.clone(),
    }
}

fn quantile(e: &Expr, scale: f64) -> Option<Shape> {
    let Expr::Call(c) = unparen(e) else {
        return None;
    };
    if c.func.name != "histogram_quantile" || c.args.args.len() != 2 {
        return None;
    }
    let q = number(&c.args.args[0])?;
    let Expr::Aggregate(a) = unparen(&c.args.args[1]) else {
        return None;
    };
    let by_le = matches!(&a.modifier, Some(LabelModifier::Include(l)) if l.labels == ["le"]);
    if a.op.to_string() != "sum" || !by_le || !(q > 0.0 && q < 1.0) {
        return None;
    }
    let (vs, range) = counter_range(&a.expr)?;
    let name = vs.name.clone()?;
    if !name.ends_with("_bucket") {
        return None;
    }
    let mut inner = String::from(" {{selector}}");
    for m in matchers(vs) {
        let _ = write!(inner, ", {m}");
    }
    Some(Shape::Quantile {
        q,
        buckets: format!("sum by (le) (increase({name}{{{inner} }}[{{{{window}}}}]))"),
        scale,
        range,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing the rule file

/// One metric of an imported rule file.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Draft {
    pub name: String,
    pub description: Option<String>,
    pub kind: DraftKind,
    /// `decrease`, or increase when false.
    pub decrease: bool,
    pub max_increase: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Write `min`/`max` as percentages (they bound a ratio).
    pub percent: bool,
    pub critical: bool,
    pub weight: Option<f64>,
    pub group: Option<String>,
    pub dry_run: bool,
    pub quantile: Option<f64>,
}

/// The query fields of a draft.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum DraftKind {
    Ratio { bad: String, total: String },
    Histogram { buckets: String },
    Gauge { query: String },
}

impl Default for DraftKind {
    fn default() -> Self {
        DraftKind::Gauge {
            query: String::new(),
        }
    }
}

/// An imported rule file before it is written.
#[derive(Clone, Debug, Default)]
pub(crate) struct DraftSet {
    /// The rule set's name.
    pub name: String,
    /// The first line of the comment block (`Imported from …`).
    pub origin: String,
    pub judge: Option<JudgeKind>,
    pub description: String,
    pub metrics: Vec<Draft>,
    /// `threshold:` options as `key: value` lines.
    pub threshold: Vec<String>,
    /// `mann_whitney:` options as `key: value` lines.
    pub mann_whitney: Vec<String>,
    pub converted: Vec<String>,
    pub left_out: Vec<String>,
    pub skipped: usize,
}

/// A number as the rule file writes it: no float noise.
pub(crate) fn num(v: f64) -> String {
    let r = (v * 1e9).round() / 1e9;
    format!("{r}")
}

fn percent(v: f64) -> String {
    format!("{}%", num(v * 100.0))
}

impl DraftSet {
    /// Writes and validates the rule file.
    pub fn finish(self) -> Result<Import, ImportError> {
        let mut yaml = String::new();
        let w = &mut yaml;
        let _ = writeln!(w, "# {}", self.origin);
        let _ = writeln!(w, "# Converted:");
        for c in &self.converted {
            let _ = writeln!(w, "#   - {}", c.replace('\n', " "));
        }
        if self.left_out.is_empty() {
            let _ = writeln!(w, "# Left out: nothing.");
        } else {
            let _ = writeln!(w, "# Left out (review before use):");
            for n in &self.left_out {
                let _ = writeln!(w, "#   - {}", n.replace('\n', " "));
            }
        }
        let judge = self.judge.unwrap_or_default();
        let _ = writeln!(w, "name: {}", self.name);
        let _ = writeln!(w, "judge: {}", judge_word(judge));
        let _ = writeln!(w, "description: {}", quote(&self.description));
        for (block, lines) in [
            ("mann_whitney", &self.mann_whitney),
            ("threshold", &self.threshold),
        ] {
            if !lines.is_empty() {
                let _ = writeln!(w, "{block}:");
                for l in lines {
                    let _ = writeln!(w, "  {l}");
                }
            }
        }
        let _ = writeln!(w, "metrics:");
        for m in &self.metrics {
            write_metric(w, m);
        }
        let analysis = analyse(&format!("{}.yaml", self.name), &yaml);
        if !analysis.errors.is_empty() {
            let errors: Vec<String> = analysis.errors.iter().map(|e| e.to_string()).collect();
            return Err(ImportError::Invalid {
                errors: errors.join("\n"),
                yaml,
            });
        }
        Ok(Import {
            yaml,
            name: self.name,
            converted: self.converted,
            notes: self.left_out,
            metrics: self.metrics.len(),
            skipped: self.skipped,
        })
    }
}

fn write_metric(w: &mut String, m: &Draft) {
    let _ = writeln!(w, "  - name: {}", m.name);
    if let Some(d) = &m.description {
        let _ = writeln!(w, "    description: {}", quote(d));
    }
    match &m.kind {
        DraftKind::Ratio { bad, total } => {
            let _ = writeln!(w, "    kind: ratio");
            let _ = writeln!(w, "    bad: {}", quote(bad));
            let _ = writeln!(w, "    total: {}", quote(total));
        }
        DraftKind::Histogram { buckets } => {
            let _ = writeln!(w, "    kind: histogram");
            let _ = writeln!(w, "    buckets: {}", quote(buckets));
        }
        DraftKind::Gauge { query } => {
            let _ = writeln!(w, "    kind: gauge");
            let _ = writeln!(w, "    query: {}", quote(query));
        }
    }
    if let Some(q) = m.quantile {
        let _ = writeln!(w, "    quantile: {}", num(q));
    }
    if m.decrease {
        let _ = writeln!(w, "    direction: decrease");
    }
    if let Some(v) = m.max_increase {
        let _ = writeln!(w, "    max_increase: {}", percent(v));
    }
    let bound = |v: f64| if m.percent { percent(v) } else { num(v) };
    if let Some(v) = m.min {
        let _ = writeln!(w, "    min: {}", bound(v));
    }
    if let Some(v) = m.max {
        let _ = writeln!(w, "    max: {}", bound(v));
    }
    if m.critical {
        let _ = writeln!(w, "    critical: true");
    }
    if let Some(v) = m.weight {
        let _ = writeln!(w, "    weight: {}", num(v));
    }
    if let Some(g) = &m.group {
        let _ = writeln!(w, "    group: {}", quote(g));
    }
    if m.dry_run {
        let _ = writeln!(w, "    dry_run: true");
    }
}

/// The judge's name in rule files.
pub(crate) fn judge_word(judge: JudgeKind) -> &'static str {
    match judge {
        JudgeKind::Sequential => "sequential",
        JudgeKind::MannWhitney => "mann_whitney",
        JudgeKind::Threshold => "threshold",
    }
}

/// A rule-set or metric name from free text.
pub(crate) fn rule_name(text: &str) -> String {
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

/// `name`, or `name-2`, `name-3`… when taken.
pub(crate) fn unique(name: &str, used: &mut std::collections::BTreeSet<String>) -> String {
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
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''").replace('\n', " "))
}

// ---------------------------------------------------------------------------------------------
// From a converted metric to a draft

/// A foreign metric, converted, with its old absolute bounds on the query's value.
pub(crate) struct Foreign {
    /// The metric's name in the output.
    pub name: String,
    /// The original name, for notes.
    pub label: String,
    pub converted: Converted,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// How the bounds were written (`successCondition result[0] >= 0.95`), for notes.
    pub bound_text: String,
}

/// The metric upgraded to a baseline comparison, when its shape allows; with the line that
/// says how.
pub(crate) fn upgrade(f: &Foreign, margin: f64) -> Option<(Draft, String)> {
    let m = percent(margin);
    match &f.converted.shape {
        Shape::Ratio(r) => {
            let (lo, hi) = r.error_bounds(f.min, f.max);
            let unbounded = f.min.is_none() && f.max.is_none();
            if hi.is_none() && !unbounded {
                return None;
            }
            let lo = lo.filter(|v| *v > 0.0);
            let draft = Draft {
                name: f.name.clone(),
                kind: DraftKind::Ratio {
                    bad: r.bad.clone(),
                    total: r.total.clone(),
                },
                max_increase: Some(margin),
                min: lo,
                max: hi,
                percent: true,
                ..Draft::default()
            };
            let how = format!(
                "metric {:?}: a ratio of one counter ({}) with {} → `ratio` (bad events over all, \
                 rate{} → increase over the window), judged against the baseline with a {m} margin; \
                 {}",
                f.label,
                if r.part_is_good {
                    "successes over requests"
                } else {
                    "errors over requests"
                },
                if f.bound_text.is_empty() {
                    "no bound"
                } else {
                    f.bound_text.as_str()
                },
                r.range,
                match hi {
                    Some(hi) => format!(
                        "the old bound kept as `max: {}` (used by `judge: threshold`)",
                        percent(hi)
                    ),
                    None => "no old bound".into(),
                }
            );
            Some((draft, how))
        }
        Shape::Quantile {
            q,
            buckets,
            scale,
            range,
        } => {
            if f.max.is_none() && f.min.is_some() {
                return None;
            }
            let hi = f.max.map(|m| m / scale);
            let draft = Draft {
                name: f.name.clone(),
                kind: DraftKind::Histogram {
                    buckets: buckets.clone(),
                },
                quantile: Some(*q),
                max_increase: Some(margin),
                max: hi,
                ..Draft::default()
            };
            let how = format!(
                "metric {:?}: a histogram quantile (p{}) with {} → `histogram` with `quantile: {}` \
                 (rate{range} → increase over the window), judged against the baseline with a {m} \
                 margin; {}",
                f.label,
                num(q * 100.0),
                if f.bound_text.is_empty() {
                    "no bound"
                } else {
                    f.bound_text.as_str()
                },
                num(*q),
                match hi {
                    Some(hi) => format!(
                        "the old bound kept as `max: {}` seconds (used by `judge: threshold`)",
                        num(hi)
                    ),
                    None => "no old bound".into(),
                }
            );
            Some((draft, how))
        }
        Shape::Other => None,
    }
}

/// The metric as it was: its query on the canary alone within the old bounds.
pub(crate) fn copy(f: &Foreign) -> Option<(Draft, String)> {
    if f.min.is_none() && f.max.is_none() {
        return None;
    }
    let draft = Draft {
        name: f.name.clone(),
        kind: DraftKind::Gauge {
            query: f.converted.template.clone(),
        },
        min: f.min,
        max: f.max,
        ..Draft::default()
    };
    let how = format!(
        "metric {:?}: its query as a `gauge` checked on the canary alone ({} → {})",
        f.label,
        f.bound_text,
        bounds_text(f.min, f.max)
    );
    Some((draft, how))
}

fn bounds_text(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("`min: {}`, `max: {}`", num(lo), num(hi)),
        (Some(lo), None) => format!("`min: {}`", num(lo)),
        (None, Some(hi)) => format!("`max: {}`", num(hi)),
        (None, None) => "no bound".into(),
    }
}

/// Notes on how the query's variables were placed.
pub(crate) fn placement_notes(label: &str, c: &Converted, notes: &mut Vec<String>) {
    if c.scoped_everywhere {
        notes.push(format!(
            "metric {label:?}: no matcher selected the workload; {{{{selector}}}} was added to every selector"
        ));
    }
    if c.dropped > 0 {
        notes.push(format!(
            "metric {label:?}: {} matcher(s) on unmapped variables dropped",
            c.dropped
        ));
    }
}

/// Decides the judge of a set of foreign metrics and turns them into drafts: all upgraded
/// (sequential) when every metric's shape allows and the user did not ask for thresholds,
/// otherwise all copied (threshold).
///
/// Every metric is critical: in Argo Rollouts and Flagger any failing metric fails the
/// analysis, and canaryd's `critical` is what says so.
pub(crate) fn judge_all(set: &mut DraftSet, foreign: Vec<Foreign>, opts: &Options) {
    judge_each(set, foreign, opts);
    for m in set.metrics.iter_mut() {
        m.critical = true;
    }
    set.converted.push(
        "every metric is `critical: true`: any failing metric failed the analysis before too"
            .into(),
    );
}

fn judge_each(set: &mut DraftSet, foreign: Vec<Foreign>, opts: &Options) {
    let upgraded: Vec<Option<(Draft, String)>> =
        foreign.iter().map(|f| upgrade(f, opts.margin)).collect();
    let all = upgraded.iter().all(Option::is_some);
    if opts.judging == Judging::Sequential && all {
        set.judge = Some(JudgeKind::Sequential);
        for (d, how) in upgraded.into_iter().flatten() {
            set.metrics.push(d);
            set.converted.push(how);
        }
        set.converted.push(format!(
            "the {} margin is `--margin`: an old bound b on the canary equals a margin of b/B - 1 \
             at a baseline level B; set it from the baseline you see",
            percent(opts.margin)
        ));
        return;
    }
    if opts.judging == Judging::Sequential {
        for (f, u) in foreign.iter().zip(&upgraded) {
            if u.is_none() {
                set.converted.push(format!(
                    "metric {:?}: not a recognised ratio or quantile with an upper bound, so the \
                     rule set keeps the old thresholds (`judge: threshold`) for every metric",
                    f.label
                ));
            }
        }
    }
    set.judge = Some(JudgeKind::Threshold);
    for f in &foreign {
        match copy(f) {
            Some((d, how)) => {
                set.metrics.push(d);
                set.converted.push(how);
            }
            None => {
                set.left_out.push(format!(
                    "metric {:?}: no bound to check it against; not imported",
                    f.label
                ));
                set.skipped += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes-style inputs (Argo Rollouts, Flagger)

/// One YAML document of an input file.
pub(crate) struct Document {
    /// `FILE#N` (1-based), for messages.
    pub at: String,
    pub value: serde_yaml::Value,
}

impl Document {
    /// `FILE#N Kind name`, for messages.
    pub fn name(&self) -> String {
        let kind = self.value["kind"].as_str().unwrap_or("?");
        let name = self.value["metadata"]["name"].as_str().unwrap_or("?");
        format!("{} {kind} {name}", self.at)
    }
}

/// The documents of a (multi-document) YAML file; empty documents are skipped.
pub(crate) fn documents(text: &str, file: &str) -> Result<Vec<Document>, ImportError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{file}#{}", i + 1);
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| ImportError::Format {
            document: at.clone(),
            expected: "YAML",
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        if !value.is_mapping() {
            return Err(ImportError::Format {
                document: at,
                expected: "a Kubernetes resource",
                message: "the document is not a mapping".into(),
            });
        }
        out.push(Document { at, value });
    }
    Ok(out)
}

/// A whole number or a numeric string (`3`, `"3"`, `-1`), after `resolve` substituted
/// variables in strings.
pub(crate) fn count_field(
    v: &serde_yaml::Value,
    resolve: &dyn Fn(&str) -> String,
) -> Result<Option<i64>, String> {
    match v {
        serde_yaml::Value::Null => Ok(None),
        serde_yaml::Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("expected a whole number, got {n}")),
        serde_yaml::Value::String(s) => resolve(s)
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("expected a whole number, got {s:?}")),
        other => Err(format!("expected a whole number, got {other:?}")),
    }
}

/// Replaces `{{ prefix.NAME }}` / `{{NAME}}` placeholders (spaces allowed) by `f(NAME)`.
pub(crate) fn replace_placeholders(
    text: &str,
    prefix: &str,
    f: &mut dyn FnMut(&str) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim();
        let name = inner.strip_prefix(prefix).unwrap_or(inner);
        let known = inner.starts_with(prefix) || prefix.is_empty();
        match f(name).filter(|_| known) {
            Some(with) => {
                out.push_str(&rest[..i]);
                out.push_str(&with);
            }
            None => out.push_str(&rest[..i + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(q: &str) -> Converted {
        convert(q).unwrap()
    }

    #[test]
    fn a_whole_matcher_a_value_and_a_regex_become_the_selector() {
        let q = substitute("sum(rate(x{job=\"a\", ${scope}}[1m]))", "${scope}", SCOPE);
        assert_eq!(
            conv(&q).template,
            "sum(rate(x{ {{selector}} ,job=\"a\"}[1m]))"
        );
        let q = substitute("sum(rate(x{v=~\"${scope}|b\"}[1m]))", "${scope}", SCOPE);
        let c = conv(&q);
        assert_eq!(c.template, "sum(rate(x{ {{selector}} }[1m]))");
        assert!(!c.scoped_everywhere);
        let c = conv("sum(rate(x[1m])) / sum(rate(y[1m]))");
        assert!(c.scoped_everywhere);
    }

    #[test]
    fn success_ratios_become_error_ratios_with_bounds_on_errors() {
        let q = substitute(
            "sum(irate(istio_requests_total{reporter=\"source\",destination_service=~\"{{svc}}\",response_code!~\"5.*\"}[5m])) / sum(irate(istio_requests_total{reporter=\"source\",destination_service=~\"{{svc}}\"}[5m]))",
            "{{svc}}",
            SCOPE,
        );
        let Shape::Ratio(r) = conv(&q).shape else {
            panic!("not a ratio")
        };
        assert!(r.part_is_good);
        assert_eq!(
            r.bad,
            "sum(increase(istio_requests_total{ {{selector}}, reporter=\"source\", response_code=~\"5.*\" }[{{window}}]))"
        );
        assert_eq!(r.error_bounds(Some(0.95), None), (None, Some(0.05)));
        let Shape::Ratio(r) = conv(&format!(
            "100 - sum(rate(x{{v=\"{SCOPE}\",code!~\"5..\"}}[1m])) / sum(rate(x{{v=\"{SCOPE}\"}}[1m])) * 100"
        ))
        .shape
        else {
            panic!("not a ratio")
        };
        // 100 - successes% = error %: a max of 1 (percent) is 1% errors.
        assert_eq!(r.error_bounds(None, Some(1.0)), (None, Some(0.01)));
    }

    #[test]
    fn quantiles_are_recognised_and_other_shapes_are_not() {
        let c = conv(&format!(
            "histogram_quantile(0.99, sum(rate(h_bucket{{v=\"{SCOPE}\"}}[1m])) by (le)) * 1000"
        ));
        assert!(
            matches!(c.shape, Shape::Quantile { q, scale, .. } if q == 0.99 && scale == 1000.0)
        );
        assert_eq!(
            conv("sum(rate(x{a=\"1\"}[1m])) / sum(rate(y[1m]))").shape,
            Shape::Other
        );
    }
}
