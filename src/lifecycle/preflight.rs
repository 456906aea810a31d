//! What preflight found, as data: one result per check and the `pre_rollout` hooks' outcomes.
//! Running the checks is `canary::preflight`.

use super::hooks::HookOutcome;
use serde::{Deserialize, Serialize};

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// What was checked (`router`, `metrics`, `tls`, `store`, ...).
    pub check: String,
    /// Passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

impl CheckResult {
    /// A result from what the check returned: `Ok(detail)` passed, `Err(detail)` failed.
    pub fn new(check: &str, result: Result<String, String>) -> Self {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        CheckResult {
            check: check.into(),
            ok,
            detail,
        }
    }
}

/// Everything preflight found, and the `pre_rollout` hooks' outcomes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PreflightReport {
    /// The checks.
    pub checks: Vec<CheckResult>,
    /// The `pre_rollout` hooks (run only when every check passed).
    pub hooks: Vec<HookOutcome>,
}

impl PreflightReport {
    /// The first failure, as a reason.
    pub fn failure(&self) -> Option<String> {
        if let Some(c) = self.checks.iter().find(|c| !c.ok) {
            return Some(format!("{}: {}", c.check, c.detail));
        }
        self.hooks
            .iter()
            .find(|h| !h.ok)
            .map(|h| format!("pre_rollout hook {:?} failed ({})", h.name, h.detail))
    }

    /// A report of one failure (for internal errors before checks could run).
    pub fn failed(check: &str, detail: String) -> Self {
        PreflightReport {
            checks: vec![CheckResult::new(check, Err(detail))],
            hooks: Vec::new(),
        }
    }
}
