//! Admission: what happens between "a pipeline submits a spec" and "a controller runs it".
//!
//! [`Admission::admit`] fills what the spec leaves open from its environment profile, validates
//! it, looks up its router, pins the rule set in force, renders every PromQL query once (so a
//! bad label fails now, not at the first analysis), asks the router whether it knows the target,
//! stores the canary with its `submitted` event and starts its controller. Every problem found
//! before the router check is reported at once. Transport-free: the HTTP handler only parses
//! and maps [`AdmissionError`] to a status.

use super::profile::{BUILTIN, Profile};
use super::scheduler::Scheduler;
use super::spec::{CanarySpec, FieldError};
use crate::judge::JudgeState;
use crate::lifecycle::{CanaryState, EventDraft};
use crate::router::{RouterError, TrafficRouter};
use crate::rules::{Catalog, RuleSet, RuleSource};
use crate::store::StoreError;
use chrono::Utc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Time limit for the router check at submit.
const ROUTER_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a spec was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The spec has problems, each naming its field.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The router does not know the target, or did not answer.
    #[error("preflight failed, no weight was changed: {0}")]
    Router(RouterError),
    /// Storing the canary failed (or another canary is active on the target).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdmissionError {
    /// Whether the router answered that the target does not exist (the spec is wrong), as
    /// opposed to not answering (try again later).
    pub fn is_unknown_target(&self) -> bool {
        matches!(self, AdmissionError::Router(RouterError::NotFound { .. }))
    }
}

fn join(problems: &[FieldError]) -> String {
    problems
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a spec is admitted against: the scheduler (and through it the routers, environments and
/// store), the loaded rule sets, the configured notifiers and what specs may carry.
pub struct Admission<'a> {
    /// Starts the canary's controller; its deps hold the routers, environments and store.
    pub scheduler: &'a Arc<Scheduler>,
    /// The loaded rule sets; the one the spec names is pinned.
    pub catalog: &'a RwLock<Catalog>,
    /// Names of the configured notifiers (a spec's `notify:` may only name these).
    pub notifiers: &'a [String],
    /// Whether a spec may carry command hooks (else only environment profiles may).
    pub allow_spec_commands: bool,
}

/// A spec that passed every check, with what it resolved to.
struct Checked {
    router: Arc<dyn TrafficRouter>,
    source: RuleSource,
    set: RuleSet,
}

impl Admission<'_> {
    /// Admits a spec submitted by `actor`: returns the new canary's id once it is stored and its
    /// controller started.
    pub async fn admit(&self, mut spec: CanarySpec, actor: &str) -> Result<i64, AdmissionError> {
        let checked = self.check(&mut spec)?;
        check_router(checked.router.as_ref(), &spec).await?;
        let submitted =
            EventDraft::submitted(actor, &spec, &checked.source.name, &checked.source.hash);
        let state = CanaryState::new(JudgeState::new(&checked.set));
        let store = &self.scheduler.deps().store;
        let id = store
            .insert(spec, checked.source, state, vec![submitted], Utc::now())
            .await?;
        self.scheduler.spawn(id);
        Ok(id)
    }

    /// Fills the spec from its profile and runs every check that needs no network.
    fn check(&self, spec: &mut CanarySpec) -> Result<Checked, AdmissionError> {
        let mut problems = self.policy_problems(spec);
        // The profile fills what the spec leaves open; the stored spec is the result.
        let environments = &self.scheduler.deps().environments;
        let profile = Profile::with(&spec.environment, environments.get(&spec.environment));
        problems.extend(profile.prepare(spec));
        problems.extend(spec.validate());
        problems.extend(self.notifier_problems(spec));
        let router = self.router(spec, &mut problems);
        let pinned = self.pin_rules(spec, &mut problems);
        if let Some((_, set)) = &pinned {
            problems.extend(query_problems(spec, set));
        }
        match (router, pinned) {
            (Some(router), Some((source, set))) if problems.is_empty() => Ok(Checked {
                router,
                source,
                set,
            }),
            _ => Err(AdmissionError::Invalid(problems)),
        }
    }

    /// What the API's policy forbids, and an environment nobody configured.
    fn policy_problems(&self, spec: &CanarySpec) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if spec.hooks.has_commands() && !self.allow_spec_commands {
            problems.push(field(
                "hooks",
                "command hooks run on the canaryd host and are only allowed in environment profiles (or with api.allow_spec_commands)".into(),
            ));
        }
        let environments = &self.scheduler.deps().environments;
        let known_environment = environments.contains_key(&spec.environment)
            || BUILTIN.contains(&spec.environment.as_str());
        if !known_environment {
            let mut known: Vec<&str> = BUILTIN.to_vec();
            known.extend(environments.keys().map(String::as_str));
            problems.push(field(
                "environment",
                format!(
                    "unknown environment {:?} (known: {known:?})",
                    spec.environment
                ),
            ));
        }
        problems
    }

    fn notifier_problems(&self, spec: &CanarySpec) -> Vec<FieldError> {
        let unknown = spec.notify.iter().enumerate();
        unknown
            .filter(|(_, name)| !self.notifiers.contains(name))
            .map(|(i, name)| {
                field(
                    &format!("notify[{i}]"),
                    format!(
                        "unknown notifier {name:?} (configured: {:?})",
                        self.notifiers
                    ),
                )
            })
            .collect()
    }

    fn router(
        &self,
        spec: &CanarySpec,
        problems: &mut Vec<FieldError>,
    ) -> Option<Arc<dyn TrafficRouter>> {
        let routers = &self.scheduler.deps().routers;
        let router = routers.get(&spec.router).cloned();
        if router.is_none() {
            let known: Vec<&String> = routers.keys().collect();
            problems.push(field(
                "router",
                format!("unknown router {:?} (configured: {known:?})", spec.router),
            ));
        }
        router
    }

    /// The rule set in force now, pinned for the canary's whole life.
    fn pin_rules(
        &self,
        spec: &CanarySpec,
        problems: &mut Vec<FieldError>,
    ) -> Option<(RuleSource, RuleSet)> {
        let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
        let pinned = catalog.get(&spec.rules);
        if pinned.is_none() {
            let known: Vec<&str> = catalog.names().collect();
            problems.push(field(
                "rules",
                format!("unknown rule set {:?} (loaded: {known:?})", spec.rules),
            ));
        }
        pinned.map(|(source, set)| (source.clone(), set.clone()))
    }
}

/// Every query of the rule set renders with the spec's labels.
fn query_problems(spec: &CanarySpec, set: &RuleSet) -> Option<FieldError> {
    let selectors = spec.selectors().ok()?;
    let window = crate::time::promql_duration(spec.strategy.interval());
    crate::metrics::render_all(set, &selectors, &window)
        .err()
        .map(|e| field("labels", e))
}

/// The router must know the backend and servers before anything is stored.
async fn check_router(router: &dyn TrafficRouter, spec: &CanarySpec) -> Result<(), AdmissionError> {
    let result = tokio::time::timeout(ROUTER_CHECK_TIMEOUT, router.reconcile(&spec.target)).await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AdmissionError::Router(e)),
        Err(_) => Err(AdmissionError::Router(RouterError::Timeout {
            router: spec.router.clone(),
            operation: "reconcile".into(),
        })),
    }
}

fn field(name: &str, message: String) -> FieldError {
    FieldError {
        field: name.to_string(),
        message,
    }
}
