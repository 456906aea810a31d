//! Notifications: telling people what a canary did and why, by email and chat, exactly as the
//! event log says it, never in the way of the canary.
//!
//! # Layout
//!
//! - Notifiers, one file each behind [`Notifier`]: [`email`] (SMTP via lettre), [`slack`]
//!   (Block Kit), [`teams`] (Workflows webhook, Adaptive Card), [`discord`] (embeds),
//!   [`mattermost`], [`google_chat`] (cardsV2), [`webhook`] (canaryd's own signed JSON); [`http`]
//!   is their shared HTTP client and answer classification.
//! - [`message`]: the notification model every notifier renders; [`compose`]: which events
//!   become which notifications; [`templates`]: default texts and minijinja overrides;
//!   [`routes`]: `[[routes]]`, `[notify]` and a spec's `notify:`.
//! - [`dispatcher`]: tails the event log into the outbox; [`delivery`]: one lane per notifier
//!   sends what is due, with retries; [`outbox`]: keys and the retry policy. The outbox itself
//!   lives in the store (`store/outbox.rs`).
//!
//! # Delivery semantics
//!
//! The dispatcher writes a notification's outbox rows and moves its cursor in one transaction,
//! and each row's key (event, notification, notifier) is unique: a crash never loses a
//! notification nor queues it twice. A lane marks a row `sending` (committed) before it talks
//! to the network and records the outcome after. So each (event, notifier) pair is sent **at
//! most once**, in this precise sense: canaryd repeats an attempt only when it *knows* the
//! previous one was not accepted — the connection was refused, the server answered with an
//! error (HTTP 5xx/408/429, SMTP 4xx), or an SMTP command before the message body failed.
//! When the outcome cannot be known — no answer in time after the request was sent, the
//! connection dropped while the body was in flight, or canaryd died mid-attempt (`kill -9`) —
//! the row ends as `unknown` and is not sent again; the canary's events say so
//! (`notification_failed`, `outcome: unknown`). Retries back off exponentially with jitter
//! (or wait exactly as long as a 429 asks) until `[notify] deadline`; then the row ends
//! `failed`, is logged, counted in `canaryd_notifications_total{outcome="failed"}` and
//! recorded in the canary's events. Delivery runs in its own tasks and shares only the store
//! with the canaries (short transactions of its own), so a dead SMTP server or a webhook that
//! never answers does not delay a canary's step (`cargo bench --bench notify` measures it).
//! Each lane delivers in queue order; a message waiting for its retry holds back the ones
//! behind it, so a 429's `retry_after` pauses the whole lane, as the receiver asked.

pub mod compose;
pub mod delivery;
pub mod discord;
pub mod dispatcher;
pub mod email;
pub mod google_chat;
pub mod http;
pub mod mattermost;
pub mod message;
pub mod outbox;
pub mod routes;
pub mod slack;
pub mod teams;
pub mod templates;
pub mod webhook;

pub use email::{EmailConfig, SmtpTls};
pub use message::{Notification, NotificationKind, Severity};
pub use routes::{NotifySettings, RouteConfig};
pub use webhook::WebhookConfig;

use crate::problem::Problem;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use templates::Rendered;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::secret::{Secret, SecretRef};

/// A chat webhook (`slack`, `teams`, `discord`, `mattermost`, `google_chat`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// The webhook URL (a secret: it carries the token; never logged). Or use `url_secret`.
    pub url: Option<String>,
    /// Where to read the URL from instead.
    #[serde(default)]
    pub url_secret: SecretRef,
}

impl fmt::Debug for ChatConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_secret", &self.url_secret)
            .finish()
    }
}

/// A notifier's configuration, selected by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotifierConfig {
    /// Email over SMTP.
    Email(EmailConfig),
    /// Slack incoming webhook (Block Kit).
    Slack(ChatConfig),
    /// Microsoft Teams Workflows webhook (Adaptive Card).
    Teams(ChatConfig),
    /// Discord webhook (embeds).
    Discord(ChatConfig),
    /// Mattermost incoming webhook.
    Mattermost(ChatConfig),
    /// Google Chat webhook (cardsV2).
    GoogleChat(ChatConfig),
    /// A generic signed JSON webhook.
    Webhook(WebhookConfig),
}

/// Checks a webhook URL given inline or as a secret; returns the URL.
fn read_url(url: &Option<String>, secret: &SecretRef) -> Result<Secret, Problem> {
    let (field, value) = match (url, secret.is_set()) {
        (Some(_), true) => {
            return Err(Problem::new(
                "url",
                "set either `url` or `url_secret`, not both",
            ));
        }
        (None, false) => return Err(Problem::new("url", "missing: set `url` or `url_secret`")),
        (Some(u), false) => ("url", u.clone()),
        (None, true) => match secret.read() {
            Ok(Some(u)) => ("url_secret", u),
            Ok(None) => unreachable!("a set secret reads to a value or an error"),
            Err(e) => return Err(Problem::new("url_secret", e)),
        },
    };
    match reqwest::Url::parse(value.trim()) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {
            Ok(Secret::new(value.trim().to_string()))
        }
        Ok(p) => Err(Problem::new(
            field,
            format!("scheme {:?} is not http or https (or no host)", p.scheme()),
        )),
        // The URL may hold a token: say what is wrong, not what it is.
        Err(e) => Err(Problem::new(field, format!("not a valid URL ({e})"))),
    }
}

impl NotifierConfig {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            NotifierConfig::Email(_) => "email",
            NotifierConfig::Slack(_) => "slack",
            NotifierConfig::Teams(_) => "teams",
            NotifierConfig::Discord(_) => "discord",
            NotifierConfig::Mattermost(_) => "mattermost",
            NotifierConfig::GoogleChat(_) => "google_chat",
            NotifierConfig::Webhook(_) => "webhook",
        }
    }

    /// Checks the settings (secrets are read, nothing is contacted): every problem, each
    /// naming its field within this notifier's section (`to`, `url_secret`).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            NotifierConfig::Email(e) => e.problems(),
            NotifierConfig::Slack(c)
            | NotifierConfig::Teams(c)
            | NotifierConfig::Discord(c)
            | NotifierConfig::Mattermost(c)
            | NotifierConfig::GoogleChat(c) => {
                read_url(&c.url, &c.url_secret).err().into_iter().collect()
            }
            NotifierConfig::Webhook(w) => w.problems(),
        }
    }

    /// `canaryd doctor`: what can be checked without sending anything. Email connects to its
    /// SMTP server; the others only check their settings (calling a webhook would post).
    pub async fn check(&self) -> Result<String, CheckError> {
        if let Some(first) = self.problems().into_iter().next() {
            return Err(CheckError::Invalid(first));
        }
        match self {
            NotifierConfig::Email(e) => e.check().await,
            _ => Ok("configured (not called: doctor sends nothing)".into()),
        }
    }

    /// Builds the notifier (validating first).
    pub fn build(
        &self,
        name: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Arc<dyn Notifier>, Problem> {
        let chat = |c: &ChatConfig| {
            read_url(&c.url, &c.url_secret).map(|url| http::Target::new(http.clone(), url))
        };
        Ok(match self {
            NotifierConfig::Email(e) => Arc::new(email::Email::new(name, e, timeout)?),
            NotifierConfig::Slack(c) => Arc::new(slack::Slack::new(name, chat(c)?)),
            NotifierConfig::Teams(c) => Arc::new(teams::Teams::new(name, chat(c)?)),
            NotifierConfig::Discord(c) => Arc::new(discord::Discord::new(name, chat(c)?)),
            NotifierConfig::Mattermost(c) => Arc::new(mattermost::Mattermost::new(name, chat(c)?)),
            NotifierConfig::GoogleChat(c) => {
                Arc::new(google_chat::GoogleChat::new(name, chat(c)?)?)
            }
            NotifierConfig::Webhook(w) => Arc::new(webhook::Webhook::new(name, w, http)?),
        })
    }
}

/// One notification on its way to one notifier.
pub struct Outgoing<'a> {
    /// The idempotency key (also sent to receivers that can deduplicate).
    pub key: &'a str,
    /// The notification.
    pub notification: &'a Notification,
    /// Its text.
    pub rendered: &'a Rendered,
}

/// Why a delivery attempt did not succeed, by what may follow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Certainly not accepted, and worth another try (refused connection, 5xx, 429).
    #[error("{reason}")]
    Retry {
        /// What happened (never containing a secret).
        reason: String,
        /// The receiver's requested wait (429 `retry_after`).
        after: Option<Duration>,
    },
    /// Certainly not accepted, and trying again will not help (4xx, SMTP 5xx).
    #[error("{0}")]
    Permanent(String),
    /// It may or may not have arrived (no answer in time after sending): never repeated.
    #[error("{0}")]
    Unknown(String),
}

/// Something that tells people: email, a chat service, a webhook.
///
/// Implementations MUST NOT put secrets (webhook URLs, passwords) in errors; MUST return
/// [`DeliveryError::Retry`] or [`DeliveryError::Permanent`] only when the receiver certainly did
/// not accept the message, and [`DeliveryError::Unknown`] when it may have; SHOULD bound each
/// attempt by the configured timeout.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// The configured name (`ops-mail`).
    fn name(&self) -> &str;
    /// The kind (`email`, `slack`, ...).
    fn kind(&self) -> &'static str;
    /// Sends one notification.
    async fn deliver(&self, out: &Outgoing<'_>) -> Result<(), DeliveryError>;
}

/// Why notifications could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A notifier or template could not be built.
    #[error("{key}: {message}")]
    Config {
        /// The config key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why `canaryd doctor`'s check of a notifier failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    /// The settings are wrong (nothing was contacted).
    #[error("{0}")]
    Invalid(Problem),
    /// The server could not be reached.
    #[error("{what}: {reason}")]
    Unreachable {
        /// What was contacted (`SMTP server 127.0.0.1:25`).
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// What the notification service takes from the daemon's configuration: `config.rs` hands
/// this slice over, so notify never sees the whole file.
#[derive(Clone)]
pub struct NotifyConfig {
    /// `[notifiers.NAME]`.
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// `[[routes]]` (none: every notification to every notifier).
    pub routes: Vec<RouteConfig>,
    /// `[notify]`: delivery, links, templates.
    pub settings: NotifySettings,
    /// The base URL of canaryd's API, for links in notifications.
    pub api_base: String,
    /// Whether an environment is quiet (its profile turns notifications off).
    pub quiet: routes::QuietFn,
}

/// Checks everything notifications need: each notifier (with `notifiers.NAME.` before its
/// field and its kind before the message), the routes, the `[notify]` settings and templates.
/// Fields are the keys of `canaryd.toml`.
pub fn problems(
    notifiers: &BTreeMap<String, NotifierConfig>,
    routes: &[RouteConfig],
    settings: &NotifySettings,
) -> Vec<Problem> {
    let mut errors = Vec::new();
    for (name, notifier) in notifiers {
        errors.extend(notifier.problems().into_iter().map(|p| {
            Problem::new(p.field, format!("({}) {}", notifier.kind(), p.message))
                .under(&format!("notifiers.{name}"))
        }));
    }
    let names = notifiers.keys().map(String::as_str).collect();
    errors.extend(routes::validate(routes, settings, &names));
    errors
}

/// The running notification service: the dispatcher and one delivery lane per notifier.
pub struct Notifications {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Notifications {
    /// Builds the notifiers, settles rows a previous process left behind, and starts the
    /// dispatcher and the lanes.
    pub async fn start(config: &NotifyConfig, store: Store) -> Result<Notifications, NotifyError> {
        let settings = &config.settings;
        let notifiers = build_all(config)?;
        let templates = templates::Templates::new(&settings.templates).map_err(|p| {
            let p = p.under("notify");
            NotifyError::Config {
                key: p.field,
                message: p.message,
            }
        })?;
        let policy = outbox::RetryPolicy::from(settings);
        let lanes = delivery::Lanes::new(
            store.clone(),
            notifiers.clone(),
            Arc::new(templates),
            policy,
        );
        lanes.settle_leftovers().await?;
        let dispatcher = dispatcher::Dispatcher::new(
            store,
            routes::Routes::new(
                &config.routes,
                config.quiet.clone(),
                notifiers.keys().cloned(),
            ),
            compose::LinkSettings {
                api_base: config.api_base.clone(),
                grafana: settings.grafana_url.clone(),
            },
            notifiers.keys().cloned().collect(),
            policy,
            lanes.waker(),
        );
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(dispatcher.run(cancel.clone()));
        lanes.spawn_all(&tracker, &cancel);
        tracker.close();
        tracing::info!(
            notifiers = ?notifiers.keys().collect::<Vec<_>>(),
            routes = config.routes.len(),
            "Notifications started"
        );
        Ok(Notifications { cancel, tracker })
    }

    /// Stops dispatching and delivery; attempts in flight finish first (each is bounded by
    /// `[notify] timeout`). What is still queued is sent at the next start.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

/// Builds every configured notifier (and registers it with the self-metrics).
fn build_all(config: &NotifyConfig) -> Result<BTreeMap<String, Arc<dyn Notifier>>, NotifyError> {
    let timeout = config.settings.timeout.0;
    let http = http::client(timeout);
    let mut notifiers: BTreeMap<String, Arc<dyn Notifier>> = BTreeMap::new();
    for (name, c) in &config.notifiers {
        let n = c.build(name, &http, timeout).map_err(|p| {
            let p = p.under(&format!("notifiers.{name}"));
            NotifyError::Config {
                key: p.field,
                message: p.message,
            }
        })?;
        crate::telemetry::metrics().register_notifier(name);
        notifiers.insert(name.clone(), n);
    }
    Ok(notifiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad = NotifierConfig::Email(EmailConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            tls: SmtpTls::None,
            from: "canaryd@example.com".into(),
            to: vec![],
            username: None,
            password: SecretRef::default(),
        });
        assert_eq!(bad.problems()[0].field, "to");
        let chat = NotifierConfig::Slack(ChatConfig {
            url: Some("not a url".into()),
            url_secret: SecretRef::default(),
        });
        assert_eq!(chat.problems()[0].field, "url");
        let secret = NotifierConfig::Slack(ChatConfig {
            url: None,
            url_secret: SecretRef {
                env: None,
                file: Some("/nonexistent/secret".into()),
            },
        });
        let problems = secret.problems();
        assert_eq!(problems[0].field, "url_secret");
        assert!(problems[0].message.contains("/nonexistent/secret"));
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_errors() {
        let token = "T000/B000/XXXXSECRETXXXX";
        let chat = NotifierConfig::Slack(ChatConfig {
            url: Some(format!("https://hooks.slack.com/services/{token}")),
            url_secret: SecretRef::default(),
        });
        assert!(!format!("{chat:?}").contains(token));
        let bad = NotifierConfig::Discord(ChatConfig {
            url: Some(format!("ftp://discord.example/{token}")),
            url_secret: SecretRef::default(),
        });
        assert!(!bad.problems()[0].message.contains(token));
        let s = Secret::new(token.into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
    }

    /// Every kind's example config parses, validates and builds (the registry test).
    #[test]
    fn every_kind_example_builds() {
        let examples = [
            "kind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 2525\ntls = \"none\"\nfrom = \"canaryd@example.com\"\nto = [\"ops@example.com\", \"Release Team <release@example.com>\"]",
            "kind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"",
            "kind = \"teams\"\nurl = \"https://prod-00.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?sig=abc\"",
            "kind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/abc\"",
            "kind = \"mattermost\"\nurl = \"https://chat.example/hooks/abc\"",
            "kind = \"google_chat\"\nurl = \"https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t\"",
            "kind = \"webhook\"\nurl = \"https://hooks.example/canaryd\"\nheaders = { \"X-Team\" = \"payments\" }",
        ];
        let http = http::client(Duration::from_secs(1));
        let mut kinds = Vec::new();
        for text in examples {
            let c: NotifierConfig = toml_from_str(text);
            assert!(c.problems().is_empty(), "{text}: {:?}", c.problems());
            let n = c.build("n", &http, Duration::from_secs(1)).unwrap();
            assert_eq!(n.kind(), c.kind());
            kinds.push(c.kind());
        }
        kinds.dedup();
        assert_eq!(kinds.len(), 7, "one example per kind");
    }

    /// `doctor`'s check connects to an SMTP server, only checks a webhook's settings, and
    /// names the field of a bad setting.
    #[tokio::test]
    async fn check_connects_to_smtp_and_sends_nothing_elsewhere() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let email = |port: u16| {
            toml_from_str(&format!(
                "kind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"canaryd@example.com\"\nto = [\"ops@example.com\"]"
            ))
        };
        let found = email(port).check().await.unwrap();
        assert!(found.contains("accepts connections"), "{found}");
        drop(listener);
        let e = email(port).check().await.unwrap_err();
        assert!(
            matches!(&e, CheckError::Unreachable { what, .. } if what.contains(&port.to_string())),
            "{e:?}"
        );
        let slack = toml_from_str("kind = \"slack\"\nurl = \"http://127.0.0.1:1/hook\"");
        assert!(slack.check().await.unwrap().contains("not called"));
        let bad = toml_from_str("kind = \"slack\"\nurl = \"ftp://x/hook\"");
        let e = bad.check().await.unwrap_err();
        assert!(
            matches!(&e, CheckError::Invalid(p) if p.field == "url"),
            "{e:?}"
        );
    }

    fn toml_from_str(text: &str) -> NotifierConfig {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }
}
