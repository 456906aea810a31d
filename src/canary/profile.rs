//! Environment profiles (`[environments.NAME]`): how strict a release is in each environment.
//!
//! Built-in defaults follow the runbook's "Environment-Specific Guidelines": `dev` deploys fast
//! with no approvals and stays quiet; `staging` runs the full process; `production` needs an
//! approval before 100%, bakes for an hour after the promotion, rolls back automatically and
//! notifies. Every field can be set per environment in `canaryd.toml`; what is not set keeps the
//! built-in default of that name (or the staging defaults for other names).

use super::hooks::Hooks;
use super::spec::{CanarySpec, Step, StrategyKind};
use crate::lifecycle::spec::default_min_duration;
use crate::problem::Problem;
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Environment names with built-in defaults.
pub const BUILTIN: [&str; 5] = ["dev", "development", "staging", "production", "prod"];

pub use crate::lifecycle::spec::ApprovalTimeout;

/// `[environments.NAME]` as written: every field optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// Default steps for specs that give none.
    pub steps: Option<Vec<Step>>,
    /// Default interval.
    pub interval: Option<HumanDuration>,
    /// Default max_duration.
    pub max_duration: Option<HumanDuration>,
    /// Default min_duration (shortest analysis before an early promotion).
    pub min_duration: Option<HumanDuration>,
    /// Require a person's approval before the promotion to 100%.
    pub approval_before_promotion: Option<bool>,
    /// How long an approval may take (none: forever).
    pub approval_timeout: Option<HumanDuration>,
    /// What a timed-out approval does.
    pub on_approval_timeout: Option<ApprovalTimeout>,
    /// Default post-promotion bake (`0s` for none).
    pub bake: Option<HumanDuration>,
    /// Roll back on a regression without asking (false: pause for a person instead).
    pub auto_rollback: Option<bool>,
    /// Send notifications for this environment.
    pub notifications: Option<bool>,
    /// Hooks run for every canary of this environment (before the spec's own).
    pub hooks: Option<Hooks>,
    /// Preflight: least free disk space for the store, in MiB.
    pub min_free_disk_mb: Option<u64>,
}

impl EnvironmentConfig {
    /// Value checks: every problem, each naming its field within the environment's section
    /// (`steps`, `hooks.pre_rollout[0].name`).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(hooks) = &self.hooks {
            hooks.validate("hooks", &mut out);
        }
        if let Some(steps) = &self.steps
            && steps.last().is_none_or(|s| s.weight != 100.0)
        {
            out.push(Problem::new("steps", "the last step must be 100"));
        }
        out
    }
}

/// An environment's effective settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    /// The environment's name.
    pub name: String,
    /// Default steps.
    pub steps: Vec<Step>,
    /// Default interval.
    pub interval: Duration,
    /// Default analysis limit.
    pub max_duration: Duration,
    /// Default shortest analysis before an early promotion (none: half of `max_duration`,
    /// at most 10m).
    pub min_duration: Option<Duration>,
    /// Approval before 100%.
    pub approval_before_promotion: bool,
    /// Approval time limit.
    pub approval_timeout: Option<Duration>,
    /// What a timed-out approval does.
    pub on_approval_timeout: ApprovalTimeout,
    /// Default bake.
    pub bake: Duration,
    /// Automatic rollback on a regression.
    pub auto_rollback: bool,
    /// Notifications on.
    pub notifications: bool,
    /// Hooks of the environment.
    pub hooks: Hooks,
    /// Least free disk for the store, MiB.
    pub min_free_disk_mb: u64,
}

fn steps(weights: &[f64]) -> Vec<Step> {
    weights.iter().map(|w| Step::at(*w)).collect()
}

impl Profile {
    /// The built-in defaults for an environment name.
    pub fn builtin(name: &str) -> Profile {
        let staging = Profile {
            name: name.to_string(),
            steps: steps(&[10.0, 25.0, 50.0, 100.0]),
            interval: Duration::from_secs(60),
            max_duration: Duration::from_secs(30 * 60),
            min_duration: None,
            approval_before_promotion: false,
            approval_timeout: None,
            on_approval_timeout: ApprovalTimeout::Rollback,
            bake: Duration::ZERO,
            auto_rollback: true,
            notifications: true,
            hooks: Hooks::default(),
            min_free_disk_mb: 100,
        };
        match name {
            "dev" | "development" => Profile {
                steps: steps(&[50.0, 100.0]),
                interval: Duration::from_secs(30),
                max_duration: Duration::from_secs(5 * 60),
                notifications: false,
                ..staging
            },
            "production" | "prod" => Profile {
                steps: steps(&[5.0, 10.0, 25.0, 50.0, 100.0]),
                approval_before_promotion: true,
                approval_timeout: Some(Duration::from_secs(3600)),
                bake: Duration::from_secs(3600),
                ..staging
            },
            _ => staging,
        }
    }

    /// The built-in defaults overlaid with what the config sets.
    pub fn with(name: &str, config: Option<&EnvironmentConfig>) -> Profile {
        let mut p = Profile::builtin(name);
        let Some(c) = config else { return p };
        if let Some(v) = &c.steps {
            p.steps = v.clone();
        }
        if let Some(v) = c.interval {
            p.interval = v.0;
        }
        if let Some(v) = c.max_duration {
            p.max_duration = v.0;
        }
        if let Some(v) = c.min_duration {
            p.min_duration = Some(v.0);
        }
        if let Some(v) = c.approval_before_promotion {
            p.approval_before_promotion = v;
        }
        if let Some(v) = c.approval_timeout {
            p.approval_timeout = Some(v.0).filter(|d| !d.is_zero());
        }
        if let Some(v) = c.on_approval_timeout {
            p.on_approval_timeout = v;
        }
        if let Some(v) = c.bake {
            p.bake = v.0;
        }
        if let Some(v) = c.auto_rollback {
            p.auto_rollback = v;
        }
        if let Some(v) = c.notifications {
            p.notifications = v;
        }
        if let Some(v) = &c.hooks {
            p.hooks = v.clone();
        }
        if let Some(v) = c.min_free_disk_mb {
            p.min_free_disk_mb = v;
        }
        p
    }

    /// Fills what the spec leaves open from this profile. The stored spec is the result, so a
    /// running canary keeps the settings it started with.
    pub fn apply(&self, spec: &mut CanarySpec) {
        let s = &mut spec.strategy;
        if s.steps.is_empty() {
            s.steps = self.steps.clone();
        }
        if s.interval.is_none() {
            s.interval = Some(HumanDuration(self.interval));
        }
        if s.max_duration.is_none() {
            s.max_duration = Some(HumanDuration(self.max_duration));
        }
        if s.min_duration.is_none() {
            let max = s.max_duration.map_or(self.max_duration, |d| d.0);
            let min = self
                .min_duration
                .unwrap_or_else(|| default_min_duration(max));
            s.min_duration = Some(HumanDuration(min.min(max)));
        }
        if s.bake.is_none() {
            s.bake = Some(HumanDuration(self.bake));
        }
        if s.approval_timeout.is_none() {
            s.approval_timeout = Some(HumanDuration(self.approval_timeout.unwrap_or_default()));
        }
        s.on_approval_timeout
            .get_or_insert(self.on_approval_timeout);
        s.auto_rollback.get_or_insert(self.auto_rollback);
        if self.approval_before_promotion
            && let Some(last) = s.steps.last_mut()
            && last.weight >= 100.0
        {
            last.approval = true;
        }
        spec.hooks = self.hooks.then(&spec.hooks);
    }

    /// Applies the profile, then derives blue-green and rolling steps: what submit does.
    pub fn prepare(&self, spec: &mut CanarySpec) -> Vec<Problem> {
        let explicit_steps = !spec.strategy.steps.is_empty();
        let mut problems = Vec::new();
        if explicit_steps && spec.strategy.kind != StrategyKind::Canary {
            problems.push(Problem::new(
                "strategy.steps",
                "blue_green and rolling derive their steps (use preview_weight or batch)",
            ));
        }
        self.apply(spec);
        problems.extend(spec.derive_strategy());
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_follow_the_runbook() {
        let dev = Profile::builtin("dev");
        assert!(!dev.notifications && !dev.approval_before_promotion && dev.bake.is_zero());
        let prod = Profile::builtin("production");
        assert!(prod.approval_before_promotion && prod.auto_rollback && prod.notifications);
        assert_eq!(prod.bake, Duration::from_secs(3600));
        assert!(Profile::builtin("staging").bake.is_zero());
    }

    #[test]
    fn config_overrides_only_what_it_sets() {
        let c = EnvironmentConfig {
            bake: Some(HumanDuration(Duration::from_secs(600))),
            ..Default::default()
        };
        let p = Profile::with("production", Some(&c));
        assert_eq!(p.bake, Duration::from_secs(600));
        assert!(p.approval_before_promotion);
    }

    #[test]
    fn applying_fills_gaps_and_gates_the_promotion() {
        let mut spec = crate::canary::spec::from_yaml(
            "service: s\nenvironment: production\nrouter: r\ntarget: {backend: b, baseline: [a], canary: [c]}\ncanary_labels: {v: '2'}\nrules: x\nstrategy: {steps: [20, 100]}\n",
        )
        .unwrap();
        Profile::builtin("production").apply(&mut spec);
        assert_eq!(spec.strategy.interval(), Duration::from_secs(60));
        assert!(spec.strategy.steps[1].approval, "approval before 100%");
        assert!(!spec.strategy.steps[0].approval);
        assert_eq!(spec.strategy.bake.unwrap().0, Duration::from_secs(3600));
        assert_eq!(spec.validate(), vec![]);
    }
}
