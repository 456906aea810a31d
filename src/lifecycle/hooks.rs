//! Hooks as data: the stages of a rollout, the hooks a spec lists for each, and how one went.
//! Running them is `canary::hooks`.

use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where in the rollout a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStage {
    /// After preflight, before any traffic moves.
    PreRollout,
    /// Before each step's weight is applied.
    PreStep,
    /// After the canary has all traffic.
    PostPromotion,
    /// When a rollback begins, before traffic returns.
    Rollback,
    /// After traffic is back on the baseline.
    PostRollback,
}

impl fmt::Display for HookStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookStage::PreRollout => "pre_rollout",
            HookStage::PreStep => "pre_step",
            HookStage::PostPromotion => "post_promotion",
            HookStage::Rollback => "rollback",
            HookStage::PostRollback => "post_rollback",
        })
    }
}

/// Hooks by stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// After preflight, before any traffic moves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_rollout: Vec<Hook>,
    /// Before each step's weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_step: Vec<Hook>,
    /// After the promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_promotion: Vec<Hook>,
    /// When a rollback begins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<Hook>,
    /// After a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_rollback: Vec<Hook>,
}

/// One hook: exactly one of `http` or `command`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// A name for the events.
    pub name: String,
    /// Call a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHook>,
    /// Run a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandHook>,
    /// Time limit (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// An HTTP hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHook {
    /// Method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// URL.
    pub url: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The status that counts as success (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

fn default_method() -> String {
    "POST".into()
}

/// A command hook: runs `argv` directly (no shell) with the canary described in `CANARYD_*`
/// environment variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandHook {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl Hooks {
    /// No hooks at all.
    pub fn is_empty(&self) -> bool {
        HookStage::ALL.iter().all(|s| self.at(*s).is_empty())
    }

    /// The hooks of a stage.
    pub fn at(&self, stage: HookStage) -> &[Hook] {
        match stage {
            HookStage::PreRollout => &self.pre_rollout,
            HookStage::PreStep => &self.pre_step,
            HookStage::PostPromotion => &self.post_promotion,
            HookStage::Rollback => &self.rollback,
            HookStage::PostRollback => &self.post_rollback,
        }
    }

    /// These hooks followed by `more`'s, stage by stage.
    pub fn then(&self, more: &Hooks) -> Hooks {
        let join = |a: &[Hook], b: &[Hook]| a.iter().chain(b).cloned().collect();
        Hooks {
            pre_rollout: join(&self.pre_rollout, &more.pre_rollout),
            pre_step: join(&self.pre_step, &more.pre_step),
            post_promotion: join(&self.post_promotion, &more.post_promotion),
            rollback: join(&self.rollback, &more.rollback),
            post_rollback: join(&self.post_rollback, &more.post_rollback),
        }
    }

    /// Whether any hook runs a command.
    pub fn has_commands(&self) -> bool {
        HookStage::ALL
            .iter()
            .any(|s| self.at(*s).iter().any(|h| h.command.is_some()))
    }
}

impl HookStage {
    /// Every stage, in rollout order.
    pub const ALL: [HookStage; 5] = [
        HookStage::PreRollout,
        HookStage::PreStep,
        HookStage::PostPromotion,
        HookStage::Rollback,
        HookStage::PostRollback,
    ];

    /// Whether a failure at this stage stops what comes next.
    pub fn is_blocking(self) -> bool {
        matches!(self, HookStage::PreRollout | HookStage::PreStep)
    }
}

/// How a hook went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// The hook's name.
    pub name: String,
    /// Succeeded.
    pub ok: bool,
    /// Exit status or HTTP status, or why it did not run.
    pub detail: String,
    /// Output (stdout then stderr, or the response body), truncated.
    pub output: String,
    /// How long it took.
    pub millis: u64,
}
