//! Google Chat webhooks, as a `cardsV2` card: a header (subject, service and environment), the
//! summary as a text paragraph, one `decoratedText` per metric and fact, and buttons for the
//! links. Every message of a canary goes to one thread (`thread.threadKey` = the canary, with
//! `messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` added to the URL).

use super::http::Target;
use super::message::truncate;
use super::templates::escape_html;
use super::{DeliveryError, Notifier, Outgoing};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// A Google Chat webhook.
pub struct GoogleChat {
    name: String,
    target: Target,
    url: super::Secret,
}

impl GoogleChat {
    /// A Google Chat notifier posting to `target` (threaded by canary).
    pub fn new(name: &str, target: Target) -> Result<Self, crate::problem::Problem> {
        let mut url = reqwest::Url::parse(target.url().expose())
            .map_err(|e| crate::problem::Problem::new("url", format!("not a valid URL ({e})")))?;
        let has_option = url.query_pairs().any(|(k, _)| k == "messageReplyOption");
        if !has_option {
            url.query_pairs_mut()
                .append_pair("messageReplyOption", "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
        }
        Ok(GoogleChat {
            name: name.into(),
            url: super::Secret::new(url.to_string()),
            target,
        })
    }
}

/// The `cardsV2` payload.
pub fn payload(out: &Outgoing<'_>) -> Value {
    let n = out.notification;
    let r = out.rendered;
    let e = escape_html;
    let mut sections = vec![json!({
        "widgets": [{"textParagraph": {"text": truncate(&e(&r.summary), 4000)}}],
    })];
    if !n.metrics.is_empty() {
        let widgets: Vec<Value> = n
            .metrics
            .iter()
            .map(|m| {
                json!({"decoratedText": {
                    "topLabel": format!("{} · {}", m.name, m.status),
                    "text": e(&m.values),
                    "bottomLabel": e(&m.effect),
                    "wrapText": true,
                }})
            })
            .collect();
        sections.push(json!({"header": "Metrics", "widgets": widgets}));
    }
    if !n.facts.is_empty() {
        let widgets: Vec<Value> = n
            .facts
            .iter()
            .map(|f| json!({"decoratedText": {"topLabel": f.name, "text": e(&f.value), "wrapText": true}}))
            .collect();
        sections.push(json!({"widgets": widgets}));
    }
    if !n.links.is_empty() {
        let buttons: Vec<Value> = n
            .links
            .iter()
            .map(|l| json!({"text": l.name, "onClick": {"openLink": {"url": l.url}}}))
            .collect();
        sections.push(json!({"widgets": [{"buttonList": {"buttons": buttons}}]}));
    }
    json!({
        "text": truncate(&r.subject, 4000),
        "cardsV2": [{
            "cardId": format!("canary-{}-event-{}-{}", n.canary.id, n.event_id, n.kind),
            "card": {
                "header": {
                    "title": truncate(&r.subject, 200),
                    "subtitle": format!("{} · {}", n.canary.service, n.canary.environment),
                },
                "sections": sections,
            },
        }],
        "thread": {"threadKey": format!("canaryd-canary-{}", n.canary.id)},
    })
}

#[async_trait::async_trait]
impl Notifier for GoogleChat {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "google_chat"
    }

    async fn deliver(&self, out: &Outgoing<'_>) -> Result<(), DeliveryError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        self.target
            .post(
                self.url.expose(),
                payload(out).to_string().into_bytes(),
                headers,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::templates::{Templates, sample};

    #[test]
    fn cards_v2_shape_and_threading() {
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let p = payload(&Outgoing {
            key: "k",
            notification: &n,
            rendered: &r,
        });
        let card = &p["cardsV2"][0];
        assert_eq!(card["cardId"], "canary-7-event-42-rolled_back");
        assert_eq!(
            card["card"]["header"]["title"],
            "checkout rolled back in production (canary 7)"
        );
        assert!(card["card"]["sections"][0]["widgets"][0]["textParagraph"]["text"].is_string());
        let metric = &card["card"]["sections"][1]["widgets"][0]["decoratedText"];
        assert_eq!(metric["topLabel"], "error-rate · FAIL");
        assert_eq!(metric["text"], "canary 12.0% vs baseline 0.500%");
        assert_eq!(p["thread"]["threadKey"], "canaryd-canary-7");
        let g = GoogleChat::new(
            "g",
            Target::new(
                crate::notify::http::client(std::time::Duration::from_secs(1)),
                crate::notify::Secret::new(
                    "https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t".into(),
                ),
            ),
        )
        .unwrap();
        assert!(
            g.url
                .expose()
                .ends_with("&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
        );
    }
}
