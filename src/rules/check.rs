//! `canaryd rules check [PATH...]`: validate rule files and directories, all errors at once.
//!
//! Text output is one line per finding, `file:line:col: message` for errors (the format
//! editors and CI annotate) and `file:line:col: warning[code]: message` for warnings, then a
//! summary. `--format json` gives the same as one object for tools.

use super::{RuleError, RuleWarning, analyse, is_rule_file, rule_files};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One file's findings.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// The file as given or found.
    pub file: String,
    /// No errors.
    pub ok: bool,
    /// The rule set's name, when the file is valid.
    pub rule_set: Option<String>,
    /// Its version (`sha256:...` of the text), when valid.
    pub version: Option<String>,
    /// Errors.
    pub errors: Vec<RuleError>,
    /// Warnings.
    pub warnings: Vec<RuleWarning>,
}

/// The findings of one `rules check` run.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Per file, in the order checked.
    pub files: Vec<FileReport>,
    /// Errors in all files.
    pub errors: usize,
    /// Warnings in all files.
    pub warnings: usize,
    /// How long the check took.
    #[serde(skip)]
    pub elapsed: Duration,
}

impl CheckReport {
    /// Whether the check passes: no errors, and no warnings when they are denied.
    pub fn passed(&self, deny_warnings: bool) -> bool {
        self.errors == 0 && (!deny_warnings || self.warnings == 0)
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            for e in &f.errors {
                out.push_str(&format!("{e}\n"));
            }
            for w in &f.warnings {
                out.push_str(&format!("{w}\n"));
            }
        }
        let valid = self.files.iter().filter(|f| f.ok).count();
        out.push_str(&format!(
            "{} file(s) checked: {valid} valid, {} error(s), {} warning(s)\n",
            self.files.len(),
            self.errors,
            self.warnings
        ));
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a report serialises");
        v["ok"] = serde_json::Value::Bool(self.errors == 0);
        v
    }
}

/// The files a list of paths names: files as given, directories' rule files (not recursive,
/// like the daemon's loader). A path that does not exist yields itself (reported as an error).
pub fn expand(paths: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            match rule_files(p) {
                Ok(files) => out.extend(files.into_iter().map(|f| (f, None))),
                Err(e) => out.push((p.clone(), Some(format!("cannot read directory: {e}")))),
            }
        } else if p.exists() {
            out.push((p.clone(), None));
        } else {
            out.push((p.clone(), Some("no such file or directory".to_string())));
        }
    }
    out
}

/// Checks every rule file under `paths`; rule set names must be unique across them.
pub fn check_paths(paths: &[PathBuf]) -> CheckReport {
    let started = Instant::now();
    let mut files = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (path, problem) in expand(paths) {
        let shown = path.display().to_string();
        let report = match problem {
            Some(message) => failed(&shown, message),
            None => check_file(&path, &shown, &mut names),
        };
        files.push(report);
    }
    CheckReport {
        errors: files.iter().map(|f| f.errors.len()).sum(),
        warnings: files.iter().map(|f| f.warnings.len()).sum(),
        files,
        elapsed: started.elapsed(),
    }
}

fn failed(file: &str, message: String) -> FileReport {
    FileReport {
        file: file.into(),
        ok: false,
        rule_set: None,
        version: None,
        errors: vec![RuleError::file(file, message)],
        warnings: Vec::new(),
    }
}

fn check_file(path: &Path, shown: &str, names: &mut BTreeMap<String, String>) -> FileReport {
    let content = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) => return failed(shown, format!("cannot read file: {e}")),
    };
    let analysis = analyse(shown, &content);
    let mut errors = analysis.errors;
    let mut rule_set = None;
    let mut version = None;
    if let Some(set) = &analysis.set {
        match names.get(&set.name) {
            Some(first) => errors.push(RuleError {
                path: "name".into(),
                ..RuleError::file(
                    shown,
                    format!("rule set {:?} is already defined in {first}", set.name),
                )
            }),
            None => {
                names.insert(set.name.clone(), shown.to_string());
            }
        }
        rule_set = Some(set.name.clone());
        version = Some(super::RuleSource::new(&set.name, shown, content).hash);
    }
    let mut warnings = analysis.warnings;
    if !is_rule_file(path) && errors.is_empty() {
        // Named explicitly, so it was checked; the daemon would not load it from a directory.
        warnings.push(RuleWarning {
            code: "not-loaded",
            file: shown.into(),
            line: 1,
            column: 1,
            metric: None,
            path: String::new(),
            message: "valid, but the daemon only loads `*.yaml` / `*.yml` files (not `*.test.yaml`) from its rules directory".into(),
        });
    }
    FileReport {
        file: shown.into(),
        ok: errors.is_empty(),
        rule_set,
        version,
        errors,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_expanded_and_names_must_be_unique() {
        let dir = tempfile::tempdir().unwrap();
        let good = "name: a\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'sum(x{ {{selector}} })'\n    max_increase: 50%\n    critical: true\n";
        std::fs::write(dir.path().join("a.yaml"), good).unwrap();
        std::fs::write(dir.path().join("b.yaml"), good).unwrap();
        std::fs::write(dir.path().join("c.test.yaml"), "not: a rule set").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let report = check_paths(&[dir.path().to_path_buf(), dir.path().join("missing.yaml")]);
        assert_eq!(report.files.len(), 3, "{}", report.text());
        assert!(report.files[0].ok);
        assert!(
            report.files[1].errors[0]
                .message
                .contains("already defined")
        );
        assert!(report.files[2].errors[0].message.contains("no such file"));
        assert!(!report.passed(false));
        let json = report.json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["files"][0]["rule_set"], "a");
    }
}
