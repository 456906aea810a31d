//! The event log's vocabulary: what kind of thing happened, and the sentence each kind says.
//!
//! The phase machine decides *what* happened; the constructors here own the *wording*, so the
//! text people read in the log, the API and the notifications is written in one place. Every
//! constructor makes a `canaryd` event; a person's command sets the actor afterwards.

use super::hooks::{HookOutcome, HookStage};
use super::phase::{Ending, FailSafe, Phase};
use super::preflight::CheckResult;
use super::spec::{ApprovalTimeout, CanarySpec};
use super::state::{CanaryState, Plan};
use crate::judge::{Decision, Verdict};
use crate::time::format_duration;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

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

/// A weight as written in messages (`12.5`, `50`).
fn weight(w: f64) -> String {
    crate::judge::fmt_num(w)
}

impl EventDraft {
    /// A `canaryd` event.
    pub fn new(kind: EventKind, message: impl Into<String>, data: Value) -> EventDraft {
        EventDraft {
            kind,
            actor: "canaryd".into(),
            message: message.into(),
            data,
        }
    }

    /// A person (`actor`) submitted the canary; `rules` and `hash` name the pinned rule set.
    pub fn submitted(actor: &str, spec: &CanarySpec, rules: &str, hash: &str) -> EventDraft {
        EventDraft {
            actor: actor.to_string(),
            ..Self::new(
                EventKind::Submitted,
                format!(
                    "submitted: {} on {}/{} with rules {rules} ({hash})",
                    spec.service, spec.router, spec.target.backend
                ),
                json!({"metadata": spec.metadata}),
            )
        }
    }

    /// Preflight began.
    pub fn preflight_started() -> EventDraft {
        Self::new(
            EventKind::PreflightStarted,
            "preflight: checking the router, the metrics and the rule set",
            Value::Null,
        )
    }

    /// One preflight check's result.
    pub fn preflight_check(c: &CheckResult) -> EventDraft {
        let verdict = if c.ok { "ok" } else { "FAILED" };
        Self::new(
            EventKind::PreflightCheck,
            format!("preflight check {}: {verdict} ({})", c.check, c.detail),
            json!({"check": c.check, "ok": c.ok, "detail": c.detail}),
        )
    }

    /// Every preflight check passed.
    pub fn preflight_passed() -> EventDraft {
        Self::new(EventKind::PreflightPassed, "preflight passed", Value::Null)
    }

    /// Preflight failed before any weight changed.
    pub fn preflight_failed(reason: &str) -> EventDraft {
        Self::new(
            EventKind::PreflightFailed,
            format!("preflight failed: {reason}; no weight was changed"),
            json!({"reason": reason}),
        )
    }

    /// One hook's outcome at a stage; its output's last line ends the message.
    pub fn hook(stage: HookStage, o: &HookOutcome) -> EventDraft {
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
        Self::new(
            kind,
            format!(
                "{stage} hook {:?} {verdict} ({}, {} ms){tail}",
                o.name, o.detail, o.millis
            ),
            json!({
                "stage": stage,
                "hook": o.name,
                "ok": o.ok,
                "detail": o.detail,
                "output": o.output,
                "millis": o.millis,
            }),
        )
    }

    /// A step began (`step` is its index in the plan).
    pub fn step_started(step: usize, steps: usize, weight_now: f64) -> EventDraft {
        Self::new(
            EventKind::StepStarted,
            format!(
                "step {} of {steps}: canary weight {}%",
                step + 1,
                weight(weight_now)
            ),
            json!({"step": step + 1, "steps": steps, "weight": weight_now}),
        )
    }

    /// A gated step (index `step`) waits for a person, until `deadline` if the plan has one.
    pub fn awaiting_approval(
        plan: &Plan,
        step: usize,
        deadline: Option<DateTime<Utc>>,
    ) -> EventDraft {
        let limit = match (plan.approval_timeout, plan.on_approval_timeout) {
            (None, _) => String::new(),
            (Some(t), ApprovalTimeout::Rollback) => format!(
                "; without it traffic returns to the baseline in {}",
                format_duration(t)
            ),
            (Some(t), ApprovalTimeout::Hold) => {
                format!("; it times out in {} and then holds", format_duration(t))
            }
        };
        Self::new(
            EventKind::AwaitingApproval,
            format!(
                "awaiting approval before step {} of {} (canary weight {}%): run `canaryd approve`{limit}",
                step + 1,
                plan.steps.len(),
                weight(plan.steps[step])
            ),
            json!({"step": step + 1, "weight": plan.steps[step], "deadline": deadline}),
        )
    }

    /// A pending approval (1-based `step`) timed out; `why` says so, `policy` says what follows.
    pub fn approval_timed_out(step: usize, why: &str, policy: ApprovalTimeout) -> EventDraft {
        let (then, name) = match policy {
            ApprovalTimeout::Rollback => ("returning all traffic to the baseline", "rollback"),
            ApprovalTimeout::Hold => (
                "holding at the current weights until someone approves or aborts",
                "hold",
            ),
        };
        Self::new(
            EventKind::ApprovalTimedOut,
            format!("{why}: {then}"),
            json!({"step": step, "policy": name}),
        )
    }

    /// The router confirmed a weight.
    pub fn weights_applied(weight_now: f64) -> EventDraft {
        Self::new(
            EventKind::WeightsApplied,
            format!("router confirmed canary weight {}%", weight(weight_now)),
            json!({"weight": weight_now}),
        )
    }

    /// Applying a weight failed (`attempts` in a row so far).
    pub fn router_error(weight_now: f64, attempts: u32, reason: &str) -> EventDraft {
        Self::new(
            EventKind::RouterError,
            format!(
                "could not apply canary weight {}% (attempt {attempts}): {reason}; holding and retrying",
                weight(weight_now)
            ),
            json!({"reason": reason, "weight": weight_now, "attempts": attempts}),
        )
    }

    /// The live weights differ from what canaryd applied; `reason` is [`reason::drift`]'s.
    ///
    /// [`reason::drift`]: super::reason::drift
    pub fn drift_detected(reason: &str, live: f64, expected: f64) -> EventDraft {
        Self::new(
            EventKind::DriftDetected,
            reason,
            json!({"live": live, "applied": expected}),
        )
    }

    /// Paused after a `pre_step` hook failed.
    pub fn paused_by_hook(reason: &str) -> EventDraft {
        Self::paused(
            format!("paused: {reason}; resume to run the hooks again"),
            reason,
        )
    }

    /// Paused after drift; resuming re-applies `intended`.
    pub fn paused_by_drift(reason: &str, intended: f64) -> EventDraft {
        Self::paused(
            format!("paused: {reason}; resume to re-apply {}%", weight(intended)),
            reason,
        )
    }

    /// Paused on a regression because automatic rollback is off.
    pub fn paused_by_regression(reason: &str) -> EventDraft {
        Self::paused(
            format!("paused: {reason}; `canaryd abort` rolls back, `resume` carries on"),
            reason,
        )
    }

    /// Paused by the fail-safe's `hold` policy.
    pub fn paused_by_fail_safe(why: &str) -> EventDraft {
        Self::new(
            EventKind::Paused,
            format!("paused by the fail-safe: {why}"),
            Value::Null,
        )
    }

    /// Paused by a person; `reason` is [`reason::paused_by`]'s.
    ///
    /// [`reason::paused_by`]: super::reason::paused_by
    pub fn paused_by_person(reason: &str) -> EventDraft {
        Self::new(EventKind::Paused, reason, Value::Null)
    }

    fn paused(message: String, reason: &str) -> EventDraft {
        Self::new(EventKind::Paused, message, json!({"reason": reason}))
    }

    /// A person resumed; the intended weight is applied again.
    pub fn resumed(actor: &str, intended: f64) -> EventDraft {
        Self::new(
            EventKind::Resumed,
            format!(
                "resumed by {actor}: re-applying canary weight {}%",
                weight(intended)
            ),
            Value::Null,
        )
    }

    /// A person approved the step at index `step`.
    pub fn approved(actor: &str, step: usize, steps: usize) -> EventDraft {
        Self::new(
            EventKind::Command,
            format!("approved by {actor}: step {} of {steps}", step + 1),
            json!({"step": step + 1}),
        )
    }

    /// An interval was analysed (`step` is the index in the plan).
    pub fn analysis(interval: u32, step: usize, weight_now: f64, verdict: &Verdict) -> EventDraft {
        let summary = format!(
            "interval {interval} at {}%: {}",
            weight(weight_now),
            verdict.decision
        );
        let kind = if verdict.decision == Decision::Inconclusive {
            EventKind::AnalysisInconclusive
        } else {
            EventKind::Analysis
        };
        Self::new(
            kind,
            with_reasons(summary, &verdict.reasons),
            json!({
                "interval": interval,
                "step": step + 1,
                "weight": weight_now,
                "verdict": verdict,
            }),
        )
    }

    /// A bake interval was analysed.
    pub fn bake_analysis(interval: u32, verdict: &Verdict) -> EventDraft {
        Self::new(
            EventKind::BakeAnalysis,
            with_reasons(
                format!("bake interval {interval}: {}", verdict.decision),
                &verdict.reasons,
            ),
            json!({"interval": interval, "verdict": verdict}),
        )
    }

    /// A regression during the bake with no old version left to roll back to.
    pub fn bake_regression(reasons: &[String]) -> EventDraft {
        Self::new(
            EventKind::BakeRegression,
            format!(
                "{}; the old version's servers are gone, so canaryd cannot roll back: act now",
                reasons.join("; ")
            ),
            json!({"reasons": reasons}),
        )
    }

    /// The fail-safe acted after `streak` unusable intervals.
    pub fn fail_safe(why: &str, policy: FailSafe, streak: u32) -> EventDraft {
        let (then, name) = match policy {
            FailSafe::Rollback => ("returning all traffic to the baseline", "rollback"),
            FailSafe::Hold => ("holding the current weights and pausing", "hold"),
        };
        Self::new(
            EventKind::FailSafe,
            format!("fail-safe: {why}; {then}"),
            json!({"policy": name, "streak": streak}),
        )
    }

    /// Promotion began.
    pub fn promoting(why: &str) -> EventDraft {
        Self::new(
            EventKind::Promoting,
            format!("promoting: {why}"),
            json!({"weight": 100.0}),
        )
    }

    /// Promoted, with a bake to follow (the old version stays drained).
    pub fn promoted_before_bake(reasons: &[String]) -> EventDraft {
        Self::new(
            EventKind::Promoted,
            "promoted: the canary serves all traffic; the old version stays drained (weight 0) until the bake ends",
            json!({"weight": 100.0, "reasons": reasons}),
        )
    }

    /// The post-promotion bake began.
    pub fn bake_started(bake: Duration, until: Option<DateTime<Utc>>) -> EventDraft {
        Self::new(
            EventKind::BakeStarted,
            format!(
                "baking for {}: judging the new version against the old version's metrics from before the release",
                format_duration(bake)
            ),
            json!({"until": until}),
        )
    }

    /// A rollback began towards `target` percent; `batch` is a rolling release's failing batch
    /// (servers out, servers back).
    pub fn rolling_back(
        target: f64,
        reasons: &[String],
        ending: Ending,
        batch: Option<&(Vec<String>, Vec<String>)>,
    ) -> EventDraft {
        Self::new(
            EventKind::RollingBack,
            format!("rolling back: {}", reasons.join("; ")),
            json!({
                "weight": target,
                "reasons": reasons,
                "ending": ending,
                "servers_out": batch.map(|b| &b.0),
                "servers_back": batch.map(|b| &b.1),
            }),
        )
    }

    /// canaryd can never run the canary (`why`), so it failed with its traffic left as it was.
    pub fn unrunnable(why: &str, state: &CanaryState) -> EventDraft {
        let weight = state
            .applied_weight
            .map_or("unknown".to_string(), |w| format!("{w}%"));
        Self::new(
            EventKind::Failed,
            format!(
                "failed: canaryd cannot run this canary: {why}; its traffic is left as it was (canary weight {weight}): check the load balancer"
            ),
            json!({"reasons": state.reasons, "weight": state.applied_weight}),
        )
    }

    /// The canary reached its terminal phase (`state.phase`).
    pub fn finished(state: &CanaryState) -> EventDraft {
        let phase = state.phase;
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
            Phase::Failed if state.ending.is_none() => {
                format!("failed: {}", state.reasons.join("; "))
            }
            _ => what.to_string(),
        };
        Self::new(
            kind,
            message,
            json!({"reasons": state.reasons, "weight": state.intended_weight}),
        )
    }
}

/// `summary`, then `: ` and the reasons when there are any.
fn with_reasons(summary: String, reasons: &[String]) -> String {
    if reasons.is_empty() {
        summary
    } else {
        format!("{summary}: {}", reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{JudgeState, MetricVerdict};
    use std::time::Duration;

    fn plan() -> Plan {
        let mut plan = Plan::simple(
            vec![12.5, 50.0, 100.0],
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        plan.approval_timeout = Some(Duration::from_secs(1800));
        plan
    }

    /// The wording people, tests and notification templates rely on, byte for byte (weights
    /// keep three significant digits: `12.5`, `50.0`).
    #[test]
    fn constructors_keep_the_established_wording() {
        let cases = [
            (
                EventDraft::step_started(0, 3, 12.5),
                EventKind::StepStarted,
                "step 1 of 3: canary weight 12.5%",
            ),
            (
                EventDraft::awaiting_approval(&plan(), 1, None),
                EventKind::AwaitingApproval,
                "awaiting approval before step 2 of 3 (canary weight 50.0%): run `canaryd approve`; without it traffic returns to the baseline in 30m",
            ),
            (
                EventDraft::router_error(50.0, 20, "connection refused"),
                EventKind::RouterError,
                "could not apply canary weight 50.0% (attempt 20): connection refused; holding and retrying",
            ),
            (
                EventDraft::fail_safe("no data", FailSafe::Hold, 5),
                EventKind::FailSafe,
                "fail-safe: no data; holding the current weights and pausing",
            ),
            (
                EventDraft::approval_timed_out(
                    2,
                    "the approval for step 2 timed out",
                    ApprovalTimeout::Rollback,
                ),
                EventKind::ApprovalTimedOut,
                "the approval for step 2 timed out: returning all traffic to the baseline",
            ),
            (
                EventDraft::resumed("alice", 50.0),
                EventKind::Resumed,
                "resumed by alice: re-applying canary weight 50.0%",
            ),
        ];
        for (event, kind, message) in cases {
            assert_eq!((event.kind, event.message.as_str()), (kind, message));
            assert_eq!(event.actor, "canaryd");
        }
    }

    #[test]
    fn an_analysis_names_its_decision_and_reasons_and_inconclusive_is_its_own_kind() {
        let verdict = |decision, reasons: Vec<String>| Verdict {
            decision,
            metrics: Vec::<MetricVerdict>::new(),
            reasons,
        };
        let e = EventDraft::analysis(3, 1, 50.0, &verdict(Decision::Continue, vec![]));
        assert_eq!(e.kind, EventKind::Analysis);
        assert_eq!(e.message, "interval 3 at 50.0%: continue");
        assert_eq!(e.data["step"], 2);
        let e = EventDraft::analysis(
            4,
            1,
            50.0,
            &verdict(
                Decision::Inconclusive,
                vec!["no data".into(), "slow".into()],
            ),
        );
        assert_eq!(e.kind, EventKind::AnalysisInconclusive);
        assert_eq!(
            e.message,
            "interval 4 at 50.0%: inconclusive: no data; slow"
        );
    }

    #[test]
    fn the_final_event_follows_the_phase_and_how_the_rollback_ended() {
        let rules = crate::rules::parse_rule_set(
            "t.yaml",
            "name: t\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'x{ {{selector}} }'\n    max_increase: 50%\n",
        )
        .unwrap();
        let mut state = CanaryState::new(JudgeState::new(&rules));
        state.phase = Phase::RolledBack;
        state.intended_weight = 25.0;
        let e = EventDraft::finished(&state);
        assert_eq!(e.kind, EventKind::RolledBack);
        assert_eq!(
            e.message,
            "rolled back: the failing batch is out and its old servers are back"
        );
        state.phase = Phase::Failed;
        state.reasons = vec!["preflight failed: router: down".into()];
        let e = EventDraft::finished(&state);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (EventKind::Failed, "failed: preflight failed: router: down")
        );
    }
}
