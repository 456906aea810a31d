//! canaryd's own webhook: the notification as a documented JSON document, signed so receivers
//! can check it came from canaryd and was not replayed.
//!
//! Body (`Content-Type: application/json`): the notification model (`kind`, `severity`,
//! `canary {id, service, environment, url}`, `event_id`, `at`, `metric`, `headline`,
//! `details`, `facts`, `metrics` with raw numbers and text, `links`, `metadata`) plus `version`
//! (1), `delivery` (the idempotency key), `subject` and `text`.
//!
//! Headers:
//! - `X-Canaryd-Delivery`: the idempotency key, the same on every attempt of this delivery;
//! - `X-Canaryd-Event`: the notification kind;
//! - `X-Canaryd-Timestamp`: Unix seconds when this attempt was signed;
//! - `X-Canaryd-Signature`: `sha256=` + hex HMAC-SHA256, keyed with the configured `secret`,
//!   of `TIMESTAMP + "." + BODY` (only when a secret is configured). Receivers recompute it,
//!   compare in constant time and reject old timestamps.

use super::http::Target;
use super::{DeliveryError, Notifier, Outgoing, Secret, SecretRef, read_url};
use crate::problem::Problem;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;

/// `kind = "webhook"`: a documented JSON event, signed with HMAC-SHA256.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (a secret if it carries a token: never logged).
    pub url: Option<String>,
    /// Where to read the URL from instead.
    #[serde(default)]
    pub url_secret: SecretRef,
    /// The HMAC key's source (no signature without one).
    #[serde(default)]
    pub secret: SecretRef,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_secret", &self.url_secret)
            .field("secret", &self.secret)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookConfig {
    /// Checks the URL, the secret's source and the headers: every problem, each naming its
    /// field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        out.extend(read_url(&self.url, &self.url_secret).err());
        if let Err(m) = self.secret.read() {
            out.push(Problem::new("secret", m));
        }
        let pairs: Vec<(String, String)> = self.headers.clone().into_iter().collect();
        if let Err(e) = super::http::headers(&pairs) {
            out.push(Problem::new("headers", e.to_string()));
        }
        out
    }
}

/// A signed webhook.
pub struct Webhook {
    name: String,
    target: Target,
    key: Option<Secret>,
    headers: HeaderMap,
}

impl Webhook {
    /// Builds the notifier (reads the URL and the key).
    pub fn new(name: &str, c: &WebhookConfig, client: &reqwest::Client) -> Result<Self, Problem> {
        let url = read_url(&c.url, &c.url_secret)?;
        let key = c
            .secret
            .read()
            .map_err(|m| Problem::new("secret", m))?
            .map(Secret::new);
        let pairs: Vec<(String, String)> = c.headers.clone().into_iter().collect();
        let headers =
            super::http::headers(&pairs).map_err(|e| Problem::new("headers", e.to_string()))?;
        Ok(Webhook {
            name: name.into(),
            target: Target::new(client.clone(), url),
            key,
            headers,
        })
    }
}

/// The JSON document.
pub fn body(out: &Outgoing<'_>) -> serde_json::Value {
    let mut v = serde_json::to_value(out.notification).expect("notifications serialise");
    if let Some(map) = v.as_object_mut() {
        map.insert("version".into(), 1.into());
        map.insert("delivery".into(), out.key.into());
        map.insert("subject".into(), out.rendered.subject.clone().into());
        map.insert("text".into(), out.rendered.text.clone().into());
    }
    v
}

/// `sha256=` + hex HMAC-SHA256 of `timestamp.body` under `key`.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[async_trait::async_trait]
impl Notifier for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, out: &Outgoing<'_>) -> Result<(), DeliveryError> {
        let body = body(out).to_string().into_bytes();
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let value = |s: String| {
            HeaderValue::try_from(s).map_err(|_| {
                DeliveryError::Permanent("a header value is not valid HTTP".to_string())
            })
        };
        headers.insert("x-canaryd-delivery", value(out.key.to_string())?);
        headers.insert(
            "x-canaryd-event",
            value(out.notification.kind.as_str().to_string())?,
        );
        let now = chrono::Utc::now().timestamp();
        headers.insert("x-canaryd-timestamp", value(now.to_string())?);
        if let Some(key) = &self.key {
            headers.insert(
                "x-canaryd-signature",
                value(signature(key.expose().as_bytes(), now, &body))?,
            );
        }
        self.target
            .post(self.target.url().expose(), body, headers)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::templates::{Templates, sample};

    #[test]
    fn the_document_and_its_signature() {
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let b = body(&Outgoing {
            key: "event-42:rolled_back:hook",
            notification: &n,
            rendered: &r,
        });
        assert_eq!(b["version"], 1);
        assert_eq!(b["delivery"], "event-42:rolled_back:hook");
        assert_eq!(b["kind"], "rolled_back");
        assert_eq!(b["severity"], "critical");
        assert_eq!(b["canary"]["service"], "checkout");
        assert_eq!(b["metrics"][0]["canary"], 0.12);
        assert_eq!(b["metrics"][0]["failing"], true);
        // RFC 4231 test case 2 shape: key "Jefe"; here over "1700000000.{}".
        let s = signature(b"Jefe", 1_700_000_000, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
        assert_ne!(
            s,
            signature(b"Jefe", 1_700_000_001, b"{}"),
            "the timestamp is signed"
        );
        // Cross-check with a known HMAC: HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"The quick brown fox jumps over the lazy dog");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn bad_headers_and_unreadable_secrets_name_their_field() {
        let mut c = WebhookConfig {
            url: Some("https://hooks.example/x".into()),
            url_secret: SecretRef::default(),
            secret: SecretRef {
                env: None,
                file: Some("/nonexistent/key".into()),
            },
            headers: BTreeMap::new(),
        };
        assert_eq!(c.problems()[0].field, "secret");
        c.headers.insert("bad header".into(), "x".into());
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["secret", "headers"], "all at once");
    }
}
