//! Rule files end to end: the corpus of bad files (each error at its place), a bounded fuzz of
//! the parser, the shipped rule packs and their unit tests, the JSON Schema, the Kayenta import,
//! backtests against a Prometheus loaded with generated history (`promtool`), hot reload of a
//! running daemon, and the measurements the issue asks for (printed, not asserted).

#[path = "rules_import.rs"]
mod import;

use crate::stack::{Stack, StackOptions, canaryd_bin};
use crate::support::*;
use canaryd::rules::{self, analyse};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

/// `LINE:COL: text` lines of an `.expected` file.
fn expectations(path: &Path) -> Vec<(usize, usize, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, ':');
            let line = parts.next().unwrap().trim().parse().expect("line");
            let col = parts.next().unwrap().trim().parse().expect("column");
            (line, col, parts.next().unwrap().trim().to_string())
        })
        .collect()
}

fn canaryd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(canaryd_bin())
        .current_dir(repo())
        .args(args)
        .output()
        .expect("run canaryd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// The corpus

#[test]
fn every_bad_rule_file_gives_its_expected_errors_at_their_places() {
    let dir = repo().join("tests/rules/bad");
    let bad = files(&dir, ".yaml");
    assert!(bad.len() >= 10, "the corpus shrank: {bad:?}");
    for file in bad {
        let expected = expectations(&file.with_extension("expected"));
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.display().to_string();
        let analysis = analyse(&shown, &text);
        let got: Vec<String> = analysis.errors.iter().map(|e| e.to_string()).collect();
        assert!(analysis.set.is_none(), "{shown} loaded");
        assert!(
            analysis.warnings.is_empty(),
            "{shown}: warnings on a broken file: {:?}",
            analysis.warnings
        );
        assert_eq!(
            got.len(),
            expected.len(),
            "{shown}: expected {} errors, got:\n{}",
            expected.len(),
            got.join("\n")
        );
        for (line, col, text) in &expected {
            assert!(
                analysis.errors.iter().any(|e| e.line == *line
                    && e.column == *col
                    && e.to_string().contains(text.as_str())),
                "{shown}: no error at {line}:{col} containing {text:?}; got:\n{}",
                got.join("\n")
            );
        }
    }
}

#[test]
fn every_lint_file_loads_with_its_expected_warnings() {
    for file in files(&repo().join("tests/rules/lint"), ".yaml") {
        let expected = expectations(&file.with_extension("expected"));
        let shown = file.display().to_string();
        let analysis = analyse(&shown, &std::fs::read_to_string(&file).unwrap());
        assert!(analysis.errors.is_empty(), "{shown}: {:?}", analysis.errors);
        let got: Vec<String> = analysis
            .warnings
            .iter()
            .map(|w| format!("{}:{}: {}: {}", w.line, w.column, w.code, w.message))
            .collect();
        assert_eq!(got.len(), expected.len(), "{shown}:\n{}", got.join("\n"));
        for (line, col, text) in &expected {
            assert!(
                got.iter()
                    .any(|g| g.starts_with(&format!("{line}:{col}: ")) && g.contains(text.as_str())),
                "{shown}: no warning at {line}:{col} containing {text:?}; got:\n{}",
                got.join("\n")
            );
        }
    }
}

#[test]
fn rules_check_cli_fails_on_the_corpus_with_json_for_tools() {
    let (code, stdout, _) = canaryd(&["rules", "check", "tests/rules/bad"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "tests/rules/bad/unknown-field.yaml:9:5: metric \"error-rate\": unknown field `critcal`"
        ),
        "{stdout}"
    );
    let (code, stdout, _) = canaryd(&["rules", "check", "--format", "json", "tests/rules/bad"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&stdout).expect("JSON report");
    let expected: usize = files(&repo().join("tests/rules/bad"), ".expected")
        .iter()
        .map(|f| expectations(f).len())
        .sum();
    assert_eq!(v["errors"], expected);
    assert_eq!(v["ok"], false);
    let first = &v["files"][0]["errors"][0];
    for k in ["file", "line", "column", "metric", "path", "message"] {
        assert!(first.get(k).is_some(), "{k} missing in {first}");
    }
    // Warnings pass unless denied.
    let (code, _, _) = canaryd(&["rules", "check", "tests/rules/lint"]);
    assert_eq!(code, 0);
    let (code, _, _) = canaryd(&["rules", "check", "--deny-warnings", "tests/rules/lint"]);
    assert_eq!(code, 1);
}

// ---------------------------------------------------------------------------------------------
// Fuzz: no input makes the parser panic

const NASTY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    "- ",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "|",
    ">",
    "%",
    "\n",
    "\t",
    "  ",
    "{{",
    "}}",
    "{{selector}}",
    "{{window}}",
    "\\",
    "\u{0}",
    "é",
    "\u{FEFF}",
    "---\n",
    "<<: *a\n",
    "1e400",
    "-",
    ".nan",
    "~",
    "? ",
    ",",
];

fn mutate(rng: &mut SmallRng, text: &str) -> String {
    let mut s: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = s.len().max(1);
        match rng.random_range(0..7) {
            0 => {
                let at = rng.random_range(0..len).min(s.len());
                let n = rng.random_range(1..8).min(s.len() - at);
                s.drain(at..at + n);
            }
            1 => {
                let at = rng.random_range(0..=s.len());
                let piece = NASTY[rng.random_range(0..NASTY.len())];
                s.splice(at..at, piece.bytes());
            }
            2 if s.len() > 1 => {
                let (a, b) = (rng.random_range(0..s.len()), rng.random_range(0..s.len()));
                s.swap(a, b);
            }
            3 => {
                let at = rng.random_range(0..=s.len());
                s.insert(at, rng.random());
            }
            _ => {
                let text = String::from_utf8_lossy(&s).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let n = lines.len();
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                match rng.random_range(0..3) {
                    0 => lines.swap(a, b),
                    1 => {
                        lines.remove(a);
                    }
                    _ => {
                        let l = lines[a];
                        lines.insert(b, l);
                    }
                }
                s = lines.join("\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

#[test]
fn the_rule_parser_never_panics_on_mutated_files() {
    let seed: u64 = std::env::var("CANARYD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE);
    let budget = Duration::from_secs_f64(
        std::env::var("CANARYD_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let mut inputs: Vec<String> = Vec::new();
    for dir in [
        "rules",
        "tests/rules/bad",
        "tests/rules/lint",
        "rules/tests",
    ] {
        for f in files(&repo().join(dir), ".yaml") {
            inputs.push(std::fs::read_to_string(f).unwrap());
        }
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let (mut cases, mut valid) = (0u64, 0u64);
    while started.elapsed() < budget {
        let base = &inputs[rng.random_range(0..inputs.len())];
        let text = mutate(&mut rng, base);
        cases += 1;
        let result = std::panic::catch_unwind(|| analyse("fuzz.yaml", &text));
        let analysis = match result {
            Ok(a) => a,
            Err(_) => {
                let keep = std::env::temp_dir().join(format!("canaryd-fuzz-{seed}-{cases}.yaml"));
                let _ = std::fs::write(&keep, &text);
                panic!(
                    "the parser panicked (seed {seed}, case {cases}); input kept in {}",
                    keep.display()
                );
            }
        };
        valid += u64::from(analysis.set.is_some());
        let lines = text.lines().count() + 2;
        for e in &analysis.errors {
            assert!(
                e.line >= 1 && e.line <= lines && e.column >= 1,
                "bad place {e} for:\n{text}"
            );
        }
        // The series notation of rule tests takes free text too.
        let words: String = text.chars().take(80).collect();
        let _ = rules::series::counts(&words);
        let _ = rules::series::gauge(&words);
        let _ = rules::series::histogram(&words, &[0.1, 0.2]);
    }
    println!(
        "fuzz: {cases} mutated rule files in {:?} (seed {seed}), {valid} still valid",
        started.elapsed()
    );
    assert!(cases > 100, "too few cases ran: {cases}");
}

// ---------------------------------------------------------------------------------------------
// Shipped packs, schema, Kayenta

#[test]
fn every_shipped_rule_pack_passes_check_and_its_unit_tests() {
    let (code, stdout, stderr) = canaryd(&["rules", "check", "--deny-warnings", "rules"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = canaryd(&["rules", "test", "rules/tests"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for pack in files(&repo().join("rules"), ".yaml") {
        let stem = pack.file_stem().unwrap().to_string_lossy().into_owned();
        let fixture = repo().join(format!("rules/tests/{stem}.test.yaml"));
        assert!(
            fixture.exists(),
            "{} has no unit tests at {}",
            pack.display(),
            fixture.display()
        );
        assert!(
            readme.contains(&format!("rules/{stem}.yaml")),
            "README does not document rules/{stem}.yaml"
        );
    }
}

#[test]
fn the_schema_covers_every_field_the_packs_use() {
    let (code, stdout, _) = canaryd(&["rules", "schema"]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&stdout).expect("schema is JSON");
    let top = schema["properties"].as_object().unwrap();
    let metric = schema["$defs"]["RawMetric"]["properties"]
        .as_object()
        .unwrap();
    for pack in files(&repo().join("rules"), ".yaml") {
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&pack).unwrap()).unwrap();
        for (k, _) in v.as_mapping().unwrap() {
            assert!(
                top.contains_key(k.as_str().unwrap()),
                "{k:?} of {} not in the schema",
                pack.display()
            );
        }
        for m in v["metrics"].as_sequence().unwrap() {
            for (k, _) in m.as_mapping().unwrap() {
                assert!(
                    metric.contains_key(k.as_str().unwrap()),
                    "{k:?} of {} not in the schema",
                    pack.display()
                );
            }
        }
    }
}

#[test]
fn a_kayenta_config_imports_into_a_valid_rule_file_and_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    for (judge, name) in [("mann-whitney", "mw.yaml"), ("sequential", "seq.yaml")] {
        let out = dir.path().join(name);
        let (code, _, stderr) = canaryd(&[
            "rules",
            "import-kayenta",
            "tests/rules/kayenta/checkout-canary-config.json",
            "--judge",
            judge,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        for note in [
            "\"Load balancer 5xx\": not imported: a stackdriver query",
            "\"Datadog CPU\": not imported: a datadog query",
            "mustHaveData",
            "criticalIncrease",
            "${location}",
        ] {
            assert!(stderr.contains(note), "{note:?} not reported:\n{stderr}");
        }
        let (code, stdout, _) =
            canaryd(&["rules", "check", "--deny-warnings", out.to_str().unwrap()]);
        assert_eq!(code, 0, "{stdout}");
        let text = std::fs::read_to_string(&out).unwrap();
        let set = rules::parse_rule_set(name, &text).unwrap();
        // 5 as before, plus p99 latency's criticalIncrease as a critical companion metric.
        assert_eq!(set.metrics.len(), 6, "{text}");
        assert!(
            set.metrics
                .iter()
                .any(|m| m.name == "p99-latency-critical" && m.critical),
            "{text}"
        );
        let error_rate = &set.metrics[0];
        assert!(error_rate.critical);
        assert_eq!(error_rate.max_increase, Some(0.1));
        if judge == "mann-whitney" {
            assert_eq!(set.mann_whitney.group_weights["Errors"], 40.0);
            assert!(set.mann_whitney.nan_as_zero);
        }
        assert!(!text.contains("${scope}"), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Backtests against a Prometheus loaded with generated history

/// One release in the generated history.
struct Release {
    service: &'static str,
    /// From this time on, the canary (v2) has `error_factor`× the errors and `latency_factor`×
    /// the latency.
    fault_from: Option<i64>,
    error_factor: f64,
    latency_factor: f64,
}

const LES: usize = 40;

fn les() -> Vec<f64> {
    (0..LES).map(|i| 0.005 * 1.15f64.powi(i as i32)).collect()
}

fn phi(x: f64) -> f64 {
    0.5 * (1.0 + statrs::function::erf::erf(x / std::f64::consts::SQRT_2))
}

/// OpenMetrics text for `releases` (each with a baseline v1 and a canary v2) from `t0` to `t1`
/// every `step` seconds: request counters by code, a ×1.15 latency histogram, CPU and memory.
fn history(releases: &[Release], t0: i64, t1: i64, step: i64, rps: f64, seed: u64) -> String {
    struct Arm {
        labels: String,
        requests: Vec<(i64, [f64; 3])>,
        buckets: Vec<Vec<f64>>,
        sum: Vec<f64>,
        cpu: Vec<f64>,
        memory: Vec<f64>,
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let edges = les();
    let mut arms = Vec::new();
    for r in releases {
        for version in ["v1", "v2"] {
            let mut arm = Arm {
                labels: format!("service=\"{}\",version=\"{version}\"", r.service),
                requests: Vec::new(),
                buckets: Vec::new(),
                sum: Vec::new(),
                cpu: Vec::new(),
                memory: Vec::new(),
            };
            let (mut ok, mut e5, mut e4, mut sum, mut cpu) = (0.0, 0.0, 0.0, 0.0, 0.0);
            let mut cum = vec![0.0; LES + 1];
            let mut t = t0;
            while t <= t1 {
                let faulty = version == "v2" && r.fault_from.is_some_and(|f| t > f);
                let n = rps * step as f64 * (1.0 + 0.05 * (rng.random::<f64>() - 0.5));
                let err = 0.005 * if faulty { r.error_factor } else { 1.0 };
                let median = 0.1 * if faulty { r.latency_factor } else { 1.0 };
                e5 += n * err;
                e4 += n * 0.01;
                ok += n * (1.0 - err - 0.01);
                for (i, le) in edges.iter().enumerate() {
                    cum[i] += n * phi((le / median).ln() / 0.5);
                }
                cum[LES] += n;
                sum += n * median * (0.125f64).exp();
                cpu += step as f64 * 0.002 * rps;
                arm.requests.push((t, [ok, e5, e4]));
                arm.buckets.push(cum.clone());
                arm.sum.push(sum);
                arm.cpu.push(cpu);
                arm.memory.push(5.0e8 + 1.0e6 * (rng.random::<f64>() - 0.5));
                t += step;
            }
            arms.push(arm);
        }
    }
    let mut out = String::with_capacity(8 << 20);
    out.push_str("# HELP http_requests Requests.\n# TYPE http_requests counter\n");
    for a in &arms {
        for (c, code) in ["200", "500", "404"].iter().enumerate() {
            for (t, v) in &a.requests {
                let _ = writeln!(
                    out,
                    "http_requests_total{{{},code=\"{code}\"}} {:.3} {t}",
                    a.labels, v[c]
                );
            }
        }
    }
    out.push_str("# HELP http_request_duration_seconds Latency.\n# TYPE http_request_duration_seconds histogram\n");
    for a in &arms {
        for i in 0..=LES {
            let le = edges
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |e| format!("{e}"));
            for (k, (t, _)) in a.requests.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{},le=\"{le}\"}} {:.3} {t}",
                    a.labels, a.buckets[k][i]
                );
            }
        }
        for (k, (t, _)) in a.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{}}} {:.3} {t}",
                a.labels, a.buckets[k][LES]
            );
        }
        for (k, (t, _)) in a.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{{}}} {:.3} {t}",
                a.labels, a.sum[k]
            );
        }
    }
    out.push_str("# HELP process_cpu_seconds CPU.\n# TYPE process_cpu_seconds counter\n");
    for a in &arms {
        for (k, (t, _)) in a.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "process_cpu_seconds_total{{{}}} {:.3} {t}",
                a.labels, a.cpu[k]
            );
        }
    }
    out.push_str("# HELP process_resident_memory_bytes Memory.\n# TYPE process_resident_memory_bytes gauge\n");
    for a in &arms {
        for (k, (t, _)) in a.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "process_resident_memory_bytes{{{}}} {:.0} {t}",
                a.labels, a.memory[k]
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

/// The contract rule set plus a dry-run p99 metric.
const BACKTEST_RULES: &str = r#"name: http-backtest
judge: sequential
metrics:
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))'
    total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'
    max_increase: 50%
    critical: true
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    max_increase: 50%
  - name: cpu
    kind: gauge
    query: 'sum(rate(process_cpu_seconds_total{ {{selector}} }[{{window}}]))'
    max_increase: 50%
  - name: latency-p99
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    quantile: 0.99
    bucket_growth: 1.15
    max_increase: 50%
    dry_run: true
"#;

fn minute_floor(t: i64) -> i64 {
    t - t.rem_euclid(60)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn run_backtest(
    rules: &Path,
    url: &str,
    service: &str,
    start: i64,
    end: i64,
    format: &str,
) -> (i32, String, String) {
    canaryd(&[
        "backtest",
        "--rules",
        rules.to_str().unwrap(),
        "--prometheus",
        url,
        "--labels",
        &format!("service={service}"),
        "--canary-labels",
        "version=v2",
        "--baseline-labels",
        "version=v1",
        "--start",
        &start.to_string(),
        "--end",
        &chrono::DateTime::from_timestamp(end, 0)
            .unwrap()
            .to_rfc3339(),
        "--interval",
        "1m",
        "--format",
        format,
    ])
}

#[test]
fn backtests_roll_back_the_faulty_release_at_its_interval_and_promote_the_healthy_one() {
    let t0 = minute_floor(now() - 3 * 3600);
    let start = t0 + 20 * 60;
    let end = start + 30 * 60;
    let fault_from = start + 5 * 60;
    let text = history(
        &[
            Release {
                service: "checkout",
                fault_from: Some(fault_from),
                error_factor: 5.0,
                latency_factor: 2.0,
            },
            Release {
                service: "catalog",
                fault_from: None,
                error_factor: 1.0,
                latency_factor: 1.0,
            },
        ],
        t0,
        t0 + 2 * 3600,
        15,
        50.0,
        7,
    );
    let prom = BackfilledPrometheus::start(&text);
    println!(
        "backfill: {} bytes of OpenMetrics in {:?}",
        text.len(),
        prom.backfill_time
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("http-backtest.yaml");
    std::fs::write(&rules, BACKTEST_RULES).unwrap();

    // The faulty release: healthy for five intervals, then five times the errors.
    let (code, stdout, stderr) = run_backtest(&rules, &prom.url, "checkout", start, end, "json");
    assert_eq!(code, 0, "{stderr}\n{}", prom.log());
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(
        v["decision"],
        "rollback",
        "{}",
        serde_json::to_string_pretty(&v["reasons"]).unwrap()
    );
    assert_eq!(
        v["decided_at_interval"],
        6,
        "{}",
        serde_json::to_string_pretty(&v["intervals"]).unwrap()
    );
    assert_eq!(v["ended_by"], "verdict");
    // The latency doubling is the first thing beyond doubt (the error count test weighs the
    // five healthy intervals before the fault too).
    let reason = v["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("latency: canary") && reason.contains("is beyond the ×1.50 margin"),
        "{reason}"
    );
    let intervals = v["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 6, "the replay stops at the decision");
    for (i, iv) in intervals.iter().enumerate() {
        assert_eq!(iv["index"], i + 1);
        let s = chrono::DateTime::parse_from_rfc3339(iv["start"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let e = chrono::DateTime::parse_from_rfc3339(iv["end"].as_str().unwrap())
            .unwrap()
            .timestamp();
        assert_eq!((s, e), (start + 60 * i as i64, start + 60 * (i as i64 + 1)));
        let expected = if i < 5 { "continue" } else { "rollback" };
        assert!(
            iv["verdict"] == expected || (i < 5 && iv["verdict"] == "promote"),
            "interval {}: {}",
            i + 1,
            iv["verdict"]
        );
        for m in iv["metrics"].as_array().unwrap() {
            for k in ["name", "verdict", "estimate", "lower", "upper", "evidence"] {
                assert!(m.get(k).is_some(), "{k} missing in {m}");
            }
        }
        let dry = iv["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "latency-p99")
            .unwrap();
        assert_eq!(dry["dry_run"], true);
    }
    let last = &intervals[5]["metrics"];
    assert_eq!(last[1]["name"], "latency");
    assert_eq!(last[1]["verdict"], "fail");
    assert_eq!(last[1]["evidence"]["kind"], "e_value");
    assert!(
        last[1]["lower"].as_f64().unwrap() > 1.5,
        "the interval's lower bound is beyond the margin"
    );

    // The table for people: every metric, dry-run marked, the decision.
    let (code, text_out, _) = run_backtest(&rules, &prom.url, "checkout", start, end, "text");
    assert_eq!(code, 0);
    assert!(
        text_out.contains("decision: rollback at interval 6"),
        "{text_out}"
    );
    assert!(text_out.contains("(dry-run)"), "{text_out}");
    assert!(
        text_out.contains("effect [interval]") && text_out.contains("evidence"),
        "{text_out}"
    );
    println!("{text_out}");

    // The healthy release: promoted, never a rollback.
    let (code, stdout, stderr) = run_backtest(&rules, &prom.url, "catalog", start, end, "json");
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["decision"],
        "promote",
        "{}",
        serde_json::to_string_pretty(&v["reasons"]).unwrap()
    );
    assert!(
        v["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["verdict"] != "rollback")
    );
    match v["ended_by"].as_str().unwrap() {
        // Early promotion: every metric confidently within its margin.
        "verdict" => assert!(v["decided_at_interval"].as_u64().unwrap() <= 30),
        // Or the window played max_duration without a regression.
        "window_end" => assert!(v["decided_at_interval"].is_null()),
        other => panic!("healthy release ended by {other}"),
    }
    println!(
        "healthy: {} at {} ({})",
        v["decision"], v["decided_at_interval"], v["ended_by"]
    );

    // A window with no data for the arms is inconclusive, ended by the fail-safe.
    let (code, stdout, _) = run_backtest(&rules, &prom.url, "nothing-here", start, end, "json");
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            v["decision"].as_str(),
            v["ended_by"].as_str(),
            v["decided_at_interval"].as_u64()
        ),
        (Some("inconclusive"), Some("fail_safe"), Some(5))
    );
}

// ---------------------------------------------------------------------------------------------
// Measurements (printed, not asserted)

const TEN_METRICS: &str = r#"name: ten-metrics
metrics:
  - {name: error-rate, kind: ratio, critical: true, max_increase: 50%,
     bad: 'sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))',
     total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'}
  - {name: not-found-rate, kind: ratio, max_increase: 50%,
     bad: 'sum(increase(http_requests_total{ {{selector}}, code="404" }[{{window}}]))',
     total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'}
  - {name: latency, kind: histogram, max_increase: 50%,
     buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'}
  - {name: latency-slo, kind: histogram, threshold: 250ms, max_increase: 50%,
     buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'}
  - {name: latency-p99, kind: histogram, quantile: 0.99, bucket_growth: 1.15, max_increase: 50%,
     buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'}
  - {name: latency-p50, kind: histogram, quantile: 0.5, bucket_growth: 1.15, max_increase: 50%,
     buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'}
  - {name: cpu, kind: gauge, max_increase: 50%,
     query: 'sum(rate(process_cpu_seconds_total{ {{selector}} }[{{window}}]))'}
  - {name: cpu-per-request, kind: gauge, max_increase: 50%,
     query: 'sum(rate(process_cpu_seconds_total{ {{selector}} }[{{window}}])) / sum(rate(http_requests_total{ {{selector}} }[{{window}}]))'}
  - {name: memory, kind: gauge, max_increase: 30%, slope: 2%,
     query: 'avg(process_resident_memory_bytes{ {{selector}} })'}
  - {name: request-rate, kind: gauge, direction: decrease, max_increase: 50%, dry_run: true,
     query: 'sum(rate(http_requests_total{ {{selector}} }[{{window}}]))'}
"#;

#[test]
fn measure_backtest_of_24h_at_1m_with_10_metrics() {
    let t0 = minute_floor(now() - 26 * 3600);
    let text = history(
        &[Release {
            service: "day",
            fault_from: None,
            error_factor: 1.0,
            latency_factor: 1.0,
        }],
        t0,
        t0 + 25 * 3600,
        60,
        20.0,
        11,
    );
    let prom = BackfilledPrometheus::start(&text);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("ten.yaml");
    std::fs::write(&rules, TEN_METRICS).unwrap();
    let start = t0 + 30 * 60;
    let end = start + 24 * 3600;
    // CANARYD_MEASURE_BIN=target/release/canaryd measures an optimised build.
    let bin = std::env::var_os("CANARYD_MEASURE_BIN").map_or_else(canaryd_bin, PathBuf::from);
    let started = Instant::now();
    let out = Command::new(&bin)
        .args([
            "backtest",
            "--rules",
            rules.to_str().unwrap(),
            "--prometheus",
            &prom.url,
        ])
        .args([
            "--labels",
            "service=day",
            "--canary-labels",
            "version=v2",
            "--baseline-labels",
            "version=v1",
        ])
        .args([
            "--start",
            &start.to_string(),
            "--end",
            &end.to_string(),
            "--interval",
            "1m",
            "--format",
            "json",
            "--full",
        ])
        .output()
        .unwrap();
    let wall = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intervals"].as_array().unwrap().len(), 1440);
    println!(
        "MEASURE ({}) backtest 24h @1m, 10 metrics, 1440 intervals (--full): wall {:.2}s (process, incl. JSON), {} range queries fetched in {:.3}s wall ({:.3}s of query time added up; the rest is shaping), judge {:.3}s; backfill of {:.1} MB took {:?}",
        bin.display(),
        wall.as_secs_f64(),
        v["timing"]["queries"],
        v["timing"]["query_seconds"].as_f64().unwrap(),
        v["timing"]["prometheus_seconds"].as_f64().unwrap(),
        v["timing"]["judge_seconds"].as_f64().unwrap(),
        text.len() as f64 / 1e6,
        prom.backfill_time
    );
}

#[test]
fn measure_rules_check_of_100_files() {
    let dir = tempfile::tempdir().unwrap();
    let packs: Vec<String> = files(&repo().join("rules"), ".yaml")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for i in 0..100 {
        let text = &packs[i % packs.len()];
        let renamed = text.replacen("\nname: ", &format!("\nname: copy{i}-"), 1);
        let renamed = if renamed.starts_with("name: ") {
            renamed.replacen("name: ", &format!("name: copy{i}-"), 1)
        } else {
            renamed
        };
        std::fs::write(dir.path().join(format!("r{i:03}.yaml")), renamed).unwrap();
    }
    let started = Instant::now();
    let report = rules::check::check_paths(&[dir.path().to_path_buf()]);
    let in_process = started.elapsed();
    assert_eq!(report.files.len(), 100);
    assert_eq!(report.errors, 0, "{}", report.text());
    let bin = std::env::var_os("CANARYD_MEASURE_BIN").map_or_else(canaryd_bin, PathBuf::from);
    let started = Instant::now();
    let out = Command::new(&bin)
        .args(["rules", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let cli = started.elapsed();
    assert!(out.status.success());
    println!(
        "MEASURE rules check of 100 files: {:.1} ms in process, {:.1} ms as `canaryd rules check` (process start included)",
        in_process.as_secs_f64() * 1e3,
        cli.as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------------------------
// Hot reload

/// A daemon on its own (no router reachable, no canary): enough for SIGHUP reloads.
fn lone_daemon(dir: &Path, rules: &str) -> (ChildProc, String) {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/set.yaml"), rules).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("canaryd.toml"),
        format!(
            "[server]\nlisten = \"{addr}\"\n[store]\nurl = \"sqlite://data/canaryd.db\"\n[prometheus]\nurl = \"http://127.0.0.1:1\"\n[rules]\ndir = \"rules\"\n[routers.edge]\nkind = \"haproxy\"\nruntime_api = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(canaryd_bin());
    cmd.current_dir(dir)
        .args(["serve", "--config", "canaryd.toml"])
        .env("RUST_LOG", "info");
    let mut proc = ChildProc::spawn("canaryd (reload)", cmd, &dir.join("canaryd.log"));
    let probe = addr.clone();
    if let Err(e) = proc.wait_ready(START_DEADLINE, || {
        matches!(http_get_blocking(&probe, "/readyz"), Some((200, _)))
    }) {
        proc.fail(&e);
    }
    (proc, addr)
}

fn rules_view(addr: &str) -> Value {
    let (status, body) = http_get_blocking(addr, "/api/v1/rules").expect("GET /api/v1/rules");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const LONE_RULES: &str = "name: lone\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'sum(rate(process_cpu_seconds_total{ {{selector}} }[{{window}}]))'\n    max_increase: 50%\n    critical: true\n";

#[test]
fn sighup_reloads_and_a_broken_file_keeps_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, addr) = lone_daemon(dir.path(), LONE_RULES);
    let v1 = rules_view(&addr)["sets"][0]["version"]
        .as_str()
        .unwrap()
        .to_string();

    // A broken edit: the old version keeps serving, the error is reported everywhere.
    std::fs::write(
        dir.path().join("rules/set.yaml"),
        LONE_RULES.replace("50%", "-5%"),
    )
    .unwrap();
    Command::new("kill")
        .arg("-HUP")
        .arg(proc.pid().unwrap().to_string())
        .status()
        .unwrap();
    wait_for("the broken file's error", || {
        !rules_view(&addr)["errors"].as_array().unwrap().is_empty()
    });
    let view = rules_view(&addr);
    assert_eq!(view["sets"][0]["version"], v1.as_str());
    assert_eq!(view["sets"][0]["stale"], true);
    assert_eq!(view["sets"][0]["judge"], "sequential");
    assert_eq!(view["sets"][0]["metrics"][0]["name"], "cpu");
    assert!(
        view["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_increase must be > 0"),
        "{view}"
    );
    assert_eq!(view["errors"][0]["line"], 6);
    let (_, metrics) = http_get_blocking(&addr, "/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l == "canaryd_rule_load_errors 1"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(dir.path().join("canaryd.log")).unwrap();
    assert!(
        log.contains("Rule file not loaded") && log.contains("SIGHUP"),
        "{log}"
    );

    // A good edit applies.
    std::fs::write(
        dir.path().join("rules/set.yaml"),
        LONE_RULES.replace("50%", "40%"),
    )
    .unwrap();
    Command::new("kill")
        .arg("-HUP")
        .arg(proc.pid().unwrap().to_string())
        .status()
        .unwrap();
    wait_for("the good edit", || {
        rules_view(&addr)["errors"].as_array().unwrap().is_empty()
    });
    let view = rules_view(&addr);
    assert_ne!(view["sets"][0]["version"], v1.as_str());
    assert_eq!(view["sets"][0]["stale"], false);
    assert_eq!(view["sets"][0]["metrics"][0]["max_increase"], 0.4);
    let (_, metrics) = http_get_blocking(&addr, "/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l == "canaryd_rule_load_errors 0"),
        "{metrics}"
    );

    // And on request, through the API.
    std::fs::write(
        dir.path().join("rules/other.yaml"),
        LONE_RULES.replace("name: lone", "name: other"),
    )
    .unwrap();
    let (status, body) = http_blocking(&addr, "POST", "/api/v1/rules/reload", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    // (The file watcher may have picked the new file up first: then nothing is new here.)
    assert!(v["reload"]["added"].is_array(), "{v}");
    assert_eq!(v["rules"]["sets"].as_array().unwrap().len(), 2);
}

/// The stack's rules with one more (dry-run) metric: a visible difference between versions.
const EDITED_RULES: &str = r#"name: http-golden
judge: sequential
metrics:
  - name: error-rate
    kind: ratio
    bad: 'sum(increase(http_requests_total{ {{selector}}, code=~"5.." }[{{window}}]))'
    total: 'sum(increase(http_requests_total{ {{selector}} }[{{window}}]))'
    max_increase: 50%
    critical: true
  - name: latency
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    max_increase: 50%
  - name: latency-p99
    kind: histogram
    buckets: 'sum by (le) (increase(http_request_duration_seconds_bucket{ {{selector}} }[{{window}}]))'
    quantile: 0.99
    bucket_growth: 1.1
    max_increase: 50%
    dry_run: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_reach_new_canaries_only_and_a_running_canary_keeps_its_version() {
    let stack = Stack::start(
        StackOptions {
            interval: "2s",
            steps: "[20, 50, 100]",
            max_duration: "10s",
            ..StackOptions::default()
        },
        &[],
    )
    .await;
    let c = &stack.canaryd;
    let (_, view) = c.get("/api/v1/rules").await;
    let v1 = view["sets"][0]["version"].as_str().unwrap().to_string();
    let rules_file = stack.dir().join("rules/rules.yaml");
    let spec = std::fs::read_to_string(&stack.spec_path).unwrap();

    // Canary A starts on v1.
    let (status, a) = c.post("/api/v1/canaries", &spec_json(&spec)).await;
    assert_eq!(status, 201, "{a}");
    let a_id = a["id"].as_i64().unwrap();
    assert_eq!(a["rules"]["hash"], v1.as_str());

    // A broken edit while A runs: the file watcher reloads, v1 stays, the error is listed.
    std::fs::write(
        &rules_file,
        EDITED_RULES.replace("quantile: 0.99", "quantile: 1.5"),
    )
    .unwrap();
    poll_until(
        Duration::from_secs(20),
        "the broken edit to be reported",
        || async {
            let (_, v) = c.get("/api/v1/rules").await;
            (!v["errors"].as_array().unwrap().is_empty()).then_some(())
        },
    )
    .await;
    let (_, view) = c.get("/api/v1/rules").await;
    assert_eq!(view["sets"][0]["version"], v1.as_str());
    assert_eq!(view["sets"][0]["stale"], true);

    // A good edit: v2 is served from now on.
    std::fs::write(&rules_file, EDITED_RULES).unwrap();
    let v2 = poll_until(
        Duration::from_secs(20),
        "the good edit to apply",
        || async {
            let (_, v) = c.get("/api/v1/rules").await;
            let version = v["sets"][0]["version"].as_str().unwrap_or("").to_string();
            (version != v1 && v["errors"].as_array().unwrap().is_empty()).then_some(version)
        },
    )
    .await;

    // A finishes on v1: its pinned version, its two metrics.
    let done = c.wait_finished(a_id, Duration::from_secs(60)).await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    assert_eq!(done["rules"]["hash"], v1.as_str());
    let names = |v: &Value| -> Vec<String> {
        v["analysis"]["metrics"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&done), vec!["error-rate", "latency"], "{done}");

    // Canary B, submitted after the edit, runs v2 with the new dry-run metric.
    let (status, b) = c.post("/api/v1/canaries", &spec_json(&spec)).await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["rules"]["hash"], v2.as_str());
    let b_done = c
        .wait_finished(b["id"].as_i64().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(b_done["rules"]["hash"], v2.as_str());
    assert_eq!(
        names(&b_done),
        vec!["error-rate", "latency", "latency-p99"],
        "{b_done}"
    );
}

/// The stack's YAML spec as JSON for `POST /api/v1/canaries`.
fn spec_json(yaml: &str) -> String {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    serde_json::to_string(&v).unwrap()
}
