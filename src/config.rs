//! The daemon's settings: `canaryd.toml`, overridable by `CANARYD_SECTION__KEY` environment
//! variables (e.g. `CANARYD_SERVER__LISTEN=127.0.0.1:9000`).
//!
//! Loading happens in two stages: [`Config::load`] parses (unknown keys are errors that name the
//! key's path), then [`Config::validate`] checks values without touching the network. Network
//! checks belong to preflight and `canaryd doctor`.

use crate::canary::phase::FailSafe;
use crate::metrics::PrometheusAuth;
use crate::notify::{NotifierConfig, SecretRef};
use crate::router::RouterConfig;
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP API listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Persistence.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where metrics come from.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// Rule files.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Traffic routers by name.
    #[serde(default)]
    pub routers: BTreeMap<String, RouterConfig>,
    /// Notifiers by name.
    #[serde(default)]
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// Which notifications go to which notifiers (`[[routes]]`; none: all to every notifier).
    #[serde(default)]
    pub routes: Vec<crate::notify::RouteConfig>,
    /// Notification delivery, links and templates (`[notify]`).
    #[serde(default)]
    pub notify: crate::notify::NotifySettings,
    /// How analysis treats failures.
    #[serde(default)]
    pub analysis: AnalysisConfig,
    /// Environment profiles (`dev`, `staging`, `production` have built-in defaults).
    #[serde(default)]
    pub environments: BTreeMap<String, crate::canary::profile::EnvironmentConfig>,
    /// API tokens, TLS, what specs may carry.
    #[serde(default)]
    pub api: crate::api::auth::ApiConfig,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Base URL people reach the API at, for links in notifications.
    pub public_url: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            public_url: None,
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative paths are relative to the working directory).
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Delete finished canaries (events, notifications) this long after they finished.
    #[serde(default)]
    pub retention: Option<HumanDuration>,
}

fn default_store_url() -> String {
    "sqlite://data/canaryd.db".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
            retention: None,
        }
    }
}

/// `[prometheus]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API.
    #[serde(default = "default_prometheus_url")]
    pub url: String,
    /// Time limit for one query.
    #[serde(default = "default_query_timeout")]
    pub timeout: HumanDuration,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password source.
    #[serde(default)]
    pub password: SecretRef,
    /// Bearer token source.
    #[serde(default)]
    pub bearer_token: SecretRef,
}

fn default_prometheus_url() -> String {
    "http://127.0.0.1:9090".into()
}

fn default_query_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            url: default_prometheus_url(),
            timeout: default_query_timeout(),
            username: None,
            password: SecretRef::default(),
            bearer_token: SecretRef::default(),
        }
    }
}

impl PrometheusConfig {
    /// The credentials, read from their sources.
    pub fn auth(&self) -> Result<PrometheusAuth, ConfigError> {
        let bad = |field: &str, message: String| ConfigError::Invalid {
            key: format!("prometheus.{field}"),
            message,
        };
        let password = self.password.read().map_err(|m| bad("password", m))?;
        let token = self
            .bearer_token
            .read()
            .map_err(|m| bad("bearer_token", m))?;
        match (&self.username, password, token) {
            (Some(_), _, Some(_)) => Err(bad(
                "bearer_token",
                "use either basic auth (username/password) or a bearer token".into(),
            )),
            (Some(u), p, None) => Ok(PrometheusAuth::Basic {
                username: u.clone(),
                password: p.unwrap_or_default(),
            }),
            (None, Some(_), _) => Err(bad("username", "a password needs a username".into())),
            (None, None, Some(t)) => Ok(PrometheusAuth::Bearer(t)),
            (None, None, None) => Ok(PrometheusAuth::None),
        }
    }
}

/// `[rules]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Directory of rule files.
    #[serde(default = "default_rules_dir")]
    pub dir: PathBuf,
}

fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: default_rules_dir(),
        }
    }
}

/// `[analysis]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Consecutive intervals without a usable analysis (no data, query errors) before the
    /// fail-safe acts. Argo Rollouts' `consecutiveErrorLimit` is 4; ours defaults to 5.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// What the fail-safe does: `rollback` (all traffic to the baseline, canary failed) or
    /// `hold` (keep weights, pause for a person).
    #[serde(default)]
    pub fail_safe: FailSafe,
}

fn default_failure_limit() -> u32 {
    5
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            failure_limit: default_failure_limit(),
            fail_safe: FailSafe::Rollback,
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (with the key's path).
        message: String,
    },
    /// A value is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The key's path (`routers.edge.runtime_api`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads `path` (TOML) and the `CANARYD_SECTION__KEY` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = std::env::vars().collect();
        Self::load_with_env(path, env)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(ConfigError::Parse {
                path: shown,
                message: "file not found".into(),
            });
        }
        // Only nested keys (`CANARYD_SERVER__LISTEN`) are overrides; `CANARYD_SERVER` and
        // `CANARYD_TOKEN` belong to the CLI.
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CANARYD_") && k["CANARYD_".len()..].contains("__"))
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("CANARYD")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| ConfigError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        built
            .try_deserialize::<Config>()
            .map_err(|e| ConfigError::Parse {
                path: shown,
                message: e.to_string(),
            })
    }

    /// Checks values. Every problem names its key.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut bad =
            |key: String, message: String| errors.push(ConfigError::Invalid { key, message });
        match self.server.listen.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_loopback() && self.api.tokens.is_empty() => bad(
                "server.listen".into(),
                format!(
                    "{addr} is not a loopback address; the API has no tokens configured, so canaryd refuses to listen beyond loopback"
                ),
            ),
            Ok(_) => {}
            Err(e) => bad(
                "server.listen".into(),
                format!("{:?}: {e}", self.server.listen),
            ),
        }
        for (key, message) in self.api.validate() {
            bad(key, message);
        }
        for (name, env) in &self.environments {
            let mut problems = Vec::new();
            if let Some(hooks) = &env.hooks {
                hooks.validate(&format!("environments.{name}.hooks"), &mut problems);
            }
            for p in problems {
                bad(p.field, p.message);
            }
            if let Some(steps) = &env.steps
                && steps.last().is_none_or(|s| s.weight != 100.0)
            {
                bad(
                    format!("environments.{name}.steps"),
                    "the last step must be 100".into(),
                );
            }
        }
        if !self.store.url.starts_with("sqlite://") && self.store.url != "sqlite::memory:" {
            bad(
                "store.url".into(),
                format!("{:?}: use sqlite://PATH", self.store.url),
            );
        }
        match reqwest::Url::parse(&self.prometheus.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => bad(
                "prometheus.url".into(),
                format!("scheme {:?} is not http or https", u.scheme()),
            ),
            Err(e) => bad(
                "prometheus.url".into(),
                format!("{:?}: {e}", self.prometheus.url),
            ),
        }
        if let Err(ConfigError::Invalid { key, message }) = self.prometheus.auth() {
            bad(key, message);
        }
        for (name, router) in &self.routers {
            match router {
                RouterConfig::Haproxy(h) => {
                    if h.runtime_api.trim().is_empty() {
                        bad(
                            format!("routers.{name}.runtime_api"),
                            "must not be empty".into(),
                        );
                    }
                }
                other => {
                    for (field, message) in other.problems() {
                        bad(
                            format!("routers.{name}.{field}"),
                            format!("({}) {message}", other.kind()),
                        );
                    }
                }
            }
        }
        for (key, message) in crate::notify::validate_config(self) {
            bad(key, message);
        }
        if self.analysis.failure_limit == 0 {
            bad("analysis.failure_limit".into(), "must be at least 1".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CONTRACT: &str = r#"
[server]
listen = "127.0.0.1:8080"
[store]
url = "sqlite://data/canaryd.db"
[prometheus]
url = "http://127.0.0.1:9090"
[rules]
dir = "rules"
[routers.edge]
kind = "haproxy"
runtime_api = "127.0.0.1:9999"      # or "unix:/run/haproxy/admin.sock"
[notifiers.ops-mail]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = 2525
tls = "none"                        # none | starttls | implicit
from = "canaryd@example.com"
to = ["ops@example.com"]
[notifiers.team-chat]
kind = "slack"                      # slack | teams | discord | mattermost | google_chat | webhook
url = "http://127.0.0.1:9000/hook"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canaryd.toml");
        std::fs::write(&path, text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(&path, env)
    }

    #[test]
    fn the_contract_example_loads_and_validates() {
        let c = load(
            CONTRACT,
            &[("CANARYD_SERVER", "http://x"), ("CANARYD_TOKEN", "t")],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert!(matches!(c.routers["edge"], RouterConfig::Haproxy(_)));
        assert_eq!(c.notifiers["ops-mail"].kind(), "email");
        assert_eq!(c.notifiers["team-chat"].kind(), "slack");
        c.validate().unwrap();
    }

    #[test]
    fn env_overrides_nested_keys() {
        let c = load(CONTRACT, &[("CANARYD_SERVER__LISTEN", "127.0.0.1:9001")]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9001");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load(&CONTRACT.replace("listen =", "lisen ="), &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("lisen"), "{text}");
        let e = load(&CONTRACT.replace("runtime_api =", "runtime_apy ="), &[]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("runtime_apy") && text.contains("routers"),
            "{text}"
        );
        let e = load(
            &CONTRACT.replace("kind = \"haproxy\"", "kind = \"f5\""),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("f5"), "{e}");
    }

    #[test]
    fn values_are_checked_with_their_keys() {
        let c = load(
            &CONTRACT
                .replace("127.0.0.1:8080", "203.0.113.5:8080")
                .replace("to = [\"ops@example.com\"]", "to = []"),
            &[],
        )
        .unwrap();
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => key,
                other => other.to_string(),
            })
            .collect();
        assert_eq!(keys, vec!["server.listen", "notifiers.ops-mail.to"]);
    }
}
