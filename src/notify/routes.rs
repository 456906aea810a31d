//! Who hears about what: `[[routes]]` pick notifiers by environment, severity and notification
//! kind; a spec's `notify:` adds channels for one canary; an environment profile with
//! `notifications = false` (the default of `dev`) silences the routes. Also the `[notify]`
//! settings (delivery deadline, retries, links, templates).

use super::message::{NotificationKind, Severity};
use super::templates::TemplateOverride;
use crate::problem::Problem;
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// One `[[routes]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Environments the route applies to (empty or missing: all).
    #[serde(default)]
    pub environments: Vec<String>,
    /// The least severity sent: `info` (default), `warning` or `critical`.
    #[serde(default)]
    pub min_severity: Severity,
    /// Notification kinds sent (missing: every kind except `step`).
    #[serde(default)]
    pub events: Vec<String>,
    /// The notifiers to send to.
    pub notifiers: Vec<String>,
}

/// `[notify]`: delivery and message settings shared by every notifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// Give up on a notification this long after it was queued.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
    /// Time limit of one delivery attempt.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// First retry delay; doubles per attempt (with jitter) up to `max_backoff`.
    #[serde(default = "default_min_backoff")]
    pub min_backoff: HumanDuration,
    /// Longest retry delay.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// A Grafana dashboard URL for links; `{id}`, `{service}` and `{environment}` are filled in.
    pub grafana_url: Option<String>,
    /// Subject and text templates per notification kind (minijinja).
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateOverride>,
}

fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_min_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            deadline: default_deadline(),
            timeout: default_timeout(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            grafana_url: None,
            templates: BTreeMap::new(),
        }
    }
}

/// Whether an environment is quiet (its profile says `notifications = false`).
pub type QuietFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The routing table, checked.
#[derive(Clone)]
pub struct Routes {
    routes: Vec<Route>,
    quiet: QuietFn,
}

#[derive(Clone, Debug, PartialEq)]
struct Route {
    environments: BTreeSet<String>,
    min_severity: Severity,
    /// None: the default kinds.
    kinds: Option<BTreeSet<NotificationKind>>,
    notifiers: Vec<String>,
}

impl Routes {
    /// Builds the table. With no `[[routes]]` at all, every notifier gets the default kinds.
    /// Call [`validate`] first: unknown kinds are dropped here.
    pub fn new(
        routes: &[RouteConfig],
        quiet: QuietFn,
        notifiers: impl IntoIterator<Item = String>,
    ) -> Routes {
        let routes = if routes.is_empty() {
            vec![Route {
                environments: BTreeSet::new(),
                min_severity: Severity::Info,
                kinds: None,
                notifiers: notifiers.into_iter().collect(),
            }]
        } else {
            routes
                .iter()
                .map(|r| Route {
                    environments: r.environments.iter().cloned().collect(),
                    min_severity: r.min_severity,
                    kinds: (!r.events.is_empty()).then(|| {
                        r.events
                            .iter()
                            .filter_map(|e| NotificationKind::parse(e))
                            .collect()
                    }),
                    notifiers: r.notifiers.clone(),
                })
                .collect()
        };
        Routes { routes, quiet }
    }

    /// The notifiers a notification goes to. `extra` are the spec's own channels: they get the
    /// default kinds whatever the routes and the environment say.
    pub fn recipients(
        &self,
        kind: NotificationKind,
        severity: Severity,
        environment: &str,
        extra: &[String],
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if !(self.quiet)(environment) {
            for r in &self.routes {
                let env_ok = r.environments.is_empty() || r.environments.contains(environment);
                let kind_ok = match &r.kinds {
                    Some(kinds) => kinds.contains(&kind),
                    None => kind.sent_by_default(),
                };
                if env_ok && kind_ok && severity >= r.min_severity {
                    out.extend(r.notifiers.iter().cloned());
                }
            }
        }
        if kind.sent_by_default() {
            out.extend(extra.iter().cloned());
        }
        out
    }
}

/// Checks routes and settings against the configured notifiers: every problem, fields like
/// `routes[0].notifiers` and `notify.timeout` (the keys of `canaryd.toml`).
pub fn validate(
    routes: &[RouteConfig],
    settings: &NotifySettings,
    notifiers: &BTreeSet<&str>,
) -> Vec<Problem> {
    let mut errors = Vec::new();
    let kinds = || {
        NotificationKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, r) in routes.iter().enumerate() {
        if r.notifiers.is_empty() {
            errors.push(Problem::new(
                format!("routes[{i}].notifiers"),
                "needs at least one notifier".to_string(),
            ));
        }
        for n in &r.notifiers {
            if !notifiers.contains(n.as_str()) {
                errors.push(Problem::new(
                    format!("routes[{i}].notifiers"),
                    format!("unknown notifier {n:?} (configured: {notifiers:?})"),
                ));
            }
        }
        for e in &r.events {
            if NotificationKind::parse(e).is_none() {
                errors.push(Problem::new(
                    format!("routes[{i}].events"),
                    format!("unknown event kind {e:?} (known: {})", kinds()),
                ));
            }
        }
        if r.environments.iter().any(|e| e.trim().is_empty()) {
            errors.push(Problem::new(
                format!("routes[{i}].environments"),
                "empty environment name".to_string(),
            ));
        }
    }
    let positive = [
        ("deadline", settings.deadline),
        ("timeout", settings.timeout),
        ("min_backoff", settings.min_backoff),
        ("max_backoff", settings.max_backoff),
    ];
    for (key, d) in positive {
        if d.0.is_zero() {
            errors.push(Problem::new(
                format!("notify.{key}"),
                "must be greater than 0",
            ));
        }
    }
    if settings.max_backoff < settings.min_backoff {
        errors.push(Problem::new(
            "notify.max_backoff".to_string(),
            "must not be shorter than min_backoff".to_string(),
        ));
    }
    if let Some(g) = &settings.grafana_url {
        let filled = g
            .replace("{id}", "1")
            .replace("{service}", "s")
            .replace("{environment}", "e");
        match reqwest::Url::parse(&filled) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => errors.push(Problem::new(
                "notify.grafana_url".to_string(),
                format!("{g:?} is not an http(s) URL"),
            )),
        }
    }
    for (kind, t) in &settings.templates {
        if NotificationKind::parse(kind).is_none() {
            errors.push(Problem::new(
                format!("notify.templates.{kind}"),
                format!("unknown event kind (known: {})", kinds()),
            ));
            continue;
        }
        errors.extend(
            t.check()
                .into_iter()
                .map(|p| p.under(&format!("notify.templates.{kind}"))),
        );
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(envs: &[&str], min: Severity, events: &[&str], to: &[&str]) -> RouteConfig {
        RouteConfig {
            environments: envs.iter().map(|s| s.to_string()).collect(),
            min_severity: min,
            events: events.iter().map(|s| s.to_string()).collect(),
            notifiers: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(set: BTreeSet<String>) -> Vec<String> {
        set.into_iter().collect()
    }

    #[test]
    fn production_rollbacks_go_to_email_and_chat_and_dev_steps_nowhere() {
        let config = [
            route(&["production"], Severity::Info, &[], &["mail", "chat"]),
            route(&[], Severity::Info, &["step"], &["chat"]),
            route(&["staging"], Severity::Warning, &[], &["chat"]),
        ];
        let quiet: QuietFn = Arc::new(|env: &str| env == "dev");
        let routes = Routes::new(&config, quiet, ["mail".into(), "chat".into()]);
        let rb = NotificationKind::RolledBack;
        assert_eq!(
            names(routes.recipients(rb, rb.severity(), "production", &[])),
            ["chat", "mail"]
        );
        let step = NotificationKind::Step;
        assert!(
            routes
                .recipients(step, step.severity(), "dev", &[])
                .is_empty()
        );
        assert_eq!(
            names(routes.recipients(step, step.severity(), "production", &[])),
            ["chat"]
        );
        // Severity: staging gets warnings and worse only.
        let sub = NotificationKind::Submitted;
        assert!(
            routes
                .recipients(sub, sub.severity(), "staging", &[])
                .is_empty()
        );
        assert_eq!(
            names(routes.recipients(rb, rb.severity(), "staging", &[])),
            ["chat"]
        );
        // A spec's own channel hears the default kinds, even in a quiet environment; not steps.
        let extra = ["pager".to_string()];
        assert_eq!(
            names(routes.recipients(rb, rb.severity(), "dev", &extra)),
            ["pager"]
        );
        assert!(
            routes
                .recipients(step, step.severity(), "dev", &extra)
                .is_empty()
        );
    }

    #[test]
    fn without_routes_every_notifier_hears_the_default_kinds() {
        let routes = Routes::new(&[], Arc::new(|_: &str| false), ["a".into(), "b".into()]);
        let k = NotificationKind::Submitted;
        assert_eq!(
            names(routes.recipients(k, k.severity(), "x", &[])),
            ["a", "b"]
        );
        let k = NotificationKind::Step;
        assert!(routes.recipients(k, k.severity(), "x", &[]).is_empty());
    }

    #[test]
    fn validation_names_each_key() {
        let known = BTreeSet::from(["mail"]);
        let config = [route(
            &[""],
            Severity::Info,
            &["rolled_back", "exploded"],
            &["mail", "pager"],
        )];
        let mut settings = NotifySettings {
            grafana_url: Some("not a url".into()),
            ..Default::default()
        };
        settings.min_backoff = HumanDuration(Duration::ZERO);
        settings.templates.insert(
            "rolled_back".into(),
            TemplateOverride {
                subject: Some("{{ service ".into()),
                text: None,
            },
        );
        settings
            .templates
            .insert("nope".into(), TemplateOverride::default());
        let keys: Vec<String> = validate(&config, &settings, &known)
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            keys,
            [
                "routes[0].notifiers",
                "routes[0].events",
                "routes[0].environments",
                "notify.min_backoff",
                "notify.grafana_url",
                "notify.templates.nope",
                "notify.templates.rolled_back.subject",
            ]
        );
    }
}
