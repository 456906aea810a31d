//! The reasons a canary gives for what it does: the sentences kept in `CanaryState::reasons`
//! and `pause_reason`, and quoted by the events. Wording only; the phase machine decides when.

use super::hooks::HookOutcome;
use crate::time::format_duration;
use std::time::Duration;

/// Why a canary promotes after its last analysis step.
pub const EVERY_STEP_PASSED: &str = "every analysis step passed";
/// Why a canary promotes early on the judge's confidence.
pub const CONFIDENT: &str = "every metric is confidently within its margin";
/// The reason an approved promotion gives when none was recorded.
pub const APPROVED: &str = "approved";

fn weight(w: f64) -> String {
    crate::judge::fmt_num(w)
}

/// Preflight stopped the canary.
pub fn preflight_failed(reason: &str) -> String {
    format!("preflight failed: {reason}")
}

/// A `pre_step` hook failed, so the step's weight was held.
pub fn pre_step_hook_failed(hook: &HookOutcome) -> String {
    format!(
        "pre_step hook {:?} failed ({}); the weights were not changed",
        hook.name, hook.detail
    )
}

/// A pending approval (1-based `step`) timed out.
pub fn approval_timed_out(step: usize) -> String {
    format!("the approval for step {step} timed out")
}

/// Someone changed the router's weights.
pub fn drift(live: f64, expected: f64) -> String {
    format!(
        "the router's weights were changed outside canaryd: live canary weight {}%, canaryd applied {}%",
        weight(live),
        weight(expected)
    )
}

/// One of the bake judge's reasons for a regression.
pub fn bake_regression(reason: &str) -> String {
    format!("regression during the bake: {reason}")
}

/// The bake ended cleanly.
pub fn bake_clean(bake: Duration) -> String {
    format!("no regression in a {} bake", format_duration(bake))
}

/// A regression where automatic rollback is off.
pub fn regression_without_auto_rollback(reasons: &[String]) -> String {
    format!(
        "regression found, and automatic rollback is off for this environment: {}",
        reasons.join("; ")
    )
}

/// Too many intervals in a row gave no usable analysis.
pub fn unusable(streak: u32, reasons: &[String]) -> String {
    format!(
        "no usable analysis for {streak} consecutive intervals ({})",
        reasons.join("; ")
    )
}

/// The fail-safe's reason, from [`unusable`]'s.
pub fn fail_safe(why: &str) -> String {
    format!("fail-safe: {why}")
}

/// Analysis ran out of time without a regression; `open` lists the metrics not yet shown within
/// their margins.
pub fn out_of_time(max_duration: Duration, open: &[String]) -> String {
    let mut why = format!(
        "max_duration {} reached without a regression",
        format_duration(max_duration)
    );
    if !open.is_empty() {
        why.push_str(&format!(
            " (not yet shown within the margin: {}; see the last analysis)",
            open.join(", ")
        ));
    }
    why
}

/// A rolling release's failing batch (index `step`) goes back.
pub fn batch_rolled_back(step: usize, new: &[String], old: &[String]) -> String {
    format!(
        "batch {} rolled back: {} out, {} back in; earlier batches stay",
        step + 1,
        new.join(", "),
        old.join(", ")
    )
}

/// A person aborted.
pub fn aborted_by(actor: &str) -> String {
    format!("aborted by {actor}")
}

/// A person paused.
pub fn paused_by(actor: &str) -> String {
    format!("paused by {actor}")
}

/// A person promoted.
pub fn promoted_by(actor: &str) -> String {
    format!("promoted manually by {actor}")
}

/// A person approved the promotion that `why` asked for.
pub fn approved_by(why: &str, actor: &str) -> String {
    format!("{why}; approved by {actor}")
}

/// canaryd can never run the canary (its router is gone, its rules do not parse).
pub fn unrunnable(why: &str) -> String {
    format!("canaryd cannot run this canary: {why}")
}
