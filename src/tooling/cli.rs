//! The `canaryd rules ...` and `canaryd backtest` subcommands: their arguments (clap) and what
//! they print. `main.rs` only routes to these (and resolves the configured rules directory);
//! the work is in [`super::check`], [`super::unit_test`], [`crate::rules::schema`], the importers
//! ([`crate::rules::kayenta`], [`crate::rules::argo`], [`crate::rules::flagger`]) and [`crate::backtest`].
//!
//! Exit codes: 0 success (valid, all tests pass, backtest ran), 1 findings (errors, failed
//! tests, no tests found) or a failure to run, 2 bad arguments.

use super::rule_tests as unit_test;
use crate::backtest::{self, BacktestOptions};
use crate::metrics::{ArmSelectors, PrometheusAuth, PrometheusSource};
use crate::rules::check::check_paths;
use crate::rules::import::{self, ImportError, Judging, Options, Vars};
use crate::rules::{RuleSource, Selector, analyse};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a `rules` or `backtest` subcommand could not run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why (in the message, not a cause: printed once).
        error: std::io::Error,
    },
    /// The output could not be written.
    #[error("writing {path}: {error}")]
    Write {
        /// The file.
        path: String,
        /// Why (in the message, not a cause: printed once).
        error: std::io::Error,
    },
    /// An import failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A flag's value is unusable.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag.
        flag: String,
        /// What is wrong.
        message: String,
    },
    /// `rules test` found no test file.
    #[error(
        "no rule tests (*.test.yaml) found in {0}: a test run that tests nothing does not pass"
    )]
    NoTests(String),
    /// The backtest could not run.
    #[error("{0}")]
    Backtest(String),
}

fn flag(flag: &str, message: impl std::fmt::Display) -> CliError {
    CliError::Flag {
        flag: flag.into(),
        message: message.to_string(),
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON document, for editors and CI.
    Json,
}

/// Which judge a Kayenta import targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportJudge {
    /// Kayenta-compatible Mann–Whitney (keeps Kayenta's semantics).
    MannWhitney,
    /// canaryd's default anytime-valid sequential tests.
    Sequential,
}

/// Which judge an Argo Rollouts or Flagger import targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpgradeJudge {
    /// Recognised ratios and quantiles judged against the baseline (anytime-valid sequential
    /// tests); falls back to thresholds when a metric is not recognised.
    Sequential,
    /// The old absolute bounds on the canary alone.
    Threshold,
}

/// Flags every importer takes.
#[derive(clap::Args, Debug)]
pub struct ImportFlags {
    /// Write the rule file here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// A variable that stands for a fixed text, the same for both arms: `NAME=TEXT`.
    #[arg(long = "value", value_name = "NAME=TEXT")]
    values: Vec<String>,
}

/// `canaryd rules ...`.
#[derive(clap::Subcommand, Debug)]
pub enum RulesCommand {
    /// Validate rule files or directories (default: the configured rules directory): every
    /// error as `file:line:col: message`; exit 0 when valid, 1 otherwise.
    Check {
        /// Files or directories.
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// Daemon config whose `rules.dir` is the default path.
        #[arg(long, default_value = "canaryd.toml")]
        config: PathBuf,
    },
    /// Run rule unit tests (`*.test.yaml`; directories are searched for them at any depth).
    /// Finding none is a failure.
    Test {
        /// Test files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the JSON Schema of rule files (for editor completion).
    Schema,
    /// Convert a Kayenta canary config (JSON) into a rule file, saying what was converted
    /// and what could not be carried over.
    ImportKayenta {
        /// The Kayenta canary config.
        config: PathBuf,
        /// The judge of the new rule set.
        #[arg(long, value_enum, default_value = "mann-whitney")]
        judge: ImportJudge,
        /// A template variable that selects the arm like `${scope}`: `NAME=LABEL` (the arms
        /// carry `LABEL`).
        #[arg(long = "var", value_name = "NAME=LABEL")]
        vars: Vec<String>,
        #[command(flatten)]
        flags: ImportFlags,
    },
    /// Convert Argo Rollouts AnalysisTemplates / ClusterAnalysisTemplates (YAML, several
    /// documents allowed) into one rule file.
    ImportArgo {
        /// The YAML file.
        file: PathBuf,
        /// The judge of the new rule set.
        #[arg(long, value_enum, default_value = "sequential")]
        judge: UpgradeJudge,
        /// A template argument that selects the workload: `NAME=LABEL` (its matchers become
        /// `{{selector}}`; the arms carry `LABEL`).
        #[arg(long = "arg", value_name = "NAME=LABEL")]
        args: Vec<String>,
        /// The relative margin of metrics upgraded to a baseline comparison (`50%`, `0.5`).
        #[arg(long, default_value = "50%")]
        margin: String,
        #[command(flatten)]
        flags: ImportFlags,
    },
    /// Convert Flagger MetricTemplates and the Canary that references them (YAML files) into
    /// one rule file.
    ImportFlagger {
        /// The YAML files (MetricTemplates and Canaries; several documents allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The judge of the new rule set.
        #[arg(long, value_enum, default_value = "sequential")]
        judge: UpgradeJudge,
        /// The relative margin of metrics upgraded to a baseline comparison (`50%`, `0.5`).
        #[arg(long, default_value = "50%")]
        margin: String,
        #[command(flatten)]
        flags: ImportFlags,
    },
}

impl RulesCommand {
    /// The daemon config a subcommand reads its defaults from, if any.
    pub fn config_path(&self) -> Option<&Path> {
        match self {
            RulesCommand::Check { config, .. } => Some(config),
            _ => None,
        }
    }
}

/// `canaryd backtest`.
#[derive(clap::Args, Debug)]
pub struct BacktestArgs {
    /// The rule file.
    #[arg(long)]
    rules: PathBuf,
    /// Prometheus' URL.
    #[arg(long, env = "CANARYD_PROMETHEUS__URL")]
    prometheus: String,
    /// Label matchers common to both arms: `k=v,k2=v2`.
    #[arg(long, default_value = "")]
    labels: String,
    /// The canary's own matchers.
    #[arg(long)]
    canary_labels: String,
    /// The baseline's own matchers.
    #[arg(long)]
    baseline_labels: String,
    /// Start of the window: RFC 3339 or Unix seconds.
    #[arg(long)]
    start: String,
    /// End of the window.
    #[arg(long)]
    end: String,
    /// The analysis interval (and query window): `60s`, `1m`.
    #[arg(long, default_value = "1m")]
    interval: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Consecutive inconclusive intervals before the fail-safe ends the replay.
    #[arg(long, default_value_t = backtest::DEFAULT_FAILURE_LIMIT)]
    failure_limit: u32,
    /// Keep judging after the decision (shown, not acted on).
    #[arg(long)]
    full: bool,
    /// Time limit per query.
    #[arg(long, default_value = "60s")]
    timeout: String,
}

/// Runs a `rules` subcommand; returns the exit code. `rules_dir` is the configured rules
/// directory (`rules` when there is none), the default of `rules check`.
pub fn rules(command: RulesCommand, rules_dir: Option<PathBuf>) -> Result<u8, CliError> {
    match command {
        RulesCommand::Check {
            paths,
            format,
            deny_warnings,
            config: _,
        } => {
            let paths = if paths.is_empty() {
                vec![rules_dir.unwrap_or_else(|| PathBuf::from("rules"))]
            } else {
                paths
            };
            let report = check_paths(&paths);
            match format {
                Format::Text => out(&report.text()),
                Format::Json => out(&format!("{}\n", pretty(&report.json()))),
            }
            Ok(if report.passed(deny_warnings) { 0 } else { 1 })
        }
        RulesCommand::Test { files, format } => test(&files, format),
        RulesCommand::Schema => {
            out(&format!(
                "{}\n",
                pretty(&crate::rules::schema::rule_set_schema())
            ));
            Ok(0)
        }
        RulesCommand::ImportKayenta {
            config,
            judge,
            vars,
            flags,
        } => {
            let judging = match judge {
                ImportJudge::MannWhitney => Judging::MannWhitney,
                ImportJudge::Sequential => Judging::Sequential,
            };
            let opts = options(judging, "var", &vars, None, &flags)?;
            let text = read(&config)?;
            let shown = config.display().to_string();
            let import = crate::rules::kayenta::import(&text, &shown, &opts)?;
            finish(&import, &flags, "Kayenta")
        }
        RulesCommand::ImportArgo {
            file,
            judge,
            args,
            margin,
            flags,
        } => {
            let opts = options(upgrade(judge), "arg", &args, Some(&margin), &flags)?;
            let text = read(&file)?;
            let import = crate::rules::argo::import(&text, &file.display().to_string(), &opts)?;
            finish(&import, &flags, "Argo Rollouts")
        }
        RulesCommand::ImportFlagger {
            files,
            judge,
            margin,
            flags,
        } => {
            let opts = options(upgrade(judge), "value", &[], Some(&margin), &flags)?;
            let mut inputs = Vec::new();
            for f in &files {
                inputs.push((f.display().to_string(), read(f)?));
            }
            let import = crate::rules::flagger::import(&inputs, &opts)?;
            finish(&import, &flags, "Flagger")
        }
    }
}

fn test(files: &[PathBuf], format: Format) -> Result<u8, CliError> {
    if unit_test::find_tests(files).is_empty() {
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(CliError::NoTests(shown.join(", ")));
    }
    let results = unit_test::run_paths(files);
    match format {
        Format::Text => out(&unit_test::report_text(&results)),
        Format::Json => out(&format!("{}\n", pretty(&unit_test::report_json(&results)))),
    }
    Ok(if results.iter().all(unit_test::FileResult::passed) {
        0
    } else {
        1
    })
}

fn upgrade(judge: UpgradeJudge) -> Judging {
    match judge {
        UpgradeJudge::Sequential => Judging::Sequential,
        UpgradeJudge::Threshold => Judging::Threshold,
    }
}

fn options(
    judging: Judging,
    arm_flag: &'static str,
    arms: &[String],
    margin: Option<&str>,
    flags: &ImportFlags,
) -> Result<Options, CliError> {
    let margin = match margin {
        None => import::DEFAULT_MARGIN,
        Some(text) => {
            let m = crate::rules::parse_percent(text).map_err(|e| flag("margin", e))?;
            if !(m > 0.0 && m.is_finite()) {
                return Err(flag("margin", format!("must be above 0, got {text}")));
            }
            m
        }
    };
    Ok(Options {
        judging,
        margin,
        vars: Vars::from_flags(arm_flag, arms, &flags.values)?,
    })
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|error| CliError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// Writes the rule file and says on standard error what was converted and what was left out.
fn finish(import: &import::Import, flags: &ImportFlags, tool: &str) -> Result<u8, CliError> {
    match &flags.output {
        Some(path) => std::fs::write(path, &import.yaml).map_err(|error| CliError::Write {
            path: path.display().to_string(),
            error,
        })?,
        None => out(&import.yaml),
    }
    eprintln!(
        "imported rule set {}: {} metric(s), {} {tool} metric(s) left out{}",
        import.name,
        import.metrics,
        import.skipped,
        flags
            .output
            .as_ref()
            .map(|p| format!(", written to {}", p.display()))
            .unwrap_or_default()
    );
    eprintln!("converted:");
    for c in &import.converted {
        eprintln!("  - {c}");
    }
    if !import.notes.is_empty() {
        eprintln!("not carried over:");
        for n in &import.notes {
            eprintln!("  - {n}");
        }
    }
    Ok(0)
}

/// Writes to standard output; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `k=v,k2=v2` → labels.
pub fn parse_labels(name: &str, text: &str) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| flag(name, format!("expected k=v, got {pair:?}")))?;
        let k = k.trim();
        if !crate::rules::template::is_label_name(k) {
            return Err(flag(
                name,
                format!("invalid label name {k:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"),
            ));
        }
        out.insert(k.to_string(), v.trim().trim_matches('"').to_string());
    }
    Ok(out)
}

/// Runs `canaryd backtest`; returns the exit code.
pub async fn backtest(args: BacktestArgs) -> Result<u8, CliError> {
    let content = read(&args.rules)?;
    let shown = args.rules.display().to_string();
    let analysis = analyse(&shown, &content);
    let rules = match analysis.into_result() {
        Ok(r) => r,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return Ok(1);
        }
    };
    let source_text = RuleSource::new(&rules.name, &shown, content);
    let common = parse_labels("labels", &args.labels)?;
    let arm = |name: &str, own: &str| -> Result<Selector, CliError> {
        let mut labels = common.clone();
        labels.extend(parse_labels(name, own)?);
        if labels.is_empty() {
            return Err(flag(name, "the arm needs at least one label"));
        }
        Selector::new(&labels).map_err(|e| flag(name, e))
    };
    let selectors = ArmSelectors {
        canary: arm("canary-labels", &args.canary_labels)?,
        baseline: arm("baseline-labels", &args.baseline_labels)?,
    };
    if selectors.canary == selectors.baseline {
        return Err(flag(
            "canary-labels",
            "it selects the same series as --baseline-labels",
        ));
    }
    let start = crate::time::parse_timestamp(&args.start).map_err(|e| flag("start", e))?;
    let end = crate::time::parse_timestamp(&args.end).map_err(|e| flag("end", e))?;
    let interval = crate::time::parse_duration(&args.interval).map_err(|e| flag("interval", e))?;
    let timeout: Duration =
        crate::time::parse_duration(&args.timeout).map_err(|e| flag("timeout", e))?;
    let source = PrometheusSource::new(&args.prometheus, &PrometheusAuth::None, timeout)
        .map_err(|e| flag("prometheus", e))?;
    let result = backtest::run(
        &source,
        &BacktestOptions {
            rules: (&source_text, &rules),
            selectors,
            start,
            end,
            interval,
            failure_limit: args.failure_limit,
            full: args.full,
        },
    )
    .await
    .map_err(|e| CliError::Backtest(e.to_string()))?;
    match args.format {
        Format::Text => out(&result.text()),
        Format::Json => out(&format!("{}\n", pretty(&result.json()))),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_validate() {
        let l = parse_labels("labels", "service=checkout, version=\"v2\"").unwrap();
        assert_eq!(l["version"], "v2");
        assert!(parse_labels("labels", "a-b=1").is_err());
        assert!(parse_labels("labels", "novalue").is_err());
        assert!(parse_labels("labels", "").unwrap().is_empty());
    }
}
