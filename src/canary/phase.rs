//! The canary lifecycle as a pure state machine.
//!
//! [`next`] takes the persisted [`CanaryState`], one [`Input`] and the time, and returns the new
//! state with the events that explain it. It does no I/O: the controller persists the result
//! (intent first), then performs what the state asks for — applying `intended_weight` whenever
//! it differs from `applied_weight` — and feeds the outcome back as the next input.
//!
//! [`next`] dispatches each input to one short method of [`Change`]; the nouns (state, plan,
//! events and their wording) live in [`crate::lifecycle`].

use crate::judge::{Decision, JudgeState, MetricStatus, Verdict};
use crate::lifecycle::reason;
pub use crate::lifecycle::{
    ApprovalTimeout, CanaryState, CommandKind, Ending, EventDraft, EventKind, FailSafe,
    HookOutcome, HookStage, Phase, Plan, PreflightReport, hook_key,
};
use chrono::{DateTime, Utc};
use std::time::Duration;

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

/// Advances the state by one input. Pure.
pub fn next(
    current: &CanaryState,
    plan: &Plan,
    input: Input,
    now: DateTime<Utc>,
) -> Result<Transition, Refused> {
    let mut c = Change {
        state: current.clone(),
        plan,
        now,
        events: Vec::new(),
    };
    match input {
        Input::Start => c.start()?,
        Input::Preflight(report) => c.preflight(&report)?,
        Input::Applied => c.applied()?,
        Input::Hooks { stage, outcomes } => c.hooks(stage, &outcomes),
        Input::ApprovalTimeout => c.approval_timeout()?,
        Input::BakeAnalysis {
            judge,
            verdict,
            old_version_present,
        } => c.bake(judge, verdict, old_version_present)?,
        Input::ApplyFailed(why) => c.apply_failed(&why),
        Input::Analysis { judge, verdict } => c.analysis(judge, verdict)?,
        Input::Drift { live, expected } => c.drift(live, expected)?,
        Input::Command { kind, actor } => c.command(kind, &actor)?,
        Input::Shutdown => {}
    }
    Ok(Transition {
        state: c.state,
        events: c.events,
    })
}

/// One transition in the making: the state being changed and the events that explain it.
struct Change<'a> {
    state: CanaryState,
    plan: &'a Plan,
    now: DateTime<Utc>,
    events: Vec<EventDraft>,
}

/// Whether analysis runs in the phase (and a person may pause or promote from it).
fn analysing(phase: Phase) -> bool {
    matches!(phase, Phase::Progressing | Phase::AwaitingApproval)
}

/// One method per input. Each checks first whether the input makes sense in the current phase
/// and changes nothing when it does not.
impl Change<'_> {
    fn refuse(&self, action: &str) -> Refused {
        Refused {
            action: action.to_string(),
            phase: self.state.phase,
        }
    }

    fn expect(&self, phase: Phase, action: &str) -> Result<(), Refused> {
        if self.state.phase == phase {
            Ok(())
        } else {
            Err(self.refuse(action))
        }
    }

    fn push(&mut self, event: EventDraft) {
        self.events.push(event);
    }

    fn start(&mut self) -> Result<(), Refused> {
        self.expect(Phase::Pending, "start")?;
        self.state.phase = Phase::Preflight;
        self.push(EventDraft::preflight_started());
        Ok(())
    }

    fn preflight(&mut self, report: &PreflightReport) -> Result<(), Refused> {
        self.expect(Phase::Preflight, "finish preflight of")?;
        self.events
            .extend(report.checks.iter().map(EventDraft::preflight_check));
        self.hook_events(HookStage::PreRollout, &report.hooks);
        match report.failure() {
            None => {
                if !report.hooks.is_empty() {
                    self.state
                        .hooks_done
                        .push(hook_key(HookStage::PreRollout, 0));
                }
                self.push(EventDraft::preflight_passed());
                self.begin_step(0);
            }
            Some(why) => {
                self.push(EventDraft::preflight_failed(&why));
                self.state.reasons = vec![reason::preflight_failed(&why)];
                self.finish(Phase::Failed);
            }
        }
        Ok(())
    }

    fn applied(&mut self) -> Result<(), Refused> {
        if !self.state.needs_apply() {
            return Err(self.refuse("confirm weights of"));
        }
        self.state.applied_weight = Some(self.state.intended_weight);
        self.state.apply_failures = 0;
        self.push(EventDraft::weights_applied(self.state.intended_weight));
        match self.state.phase {
            Phase::Progressing => {
                let now = self.now;
                self.state.step_started_at = Some(now);
                self.state.analysis_started_at.get_or_insert(now);
                self.state.next_analysis_at = Some(add(now, self.plan.interval));
            }
            Phase::Promoting => self.after_promotion(),
            Phase::RollingBack => self.after_rollback(),
            _ => {}
        }
        Ok(())
    }

    fn hooks(&mut self, stage: HookStage, outcomes: &[HookOutcome]) {
        self.hook_events(stage, outcomes);
        let failed = outcomes.iter().find(|o| !o.ok);
        if let (HookStage::PreStep, Some(f)) = (stage, failed) {
            let why = reason::pre_step_hook_failed(f);
            self.pause(why.clone());
            self.push(EventDraft::paused_by_hook(&why));
            return;
        }
        self.state.hooks_done.push(hook_key(stage, self.state.step));
        match (stage, self.state.phase) {
            (HookStage::PostPromotion, Phase::Promoting) => self.after_promotion(),
            (HookStage::PostRollback, Phase::RollingBack) => self.after_rollback(),
            _ => {}
        }
    }

    fn approval_timeout(&mut self) -> Result<(), Refused> {
        self.expect(Phase::AwaitingApproval, "time out the approval of")?;
        let step = self.state.awaiting_step.unwrap_or(self.state.step) + 1;
        let why = reason::approval_timed_out(step);
        let policy = self.plan.on_approval_timeout;
        self.push(EventDraft::approval_timed_out(step, &why, policy));
        match policy {
            ApprovalTimeout::Rollback => self.begin_rollback(Ending::Aborted, vec![why]),
            ApprovalTimeout::Hold => self.state.approval_deadline = None,
        }
        Ok(())
    }

    fn apply_failed(&mut self, why: &str) {
        self.state.apply_failures += 1;
        let attempts = self.state.apply_failures;
        // One event when the trouble starts, then one every 20 attempts: an outage must not
        // flood the log.
        if attempts == 1 || attempts.is_multiple_of(20) {
            self.push(EventDraft::router_error(
                self.state.intended_weight,
                attempts,
                why,
            ));
        }
    }

    fn drift(&mut self, live: f64, expected: f64) -> Result<(), Refused> {
        if self.state.phase.is_terminal() {
            return Err(self.refuse("pause"));
        }
        let why = reason::drift(live, expected);
        self.push(EventDraft::drift_detected(&why, live, expected));
        self.pause(why.clone());
        self.push(EventDraft::paused_by_drift(
            &why,
            self.state.intended_weight,
        ));
        Ok(())
    }

    fn bake(
        &mut self,
        judge: JudgeState,
        verdict: Verdict,
        old_version_present: bool,
    ) -> Result<(), Refused> {
        self.expect(Phase::Baking, "bake")?;
        self.state.bake_intervals += 1;
        self.state.bake_judge = Some(judge);
        self.push(EventDraft::bake_analysis(
            self.state.bake_intervals,
            &verdict,
        ));
        let regression = verdict.decision == Decision::Rollback;
        let reasons: Vec<String> = verdict
            .reasons
            .iter()
            .map(|r| reason::bake_regression(r))
            .collect();
        self.state.last_verdict = Some(verdict);
        if regression {
            self.bake_regression(reasons, old_version_present);
        } else if self.state.bake_until.is_some_and(|until| self.now >= until) {
            self.state.reasons.push(reason::bake_clean(self.plan.bake));
            self.finish(Phase::Succeeded);
        } else {
            self.state.next_analysis_at = self.next_window();
        }
        Ok(())
    }

    /// A regression during the bake: roll back to the old version, or, when its servers are
    /// gone, fail loudly.
    fn bake_regression(&mut self, reasons: Vec<String>, old_version_present: bool) {
        if old_version_present {
            self.begin_rollback(Ending::RolledBack, reasons);
            return;
        }
        self.push(EventDraft::bake_regression(&reasons));
        self.state.reasons = reasons;
        self.state.ending = None;
        self.finish(Phase::Failed);
    }

    fn analysis(&mut self, judge: JudgeState, verdict: Verdict) -> Result<(), Refused> {
        let s = &self.state;
        if !analysing(s.phase) || s.needs_apply() || s.next_analysis_at.is_none() {
            return Err(self.refuse("analyse"));
        }
        self.state.intervals += 1;
        self.state.judge = judge;
        let s = &self.state;
        let event = EventDraft::analysis(s.intervals, s.step, s.intended_weight, &verdict);
        self.push(event);
        let decision = verdict.decision;
        let reasons = verdict.reasons.clone();
        let open: Vec<String> = verdict
            .metrics
            .iter()
            .filter(|m| !m.dry_run && m.status != MetricStatus::Pass)
            .map(|m| m.name.clone())
            .collect();
        self.state.last_verdict = Some(verdict);
        let next_due = self.next_window();
        match decision {
            Decision::Rollback if !self.plan.auto_rollback => self.hold_regression(reasons),
            Decision::Rollback => self.begin_rollback(Ending::RolledBack, reasons),
            Decision::Inconclusive => self.inconclusive(&reasons, next_due),
            Decision::Continue | Decision::Promote => self.passed(decision, &open, next_due),
        }
        Ok(())
    }

    /// A regression where automatic rollback is off: pause for a person.
    fn hold_regression(&mut self, reasons: Vec<String>) {
        let why = reason::regression_without_auto_rollback(&reasons);
        self.state.reasons = reasons;
        self.pause(why.clone());
        self.push(EventDraft::paused_by_regression(&why));
    }

    /// No usable analysis: wait for the next interval, or let the fail-safe act after too many.
    fn inconclusive(&mut self, reasons: &[String], next_due: Option<DateTime<Utc>>) {
        self.state.unusable_streak += 1;
        let streak = self.state.unusable_streak;
        if streak < self.plan.failure_limit {
            self.state.next_analysis_at = next_due;
            return;
        }
        let why = reason::unusable(streak, reasons);
        let policy = self.plan.fail_safe;
        self.push(EventDraft::fail_safe(&why, policy, streak));
        match policy {
            FailSafe::Rollback => {
                self.begin_rollback(Ending::Failed, vec![reason::fail_safe(&why)]);
            }
            FailSafe::Hold => {
                self.pause(reason::fail_safe(&why));
                self.push(EventDraft::paused_by_fail_safe(&why));
            }
        }
    }

    /// The interval passed: next step, promotion, or another interval at this weight.
    fn passed(&mut self, decision: Decision, open: &[String], next_due: Option<DateTime<Utc>>) {
        self.state.unusable_streak = 0;
        let started = self.state.analysis_started_at.unwrap_or(self.now);
        let out_of_time = self.now >= add(started, self.plan.max_duration);
        let long_enough = self.now >= add(started, self.plan.min_duration);
        // Analysis goes on at the current weight unless a new step resets it.
        self.state.next_analysis_at = next_due;
        if self.state.phase == Phase::AwaitingApproval {
            // Waiting for a person: nothing moves until the approval.
        } else if self.state.step < self.plan.last_analysis_step() {
            self.begin_step(self.state.step + 1);
        } else if decision == Decision::Promote && long_enough {
            self.begin_promotion(reason::CONFIDENT.into());
        } else if out_of_time {
            self.begin_promotion(reason::out_of_time(self.plan.max_duration, open));
        }
    }

    fn command(&mut self, kind: CommandKind, actor: &str) -> Result<(), Refused> {
        if !self.command_allowed(kind) {
            return Err(self.refuse(&kind.to_string()));
        }
        match kind {
            CommandKind::Abort => self.abort(actor),
            CommandKind::Pause => {
                let why = reason::paused_by(actor);
                self.pause(why.clone());
                self.push(EventDraft::paused_by_person(&why));
            }
            CommandKind::Resume => self.resume(actor),
            CommandKind::Promote => self.promote(actor),
            CommandKind::Approve => self.approve(actor),
        }
        for e in &mut self.events {
            e.actor = actor.to_string();
        }
        Ok(())
    }

    /// Whether a person's command makes sense in the current phase.
    fn command_allowed(&self, kind: CommandKind) -> bool {
        let phase = self.state.phase;
        if phase.is_terminal() {
            return false;
        }
        match kind {
            CommandKind::Abort => phase != Phase::RollingBack,
            CommandKind::Pause => analysing(phase),
            CommandKind::Resume => phase == Phase::Paused,
            // From a pause only where a promotion could have come from anyway: not from a
            // paused bake (already promoted) or a paused rollback (the judge said no).
            CommandKind::Promote => {
                analysing(phase)
                    || (phase == Phase::Paused && self.state.paused_from.is_some_and(analysing))
            }
            CommandKind::Approve => phase == Phase::AwaitingApproval,
        }
    }

    fn abort(&mut self, actor: &str) {
        let why = reason::aborted_by(actor);
        self.state.awaiting_step = None;
        let untouched = self.state.applied_weight.is_none()
            && matches!(self.state.phase, Phase::Pending | Phase::Preflight);
        if untouched {
            self.state.reasons = vec![why];
            self.finish(Phase::Aborted);
        } else {
            self.begin_rollback(Ending::Aborted, vec![why]);
        }
    }

    fn resume(&mut self, actor: &str) {
        let now = self.now;
        let s = &mut self.state;
        let back = s.paused_from.take().unwrap_or(Phase::Progressing);
        s.phase = back;
        s.pause_reason = None;
        s.unusable_streak = 0;
        // Re-apply the intended weight (it may have drifted); analysis starts afresh.
        s.applied_weight = None;
        s.next_analysis_at = match back {
            // Progressing schedules its next analysis when the weight is confirmed.
            Phase::Progressing => None,
            _ => Some(add(now, self.plan.interval)),
        };
        // A pending approval gets back the time it spent paused.
        if let (Some(deadline), Some(paused)) = (s.approval_deadline, s.paused_at) {
            s.approval_deadline = Some(deadline + (now - paused).max(chrono::Duration::zero()));
        }
        s.paused_at = None;
        let intended = s.intended_weight;
        self.push(EventDraft::resumed(actor, intended));
    }

    fn promote(&mut self, actor: &str) {
        self.state.paused_from = None;
        // A person promoting is also the approval of the promotion.
        self.state.approved.push(self.plan.last_step());
        self.begin_promotion(reason::promoted_by(actor));
    }

    fn approve(&mut self, actor: &str) {
        let step = self
            .state
            .awaiting_step
            .take()
            .unwrap_or(self.state.step + 1);
        self.state.approved.push(step);
        self.state.approval_deadline = None;
        self.push(EventDraft::approved(actor, step, self.plan.steps.len()));
        if step >= self.plan.last_step() {
            let why = self.state.reasons.first().cloned();
            let why = why.unwrap_or_else(|| reason::APPROVED.into());
            self.begin_promotion(reason::approved_by(&why, actor));
        } else {
            self.begin_step(step);
        }
    }
}

/// The moves the inputs share: steps, approvals, promotion, rollback, pause and finish.
impl Change<'_> {
    fn begin_step(&mut self, step: usize) {
        let weight = self.plan.steps[step];
        if weight >= 100.0 {
            self.begin_promotion(reason::EVERY_STEP_PASSED.into());
            return;
        }
        if self.plan.gated(step) && !self.state.approved.contains(&step) {
            self.await_approval(step);
            return;
        }
        let s = &mut self.state;
        s.step = step;
        s.intended_weight = weight;
        s.step_started_at = None;
        s.next_analysis_at = None;
        s.phase = Phase::Progressing;
        self.push(EventDraft::step_started(
            step,
            self.plan.steps.len(),
            weight,
        ));
    }

    /// Holds before a gated step. Analysis goes on at the current weight (a regression still
    /// rolls back); the caller has set `next_analysis_at`.
    fn await_approval(&mut self, step: usize) {
        self.state.phase = Phase::AwaitingApproval;
        self.state.awaiting_step = Some(step);
        self.state.approval_deadline = self.plan.approval_timeout.map(|t| add(self.now, t));
        let event = EventDraft::awaiting_approval(self.plan, step, self.state.approval_deadline);
        self.push(event);
    }

    fn begin_promotion(&mut self, why: String) {
        let last = self.plan.last_step();
        if self.plan.gated(last) && !self.state.approved.contains(&last) {
            self.state.reasons = vec![why];
            self.await_approval(last);
            return;
        }
        let s = &mut self.state;
        s.phase = Phase::Promoting;
        s.step = last;
        s.intended_weight = 100.0;
        s.next_analysis_at = None;
        s.awaiting_step = None;
        s.approval_deadline = None;
        self.push(EventDraft::promoting(&why));
        self.state.reasons = vec![why];
    }

    /// The canary has all traffic: run the post-promotion hooks, then bake or finish.
    fn after_promotion(&mut self) {
        if self
            .state
            .hooks_pending(self.plan, HookStage::PostPromotion)
        {
            return;
        }
        if self.plan.bake.is_zero() {
            self.finish(Phase::Succeeded);
            return;
        }
        self.state.phase = Phase::Baking;
        self.state.bake_until = Some(add(self.now, self.plan.bake));
        self.state.next_analysis_at = Some(add(self.now, self.plan.interval));
        let promoted = EventDraft::promoted_before_bake(&self.state.reasons);
        self.push(promoted);
        self.push(EventDraft::bake_started(
            self.plan.bake,
            self.state.bake_until,
        ));
    }

    /// Traffic is back on the baseline: run the post-rollback hooks, then finish.
    fn after_rollback(&mut self) {
        if self.state.hooks_pending(self.plan, HookStage::PostRollback) {
            return;
        }
        let phase = self.state.ending.unwrap_or(Ending::RolledBack).phase();
        self.finish(phase);
    }

    fn begin_rollback(&mut self, ending: Ending, mut reasons: Vec<String>) {
        let plan = self.plan;
        let step = self.state.step;
        // A rolling release takes back only the batch that failed the judge; a person aborting
        // or the fail-safe return everything.
        let partial = ending == Ending::RolledBack && step >= 1 && !plan.batches.is_empty();
        let batch = partial.then(|| plan.batches.get(step)).flatten();
        if let Some((new, old)) = batch {
            reasons.push(reason::batch_rolled_back(step, new, old));
        }
        let s = &mut self.state;
        s.phase = Phase::RollingBack;
        s.ending = Some(ending);
        s.intended_weight = if partial { plan.steps[step - 1] } else { 0.0 };
        s.next_analysis_at = None;
        s.paused_from = None;
        s.awaiting_step = None;
        s.approval_deadline = None;
        s.reasons = reasons.clone();
        let target = s.intended_weight;
        self.push(EventDraft::rolling_back(target, &reasons, ending, batch));
    }

    fn finish(&mut self, phase: Phase) {
        self.state.phase = phase;
        self.state.finished_at = Some(self.now);
        self.state.next_analysis_at = None;
        let event = EventDraft::finished(&self.state);
        self.push(event);
    }

    fn pause(&mut self, why: String) {
        let s = &mut self.state;
        if s.phase != Phase::Paused {
            s.paused_from = Some(s.phase);
            s.paused_at = Some(self.now);
        }
        s.phase = Phase::Paused;
        s.pause_reason = Some(why);
        s.next_analysis_at = None;
    }

    fn hook_events(&mut self, stage: HookStage, outcomes: &[HookOutcome]) {
        let events = outcomes.iter().map(|o| EventDraft::hook(stage, o));
        self.events.extend(events);
    }

    /// When the next analysis is due: one interval after this one, or, when the controller is
    /// behind (after downtime), one interval from now. Windows never overlap, so no data is
    /// judged twice.
    fn next_window(&self) -> Option<DateTime<Utc>> {
        let (interval, now) = (self.plan.interval, self.now);
        self.state.next_analysis_at.map(|t| {
            let next = add(t, interval);
            if next <= now {
                add(now, interval)
            } else {
                next
            }
        })
    }
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
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
    fn no_early_promotion_before_min_duration() {
        let plan = Plan {
            min_duration: Duration::from_secs(300),
            ..plan()
        };
        let mut state = CanaryState::new(judge());
        let mut phase_at = Vec::new();
        for (secs, input) in [
            (0, Input::Start),
            (0, ok_preflight()),
            (0, Input::Applied),
            (60, verdict(Decision::Continue)),
            (60, Input::Applied),
            (120, verdict(Decision::Promote)),
            (240, verdict(Decision::Promote)),
            (300, verdict(Decision::Promote)),
        ] {
            state = next(&state, &plan, input, t(secs)).expect("accepted").state;
            phase_at.push((secs, state.phase));
        }
        // Confident at 120 s and 240 s, but the analysis has lasted less than 300 s: it goes on.
        assert_eq!(phase_at[5], (120, Phase::Progressing));
        assert_eq!(phase_at[6], (240, Phase::Progressing));
        assert_eq!(phase_at[7], (300, Phase::Promoting));
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
