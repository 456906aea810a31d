//! Notification benchmark: prints (asserts nothing beyond sanity) what the outbox costs.
//!
//! 1. Outbox throughput: `NOTIFY_EVENTS` step events (default 2000) already in the store, the
//!    notification service started, and the time until a local HTTP receiver has every message;
//!    with one notifier (one lane), then with four (four lanes, same receiver). Includes
//!    dispatching (compose, route, enqueue with the cursor) and delivery (claim, render, POST,
//!    record), each row durable in SQLite (WAL, `synchronous = FULL`) before and after its POST.
//! 2. Added latency of a canary step: the controller's write of one step (a state transition
//!    with its event, the only thing it shares with notifications) timed `NOTIFY_STEPS` times
//!    (default 300): with notifications off, then while every step's notification goes to a
//!    webhook that never answers, then to a fast receiver.
//!
//! Run: `cargo bench --bench notify`.

use canaryd::config::Config;
use canaryd::judge::JudgeState;
use canaryd::lifecycle::{CanaryState, EventDraft, EventKind, Phase};
use canaryd::notify::Notifications;
use canaryd::rules::{RuleSource, parse_rule_set};
use canaryd::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const RULES: &str = "name: r\nmetrics:\n  - name: cpu\n    kind: gauge\n    query: 'x{ {{selector}} }'\n    max_increase: 50%\n";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

/// A receiver counting requests; `/hang` never answers.
async fn receiver() -> (Arc<AtomicUsize>, String) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let c = c.clone();
        async move {
            if uri.path().starts_with("/hang") {
                std::future::pending::<()>().await;
            }
            c.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (count, format!("http://{addr}"))
}

fn config(dir: &std::path::Path, notifiers: &[(&str, &str, String)]) -> Config {
    let mut text = format!(
        "[store]\nurl = \"sqlite://{}/c.db\"\n[notify]\ntimeout = \"2s\"\n",
        dir.display()
    );
    let mut names = Vec::new();
    for (name, kind, url) in notifiers {
        text += &format!("[notifiers.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n");
        names.push(format!("\"{name}\""));
    }
    if !names.is_empty() {
        text += &format!(
            "[[routes]]\nevents = [\"step\"]\nnotifiers = [{}]\n",
            names.join(", ")
        );
    }
    let path = dir.join("canaryd.toml");
    std::fs::write(&path, text).unwrap();
    let c = Config::load(&path).expect("config loads");
    c.validate().expect("config is valid");
    c
}

async fn canary(store: &Store) -> (i64, CanaryState) {
    let spec = canaryd::canary::spec::from_yaml(
        "service: bench\nenvironment: staging\nrouter: edge\ntarget: {backend: be, baseline: [a], canary: [b]}\ncanary_labels: {v: '2'}\nrules: r\nstrategy: {steps: [50, 100], interval: 10s}\n",
    )
    .unwrap();
    let rules = parse_rule_set("r.yaml", RULES).unwrap();
    let mut state = CanaryState::new(JudgeState::new(&rules));
    let id = store
        .insert(
            spec,
            RuleSource::new("r", "r.yaml", RULES.into()),
            state.clone(),
            vec![],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    state.phase = Phase::Progressing;
    (id, state)
}

fn step(i: usize, n: usize) -> EventDraft {
    EventDraft {
        kind: EventKind::StepStarted,
        actor: "canaryd".into(),
        message: format!("step {i} of {n}"),
        data: serde_json::json!({"step": i, "steps": n, "weight": 50.0}),
    }
}

async fn throughput(events: usize, lanes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (count, base) = receiver().await;
    let kinds = ["webhook", "slack", "discord", "mattermost"];
    let notifiers: Vec<(&str, &str, String)> = (0..lanes)
        .map(|i| {
            (
                ["n0", "n1", "n2", "n3"][i],
                kinds[i],
                format!("{base}/n{i}"),
            )
        })
        .collect();
    let config = config(dir.path(), &notifiers);
    let store = Store::open(&config.store.url).unwrap();
    let (id, state) = canary(&store).await;
    let drafts: Vec<EventDraft> = (1..=events).map(|i| step(i, events)).collect();
    store
        .transition(id, &state, &drafts, chrono::Utc::now())
        .await
        .unwrap();
    // The store was created before these events, so the dispatcher's cursor is behind them.
    let started = Instant::now();
    let service = Notifications::start(&config.notifications(), store)
        .await
        .unwrap();
    let want = events * lanes;
    let deadline = started + Duration::from_secs(600);
    while count.load(Ordering::SeqCst) < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} delivered",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    service.shutdown().await;
    println!(
        "throughput: {events} events x {lanes} notifier(s) = {want} deliveries in {secs:.2} s: {:.0} events/s, {:.0} deliveries/s",
        events as f64 / secs,
        want as f64 / secs
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn step_latency(label: &str, steps: usize, notifier: Option<(&str, String)>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let notifiers: Vec<(&str, &str, String)> = notifier
        .into_iter()
        .map(|(name, url)| (name, "webhook", url))
        .collect();
    let config = config(dir.path(), &notifiers);
    let store = Store::open(&config.store.url).unwrap();
    let (id, state) = canary(&store).await;
    let service = if notifiers.is_empty() {
        None
    } else {
        Some(
            Notifications::start(&config.notifications(), store.clone())
                .await
                .unwrap(),
        )
    };
    let mut times = Vec::with_capacity(steps);
    for i in 1..=steps {
        let t = Instant::now();
        store
            .transition(id, &state, &[step(i, steps)], chrono::Utc::now())
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        // Steps are seconds apart in real canaries; give the dispatcher its turn.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "step write ({label}): mean {mean:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {steps} steps",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
    if let Some(s) = service {
        // The hanging webhook holds its lane until the attempt's 2 s timeout.
        s.shutdown().await;
    }
    mean
}

async fn run() {
    let events = env_num("NOTIFY_EVENTS", 2000);
    let steps = env_num("NOTIFY_STEPS", 300);
    throughput(events, 1).await;
    throughput(events, 4).await;
    let (_count, base) = receiver().await;
    let off = step_latency("notifications off", steps, None).await;
    let hang = step_latency(
        "every step notified to a webhook that never answers",
        steps,
        Some(("stuck", format!("{base}/hang/x"))),
    )
    .await;
    let fast = step_latency(
        "every step notified to a fast receiver",
        steps,
        Some(("fast", format!("{base}/ok"))),
    )
    .await;
    println!(
        "added step latency: {:+.2} ms with a webhook that never answers, {:+.2} ms with a fast receiver (mean, vs. notifications off)",
        hang - off,
        fast - off
    );
}
