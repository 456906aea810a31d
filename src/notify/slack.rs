//! Slack incoming webhooks, in Block Kit: a header with the subject, the summary as `mrkdwn`,
//! one field per metric (canary vs baseline, effect and interval), and the links in a context
//! block. `text` is the fallback Slack shows in notifications. Limits kept: header 150
//! characters, section text 3000, at most 10 fields of 2000.

use super::http::Target;
use super::message::truncate;
use super::{DeliveryError, Notifier, Outgoing};
use serde_json::{Value, json};

/// A Slack webhook.
pub struct Slack {
    name: String,
    target: Target,
}

impl Slack {
    /// A Slack notifier posting to `target`.
    pub fn new(name: &str, target: Target) -> Self {
        Slack {
            name: name.into(),
            target,
        }
    }
}

/// Escapes text for Slack `mrkdwn` (`&`, `<`, `>`).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Block Kit payload.
pub fn payload(out: &Outgoing<'_>) -> Value {
    let n = out.notification;
    let r = out.rendered;
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&r.subject, 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&escape(&r.summary), 3000)}}),
    ];
    let fields: Vec<Value> = n
        .metrics
        .iter()
        .take(10)
        .map(|m| {
            let mut text = format!(
                "*{}* {}\n{}",
                escape(&m.name),
                escape(&m.status),
                escape(&m.values)
            );
            if !m.effect.is_empty() {
                text.push('\n');
                text.push_str(&escape(&m.effect));
            }
            json!({"type": "mrkdwn", "text": truncate(&text, 2000)})
        })
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    let facts: Vec<String> = n
        .facts
        .iter()
        .map(|f| format!("*{}:* {}", escape(&f.name), escape(&f.value)))
        .collect();
    if !facts.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&facts.join("\n"), 3000)}}));
    }
    if !n.links.is_empty() {
        let links: Vec<String> = n
            .links
            .iter()
            .map(|l| format!("<{}|{}>", l.url, escape(&l.name)))
            .collect();
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": links.join(" · ")}]}),
        );
    }
    json!({
        "text": truncate(&format!("{}: {}", r.subject, n.headline), 3000),
        "blocks": blocks,
    })
}

#[async_trait::async_trait]
impl Notifier for Slack {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "slack"
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
    fn block_kit_shape() {
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let p = payload(&Outgoing {
            key: "k",
            notification: &n,
            rendered: &r,
        });
        assert_eq!(p["blocks"][0]["type"], "header");
        assert_eq!(p["blocks"][0]["text"]["type"], "plain_text");
        assert_eq!(
            p["blocks"][0]["text"]["text"],
            "checkout rolled back in production (canary 7)"
        );
        assert_eq!(p["blocks"][1]["text"]["type"], "mrkdwn");
        let field = p["blocks"][2]["fields"][0]["text"].as_str().unwrap();
        assert_eq!(
            field,
            "*error-rate* FAIL\ncanary 12.0% vs baseline 0.500%\n×24.0 [×6.10, ∞] (margin ×1.50)"
        );
        assert_eq!(p["blocks"][4]["type"], "context");
        assert!(
            p["text"]
                .as_str()
                .unwrap()
                .starts_with("checkout rolled back")
        );
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
    }
}
