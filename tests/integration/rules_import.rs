//! The importers over their corpus (`tests/rules/import/{kayenta,argo,flagger}`): every
//! definition imports, the result passes `rules check`, and a golden file pins the output
//! (`CANARYD_UPDATE_GOLDEN=1` rewrites them); bad input names the document and the field;
//! `rules test` searches below a directory and fails when it finds nothing.

use super::{canaryd, files, repo};
use canaryd::rules::analyse;
use canaryd::rules::import::{Import, ImportError, Judging, Options, VarUse};
use std::path::Path;

/// The options a corpus file asks for (`# flags: ...` in YAML, `"_flags"` in JSON).
fn options(flags: &str) -> Options {
    let mut opts = Options::default();
    let words: Vec<&str> = flags.split_whitespace().collect();
    for pair in words.chunks(2) {
        let [flag, value] = pair else {
            panic!("flags come in pairs: {flags:?}")
        };
        let (name, target) = value.split_once('=').unwrap_or((value, ""));
        match *flag {
            "--judge" => {
                opts.judging = match *value {
                    "sequential" => Judging::Sequential,
                    "threshold" => Judging::Threshold,
                    "mann-whitney" => Judging::MannWhitney,
                    other => panic!("judge {other:?}"),
                }
            }
            "--var" | "--arg" => {
                opts.vars.0.insert(name.into(), VarUse::Arm(target.into()));
            }
            "--value" => {
                opts.vars
                    .0
                    .insert(name.into(), VarUse::Value(target.into()));
            }
            other => panic!("unknown flag {other:?} in {flags:?}"),
        }
    }
    opts
}

fn yaml_flags(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# flags:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn run_import(tool: &str, path: &Path) -> Result<Import, ImportError> {
    let text = std::fs::read_to_string(path).unwrap();
    let shown = path.file_name().unwrap().to_string_lossy().into_owned();
    match tool {
        "kayenta" => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let flags = v["_flags"].as_str().unwrap_or("").to_string();
            assert!(
                v["_source"].is_string() || v.is_null(),
                "{shown}: no _source"
            );
            canaryd::rules::kayenta::import(&text, &shown, &options(&flags))
        }
        "argo" => canaryd::rules::argo::import(&text, &shown, &options(&yaml_flags(&text))),
        "flagger" => {
            canaryd::rules::flagger::import(&[(shown, text.clone())], &options(&yaml_flags(&text)))
        }
        other => panic!("tool {other:?}"),
    }
}

#[test]
fn every_import_corpus_definition_imports_checks_and_matches_its_golden_file() {
    let update = std::env::var_os("CANARYD_UPDATE_GOLDEN").is_some();
    let out = tempfile::tempdir().unwrap();
    let mut count = 0;
    let mut mismatches = Vec::new();
    for (tool, suffix) in [
        ("kayenta", ".json"),
        ("argo", ".yaml"),
        ("flagger", ".yaml"),
    ] {
        let dir = repo().join("tests/rules/import").join(tool);
        for input in files(&dir, suffix) {
            if input.to_string_lossy().ends_with(".golden.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&input).unwrap();
            assert!(
                text.contains("ource")
                    && (text.contains("# Source:") || text.contains("\"_source\"")),
                "{}: names no source",
                input.display()
            );
            let import =
                run_import(tool, &input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            let analysis = analyse("imported.yaml", &import.yaml);
            assert!(
                analysis.errors.is_empty(),
                "{}: {:?}\n{}",
                input.display(),
                analysis.errors,
                import.yaml
            );
            assert!(
                import.yaml.starts_with("# Imported from"),
                "{}",
                import.yaml
            );
            assert!(import.yaml.contains("# Converted:"), "{}", import.yaml);
            let stem = input.file_stem().unwrap().to_string_lossy().into_owned();
            let golden = dir.join(format!("{stem}.golden.yaml"));
            if update {
                std::fs::write(&golden, &import.yaml).unwrap();
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (CANARYD_UPDATE_GOLDEN=1 writes it)",
                    golden.display()
                )
            });
            if want != import.yaml {
                mismatches.push(format!("{}:\n{}", golden.display(), import.yaml));
            }
            // Checked one by one: imports of different tools may pick the same rule-set name.
            let file = out.path().join(format!("{tool}-{stem}.yaml"));
            std::fs::write(&file, &import.yaml).unwrap();
            let (code, stdout, stderr) =
                canaryd(&["rules", "check", "--deny-warnings", file.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {stdout}{stderr}", input.display());
            count += 1;
        }
    }
    assert!(
        count >= 20,
        "the corpus has {count} definitions, fewer than 20"
    );
    assert!(
        mismatches.is_empty(),
        "golden files differ:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn bad_import_input_names_the_document_and_the_field() {
    let dir = repo().join("tests/rules/import/bad");
    let mut seen = 0;
    for input in files(&dir, "")
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".expected"))
    {
        let text = std::fs::read_to_string(&input).unwrap();
        let shown = input.file_name().unwrap().to_string_lossy().into_owned();
        let err = if shown.ends_with(".json") {
            canaryd::rules::kayenta::import(&text, &shown, &Options::default())
        } else if text.contains("import-flagger") {
            canaryd::rules::flagger::import(&[(shown.clone(), text.clone())], &Options::default())
        } else {
            canaryd::rules::argo::import(&text, &shown, &Options::default())
        }
        .expect_err(&shown)
        .to_string();
        let expected = std::fs::read_to_string(input.with_extension("expected")).unwrap();
        assert!(
            err.starts_with(expected.trim_end()),
            "{shown}: got\n{err}\nwant it to start with\n{expected}"
        );
        seen += 1;
    }
    assert!(seen >= 5, "the bad corpus shrank: {seen}");
}

#[test]
fn the_import_cli_writes_the_file_and_says_what_it_converted_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("argo.yaml");
    let (code, _, stderr) = canaryd(&[
        "rules",
        "import-argo",
        "tests/rules/import/argo/rollout-with-web-check.yaml",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "converted:",
        "judged against the baseline",
        "not carried over:",
        "the web provider",
    ] {
        assert!(stderr.contains(line), "{line:?} not said:\n{stderr}");
    }
    let (code, stdout, stderr) = canaryd(&["rules", "check", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = canaryd(&[
        "rules",
        "import-flagger",
        "tests/rules/import/bad/unknown-kind.yaml",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("kind: unknown kind \"MetricTemplates\""),
        "{stderr}"
    );
}

#[test]
fn rules_test_searches_below_a_directory_and_fails_when_it_finds_none() {
    let (code, stdout, stderr) = canaryd(&["rules", "test", "rules"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = canaryd(&["rules", "test", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no rule tests (*.test.yaml) found"),
        "{stderr}"
    );
}

/// Three imported definitions, one per tool, written against the series the generated history
/// has (`http_requests_total{service, version, code}` and its latency histogram).
const KAYENTA_ERRORS: &str = r#"{
  "name": "checkout-errors",
  "metrics": [{
    "name": "5xx share",
    "query": {"type": "prometheus", "customInlineTemplate": "PromQL:sum(rate(http_requests_total{code=~\"5..\",${scope}}[1m])) / sum(rate(http_requests_total{${scope}}[1m]))"},
    "analysisConfigurations": {"canary": {"direction": "increase", "critical": true, "effectSize": {"allowedIncrease": 1.5}}}
  }]
}"#;

const ARGO_SUCCESS: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: success-rate
spec:
  args:
  - name: service-name
  metrics:
  - name: success-rate
    interval: 1m
    successCondition: result[0] >= 0.95
    failureLimit: 3
    provider:
      prometheus:
        address: http://prometheus.example.com:9090
        query: |
          sum(rate(http_requests_total{service="{{args.service-name}}",code!~"5.."}[1m]))
          /
          sum(rate(http_requests_total{service="{{args.service-name}}"}[1m]))
"#;

const FLAGGER_BUILTINS: &str = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: checkout
spec:
  analysis:
    interval: 1m
    threshold: 5
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 99}
    - name: request-duration
      thresholdRange: {max: 500}
"#;

#[test]
fn imported_definitions_roll_back_the_faulty_release_and_promote_the_healthy_one() {
    use super::{BackfilledPrometheus, Release, history, minute_floor, now, run_backtest};
    let t0 = minute_floor(now() - 3 * 3600);
    let start = t0 + 20 * 60;
    let end = start + 30 * 60;
    let releases = [
        Release {
            service: "checkout",
            fault_from: Some(start + 5 * 60),
            error_factor: 5.0,
            latency_factor: 2.0,
        },
        Release {
            service: "catalog",
            fault_from: None,
            error_factor: 1.0,
            latency_factor: 1.0,
        },
    ];
    let prom = BackfilledPrometheus::start(&history(&releases, t0, t0 + 2 * 3600, 15, 50.0, 11));
    let sequential = Options::default();
    let imports = [
        (
            "kayenta",
            canaryd::rules::kayenta::import(KAYENTA_ERRORS, "k.json", &sequential),
        ),
        (
            "argo",
            canaryd::rules::argo::import(ARGO_SUCCESS, "a.yaml", &sequential),
        ),
        (
            "flagger",
            canaryd::rules::flagger::import(
                &[("f.yaml".into(), FLAGGER_BUILTINS.into())],
                &sequential,
            ),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (tool, import) in imports {
        let import = import.unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(import.yaml.contains("judge: sequential"), "{}", import.yaml);
        let rules = dir.path().join(format!("{tool}.yaml"));
        std::fs::write(&rules, &import.yaml).unwrap();
        for (service, want) in [("checkout", "rollback"), ("catalog", "promote")] {
            let (code, stdout, stderr) =
                run_backtest(&rules, &prom.url, service, start, end, "json");
            assert_eq!(code, 0, "{tool} {service}: {stderr}\n{}", prom.log());
            let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
            println!(
                "{tool} {service}: {} at {} ({})",
                v["decision"], v["decided_at_interval"], v["ended_by"]
            );
            assert_eq!(
                v["decision"],
                want,
                "{tool} {service}: {}\n{}",
                serde_json::to_string_pretty(&v["reasons"]).unwrap(),
                import.yaml
            );
        }
    }
}
