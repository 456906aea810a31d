//! Envoy through a file-based route configuration, confirmed by its admin API.
//!
//! The listener's HTTP connection manager takes its routes from a file (`rds` with a
//! `path_config_source`, ideally with `watched_directory`). canaryd rewrites only the weights
//! of that file's `weighted_clusters` (and its `version_info`), replacing the file atomically
//! in its directory, then polls the admin `/config_dump` until Envoy runs the new version.
//! `get_weights` reads the weights from `/config_dump`: what Envoy runs, not what the file says.
//!
//! # Mapping
//! `Target.backend` is a virtual host's `name` in the route configuration; `baseline` and
//! `canary` are cluster names. canaryd manages every route of that virtual host whose
//! `weighted_clusters` name all the target's clusters. Envoy picks a cluster at random per
//! request with probability `w / Σw`, so the split is exact only on average.

use super::file_provider::{ManagedFile, poll_until};
use super::http::{loopback_client, request_error};
use super::{LiveWeights, RouterError, Target, TrafficRouter, weights};
use crate::problem::Problem;
use crate::time::HumanDuration;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// `[routers.NAME] kind = "envoy"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyConfig {
    /// Envoy's admin interface, `host:port` on loopback (the admin API has no authentication).
    pub admin: String,
    /// The file Envoy reads the route configuration from (the `path` of the listener's
    /// `rds.config_source.path_config_source`): a `DiscoveryResponse` in JSON (`.json`) or YAML
    /// (`.yaml`, `.yml`). canaryd changes only weights and `version_info`; comments are lost.
    pub routes_file: PathBuf,
    /// The `RouteConfiguration`'s name (the listener's `rds.route_config_name`).
    pub route_config: String,
    /// Time limit for one admin request and for a change to go live.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl EnvoyConfig {
    /// Value checks without touching the network: every problem, each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match self.admin.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            Ok(a) => out.push(Problem::new(
                "admin",
                format!("{a} is not a loopback address"),
            )),
            Err(e) => out.push(Problem::new("admin", format!("{:?}: {e}", self.admin))),
        }
        if format_of(&self.routes_file).is_none() {
            out.push(Problem::new(
                "routes_file",
                "must end in .json, .yaml or .yml (Envoy reads the format from the extension)",
            ));
        }
        if self.route_config.trim().is_empty() {
            out.push(Problem::new("route_config", "must not be empty"));
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Json,
    Yaml,
}

fn format_of(path: &std::path::Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "json" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        _ => None,
    }
}

/// A cluster's weight (absent counts 0).
fn weight_of(entry: &Value) -> u32 {
    entry.get("weight").and_then(Value::as_u64).unwrap_or(0) as u32
}

/// The `weighted_clusters.clusters` lists of the virtual host's routes that name every cluster.
fn managed_routes<'a>(
    route_config: &'a Value,
    vhost: &str,
    clusters: &[&String],
) -> Result<Vec<&'a Vec<Value>>, String> {
    let host = route_config
        .get("virtual_hosts")
        .and_then(Value::as_sequence)
        .and_then(|hosts| {
            hosts
                .iter()
                .find(|h| h.get("name").and_then(Value::as_str) == Some(vhost))
        })
        .ok_or_else(|| format!("no virtual host {vhost:?}"))?;
    let lists: Vec<&Vec<Value>> = host
        .get("routes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            r.get("route")?
                .get("weighted_clusters")?
                .get("clusters")?
                .as_sequence()
        })
        .filter(|list| {
            clusters.iter().all(|c| {
                list.iter()
                    .any(|e| e.get("name").and_then(Value::as_str) == Some(c.as_str()))
            })
        })
        .collect();
    if lists.is_empty() {
        return Err(format!(
            "virtual host {vhost:?} has no route whose weighted_clusters name {clusters:?}"
        ));
    }
    Ok(lists)
}

/// Sets `changes` in every managed route; Err if a route's weights would sum to 0.
fn set_route_weights(
    route_config: &mut Value,
    vhost: &str,
    changes: &BTreeMap<String, u32>,
) -> Result<(), String> {
    let hosts = route_config
        .get_mut("virtual_hosts")
        .and_then(Value::as_sequence_mut);
    let Some(host) = hosts.and_then(|h| {
        h.iter_mut()
            .find(|h| h.get("name").and_then(Value::as_str) == Some(vhost))
    }) else {
        return Err(format!("no virtual host {vhost:?}"));
    };
    let Some(routes) = host.get_mut("routes").and_then(Value::as_sequence_mut) else {
        return Err(format!("virtual host {vhost:?} has no routes"));
    };
    for route in routes {
        let Some(weighted) = route
            .get_mut("route")
            .and_then(|r| r.get_mut("weighted_clusters"))
        else {
            continue;
        };
        let Some(list) = weighted
            .get_mut("clusters")
            .and_then(Value::as_sequence_mut)
        else {
            continue;
        };
        let names: Vec<&str> = list
            .iter()
            .filter_map(|e| e.get("name")?.as_str())
            .collect();
        if !changes.keys().all(|c| names.contains(&c.as_str())) {
            continue;
        }
        for entry in list.iter_mut() {
            let name = entry
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let (Some(w), Some(map)) =
                (name.and_then(|n| changes.get(&n)), entry.as_mapping_mut())
            {
                map.insert(Value::from("weight"), Value::from(*w));
            }
        }
        let total: u64 = list.iter().map(|e| weight_of(e) as u64).sum();
        if total == 0 {
            return Err(format!(
                "the weights of a route of virtual host {vhost:?} would sum to 0, which Envoy refuses"
            ));
        }
        if let Some(map) = weighted.as_mapping_mut()
            && map.contains_key("total_weight")
        {
            map.insert(Value::from("total_weight"), Value::from(total));
        }
    }
    Ok(())
}

/// A router that rewrites Envoy's route file and reads back its admin `/config_dump`.
pub struct EnvoyRouter {
    name: String,
    config: EnvoyConfig,
    client: reqwest::Client,
    /// The routes file.
    managed: ManagedFile,
    lock: Mutex<()>,
}

/// What Envoy runs: the route configuration's version and body.
struct Live {
    version: String,
    route_config: Value,
}

impl EnvoyRouter {
    /// A router named `name` (for messages).
    pub fn new(name: &str, config: EnvoyConfig) -> Self {
        EnvoyRouter {
            name: name.to_string(),
            client: loopback_client(config.timeout.0),
            managed: ManagedFile::new(name, &config.routes_file),
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

    async fn admin_get(&self, path: &str) -> Result<Value, RouterError> {
        let url = format!("http://{}{path}", self.config.admin);
        let what = format!("GET {url}");
        let fail = |e| request_error(&self.name, &self.config.admin, &what, e);
        let response = self.client.get(&url).send().await.map_err(fail)?;
        let status = response.status();
        let text = response.text().await.map_err(fail)?;
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
        serde_json::from_str(&text).map_err(|e| protocol(e.to_string()))
    }

    /// The route configuration Envoy runs.
    async fn live(&self) -> Result<Live, RouterError> {
        let dump = self
            .admin_get("/config_dump?resource=dynamic_route_configs")
            .await?;
        let configs = dump
            .get("configs")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        let name_of = |c: &Value| {
            c.get("route_config")?
                .get("name")?
                .as_str()
                .map(str::to_string)
        };
        let found = configs
            .iter()
            .find(|c| name_of(c).as_deref() == Some(&self.config.route_config));
        let Some(found) = found else {
            return Err(self.not_found(format!(
                "Envoy runs no route configuration {:?} from RDS (it runs: {:?})",
                self.config.route_config,
                configs.iter().filter_map(name_of).collect::<Vec<_>>()
            )));
        };
        Ok(Live {
            version: found
                .get("version_info")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            route_config: found.get("route_config").cloned().unwrap_or(Value::Null),
        })
    }

    fn target_routes<'a>(
        &self,
        route_config: &'a Value,
        target: &'a Target,
    ) -> Result<Vec<&'a Vec<Value>>, RouterError> {
        let clusters: Vec<&String> = target.baseline.iter().chain(&target.canary).collect();
        managed_routes(route_config, &target.backend, &clusters).map_err(|e| {
            self.not_found(format!(
                "route configuration {:?}: {e}",
                self.config.route_config
            ))
        })
    }

    /// The target clusters' weights in a route configuration; Err if its managed routes disagree.
    fn weights_in(
        &self,
        route_config: &Value,
        target: &Target,
    ) -> Result<BTreeMap<String, u32>, RouterError> {
        let routes = self.target_routes(route_config, target)?;
        let read = |list: &Vec<Value>| -> BTreeMap<String, u32> {
            list.iter()
                .filter_map(|e| Some((e.get("name")?.as_str()?.to_string(), weight_of(e))))
                .filter(|(n, _)| target.baseline.contains(n) || target.canary.contains(n))
                .collect()
        };
        let first = read(routes[0]);
        if let Some(other) = routes[1..].iter().map(|l| read(l)).find(|w| *w != first) {
            return Err(RouterError::Protocol {
                router: self.name.clone(),
                command: "GET /config_dump".into(),
                reply: format!(
                    "the routes of virtual host {:?} disagree: {first:?} vs {other:?}",
                    target.backend
                ),
            });
        }
        Ok(first)
    }

    async fn read_file(&self) -> Result<(String, Value), RouterError> {
        let text = self.managed.read().await.map_err(|e| {
            self.not_found(format!("cannot read the routes file {}: {e}", self.file()))
        })?;
        let doc: Value = match format_of(&self.config.routes_file) {
            Some(Format::Json) => serde_json::from_str(&text).map_err(|e| e.to_string()),
            _ => serde_yaml::from_str(&text).map_err(|e| e.to_string()),
        }
        .map_err(|e| RouterError::Protocol {
            router: self.name.clone(),
            command: format!("read {}", self.file()),
            reply: e,
        })?;
        Ok((text, doc))
    }

    fn route_config_mut<'a>(&self, doc: &'a mut Value) -> Result<&'a mut Value, RouterError> {
        let name = &self.config.route_config;
        doc.get_mut("resources")
            .and_then(Value::as_sequence_mut)
            .and_then(|r| {
                r.iter_mut()
                    .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
            })
            .ok_or_else(|| {
                self.not_found(format!("{} has no resource named {name:?}", self.file()))
            })
    }

    async fn wait_live(&self, version: &str) -> Result<(), RouterError> {
        let live = poll_until(self.config.timeout.0, Duration::from_millis(10), || async {
            self.live().await.is_ok_and(|l| l.version == version)
        })
        .await;
        if live {
            return Ok(());
        }
        Err(RouterError::Timeout {
            router: self.name.clone(),
            operation: format!(
                "waiting for Envoy to load version {version} of {} (it rejected the file or does not watch it: see its log)",
                self.file()
            ),
        })
    }

    /// Sets `changes` (cluster → weight) in the target's routes; idempotent (no write when the
    /// file has them and Envoy runs the file's version).
    async fn apply(
        &self,
        target: &Target,
        changes: &BTreeMap<String, u32>,
    ) -> Result<(), RouterError> {
        let _guard = self.lock.lock().await;
        let (old_text, mut doc) = self.read_file().await?;
        let file_version = doc
            .get("version_info")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let route_config = self.route_config_mut(&mut doc)?;
        self.target_routes(route_config, target)?;
        // Routes that disagree (a hand edit) are simply rewritten.
        let current = self.weights_in(route_config, target).ok();
        // Nothing is written while Envoy cannot be asked what it runs.
        let live = self.live().await?;
        let unchanged =
            current.is_some_and(|c| c.iter().all(|(n, w)| changes.get(n).is_none_or(|x| x == w)));
        if unchanged && live.version == file_version {
            return Ok(());
        }
        set_route_weights(route_config, &target.backend, changes).map_err(|reply| {
            RouterError::Rejected {
                router: self.name.clone(),
                command: format!("set weights {changes:?}"),
                reply,
            }
        })?;
        let version = format!(
            "canaryd-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        if let Some(map) = doc.as_mapping_mut() {
            map.insert(Value::from("version_info"), Value::from(version.clone()));
        }
        let text = match format_of(&self.config.routes_file) {
            Some(Format::Json) => serde_json::to_string_pretty(&doc).map_err(|e| e.to_string()),
            _ => serde_yaml::to_string(&doc).map_err(|e| e.to_string()),
        }
        .map_err(|reply| RouterError::Protocol {
            router: self.name.clone(),
            command: "render the routes file".into(),
            reply,
        })?;
        self.managed
            .replace_until_live(&old_text, &text, self.wait_live(&version))
            .await
    }
}

#[async_trait]
impl TrafficRouter for EnvoyRouter {
    fn name(&self) -> &str {
        &self.name
    }

    fn realized(&self, _target: &Target, canary_percent: f64) -> f64 {
        weights::resolved_percent(canary_percent)
    }

    async fn check(&self) -> Result<String, RouterError> {
        let info = self.admin_get("/server_info").await?;
        let field = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        self.live().await?;
        Ok(format!(
            "Envoy {} at {} ({}), running route configuration {:?}",
            field("version"),
            self.config.admin,
            field("state"),
            self.config.route_config
        ))
    }

    async fn reconcile(&self, target: &Target) -> Result<(), RouterError> {
        self.get_weights(target).await?;
        let clusters = self.admin_get("/clusters?format=json").await?;
        let known: Vec<&str> = clusters
            .get("cluster_statuses")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name")?.as_str())
            .collect();
        let missing: Vec<&String> = target
            .baseline
            .iter()
            .chain(&target.canary)
            .filter(|c| !known.contains(&c.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(self.not_found(format!(
                "Envoy has no cluster {missing:?} (it has: {known:?})"
            )));
        }
        let (_, mut doc) = self.read_file().await?;
        let route_config = self.route_config_mut(&mut doc)?;
        self.target_routes(route_config, target).map(|_| ())
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
        let live = self.live().await?;
        let w = self.weights_in(&live.route_config, target)?;
        let servers = target
            .baseline
            .iter()
            .chain(&target.canary)
            .map(|n| weights::server(n, w.get(n).copied().unwrap_or(0)))
            .collect();
        Ok(weights::live(target, servers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: app_routes
  virtual_hosts:
  - name: be_checkout
    domains: ["*"]
    routes:
    - match: {prefix: /}
      route:
        weighted_clusters:
          total_weight: 100
          clusters: [{name: v1, weight: 100}, {name: v2, weight: 0}, {name: mirror}]
    - match: {prefix: /static}
      route: {cluster: v1}
"#;

    #[test]
    fn sets_and_reads_the_managed_routes_keeping_the_rest() {
        let mut doc: Value = serde_yaml::from_str(ROUTES).unwrap();
        let rc = &mut doc["resources"][0];
        let changes = BTreeMap::from([("v1".to_string(), 90), ("v2".to_string(), 10)]);
        set_route_weights(rc, "be_checkout", &changes).unwrap();
        let v1 = "v1".to_string();
        let v2 = "v2".to_string();
        let routes = managed_routes(rc, "be_checkout", &[&v1, &v2]).unwrap();
        assert_eq!(routes.len(), 1);
        let w: Vec<u32> = routes[0].iter().map(weight_of).collect();
        assert_eq!(w, vec![90, 10, 0]);
        let wc = &rc["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"];
        assert_eq!(wc["total_weight"].as_u64(), Some(100));
        assert_eq!(
            rc["virtual_hosts"][0]["routes"][1]["route"]["cluster"].as_str(),
            Some("v1")
        );
        let zero = BTreeMap::from([("v1".to_string(), 0), ("v2".to_string(), 0)]);
        assert!(
            set_route_weights(rc, "be_checkout", &zero)
                .unwrap_err()
                .contains("sum to 0")
        );
        let v3 = "v3".to_string();
        assert!(managed_routes(rc, "be_checkout", &[&v1, &v3]).is_err());
        assert!(
            managed_routes(rc, "nope", &[&v1])
                .unwrap_err()
                .contains("nope")
        );
    }

    #[test]
    fn checks_values() {
        let c = EnvoyConfig {
            admin: "203.0.113.7:9901".into(),
            routes_file: "/etc/envoy/routes.txt".into(),
            route_config: " ".into(),
            timeout: default_timeout(),
        };
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["admin", "routes_file", "route_config"]);
    }
}
