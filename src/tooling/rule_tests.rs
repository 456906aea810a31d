//! `canaryd rules test FILE...`: rule unit tests, in the spirit of `promtool test rules`.
//!
//! A test file names a rule file and lists tests. Each test gives, per metric, what the
//! canary's and the baseline's queries return interval by interval (the notation of
//! [`crate::rules::series`]), and what the judge should make of it: the decision, the interval that
//! decides, the per-interval verdicts and metric statuses, words in the reasons. The judge is
//! pure, so no Prometheus is needed: the series become [`IntervalData`] and go through the same
//! [`Replay`] as `canaryd backtest` (warm-up, decision, fail-safe, end of window).
//!
//! ```yaml
//! rules: ../http-service.yaml          # relative to this file
//! tests:
//!   - name: five times the errors roll back at once
//!     series:
//!       error-rate:
//!         canary: "bad 5%x10 total 1000x10"
//!         baseline: "bad 1%x10 total 1000x10"
//!       latency:
//!         canary: "lognormal(median=0.1, sigma=0.5, n=1000)x10"
//!         baseline: "lognormal(median=0.1, sigma=0.5, n=1000)x10"
//!       cpu: {canary: "0.5x10", baseline: "0.5x10"}
//!     expect:
//!       decision: rollback
//!       decided_at: 1
//!       verdicts: "rollback"
//!       metrics: {error-rate: "fail"}
//!       reasons: ["error-rate: canary 5.00% vs baseline 1.00% bad"]
//! ```
//!
//! Per test, optional: `canary_share` (the router's canary share; default: from the counts),
//! `failure_limit` (default 5), `warm_up`: `auto` (default: the baseline of interval 1 warms
//! the judge up, as the daemon uses the interval before the canary), `none`, or per metric a
//! series of one interval. A metric's `canary`/`baseline` may also be a map of instances to
//! series (pooled by sum, gauges by mean), to exercise the instance gate.

use crate::backtest::{self, Conclusion, EndedBy, IntervalReport, Replay};
use crate::judge::{
    Arm, ArmSample, Decision, IntervalData, MetricStatus, Observation, Outcome, Sample,
};
use crate::rules::series::{self, Buckets, Point};
use crate::rules::yaml::{self, Seg};
use crate::rules::{MetricKind, MetricRule, RuleSet, analyse};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rules: String,
    #[serde(default)]
    tests: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default)]
    canary_share: Option<f64>,
    #[serde(default)]
    failure_limit: Option<u32>,
    #[serde(default)]
    warm_up: WarmUp,
    series: BTreeMap<String, MetricSeries>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum WarmUp {
    #[default]
    #[serde(skip)]
    Auto,
    Word(String),
    Series(BTreeMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricSeries {
    /// Bucket edges for `lognormal(...)` (histograms).
    #[serde(default)]
    buckets: Option<String>,
    canary: ArmSeries,
    baseline: ArmSeries,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum ArmSeries {
    Pooled(String),
    Instances(BTreeMap<String, String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: Option<Decision>,
    #[serde(default, deserialize_with = "present")]
    decided_at: Option<Option<u32>>,
    ended_by: Option<EndedBy>,
    verdicts: Option<String>,
    #[serde(default)]
    metrics: BTreeMap<String, String>,
    #[serde(default)]
    reasons: Vec<String>,
}

/// Tells `decided_at: null` (expected: no deciding interval) from an absent field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// One test's outcome.
#[derive(Clone, Debug)]
pub struct TestResult {
    /// The test's name.
    pub name: String,
    /// What differed from the expectation (empty when it passed).
    pub failures: Vec<String>,
    /// The replayed intervals.
    pub intervals: Vec<IntervalReport>,
    /// The replay's decision.
    pub conclusion: Option<Conclusion>,
}

impl TestResult {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One test file's outcome.
#[derive(Clone, Debug)]
pub struct FileResult {
    /// The file.
    pub file: String,
    /// The rule set tested.
    pub rules: Option<String>,
    /// A problem with the file itself (it cannot be read, the rules do not load).
    pub errors: Vec<String>,
    /// The tests.
    pub tests: Vec<TestResult>,
}

impl FileResult {
    /// Whether every test passed and the file was usable.
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.tests.iter().all(TestResult::passed)
    }
}

/// Runs one test file.
pub fn run_file(path: &Path) -> FileResult {
    let shown = path.display().to_string();
    let mut result = FileResult {
        file: shown.clone(),
        rules: None,
        errors: Vec::new(),
        tests: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            result.errors.push(format!("{shown}: cannot read: {e}"));
            return result;
        }
    };
    let positions = yaml::index(&text).unwrap_or_default();
    let at = |p: &[Seg]| {
        let m = positions.value(p);
        format!("{shown}:{}:{}", m.line, m.column)
    };
    let file: TestFile = match serde_yaml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            let place = e.location().map_or_else(
                || format!("{shown}:1:1"),
                |l| format!("{shown}:{}:{}", l.line(), l.column()),
            );
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            result.errors.push(format!("{place}: {msg}"));
            return result;
        }
    };
    let rules_path = resolve(path, &file.rules);
    let rules = match std::fs::read_to_string(&rules_path) {
        Ok(content) => analyse(&rules_path.display().to_string(), &content).into_result(),
        Err(e) => {
            result.errors.push(format!(
                "{}: rules {}: cannot read: {e}",
                at(&[Seg::Key("rules".into())]),
                rules_path.display()
            ));
            return result;
        }
    };
    let rules = match rules {
        Ok(r) => r,
        Err(errors) => {
            result.errors.extend(errors.iter().map(|e| e.to_string()));
            return result;
        }
    };
    result.rules = Some(rules.name.clone());
    for (i, case) in file.tests.into_iter().enumerate() {
        let prefix = vec![Seg::Key("tests".into()), Seg::Index(i)];
        result.tests.push(run_case(&rules, case, &|p: &[Seg]| {
            let mut full = prefix.clone();
            full.extend_from_slice(p);
            at(&full)
        }));
    }
    if result.tests.is_empty() {
        result.errors.push(format!("{shown}: no tests"));
    }
    result
}

fn resolve(test_file: &Path, rules: &str) -> PathBuf {
    let p = Path::new(rules);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        test_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// One arm's series of one metric, per interval.
type ArmPoints = Vec<Point<ArmSample>>;

type ArmsOf = (String, ArmPoints, ArmPoints);

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn run_case(rules: &RuleSet, case: TestCase, at: &dyn Fn(&[Seg]) -> String) -> TestResult {
    let mut result = TestResult {
        name: case.name.clone(),
        failures: Vec::new(),
        intervals: Vec::new(),
        conclusion: None,
    };
    let per_metric = case_series(rules, &case, at, &mut result.failures);
    let n = interval_count(&per_metric, at, &mut result.failures);
    if !result.failures.is_empty() {
        return result;
    }
    let data: Vec<IntervalData> = (0..n)
        .map(|i| IntervalData {
            index: i as u32 + 1,
            canary_share: case.canary_share,
            observations: per_metric
                .iter()
                .map(|(name, c, b)| Observation {
                    metric: name.clone(),
                    outcome: outcome(&c[i], &b[i]),
                })
                .collect(),
        })
        .collect();
    let failure_limit = case
        .failure_limit
        .unwrap_or(backtest::DEFAULT_FAILURE_LIMIT);
    let mut replay = Replay::new(rules, failure_limit, false);
    if !warm_up(&mut replay, rules, &case, &data, at, &mut result.failures) {
        return result;
    }
    for d in &data {
        if !replay.wants_more() {
            break;
        }
        replay.step(d, None);
    }
    let (intervals, conclusion) = replay.finish();
    compare(&case.expect, &intervals, &conclusion, &mut result.failures);
    result.intervals = intervals;
    result.conclusion = Some(conclusion);
    result
}

/// Each metric's canary and baseline points; every metric needs both, and no series may name
/// a metric the rule set does not have.
fn case_series(
    rules: &RuleSet,
    case: &TestCase,
    at: &dyn Fn(&[Seg]) -> String,
    failures: &mut Vec<String>,
) -> Vec<ArmsOf> {
    let mut per_metric = Vec::new();
    for name in case.series.keys() {
        if !rules.metrics.iter().any(|m| &m.name == name) {
            failures.push(format!(
                "{}: series for {name:?}, which the rule set does not have",
                at(&[key("series"), key(name)])
            ));
        }
    }
    for rule in &rules.metrics {
        let Some(s) = case.series.get(&rule.name) else {
            failures.push(format!(
                "{}: no series for metric {:?} (every metric needs canary and baseline series)",
                at(&[key("series")]),
                rule.name
            ));
            continue;
        };
        let arm = |which: &str, arm: &ArmSeries| {
            parse_arm(rule, s.buckets.as_deref(), arm).map_err(|e| {
                format!(
                    "{}: metric {:?} {which}: {e}",
                    at(&[key("series"), key(&rule.name), key(which)]),
                    rule.name
                )
            })
        };
        match (arm("canary", &s.canary), arm("baseline", &s.baseline)) {
            (Ok(c), Ok(b)) => per_metric.push((rule.name.clone(), c, b)),
            (c, b) => {
                failures.extend(c.err());
                failures.extend(b.err());
            }
        }
    }
    per_metric
}

/// The number of intervals; every series must have it.
fn interval_count(
    per_metric: &[ArmsOf],
    at: &dyn Fn(&[Seg]) -> String,
    failures: &mut Vec<String>,
) -> usize {
    let lengths: Vec<(String, usize)> = per_metric
        .iter()
        .flat_map(|(n, c, b)| {
            [
                (format!("{n}.canary"), c.len()),
                (format!("{n}.baseline"), b.len()),
            ]
        })
        .collect();
    let n = lengths.iter().map(|(_, l)| *l).max().unwrap_or(0);
    if lengths.iter().any(|(_, l)| *l != n) {
        let shown: Vec<String> = lengths.iter().map(|(k, l)| format!("{k}: {l}")).collect();
        failures.push(format!(
            "{}: every series must have the same number of intervals ({})",
            at(&[key("series")]),
            shown.join(", ")
        ));
    }
    n
}

/// Warms the judge up as the case says; `false` when the case's `warm_up` is unusable.
fn warm_up(
    replay: &mut Replay<'_>,
    rules: &RuleSet,
    case: &TestCase,
    data: &[IntervalData],
    at: &dyn Fn(&[Seg]) -> String,
    failures: &mut Vec<String>,
) -> bool {
    let auto = |replay: &mut Replay<'_>| {
        if let Some(first) = data.first() {
            replay.warm_up(&IntervalData {
                index: 0,
                ..first.clone()
            });
        }
    };
    match &case.warm_up {
        WarmUp::Auto => auto(replay),
        WarmUp::Word(w) if w == "none" => {}
        WarmUp::Word(w) if w == "auto" => auto(replay),
        WarmUp::Word(w) => {
            failures.push(format!(
                "{}: warm_up is `auto`, `none` or a map of metric to series, got {w:?}",
                at(&[key("warm_up")])
            ));
            return false;
        }
        WarmUp::Series(map) => {
            let mut observations = Vec::new();
            for (name, text) in map {
                let Some(rule) = rules.metrics.iter().find(|m| &m.name == name) else {
                    failures.push(format!(
                        "{}: warm_up for unknown metric {name:?}",
                        at(&[key("warm_up"), key(name)])
                    ));
                    continue;
                };
                let layout = case.series.get(name).and_then(|s| s.buckets.clone());
                match parse_arm(rule, layout.as_deref(), &ArmSeries::Pooled(text.clone())) {
                    Ok(points) if points.len() == 1 => observations.push(Observation {
                        metric: name.clone(),
                        outcome: outcome(&points[0], &points[0]),
                    }),
                    Ok(_) => failures.push(format!(
                        "{}: a warm-up series is one interval",
                        at(&[key("warm_up"), key(name)])
                    )),
                    Err(e) => failures.push(format!("{}: {e}", at(&[key("warm_up"), key(name)]))),
                }
            }
            replay.warm_up(&IntervalData {
                index: 0,
                canary_share: case.canary_share,
                observations,
            });
        }
    }
    true
}

fn outcome(canary: &Point<ArmSample>, baseline: &Point<ArmSample>) -> Outcome {
    match (canary, baseline) {
        (Point::Error, _) | (_, Point::Error) => Outcome::QueryError {
            message: "query error (fixture)".into(),
        },
        (Point::Timeout, _) | (_, Point::Timeout) => Outcome::Timeout,
        (Point::NoData, _) => Outcome::NoData { arm: Arm::Canary },
        (_, Point::NoData) => Outcome::NoData { arm: Arm::Baseline },
        (Point::Value(c), Point::Value(b)) => Outcome::Data {
            canary: c.clone(),
            baseline: b.clone(),
        },
    }
}

/// Parses one arm (pooled, or per instance and then pooled).
fn parse_arm(
    rule: &MetricRule,
    layout: Option<&str>,
    arm: &ArmSeries,
) -> Result<ArmPoints, String> {
    let edges = series::layout(layout.unwrap_or(series::DEFAULT_LAYOUT))?;
    let one = |text: &str| -> Result<Vec<Point<Sample>>, String> {
        Ok(match &rule.kind {
            MetricKind::Ratio { .. } => series::counts(text)?
                .into_iter()
                .map(|p| point(p, |(bad, total)| Sample::Counts { bad, total }))
                .collect(),
            MetricKind::Histogram { .. } => series::histogram(text, &edges)?
                .into_iter()
                .map(|p| point(p, |buckets| Sample::Buckets { buckets }))
                .collect(),
            MetricKind::Gauge { .. } => series::gauge(text)?
                .into_iter()
                .map(|p| point(p, |value| Sample::Gauge { value }))
                .collect(),
        })
    };
    match arm {
        ArmSeries::Pooled(text) => Ok(one(text)?
            .into_iter()
            .map(|p| point(p, ArmSample::pooled))
            .collect()),
        ArmSeries::Instances(map) => {
            let parsed: Vec<(String, Vec<Point<Sample>>)> = map
                .iter()
                .map(|(inst, text)| {
                    one(text)
                        .map(|p| (inst.clone(), p))
                        .map_err(|e| format!("instance {inst:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            let n = parsed.first().map_or(0, |(_, p)| p.len());
            if parsed.iter().any(|(_, p)| p.len() != n) {
                return Err("every instance needs the same number of intervals".into());
            }
            Ok((0..n)
                .map(|i| {
                    let mut instances = Vec::new();
                    for (inst, points) in &parsed {
                        match &points[i] {
                            Point::Value(s) => instances.push((inst.clone(), s.clone())),
                            Point::NoData => {}
                            Point::Error => return Point::Error,
                            Point::Timeout => return Point::Timeout,
                        }
                    }
                    match pool(&instances) {
                        Some(pooled) => Point::Value(ArmSample { pooled, instances }),
                        None => Point::NoData,
                    }
                })
                .collect())
        }
    }
}

fn point<T, U>(p: Point<T>, f: impl FnOnce(T) -> U) -> Point<U> {
    match p {
        Point::Value(v) => Point::Value(f(v)),
        Point::NoData => Point::NoData,
        Point::Error => Point::Error,
        Point::Timeout => Point::Timeout,
    }
}

/// Pools instances as the metric source does: counts and buckets add up, gauges average.
fn pool(instances: &[(String, Sample)]) -> Option<Sample> {
    let first = &instances.first()?.1;
    Some(match first {
        Sample::Counts { .. } => {
            let (mut bad, mut total) = (0.0, 0.0);
            for (_, s) in instances {
                if let Sample::Counts { bad: b, total: t } = s {
                    bad += b;
                    total += t;
                }
            }
            Sample::Counts { bad, total }
        }
        Sample::Gauge { .. } => {
            let values: Vec<f64> = instances
                .iter()
                .filter_map(|(_, s)| match s {
                    Sample::Gauge { value } => Some(*value),
                    _ => None,
                })
                .collect();
            Sample::Gauge {
                value: values.iter().sum::<f64>() / values.len() as f64,
            }
        }
        Sample::Buckets { .. } => {
            let mut sum: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
            for (_, s) in instances {
                if let Sample::Buckets { buckets } = s {
                    for (le, c) in buckets {
                        let k = if le.is_infinite() {
                            u64::MAX
                        } else {
                            le.to_bits()
                        };
                        sum.entry(k).or_insert((*le, 0.0)).1 += c;
                    }
                }
            }
            let mut buckets: Buckets = sum.into_values().collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            Sample::Buckets { buckets }
        }
    })
}

/// Expands `continuex3 rollback` into words.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        let (word, k) = match token.rsplit_once('x') {
            Some((w, k)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()) => {
                let k: usize = k.parse().map_err(|_| format!("bad repetition {token:?}"))?;
                (w, k.min(100_000))
            }
            _ => (token, 1),
        };
        out.extend(std::iter::repeat_n(word.replace('_', "-"), k));
    }
    Ok(out)
}

fn status_word(s: MetricStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', "-")))
        .unwrap_or_default()
}

fn compare(
    expect: &Expect,
    intervals: &[IntervalReport],
    c: &Conclusion,
    failures: &mut Vec<String>,
) {
    let ended = match c.ended_by {
        EndedBy::Verdict => format!("at interval {}", c.decided_at_interval.unwrap_or(0)),
        EndedBy::FailSafe => format!(
            "by the fail-safe at interval {}",
            c.decided_at_interval.unwrap_or(0)
        ),
        EndedBy::WindowEnd => format!("at the end of the window ({} intervals)", intervals.len()),
        EndedBy::NoIntervals => "with no intervals".into(),
    };
    if let Some(d) = expect.decision
        && d != c.decision
    {
        failures.push(format!(
            "decision: expected {d}, got {} {ended}",
            c.decision
        ));
    }
    if let Some(at) = expect.decided_at
        && at != c.decided_at_interval
    {
        let show =
            |v: Option<u32>| v.map_or("none (window end)".to_string(), |v| format!("interval {v}"));
        failures.push(format!(
            "decided at: expected {}, got {}",
            show(at),
            show(c.decided_at_interval)
        ));
    }
    if let Some(e) = expect.ended_by
        && e != c.ended_by
    {
        failures.push(format!("ended by: expected {e:?}, got {:?}", c.ended_by));
    }
    let got_verdicts: Vec<String> = intervals
        .iter()
        .map(|i| i.verdict.decision.to_string())
        .collect();
    if let Some(v) = &expect.verdicts {
        match words(v) {
            Ok(want) => differ("verdicts", &want, &got_verdicts, failures),
            Err(e) => failures.push(format!("verdicts: {e}")),
        }
    }
    for (metric, text) in &expect.metrics {
        let got: Vec<String> = intervals
            .iter()
            .map(|i| {
                i.verdict
                    .metrics
                    .iter()
                    .find(|m| &m.name == metric)
                    .map_or("absent".into(), |m| status_word(m.status))
            })
            .collect();
        match words(text) {
            Ok(want) => differ(&format!("metric {metric}"), &want, &got, failures),
            Err(e) => failures.push(format!("metric {metric}: {e}")),
        }
    }
    for r in &expect.reasons {
        if !c.reasons.iter().any(|got| got.contains(r.as_str())) {
            failures.push(format!(
                "reasons: none contains {r:?}; got:\n{}",
                c.reasons
                    .iter()
                    .map(|r| format!("            {r}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
}

fn differ(what: &str, want: &[String], got: &[String], failures: &mut Vec<String>) {
    if want.len() > got.len() {
        failures.push(format!(
            "{what}: expected {} interval(s), the replay judged {} (it stops at the decision): expected `{}`, got `{}`",
            want.len(),
            got.len(),
            want.join(" "),
            got.join(" ")
        ));
        return;
    }
    let mismatches: Vec<String> = want
        .iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (w, g))| *w != "*" && w != g)
        .map(|(i, (w, g))| format!("interval {}: expected {w}, got {g}", i + 1))
        .collect();
    if !mismatches.is_empty() {
        failures.push(format!(
            "{what}: {}{} (expected `{}`, got `{}`)",
            mismatches
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            if mismatches.len() > 5 { "; ..." } else { "" },
            want.join(" "),
            got[..want.len()].join(" ")
        ));
    }
}

/// Runs test files; directories contribute their `*.test.yaml` files.
pub fn run_paths(paths: &[PathBuf]) -> Vec<FileResult> {
    find_tests(paths).iter().map(|f| run_file(f)).collect()
}

/// The test files named, and those found below the directories named (at any depth: `rules/`
/// finds `rules/tests/*.test.yaml`), each directory's in name order.
pub fn find_tests(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_tests(p, &mut files);
        } else {
            files.push(p.clone());
        }
    }
    files
}

fn collect_tests(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect_tests(&e, files);
        } else if e
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
        {
            files.push(e);
        }
    }
}

/// The report of test files as JSON.
pub fn report_json(results: &[FileResult]) -> serde_json::Value {
    let files: Vec<serde_json::Value> = results
        .iter()
        .map(|f| {
            let tests: Vec<serde_json::Value> = f
                .tests
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "name": t.name,
                        "passed": t.passed(),
                        "failures": t.failures,
                        "decision": t.conclusion.as_ref().map(|c| c.decision),
                        "decided_at_interval": t.conclusion.as_ref().and_then(|c| c.decided_at_interval),
                        "ended_by": t.conclusion.as_ref().map(|c| c.ended_by),
                        "intervals": t.intervals.iter().map(backtest::interval_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::json!({
                "file": f.file,
                "rules": f.rules,
                "passed": f.passed(),
                "errors": f.errors,
                "tests": tests,
            })
        })
        .collect();
    serde_json::json!({
        "passed": results.iter().all(FileResult::passed),
        "files": files,
    })
}

/// The human-readable report of test files.
pub fn report_text(results: &[FileResult]) -> String {
    let mut out = String::new();
    let (mut total, mut failed) = (0, 0);
    for f in results {
        out.push_str(&format!(
            "{}{}\n",
            f.file,
            f.rules
                .as_ref()
                .map(|r| format!(" (rules {r})"))
                .unwrap_or_default()
        ));
        for e in &f.errors {
            out.push_str(&format!("  error {e}\n"));
            failed += 1;
        }
        for t in &f.tests {
            total += 1;
            let summary = t
                .conclusion
                .as_ref()
                .map(|c| match c.decided_at_interval {
                    Some(i) => format!("{} at interval {i}", c.decision),
                    None => format!("{} at the end of the window", c.decision),
                })
                .unwrap_or_default();
            if t.passed() {
                out.push_str(&format!("  ok    {} ({summary})\n", t.name));
            } else {
                failed += 1;
                out.push_str(&format!("  FAIL  {}\n", t.name));
                for m in &t.failures {
                    out.push_str(&format!("          {m}\n"));
                }
                if !t.intervals.is_empty() {
                    out.push_str("        replay:\n");
                    for line in backtest::table(&t.intervals).lines() {
                        out.push_str(&format!("          {line}\n"));
                    }
                    if let Some(c) = &t.conclusion {
                        for line in backtest::conclusion_text(c, &t.intervals).lines() {
                            out.push_str(&format!("          {line}\n"));
                        }
                    }
                }
            }
        }
    }
    out.push_str(&format!("{total} test(s), {failed} failed\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "name: t\nmetrics:\n  - name: errors\n    kind: ratio\n    bad: 'sum(increase(r{ {{selector}}, code=\"500\" }[{{window}}]))'\n    total: 'sum(increase(r{ {{selector}} }[{{window}}]))'\n    max_increase: 50%\n    critical: true\n  - name: latency\n    kind: histogram\n    buckets: 'sum by (le) (increase(h_bucket{ {{selector}} }[{{window}}]))'\n    max_increase: 50%\n";

    fn run(tests: &str) -> FileResult {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), RULES).unwrap();
        let path = dir.path().join("r.test.yaml");
        std::fs::write(&path, format!("rules: r.yaml\ntests:\n{tests}")).unwrap();
        run_file(&path)
    }

    #[test]
    fn a_passing_and_a_failing_test() {
        let r = run(r#"
  - name: errors x5 roll back
    series:
      errors: {canary: "bad 5%x5 total 2000x5", baseline: "bad 1%x5 total 2000x5"}
      latency:
        canary: "lognormal(median=0.1, sigma=0.5, n=2000)x5"
        baseline: "lognormal(median=0.1, sigma=0.5, n=2000)x5"
    expect:
      decision: rollback
      decided_at: 1
      verdicts: rollback
      metrics: {errors: fail}
      reasons: ["errors: canary 5.00% vs baseline 1.00% bad"]
  - name: wrong on purpose
    series:
      errors: {canary: "bad 1%x3 total 2000x3", baseline: "bad 1%x3 total 2000x3"}
      latency:
        canary: "lognormal(median=0.1, sigma=0.5, n=2000)x3"
        baseline: "lognormal(median=0.1, sigma=0.5, n=2000)x3"
    expect:
      decision: rollback
      verdicts: "rollback x2"
"#);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(
            r.tests[0].passed(),
            "{}",
            report_text(std::slice::from_ref(&r))
        );
        let t = &r.tests[1];
        assert!(!t.passed());
        assert!(
            t.failures[0].starts_with("decision: expected rollback, got promote"),
            "{:?}",
            t.failures
        );
        assert!(
            t.failures[1].contains("interval 1: expected rollback, got continue"),
            "{:?}",
            t.failures
        );
        assert!(report_text(std::slice::from_ref(&r)).contains("FAIL  wrong on purpose"));
    }

    #[test]
    fn bad_series_are_placed() {
        let r = run(r#"
  - name: broken
    series:
      errors: {canary: "bad 1 total", baseline: "bad 1 total 2"}
      latency: {canary: "lognormal(1,1,1)", baseline: "lognormal(1,1,1)"}
"#);
        let f = &r.tests[0].failures;
        assert!(
            f[0].contains("r.test.yaml:6:24:") && f[0].contains("errors\" canary"),
            "{f:?}"
        );
    }
}
