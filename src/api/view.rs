//! What the API shows of a canary.

use crate::canary::spec::CanarySpec;
use crate::judge::Verdict;
use crate::store::CanaryRecord;
use crate::target::Target;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A canary as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryView {
    /// Its id.
    pub id: i64,
    /// The service.
    pub service: String,
    /// The environment profile.
    pub environment: String,
    /// The router.
    pub router: String,
    /// The backend and servers.
    pub target: Target,
    /// The pinned rule set.
    pub rules: RulesRef,
    /// The phase.
    pub phase: String,
    /// 1-based step number.
    pub step: usize,
    /// The step weights.
    pub steps: Vec<f64>,
    /// The step awaiting approval (1-based), if any.
    pub awaiting_approval: Option<usize>,
    /// When the pending approval times out.
    pub approval_deadline: Option<DateTime<Utc>>,
    /// When the post-promotion bake ends.
    pub bake_until: Option<DateTime<Utc>>,
    /// Canary weights.
    pub weight: WeightView,
    /// Intervals analysed.
    pub intervals: u32,
    /// The last analysis.
    pub analysis: Option<Verdict>,
    /// Why it ended (or is ending) the way it did.
    pub reasons: Vec<String>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// Submitted at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// The release's metadata from the spec.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The spec as submitted.
    pub spec: CanarySpec,
}

/// A pinned rule set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RulesRef {
    /// Its name.
    pub name: String,
    /// Its version (`sha256:...`).
    pub hash: String,
}

/// Intended and applied canary weight (percent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightView {
    /// What canaryd wants.
    pub intended: f64,
    /// What the router confirmed.
    pub applied: Option<f64>,
}

impl From<&CanaryRecord> for CanaryView {
    fn from(r: &CanaryRecord) -> Self {
        let s = &r.state;
        CanaryView {
            id: r.id,
            service: r.spec.service.clone(),
            environment: r.spec.environment.clone(),
            router: r.spec.router.clone(),
            target: r.spec.target.clone(),
            rules: RulesRef {
                name: r.rules.name.clone(),
                hash: r.rules.hash.clone(),
            },
            phase: s.phase.to_string(),
            step: s.step + 1,
            steps: r.spec.strategy.weights(),
            weight: WeightView {
                intended: s.intended_weight,
                applied: s.applied_weight,
            },
            awaiting_approval: s.awaiting_step.map(|i| i + 1),
            approval_deadline: s.approval_deadline,
            bake_until: s.bake_until,
            intervals: s.intervals,
            analysis: s.last_verdict.clone(),
            reasons: s.reasons.clone(),
            pause_reason: s.pause_reason.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: s.finished_at,
            metadata: r.spec.metadata.clone(),
            spec: r.spec.clone(),
        }
    }
}
