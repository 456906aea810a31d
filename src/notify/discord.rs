//! Discord webhooks: `content` (the subject, ≤ 2000 characters) and one embed with the summary,
//! a colour by severity, one inline field per metric, the facts, and a timestamp. Discord answers
//! 204; a 429 carries `retry_after` (seconds) in its JSON body, which the outbox honours exactly.
//! Limits kept: title 256, description 4096, 25 fields of name 256 / value 1024.

use super::http::Target;
use super::message::{Severity, truncate};
use super::{DeliveryError, Notifier, Outgoing};
use serde_json::{Value, json};

/// A Discord webhook.
pub struct Discord {
    name: String,
    target: Target,
}

impl Discord {
    /// A Discord notifier posting to `target`.
    pub fn new(name: &str, target: Target) -> Self {
        Discord {
            name: name.into(),
            target,
        }
    }
}

/// The embed's colour by severity (red, orange, green).
fn color(s: Severity) -> u32 {
    match s {
        Severity::Critical => 15158332,
        Severity::Warning => 15105570,
        Severity::Info => 3066993,
    }
}

/// The webhook payload.
pub fn payload(out: &Outgoing<'_>) -> Value {
    let n = out.notification;
    let r = out.rendered;
    let mut fields: Vec<Value> = n
        .metrics
        .iter()
        .map(|m| {
            let value = if m.effect.is_empty() {
                format!("{}\n{}", m.values, m.status)
            } else {
                format!("{}\n{}\n{}", m.values, m.effect, m.status)
            };
            json!({"name": truncate(&m.name, 256), "value": truncate(&value, 1024), "inline": true})
        })
        .collect();
    fields.extend(n.facts.iter().map(|f| {
        json!({"name": truncate(&f.name, 256), "value": truncate(&f.value, 1024), "inline": false})
    }));
    fields.truncate(25);
    let mut embed = json!({
        "title": truncate(&r.subject, 256),
        "description": truncate(&r.summary, 4096),
        "color": color(n.severity),
        "fields": fields,
        "timestamp": n.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let Some(link) = n.links.first() {
        embed["url"] = Value::String(link.url.clone());
    }
    json!({
        "content": truncate(&r.subject, 2000),
        "username": "canaryd",
        "embeds": [embed],
    })
}

#[async_trait::async_trait]
impl Notifier for Discord {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "discord"
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
    fn embed_shape() {
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let p = payload(&Outgoing {
            key: "k",
            notification: &n,
            rendered: &r,
        });
        assert_eq!(
            p["content"],
            "checkout rolled back in production (canary 7)"
        );
        assert_eq!(p["username"], "canaryd");
        let e = &p["embeds"][0];
        assert_eq!(e["color"], 15158332);
        assert_eq!(e["fields"][0]["name"], "error-rate");
        assert_eq!(e["fields"][0]["inline"], true);
        assert_eq!(e["timestamp"], "2027-01-15T08:00:00Z");
        assert!(
            e["description"]
                .as_str()
                .unwrap()
                .starts_with("checkout rolled back")
        );
    }
}
