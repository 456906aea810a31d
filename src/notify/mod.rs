//! Notifiers: where canaryd tells people what happened (email and chat).
//!
//! This module owns the notifier configuration (`[notifiers.NAME] kind = ...`), a closed,
//! `kind`-tagged set; each kind is validated when the daemon starts so a broken notifier fails
//! at start with its name and field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP (loopback relays, test servers).
    None,
    /// STARTTLS upgrade (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// A secret read from an environment variable or a file, never written in the config itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret (trailing newline trimmed).
    pub file: Option<String>,
}

impl SecretRef {
    /// Whether a source is configured.
    pub fn is_set(&self) -> bool {
        self.env.is_some() || self.file.is_some()
    }

    /// Reads the secret. The error names the source, never the value.
    pub fn read(&self) -> Result<Option<String>, String> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) => Err("set either `env` or `file`, not both".into()),
            (Some(var), None) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set")),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read secret file {path}: {e}")),
            (None, None) => Ok(None),
        }
    }
}

/// `kind = "email"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP server port.
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// Connection security.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// SMTP user name, if the server wants authentication.
    pub username: Option<String>,
    /// SMTP password source.
    #[serde(default)]
    pub password: SecretRef,
}

fn default_smtp_port() -> u16 {
    587
}

/// A chat webhook (`slack`, `teams`, `discord`, `mattermost`, `google_chat`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// The webhook URL (treated as a secret: never logged). Or use `url_secret`.
    pub url: Option<String>,
    /// Where to read the URL from instead.
    #[serde(default)]
    pub url_secret: SecretRef,
}

/// `kind = "webhook"`: a documented JSON event, signed with HMAC-SHA256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: Option<String>,
    /// Where to read the URL from instead.
    #[serde(default)]
    pub url_secret: SecretRef,
    /// The HMAC key's source.
    #[serde(default)]
    pub secret: SecretRef,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
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

fn check_url(url: &Option<String>, secret: &SecretRef) -> Result<(), (String, String)> {
    match (url, secret.is_set()) {
        (Some(_), true) => Err((
            "url".into(),
            "set either `url` or `url_secret`, not both".into(),
        )),
        (None, false) => Err(("url".into(), "missing: set `url` or `url_secret`".into())),
        (Some(u), false) => match reqwest::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") => Ok(()),
            Ok(p) => Err((
                "url".into(),
                format!("scheme {:?} is not http or https", p.scheme()),
            )),
            // The URL may hold a token: say what is wrong, not what it is.
            Err(e) => Err(("url".into(), format!("not a valid URL ({e})"))),
        },
        (None, true) => secret
            .read()
            .map(|_| ())
            .map_err(|e| ("url_secret".into(), e)),
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

    /// Checks the settings; on failure returns `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            NotifierConfig::Email(e) => {
                if e.smtp_host.trim().is_empty() {
                    return Err(("smtp_host".into(), "must not be empty".into()));
                }
                if !e.from.contains('@') {
                    return Err((
                        "from".into(),
                        format!("{:?} is not an email address", e.from),
                    ));
                }
                if e.to.is_empty() {
                    return Err(("to".into(), "needs at least one recipient".into()));
                }
                if let Some(bad) = e.to.iter().find(|a| !a.contains('@')) {
                    return Err(("to".into(), format!("{bad:?} is not an email address")));
                }
                e.password.read().map_err(|m| ("password".into(), m))?;
                if e.password.is_set() && e.username.is_none() {
                    return Err(("username".into(), "a password needs a username".into()));
                }
                Ok(())
            }
            NotifierConfig::Slack(c)
            | NotifierConfig::Teams(c)
            | NotifierConfig::Discord(c)
            | NotifierConfig::Mattermost(c)
            | NotifierConfig::GoogleChat(c) => check_url(&c.url, &c.url_secret),
            NotifierConfig::Webhook(w) => {
                check_url(&w.url, &w.url_secret)?;
                w.secret
                    .read()
                    .map(|_| ())
                    .map_err(|m| ("secret".into(), m))
            }
        }
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
}
