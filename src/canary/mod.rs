//! Canaries: the spec a pipeline submits, the pure phase machine, the controller that executes
//! it for one canary, and the scheduler that runs one controller task per active canary.

pub mod controller;
pub mod phase;
pub mod scheduler;
pub mod spec;

use crate::config::AnalysisConfig;
use crate::metrics::MetricSource;
use crate::router::TrafficRouter;
use crate::store::Store;
use phase::Plan;
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
}

/// The plan a canary follows: its spec's strategy with the daemon's defaults filled in.
pub fn plan_for(spec: &CanarySpec, analysis: &AnalysisConfig) -> Plan {
    Plan {
        steps: spec.strategy.steps.clone(),
        interval: spec.strategy.interval.0,
        max_duration: spec.strategy.max_duration(),
        failure_limit: spec
            .strategy
            .failure_limit
            .unwrap_or(analysis.failure_limit),
        fail_safe: analysis.fail_safe,
    }
}
