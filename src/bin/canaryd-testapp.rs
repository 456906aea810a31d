//! `canaryd-testapp`: the demo's service and the integration tests' service.
//!
//! Two sub-commands:
//!
//! * `serve`: a tiny HTTP service with a tunable latency / error / CPU / memory profile that can
//!   be changed at run time through `/admin/fault`, exposing Prometheus metrics on `/metrics`.
//! * `load`: an open-loop load generator (fixed request schedule, bounded in-flight requests).
//!
//! Endpoints of `serve`:
//!
//! | method, path | behaviour |
//! |---|---|
//! | `GET /health` | `200 ok` (not counted in metrics) |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `GET /admin/fault` | current fault settings as JSON |
//! | `PUT`/`POST /admin/fault` | partial JSON update; `422` naming the field on invalid input |
//! | `GET`/`HEAD` anything else | the "application": latency, CPU burn, leak, 200 or 500, body `NAME\n` |
//!
//! Histogram bucket edges: `0.005 * 1.1^k` computed by repeated `f64` multiplication, each edge
//! then rounded to 6 significant digits (`format!("{:.5e}")` parsed back to `f64`) and printed
//! with `{}` (shortest round-trip form, e.g. `0.0055`, `0.00605`, `0.0073205`). The rounded value
//! is also the one used for bucketing, so what is printed is exactly the bucket's bound. The last
//! finite edge is the first (rounded) one `>= 10`; then `+Inf`. 81 finite edges in total.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::{Parser, Subcommand};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "canaryd-testapp",
    about = "Test service and load generator for canaryd demos and integration tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the test application.
    Serve(ServeArgs),
    /// Generate open-loop HTTP load against a URL.
    Load(LoadArgs),
}

#[derive(clap::Args, Debug)]
#[command(allow_negative_numbers = true)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8081 (port 0 picks a free port; the
    /// `listening on` line reports the real one).
    #[arg(long)]
    listen: SocketAddr,
    /// Name returned in response bodies and in `testapp_info{name=..}`.
    #[arg(long)]
    name: String,
    /// Median latency in milliseconds (before the multiplier).
    #[arg(long, default_value_t = 20.0)]
    median_ms: f64,
    /// Log-standard deviation of the lognormal latency.
    #[arg(long, default_value_t = 0.5)]
    sigma: f64,
    /// Probability (0..=1) of answering 500.
    #[arg(long, default_value_t = 0.001)]
    error_rate: f64,
    /// Multiplier applied to the median latency.
    #[arg(long, default_value_t = 1.0)]
    latency_multiplier: f64,
    /// Microseconds of busy-loop CPU burned per request.
    #[arg(long, default_value_t = 0)]
    cpu_burn_us: u64,
    /// Bytes leaked (kept forever, touched) per request.
    #[arg(long, default_value_t = 0)]
    leak_bytes_per_request: u64,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// URL to request (GET).
    #[arg(long)]
    url: String,
    /// Requests per second (may be fractional, e.g. 0.5).
    #[arg(long)]
    rps: f64,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Maximum number of requests in flight; a scheduled request finding none free is dropped.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let res = match cli.cmd {
        Cmd::Serve(a) => rt.block_on(serve(a)),
        Cmd::Load(a) => rt.block_on(load(a)),
    };
    if let Err(e) = res {
        eprintln!("canaryd-testapp: error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fault settings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Fault {
    median_ms: f64,
    sigma: f64,
    error_rate: f64,
    latency_multiplier: f64,
    cpu_burn_us: u64,
    leak_bytes_per_request: u64,
}

impl Fault {
    fn validate(&self) -> Result<(), String> {
        for (field, v) in [
            ("median_ms", self.median_ms),
            ("sigma", self.sigma),
            ("error_rate", self.error_rate),
            ("latency_multiplier", self.latency_multiplier),
        ] {
            if !v.is_finite() {
                return Err(format!("{field} must be a finite number, got {v}"));
            }
            if v < 0.0 {
                return Err(format!("{field} must be >= 0, got {v}"));
            }
        }
        if self.error_rate > 1.0 {
            return Err(format!(
                "error_rate must be between 0 and 1, got {}",
                self.error_rate
            ));
        }
        Ok(())
    }

    /// Apply a partial JSON update; returns the new settings or a message naming the field.
    fn patched(&self, patch: &Value) -> Result<Fault, String> {
        let obj = patch
            .as_object()
            .ok_or_else(|| "expected a JSON object of fault fields".to_string())?;
        let mut f = *self;
        for (k, v) in obj {
            match k.as_str() {
                "median_ms" => f.median_ms = json_f64(k, v)?,
                "sigma" => f.sigma = json_f64(k, v)?,
                "error_rate" => f.error_rate = json_f64(k, v)?,
                "latency_multiplier" => f.latency_multiplier = json_f64(k, v)?,
                "cpu_burn_us" => f.cpu_burn_us = json_u64(k, v)?,
                "leak_bytes_per_request" => f.leak_bytes_per_request = json_u64(k, v)?,
                other => {
                    return Err(format!(
                        "unknown field `{other}` (expected one of median_ms, sigma, error_rate, \
                         latency_multiplier, cpu_burn_us, leak_bytes_per_request)"
                    ));
                }
            }
        }
        f.validate()?;
        Ok(f)
    }
}

fn json_f64(field: &str, v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("{field} must be a number, got {v}"))
}

fn json_u64(field: &str, v: &Value) -> Result<u64, String> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x < u64::MAX as f64 => Ok(x as u64),
        _ => Err(format!("{field} must be a non-negative integer, got {v}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Finite bucket edges (see the module docs for the exact rule).
fn bucket_edges() -> Vec<f64> {
    let mut edges = Vec::new();
    let mut raw = 0.005_f64;
    loop {
        let e = round6(raw);
        edges.push(e);
        if e >= 10.0 {
            return edges;
        }
        raw *= 1.1;
    }
}

/// Round to 6 significant digits, deterministically (Rust's float formatting is exact).
fn round6(x: f64) -> f64 {
    format!("{x:.5e}").parse().expect("formatted float parses")
}

struct Metrics {
    edges: Vec<f64>,
    /// Non-cumulative counts, one per finite edge plus one for `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
}

impl Metrics {
    fn new() -> Self {
        let edges = bucket_edges();
        let buckets = (0..=edges.len()).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            edges,
            buckets,
            sum_ns: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
        }
    }

    fn observe(&self, code: u16, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = self.edges.partition_point(|&e| e < secs); // first edge >= secs (le semantics)
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        if code >= 500 {
            self.err.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct ProcStats {
    cpu_seconds: Option<f64>,
    rss_bytes: Option<u64>,
}

fn proc_stats() -> ProcStats {
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_proc_stat_cpu(&s));
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096);
    ProcStats {
        cpu_seconds,
        rss_bytes,
    }
}

/// utime + stime (fields 14 and 15) in seconds, assuming 100 clock ticks per second.
fn parse_proc_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces or parens; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so field n is f[n - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_metrics(m: &Metrics, name: &str, p: ProcStats, leaked_bytes: u64) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(8192);
    let _ = writeln!(
        s,
        "# HELP http_requests_total Application requests served, by status code."
    );
    let _ = writeln!(s, "# TYPE http_requests_total counter");
    let _ = writeln!(
        s,
        "http_requests_total{{code=\"200\"}} {}",
        m.ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        s,
        "http_requests_total{{code=\"500\"}} {}",
        m.err.load(Ordering::Relaxed)
    );

    let _ = writeln!(
        s,
        "# HELP http_request_duration_seconds Application request duration, from request start to response."
    );
    let _ = writeln!(s, "# TYPE http_request_duration_seconds histogram");
    let mut cum = 0u64;
    for (i, e) in m.edges.iter().enumerate() {
        cum += m.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "http_request_duration_seconds_bucket{{le=\"{e}\"}} {cum}"
        );
    }
    cum += m.buckets[m.edges.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        s,
        "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let sum = m.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(s, "http_request_duration_seconds_sum {sum}");
    let _ = writeln!(s, "http_request_duration_seconds_count {cum}");

    if let Some(cpu) = p.cpu_seconds {
        let _ = writeln!(
            s,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
        );
        let _ = writeln!(s, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(s, "process_cpu_seconds_total {cpu}");
    }
    if let Some(rss) = p.rss_bytes {
        let _ = writeln!(
            s,
            "# HELP process_resident_memory_bytes Resident memory size in bytes."
        );
        let _ = writeln!(s, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(s, "process_resident_memory_bytes {rss}");
    }
    let _ = writeln!(
        s,
        "# HELP testapp_leaked_bytes Bytes deliberately leaked so far."
    );
    let _ = writeln!(s, "# TYPE testapp_leaked_bytes gauge");
    let _ = writeln!(s, "testapp_leaked_bytes {leaked_bytes}");
    let _ = writeln!(s, "# HELP testapp_info Test application identity.");
    let _ = writeln!(s, "# TYPE testapp_info gauge");
    let _ = writeln!(s, "testapp_info{{name=\"{}\"}} 1", escape_label(name));
    s
}

// ---------------------------------------------------------------------------------------------
// Serve
// ---------------------------------------------------------------------------------------------

struct AppState {
    name: String,
    fault: RwLock<Fault>,
    metrics: Metrics,
}

static LEAK: LazyLock<Mutex<Vec<u8>>> = LazyLock::new(|| Mutex::new(Vec::new()));

fn leaked_bytes() -> u64 {
    LEAK.lock().map(|v| v.len() as u64).unwrap_or(0)
}

thread_local! {
    static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new({
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        SmallRng::seed_from_u64(h.finish())
    });
}

/// Standard normal deviate via Box–Muller.
fn std_normal<R: Rng>(r: &mut R) -> f64 {
    let u1: f64 = 1.0 - r.random::<f64>(); // (0, 1]
    let u2: f64 = r.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Lognormal latency with the given median (ms) and log-sd, capped at 60 s.
fn sample_latency_ms<R: Rng>(median_ms: f64, sigma: f64, r: &mut R) -> f64 {
    (median_ms * (sigma * std_normal(r)).exp()).clamp(0.0, 60_000.0)
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let fault = Fault {
        median_ms: a.median_ms,
        sigma: a.sigma,
        error_rate: a.error_rate,
        latency_multiplier: a.latency_multiplier,
        cpu_burn_us: a.cpu_burn_us,
        leak_bytes_per_request: a.leak_bytes_per_request,
    };
    fault
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid option: {e}"))?;
    let state = Arc::new(AppState {
        name: a.name.clone(),
        fault: RwLock::new(fault),
        metrics: Metrics::new(),
    });
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .route(
            "/admin/fault",
            get(get_fault).put(put_fault).post(put_fault),
        )
        .fallback(app_handler)
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", a.listen))?;
    let local = listener.local_addr()?;
    eprintln!("canaryd-testapp {}: listening on {local}", a.name);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            shutdown_signal().await;
            // Don't let slow in-flight requests or idle keep-alive peers hold us up for long.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                std::process::exit(0);
            });
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    let body = render_metrics(&st.metrics, &st.name, proc_stats(), leaked_bytes());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn current_fault(st: &AppState) -> Fault {
    *st.fault.read().unwrap_or_else(|e| e.into_inner())
}

async fn get_fault(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(current_fault(&st)).into_response()
}

async fn put_fault(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}\n")).into_response(),
    };
    let mut guard = st.fault.write().unwrap_or_else(|e| e.into_inner());
    match guard.patched(&patch) {
        Ok(f) => {
            *guard = f;
            drop(guard);
            axum::Json(f).into_response()
        }
        Err(msg) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{msg}\n")).into_response(),
    }
}

async fn app_handler(State(st): State<Arc<AppState>>, method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let start = Instant::now();
    let f = current_fault(&st);
    let (delay_ms, fail) = RNG.with_borrow_mut(|r| {
        (
            sample_latency_ms(f.median_ms * f.latency_multiplier, f.sigma, r),
            r.random::<f64>() < f.error_rate,
        )
    });
    if delay_ms > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(delay_ms / 1000.0)).await;
    }
    if f.cpu_burn_us > 0 {
        let us = f.cpu_burn_us;
        let _ = tokio::task::spawn_blocking(move || burn_cpu(Duration::from_micros(us))).await;
    }
    if f.leak_bytes_per_request > 0 {
        let n = f.leak_bytes_per_request.min(usize::MAX as u64) as usize;
        if let Ok(mut v) = LEAK.lock() {
            // Non-zero bytes so the pages are really touched and show up in RSS.
            v.extend(std::iter::repeat_n(0xA5u8, n));
        }
    }
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    st.metrics.observe(status.as_u16(), start.elapsed());
    (status, format!("{}\n", st.name)).into_response()
}

fn burn_cpu(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for i in 0..256u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct LoadCounters {
    sent: AtomicU64,
    ok: AtomicU64,
    e5xx: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct LoadSnapshot {
    sent: u64,
    ok: u64,
    e5xx: u64,
    other: u64,
    errors: u64,
    dropped: u64,
}

impl LoadCounters {
    fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            e5xx: self.e5xx.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

impl LoadSnapshot {
    fn minus(&self, o: &LoadSnapshot) -> LoadSnapshot {
        LoadSnapshot {
            sent: self.sent - o.sent,
            ok: self.ok - o.ok,
            e5xx: self.e5xx - o.e5xx,
            other: self.other - o.other,
            errors: self.errors - o.errors,
            dropped: self.dropped - o.dropped,
        }
    }
    fn line(&self) -> String {
        format!(
            "sent={} ok={} 5xx={} other={} errors={} dropped={}",
            self.sent, self.ok, self.e5xx, self.other, self.errors, self.dropped
        )
    }
}

async fn load(a: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rps.is_finite() && a.rps > 0.0,
        "--rps must be a positive number, got {}",
        a.rps
    );
    anyhow::ensure!(a.concurrency > 0, "--concurrency must be > 0");
    if let Some(d) = a.duration_secs {
        anyhow::ensure!(d.is_finite() && d >= 0.0, "--duration-secs must be >= 0");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy() // loopback targets; never route through an environment proxy
        .build()?;
    let counters = Arc::new(LoadCounters::default());
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    eprintln!(
        "canaryd-testapp load: {} at {} req/s (concurrency {}, duration {})",
        a.url,
        a.rps,
        a.concurrency,
        a.duration_secs
            .map(|d| format!("{d}s"))
            .unwrap_or_else(|| "unbounded".into())
    );
    let start = tokio::time::Instant::now();
    let reporter = spawn_reporter(counters.clone(), start);
    let end = a.duration_secs.map(|d| start + Duration::from_secs_f64(d));
    let schedule = send_at_rate(a.rps, start, end, || {
        try_send(&client, &a.url, &counters, &sem)
    });
    let interrupted = tokio::select! {
        _ = schedule => false,
        _ = shutdown_signal() => true,
    };
    if !interrupted {
        // Let in-flight requests finish (they time out after 10 s anyway).
        let _ = tokio::time::timeout(
            Duration::from_secs(11),
            sem.acquire_many(a.concurrency as u32),
        )
        .await;
    }
    reporter.abort();
    eprintln!(
        "load: done after {:.1}s total: {}",
        start.elapsed().as_secs_f64(),
        counters.snapshot().line()
    );
    Ok(())
}

/// Prints what the last 5 s of load came to, every 5 s.
fn spawn_reporter(
    counters: Arc<LoadCounters>,
    start: tokio::time::Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut prev = LoadSnapshot::default();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(5), Duration::from_secs(5));
        loop {
            tick.tick().await;
            let now = counters.snapshot();
            eprintln!(
                "load: t={:.0}s last 5s: {}",
                start.elapsed().as_secs_f64(),
                now.minus(&prev).line()
            );
            prev = now;
        }
    })
}

/// Calls `send` at a fixed rate from `start` — the k-th call at k/rps, an open-loop schedule,
/// so a slow target does not slow the load down — until `end`, which it waits for.
async fn send_at_rate(
    rps: f64,
    start: tokio::time::Instant,
    end: Option<tokio::time::Instant>,
    mut send: impl FnMut(),
) {
    let mut k: u64 = 0;
    loop {
        let at = start + Duration::from_secs_f64(k as f64 / rps);
        if let Some(end) = end
            && at >= end
        {
            tokio::time::sleep_until(end).await;
            break;
        }
        tokio::time::sleep_until(at).await;
        k += 1;
        send();
    }
}

/// Sends one request when a connection is free (counting how it went), else counts it as
/// dropped.
fn try_send(
    client: &reqwest::Client,
    url: &str,
    counters: &Arc<LoadCounters>,
    sem: &Arc<tokio::sync::Semaphore>,
) {
    let Ok(permit) = sem.clone().try_acquire_owned() else {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counters.sent.fetch_add(1, Ordering::Relaxed);
    let (client, counters, url) = (client.clone(), counters.clone(), url.to_string());
    tokio::spawn(async move {
        let _permit = permit;
        let res = async {
            let resp = client.get(&url).send().await?;
            let status = resp.status();
            resp.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        }
        .await;
        let c = match res {
            Ok(s) if s.is_success() => &counters.ok,
            Ok(s) if s.is_server_error() => &counters.e5xx,
            Ok(_) => &counters.other,
            Err(_) => &counters.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    });
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Fault {
        Fault {
            median_ms: 20.0,
            sigma: 0.5,
            error_rate: 0.001,
            latency_multiplier: 1.0,
            cpu_burn_us: 0,
            leak_bytes_per_request: 0,
        }
    }

    #[test]
    fn bucket_edges_are_exponential_and_end_at_first_edge_at_least_10s() {
        let e = bucket_edges();
        assert_eq!(e[0], 0.005);
        assert_eq!(e[1], 0.0055);
        assert_eq!(e[2], 0.00605);
        assert_eq!(e[3], 0.006655);
        assert_eq!(e[4], 0.0073205);
        assert_eq!(e.len(), 81);
        let last = *e.last().unwrap();
        assert!(
            last >= 10.0 && e[e.len() - 2] < 10.0,
            "last edges {:?}",
            &e[e.len() - 3..]
        );
        for w in e.windows(2) {
            let ratio = w[1] / w[0];
            assert!((ratio - 1.1).abs() < 1e-5, "ratio {ratio} between {w:?}");
        }
        for x in &e {
            // Printed form is short and parses back to the very same value.
            let s = format!("{x}");
            assert!(s.len() <= 12, "{s}");
            assert_eq!(s.parse::<f64>().unwrap(), *x);
            assert_eq!(round6(*x), *x);
        }
        // Deterministic.
        assert_eq!(e, bucket_edges());
    }

    #[test]
    fn fault_patch_updates_only_given_fields() {
        let f = defaults()
            .patched(&json!({"error_rate": 0.5, "cpu_burn_us": 200}))
            .unwrap();
        assert_eq!(f.error_rate, 0.5);
        assert_eq!(f.cpu_burn_us, 200);
        assert_eq!(f.median_ms, 20.0);
        assert_eq!(f.sigma, 0.5);
        // integral floats accepted for integer fields
        let f = defaults()
            .patched(&json!({"leak_bytes_per_request": 1024.0}))
            .unwrap();
        assert_eq!(f.leak_bytes_per_request, 1024);
        let f = defaults().patched(&json!({})).unwrap();
        assert_eq!(f, defaults());
        let f = defaults().patched(&json!({"error_rate": 1})).unwrap();
        assert_eq!(f.error_rate, 1.0);
    }

    #[test]
    fn fault_patch_rejects_invalid_values_naming_the_field() {
        let cases = [
            (json!({"median_ms": -1}), "median_ms"),
            (json!({"sigma": -0.1}), "sigma"),
            (json!({"error_rate": 1.5}), "error_rate"),
            (json!({"error_rate": -0.5}), "error_rate"),
            (json!({"latency_multiplier": "x"}), "latency_multiplier"),
            (json!({"cpu_burn_us": -5}), "cpu_burn_us"),
            (
                json!({"leak_bytes_per_request": 1.5}),
                "leak_bytes_per_request",
            ),
            (json!({"bogus": 1}), "bogus"),
            (json!({"median_ms": null}), "median_ms"),
        ];
        for (patch, field) in cases {
            let err = defaults().patched(&patch).unwrap_err();
            assert!(err.contains(field), "{patch}: {err}");
        }
        assert!(defaults().patched(&json!([1])).is_err());
        let mut f = defaults();
        f.sigma = f64::NAN;
        assert!(f.validate().unwrap_err().contains("sigma"));
        f = defaults();
        f.median_ms = f64::INFINITY;
        assert!(f.validate().unwrap_err().contains("median_ms"));
    }

    #[test]
    fn fault_json_has_expected_fields() {
        let v = serde_json::to_value(defaults()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        for k in [
            "median_ms",
            "sigma",
            "error_rate",
            "latency_multiplier",
            "cpu_burn_us",
            "leak_bytes_per_request",
        ] {
            assert!(keys.contains(&k), "{k} missing in {v}");
        }
        assert_eq!(keys.len(), 6);
    }

    #[test]
    fn metrics_rendering() {
        let m = Metrics::new();
        m.observe(200, Duration::from_millis(3)); // first bucket
        m.observe(200, Duration::from_micros(5500)); // exactly on the 0.0055 edge
        m.observe(500, Duration::from_millis(100));
        m.observe(200, Duration::from_secs(30)); // +Inf only
        let p = ProcStats {
            cpu_seconds: Some(1.25),
            rss_bytes: Some(4096 * 10),
        };
        let s = render_metrics(&m, "v\"1", p, 7);
        assert!(s.contains("# TYPE http_requests_total counter\n"));
        assert!(s.contains("http_requests_total{code=\"200\"} 3\n"));
        assert!(s.contains("http_requests_total{code=\"500\"} 1\n"));
        assert!(s.contains("# TYPE http_request_duration_seconds histogram\n"));
        assert!(s.contains("http_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(s.contains("http_request_duration_seconds_bucket{le=\"0.0055\"} 2\n"));
        assert!(s.contains("http_request_duration_seconds_bucket{le=\"0.00605\"} 2\n"));
        assert!(s.contains("http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(s.contains("http_request_duration_seconds_count 4\n"));
        assert!(
            s.contains("http_request_duration_seconds_sum 30.1085\n"),
            "{s}"
        );
        assert!(s.contains("process_cpu_seconds_total 1.25\n"));
        assert!(s.contains("process_resident_memory_bytes 40960\n"));
        assert!(s.contains("testapp_leaked_bytes 7\n"));
        assert!(s.contains("testapp_info{name=\"v\\\"1\"} 1\n"));
        // Buckets are cumulative and monotone; 81 finite + Inf.
        let counts: Vec<u64> = s
            .lines()
            .filter(|l| l.starts_with("http_request_duration_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), 82);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        // 0.1 s falls in the first bucket whose edge is >= 0.1
        let first_with_3 = s
            .lines()
            .find(|l| l.starts_with("http_request_duration_seconds_bucket") && l.ends_with(" 3"))
            .unwrap();
        let le: f64 = first_with_3.split('"').nth(1).unwrap().parse().unwrap();
        assert!(le >= 0.1 && le / 1.1 < 0.1, "{first_with_3}");
        // Every sample line has a TYPE for its family.
        for l in s.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let fam = name
                .strip_suffix("_bucket")
                .or(name.strip_suffix("_sum"))
                .or(name.strip_suffix("_count"))
                .filter(|f| s.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(s.contains(&format!("# TYPE {fam} ")), "no TYPE for {l}");
        }
        // Both codes printed even when zero.
        let empty = render_metrics(&Metrics::new(), "x", ProcStats::default(), 0);
        assert!(empty.contains("http_requests_total{code=\"200\"} 0\n"));
        assert!(empty.contains("http_requests_total{code=\"500\"} 0\n"));
    }

    #[test]
    fn proc_stat_parsing() {
        let line =
            "1234 (canaryd (test) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_proc_stat_cpu(line), Some(3.0));
        let real = proc_stats();
        assert!(real.cpu_seconds.is_some() && real.rss_bytes.unwrap() > 0);
    }

    #[test]
    fn lognormal_median_is_about_right() {
        let mut r = SmallRng::seed_from_u64(7);
        let mut xs: Vec<f64> = (0..20_001)
            .map(|_| sample_latency_ms(20.0, 0.5, &mut r))
            .collect();
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = xs[10_000];
        assert!((med - 20.0).abs() < 1.0, "median {med}");
        assert!(xs.iter().all(|x| *x > 0.0));
        assert_eq!(sample_latency_ms(0.0, 0.5, &mut r), 0.0);
    }

    /// The load generator's schedule is open-loop and exact: at 20 req/s for 1.5 s it sends 30
    /// requests, the k-th at k/20 s, and returns at the end even though no request is due then.
    #[tokio::test(start_paused = true)]
    async fn load_schedule_sends_at_a_fixed_rate_until_the_end() {
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_millis(1500);
        let mut sent_at = Vec::new();
        send_at_rate(20.0, start, Some(end), || sent_at.push(start.elapsed())).await;
        // The timer wheel counts whole milliseconds.
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= 1.0;
        assert_eq!(sent_at.len(), 30);
        for (k, at) in sent_at.iter().enumerate() {
            assert!(near(*at, k as f64 * 50.0), "request {k} sent at {at:?}");
        }
        assert!(
            near(start.elapsed(), 1500.0),
            "ended at {:?}",
            start.elapsed()
        );
    }
}
