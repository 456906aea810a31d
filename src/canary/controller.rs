//! The controller: executes one canary's phase machine, one idempotent step at a time.
//!
//! The crash-safety protocol, kept by every step:
//! 1. decide the transition ([`phase::next`], pure);
//! 2. persist the new state (the intent: phase and weights) with its events, atomically;
//! 3. apply it to the router;
//! 4. read the weights back;
//! 5. persist "applied".
//!
//! On start it reconciles the persisted intent with the router's real weights: a crash between
//! 3 and 5 finds the intent live and just records it; a crash between 2 and 3 finds the old
//! weights and applies again; anything else means someone changed the weights, and the canary
//! pauses and says so.

use super::hooks::{self, HookContext};
use super::phase::{self, Input, Refused};
use super::preflight;
use super::profile::Profile;
use super::spec::StrategyKind;
use super::{Deps, plan_for};
use crate::judge::{self, Decision, IntervalData, JudgeState, MetricStatus, Verdict};
use crate::lifecycle::{
    CanaryState, CommandKind, EventDraft, HookOutcome, HookStage, Phase, Plan, PreflightReport,
    reason,
};
use crate::metrics::{self, ArmSelectors};
use crate::router::{RouterError, Stable, TrafficRouter, weights_match};
use crate::rules::RuleSet;
use crate::store::{CanaryRecord, StoreError};
use crate::telemetry::{KindLabel, OutcomeLabel, metrics as self_metrics};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

/// A person's command for a running canary, with where to send the result.
pub struct CommandMsg {
    /// Which command.
    pub kind: CommandKind,
    /// Who sent it.
    pub actor: String,
    /// The outcome: the canary after the command, or why it was not carried out.
    pub reply: oneshot::Sender<Result<CanaryRecord, CommandFailure>>,
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    /// Not possible in the canary's phase.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The new state could not be stored; nothing was done.
    #[error("the canary's state could not be stored; nothing was done: {0}")]
    NotStored(StoreError),
}

/// Why a step changed nothing.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// The phase machine refused the input.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The new state could not be stored.
    #[error(transparent)]
    NotStored(#[from] StoreError),
}

/// Why the intended weight is not live.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    /// The router refused or did not answer.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The router answered, but reads back another weight.
    #[error("read back canary weight {live}% after setting {intended}%")]
    ReadBack {
        /// What the router reports.
        live: f64,
        /// What canaryd set.
        intended: f64,
    },
}

/// How long to wait before retrying after a router or store failure.
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// The longest wait between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// How long after the end of an analysis window the queries run, so the last scrape is in.
pub const QUERY_DELAY: Duration = Duration::from_secs(1);

/// Why the controller stopped without finishing the canary.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The canary is not in the store.
    #[error("canary {0} not found")]
    NotFound(i64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pinned rule set or the spec cannot be used.
    #[error("canary {id}: {reason}")]
    Invalid {
        /// The canary.
        id: i64,
        /// Why.
        reason: String,
    },
}

/// One canary's controller.
struct Controller {
    deps: Arc<Deps>,
    record: CanaryRecord,
    plan: Plan,
    rules: RuleSet,
    selectors: ArmSelectors,
    router: Arc<dyn TrafficRouter>,
}

/// Runs a canary until it is finished, `cancel` fires, or the command channel closes.
pub async fn run(
    deps: Arc<Deps>,
    id: i64,
    commands: &mut mpsc::Receiver<CommandMsg>,
    cancel: CancellationToken,
) -> Result<(), ControllerError> {
    let record = deps
        .store
        .get(id)
        .await?
        .ok_or(ControllerError::NotFound(id))?;
    let span = tracing::info_span!("canary", canary = id, service = %record.spec.service);
    async move {
        let mut controller = Controller::new(deps, record)?;
        controller.run(commands, cancel).await
    }
    .instrument(span)
    .await
}

/// Ends a canary its controller can never run, as `failed`, saying why; its weights are left as
/// they are (canaryd cannot reach its router any more, or cannot judge it).
pub async fn fail_unrunnable(deps: &Deps, id: i64, why: &str) -> Result<(), StoreError> {
    let Some(record) = deps.store.get(id).await? else {
        return Ok(());
    };
    if record.state.phase.is_terminal() {
        return Ok(());
    }
    let now = Utc::now();
    let mut state = record.state.clone();
    state.phase = Phase::Failed;
    state.finished_at = Some(now);
    state.next_analysis_at = None;
    state.reasons = vec![reason::unrunnable(why)];
    let event = EventDraft::unrunnable(why, &state);
    deps.store.transition(id, &state, &[event], now).await
}

/// What the controller does next.
enum Next {
    Step(Input),
    Apply,
    Preflight,
    RunHooks(HookStage),
    Analyse(DateTime<Utc>),
    BakeAnalyse(DateTime<Utc>),
    WaitUntil(DateTime<Utc>),
    WaitForCommand,
    Done,
}

impl Controller {
    fn new(deps: Arc<Deps>, record: CanaryRecord) -> Result<Self, ControllerError> {
        let id = record.id;
        let invalid = |reason: String| ControllerError::Invalid { id, reason };
        let rules = record.rules.parse().map_err(|errs| {
            invalid(format!(
                "pinned rule set does not parse: {}",
                errs.first().map(|e| e.to_string()).unwrap_or_default()
            ))
        })?;
        let selectors = record
            .spec
            .selectors()
            .map_err(|e| invalid(e.to_string()))?;
        let router = deps
            .routers
            .get(&record.spec.router)
            .cloned()
            .ok_or_else(|| invalid(format!("router {:?} is not configured", record.spec.router)))?;
        let plan = plan_for(&record.spec, &deps.analysis);
        Ok(Controller {
            deps,
            record,
            plan,
            rules,
            selectors,
            router,
        })
    }

    fn state(&self) -> &CanaryState {
        &self.record.state
    }

    async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<CommandMsg>,
        cancel: CancellationToken,
    ) -> Result<(), ControllerError> {
        self.reconcile_on_start().await;
        loop {
            self.drain_commands(commands).await;
            let next = self.next_action(Utc::now());
            let wait_until = match next {
                Next::Done => return Ok(()),
                Next::Step(input) => {
                    let _ = self.step(input).await;
                    continue;
                }
                Next::Preflight => {
                    let report = self.preflight().await;
                    let _ = self.step(Input::Preflight(report)).await;
                    continue;
                }
                Next::RunHooks(stage) => {
                    let outcomes = self.run_hooks(stage).await;
                    let _ = self.step(Input::Hooks { stage, outcomes }).await;
                    continue;
                }
                Next::BakeAnalyse(at) => {
                    self.bake_analyse(at).await;
                    continue;
                }
                Next::Apply => match self.apply().await {
                    Ok(()) => {
                        let _ = self.step(Input::Applied).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = self.step(Input::ApplyFailed(e.to_string())).await;
                        // Back off while the router stays down: 2 s, 4 s, ... up to a minute.
                        let n = self.state().apply_failures.clamp(1, 6) - 1;
                        Some(Utc::now() + (RETRY_DELAY * 2u32.pow(n)).min(MAX_RETRY_DELAY))
                    }
                },
                Next::Analyse(at) => {
                    self.analyse(at).await;
                    continue;
                }
                Next::WaitUntil(t) => Some(t),
                Next::WaitForCommand => None,
            };
            let sleep = async {
                match wait_until {
                    Some(t) => {
                        let d = (t - Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(d).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    info!(phase = %self.state().phase, weight = self.state().applied_weight, "Shutting down; weights stay as last applied");
                    return Ok(());
                }
                _ = sleep => {}
                msg = commands.recv() => match msg {
                    Some(msg) => self.command(msg).await,
                    None => return Ok(()),
                },
            }
        }
    }

    fn next_action(&self, now: DateTime<Utc>) -> Next {
        let s = self.state();
        if s.phase.is_terminal() {
            return Next::Done;
        }
        let plan = &self.plan;
        if s.needs_apply() {
            return match s.phase {
                Phase::Progressing if s.hooks_pending(plan, HookStage::PreStep) => {
                    Next::RunHooks(HookStage::PreStep)
                }
                Phase::RollingBack if s.hooks_pending(plan, HookStage::Rollback) => {
                    Next::RunHooks(HookStage::Rollback)
                }
                _ => Next::Apply,
            };
        }
        let analysis = |t: Option<DateTime<Utc>>| match t {
            Some(t) if now >= t + QUERY_DELAY => Some(Next::Analyse(t)),
            Some(t) => Some(Next::WaitUntil(t + QUERY_DELAY)),
            None => None,
        };
        match s.phase {
            Phase::Pending => Next::Step(Input::Start),
            Phase::Preflight => Next::Preflight,
            Phase::Progressing => analysis(s.next_analysis_at).unwrap_or(Next::WaitForCommand),
            Phase::AwaitingApproval => match (s.approval_deadline, analysis(s.next_analysis_at)) {
                (Some(d), _) if now >= d => Next::Step(Input::ApprovalTimeout),
                (_, Some(Next::Analyse(t))) => Next::Analyse(t),
                (Some(d), Some(Next::WaitUntil(t))) => Next::WaitUntil(d.min(t)),
                (Some(d), _) => Next::WaitUntil(d),
                (None, Some(wait)) => wait,
                (None, None) => Next::WaitForCommand,
            },
            Phase::Promoting if s.hooks_pending(plan, HookStage::PostPromotion) => {
                Next::RunHooks(HookStage::PostPromotion)
            }
            Phase::RollingBack if s.hooks_pending(plan, HookStage::PostRollback) => {
                Next::RunHooks(HookStage::PostRollback)
            }
            Phase::Baking => match analysis(s.next_analysis_at) {
                Some(Next::Analyse(t)) => Next::BakeAnalyse(t),
                Some(wait) => wait,
                None => Next::WaitForCommand,
            },
            _ => Next::WaitForCommand,
        }
    }

    fn hook_context(&self, stage: HookStage) -> HookContext {
        let spec = &self.record.spec;
        HookContext {
            canary: self.record.id,
            service: spec.service.clone(),
            environment: spec.environment.clone(),
            stage,
            step: self.state().step + 1,
            weight: self.state().intended_weight,
            backend: spec.target.backend.clone(),
            metadata: spec.metadata.clone(),
        }
    }

    async fn run_hooks(&self, stage: HookStage) -> Vec<HookOutcome> {
        let list = self.record.spec.hooks.at(stage);
        info!(%stage, hooks = list.len(), "Running hooks");
        hooks::run(list, &self.hook_context(stage)).await
    }

    /// Runs the phase machine and persists the result (intent before action). An error means
    /// nothing changed: the state was not stored and nothing will be acted on.
    async fn step(&mut self, input: Input) -> Result<(), StepError> {
        let now = Utc::now();
        let transition = match phase::next(self.state(), &self.plan, input, now) {
            Ok(t) => t,
            Err(refused) => {
                warn!(%refused, "Transition refused");
                return Err(refused.into());
            }
        };
        if let Err(e) = self
            .deps
            .store
            .transition(self.record.id, &transition.state, &transition.events, now)
            .await
        {
            // Nothing was acted on: the loop retries the same step after a pause.
            error!(error = %e, "Cannot persist the canary's state; retrying");
            tokio::time::sleep(RETRY_DELAY).await;
            return Err(e.into());
        }
        for e in &transition.events {
            info!(event = e.kind.as_str(), actor = %e.actor, "{}", e.message);
        }
        let finished = !self.state().phase.is_terminal() && transition.state.phase.is_terminal();
        self.record.state = transition.state;
        self.record.updated_at = now;
        if finished {
            self_metrics()
                .decisions
                .get_or_create(&OutcomeLabel {
                    outcome: match self.state().phase {
                        Phase::Succeeded => "promoted",
                        p => p.as_str(),
                    }
                    .into(),
                })
                .inc();
        }
        Ok(())
    }

    async fn command(&mut self, msg: CommandMsg) {
        // The caller gave up waiting (and was told so): a late command is not carried out.
        if msg.reply.is_closed() {
            warn!(command = %msg.kind, actor = %msg.actor, "Dropping a command nobody waits for any more");
            return;
        }
        let input = Input::Command {
            kind: msg.kind,
            actor: msg.actor.clone(),
        };
        let result = match phase::next(self.state(), &self.plan, input.clone(), Utc::now()) {
            Err(refused) => Err(CommandFailure::Refused(refused)),
            Ok(_) => match self.step(input).await {
                Ok(()) => Ok(self.record.clone()),
                Err(StepError::NotStored(e)) => Err(CommandFailure::NotStored(e)),
                // Refused after all: the state cannot have changed in between, but say so.
                Err(StepError::Refused(refused)) => Err(CommandFailure::Refused(refused)),
            },
        };
        let _ = msg.reply.send(result);
    }

    /// Carries out every command already waiting (also between the steps of a busy loop, so an
    /// abort during preflight or an apply is not held up).
    async fn drain_commands(&mut self, commands: &mut mpsc::Receiver<CommandMsg>) {
        while let Ok(msg) = commands.try_recv() {
            self.command(msg).await;
        }
    }

    async fn preflight(&self) -> PreflightReport {
        let spec = &self.record.spec;
        let profile = Profile::with(
            &spec.environment,
            self.deps.environments.get(&spec.environment),
        );
        let subject = preflight::Subject {
            router: self.router.as_ref(),
            target: &spec.target,
            source: self.deps.source.as_ref(),
            rules: &self.rules,
            selectors: &self.selectors,
            interval: self.plan.interval,
            tls: spec.tls_check.as_ref(),
            store: &self.deps.store,
            min_free_disk_mb: profile.min_free_disk_mb,
        };
        let checks = preflight::check_canary(&subject).await;
        let mut report = PreflightReport {
            checks,
            hooks: Vec::new(),
        };
        if report.failure().is_none() && !spec.hooks.pre_rollout.is_empty() {
            report.hooks = self.run_hooks(HookStage::PreRollout).await;
        }
        report
    }

    async fn timed<T, E>(
        &self,
        operation: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = f.await;
        self_metrics().router_op(
            self.router.name(),
            operation,
            started.elapsed().as_secs_f64(),
            result.is_ok(),
        );
        result
    }

    /// Steps 3 and 4: apply the intended weight, then read it back.
    async fn apply(&self) -> Result<(), ApplyError> {
        let s = self.state();
        let target = &self.record.spec.target;
        let rolling = self.record.spec.strategy.kind == StrategyKind::Rolling;
        let applied = match s.phase {
            // A rolling release moves whole servers: the share names how many are replaced.
            _ if rolling => {
                let servers = self.record.spec.rolling_servers(s.intended_weight);
                self.timed(
                    "set_weights",
                    self.router.set_server_weights(target, &servers),
                )
                .await
            }
            Phase::Promoting => {
                self.timed("finalize", self.router.finalize(target, Stable::Canary))
                    .await
            }
            Phase::RollingBack => {
                self.timed("finalize", self.router.finalize(target, Stable::Baseline))
                    .await
            }
            _ => {
                self.timed(
                    "set_weights",
                    self.router.set_weights(target, s.intended_weight),
                )
                .await
            }
        };
        applied?;
        let live = self
            .timed("get_weights", self.router.get_weights(target))
            .await?;
        if weights_match(live.canary_percent, self.realized(s.intended_weight)) {
            Ok(())
        } else {
            Err(ApplyError::ReadBack {
                live: live.canary_percent,
                intended: s.intended_weight,
            })
        }
    }

    /// The share the router really gives for an intended weight.
    fn realized(&self, percent: f64) -> f64 {
        self.router.realized(&self.record.spec.target, percent)
    }

    /// Compares the persisted intent with the router after a (re)start.
    async fn reconcile_on_start(&mut self) {
        let s = self.state().clone();
        let Some(applied) = s.applied_weight else {
            return;
        };
        if s.phase.is_terminal() || s.phase == Phase::Paused {
            return;
        }
        let live = match self
            .timed(
                "get_weights",
                self.router.get_weights(&self.record.spec.target),
            )
            .await
        {
            Ok(live) => live.canary_percent,
            Err(e) => {
                warn!(error = %e, "Cannot read the router's weights at start; will retry");
                return;
            }
        };
        if s.needs_apply() {
            if weights_match(live, self.realized(s.intended_weight)) {
                info!(
                    weight = s.intended_weight,
                    "Intended weight is already live (applied before a restart)"
                );
                let _ = self.step(Input::Applied).await;
            } else if !weights_match(live, self.realized(applied)) && s.phase == Phase::Progressing
            {
                let _ = self
                    .step(Input::Drift {
                        live,
                        expected: applied,
                    })
                    .await;
            }
            // Otherwise the old weight is live: the loop applies the intent.
        } else if !weights_match(live, self.realized(applied)) {
            let _ = self
                .step(Input::Drift {
                    live,
                    expected: applied,
                })
                .await;
        } else {
            info!(weight = applied, phase = %s.phase, "Router weights match the persisted state; carrying on");
        }
    }

    /// One bake interval: the new version now against the old version before the release.
    async fn bake_analyse(&mut self, due: DateTime<Utc>) {
        let interval = self.plan.interval;
        let at = due + QUERY_DELAY;
        let at = DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at);
        let start = self.state().analysis_started_at.unwrap_or(at);
        let start = DateTime::from_timestamp(start.timestamp(), 0).unwrap_or(start);
        let step = chrono::Duration::from_std(interval).unwrap_or_default();
        let k = self.state().bake_intervals as i32 + 1;
        // Bake interval k is compared with the baseline's k-th interval before the canary
        // started; the one just before the start set the thresholds (the warm-up).
        let baseline_at = start - step * k;
        let mut judge_state = match self.state().bake_judge.clone() {
            Some(j) => j,
            None => {
                let history = metrics::observe(
                    self.deps.source.as_ref(),
                    &self.rules,
                    &self.selectors,
                    &[start],
                    interval,
                )
                .await
                .pop()
                .unwrap_or_default();
                judge::warm_up(
                    &self.rules,
                    judge::JudgeState::new(&self.rules),
                    &IntervalData {
                        index: 0,
                        canary_share: None,
                        observations: history,
                    },
                )
            }
        };
        let observations = metrics::observe_shifted(
            self.deps.source.as_ref(),
            &self.rules,
            &self.selectors,
            &[at],
            &[baseline_at],
            interval,
        )
        .await
        .pop()
        .unwrap_or_default();
        let data = IntervalData {
            index: self.state().bake_intervals + 1,
            canary_share: None,
            observations,
        };
        let verdict;
        (judge_state, verdict) = judge::update(&self.rules, judge_state, &data);
        let old_version_present = !matches!(
            self.router.reconcile(&self.record.spec.target).await,
            Err(RouterError::NotFound { .. })
        );
        let _ = self
            .step(Input::BakeAnalysis {
                judge: judge_state,
                verdict,
                old_version_present,
            })
            .await;
    }

    /// Analyses the interval ending at `due` (or now, when far behind).
    async fn analyse(&mut self, due: DateTime<Utc>) {
        let started = Instant::now();
        if self.drifted().await {
            return;
        }
        let at = self.query_time(due);
        let judge_state = self.warmed_up_judge().await;
        let observations = metrics::observe(
            self.deps.source.as_ref(),
            &self.rules,
            &self.selectors,
            &[at],
            self.plan.interval,
        )
        .await
        .pop()
        .unwrap_or_default();
        let data = IntervalData {
            index: self.state().intervals + 1,
            canary_share: None,
            observations,
        };
        let (judge_state, verdict) = judge::update(&self.rules, judge_state, &data);
        count_analysis(&verdict, started);
        if verdict.decision == Decision::Rollback {
            warn!(reasons = ?verdict.reasons, "Regression found");
        }
        let _ = self
            .step(Input::Analysis {
                judge: judge_state,
                verdict,
            })
            .await;
    }

    /// Before an analysis: the live weights must be what canaryd applied. Returns whether they
    /// were not (the canary is then paused).
    async fn drifted(&mut self) -> bool {
        let target = &self.record.spec.target;
        let live = match self
            .timed("get_weights", self.router.get_weights(target))
            .await
        {
            Ok(live) => live.canary_percent,
            Err(e) => {
                warn!(error = %e, "Cannot read the router's weights before analysis");
                return false;
            }
        };
        let applied = self.state().applied_weight.unwrap_or(0.0);
        if weights_match(live, self.realized(applied)) {
            return false;
        }
        let drift = Input::Drift {
            live,
            expected: applied,
        };
        let _ = self.step(drift).await;
        true
    }

    /// Where the window of the analysis due at `due` ends: at the latest whole second waited
    /// for, so the newest scrape is in; windows of consecutive analyses still tile because
    /// `due` advances by whole intervals. When far behind, the window ends now.
    fn query_time(&self, due: DateTime<Utc>) -> DateTime<Utc> {
        let now = Utc::now();
        let behind = (now - due).to_std().unwrap_or_default();
        let at = if behind > self.plan.interval + QUERY_DELAY {
            now - QUERY_DELAY
        } else {
            due + QUERY_DELAY
        };
        DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
    }

    /// The judge's state; before the first interval, warmed up on the baseline's interval
    /// before the canary took traffic: it fixes the judge's slow-request thresholds without
    /// spending a canary interval on a warm-up.
    async fn warmed_up_judge(&self) -> JudgeState {
        let judge_state = self.state().judge.clone();
        let Some(started) = self.state().analysis_started_at else {
            return judge_state;
        };
        if self.state().intervals != 0 {
            return judge_state;
        }
        let before = DateTime::from_timestamp(started.timestamp(), 0).unwrap_or(started);
        let history = metrics::observe(
            self.deps.source.as_ref(),
            &self.rules,
            &self.selectors,
            &[before],
            self.plan.interval,
        )
        .await
        .pop()
        .unwrap_or_default();
        let data = IntervalData {
            index: 0,
            canary_share: None,
            observations: history,
        };
        judge::warm_up(&self.rules, judge_state, &data)
    }
}

/// canaryd's own metrics for one analysis: its duration, its decision, and the queries that
/// failed or found no data.
fn count_analysis(verdict: &Verdict, started: Instant) {
    let m = self_metrics();
    m.analysis_duration.observe(started.elapsed().as_secs_f64());
    m.intervals
        .get_or_create(&OutcomeLabel {
            outcome: verdict.decision.to_string(),
        })
        .inc();
    for mv in &verdict.metrics {
        let kind = match mv.status {
            MetricStatus::NoData => "no_data",
            MetricStatus::Error if mv.reason.contains("timed out") => "timeout",
            MetricStatus::Error => "error",
            _ => continue,
        };
        m.query_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}
