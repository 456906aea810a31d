//! Prometheus as a [`MetricSource`], through `prometheus-http-query`.

use super::{MetricSource, QueryError, Series};
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use prometheus_http_query::{Client, Error as PromError};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use std::time::Duration;

/// How to authenticate to Prometheus.
#[derive(Clone, PartialEq, Eq)]
pub enum PrometheusAuth {
    /// No authentication.
    None,
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password (never logged).
        password: String,
    },
    /// A bearer token (never logged).
    Bearer(String),
}

impl std::fmt::Debug for PrometheusAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrometheusAuth::None => f.write_str("None"),
            PrometheusAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            PrometheusAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A Prometheus server.
#[derive(Clone)]
pub struct PrometheusSource {
    client: Client,
    url: String,
    timeout: Duration,
}

impl PrometheusSource {
    /// A client for the server at `url`, each request limited to `timeout`.
    pub fn new(url: &str, auth: &PrometheusAuth, timeout: Duration) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        let value = match auth {
            PrometheusAuth::None => None,
            PrometheusAuth::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            PrometheusAuth::Bearer(token) => Some(format!("Bearer {token}")),
        };
        if let Some(v) = value {
            let mut v = HeaderValue::from_str(&v)
                .map_err(|_| "prometheus credentials contain invalid characters".to_string())?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let client =
            Client::from(http, url).map_err(|e| format!("invalid prometheus url {url:?}: {e}"))?;
        Ok(PrometheusSource {
            client,
            url: url.to_string(),
            timeout,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn classify(&self, e: PromError) -> QueryError {
        match e {
            PromError::Prometheus(p) if p.is_timeout() => QueryError::Timeout(self.timeout),
            PromError::Prometheus(p) => QueryError::Query(format!("prometheus: {}", p.message())),
            PromError::Client(c) => match c.inner() {
                Some(r) if r.is_timeout() => QueryError::Timeout(self.timeout),
                Some(r) if r.is_connect() => {
                    QueryError::Unreachable(format!("prometheus at {}: cannot connect", self.url))
                }
                _ => QueryError::Query(format!("prometheus at {}: {c}", self.url)),
            },
            other => QueryError::Query(format!("prometheus at {}: {other}", self.url)),
        }
    }
}

#[async_trait]
impl MetricSource for PrometheusSource {
    async fn query_range(
        &self,
        query: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Result<Vec<Series>, QueryError> {
        let step = step.as_secs_f64().max(1.0);
        let result = self
            .client
            .query_range(query, start.timestamp(), end.timestamp(), step)
            .timeout(self.timeout.as_millis() as i64)
            .post()
            .await
            .map_err(|e| self.classify(e))?;
        let Some(matrix) = result.data().as_matrix() else {
            return Err(QueryError::Query(
                "prometheus returned a non-matrix result for a range query".into(),
            ));
        };
        Ok(matrix
            .iter()
            .map(|rv| Series {
                labels: rv
                    .metric()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                samples: rv
                    .samples()
                    .iter()
                    .map(|s| (s.timestamp(), s.value()))
                    .collect(),
            })
            .collect())
    }

    async fn is_online(&self) -> Result<(), QueryError> {
        self.client
            .query("vector(1)")
            .get()
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e))
    }
}
