//! A canary's persisted state and the plan it follows.

use super::hooks::HookStage;
use super::phase::{Ending, FailSafe, Phase};
use super::spec::ApprovalTimeout;
use crate::judge::{JudgeState, Verdict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The plan a canary follows (from its spec and the daemon's settings).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Canary percentages, the last one 100.
    pub steps: Vec<f64>,
    /// Per step: a person must approve before it is applied.
    pub approvals: Vec<bool>,
    /// How long an approval may take.
    pub approval_timeout: Option<Duration>,
    /// What a timed-out approval does.
    pub on_approval_timeout: ApprovalTimeout,
    /// Post-promotion watch (zero: none).
    pub bake: Duration,
    /// Roll back on a regression without asking.
    pub auto_rollback: bool,
    /// Stages that have hooks.
    pub hook_stages: Vec<HookStage>,
    /// Rolling releases: per step, the new servers it enabled and the old ones it disabled (a
    /// judge's rollback undoes only the failing step). Empty for other strategies.
    pub batches: Vec<(Vec<String>, Vec<String>)>,
    /// Analysis interval.
    pub interval: Duration,
    /// Longest analysis before promoting.
    pub max_duration: Duration,
    /// Shortest analysis before an early promotion.
    pub min_duration: Duration,
    /// Consecutive unusable intervals before the fail-safe.
    pub failure_limit: u32,
    /// What the fail-safe does.
    pub fail_safe: FailSafe,
}

impl Plan {
    /// The last step that is analysed (the one before the promotion).
    pub fn last_analysis_step(&self) -> usize {
        self.steps.len().saturating_sub(2)
    }

    /// The promotion step (the last one).
    pub fn last_step(&self) -> usize {
        self.steps.len().saturating_sub(1)
    }

    /// Whether a person must approve the step before it is applied.
    pub fn gated(&self, step: usize) -> bool {
        self.approvals.get(step).copied().unwrap_or(false)
    }

    /// Whether the plan has hooks at the stage.
    pub fn has_hooks(&self, stage: HookStage) -> bool {
        self.hook_stages.contains(&stage)
    }

    /// A plan with plain steps and no gates, hooks or bake (tests, simple callers).
    pub fn simple(steps: Vec<f64>, interval: Duration, max_duration: Duration) -> Plan {
        Plan {
            approvals: vec![false; steps.len()],
            steps,
            approval_timeout: None,
            on_approval_timeout: ApprovalTimeout::Rollback,
            bake: Duration::ZERO,
            auto_rollback: true,
            hook_stages: Vec::new(),
            batches: Vec::new(),
            interval,
            max_duration,
            min_duration: Duration::ZERO,
            failure_limit: 5,
            fail_safe: FailSafe::Rollback,
        }
    }
}

/// The key under which a stage's hooks are recorded as done.
pub fn hook_key(stage: HookStage, step: usize) -> String {
    match stage {
        HookStage::PreStep => format!("pre_step:{}", step + 1),
        other => other.to_string(),
    }
}

/// A canary's persisted state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    /// The phase.
    pub phase: Phase,
    /// Index of the current step in the plan.
    pub step: usize,
    /// The canary share canaryd wants (percent).
    pub intended_weight: f64,
    /// The canary share last confirmed by reading the router back (None: nothing applied yet,
    /// or a re-apply is wanted).
    pub applied_weight: Option<f64>,
    /// While rolling back: where it ends.
    pub ending: Option<Ending>,
    /// While paused: the phase to resume.
    pub paused_from: Option<Phase>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// When the current step's weight was confirmed.
    pub step_started_at: Option<DateTime<Utc>>,
    /// When analysis began (first step confirmed).
    pub analysis_started_at: Option<DateTime<Utc>>,
    /// When the next analysis is due (end of its window).
    pub next_analysis_at: Option<DateTime<Utc>>,
    /// Intervals analysed.
    pub intervals: u32,
    /// Consecutive intervals without a usable analysis.
    pub unusable_streak: u32,
    /// The judge's state.
    pub judge: JudgeState,
    /// The last verdict.
    pub last_verdict: Option<Verdict>,
    /// Why the canary ended (or is ending) the way it did.
    pub reasons: Vec<String>,
    /// When it reached a terminal phase.
    pub finished_at: Option<DateTime<Utc>>,
    /// While awaiting approval: the step waiting for it.
    #[serde(default)]
    pub awaiting_step: Option<usize>,
    /// When a pending approval times out.
    #[serde(default)]
    pub approval_deadline: Option<DateTime<Utc>>,
    /// Steps a person approved.
    #[serde(default)]
    pub approved: Vec<usize>,
    /// Hook stages already run (see [`hook_key`]).
    #[serde(default)]
    pub hooks_done: Vec<String>,
    /// When the post-promotion bake ends.
    #[serde(default)]
    pub bake_until: Option<DateTime<Utc>>,
    /// Bake intervals analysed.
    #[serde(default)]
    pub bake_intervals: u32,
    /// The bake's own judge (new version now vs the old version before the release).
    #[serde(default)]
    pub bake_judge: Option<JudgeState>,
    /// When it was paused (a pending approval's deadline moves by the paused time).
    #[serde(default)]
    pub paused_at: Option<DateTime<Utc>>,
    /// Consecutive failures to apply the intended weight (the router is down or refuses).
    #[serde(default)]
    pub apply_failures: u32,
}

impl CanaryState {
    /// A new canary's state.
    pub fn new(judge: JudgeState) -> Self {
        CanaryState {
            phase: Phase::Pending,
            step: 0,
            intended_weight: 0.0,
            applied_weight: None,
            ending: None,
            paused_from: None,
            pause_reason: None,
            step_started_at: None,
            analysis_started_at: None,
            next_analysis_at: None,
            intervals: 0,
            unusable_streak: 0,
            judge,
            last_verdict: None,
            reasons: Vec::new(),
            finished_at: None,
            awaiting_step: None,
            approval_deadline: None,
            approved: Vec::new(),
            hooks_done: Vec::new(),
            bake_until: None,
            bake_intervals: 0,
            bake_judge: None,
            paused_at: None,
            apply_failures: 0,
        }
    }

    /// Whether a stage's hooks still have to run (the plan has some and they have not run).
    pub fn hooks_pending(&self, plan: &Plan, stage: HookStage) -> bool {
        plan.has_hooks(stage) && !self.hooks_done.contains(&hook_key(stage, self.step))
    }

    /// Whether the router still has to be brought to `intended_weight`.
    pub fn needs_apply(&self) -> bool {
        matches!(
            self.phase,
            Phase::Progressing
                | Phase::AwaitingApproval
                | Phase::Baking
                | Phase::Promoting
                | Phase::RollingBack
        ) && self.applied_weight != Some(self.intended_weight)
    }
}
