//! Email over SMTP (lettre): multipart text + HTML to every recipient, over plain SMTP,
//! STARTTLS or implicit TLS, with optional authentication (the password comes from an
//! environment variable or a file and is never logged).
//!
//! Each attempt opens its own session and walks the SMTP phases by hand, so it knows how far it
//! got: a failure while connecting, greeting, upgrading to TLS, authenticating or naming the
//! sender and recipients means the message was not sent, and may be retried (SMTP 5xx replies
//! are permanent); once the body is on its way, only the server's reply says whether it was
//! accepted, so a dropped connection or a timeout there is "unknown" and never repeated. The
//! Message-ID is derived from the outbox key, so mail clients can spot copies too.

use super::message::truncate;
use super::{CheckError, DeliveryError, Notifier, Outgoing, Secret, SecretRef};
use crate::problem::Problem;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::time::Duration;

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP (loopback relays, test servers).
    None,
    /// STARTTLS upgrade (port 587); refused if the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
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
    /// Connection security: `none`, `starttls` (default) or `implicit`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Sender address (`canaryd@example.com` or `canaryd <canaryd@example.com>`).
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// SMTP user name, if the server wants authentication.
    pub username: Option<String>,
    /// SMTP password source (`{ env = "SMTP_PASSWORD" }` or `{ file = "/run/secrets/smtp" }`).
    #[serde(default)]
    pub password: SecretRef,
}

fn default_smtp_port() -> u16 {
    587
}

fn mailbox(field: &str, text: &str) -> Result<Mailbox, Problem> {
    Mailbox::from_str(text.trim())
        .map_err(|e| Problem::new(field, format!("{text:?} is not an email address ({e})")))
}

impl EmailConfig {
    /// Value checks (the password's source is read, nothing is contacted): every problem,
    /// each naming its field.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.smtp_host.trim().is_empty() {
            out.push(Problem::new("smtp_host", "must not be empty"));
        }
        if self.smtp_port == 0 {
            out.push(Problem::new("smtp_port", "must not be 0"));
        }
        out.extend(mailbox("from", &self.from).err());
        if self.to.is_empty() {
            out.push(Problem::new("to", "needs at least one recipient"));
        }
        out.extend(self.to.iter().filter_map(|t| mailbox("to", t).err()));
        out.extend(self.credentials().err());
        out
    }

    /// `canaryd doctor`: the SMTP server accepts connections (nothing is sent).
    pub async fn check(&self) -> Result<String, CheckError> {
        let address = format!("{}:{}", self.smtp_host, self.smtp_port);
        let unreachable = |reason: String| CheckError::Unreachable {
            what: format!("SMTP server {address}"),
            reason,
        };
        let connect = tokio::net::TcpStream::connect(&address);
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(_)) => Ok(format!("SMTP server {address} accepts connections")),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable("timed out".into())),
        }
    }

    /// The login, with the password read from its source.
    fn credentials(&self) -> Result<Option<Credentials>, Problem> {
        let password = self
            .password
            .read()
            .map_err(|m| Problem::new("password", m))?;
        match (&self.username, password) {
            (Some(u), Some(p)) => Ok(Some(Credentials::new(u.clone(), p))),
            (Some(_), None) => Err(Problem::new(
                "password",
                "a username needs a password source",
            )),
            (None, Some(_)) => Err(Problem::new("username", "a password needs a username")),
            (None, None) => Ok(None),
        }
    }

    #[allow(clippy::type_complexity)]
    fn parts(&self) -> Result<(Mailbox, Vec<Mailbox>, Option<Credentials>), Problem> {
        if let Some(first) = self.problems().into_iter().next() {
            return Err(first);
        }
        let from = mailbox("from", &self.from)?;
        let to = self
            .to
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((from, to, self.credentials()?))
    }
}

/// An SMTP notifier.
pub struct Email {
    name: String,
    host: String,
    port: u16,
    tls: SmtpTls,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// Held as a secret so it never reaches a log.
    credentials: Option<(String, Secret)>,
    timeout: Duration,
}

impl Email {
    /// Builds the notifier (reads the password).
    pub fn new(name: &str, c: &EmailConfig, timeout: Duration) -> Result<Self, Problem> {
        let (from, to, _) = c.parts()?;
        let password = c.password.read().map_err(|m| Problem::new("password", m))?;
        Ok(Email {
            name: name.into(),
            host: c.smtp_host.trim().to_string(),
            port: c.smtp_port,
            tls: c.tls,
            from,
            to,
            credentials: c.username.clone().zip(password.map(Secret::new)),
            timeout,
        })
    }

    /// The message for one notification.
    pub fn message(&self, out: &Outgoing<'_>) -> Result<Message, DeliveryError> {
        let digest = Sha256::digest(out.key.as_bytes());
        let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let domain = self.from.email.domain().to_string();
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(truncate(&out.rendered.subject, 250))
            .message_id(Some(format!("<canaryd.{id}@{domain}>")))
            .date_now();
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                out.rendered.text.clone(),
                out.rendered.html.clone(),
            ))
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the message: {e}")))
    }

    fn tls_parameters(&self) -> Result<TlsParameters, DeliveryError> {
        TlsParameters::new(self.host.clone())
            .map_err(|e| DeliveryError::Permanent(format!("TLS set-up for {}: {e}", self.host)))
    }

    /// Connects, greets, secures and authenticates: nothing is sent yet.
    async fn session(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let hello = ClientId::default();
        let wrapper = match self.tls {
            SmtpTls::Implicit => Some(self.tls_parameters()?),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &hello,
            wrapper,
            None,
        )
        .await
        .map_err(|e| before_data("connect", &self.host, self.port, e))?;
        if self.tls == SmtpTls::Starttls {
            if !conn.server_info().supports_feature(Extension::StartTls) {
                return Err(DeliveryError::Permanent(format!(
                    "{}:{} does not offer STARTTLS (set tls = \"none\" only for a trusted relay)",
                    self.host, self.port
                )));
            }
            conn.starttls(self.tls_parameters()?, &hello)
                .await
                .map_err(|e| before_data("STARTTLS", &self.host, self.port, e))?;
        }
        if let Some((user, password)) = &self.credentials {
            let creds = Credentials::new(user.clone(), password.expose().to_string());
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)
                .await
                .map_err(|e| before_data("AUTH", &self.host, self.port, e))?;
        }
        Ok(conn)
    }

    async fn send(&self, message: &Message) -> Result<(), DeliveryError> {
        let mut conn = self.session().await?;
        let body = message.formatted();
        let mut options = Vec::new();
        if !body.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let envelope = message.envelope();
        let phases = async {
            conn.command(Mail::new(envelope.from().cloned(), options))
                .await
                .map_err(|e| before_data("MAIL FROM", &self.host, self.port, e))?;
            for to in envelope.to() {
                conn.command(Rcpt::new(to.clone(), vec![]))
                    .await
                    .map_err(|e| before_data("RCPT TO", &self.host, self.port, e))?;
            }
            conn.command(Data)
                .await
                .map_err(|e| before_data("DATA", &self.host, self.port, e))?;
            Ok::<(), DeliveryError>(())
        };
        if let Err(e) = phases.await {
            conn.abort().await;
            return Err(e);
        }
        // From here on the server may have the message: only its reply tells.
        let sent = tokio::time::timeout(self.timeout, conn.message(&body)).await;
        let result = match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_permanent() => Err(DeliveryError::Permanent(format!(
                "{}:{} refused the message: {e}",
                self.host, self.port
            ))),
            Ok(Err(e)) if e.is_transient() => Err(DeliveryError::Retry {
                reason: format!("{}:{} deferred the message: {e}", self.host, self.port),
                after: None,
            }),
            Ok(Err(e)) => Err(DeliveryError::Unknown(format!(
                "{}:{} failed while taking the message; it may have arrived: {e}",
                self.host, self.port
            ))),
            Err(_) => Err(DeliveryError::Unknown(format!(
                "{}:{} did not confirm the message within {}; it may have arrived",
                self.host,
                self.port,
                crate::time::format_duration(self.timeout)
            ))),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
        result
    }
}

/// A failure before the message body was sent: certainly not delivered.
fn before_data(
    phase: &str,
    host: &str,
    port: u16,
    e: lettre::transport::smtp::Error,
) -> DeliveryError {
    let reason = format!("SMTP {phase} with {host}:{port}: {}", chain(&e));
    if e.is_permanent() {
        DeliveryError::Permanent(reason)
    } else {
        DeliveryError::Retry {
            reason,
            after: None,
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[async_trait::async_trait]
impl Notifier for Email {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "email"
    }

    async fn deliver(&self, out: &Outgoing<'_>) -> Result<(), DeliveryError> {
        let message = self.message(out)?;
        // The session phases have their own socket timeout; this bounds a silent server.
        match tokio::time::timeout(self.timeout * 3, self.send(&message)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Unknown(format!(
                "the SMTP session with {}:{} took longer than {}",
                self.host,
                self.port,
                crate::time::format_duration(self.timeout * 3)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::templates::{Templates, sample};

    fn config() -> EmailConfig {
        EmailConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 2525,
            tls: SmtpTls::None,
            from: "canaryd <canaryd@example.com>".into(),
            to: vec![
                "ops@example.com".into(),
                "Release Team <release@example.com>".into(),
            ],
            username: None,
            password: SecretRef::default(),
        }
    }

    #[test]
    fn multipart_to_every_recipient_with_a_stable_message_id() {
        let e = Email::new("mail", &config(), Duration::from_secs(1)).unwrap();
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let out = Outgoing {
            key: "event-42:rolled_back:mail",
            notification: &n,
            rendered: &r,
        };
        let m = e.message(&out).unwrap();
        assert_eq!(m.envelope().to().len(), 2);
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("text/plain") && text.contains("text/html"));
        let id = text
            .lines()
            .find(|l| l.starts_with("Message-ID:"))
            .unwrap()
            .to_string();
        let again = String::from_utf8(e.message(&out).unwrap().formatted()).unwrap();
        assert!(
            again.contains(&id),
            "the Message-ID is derived from the key"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = config();
        c.to = vec!["not an address".into()];
        let fields = |c: &EmailConfig| -> Vec<String> {
            c.problems().into_iter().map(|p| p.field).collect()
        };
        assert_eq!(fields(&c), vec!["to"]);
        c.from = "nobody".into();
        c.smtp_host = " ".into();
        assert_eq!(fields(&c), vec!["smtp_host", "from", "to"], "all at once");
        let mut c = config();
        c.username = Some("canaryd".into());
        assert_eq!(fields(&c), vec!["password"]);
        c.password = SecretRef {
            env: None,
            file: Some("/nonexistent/pw".into()),
        };
        let problems = c.problems();
        assert_eq!(problems[0].field, "password");
        assert!(problems[0].message.contains("/nonexistent/pw"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = config();
        c.smtp_port = port;
        let e = Email::new("mail", &c, Duration::from_secs(1)).unwrap();
        let n = sample();
        let r = Templates::new(&Default::default()).unwrap().render(&n);
        let err = e
            .deliver(&Outgoing {
                key: "k",
                notification: &n,
                rendered: &r,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Retry { .. }), "{err:?}");
    }
}
