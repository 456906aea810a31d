//! Observations: what querying one metric for one interval produced, per arm.
//!
//! The ground floor shared by the layers: `metrics` produces these, the `judge` consumes them,
//! backtests and rule unit tests build them. Imports nothing else from the crate.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One arm's data for one metric in one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Sample {
    /// Counts of bad events and of all events (ratio metrics).
    Counts {
        /// Bad events (errors).
        bad: f64,
        /// All events (requests).
        total: f64,
    },
    /// Cumulative histogram bucket counts, sorted by `le`, the last one `+Inf`.
    Buckets {
        /// `(le, cumulative count)`.
        buckets: Vec<(f64, f64)>,
    },
    /// A gauge's value.
    Gauge {
        /// The value.
        value: f64,
    },
}

/// One arm's data: pooled over the arm, and per instance when the query kept an `instance` label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmSample {
    /// The arm as a whole.
    pub pooled: Sample,
    /// Per instance (empty when the query aggregates instances away).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<(String, Sample)>,
}

impl ArmSample {
    /// An arm without instance detail.
    pub fn pooled(sample: Sample) -> Self {
        ArmSample {
            pooled: sample,
            instances: Vec::new(),
        }
    }
}

/// Which side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The new version.
    Canary,
    /// The current version.
    Baseline,
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arm::Canary => "canary",
            Arm::Baseline => "baseline",
        })
    }
}

/// What querying one metric for one interval produced. No data, a query error and a timeout are
/// kept apart: none of them is evidence against the canary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Both arms returned data.
    Data {
        /// The canary's data.
        canary: ArmSample,
        /// The baseline's data.
        baseline: ArmSample,
    },
    /// The query succeeded but returned nothing for an arm (is it receiving traffic?).
    NoData {
        /// The arm without data.
        arm: Arm,
    },
    /// The query failed.
    QueryError {
        /// Why.
        message: String,
    },
    /// The query did not answer in time.
    Timeout,
}

/// One metric's observation in one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The metric's name in the rule set.
    pub metric: String,
    /// What the query produced.
    pub outcome: Outcome,
}
