//! Message text: good defaults, and per-kind overrides of the subject and the text written as
//! minijinja templates (`[notify.templates.rolled_back] subject = "..."`).
//!
//! Templates are compiled *and* rendered against a sample notification at config load, with
//! undefined variables as errors, so a typo fails the start, not a 3 a.m. rollback. Should a
//! template still fail at delivery, the default text is sent and a warning logged.
//!
//! Variables: `kind`, `severity`, `service`, `environment`, `canary_id`, `url`, `event_id`,
//! `at`, `metric` (warnings; else none), `headline`, `details` (list of strings), `facts`
//! (list of `{name, value}`), `metrics` (list of `{name, status, unit, canary, baseline,
//! estimate, lower, upper, margin, values, effect, reason, failing}`), `links` (list of
//! `{name, url}`), `metadata` (the spec's), and the defaults `subject`, `text`, `summary`.

use super::message::{Notification, NotificationKind, truncate};
use crate::problem::Problem;
use minijinja::{Environment, UndefinedBehavior, value::Serde};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// `[notify.templates.KIND]`: overrides for one notification kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateOverride {
    /// Email subject and chat title.
    pub subject: Option<String>,
    /// Email text body and chat text.
    pub text: Option<String>,
}

impl TemplateOverride {
    /// Compiles and trial-renders each template: every problem, each naming its field.
    pub fn check(&self) -> Vec<Problem> {
        let mut errors = Vec::new();
        let sample = sample_context();
        for (field, source) in [("subject", &self.subject), ("text", &self.text)] {
            let Some(source) = source else { continue };
            let env = environment();
            let result = env
                .template_from_str(source)
                .and_then(|t| t.render(Serde(&sample)));
            if let Err(e) = result {
                errors.push(Problem::new(field, describe(&e)));
            }
        }
        errors
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // `{% for %}` lines do not leave blank lines behind; a final newline is kept as written.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .trim_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// A notification's text, ready for a notifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Email subject, chat title (one line).
    pub subject: String,
    /// Plain-text body (email).
    pub text: String,
    /// Short text under a chat title.
    pub summary: String,
    /// HTML body (email).
    pub html: String,
}

/// The message templates: defaults plus the configured overrides.
pub struct Templates {
    env: Environment<'static>,
    overridden: BTreeSet<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("overridden", &self.overridden)
            .finish()
    }
}

impl Templates {
    /// Compiles the overrides (checked by [`TemplateOverride::check`] at config load).
    pub fn new(overrides: &BTreeMap<String, TemplateOverride>) -> Result<Templates, Problem> {
        let mut env = environment();
        let mut overridden = BTreeSet::new();
        for (kind, t) in overrides {
            for (field, source) in [("subject", &t.subject), ("text", &t.text)] {
                if let Some(source) = source {
                    let name = format!("{kind}.{field}");
                    env.add_template_owned(name.clone(), source.clone())
                        .map_err(|e| Problem::new(format!("templates.{name}"), describe(&e)))?;
                    overridden.insert(name);
                }
            }
        }
        Ok(Templates { env, overridden })
    }

    /// Renders a notification: overrides where configured, defaults elsewhere.
    pub fn render(&self, n: &Notification) -> Rendered {
        let subject = n.subject();
        let text = n.text();
        let summary = n.summary();
        let ctx = context(n, &subject, &text, &summary);
        let custom = |field: &str| -> Option<String> {
            let name = format!("{}.{field}", n.kind);
            if !self.overridden.contains(&name) {
                return None;
            }
            match self
                .env
                .get_template(&name)
                .and_then(|t| t.render(Serde(&ctx)))
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(template = %name, error = %describe(&e), "Template failed; sending the default text");
                    None
                }
            }
        };
        let custom_subject = custom("subject");
        let custom_text = custom("text");
        let subject = custom_subject
            .map(|s| s.lines().next().unwrap_or_default().trim().to_string())
            .unwrap_or(subject);
        match custom_text {
            Some(t) => Rendered {
                html: format!(
                    "<html><body><pre style=\"font-family:sans-serif;white-space:pre-wrap\">{}</pre></body></html>",
                    escape_html(&t)
                ),
                summary: t.clone(),
                text: t,
                subject: truncate(&subject, 250),
            },
            None => Rendered {
                html: default_html(n, &subject),
                subject: truncate(&subject, 250),
                text,
                summary,
            },
        }
    }
}

#[derive(Serialize)]
struct Context<'a> {
    kind: &'a str,
    severity: &'a str,
    service: &'a str,
    environment: &'a str,
    canary_id: i64,
    url: &'a str,
    event_id: i64,
    at: String,
    metric: &'a Option<String>,
    headline: &'a str,
    details: &'a [String],
    facts: &'a [super::message::Fact],
    metrics: &'a [super::message::MetricLine],
    links: &'a [super::message::Link],
    metadata: &'a BTreeMap<String, serde_json::Value>,
    subject: &'a str,
    text: &'a str,
    summary: &'a str,
}

fn context<'a>(
    n: &'a Notification,
    subject: &'a str,
    text: &'a str,
    summary: &'a str,
) -> Context<'a> {
    Context {
        kind: n.kind.as_str(),
        severity: n.severity.as_str(),
        service: &n.canary.service,
        environment: &n.canary.environment,
        canary_id: n.canary.id,
        url: &n.canary.url,
        event_id: n.event_id,
        at: n.at.to_rfc3339(),
        metric: &n.metric,
        headline: &n.headline,
        details: &n.details,
        facts: &n.facts,
        metrics: &n.metrics,
        links: &n.links,
        metadata: &n.metadata,
        subject,
        text,
        summary,
    }
}

/// The context templates are checked against at config load.
fn sample_context() -> serde_json::Value {
    let n = sample();
    let (subject, text, summary) = (n.subject(), n.text(), n.summary());
    serde_json::to_value(context(&n, &subject, &text, &summary)).expect("context serialises")
}

/// A rolled-back canary with one failing metric (for template checks and tests).
pub fn sample() -> Notification {
    use super::message::{CanaryRef, Fact, Link, MetricLine, Severity};
    Notification {
        kind: NotificationKind::RolledBack,
        severity: Severity::Critical,
        canary: CanaryRef {
            id: 7,
            service: "checkout".into(),
            environment: "production".into(),
            url: "http://127.0.0.1:8080/api/v1/canaries/7".into(),
        },
        event_id: 42,
        at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        metric: Some("error-rate".into()),
        headline: "checkout rolled back in production: error-rate worse on the canary than on the baseline".into(),
        details: vec!["error-rate: canary 12.0% vs baseline 0.500% bad".into()],
        facts: vec![Fact {
            name: "Reached".into(),
            value: "step 1 of 3 (canary 20%)".into(),
        }],
        metrics: vec![MetricLine {
            name: "error-rate".into(),
            status: "FAIL".into(),
            unit: "error ratio".into(),
            canary: Some(0.12),
            baseline: Some(0.005),
            estimate: Some(24.0),
            lower: Some(6.1),
            upper: None,
            margin: Some(1.5),
            reason: "error-rate: canary 12.0% vs baseline 0.500% bad".into(),
            values: "canary 12.0% vs baseline 0.500%".into(),
            effect: "×24.0 [×6.10, ∞] (margin ×1.50)".into(),
            failing: true,
        }],
        links: vec![Link {
            name: "Canary".into(),
            url: "http://127.0.0.1:8080/api/v1/canaries/7".into(),
        }],
        metadata: BTreeMap::from([("commit".into(), serde_json::json!("3f2a9c1"))]),
    }
}

/// Escapes text for HTML.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn default_html(n: &Notification, subject: &str) -> String {
    use super::message::Severity;
    let color = match n.severity {
        Severity::Critical => "#b42318",
        Severity::Warning => "#b54708",
        Severity::Info => "#027a48",
    };
    let e = escape_html;
    let mut h = format!(
        "<html><body style=\"font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1d2939\">\n<h2 style=\"color:{color};margin-bottom:4px\">{}</h2>\n<p>{}</p>\n",
        e(subject),
        e(&n.headline)
    );
    if !n.details.is_empty() {
        h.push_str("<ul>\n");
        for d in &n.details {
            h.push_str(&format!("<li>{}</li>\n", e(d)));
        }
        h.push_str("</ul>\n");
    }
    let cell = "style=\"border:1px solid #d0d5dd;padding:4px 8px;text-align:left\"";
    if !n.metrics.is_empty() {
        h.push_str(&format!(
            "<table style=\"border-collapse:collapse\">\n<tr><th {cell}>Metric</th><th {cell}>Canary</th><th {cell}>Baseline</th><th {cell}>Effect [interval]</th><th {cell}>Status</th></tr>\n"
        ));
        for m in &n.metrics {
            let style = if m.failing {
                " style=\"color:#b42318;font-weight:bold\""
            } else {
                ""
            };
            h.push_str(&format!(
                "<tr><td {cell}>{}</td><td {cell}>{}</td><td {cell}>{}</td><td {cell}>{}</td><td {cell}><span{style}>{}</span></td></tr>\n",
                e(&m.name),
                e(&super::message::value(&m.unit, m.canary)),
                e(&super::message::value(&m.unit, m.baseline)),
                e(&m.effect),
                e(&m.status)
            ));
        }
        h.push_str("</table>\n");
    }
    if !n.facts.is_empty() {
        h.push_str("<p>");
        for f in &n.facts {
            h.push_str(&format!("<b>{}</b>: {}<br>\n", e(&f.name), e(&f.value)));
        }
        h.push_str("</p>\n");
    }
    if !n.links.is_empty() {
        let links: Vec<String> = n
            .links
            .iter()
            .map(|l| format!("<a href=\"{}\">{}</a>", e(&l.url), e(&l.name)))
            .collect();
        h.push_str(&format!("<p>{}</p>\n", links.join(" · ")));
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(subject: Option<&str>, text: Option<&str>) -> TemplateOverride {
        TemplateOverride {
            subject: subject.map(str::to_string),
            text: text.map(str::to_string),
        }
    }

    #[test]
    fn broken_templates_are_found_at_load() {
        assert!(
            over(
                Some("{{ service }} {{ kind }}"),
                Some("{% for m in metrics %}{{ m.name }} {{ m.values }}\n{% endfor %}")
            )
            .check()
            .is_empty()
        );
        // The README's example.
        let readme = over(
            Some(
                "ROLLBACK {{ service }} in {{ environment }}: {{ metrics | map(attribute='name') | join(', ') }}",
            ),
            Some(
                "\n{{ headline }}\n{% for m in metrics if m.failing %}\n* {{ m.name }}: {{ m.values }}, effect {{ m.effect }}\n{% endfor %}\n{{ url }}\n",
            ),
        );
        assert!(readme.check().is_empty(), "{:?}", readme.check());
        let t = Templates::new(&BTreeMap::from([("rolled_back".to_string(), readme)])).unwrap();
        let r = t.render(&sample());
        assert_eq!(r.subject, "ROLLBACK checkout in production: error-rate");
        assert!(
            r.text
                .contains("* error-rate: canary 12.0% vs baseline 0.500%, effect ×24.0"),
            "{}",
            r.text
        );
        let errors = over(Some("{{ service "), Some("{{ servce }}")).check();
        let fields: Vec<&str> = errors.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["subject", "text"]);
        assert!(errors[1].message.contains("undefined"), "{errors:?}");
    }

    #[test]
    fn overrides_apply_to_their_kind_and_defaults_elsewhere() {
        let overrides = BTreeMap::from([(
            "rolled_back".to_string(),
            over(
                Some("ROLLBACK {{ service }}/{{ environment }}\nsecond line"),
                Some(
                    "{{ headline }}\n{% for m in metrics if m.failing %}* {{ m.name }}: {{ m.values }}\n{% endfor %}",
                ),
            ),
        )]);
        let t = Templates::new(&overrides).unwrap();
        let n = sample();
        let r = t.render(&n);
        assert_eq!(r.subject, "ROLLBACK checkout/production");
        assert!(
            r.text
                .ends_with("* error-rate: canary 12.0% vs baseline 0.500%\n"),
            "{}",
            r.text
        );
        assert_eq!(r.summary, r.text);
        assert!(r.html.contains("&lt;") || !r.text.contains('<'));
        let mut other = sample();
        other.kind = NotificationKind::Summary;
        let r = t.render(&other);
        assert_eq!(r.subject, other.subject());
        assert!(r.html.contains("<table"), "{}", r.html);
        assert!(r.html.contains("×24.0 [×6.10, ∞] (margin ×1.50)"));
    }

    #[test]
    fn html_is_escaped() {
        let mut n = sample();
        n.headline = "<script>alert(1)</script> & co".into();
        let r = Templates::new(&BTreeMap::new()).unwrap().render(&n);
        assert!(
            r.html
                .contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co")
        );
        assert!(!r.html.contains("<script>"));
    }
}
