//! `cargo bench --bench judges -- [--quick] [--runs N] [--out FILE] [--ablation]
//! [--scenario TEXT] [--traffic low|high|unequal] [--seed N]`
//!
//! Runs the sequential, Kayenta-style and threshold judges and an oracle SPRT over the labelled
//! corpus of `benches/corpus` (not part of the product library) (JUDGE.md's benchmark design), prints the table, writes
//! the JSON report, and measures the cost of one metric's update and the judge state's size.

#[path = "corpus/mod.rs"]
mod corpus;

use canaryd::judge::count::CountTest;
use canaryd::judge::{JudgeState, update};
use corpus::{BenchConfig, Scenario, Traffic};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let runs = value("--runs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20 } else { 400 });
    let out = value("--out").unwrap_or_else(|| "target/bench-judges.json".into());
    let config = BenchConfig {
        runs,
        seed: value("--seed").and_then(|v| v.parse().ok()).unwrap_or(2026),
        scenarios: match value("--scenario") {
            Some(filter) => Scenario::ALL
                .into_iter()
                .filter(|s| s.name().contains(filter.as_str()))
                .collect(),
            None => Scenario::ALL.to_vec(),
        },
        traffic: match value("--traffic") {
            Some(filter) => Traffic::ALL
                .into_iter()
                .filter(|t| t.name().starts_with(filter.as_str()))
                .collect(),
            None => Traffic::ALL.to_vec(),
        },
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        ablation: args.iter().any(|a| a == "--ablation"),
    };
    let started = Instant::now();
    let report = corpus::run_benchmark(&config);
    println!("{}", corpus::format_report(&report));
    println!(
        "({} cells x {} runs in {:.1}s)\n",
        report.cells.len(),
        runs,
        started.elapsed().as_secs_f64()
    );
    println!("{}", cost());
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, json).expect("write the JSON report");
    println!("JSON report: {out}");
}

/// Cost of one metric's update, and the state's size.
fn cost() -> String {
    let mut lines = vec!["cost:".to_string()];
    // The count test alone (ratio and slow-request metrics).
    let mut t = CountTest::new(1.5);
    let n = 200_000;
    let start = Instant::now();
    for i in 0..n {
        let c = (i % 7) as f64;
        t.update(c, 1000.0, 3.0, 1000.0, None);
    }
    let per = start.elapsed().as_secs_f64() / n as f64 * 1e6;
    lines.push(format!("  count test update: {per:.2} µs"));
    let start = Instant::now();
    let k = 20_000;
    for _ in 0..k {
        std::hint::black_box(t.summary(0.0125));
    }
    let per_summary = start.elapsed().as_secs_f64() / k as f64 * 1e6;
    lines.push(format!(
        "  count test summary (estimate + interval): {per_summary:.2} µs"
    ));
    // A whole interval of the benchmark rule set (4 metrics, 3 instances per arm), through
    // judge::update, divided by the metric count.
    let rules = corpus::sequential_rules();
    let run = corpus::simulate(Scenario::Calm, Traffic::High, 1);
    let reps = 200;
    let start = Instant::now();
    let mut state = JudgeState::new(&rules);
    for r in 0..reps {
        let data = &run.intervals[r % run.intervals.len()];
        let (s, v) = update(&rules, state, data);
        std::hint::black_box(v);
        state = s;
    }
    let per_metric = start.elapsed().as_secs_f64() / (reps * rules.metrics.len()) as f64 * 1e6;
    lines.push(format!(
        "  judge::update per metric per interval (sequential, 3 instances per arm, with verdicts): {per_metric:.1} µs"
    ));
    let json = serde_json::to_string(&state).expect("state serialises");
    lines.push(format!(
        "  judge state: {} bytes as JSON for {} metrics ({:.0} bytes per metric)",
        json.len(),
        rules.metrics.len(),
        json.len() as f64 / rules.metrics.len() as f64
    ));
    lines.push(format!(
        "  count test in memory: {} bytes",
        std::mem::size_of::<CountTest>() + canaryd::judge::count::GRID_LEN * 8
    ));
    lines.join("\n")
}
