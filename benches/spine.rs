//! Spine benchmark: measures (and prints, and writes to `target/bench-spine.json`) what the
//! spine costs and how fast it reacts, on real processes over loopback. It asserts nothing
//! beyond sanity.
//!
//! 1. Reaction time: a fault injected in a healthy canary at its 50% step (after the first
//!    analysis there, so the histogram warm-up is over) until HAProxy gives the canary weight 0.
//!    Prometheus scrapes every 1 s, the canary interval is 5 s. Aim: under one interval + two
//!    scrape intervals + 1 s = 8 s.
//! 2. Daemon memory (VmRSS) idle and with 100 active canaries on 100 backends.
//! 3. Daemon CPU per canary per interval over a 60 s window with the 100 canaries, and idle CPU.
//!
//! Run: `cargo bench --bench spine`. Knobs (environment): `SPINE_RUNS` (reaction runs, 5),
//! `SPINE_CANARIES` (100), `SPINE_WARMUP_SECS` (30), `SPINE_WINDOW_SECS` (60),
//! `SPINE_IDLE_SECS` (20), `SPINE_SKIP_REACTION=1`, `SPINE_SKIP_LOAD=1`.

#[path = "../tests/integration/support.rs"]
mod support;

#[path = "../tests/integration/stack.rs"]
mod stack;

use serde_json::{Value, json};
use stack::*;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// Canary interval of every canary here.
const INTERVAL_SECS: f64 = 5.0;
/// Prometheus scrape interval.
const SCRAPE_SECS: f64 = 1.0;
/// The reaction-time aim: one interval + two scrapes + 1 s.
const AIM_SECS: f64 = INTERVAL_SECS + 2.0 * SCRAPE_SECS + 1.0;
/// Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let started = Instant::now();
    println!("spine bench: canaryd = {}", canaryd_bin().display());
    let mut report = json!({
        "aim_secs": AIM_SECS,
        "interval_secs": INTERVAL_SECS,
        "scrape_interval_secs": SCRAPE_SECS,
    });

    let reaction = if env_flag("SPINE_SKIP_REACTION") {
        None
    } else {
        Some(reaction_bench(env_num("SPINE_RUNS", 5) as usize).await)
    };
    if let Some(r) = &reaction {
        report["reaction"] = r.to_json();
    }

    let load = if env_flag("SPINE_SKIP_LOAD") {
        None
    } else {
        Some(load_bench(env_num("SPINE_CANARIES", 100) as usize).await)
    };
    if let Some(l) = &load {
        report["load"] = l.to_json();
    }
    report["total_secs"] = json!(started.elapsed().as_secs_f64());

    print_table(reaction.as_ref(), load.as_ref());
    let out = target_dir().join("bench-spine.json");
    match std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).expect("report JSON"),
    ) {
        Ok(()) => println!("\nwrote {}", out.display()),
        Err(e) => println!("\ncannot write {}: {e}", out.display()),
    }
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
}

/// `target/`: the bench runs as `target/release/deps/spine-HASH`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|t| t.join("CACHEDIR.TAG").exists() || t.ends_with("target"))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The pid of the process whose command line contains `needle` (the daemon's unique config
/// path), found by scanning /proc/*/cmdline.
fn find_pid(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                    cmdline.contains(needle) && cmdline.contains(" serve ")
                })
                .unwrap_or(false)
        })
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// utime + stime + threads of /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15, num_threads 20.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    Some((utime + stime, threads))
}

/// CPU seconds `pid` used over `window` (scaled to exactly `window`), and VmRSS (MiB) sampled
/// every 5 s during it.
async fn cpu_over(pid: u32, window: Duration) -> (f64, Vec<f64>) {
    let (t0, _) = cpu_ticks(pid).expect("read /proc/PID/stat");
    let w0 = Instant::now();
    let mut rss = Vec::new();
    while w0.elapsed() < window {
        rss.push(status_mib(pid, "VmRSS").unwrap_or(f64::NAN));
        let left = window.saturating_sub(w0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
    }
    let (t1, _) = cpu_ticks(pid).expect("read /proc/PID/stat");
    let elapsed = w0.elapsed().as_secs_f64();
    (
        (t1 - t0) as f64 / TICKS_PER_SEC * (window.as_secs_f64() / elapsed),
        rss,
    )
}

// ---------------------------------------------------------------------------------------------
// Small statistics
// ---------------------------------------------------------------------------------------------

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().max_by(|a, b| a.total_cmp(b))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn parse_at(e: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(e["at"].as_str()?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn secs_between(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// 1. Reaction time
// ---------------------------------------------------------------------------------------------

/// One reaction run.
#[derive(Debug, Default)]
struct Run {
    /// Fault set → canary weight 0 in HAProxy (None: not reached, see `note`).
    reaction_secs: Option<f64>,
    /// Fault set → the `rolling_back` event (daemon clock).
    to_decision_secs: Option<f64>,
    /// Fault set → the end of the analysis window that was due next.
    to_next_window_end_secs: Option<f64>,
    /// Analyses (after the fault) up to and including the rollback.
    analyses_after_fault: usize,
    /// Metrics named in the rollback reasons.
    triggered: Vec<String>,
    /// The `rolling_back` message.
    message: String,
    /// Kind of the first analysis event at 50%.
    first_50_kind: String,
    /// Wait between seeing that analysis and injecting the fault.
    offset_secs: f64,
    /// Messages of the analyses after the fault that did not roll back.
    missed: Vec<String>,
    /// Anything that made the run unusable.
    note: Option<String>,
}

struct Reaction {
    runs: Vec<Run>,
}

impl Reaction {
    fn times(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.reaction_secs).collect()
    }

    fn to_json(&self) -> Value {
        let times = self.times();
        json!({
            "runs": self.runs.iter().map(|r| json!({
                "reaction_secs": r.reaction_secs,
                "fault_to_rolling_back_event_secs": r.to_decision_secs,
                "fault_to_next_window_end_secs": r.to_next_window_end_secs,
                "analyses_after_fault": r.analyses_after_fault,
                "triggered": r.triggered,
                "rolling_back_message": r.message,
                "first_analysis_at_50_kind": r.first_50_kind,
                "fault_offset_secs": r.offset_secs,
                "analyses_after_fault_without_rollback": r.missed,
                "note": r.note,
            })).collect::<Vec<_>>(),
            "median_secs": median(&times),
            "max_secs": max(&times),
            "aim_secs": AIM_SECS,
            "all_within_aim": !times.is_empty() && times.len() == self.runs.len()
                && times.iter().all(|t| *t < AIM_SECS),
        })
    }
}

async fn reaction_bench(runs: usize) -> Reaction {
    println!(
        "\n== 1. reaction time: {runs} runs (interval {INTERVAL_SECS} s, scrape {SCRAPE_SECS} s) =="
    );
    let mut out = Vec::new();
    for i in 1..=runs {
        let t = Instant::now();
        let offset = phase_offset(i - 1, runs);
        let run = reaction_run(offset).await;
        println!(
            "run {i}: reaction {} s (decision {} s after the fault, next window ended {} s after it, \
             {} analyses), triggered by [{}]{}  [{:.0} s wall]",
            fmt_opt(run.reaction_secs, 3),
            fmt_opt(run.to_decision_secs, 3),
            fmt_opt(run.to_next_window_end_secs, 3),
            run.analyses_after_fault,
            run.triggered.join(", "),
            run.note
                .as_deref()
                .map(|n| format!("  NOTE: {n}"))
                .unwrap_or_default(),
            t.elapsed().as_secs_f64()
        );
        for m in &run.missed {
            println!("       no rollback yet: {m}");
        }
        if !run.message.is_empty() {
            println!("       {}", run.message);
        }
        out.push(run);
    }
    Reaction { runs: out }
}

/// How long after seeing the first analysis at 50% run `i` (0-based) waits before the fault.
/// That analysis is seen about 1 s (the query delay) after its window ended, so the fault lands
/// `interval - 1 s - offset` before the next window ends. Offsets spread over `[0, interval -
/// 1.2 s]` sample that phase from "just after a window end" to "just before the next one";
/// `SPINE_PHASE_SPREAD=0` injects right away in every run.
fn phase_offset(i: usize, runs: usize) -> f64 {
    if std::env::var("SPINE_PHASE_SPREAD").is_ok_and(|v| v == "0") || runs < 2 {
        return 0.0;
    }
    (INTERVAL_SECS - 1.2) * i as f64 / (runs - 1) as f64
}

async fn reaction_run(offset_secs: f64) -> Run {
    let opts = StackOptions {
        interval: "5s",
        steps: "[20, 50, 100]",
        max_duration: "10m",
        failure_limit: 5,
        rps: 60.0,
        rules: E2E_RULES,
        ..Default::default()
    };
    let stack = Stack::start(opts, &[]).await;
    let mut run = Run::default();
    let yaml = std::fs::read_to_string(&stack.spec_path).expect("spec.yaml");
    let resp = http_client()
        .post(format!("{}/api/v1/canaries", stack.canaryd.url))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .expect("POST /api/v1/canaries");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "submit: {body}");
    let id = body["id"].as_i64().expect("canary id");

    // Wait for the first analysis at the 50% step: the histogram warm-up is over.
    let canaryd = &stack.canaryd;
    let first_50 = poll_until(
        Duration::from_secs(60),
        "the first analysis at the 50% step",
        || async move {
            let events = canaryd.events(id).await;
            if let Some(end) = events.iter().find(|e| {
                matches!(
                    e["kind"].as_str(),
                    Some("rolling_back" | "promoting" | "fail_safe" | "paused")
                )
            }) {
                return Some(Err(format!(
                    "healthy canary ended early: {} {}",
                    end["kind"], end["message"]
                )));
            }
            events
                .iter()
                .find(|e| {
                    matches!(
                        e["kind"].as_str(),
                        Some("analysis" | "analysis_inconclusive")
                    ) && e["data"]["weight"].as_f64() == Some(50.0)
                })
                .cloned()
                .map(Ok)
        },
    )
    .await;
    let first_50 = match first_50 {
        Ok(e) => e,
        Err(note) => {
            run.note = Some(note);
            return run;
        }
    };
    run.first_50_kind = first_50["kind"].as_str().unwrap_or("").to_string();
    run.offset_secs = offset_secs;
    tokio::time::sleep(Duration::from_secs_f64(offset_secs)).await;
    if let Some(end) = canaryd.events(id).await.iter().find(|e| {
        matches!(
            e["kind"].as_str(),
            Some("rolling_back" | "promoting" | "fail_safe" | "paused")
        )
    }) {
        run.note = Some(format!(
            "healthy canary ended before the fault: {} {}",
            end["kind"], end["message"]
        ));
        return run;
    }
    if stack.haproxy.weight("checkout-v2") == 0 {
        run.note = Some("canary weight already 0 before the fault".into());
        return run;
    }

    stack
        .v2
        .set_fault(json!({"latency_multiplier": 2.5, "error_rate": 0.1}))
        .await;
    let fault_at = Instant::now();
    let fault_wall = chrono::Utc::now();
    let deadline = fault_at + Duration::from_secs(60);
    loop {
        let w = tokio::task::block_in_place(|| stack.haproxy.weight("checkout-v2"));
        if w == 0 {
            run.reaction_secs = Some(fault_at.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            run.note = Some(format!("canary weight still {w} after 60 s"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Why and when, from the events.
    let events = poll_until(
        Duration::from_secs(10),
        "the rolling_back event",
        || async move {
            let events = canaryd.events(id).await;
            events
                .iter()
                .any(|e| e["kind"] == "rolling_back")
                .then_some(events)
        },
    )
    .await;
    if let Some(t) = parse_at(&first_50) {
        // The window that was due next after the fault. The first analysis at 50% was recorded
        // just after `due + 1 s` (the query delay), and the daemon queries at `due` truncated to
        // the whole second; later windows end one interval apart.
        let step = chrono::Duration::milliseconds((INTERVAL_SECS * 1000.0) as i64);
        let due = t - chrono::Duration::seconds(1);
        let mut next_end = chrono::DateTime::from_timestamp(due.timestamp(), 0).unwrap_or(due);
        while next_end <= fault_wall {
            next_end += step;
        }
        run.to_next_window_end_secs = Some(secs_between(fault_wall, next_end));
    }
    run.analyses_after_fault = events
        .iter()
        .filter(|e| {
            matches!(
                e["kind"].as_str(),
                Some("analysis" | "analysis_inconclusive")
            ) && parse_at(e).is_some_and(|t| t > fault_wall)
        })
        .count();
    run.missed = events
        .iter()
        .filter(|e| {
            matches!(
                e["kind"].as_str(),
                Some("analysis" | "analysis_inconclusive")
            ) && parse_at(e).is_some_and(|t| t > fault_wall)
                && e["data"]["verdict"]["decision"] != "rollback"
        })
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect();
    if let Some(rb) = events.iter().find(|e| e["kind"] == "rolling_back") {
        run.message = rb["message"].as_str().unwrap_or("").to_string();
        run.to_decision_secs = parse_at(rb).map(|t| secs_between(fault_wall, t));
        run.triggered = rb["data"]["reasons"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str())
                    .map(|r| r.split(':').next().unwrap_or(r).trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
    }
    if let Some(f) = events.iter().find(|e| e["kind"] == "fail_safe") {
        run.note = Some(format!("fail-safe acted: {}", f["message"]));
    }
    run
}

// ---------------------------------------------------------------------------------------------
// 2 + 3. Memory and CPU with many canaries
// ---------------------------------------------------------------------------------------------

/// An HAProxy with `n` backends `be_0..be_{n-1}`, each `v1` (weight 100) + `v2` (weight 0).
struct ManyBackends {
    runtime_addr: String,
    _proc: ChildProc,
    _dir: tempfile::TempDir,
}

fn runtime_cmd(addr: &str, cmd: &str) -> std::io::Result<String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

impl ManyBackends {
    fn start(n: usize, v1: &str, v2: &str) -> ManyBackends {
        let dir = tempfile::Builder::new()
            .prefix("haproxy-many-")
            .tempdir()
            .expect("tempdir");
        let runtime_port = free_port();
        let mut c = String::new();
        let _ = writeln!(c, "global");
        let _ = writeln!(
            c,
            "    stats socket ipv4@127.0.0.1:{runtime_port} level admin"
        );
        let _ = writeln!(c, "    stats timeout 30s");
        let _ = writeln!(c, "\ndefaults");
        let _ = writeln!(c, "    mode http");
        let _ = writeln!(c, "    timeout connect 2s");
        let _ = writeln!(c, "    timeout client 10s");
        let _ = writeln!(c, "    timeout server 10s");
        for i in 0..n {
            let _ = writeln!(c, "\nbackend be_{i}");
            let _ = writeln!(c, "    balance roundrobin");
            let _ = writeln!(c, "    server v1 {v1} weight 100");
            let _ = writeln!(c, "    server v2 {v2} weight 0");
        }
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, c).expect("write haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&config).arg("-db");
        let mut proc = ChildProc::spawn("haproxy (many backends)", cmd, &dir.path().join("log"));
        let runtime_addr = format!("127.0.0.1:{runtime_port}");
        let addr = runtime_addr.clone();
        if let Err(e) = proc.wait_ready(START_DEADLINE, || {
            runtime_cmd(&addr, "show info").is_ok_and(|r| r.contains("Pid:"))
        }) {
            proc.fail(&e);
        }
        ManyBackends {
            runtime_addr,
            _proc: proc,
            _dir: dir,
        }
    }

    /// `get weight be_i/v2` for every backend: how many canaries have weight > 0.
    fn canary_weights(&self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|i| {
                runtime_cmd(&self.runtime_addr, &format!("get weight be_{i}/v2"))
                    .ok()
                    .and_then(|r| r.split_whitespace().next()?.parse().ok())
                    .unwrap_or(u32::MAX)
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Resources {
    canaries: usize,
    submitted: usize,
    submit_secs: f64,
    idle_rss_mib: f64,
    idle_cpu_secs: f64,
    idle_window_secs: f64,
    threads_idle: u64,
    loaded_rss_mib: f64,
    loaded_rss_end_mib: f64,
    rss_samples_mib: Vec<f64>,
    peak_rss_mib: f64,
    threads_loaded: u64,
    window_secs: f64,
    window_cpu_secs: f64,
    intervals_nominal: f64,
    analyses_in_window: usize,
    inconclusive_in_window: usize,
    active_at_start: usize,
    active_at_end: usize,
    phases_at_end: Vec<(String, usize)>,
    canary_weight_histogram: Vec<(u32, usize)>,
    analysis_mean_secs: Option<f64>,
    query_errors: Vec<String>,
    router_errors: Vec<String>,
    warn_count: usize,
    error_count: usize,
    log_samples: Vec<String>,
}

impl Resources {
    fn cpu_per_canary_interval_ms(&self) -> f64 {
        1000.0 * self.window_cpu_secs / (self.canaries as f64 * self.intervals_nominal)
    }

    fn cpu_per_analysis_ms(&self) -> Option<f64> {
        (self.analyses_in_window > 0)
            .then(|| 1000.0 * self.window_cpu_secs / self.analyses_in_window as f64)
    }

    fn to_json(&self) -> Value {
        json!({
            "canaries": self.canaries,
            "submitted": self.submitted,
            "submit_secs": self.submit_secs,
            "idle": {
                "rss_mib": self.idle_rss_mib,
                "cpu_secs": self.idle_cpu_secs,
                "window_secs": self.idle_window_secs,
                "cpu_percent": 100.0 * self.idle_cpu_secs / self.idle_window_secs,
                "threads": self.threads_idle,
            },
            "loaded": {
                "rss_mib_after_warmup": self.loaded_rss_mib,
                "rss_mib_after_window": self.loaded_rss_end_mib,
                "rss_mib_every_5s_in_window": self.rss_samples_mib,
                "peak_rss_mib": self.peak_rss_mib,
                "threads": self.threads_loaded,
                "window_secs": self.window_secs,
                "cpu_secs": self.window_cpu_secs,
                "cpu_percent": 100.0 * self.window_cpu_secs / self.window_secs,
                "intervals_nominal": self.intervals_nominal,
                "cpu_ms_per_canary_interval": self.cpu_per_canary_interval_ms(),
                "analyses_in_window": self.analyses_in_window,
                "inconclusive_in_window": self.inconclusive_in_window,
                "cpu_ms_per_analysis": self.cpu_per_analysis_ms(),
                "active_at_window_start": self.active_at_start,
                "active_at_window_end": self.active_at_end,
                "phases_at_end": self.phases_at_end.iter().map(|(p, n)| json!({"phase": p, "count": n})).collect::<Vec<_>>(),
                "haproxy_canary_weights": self.canary_weight_histogram.iter().map(|(w, n)| json!({"weight": w, "backends": n})).collect::<Vec<_>>(),
                "analysis_duration_mean_secs": self.analysis_mean_secs,
                "query_errors": self.query_errors,
                "router_errors": self.router_errors,
            },
            "log": {
                "warn_lines": self.warn_count,
                "error_lines": self.error_count,
                "samples": self.log_samples,
            },
        })
    }
}

fn spec_json(i: usize) -> Value {
    json!({
        "service": format!("checkout-{i}"),
        "environment": "staging",
        "router": "edge",
        "target": {"backend": format!("be_{i}"), "baseline": ["v1"], "canary": ["v2"]},
        "labels": {"service": "checkout"},
        "baseline_labels": {"version": "v1"},
        "canary_labels": {"version": "v2"},
        "rules": "http-golden",
        "strategy": {"steps": [10, 20, 30, 40, 50, 100], "interval": "5s", "max_duration": "30m"},
        "metadata": {"bench": "spine"},
    })
}

async fn phases(canaryd: &Canaryd) -> Vec<(String, usize)> {
    let (_, list) = canaryd.get("/api/v1/canaries").await;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for v in list.as_array().cloned().unwrap_or_default() {
        *counts
            .entry(v["phase"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    counts.into_iter().collect()
}

fn active(phases: &[(String, usize)]) -> usize {
    phases
        .iter()
        .filter(|(p, _)| {
            !matches!(
                p.as_str(),
                "succeeded" | "rolled_back" | "aborted" | "failed"
            )
        })
        .map(|(_, n)| n)
        .sum()
}

/// The sample lines (one per label set) of metric family `name` in OpenMetrics text.
fn metric_lines(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A log message without the canary span's fields and numbers, to group similar lines.
fn group_key(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("canary{") {
        out.push_str(&rest[..start]);
        rest = match rest[start..].find('}') {
            Some(end) => &rest[start + end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out.chars()
        .filter(|c| !c.is_ascii_digit())
        .take(160)
        .collect()
}

/// Strips the timestamp and ANSI colours from a log line, so that equal messages compare equal.
fn log_key(line: &str) -> String {
    let mut clean = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            clean.push(c);
        }
    }
    let clean = clean.trim();
    // `2026-..Z  WARN ...`: drop the first word when it looks like a timestamp.
    match clean.split_once(char::is_whitespace) {
        Some((first, rest)) if first.starts_with("20") && first.contains('T') => {
            rest.trim().to_string()
        }
        _ => clean.to_string(),
    }
}

async fn load_bench(n: usize) -> Resources {
    let warmup = Duration::from_secs(env_num("SPINE_WARMUP_SECS", 30));
    let window = Duration::from_secs(env_num("SPINE_WINDOW_SECS", 60));
    let idle_window = Duration::from_secs(env_num("SPINE_IDLE_SECS", 20));
    println!(
        "\n== 2+3. memory and CPU: idle, then {n} active canaries (warm-up {} s, window {} s) ==",
        warmup.as_secs(),
        window.as_secs()
    );
    let dir = tempfile::Builder::new()
        .prefix("canaryd-bench-")
        .tempdir()
        .expect("tempdir");
    let v1 = TestApp::start("v1", &["--error-rate", "0.002"]);
    let v2 = TestApp::start("v2", &["--error-rate", "0.002"]);
    let haproxy = ManyBackends::start(n, &v1.addr, &v2.addr);
    let prometheus = Prometheus::start(
        "1s",
        &[
            ScrapeTarget::new(
                "checkout",
                &v1.addr,
                &[("service", "checkout"), ("version", "v1")],
            ),
            ScrapeTarget::new(
                "checkout",
                &v2.addr,
                &[("service", "checkout"), ("version", "v2")],
            ),
        ],
    );
    // Traffic straight to both apps (the weights of 100 backends cannot all steer one stream).
    let _load1 = support::Load::start(&v1.url, 30.0);
    let _load2 = support::Load::start(&v2.url, 30.0);
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::write(rules_dir.join("rules.yaml"), E2E_RULES).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"[server]
listen = "{addr}"
[store]
url = "sqlite://data/canaryd.db"
[prometheus]
url = "{prom}"
timeout = "2s"
[rules]
dir = "rules"
[routers.edge]
kind = "haproxy"
runtime_api = "{runtime}"
"#,
        prom = prometheus.url,
        runtime = haproxy.runtime_addr,
    );
    let canaryd = Canaryd::start(dir.path(), &config, &addr);
    let needle = canaryd.config_path.display().to_string();
    let pid = find_pid(&needle).expect("the canaryd process in /proc");
    prometheus
        .wait_for_series(
            r#"sum by (version) (http_requests_total{service="checkout"})"#,
            Duration::from_secs(30),
        )
        .await;

    let mut r = Resources {
        canaries: n,
        ..Default::default()
    };
    // Idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.idle_rss_mib = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    r.threads_idle = cpu_ticks(pid).map_or(0, |(_, t)| t);
    r.idle_window_secs = idle_window.as_secs_f64();
    r.idle_cpu_secs = cpu_over(pid, idle_window).await.0;
    println!(
        "idle: RSS {:.1} MiB, CPU {:.2} s over {} s ({} threads)",
        r.idle_rss_mib,
        r.idle_cpu_secs,
        idle_window.as_secs(),
        r.threads_idle
    );

    // 100 canaries.
    let t = Instant::now();
    for i in 0..n {
        let (status, body) = canaryd
            .post("/api/v1/canaries", &spec_json(i).to_string())
            .await;
        if status == 201 {
            r.submitted += 1;
        } else {
            println!("submit {i}: {status} {body}");
        }
    }
    r.submit_secs = t.elapsed().as_secs_f64();
    println!(
        "submitted {}/{n} canaries in {:.2} s",
        r.submitted, r.submit_secs
    );
    tokio::time::sleep(warmup).await;
    r.loaded_rss_mib = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    let p = phases(&canaryd).await;
    r.active_at_start = active(&p);
    println!(
        "after {} s: RSS {:.1} MiB, phases {p:?}",
        warmup.as_secs(),
        r.loaded_rss_mib
    );

    // CPU window.
    let w0 = chrono::Utc::now();
    r.window_secs = window.as_secs_f64();
    let (cpu, rss) = cpu_over(pid, window).await;
    r.window_cpu_secs = cpu;
    r.rss_samples_mib = rss;
    let w1 = chrono::Utc::now();
    r.intervals_nominal = window.as_secs_f64() / INTERVAL_SECS;
    r.loaded_rss_end_mib = status_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    r.peak_rss_mib = status_mib(pid, "VmHWM").unwrap_or(f64::NAN);
    r.threads_loaded = cpu_ticks(pid).map_or(0, |(_, t)| t);
    r.phases_at_end = phases(&canaryd).await;
    r.active_at_end = active(&r.phases_at_end);
    println!(
        "window: CPU {:.2} s over {} s; RSS {:.1} MiB (peak {:.1}); phases {:?}",
        r.window_cpu_secs,
        window.as_secs(),
        r.loaded_rss_end_mib,
        r.peak_rss_mib,
        r.phases_at_end
    );

    // Analyses actually done in the window, from every canary's events.
    for id in 1..=(n as i64) {
        for e in canaryd.events(id).await {
            let Some(at) = parse_at(&e) else { continue };
            if at < w0 || at > w1 {
                continue;
            }
            match e["kind"].as_str() {
                Some("analysis") => r.analyses_in_window += 1,
                Some("analysis_inconclusive") => {
                    r.analyses_in_window += 1;
                    r.inconclusive_in_window += 1;
                }
                _ => {}
            }
        }
    }
    let weights = haproxy.canary_weights(n);
    let mut hist: std::collections::BTreeMap<u32, usize> = Default::default();
    for w in weights {
        *hist.entry(w).or_default() += 1;
    }
    r.canary_weight_histogram = hist.into_iter().collect();

    // The daemon's own metrics.
    if let Some((200, text)) = http_get_blocking(&canaryd.addr, "/metrics") {
        let sum = metric_value(&text, "canaryd_analysis_duration_seconds_sum");
        let count = metric_value(&text, "canaryd_analysis_duration_seconds_count");
        r.analysis_mean_secs = match (sum, count) {
            (Some(s), Some(c)) if c > 0.0 => Some(s / c),
            _ => None,
        };
        // Only the non-zero counters.
        let nonzero = |l: &String| !l.ends_with(" 0");
        r.query_errors = metric_lines(&text, "canaryd_query_errors_total");
        r.query_errors.retain(nonzero);
        r.router_errors = metric_lines(&text, "canaryd_router_errors_total");
        r.router_errors.retain(nonzero);
    }

    // The daemon's log: WARN / ERROR lines, grouped by message.
    let log = canaryd.log();
    let mut groups: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let clean = log_key(line);
        let is_warn = clean.starts_with("WARN");
        let is_error = clean.starts_with("ERROR");
        if !is_warn && !is_error {
            continue;
        }
        if is_warn {
            r.warn_count += 1;
        } else {
            r.error_count += 1;
        }
        let key = group_key(&clean);
        match groups.iter_mut().find(|(k, _)| group_key(k) == key) {
            Some((_, c)) => *c += 1,
            None => groups.push((clean.chars().take(400).collect(), 1)),
        }
    }
    r.log_samples = groups
        .iter()
        .take(12)
        .map(|(k, c)| format!("{c}x {k}"))
        .collect();
    let log_copy = target_dir().join("bench-spine-canaryd.log");
    let _ = std::fs::write(&log_copy, &log);
    println!("daemon log copied to {}", log_copy.display());
    drop(canaryd);
    drop(haproxy);
    r
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn print_table(reaction: Option<&Reaction>, load: Option<&Resources>) {
    println!("\n================ canaryd spine bench ================");
    if let Some(r) = reaction {
        println!(
            "\nReaction time: fault in the canary at the 50% step -> canary weight 0 in HAProxy"
        );
        println!(
            "(interval {INTERVAL_SECS} s, scrape {SCRAPE_SECS} s; aim < {AIM_SECS} s = interval + 2 scrapes + 1 s)\n"
        );
        println!(
            "{:>4} {:>7} {:>12} {:>10} {:>12} {:>9}  {:<22} note",
            "run", "offset", "win. end in", "reaction", "to decision", "analyses", "triggered by",
        );
        for (i, run) in r.runs.iter().enumerate() {
            println!(
                "{:>4} {:>6.2}s {:>11}s {:>9}s {:>11}s {:>9}  {:<22} {}",
                i + 1,
                run.offset_secs,
                fmt_opt(run.to_next_window_end_secs, 2),
                fmt_opt(run.reaction_secs, 2),
                fmt_opt(run.to_decision_secs, 2),
                run.analyses_after_fault,
                run.triggered.join(", "),
                run.note.as_deref().unwrap_or("")
            );
        }
        let times = r.times();
        let (med, mx) = (median(&times), max(&times));
        println!(
            "\n  median {} s, max {} s over {}/{} completed runs -> {}",
            fmt_opt(med, 2),
            fmt_opt(mx, 2),
            times.len(),
            r.runs.len(),
            match mx {
                Some(m) if times.len() == r.runs.len() && m < AIM_SECS =>
                    format!("MEETS the aim (< {AIM_SECS} s)"),
                Some(_) => format!("MISSES the aim (< {AIM_SECS} s)"),
                None => "no data".into(),
            }
        );
        println!(
            "  offset = wait after seeing the first analysis at 50% before the fault\n  \
             win. end in = fault -> end of the next analysis window (due time truncated to the\n  \
             second; it is queried 1 s after due)\n  \
             reaction = fault -> HAProxy weight 0 (polled every 20 ms)\n  \
             to decision = fault -> rolling_back event (daemon clock)\n  \
             analyses = analyses from the fault to the rollback"
        );
    }
    if let Some(l) = load {
        println!(
            "\nDaemon resources ({} canaries on {} backends)\n",
            l.canaries, l.canaries
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "",
            "idle",
            format!("{} canaries", l.canaries)
        );
        println!(
            "{:<44} {:>14.1} {:>14.1}",
            "RSS (VmRSS, MiB)", l.idle_rss_mib, l.loaded_rss_mib
        );
        println!(
            "{:<44} {:>14} {:>14.1}",
            "RSS after the CPU window / peak (MiB)", "", l.loaded_rss_end_mib
        );
        println!(
            "{:<44} {:>14} {:>14.1}",
            "peak RSS (VmHWM, MiB)", "", l.peak_rss_mib
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "threads", l.threads_idle, l.threads_loaded
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "CPU window (s)", l.idle_window_secs, l.window_secs
        );
        println!(
            "{:<44} {:>14.2} {:>14.2}",
            "CPU used (s, utime+stime)", l.idle_cpu_secs, l.window_cpu_secs
        );
        println!(
            "{:<44} {:>13.2}% {:>13.2}%",
            "CPU (% of one core)",
            100.0 * l.idle_cpu_secs / l.idle_window_secs,
            100.0 * l.window_cpu_secs / l.window_secs
        );
        println!(
            "{:<44} {:>14} {:>14.2}",
            format!(
                "CPU ms per canary per interval (/{}x{})",
                l.canaries, l.intervals_nominal
            ),
            "",
            l.cpu_per_canary_interval_ms()
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "analyses in window (inconclusive)",
            "",
            format!("{} ({})", l.analyses_in_window, l.inconclusive_in_window)
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "CPU ms per analysis actually done",
            "",
            fmt_opt(l.cpu_per_analysis_ms(), 2)
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "mean analysis duration (daemon's histogram)",
            "",
            l.analysis_mean_secs
                .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0))
        );
        println!(
            "{:<44} {:>14} {:>14}",
            "active canaries at window start / end",
            "",
            format!("{} / {}", l.active_at_start, l.active_at_end)
        );
        println!(
            "  submitted {}/{} in {:.2} s",
            l.submitted, l.canaries, l.submit_secs
        );
        println!(
            "  RSS every 5 s in the window (MiB): {}",
            l.rss_samples_mib
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!("  phases at the end: {:?}", l.phases_at_end);
        println!(
            "  HAProxy canary weights (weight: backends): {:?}",
            l.canary_weight_histogram
        );
        for q in l.query_errors.iter().chain(&l.router_errors) {
            println!("  {q}");
        }
        println!(
            "\n  daemon log: {} WARN lines, {} ERROR lines",
            l.warn_count, l.error_count
        );
        for s in &l.log_samples {
            println!("    {s}");
        }
    }
}
