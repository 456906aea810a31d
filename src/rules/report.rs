//! What validation and the lints share: the [`Report`] that collects errors and warnings with
//! their places, and a validated metric with its query summaries ([`Checked`]). Its own module
//! so that `validate` and `lint` both use it without importing each other.

use super::query::QueryInfo;
use super::raw::FieldProblem;
use super::yaml::{self, Mark, Positions, Seg};
use super::{MetricRule, RuleError, RuleSet, RuleWarning};

/// Everything known about one rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// The rule set, when the file has no errors.
    pub set: Option<RuleSet>,
    /// Errors, sorted by place.
    pub errors: Vec<RuleError>,
    /// Warnings, sorted by place.
    pub warnings: Vec<RuleWarning>,
}

impl Analysis {
    /// The rule set, or the errors.
    pub fn into_result(self) -> Result<RuleSet, Vec<RuleError>> {
        match self.set {
            Some(set) if self.errors.is_empty() => Ok(set),
            _ => Err(self.errors),
        }
    }
}

/// Collects errors and warnings with their places.
pub(crate) struct Report<'a> {
    file: &'a str,
    pub positions: Positions,
    pub errors: Vec<RuleError>,
    warnings: Vec<RuleWarning>,
}

impl<'a> Report<'a> {
    /// An empty report for `file`.
    pub fn new(file: &'a str) -> Self {
        Report {
            file,
            positions: Positions::default(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, at: Mark, path: &[Seg], metric: Option<&str>, message: String) {
        self.errors.push(RuleError {
            file: self.file.into(),
            line: at.line,
            column: at.column,
            metric: metric.map(str::to_string),
            path: yaml::path_text(path),
            message,
        });
    }

    pub fn warn(
        &mut self,
        code: &'static str,
        at: Mark,
        path: &[Seg],
        metric: Option<&str>,
        message: String,
    ) {
        self.warnings.push(RuleWarning {
            code,
            file: self.file.into(),
            line: at.line,
            column: at.column,
            metric: metric.map(str::to_string),
            path: yaml::path_text(path),
            message,
        });
    }

    /// A field that failed to decode, below `prefix`.
    pub fn problem(&mut self, prefix: &[Seg], p: FieldProblem, metric: Option<&str>) {
        let mut path = prefix.to_vec();
        path.extend(p.path);
        let at = if p.at_key {
            self.positions.key(&path)
        } else {
            self.positions.value(&path)
        };
        let message = match path.last() {
            Some(Seg::Key(k)) if !p.at_key => format!("{k}: {}", p.message),
            _ => p.message,
        };
        self.error(at, &path, metric, message);
    }

    /// Sorts the findings; the rule set only when there is no error.
    pub fn finish(mut self, set: Option<RuleSet>) -> Analysis {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.warnings.sort_by_key(|w| (w.line, w.column));
        Analysis {
            set: if self.errors.is_empty() { set } else { None },
            errors: self.errors,
            warnings: self.warnings,
        }
    }
}

/// A validated metric with the summaries of its queries, for the lints.
pub(crate) struct Checked {
    pub index: usize,
    pub rule: MetricRule,
    pub queries: Vec<(&'static str, QueryInfo)>,
}
