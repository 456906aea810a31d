//! Canaries: the spec a pipeline submits and its admission, the pure phase machine, the
//! controller that executes it for one canary, and the scheduler that runs one controller task
//! per active canary.

pub mod admission;
pub mod analysis;
pub mod controller;
pub mod hooks;
pub mod phase;
pub mod preflight;
pub mod profile;
pub mod scheduler;
pub mod spec;

use crate::lifecycle::Plan;
use crate::metrics::MetricSource;
use crate::router::TrafficRouter;
use crate::store::Store;
use analysis::AnalysisConfig;
use spec::CanarySpec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What controllers need from the daemon.
pub struct Deps {
    /// Persistence.
    pub store: Store,
    /// Routers by name.
    pub routers: BTreeMap<String, Arc<dyn TrafficRouter>>,
    /// The metric source.
    pub source: Arc<dyn MetricSource>,
    /// Analysis settings.
    pub analysis: AnalysisConfig,
    /// Environment profiles as configured (built-in defaults fill the rest).
    pub environments: BTreeMap<String, profile::EnvironmentConfig>,
}

/// Which environments send no notifications unless a route asks (their profile's
/// `notifications = false`), for [`crate::notify::Notifications::start`].
pub fn quiet_environments(
    environments: BTreeMap<String, profile::EnvironmentConfig>,
) -> crate::notify::routes::QuietFn {
    Arc::new(move |env: &str| !profile::Profile::with(env, environments.get(env)).notifications)
}

/// The plan a canary follows: its stored spec (with the environment profile applied at submit)
/// and the daemon's analysis settings.
pub fn plan_for(spec: &CanarySpec, analysis: &AnalysisConfig) -> Plan {
    let s = &spec.strategy;
    let hook_stages = crate::lifecycle::HookStage::ALL
        .into_iter()
        .filter(|stage| !spec.hooks.at(*stage).is_empty())
        .collect();
    Plan {
        steps: s.weights(),
        approvals: s.steps.iter().map(|st| st.approval).collect(),
        interval: s.interval(),
        max_duration: s.max_duration(),
        min_duration: s.min_duration(),
        failure_limit: s.failure_limit.unwrap_or(analysis.failure_limit),
        fail_safe: analysis.fail_safe,
        approval_timeout: s.approval_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
        on_approval_timeout: s.on_approval_timeout.unwrap_or_default(),
        bake: s.bake.map(|d| d.0).unwrap_or_default(),
        auto_rollback: s.auto_rollback.unwrap_or(true),
        hook_stages,
        batches: rolling_batches(spec),
    }
}

/// Per step of a rolling release: the new servers it enabled and the old ones it disabled.
fn rolling_batches(spec: &CanarySpec) -> Vec<(Vec<String>, Vec<String>)> {
    if spec.strategy.kind != spec::StrategyKind::Rolling {
        return Vec::new();
    }
    let mut before = spec.rolling_servers(0.0);
    spec.strategy
        .weights()
        .into_iter()
        .map(|w| {
            let after = spec.rolling_servers(w);
            let changed = |names: &[String]| -> Vec<String> {
                names
                    .iter()
                    .filter(|n| before.get(*n) != after.get(*n))
                    .cloned()
                    .collect()
            };
            let batch = (changed(&spec.target.canary), changed(&spec.target.baseline));
            before = after;
            batch
        })
        .collect()
}
