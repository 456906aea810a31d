//! Notifications end to end: the real daemon with real HAProxy and Prometheus, a real SMTP
//! server (Debian's aiosmtpd writing a Maildir) and in-test HTTP receivers standing in for
//! Slack, Teams, Discord, Mattermost, Google Chat and a signed webhook.

use crate::stack::*;
use crate::support::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use canaryd::notify::message::value as fmt_value;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FINISH: Duration = Duration::from_secs(90);
const ARRIVE: Duration = Duration::from_secs(60);
const HOOK_KEY: &str = "e2e-hmac-key";
const FAULT: &[&str] = &["--latency-multiplier", "2.5", "--error-rate", "0.1"];

// ---------------------------------------------------------------------------------------------
// An HTTP receiver for every chat service
// ---------------------------------------------------------------------------------------------

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    at: Instant,
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Answers like the services do. Paths: `/flaky/...` answers 500 to the first request of
/// each delivery (`X-Canaryd-Delivery`) then 200; `/discord-limited/...` answers 429 with
/// `retry_after: 1.5` to the first request of each message then 204; `/hang/...` never
/// answers; `/teams/...` 202, `/discord/...` 204, `/gchat/...` a message JSON, others 200 `ok`.
#[derive(Clone, Default)]
struct Receiver {
    log: Arc<Mutex<Vec<Received>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

const RETRY_AFTER: f64 = 1.5;

impl Receiver {
    async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        let app = axum::Router::new().fallback(handle).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, format!("http://{addr}"))
    }

    fn requests(&self, prefix: &str) -> Vec<Received> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a request under `prefix` whose body contains `needle`.
    async fn wait_for(&self, prefix: &str, needle: &str) -> Received {
        poll_until(
            ARRIVE,
            &format!("a request to {prefix} containing {needle:?}"),
            || async {
                self.requests(prefix)
                    .into_iter()
                    .find(|r| r.text().contains(needle))
            },
        )
        .await
    }
}

async fn handle(
    axum::extract::State(r): axum::extract::State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message_key = match path.split('/').nth(1).unwrap_or("") {
        "flaky" => headers
            .get("x-canaryd-delivery")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        "discord-limited" => format!(
            "{}|{}",
            json["embeds"][0]["title"], json["embeds"][0]["description"]
        ),
        _ => String::new(),
    };
    let n = {
        let mut seen = r.seen.lock().unwrap();
        let n = seen.entry(format!("{path}|{message_key}")).or_insert(0);
        *n += 1;
        *n
    };
    let (status, answer): (StatusCode, String) = match path.split('/').nth(1).unwrap_or("") {
        "flaky" if n == 1 => (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
        "discord-limited" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "You are being rate limited.", "retry_after": RETRY_AFTER, "global": false})
                .to_string(),
        ),
        "discord" | "discord-limited" => (StatusCode::NO_CONTENT, String::new()),
        "teams" => (StatusCode::ACCEPTED, String::new()),
        "gchat" => (StatusCode::OK, json!({"name": "spaces/A/messages/1"}).to_string()),
        _ => (StatusCode::OK, "ok".into()),
    };
    r.log.lock().unwrap().push(Received {
        path: path.clone(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
        status: status.as_u16(),
    });
    if path.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    (status, answer).into_response()
}

// ---------------------------------------------------------------------------------------------
// A real SMTP server
// ---------------------------------------------------------------------------------------------

/// `/usr/bin/python3 -m aiosmtpd` with the Mailbox handler: every message becomes a file in a
/// Maildir.
struct Smtp {
    port: u16,
    dir: tempfile::TempDir,
    proc: Option<ChildProc>,
}

/// A mail as the test reads it (MIME decoded by Python's `email` package).
#[derive(Debug, Clone)]
struct Mail {
    subject: String,
    rcpt: String,
    message_id: String,
    text: String,
    html: String,
}

const READ_MAILDIR: &str = r#"
import email, email.policy, json, os, sys
d = os.path.join(sys.argv[1], 'new')
out = []
for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    with open(os.path.join(d, name), 'rb') as f:
        m = email.message_from_binary_file(f, policy=email.policy.default)
    text = m.get_body(preferencelist=('plain',))
    html = m.get_body(preferencelist=('html',))
    out.append({'subject': str(m['subject']), 'rcpt': str(m.get('X-RcptTo', '')),
                'message_id': str(m['message-id']),
                'text': text.get_content() if text else '', 'html': html.get_content() if html else ''})
print(json.dumps(out))
"#;

impl Smtp {
    /// A server to be started later on a free port.
    fn reserve() -> Smtp {
        Smtp {
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("maildir-")
                .tempdir()
                .unwrap(),
            proc: None,
        }
    }

    fn start(&mut self) {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.dir.path().join("mail"));
        let mut proc = ChildProc::spawn("aiosmtpd", cmd, &self.dir.path().join("smtpd.log"));
        let addr = format!("127.0.0.1:{}", self.port);
        if let Err(e) = proc.wait_ready(START_DEADLINE, || {
            std::net::TcpStream::connect(&addr).is_ok()
        }) {
            proc.fail(&format!("aiosmtpd did not start: {e}"));
        }
        self.proc = Some(proc);
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn mails(&self) -> Vec<Mail> {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", READ_MAILDIR])
            .arg(self.dir.path().join("mail"))
            .output()
            .expect("python3 reads the Maildir");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("maildir JSON");
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| Mail {
                subject: m["subject"].as_str().unwrap().to_string(),
                rcpt: m["rcpt"].as_str().unwrap().to_string(),
                message_id: m["message_id"].as_str().unwrap().to_string(),
                text: m["text"].as_str().unwrap().to_string(),
                html: m["html"].as_str().unwrap().to_string(),
            })
            .collect()
    }

    fn with_subject(&self, needle: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.subject.contains(needle))
            .collect()
    }

    async fn wait_for(&self, needle: &str) -> Mail {
        poll_until(
            ARRIVE,
            &format!("a mail with subject containing {needle:?}"),
            || async { self.with_subject(needle).into_iter().next() },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn email_notifier(name: &str, port: u16) -> String {
    format!(
        r#"[notifiers.{name}]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
tls = "none"
from = "canaryd <canaryd@example.com>"
to = ["ops@example.com", "Release Team <release@example.com>"]
"#
    )
}

fn chat_notifier(name: &str, kind: &str, url: &str) -> String {
    format!("[notifiers.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n")
}

/// Submits a spec file (no waiting); returns the canary's id.
fn submit(stack: &Stack, spec: &Path) -> i64 {
    let out = stack.canaryd.cli(&["submit", spec.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no canary id in {text:?}"))
}

/// The stack's spec with another environment, written next to it.
fn spec_in(stack: &Stack, environment: &str) -> PathBuf {
    let text = std::fs::read_to_string(&stack.spec_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("environment:"))
        .unwrap()
        .to_string();
    let path = stack.dir().join(format!("spec-{environment}.yaml"));
    std::fs::write(
        &path,
        text.replace(&line, &format!("environment: {environment}")),
    )
    .unwrap();
    path
}

/// The failing metric of the last analysis as the API shows it: (name, canary, baseline).
async fn failing_metric(stack: &Stack, id: i64) -> (String, String, String) {
    let (_, view) = stack.canaryd.get(&format!("/api/v1/canaries/{id}")).await;
    let m = view["analysis"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["status"] == "fail")
        .unwrap_or_else(|| panic!("a failing metric in {view}"))
        .clone();
    let unit = m["unit"].as_str().unwrap();
    (
        m["name"].as_str().unwrap().to_string(),
        fmt_value(unit, m["canary"].as_f64()),
        fmt_value(unit, m["baseline"].as_f64()),
    )
}

/// The states of a canary's outbox rows of one kind, read from the daemon's SQLite file.
fn outbox_rows(db: &Path, canary: i64, kind: &str) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the store read-only");
    let mut stmt = conn
        .prepare("SELECT state FROM outbox WHERE canary_id = ?1 AND kind = ?2 ORDER BY id")
        .expect("the outbox table");
    stmt.query_map(rusqlite::params![canary, kind], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How many failed attempts the daemon logged for a canary's notifications.
fn retries(log: &str, canary: i64) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("Notification not delivered; will retry")
                && l.contains(&format!("canary={canary} "))
        })
        .count()
}

async fn metrics_text(stack: &Stack) -> String {
    http_client()
        .get(format!("{}/metrics", stack.canaryd.url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

fn verify_signature(r: &Received) {
    let ts = &r.headers["x-canaryd-timestamp"];
    let sig = &r.headers["x-canaryd-signature"];
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_KEY.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, &format!("sha256={hex}"), "signature of {}", r.text());
}

// ---------------------------------------------------------------------------------------------
// Payload shapes (COMPONENTS.md §6)
// ---------------------------------------------------------------------------------------------

fn assert_slack(p: &Value, metric: &str) {
    assert_eq!(keys(p), ["blocks", "text"], "{p}");
    assert!(p["text"].is_string());
    let blocks = p["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    for b in blocks {
        match b["type"].as_str().unwrap() {
            "header" => {}
            "section" => {
                if let Some(fields) = b.get("fields") {
                    let fields = fields.as_array().unwrap();
                    assert!(!fields.is_empty() && fields.len() <= 10, "{b}");
                    for f in fields {
                        assert_eq!(keys(f), ["text", "type"]);
                        assert_eq!(f["type"], "mrkdwn");
                    }
                } else {
                    assert_eq!(b["text"]["type"], "mrkdwn", "{b}");
                }
            }
            "context" => {
                for e in b["elements"].as_array().unwrap() {
                    assert_eq!(e["type"], "mrkdwn");
                }
            }
            other => panic!("unexpected block type {other}: {b}"),
        }
    }
    assert!(p.to_string().contains(&format!("*{metric}* FAIL")), "{p}");
}

fn assert_teams(p: &Value, metric: &str) {
    assert_eq!(keys(p), ["attachments", "type"]);
    assert_eq!(p["type"], "message");
    let a = &p["attachments"][0];
    assert_eq!(keys(a), ["content", "contentType", "contentUrl"]);
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
    assert!(a["contentUrl"].is_null());
    let c = &a["content"];
    assert_eq!(
        c["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert_eq!(c["type"], "AdaptiveCard");
    assert_eq!(c["version"], "1.4");
    let body = c["body"].as_array().unwrap();
    assert_eq!(body[0]["type"], "TextBlock");
    assert_eq!(body[0]["weight"], "Bolder");
    assert_eq!(body[0]["wrap"], true);
    let facts = body
        .iter()
        .find(|b| b["type"] == "FactSet")
        .expect("a FactSet")["facts"]
        .as_array()
        .unwrap();
    assert!(facts.iter().all(|f| keys(f) == ["title", "value"]));
    assert!(facts.iter().any(|f| f["title"] == metric), "{p}");
    for action in c["actions"].as_array().unwrap() {
        assert_eq!(action["type"], "Action.OpenUrl");
    }
}

fn assert_discord(p: &Value, metric: &str) {
    assert_eq!(keys(p), ["content", "embeds", "username"]);
    assert!(p["content"].as_str().unwrap().chars().count() <= 2000);
    let embeds = p["embeds"].as_array().unwrap();
    assert!(!embeds.is_empty() && embeds.len() <= 10);
    let e = &embeds[0];
    for k in keys(e) {
        assert!(
            [
                "color",
                "description",
                "fields",
                "timestamp",
                "title",
                "url"
            ]
            .contains(&k),
            "{k}"
        );
    }
    assert!(e["color"].is_u64());
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).expect("ISO 8601");
    let fields = e["fields"].as_array().unwrap();
    assert!(fields.len() <= 25);
    for f in fields {
        assert_eq!(keys(f), ["inline", "name", "value"]);
        assert!(f["inline"].is_boolean());
    }
    assert!(fields.iter().any(|f| f["name"] == metric), "{p}");
}

fn assert_mattermost(p: &Value, metric: &str) {
    assert_eq!(keys(p), ["attachments", "text", "username"]);
    assert!(p.get("blocks").is_none());
    let a = &p["attachments"][0];
    for k in ["fallback", "color", "title", "title_link", "text", "fields"] {
        assert!(a.get(k).is_some(), "attachment without {k}: {a}");
    }
    let fields = a["fields"].as_array().unwrap();
    assert!(
        fields
            .iter()
            .all(|f| keys(f) == ["short", "title", "value"])
    );
    assert!(fields.iter().any(|f| f["title"] == metric), "{p}");
}

fn assert_google_chat(r: &Received, metric: &str) {
    assert_eq!(r.headers["content-type"], "application/json; charset=UTF-8");
    assert!(
        r.query
            .contains("messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"),
        "{}",
        r.query
    );
    let p = r.json();
    assert_eq!(keys(&p), ["cardsV2", "text", "thread"]);
    assert!(p["thread"]["threadKey"].is_string());
    let card = &p["cardsV2"][0];
    assert!(card["cardId"].is_string());
    assert!(card["card"]["header"]["title"].is_string());
    let mut labels = Vec::new();
    for section in card["card"]["sections"].as_array().unwrap() {
        for w in section["widgets"].as_array().unwrap() {
            let kinds = keys(w);
            assert_eq!(kinds.len(), 1, "{w}");
            assert!(
                ["textParagraph", "decoratedText", "buttonList"].contains(&kinds[0]),
                "{w}"
            );
            if let Some(label) = w["decoratedText"]["topLabel"].as_str() {
                labels.push(label.to_string());
            }
        }
    }
    assert!(labels.iter().any(|l| l.starts_with(metric)), "{labels:?}");
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// 1 and 4: a production rollback reaches a real SMTP server and every chat service in its
/// own format; a dev canary's step events reach nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_rollback_reaches_email_and_every_chat_format_and_dev_stays_quiet() {
    let (rx, base) = Receiver::start().await;
    let mut smtp = Smtp::reserve();
    smtp.start();
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keyfile.path(), format!("{HOOK_KEY}\n")).unwrap();
    let mut extra = email_notifier("ops-mail", smtp.port);
    extra += &chat_notifier("slack", "slack", &format!("{base}/slack/T0SECRET/B0SECRET"));
    extra += &chat_notifier(
        "teams",
        "teams",
        &format!("{base}/teams/workflow?sig=SIGSECRET"),
    );
    extra += &chat_notifier(
        "discord",
        "discord",
        &format!("{base}/discord/1/DISCORDSECRET"),
    );
    extra += &chat_notifier(
        "mattermost",
        "mattermost",
        &format!("{base}/mattermost/hooks/MMSECRET"),
    );
    extra += &chat_notifier(
        "gchat",
        "google_chat",
        &format!("{base}/gchat/v1/spaces/A/messages?key=k&token=GCSECRET"),
    );
    extra += &format!(
        "[notifiers.hook]\nkind = \"webhook\"\nurl = \"{base}/hook/HOOKSECRET\"\nsecret = {{ file = \"{}\" }}\n",
        keyfile.path().display()
    );
    extra += r#"
[notify]
grafana_url = "https://grafana.example/d/canaryd?var-canary={id}"

# Production: everything to email and every chat.
[[routes]]
environments = ["production"]
notifiers = ["ops-mail", "slack", "teams", "discord", "mattermost", "gchat", "hook"]

# Step events to one chat, in every environment that is not quiet (dev is, by default).
[[routes]]
events = ["step"]
notifiers = ["slack", "hook"]
"#;
    let opts = StackOptions {
        environment: "production",
        extra_config: extra,
        ..Default::default()
    };
    let stack = Stack::start(opts, FAULT).await;
    let id = submit(&stack, &stack.spec_path);
    let view = stack.canaryd.wait_finished(id, FINISH).await;
    assert_eq!(view["phase"], "rolled_back", "{view}");
    let (metric, canary, baseline) = failing_metric(&stack, id).await;

    // Email: subject names the service and the outcome; the body the metric with both values.
    let mail = smtp
        .wait_for(&format!("rolled back in production (canary {id})"))
        .await;
    assert!(
        mail.subject.starts_with("checkout rolled back"),
        "{}",
        mail.subject
    );
    let line = format!("{metric}: canary {canary} vs baseline {baseline}");
    assert!(mail.text.contains(&line), "{line:?} not in:\n{}", mail.text);
    assert!(mail.text.contains("(margin ×1.50) FAIL"), "{}", mail.text);
    assert!(
        mail.text.contains(&format!(
            "Canary: {}/api/v1/canaries/{id}",
            stack.canaryd.url
        )),
        "{}",
        mail.text
    );
    assert!(
        mail.text.contains(&format!(
            "Grafana: https://grafana.example/d/canaryd?var-canary={id}"
        )),
        "{}",
        mail.text
    );
    assert!(
        mail.html.contains("<table") && mail.html.contains(&canary),
        "{}",
        mail.html
    );
    assert!(
        mail.rcpt.contains("ops@example.com") && mail.rcpt.contains("release@example.com"),
        "{}",
        mail.rcpt
    );
    assert!(
        mail.message_id.starts_with("<canaryd."),
        "{}",
        mail.message_id
    );
    let summary = smtp
        .wait_for(&format!("deployment summary in production (canary {id})"))
        .await;
    for fact in [
        "Decision: rolled back",
        "Duration: ",
        "Steps: 20% → ",
        &format!("- {metric}: canary "),
    ] {
        assert!(
            summary.text.contains(fact),
            "{fact:?} not in:\n{}",
            summary.text
        );
    }

    // The steps it went through (how far depends on when the evidence was in), ending at 0%.
    let steps = summary
        .text
        .lines()
        .find(|l| l.starts_with("Steps: "))
        .unwrap();
    assert!(steps.ends_with(" → 0%"), "{steps}");

    // Every chat service, in its documented format.
    let rolled = "rolled back in production";
    assert_slack(&rx.wait_for("/slack/", rolled).await.json(), &metric);
    assert_teams(&rx.wait_for("/teams/", rolled).await.json(), &metric);
    assert_discord(&rx.wait_for("/discord/", rolled).await.json(), &metric);
    assert_mattermost(&rx.wait_for("/mattermost/", rolled).await.json(), &metric);
    assert_google_chat(&rx.wait_for("/gchat/", rolled).await, &metric);
    let hook = rx.wait_for("/hook/", "\"kind\":\"rolled_back\"").await;
    verify_signature(&hook);
    let doc = hook.json();
    assert_eq!(doc["version"], 1);
    assert_eq!(hook.headers["x-canaryd-event"], "rolled_back");
    assert_eq!(doc["delivery"], hook.headers["x-canaryd-delivery"].as_str());
    assert_eq!(doc["canary"]["id"], id);
    assert_eq!(doc["severity"], "critical");
    let m = &doc["metrics"][0];
    assert_eq!(m["name"], metric.as_str());
    assert!(
        m["canary"].is_f64() && m["baseline"].is_f64() && m["lower"].is_f64(),
        "{m}"
    );
    // In order: each receiver has the rollback before the summary.
    let summary_tag = format!("deployment summary in production (canary {id})");
    for path in [
        "/slack/",
        "/teams/",
        "/discord/",
        "/mattermost/",
        "/gchat/",
        "/hook/",
    ] {
        rx.wait_for(path, &summary_tag).await;
        let texts: Vec<String> = rx.requests(path).iter().map(Received::text).collect();
        let rollback = texts.iter().position(|t| t.contains(rolled)).unwrap();
        let summary = texts.iter().position(|t| t.contains(&summary_tag)).unwrap();
        assert!(rollback < summary, "{path}: summary before the rollback");
    }
    // The production step went to the step route too.
    rx.wait_for("/slack/", &format!("canary {id}: step 1 of 3"))
        .await;

    // 4: a dev canary (quiet by its profile) with step events: nothing reaches anyone.
    stack
        .v2
        .set_fault(json!({"latency_multiplier": 1.0, "error_rate": 0.002}))
        .await;
    let dev = submit(&stack, &spec_in(&stack, "dev"));
    let view = stack.canaryd.wait_finished(dev, FINISH).await;
    assert_eq!(view["phase"], "succeeded", "{view}");
    let kinds = stack.canaryd.event_kinds(dev).await;
    assert!(
        kinds.iter().filter(|k| *k == "step_started").count() >= 2,
        "{kinds:?}"
    );
    // A later production canary is the sentinel: once its notification is in, the dispatcher
    // and every lane are past the dev canary's events.
    let sentinel = submit(&stack, &stack.spec_path);
    let (status, _) = stack
        .canaryd
        .post(&format!("/api/v1/canaries/{sentinel}/abort"), "")
        .await;
    assert_eq!(status, 200);
    let tag = format!("(canary {sentinel})");
    for path in [
        "/slack/",
        "/teams/",
        "/discord/",
        "/mattermost/",
        "/gchat/",
        "/hook/",
    ] {
        rx.wait_for(path, &tag).await;
    }
    smtp.wait_for(&tag).await;
    let dev_tag = format!("(canary {dev})");
    for r in rx.all() {
        assert!(
            !r.text().contains(&dev_tag),
            "dev canary notified {}: {}",
            r.path,
            r.text()
        );
        assert_ne!(r.json()["canary"]["id"], dev, "{}", r.text());
    }
    assert!(smtp.with_subject(&dev_tag).is_empty(), "dev canary mailed");
    // Each (event, notifier) pair arrived once.
    let mut seen = BTreeMap::new();
    for r in rx.requests("/hook/") {
        *seen
            .entry(r.headers["x-canaryd-delivery"].clone())
            .or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(
        smtp.with_subject(&format!("rolled back in production (canary {id})"))
            .len(),
        1
    );
    // Secrets stay out of the log and the API.
    let log = stack.canaryd.log();
    let (_, events) = stack
        .canaryd
        .get(&format!("/api/v1/canaries/{id}/events"))
        .await;
    for secret in [
        "T0SECRET",
        "SIGSECRET",
        "DISCORDSECRET",
        "MMSECRET",
        "GCSECRET",
        "HOOKSECRET",
        HOOK_KEY,
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(!events.to_string().contains(secret), "{secret} in the API");
    }
}

/// 2: the SMTP server is down when the rollback happens, then up: the mail arrives once. Then
/// canaryd is killed with mail still queued and restarted: it arrives once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_outage_and_kill_9_deliver_each_mail_once() {
    let mut smtp = Smtp::reserve();
    let mut extra = email_notifier("ops-mail", smtp.port);
    extra += "[notify]\nmin_backoff = \"2s\"\nmax_backoff = \"2s\"\n";
    let opts = StackOptions {
        environment: "production",
        extra_config: extra,
        ..Default::default()
    };
    let mut stack = Stack::start(opts, FAULT).await;

    // The rollback happens while nothing listens on the SMTP port: its mail waits in the outbox.
    let first = submit(&stack, &stack.spec_path);
    stack.canaryd.wait_finished(first, FINISH).await;
    let db = stack.dir().join("data/canaryd.db");
    let stack_ref = &stack;
    let queued = |id: i64| {
        let db = db.clone();
        async move {
            let rows = outbox_rows(&db, id, "rolled_back");
            let retried = retries(&stack_ref.canaryd.log(), id);
            (rows == ["pending"] && retried > 0).then_some(retried)
        }
    };
    poll_until(ARRIVE, "the rollback mail queued and retried", || {
        queued(first)
    })
    .await;
    smtp.start();
    let rolled = format!("rolled back in production (canary {first})");
    smtp.wait_for(&rolled).await;
    // The summary is queued after the rollback message: once it is in, nothing else is owed.
    smtp.wait_for(&format!(
        "deployment summary in production (canary {first})"
    ))
    .await;
    assert_eq!(smtp.with_subject(&rolled).len(), 1, "{:?}", smtp.mails());
    assert_eq!(
        smtp.with_subject(&format!("submitted in production (canary {first})"))
            .len(),
        1
    );

    // Down again; a second rollback queues its mail; kill -9 while it waits for a retry, right
    // after an attempt failed (the next is at least a second away, so none is in flight).
    smtp.stop();
    let second = submit(&stack, &stack.spec_path);
    stack.canaryd.wait_finished(second, FINISH).await;
    let seen = poll_until(ARRIVE, "the second rollback mail queued", || queued(second)).await;
    poll_until(ARRIVE, "a fresh failed attempt", || async {
        (retries(&stack_ref.canaryd.log(), second) > seen).then_some(())
    })
    .await;
    stack.canaryd.kill9();
    assert_eq!(
        outbox_rows(&db, second, "rolled_back"),
        ["pending"],
        "still queued"
    );
    // The other mails retry on their own schedules: one may have been mid-attempt at the kill,
    // and a mail that may have gone out is not sent again (at most once; it becomes "unknown").
    let submitted_in_flight = outbox_rows(&db, second, "submitted") == ["sending"];
    let any_in_flight = ["submitted", "started", "summary"]
        .iter()
        .any(|kind| outbox_rows(&db, second, kind).contains(&"sending".to_string()));
    smtp.start();
    stack.canaryd.restart();
    let rolled2 = format!("rolled back in production (canary {second})");
    smtp.wait_for(&rolled2).await;
    smtp.wait_for(&format!(
        "deployment summary in production (canary {second})"
    ))
    .await;
    let mails = smtp.mails();
    let count = |needle: &str| mails.iter().filter(|m| m.subject.contains(needle)).count();
    assert_eq!(count(&rolled2), 1, "{mails:?}");
    let submitted2 = count(&format!("submitted in production (canary {second})"));
    if submitted_in_flight {
        assert!(submitted2 <= 1, "{mails:?}");
        assert_eq!(outbox_rows(&db, second, "submitted"), ["unknown"]);
    } else {
        assert_eq!(submitted2, 1, "{mails:?}");
    }
    // What was delivered before the crash is not sent again after it.
    assert_eq!(count(&rolled), 1, "{mails:?}");
    assert_eq!(
        count(&format!(
            "deployment summary in production (canary {first})"
        )),
        1
    );
    // Only a mail that was mid-attempt at the kill is given up (as "unknown").
    assert_eq!(
        stack
            .canaryd
            .event_kinds(second)
            .await
            .contains(&"notification_failed".to_string()),
        any_in_flight,
        "given up exactly when a mail was mid-attempt"
    );
    let metrics = metrics_text(&stack).await;
    assert!(
        metrics
            .contains("canaryd_notifications_total{notifier=\"ops-mail\",outcome=\"delivered\"}"),
        "{metrics}"
    );
}

/// 3: a webhook answering 500 then 200, and Discord's 429 with `retry_after`: each message is
/// delivered once, after the advised delay; a webhook that never answers is given up as
/// "unknown" (visible in the canary's events); and the canary's timeline does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_rate_limits_do_not_touch_the_canary_timeline() {
    let (rx, base) = Receiver::start().await;
    let mut extra = String::new();
    extra += &chat_notifier("flaky", "webhook", &format!("{base}/flaky/x"));
    extra += &chat_notifier(
        "discord",
        "discord",
        &format!("{base}/discord-limited/1/tok"),
    );
    extra += &chat_notifier("stuck", "webhook", &format!("{base}/hang/STUCKSECRET"));
    extra += r#"
[notify]
timeout = "2s"
min_backoff = "200ms"
max_backoff = "1s"

[[routes]]
notifiers = ["flaky", "discord", "stuck"]

[[routes]]
events = ["step"]
notifiers = ["flaky", "discord", "stuck"]
"#;
    let opts = StackOptions {
        extra_config: extra,
        ..Default::default()
    };
    let interval = 3.0;
    let stack = Stack::start(opts, &[]).await;
    let id = submit(&stack, &stack.spec_path);
    let view = stack.canaryd.wait_finished(id, FINISH).await;
    assert_eq!(view["phase"], "succeeded", "{view}");
    // The last messages are the summary; wait until both lanes delivered it.
    rx.wait_for("/flaky/", "\"kind\":\"summary\"").await;
    let discord_done = || {
        rx.requests("/discord-limited/")
            .iter()
            .filter(|r| r.text().contains("deployment summary") && r.status == 204)
            .count()
    };
    poll_until(ARRIVE, "discord's summary", || async {
        (discord_done() == 1).then_some(())
    })
    .await;

    // Webhook: every delivery exactly twice: a 500, then a 200.
    let mut by_key: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for r in rx.requests("/flaky/") {
        by_key
            .entry(r.headers["x-canaryd-delivery"].clone())
            .or_default()
            .push(r.status);
    }
    assert!(by_key.len() >= 5, "{by_key:?}");
    for (key, statuses) in &by_key {
        assert_eq!(statuses, &[500, 200], "{key}");
    }
    for kind in ["submitted", "started", "step", "promoted", "summary"] {
        assert!(
            by_key.keys().any(|k| k.contains(&format!(":{kind}:"))),
            "{kind}: {by_key:?}"
        );
    }
    // Discord: every message twice, the second no sooner than the advised delay.
    let mut by_message: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    let discord = rx.requests("/discord-limited/");
    for r in &discord {
        let p = r.json();
        by_message
            .entry(format!(
                "{}|{}",
                p["embeds"][0]["title"], p["embeds"][0]["description"]
            ))
            .or_default()
            .push(r);
    }
    let mut waits = Vec::new();
    for (message, tries) in &by_message {
        let statuses: Vec<u16> = tries.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 204], "{message}");
        let waited = tries[1].at.duration_since(tries[0].at).as_secs_f64();
        assert!(waited >= RETRY_AFTER, "{message}: retried after {waited}s");
        waits.push(waited);
    }
    // The webhook that never answers: one attempt per message, each given up as "unknown" in
    // the canary's events once its time is up, never repeated.
    rx.wait_for("/hang/", "\"kind\":\"summary\"").await;
    let canaryd = &stack.canaryd;
    let events = poll_until(ARRIVE, "every stuck delivery given up", || async {
        let events = canaryd.events(id).await;
        let unknown = events
            .iter()
            .filter(|e| e["kind"] == "notification_failed" && e["data"]["notifier"] == "stuck")
            .count();
        (unknown == rx.requests("/hang/").len()).then_some(events)
    })
    .await;
    let unknown: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "notification_failed")
        .collect();
    assert!(unknown.len() >= 5, "{events:?}");
    assert!(
        unknown
            .iter()
            .all(|e| e["data"]["outcome"] == "unknown" && e["data"]["notifier"] == "stuck"),
        "{unknown:?}"
    );
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains("STUCKSECRET")
    );
    assert!(!stack.canaryd.log().contains("STUCKSECRET"));

    // The timeline: each step's analysis came one interval (+ the 1 s query delay) after
    // its weight was confirmed, however the receivers behaved.
    let at = |e: &Value| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap();
    let mut overheads = Vec::new();
    let mut applied = None;
    for e in &events {
        match e["kind"].as_str().unwrap() {
            "weights_applied" => applied = Some(at(e)),
            "analysis" | "analysis_inconclusive" => {
                let from = applied.expect("weights before analysis");
                let took = (at(e) - from).num_milliseconds() as f64 / 1000.0;
                overheads.push(took - interval - 1.0);
                applied = Some(at(e) - chrono::Duration::seconds(1));
            }
            _ => {}
        }
    }
    assert!(overheads.len() >= 2, "{events:?}");
    let max = overheads.iter().cloned().fold(f64::MIN, f64::max);
    let mean = overheads.iter().sum::<f64>() / overheads.len() as f64;
    eprintln!(
        "MEASURED: step latency beyond interval + query delay, with a webhook that never answers, a 500-then-200 webhook and a 429ing Discord: mean {:.0} ms, max {:.0} ms over {} intervals; Discord retried after {:?} s",
        mean * 1000.0,
        max * 1000.0,
        overheads.len(),
        waits
    );
    assert!(
        max < 1.5,
        "a step took {max}s longer than planned: {overheads:?}"
    );
    let metrics = metrics_text(&stack).await;
    for series in [
        "canaryd_notifications_total{notifier=\"flaky\",outcome=\"retried\"}",
        "canaryd_notifications_total{notifier=\"stuck\",outcome=\"unknown\"}",
        "canaryd_outbox_pending",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

/// 5: a broken notifier stops `canaryd serve` at start, naming the notifier and the field.
#[test]
fn bad_notifier_config_fails_at_start_naming_notifier_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[store]\nurl = \"sqlite://data/c.db\"\n[routers.edge]\nkind = \"haproxy\"\nruntime_api = \"127.0.0.1:9999\"\n",
        free_port()
    );
    let cases = [
        (
            "kind = \"telegram\"\nurl = \"http://127.0.0.1:1/x\"",
            "notifiers.team-chat.kind",
        ),
        (
            "kind = \"slack\"\nurl = \"hooks.slack.com/services/T/B/X\"",
            "notifiers.team-chat.url",
        ),
        (
            "kind = \"email\"\nsmtp_host = \"127.0.0.1\"\nfrom = \"canaryd@example.com\"\nto = []",
            "notifiers.team-chat.to",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret = { file = \"/nonexistent/canaryd-key\" }",
            "notifiers.team-chat.secret",
        ),
        (
            "kind = \"discord\"\nurl_secret = { file = \"/nonexistent/discord-url\" }",
            "notifiers.team-chat.url_secret",
        ),
    ];
    for (notifier, key) in cases {
        let path = dir.path().join("canaryd.toml");
        std::fs::write(&path, format!("{base}[notifiers.team-chat]\n{notifier}\n")).unwrap();
        let out = Command::new(canaryd_bin())
            .current_dir(dir.path())
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{notifier}: started anyway");
        assert!(stderr.contains(key), "{key} not in: {stderr}");
    }
    // A broken route or template is caught the same way.
    let path = dir.path().join("canaryd.toml");
    std::fs::write(
        &path,
        format!(
            "{base}[notifiers.chat]\nkind = \"slack\"\nurl = \"http://127.0.0.1:1/x\"\n[[routes]]\nevents = [\"rolledback\"]\nnotifiers = [\"chat\"]\n[notify.templates.rolled_back]\nsubject = \"{{{{ servce }}}}\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(canaryd_bin())
        .current_dir(dir.path())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("routes[0].events") && stderr.contains("rolledback"),
        "{stderr}"
    );
    assert!(
        stderr.contains("notify.templates.rolled_back.subject"),
        "{stderr}"
    );
}
