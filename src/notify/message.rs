//! A notification as canaryd says it, before any service's format: what happened, how bad it
//! is, the evidence (metrics with both arms' values, the effect estimate and its interval), facts
//! and links. Every notifier renders this one model; the generic webhook sends it as is.

use crate::judge::{MetricVerdict, fmt_num};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How urgent a notification is. Routes pick notifications at or above a severity.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Progress and good outcomes.
    #[default]
    Info,
    /// Someone may want to look (paused, waiting for approval, a metric near its margin).
    Warning,
    /// Traffic went back to the old version, or canaryd could not do its job.
    Critical,
}

impl Severity {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a notification is about. Routes and templates use these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A canary was accepted.
    Submitted,
    /// Preflight passed: traffic starts moving.
    Started,
    /// A step began (new canary weight). Only sent where a route asks for `step`.
    Step,
    /// A gated step waits for a person's approval.
    AwaitingApproval,
    /// The canary holds its weights (with why).
    Paused,
    /// The canary carries on after a pause.
    Resumed,
    /// A metric is near its margin, evidence is still insufficient at the last step, data is
    /// missing, or one instance misbehaves. At most one per metric per canary.
    Warning,
    /// A hook failed.
    HookFailed,
    /// The canary serves all traffic.
    Promoted,
    /// The post-promotion bake ended.
    BakeFinished,
    /// A regression during the bake with nothing to roll back to.
    BakeRegression,
    /// The judge found a regression: all traffic is back on the old version.
    RolledBack,
    /// A person stopped the canary.
    Aborted,
    /// An infrastructure failure (the fail-safe ran, or preflight failed).
    Failed,
    /// The deployment summary, sent once the canary is finished.
    Summary,
}

impl NotificationKind {
    /// Every kind, in lifecycle order.
    pub const ALL: [NotificationKind; 15] = [
        NotificationKind::Submitted,
        NotificationKind::Started,
        NotificationKind::Step,
        NotificationKind::AwaitingApproval,
        NotificationKind::Paused,
        NotificationKind::Resumed,
        NotificationKind::Warning,
        NotificationKind::HookFailed,
        NotificationKind::Promoted,
        NotificationKind::BakeFinished,
        NotificationKind::BakeRegression,
        NotificationKind::RolledBack,
        NotificationKind::Aborted,
        NotificationKind::Failed,
        NotificationKind::Summary,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Submitted => "submitted",
            NotificationKind::Started => "started",
            NotificationKind::Step => "step",
            NotificationKind::AwaitingApproval => "awaiting_approval",
            NotificationKind::Paused => "paused",
            NotificationKind::Resumed => "resumed",
            NotificationKind::Warning => "warning",
            NotificationKind::HookFailed => "hook_failed",
            NotificationKind::Promoted => "promoted",
            NotificationKind::BakeFinished => "bake_finished",
            NotificationKind::BakeRegression => "bake_regression",
            NotificationKind::RolledBack => "rolled_back",
            NotificationKind::Aborted => "aborted",
            NotificationKind::Failed => "failed",
            NotificationKind::Summary => "summary",
        }
    }

    /// Parses a kind's name.
    pub fn parse(text: &str) -> Option<NotificationKind> {
        NotificationKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
    }

    /// How urgent this kind is.
    pub fn severity(self) -> Severity {
        match self {
            NotificationKind::RolledBack
            | NotificationKind::Failed
            | NotificationKind::BakeRegression => Severity::Critical,
            NotificationKind::AwaitingApproval
            | NotificationKind::Paused
            | NotificationKind::Warning
            | NotificationKind::HookFailed
            | NotificationKind::Aborted => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// Whether routes without an `events` list send this kind (every kind but `step`).
    pub fn sent_by_default(self) -> bool {
        self != NotificationKind::Step
    }

    /// The outcome in a few words, for subjects (`rolled back`).
    pub fn verb(self) -> &'static str {
        match self {
            NotificationKind::Submitted => "submitted",
            NotificationKind::Started => "started",
            NotificationKind::Step => "next step",
            NotificationKind::AwaitingApproval => "awaiting approval",
            NotificationKind::Paused => "paused",
            NotificationKind::Resumed => "resumed",
            NotificationKind::Warning => "warning",
            NotificationKind::HookFailed => "hook failed",
            NotificationKind::Promoted => "promoted",
            NotificationKind::BakeFinished => "bake finished",
            NotificationKind::BakeRegression => "regression after promotion",
            NotificationKind::RolledBack => "rolled back",
            NotificationKind::Aborted => "aborted",
            NotificationKind::Failed => "failed",
            NotificationKind::Summary => "deployment summary",
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canary a notification is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryRef {
    /// Its id.
    pub id: i64,
    /// The service.
    pub service: String,
    /// The environment.
    pub environment: String,
    /// The canary in canaryd's API.
    pub url: String,
}

/// A named value (`Duration: 4m12s`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A link (`Canary API`, `Grafana`, `Pipeline`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// What it opens.
    pub name: String,
    /// Where.
    pub url: String,
}

/// One metric's evidence: raw numbers for machines, formatted text for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricLine {
    /// The metric.
    pub name: String,
    /// Its status (`pass`, `FAIL`, ...).
    pub status: String,
    /// What the values measure.
    pub unit: String,
    /// The canary's value.
    pub canary: Option<f64>,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// Effect estimate (canary/baseline).
    pub estimate: Option<f64>,
    /// Lower bound of the effect's interval (None: 0).
    pub lower: Option<f64>,
    /// Upper bound of the effect's interval (None: unbounded).
    pub upper: Option<f64>,
    /// The margin the effect is compared with.
    pub margin: Option<f64>,
    /// The judge's sentence.
    pub reason: String,
    /// `canary 12.0% vs baseline 0.500%`.
    pub values: String,
    /// `×24.0 [×6.10, ∞] (margin ×1.50)`.
    pub effect: String,
    /// Whether this metric made the decision (a failing metric of a rollback).
    pub failing: bool,
}

impl MetricLine {
    /// The evidence of one metric verdict.
    pub fn from_verdict(m: &MetricVerdict) -> Self {
        let failing = m.status == crate::judge::MetricStatus::Fail && !m.dry_run;
        let mut status = m.status.to_string();
        if m.dry_run {
            status.push_str(" (dry-run)");
        }
        MetricLine {
            name: m.name.clone(),
            status,
            unit: m.unit.clone(),
            canary: m.canary,
            baseline: m.baseline,
            estimate: m.estimate,
            lower: m.lower,
            upper: m.upper,
            margin: m.margin,
            reason: m.reason.clone(),
            values: format!(
                "canary {} vs baseline {}",
                value(&m.unit, m.canary),
                value(&m.unit, m.baseline)
            ),
            effect: effect(m.estimate, m.lower, m.upper, m.margin),
            failing,
        }
    }

    /// `error-rate: canary 12.0% vs baseline 0.500%, ×24.0 [×6.10, ∞] (margin ×1.50) FAIL`.
    pub fn line(&self) -> String {
        if self.effect.is_empty() {
            format!("{}: {} {}", self.name, self.values, self.status)
        } else {
            format!(
                "{}: {}, {} {}",
                self.name, self.values, self.effect, self.status
            )
        }
    }
}

/// A value as people read it, by unit: ratios and shares in percent, seconds with `s`.
pub fn value(unit: &str, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if unit.contains("ratio") || unit.contains("share") => {
            format!("{}%", fmt_num(100.0 * v))
        }
        Some(v) if unit.contains("seconds") => format!("{}s", fmt_num(v)),
        Some(v) => fmt_num(v),
    }
}

fn times(v: f64) -> String {
    if v >= 255.0 {
        "≥×256".into()
    } else {
        format!("×{}", fmt_num(v))
    }
}

/// The effect with its interval and margin: `×24.0 [×6.10, ∞] (margin ×1.50)`.
pub fn effect(
    estimate: Option<f64>,
    lower: Option<f64>,
    upper: Option<f64>,
    margin: Option<f64>,
) -> String {
    let Some(e) = estimate else {
        return String::new();
    };
    let mut s = format!(
        "{} [{}, {}]",
        times(e),
        lower.map_or("×0".into(), times),
        upper.map_or("∞".into(), times)
    );
    if let Some(m) = margin {
        s.push_str(&format!(" (margin {})", times(m)));
    }
    s
}

/// A notification, independent of where it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// What it is about.
    pub kind: NotificationKind,
    /// How urgent.
    pub severity: Severity,
    /// The canary.
    pub canary: CanaryRef,
    /// The event that caused it.
    pub event_id: i64,
    /// When that happened.
    pub at: DateTime<Utc>,
    /// For warnings: the metric.
    #[serde(default)]
    pub metric: Option<String>,
    /// One sentence: what happened.
    pub headline: String,
    /// Why, one line each (reasons, the pause's cause, a warning's evidence).
    pub details: Vec<String>,
    /// Named values (step, weight, duration, commit).
    pub facts: Vec<Fact>,
    /// Metric evidence.
    pub metrics: Vec<MetricLine>,
    /// Links.
    pub links: Vec<Link>,
    /// The release's metadata from the spec.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Notification {
    /// The default subject: `checkout rolled back in production (canary 7)`.
    pub fn subject(&self) -> String {
        let what = match (self.kind, &self.metric) {
            (NotificationKind::Warning, Some(m)) => format!("warning for {m}"),
            (k, _) => k.verb().to_string(),
        };
        format!(
            "{} {} in {} (canary {})",
            self.canary.service, what, self.canary.environment, self.canary.id
        )
    }

    /// The default plain-text body: headline, details, metrics, facts, links.
    pub fn text(&self) -> String {
        let mut out = self.headline.clone();
        out.push('\n');
        if !self.details.is_empty() {
            out.push('\n');
            for d in &self.details {
                out.push_str(&format!("- {d}\n"));
            }
        }
        if !self.metrics.is_empty() {
            out.push_str("\nMetrics:\n");
            for m in &self.metrics {
                out.push_str(&format!("- {}\n", m.line()));
            }
        }
        if !self.facts.is_empty() {
            out.push('\n');
            for f in &self.facts {
                out.push_str(&format!("{}: {}\n", f.name, f.value));
            }
        }
        if !self.links.is_empty() {
            out.push('\n');
            for l in &self.links {
                out.push_str(&format!("{}: {}\n", l.name, l.url));
            }
        }
        out
    }

    /// The short text chat messages show under their title: the headline and the details.
    pub fn summary(&self) -> String {
        let mut out = self.headline.clone();
        for d in &self.details {
            out.push_str("\n• ");
            out.push_str(d);
        }
        out
    }
}

/// Cuts `text` to at most `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Evidence, MetricStatus};

    pub(crate) fn failing_metric() -> MetricVerdict {
        MetricVerdict {
            name: "error-rate".into(),
            status: MetricStatus::Fail,
            canary: Some(0.12),
            baseline: Some(0.005),
            unit: "error ratio".into(),
            estimate: Some(24.0),
            lower: Some(6.1),
            upper: None,
            margin: Some(1.5),
            evidence: Evidence::default(),
            reason: "error-rate: canary 12.0% vs baseline 0.500% bad".into(),
            critical: true,
            dry_run: false,
        }
    }

    #[test]
    fn metric_lines_show_both_arms_the_estimate_and_its_interval() {
        let m = MetricLine::from_verdict(&failing_metric());
        assert!(m.failing);
        assert_eq!(m.values, "canary 12.0% vs baseline 0.500%");
        assert_eq!(m.effect, "×24.0 [×6.10, ∞] (margin ×1.50)");
        assert_eq!(
            m.line(),
            "error-rate: canary 12.0% vs baseline 0.500%, ×24.0 [×6.10, ∞] (margin ×1.50) FAIL"
        );
        assert_eq!(value("p95 seconds", Some(0.74)), "0.740s");
        assert_eq!(value("value", Some(3.0)), "3.00");
        assert_eq!(effect(None, None, None, None), "");
    }

    #[test]
    fn kinds_round_trip_and_have_severities() {
        for k in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(NotificationKind::RolledBack.severity(), Severity::Critical);
        assert_eq!(NotificationKind::Paused.severity(), Severity::Warning);
        assert_eq!(NotificationKind::Step.severity(), Severity::Info);
        assert!(!NotificationKind::Step.sent_by_default());
        assert!(Severity::Critical > Severity::Warning && Severity::Warning > Severity::Info);
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
