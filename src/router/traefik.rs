//! Traefik through its file provider's weighted services, confirmed by its API.
//!
//! canaryd rewrites only the weights of one weighted service in the file provider's dynamic
//! configuration (YAML), replacing the file atomically; Traefik's watcher loads it (after its
//! providers throttle, `providers.providersThrottleDuration`, 2 s by default) and canaryd polls
//! `GET /api/http/services/{backend}@{provider}` until the new weights are live. `get_weights`
//! reads them from that API: what Traefik runs, not what the file says.
//!
//! # Mapping
//! `Target.backend` is the weighted service (`http.services.<backend>.weighted`);
//! `baseline` and `canary` are the names in its `services` list (child services, usually
//! `loadBalancer` services of each version). Traefik's weighted round robin is deterministic:
//! sequential requests split exactly by `w / Σw`.

use super::file_provider::{ManagedFile, poll_until};
use super::http::{loopback_client, request_error};
use super::{LiveWeights, RouterError, Target, TrafficRouter, weights};
use crate::problem::Problem;
use crate::time::HumanDuration;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// `[routers.NAME] kind = "traefik"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraefikConfig {
    /// Traefik's API, for example `http://127.0.0.1:8080` (`--api.insecure=true` with
    /// `--entrypoints.traefik.address=127.0.0.1:8080`: keep it on loopback).
    pub api: String,
    /// The file provider's dynamic configuration holding the weighted services (YAML;
    /// `--providers.file.filename` with `--providers.file.watch=true`). canaryd changes only the
    /// weights; comments are lost.
    pub dynamic_file: PathBuf,
    /// The provider name Traefik gives the file's services in its API (`name@file`).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// Time limit for one API request and for a change to go live (mind Traefik's providers
    /// throttle, 2 s by default).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_provider() -> String {
    "file".into()
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl TraefikConfig {
    /// Value checks without touching the network: every problem, each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match reqwest::Url::parse(&self.api) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
            Ok(u) => out.push(Problem::new(
                "api",
                format!("scheme {:?} is not http or https", u.scheme()),
            )),
            Err(e) => out.push(Problem::new("api", format!("{:?}: {e}", self.api))),
        }
        let yaml = matches!(
            self.dynamic_file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if !yaml {
            out.push(Problem::new(
                "dynamic_file",
                "must be a YAML file (.yaml or .yml)",
            ));
        }
        if self.provider.is_empty() || self.provider.contains(['@', '/']) {
            out.push(Problem::new(
                "provider",
                format!("{:?} is not a provider name", self.provider),
            ));
        }
        out
    }
}

/// A weighted-service entry's name without its `@provider`, and its weight (Traefik's
/// default is 1).
fn entry(e: &Value) -> Option<(String, u32)> {
    let name = e.get("name")?.as_str()?;
    let name = name.split('@').next().unwrap_or(name).to_string();
    let weight = e.get("weight").map_or(Some(1), Value::as_u64)? as u32;
    Some((name, weight))
}

/// A router that rewrites Traefik's dynamic file and reads back its API.
pub struct TraefikRouter {
    name: String,
    config: TraefikConfig,
    client: reqwest::Client,
    /// The dynamic configuration file.
    managed: ManagedFile,
    lock: Mutex<()>,
}

impl TraefikRouter {
    /// A router named `name` (for messages).
    pub fn new(name: &str, config: TraefikConfig) -> Self {
        TraefikRouter {
            name: name.to_string(),
            client: loopback_client(config.timeout.0),
            managed: ManagedFile::new(name, &config.dynamic_file),
            config,
            lock: Mutex::new(()),
        }
    }

    fn not_found(&self, what: String) -> RouterError {
        RouterError::NotFound {
            router: self.name.clone(),
            what,
        }
    }

    fn file(&self) -> String {
        self.managed.shown()
    }

    /// `GET {api}/api/SEGMENTS...` as JSON; 404 is `Ok(None)`.
    async fn api_get(&self, segments: &[&str]) -> Result<Option<Value>, RouterError> {
        let mut url = reqwest::Url::parse(self.config.api.trim_end_matches('/')).map_err(|e| {
            RouterError::Unreachable {
                router: self.name.clone(),
                address: self.config.api.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("api").extend(segments);
        }
        let what = format!("GET {url}");
        let fail = |e| request_error(&self.name, &self.config.api, &what, e);
        let response = self.client.get(url.clone()).send().await.map_err(fail)?;
        let status = response.status();
        let text = response.text().await.map_err(fail)?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let protocol = |reply: String| RouterError::Protocol {
            router: self.name.clone(),
            command: what.clone(),
            reply,
        };
        if !status.is_success() {
            return Err(protocol(format!(
                "{status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| protocol(e.to_string()))
    }

    /// The weighted service's entries as Traefik runs them.
    async fn live(&self, backend: &str) -> Result<BTreeMap<String, u32>, RouterError> {
        let service = format!("{backend}@{}", self.config.provider);
        let body = self
            .api_get(&["http", "services", &service])
            .await?
            .ok_or_else(|| self.not_found(format!("Traefik has no service {service:?}")))?;
        let list = body
            .get("weighted")
            .and_then(|w| w.get("services"))
            .and_then(Value::as_sequence)
            .ok_or_else(|| {
                self.not_found(format!(
                    "Traefik's service {service:?} is not a weighted service"
                ))
            })?;
        Ok(list.iter().filter_map(entry).collect())
    }

    /// The target's servers in a weighted service's entries; NotFound names the missing.
    fn target_weights(
        &self,
        target: &Target,
        all: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, RouterError> {
        let missing: Vec<&String> = target
            .baseline
            .iter()
            .chain(&target.canary)
            .filter(|n| !all.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(self.not_found(format!(
                "weighted service {:?} has no service {missing:?} (it has: {:?})",
                target.backend,
                all.keys().collect::<Vec<_>>()
            )));
        }
        Ok(all
            .iter()
            .filter(|(n, _)| target.baseline.contains(n) || target.canary.contains(n))
            .map(|(n, w)| (n.clone(), *w))
            .collect())
    }

    async fn read_file(&self) -> Result<(String, Value), RouterError> {
        let text = self.managed.read().await.map_err(|e| {
            self.not_found(format!(
                "cannot read the dynamic configuration {}: {e}",
                self.file()
            ))
        })?;
        let doc = serde_yaml::from_str(&text).map_err(|e| RouterError::Protocol {
            router: self.name.clone(),
            command: format!("read {}", self.file()),
            reply: e.to_string(),
        })?;
        Ok((text, doc))
    }

    /// The weighted service's `services` list in the dynamic file.
    fn entries_mut<'a>(
        &self,
        doc: &'a mut Value,
        backend: &str,
    ) -> Result<&'a mut Vec<Value>, RouterError> {
        doc.get_mut("http")
            .and_then(|h| h.get_mut("services"))
            .and_then(|s| s.get_mut(backend))
            .and_then(|s| s.get_mut("weighted"))
            .and_then(|w| w.get_mut("services"))
            .and_then(Value::as_sequence_mut)
            .ok_or_else(|| {
                self.not_found(format!(
                    "{} has no weighted service http.services.{backend}.weighted.services",
                    self.file()
                ))
            })
    }

    async fn wait_live(
        &self,
        target: &Target,
        wanted: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        let live = poll_until(self.config.timeout.0, Duration::from_millis(20), || async {
            self.live(&target.backend)
                .await
                .is_ok_and(|all| wanted.iter().all(|(n, w)| all.get(n) == Some(w)))
        })
        .await;
        if live {
            return Ok(());
        }
        Err(RouterError::Timeout {
            router: self.name.clone(),
            operation: format!(
                "waiting for Traefik to run weights {wanted:?} from {} (does it watch the file? see its log)",
                self.file()
            ),
        })
    }

    /// Sets `changes` (service → weight) in the weighted service; idempotent (no write when the
    /// file and Traefik both have them).
    async fn apply(
        &self,
        target: &Target,
        changes: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        let _guard = self.lock.lock().await;
        let (old_text, mut doc) = self.read_file().await?;
        let entries = self.entries_mut(&mut doc, &target.backend)?;
        let in_file: BTreeMap<String, u32> = entries.iter().filter_map(entry).collect();
        self.target_weights(target, &in_file)?;
        // Nothing is written while Traefik cannot be asked what it runs.
        let live = self.live(&target.backend).await?;
        let done = |w: &BTreeMap<String, u32>| changes.iter().all(|(n, x)| w.get(n) == Some(x));
        if done(&in_file) && done(&live) {
            return Ok(());
        }
        for e in entries.iter_mut() {
            let weight = entry(e).and_then(|(n, _)| changes.get(&n).copied());
            if let (Some(w), Some(map)) = (weight, e.as_mapping_mut()) {
                map.insert(Value::from("weight"), Value::from(w));
            }
        }
        let text = serde_yaml::to_string(&doc).map_err(|e| RouterError::Protocol {
            router: self.name.clone(),
            command: "render the dynamic configuration".into(),
            reply: e.to_string(),
        })?;
        self.managed
            .replace_until_live(&old_text, &text, self.wait_live(target, changes))
            .await
    }
}

#[async_trait]
impl TrafficRouter for TraefikRouter {
    fn name(&self) -> &str {
        &self.name
    }

    fn realized(&self, _target: &Target, canary_percent: f64) -> f64 {
        weights::resolved_percent(canary_percent)
    }

    async fn check(&self) -> Result<String, RouterError> {
        let version = self.api_get(&["version"]).await?.unwrap_or(Value::Null);
        Ok(format!(
            "Traefik {} at {}",
            version
                .get("Version")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            self.config.api
        ))
    }

    async fn reconcile(&self, target: &Target) -> Result<(), RouterError> {
        self.get_weights(target).await?;
        let (_, mut doc) = self.read_file().await?;
        let in_file: BTreeMap<String, u32> = self
            .entries_mut(&mut doc, &target.backend)?
            .iter()
            .filter_map(entry)
            .collect();
        self.target_weights(target, &in_file).map(|_| ())
    }

    async fn set_weights(&self, target: &Target, canary_percent: f64) -> Result<(), RouterError> {
        self.apply(target, &weights::for_target(target, canary_percent))
            .await
    }

    async fn set_server_weights(
        &self,
        target: &Target,
        weights: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        weights::check_names(&self.name, target, weights)?;
        self.apply(target, weights).await
    }

    async fn get_weights(&self, target: &Target) -> Result<LiveWeights, RouterError> {
        let all = self.live(&target.backend).await?;
        let ours = self.target_weights(target, &all)?;
        let servers = target
            .baseline
            .iter()
            .chain(&target.canary)
            .map(|n| weights::server(n, ours[n]))
            .collect();
        Ok(weights::live(target, servers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_drop_the_provider_and_default_to_weight_one() {
        let list: Value = serde_yaml::from_str(
            "[{name: v1@file, weight: 90}, {name: v2, weight: 0}, {name: v3}]",
        )
        .unwrap();
        let got: Vec<_> = list
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(entry)
            .collect();
        assert_eq!(
            got,
            vec![("v1".into(), 90), ("v2".into(), 0), ("v3".into(), 1)]
        );
    }

    #[test]
    fn checks_values() {
        let c = TraefikConfig {
            api: "127.0.0.1:8080".into(),
            dynamic_file: "/etc/traefik/dynamic.toml".into(),
            provider: "file@x".into(),
            timeout: default_timeout(),
        };
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["api", "dynamic_file", "provider"]);
    }
}
