//! From the event log to notifications: which events people hear about, and what each message
//! says. Pure: an event, its canary and the canary's earlier events in, notifications out.
//!
//! | event | notification |
//! |---|---|
//! | `submitted` | `submitted` |
//! | `preflight_passed` | `started` |
//! | `step_started` | `step` (routes opt in) |
//! | `awaiting_approval` | `awaiting_approval` |
//! | `paused` / `resumed` | `paused` (with why) / `resumed` |
//! | `analysis`, `analysis_inconclusive`, `bake_analysis` | `warning` per metric near its margin, still without evidence at the last step, without data, or with an instance anomaly (at most one per metric per canary: the outbox key has no event id) |
//! | `hook_failed` | `hook_failed` |
//! | `promoted`, `bake_finished`, `bake_regression` | the same name |
//! | `rolled_back`, `aborted`, `failed` | the same name |
//! | any of `promoted`, `bake_finished`, `rolled_back`, `aborted`, `failed` that leaves the canary finished | also `summary` |
//!
//! Everything else (weights applied, router errors being retried, the controller's own
//! bookkeeping, and `notification_failed`, so a failed notification never notifies) is silent.

use super::message::{CanaryRef, Fact, Link, MetricLine, Notification, NotificationKind, Severity};
use crate::judge::{MetricStatus, MetricVerdict, Verdict};
use crate::lifecycle::Phase;
use crate::store::{CanaryRecord, Event};
use chrono::{DateTime, Utc};

/// How far towards its margin a metric's estimate must be for a "near its margin" warning.
const NEAR_MARGIN: f64 = 0.8;

/// Where links in notifications point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    /// Base URL of canaryd's API (`server.public_url`, or `http://` + the listen address).
    pub api_base: String,
    /// A Grafana URL with `{id}`, `{service}` and `{environment}` placeholders.
    pub grafana: Option<String>,
}

/// The notifications an event produces (often none).
pub fn compose(
    event: &Event,
    record: &CanaryRecord,
    history: &[Event],
    links: &LinkSettings,
) -> Vec<Notification> {
    let c = Ctx {
        event,
        record,
        history,
        links,
    };
    let mut out = Vec::new();
    match event.kind.as_str() {
        "submitted" => out.push(c.submitted()),
        "preflight_passed" => out.push(c.note(
            NotificationKind::Started,
            format!(
                "{} passed preflight in {}: traffic starts moving to the canary",
                c.who(),
                c.env()
            ),
            vec![],
        )),
        "step_started" => out.push(c.step()),
        "awaiting_approval" => out.push(c.awaiting_approval()),
        "paused" => {
            let why = event.data["reason"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| event.message.clone());
            out.push(c.note(
                NotificationKind::Paused,
                format!("{} is paused in {}", c.who(), c.env()),
                vec![why],
            ));
        }
        "resumed" => out.push(c.note(
            NotificationKind::Resumed,
            format!("{} resumed in {}", c.who(), c.env()),
            vec![event.message.clone()],
        )),
        "analysis" | "analysis_inconclusive" | "bake_analysis" => out.extend(c.warnings()),
        "hook_failed" => out.push(c.note(
            NotificationKind::HookFailed,
            format!("{}: a hook failed", c.who()),
            vec![event.message.clone()],
        )),
        "promoted" => out.push(c.promoted()),
        "bake_finished" => out.push(c.note(
            NotificationKind::BakeFinished,
            format!(
                "{} in {}: the bake finished without a regression; the release is done",
                c.record.spec.service,
                c.env()
            ),
            vec![event.message.clone()],
        )),
        "bake_regression" => out.push(c.bake_regression()),
        "rolled_back" => out.push(c.rolled_back()),
        "aborted" => out.push(c.aborted()),
        "failed" => out.push(c.failed()),
        _ => {}
    }
    let terminal_kind = matches!(
        event.kind.as_str(),
        "promoted" | "bake_finished" | "rolled_back" | "aborted" | "failed"
    );
    if terminal_kind && Phase::parse(&event.phase).is_some_and(Phase::is_terminal) {
        out.push(c.summary());
    }
    out
}

struct Ctx<'a> {
    event: &'a Event,
    record: &'a CanaryRecord,
    history: &'a [Event],
    links: &'a LinkSettings,
}

impl Ctx<'_> {
    /// `checkout canary 7`.
    fn who(&self) -> String {
        format!("{} canary {}", self.record.spec.service, self.record.id)
    }

    fn env(&self) -> &str {
        &self.record.spec.environment
    }

    fn url(&self) -> String {
        format!(
            "{}/api/v1/canaries/{}",
            self.links.api_base.trim_end_matches('/'),
            self.record.id
        )
    }

    fn base(&self, kind: NotificationKind, headline: String, details: Vec<String>) -> Notification {
        let mut links = vec![
            Link {
                name: "Canary".into(),
                url: self.url(),
            },
            Link {
                name: "Events".into(),
                url: format!("{}/events", self.url()),
            },
        ];
        if let Some(g) = &self.links.grafana {
            links.push(Link {
                name: "Grafana".into(),
                url: g
                    .replace("{id}", &self.record.id.to_string())
                    .replace("{service}", &self.record.spec.service)
                    .replace("{environment}", self.env()),
            });
        }
        if let Some(p) = self
            .record
            .spec
            .metadata
            .get("pipeline_url")
            .and_then(|v| v.as_str())
            && (p.starts_with("https://") || p.starts_with("http://"))
        {
            links.push(Link {
                name: "Pipeline".into(),
                url: p.to_string(),
            });
        }
        Notification {
            kind,
            severity: kind.severity(),
            canary: CanaryRef {
                id: self.record.id,
                service: self.record.spec.service.clone(),
                environment: self.record.spec.environment.clone(),
                url: self.url(),
            },
            event_id: self.event.id,
            at: self.event.at,
            metric: None,
            headline,
            details,
            facts: Vec::new(),
            metrics: Vec::new(),
            links,
            metadata: self.record.spec.metadata.clone(),
        }
    }

    /// A notification with the release's facts (commit, author).
    fn note(&self, kind: NotificationKind, headline: String, details: Vec<String>) -> Notification {
        let mut n = self.base(kind, headline, details);
        n.facts = self.release_facts();
        n
    }

    fn release_facts(&self) -> Vec<Fact> {
        let mut facts = Vec::new();
        for key in ["commit", "version", "author"] {
            if let Some(v) = self.record.spec.metadata.get(key) {
                let value = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                facts.push(fact(&capitalise(key), value));
            }
        }
        facts
    }

    fn earlier(&self, kinds: &[&str]) -> Option<&Event> {
        self.history
            .iter()
            .rev()
            .filter(|e| e.id < self.event.id)
            .find(|e| kinds.contains(&e.kind.as_str()))
    }

    /// The last verdict before this event (live analysis or bake).
    fn last_verdict(&self) -> Option<Verdict> {
        let e = self.earlier(&["analysis", "analysis_inconclusive", "bake_analysis"])?;
        serde_json::from_value(e.data["verdict"].clone()).ok()
    }

    /// Total steps of the plan, from the step events.
    fn steps_total(&self) -> Option<u64> {
        self.history
            .iter()
            .rev()
            .find_map(|e| e.data.get("steps").and_then(|s| s.as_u64()))
    }

    /// The weights the router confirmed, in order: `20% → 50% → 100%`.
    fn weights_path(&self) -> String {
        let mut path: Vec<f64> = Vec::new();
        for e in self.history.iter().filter(|e| e.kind == "weights_applied") {
            if let Some(w) = e.data["weight"].as_f64()
                && path.last() != Some(&w)
            {
                path.push(w);
            }
        }
        if path.is_empty() {
            return "no traffic was shifted".into();
        }
        path.iter().map(|w| pct(*w)).collect::<Vec<_>>().join(" → ")
    }

    fn reasons(&self, kinds: &[&str]) -> Vec<String> {
        self.earlier(kinds)
            .and_then(|e| serde_json::from_value::<Vec<String>>(e.data["reasons"].clone()).ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| self.record.state.reasons.clone())
    }

    fn submitted(&self) -> Notification {
        let mut n = self.note(
            NotificationKind::Submitted,
            format!(
                "{} submitted for {}: rule set {}",
                self.who(),
                self.env(),
                self.record.rules.name
            ),
            vec![self.event.message.clone()],
        );
        n.facts.insert(
            0,
            fact(
                "Router",
                format!(
                    "{}/{}",
                    self.record.spec.router, self.record.spec.target.backend
                ),
            ),
        );
        n
    }

    fn step(&self) -> Notification {
        let d = &self.event.data;
        let weight = d["weight"].as_f64().unwrap_or_default();
        let headline = format!(
            "{}: step {} of {} in {}, canary weight {}",
            self.who(),
            d["step"].as_u64().unwrap_or_default(),
            d["steps"].as_u64().unwrap_or_default(),
            self.env(),
            pct(weight)
        );
        let mut n = self.note(NotificationKind::Step, headline, vec![]);
        if let Some(v) = self.last_verdict() {
            n.metrics = v.metrics.iter().map(MetricLine::from_verdict).collect();
        }
        n
    }

    fn awaiting_approval(&self) -> Notification {
        let mut n = self.note(
            NotificationKind::AwaitingApproval,
            format!("{} in {} is awaiting approval", self.who(), self.env()),
            vec![self.event.message.clone()],
        );
        n.facts.insert(
            0,
            fact("Approve", format!("canaryd approve {}", self.record.id)),
        );
        n
    }

    fn promoted(&self) -> Notification {
        let mut details: Vec<String> = self
            .earlier(&["promoting"])
            .map(|e| e.message.trim_start_matches("promoting: ").to_string())
            .into_iter()
            .collect();
        if self.event.phase == Phase::Baking.as_str() {
            details.push("the bake now watches the new version before the release is final".into());
        }
        let mut n = self.note(
            NotificationKind::Promoted,
            format!(
                "{} promoted in {}: the canary serves all traffic",
                self.record.spec.service,
                self.env()
            ),
            details,
        );
        if let Some(v) = self.last_verdict() {
            n.metrics = v.metrics.iter().map(MetricLine::from_verdict).collect();
        }
        n
    }

    fn rolled_back(&self) -> Notification {
        let verdict = self.last_verdict();
        let all: Vec<MetricLine> = verdict
            .iter()
            .flat_map(|v| v.metrics.iter().map(MetricLine::from_verdict))
            .collect();
        let failing: Vec<MetricLine> = all.iter().filter(|m| m.failing).cloned().collect();
        let headline = if failing.is_empty() {
            format!(
                "{} rolled back in {}: all traffic is back on the baseline",
                self.record.spec.service,
                self.env()
            )
        } else {
            let names: Vec<&str> = failing.iter().map(|m| m.name.as_str()).collect();
            format!(
                "{} rolled back in {}: {} worse on the canary than on the baseline; all traffic is back on the baseline",
                self.record.spec.service,
                self.env(),
                names.join(", ")
            )
        };
        let mut n = self.note(
            NotificationKind::RolledBack,
            headline,
            self.reasons(&["rolling_back"]),
        );
        n.metrics = if failing.is_empty() { all } else { failing };
        n.facts.insert(0, fact("Reached", self.reached()));
        n
    }

    /// `step 2 of 3 (canary 50%)`.
    fn reached(&self) -> String {
        let state = &self.record.state;
        let step = self
            .earlier(&["step_started"])
            .and_then(|e| e.data["step"].as_u64())
            .unwrap_or(state.step as u64 + 1);
        let weight = self
            .history
            .iter()
            .rev()
            .filter(|e| e.kind == "weights_applied")
            .filter_map(|e| e.data["weight"].as_f64())
            .find(|w| *w > 0.0)
            .unwrap_or_default();
        match self.steps_total() {
            Some(total) => format!("step {step} of {total} (canary {})", pct(weight)),
            None => format!("step {step} (canary {})", pct(weight)),
        }
    }

    fn aborted(&self) -> Notification {
        let mut n = self.note(
            NotificationKind::Aborted,
            format!(
                "{} aborted in {}: all traffic is on the baseline",
                self.who(),
                self.env()
            ),
            self.reasons(&["rolling_back"]),
        );
        n.facts.insert(0, fact("Reached", self.reached()));
        n
    }

    fn failed(&self) -> Notification {
        let reasons = self.reasons(&["rolling_back", "bake_regression"]);
        let headline = if self.earlier(&["fail_safe"]).is_some() {
            format!(
                "{} failed in {}: no usable analysis, so the fail-safe returned all traffic to the baseline",
                self.who(),
                self.env()
            )
        } else if self.earlier(&["preflight_failed"]).is_some() {
            format!(
                "{} failed preflight in {}: no weight was changed",
                self.who(),
                self.env()
            )
        } else {
            format!("{} failed in {}", self.who(), self.env())
        };
        let mut n = self.note(NotificationKind::Failed, headline, reasons);
        n.facts.insert(0, fact("Reached", self.reached()));
        n
    }

    fn bake_regression(&self) -> Notification {
        let reasons = serde_json::from_value::<Vec<String>>(self.event.data["reasons"].clone())
            .unwrap_or_else(|_| vec![self.event.message.clone()]);
        let mut n = self.note(
            NotificationKind::BakeRegression,
            format!(
                "{} regressed in {} after promotion and the old version is gone: act now",
                self.record.spec.service,
                self.env()
            ),
            reasons,
        );
        if let Some(v) = self.last_verdict() {
            n.metrics = v
                .metrics
                .iter()
                .map(MetricLine::from_verdict)
                .filter(|m| m.failing)
                .collect();
        }
        n
    }

    fn summary(&self) -> Notification {
        let state = &self.record.state;
        let outcome = match Phase::parse(&self.event.phase) {
            Some(Phase::Succeeded) => "promoted",
            Some(Phase::RolledBack) => "rolled back",
            Some(Phase::Aborted) => "aborted",
            _ => "failed",
        };
        let finished = state.finished_at.unwrap_or(self.event.at);
        let took = duration(self.record.created_at, finished);
        let mut n = self.base(
            NotificationKind::Summary,
            format!(
                "Deployment summary: {} in {} was {outcome} after {took}",
                self.record.spec.service,
                self.env()
            ),
            state.reasons.clone(),
        );
        n.severity = Severity::Info;
        n.facts = vec![
            fact("Decision", outcome.to_string()),
            fact("Duration", took),
            fact("Steps", self.weights_path()),
            fact("Intervals analysed", state.intervals.to_string()),
            fact(
                "Rules",
                format!(
                    "{} ({})",
                    self.record.rules.name,
                    self.record.rules.hash.chars().take(19).collect::<String>()
                ),
            ),
        ];
        n.facts.extend(self.release_facts());
        let verdict = state.last_verdict.clone().or_else(|| self.last_verdict());
        n.metrics = verdict
            .iter()
            .flat_map(|v| v.metrics.iter().map(MetricLine::from_verdict))
            .collect();
        n
    }

    /// One warning per metric that deserves one in this analysis.
    fn warnings(&self) -> Vec<Notification> {
        let Ok(verdict) = serde_json::from_value::<Verdict>(self.event.data["verdict"].clone())
        else {
            return Vec::new();
        };
        let step = self.event.data["step"].as_u64();
        let last_step = self.steps_total().map(|t| t.saturating_sub(1));
        let at_last_step = step.is_some() && step == last_step;
        verdict
            .metrics
            .iter()
            .filter(|m| !m.dry_run)
            .filter_map(|m| warning_for(m, at_last_step).map(|why| (m, why)))
            .map(|(m, (what, headline))| {
                let weight = self.event.data["weight"].as_f64();
                let mut n = self.note(
                    NotificationKind::Warning,
                    format!("{}: {headline}", self.who()),
                    vec![m.reason.clone()],
                );
                n.metric = Some(m.name.clone());
                n.metrics = vec![MetricLine::from_verdict(m)];
                n.facts.insert(0, fact("Warning", what.to_string()));
                if let Some(w) = weight {
                    n.facts.insert(1, fact("Canary weight", pct(w)));
                }
                n
            })
            .collect()
    }
}

/// Why a metric deserves a warning: (kind, headline), or None.
fn warning_for(m: &MetricVerdict, at_last_step: bool) -> Option<(&'static str, String)> {
    match m.status {
        MetricStatus::InstanceAnomaly => Some((
            "instance_anomaly",
            format!("{} differs on a minority of canary instances", m.name),
        )),
        MetricStatus::NoData | MetricStatus::Error => Some((
            "no_data",
            format!(
                "no usable data for {} (this is not evidence against the canary)",
                m.name
            ),
        )),
        MetricStatus::Continue => {
            if let (Some(e), Some(margin)) = (m.estimate, m.margin)
                && near_margin(e, margin)
            {
                return Some((
                    "near_margin",
                    format!(
                        "{} is near its margin ({} of {})",
                        m.name,
                        times(e),
                        times(margin)
                    ),
                ));
            }
            (at_last_step && m.reason.starts_with("insufficient evidence")).then(|| {
                (
                    "insufficient_evidence",
                    format!(
                        "insufficient evidence for {} at the last analysis step",
                        m.name
                    ),
                )
            })
        }
        _ => None,
    }
}

/// Whether an effect estimate has gone most of the way to its margin (either direction).
fn near_margin(estimate: f64, margin: f64) -> bool {
    if margin > 1.0 {
        estimate >= 1.0 + (margin - 1.0) * NEAR_MARGIN
    } else if margin < 1.0 {
        estimate <= 1.0 - (1.0 - margin) * NEAR_MARGIN
    } else {
        false
    }
}

/// A traffic share: `20%`, `12.5%`.
fn pct(w: f64) -> String {
    if w.fract() == 0.0 {
        format!("{w:.0}%")
    } else {
        format!("{}%", crate::judge::fmt_num(w))
    }
}

fn times(v: f64) -> String {
    format!("×{}", crate::judge::fmt_num(v))
}

fn fact(name: &str, value: String) -> Fact {
    Fact {
        name: name.into(),
        value,
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn duration(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let secs = (to - from).num_seconds().max(0) as u64;
    crate::time::format_duration(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::judge::{Decision, Evidence, JudgeState};
    use crate::lifecycle::{CanaryState, Phase};
    use crate::rules::{RuleSource, parse_rule_set};
    use serde_json::json;

    pub(crate) fn record(environment: &str) -> CanaryRecord {
        let spec = serde_yaml::from_str::<crate::lifecycle::CanarySpec>(&format!(
            "service: checkout\nenvironment: {environment}\nrouter: edge\ntarget: {{backend: be, baseline: [a], canary: [b]}}\ncanary_labels: {{v: '2'}}\nrules: r\nstrategy: {{steps: [20, 50, 100], interval: 10s}}\nmetadata: {{commit: 3f2a9c1, pipeline_url: 'https://ci.example/run/42'}}\n"
        ))
        .unwrap();
        let text = "name: r\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'x{ {{selector}} }'\n    max_increase: 50%\n";
        let rules = parse_rule_set("r.yaml", text).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        CanaryRecord {
            id: 7,
            spec,
            rules: RuleSource::new("r", "r.yaml", text.into()),
            state: CanaryState::new(JudgeState::new(&rules)),
            created_at: t0,
            updated_at: t0,
        }
    }

    pub(crate) fn links() -> LinkSettings {
        LinkSettings {
            api_base: "http://canaryd.example:8080/".into(),
            grafana: Some(
                "https://grafana.example/d/canaryd?var-canary={id}&var-service={service}".into(),
            ),
        }
    }

    pub(crate) fn ev(id: i64, kind: &str, phase: &str, data: serde_json::Value) -> Event {
        Event {
            id,
            canary_id: 7,
            at: DateTime::from_timestamp(1_800_000_000 + id * 10, 0).unwrap(),
            kind: kind.into(),
            phase: phase.into(),
            actor: "canaryd".into(),
            message: format!("{kind} message"),
            data,
        }
    }

    fn metric(name: &str, status: MetricStatus, estimate: f64, reason: &str) -> MetricVerdict {
        MetricVerdict {
            name: name.into(),
            status,
            canary: Some(0.12),
            baseline: Some(0.005),
            unit: "error ratio".into(),
            estimate: Some(estimate),
            lower: Some(estimate / 4.0),
            upper: None,
            margin: Some(1.5),
            evidence: Evidence::default(),
            reason: reason.into(),
            critical: true,
            dry_run: false,
        }
    }

    fn analysis(id: i64, step: u64, metrics: Vec<MetricVerdict>, decision: Decision) -> Event {
        let verdict = Verdict {
            decision,
            metrics,
            reasons: vec!["error-rate: canary 12.0% vs baseline 0.500% bad".into()],
        };
        ev(
            id,
            "analysis",
            "progressing",
            json!({"interval": 1, "step": step, "weight": 20.0, "verdict": verdict}),
        )
    }

    /// A canary rolled back at its first step by error-rate.
    pub(crate) fn rolled_back_history() -> (CanaryRecord, Vec<Event>) {
        let mut rec = record("production");
        let history = vec![
            ev(1, "submitted", "pending", json!({})),
            ev(2, "preflight_passed", "progressing", json!(null)),
            ev(
                3,
                "step_started",
                "progressing",
                json!({"step": 1, "steps": 3, "weight": 20.0}),
            ),
            ev(4, "weights_applied", "progressing", json!({"weight": 20.0})),
            analysis(
                5,
                1,
                vec![
                    metric("error-rate", MetricStatus::Fail, 24.0, "error-rate: beyond"),
                    metric("latency", MetricStatus::Pass, 1.0, "latency: within"),
                ],
                Decision::Rollback,
            ),
            ev(
                6,
                "rolling_back",
                "rolling_back",
                json!({"reasons": ["error-rate: canary 12.0% vs baseline 0.500% bad"], "weight": 0.0}),
            ),
            ev(7, "weights_applied", "rolled_back", json!({"weight": 0.0})),
            ev(8, "rolled_back", "rolled_back", json!({"reasons": []})),
        ];
        rec.state.phase = Phase::RolledBack;
        rec.state.reasons = vec!["error-rate: canary 12.0% vs baseline 0.500% bad".into()];
        rec.state.finished_at = Some(history[7].at);
        rec.state.intervals = 1;
        (rec, history)
    }

    #[test]
    fn a_rollback_names_each_failing_metric_with_values_estimate_interval_and_links() {
        let (rec, history) = rolled_back_history();
        let out = compose(&history[7], &rec, &history, &links());
        let kinds: Vec<NotificationKind> = out.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            [NotificationKind::RolledBack, NotificationKind::Summary]
        );
        let n = &out[0];
        assert_eq!(n.severity, Severity::Critical);
        assert_eq!(n.subject(), "checkout rolled back in production (canary 7)");
        assert!(
            n.headline.contains("error-rate worse on the canary"),
            "{}",
            n.headline
        );
        assert_eq!(n.metrics.len(), 1, "only the failing metric");
        let text = n.text();
        assert!(
            text.contains(
                "error-rate: canary 12.0% vs baseline 0.500%, ×24.0 [×6.00, ∞] (margin ×1.50) FAIL"
            ),
            "{text}"
        );
        assert!(
            text.contains("- error-rate: canary 12.0% vs baseline 0.500% bad"),
            "{text}"
        );
        assert!(
            text.contains("Canary: http://canaryd.example:8080/api/v1/canaries/7"),
            "{text}"
        );
        assert!(
            text.contains(
                "Grafana: https://grafana.example/d/canaryd?var-canary=7&var-service=checkout"
            ),
            "{text}"
        );
        assert!(
            text.contains("Pipeline: https://ci.example/run/42"),
            "{text}"
        );
        assert!(text.contains("Reached: step 1 of 3 (canary 20%)"), "{text}");
        // The summary: duration, steps, the final estimates of every metric, the decision.
        let s = &out[1];
        let text = s.text();
        assert!(text.contains("Decision: rolled back"), "{text}");
        assert!(text.contains("Duration: 1m20s"), "{text}");
        assert!(text.contains("Steps: 20% → 0%"), "{text}");
        assert_eq!(s.metrics.len(), 2, "{text}");
    }

    #[test]
    fn silent_events_and_no_loops() {
        let (rec, history) = rolled_back_history();
        for kind in [
            "weights_applied",
            "promoting",
            "rolling_back",
            "router_error",
            "notification_failed",
            "command",
        ] {
            let e = ev(9, kind, "progressing", json!({}));
            assert!(compose(&e, &rec, &history, &links()).is_empty(), "{kind}");
        }
        // A promotion into the bake is not the end: no summary yet.
        let e = ev(9, "promoted", "baking", json!({}));
        let kinds: Vec<_> = compose(&e, &rec, &history, &links())
            .iter()
            .map(|n| n.kind)
            .collect();
        assert_eq!(kinds, [NotificationKind::Promoted]);
        let e = ev(10, "bake_finished", "succeeded", json!({}));
        let kinds: Vec<_> = compose(&e, &rec, &history, &links())
            .iter()
            .map(|n| n.kind)
            .collect();
        assert_eq!(
            kinds,
            [NotificationKind::BakeFinished, NotificationKind::Summary]
        );
    }

    #[test]
    fn warnings_per_metric_near_margin_anomaly_no_data_and_late_insufficient_evidence() {
        let (rec, history) = rolled_back_history();
        let metrics = vec![
            metric("near", MetricStatus::Continue, 1.45, "near: looks worse"),
            metric(
                "far",
                MetricStatus::Continue,
                1.1,
                "insufficient evidence for far: more requests",
            ),
            metric(
                "odd",
                MetricStatus::InstanceAnomaly,
                3.0,
                "odd: one instance",
            ),
            metric("gap", MetricStatus::NoData, 1.0, "gap: no data"),
            metric("ok", MetricStatus::Pass, 1.0, "ok"),
        ];
        let at_first = analysis(9, 1, metrics.clone(), Decision::Continue);
        let out = compose(&at_first, &rec, &history, &links());
        let names: Vec<_> = out.iter().map(|n| n.metric.clone().unwrap()).collect();
        assert_eq!(names, ["near", "odd", "gap"]);
        assert!(out.iter().all(|n| n.kind == NotificationKind::Warning));
        assert_eq!(
            out[0].subject(),
            "checkout warning for near in production (canary 7)"
        );
        assert!(out[0].headline.contains("near its margin (×1.45 of ×1.50)"));
        // At the last analysis step (2 of 3), insufficient evidence is worth a warning too.
        let at_last = analysis(9, 2, metrics, Decision::Continue);
        let out = compose(&at_last, &rec, &history, &links());
        assert!(out.iter().any(|n| n.metric.as_deref() == Some("far")));
        assert!(near_margin(0.55, 0.5) && !near_margin(0.8, 0.5));
    }

    #[test]
    fn pauses_say_why_and_failures_say_the_fail_safe_ran() {
        let (rec, mut history) = rolled_back_history();
        let e = ev(
            9,
            "paused",
            "paused",
            json!({"reason": "the router's weights were changed outside canaryd"}),
        );
        let n = &compose(&e, &rec, &history, &links())[0];
        assert_eq!(n.kind, NotificationKind::Paused);
        assert_eq!(
            n.details,
            ["the router's weights were changed outside canaryd"]
        );
        history.push(ev(9, "fail_safe", "rolling_back", json!({})));
        let e = ev(10, "failed", "failed", json!({}));
        let out = compose(&e, &rec, &history, &links());
        assert!(out[0].headline.contains("fail-safe"), "{}", out[0].headline);
        assert_eq!(out[1].kind, NotificationKind::Summary);
    }
}
