//! The canary spec as data: what a release pipeline hands to canaryd (YAML for the CLI, JSON
//! for the API; same fields). Validation and strategy derivation live in `canary::spec`.

use super::hooks::Hooks;
use crate::target::Target;
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A canary as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The service being released.
    pub service: String,
    /// An environment profile from the daemon config (`dev`, `staging`, `production`, ...).
    #[serde(default = "default_environment")]
    pub environment: String,
    /// A router from the daemon config.
    pub router: String,
    /// The backend and servers to shift traffic between.
    pub target: Target,
    /// Label matchers common to both arms.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Label matchers of the baseline.
    #[serde(default)]
    pub baseline_labels: BTreeMap<String, String>,
    /// Label matchers of the canary.
    #[serde(default)]
    pub canary_labels: BTreeMap<String, String>,
    /// A rule set from `rules/`.
    pub rules: String,
    /// Steps, interval, limits (missing values come from the environment profile).
    #[serde(default)]
    pub strategy: Strategy,
    /// Hooks run around the rollout (added after the environment profile's own).
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// A TLS endpoint whose certificate preflight checks (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_check: Option<TlsCheck>,
    /// Free-form facts about the release (commit, pipeline URL, author), shown in reports.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Notifiers (by name, from the daemon config) that hear about this canary in addition to
    /// what the routes choose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

/// A certificate to check before the rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCheck {
    /// `host:port` to connect to.
    pub endpoint: String,
    /// The name to present (SNI); defaults to the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The certificate must stay valid at least this many days.
    #[serde(default = "default_min_days")]
    pub min_days: u32,
}

fn default_min_days() -> u32 {
    14
}

/// One traffic step: a weight, optionally gated by a person's approval before it is applied.
/// Written as a number (`25`) or an object (`{weight: 50, approval: true}`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Canary traffic in percent.
    pub weight: f64,
    /// A person must `approve` before this weight is applied.
    pub approval: bool,
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.approval {
            #[derive(Serialize)]
            struct Gated {
                weight: f64,
                approval: bool,
            }
            Gated {
                weight: self.weight,
                approval: true,
            }
            .serialize(s)
        } else {
            s.serialize_f64(self.weight)
        }
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Gated {
            weight: f64,
            #[serde(default)]
            approval: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Weight(f64),
            Gated(Gated),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a step is a percentage (25) or {weight: 50, approval: true}")
        })? {
            Raw::Weight(weight) => Ok(Step {
                weight,
                approval: false,
            }),
            Raw::Gated(g) => Ok(Step {
                weight: g.weight,
                approval: g.approval,
            }),
        }
    }
}

impl Step {
    /// An ungated step.
    pub fn at(weight: f64) -> Self {
        Step {
            weight,
            approval: false,
        }
    }
}

fn default_environment() -> String {
    "production".into()
}

/// How traffic moves. Missing values come from the environment profile at submit time, and the
/// stored spec has them filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    /// How traffic moves: `canary` (steps), `blue_green` or `rolling`.
    #[serde(default, skip_serializing_if = "StrategyKind::is_canary")]
    pub kind: StrategyKind,
    /// blue_green: the share the new version is analysed on before the switch (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_weight: Option<f64>,
    /// rolling: new servers enabled per batch (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Canary traffic steps, ascending, ending at 100 (the promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Analysis interval: each step lasts at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Longest analysis before promoting without full confidence (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<HumanDuration>,
    /// Shortest analysis before an early promotion: until then a canary that is already shown
    /// within every margin keeps being analysed, so a regression that starts late is still seen
    /// (default: half of `max_duration`, at most 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_duration: Option<HumanDuration>,
    /// Consecutive intervals without a usable analysis before the fail-safe acts (default: the
    /// daemon's `analysis.failure_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// Post-promotion watch: how long to keep judging the promoted version against the old
    /// version's metrics from before the release (`0s` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<HumanDuration>,
    /// How long a gated step waits for its approval (`0s`: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<HumanDuration>,
    /// What a timed-out approval does: `rollback` or `hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_approval_timeout: Option<ApprovalTimeout>,
    /// Roll back on a regression without asking (false: pause for a person instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
}

/// How traffic moves from the old version to the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Shift traffic step by step (`steps`).
    #[default]
    Canary,
    /// Analyse the new version on a small share, then switch all traffic at once; the old
    /// version stays ready (drained) through the bake for an instant rollback.
    BlueGreen,
    /// Replace old servers by new ones in batches; a failing batch alone is rolled back.
    Rolling,
}

impl StrategyKind {
    fn is_canary(&self) -> bool {
        *self == StrategyKind::Canary
    }
}

/// The default `max_duration`.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(30 * 60);
/// The longest default `min_duration`.
pub const MAX_DEFAULT_MIN_DURATION: Duration = Duration::from_secs(10 * 60);

/// The `min_duration` when neither the spec nor the profile sets one: half of `max_duration`,
/// at most [`MAX_DEFAULT_MIN_DURATION`].
pub fn default_min_duration(max_duration: Duration) -> Duration {
    (max_duration / 2).min(MAX_DEFAULT_MIN_DURATION)
}

/// The interval when neither the spec nor the profile sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl Strategy {
    /// The analysis time limit.
    pub fn max_duration(&self) -> Duration {
        self.max_duration.map_or(DEFAULT_MAX_DURATION, |d| d.0)
    }

    /// The shortest analysis before an early promotion.
    pub fn min_duration(&self) -> Duration {
        self.min_duration
            .map_or_else(|| default_min_duration(self.max_duration()), |d| d.0)
    }

    /// The analysis interval.
    pub fn interval(&self) -> Duration {
        self.interval.map_or(DEFAULT_INTERVAL, |d| d.0)
    }

    /// The step weights.
    pub fn weights(&self) -> Vec<f64> {
        self.steps.iter().map(|s| s.weight).collect()
    }
}

/// The bake a blue-green or rolling release gets when none is set: the old version has to stay
/// ready for a while after the switch, and a rolling release's last batch is judged only there.
pub const DEFAULT_STRATEGY_BAKE_INTERVALS: u32 = 5;

/// What happens when an approval is not given in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalTimeout {
    /// Return all traffic to the baseline; the canary ends `aborted`.
    #[default]
    Rollback,
    /// Keep waiting (and say so).
    Hold,
}
