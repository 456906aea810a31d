//! The client the CLI uses: submit, follow, show, command.

use super::view::CanaryView;
use crate::judge::{MetricVerdict, Verdict, fmt_num};
use crate::store::Event;
use serde_json::Value;
use std::time::Duration;

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error("cannot reach canaryd at {url}: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error kind (`invalid_spec`, `conflict`, ...).
        kind: String,
        /// The message.
        message: String,
    },
}

/// A canaryd API client.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the daemon at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .expect("default HTTP client builds"),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Api {
                status: status.as_u16(),
                kind: body["error"].as_str().unwrap_or("error").to_string(),
                message: body["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}: {text}")),
            })
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, v: Value) -> Result<T, ClientError> {
        serde_json::from_value(v).map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: format!("unexpected answer: {e}"),
        })
    }

    /// Submits a spec (YAML text).
    pub async fn submit_yaml(&self, yaml: &str) -> Result<CanaryView, ClientError> {
        let req = self
            .http
            .post(format!("{}/api/v1/canaries", self.base))
            .header("content-type", "application/yaml")
            .body(yaml.to_string());
        let v = self.send(req).await?;
        self.decode(v)
    }

    /// One canary.
    pub async fn get(&self, id: i64) -> Result<CanaryView, ClientError> {
        let v = self
            .send(self.http.get(format!("{}/api/v1/canaries/{id}", self.base)))
            .await?;
        self.decode(v)
    }

    /// Canaries, newest first.
    pub async fn list(&self, active_only: bool) -> Result<Vec<CanaryView>, ClientError> {
        let state = if active_only { "active" } else { "all" };
        let v = self
            .send(
                self.http
                    .get(format!("{}/api/v1/canaries?state={state}", self.base)),
            )
            .await?;
        self.decode(v)
    }

    /// Events after `after`, waiting up to `wait` for new ones (long poll).
    pub async fn events(
        &self,
        id: i64,
        after: i64,
        wait: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        let url = format!(
            "{}/api/v1/canaries/{id}/events?after={after}&wait={}s",
            self.base,
            wait.as_secs()
        );
        let v = self.send(self.http.get(url)).await?;
        self.decode(v["events"].clone())
    }

    /// Sends a command (`abort`, `pause`, ...).
    pub async fn command(&self, id: i64, action: &str) -> Result<CanaryView, ClientError> {
        let v = self
            .send(
                self.http
                    .post(format!("{}/api/v1/canaries/{id}/{action}", self.base)),
            )
            .await?;
        self.decode(v)
    }
}

/// Exit code of `submit --wait` for a canary's terminal phase.
pub fn exit_code(phase: &str) -> Option<i32> {
    match phase {
        "succeeded" => Some(0),
        "rolled_back" => Some(3),
        "aborted" => Some(4),
        "failed" => Some(5),
        _ => None,
    }
}

fn metric_line(m: &MetricVerdict) -> String {
    let value = |v: Option<f64>| -> String {
        match v {
            None => "-".into(),
            Some(v) if m.unit.contains("ratio") || m.unit.contains("share") => {
                format!("{}%", fmt_num(100.0 * v))
            }
            Some(v) if m.unit.contains("seconds") => format!("{}s", fmt_num(v)),
            Some(v) => fmt_num(v),
        }
    };
    let dry = if m.dry_run { " (dry-run)" } else { "" };
    format!(
        "{} {} vs {} {}{dry}",
        m.name,
        value(m.canary),
        value(m.baseline),
        m.status
    )
}

/// A one-line summary of an interval's verdict.
pub fn verdict_line(interval: u64, step: u64, steps: u64, weight: f64, v: &Verdict) -> String {
    let metrics: Vec<String> = v.metrics.iter().map(metric_line).collect();
    format!(
        "interval {interval} | step {step}/{steps} canary {}% | {} | {}",
        fmt_num(weight),
        metrics.join(" | "),
        v.decision
    )
}

/// The line `submit --wait` prints for an event, if any.
pub fn event_line(e: &Event, steps: usize) -> Option<String> {
    let time = e.at.format("%H:%M:%S");
    match e.kind.as_str() {
        "analysis" | "analysis_inconclusive" => {
            let v: Verdict = serde_json::from_value(e.data["verdict"].clone()).ok()?;
            let line = verdict_line(
                e.data["interval"].as_u64().unwrap_or(0),
                e.data["step"].as_u64().unwrap_or(0),
                steps as u64,
                e.data["weight"].as_f64().unwrap_or(0.0),
                &v,
            );
            Some(format!("{time} {line}"))
        }
        "bake_analysis" => {
            let v: Verdict = serde_json::from_value(e.data["verdict"].clone()).ok()?;
            let metrics: Vec<String> = v.metrics.iter().map(metric_line).collect();
            Some(format!(
                "{time} bake interval {} | {} | {}",
                e.data["interval"].as_u64().unwrap_or(0),
                metrics.join(" | "),
                v.decision
            ))
        }
        "preflight_check" if e.data["ok"] == false => Some(format!("{time} {}", e.message)),
        "submitted"
        | "step_started"
        | "preflight_failed"
        | "paused"
        | "resumed"
        | "drift_detected"
        | "fail_safe"
        | "rolling_back"
        | "promoting"
        | "router_error"
        | "promoted"
        | "rolled_back"
        | "aborted"
        | "failed"
        | "awaiting_approval"
        | "approval_timed_out"
        | "command"
        | "hook_ran"
        | "hook_failed"
        | "bake_started"
        | "bake_finished"
        | "bake_regression"
        | "notification_failed" => Some(format!("{time} {}", e.message)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Decision, Evidence, MetricStatus};

    #[test]
    fn interval_lines_show_both_arms_and_the_decision() {
        let m = MetricVerdict {
            name: "error-rate".into(),
            status: MetricStatus::Fail,
            canary: Some(0.1),
            baseline: Some(0.01),
            unit: "bad ratio".into(),
            estimate: Some(10.0),
            lower: Some(4.0),
            upper: None,
            margin: Some(1.5),
            evidence: Evidence::default(),
            reason: String::new(),
            critical: true,
            dry_run: false,
        };
        let v = Verdict {
            decision: Decision::Rollback,
            metrics: vec![m],
            reasons: vec![],
        };
        assert_eq!(
            verdict_line(2, 1, 3, 10.0, &v),
            "interval 2 | step 1/3 canary 10.0% | error-rate 10.0% vs 1.00% FAIL | rollback"
        );
        assert_eq!(exit_code("rolled_back"), Some(3));
        assert_eq!(exit_code("progressing"), None);
    }
}
