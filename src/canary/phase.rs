//! The canary lifecycle as a pure state machine.
//!
//! [`next`] takes the persisted [`CanaryState`], one [`Input`] and the time, and returns the new
//! state with the events that explain it. It does no I/O: the controller persists the result
//! (intent first), then performs what the state asks for — applying `intended_weight` whenever
//! it differs from `applied_weight` — and feeds the outcome back as the next input.

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
        }
    }

    /// Whether the router still has to be brought to `intended_weight`.
    pub fn needs_apply(&self) -> bool {
        matches!(
            self.phase,
            Phase::Progressing | Phase::Promoting | Phase::RollingBack
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
    /// Preflight checks finished.
    Preflight(Result<(), String>),
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
}

impl EventKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::PreflightStarted => "preflight_started",
            EventKind::PreflightPassed => "preflight_passed",
            EventKind::PreflightFailed => "preflight_failed",
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

fn begin_step(state: &mut CanaryState, plan: &Plan, step: usize, events: &mut Vec<EventDraft>) {
    let weight = plan.steps[step];
    state.step = step;
    state.intended_weight = weight;
    state.step_started_at = None;
    state.next_analysis_at = None;
    if weight >= 100.0 {
        begin_promotion(state, plan, events, "every analysis step passed".into());
    } else {
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
}

fn begin_promotion(
    state: &mut CanaryState,
    plan: &Plan,
    events: &mut Vec<EventDraft>,
    why: String,
) {
    state.phase = Phase::Promoting;
    state.step = plan.steps.len().saturating_sub(1);
    state.intended_weight = 100.0;
    state.next_analysis_at = None;
    state.reasons = vec![why.clone()];
    events.push(event(
        EventKind::Promoting,
        format!("promoting: {why}"),
        serde_json::json!({"weight": 100.0}),
    ));
}

fn begin_rollback(
    state: &mut CanaryState,
    events: &mut Vec<EventDraft>,
    ending: Ending,
    reasons: Vec<String>,
) {
    state.phase = Phase::RollingBack;
    state.ending = Some(ending);
    state.intended_weight = 0.0;
    state.next_analysis_at = None;
    state.paused_from = None;
    state.reasons = reasons.clone();
    events.push(event(
        EventKind::RollingBack,
        format!("rolling back: {}", reasons.join("; ")),
        serde_json::json!({"weight": 0.0, "reasons": reasons, "ending": ending}),
    ));
}

fn finish(state: &mut CanaryState, phase: Phase, now: DateTime<Utc>, events: &mut Vec<EventDraft>) {
    state.phase = phase;
    state.finished_at = Some(now);
    state.next_analysis_at = None;
    let kind = match phase {
        Phase::Succeeded => EventKind::Promoted,
        Phase::RolledBack => EventKind::RolledBack,
        Phase::Aborted => EventKind::Aborted,
        _ => EventKind::Failed,
    };
    let what = match phase {
        Phase::Succeeded => "promoted: the canary serves all traffic",
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

fn pause(state: &mut CanaryState, reason: String) {
    if state.phase != Phase::Paused {
        state.paused_from = Some(state.phase);
    }
    state.phase = Phase::Paused;
    state.pause_reason = Some(reason);
    state.next_analysis_at = None;
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
                "preflight: checking the router and the rule set",
                serde_json::Value::Null,
            ));
        }
        Input::Preflight(result) => {
            if state.phase != Phase::Preflight {
                return Err(refuse("finish preflight of"));
            }
            match result {
                Ok(()) => {
                    events.push(event(
                        EventKind::PreflightPassed,
                        "preflight passed",
                        serde_json::Value::Null,
                    ));
                    begin_step(&mut state, plan, 0, &mut events);
                }
                Err(reason) => {
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
                Phase::Promoting => finish(&mut state, Phase::Succeeded, now, &mut events),
                Phase::RollingBack => {
                    let phase = state.ending.unwrap_or(Ending::RolledBack).phase();
                    finish(&mut state, phase, now, &mut events);
                }
                _ => {}
            }
        }
        Input::ApplyFailed(reason) => {
            events.push(event(
                EventKind::RouterError,
                format!(
                    "could not apply canary weight {}%: {reason}; holding and retrying",
                    fmt_weight(state.intended_weight)
                ),
                serde_json::json!({"reason": reason, "weight": state.intended_weight}),
            ));
        }
        Input::Analysis { judge, verdict } => {
            if state.phase != Phase::Progressing || state.needs_apply() {
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
            pause(&mut state, reason.clone());
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
    let next_due = state.next_analysis_at.map(|t| add(t, plan.interval));
    match decision {
        Decision::Rollback => begin_rollback(state, events, Ending::RolledBack, reasons),
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
                        pause(state, format!("fail-safe: {why}"));
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
            if state.step < plan.last_analysis_step() {
                begin_step(state, plan, state.step + 1, events);
            } else if decision == Decision::Promote {
                begin_promotion(
                    state,
                    plan,
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
                begin_promotion(state, plan, events, why);
            } else {
                state.next_analysis_at = next_due;
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
            if state.applied_weight.is_none() && matches!(phase, Phase::Pending | Phase::Preflight)
            {
                state.reasons = vec![reason];
                finish(state, Phase::Aborted, now, events);
            } else {
                begin_rollback(state, events, Ending::Aborted, vec![reason]);
            }
        }
        CommandKind::Pause => {
            if !matches!(phase, Phase::Progressing | Phase::AwaitingApproval) {
                return Err(());
            }
            let reason = format!("paused by {actor}");
            pause(state, reason.clone());
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
            // Re-apply the intended weight (it may have drifted) and start a fresh interval.
            state.applied_weight = None;
            state.next_analysis_at = None;
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
            if !matches!(
                phase,
                Phase::Progressing | Phase::Paused | Phase::AwaitingApproval
            ) {
                return Err(());
            }
            state.paused_from = None;
            begin_promotion(state, plan, events, format!("promoted manually by {actor}"));
        }
        CommandKind::Approve => {
            if phase != Phase::AwaitingApproval {
                return Err(());
            }
            events.push(event(
                EventKind::Command,
                format!("approved by {actor}"),
                serde_json::Value::Null,
            ));
            begin_step(state, plan, state.step + 1, events);
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
            steps: vec![10.0, 50.0, 100.0],
            interval: Duration::from_secs(60),
            max_duration: Duration::from_secs(600),
            failure_limit: 3,
            fail_safe: FailSafe::Rollback,
        }
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
                    (0, Input::Preflight(Ok(()))),
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
                    (0, Input::Preflight(Ok(()))),
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
                    (0, Input::Preflight(Err("no server".into()))),
                ],
                vec![Preflight, Failed],
            ),
            (
                "last step holds on continue, promotes at max_duration",
                vec![
                    (0, Input::Start),
                    (0, Input::Preflight(Ok(()))),
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
                    (0, Input::Preflight(Ok(()))),
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
                    (0, Input::Preflight(Ok(()))),
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
                    (0, Input::Preflight(Ok(()))),
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
            (0, Input::Preflight(Ok(()))),
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
            (0, Input::Preflight(Ok(()))),
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
        let (pending_apply, _, _) = run(vec![(0, Input::Start), (0, Input::Preflight(Ok(())))]);
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
}
