//! PromQL templates and label selectors.
//!
//! A template is PromQL with `{{selector}}` and `{{window}}` placeholders (spaces inside the
//! braces allowed). `{{selector}}` expands to an arm's label matchers *without* braces, so a
//! template can add its own matchers: `http_requests_total{ {{selector}}, code=~"5.." }`.
//! Label values are data, never PromQL: [`Selector`] validates names and escapes values, so a
//! value such as `v2"} or vector(1) #` stays inside its string literal.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The variables a template may use.
pub const VARIABLES: [&str; 2] = ["selector", "window"];

/// A PromQL template from a rule file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
#[schemars(
    description = "PromQL with {{selector}} (the arm's label matchers, placed inside a selector's braces) and {{window}} (the analysis window, e.g. 60s)."
)]
pub struct Template(pub String);

/// One piece of a parsed template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    /// A placeholder's name and the byte offset of its `{{`.
    Var(&'a str, usize),
}

/// An error in a template's placeholders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("unclosed `{{{{` in template: expected `}}}}` before the next `{{{{` or the end")]
    Unclosed,
    /// A placeholder that is not one of [`VARIABLES`].
    #[error("unknown template variable {0:?} (known: selector, window)")]
    UnknownVariable(String),
    /// The template never uses `{{selector}}`, so both arms would run the same query.
    #[error("template does not use {{{{selector}}}}: canary and baseline would run the same query")]
    MissingSelector,
}

impl Template {
    /// Splits the text into text and placeholders; an unclosed `{{` fails with its byte offset.
    fn pieces(&self) -> Result<Vec<Piece<'_>>, (usize, TemplateError)> {
        let mut pieces = Vec::new();
        let mut rest = self.0.as_str();
        let mut consumed = 0;
        while let Some(open) = rest.find("{{") {
            // `{{{selector}}}`: the first brace is PromQL's, the placeholder starts one later.
            let mut start = open;
            while rest[start + 2..].starts_with('{') {
                start += 1;
            }
            pieces.push(Piece::Text(&rest[..start]));
            let after = &rest[start + 2..];
            let close = after
                .find("}}")
                .filter(|close| !after[..*close].contains("{{"))
                .ok_or((consumed + start, TemplateError::Unclosed))?;
            pieces.push(Piece::Var(after[..close].trim(), consumed + start));
            let used = start + 2 + close + 2;
            consumed += used;
            rest = &rest[used..];
        }
        pieces.push(Piece::Text(rest));
        Ok(pieces)
    }

    /// Checks the placeholders: all known, `{{selector}}` present.
    pub fn check(&self) -> Result<(), TemplateError> {
        self.check_at().map_err(|(_, e)| e)
    }

    /// Like [`Template::check`], with the character offset of the problem in the template.
    pub fn check_at(&self) -> Result<(), (usize, TemplateError)> {
        let chars = |byte: usize| self.0[..byte].chars().count();
        let pieces = self.pieces().map_err(|(at, e)| (chars(at), e))?;
        let mut has_selector = false;
        for piece in &pieces {
            if let Piece::Var(name, at) = piece {
                if !VARIABLES.contains(name) {
                    return Err((chars(*at), TemplateError::UnknownVariable(name.to_string())));
                }
                has_selector |= *name == "selector";
            }
        }
        if has_selector {
            Ok(())
        } else {
            Err((0, TemplateError::MissingSelector))
        }
    }

    /// How many times the template uses a variable.
    pub fn uses(&self, variable: &str) -> usize {
        self.offsets(variable).len()
    }

    /// The byte offsets of the `{{` of each use of a variable.
    pub fn offsets(&self, variable: &str) -> Vec<usize> {
        self.pieces()
            .map(|p| {
                p.iter()
                    .filter_map(|p| match p {
                        Piece::Var(n, at) if *n == variable => Some(*at),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Renders the template for one arm.
    pub fn render(&self, selector: &Selector, window: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.0.len() + 64);
        for piece in self.pieces().map_err(|(_, e)| e)? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var("selector", _) => out.push_str(&selector.render()),
                Piece::Var("window", _) => out.push_str(window),
                Piece::Var(other, _) => return Err(TemplateError::UnknownVariable(other.into())),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validated label matchers for one arm (`service="checkout",version="v2"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector(BTreeMap<String, String>);

/// A label name that Prometheus would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
pub struct LabelNameError(pub String);

/// Whether `name` is a valid Prometheus label name.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Selector {
    /// Builds a selector from label pairs; later pairs win over earlier ones with the same name.
    pub fn new<'a>(
        pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, LabelNameError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if !is_label_name(k) {
                return Err(LabelNameError(k.clone()));
            }
            map.insert(k.clone(), v.clone());
        }
        Ok(Selector(map))
    }

    /// The matchers without braces, values escaped as PromQL double-quoted strings.
    pub fn render(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The label pairs.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// Escapes a label value for a PromQL double-quoted string literal.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Parses rendered PromQL; the message is the parser's.
pub fn parse_promql(query: &str) -> Result<promql_parser::parser::Expr, String> {
    promql_parser::parser::parse(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(pairs: &[(&str, &str)]) -> Selector {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Selector::new(owned.iter().map(|(k, v)| (k, v))).unwrap()
    }

    #[test]
    fn renders_selector_and_window() {
        let t = Template(
            r#"sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{ window }}]))"#
                .into(),
        );
        let q = t
            .render(
                &selector(&[("service", "checkout"), ("version", "v2")]),
                "60s",
            )
            .unwrap();
        assert_eq!(
            q,
            r#"sum(increase(http_requests_total{ service="checkout",version="v2", code=~"5.." }[60s]))"#
        );
        assert!(parse_promql(&q).is_ok());
    }

    #[test]
    fn triple_braces_keep_promql_brace() {
        let t = Template("up{{{selector}}}".into());
        assert_eq!(
            t.render(&selector(&[("a", "b")]), "1m").unwrap(),
            "up{a=\"b\"}"
        );
    }

    #[test]
    fn injection_stays_inside_the_string() {
        let t = Template("sum(up{ {{selector}} })".into());
        let q = t
            .render(&selector(&[("version", "v2\"} or vector(1) #")]), "1m")
            .unwrap();
        assert_eq!(q, r#"sum(up{ version="v2\"} or vector(1) #" })"#);
        let expr = parse_promql(&q).expect("escaped query parses");
        // One aggregation over one selector: the value did not add an `or`.
        assert!(matches!(expr, promql_parser::parser::Expr::Aggregate(_)));
    }

    #[test]
    fn checks_placeholders() {
        assert_eq!(
            Template("up".into()).check(),
            Err(TemplateError::MissingSelector)
        );
        assert_eq!(
            Template("up{ {{selecter}} }".into()).check(),
            Err(TemplateError::UnknownVariable("selecter".into()))
        );
        assert_eq!(
            Template("up{ {{selector".into()).check(),
            Err(TemplateError::Unclosed)
        );
        assert!(Template("up{ {{ selector }} }".into()).check().is_ok());
        assert_eq!(
            Template("é{ {{selector}} }[{{windw}}]".into()).check_at(),
            Err((18, TemplateError::UnknownVariable("windw".into())))
        );
        assert_eq!(
            Template("x{ {{selector".into()).check_at(),
            Err((3, TemplateError::Unclosed))
        );
        assert_eq!(
            Template("a{ {{selector}}, {{ selector }} }".into()).uses("selector"),
            2
        );
    }

    #[test]
    fn label_names_are_validated() {
        assert!(is_label_name("version"));
        assert!(is_label_name("_x9"));
        assert!(!is_label_name("9x"));
        assert!(!is_label_name("a-b"));
        assert!(!is_label_name(""));
        let bad = [("a}".to_string(), "x".to_string())];
        assert!(Selector::new(bad.iter().map(|(k, v)| (k, v))).is_err());
    }
}
