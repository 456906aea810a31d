//! Mattermost incoming webhooks: Slack-compatible `text` (Markdown) plus one Slack-style
//! attachment with a colour bar, a title linking to the canary, and one short field per metric
//! (Block Kit `blocks` are not Mattermost's format). Mattermost answers 200 `ok`.

use super::http::Target;
use super::message::{Severity, truncate};
use super::{DeliveryError, Notifier, Outgoing};
use serde_json::{Value, json};

/// A Mattermost webhook.
pub struct Mattermost {
    name: String,
    target: Target,
}

impl Mattermost {
    /// A Mattermost notifier posting to `target`.
    pub fn new(name: &str, target: Target) -> Self {
        Mattermost {
            name: name.into(),
            target,
        }
    }
}

/// The webhook payload.
pub fn payload(out: &Outgoing<'_>) -> Value {
    let n = out.notification;
    let r = out.rendered;
    let color = match n.severity {
        Severity::Critical => "#d00000",
        Severity::Warning => "#e8a317",
        Severity::Info => "#2eb67d",
    };
    let mut fields: Vec<Value> = n
        .metrics
        .iter()
        .map(|m| {
            let value = if m.effect.is_empty() {
                format!("{} ({})", m.values, m.status)
            } else {
                format!("{}\n{} ({})", m.values, m.effect, m.status)
            };
            json!({"short": true, "title": m.name, "value": value})
        })
        .collect();
    fields.extend(
        n.facts
            .iter()
            .map(|f| json!({"short": true, "title": f.name, "value": f.value})),
    );
    let links: Vec<String> = n
        .links
        .iter()
        .map(|l| format!("[{}]({})", l.name, l.url))
        .collect();
    json!({
        "username": "canaryd",
        "text": truncate(&format!("#### {}\n{}", r.subject, r.summary), 16000),
        "attachments": [{
            "fallback": truncate(&format!("{}: {}", r.subject, n.headline), 1000),
            "color": color,
            "title": r.subject,
            "title_link": n.canary.url,
            "text": links.join(" · "),
            "fields": fields,
        }],
    })
}

#[async_trait::async_trait]
impl Notifier for Mattermost {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mattermost"
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
    fn slack_compatible_shape_without_blocks() {
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let p = payload(&Outgoing {
            key: "k",
            notification: &n,
            rendered: &r,
        });
        assert!(p.get("blocks").is_none());
        assert!(
            p["text"]
                .as_str()
                .unwrap()
                .starts_with("#### checkout rolled back")
        );
        let a = &p["attachments"][0];
        assert_eq!(a["color"], "#d00000");
        assert_eq!(a["fields"][0]["title"], "error-rate");
        assert_eq!(a["fields"][0]["short"], true);
        assert_eq!(a["title_link"], "http://127.0.0.1:8080/api/v1/canaries/7");
    }
}
