//! Microsoft Teams through a Workflows webhook ("When a Teams webhook request is received"),
//! which accepts Adaptive Cards only (Office 365 connectors and MessageCards are retired): a
//! `message` with one `application/vnd.microsoft.card.adaptive` attachment holding the subject,
//! the summary, the metrics and facts as FactSets, and the links as `Action.OpenUrl`. The flow
//! runs asynchronously, so any 2xx (usually 202) counts as delivered.

use super::http::Target;
use super::message::{Severity, truncate};
use super::{DeliveryError, Notifier, Outgoing};
use serde_json::{Value, json};

/// A Teams Workflows webhook.
pub struct Teams {
    name: String,
    target: Target,
}

impl Teams {
    /// A Teams notifier posting to `target`.
    pub fn new(name: &str, target: Target) -> Self {
        Teams {
            name: name.into(),
            target,
        }
    }
}

/// The Adaptive Card payload.
pub fn payload(out: &Outgoing<'_>) -> Value {
    let n = out.notification;
    let r = out.rendered;
    let color = match n.severity {
        Severity::Critical => "Attention",
        Severity::Warning => "Warning",
        Severity::Info => "Good",
    };
    let mut body = vec![
        json!({"type": "TextBlock", "text": truncate(&r.subject, 300), "weight": "Bolder", "size": "Medium", "color": color, "wrap": true}),
        json!({"type": "TextBlock", "text": truncate(&r.summary, 4000), "wrap": true}),
    ];
    if !n.metrics.is_empty() {
        let facts: Vec<Value> = n
            .metrics
            .iter()
            .map(|m| {
                let value = if m.effect.is_empty() {
                    format!("{} — {}", m.values, m.status)
                } else {
                    format!("{}; {} — {}", m.values, m.effect, m.status)
                };
                json!({"title": m.name, "value": value})
            })
            .collect();
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    if !n.facts.is_empty() {
        let facts: Vec<Value> = n
            .facts
            .iter()
            .map(|f| json!({"title": f.name, "value": f.value}))
            .collect();
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if !n.links.is_empty() {
        let actions: Vec<Value> = n
            .links
            .iter()
            .map(|l| json!({"type": "Action.OpenUrl", "title": l.name, "url": l.url}))
            .collect();
        content["actions"] = Value::Array(actions);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": content,
        }],
    })
}

#[async_trait::async_trait]
impl Notifier for Teams {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "teams"
    }

    async fn deliver(&self, out: &Outgoing<'_>) -> Result<(), DeliveryError> {
        self.target.post_json(&payload(out)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::templates::{Templates, sample};

    #[test]
    fn adaptive_card_shape() {
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let p = payload(&Outgoing {
            key: "k",
            notification: &n,
            rendered: &r,
        });
        assert_eq!(p["type"], "message");
        let a = &p["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        assert!(a["contentUrl"].is_null());
        let c = &a["content"];
        assert_eq!(c["type"], "AdaptiveCard");
        assert_eq!(c["version"], "1.4");
        assert_eq!(c["body"][0]["weight"], "Bolder");
        assert_eq!(c["body"][2]["type"], "FactSet");
        assert_eq!(c["body"][2]["facts"][0]["title"], "error-rate");
        assert_eq!(
            c["body"][2]["facts"][0]["value"],
            "canary 12.0% vs baseline 0.500%; ×24.0 [×6.10, ∞] (margin ×1.50) — FAIL"
        );
        assert_eq!(c["actions"][0]["type"], "Action.OpenUrl");
    }
}
