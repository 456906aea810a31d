//! Any load balancer or cloud API, through a small adapter that speaks canaryd's JSON contract.
//!
//! ```text
//! GET {url}/backends/{backend}/weights
//!     200 {"servers": {"checkout-v1": 90, "checkout-v2": 10}, "canary_percent": 10.0}
//! PUT {url}/backends/{backend}/weights
//!     {"canary_percent": 10.0, "servers": {"checkout-v1": 90, "checkout-v2": 10},
//!      "baseline": ["checkout-v1"], "canary": ["checkout-v2"]}
//!     2xx once the change is live
//! ```
//!
//! `servers` maps a server (whatever the adapter calls one: a pool member, a target group, a
//! cluster) to its relative weight, a non-negative integer; a server's share is `w / Σw`. The
//! `GET` answers the live state, read from the load balancer, never a cache; canaryd computes
//! the canary share from `servers` (`canary_percent` there is informational and optional). A
//! `PUT` changes the named servers only and MUST be idempotent; `canary_percent` is the share
//! canaryd intends, `null` when it sets single servers' weights (rolling updates), and
//! `baseline` / `canary` say which server is which. Unknown backend or server: 404. A refused
//! change: 409 or 422 with a message. `Authorization: Bearer TOKEN` when a token is configured.
//! The whole contract is in the README ("Routers").
//!
//! Also here: the HTTP helpers the Envoy, Traefik and nginx routers share.

use super::{LiveWeights, RouterError, Target, TrafficRouter, weights};
use crate::problem::Problem;
use crate::secret::SecretRef;
use crate::time::HumanDuration;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[routers.NAME] kind = "http"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The adapter's base URL; canaryd calls `{url}/backends/{backend}/weights`.
    pub url: String,
    /// Where to read a bearer token from (`env` or `file`), sent as `Authorization: Bearer`.
    #[serde(default)]
    pub bearer_token: SecretRef,
    /// Time limit for one request (a `PUT` returns once the change is live).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl HttpConfig {
    /// Value checks without touching the network: every problem, each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
            Ok(u) => out.push(Problem::new(
                "url",
                format!("scheme {:?} is not http or https", u.scheme()),
            )),
            Err(e) => out.push(Problem::new("url", format!("{:?}: {e}", self.url))),
        }
        if let Err(e) = self.bearer_token.read() {
            out.push(Problem::new("bearer_token", e));
        }
        out
    }
}

/// The body of the contract's `PUT` and `GET`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpWeights {
    /// The canary's share in percent: what canaryd intends in a `PUT` (`null` when it sets
    /// single servers); informational in a `GET`.
    #[serde(default)]
    pub canary_percent: Option<f64>,
    /// Server → relative weight. A `PUT` changes only the servers it names.
    pub servers: BTreeMap<String, u32>,
    /// The baseline's servers (in a `PUT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<String>,
    /// The canary's servers (in a `PUT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<String>,
}

/// A client for a load balancer's admin API on loopback: no proxy, a time limit per request.
pub(super) fn loopback_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap_or_default()
}

/// A failed request as a router error naming the address, with the whole cause chain.
pub(super) fn request_error(
    router: &str,
    address: &str,
    what: &str,
    e: reqwest::Error,
) -> RouterError {
    if e.is_timeout() {
        return RouterError::Timeout {
            router: router.to_string(),
            operation: format!("{what} ({address})"),
        };
    }
    // The innermost cause says what happened ("Connection refused"); reqwest's own layers
    // only repeat the URL.
    let mut cause: &dyn std::error::Error = &e;
    while let Some(s) = cause.source() {
        cause = s;
    }
    RouterError::Unreachable {
        router: router.to_string(),
        address: address.to_string(),
        reason: format!("{what}: {cause}"),
    }
}

/// A router speaking canaryd's HTTP weights contract.
pub struct HttpRouter {
    name: String,
    config: HttpConfig,
    client: reqwest::Client,
}

impl HttpRouter {
    /// A router named `name` (for messages).
    pub fn new(name: &str, config: HttpConfig) -> Self {
        let loopback = reqwest::Url::parse(&config.url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| matches!(h, "127.0.0.1" | "localhost" | "[::1]"))
            })
            .unwrap_or(false);
        let client = if loopback {
            loopback_client(config.timeout.0)
        } else {
            reqwest::Client::builder()
                .timeout(config.timeout.0)
                .build()
                .unwrap_or_default()
        };
        HttpRouter {
            name: name.to_string(),
            config,
            client,
        }
    }

    fn url(&self, backend: &str) -> Result<reqwest::Url, RouterError> {
        let mut url = reqwest::Url::parse(self.config.url.trim_end_matches('/')).map_err(|e| {
            RouterError::Unreachable {
                router: self.name.clone(),
                address: self.config.url.clone(),
                reason: e.to_string(),
            }
        })?;
        url.path_segments_mut()
            .map_err(|_| RouterError::Unreachable {
                router: self.name.clone(),
                address: self.config.url.clone(),
                reason: "not a base URL".into(),
            })?
            .pop_if_empty()
            .extend(["backends", backend, "weights"]);
        Ok(url)
    }

    /// Sends one request and reads the contract's body from a 2xx answer (empty → default).
    async fn call(
        &self,
        method: reqwest::Method,
        backend: &str,
        body: Option<&HttpWeights>,
    ) -> Result<HttpWeights, RouterError> {
        let url = self.url(backend)?;
        let what = format!("{method} {url}");
        let mut request = self.client.request(method, url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let token = self
            .config
            .bearer_token
            .read()
            .map_err(|reply| RouterError::Rejected {
                router: self.name.clone(),
                command: "read the bearer token".into(),
                reply,
            })?;
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let fail = |e| request_error(&self.name, &self.config.url, &what, e);
        let response = request.send().await.map_err(fail)?;
        let status = response.status();
        let text = response.text().await.map_err(fail)?;
        let reply: String = text.trim().chars().take(300).collect();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RouterError::NotFound {
                router: self.name.clone(),
                what: format!("backend {backend:?}: {what} answered 404: {reply}"),
            });
        }
        if !status.is_success() {
            return Err(RouterError::Rejected {
                router: self.name.clone(),
                command: what,
                reply: format!("{status}: {reply}"),
            });
        }
        if text.trim().is_empty() {
            return Ok(HttpWeights::default());
        }
        serde_json::from_str(&text).map_err(|e| RouterError::Protocol {
            router: self.name.clone(),
            command: what,
            reply: format!("{e}: {reply}"),
        })
    }

    async fn put(
        &self,
        target: &Target,
        canary_percent: Option<f64>,
        servers: BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        let body = HttpWeights {
            canary_percent,
            servers,
            baseline: target.baseline.clone(),
            canary: target.canary.clone(),
        };
        self.call(reqwest::Method::PUT, &target.backend, Some(&body))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl TrafficRouter for HttpRouter {
    fn name(&self) -> &str {
        &self.name
    }

    fn realized(&self, _target: &Target, canary_percent: f64) -> f64 {
        weights::resolved_percent(canary_percent)
    }

    async fn reconcile(&self, target: &Target) -> Result<(), RouterError> {
        self.get_weights(target).await.map(|_| ())
    }

    async fn set_weights(&self, target: &Target, canary_percent: f64) -> Result<(), RouterError> {
        let servers = weights::for_target(target, canary_percent);
        self.put(
            target,
            Some(weights::resolved_percent(canary_percent)),
            servers,
        )
        .await
    }

    async fn set_server_weights(
        &self,
        target: &Target,
        weights: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        weights::check_names(&self.name, target, weights)?;
        self.put(target, None, weights.clone()).await
    }

    async fn get_weights(&self, target: &Target) -> Result<LiveWeights, RouterError> {
        let live = self
            .call(reqwest::Method::GET, &target.backend, None)
            .await?;
        let mut servers = Vec::new();
        let mut missing = Vec::new();
        for name in target.baseline.iter().chain(&target.canary) {
            match live.servers.get(name) {
                Some(w) => servers.push(weights::server(name, *w)),
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            return Err(RouterError::NotFound {
                router: self.name.clone(),
                what: format!(
                    "backend {:?} has no server {missing:?} (it has: {:?})",
                    target.backend,
                    live.servers.keys().collect::<Vec<_>>()
                ),
            });
        }
        Ok(weights::live(target, servers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_the_backend_and_keep_the_base_path() {
        let r = HttpRouter::new(
            "lb",
            HttpConfig {
                url: "http://127.0.0.1:9000/adapter/".into(),
                bearer_token: SecretRef::default(),
                timeout: default_timeout(),
            },
        );
        assert_eq!(
            r.url("be/x y").unwrap().as_str(),
            "http://127.0.0.1:9000/adapter/backends/be%2Fx%20y/weights"
        );
    }

    #[test]
    fn the_body_is_the_documented_shape() {
        let body = HttpWeights {
            canary_percent: Some(10.0),
            servers: BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)]),
            baseline: vec!["v1".into()],
            canary: vec!["v2".into()],
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"canary_percent": 10.0, "servers": {"v1": 90, "v2": 10},
                "baseline": ["v1"], "canary": ["v2"]})
        );
        let get: HttpWeights = serde_json::from_str(r#"{"servers": {"v1": 1}}"#).unwrap();
        assert_eq!(get.canary_percent, None);
    }

    #[test]
    fn checks_values() {
        let c = HttpConfig {
            url: "ftp://x".into(),
            bearer_token: SecretRef {
                env: Some("CANARYD_TEST_SURELY_UNSET_TOKEN".into()),
                file: None,
            },
            timeout: default_timeout(),
        };
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["url", "bearer_token"]);
    }
}
