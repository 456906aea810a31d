//! The canary spec: what a release pipeline hands to canaryd (YAML for the CLI, JSON for the
//! API; same fields), and its validation into field-level errors.

use crate::metrics::ArmSelectors;
use crate::problem::Problem;
use crate::rules::Selector;
use crate::time::HumanDuration;
use std::collections::BTreeMap;
use std::time::Duration;

pub use super::hooks::{Hook, HookStage, Hooks};
pub use crate::lifecycle::spec::{
    CanarySpec, DEFAULT_INTERVAL, DEFAULT_MAX_DURATION, DEFAULT_STRATEGY_BAKE_INTERVALS, Step,
    Strategy, StrategyKind, TlsCheck,
};
pub use crate::target::Target;

impl CanarySpec {
    /// Derives the steps of blue-green and rolling strategies (after the profile is applied).
    /// Returns problems with the strategy's fields.
    pub fn derive_strategy(&mut self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let kind = self.strategy.kind;
        if kind == StrategyKind::Canary {
            for (field, set) in [
                (
                    "strategy.preview_weight",
                    self.strategy.preview_weight.is_some(),
                ),
                ("strategy.batch", self.strategy.batch.is_some()),
            ] {
                if set {
                    errors.push(err(field, "only applies to blue_green or rolling"));
                }
            }
            return errors;
        }
        let steps = match kind {
            StrategyKind::BlueGreen => {
                let preview = self.strategy.preview_weight.unwrap_or(10.0);
                if !(preview > 0.0 && preview < 100.0) {
                    errors.push(err(
                        "strategy.preview_weight",
                        format!("must be in (0, 100), got {preview}"),
                    ));
                }
                if self.strategy.batch.is_some() {
                    errors.push(err("strategy.batch", "only applies to rolling"));
                }
                vec![Step::at(preview), Step::at(100.0)]
            }
            _ => {
                let (new, old) = (self.target.canary.len(), self.target.baseline.len());
                if new != old {
                    errors.push(err(
                        "target",
                        format!("a rolling release replaces servers one for one: {old} baseline and {new} canary servers"),
                    ));
                }
                let batch = self.strategy.batch.unwrap_or(1);
                if batch == 0 || batch > new.max(1) {
                    errors.push(err(
                        "strategy.batch",
                        format!("must be between 1 and the number of servers ({new})"),
                    ));
                }
                if self.strategy.preview_weight.is_some() {
                    errors.push(err("strategy.preview_weight", "only applies to blue_green"));
                }
                let n = new.max(1);
                let b = batch.clamp(1, n);
                (1..=n.div_ceil(b))
                    .map(|k| Step::at(100.0 * ((k * b).min(n)) as f64 / n as f64))
                    .collect()
            }
        };
        // A gate the profile put on the promotion stays on it.
        let gated = self
            .strategy
            .steps
            .last()
            .is_some_and(|s| s.approval && s.weight >= 100.0);
        self.strategy.steps = steps;
        if gated && let Some(last) = self.strategy.steps.last_mut() {
            last.approval = true;
        }
        if self.strategy.bake.is_none_or(|b| b.0.is_zero()) {
            self.strategy.bake = Some(HumanDuration(
                self.strategy.interval() * DEFAULT_STRATEGY_BAKE_INTERVALS,
            ));
        }
        errors
    }

    /// For a rolling release: the new servers to enable and the old ones to disable at a
    /// canary share (the first new servers replace the first old ones).
    pub fn rolling_servers(&self, percent: f64) -> BTreeMap<String, u32> {
        let n = self.target.canary.len();
        let enabled = ((percent / 100.0) * n as f64).round() as usize;
        let mut weights = BTreeMap::new();
        for (i, s) in self.target.canary.iter().enumerate() {
            weights.insert(s.clone(), if i < enabled { 100 } else { 0 });
        }
        for (i, s) in self.target.baseline.iter().enumerate() {
            weights.insert(s.clone(), if i < enabled { 0 } else { 100 });
        }
        weights
    }
}

/// A problem with one field of a spec (the crate's one validation shape).
pub type FieldError = Problem;

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    Problem::new(field, message)
}

/// Parses a spec from JSON, naming the field on failure.
pub fn from_json(body: &[u8]) -> Result<CanarySpec, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(body)".to_string()
        } else {
            path
        };
        err(field, e.into_inner().to_string())
    })
}

/// Parses a spec from YAML, naming the field on failure.
pub fn from_yaml(text: &str) -> Result<CanarySpec, FieldError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(spec)".to_string()
        } else {
            path
        };
        err(field, e.into_inner().to_string())
    })
}

fn check_name(errors: &mut Vec<FieldError>, field: &str, value: &str) {
    if value.is_empty() || value.len() > 128 {
        errors.push(err(field, "must be 1 to 128 characters"));
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errors.push(err(field, "must not contain spaces or control characters"));
    }
}

fn check_labels(errors: &mut Vec<FieldError>, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if !crate::rules::template::is_label_name(k) {
            errors.push(err(
                format!("{field}.{k}"),
                "invalid label name: must match [a-zA-Z_][a-zA-Z0-9_]*",
            ));
        }
        if v.len() > 1024 {
            errors.push(err(
                format!("{field}.{k}"),
                "label value longer than 1024 bytes",
            ));
        }
    }
}

impl CanarySpec {
    /// Checks everything that needs no daemon state. Every problem is reported.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_name(&mut errors, "service", &self.service);
        check_name(&mut errors, "environment", &self.environment);
        check_name(&mut errors, "router", &self.router);
        check_name(&mut errors, "rules", &self.rules);
        check_name(&mut errors, "target.backend", &self.target.backend);
        for (field, servers) in [
            ("target.baseline", &self.target.baseline),
            ("target.canary", &self.target.canary),
        ] {
            if servers.is_empty() {
                errors.push(err(field, "needs at least one server"));
            }
            for (i, s) in servers.iter().enumerate() {
                check_name(&mut errors, &format!("{field}[{i}]"), s);
            }
        }
        for s in &self.target.canary {
            if self.target.baseline.contains(s) {
                errors.push(err(
                    "target.canary",
                    format!("server {s:?} is in both baseline and canary"),
                ));
            }
        }
        check_labels(&mut errors, "labels", &self.labels);
        check_labels(&mut errors, "baseline_labels", &self.baseline_labels);
        check_labels(&mut errors, "canary_labels", &self.canary_labels);
        if self.arm_labels(true) == self.arm_labels(false) {
            errors.push(err(
                "canary_labels",
                "canary and baseline select the same series: canary_labels must differ from baseline_labels",
            ));
        }
        self.validate_strategy(&mut errors);
        errors
    }

    fn validate_strategy(&self, errors: &mut Vec<FieldError>) {
        let steps = self.strategy.weights();
        if steps.is_empty() {
            errors.push(err("strategy.steps", "needs at least one step"));
        }
        for (i, &w) in steps.iter().enumerate() {
            if !(w > 0.0 && w <= 100.0) {
                errors.push(err(
                    format!("strategy.steps[{i}]"),
                    format!("must be a percentage in (0, 100], got {w}"),
                ));
            } else if i > 0 && w <= steps[i - 1] {
                errors.push(err(
                    format!("strategy.steps[{i}]"),
                    format!("steps must increase ({w} after {})", steps[i - 1]),
                ));
            }
        }
        if steps.last().is_some_and(|&w| w != 100.0) {
            errors.push(err(
                format!("strategy.steps[{}]", steps.len() - 1),
                "the last step must be 100 (the promotion)",
            ));
        }
        if steps.len() == 1 {
            errors.push(err(
                "strategy.steps",
                "needs at least one step below 100 to analyse the canary on",
            ));
        }
        if self.strategy.interval.is_none() {
            errors.push(err(
                "strategy.interval",
                "required (the environment profile sets none)",
            ));
        }
        let interval = self.strategy.interval();
        if interval < Duration::from_secs(1) {
            errors.push(err("strategy.interval", "must be at least 1s"));
        }
        if interval.subsec_millis() != 0 {
            errors.push(err("strategy.interval", "must be whole seconds"));
        }
        if self.strategy.max_duration() < interval {
            errors.push(err(
                "strategy.max_duration",
                "must be at least one interval",
            ));
        }
        if self.strategy.min_duration() > self.strategy.max_duration() {
            errors.push(err(
                "strategy.min_duration",
                "must not be longer than max_duration",
            ));
        }
        if self.strategy.failure_limit == Some(0) {
            errors.push(err("strategy.failure_limit", "must be at least 1"));
        }
        self.hooks.validate("hooks", errors);
        if let Some(tls) = &self.tls_check
            && !tls.endpoint.contains(':')
        {
            errors.push(err("tls_check.endpoint", "must be host:port"));
        }
    }

    /// An arm's labels: the common ones plus the arm's own (the arm's win).
    pub fn arm_labels(&self, canary: bool) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        let own = if canary {
            &self.canary_labels
        } else {
            &self.baseline_labels
        };
        labels.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    }

    /// The validated selectors of both arms.
    pub fn selectors(&self) -> Result<ArmSelectors, FieldError> {
        let canary = self.arm_labels(true);
        let baseline = self.arm_labels(false);
        Ok(ArmSelectors {
            canary: Selector::new(&canary).map_err(|e| err("canary_labels", e.to_string()))?,
            baseline: Selector::new(&baseline)
                .map_err(|e| err("baseline_labels", e.to_string()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = r#"
service: checkout
environment: production          # a profile from the daemon config: dev | staging | production | ...
router: edge                     # a router defined in the daemon config
target: {backend: be_checkout, baseline: [checkout-v1], canary: [checkout-v2]}
labels: {service: checkout}      # label matchers common to both arms
baseline_labels: {version: v1}
canary_labels: {version: v2}
rules: http-service              # a rule set from rules/
strategy: {steps: [5, 10, 25, 50, 100], interval: 1m, max_duration: 30m}
metadata: {commit: 3f2a9c1, pipeline_url: "https://ci.example/run/42", author: release-bot}
"#;

    #[test]
    fn the_contract_example_is_valid() {
        let spec = from_yaml(EXAMPLE).unwrap();
        assert_eq!(spec.validate(), vec![]);
        assert_eq!(spec.strategy.interval(), Duration::from_secs(60));
        let sel = spec.selectors().unwrap();
        assert_eq!(sel.canary.render(), r#"service="checkout",version="v2""#);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = from_yaml(&EXAMPLE.replace("interval: 1m", "interval: soon")).unwrap_err();
        assert_eq!(e.field, "strategy.interval");
        let e =
            from_yaml(&EXAMPLE.replace("rules: http-service", "rulez: http-service")).unwrap_err();
        assert!(e.message.contains("unknown field `rulez`"), "{e}");
        let json = serde_json::json!({"service": "x", "router": 5});
        let e = from_json(json.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "router");
    }

    #[test]
    fn steps_may_be_gated() {
        let spec = from_yaml(&EXAMPLE.replace(
            "steps: [5, 10, 25, 50, 100]",
            "steps: [5, {weight: 50, approval: true}, 100]",
        ))
        .unwrap();
        assert_eq!(
            spec.strategy.steps[1],
            Step {
                weight: 50.0,
                approval: true
            }
        );
        assert!(!spec.strategy.steps[0].approval);
        let json = serde_json::to_value(&spec.strategy).unwrap();
        assert_eq!(
            json["steps"],
            serde_json::json!([5.0, {"weight": 50.0, "approval": true}, 100.0])
        );
        let e =
            from_yaml(&EXAMPLE.replace("steps: [5, 10", "steps: [5, {weigth: 10}")).unwrap_err();
        assert!(e.message.contains("{weight: 50, approval: true}"), "{e}");
    }

    #[test]
    fn blue_green_and_rolling_derive_their_steps() {
        let mut spec = from_yaml(&EXAMPLE.replace(
            "steps: [5, 10, 25, 50, 100]",
            "kind: blue_green, preview_weight: 5",
        ))
        .unwrap();
        assert_eq!(spec.derive_strategy(), vec![]);
        assert_eq!(spec.strategy.weights(), vec![5.0, 100.0]);
        assert!(
            spec.strategy.bake.unwrap().0 > Duration::ZERO,
            "blue-green always bakes"
        );
        let rolling = EXAMPLE
            .replace(
                "target: {backend: be_checkout, baseline: [checkout-v1], canary: [checkout-v2]}",
                "target: {backend: be, baseline: [a1, a2, a3, a4, a5], canary: [b1, b2, b3, b4, b5]}",
            )
            .replace("steps: [5, 10, 25, 50, 100]", "kind: rolling, batch: 2");
        let mut spec = from_yaml(&rolling).unwrap();
        assert_eq!(spec.derive_strategy(), vec![]);
        assert_eq!(spec.strategy.weights(), vec![40.0, 80.0, 100.0]);
        let servers = spec.rolling_servers(40.0);
        assert_eq!(servers["b1"], 100);
        assert_eq!(servers["b3"], 0);
        assert_eq!(servers["a1"], 0);
        assert_eq!(servers["a3"], 100);
        let mut uneven = from_yaml(&rolling.replace("b4, b5]", "b4]")).unwrap();
        let fields: Vec<String> = uneven
            .derive_strategy()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, vec!["target"]);
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut spec = from_yaml(EXAMPLE).unwrap();
        spec.strategy.steps = vec![Step::at(10.0), Step::at(5.0), Step::at(90.0)];
        spec.target.canary = vec!["checkout-v1".into()];
        spec.canary_labels = spec.baseline_labels.clone();
        let fields: Vec<String> = spec.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            vec![
                "target.canary",
                "canary_labels",
                "strategy.steps[1]",
                "strategy.steps[2]"
            ]
        );
    }
}
