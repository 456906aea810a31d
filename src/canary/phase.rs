//! The canary lifecycle as a pure state machine.
//!
//! [`next`] takes the persisted [`CanaryState`], one [`Input`] and the time, and returns the new
//! state with the events that explain it. It does no I/O: the controller persists the result
//! (intent first), then performs what the state asks for — applying `intended_weight` whenever
//! it differs from `applied_weight` — and feeds the outcome back as the next input.

use super::hooks::{HookOutcome, HookStage};
use super::preflight::PreflightReport;
use super::profile::ApprovalTimeout;
use crate::judge::{Decision, JudgeState, Verdict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Where a canary is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Submitted, not picked up yet.
    Pending,
    /// Checking the router and metrics before touching traffic.
    Preflight,
    /// At a step: weight set, waiting, analysing.
    Progressing,
    /// Held at a step until a person approves.
    AwaitingApproval,
    /// Held by a person or by canaryd (weights changed outside canaryd).
    Paused,
    /// Sending all traffic to the canary.
    Promoting,
    /// Watching the promoted version (post-promotion bake).
    Baking,
    /// Promoted. Terminal.
    Succeeded,
    /// Returning all traffic to the baseline.
    RollingBack,
    /// Rolled back by the judge. Terminal.
    RolledBack,
    /// Stopped by a person, traffic back on the baseline. Terminal.
    Aborted,
    /// Stopped by an infrastructure failure after the fail-safe ran. Terminal.
    Failed,
}

impl Phase {
    /// Whether the canary is finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed
        )
    }

    /// All phases, for metrics.
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Preflight,
        Phase::Progressing,
        Phase::AwaitingApproval,
        Phase::Paused,
        Phase::Promoting,
        Phase::Baking,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Aborted,
        Phase::Failed,
    ];

    /// The phase's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Preflight => "preflight",
            Phase::Progressing => "progressing",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Paused => "paused",
            Phase::Promoting => "promoting",
            Phase::Baking => "baking",
            Phase::Succeeded => "succeeded",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }

    /// Parses a stored phase name.
    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a rollback ends: the terminal phase reached once traffic is back on the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The judge found a regression.
    RolledBack,
    /// A person aborted.
    Aborted,
    /// The fail-safe ran after infrastructure failures.
    Failed,
}

impl Ending {
    fn phase(self) -> Phase {
        match self {
            Ending::RolledBack => Phase::RolledBack,
            Ending::Aborted => Phase::Aborted,
            Ending::Failed => Phase::Failed,
        }
    }
}

/// What to do after too many intervals without a usable analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailSafe {
    /// Return all traffic to the baseline and fail the canary (default).
    #[default]
    Rollback,
    /// Keep the current weights and pause for a person.
    Hold,
}

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
    /// Consecutive unusable intervals before the fail-safe.
    pub failure_limit: u32,
    /// What the fail-safe does.
    pub fail_safe: FailSafe,
}

impl Plan {
    fn last_analysis_step(&self) -> usize {
        self.steps.len().saturating_sub(2)
    }

    fn last_step(&self) -> usize {
        self.steps.len().saturating_sub(1)
    }

    fn gated(&self, step: usize) -> bool {
        self.approvals.get(step).copied().unwrap_or(false)
    }

    fn has_hooks(&self, stage: HookStage) -> bool {
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

/// A person's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Stop and return traffic to the baseline.
    Abort,
    /// Hold at the current weights.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Promote now.
    Promote,
    /// Approve a gated step.
    Approve,
}

impl CommandKind {
    /// Parses the command's name (`abort`, ...).
    pub fn parse(text: &str) -> Option<CommandKind> {
        Some(match text {
            "abort" => CommandKind::Abort,
            "pause" => CommandKind::Pause,
            "resume" => CommandKind::Resume,
            "promote" => CommandKind::Promote,
            "approve" => CommandKind::Approve,
            _ => return None,
        })
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandKind::Abort => "abort",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Promote => "promote",
            CommandKind::Approve => "approve",
        })
    }
}

/// Something that happened, fed to [`next`].
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The controller picked the canary up.
    Start,
    /// Preflight checks (and the `pre_rollout` hooks when the checks passed) finished.
    Preflight(PreflightReport),
    /// A stage's hooks ran.
    Hooks {
        /// Which stage.
        stage: HookStage,
        /// How each went.
        outcomes: Vec<HookOutcome>,
    },
    /// A pending approval timed out.
    ApprovalTimeout,
    /// A post-promotion bake interval was analysed.
    BakeAnalysis {
        /// The bake judge's new state.
        judge: JudgeState,
        /// Its verdict.
        verdict: Verdict,
        /// Whether the old version's servers are still there to roll back to.
        old_version_present: bool,
    },
    /// The router confirmed `intended_weight` (read back).
    Applied,
    /// Applying or reading back failed; the weights are held and it will be retried.
    ApplyFailed(String),
    /// An interval was analysed.
    Analysis {
        /// The judge's new state.
        judge: JudgeState,
        /// Its verdict.
        verdict: Verdict,
    },
    /// The live weights differ from what canaryd applied.
    Drift {
        /// Live canary share.
        live: f64,
        /// What canaryd applied.
        expected: f64,
    },
    /// A person's command.
    Command {
        /// Which.
        kind: CommandKind,
        /// Who (token name or `anonymous`).
        actor: String,
    },
    /// The daemon is shutting down with weights in a defined state (logged only).
    Shutdown,
}

/// What kind of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Accepted by the API.
    Submitted,
    /// Preflight checks began.
    PreflightStarted,
    /// Preflight checks passed.
    PreflightPassed,
    /// Preflight checks failed.
    PreflightFailed,
    /// One preflight check's result.
    PreflightCheck,
    /// A hook succeeded.
    HookRan,
    /// A hook failed.
    HookFailed,
    /// A gated step waits for a person.
    AwaitingApproval,
    /// A pending approval timed out.
    ApprovalTimedOut,
    /// The post-promotion bake began.
    BakeStarted,
    /// A bake interval's analysis.
    BakeAnalysis,
    /// The bake ended without a regression.
    BakeFinished,
    /// A regression during the bake with nothing to roll back to.
    BakeRegression,
    /// A step began: new intended weight.
    StepStarted,
    /// The router confirmed a weight.
    WeightsApplied,
    /// The router failed.
    RouterError,
    /// An interval's analysis.
    Analysis,
    /// No usable analysis this interval.
    AnalysisInconclusive,
    /// The fail-safe acted.
    FailSafe,
    /// Paused.
    Paused,
    /// Resumed.
    Resumed,
    /// Weights changed outside canaryd.
    DriftDetected,
    /// Promotion began.
    Promoting,
    /// Promoted.
    Promoted,
    /// Rollback began.
    RollingBack,
    /// Rolled back.
    RolledBack,
    /// Aborted.
    Aborted,
    /// Failed.
    Failed,
    /// A person's command was accepted.
    Command,
    /// A notification could not be delivered (logged by the notification outbox; it never
    /// changes the canary and is never notified itself).
    NotificationFailed,
}

impl EventKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::PreflightStarted => "preflight_started",
            EventKind::PreflightPassed => "preflight_passed",
            EventKind::PreflightFailed => "preflight_failed",
            EventKind::PreflightCheck => "preflight_check",
            EventKind::HookRan => "hook_ran",
            EventKind::HookFailed => "hook_failed",
            EventKind::AwaitingApproval => "awaiting_approval",
            EventKind::ApprovalTimedOut => "approval_timed_out",
            EventKind::BakeStarted => "bake_started",
            EventKind::BakeAnalysis => "bake_analysis",
            EventKind::BakeFinished => "bake_finished",
            EventKind::BakeRegression => "bake_regression",
            EventKind::StepStarted => "step_started",
            EventKind::WeightsApplied => "weights_applied",
            EventKind::RouterError => "router_error",
            EventKind::Analysis => "analysis",
            EventKind::AnalysisInconclusive => "analysis_inconclusive",
            EventKind::FailSafe => "fail_safe",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::DriftDetected => "drift_detected",
            EventKind::Promoting => "promoting",
            EventKind::Promoted => "promoted",
            EventKind::RollingBack => "rolling_back",
            EventKind::RolledBack => "rolled_back",
            EventKind::Aborted => "aborted",
            EventKind::Failed => "failed",
            EventKind::Command => "command",
            EventKind::NotificationFailed => "notification_failed",
        }
    }
}

/// An event to append to the canary's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    /// What happened.
    pub kind: EventKind,
    /// Who did it (`canaryd` for the daemon itself).
    pub actor: String,
    /// A sentence a person can read.
    pub message: String,
    /// Structured detail (verdict, weights, ...).
    pub data: serde_json::Value,
}

fn event(kind: EventKind, message: impl Into<String>, data: serde_json::Value) -> EventDraft {
    EventDraft {
        kind,
        actor: "canaryd".into(),
        message: message.into(),
        data,
    }
}

/// The result of a transition.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The new state.
    pub state: CanaryState,
    /// Events to append with it, in order.
    pub events: Vec<EventDraft>,
}

/// Why an input cannot be taken in the current phase.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a canary that is {phase}")]
pub struct Refused {
    /// What was asked.
    pub action: String,
    /// The phase it is in.
    pub phase: Phase,
}

fn fmt_weight(w: f64) -> String {
    crate::judge::fmt_num(w)
}

fn begin_step(
    state: &mut CanaryState,
    plan: &Plan,
    step: usize,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) {
    let weight = plan.steps[step];
    if weight >= 100.0 {
        begin_promotion(
            state,
            plan,
            now,
            events,
            "every analysis step passed".into(),
        );
        return;
    }
    if plan.gated(step) && !state.approved.contains(&step) {
        await_approval(state, plan, step, now, events);
        return;
    }
    state.step = step;
    state.intended_weight = weight;
    state.step_started_at = None;
    state.next_analysis_at = None;
    state.phase = Phase::Progressing;
    events.push(event(
        EventKind::StepStarted,
        format!(
            "step {} of {}: canary weight {}%",
            step + 1,
            plan.steps.len(),
            fmt_weight(weight)
        ),
        serde_json::json!({"step": step + 1, "steps": plan.steps.len(), "weight": weight}),
    ));
}

/// Holds before a gated step. Analysis goes on at the current weight (a regression still rolls
/// back); the caller has set `next_analysis_at`.
fn await_approval(
    state: &mut CanaryState,
    plan: &Plan,
    step: usize,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) {
    state.phase = Phase::AwaitingApproval;
    state.awaiting_step = Some(step);
    state.approval_deadline = plan.approval_timeout.map(|t| add(now, t));
    let limit = match (plan.approval_timeout, plan.on_approval_timeout) {
        (None, _) => String::new(),
        (Some(t), ApprovalTimeout::Rollback) => format!(
            "; without it traffic returns to the baseline in {}",
            crate::time::format_duration(t)
        ),
        (Some(t), ApprovalTimeout::Hold) => {
            format!(
                "; it times out in {} and then holds",
                crate::time::format_duration(t)
            )
        }
    };
    events.push(event(
        EventKind::AwaitingApproval,
        format!(
            "awaiting approval before step {} of {} (canary weight {}%): run `canaryd approve`{limit}",
            step + 1,
            plan.steps.len(),
            fmt_weight(plan.steps[step])
        ),
        serde_json::json!({
            "step": step + 1,
            "weight": plan.steps[step],
            "deadline": state.approval_deadline,
        }),
    ));
}

fn begin_promotion(
    state: &mut CanaryState,
    plan: &Plan,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
    why: String,
) {
    let last = plan.last_step();
    if plan.gated(last) && !state.approved.contains(&last) {
        state.reasons = vec![why];
        await_approval(state, plan, last, now, events);
        return;
    }
    state.phase = Phase::Promoting;
    state.step = last;
    state.intended_weight = 100.0;
    state.next_analysis_at = None;
    state.awaiting_step = None;
    state.approval_deadline = None;
    state.reasons = vec![why.clone()];
    events.push(event(
        EventKind::Promoting,
        format!("promoting: {why}"),
        serde_json::json!({"weight": 100.0}),
    ));
}

/// The canary has all traffic: run the post-promotion hooks, then bake or finish.
fn after_promotion(
    state: &mut CanaryState,
    plan: &Plan,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) {
    if state.hooks_pending(plan, HookStage::PostPromotion) {
        return;
    }
    if plan.bake.is_zero() {
        finish(state, Phase::Succeeded, now, events);
        return;
    }
    state.phase = Phase::Baking;
    state.bake_until = Some(add(now, plan.bake));
    state.next_analysis_at = Some(add(now, plan.interval));
    let bake = crate::time::format_duration(plan.bake);
    events.push(event(
        EventKind::Promoted,
        "promoted: the canary serves all traffic; the old version stays drained (weight 0) until the bake ends",
        serde_json::json!({"weight": 100.0, "reasons": state.reasons}),
    ));
    events.push(event(
        EventKind::BakeStarted,
        format!("baking for {bake}: judging the new version against the old version's metrics from before the release"),
        serde_json::json!({"until": state.bake_until}),
    ));
}

/// Traffic is back on the baseline: run the post-rollback hooks, then finish.
fn after_rollback(
    state: &mut CanaryState,
    plan: &Plan,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) {
    if state.hooks_pending(plan, HookStage::PostRollback) {
        return;
    }
    let phase = state.ending.unwrap_or(Ending::RolledBack).phase();
    finish(state, phase, now, events);
}

fn begin_rollback(
    state: &mut CanaryState,
    plan: &Plan,
    events: &mut Vec<EventDraft>,
    ending: Ending,
    reasons: Vec<String>,
) {
    // A rolling release takes back only the batch that failed the judge; a person aborting or
    // the fail-safe return everything.
    let partial = ending == Ending::RolledBack && state.step >= 1 && !plan.batches.is_empty();
    let mut reasons = reasons;
    if partial && let Some((new, old)) = plan.batches.get(state.step) {
        reasons.push(format!(
            "batch {} rolled back: {} out, {} back in; earlier batches stay",
            state.step + 1,
            new.join(", "),
            old.join(", ")
        ));
    }
    state.phase = Phase::RollingBack;
    state.ending = Some(ending);
    state.intended_weight = if partial {
        plan.steps[state.step - 1]
    } else {
        0.0
    };
    state.next_analysis_at = None;
    state.paused_from = None;
    state.awaiting_step = None;
    state.approval_deadline = None;
    state.reasons = reasons.clone();
    let batch = partial.then(|| plan.batches.get(state.step)).flatten();
    events.push(event(
        EventKind::RollingBack,
        format!("rolling back: {}", reasons.join("; ")),
        serde_json::json!({
            "weight": state.intended_weight,
            "reasons": reasons,
            "ending": ending,
            "servers_out": batch.map(|b| &b.0),
            "servers_back": batch.map(|b| &b.1),
        }),
    ));
}

fn finish(state: &mut CanaryState, phase: Phase, now: DateTime<Utc>, events: &mut Vec<EventDraft>) {
    state.phase = phase;
    state.finished_at = Some(now);
    state.next_analysis_at = None;
    let baked = state.bake_until.is_some();
    let kind = match phase {
        Phase::Succeeded if baked => EventKind::BakeFinished,
        Phase::Succeeded => EventKind::Promoted,
        Phase::RolledBack => EventKind::RolledBack,
        Phase::Aborted => EventKind::Aborted,
        _ => EventKind::Failed,
    };
    let what = match phase {
        Phase::Succeeded if baked => "bake finished without a regression: the release is done",
        Phase::Succeeded => "promoted: the canary serves all traffic",
        Phase::RolledBack if state.intended_weight > 0.0 => {
            "rolled back: the failing batch is out and its old servers are back"
        }
        Phase::RolledBack => "rolled back: all traffic is on the baseline",
        Phase::Aborted => "aborted: all traffic is on the baseline",
        _ => "failed: all traffic is on the baseline",
    };
    // The reasons were given when the rollback or promotion began; they stay in the data.
    let message = match phase {
        Phase::Failed if state.ending.is_none() => format!("failed: {}", state.reasons.join("; ")),
        _ => what.to_string(),
    };
    events.push(event(
        kind,
        message,
        serde_json::json!({"reasons": state.reasons, "weight": state.intended_weight}),
    ));
}

fn pause(state: &mut CanaryState, reason: String, now: DateTime<Utc>) {
    if state.phase != Phase::Paused {
        state.paused_from = Some(state.phase);
        state.paused_at = Some(now);
    }
    state.phase = Phase::Paused;
    state.pause_reason = Some(reason);
    state.next_analysis_at = None;
}

/// When the next analysis is due: one interval after this one, or, when the controller is
/// behind (after downtime), one interval from now. Windows never overlap, so no data is
/// judged twice.
fn next_window(
    due: Option<DateTime<Utc>>,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    due.map(|t| {
        let next = add(t, plan.interval);
        if next <= now {
            add(now, plan.interval)
        } else {
            next
        }
    })
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Advances the state by one input. Pure.
pub fn next(
    current: &CanaryState,
    plan: &Plan,
    input: Input,
    now: DateTime<Utc>,
) -> Result<Transition, Refused> {
    let mut state = current.clone();
    let mut events = Vec::new();
    let refuse = |action: &str| Refused {
        action: action.to_string(),
        phase: current.phase,
    };
    match input {
        Input::Start => {
            if state.phase != Phase::Pending {
                return Err(refuse("start"));
            }
            state.phase = Phase::Preflight;
            events.push(event(
                EventKind::PreflightStarted,
                "preflight: checking the router, the metrics and the rule set",
                serde_json::Value::Null,
            ));
        }
        Input::Preflight(report) => {
            if state.phase != Phase::Preflight {
                return Err(refuse("finish preflight of"));
            }
            for c in &report.checks {
                events.push(event(
                    EventKind::PreflightCheck,
                    format!(
                        "preflight check {}: {} ({})",
                        c.check,
                        if c.ok { "ok" } else { "FAILED" },
                        c.detail
                    ),
                    serde_json::json!({"check": c.check, "ok": c.ok, "detail": c.detail}),
                ));
            }
            hook_events(HookStage::PreRollout, &report.hooks, &mut events);
            match report.failure() {
                None => {
                    if !report.hooks.is_empty() {
                        state.hooks_done.push(hook_key(HookStage::PreRollout, 0));
                    }
                    events.push(event(
                        EventKind::PreflightPassed,
                        "preflight passed",
                        serde_json::Value::Null,
                    ));
                    begin_step(&mut state, plan, 0, now, &mut events);
                }
                Some(reason) => {
                    events.push(event(
                        EventKind::PreflightFailed,
                        format!("preflight failed: {reason}; no weight was changed"),
                        serde_json::json!({"reason": reason}),
                    ));
                    state.reasons = vec![format!("preflight failed: {reason}")];
                    finish(&mut state, Phase::Failed, now, &mut events);
                }
            }
        }
        Input::Applied => {
            if !state.needs_apply() {
                return Err(refuse("confirm weights of"));
            }
            state.applied_weight = Some(state.intended_weight);
            state.apply_failures = 0;
            events.push(event(
                EventKind::WeightsApplied,
                format!(
                    "router confirmed canary weight {}%",
                    fmt_weight(state.intended_weight)
                ),
                serde_json::json!({"weight": state.intended_weight}),
            ));
            match state.phase {
                Phase::Progressing => {
                    state.step_started_at = Some(now);
                    state.analysis_started_at.get_or_insert(now);
                    state.next_analysis_at = Some(add(now, plan.interval));
                }
                Phase::Promoting => after_promotion(&mut state, plan, now, &mut events),
                Phase::RollingBack => after_rollback(&mut state, plan, now, &mut events),
                _ => {}
            }
        }
        Input::Hooks { stage, outcomes } => {
            hook_events(stage, &outcomes, &mut events);
            let failed = outcomes.iter().find(|o| !o.ok);
            match (stage, failed) {
                (HookStage::PreStep, Some(f)) => {
                    let reason = format!(
                        "pre_step hook {:?} failed ({}); the weights were not changed",
                        f.name, f.detail
                    );
                    pause(&mut state, reason.clone(), now);
                    events.push(event(
                        EventKind::Paused,
                        format!("paused: {reason}; resume to run the hooks again"),
                        serde_json::json!({"reason": reason}),
                    ));
                }
                _ => {
                    state.hooks_done.push(hook_key(stage, state.step));
                    match (stage, state.phase) {
                        (HookStage::PostPromotion, Phase::Promoting) => {
                            after_promotion(&mut state, plan, now, &mut events)
                        }
                        (HookStage::PostRollback, Phase::RollingBack) => {
                            after_rollback(&mut state, plan, now, &mut events)
                        }
                        _ => {}
                    }
                }
            }
        }
        Input::ApprovalTimeout => {
            if state.phase != Phase::AwaitingApproval {
                return Err(refuse("time out the approval of"));
            }
            let step = state.awaiting_step.unwrap_or(state.step) + 1;
            let why = format!("the approval for step {step} timed out");
            match plan.on_approval_timeout {
                ApprovalTimeout::Rollback => {
                    events.push(event(
                        EventKind::ApprovalTimedOut,
                        format!("{why}: returning all traffic to the baseline"),
                        serde_json::json!({"step": step, "policy": "rollback"}),
                    ));
                    begin_rollback(&mut state, plan, &mut events, Ending::Aborted, vec![why]);
                }
                ApprovalTimeout::Hold => {
                    state.approval_deadline = None;
                    events.push(event(
                        EventKind::ApprovalTimedOut,
                        format!(
                            "{why}: holding at the current weights until someone approves or aborts"
                        ),
                        serde_json::json!({"step": step, "policy": "hold"}),
                    ));
                }
            }
        }
        Input::BakeAnalysis {
            judge,
            verdict,
            old_version_present,
        } => {
            if state.phase != Phase::Baking {
                return Err(refuse("bake"));
            }
            bake(
                &mut state,
                plan,
                judge,
                verdict,
                old_version_present,
                now,
                &mut events,
            );
        }
        Input::ApplyFailed(reason) => {
            state.apply_failures += 1;
            // One event when the trouble starts, then one every 20 attempts: an outage must
            // not flood the log.
            if state.apply_failures == 1 || state.apply_failures.is_multiple_of(20) {
                events.push(event(
                    EventKind::RouterError,
                    format!(
                        "could not apply canary weight {}% (attempt {}): {reason}; holding and retrying",
                        fmt_weight(state.intended_weight),
                        state.apply_failures
                    ),
                    serde_json::json!({
                        "reason": reason,
                        "weight": state.intended_weight,
                        "attempts": state.apply_failures,
                    }),
                ));
            }
        }
        Input::Analysis { judge, verdict } => {
            let analysing = matches!(state.phase, Phase::Progressing | Phase::AwaitingApproval);
            if !analysing || state.needs_apply() || state.next_analysis_at.is_none() {
                return Err(refuse("analyse"));
            }
            analyse(&mut state, plan, judge, verdict, now, &mut events);
        }
        Input::Drift { live, expected } => {
            if state.phase.is_terminal() {
                return Err(refuse("pause"));
            }
            let reason = format!(
                "the router's weights were changed outside canaryd: live canary weight {}%, canaryd applied {}%",
                fmt_weight(live),
                fmt_weight(expected)
            );
            events.push(event(
                EventKind::DriftDetected,
                reason.clone(),
                serde_json::json!({"live": live, "applied": expected}),
            ));
            pause(&mut state, reason.clone(), now);
            events.push(event(
                EventKind::Paused,
                format!(
                    "paused: {reason}; resume to re-apply {}%",
                    fmt_weight(state.intended_weight)
                ),
                serde_json::json!({"reason": reason}),
            ));
        }
        Input::Command { kind, actor } => {
            command(&mut state, plan, kind, &actor, now, &mut events).map_err(|_| Refused {
                action: kind.to_string(),
                phase: current.phase,
            })?;
            for e in &mut events {
                e.actor = actor.clone();
            }
        }
        Input::Shutdown => {}
    }
    Ok(Transition { state, events })
}

fn hook_events(stage: HookStage, outcomes: &[HookOutcome], events: &mut Vec<EventDraft>) {
    for o in outcomes {
        let (kind, verdict) = if o.ok {
            (EventKind::HookRan, "ok")
        } else {
            (EventKind::HookFailed, "FAILED")
        };
        let output = o.output.trim();
        let tail = if output.is_empty() {
            String::new()
        } else {
            format!(": {}", output.lines().last().unwrap_or_default())
        };
        events.push(event(
            kind,
            format!(
                "{stage} hook {:?} {verdict} ({}, {} ms){tail}",
                o.name, o.detail, o.millis
            ),
            serde_json::json!({
                "stage": stage,
                "hook": o.name,
                "ok": o.ok,
                "detail": o.detail,
                "output": o.output,
                "millis": o.millis,
            }),
        ));
    }
}

fn bake(
    state: &mut CanaryState,
    plan: &Plan,
    judge: JudgeState,
    verdict: Verdict,
    old_version_present: bool,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) {
    state.bake_intervals += 1;
    state.bake_judge = Some(judge);
    events.push(event(
        EventKind::BakeAnalysis,
        format!(
            "bake interval {}: {}{}",
            state.bake_intervals,
            verdict.decision,
            if verdict.reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", verdict.reasons.join("; "))
            }
        ),
        serde_json::json!({"interval": state.bake_intervals, "verdict": verdict}),
    ));
    if verdict.decision == Decision::Rollback {
        let reasons: Vec<String> = verdict
            .reasons
            .iter()
            .map(|r| format!("regression during the bake: {r}"))
            .collect();
        state.last_verdict = Some(verdict);
        if old_version_present {
            begin_rollback(state, plan, events, Ending::RolledBack, reasons);
        } else {
            events.push(event(
                EventKind::BakeRegression,
                format!(
                    "{}; the old version's servers are gone, so canaryd cannot roll back: act now",
                    reasons.join("; ")
                ),
                serde_json::json!({"reasons": reasons}),
            ));
            state.reasons = reasons;
            state.ending = None;
            finish(state, Phase::Failed, now, events);
        }
        return;
    }
    state.last_verdict = Some(verdict);
    if state.bake_until.is_some_and(|until| now >= until) {
        state.reasons.push(format!(
            "no regression in a {} bake",
            crate::time::format_duration(plan.bake)
        ));
        finish(state, Phase::Succeeded, now, events);
    } else {
        state.next_analysis_at = next_window(state.next_analysis_at, plan, now);
    }
}

fn analyse(
    state: &mut CanaryState,
    plan: &Plan,
    judge: JudgeState,
    verdict: Verdict,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) {
    state.intervals += 1;
    state.judge = judge;
    let decision = verdict.decision;
    let summary = format!(
        "interval {} at {}%: {}",
        state.intervals,
        fmt_weight(state.intended_weight),
        decision
    );
    let kind = if decision == Decision::Inconclusive {
        EventKind::AnalysisInconclusive
    } else {
        EventKind::Analysis
    };
    events.push(event(
        kind,
        if verdict.reasons.is_empty() {
            summary
        } else {
            format!("{summary}: {}", verdict.reasons.join("; "))
        },
        serde_json::json!({
            "interval": state.intervals,
            "step": state.step + 1,
            "weight": state.intended_weight,
            "verdict": verdict,
        }),
    ));
    let reasons = verdict.reasons.clone();
    let open: Vec<String> = verdict
        .metrics
        .iter()
        .filter(|m| !m.dry_run && m.status != crate::judge::MetricStatus::Pass)
        .map(|m| m.name.clone())
        .collect();
    state.last_verdict = Some(verdict);
    let next_due = next_window(state.next_analysis_at, plan, now);
    match decision {
        Decision::Rollback if !plan.auto_rollback => {
            let reason = format!(
                "regression found, and automatic rollback is off for this environment: {}",
                reasons.join("; ")
            );
            state.reasons = reasons;
            pause(state, reason.clone(), now);
            events.push(event(
                EventKind::Paused,
                format!("paused: {reason}; `canaryd abort` rolls back, `resume` carries on"),
                serde_json::json!({"reason": reason}),
            ));
        }
        Decision::Rollback => begin_rollback(state, plan, events, Ending::RolledBack, reasons),
        Decision::Inconclusive => {
            state.unusable_streak += 1;
            if state.unusable_streak >= plan.failure_limit {
                let why = format!(
                    "no usable analysis for {} consecutive intervals ({})",
                    state.unusable_streak,
                    reasons.join("; ")
                );
                match plan.fail_safe {
                    FailSafe::Rollback => {
                        events.push(event(
                            EventKind::FailSafe,
                            format!("fail-safe: {why}; returning all traffic to the baseline"),
                            serde_json::json!({"policy": "rollback", "streak": state.unusable_streak}),
                        ));
                        begin_rollback(
                            state,
                            plan,
                            events,
                            Ending::Failed,
                            vec![format!("fail-safe: {why}")],
                        );
                    }
                    FailSafe::Hold => {
                        events.push(event(
                            EventKind::FailSafe,
                            format!("fail-safe: {why}; holding the current weights and pausing"),
                            serde_json::json!({"policy": "hold", "streak": state.unusable_streak}),
                        ));
                        pause(state, format!("fail-safe: {why}"), now);
                        events.push(event(
                            EventKind::Paused,
                            format!("paused by the fail-safe: {why}"),
                            serde_json::Value::Null,
                        ));
                    }
                }
            } else {
                state.next_analysis_at = next_due;
            }
        }
        Decision::Continue | Decision::Promote => {
            state.unusable_streak = 0;
            let started = state.analysis_started_at.unwrap_or(now);
            let out_of_time = now >= add(started, plan.max_duration);
            // Analysis goes on at the current weight unless a new step resets it.
            state.next_analysis_at = next_due;
            if state.phase == Phase::AwaitingApproval {
                // Waiting for a person: nothing moves until the approval.
            } else if state.step < plan.last_analysis_step() {
                begin_step(state, plan, state.step + 1, now, events);
            } else if decision == Decision::Promote {
                begin_promotion(
                    state,
                    plan,
                    now,
                    events,
                    "every metric is confidently within its margin".into(),
                );
            } else if out_of_time {
                let mut why = format!(
                    "max_duration {} reached without a regression",
                    crate::time::format_duration(plan.max_duration)
                );
                if !open.is_empty() {
                    why.push_str(&format!(
                        " (not yet shown within the margin: {}; see the last analysis)",
                        open.join(", ")
                    ));
                }
                begin_promotion(state, plan, now, events, why);
            }
        }
    }
}

fn command(
    state: &mut CanaryState,
    plan: &Plan,
    kind: CommandKind,
    actor: &str,
    now: DateTime<Utc>,
    events: &mut Vec<EventDraft>,
) -> Result<(), ()> {
    let phase = state.phase;
    if phase.is_terminal() {
        return Err(());
    }
    match kind {
        CommandKind::Abort => {
            if phase == Phase::RollingBack {
                return Err(());
            }
            let reason = format!("aborted by {actor}");
            state.awaiting_step = None;
            if state.applied_weight.is_none() && matches!(phase, Phase::Pending | Phase::Preflight)
            {
                state.reasons = vec![reason];
                finish(state, Phase::Aborted, now, events);
            } else {
                begin_rollback(state, plan, events, Ending::Aborted, vec![reason]);
            }
        }
        CommandKind::Pause => {
            if !matches!(phase, Phase::Progressing | Phase::AwaitingApproval) {
                return Err(());
            }
            let reason = format!("paused by {actor}");
            pause(state, reason.clone(), now);
            events.push(event(EventKind::Paused, reason, serde_json::Value::Null));
        }
        CommandKind::Resume => {
            if phase != Phase::Paused {
                return Err(());
            }
            let back = state.paused_from.take().unwrap_or(Phase::Progressing);
            state.phase = back;
            state.pause_reason = None;
            state.unusable_streak = 0;
            // Re-apply the intended weight (it may have drifted); analysis starts afresh.
            state.applied_weight = None;
            state.next_analysis_at = match back {
                // Progressing schedules its next analysis when the weight is confirmed.
                Phase::Progressing => None,
                _ => Some(add(now, plan.interval)),
            };
            // A pending approval gets back the time it spent paused.
            if let (Some(deadline), Some(paused)) = (state.approval_deadline, state.paused_at) {
                state.approval_deadline =
                    Some(deadline + (now - paused).max(chrono::Duration::zero()));
            }
            state.paused_at = None;
            events.push(event(
                EventKind::Resumed,
                format!(
                    "resumed by {actor}: re-applying canary weight {}%",
                    fmt_weight(state.intended_weight)
                ),
                serde_json::Value::Null,
            ));
        }
        CommandKind::Promote => {
            // From a pause only where a promotion could have come from anyway: not from a
            // paused bake (already promoted) or a paused rollback (the judge said no).
            let promotable = |p: Phase| matches!(p, Phase::Progressing | Phase::AwaitingApproval);
            let ok = promotable(phase)
                || (phase == Phase::Paused && state.paused_from.is_some_and(promotable));
            if !ok {
                return Err(());
            }
            state.paused_from = None;
            // A person promoting is also the approval of the promotion.
            state.approved.push(plan.last_step());
            begin_promotion(
                state,
                plan,
                now,
                events,
                format!("promoted manually by {actor}"),
            );
        }
        CommandKind::Approve => {
            if phase != Phase::AwaitingApproval {
                return Err(());
            }
            let step = state.awaiting_step.take().unwrap_or(state.step + 1);
            state.approved.push(step);
            state.approval_deadline = None;
            events.push(event(
                EventKind::Command,
                format!(
                    "approved by {actor}: step {} of {}",
                    step + 1,
                    plan.steps.len()
                ),
                serde_json::json!({"step": step + 1}),
            ));
            if step >= plan.last_step() {
                let why = state
                    .reasons
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "approved".into());
                begin_promotion(
                    state,
                    plan,
                    now,
                    events,
                    format!("{why}; approved by {actor}"),
                );
            } else {
                begin_step(state, plan, step, now, events);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{MetricVerdict, sequential};
    use crate::rules::parse_rule_set;

    fn plan() -> Plan {
        Plan {
            failure_limit: 3,
            ..Plan::simple(
                vec![10.0, 50.0, 100.0],
                Duration::from_secs(60),
                Duration::from_secs(600),
            )
        }
    }

    fn ok_preflight() -> Input {
        Input::Preflight(PreflightReport::default())
    }

    fn judge() -> JudgeState {
        let rules = parse_rule_set(
            "t.yaml",
            "name: t\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'x{ {{selector}} }'\n    max_increase: 50%\n",
        )
        .unwrap();
        JudgeState::Sequential(sequential::State::new(&rules))
    }

    fn verdict(decision: Decision) -> Input {
        Input::Analysis {
            judge: judge(),
            verdict: Verdict {
                decision,
                metrics: Vec::<MetricVerdict>::new(),
                reasons: vec![format!("because {decision}")],
            },
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    /// Runs inputs from a fresh canary; returns the phases after each and the event kinds.
    fn run(inputs: Vec<(i64, Input)>) -> (CanaryState, Vec<Phase>, Vec<EventKind>) {
        let mut state = CanaryState::new(judge());
        let mut phases = Vec::new();
        let mut kinds = Vec::new();
        for (secs, input) in inputs {
            let tr = next(&state, &plan(), input, t(secs)).expect("accepted");
            state = tr.state;
            phases.push(state.phase);
            kinds.extend(tr.events.iter().map(|e| e.kind));
        }
        (state, phases, kinds)
    }

    #[test]
    fn table_of_transitions() {
        use Phase::*;
        // (inputs, expected phase after each)
        type Case = (&'static str, Vec<(i64, Input)>, Vec<Phase>);
        let cases: Vec<Case> = vec![
            (
                "healthy: every step, then promotion",
                vec![
                    (0, Input::Start),
                    (0, ok_preflight()),
                    (1, Input::Applied),
                    (61, verdict(Decision::Continue)),
                    (62, Input::Applied),
                    (122, verdict(Decision::Promote)),
                    (123, Input::Applied),
                ],
                vec![
                    Preflight,
                    Progressing,
                    Progressing,
                    Progressing,
                    Progressing,
                    Promoting,
                    Succeeded,
                ],
            ),
            (
                "regression: rollback",
                vec![
                    (0, Input::Start),
                    (0, ok_preflight()),
                    (1, Input::Applied),
                    (61, verdict(Decision::Rollback)),
                    (62, Input::Applied),
                ],
                vec![Preflight, Progressing, Progressing, RollingBack, RolledBack],
            ),
            (
                "preflight failure touches nothing",
                vec![
                    (0, Input::Start),
                    (
                        0,
                        Input::Preflight(PreflightReport::failed("router", "no server".into())),
                    ),
                ],
                vec![Preflight, Failed],
            ),
            (
                "last step holds on continue, promotes at max_duration",
                vec![
                    (0, Input::Start),
                    (0, ok_preflight()),
                    (0, Input::Applied),
                    (60, verdict(Decision::Continue)),
                    (60, Input::Applied),
                    (120, verdict(Decision::Continue)),
                    (180, verdict(Decision::Continue)),
                    (600, verdict(Decision::Continue)),
                    (601, Input::Applied),
                ],
                vec![
                    Preflight,
                    Progressing,
                    Progressing,
                    Progressing,
                    Progressing,
                    Progressing,
                    Progressing,
                    Promoting,
                    Succeeded,
                ],
            ),
            (
                "fail-safe after the failure limit",
                vec![
                    (0, Input::Start),
                    (0, ok_preflight()),
                    (0, Input::Applied),
                    (60, verdict(Decision::Inconclusive)),
                    (120, verdict(Decision::Inconclusive)),
                    (180, verdict(Decision::Inconclusive)),
                    (181, Input::Applied),
                ],
                vec![
                    Preflight,
                    Progressing,
                    Progressing,
                    Progressing,
                    Progressing,
                    RollingBack,
                    Failed,
                ],
            ),
            (
                "drift pauses; resume re-applies",
                vec![
                    (0, Input::Start),
                    (0, ok_preflight()),
                    (0, Input::Applied),
                    (
                        30,
                        Input::Drift {
                            live: 40.0,
                            expected: 10.0,
                        },
                    ),
                    (
                        40,
                        Input::Command {
                            kind: CommandKind::Resume,
                            actor: "ops".into(),
                        },
                    ),
                    (41, Input::Applied),
                ],
                vec![
                    Preflight,
                    Progressing,
                    Progressing,
                    Paused,
                    Progressing,
                    Progressing,
                ],
            ),
            (
                "abort returns traffic",
                vec![
                    (0, Input::Start),
                    (0, ok_preflight()),
                    (0, Input::Applied),
                    (
                        30,
                        Input::Command {
                            kind: CommandKind::Abort,
                            actor: "ops".into(),
                        },
                    ),
                    (31, Input::Applied),
                ],
                vec![Preflight, Progressing, Progressing, RollingBack, Aborted],
            ),
        ];
        for (name, inputs, expected) in cases {
            let (_, phases, _) = run(inputs);
            assert_eq!(phases, expected, "{name}");
        }
    }

    #[test]
    fn steps_are_logged_once_each_in_order() {
        let (state, _, kinds) = run(vec![
            (0, Input::Start),
            (0, ok_preflight()),
            (1, Input::Applied),
            (61, verdict(Decision::Continue)),
            (62, Input::Applied),
            (122, verdict(Decision::Promote)),
            (123, Input::Applied),
        ]);
        let steps = kinds
            .iter()
            .filter(|k| **k == EventKind::StepStarted)
            .count();
        assert_eq!(steps, 2);
        assert_eq!(state.intended_weight, 100.0);
        assert_eq!(state.finished_at, Some(t(123)));
        assert_eq!(kinds.last(), Some(&EventKind::Promoted));
    }

    #[test]
    fn inconclusive_holds_the_step_and_the_weight() {
        let (state, _, _) = run(vec![
            (0, Input::Start),
            (0, ok_preflight()),
            (0, Input::Applied),
            (60, verdict(Decision::Inconclusive)),
        ]);
        assert_eq!(state.step, 0);
        assert_eq!(state.intended_weight, 10.0);
        assert_eq!(state.unusable_streak, 1);
        assert_eq!(state.next_analysis_at, Some(t(120)));
        assert!(!state.needs_apply());
    }

    #[test]
    fn commands_are_refused_where_they_make_no_sense() {
        let state = CanaryState::new(judge());
        let refused = next(
            &state,
            &plan(),
            Input::Command {
                kind: CommandKind::Resume,
                actor: "ops".into(),
            },
            t(0),
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "cannot resume a canary that is pending"
        );
        let mut done = state.clone();
        done.phase = Phase::Succeeded;
        assert!(
            next(
                &done,
                &plan(),
                Input::Command {
                    kind: CommandKind::Abort,
                    actor: "x".into()
                },
                t(0)
            )
            .is_err()
        );
        // Analysis while a weight is still being applied is refused.
        let (pending_apply, _, _) = run(vec![(0, Input::Start), (0, ok_preflight())]);
        assert!(next(&pending_apply, &plan(), verdict(Decision::Continue), t(5)).is_err());
    }

    #[test]
    fn abort_before_any_weight_needs_no_rollback() {
        let (state, phases, _) = run(vec![
            (0, Input::Start),
            (
                1,
                Input::Command {
                    kind: CommandKind::Abort,
                    actor: "ops".into(),
                },
            ),
        ]);
        assert_eq!(phases.last(), Some(&Phase::Aborted));
        assert_eq!(state.reasons, vec!["aborted by ops".to_string()]);
    }

    fn run_plan(
        plan: &Plan,
        inputs: Vec<(i64, Input)>,
    ) -> (CanaryState, Vec<Phase>, Vec<EventKind>) {
        let mut state = CanaryState::new(judge());
        let mut phases = Vec::new();
        let mut kinds = Vec::new();
        for (secs, input) in inputs {
            let tr = next(&state, plan, input, t(secs)).expect("accepted");
            state = tr.state;
            phases.push(state.phase);
            kinds.extend(tr.events.iter().map(|e| e.kind));
        }
        (state, phases, kinds)
    }

    fn approve() -> Input {
        Input::Command {
            kind: CommandKind::Approve,
            actor: "alice".into(),
        }
    }

    #[test]
    fn a_gated_step_waits_for_approval_while_analysis_goes_on() {
        use Phase::*;
        let mut p = plan();
        p.approvals = vec![false, true, false];
        let (state, phases, kinds) = run_plan(
            &p,
            vec![
                (0, Input::Start),
                (0, ok_preflight()),
                (0, Input::Applied),
                (60, verdict(Decision::Continue)),
                (120, verdict(Decision::Continue)),
                (130, approve()),
                (131, Input::Applied),
            ],
        );
        assert_eq!(
            phases,
            vec![
                Preflight,
                Progressing,
                Progressing,
                AwaitingApproval,
                AwaitingApproval,
                Progressing,
                Progressing
            ]
        );
        assert_eq!(state.intended_weight, 50.0);
        assert!(kinds.contains(&EventKind::AwaitingApproval));
        // A regression while waiting still rolls back.
        let (_, phases, _) = run_plan(
            &p,
            vec![
                (0, Input::Start),
                (0, ok_preflight()),
                (0, Input::Applied),
                (60, verdict(Decision::Continue)),
                (120, verdict(Decision::Rollback)),
            ],
        );
        assert_eq!(phases.last(), Some(&RollingBack));
    }

    #[test]
    fn approval_timeouts_follow_the_policy() {
        let mut p = plan();
        p.approvals = vec![false, false, true];
        p.approval_timeout = Some(Duration::from_secs(300));
        let inputs = || {
            vec![
                (0, Input::Start),
                (0, ok_preflight()),
                (0, Input::Applied),
                (60, verdict(Decision::Continue)),
                (60, Input::Applied),
                (120, verdict(Decision::Promote)),
                (420, Input::ApprovalTimeout),
            ]
        };
        let (state, phases, _) = run_plan(&p, inputs());
        assert_eq!(
            phases[5],
            Phase::AwaitingApproval,
            "promotion waits for approval"
        );
        assert_eq!(state.approval_deadline, None);
        assert_eq!(state.phase, Phase::RollingBack);
        assert_eq!(state.ending, Some(Ending::Aborted));
        p.on_approval_timeout = ApprovalTimeout::Hold;
        let (state, _, kinds) = run_plan(&p, inputs());
        assert_eq!(state.phase, Phase::AwaitingApproval);
        assert_eq!(kinds.last(), Some(&EventKind::ApprovalTimedOut));
        // Approving afterwards promotes.
        let tr = next(&state, &p, approve(), t(500)).unwrap();
        assert_eq!(tr.state.phase, Phase::Promoting);
    }

    #[test]
    fn hooks_gate_steps_and_follow_rollbacks() {
        use super::super::hooks::HookOutcome;
        let mut p = plan();
        p.hook_stages = vec![HookStage::PreStep, HookStage::PostRollback];
        let ok = |ok: bool| Input::Hooks {
            stage: HookStage::PreStep,
            outcomes: vec![HookOutcome {
                name: "drain-workers".into(),
                ok,
                detail: "exit status: 0".into(),
                output: String::new(),
                millis: 3,
            }],
        };
        let mut state = CanaryState::new(judge());
        for input in [Input::Start, ok_preflight()] {
            state = next(&state, &p, input, t(0)).unwrap().state;
        }
        assert!(state.hooks_pending(&p, HookStage::PreStep));
        let failed = next(&state, &p, ok(false), t(1)).unwrap();
        assert_eq!(failed.state.phase, Phase::Paused);
        assert_eq!(failed.events[0].kind, EventKind::HookFailed);
        let passed = next(&state, &p, ok(true), t(1)).unwrap().state;
        assert!(!passed.hooks_pending(&p, HookStage::PreStep));
        // Rollback, then the post_rollback hooks before the canary ends.
        let mut s = next(&passed, &p, Input::Applied, t(2)).unwrap().state;
        s = next(&s, &p, verdict(Decision::Rollback), t(62))
            .unwrap()
            .state;
        s = next(&s, &p, Input::Applied, t(63)).unwrap().state;
        assert_eq!(s.phase, Phase::RollingBack, "waits for post_rollback hooks");
        let done = next(
            &s,
            &p,
            Input::Hooks {
                stage: HookStage::PostRollback,
                outcomes: vec![],
            },
            t(64),
        )
        .unwrap();
        assert_eq!(done.state.phase, Phase::RolledBack);
    }

    #[test]
    fn bake_watches_after_promotion_and_rolls_back_to_the_drained_old_version() {
        let mut p = plan();
        p.bake = Duration::from_secs(180);
        let (state, phases, kinds) = run_plan(
            &p,
            vec![
                (0, Input::Start),
                (0, ok_preflight()),
                (0, Input::Applied),
                (60, verdict(Decision::Continue)),
                (60, Input::Applied),
                (120, verdict(Decision::Promote)),
                (121, Input::Applied),
            ],
        );
        assert_eq!(phases.last(), Some(&Phase::Baking));
        assert!(kinds.contains(&EventKind::Promoted) && kinds.contains(&EventKind::BakeStarted));
        let bake = |decision, present| Input::BakeAnalysis {
            judge: judge(),
            verdict: Verdict {
                decision,
                metrics: vec![],
                reasons: vec!["latency".into()],
            },
            old_version_present: present,
        };
        let rolled = next(&state, &p, bake(Decision::Rollback, true), t(181)).unwrap();
        assert_eq!(rolled.state.phase, Phase::RollingBack);
        assert_eq!(rolled.state.intended_weight, 0.0);
        let stuck = next(&state, &p, bake(Decision::Rollback, false), t(181)).unwrap();
        assert_eq!(stuck.state.phase, Phase::Failed);
        assert!(
            stuck
                .events
                .iter()
                .any(|e| e.kind == EventKind::BakeRegression)
        );
        let s = next(&state, &p, bake(Decision::Continue, true), t(181))
            .unwrap()
            .state;
        assert_eq!(s.phase, Phase::Baking);
        let done = next(&s, &p, bake(Decision::Continue, true), t(302)).unwrap();
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(done.events.last().unwrap().kind, EventKind::BakeFinished);
    }

    #[test]
    fn without_auto_rollback_a_regression_pauses() {
        let mut p = plan();
        p.auto_rollback = false;
        let (state, _, _) = run_plan(
            &p,
            vec![
                (0, Input::Start),
                (0, ok_preflight()),
                (0, Input::Applied),
                (60, verdict(Decision::Rollback)),
            ],
        );
        assert_eq!(state.phase, Phase::Paused);
        assert!(
            state
                .pause_reason
                .unwrap()
                .contains("automatic rollback is off")
        );
    }

    #[test]
    fn after_downtime_the_next_window_starts_from_now() {
        let (state, _, _) = run(vec![
            (0, Input::Start),
            (0, ok_preflight()),
            (0, Input::Applied),
        ]);
        // Due at 60 s but analysed at 600 s (the daemon was down).
        let tr = next(&state, &plan(), verdict(Decision::Inconclusive), t(600)).unwrap();
        assert_eq!(tr.state.next_analysis_at, Some(t(660)));
    }

    #[test]
    fn resuming_a_paused_bake_or_approval_carries_on() {
        let mut p = plan();
        p.bake = Duration::from_secs(300);
        let (baking, _, _) = run_plan(
            &p,
            vec![
                (0, Input::Start),
                (0, ok_preflight()),
                (0, Input::Applied),
                (60, verdict(Decision::Continue)),
                (60, Input::Applied),
                (120, verdict(Decision::Promote)),
                (121, Input::Applied),
            ],
        );
        assert_eq!(baking.phase, Phase::Baking);
        let paused = next(
            &baking,
            &p,
            Input::Drift {
                live: 0.0,
                expected: 100.0,
            },
            t(130),
        )
        .unwrap()
        .state;
        let resume = Input::Command {
            kind: CommandKind::Resume,
            actor: "ops".into(),
        };
        let resumed = next(&paused, &p, resume, t(140)).unwrap().state;
        assert_eq!(resumed.phase, Phase::Baking);
        assert!(resumed.needs_apply(), "the drifted weight is re-applied");
        assert_eq!(resumed.next_analysis_at, Some(t(200)));
        // Promoting a paused bake makes no sense: refused.
        let promote = Input::Command {
            kind: CommandKind::Promote,
            actor: "ops".into(),
        };
        assert!(next(&paused, &p, promote, t(141)).is_err());
    }
}
