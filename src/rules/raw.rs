//! The rule file as written: serde types (also the source of the JSON Schema) and a decoder
//! that finds every field error of a file, not just the first.
//!
//! A file is read into a `yaml_serde::Value`, then decoded with `serde_path_to_error`: when a
//! field fails (unknown field, wrong type, bad value), the error is recorded with the field's
//! path, that field is taken out, and the decoding runs again, until it succeeds or nothing
//! more can be removed. Metrics are decoded one by one, so one broken metric does not hide
//! another's errors. Required fields are `Option`s here and reported by validation, which
//! knows which fields already failed to decode.

use super::template::Template;
use super::yaml::Seg;
use super::{Direction, JudgeKind, MannWhitneyOptions, ThresholdOptions};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

/// A canaryd rule set (`rules/*.yaml`): which metrics a canary is judged on, how they are
/// queried, and the margins that count as a regression.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(title = "canaryd rule set")]
pub(crate) struct RawRuleSet {
    /// The name canary specs refer to (`rules: http-service`): 1-64 characters of a-z, A-Z,
    /// 0-9, '-', '_', '.'.
    #[schemars(required)]
    pub name: Option<String>,
    /// The judge that evaluates the metrics.
    #[serde(default)]
    pub judge: JudgeKind,
    /// Family-wise false-rollback budget shared by the metrics, in (0, 0.5). Default 0.05.
    pub alpha: Option<f64>,
    /// What this rule set is for.
    pub description: Option<String>,
    /// The metrics, judged canary against baseline.
    #[schemars(required)]
    pub metrics: Option<Vec<RawMetric>>,
    /// Options of the Kayenta-compatible judge (`judge: mann_whitney`).
    #[serde(default)]
    pub mann_whitney: MannWhitneyOptions,
    /// Options of the threshold judge (`judge: threshold`).
    #[serde(default)]
    pub threshold: ThresholdOptions,
}

/// One metric of a rule set.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetric {
    /// Unique within the rule set.
    #[schemars(required)]
    pub name: Option<String>,
    /// How the metric is queried and compared.
    #[schemars(required)]
    pub kind: Option<RawKind>,
    /// ratio: PromQL counting bad events in the window, e.g.
    /// `sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))`.
    pub bad: Option<Template>,
    /// ratio: PromQL counting all events in the window.
    pub total: Option<Template>,
    /// histogram: PromQL of `_bucket` counts in the window by `le`, e.g.
    /// `sum by (le) (increase(x_bucket{ {{selector}} }[{{window}}]))`.
    pub buckets: Option<Template>,
    /// gauge: PromQL of the gauge's value.
    pub query: Option<Template>,
    /// Which direction of change is a regression.
    #[serde(default)]
    pub direction: Direction,
    /// Relative margin: `50%` or `0.5`. With `direction: decrease`, the tolerated drop.
    pub max_increase: Option<Fraction>,
    /// Absolute lower bound on the canary's value (threshold judge): a number, or a
    /// percentage for a ratio (`99%` = 0.99).
    pub min: Option<Amount>,
    /// Absolute upper bound on the canary's value (threshold judge): a number, or a
    /// percentage for a ratio (`1%` = 0.01).
    pub max: Option<Amount>,
    /// histogram: a fixed slow-request threshold (`250ms`, `0.25`), e.g. an SLO value.
    pub threshold: Option<Seconds>,
    /// histogram: the baseline quantile that sets the slow-request threshold in a warm-up
    /// interval when `threshold` is not given. Default 0.95.
    pub threshold_quantile: Option<f64>,
    /// histogram: compare this quantile (canary q > (1+margin)·baseline q) instead of the
    /// share of slow requests.
    pub quantile: Option<f64>,
    /// histogram: the growth factor between neighbouring bucket edges (e.g. 1.1), a hint for
    /// the linter's resolution check. Prometheus' default buckets grow ×2-2.5.
    pub bucket_growth: Option<f64>,
    /// gauge: tolerated growth of canary/baseline per interval (leak detection), e.g. `2%`.
    pub slope: Option<Fraction>,
    /// A critical metric's failure fails the canary whatever the others say.
    #[serde(default)]
    pub critical: bool,
    /// Weight in the Kayenta-style score (>= 0, default 1).
    pub weight: Option<f64>,
    /// Kayenta-style group.
    pub group: Option<String>,
    /// Evaluated and reported everywhere, never acted on.
    #[serde(default)]
    pub dry_run: bool,
    /// What the metric measures, for people.
    #[allow(dead_code)]
    pub description: Option<String>,
}

/// A metric's kind.
#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawKind {
    /// A ratio of two counters (`bad` over `total`).
    Ratio,
    /// A latency distribution from `_bucket` counters.
    Histogram,
    /// A gauge compared as canary/baseline.
    Gauge,
}

impl RawKind {
    pub fn name(self) -> &'static str {
        match self {
            RawKind::Ratio => "ratio",
            RawKind::Histogram => "histogram",
            RawKind::Gauge => "gauge",
        }
    }
}

/// A relative amount: `50%` or `0.5`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Fraction;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage like \"50%\" or a fraction like 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Fraction, E> {
                Ok(Fraction(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Fraction, E> {
                Ok(Fraction(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Fraction, E> {
                Ok(Fraction(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Fraction, E> {
                super::parse_percent(v).map(Fraction).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Fraction {
    fn schema_name() -> Cow<'static, str> {
        "Fraction".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A percentage like \"50%\" or a fraction like 0.5.",
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": "^\\s*-?[0-9]+(\\.[0-9]+)?\\s*%\\s*$"}
            ]
        })
    }
}

/// An absolute value: a number, or a percentage (`1%` = 0.01) where a ratio is meant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Amount(pub f64);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Fraction::deserialize(d).map(|f| Amount(f.0))
    }
}

impl JsonSchema for Amount {
    fn schema_name() -> Cow<'static, str> {
        "Amount".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number, or a percentage like \"1%\" (= 0.01) where a ratio is meant.",
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": "^\\s*-?[0-9]+(\\.[0-9]+)?\\s*%\\s*$"}
            ]
        })
    }
}

/// Seconds: `0.5`, or a duration like `500ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Seconds(pub f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("seconds (0.25) or a duration like \"250ms\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                crate::time::parse_duration(v)
                    .map(|d| Seconds(d.as_secs_f64()))
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Seconds {
    fn schema_name() -> Cow<'static, str> {
        "Seconds".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Seconds (0.25) or a duration like \"250ms\", \"1s\".",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$"}
            ]
        })
    }
}

/// A field that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldProblem {
    /// The field's path, relative to what was decoded.
    pub path: Vec<Seg>,
    /// Point at the key (unknown fields) rather than the value.
    pub at_key: bool,
    /// What is wrong and what is expected.
    pub message: String,
}

/// The outcome of decoding one mapping.
pub(crate) struct Decoded<T> {
    /// The value with the failed fields left out, unless the whole thing failed.
    pub value: Option<T>,
    /// Every problem found.
    pub problems: Vec<FieldProblem>,
    /// Top-level fields that failed (so validation does not also call them missing).
    pub failed: BTreeSet<String>,
}

/// Most decoding rounds per mapping (each removes one field).
const MAX_ROUNDS: usize = 64;

/// Decodes `value` into `T`, collecting every field problem (see the module doc).
pub(crate) fn decode<T: DeserializeOwned>(mut value: Value) -> Decoded<T> {
    let mut problems = Vec::new();
    let mut failed = BTreeSet::new();
    for _ in 0..MAX_ROUNDS {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => {
                return Decoded {
                    value: Some(v),
                    problems,
                    failed,
                };
            }
            Err(e) => e,
        };
        let mut path: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let raw = err.inner().to_string();
        let problem = match unknown_field(&raw) {
            Some((field, expected)) => {
                if path.last() != Some(&Seg::Key(field.clone())) {
                    path.push(Seg::Key(field.clone()));
                }
                FieldProblem {
                    message: unknown_field_message(&field, &expected),
                    path,
                    at_key: true,
                }
            }
            None => FieldProblem {
                message: friendly(&raw),
                path,
                at_key: false,
            },
        };
        let removed = !problem.path.is_empty() && remove(&mut value, &problem.path);
        if let Some(Seg::Key(k)) = problem.path.first() {
            failed.insert(k.clone());
        }
        problems.push(problem);
        if !removed {
            break;
        }
    }
    Decoded {
        value: None,
        problems,
        failed,
    }
}

/// Takes the node at `path` out of `value`.
fn remove(value: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Seg::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// `unknown field `x`, expected one of `a`, `b`` → (x, [a, b]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

fn unknown_field_message(field: &str, expected: &[String]) -> String {
    match closest(field, expected) {
        Some(best) => format!("unknown field `{field}` (did you mean `{best}`?)"),
        None if expected.is_empty() => format!("unknown field `{field}`"),
        None => format!(
            "unknown field `{field}`; expected one of: {}",
            expected.join(", ")
        ),
    }
}

/// The candidate within a small edit distance of `word`, if any.
pub(crate) fn closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.min(c.len() / 3 + 1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// serde's messages, in the words of a rule file.
fn friendly(message: &str) -> String {
    let message = match message.strip_suffix("expected a map") {
        Some(head) => format!("{head}expected a mapping"),
        None => message.to_string(),
    };
    message
        .replace("expected f64", "expected a number")
        .replace("expected u32", "expected a whole number >= 0")
        .replace("expected struct MannWhitneyOptions", "expected a mapping")
        .replace("expected struct ThresholdOptions", "expected a mapping")
        .replace(
            "expected struct RawMetric",
            "expected a mapping (one metric)",
        )
        .replace(
            "expected struct RawRuleSet",
            "expected a mapping (a rule set)",
        )
        .replace("expected a borrowed string", "expected a string")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn every_field_problem_is_found() {
        let d = decode::<RawMetric>(value(
            "name: x\nkind: ratoi\ncritcal: true\nmax_increase: fifty\nweight: [1]\n",
        ));
        let shown: Vec<(String, bool, String)> = d
            .problems
            .iter()
            .map(|p| {
                (
                    super::super::yaml::path_text(&p.path),
                    p.at_key,
                    p.message.clone(),
                )
            })
            .collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(shown.iter().any(|(p, k, m)| p == "critcal"
            && *k
            && m == "unknown field `critcal` (did you mean `critical`?)"));
        assert!(
            shown.iter().any(|(p, _, m)| p == "kind"
                && m.starts_with("unknown variant `ratoi`, expected one of"))
        );
        assert!(shown.iter().any(
            |(p, _, m)| p == "max_increase" && m.contains("expected a percentage like \"50%\"")
        ));
        assert!(
            shown
                .iter()
                .any(|(p, _, m)| p == "weight" && m.contains("expected a number"))
        );
        let m = d.value.expect("decodes once the bad fields are out");
        assert_eq!(m.name.as_deref(), Some("x"));
        assert!(d.failed.contains("kind"));
    }

    #[test]
    fn nested_problems_have_full_paths() {
        let d = decode::<RawRuleSet>(value(
            "name: x\nmann_whitney: {confidance: 0.9, pass_threshold: high}\n",
        ));
        let paths: Vec<String> = d
            .problems
            .iter()
            .map(|p| super::super::yaml::path_text(&p.path))
            .collect();
        assert_eq!(
            paths,
            vec!["mann_whitney.confidance", "mann_whitney.pass_threshold"]
        );
    }

    #[test]
    fn a_non_mapping_fails_whole() {
        let d = decode::<RawMetric>(value("[1, 2]"));
        assert!(d.value.is_none());
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0].message.contains("expected a mapping"),
            "{:?}",
            d.problems
        );
    }
}
