//! The daemon's settings: `canaryd.toml`, overridable by `CANARYD_SECTION__KEY` environment
//! variables (e.g. `CANARYD_SERVER__LISTEN=127.0.0.1:9000`).
//!
//! Loading happens in two stages: [`Config::load`] parses (unknown keys are errors that name the
//! key's path), then [`Config::validate`] checks values without touching the network. Network
//! checks belong to preflight and `canaryd doctor`.
//!
//! # Config on top
//!
//! This module sits above every component: it imports each component's own config struct
//! (`RouterConfig`, `NotifierConfig`, `EnvironmentConfig`, `AnalysisConfig`, `ApiConfig`, ...)
//! and hands each component only its slice; nothing below imports this module. Every slice
//! checks itself and reports [`Problem`]s naming fields within the slice; [`Config::validate`]
//! puts the slice's place in front (`routers.edge.` + `runtime_api`) and collects them all.

pub use crate::canary::analysis::AnalysisConfig;
use crate::canary::profile::{EnvironmentConfig, Profile};
use crate::metrics::PrometheusAuth;
use crate::notify::{NotifierConfig, NotifyConfig, SecretRef};
use crate::problem::Problem;
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
    pub environments: BTreeMap<String, EnvironmentConfig>,
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

impl ServerConfig {
    /// Value checks; beyond loopback only with API tokens (`has_tokens`).
    pub fn problems(&self, has_tokens: bool) -> Vec<Problem> {
        match self.listen.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_loopback() && !has_tokens => vec![Problem::new(
                "listen",
                format!(
                    "{addr} is not a loopback address; the API has no tokens configured, so canaryd refuses to listen beyond loopback"
                ),
            )],
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new("listen", format!("{:?}: {e}", self.listen))],
        }
    }

    /// The base URL of the API for links: `public_url`, or the listen address.
    pub fn api_base(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
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

impl StoreConfig {
    /// Value checks.
    pub fn problems(&self) -> Vec<Problem> {
        if !self.url.starts_with("sqlite://") && self.url != "sqlite::memory:" {
            return vec![Problem::new(
                "url",
                format!("{:?}: use sqlite://PATH", self.url),
            )];
        }
        Vec::new()
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
    /// Value checks (the credentials' sources are read, nothing is contacted).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => out.push(Problem::new(
                "url",
                format!("scheme {:?} is not http or https", u.scheme()),
            )),
            Err(e) => out.push(Problem::new("url", format!("{:?}: {e}", self.url))),
        }
        if let Err(ConfigError::Invalid { key, message }) = self.auth() {
            let field = key.strip_prefix("prometheus.").unwrap_or(&key);
            out.push(Problem::new(field, message));
        }
        out
    }

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

/// A configuration problem, naming the key.
#[derive(Debug, PartialEq, thiserror::Error)]
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

    /// Checks values without touching the network. Every problem names its key; all are
    /// reported at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems
            .into_iter()
            .map(|p| ConfigError::Invalid {
                key: p.field,
                message: p.message,
            })
            .collect())
    }

    /// Every slice's problems, each under the slice's place in the file.
    fn problems(&self) -> Vec<Problem> {
        let under = |place: &str, problems: Vec<Problem>| -> Vec<Problem> {
            problems.into_iter().map(|p| p.under(place)).collect()
        };
        let mut out = under("server", self.server.problems(!self.api.tokens.is_empty()));
        out.extend(
            self.api
                .validate()
                .into_iter()
                .map(|(key, message)| Problem::new(key, message)),
        );
        for (name, env) in &self.environments {
            out.extend(under(&format!("environments.{name}"), env.problems()));
        }
        out.extend(under("store", self.store.problems()));
        out.extend(under("prometheus", self.prometheus.problems()));
        for (name, router) in &self.routers {
            out.extend(router.problems().into_iter().map(|p| {
                Problem::new(p.field, format!("({}) {}", router.kind(), p.message))
                    .under(&format!("routers.{name}"))
            }));
        }
        out.extend(crate::notify::problems(
            &self.notifiers,
            &self.routes,
            &self.notify,
        ));
        out.extend(under("analysis", self.analysis.problems()));
        out
    }

    /// The notification service's slice: notifiers, routes, `[notify]`, the API's base URL
    /// for links, and which environments' profiles keep quiet.
    pub fn notifications(&self) -> NotifyConfig {
        let environments = self.environments.clone();
        NotifyConfig {
            notifiers: self.notifiers.clone(),
            routes: self.routes.clone(),
            settings: self.notify.clone(),
            api_base: self.server.api_base(),
            quiet: std::sync::Arc::new(move |env: &str| {
                !Profile::with(env, environments.get(env)).notifications
            }),
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

    #[test]
    fn each_slice_reports_under_its_place_with_its_kind() {
        let c = load(
            &CONTRACT
                .replace("runtime_api = \"127.0.0.1:9999\"", "runtime_api = \" \"")
                .replace("[rules]", "[analysis]\nfailure_limit = 0\n[rules]")
                .replace(
                    "[notifiers.ops-mail]",
                    "[environments.prod]\nsteps = [50]\n[notifiers.ops-mail]",
                ),
            &[],
        )
        .unwrap();
        let errors: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errors,
            vec![
                "environments.prod.steps: the last step must be 100",
                "routers.edge.runtime_api: (haproxy) must not be empty",
                "analysis.failure_limit: must be at least 1",
            ]
        );
    }

    #[test]
    fn the_notification_slice_carries_links_and_quiet_environments() {
        let mut c = load(CONTRACT, &[]).unwrap();
        let n = c.notifications();
        assert_eq!(n.api_base, "http://127.0.0.1:8080");
        assert_eq!(n.notifiers.len(), 2);
        assert!((n.quiet)("dev") && !(n.quiet)("production"));
        c.server.public_url = Some("https://canaryd.example".into());
        assert_eq!(c.notifications().api_base, "https://canaryd.example");
    }
}
