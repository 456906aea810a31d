//! A whole canary stack for end-to-end tests: baseline and canary test apps behind a real
//! HAProxy, a real Prometheus scraping both, a load generator through HAProxy, and the real
//! `canaryd` daemon as a child process (so it can be killed with SIGKILL).
#![allow(dead_code)]

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tempfile::TempDir;

/// Path of the `canaryd` binary cargo built for this test run.
pub fn canaryd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_canaryd"))
}

/// Rules used by the end-to-end tests: errors and latency (CPU from 10 ms ticks over a few
/// seconds is too coarse to judge at test speed; the gauge test lives in the judge's tests).
pub const E2E_RULES: &str = r#"name: http-golden
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
"#;

/// The daemon as a child process.
pub struct Canaryd {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub url: String,
    pub addr: String,
    proc: Option<ChildProc>,
}

impl Canaryd {
    /// Writes `config` to `dir/canaryd.toml` and starts `canaryd serve` in `dir`.
    pub fn start(dir: &Path, config: &str, addr: &str) -> Canaryd {
        let config_path = dir.join("canaryd.toml");
        std::fs::write(&config_path, config).expect("write canaryd.toml");
        let mut c = Canaryd {
            dir: dir.to_path_buf(),
            config_path,
            url: format!("http://{addr}"),
            addr: addr.to_string(),
            proc: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(canaryd_bin());
        cmd.current_dir(&self.dir)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info");
        let mut proc = ChildProc::spawn("canaryd", cmd, &self.dir.join("canaryd.log"));
        let addr = self.addr.clone();
        if let Err(e) = proc.wait_ready(START_DEADLINE, || {
            http_get_blocking(&addr, "/readyz").is_some_and(|(s, _)| s == 200)
        }) {
            proc.fail(&e);
        }
        self.proc = Some(proc);
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let p = self.proc.take().expect("running");
        let pid = p.pid().expect("pid");
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill -TERM");
        let mut p = p;
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while p.is_running() {
            assert!(
                std::time::Instant::now() < end,
                "canaryd did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // is_running reaped it; report success if the log says it stopped cleanly.
        assert!(
            p.log().contains("Stopped"),
            "no clean stop in log:\n{}",
            p.log()
        );
        std::process::ExitStatus::default()
    }

    /// Starts again with the same config and store.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("canaryd.log")).unwrap_or_default()
    }

    /// Runs `canaryd ARGS --server URL` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(canaryd_bin())
            .current_dir(&self.dir)
            .args(args)
            .arg("--server")
            .arg(&self.url)
            .output()
            .expect("run canaryd CLI")
    }

    /// Starts `canaryd submit SPEC --wait` in the background; stdout goes to `submit.log`.
    pub fn submit_wait(&self, spec: &Path) -> ChildProc {
        let mut cmd = Command::new(canaryd_bin());
        cmd.current_dir(&self.dir)
            .arg("submit")
            .arg(spec)
            .arg("--wait")
            .arg("--server")
            .arg(&self.url);
        ChildProc::spawn("canaryd submit", cmd, &self.dir.join("submit.log"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = http_client()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET canaryd");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = http_client()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST canaryd");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The canary's event kinds, in order.
    pub async fn event_kinds(&self, id: i64) -> Vec<String> {
        let (_, v) = self.get(&format!("/api/v1/canaries/{id}/events")).await;
        v["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["kind"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn events(&self, id: i64) -> Vec<Value> {
        let (_, v) = self.get(&format!("/api/v1/canaries/{id}/events")).await;
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until canary `id` reaches a terminal phase; returns its view.
    pub async fn wait_finished(&self, id: i64, deadline: Duration) -> Value {
        poll_until(deadline, &format!("canary {id} to finish"), || async move {
            let (_, v) = self.get(&format!("/api/v1/canaries/{id}")).await;
            let phase = v["phase"].as_str().unwrap_or("");
            matches!(phase, "succeeded" | "rolled_back" | "aborted" | "failed").then_some(v)
        })
        .await
    }
}

/// Options of a stack.
pub struct StackOptions {
    pub interval: &'static str,
    pub steps: &'static str,
    pub max_duration: &'static str,
    pub failure_limit: u32,
    pub rps: f64,
    pub rules: &'static str,
    /// The spec's environment.
    pub environment: &'static str,
    /// Appended to canaryd.toml (extra sections).
    pub extra_config: String,
    /// Appended to the spec (extra top-level fields).
    pub spec_extra: String,
    /// The load balancer in front of the apps, and canaryd's router kind.
    pub router: RouterKind,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            interval: "3s",
            steps: "[20, 50, 100]",
            max_duration: "15s",
            failure_limit: 5,
            rps: 60.0,
            rules: E2E_RULES,
            environment: "staging",
            extra_config: String::new(),
            spec_extra: String::new(),
            router: RouterKind::Haproxy,
        }
    }
}

/// Everything a canary needs, on loopback.
pub struct Stack {
    pub v1: TestApp,
    pub v2: TestApp,
    /// The load balancer (of `opts.router`'s kind; HAProxy unless chosen otherwise).
    pub haproxy: Lb,
    pub prometheus: Prometheus,
    pub load: Load,
    pub canaryd: Canaryd,
    pub spec_path: PathBuf,
    pub opts: StackOptions,
    dir: TempDir,
}

pub const BACKEND: &str = "be_checkout";

impl Stack {
    /// Starts everything; the canary's test app gets `canary_args` (e.g. a fault).
    pub async fn start(opts: StackOptions, canary_args: &[&str]) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("canaryd-e2e-")
            .tempdir()
            .expect("tempdir");
        let v1 = TestApp::start("v1", &["--error-rate", "0.002"]);
        let mut v2_args = canary_args.to_vec();
        if !canary_args.contains(&"--error-rate") {
            v2_args.extend_from_slice(&["--error-rate", "0.002"]);
        }
        let v2 = TestApp::start("v2", &v2_args);
        let haproxy = Lb::start(
            opts.router,
            BACKEND,
            &[("checkout-v1", &v1.addr, 100), ("checkout-v2", &v2.addr, 0)],
        );
        haproxy.wait_ready();
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
        let load = Load::start(&haproxy.frontend_url(), opts.rps);
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&rules_dir).unwrap();
        std::fs::write(rules_dir.join("rules.yaml"), opts.rules).unwrap();
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
[analysis]
failure_limit = {limit}
[routers.edge]
{router}
{extra}
"#,
            prom = prometheus.url,
            limit = opts.failure_limit,
            router = haproxy.router_toml(),
            extra = opts.extra_config,
        );
        let canaryd = Canaryd::start(dir.path(), &config, &addr);
        let rules_name = opts
            .rules
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("name: "))
            .unwrap_or("http-golden")
            .to_string();
        let spec = format!(
            r#"service: checkout
environment: {environment}
router: edge
target: {{backend: {BACKEND}, baseline: [checkout-v1], canary: [checkout-v2]}}
labels: {{service: checkout}}
baseline_labels: {{version: v1}}
canary_labels: {{version: v2}}
rules: {rules_name}
strategy: {{steps: {steps}, interval: {interval}, max_duration: {max}}}
metadata: {{commit: 3f2a9c1, author: e2e}}
{spec_extra}
"#,
            environment = opts.environment,
            spec_extra = opts.spec_extra,
            steps = opts.steps,
            interval = opts.interval,
            max = opts.max_duration,
        );
        let spec_path = dir.path().join("spec.yaml");
        std::fs::write(&spec_path, spec).unwrap();
        // Both arms must be in Prometheus (two scrapes, so rates exist) before a canary can be
        // judged.
        let p = &prometheus;
        poll_until(Duration::from_secs(30), "three scrapes of both versions", || async move {
            let q = r#"count by (version) (count_over_time(http_requests_total{service="checkout",code="200"}[1m]) >= 3)"#;
            p.query(q).await.ok().filter(|r| r.len() == 2)
        })
        .await;
        Stack {
            v1,
            v2,
            haproxy,
            prometheus,
            load,
            canaryd,
            spec_path,
            opts,
            dir,
        }
    }

    /// The canary server's share of the backend, from the load balancer's own weights.
    pub fn canary_share(&self) -> f64 {
        let c = self.haproxy.weight("checkout-v2") as f64;
        let b = self.haproxy.weight("checkout-v1") as f64;
        if c + b == 0.0 {
            0.0
        } else {
            100.0 * c / (c + b)
        }
    }

    /// Which app answered `n` requests through the load balancer: (v1, v2).
    pub fn split(&self, n: usize) -> (usize, usize) {
        let mut counts = (0, 0);
        for _ in 0..n {
            if let Some((_, body)) = http_get_blocking(&self.haproxy.frontend_addr(), "/") {
                match body.trim() {
                    "v1" => counts.0 += 1,
                    "v2" => counts.1 += 1,
                    _ => {}
                }
            }
        }
        counts
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Waits for a background `submit --wait` to exit; returns (exit code, stdout+stderr).
pub async fn finish_submit(mut proc: ChildProc, deadline: Duration) -> (i32, String) {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(code) = proc.exit_code() {
            return (code, proc.log());
        }
        if std::time::Instant::now() >= end {
            proc.fail("canaryd submit --wait did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
