//! Rule files (`rules/*.yaml`): which metrics a canary is judged on, how to query them, and the
//! margins that count as a regression.
//!
//! Parsing is strict (unknown fields are errors) and every error carries `file:line:col`; all
//! errors of a file are reported at once ([`validate`] has the stages). A rule set is pinned
//! into a canary at submit time by its source text and hash, so a running canary keeps the
//! version it started with whatever happens to the files; a reload that fails keeps the
//! previous version of that set ([`Catalog::reload`], [`reload`]).
//!
//! Around the loader: [`check`] (`canaryd rules check`), [`schema`] (`rules schema`),
//! [`series`] (the fixture notation `rules test` reads; the runner is in `crate::tooling`), the importers [`kayenta`], [`argo`] and
//! [`flagger`] (`rules import-kayenta`, `import-argo`, `import-flagger`; shared pieces in
//! [`import`]).

pub mod argo;
pub mod check;
pub mod flagger;
pub mod import;
pub mod kayenta;
pub mod lint;
pub mod query;
mod raw;
pub mod reload;
mod report;
pub mod schema;
pub mod series;
pub mod template;
pub mod validate;
pub mod yaml;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use template::{Selector, Template};
pub use validate::{Analysis, analyse};

/// The default family-wise false-rollback budget.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// Which judge a rule set uses.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
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
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
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
        /// The growth factor between neighbouring bucket edges, when the rule states it (a
        /// hint for the linter).
        bucket_growth: Option<f64>,
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The field's path in the file (`metrics[1].max_increase`; empty for the whole file).
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl RuleError {
    /// An error about a file as a whole (it cannot be read, it clashes with another).
    pub fn file(file: &str, message: String) -> Self {
        RuleError {
            file: file.into(),
            line: 1,
            column: 1,
            metric: None,
            path: String::new(),
            message,
        }
    }
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

/// A warning about a rule file that loads but probably does not do what was meant
/// ([`lint`] lists the codes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleWarning {
    /// A stable code, e.g. `ratio-series`.
    pub code: &'static str,
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The metric it concerns, if any.
    pub metric: Option<String>,
    /// The field's path in the file.
    pub path: String,
    /// What looks wrong and what to do.
    pub message: String,
}

impl fmt::Display for RuleWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning[{}]: ",
            self.file, self.line, self.column, self.code
        )?;
        if let Some(m) = &self.metric {
            write!(f, "metric {m:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A relative amount: `50%` (0.5) or `0.5`.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| v * scale)
        .ok_or_else(|| {
            format!("expected a percentage like \"50%\" or a fraction like 0.5, got {text:?}")
        })
}

/// Parses and validates one rule file; returns every error found (warnings are dropped: see
/// [`analyse`]).
pub fn parse_rule_set(file: &str, content: &str) -> Result<RuleSet, Vec<RuleError>> {
    analyse(file, content).into_result()
}

// ---------------------------------------------------------------------------------------------
// The catalog of loaded rule sets.

/// One loaded rule set.
#[derive(Clone, Debug)]
struct Loaded {
    source: RuleSource,
    set: RuleSet,
    /// Set when the file now fails to load and this is the version kept from before.
    stale: Option<String>,
}

/// The rule sets loaded from a directory, by name, with their sources.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    sets: BTreeMap<String, Loaded>,
    /// Files that failed to load at the last (re)load, with their errors.
    pub errors: Vec<RuleError>,
    /// The directory it was loaded from.
    pub dir: Option<PathBuf>,
    /// When it was (re)loaded.
    pub loaded_at: Option<DateTime<Utc>>,
}

impl Catalog {
    /// Loads every `*.yaml` / `*.yml` file in `dir`. Files with errors are left out and their
    /// errors kept in [`Catalog::errors`]; a directory that cannot be read is an error.
    pub fn load_dir(dir: &Path) -> std::io::Result<Catalog> {
        let mut catalog = Catalog {
            dir: Some(dir.to_path_buf()),
            loaded_at: Some(Utc::now()),
            ..Catalog::default()
        };
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
                self.errors
                    .push(RuleError::file(&shown, format!("cannot read file: {e}")));
                return;
            }
        };
        match parse_rule_set(&shown, &content) {
            Ok(set) => {
                if let Some(previous) = self.sets.get(&set.name) {
                    self.errors.push(RuleError::file(
                        &shown,
                        format!(
                            "rule set {:?} is already defined in {}",
                            set.name, previous.source.path
                        ),
                    ));
                    return;
                }
                let source = RuleSource::new(&set.name, &shown, content);
                self.sets.insert(
                    set.name.clone(),
                    Loaded {
                        source,
                        set,
                        stale: None,
                    },
                );
            }
            Err(errs) => self.errors.extend(errs),
        }
    }

    /// Loads the directory again. A set whose file now fails keeps its previous version
    /// (marked stale, with the reason); a set whose file is gone is dropped. The result is a
    /// new catalog: the caller swaps it in whole, so submitters see the old or the new one,
    /// never a mix.
    pub fn reload(&self) -> std::io::Result<Catalog> {
        let Some(dir) = &self.dir else {
            return Ok(self.clone());
        };
        let mut next = Catalog::load_dir(dir)?;
        for (name, old) in &self.sets {
            if next.sets.contains_key(name) {
                continue;
            }
            let failing: Vec<&RuleError> = next
                .errors
                .iter()
                .filter(|e| e.file == old.source.path)
                .collect();
            if failing.is_empty() {
                continue;
            }
            let why = format!(
                "{} has {} error(s) (first: {}); serving the previous version {}",
                old.source.path,
                failing.len(),
                failing[0],
                old.source.hash
            );
            next.sets.insert(
                name.clone(),
                Loaded {
                    stale: Some(why),
                    ..old.clone()
                },
            );
        }
        Ok(next)
    }

    /// A rule set and its source, by name.
    pub fn get(&self, name: &str) -> Option<(&RuleSource, &RuleSet)> {
        self.sets.get(name).map(|l| (&l.source, &l.set))
    }

    /// Why a set is served at an older version than its file, if it is.
    pub fn stale(&self, name: &str) -> Option<&str> {
        self.sets.get(name).and_then(|l| l.stale.as_deref())
    }

    /// The names of the loaded rule sets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }

    /// All loaded rule sets.
    pub fn iter(&self) -> impl Iterator<Item = (&RuleSource, &RuleSet)> {
        self.sets.values().map(|l| (&l.source, &l.set))
    }

    /// What `GET /api/v1/rules` shows: each set (name, version, path, judge, metrics, and
    /// whether an older version is served because the file fails) and the load errors.
    pub fn view(&self) -> serde_json::Value {
        let sets: Vec<serde_json::Value> = self
            .sets
            .values()
            .map(|l| {
                let metrics: Vec<serde_json::Value> = l
                    .set
                    .metrics
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name,
                            "kind": m.kind.name(),
                            "direction": m.direction,
                            "max_increase": m.max_increase,
                            "critical": m.critical,
                            "dry_run": m.dry_run,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": l.set.name,
                    "version": l.source.hash,
                    "path": l.source.path,
                    "judge": l.set.judge,
                    "alpha": l.set.alpha,
                    "description": l.set.description,
                    "metrics": metrics,
                    "stale": l.stale.is_some(),
                    "stale_reason": l.stale,
                })
            })
            .collect();
        serde_json::json!({
            "dir": self.dir,
            "loaded_at": self.loaded_at,
            "sets": sets,
            "errors": self.errors,
        })
    }
}

/// The rule files in a directory, sorted.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_rule_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a path looks like a rule file (`*.yaml`, `*.yml`, not a `*.test.yaml` fixture).
pub fn is_rule_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".test.yaml")
        && !name.ends_with(".test.yml")
        && !name.starts_with('.')
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
    fn bounds_take_percentages_and_a_bad_bound_is_one_error() {
        let rules = |max: &str| {
            format!(
                "name: t\njudge: threshold\nmetrics:\n  - name: errors\n    kind: ratio\n    bad: 'sum(increase(x{{ {{{{selector}}}}, code=~\"5..\" }}[{{{{window}}}}]))'\n    total: 'sum(increase(x{{ {{{{selector}}}} }}[{{{{window}}}}]))'\n    max: {max}\n"
            )
        };
        let set = parse_rule_set("r.yaml", &rules("1%")).unwrap();
        assert_eq!(set.metrics[0].max, Some(0.01));
        let set = parse_rule_set("r.yaml", &rules("0.01")).unwrap();
        assert_eq!(set.metrics[0].max, Some(0.01));
        let errs = parse_rule_set("r.yaml", &rules("one percent")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.starts_with("max: "), "{}", errs[0]);
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
            "r.yaml:8:19: metric \"error-rate\": max_increase must be > 0, got -0.05"
        );
        assert_eq!(
            shown[1],
            "r.yaml:12:90: metric \"latency\": buckets: unknown template variable \"windw\" (known: selector, window)"
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
