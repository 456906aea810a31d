//! Rule files (`rules/*.yaml`): which metrics a canary is judged on, how to query them, and the
//! margins that count as a regression.
//!
//! Parsing is strict (unknown fields are errors) and every error carries `file:line:col`. A
//! rule set is pinned into a canary at submit time by its source text and hash, so a running
//! canary keeps the version it started with whatever happens to the files.

pub mod template;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use template::{Selector, Template};

/// The default family-wise false-rollback budget.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// Which judge a rule set uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    /// Anytime-valid sequential tests (the default): bounded false rollbacks however often it looks.
    #[default]
    Sequential,
    /// Kayenta-compatible Mann–Whitney classification and score.
    MannWhitney,
    /// Flagger/Argo-style fixed thresholds on the canary alone.
    Threshold,
}

/// Which direction of change is a regression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Higher canary values are bad (errors, latency, CPU).
    #[default]
    Increase,
    /// Lower canary values are bad (cache hit rate, throughput).
    Decrease,
}

/// A validated rule set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleSet {
    /// The name canary specs refer to (`rules: http-service`).
    pub name: String,
    /// The judge that evaluates the metrics.
    pub judge: JudgeKind,
    /// Family-wise false-rollback budget, shared by the metrics (Bonferroni).
    pub alpha: f64,
    /// What this rule set is for.
    pub description: Option<String>,
    /// The metrics, in file order.
    pub metrics: Vec<MetricRule>,
    /// Options of the Kayenta-compatible judge.
    pub mann_whitney: MannWhitneyOptions,
    /// Options of the threshold judge.
    pub threshold: ThresholdOptions,
}

/// One metric of a rule set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricRule {
    /// Unique within the rule set.
    pub name: String,
    /// How the metric is queried and compared.
    pub kind: MetricKind,
    /// Which direction is bad.
    pub direction: Direction,
    /// Relative margin: a regression is the canary worse than the baseline by more than this
    /// fraction (0.5 = 50%). For histograms without `quantile` it applies to the share of slow
    /// requests.
    pub max_increase: Option<f64>,
    /// Absolute lower bound on the canary's value (threshold judge).
    pub min: Option<f64>,
    /// Absolute upper bound on the canary's value (threshold judge).
    pub max: Option<f64>,
    /// A critical metric's failure fails the canary whatever the others say.
    pub critical: bool,
    /// Weight in the Kayenta-style score.
    pub weight: f64,
    /// Kayenta-style group.
    pub group: Option<String>,
    /// Evaluated and reported, never acted on.
    pub dry_run: bool,
}

/// How a metric is queried.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricKind {
    /// A ratio of two counters, e.g. 5xx responses over all responses.
    Ratio {
        /// Count of bad events in the window.
        bad: Template,
        /// Count of all events in the window.
        total: Template,
    },
    /// A latency distribution from Prometheus histogram `_bucket` counters (`sum by (le)`).
    Histogram {
        /// Bucket counts in the window, by `le`.
        buckets: Template,
        /// A fixed slow-request threshold in seconds (an SLO value); otherwise chosen from the
        /// baseline in a warm-up interval.
        threshold: Option<f64>,
        /// Which baseline quantile sets the threshold when `threshold` is not given.
        threshold_quantile: f64,
        /// Compare this quantile directly (canary q > (1+margin) * baseline q) instead of the
        /// slow-request share.
        quantile: Option<f64>,
    },
    /// A gauge compared as a paired log-ratio (CPU, memory, connections, disk).
    Gauge {
        /// The gauge's value for the arm.
        query: Template,
        /// Tolerated growth of the canary/baseline ratio per interval (leak detection).
        slope: Option<f64>,
    },
}

impl MetricKind {
    /// The kind's name as written in rule files.
    pub fn name(&self) -> &'static str {
        match self {
            MetricKind::Ratio { .. } => "ratio",
            MetricKind::Histogram { .. } => "histogram",
            MetricKind::Gauge { .. } => "gauge",
        }
    }

    /// The templates of this metric, with their field names.
    pub fn templates(&self) -> Vec<(&'static str, &Template)> {
        match self {
            MetricKind::Ratio { bad, total } => vec![("bad", bad), ("total", total)],
            MetricKind::Histogram { buckets, .. } => vec![("buckets", buckets)],
            MetricKind::Gauge { query, .. } => vec![("query", query)],
        }
    }
}

/// Options of the Kayenta-compatible judge (`judge: mann_whitney`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MannWhitneyOptions {
    /// Confidence of the Mann–Whitney interval (Kayenta: 0.98).
    pub confidence: f64,
    /// Score at or above which the canary passes.
    pub pass_threshold: f64,
    /// Score below which the canary fails; between the two it is marginal.
    pub marginal_threshold: f64,
    /// Group weights (percent); groups not listed share the rest equally.
    pub group_weights: BTreeMap<String, f64>,
    /// Remove outliers beyond this many IQRs (Kayenta's IQR filter), or keep all when absent.
    pub outlier_iqr_factor: Option<f64>,
    /// Treat NaN as 0 instead of removing it.
    pub nan_as_zero: bool,
}

impl Default for MannWhitneyOptions {
    fn default() -> Self {
        MannWhitneyOptions {
            confidence: 0.98,
            pass_threshold: 95.0,
            marginal_threshold: 75.0,
            group_weights: BTreeMap::new(),
            outlier_iqr_factor: None,
            nan_as_zero: false,
        }
    }
}

/// Options of the threshold judge (`judge: threshold`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdOptions {
    /// Failed checks (any metric out of bounds in an interval) before rolling back.
    pub failure_limit: u32,
    /// Consecutive intervals with query errors before giving up.
    pub consecutive_error_limit: u32,
    /// Passed intervals needed to promote.
    pub min_passes: u32,
}

impl Default for ThresholdOptions {
    fn default() -> Self {
        ThresholdOptions {
            failure_limit: 1,
            consecutive_error_limit: 4,
            min_passes: 1,
        }
    }
}

/// A rule set's source, pinned into a canary at submit time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSource {
    /// The rule set's name.
    pub name: String,
    /// Where it was loaded from (for messages).
    pub path: String,
    /// The file's text.
    pub content: String,
    /// `sha256:` of the text: the version.
    pub hash: String,
}

impl RuleSource {
    /// Wraps a file's text, computing its hash.
    pub fn new(name: &str, path: &str, content: String) -> Self {
        let hash = format!("sha256:{:x}", Sha256::digest(content.as_bytes()));
        RuleSource {
            name: name.into(),
            path: path.into(),
            content,
            hash,
        }
    }

    /// Parses the pinned text again (it was valid when pinned).
    pub fn parse(&self) -> Result<RuleSet, Vec<RuleError>> {
        parse_rule_set(&self.path, &self.content)
    }
}

/// An error in a rule file, with its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The metric it concerns, if any.
    pub metric: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(m) = &self.metric {
            write!(f, "metric {m:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file format.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleSet {
    name: String,
    #[serde(default)]
    judge: JudgeKind,
    alpha: Option<f64>,
    description: Option<String>,
    metrics: Vec<RawMetric>,
    #[serde(default)]
    mann_whitney: MannWhitneyOptions,
    #[serde(default)]
    threshold: ThresholdOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: String,
    kind: RawKind,
    bad: Option<Template>,
    total: Option<Template>,
    buckets: Option<Template>,
    query: Option<Template>,
    #[serde(default)]
    direction: Direction,
    max_increase: Option<Fraction>,
    min: Option<f64>,
    max: Option<f64>,
    threshold: Option<Seconds>,
    threshold_quantile: Option<f64>,
    quantile: Option<f64>,
    slope: Option<Fraction>,
    #[serde(default)]
    critical: bool,
    weight: Option<f64>,
    group: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Ratio,
    Histogram,
    Gauge,
}

/// A relative amount: `50%` or `0.5`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Fraction(f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let value = match Raw::deserialize(d)? {
            Raw::Number(n) => n,
            Raw::Text(t) => parse_percent(&t).map_err(serde::de::Error::custom)?,
        };
        Ok(Fraction(value))
    }
}

/// Parses `50%` (0.5) or `0.5`.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    number.parse::<f64>().map(|v| v * scale).map_err(|_| {
        format!("expected a percentage like \"50%\" or a fraction like 0.5, got {text:?}")
    })
}

/// Seconds: `0.5`, or a duration like `500ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Seconds(f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::time::HumanDuration::deserialize(d).map(|h| Seconds(h.0.as_secs_f64()))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.

/// Parses and validates one rule file; returns every error found.
pub fn parse_rule_set(file: &str, content: &str) -> Result<RuleSet, Vec<RuleError>> {
    let raw: RawRuleSet = match serde_yaml::from_str(content) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            // yaml_serde appends " at line L column C"; the place is already in front.
            let message = e.to_string();
            let message = match message.find(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            return Err(vec![RuleError {
                file: file.into(),
                line,
                column,
                metric: None,
                message,
            }]);
        }
    };
    validate(file, content, raw)
}

struct Errors<'a> {
    file: &'a str,
    locator: Locator<'a>,
    list: Vec<RuleError>,
}

impl Errors<'_> {
    fn top(&mut self, field: &str, message: String) {
        let (line, column) = self.locator.top_level(field);
        self.push(line, column, None, message);
    }

    fn metric(&mut self, index: usize, name: &str, field: &str, message: String) {
        let (line, column) = self.locator.metric_field(index, field);
        self.push(line, column, Some(name.to_string()), message);
    }

    fn push(&mut self, line: usize, column: usize, metric: Option<String>, message: String) {
        self.list.push(RuleError {
            file: self.file.into(),
            line,
            column,
            metric,
            message,
        });
    }
}

fn validate(file: &str, content: &str, raw: RawRuleSet) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Errors {
        file,
        locator: Locator::new(content),
        list: Vec::new(),
    };
    if !is_rule_name(&raw.name) {
        errors.top(
            "name",
            format!(
                "name {:?} must be 1-64 characters of a-z, 0-9, '-', '_', '.'",
                raw.name
            ),
        );
    }
    let alpha = raw.alpha.unwrap_or(DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha < 0.5) {
        errors.top("alpha", format!("alpha must be in (0, 0.5), got {alpha}"));
    }
    if raw.metrics.is_empty() {
        errors.top("metrics", "a rule set needs at least one metric".into());
    }
    let mut names = BTreeMap::new();
    let mut metrics = Vec::new();
    for (i, m) in raw.metrics.into_iter().enumerate() {
        if let Some(first) = names.insert(m.name.clone(), i) {
            errors.metric(
                i,
                &m.name,
                "name",
                format!(
                    "duplicate metric name (first used by metric #{})",
                    first + 1
                ),
            );
        }
        if let Some(rule) = validate_metric(&mut errors, i, m, raw.judge) {
            metrics.push(rule);
        }
    }
    let mw = &raw.mann_whitney;
    if !(mw.confidence > 0.5 && mw.confidence < 1.0) {
        errors.top(
            "mann_whitney",
            format!(
                "mann_whitney.confidence must be in (0.5, 1), got {}",
                mw.confidence
            ),
        );
    }
    if mw.marginal_threshold > mw.pass_threshold {
        errors.top(
            "mann_whitney",
            "mann_whitney.marginal_threshold must not exceed pass_threshold".into(),
        );
    }
    if raw.threshold.failure_limit == 0 {
        errors.top(
            "threshold",
            "threshold.failure_limit must be at least 1".into(),
        );
    }
    if errors.list.is_empty() {
        Ok(RuleSet {
            name: raw.name,
            judge: raw.judge,
            alpha,
            description: raw.description,
            metrics,
            mann_whitney: raw.mann_whitney,
            threshold: raw.threshold,
        })
    } else {
        errors.list.sort_by_key(|e| (e.line, e.column));
        Err(errors.list)
    }
}

fn validate_metric(
    errors: &mut Errors<'_>,
    i: usize,
    m: RawMetric,
    judge: JudgeKind,
) -> Option<MetricRule> {
    let name = m.name.clone();
    let before = errors.list.len();
    let mut err = |field: &str, message: String| errors.metric(i, &name, field, message);
    if !is_rule_name(&m.name) {
        err(
            "name",
            "name must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'".into(),
        );
    }
    // Fields that belong to another kind are mistakes worth naming.
    let fields: [(&str, bool, &[RawKind]); 9] = [
        ("bad", m.bad.is_some(), &[RawKind::Ratio]),
        ("total", m.total.is_some(), &[RawKind::Ratio]),
        ("buckets", m.buckets.is_some(), &[RawKind::Histogram]),
        ("query", m.query.is_some(), &[RawKind::Gauge]),
        ("threshold", m.threshold.is_some(), &[RawKind::Histogram]),
        (
            "threshold_quantile",
            m.threshold_quantile.is_some(),
            &[RawKind::Histogram],
        ),
        ("quantile", m.quantile.is_some(), &[RawKind::Histogram]),
        ("slope", m.slope.is_some(), &[RawKind::Gauge]),
        ("weight", false, &[]),
    ];
    let kind_name = match m.kind {
        RawKind::Ratio => "ratio",
        RawKind::Histogram => "histogram",
        RawKind::Gauge => "gauge",
    };
    for (field, present, kinds) in fields {
        if present && !kinds.contains(&m.kind) {
            err(
                field,
                format!("field `{field}` does not apply to kind {kind_name}"),
            );
        }
    }
    let mut require = |field: &str, t: &Option<Template>| -> Option<Template> {
        match t {
            None => {
                err("kind", format!("kind {kind_name} needs `{field}`"));
                None
            }
            Some(t) => {
                if let Err(e) = t.check() {
                    err(field, format!("{field}: {e}"));
                }
                Some(t.clone())
            }
        }
    };
    let kind = match m.kind {
        RawKind::Ratio => {
            let bad = require("bad", &m.bad);
            let total = require("total", &m.total);
            bad.zip(total)
                .map(|(bad, total)| MetricKind::Ratio { bad, total })
        }
        RawKind::Histogram => require("buckets", &m.buckets).map(|buckets| MetricKind::Histogram {
            buckets,
            threshold: m.threshold.map(|s| s.0),
            threshold_quantile: m.threshold_quantile.unwrap_or(0.95),
            quantile: m.quantile,
        }),
        RawKind::Gauge => require("query", &m.query).map(|query| MetricKind::Gauge {
            query,
            slope: m.slope.map(|s| s.0),
        }),
    };
    if let Some(q) = m.quantile
        && !(q > 0.0 && q < 1.0)
    {
        err("quantile", format!("quantile must be in (0, 1), got {q}"));
    }
    if let Some(q) = m.threshold_quantile
        && !(q > 0.0 && q < 1.0)
    {
        err(
            "threshold_quantile",
            format!("threshold_quantile must be in (0, 1), got {q}"),
        );
    }
    if let Some(t) = m.threshold
        && t.0 <= 0.0
    {
        err("threshold", "threshold must be > 0 seconds".into());
    }
    if let Some(s) = m.slope
        && !(s.0 > 0.0 && s.0.is_finite())
    {
        err("slope", format!("slope must be > 0, got {}", s.0));
    }
    let max_increase = m.max_increase.map(|f| f.0);
    match max_increase {
        // Kayenta's default effect size (allowedIncrease 1.0) is "any increase": 0% is allowed
        // for the Kayenta-compatible judge.
        Some(v) if judge == JudgeKind::MannWhitney && !(v >= 0.0 && v.is_finite()) => {
            err(
                "max_increase",
                format!("max_increase must be >= 0, got {v}"),
            );
        }
        Some(v) if judge != JudgeKind::MannWhitney && !(v > 0.0 && v.is_finite()) => {
            err("max_increase", format!("max_increase must be > 0, got {v}"));
        }
        Some(v) if m.direction == Direction::Decrease && v >= 1.0 => {
            err(
                "max_increase",
                format!(
                    "with direction: decrease, max_increase is the tolerated drop and must be below 100%, got {}%",
                    v * 100.0
                ),
            );
        }
        None if judge != JudgeKind::Threshold => {
            err(
                "name",
                "max_increase is required (e.g. `max_increase: 50%`)".into(),
            );
        }
        _ => {}
    }
    if judge == JudgeKind::Threshold && m.min.is_none() && m.max.is_none() {
        err("name", "the threshold judge needs `min` or `max`".into());
    }
    if let (Some(lo), Some(hi)) = (m.min, m.max)
        && lo > hi
    {
        err("min", format!("min ({lo}) is above max ({hi})"));
    }
    let weight = m.weight.unwrap_or(1.0);
    if !(weight >= 0.0 && weight.is_finite()) {
        err("weight", format!("weight must be >= 0, got {weight}"));
    }
    if errors.list.len() > before {
        return None;
    }
    Some(MetricRule {
        name: m.name,
        kind: kind?,
        direction: m.direction,
        max_increase,
        min: m.min,
        max: m.max,
        critical: m.critical,
        weight,
        group: m.group,
        dry_run: m.dry_run,
    })
}

fn is_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Finds where fields are in a rule file's text, for error positions of checks that run after
/// parsing. It understands the block style rule files are written in; anything it cannot place
/// points at the start of the metric (or the file).
struct Locator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Locator<'a> {
    fn new(content: &'a str) -> Self {
        Locator {
            lines: content.lines().collect(),
        }
    }

    fn key_at(line: &str, key: &str) -> Option<usize> {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let offset = indent + (trimmed.len() - body.len());
        let rest = body.strip_prefix(key)?;
        rest.trim_start().starts_with(':').then_some(offset)
    }

    fn top_level(&self, key: &str) -> (usize, usize) {
        for (n, line) in self.lines.iter().enumerate() {
            if !line.starts_with(' ')
                && let Some(col) = Self::key_at(line, key)
            {
                return (n + 1, col + 1);
            }
        }
        (1, 1)
    }

    /// The line range of metric `index` (its `- ` line up to the next item or top-level key).
    fn metric_range(&self, index: usize) -> Option<(usize, usize, usize)> {
        let start = self
            .lines
            .iter()
            .position(|l| !l.starts_with(' ') && Self::key_at(l, "metrics").is_some())?;
        let mut items = Vec::new();
        let mut item_indent = None;
        let mut end = self.lines.len();
        for (n, line) in self.lines.iter().enumerate().skip(start + 1) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if indent == 0 && !trimmed.starts_with("- ") {
                end = n;
                break;
            }
            if trimmed.starts_with("- ") && item_indent.is_none_or(|i| i == indent) {
                item_indent = Some(indent);
                items.push((n, indent));
            }
        }
        let (line, indent) = *items.get(index)?;
        let next = items.get(index + 1).map(|(n, _)| *n).unwrap_or(end);
        Some((line, next, indent))
    }

    fn metric_field(&self, index: usize, field: &str) -> (usize, usize) {
        let Some((first, next, indent)) = self.metric_range(index) else {
            return self.top_level("metrics");
        };
        for n in first..next {
            if let Some(col) = Self::key_at(self.lines[n], field) {
                return (n + 1, col + 1);
            }
        }
        (first + 1, indent + 3)
    }
}

// ---------------------------------------------------------------------------------------------
// The catalog of loaded rule sets.

/// The rule sets loaded from a directory, by name, with their sources.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    sets: BTreeMap<String, (RuleSource, RuleSet)>,
    /// Files that failed to load, with their errors.
    pub errors: Vec<RuleError>,
}

impl Catalog {
    /// Loads every `*.yaml` / `*.yml` file in `dir`. Files with errors are left out and their
    /// errors kept in [`Catalog::errors`]; a directory that cannot be read is an error.
    pub fn load_dir(dir: &Path) -> std::io::Result<Catalog> {
        let mut catalog = Catalog::default();
        for path in rule_files(dir)? {
            catalog.load_file(&path);
        }
        Ok(catalog)
    }

    /// Loads one file into the catalog.
    pub fn load_file(&mut self, path: &Path) {
        let shown = path.display().to_string();
        let content = match std::fs::read_to_string(path) {
            Ok(c) => c,
            Err(e) => {
                self.errors.push(RuleError {
                    file: shown,
                    line: 1,
                    column: 1,
                    metric: None,
                    message: format!("cannot read file: {e}"),
                });
                return;
            }
        };
        match parse_rule_set(&shown, &content) {
            Ok(set) => {
                if let Some((previous, _)) = self.sets.get(&set.name) {
                    self.errors.push(RuleError {
                        file: shown,
                        line: 1,
                        column: 1,
                        metric: None,
                        message: format!(
                            "rule set {:?} is already defined in {}",
                            set.name, previous.path
                        ),
                    });
                    return;
                }
                let source = RuleSource::new(&set.name, &shown, content);
                self.sets.insert(set.name.clone(), (source, set));
            }
            Err(errs) => self.errors.extend(errs),
        }
    }

    /// A rule set and its source, by name.
    pub fn get(&self, name: &str) -> Option<(&RuleSource, &RuleSet)> {
        self.sets.get(name).map(|(s, r)| (s, r))
    }

    /// The names of the loaded rule sets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }

    /// All loaded rule sets.
    pub fn iter(&self) -> impl Iterator<Item = (&RuleSource, &RuleSet)> {
        self.sets.values().map(|(s, r)| (s, r))
    }
}

/// The rule files in a directory, sorted.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"name: http-service
judge: sequential                   # sequential | mann_whitney | threshold
metrics:
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))'
    total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'
    max_increase: 50%
    critical: true
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    max_increase: 50%
  - name: cpu
    kind: gauge
    query: 'sum(rate(process_cpu_seconds_total{ {{selector}} }[{{window}}]))'
    max_increase: 50%
"#;

    #[test]
    fn the_contract_example_parses() {
        let set = parse_rule_set("http-service.yaml", CONTRACT).unwrap();
        assert_eq!(set.name, "http-service");
        assert_eq!(set.judge, JudgeKind::Sequential);
        assert_eq!(set.alpha, 0.05);
        assert_eq!(set.metrics.len(), 3);
        assert_eq!(set.metrics[0].max_increase, Some(0.5));
        assert!(set.metrics[0].critical);
        assert!(matches!(
            set.metrics[1].kind,
            MetricKind::Histogram {
                threshold: None,
                ..
            }
        ));
    }

    #[test]
    fn unknown_field_is_an_error_with_its_place() {
        let text = CONTRACT.replace("    critical: true", "    critcal: true");
        let errs = parse_rule_set("r.yaml", &text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].column), (9, 5), "{}", errs[0]);
        assert!(
            errs[0].message.contains("unknown field `critcal`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_places() {
        let text = CONTRACT
            .replace(
                "max_increase: 50%\n    critical",
                "max_increase: -5%\n    critical",
            )
            .replace(
                "{{window}}]))'\n    max_increase: 50%\n  - name: cpu",
                "{{windw}}]))'\n    max_increase: 50%\n  - name: cpu",
            );
        let errs = parse_rule_set("r.yaml", &text).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{shown:?}");
        assert_eq!(
            shown[0],
            "r.yaml:8:5: metric \"error-rate\": max_increase must be > 0, got -0.05"
        );
        assert_eq!(
            shown[1],
            "r.yaml:12:5: metric \"latency\": buckets: unknown template variable \"windw\" (known: selector, window)"
        );
    }

    #[test]
    fn percent_parsing() {
        assert_eq!(parse_percent("50%").unwrap(), 0.5);
        assert_eq!(parse_percent("0.25").unwrap(), 0.25);
        assert!(parse_percent("fifty").is_err());
    }

    #[test]
    fn source_hash_is_stable() {
        let a = RuleSource::new("x", "x.yaml", "a".into());
        assert_eq!(
            a.hash,
            "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );
    }
}
