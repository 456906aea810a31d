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

use crate::config::Config;
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
fn read_url(url: &Option<String>, secret: &SecretRef) -> Result<Secret, (String, String)> {
    let (field, value) = match (url, secret.is_set()) {
        (Some(_), true) => {
            return Err((
                "url".into(),
                "set either `url` or `url_secret`, not both".into(),
            ));
        }
        (None, false) => return Err(("url".into(), "missing: set `url` or `url_secret`".into())),
        (Some(u), false) => ("url", u.clone()),
        (None, true) => match secret.read() {
            Ok(Some(u)) => ("url_secret", u),
            Ok(None) => unreachable!("a set secret reads to a value or an error"),
            Err(e) => return Err(("url_secret".into(), e)),
        },
    };
    match reqwest::Url::parse(value.trim()) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {
            Ok(Secret::new(value.trim().to_string()))
        }
        Ok(p) => Err((
            field.into(),
            format!("scheme {:?} is not http or https (or no host)", p.scheme()),
        )),
        // The URL may hold a token: say what is wrong, not what it is.
        Err(e) => Err((field.into(), format!("not a valid URL ({e})"))),
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

    /// Checks the settings (secrets are read, nothing is contacted); on failure returns
    /// `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            NotifierConfig::Email(e) => e.validate(),
            NotifierConfig::Slack(c)
            | NotifierConfig::Teams(c)
            | NotifierConfig::Discord(c)
            | NotifierConfig::Mattermost(c)
            | NotifierConfig::GoogleChat(c) => read_url(&c.url, &c.url_secret).map(|_| ()),
            NotifierConfig::Webhook(w) => w.validate(),
        }
    }

    /// Builds the notifier (validating first).
    pub fn build(
        &self,
        name: &str,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Arc<dyn Notifier>, (String, String)> {
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

/// Checks everything notifications need from the config: each notifier, the routes, the
/// `[notify]` settings and templates. Returns `(key, message)` per problem.
pub fn validate_config(config: &Config) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (name, notifier) in &config.notifiers {
        if let Err((field, message)) = notifier.validate() {
            errors.push((
                format!("notifiers.{name}.{field}"),
                format!("({}) {message}", notifier.kind()),
            ));
        }
    }
    let names = config.notifiers.keys().map(String::as_str).collect();
    errors.extend(routes::validate(&config.routes, &config.notify, &names));
    errors
}

/// The running notification service: the dispatcher and one delivery lane per notifier.
pub struct Notifications {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Notifications {
    /// Builds the notifiers, settles rows a previous process left behind, and starts the
    /// dispatcher and the lanes. `quiet` says which environments send no notifications by
    /// default (their profile's `notifications = false`).
    pub async fn start(
        config: &Config,
        store: Store,
        quiet: routes::QuietFn,
    ) -> Result<Notifications, NotifyError> {
        let settings = &config.notify;
        let http = http::client(settings.timeout.0);
        let mut notifiers: BTreeMap<String, Arc<dyn Notifier>> = BTreeMap::new();
        for (name, c) in &config.notifiers {
            let n = c
                .build(name, &http, settings.timeout.0)
                .map_err(|(field, message)| NotifyError::Config {
                    key: format!("notifiers.{name}.{field}"),
                    message,
                })?;
            crate::telemetry::metrics().register_notifier(name);
            notifiers.insert(name.clone(), n);
        }
        let templates = templates::Templates::new(&settings.templates).map_err(|message| {
            NotifyError::Config {
                key: "notify.templates".into(),
                message,
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
            routes::Routes::new(&config.routes, quiet, notifiers.keys().cloned()),
            compose::LinkSettings {
                api_base: config
                    .server
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", config.server.listen)),
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
        assert_eq!(bad.validate().unwrap_err().0, "to");
        let chat = NotifierConfig::Slack(ChatConfig {
            url: Some("not a url".into()),
            url_secret: SecretRef::default(),
        });
        assert_eq!(chat.validate().unwrap_err().0, "url");
        let secret = NotifierConfig::Slack(ChatConfig {
            url: None,
            url_secret: SecretRef {
                env: None,
                file: Some("/nonexistent/secret".into()),
            },
        });
        let (field, message) = secret.validate().unwrap_err();
        assert_eq!(field, "url_secret");
        assert!(message.contains("/nonexistent/secret"));
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
        assert!(!bad.validate().unwrap_err().1.contains(token));
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
            c.validate().unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let n = c.build("n", &http, Duration::from_secs(1)).unwrap();
            assert_eq!(n.kind(), c.kind());
            kinds.push(c.kind());
        }
        kinds.dedup();
        assert_eq!(kinds.len(), 7, "one example per kind");
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
