//! The HTTP side of chat and webhook notifiers: one client, a POST to a secret URL, and the
//! classification of what came back into "delivered", "retry", "permanent" or "unknown".
//!
//! - 2xx: delivered.
//! - 429: retry after the receiver's `retry_after` (JSON body, seconds, as Discord and Slack
//!   send it) or its `Retry-After` header.
//! - 408, 425, 5xx: retry (the receiver answered; it did not accept the message).
//! - other 3xx/4xx: permanent (a wrong or revoked URL, a payload the service rejects).
//! - the connection could not be made: retry (nothing was sent).
//! - anything after the request left (timeout waiting for the answer, connection reset): the
//!   message may have arrived: unknown, never repeated.
//!
//! Errors never contain the URL (webhook URLs carry their token).

use super::{DeliveryError, Secret};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// Longest `retry_after` honoured (longer is treated as the deadline's business).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The HTTP client notifiers share: bounded by `timeout`, no redirects (a redirect would
/// re-send a POST to a place nobody configured).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a plain reqwest client builds")
}

/// A secret URL to POST to.
#[derive(Clone, Debug)]
pub struct Target {
    client: reqwest::Client,
    url: Secret,
}

impl Target {
    /// A target.
    pub fn new(client: reqwest::Client, url: Secret) -> Self {
        Target { client, url }
    }

    /// The URL (secret).
    pub fn url(&self) -> &Secret {
        &self.url
    }

    /// POSTs `body` (JSON) with extra headers and classifies the outcome.
    pub async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: HeaderMap,
    ) -> Result<(), DeliveryError> {
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => classify(resp).await,
            Err(e) => Err(request_error(e)),
        }
    }

    /// POSTs a JSON value to the target's URL.
    pub async fn post_json(&self, body: &serde_json::Value) -> Result<(), DeliveryError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.post(self.url.expose(), body.to_string().into_bytes(), headers)
            .await
    }
}

/// A configured header that HTTP cannot carry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    /// The name is not a header name.
    #[error("{0:?} is not a valid header name")]
    Name(String),
    /// The value is not a header value (it is not shown: it may be a secret).
    #[error("the value of header {0:?} is not valid")]
    Value(String),
}

/// Builds a header map from names and values; a bad one is a configuration error.
pub fn headers(pairs: &[(String, String)]) -> Result<HeaderMap, HeaderError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let n = HeaderName::try_from(name.as_str()).map_err(|_| HeaderError::Name(name.clone()))?;
        let v =
            HeaderValue::try_from(value.as_str()).map_err(|_| HeaderError::Value(name.clone()))?;
        map.insert(n, v);
    }
    Ok(map)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn request_error(e: reqwest::Error) -> DeliveryError {
    let connect = e.is_connect();
    let timeout = e.is_timeout();
    let builder = e.is_builder();
    let text = chain(&e.without_url());
    if connect {
        DeliveryError::Retry {
            reason: format!("cannot connect: {text}"),
            after: None,
        }
    } else if builder {
        DeliveryError::Permanent(format!("cannot build the request: {text}"))
    } else if timeout {
        DeliveryError::Unknown(format!(
            "no answer in time after the request was sent; it may have arrived ({text})"
        ))
    } else {
        DeliveryError::Unknown(format!(
            "the connection failed after the request was sent; it may have arrived ({text})"
        ))
    }
}

async fn classify(resp: reqwest::Response) -> Result<(), DeliveryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let header_wait = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    let code = status.as_u16();
    if code == 429 {
        let wait = retry_after(&body).or(header_wait);
        return Err(DeliveryError::Retry {
            reason: format!("rate limited (HTTP 429){}", describe_wait(wait)),
            after: wait.map(|s| Duration::from_secs_f64(s.max(0.0)).min(MAX_RETRY_AFTER)),
        });
    }
    let what = format!(
        "HTTP {code}{}",
        if snippet.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", snippet.trim())
        }
    );
    if code == 408 || code == 425 || status.is_server_error() {
        Err(DeliveryError::Retry {
            reason: what,
            after: None,
        })
    } else {
        Err(DeliveryError::Permanent(what))
    }
}

fn describe_wait(wait: Option<f64>) -> String {
    wait.map(|s| format!(", retry after {s}s"))
        .unwrap_or_default()
}

/// `retry_after` (seconds) from a JSON body (`{"retry_after": 1.5, "global": false}`).
pub fn retry_after(body: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("retry_after")?
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::post;

    async fn serve(
        status: StatusCode,
        body: &'static str,
        retry_after: Option<&'static str>,
    ) -> String {
        let app = axum::Router::new().route(
            "/hook/{token}",
            post(move || async move {
                let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                *resp.status_mut() = status;
                if let Some(r) = retry_after {
                    resp.headers_mut()
                        .insert("retry-after", HeaderValue::from_static(r));
                }
                resp
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook/SECRETTOKEN")
    }

    async fn outcome(
        status: StatusCode,
        body: &'static str,
        retry: Option<&'static str>,
    ) -> Result<(), DeliveryError> {
        let url = serve(status, body, retry).await;
        let t = Target::new(client(Duration::from_secs(2)), Secret::new(url));
        t.post_json(&serde_json::json!({"text": "x"})).await
    }

    #[tokio::test]
    async fn answers_are_classified() {
        assert_eq!(outcome(StatusCode::OK, "ok", None).await, Ok(()));
        assert_eq!(outcome(StatusCode::NO_CONTENT, "", None).await, Ok(()));
        match outcome(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}"#,
            None,
        )
        .await
        {
            Err(DeliveryError::Retry { after, .. }) => {
                assert_eq!(after, Some(Duration::from_millis(1500)))
            }
            other => panic!("{other:?}"),
        }
        match outcome(StatusCode::TOO_MANY_REQUESTS, "slow down", Some("2")).await {
            Err(DeliveryError::Retry { after, .. }) => {
                assert_eq!(after, Some(Duration::from_secs(2)))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(StatusCode::INTERNAL_SERVER_ERROR, "boom", None).await,
            Err(DeliveryError::Retry { after: None, .. })
        ));
        match outcome(StatusCode::NOT_FOUND, "no_team", None).await {
            Err(DeliveryError::Permanent(m)) => assert_eq!(m, "HTTP 404: no_team"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(StatusCode::FOUND, "", None).await,
            Err(DeliveryError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_is_retried_silence_is_unknown_and_no_error_names_the_url() {
        // Nothing listens: the message certainly did not leave.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Target::new(
            client(Duration::from_millis(300)),
            Secret::new(format!("http://127.0.0.1:{port}/hook/SECRETTOKEN")),
        );
        let e = t.post_json(&serde_json::json!({})).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Retry { .. }), "{e:?}");
        assert!(!e.to_string().contains("SECRETTOKEN"), "{e}");
        // Accepts the connection and never answers: it may have arrived.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                held.push(s);
            }
        });
        let t = Target::new(
            client(Duration::from_millis(300)),
            Secret::new(format!("http://{addr}/hook/SECRETTOKEN")),
        );
        let e = t.post_json(&serde_json::json!({})).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Unknown(_)), "{e:?}");
        assert!(!e.to_string().contains("SECRETTOKEN"), "{e}");
        hold.abort();
    }
}
