//! `[analysis]`: how the controllers treat intervals without a usable analysis. The daemon's
//! configuration (`config.rs`) reads it and hands it to the controllers in [`super::Deps`].

use crate::lifecycle::FailSafe;
use crate::problem::Problem;
use serde::{Deserialize, Serialize};

/// `[analysis]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Consecutive intervals without a usable analysis (no data, query errors) before the
    /// fail-safe acts. Argo Rollouts' `consecutiveErrorLimit` is 4; ours defaults to 5.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// What the fail-safe does: `rollback` (all traffic to the baseline, canary failed) or
    /// `hold` (keep weights, pause for a person).
    #[serde(default)]
    pub fail_safe: FailSafe,
}

fn default_failure_limit() -> u32 {
    5
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            failure_limit: default_failure_limit(),
            fail_safe: FailSafe::Rollback,
        }
    }
}

impl AnalysisConfig {
    /// Value checks: every problem, each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.failure_limit == 0 {
            out.push(Problem::new("failure_limit", "must be at least 1"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_failure_limit_is_named() {
        assert!(AnalysisConfig::default().problems().is_empty());
        let zero = AnalysisConfig {
            failure_limit: 0,
            ..Default::default()
        };
        assert_eq!(zero.problems()[0].field, "failure_limit");
    }
}
