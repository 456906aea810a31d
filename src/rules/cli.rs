//! The `canaryd rules ...` and `canaryd backtest` subcommands: their arguments (clap) and what
//! they print. `main.rs` only routes to these; the work is in [`super::check`],
//! [`super::unit_test`], [`super::schema`], [`super::kayenta`] and [`crate::backtest`].
//!
//! Exit codes: 0 success (valid, all tests pass, backtest ran), 1 findings (errors, failed
//! tests) or a failure to run, 2 bad arguments.

use super::check::check_paths;
use super::{JudgeKind, RuleSource, Selector, analyse, unit_test};
use crate::backtest::{self, BacktestOptions};
use crate::metrics::{ArmSelectors, PrometheusAuth, PrometheusSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON document, for editors and CI.
    Json,
}

/// Which judge an import targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportJudge {
    /// Kayenta-compatible Mann–Whitney (keeps Kayenta's semantics).
    MannWhitney,
    /// canaryd's default anytime-valid sequential tests.
    Sequential,
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
    /// Run rule unit tests (`*.test.yaml`; directories are searched for them).
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
    /// Convert a Kayenta canary config (JSON) into a rule file, listing what could not be
    /// carried over.
    ImportKayenta {
        /// The Kayenta canary config.
        config: PathBuf,
        /// The judge of the new rule set.
        #[arg(long, value_enum, default_value = "mann-whitney")]
        judge: ImportJudge,
        /// Write the rule file here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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

/// Runs a `rules` subcommand; returns the exit code.
pub fn rules(command: RulesCommand) -> Result<u8, String> {
    match command {
        RulesCommand::Check {
            paths,
            format,
            deny_warnings,
            config,
        } => {
            let paths = if paths.is_empty() {
                vec![default_rules_dir(&config)]
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
        RulesCommand::Test { files, format } => {
            let results = unit_test::run_paths(&files);
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
        RulesCommand::Schema => {
            out(&format!("{}\n", pretty(&super::schema::rule_set_schema())));
            Ok(0)
        }
        RulesCommand::ImportKayenta {
            config,
            judge,
            output,
        } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| format!("reading {}: {e}", config.display()))?;
            let judge = match judge {
                ImportJudge::MannWhitney => JudgeKind::MannWhitney,
                ImportJudge::Sequential => JudgeKind::Sequential,
            };
            let import = super::kayenta::import(&text, judge)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            match &output {
                Some(path) => {
                    std::fs::write(path, &import.yaml)
                        .map_err(|e| format!("writing {}: {e}", path.display()))?;
                }
                None => out(&import.yaml),
            }
            eprintln!(
                "imported rule set {}: {} metric(s), {} Kayenta metric(s) left out{}",
                import.name,
                import.metrics,
                import.skipped,
                output
                    .map(|p| format!(", written to {}", p.display()))
                    .unwrap_or_default()
            );
            if !import.notes.is_empty() {
                eprintln!("not carried over:");
                for n in &import.notes {
                    eprintln!("  - {n}");
                }
            }
            Ok(0)
        }
    }
}

/// The configured rules directory, or `rules`.
fn default_rules_dir(config: &std::path::Path) -> PathBuf {
    if config.exists()
        && let Ok(c) = crate::config::Config::load(config)
    {
        return c.rules.dir;
    }
    PathBuf::from("rules")
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
pub fn parse_labels(flag: &str, text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--{flag}: expected k=v, got {pair:?}"))?;
        let k = k.trim();
        if !super::template::is_label_name(k) {
            return Err(format!(
                "--{flag}: invalid label name {k:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
        out.insert(k.to_string(), v.trim().trim_matches('"').to_string());
    }
    Ok(out)
}

/// Runs `canaryd backtest`; returns the exit code.
pub async fn backtest(args: BacktestArgs) -> Result<u8, String> {
    let content = std::fs::read_to_string(&args.rules)
        .map_err(|e| format!("reading {}: {e}", args.rules.display()))?;
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
    let arm = |flag: &str, own: &str| -> Result<Selector, String> {
        let mut labels = common.clone();
        labels.extend(parse_labels(flag, own)?);
        if labels.is_empty() {
            return Err(format!("--{flag}: the arm needs at least one label"));
        }
        Selector::new(&labels).map_err(|e| format!("--{flag}: {e}"))
    };
    let selectors = ArmSelectors {
        canary: arm("canary-labels", &args.canary_labels)?,
        baseline: arm("baseline-labels", &args.baseline_labels)?,
    };
    if selectors.canary == selectors.baseline {
        return Err("--canary-labels and --baseline-labels select the same series".into());
    }
    let start = crate::time::parse_timestamp(&args.start).map_err(|e| format!("--start: {e}"))?;
    let end = crate::time::parse_timestamp(&args.end).map_err(|e| format!("--end: {e}"))?;
    let interval =
        crate::time::parse_duration(&args.interval).map_err(|e| format!("--interval: {e}"))?;
    let timeout: Duration =
        crate::time::parse_duration(&args.timeout).map_err(|e| format!("--timeout: {e}"))?;
    let source = PrometheusSource::new(&args.prometheus, &PrometheusAuth::None, timeout)?;
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
    .map_err(|e| e.to_string())?;
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
